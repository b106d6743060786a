"""Seeding a ledger for a load test, through the HTTP API as an integrator would.

The operator registers the load-test institutions (each with a fresh Ed25519 key); each Hong Kong
institution opens a treasury wallet (a merchant-kind wallet: no caps), cashes the whole float into
it with one deposit, opens its customers' wallets with ``POST /v1/wallet-batches`` and funds them
from the treasury with ``POST /v1/transfer-batches`` (1,000 per request, a few requests in flight).
A Shenzhen acquirer opens the merchant wallets: the first is the hot merchant.

``hot-transfer`` and ``operator`` get e-CNY (CNY) tier-2 personal wallets; ``merchant-load`` gets
HKD ``svf-verified`` personal wallets (payers) and CNY merchants, and the rest of a corridor:

- each Hong Kong institution registers a net debit cap of its whole float (CNY, as many units as
  the HKD float: HKD is worth less than CNY, so its payers can never pay more) and the operator
  prefunds as much settlement liquidity, so the cap in force never refuses an ordinary payment;
- a few never-funded wallets per institution (``poor_wallets``): a payment from one is refused
  ``insufficient_funds``;
- one more Hong Kong institution, ``lt-hk-capped``, with a CNY 1.00 cap and no liquidity (cap in
  force: zero) and a few funded wallets: its every payment is refused ``net_debit_cap_exceeded``;
- the acquirer is prefunded too, so that a refund in a window after its payment's (the acquirer's
  position there may be a net debit) is never refused by the acquirer's cap in force;
- a settlement bank, and the HKD→CNY rate.

Everything a Locust user needs (the institutions' private seeds, the wallet ids) is written to
``seed.json``: a load test's own throw-away keys, kept beside its reports.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from ledger.ids import uuid7
from ledger.keys import public_key_text
from service.client import LedgerClient, transfer_payload

OPERATOR_ID = "operator"
HK_PREFIX = "lt-hk-"
ACQUIRER_ID = "lt-sz-0"
CAPPED_ID = "lt-hk-capped"
BANK_ID = "lt-bank"
CAPPED_CAP = "1.00"  # registered; with no liquidity the cap in force is zero
CAPPED_WALLETS = 4
POOR_WALLETS = 3  # per Hong Kong institution, never funded
HKD_CNY_RATE = {"source_currency": "HKD", "target_currency": "CNY", "mid_rate": "0.9234", "spread_bps": 50}
BATCH_SIZE = 1_000  # the API's maximum per wallet or transfer batch
BATCHES_IN_FLIGHT = 4
SEED_METADATA = {"seed": True}  # marks funding transfers, so the verifier tells them from load
SEED_TIMEOUT_S = 120.0
MERCHANT_CATEGORIES = ("5812", "5411", "5999", "4111", "7011")


@dataclass(frozen=True)
class SeedPlan:
    """What to seed, sized by the run command's flags."""

    scenario: str
    wallets: int = 2_000
    institutions: int = 2
    merchants: int = 1
    funding: str = "1000.00"  # per wallet, in the wallets' currency

    @property
    def currency(self) -> str:
        return "HKD" if self.scenario == "merchant-load" else "CNY"


@dataclass
class SeedResult:
    base_url: str
    scenario: str
    currency: str
    funding: str
    institutions: dict[str, str] = field(default_factory=dict)  # id -> base64 private seed
    operator_key: str = ""
    wallets: dict[str, list[str]] = field(default_factory=dict)  # institution id -> wallet ids
    merchants: list[str] = field(default_factory=list)  # merchant wallet ids, the hot one first
    acquirer: str = ACQUIRER_ID
    seconds: dict[str, float] = field(default_factory=dict)
    # merchant-load only: wallets that hold nothing, and an institution whose cap in force is zero
    poor_wallets: dict[str, list[str]] = field(default_factory=dict)
    capped_institution: str = ""
    capped_wallets: list[str] = field(default_factory=list)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))


def read_seed(path: Path) -> SeedResult:
    return SeedResult(**json.loads(path.read_text()))


def key_text(key: SigningKey) -> str:
    return base64.b64encode(bytes(key)).decode("ascii")


def key_from_text(text: str) -> SigningKey:
    return SigningKey(base64.b64decode(text))


async def seed(
    base_url: str, operator_key: SigningKey, plan: SeedPlan, *, log: Callable[[str], None] = print
) -> SeedResult:
    """Seed through the API at ``base_url``; returns what the Locust users need."""
    result = SeedResult(base_url, plan.scenario, plan.currency, plan.funding, operator_key=key_text(operator_key))
    started = time.perf_counter()
    keys = {f"{HK_PREFIX}{n}": SigningKey.generate() for n in range(plan.institutions)}
    keys[ACQUIRER_ID] = SigningKey.generate()
    payments = plan.scenario == "merchant-load"
    shares = _split(plan.wallets, plan.institutions)
    caps = {f"{HK_PREFIX}{n}": _times(plan.funding, share) for n, share in enumerate(shares)}
    if payments:
        keys[CAPPED_ID] = SigningKey.generate()
        keys[BANK_ID] = SigningKey.generate()
        caps[CAPPED_ID] = CAPPED_CAP
    async with LedgerClient(base_url, key_id=OPERATOR_ID, signing_key=operator_key, timeout_s=SEED_TIMEOUT_S) as op:
        for institution_id, key in keys.items():
            cap = {"amount": caps[institution_id], "currency": "CNY"} if payments and institution_id in caps else None
            await op.create_institution(
                institution_id, institution_id.upper(), _kind(institution_id), public_key_text(key.verify_key),
                net_debit_cap=cap,
            )  # fmt: skip
            result.institutions[institution_id] = key_text(key)
        if payments:
            await op.post("/v1/fx/rates", HKD_CNY_RATE)
        # Settlement liquidity: a transfer or payment to another institution records an obligation
        # under the payer's net debit cap in force, which liquidity bounds. An institution's net debit
        # can never pass its whole float, so that much never refuses an ordinary request.
        liquidity = {institution_id: cap for institution_id, cap in caps.items() if institution_id != CAPPED_ID}
        if payments:
            liquidity[ACQUIRER_ID] = _times(plan.funding, plan.wallets)
        for institution_id, amount in liquidity.items():
            for currency in sorted({"CNY", plan.currency}):
                payload = {"id": str(uuid7()), "amount": amount, "currency": currency}
                await op.post(f"/v1/institutions/{institution_id}/liquidity", payload)
    result.seconds["institutions"] = time.perf_counter() - started

    started = time.perf_counter()
    async with _client(base_url, ACQUIRER_ID, keys[ACQUIRER_ID]) as acquirer:
        result.merchants = await _open_merchants(acquirer, max(1, plan.merchants))
    hk = [k for k in keys if k.startswith(HK_PREFIX) and k != CAPPED_ID]
    await asyncio.gather(
        *(
            _open_and_fund(base_url, institution_id, keys[institution_id], count, plan, result)
            for institution_id, count in zip(hk, shares)
        )
    )
    if payments:
        async with _client(base_url, CAPPED_ID, keys[CAPPED_ID]) as capped:
            result.capped_institution = CAPPED_ID
            result.capped_wallets = await _open_wallets(capped, _person_specs(CAPPED_ID, CAPPED_WALLETS, plan))
            for wallet_id in result.capped_wallets:
                await capped.deposit(wallet_id, plan.funding)
    result.seconds["wallets_and_funding"] = time.perf_counter() - started
    total_s = result.seconds["institutions"] + result.seconds["wallets_and_funding"]
    log(
        f"seeded {plan.wallets:,} {plan.currency} wallets over {plan.institutions} institutions and "
        f"{len(result.merchants):,} merchants in {total_s:.1f} s"
    )
    return result


def _client(base_url: str, key_id: str, key: SigningKey) -> LedgerClient:
    return LedgerClient(base_url, key_id=key_id, signing_key=key, timeout_s=SEED_TIMEOUT_S)


def _kind(institution_id: str) -> str:
    if institution_id == ACQUIRER_ID:
        return "sz_acquirer"
    return "settlement_bank" if institution_id == BANK_ID else "hk_payment_institution"


def _person_specs(institution_id: str, count: int, plan: SeedPlan, *, first: int = 0) -> list[dict[str, Any]]:
    profile = {"limit_profile": "svf-verified"} if plan.currency == "HKD" else {"tier": 2}
    return [
        {"id": str(uuid7()), "owner_ref": f"{institution_id}-c{n:07d}", "owner_kind": "person"}
        | {"currency": plan.currency}
        | profile
        for n in range(first, first + count)
    ]


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if n < total % parts else 0) for n in range(parts)]


async def _open_merchants(acquirer: LedgerClient, count: int) -> list[str]:
    specs = [
        {
            "id": str(uuid7()),
            "owner_ref": f"lt-mch-{n:06d}",
            "owner_kind": "merchant",
            "currency": "CNY",
            "merchant": {"name": f"Load-test merchant {n}", "city": "Shenzhen", "category_code": _category(n)},
        }
        for n in range(count)
    ]
    return await _open_wallets(acquirer, specs)


def _category(n: int) -> str:
    return MERCHANT_CATEGORIES[n % len(MERCHANT_CATEGORIES)]


async def _open_and_fund(
    base_url: str, institution_id: str, key: SigningKey, count: int, plan: SeedPlan, result: SeedResult
) -> None:
    async with _client(base_url, institution_id, key) as client:
        treasury = await client.create_wallet(
            f"{institution_id}-treasury",
            plan.currency,
            owner_kind="merchant",
            merchant={"name": f"{institution_id} treasury", "city": "Hong Kong", "category_code": "6012"},
        )
        float_total = _times(plan.funding, count)
        await client.deposit(treasury["id"], float_total)
        started = time.perf_counter()
        wallet_ids = await _open_wallets(client, _person_specs(institution_id, count, plan))
        result.wallets[institution_id] = wallet_ids
        if plan.scenario == "merchant-load":
            poor = _person_specs(institution_id, POOR_WALLETS, plan, first=count)
            result.poor_wallets[institution_id] = await _open_wallets(client, poor)
        result.seconds[f"{institution_id}_wallets"] = time.perf_counter() - started
        started = time.perf_counter()
        fundings = [
            transfer_payload(treasury["id"], wallet_id, plan.funding, plan.currency, metadata=SEED_METADATA)
            for wallet_id in wallet_ids
        ]
        await _in_batches(fundings, lambda chunk: _fund(client, chunk))
        result.seconds[f"{institution_id}_funding"] = time.perf_counter() - started


async def _open_wallets(client: LedgerClient, specs: Sequence[dict[str, Any]]) -> list[str]:
    async def open_chunk(chunk: Sequence[dict[str, Any]]) -> None:
        answer = (await client.post("/v1/wallet-batches", {"wallets": list(chunk)})).data
        refused = [item for item in answer["items"] if item["status"] not in (200, 201)]
        if refused:
            raise RuntimeError(f"seeding: {len(refused)} wallets refused, the first: {refused[0]['problem']}")

    await _in_batches(specs, open_chunk)
    return [spec["id"] for spec in specs]


async def _fund(client: LedgerClient, chunk: Sequence[dict[str, Any]]) -> None:
    answer = await client.transfer_batch(list(chunk), atomic=False)
    refused = [item for item in answer["items"] if item["status"] not in (200, 201)]
    if refused:
        raise RuntimeError(f"seeding: {len(refused)} fundings refused, the first: {refused[0]['problem']}")


async def _in_batches(items: Sequence[Any], send: Callable[[Sequence[Any]], Awaitable[None]]) -> None:
    """``send`` each chunk of ``BATCH_SIZE``, at most ``BATCHES_IN_FLIGHT`` at once."""
    in_flight = asyncio.Semaphore(BATCHES_IN_FLIGHT)

    async def one(chunk: Sequence[Any]) -> None:
        async with in_flight:
            await send(chunk)

    await asyncio.gather(*(one(items[n : n + BATCH_SIZE]) for n in range(0, len(items), BATCH_SIZE)))


def _times(amount: str, count: int) -> str:
    units, _, cents = amount.partition(".")
    minor = (int(units) * 100 + int(cents.ljust(2, "0") or 0)) * max(count, 1)
    return f"{minor // 100}.{minor % 100:02d}"
