"""A settlement batch as a report: a JSON document with amounts as decimal strings, signed by the
ledger's Ed25519 key over its canonical bytes, and the same figures as CSV.

The canonical bytes are ``json.dumps(document, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` in UTF-8, the signature field left out; anyone holding the ledger's public key
(``GET /v1/audit/head``) checks a report with them alone. An institution's report holds only its own
position, the gross obligations it is party to and its own instructions, and is signed as served.

Participants whose net is zero have no row in ``positions`` (the contract's ``direction`` is ``pay``
or ``receive``); their obligations are in ``bilateral``.
"""

from __future__ import annotations

import base64
import csv
import datetime
import io
import json
from collections.abc import Iterable, Mapping
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from ledger.money import Currency, format_amount
from settlement.batches import Batch, Exclusion
from settlement.netting import CurrencyNetting, NetPosition, Obligation, SettlementInstruction

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
CSV_COLUMNS = ("section", "currency", "institution_id", "counterparty", "amount", "direction", "detail")


def batch_document(batch: Batch, currencies: Mapping[str, Currency], *, viewer: str | None = None) -> dict[str, Any]:
    """The batch as served to ``viewer`` (None: the operator, who sees everything)."""
    view = _View(currencies, viewer)
    nettings = batch.netting.currencies
    positions = [p for n in nettings for p in n.positions if p.direction != "flat" and view.mine(p.participant)]
    return {
        "id": batch.id,
        "window_id": batch.window.id,
        "status": batch.status,
        "opened_at": rfc3339(batch.window.opened_at_us),
        "closed_at": None if batch.window.closed_at_us is None else rfc3339(batch.window.closed_at_us),
        "settlement_bank_id": batch.settlement_bank_id,
        "totals": [view.total(n) for n in nettings],
        "positions": [view.position(p) for p in positions],
        "bilateral": view.obligations(Obligation(g.debtor, g.creditor, g.currency, g.amount_minor)
                                      for n in nettings for g in n.bilateral_gross),
        "instructions": [view.instruction(i) for n in nettings for i in n.instructions if view.mine(i.payer, i.payee)],
        "exclusions": [view.exclusion(e) for e in batch.exclusions if view.mine(e.institution_id)],
        "carried_in": view.obligations(batch.carried_in),
        "carried_out": view.obligations(batch.carried_out),
        "history": [{"status": c.status, "at": rfc3339(c.at_us), "actor": c.actor} for c in batch.history],
    }  # fmt: skip


class _View:
    """Amounts as decimal strings, and what the viewer may see."""

    def __init__(self, currencies: Mapping[str, Currency], viewer: str | None) -> None:
        self.currencies = currencies
        self.viewer = viewer

    def mine(self, *parties: str) -> bool:
        return self.viewer is None or self.viewer in parties

    def amount(self, minor: int, code: str) -> str:
        return format_amount(minor, self.currencies[code])

    def total(self, n: CurrencyNetting) -> dict[str, str]:
        return {
            "currency": n.currency, "gross": self.amount(n.gross_total_minor, n.currency),
            "net": self.amount(n.net_total_minor, n.currency),
            "liquidity_saved": self.amount(n.liquidity_saved_minor, n.currency),
            "liquidity_saving_ratio": str(n.liquidity_saving_ratio),
        }  # fmt: skip

    def position(self, p: NetPosition) -> dict[str, str]:
        net_amount = self.amount(abs(p.net_minor), p.currency)
        return {
            "institution_id": p.participant,
            "currency": p.currency,
            "net_amount": net_amount,
            "direction": p.direction,
        }

    def instruction(self, i: SettlementInstruction) -> dict[str, str]:
        return {
            "payer": i.payer,
            "payee": i.payee,
            "currency": i.currency,
            "amount": self.amount(i.amount_minor, i.currency),
        }

    def exclusion(self, e: Exclusion) -> dict[str, str]:
        return {
            "institution_id": e.institution_id, "currency": e.currency,
            "net_debit": self.amount(e.net_debit_minor, e.currency),
            "liquidity": self.amount(e.liquidity_minor, e.currency),
        }  # fmt: skip

    def obligations(self, obligations: Iterable[Obligation]) -> list[dict[str, str]]:
        return [
            {"debtor": o.debtor, "creditor": o.creditor, "currency": o.currency,
             "amount": self.amount(o.amount_minor, o.currency)}
            for o in obligations if self.mine(o.debtor, o.creditor)
        ]  # fmt: skip


def canonical_bytes(document: Mapping[str, Any]) -> bytes:
    body = {key: value for key, value in document.items() if key != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signed(document: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """The document with ``signature``: base64 of the Ed25519 signature over its canonical bytes."""
    signature = key.sign(canonical_bytes(document)).signature
    return {**document, "signature": base64.b64encode(signature).decode("ascii")}


def verify_signed(document: Mapping[str, Any], public_key: bytes) -> bool:
    """True if ``document["signature"]`` is the ledger's signature over the rest of it."""
    try:
        VerifyKey(public_key).verify(canonical_bytes(document), base64.b64decode(document["signature"], validate=True))
    except (BadSignatureError, KeyError, ValueError, TypeError):
        return False
    return True


def batch_csv(document: Mapping[str, Any]) -> str:
    """The report's figures as CSV rows, one section after another (totals, positions, bilateral,
    instructions, exclusions, carried), for spreadsheets; the JSON is the signed record."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for total in document["totals"]:
        currency = total["currency"]
        writer.writerow(("total_gross", currency, "", "", total["gross"], "", ""))
        writer.writerow(("total_net", currency, "", "", total["net"], "", ""))
        writer.writerow(
            ("liquidity_saved", currency, "", "", total["liquidity_saved"], "", total["liquidity_saving_ratio"])
        )
    for p in document["positions"]:
        writer.writerow(("position", p["currency"], p["institution_id"], "", p["net_amount"], p["direction"], ""))
    for g in document["bilateral"]:
        writer.writerow(("bilateral", g["currency"], g["debtor"], g["creditor"], g["amount"], "pay", ""))
    for i in document["instructions"]:
        writer.writerow(("instruction", i["currency"], i["payer"], i["payee"], i["amount"], "pay", ""))
    for e in document["exclusions"]:
        writer.writerow(
            ("exclusion", e["currency"], e["institution_id"], "", e["net_debit"], "pay", f"liquidity {e['liquidity']}")
        )
    for section in ("carried_in", "carried_out"):
        for o in document[section]:
            writer.writerow((section, o["currency"], o["debtor"], o["creditor"], o["amount"], "pay", ""))
    return out.getvalue()


def rfc3339(at_us: int) -> str:
    """RFC 3339 in UTC to the microsecond, exactly (no float in between)."""
    moment = _EPOCH + datetime.timedelta(microseconds=at_us)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


__all__ = ["batch_csv", "batch_document", "canonical_bytes", "signed", "verify_signed"]
