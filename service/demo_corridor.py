"""The demo's day of the corridor, over signed HTTP: the operator sets the HKD→CNY rate, registers
a second Hong Kong institution with a net debit cap and the settlement bank, and prefunds
liquidity; Hong Kong customers pay a Shenzhen merchant through signed quotes; one payment is
refunded in part; one is refused at its institution's cap in force; the operator closes the window,
reads the netted batch and settles it; the batch is printed as the CLI prints it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from nacl.signing import SigningKey
from rich.console import Console
from rich.table import Table

from ledger.keys import public_key_text
from service.client import LedgerApiError, LedgerClient

RATE = ("HKD", "CNY", "0.9234", 50)
BETA_ID = "hk-betapay"
BANK_ID = "settlement-bank"
NEW_INSTITUTIONS = (
    (BETA_ID, "BetaPay Hong Kong", "hk_payment_institution", {"amount": "5000.00", "currency": "CNY"}),
    (BANK_ID, "Corridor settlement bank", "settlement_bank", None),
)
LIQUIDITY = {"hk-alphapay": "2000.00", BETA_ID: "1000.00"}


async def corridor_day(
    base_url: str,
    operator: LedgerClient,
    alpha: LedgerClient,
    acquirer: LedgerClient,
    merchant_id: str,
    key_for: Callable[[str], SigningKey],
    console: Console,
) -> int:
    day = Table(title="A day of the corridor (signed HTTP requests)")
    for column in ("who", "request", "answer"):
        day.add_column(column)
    rate = await operator.set_rate(*RATE)
    day.add_row(
        "operator", f"POST /v1/fx/rates HKD→CNY mid {RATE[2]}, {RATE[3]} bps", f"customer rate {rate['customer_rate']}"
    )
    await _register(operator, key_for, day)
    for institution_id, amount in LIQUIDITY.items():
        answer = await operator.prefund(institution_id, amount)
        position = answer["position"]
        cap_text = (
            f"cap in force {position['cap_in_force'] or 'none'} (registered {position['net_debit_cap'] or 'none'})"
        )
        day.add_row("operator", f"POST /v1/institutions/{institution_id}/liquidity {amount} CNY", cap_text)
    async with LedgerClient(base_url, key_id=BETA_ID, signing_key=key_for(BETA_ID)) as beta:
        alpha_customer = await _customer(alpha, "hk-cust-0002", "1500.00")
        beta_customer = await _customer(beta, "hk-beta-cust-0001", "2000.00")
        payments = [
            await _pay(alpha, alpha_customer, merchant_id, "128.50", day),
            await _pay(alpha, alpha_customer, merchant_id, "300.00", day),
            await _pay(beta, beta_customer, merchant_id, "700.00", day),
        ]
        refund = await alpha.refund(payments[0]["id"], "28.50")
        back = f"201: {refund['source_amount']} HKD back at the payment's rate"
        day.add_row("hk-alphapay", "POST /v1/payments/{id}/refunds 28.50 CNY", back)
        position = await beta.position(BETA_ID)
        headroom = _headroom(position)
        past_cap = f"{headroom + 1:.2f}"
        request = f"POST /v1/payments {past_cap} CNY ({headroom:.2f} left under its cap in force)"
        try:
            await _pay(beta, beta_customer, merchant_id, past_cap, day)
            day.add_row(BETA_ID, request, "[red]accepted past the cap[/]")
            return 1
        except LedgerApiError as refusal:
            day.add_row(BETA_ID, request, f"{refusal.status} {refusal.code}")
    window_id = payments[-1]["settlement_window_id"]
    closed = await operator.close_window(window_id)
    day.add_row(
        "operator", f"POST /v1/settlement/windows/{window_id}/close", f"201 batch {closed['id']} {closed['status']}"
    )
    settled = await operator.settle(closed["id"])
    day.add_row("operator", f"POST /v1/settlement/batches/{closed['id']}/settle", f"200 {settled['status']}")
    console.print(day)
    print_report(console, settled)
    return 0


def _headroom(position: Mapping[str, Any]) -> Decimal:
    """What the institution may still owe: its cap in force less its open-window debit and what
    closed windows still owe (decimal strings at the edge, so Decimal, never float)."""
    owed = max(Decimal(0), -Decimal(position["open_window_net"])) + Decimal(position["unsettled_debit"])
    return Decimal(position["cap_in_force"]) - owed


async def _register(operator: LedgerClient, key_for: Callable[[str], SigningKey], day: Table) -> None:
    for institution_id, name, kind, cap in NEW_INSTITUTIONS:
        key = public_key_text(key_for(institution_id).verify_key)
        payload: dict[str, Any] = {"id": institution_id, "name": name, "kind": kind, "public_key": key}
        if cap is not None:
            payload["net_debit_cap"] = cap
        answer = await operator.post("/v1/institutions", payload)
        cap_text = f", net debit cap {cap['amount']} {cap['currency']}" if cap else ""
        day.add_row("operator", f"POST /v1/institutions {institution_id} ({kind}{cap_text})", str(answer.status))


async def _customer(client: LedgerClient, owner_ref: str, hkd: str) -> str:
    wallet = await client.create_wallet(owner_ref, "HKD", limit_profile="svf-verified")
    await client.deposit(wallet["id"], hkd)
    return str(wallet["id"])


async def _pay(client: LedgerClient, customer: str, merchant_id: str, cny: str, day: Table) -> dict[str, Any]:
    quote = await client.quote("HKD", "CNY", target_amount=cny)
    payment = await client.pay(customer, merchant_id, quote)
    paid = f"201: {payment['source_amount']} HKD at {payment['rate']}, window {payment['settlement_window_id']}"
    day.add_row(client.key_id, f"POST /v1/fx/quotes {cny} CNY, then POST /v1/payments", paid)
    return payment


def print_report(console: Console, batch: Mapping[str, Any]) -> None:
    """The settled batch: totals, each participant's net, the instructions that settled it."""
    totals = Table(title=f"Settlement batch {batch['id']}: {batch['status']} (signature {batch['signature'][:16]}…)")
    for column in ("currency", "gross", "net", "liquidity saved", "ratio"):
        totals.add_column(column, justify="right")
    for t in batch["totals"]:
        totals.add_row(t["currency"], t["gross"], t["net"], t["liquidity_saved"], t["liquidity_saving_ratio"])
    console.print(totals)
    nets = Table(title="Net positions and the instructions that settled them")
    for column in ("institution", "direction", "net", "instruction"):
        nets.add_column(column)
    instructions = {
        i["payer"] if i["payee"] == batch["settlement_bank_id"] else i["payee"]: i for i in batch["instructions"]
    }
    for p in batch["positions"]:
        i = instructions.get(p["institution_id"])
        nets.add_row(
            p["institution_id"],
            p["direction"],
            p["net_amount"],
            f"{i['payer']} → {i['payee']} {i['amount']}" if i else "-",
        )
    console.print(nets)
