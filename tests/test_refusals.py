"""Remembered refusals: a command refused for a business reason is stored under its id, so the same
id can never later turn into a payment; sealed in the audit chain; on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from ledger import AccountFlags, Limits, ResultCode, TransferCommand
from ledger.ids import uuid7
from ledger.schema import journal_blocks, transfer_refusals, transfers
from tests.test_transfer_rules import WALLET, Books, balances, open_account, submit_one
from tests.test_transfer_rules import books as books

Posted, Pending = TransferCommand.posted, TransferCommand.pending
Post, Void = TransferCommand.post, TransferCommand.void


async def test_a_refused_payment_is_answered_the_same_refusal_after_the_cause_is_gone(ledger, books: Books):
    too_much = Posted(uuid7(), books.wallet, books.merchant, 5_000, "CNY")
    first = await submit_one(ledger, too_much)
    assert first.code is ResultCode.INSUFFICIENT_FUNDS and not first.replayed
    await books.fund(books.wallet, 10_000)  # now it could pay; the client already paid under a new id

    again = await submit_one(ledger, too_much)

    assert again.code is ResultCode.INSUFFICIENT_FUNDS and again.replayed and again.transfer is None
    assert await ledger.get_transfer(too_much.id) is None
    assert (await balances(ledger, books.merchant)).credits_posted == 0
    refusal = await ledger.get_refusal(too_much.id)
    assert refusal.code is ResultCode.INSUFFICIENT_FUNDS and refusal.amount_minor == 5_000


async def test_the_refused_id_with_other_fields_is_exists_with_different_fields(ledger, books: Books):
    command = Posted(uuid7(), books.wallet, books.merchant, 5_000, "CNY")
    await submit_one(ledger, command)

    other_amount = Posted(command.id, books.wallet, books.merchant, 500, "CNY")
    other_data = Posted(command.id, books.wallet, books.merchant, 5_000, "CNY", user_data="x")

    assert (await submit_one(ledger, other_amount)).code is ResultCode.EXISTS_WITH_DIFFERENT_FIELDS
    assert (await submit_one(ledger, other_data)).code is ResultCode.EXISTS_WITH_DIFFERENT_FIELDS
    assert await ledger.get_transfer(command.id) is None


async def test_refusals_of_state_are_remembered_for_every_kind_of_cause(ledger, books: Books):
    frozen = await open_account(ledger, flags=WALLET)
    await ledger.set_account_status(frozen, 1)
    capped = await open_account(ledger, flags=WALLET, limits=Limits(transfer_cap_minor=10))
    await books.fund(capped, 100)
    hold = Pending(uuid7(), books.wallet, books.merchant, 100, "CNY")
    assert (await submit_one(ledger, hold)).ok
    commands = [
        Posted(uuid7(), books.wallet, uuid7(), 1, "CNY"),  # account_not_found
        Posted(uuid7(), books.wallet, frozen, 1, "CNY"),  # account_frozen
        Posted(uuid7(), books.wallet, books.merchant, 1, "HKD"),  # currency_mismatch
        Posted(uuid7(), capped, books.merchant, 11, "CNY"),  # transfer_cap_exceeded
        Post(uuid7(), uuid7()),  # pending_transfer_not_found
        Post(uuid7(), hold.id, 101),  # exceeds_pending_amount
    ]
    first = await ledger.submit(commands)
    await ledger.set_account_status(frozen, 0)  # every cause is gone now, or would not matter

    again = await ledger.submit(commands)

    assert [r.code for r in again] == [r.code for r in first]
    assert [r.code for r in first] == [
        ResultCode.ACCOUNT_NOT_FOUND, ResultCode.ACCOUNT_FROZEN, ResultCode.CURRENCY_MISMATCH,
        ResultCode.TRANSFER_CAP_EXCEEDED, ResultCode.PENDING_TRANSFER_NOT_FOUND, ResultCode.EXCEEDS_PENDING_AMOUNT,
    ]  # fmt: skip
    assert all(result.replayed for result in again)


async def test_malformed_commands_are_answered_not_remembered(ledger, books: Books):
    bad_amount = Posted(uuid7(), books.wallet, books.merchant, 0, "CNY")
    same_account = Posted(uuid7(), books.wallet, books.wallet, 5, "CNY")
    assert (await submit_one(ledger, bad_amount)).code is ResultCode.INVALID_AMOUNT
    assert (await submit_one(ledger, same_account)).code is ResultCode.ACCOUNTS_MUST_BE_DIFFERENT

    # The ids are free: a corrected command under the same id goes through.
    assert (await submit_one(ledger, Posted(bad_amount.id, books.wallet, books.merchant, 5, "CNY"))).ok
    assert (await submit_one(ledger, Posted(same_account.id, books.wallet, books.merchant, 5, "CNY"))).ok
    assert await ledger.get_refusal(bad_amount.id) is None


async def test_a_chain_is_sent_again_with_its_failing_member_replaced_under_a_new_id(ledger, books: Books):
    pay = Posted(uuid7(), books.wallet, books.merchant, 100, "CNY", linked=True)
    overdraw = Posted(uuid7(), books.wallet, books.merchant, 5_000, "CNY")
    first = await ledger.submit([pay, overdraw])
    assert [r.code for r in first] == [ResultCode.LINKED_EVENT_FAILED, ResultCode.INSUFFICIENT_FUNDS]

    # The failing member is remembered; its partner is not, so it can go again with a new partner.
    replaced = Posted(uuid7(), books.wallet, books.merchant, 50, "CNY")
    second = await ledger.submit([pay, replaced])
    assert [r.code for r in second] == [ResultCode.OK, ResultCode.OK]
    [lone] = await ledger.submit([overdraw])
    assert lone.code is ResultCode.INSUFFICIENT_FUNDS and lone.replayed
    assert await ledger.get_refusal(pay.id) is None


async def test_a_refused_id_used_twice_in_one_batch_is_a_replayed_refusal(ledger, books: Books):
    command = Posted(uuid7(), books.wallet, books.merchant, 5_000, "CNY")
    results = await ledger.submit([command, command])
    assert [(r.code, r.replayed) for r in results] == [
        (ResultCode.INSUFFICIENT_FUNDS, False),
        (ResultCode.INSUFFICIENT_FUNDS, True),
    ]


async def test_refusals_are_sealed_apart_from_transfers_and_move_no_balance(ledger, books: Books):
    before = await balances(ledger, books.wallet)
    refused = Posted(uuid7(), books.wallet, books.merchant, 5_000, "CNY")
    await ledger.submit([refused, Posted(uuid7(), books.wallet, books.merchant, 10, "CNY")])

    async with ledger.engine.connect() as conn:
        [block] = (
            await conn.execute(sa.select(journal_blocks).order_by(journal_blocks.c.sequence.desc()).limit(1))
        ).all()
        stored_refusals = (await conn.execute(sa.select(transfer_refusals))).all()
        stored_transfer_ids = set((await conn.execute(sa.select(transfers.c.id))).scalars())
    assert (block.transfer_count, block.refusal_count) == (1, 1)
    assert [row.id for row in stored_refusals] == [refused.id] and refused.id not in stored_transfer_ids
    assert (await balances(ledger, books.wallet)).debits_posted == before.debits_posted + 10
    page = await ledger.statement(books.wallet)
    assert refused.id not in {line.transfer.id for line in page.items}
    report = await ledger.verify_audit()
    assert report.ok and report.refusals_checked == 1


async def test_a_batch_of_only_refusals_seals_a_block_of_its_own(ledger, books: Books):
    head_before = await ledger.audit_head()
    await submit_one(ledger, Posted(uuid7(), books.wallet, books.merchant, 5_000, "CNY"))
    head_after = await ledger.audit_head()
    assert head_after.sequence == head_before.sequence + 1
    assert head_after.last_transfer_seq == head_before.last_transfer_seq


async def test_verify_finds_a_refusal_changed_or_removed_behind_the_ledger(ledger, books: Books):
    refused = Posted(uuid7(), books.wallet, books.merchant, 5_000, "CNY")
    await submit_one(ledger, refused)
    block_sequence = (await ledger.get_refusal(refused.id)).block_sequence

    async with ledger.engine.begin() as conn:
        await conn.execute(transfer_refusals.update().values(code="account_frozen"))
    report = await ledger.verify_audit()
    assert not report.ok and report.first_bad_block == block_sequence

    async with ledger.engine.begin() as conn:
        await conn.execute(transfer_refusals.delete())
    report = await ledger.verify_audit()
    assert not report.ok and "seals 1 refusals" in report.problems[0]
    async with ledger.engine.begin() as conn:  # put it back for the fixture's final check
        await conn.execute(
            transfer_refusals.insert().values(
                id=refused.id, code="insufficient_funds", kind=1, debit_account_id=books.wallet,
                credit_account_id=books.merchant, amount_minor=5_000, currency="CNY", linked=False,
                created_at_us=ledger.clock(), block_sequence=block_sequence,
            )
        )  # fmt: skip


async def test_verify_finds_a_stored_refusal_outside_every_block(ledger, books: Books):
    async with ledger.engine.begin() as conn:
        await conn.execute(
            transfer_refusals.insert().values(
                id=uuid7(), code="insufficient_funds", kind=1, linked=False, created_at_us=1, block_sequence=10_000
            )
        )
    report = await ledger.verify_audit()
    assert not report.ok and any("refusals lie outside every sealed block" in p for p in report.problems)
    async with ledger.engine.begin() as conn:
        await conn.execute(transfer_refusals.delete().where(transfer_refusals.c.block_sequence == 10_000))


async def test_a_refused_currency_of_any_text_is_stored_without_failing_the_batch(ledger, books: Books):
    # A refusal stores the command as sent; odd text there must not fail the shared statement.
    odd = Posted(uuid7(), books.wallet, books.merchant, 5, 'X"}')
    ok = Posted(uuid7(), books.funding, books.merchant, 5, "CNY")
    results = await ledger.submit([odd, ok])
    assert [r.code for r in results] == [ResultCode.CURRENCY_MISMATCH, ResultCode.OK]
    assert (await ledger.get_refusal(odd.id)).currency == 'X"}'


async def test_a_currency_longer_than_three_letters_or_an_amount_beyond_bigint_is_malformed(ledger, books: Books):
    results = await ledger.submit(
        [
            Posted(uuid7(), books.wallet, books.merchant, 5, "CNYX"),
            Post(uuid7(), uuid7(), 2**63),
            Posted(uuid7(), books.funding, books.merchant, 5, "CNY"),
        ]
    )
    assert [r.code for r in results] == [ResultCode.INVALID_COMMAND, ResultCode.INVALID_AMOUNT, ResultCode.OK]


async def test_an_overdraft_refusal_of_a_debit_capped_account_is_remembered(ledger, books: Books):
    position = await open_account(ledger, flags=AccountFlags.NONE, limits=Limits(debit_balance_cap_minor=100))
    command = Posted(uuid7(), position, books.merchant, 101, "CNY")
    assert (await submit_one(ledger, command)).code is ResultCode.DEBIT_BALANCE_CAP_EXCEEDED
    await ledger.set_limits(position, Limits(debit_balance_cap_minor=1_000))
    again = await submit_one(ledger, command)
    assert again.code is ResultCode.DEBIT_BALANCE_CAP_EXCEEDED and again.replayed
