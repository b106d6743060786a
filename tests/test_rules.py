"""Unit tests of ledger/rules.py: the transfer rules applied in memory, with no database and no
clock, against :class:`AccountState` objects built by hand."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import ResultCode
from ledger.ids import uuid7
from ledger.model import AccountFlags, AccountStatus, Transfer, TransferCommand, TransferKind
from ledger.rules import BIGINT_MAX, AccountState, BatchEngine, accounts_needed, business_day_and_year

SHANGHAI = ZoneInfo("Asia/Shanghai")
WALLET = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
DEBIT_NORMAL = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
Posted, Pending = TransferCommand.posted, TransferCommand.pending
Post, Void = TransferCommand.post, TransferCommand.void


def shanghai_us(year: int, month: int, day: int, hour: int = 12, minute: int = 0, second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=SHANGHAI).timestamp()) * 1_000_000


NOW = shanghai_us(2026, 11, 25, 12, 0)
TODAY, THIS_YEAR = business_day_and_year(NOW)


def account(
    *,
    currency: str = "CNY",
    flags: int = 0,
    status: AccountStatus = AccountStatus.OPEN,
    debits_posted: int = 0,
    credits_posted: int = 0,
    debits_pending: int = 0,
    credits_pending: int = 0,
    balance_cap: int | None = None,
    transfer_cap: int | None = None,
    daily_cap: int | None = None,
    annual_cap: int | None = None,
    debit_balance_cap: int | None = None,
    debit_day: int = 0,
    debits_day: int = 0,
    debit_year: int = 0,
    debits_year: int = 0,
) -> AccountState:
    return AccountState(
        uuid7(),
        currency,
        flags,
        int(status),
        debits_posted,
        credits_posted,
        debits_pending,
        credits_pending,
        balance_cap,
        transfer_cap,
        daily_cap,
        annual_cap,
        debit_balance_cap,
        debit_day,
        debits_day,
        debit_year,
        debits_year,
    )


def engine(
    *states: AccountState,
    known: dict[UUID, Transfer] | None = None,
    resolved: dict[UUID, TransferKind] | None = None,
    now_us: int = NOW,
) -> BatchEngine:
    return BatchEngine({state.id: state for state in states}, dict(known or {}), dict(resolved or {}), now_us)


def codes(results) -> list[ResultCode]:
    return [result.code for result in results]


def stored_pending(
    debit: AccountState, credit: AccountState, amount: int, *, created_at_us: int = NOW, timeout_s: int | None = None
) -> Transfer:
    """A pending transfer as if committed earlier, with its hold already on the two accounts."""
    debit.debits_pending += amount
    credit.credits_pending += amount
    expires = None if timeout_s is None else created_at_us + timeout_s * 1_000_000
    return Transfer(
        uuid7(),
        TransferKind.PENDING,
        debit.id,
        credit.id,
        amount,
        0,
        "CNY",
        None,
        timeout_s,
        expires,
        False,
        None,
        created_at_us,
        seq=1,
    )


# -- the business day -----------------------------------------------------------------------------


def test_business_day_turns_at_shanghai_midnight_not_utc_midnight():
    last_second = shanghai_us(2026, 11, 25, 23, 59, 59)
    first_second = shanghai_us(2026, 11, 26, 0, 0, 0)
    assert business_day_and_year(last_second)[0] + 1 == business_day_and_year(first_second)[0]
    assert business_day_and_year(first_second - 1)[0] == business_day_and_year(last_second)[0]
    # 07:59 and 08:01 in Shanghai straddle UTC midnight but are one business day.
    assert (
        business_day_and_year(shanghai_us(2026, 11, 26, 7, 59))[0]
        == business_day_and_year(shanghai_us(2026, 11, 26, 8, 1))[0]
        == business_day_and_year(first_second)[0]
    )


def test_business_year_turns_at_shanghai_new_year():
    assert business_day_and_year(shanghai_us(2026, 12, 31, 23, 59, 59))[1] == 2026
    new_year = shanghai_us(2027, 1, 1, 0, 0, 0)
    assert business_day_and_year(new_year)[1] == 2027
    assert datetime.fromtimestamp(new_year // 1_000_000, SHANGHAI).astimezone(ZoneInfo("UTC")).year == 2026


# -- posted transfers against running balances ----------------------------------------------------


def test_batch_checks_each_command_against_the_balances_left_by_the_previous_ones():
    wallet, merchant = account(flags=WALLET, credits_posted=1_000), account()
    batch = engine(wallet, merchant)
    results = batch.apply([Posted(uuid7(), wallet.id, merchant.id, amount, "CNY") for amount in (600, 600, 400)])
    assert codes(results) == [ResultCode.OK, ResultCode.INSUFFICIENT_FUNDS, ResultCode.OK]
    assert (wallet.debits_posted, merchant.credits_posted) == (1_000, 1_000)
    assert [t.amount_minor for t in batch.new_transfers] == [600, 400]
    assert all(t.created_at_us == NOW for t in batch.new_transfers)


def test_only_accounts_a_committed_transfer_moved_are_marked_touched():
    wallet, merchant, bystander = account(flags=WALLET, credits_posted=10), account(), account()
    batch = engine(wallet, merchant, bystander)
    batch.apply(
        [Posted(uuid7(), wallet.id, bystander.id, 11, "CNY"), Posted(uuid7(), wallet.id, merchant.id, 5, "CNY")]
    )
    assert (wallet.touched, merchant.touched, bystander.touched) == (True, True, False)


def test_failed_commands_leave_every_account_as_it_was():
    wallet, merchant = account(flags=WALLET, credits_posted=100), account(currency="HKD")
    before = (wallet.snapshot(), merchant.snapshot())
    batch = engine(wallet, merchant)
    results = batch.apply(
        [
            Posted(uuid7(), wallet.id, merchant.id, 50, "CNY"),
            Posted(uuid7(), wallet.id, wallet.id, 50, "CNY"),
            Posted(uuid7(), wallet.id, uuid7(), 50, "CNY"),
            Posted(uuid7(), wallet.id, merchant.id, 0, "CNY"),
        ]
    )
    assert codes(results) == [
        ResultCode.CURRENCY_MISMATCH,
        ResultCode.ACCOUNTS_MUST_BE_DIFFERENT,
        ResultCode.ACCOUNT_NOT_FOUND,
        ResultCode.INVALID_AMOUNT,
    ]
    assert (wallet.snapshot(), merchant.snapshot()) == before
    assert batch.new_transfers == [] and batch.known == {}


def test_rules_are_checked_in_a_stable_order():
    """A command that breaks several rules reports the most basic one first."""
    frozen = account(flags=WALLET, status=AccountStatus.FROZEN, currency="HKD")
    open_ = account()
    batch = engine(frozen, open_)
    results = batch.apply(
        [
            Posted(uuid7(), frozen.id, uuid7(), 0, "CNY"),  # bad amount before unknown account
            Posted(uuid7(), frozen.id, uuid7(), 5, "CNY"),  # unknown account before frozen
            Posted(uuid7(), frozen.id, open_.id, 5, "CNY"),  # frozen before currency and funds
        ]
    )
    assert codes(results) == [ResultCode.INVALID_AMOUNT, ResultCode.ACCOUNT_NOT_FOUND, ResultCode.ACCOUNT_FROZEN]


def test_frozen_wins_over_closed_when_both_accounts_are_blocked():
    frozen, closed = account(status=AccountStatus.FROZEN), account(status=AccountStatus.CLOSED)
    other = account()
    results = engine(frozen, closed, other).apply(
        [Posted(uuid7(), frozen.id, closed.id, 1, "CNY"), Posted(uuid7(), other.id, closed.id, 1, "CNY")]
    )
    assert codes(results) == [ResultCode.ACCOUNT_FROZEN, ResultCode.ACCOUNT_CLOSED]


def test_overflow_is_refused_on_either_side():
    big_debit, big_credit = account(debits_posted=BIGINT_MAX - 5), account(credits_pending=BIGINT_MAX - 5)
    plain = account()
    results = engine(big_debit, big_credit, plain).apply(
        [
            Posted(uuid7(), big_debit.id, plain.id, 6, "CNY"),
            Posted(uuid7(), plain.id, big_credit.id, 6, "CNY"),
            Posted(uuid7(), big_debit.id, plain.id, 5, "CNY"),
        ]
    )
    assert codes(results) == [ResultCode.OVERFLOW, ResultCode.OVERFLOW, ResultCode.OK]
    assert big_debit.debits_posted == BIGINT_MAX


def test_unknown_command_kind_is_invalid_command():
    a, b = account(), account()
    command = dataclasses.replace(Posted(uuid7(), a.id, b.id, 1, "CNY"), kind=99)
    assert codes(engine(a, b).apply([command])) == [ResultCode.INVALID_COMMAND]


# -- limits ---------------------------------------------------------------------------------------


def test_daily_total_of_an_earlier_day_does_not_count_today_and_is_replaced():
    wallet = account(
        flags=WALLET,
        credits_posted=10_000,
        daily_cap=1_000,
        debit_day=TODAY - 1,
        debits_day=1_000,
        debit_year=THIS_YEAR,
        debits_year=1_000,
    )
    merchant = account()
    assert engine(wallet, merchant).apply([Posted(uuid7(), wallet.id, merchant.id, 1_000, "CNY")])[0].ok
    assert (wallet.debit_day, wallet.debits_day_minor, wallet.debit_year, wallet.debits_year_minor) == (
        TODAY,
        1_000,
        THIS_YEAR,
        2_000,
    )


def test_annual_total_of_last_year_does_not_count_this_year():
    wallet = account(flags=WALLET, credits_posted=10_000, annual_cap=1_000, debit_year=THIS_YEAR - 1, debits_year=1_000)
    merchant = account()
    results = engine(wallet, merchant).apply(
        [Posted(uuid7(), wallet.id, merchant.id, 1_000, "CNY"), Posted(uuid7(), wallet.id, merchant.id, 1, "CNY")]
    )
    assert codes(results) == [ResultCode.OK, ResultCode.ANNUAL_DEBIT_CAP_EXCEEDED]


def test_caps_at_exactly_their_value_are_allowed():
    wallet = account(flags=WALLET, credits_posted=10_000, transfer_cap=300, daily_cap=600, annual_cap=900)
    sink = account(balance_cap=900)
    results = engine(wallet, sink).apply([Posted(uuid7(), wallet.id, sink.id, 300, "CNY") for _ in range(4)])
    assert codes(results) == [
        ResultCode.OK,
        ResultCode.OK,
        ResultCode.DAILY_DEBIT_CAP_EXCEEDED,
        ResultCode.DAILY_DEBIT_CAP_EXCEEDED,
    ]


def test_balance_cap_is_checked_before_the_daily_cap_and_after_funds():
    wallet = account(flags=WALLET, credits_posted=100, daily_cap=10)
    capped = account(balance_cap=50)
    results = engine(wallet, capped).apply(
        [
            Posted(uuid7(), wallet.id, capped.id, 101, "CNY"),
            Posted(uuid7(), wallet.id, capped.id, 51, "CNY"),
            Posted(uuid7(), wallet.id, capped.id, 11, "CNY"),
        ]
    )
    assert codes(results) == [
        ResultCode.INSUFFICIENT_FUNDS,
        ResultCode.BALANCE_CAP_EXCEEDED,
        ResultCode.DAILY_DEBIT_CAP_EXCEEDED,
    ]


def test_released_hold_is_given_back_only_to_the_day_and_year_it_was_counted_in():
    wallet, merchant = account(flags=WALLET, credits_posted=10_000), account()
    yesterday = NOW - 86_400 * 1_000_000
    old_hold = stored_pending(wallet, merchant, 400, created_at_us=yesterday)
    today_hold = stored_pending(wallet, merchant, 300)
    wallet.debit_day, wallet.debits_day_minor, wallet.debit_year, wallet.debits_year_minor = TODAY, 300, THIS_YEAR, 700
    batch = engine(wallet, merchant, known={old_hold.id: old_hold, today_hold.id: today_hold})
    results = batch.apply([Void(uuid7(), old_hold.id), Post(uuid7(), today_hold.id, 100)])
    assert codes(results) == [ResultCode.OK, ResultCode.OK]
    # The old hold leaves today's total alone but comes off the year; the post keeps 100 and gives back 200.
    assert (wallet.debits_day_minor, wallet.debits_year_minor) == (100, 100)


# -- linked chains --------------------------------------------------------------------------------


def test_failed_chain_restores_balances_day_totals_ids_and_resolutions():
    wallet = account(
        flags=WALLET,
        credits_posted=1_000,
        daily_cap=5_000,
        debit_day=TODAY,
        debits_day=10,
        debit_year=THIS_YEAR,
        debits_year=10,
    )
    merchant = account()
    hold = stored_pending(wallet, merchant, 200)
    before = (wallet.snapshot(), merchant.snapshot())
    batch = engine(wallet, merchant, known={hold.id: hold})
    new_pending = uuid7()
    chain = [
        Posted(uuid7(), wallet.id, merchant.id, 100, "CNY", linked=True),
        Post(uuid7(), hold.id, linked=True),
        Pending(new_pending, wallet.id, merchant.id, 50, "CNY", linked=True),
        Void(uuid7(), new_pending, linked=True),
        Posted(uuid7(), wallet.id, merchant.id, 10_000, "CNY"),
    ]
    results = batch.apply(chain)
    assert codes(results) == [ResultCode.LINKED_EVENT_FAILED] * 4 + [ResultCode.INSUFFICIENT_FUNDS]
    assert (wallet.snapshot(), merchant.snapshot()) == before
    assert batch.known == {hold.id: hold} and batch.resolved == {} and batch.new_transfers == []


def test_chain_ends_at_the_first_unlinked_command_and_the_next_chain_is_independent():
    wallet, merchant = account(flags=WALLET, credits_posted=100), account()
    results = engine(wallet, merchant).apply(
        [
            Posted(uuid7(), wallet.id, merchant.id, 10, "CNY", linked=True),
            Posted(uuid7(), wallet.id, merchant.id, 10, "CNY"),
            Posted(uuid7(), wallet.id, merchant.id, 10, "CNY", linked=True),
            Posted(uuid7(), wallet.id, merchant.id, 500, "CNY"),
        ]
    )
    assert codes(results) == [
        ResultCode.OK,
        ResultCode.OK,
        ResultCode.LINKED_EVENT_FAILED,
        ResultCode.INSUFFICIENT_FUNDS,
    ]
    assert merchant.credits_posted == 20


def test_open_chain_at_the_end_answers_every_command_and_runs_none():
    wallet, merchant = account(flags=WALLET, credits_posted=100), account()
    batch = engine(wallet, merchant)
    results = batch.apply(
        [Posted(uuid7(), wallet.id, merchant.id, 10, "CNY")]
        + [Posted(uuid7(), wallet.id, merchant.id, 10, "CNY", linked=True) for _ in range(3)]
    )
    assert codes(results) == [
        ResultCode.OK,
        ResultCode.LINKED_EVENT_FAILED,
        ResultCode.LINKED_EVENT_FAILED,
        ResultCode.LINKED_EVENT_CHAIN_OPEN,
    ]
    assert len(batch.new_transfers) == 1


# -- two-phase ------------------------------------------------------------------------------------


def test_post_moves_the_posted_part_and_releases_the_whole_hold():
    wallet, merchant = account(flags=WALLET, credits_posted=1_000), account()
    hold = stored_pending(wallet, merchant, 600)
    batch = engine(wallet, merchant, known={hold.id: hold})
    [result] = batch.apply([Post(uuid7(), hold.id, 250)])
    assert result.ok
    assert (wallet.debits_posted, wallet.debits_pending, merchant.credits_posted, merchant.credits_pending) == (
        250,
        0,
        250,
        0,
    )
    assert (result.transfer.posted_delta, result.transfer.pending_delta) == (250, -600)
    assert batch.resolved == {hold.id: TransferKind.POST_PENDING}


def test_hold_expires_at_its_timeout_instant():
    wallet, merchant = account(flags=WALLET, credits_posted=1_000), account()
    hold = stored_pending(wallet, merchant, 600, timeout_s=60, created_at_us=NOW - 60_000_000)
    known = {hold.id: hold}
    expire = TransferCommand(uuid7(), TransferKind.EXPIRE_PENDING, pending_id=hold.id)
    assert codes(engine(wallet, merchant, known=known, now_us=NOW - 1).apply([expire])) == [ResultCode.INVALID_COMMAND]
    assert codes(engine(wallet, merchant, known=known, now_us=NOW - 1).apply([Post(uuid7(), hold.id)])) == [
        ResultCode.OK
    ]
    assert codes(engine(wallet, merchant, known=known, now_us=NOW).apply([Post(uuid7(), hold.id)])) == [
        ResultCode.PENDING_TRANSFER_EXPIRED
    ]


def test_expiry_releases_the_hold_on_frozen_accounts_but_post_does_not():
    wallet, merchant = account(flags=WALLET, credits_posted=1_000), account(status=AccountStatus.FROZEN)
    hold = stored_pending(wallet, merchant, 600, timeout_s=1, created_at_us=NOW - 2_000_000)
    other = stored_pending(wallet, merchant, 100)
    results = engine(wallet, merchant, known={hold.id: hold, other.id: other}).apply(
        [TransferCommand(uuid7(), TransferKind.EXPIRE_PENDING, pending_id=hold.id), Post(uuid7(), other.id)]
    )
    assert codes(results) == [ResultCode.OK, ResultCode.ACCOUNT_FROZEN]
    assert (wallet.debits_pending, merchant.credits_pending) == (100, 100)


@pytest.mark.parametrize(
    ("earlier", "code"),
    [
        (TransferKind.POST_PENDING, ResultCode.PENDING_TRANSFER_ALREADY_POSTED),
        (TransferKind.VOID_PENDING, ResultCode.PENDING_TRANSFER_ALREADY_VOIDED),
        (TransferKind.EXPIRE_PENDING, ResultCode.PENDING_TRANSFER_EXPIRED),
    ],
)
def test_a_resolved_hold_reports_how_it_was_resolved(earlier, code):
    wallet, merchant = account(flags=WALLET, credits_posted=1_000), account()
    hold = stored_pending(wallet, merchant, 600)
    wallet.debits_pending = merchant.credits_pending = 0  # it was resolved
    results = engine(wallet, merchant, known={hold.id: hold}, resolved={hold.id: earlier}).apply(
        [Post(uuid7(), hold.id), Void(uuid7(), hold.id)]
    )
    assert codes(results) == [code, code]


def test_resolution_of_a_hold_whose_accounts_were_not_locked_is_account_not_found():
    wallet, merchant = account(flags=WALLET, credits_posted=1_000), account()
    hold = stored_pending(wallet, merchant, 600)
    results = engine(wallet, known={hold.id: hold}).apply([Void(uuid7(), hold.id)])
    assert codes(results) == [ResultCode.ACCOUNT_NOT_FOUND]


# -- idempotency ----------------------------------------------------------------------------------


def test_replays_need_every_field_the_same():
    wallet, merchant = account(flags=WALLET, credits_posted=1_000), account()
    original = Pending(uuid7(), wallet.id, merchant.id, 100, "CNY", timeout_s=30, user_data="x")
    batch = engine(wallet, merchant)
    variants = [
        dataclasses.replace(original, timeout_s=31),
        dataclasses.replace(original, timeout_s=None),
        dataclasses.replace(original, user_data=None),
        dataclasses.replace(original, kind=TransferKind.POSTED, timeout_s=None),
    ]
    # The linked variant heads a chain that a true replay of the original closes.
    relinked = dataclasses.replace(original, linked=True)
    results = batch.apply([original, original, *variants, relinked, original])
    assert [(r.code, r.replayed) for r in results[:2]] == [(ResultCode.OK, False), (ResultCode.OK, True)]
    assert codes(results[2:]) == [ResultCode.EXISTS_WITH_DIFFERENT_FIELDS] * 5 + [ResultCode.LINKED_EVENT_FAILED]
    assert wallet.debits_pending == 100


def test_post_replay_accepts_omitted_or_matching_accounts_and_currency():
    wallet, merchant = account(flags=WALLET, credits_posted=1_000), account()
    hold = stored_pending(wallet, merchant, 600)
    post_id = uuid7()
    batch = engine(wallet, merchant, known={hold.id: hold})
    full = TransferCommand(post_id, TransferKind.POST_PENDING, wallet.id, merchant.id, 600, "CNY", pending_id=hold.id)
    results = batch.apply(
        [
            Post(post_id, hold.id),
            full,
            dataclasses.replace(full, currency="HKD"),
            dataclasses.replace(full, pending_id=uuid7()),
        ]
    )
    assert [(r.code, r.replayed) for r in results] == [
        (ResultCode.OK, False),
        (ResultCode.OK, True),
        (ResultCode.EXISTS_WITH_DIFFERENT_FIELDS, False),
        (ResultCode.EXISTS_WITH_DIFFERENT_FIELDS, False),
    ]


# -- which accounts a batch locks -----------------------------------------------------------------


def test_accounts_needed_are_the_named_ones_and_those_of_known_pending_transfers():
    a, b, c, d = account(), account(), account(), account()
    hold = stored_pending(c, d, 5)
    commands = [Posted(uuid7(), a.id, b.id, 1, "CNY"), Post(uuid7(), hold.id), Void(uuid7(), uuid7())]
    assert accounts_needed(commands, {hold.id: hold}) == {a.id, b.id, c.id, d.id}
    assert accounts_needed(commands, {}) == {a.id, b.id}


# -- a property: whatever the batch, the books balance ---------------------------------------------

_commands = st.lists(
    st.tuples(
        st.sampled_from(["posted", "pending", "post", "void"]),
        st.integers(0, 3),
        st.integers(0, 3),
        st.integers(-5, 700),
        st.booleans(),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(_commands)
def test_any_batch_keeps_debits_equal_to_credits_and_wallets_within_their_flags(plan):
    states = [
        account(flags=WALLET, credits_posted=500),
        account(flags=WALLET, credits_posted=200),
        account(),
        account(flags=DEBIT_NORMAL, debits_posted=300),
    ]
    # Seed the books so that the starting point balances: the plain account holds the other side.
    states[2].debits_posted, states[2].credits_posted = 700, 300
    batch = engine(*states)
    pendings: list[UUID] = []
    commands = []
    for kind, debit, credit, amount, linked in plan:
        if kind in ("posted", "pending"):
            command_id = uuid7()
            maker = Posted if kind == "posted" else Pending
            commands.append(maker(command_id, states[debit].id, states[credit].id, amount, "CNY", linked=linked))
            if kind == "pending":
                pendings.append(command_id)
        elif pendings:
            target = pendings[amount % len(pendings)]
            commands.append(
                Post(uuid7(), target, amount if amount > 0 else None, linked=linked)
                if kind == "post"
                else Void(uuid7(), target, linked=linked)
            )
    results = batch.apply(commands)
    assert len(results) == len(commands)
    assert sum(s.debits_posted for s in states) == sum(s.credits_posted for s in states)
    assert sum(s.debits_pending for s in states) == sum(s.credits_pending for s in states)
    for state in states:
        assert min(state.debits_posted, state.credits_posted, state.debits_pending, state.credits_pending) >= 0
        if state.flags & WALLET:
            assert state.debits_posted + state.debits_pending <= state.credits_posted
        if state.flags & DEBIT_NORMAL:
            assert state.credits_posted + state.credits_pending <= state.debits_posted
    fresh = [r for r in results if r.ok and not r.replayed]
    assert [r.transfer for r in fresh] == batch.new_transfers


# -- clocks that disagree ----------------------------------------------------------------------


def test_a_lagging_clock_counts_into_the_newer_day_instead_of_reopening_yesterday():
    """Two processes whose clocks straddle Shanghai midnight: the one still in yesterday must not
    reset the day counter back and so hand the wallet a second daily allowance."""
    wallet = account(
        flags=WALLET,
        credits_posted=10_000,
        daily_cap=1_000,
        debit_day=TODAY + 1,
        debits_day=900,
        debit_year=THIS_YEAR,
        debits_year=900,
    )
    merchant = account()
    lagging = engine(wallet, merchant, now_us=NOW)  # its clock still says TODAY
    assert codes(lagging.apply([Posted(uuid7(), wallet.id, merchant.id, 200, "CNY")])) == [
        ResultCode.DAILY_DEBIT_CAP_EXCEEDED
    ]
    assert codes(lagging.apply([Posted(uuid7(), wallet.id, merchant.id, 100, "CNY")])) == [ResultCode.OK]
    assert (wallet.debit_day, wallet.debits_day_minor) == (TODAY + 1, 1_000)


def test_a_posted_command_without_accounts_is_an_invalid_command():
    results = engine().apply([TransferCommand(uuid7(), TransferKind.POSTED, None, None, 100, "CNY")])
    assert codes(results) == [ResultCode.INVALID_COMMAND]


def test_the_in_memory_types_take_their_fields_in_the_schemas_one_column_order():
    """The stores build rows and SQL from ledger.schema's column lists and construct these types
    positionally from them: one order for all."""
    import dataclasses

    from ledger.model import Refusal
    from ledger.schema import ACCOUNT_STATE_COLUMNS, REFUSAL_COLUMNS, TRANSFER_COLUMNS, accounts, transfers

    assert [f.name for f in dataclasses.fields(AccountState)][: len(ACCOUNT_STATE_COLUMNS)] == list(
        ACCOUNT_STATE_COLUMNS
    )
    assert set(ACCOUNT_STATE_COLUMNS) <= set(accounts.c.keys())
    assert [f.name for f in dataclasses.fields(Refusal)] == list(REFUSAL_COLUMNS)
    assert set(TRANSFER_COLUMNS) == set(transfers.c.keys())
    assert {f.name for f in dataclasses.fields(Transfer)} == set(TRANSFER_COLUMNS)


def test_an_overdraft_cap_counts_pending_debits_and_posted_credits_only():
    position = account(debit_balance_cap=100, credits_pending=1_000)
    sink = account()
    results = engine(position, sink).apply(
        [
            TransferCommand.pending(uuid7(), position.id, sink.id, 60, "CNY"),
            TransferCommand.posted(uuid7(), position.id, sink.id, 41, "CNY"),  # 60 held + 41 > 100
            TransferCommand.posted(uuid7(), position.id, sink.id, 40, "CNY"),  # exactly 100
            TransferCommand.posted(uuid7(), sink.id, position.id, 30, "CNY"),  # a posted credit: 30 of room
            TransferCommand.posted(uuid7(), position.id, sink.id, 31, "CNY"),
            TransferCommand.posted(uuid7(), position.id, sink.id, 30, "CNY"),
        ]
    )
    assert codes(results) == [
        ResultCode.OK, ResultCode.DEBIT_BALANCE_CAP_EXCEEDED, ResultCode.OK, ResultCode.OK,
        ResultCode.DEBIT_BALANCE_CAP_EXCEEDED, ResultCode.OK,
    ]  # fmt: skip
