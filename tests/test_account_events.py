"""Account events: opening an account and every change of its settings is sealed in the audit
chain with the whole new state; verify checks each account row against its newest event, so a
setting changed behind the ledger's back is found and named. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ledger import AccountFlags, AccountResultCode, AccountSpec, AccountStatus, Ledger, Limits, ResultCode
from ledger import TransferCommand as Command
from ledger.db import create_engine
from ledger.ids import uuid7
from ledger.model import AccountEventKind
from ledger.schema import account_events, accounts

WALLET = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS


@pytest.fixture
async def own_ledger(database_url, signing_key, clock) -> AsyncIterator[Ledger]:
    """A ledger whose books the test breaks on purpose: no invariant check at teardown."""
    instance = Ledger(create_engine(database_url), signing_key, clock=clock)
    yield instance
    await instance.close()


async def open_wallet(ledger: Ledger, **spec) -> tuple:
    funding, wallet = uuid7(), uuid7()
    results = await ledger.create_accounts(
        [AccountSpec(funding, "CNY", "funding"), AccountSpec(wallet, "CNY", "wallet", flags=WALLET, **spec)],
        actor="ops:alice",
    )
    assert [r.code for r in results] == [AccountResultCode.OK, AccountResultCode.OK]
    return funding, wallet


async def test_history_records_who_changed_what_and_when_with_old_and_new(ledger, clock):
    _, wallet = await open_wallet(ledger, limits=Limits(balance_cap_minor=1_000_000), profile="ecny-4")
    clock.advance(seconds=5)
    upgraded = await ledger.set_limits(
        wallet, Limits(balance_cap_minor=50_000_000), profile="ecny-2", actor="wallets:upgrade"
    )
    clock.advance(seconds=5)
    frozen = await ledger.set_account_status(wallet, AccountStatus.FROZEN, actor="ops:bob")
    assert upgraded.code is frozen.code is AccountResultCode.OK

    history = await ledger.account_history(wallet)

    assert [(e.version, e.event, e.actor) for e in history] == [
        (1, AccountEventKind.OPENED, "ops:alice"),
        (2, AccountEventKind.LIMITS, "wallets:upgrade"),
        (3, AccountEventKind.STATUS, "ops:bob"),
    ]
    assert history[1].at_us - history[0].at_us == 5_000_000
    assert history[1].changes(history[0]) == {
        "profile": ("ecny-4", "ecny-2"),
        "balance_cap_minor": (1_000_000, 50_000_000),
    }
    assert history[2].changes(history[1]) == {"status": (0, 1)}
    assert history[2].settings == (await ledger.get_account(wallet)).settings
    assert len({event.block_sequence for event in history}) == 3  # each change sealed in its own block


async def test_a_change_to_the_same_settings_seals_nothing(ledger):
    _, wallet = await open_wallet(ledger, limits=Limits(transfer_cap_minor=10))
    head = await ledger.audit_head()
    assert (await ledger.set_limits(wallet, Limits(transfer_cap_minor=10))).code is AccountResultCode.OK
    assert await ledger.audit_head() == head
    assert len(await ledger.account_history(wallet)) == 1


async def test_opening_accounts_seals_one_block_of_opening_events(ledger):
    head = await ledger.audit_head()
    ids = [uuid7() for _ in range(5)]
    await ledger.create_accounts([AccountSpec(i, "CNY", "wallet") for i in ids])
    block = await ledger.newest_block()
    assert block.sequence == head.sequence + 1 and (block.event_count, block.transfer_count) == (5, 0)
    # Opening the same accounts again is idempotent and seals nothing more.
    await ledger.create_accounts([AccountSpec(i, "CNY", "wallet") for i in ids])
    assert (await ledger.newest_block()).sequence == block.sequence


@pytest.mark.parametrize(
    "column, value, named",
    [
        ("flags", 0, "flags"),
        ("daily_debit_cap_minor", 10**9, "daily_debit_cap_minor"),
        ("status", 0, "status"),
        ("profile", "ecny-1", "profile"),
        ("debit_balance_cap_minor", None, "debit_balance_cap_minor"),
    ],
)
async def test_a_setting_changed_behind_the_ledgers_back_is_found_and_named(own_ledger, column, value, named):
    funding, wallet = await open_wallet(
        own_ledger,
        limits=Limits(daily_debit_cap_minor=500, debit_balance_cap_minor=0),
        profile="ecny-4",
    )
    await own_ledger.submit([Command.posted(uuid7(), funding, wallet, 1_000, "CNY")])
    await own_ledger.set_account_status(wallet, AccountStatus.FROZEN)
    assert (await own_ledger.verify_audit()).ok

    async with own_ledger.engine.begin() as conn:
        await conn.execute(accounts.update().where(accounts.c.id == wallet).values({column: value}))

    report = await own_ledger.verify_audit()
    assert not report.ok and report.first_bad_account == wallet
    assert any(str(wallet) in p and named in p and "behind the ledger" in p for p in report.problems)


async def test_a_cleared_no_overdraft_flag_and_an_overdraft_no_longer_verify_clean(own_ledger):
    _, wallet = await open_wallet(own_ledger)
    merchant = uuid7()
    await own_ledger.create_accounts([AccountSpec(merchant, "CNY", "merchant")])
    async with own_ledger.engine.begin() as conn:
        await conn.execute(accounts.update().where(accounts.c.id == wallet).values(flags=0))
    [overdraft] = await own_ledger.submit([Command.posted(uuid7(), wallet, merchant, 500, "CNY")])
    assert overdraft.ok  # the rules read the row; the chain tells the truth

    report = await own_ledger.verify_audit()

    assert not report.ok and any("flags is 0, sealed 1" in p for p in report.problems)


async def test_a_tampered_or_deleted_event_breaks_its_block(own_ledger):
    _, wallet = await open_wallet(own_ledger)
    async with own_ledger.engine.begin() as conn:
        await conn.execute(
            account_events.update().where(account_events.c.account_id == wallet).values(actor="someone else")
        )
    report = await own_ledger.verify_audit()
    assert not report.ok and report.first_bad_block == 1

    async with own_ledger.engine.begin() as conn:
        await conn.execute(account_events.delete().where(account_events.c.account_id == wallet))
    report = await own_ledger.verify_audit()
    assert not report.ok and "seals 0 refusals and 2 account events, found 0 and 1" in report.problems[0]


async def test_an_account_row_without_a_sealed_opening_is_reported(own_ledger):
    await open_wallet(own_ledger)
    stray = uuid7()
    async with own_ledger.engine.begin() as conn:
        await conn.execute(accounts.insert().values(id=stray, currency="CNY", kind="wallet", created_at_us=1))
    report = await own_ledger.verify_audit()
    assert not report.ok and any(f"account {stray}: no sealed event opened it" in p for p in report.problems)


async def test_a_sealed_overdraft_cap_is_enforced_and_survives_verification(ledger):
    funding, position = uuid7(), uuid7()
    await ledger.create_accounts(
        [
            AccountSpec(funding, "CNY", "funding"),
            AccountSpec(position, "CNY", "position", limits=Limits(debit_balance_cap_minor=1_000)),
        ]
    )
    results = await ledger.submit(
        [
            Command.posted(uuid7(), position, funding, 700, "CNY"),
            Command.pending(uuid7(), position, funding, 300, "CNY"),
            Command.posted(uuid7(), position, funding, 1, "CNY"),
        ]
    )
    assert [r.code for r in results] == [ResultCode.OK, ResultCode.OK, ResultCode.DEBIT_BALANCE_CAP_EXCEEDED]
    lowered = await ledger.set_limits(position, Limits(debit_balance_cap_minor=500))
    assert lowered.code is AccountResultCode.OK  # below the position: it only stops further debits
    [blocked] = await ledger.submit([Command.posted(uuid7(), position, funding, 1, "CNY")])
    assert blocked.code is ResultCode.DEBIT_BALANCE_CAP_EXCEEDED
    [repaid] = await ledger.submit([Command.posted(uuid7(), funding, position, 600, "CNY")])
    assert repaid.ok
    [room] = await ledger.submit([Command.posted(uuid7(), position, funding, 100, "CNY")])
    assert room.ok  # 700 + 300 held + 100 - 600 = 500


async def test_an_actor_or_profile_the_database_cannot_hold_is_refused(ledger):
    _, wallet = await open_wallet(ledger)
    with pytest.raises(ValueError, match="actor"):
        await ledger.set_account_status(wallet, AccountStatus.FROZEN, actor="x" * 129)
    result = await ledger.set_limits(wallet, Limits(), profile="p\x00")
    assert result.code is AccountResultCode.INVALID_ACCOUNT
    [bad] = await ledger.create_accounts([AccountSpec(uuid7(), "CNY", "wallet", profile="p" * 33)])
    assert bad.code is AccountResultCode.INVALID_ACCOUNT
