"""The wallets layer on SQLite and PostgreSQL: institutions and key rotation, wallets with their
limit profiles, tenancy, scoped transfer ids, deposits, withdrawals, transfers, holds, statements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID

import pytest
from nacl.signing import SigningKey

from ledger import Batcher, ResultCode
from ledger.ids import uuid7
from wallets.errors import Conflict, InvalidRequest, LimitBelowBalance, NotFound, WalletClosed, WalletNotEmpty
from wallets.ids import scoped_id
from wallets.model import (
    AccountRole,
    InstitutionKind,
    Merchant,
    OwnerKind,
    TransferRequest,
    TransferStatus,
    WalletSpec,
    WalletStatus,
)
from wallets.service import PERSONAL_HOLD_TIMEOUT_S_DEFAULT, PERSONAL_HOLD_TIMEOUT_S_MAX, WalletBook

HK = InstitutionKind.HK_PAYMENT_INSTITUTION
SZ = InstitutionKind.SZ_ACQUIRER


def key() -> bytes:
    return bytes(SigningKey.generate().verify_key)


@pytest.fixture
async def book(ledger) -> AsyncIterator[WalletBook]:
    async with Batcher(ledger) as batcher:
        book = WalletBook(ledger, batcher, clock=ledger.clock)
        await book.register_institution("hk-alphapay", HK, "AlphaPay HK", key())
        await book.register_institution("sz-bank", SZ, "Shenzhen Acquirer", key())
        yield book


async def person(book: WalletBook, institution: str = "hk-alphapay", currency: str = "CNY", **spec) -> UUID:
    wallet, created = await book.open_wallet(institution, WalletSpec("cust-1", OwnerKind.PERSON, currency, **spec))
    assert created
    return wallet.id


async def merchant(book: WalletBook, institution: str = "sz-bank") -> UUID:
    spec = WalletSpec("shop-1", OwnerKind.MERCHANT, "CNY", merchant=Merchant("Tea House", "Shenzhen", "5812"))
    wallet, _ = await book.open_wallet(institution, spec)
    return wallet.id


async def funded(book: WalletBook, amount: int, **spec) -> UUID:
    wallet = await person(book, **spec)
    assert (await book.deposit("hk-alphapay", wallet, uuid7(), amount)).ok
    return wallet


def pay(source: UUID, target: UUID, amount: int, **fields) -> TransferRequest:
    return TransferRequest(
        fields.pop("id", None) or uuid7(), source, target, amount, fields.pop("currency", "CNY"), **fields
    )


# -- institutions --------------------------------------------------------------------------------


async def test_registering_again_is_idempotent_and_other_fields_conflict(book):
    institution = await book.get_institution("hk-alphapay")
    again, created = await book.register_institution("hk-alphapay", HK, "AlphaPay HK", institution.active_keys[0])
    assert not created and again == institution
    with pytest.raises(Conflict):
        await book.register_institution("hk-alphapay", SZ, "AlphaPay HK", institution.active_keys[0])
    assert {role for (_, role) in institution.accounts} == set(AccountRole)
    assert {currency for (currency, _) in institution.accounts} == {"CNY", "HKD"}


@pytest.mark.parametrize("bad_id", ["HK-Alpha", "-x", "a" * 65, "hk alpha", ""])
async def test_an_institution_id_must_be_a_slug(book, bad_id):
    with pytest.raises(InvalidRequest, match="slug"):
        await book.register_institution(bad_id, HK, "x", key())


async def test_a_rotated_key_keeps_verifying_until_retired_and_the_last_key_stays(book):
    [old] = await book.active_keys("hk-alphapay")
    new = key()
    await book.add_key("hk-alphapay", new)
    assert set(await book.active_keys("hk-alphapay")) == {old, new}
    await book.retire_key("hk-alphapay", old)
    assert await book.active_keys("hk-alphapay") == [new]
    with pytest.raises(InvalidRequest, match="last active key"):
        await book.retire_key("hk-alphapay", new)
    with pytest.raises(InvalidRequest, match="retired"):
        await book.add_key("hk-alphapay", old)
    assert await book.active_keys("nobody") == []


# -- wallets -------------------------------------------------------------------------------------


async def test_a_personal_cny_wallet_gets_its_ecny_category_as_core_limits(book):
    wallet = await book.get_wallet("hk-alphapay", await person(book, tier=2))
    assert (wallet.tier, wallet.profile, wallet.status) == (2, "ecny-2", WalletStatus.OPEN)
    assert (wallet.limits.balance_cap_minor, wallet.limits.transfer_cap_minor) == (50_000_000, 5_000_000)
    default = await book.get_wallet("hk-alphapay", await person(book))
    assert (default.tier, default.limits.daily_debit_cap_minor, default.limits.annual_debit_cap_minor) == (
        4, 500_000, 5_000_000,
    )  # fmt: skip
    hkd = await book.get_wallet("hk-alphapay", await person(book, currency="HKD"))
    assert (hkd.profile, hkd.tier, hkd.limits.balance_cap_minor) == ("svf-basic", None, 300_000)


@pytest.mark.parametrize(
    "spec, message",
    [
        (dict(currency="HKD", tier=2), "tier"),
        (dict(tier=5), "tier"),
        (dict(limit_profile="svf-basic"), "tier"),
        (dict(currency="HKD", limit_profile="ecny-2"), "limit_profile"),
        (dict(currency="XXX"), "currency"),
    ],
)
async def test_a_wallet_spec_that_does_not_fit_its_kind_is_refused(book, spec, message):
    spec = dict(spec)  # the parameter is shared by both backends' runs
    currency = spec.pop("currency", "CNY")
    with pytest.raises(InvalidRequest, match=message):
        await book.open_wallet("hk-alphapay", WalletSpec("cust", OwnerKind.PERSON, currency, **spec))


async def test_opening_the_same_wallet_id_again_is_idempotent_and_other_fields_conflict(book):
    wallet_id = uuid7()
    spec = WalletSpec("cust-9", OwnerKind.PERSON, "CNY", id=wallet_id, tier=3)
    first, created = await book.open_wallet("hk-alphapay", spec)
    again, created_again = await book.open_wallet("hk-alphapay", spec)
    assert created and not created_again and again == first
    with pytest.raises(Conflict):
        await book.open_wallet("hk-alphapay", WalletSpec("cust-9", OwnerKind.PERSON, "CNY", id=wallet_id, tier=2))
    with pytest.raises(Conflict):
        await book.open_wallet("sz-bank", spec)


async def test_an_institution_never_sees_or_moves_anothers_wallet(book):
    wallet = await funded(book, 1_000)
    with pytest.raises(NotFound):
        await book.get_wallet("sz-bank", wallet)
    with pytest.raises(NotFound):
        await book.statement("sz-bank", wallet)
    with pytest.raises(NotFound):
        await book.transfer("sz-bank", pay(wallet, await merchant(book), 10))
    with pytest.raises(NotFound):
        await book.set_wallet_status("sz-bank", wallet, WalletStatus.FROZEN)
    assert (await book.get_wallet("hk-alphapay", wallet)).balances.posted_minor == 1_000


async def test_freeze_unfreeze_and_close_only_at_zero(book):
    wallet = await funded(book, 500)
    shop = await merchant(book)
    await book.set_wallet_status("hk-alphapay", wallet, WalletStatus.FROZEN)
    assert (await book.transfer("hk-alphapay", pay(wallet, shop, 10))).code is ResultCode.ACCOUNT_FROZEN
    await book.set_wallet_status("hk-alphapay", wallet, WalletStatus.OPEN)
    with pytest.raises(WalletNotEmpty):
        await book.set_wallet_status("hk-alphapay", wallet, WalletStatus.CLOSED)
    assert (await book.withdraw("hk-alphapay", wallet, uuid7(), 500)).ok
    closed = await book.set_wallet_status("hk-alphapay", wallet, WalletStatus.CLOSED)
    assert closed.status is WalletStatus.CLOSED
    with pytest.raises(WalletClosed):
        await book.set_wallet_status("hk-alphapay", wallet, WalletStatus.OPEN)


async def test_a_tier_change_is_a_sealed_account_event_and_a_downgrade_below_the_balance_is_refused(book, ledger):
    wallet = await funded(book, 1_500_000, tier=2)  # 15,000 CNY
    with pytest.raises(LimitBelowBalance):
        await book.change_tier("hk-alphapay", wallet, 4)  # tier 4 holds at most 10,000
    upgraded = await book.change_tier("hk-alphapay", wallet, 1)
    assert (upgraded.tier, upgraded.limits.balance_cap_minor) == (1, None)
    [*_, event] = await ledger.account_history(wallet)
    assert event.changes is not None and event.settings.profile == "ecny-1" and event.actor == "hk-alphapay"


# -- money ---------------------------------------------------------------------------------------


async def test_deposit_transfer_and_withdrawal_move_money_through_the_funding_account(book, ledger):
    wallet = await funded(book, 10_000)
    shop = await merchant(book)
    outcome = await book.transfer("hk-alphapay", pay(wallet, shop, 2_500, metadata={"order": "A-1"}))
    assert outcome.ok and outcome.transfer.status is TransferStatus.POSTED
    assert outcome.transfer.metadata == {"order": "A-1"}
    assert (await book.withdraw("hk-alphapay", wallet, uuid7(), 7_500)).ok
    institution = await book.get_institution("hk-alphapay")
    funding = await ledger.get_account(institution.accounts[("CNY", AccountRole.FUNDING)])
    assert funding.balances.debits_posted - funding.balances.credits_posted == 2_500  # what is still inside
    assert (await book.get_wallet("sz-bank", shop)).balances.posted_minor == 2_500


async def test_a_transfer_id_is_the_institutions_own_two_may_use_the_same(book):
    hk_wallet, sz_wallet = await funded(book, 1_000), await person(book, "sz-bank")
    await book.deposit("sz-bank", sz_wallet, uuid7(), 1_000)
    shared = uuid7()
    first = await book.transfer("hk-alphapay", pay(hk_wallet, sz_wallet, 100, id=shared))
    second = await book.transfer("sz-bank", pay(sz_wallet, hk_wallet, 300, id=shared))
    assert first.ok and second.ok and not second.replayed
    assert scoped_id("hk-alphapay", shared) != scoped_id("sz-bank", shared)
    assert (await book.get_transfer("hk-alphapay", shared)).transfer.amount_minor == 100
    assert (await book.get_transfer("sz-bank", shared)).transfer.amount_minor == 300


async def test_the_same_id_and_body_replays_and_a_refusal_replays_as_a_refusal(book):
    wallet = await funded(book, 1_000)
    shop = await merchant(book)
    request = pay(wallet, shop, 600)
    assert (await book.transfer("hk-alphapay", request)).ok
    again = await book.transfer("hk-alphapay", request)
    assert again.ok and again.replayed
    too_much = pay(wallet, shop, 600)
    refused = await book.transfer("hk-alphapay", too_much)
    assert refused.code is ResultCode.INSUFFICIENT_FUNDS and not refused.replayed
    await book.deposit("hk-alphapay", wallet, uuid7(), 5_000)
    replayed = await book.transfer("hk-alphapay", too_much)
    assert replayed.code is ResultCode.INSUFFICIENT_FUNDS and replayed.replayed
    changed = await book.transfer("hk-alphapay", pay(wallet, shop, 601, id=request.id))
    assert changed.code is ResultCode.EXISTS_WITH_DIFFERENT_FIELDS
    assert (await book.get_transfer("hk-alphapay", too_much.id)).code is ResultCode.INSUFFICIENT_FUNDS


async def test_category_caps_refuse_with_their_codes(book):
    wallet = await funded(book, 1_000_000, tier=4)  # 10,000 CNY: the balance cap
    shop = await merchant(book)
    assert (await book.deposit("hk-alphapay", wallet, uuid7(), 1)).code is ResultCode.BALANCE_CAP_EXCEEDED
    assert (await book.transfer("hk-alphapay", pay(wallet, shop, 200_001))).code is ResultCode.TRANSFER_CAP_EXCEEDED
    for _ in range(2):
        assert (await book.transfer("hk-alphapay", pay(wallet, shop, 200_000))).ok
    assert (await book.transfer("hk-alphapay", pay(wallet, shop, 100_001))).code is ResultCode.DAILY_DEBIT_CAP_EXCEEDED


async def test_a_hold_on_a_personal_wallet_always_times_out_within_an_hour(book):
    wallet = await funded(book, 1_000)
    shop = await merchant(book)
    hold = await book.transfer("hk-alphapay", pay(wallet, shop, 100, pending=True))
    assert hold.ok and hold.transfer.timeout_s == PERSONAL_HOLD_TIMEOUT_S_DEFAULT
    with pytest.raises(InvalidRequest, match="cannot stretch a daily cap"):
        await book.transfer(
            "hk-alphapay", pay(wallet, shop, 100, pending=True, timeout_s=PERSONAL_HOLD_TIMEOUT_S_MAX + 1)
        )
    with pytest.raises(InvalidRequest, match="pending transfers only"):
        await book.transfer("hk-alphapay", pay(wallet, shop, 100, timeout_s=60))


async def test_post_in_part_then_void_is_already_resolved_and_unknown_holds_are_not_found(book):
    wallet = await funded(book, 1_000)
    shop = await merchant(book)
    hold = pay(wallet, shop, 400, pending=True)
    assert (await book.transfer("hk-alphapay", hold)).ok
    posted = await book.post_pending("hk-alphapay", hold.id, 250)
    assert posted.ok and posted.transfer.amount_minor == 250 and posted.transfer.pending_id == hold.id
    assert (await book.post_pending("hk-alphapay", hold.id, 250)).replayed
    voided = await book.void_pending("hk-alphapay", hold.id)
    assert voided.code is ResultCode.PENDING_TRANSFER_ALREADY_POSTED
    view = (await book.get_transfer("hk-alphapay", hold.id)).transfer
    assert view.status is TransferStatus.POSTED_FROM_PENDING
    with pytest.raises(NotFound):
        await book.post_pending("sz-bank", hold.id, None)  # another institution's id space
    with pytest.raises(NotFound):
        await book.void_pending("hk-alphapay", uuid7())


async def test_a_statement_shows_own_ids_and_never_another_institutions(book):
    payer = await funded(book, 1_000)
    shop = await merchant(book)
    request = pay(payer, shop, 300, metadata={"order": "B-7"})
    await book.transfer("hk-alphapay", request)
    [payment] = (await book.statement("sz-bank", shop)).items
    assert payment.transfer.id != request.id and payment.transfer.metadata is None
    assert payment.side == "credit" and payment.balances_after.posted_minor == 300
    mine = (await book.statement("hk-alphapay", payer)).items
    assert mine[0].transfer.id == request.id and mine[0].transfer.metadata == {"order": "B-7"}


async def test_an_atomic_batch_is_all_or_none_and_a_plain_one_answers_each(book):
    wallet = await funded(book, 1_000)
    shop = await merchant(book)
    results = await book.transfer_batch("hk-alphapay", [pay(wallet, shop, 400), pay(wallet, shop, 700)], atomic=True)
    assert [r.code for r in results] == [ResultCode.LINKED_EVENT_FAILED, ResultCode.INSUFFICIENT_FUNDS]
    results = await book.transfer_batch(
        "hk-alphapay", [pay(wallet, shop, 400), pay(wallet, shop, 700), pay(wallet, uuid7(), 1)], atomic=False
    )
    assert [r.code for r in results] == [ResultCode.OK, ResultCode.INSUFFICIENT_FUNDS, ResultCode.ACCOUNT_NOT_FOUND]
    foreign = await person(book, "sz-bank")
    results = await book.transfer_batch("hk-alphapay", [pay(wallet, shop, 1), pay(foreign, shop, 1)], atomic=True)
    assert [r.code for r in results] == [ResultCode.LINKED_EVENT_FAILED, ResultCode.ACCOUNT_NOT_FOUND]
    assert (await book.get_wallet("hk-alphapay", wallet)).balances.posted_minor == 600


async def test_registering_again_with_a_retired_key_is_a_conflict(book):
    [old] = await book.active_keys("hk-alphapay")
    await book.add_key("hk-alphapay", key())
    await book.retire_key("hk-alphapay", old)
    with pytest.raises(Conflict):
        await book.register_institution("hk-alphapay", HK, "AlphaPay HK", old)


async def test_a_refused_post_of_a_hold_does_not_lock_the_hold_against_another_amount(book):
    """The post's id is the hold's with the amount asked for: the same post replays its answer,
    another amount is judged afresh."""
    wallet = await funded(book, 1_000)
    shop = await merchant(book)
    hold = pay(wallet, shop, 400, pending=True)
    await book.transfer("hk-alphapay", hold)
    await book.set_wallet_status("sz-bank", shop, WalletStatus.FROZEN)
    refused = await book.post_pending("hk-alphapay", hold.id, 300)
    assert refused.code is ResultCode.ACCOUNT_FROZEN
    await book.set_wallet_status("sz-bank", shop, WalletStatus.OPEN)
    assert (await book.post_pending("hk-alphapay", hold.id, 300)).replayed  # the same post: its first answer
    assert (await book.post_pending("hk-alphapay", hold.id, 200)).ok
    again = await book.post_pending("hk-alphapay", hold.id, 100)
    assert again.code is ResultCode.PENDING_TRANSFER_ALREADY_POSTED
