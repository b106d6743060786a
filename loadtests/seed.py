"""Seeding a ledger for a load test, through the HTTP API as an integrator would.

The operator registers the load-test institutions (each with a fresh Ed25519 key); each Hong Kong
institution opens a treasury wallet (a merchant-kind wallet: no caps), cashes the whole float into
it with one deposit, opens its customers' wallets with ``POST /v1/wallet-batches`` and funds them
from the treasury with ``POST /v1/transfer-batches`` (1,000 per request, a few requests in flight).
A Shenzhen acquirer opens the merchant wallets: the first is the hot merchant.

``hot-transfer`` and ``operator`` get e-CNY (CNY) tier-2 personal wallets; ``merchant-load`` gets
HKD ``svf-verified`` personal wallets (payers) and CNY merchants. Everything a Locust user needs
(the institutions' private seeds, the wallet ids) is written to ``seed.json``: a load test's own
throw-away keys, kept beside its reports.
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
    async with LedgerClient(base_url, key_id=OPERATOR_ID, signing_key=operator_key, timeout_s=SEED_TIMEOUT_S) as op:
        for institution_id, key in keys.items():
            kind = "sz_acquirer" if institution_id == ACQUIRER_ID else "hk_payment_institution"
            await op.create_institution(institution_id, institution_id.upper(), kind, public_key_text(key.verify_key))
            result.institutions[institution_id] = key_text(key)
    result.seconds["institutions"] = time.perf_counter() - started

    started = time.perf_counter()
    async with _client(base_url, ACQUIRER_ID, keys[ACQUIRER_ID]) as acquirer:
        result.merchants = await _open_merchants(acquirer, max(1, plan.merchants))
    shares = _split(plan.wallets, plan.institutions)
    await asyncio.gather(
        *(
            _open_and_fund(base_url, institution_id, keys[institution_id], count, plan, result)
            for institution_id, count in zip([k for k in keys if k != ACQUIRER_ID], shares)
        )
    )
    result.seconds["wallets_and_funding"] = time.perf_counter() - started
    total_s = result.seconds["institutions"] + result.seconds["wallets_and_funding"]
    log(
        f"seeded {plan.wallets:,} {plan.currency} wallets over {plan.institutions} institutions and "
        f"{len(result.merchants):,} merchants in {total_s:.1f} s"
    )
    return result


def _client(base_url: str, key_id: str, key: SigningKey) -> LedgerClient:
    return LedgerClient(base_url, key_id=key_id, signing_key=key, timeout_s=SEED_TIMEOUT_S)


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
        profile = {"limit_profile": "svf-verified"} if plan.currency == "HKD" else {"tier": 2}
        specs = [
            {"id": str(uuid7()), "owner_ref": f"{institution_id}-c{n:07d}", "owner_kind": "person"}
            | {"currency": plan.currency}
            | profile
            for n in range(count)
        ]
        started = time.perf_counter()
        wallet_ids = await _open_wallets(client, specs)
        result.wallets[institution_id] = wallet_ids
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
