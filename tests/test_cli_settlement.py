"""``ledger settlement`` on the host, on SQLite and PostgreSQL: windows, close, show (with the
signed bars), settle, export as JSON (signed: it verifies with the ledger's key) and CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import pytest
from rich.console import Console

from ledger import Batcher, Ledger
from ledger.db import create_engine
from ledger.keys import read_signing_key
from service import cli
from service.config import Settings
from settlement.reports import verify_signed
from tests.settlement_support import build_corridor


@pytest.fixture
async def host(tmp_path, database_url, monkeypatch) -> Settings:
    """An initialised ledger with window 1 holding two payments (hk-alpha 300.00, hk-beta 200.00 to sz-one)."""
    settings = Settings(data_dir=tmp_path / "ledger-data", database_url=database_url)
    assert await cli.init(settings, Console(file=io.StringIO())) == 0
    ledger = Ledger(create_engine(database_url), read_signing_key(settings.signing_key_path))
    try:
        async with Batcher(ledger) as batcher:
            corridor = await build_corridor(ledger, batcher, {"hk-alpha": None, "hk-beta": None}, ["sz-one"])
            for payer, amount in (("hk-alpha", 30_000), ("hk-beta", 20_000)):
                await corridor.prefund(payer, 100_000)
                assert (await corridor.pay(payer, "sz-one", amount)).ok
    finally:
        await ledger.close()
    monkeypatch.setenv("LEDGER_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("LEDGER_DATABASE_URL", database_url)
    monkeypatch.setenv("COLUMNS", "200")
    return settings


def run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


async def _in_thread(capsys, *argv: str) -> tuple[int, str]:
    # main() runs its own event loop: call it off this test's loop.
    return await asyncio.to_thread(run, capsys, *argv)


async def test_the_settlement_day_from_the_cli(host, capsys):
    code, out = await _in_thread(capsys, "settlement", "windows", "--json")
    assert code == 0 and [(w["id"], w["status"]) for w in json.loads(out)["items"]] == [(1, "open")]
    code, out = await _in_thread(capsys, "settlement", "close")
    assert code == 0 and "Settlement batch 1" in out and "closed" in out
    assert "hk-alpha" in out and "-300.00" in out and "+500.00" in out and "█" in out
    code, out = await _in_thread(capsys, "settlement", "show", "1", "--json")
    batch = json.loads(out)
    assert {(p["institution_id"], p["net_amount"], p["direction"]) for p in batch["positions"]} == {
        ("hk-alpha", "300.00", "pay"), ("hk-beta", "200.00", "pay"), ("sz-one", "500.00", "receive"),
    }  # fmt: skip
    code, out = await _in_thread(capsys, "settlement", "settle", "1", "--json")
    assert code == 0 and json.loads(out)["status"] == "settled"
    code, out = await _in_thread(capsys, "settlement", "export", "1", "--format", "json")
    report = json.loads(out)
    public_key = bytes(read_signing_key(host.signing_key_path).verify_key)
    assert report["status"] == "settled" and verify_signed(report, public_key)
    report["totals"][0]["gross"] = "1.00"
    assert not verify_signed(report, public_key)
    code, out = await _in_thread(capsys, "settlement", "export", "1", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {(r["institution_id"], r["amount"]) for r in rows if r["section"] == "instruction"} == {
        ("hk-alpha", "300.00"), ("hk-beta", "200.00"), ("settlement-bank", "500.00"),
    }  # fmt: skip


async def test_settlement_refusals_exit_2_with_their_code(host, capsys):
    code, out = await _in_thread(capsys, "settlement", "settle", "1")
    assert code == 2 and "batch_not_settleable" in out
    code, out = await _in_thread(capsys, "settlement", "show", "7")
    assert code == 2 and "not_found" in out
    await _in_thread(capsys, "settlement", "close", "1")
    code, out = await _in_thread(capsys, "settlement", "close", "1")
    assert code == 2 and "window_not_open" in out
