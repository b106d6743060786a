"""The audit chain on SQLite and PostgreSQL: every committed batch is a signed journal block, and
``verify_audit`` names the first block or account that a direct change to the database broke.

Tampering tests build their own :class:`Ledger` on ``database_url`` (the ``ledger`` fixture would
fail its own end-of-test chain check on purpose-broken books).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from uuid import UUID

import pytest
import sqlalchemy as sa
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from ledger import AccountFlags, AccountSpec, Anchor, Ledger, LedgerKeyMismatch, TransferCommand
from ledger.audit import (
    BLOCK_DOMAIN,
    canonical_event_bytes,
    canonical_refusal_bytes,
    canonical_transfer_bytes,
    event_from_row,
    event_order,
    refusal_from_row,
    refusal_order,
    transfer_from_row,
)
from ledger.db import create_engine
from ledger.ids import uuid7
from ledger.schema import (
    GENESIS_HASH,
    account_events,
    accounts,
    journal_blocks,
    journal_head,
    pending_timeouts,
    transfer_refusals,
    transfers,
)

WALLET = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
Posted, Pending, Post = TransferCommand.posted, TransferCommand.pending, TransferCommand.post


@pytest.fixture
async def own_ledger(database_url, signing_key, clock) -> AsyncIterator[Ledger]:
    """A ledger whose books the test may break: no invariant check at teardown."""
    instance = Ledger(create_engine(database_url), signing_key, clock=clock)
    yield instance
    await instance.close()


async def write_history(ledger: Ledger, clock) -> dict[str, UUID]:
    """Block 1 opens three accounts (their events); blocks 2-4 are batches of every kind of
    transfer; block 5 seals the refusal of a batch that fails whole; block 6 is an expiry."""
    funding, wallet, merchant = uuid7(), uuid7(), uuid7()
    await ledger.create_accounts(
        [
            AccountSpec(funding, "CNY", "funding"),
            AccountSpec(wallet, "CNY", "wallet", flags=WALLET),
            AccountSpec(merchant, "CNY", "merchant", flags=WALLET),
        ]
    )
    pending_a, pending_b = uuid7(), uuid7()
    batches = [
        [Posted(uuid7(), funding, wallet, 10_000, "CNY", user_data="top-up")],
        [
            Posted(uuid7(), wallet, merchant, 1_000, "CNY"),
            Pending(pending_a, wallet, merchant, 2_000, "CNY"),
            Pending(pending_b, wallet, merchant, 500, "CNY", timeout_s=30),
        ],
        [
            Post(uuid7(), pending_a, 1_500),
            Posted(uuid7(), merchant, funding, 700, "CNY", linked=True),
            Posted(uuid7(), merchant, funding, 100, "CNY"),
        ],
    ]
    for batch in batches:
        assert all(result.ok for result in await ledger.submit(batch))
    failed = await ledger.submit([Posted(uuid7(), wallet, merchant, 10**9, "CNY")])
    assert not failed[0].ok
    clock.advance(seconds=31)
    assert await ledger.expire_pending() == 1
    return {"funding": funding, "wallet": wallet, "merchant": merchant}


async def block_holding(engine, transfer_seq: int) -> int:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                sa.select(journal_blocks.c.sequence).where(
                    journal_blocks.c.first_transfer_seq <= transfer_seq,
                    journal_blocks.c.first_transfer_seq + journal_blocks.c.transfer_count > transfer_seq,
                )
            )
        ).scalar_one()


async def conn_rows(ledger: Ledger, table) -> list:
    async with ledger.engine.connect() as conn:
        return (await conn.execute(sa.select(table))).all()


def sealed_sections(block, refusals, events) -> bytes:
    """The documented tail of a block that seals refusals or account events (empty otherwise)."""
    mine = sorted((r for r in refusals if r.block_sequence == block.sequence), key=refusal_order)
    theirs = sorted((e for e in events if e.block_sequence == block.sequence), key=event_order)
    if not mine and not theirs:
        return b""
    return (
        b"REFUSALS" + len(mine).to_bytes(4, "big") + b"".join(map(canonical_refusal_bytes, mine))
        + b"EVENTS" + len(theirs).to_bytes(4, "big") + b"".join(map(canonical_event_bytes, theirs))
    )  # fmt: skip


async def execute(engine, statement) -> int:
    async with engine.begin() as conn:
        return (await conn.execute(statement)).rowcount


# -- sound books --------------------------------------------------------------------------------


async def test_verify_audit_of_sound_books_is_ok_and_counts_blocks_transfers_and_accounts(ledger, clock):
    await write_history(ledger, clock)
    report = await ledger.verify_audit()
    assert report.ok, report.problems
    assert (report.blocks_checked, report.transfers_checked, report.accounts_checked) == (6, 8, 3)
    assert (report.events_checked, report.refusals_checked) == (3, 1)
    assert report.first_bad_block is None and report.first_bad_account is None
    head = await ledger.audit_head()
    assert (head.sequence, head.last_transfer_seq, head.hash) == (6, 8, report.last_hash)


async def test_verify_audit_of_an_empty_ledger_is_ok(ledger):
    report = await ledger.verify_audit()
    assert report.ok
    assert (report.blocks_checked, report.transfers_checked, report.last_hash) == (0, 0, GENESIS_HASH)


async def test_only_committed_batches_append_blocks(ledger, clock):
    await write_history(ledger, clock)
    async with ledger.engine.connect() as conn:
        counts = (
            (await conn.execute(sa.select(journal_blocks.c.transfer_count).order_by(journal_blocks.c.sequence)))
            .scalars()
            .all()
        )
    assert counts == [0, 1, 3, 3, 0, 1]  # the account events, then the all-refused batch, hold no transfer


async def test_each_block_chains_the_previous_hash_and_its_signature_verifies_with_nacl(ledger, clock):
    await write_history(ledger, clock)
    # The public key alone, as an outside auditor would hold it.
    auditor_key = VerifyKey(bytes(ledger.verify_key))
    async with ledger.engine.connect() as conn:
        blocks = (await conn.execute(sa.select(journal_blocks).order_by(journal_blocks.c.sequence))).all()
        stored = [
            transfer_from_row(row) for row in (await conn.execute(sa.select(transfers).order_by(transfers.c.seq))).all()
        ]
    assert [block.sequence for block in blocks] == [1, 2, 3, 4, 5, 6]
    refusals = [refusal_from_row(row) for row in (await conn_rows(ledger, transfer_refusals))]
    events = [event_from_row(row) for row in (await conn_rows(ledger, account_events))]
    previous = GENESIS_HASH
    for block in blocks:
        assert bytes(block.prev_hash) == previous
        end_seq = block.first_transfer_seq + block.transfer_count
        batch = [t for t in stored if block.first_transfer_seq <= t.seq < end_seq]
        # Recomputed here from the documented layout: SHA-256(prev || domain || header || transfers).
        digest = hashlib.sha256(
            previous
            + BLOCK_DOMAIN
            + block.sequence.to_bytes(8, "big")
            + block.first_transfer_seq.to_bytes(8, "big")
            + len(batch).to_bytes(4, "big")
            + block.created_at_us.to_bytes(8, "big", signed=True)
            + b"".join(canonical_transfer_bytes(t) for t in batch)
            + sealed_sections(block, refusals, events)
        ).digest()
        assert bytes(block.hash) == digest
        assert auditor_key.verify(bytes(block.hash), bytes(block.signature)) == bytes(block.hash)
        previous = bytes(block.hash)
    with pytest.raises(BadSignatureError):
        SigningKey.generate().verify_key.verify(bytes(blocks[0].hash), bytes(blocks[0].signature))


def test_canonical_bytes_change_when_any_stored_field_changes():
    import dataclasses

    from ledger import Transfer, TransferKind

    base = Transfer(
        uuid7(), TransferKind.PENDING, uuid7(), uuid7(), 100, 0, "CNY", None, 30, 5_000, False, "memo", 1_000, seq=7
    )
    changes = dict(
        id=uuid7(),
        kind=TransferKind.POSTED,
        debit_account_id=uuid7(),
        credit_account_id=uuid7(),
        amount_minor=101,
        released_minor=1,
        currency="HKD",
        pending_id=uuid7(),
        timeout_s=31,
        expires_at_us=5_001,
        linked=True,
        user_data="memO",
        created_at_us=1_001,
        seq=8,
    )
    original = canonical_transfer_bytes(base)
    for name, value in changes.items():
        assert canonical_transfer_bytes(dataclasses.replace(base, **{name: value})) != original, name
    # None and empty user data are different facts and must not hash alike.
    assert canonical_transfer_bytes(dataclasses.replace(base, user_data=None)) != canonical_transfer_bytes(
        dataclasses.replace(base, user_data="")
    )


# -- tampering ----------------------------------------------------------------------------------


async def test_changing_one_stored_amount_is_reported_at_the_block_holding_it(own_ledger, clock):
    await write_history(own_ledger, clock)
    target_seq = 6  # the linked 700 in block 4
    assert (
        await execute(
            own_ledger.engine,
            transfers.update().where(transfers.c.seq == target_seq).values(amount_minor=transfers.c.amount_minor + 1),
        )
        == 1
    )
    report = await own_ledger.verify_audit()
    assert not report.ok
    assert report.first_bad_block == await block_holding(own_ledger.engine, target_seq) == 4
    assert report.blocks_checked == 3
    assert any("block 4" in problem and "changed" in problem for problem in report.problems)


async def test_changing_a_transfers_account_is_reported_at_its_block(own_ledger, clock):
    names = await write_history(own_ledger, clock)
    assert (
        await execute(
            own_ledger.engine,
            transfers.update().where(transfers.c.seq == 1).values(credit_account_id=names["merchant"]),
        )
        == 1
    )
    report = await own_ledger.verify_audit()
    assert (report.ok, report.first_bad_block) == (False, 2)


async def test_changing_an_account_balance_is_reported_naming_the_account(own_ledger, clock):
    names = await write_history(own_ledger, clock)
    merchant = names["merchant"]
    assert (
        await execute(
            own_ledger.engine,
            accounts.update().where(accounts.c.id == merchant).values(credits_posted=accounts.c.credits_posted + 100),
        )
        == 1
    )
    report = await own_ledger.verify_audit()
    assert not report.ok
    assert report.first_bad_account == merchant
    assert report.first_bad_block is None and report.blocks_checked == 6
    assert any(str(merchant) in problem and "credits_posted" in problem for problem in report.problems)


async def test_changing_a_pending_balance_is_reported_naming_the_account(own_ledger, clock):
    names = await write_history(own_ledger, clock)
    assert (
        await execute(
            own_ledger.engine, accounts.update().where(accounts.c.id == names["wallet"]).values(debits_pending=3)
        )
        == 1
    )
    report = await own_ledger.verify_audit()
    assert (report.ok, report.first_bad_account) == (False, names["wallet"])


async def test_deleting_a_journal_block_in_the_middle_is_reported(own_ledger, clock):
    await write_history(own_ledger, clock)
    assert await execute(own_ledger.engine, journal_blocks.delete().where(journal_blocks.c.sequence == 2)) == 1
    report = await own_ledger.verify_audit()
    assert not report.ok
    assert report.blocks_checked == 1
    assert report.first_bad_block == 3  # the first stored block that does not follow on
    assert any("expected block 2" in problem for problem in report.problems)


async def test_deleting_the_last_journal_block_is_reported(own_ledger, clock):
    await write_history(own_ledger, clock)
    assert await execute(own_ledger.engine, journal_blocks.delete().where(journal_blocks.c.sequence == 6)) == 1
    report = await own_ledger.verify_audit()
    assert not report.ok
    assert report.blocks_checked == 5
    assert any("journal head says block 6" in problem for problem in report.problems)


async def test_deleting_a_transfer_is_reported_at_its_block(own_ledger, clock):
    await write_history(own_ledger, clock)
    assert await execute(own_ledger.engine, transfers.delete().where(transfers.c.seq == 3)) == 1
    report = await own_ledger.verify_audit()
    assert (report.ok, report.first_bad_block) == (False, 3)


@pytest.mark.parametrize("seq", [9, 0, -5], ids=["after-the-last-block", "zero", "negative"])
async def test_a_transfer_inserted_outside_every_block_is_reported(own_ledger, clock, seq):
    """A row no block holds was never sealed, wherever its seq puts it: before the first block it
    would otherwise be invisible to the chain walk yet still resolve a hold or answer a replay."""
    await write_history(own_ledger, clock)
    async with own_ledger.engine.begin() as conn:
        row = (await conn.execute(sa.select(transfers).where(transfers.c.seq == 1))).one()._asdict()
        row.update(seq=seq, id=uuid7())
        await conn.execute(transfers.insert().values(**row))
    report = await own_ledger.verify_audit()
    assert not report.ok
    assert any("1 transfers lie outside every sealed block" in problem for problem in report.problems)


async def test_a_journal_head_that_disagrees_with_the_chains_last_transfer_is_reported(own_ledger, clock):
    """Raising the head's last transfer seq would let a forged row just past the last block look
    sealed until the next batch; the head must name the chain's own last transfer."""
    await write_history(own_ledger, clock)
    head = await own_ledger.audit_head()
    await execute(own_ledger.engine, journal_head.update().values(last_transfer_seq=head.last_transfer_seq + 1))
    report = await own_ledger.verify_audit()
    assert not report.ok
    assert any(f"the chain's is {head.last_transfer_seq}" in problem for problem in report.problems)


async def test_a_forged_signature_is_reported(own_ledger, clock):
    await write_history(own_ledger, clock)
    async with own_ledger.engine.connect() as conn:
        block = (await conn.execute(sa.select(journal_blocks).where(journal_blocks.c.sequence == 2))).one()
    forged = SigningKey.generate().sign(bytes(block.hash)).signature
    await execute(
        own_ledger.engine, journal_blocks.update().where(journal_blocks.c.sequence == 2).values(signature=forged)
    )
    report = await own_ledger.verify_audit()
    assert (report.ok, report.first_bad_block) == (False, 2)
    assert any("signature" in problem for problem in report.problems)


async def test_verifying_with_another_public_key_reports_a_bad_signature(own_ledger, clock):
    await write_history(own_ledger, clock)
    report = await own_ledger.verify_audit(SigningKey.generate().verify_key)
    assert not report.ok
    assert report.first_bad_block == 1
    assert any("signature does not verify" in problem for problem in report.problems)
    assert (await own_ledger.verify_audit()).ok


async def test_a_resealed_chain_under_another_key_is_reported(database_url, signing_key, clock):
    """A forger who rewrites history must re-sign it; without the ledger's private key that shows."""
    forger = Ledger(create_engine(database_url), SigningKey.generate(), clock=clock)
    try:
        await write_history(forger, clock)
        assert (await forger.verify_audit()).ok
        report = await forger.verify_audit(signing_key.verify_key)
        assert (report.ok, report.first_bad_block) == (False, 1)
    finally:
        await forger.close()


async def test_changing_the_journal_head_is_reported(own_ledger, clock):
    await write_history(own_ledger, clock)
    await execute(own_ledger.engine, journal_head.update().values(hash=bytes(32)))
    report = await own_ledger.verify_audit()
    assert not report.ok
    assert any("journal head" in problem for problem in report.problems)


# -- anchors: blocks recorded outside the ledger ------------------------------------------------------


async def cut_back_to(ledger: Ledger, head, balances: dict) -> None:
    """What an insider with database access but no signing key can do without breaking the chain:
    remove the newest blocks and their transfers, and set the head and the balances back (the same
    as restoring an older copy of the database)."""
    async with ledger.engine.begin() as conn:
        await conn.execute(sa.delete(transfers).where(transfers.c.seq > head.last_transfer_seq))
        await conn.execute(sa.delete(journal_blocks).where(journal_blocks.c.sequence > head.sequence))
        await conn.execute(
            journal_head.update().values(
                sequence=head.sequence, hash=head.hash, last_transfer_seq=head.last_transfer_seq
            )
        )
        for account_id, account in balances.items():
            b = account.balances
            await conn.execute(
                accounts.update()
                .where(accounts.c.id == account_id)
                .values(
                    debits_posted=b.debits_posted,
                    credits_posted=b.credits_posted,
                    debits_pending=b.debits_pending,
                    credits_pending=b.credits_pending,
                )
            )


async def test_newest_blocks_cut_off_pass_the_chain_check_but_not_an_anchor_recorded_before(own_ledger):
    funding, wallet = uuid7(), uuid7()
    await own_ledger.create_accounts(
        [AccountSpec(funding, "CNY", "funding"), AccountSpec(wallet, "CNY", "wallet", flags=WALLET)]
    )
    assert (await own_ledger.submit([Posted(uuid7(), funding, wallet, 500, "CNY")]))[0].ok
    earlier_head = await own_ledger.audit_head()
    earlier_balances = await own_ledger.get_accounts([funding, wallet])
    assert (await own_ledger.submit([Posted(uuid7(), funding, wallet, 9_000, "CNY")]))[0].ok
    anchor = await own_ledger.audit_anchor()
    assert anchor == Anchor(3, (await own_ledger.audit_head()).hash)  # block 1 opened the accounts

    await cut_back_to(own_ledger, earlier_head, earlier_balances)

    # Every remaining block is sound and signed: without an anchor the cut cannot be seen.
    assert (await own_ledger.verify_audit()).ok
    report = await own_ledger.verify_audit(anchors=[anchor])
    assert not report.ok and report.blocks_checked == 2
    assert any("block 3 was recorded outside the ledger" in problem for problem in report.problems)


async def test_an_anchor_whose_hash_the_chain_does_not_hold_names_that_block(own_ledger, clock):
    await write_history(own_ledger, clock)
    good = await own_ledger.audit_anchor()
    assert (await own_ledger.verify_audit(anchors=[good])).ok
    report = await own_ledger.verify_audit(anchors=[good, Anchor(2, hashlib.sha256(b"other").digest())])
    assert (report.ok, report.first_bad_block) == (False, 2)
    assert any("not the one recorded outside the ledger" in problem for problem in report.problems)


def test_an_anchor_reads_back_what_it_prints_and_refuses_anything_else():
    anchor = Anchor(7, hashlib.sha256(b"block").digest())
    assert Anchor.parse(str(anchor)) == anchor
    assert Anchor.parse(f" {anchor} \n") == anchor
    for text in (
        "7",
        "7:",
        f"0:{anchor.hash.hex()}",
        f"-1:{anchor.hash.hex()}",
        f"x:{anchor.hash.hex()}",
        f"7:{anchor.hash.hex()[:-2]}",
        "7:zz" + anchor.hash.hex()[2:],
    ):
        with pytest.raises(ValueError):
            Anchor.parse(text)


async def test_the_newest_block_is_the_head_and_its_signature_verifies_with_the_public_key_alone(ledger, clock):
    assert await ledger.newest_block() is None
    await write_history(ledger, clock)
    head, block = await ledger.audit_head(), await ledger.newest_block()
    assert (block.sequence, block.hash) == (head.sequence, head.hash)
    assert block.first_transfer_seq + block.transfer_count - 1 == head.last_transfer_seq
    auditor_key = VerifyKey(bytes(ledger.verify_key))
    assert auditor_key.verify(block.hash, block.signature) == block.hash
    assert await ledger.audit_anchor() == Anchor(block.sequence, block.hash)


# -- rows whose tampering leaves every hash intact ------------------------------------------------


async def open_hold(ledger: Ledger, *, timeout_s: int | None) -> dict[str, UUID]:
    funding, wallet, merchant, hold = uuid7(), uuid7(), uuid7(), uuid7()
    await ledger.create_accounts(
        [
            AccountSpec(funding, "CNY", "funding"),
            AccountSpec(wallet, "CNY", "wallet", flags=WALLET),
            AccountSpec(merchant, "CNY", "merchant"),
        ]
    )
    assert all(
        r.ok
        for r in await ledger.submit(
            [
                Posted(uuid7(), funding, wallet, 10_000, "CNY"),
                Pending(hold, wallet, merchant, 5_000, "CNY", timeout_s=timeout_s),
            ]
        )
    )
    assert (await ledger.verify_audit()).ok
    return {"wallet": wallet, "hold": hold}


async def test_a_hold_without_timeout_rewritten_to_the_absent_timeouts_canonical_minus_one_is_reported(own_ledger):
    """Canonical bytes spell an absent timeout as -1: -1 written into the row hashes the same, and
    with a due row added the sweep would release the hold. Verify knows the ledger never writes -1."""
    ids = await open_hold(own_ledger, timeout_s=None)
    await execute(
        own_ledger.engine,
        transfers.update().where(transfers.c.id == ids["hold"]).values(timeout_s=-1, expires_at_us=-1),
    )
    report = await own_ledger.verify_audit()
    assert not report.ok and any("has timeout_s -1" in problem for problem in report.problems)


async def test_an_account_whose_currency_was_rewritten_is_reported(own_ledger):
    ids = await open_hold(own_ledger, timeout_s=None)
    await execute(own_ledger.engine, accounts.update().where(accounts.c.id == ids["wallet"]).values(currency="HKD"))
    report = await own_ledger.verify_audit()
    assert not report.ok
    # Its sealed opening event says CNY; the transfers it holds say so too.
    assert any("currency is 'HKD', sealed 'CNY'" in problem for problem in report.problems)


async def test_a_due_row_deleted_for_an_open_hold_or_added_for_none_is_reported(own_ledger):
    ids = await open_hold(own_ledger, timeout_s=60)
    await execute(own_ledger.engine, pending_timeouts.delete())
    report = await own_ledger.verify_audit()
    assert not report.ok and any("missing from pending_timeouts" in problem for problem in report.problems)
    await execute(own_ledger.engine, pending_timeouts.insert().values(transfer_id=uuid7(), expires_at_us=1))
    report = await own_ledger.verify_audit()
    assert any("match no open hold" in problem for problem in report.problems)
    assert ids


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    "column, spell",
    [("id", str.upper), ("debit_account_id", lambda text: str(UUID(hex=text)))],
    ids=["upper-case", "dashes"],
)
async def test_an_id_stored_in_another_spelling_on_sqlite_is_reported(own_ledger, column, spell):
    """The same UUID in another spelling keeps the hash but escapes lookups and the unique index:
    the transfer vanishes from get_transfer and a resubmitted id would be applied again."""
    ids = await open_hold(own_ledger, timeout_s=None)
    async with own_ledger.engine.begin() as conn:
        text = (
            await conn.exec_driver_sql(f"SELECT {column} FROM transfers WHERE id = ?", (ids["hold"].hex,))
        ).scalar_one()
        await conn.exec_driver_sql(f"UPDATE transfers SET {column} = ? WHERE id = ?", (spell(text), ids["hold"].hex))
    report = await own_ledger.verify_audit()
    assert not report.ok and any(f"transfers.{column} values are not ids" in problem for problem in report.problems)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_currency_padded_past_three_letters_on_sqlite_is_reported(own_ledger):
    """The canonical bytes keep three bytes of the currency; SQLite does not enforce VARCHAR(3)."""
    ids = await open_hold(own_ledger, timeout_s=None)
    await execute(own_ledger.engine, transfers.update().where(transfers.c.id == ids["hold"]).values(currency="CNYX"))
    report = await own_ledger.verify_audit()
    assert not report.ok and any("has currency 'CNYX'" in problem for problem in report.problems)


async def test_a_ledger_opened_with_another_key_refuses_to_write_onto_the_chain(own_ledger, database_url, clock):
    """A second process started with the wrong key (another host's data directory, a key made by
    mistake) would seal blocks that no single key verifies, for good."""
    ids = await open_hold(own_ledger, timeout_s=None)
    stranger = Ledger(create_engine(database_url), SigningKey.generate(), clock=clock)
    try:
        with pytest.raises(LedgerKeyMismatch, match="did not sign block 2"):
            await stranger.submit([Posted(uuid7(), ids["wallet"], uuid7(), 1, "CNY")])
    finally:
        await stranger.close()
    report = await own_ledger.verify_audit()
    assert report.ok and report.blocks_checked == 2
