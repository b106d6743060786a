"""The ``ledger`` console script on both databases: init, the demo, and the audit commands an
operator runs (verify, head, --anchor). The commands' coroutines are called directly with the
test's database; ``main`` (argument parsing and exit codes) is checked on the embedded default."""

from __future__ import annotations

import asyncio
import io
import json
from decimal import Decimal

import pytest
import sqlalchemy as sa
from nacl.signing import SigningKey, VerifyKey
from rich.console import Console

from ledger.audit import Anchor
from ledger.db import async_url, create_engine
from ledger.ids import uuid7
from ledger.keys import public_key_text, read_signing_key
from ledger.schema import transfers
from service import cli
from service.config import Settings
from wallets.errors import NotFound
from wallets.model import OwnerKind, WalletSpec


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return Settings(data_dir=tmp_path / "ledger-data", database_url=database_url)


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


async def tamper_one_amount(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.update(transfers).where(transfers.c.seq == 3).values(amount_minor=transfers.c.amount_minor + 1)
            )
    finally:
        await engine.dispose()


@pytest.mark.slow  # a whole demo through a served API
async def test_demo_then_audit_verify_passes_and_a_changed_amount_fails_it(settings, capsys):
    assert await cli.demo(settings, quiet(), payments=60) == 0
    assert settings.signing_key_path.exists()
    assert await cli.audit_verify(settings, quiet(), public_key=None) == 0
    # An outside auditor holds only the public key.
    public_key = public_key_text(read_signing_key(settings.signing_key_path).verify_key)
    assert await cli.audit_verify(settings, quiet(), public_key=public_key) == 0

    await tamper_one_amount(settings.database_url)

    assert await cli.audit_verify(settings, quiet(), public_key=public_key) == 1


async def test_audit_head_prints_an_anchor_that_verify_accepts_until_the_history_is_rewritten(settings, capsys):
    assert await cli.demo(settings, quiet(), payments=20) == 0
    capsys.readouterr()
    assert await cli.audit_head(settings, quiet()) == 0
    printed = capsys.readouterr().out.strip()
    anchor = Anchor.parse(printed)
    assert anchor.sequence >= 1 and str(anchor) == printed

    assert await cli.audit_verify(settings, quiet(), None, anchors=[printed]) == 0
    # The same anchor with another hash: the chain does not hold that block.
    forged = str(Anchor(anchor.sequence, bytes(32)))
    assert await cli.audit_verify(settings, quiet(), None, anchors=[forged]) == 1
    # An anchor beyond the chain's end: blocks were cut off (or an older copy restored).
    beyond = str(Anchor(anchor.sequence + 5, anchor.hash))
    assert await cli.audit_verify(settings, quiet(), None, anchors=[beyond]) == 1


async def test_audit_verify_refuses_a_malformed_anchor_with_exit_code_2(settings):
    await cli.init(settings, quiet())
    for text in ("12", "x:00", "3:abcd", "0:" + "00" * 32):
        assert await cli.audit_verify(settings, quiet(), None, anchors=[text]) == 2


async def test_audit_head_of_a_ledger_without_blocks_says_so_and_prints_no_anchor(settings, capsys):
    await cli.prepare_ledger(settings, quiet())  # not init: registering the operator seals blocks
    capsys.readouterr()
    console = quiet()
    assert await cli.audit_head(settings, console) == 0
    assert "no blocks yet" in console.file.getvalue()
    assert capsys.readouterr().out == ""  # nothing a script could take for an anchor


@pytest.mark.slow  # a whole demo through a served API
def test_main_runs_init_demo_and_audit_on_the_embedded_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEDGER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    assert cli.main(["init"]) == 0
    monkeypatch.setenv("COLUMNS", "200")
    assert cli.main(["demo", "--payments", "30"]) == 0
    assert (tmp_path / "data" / "ledger.db").exists()
    shown = capsys.readouterr().out
    # The corridor day: a payment refused at its cap, a batch closed and settled, its instructions.
    assert "422 net_debit_cap_exceeded" in shown and "200 settled" in shown
    assert "hk-betapay → settlement-bank 700.00" in shown
    assert cli.main(["audit", "head"]) == 0
    anchor = capsys.readouterr().out.strip()
    assert cli.main(["audit", "verify", "--anchor", anchor]) == 0
    assert cli.main(["audit", "verify", "--anchor", "not-an-anchor"]) == 2


async def test_init_on_a_database_whose_chain_another_key_signed_refuses_and_creates_no_key(settings, tmp_path):
    """Another host's data directory pointed at the same PostgreSQL: a new key there would seal
    blocks that no single key verifies."""
    assert await cli.demo(settings, quiet(), payments=10) == 0
    elsewhere = Settings(data_dir=tmp_path / "other-host", database_url=settings.database_url)

    assert await cli.init(elsewhere, quiet()) == 2
    assert not elsewhere.signing_key_path.exists()

    elsewhere.signing_key_path.write_text(public_key_text(SigningKey.generate()) + "\n")  # a wrong 32-byte seed
    assert await cli.init(elsewhere, quiet()) == 2
    assert await cli.demo(elsewhere, quiet(), payments=10) == 2
    assert await cli.audit_verify(settings, quiet(), public_key=None) == 0  # nothing was sealed with it


async def test_two_anchors_for_one_block_must_both_hold_whatever_their_order(settings, capsys):
    assert await cli.demo(settings, quiet(), payments=10) == 0
    capsys.readouterr()
    assert await cli.audit_head(settings, quiet()) == 0
    real = Anchor.parse(capsys.readouterr().out.strip())
    forged = str(Anchor(real.sequence, bytes(32)))
    for anchors in ([forged, str(real)], [str(real), forged]):
        assert await cli.audit_verify(settings, quiet(), public_key=None, anchors=anchors) == 1
    assert await cli.audit_verify(settings, quiet(), public_key=None, anchors=[str(real), str(real)]) == 0


def test_main_exits_2_for_a_malformed_key_and_3_when_the_database_is_unreachable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEDGER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    assert cli.main(["audit", "verify", "--public-key", "not base64!"]) == 2
    assert cli.main(["audit", "verify", "--public-key", "c2hvcnQ="]) == 2  # decodes, but not 32 bytes
    monkeypatch.setenv("LEDGER_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    assert cli.main(["migrate"]) == 3
    assert "Traceback" not in capsys.readouterr().out


def test_migrate_on_a_fresh_checkout_creates_the_data_directory_as_init_does(tmp_path, monkeypatch, capsys):
    data_dir = tmp_path / "checkout" / "ledger-data"  # neither exists yet
    monkeypatch.setenv("LEDGER_DATA_DIR", str(data_dir))
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    assert cli.main(["migrate"]) == 0
    assert (data_dir / "ledger.db").exists()
    assert not (data_dir / "ledger-signing.key").exists()  # migrate makes no key; init does
    assert cli.main(["init"]) == 0  # and init finds the migrated database current
    assert "Traceback" not in capsys.readouterr().out


def test_urls_are_printed_without_their_password_wherever_it_is():
    shown = cli._safe_url("postgresql+asyncpg://app:Secret1@db/ledger?password=Secret2&sslmode=require")
    assert "Secret1" not in shown and "Secret2" not in shown
    assert "sslmode=require" in shown and "db/ledger" in shown


@pytest.mark.parametrize(
    "plain, expected",
    [
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_plain_database_urls_get_the_async_driver(plain, expected):
    assert async_url(plain) == expected


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_plain_postgresql_url_works_end_to_end(settings):
    plain = Settings(data_dir=settings.data_dir, database_url=settings.database_url.replace("+asyncpg", "", 1))
    assert await cli.demo(plain, quiet(), payments=5) == 0


def test_audit_commands_on_a_directory_never_initialised_say_so_and_create_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LEDGER_DATA_DIR", str(tmp_path / "nothing-here"))
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    assert cli.main(["audit", "head"]) == 2
    assert cli.main(["audit", "verify", "--public-key", public_key_text(SigningKey.generate().verify_key)]) == 2
    assert not (tmp_path / "nothing-here" / "ledger.db").exists()


# -- init registers the operator; institutions and wallets on the host ------------------------


def key_text() -> str:
    return public_key_text(SigningKey.generate().verify_key)


async def registered_operator(settings: Settings):
    async with cli.open_wallet_book(settings) as book:
        return await book.get_institution(cli.OPERATOR_ID)


async def test_init_registers_the_operator_with_a_new_key_pair_in_operator_key_mode_0600(settings):
    assert await cli.init(settings, quiet()) == 0
    key_path = cli.operator_key_path(settings)
    assert key_path.stat().st_mode & 0o777 == 0o600
    seed = read_signing_key(key_path)  # base64 of 32 bytes, as the ledger's own key
    operator = await registered_operator(settings)
    assert operator.kind == "operator" and operator.active_keys == [bytes(seed.verify_key)]
    assert operator.accounts, "its system accounts are open"


async def test_a_second_init_keeps_both_keys_and_the_registration(settings):
    console = Console(file=io.StringIO(), width=1000)  # paths unwrapped
    assert await cli.init(settings, console) == 0
    signing, operator_seed = settings.signing_key_path.read_text(), cli.operator_key_path(settings).read_text()
    before = await registered_operator(settings)

    assert await cli.init(settings, console) == 0
    assert settings.signing_key_path.read_text() == signing
    assert cli.operator_key_path(settings).read_text() == operator_seed
    assert await registered_operator(settings) == before
    output = console.file.getvalue()
    assert "private key created" in output and "private key kept" in output
    assert str(cli.operator_key_path(settings)) in output and str(settings.signing_key_path) in output


async def test_init_with_an_operator_public_key_writes_no_private_key_and_refuses_another_later(settings):
    public_key = key_text()
    assert await cli.init(settings, quiet(), operator_public_key=public_key) == 0
    assert not cli.operator_key_path(settings).exists()
    assert [public_key_text(VerifyKey(raw)) for raw in (await registered_operator(settings)).active_keys] == [
        public_key
    ]
    # Run again without the flag: the operator is kept, and no key pair is made behind its back.
    assert await cli.init(settings, quiet()) == 0
    assert not cli.operator_key_path(settings).exists()
    # Another key for the same operator is a rotation, not an init.
    console = quiet()
    assert await cli.init(settings, console, operator_public_key=key_text()) == 2
    assert "rotate-key operator" in console.file.getvalue()


@pytest.fixture
def on_the_host(tmp_path, monkeypatch):
    """``main`` on the embedded default, initialised; returns a function that runs a command and
    answers (exit code, stdout, stderr)."""
    monkeypatch.setenv("LEDGER_DATA_DIR", str(tmp_path / "host"))
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")

    def run(capsys, *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_institutions_add_list_and_rotate_key_with_json(on_the_host, capsys):
    assert on_the_host(capsys, "init")[0] == 0
    first, second = key_text(), key_text()
    code, out, _ = on_the_host(
        capsys, "institutions", "add", "hk-alphapay", "--kind", "hk_payment_institution",
        "--name", "AlphaPay HK", "--public-key", first, "--json",
    )  # fmt: skip
    assert code == 0
    added = json.loads(out)
    assert added["id"] == "hk-alphapay" and added["created"] is True
    assert [key["public_key"] for key in added["keys"]] == [first] and added["keys"][0]["active"]
    assert {(account["currency"], account["role"]) for account in added["accounts"]} >= {("HKD", "funding")}

    code, out, _ = on_the_host(capsys, "institutions", "list", "--json")
    assert code == 0 and [item["id"] for item in json.loads(out)["items"]] == ["hk-alphapay", "operator"]

    code, out, _ = on_the_host(
        capsys, "institutions", "rotate-key", "hk-alphapay", "--public-key", second, "--retire", first, "--json"
    )
    assert code == 0
    keys = {key["public_key"]: key for key in json.loads(out)["keys"]}
    assert keys[second]["active"] and not keys[first]["active"] and keys[first]["retired_at"].endswith("Z")

    # Without --json: rich tables naming what was done.
    code, out, _ = on_the_host(capsys, "institutions", "list")
    assert code == 0 and "hk-alphapay" in out and second in out and first not in out


def test_institution_commands_refuse_bad_input_with_exit_2_and_a_message(on_the_host, capsys):
    assert on_the_host(capsys, "init")[0] == 0
    key = key_text()
    add = ["institutions", "add", "sz-acq", "--kind", "sz_acquirer", "--name", "SZ Acquirer"]
    assert on_the_host(capsys, *add, "--public-key", key)[0] == 0
    assert on_the_host(capsys, *add, "--public-key", key)[0] == 0  # the same fields: idempotent
    code, _, err = on_the_host(capsys, *add, "--public-key", key_text(), "--json")
    assert code == 2 and "exists_with_different_fields" in err  # messages go to stderr with --json
    assert on_the_host(capsys, *add[:2], "Not A Slug", *add[3:], "--public-key", key)[0] == 2
    assert on_the_host(capsys, *add, "--public-key", "not base64!")[0] == 2
    code, out, _ = on_the_host(capsys, "institutions", "rotate-key", "nobody", "--public-key", key_text())
    assert code == 2 and "not_found" in out
    # The last active key cannot be retired.
    assert on_the_host(capsys, "institutions", "rotate-key", "sz-acq", "--public-key", key, "--retire", key)[0] == 2
    with pytest.raises(SystemExit) as exit_info:  # argparse: an unknown kind
        cli.main([*add[:3], "--kind", "bank", *add[5:], "--public-key", key])
    assert exit_info.value.code == 2


def test_commands_before_init_say_to_run_it(on_the_host, capsys):
    code, out, _ = on_the_host(capsys, "institutions", "list")
    assert code == 2 and "ledger init" in out


async def test_wallets_show_prints_balances_and_limits_of_the_institutions_own_wallet(settings, capsys, monkeypatch):
    assert await cli.init(settings, quiet()) == 0
    key = key_text()
    assert await cli.institutions_add(
        settings, quiet(), "hk-alphapay", "hk_payment_institution", "AlphaPay HK", key, as_json=False
    ) == 0  # fmt: skip
    async with cli.open_wallet_book(settings) as book:
        wallet, _ = await book.open_wallet("hk-alphapay", WalletSpec("cust-1", OwnerKind.PERSON, "CNY"))
        assert (await book.deposit("hk-alphapay", wallet.id, uuid7(), 12_850)).ok
    capsys.readouterr()

    assert await cli.wallets_show(settings, quiet(), wallet.id, "hk-alphapay", as_json=True) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == str(wallet.id) and shown["institution_id"] == "hk-alphapay"
    assert shown["balance"] == {"available": "128.50", "posted": "128.50", "pending_in": "0.00", "pending_out": "0.00"}
    assert shown["tier"] == 4 and shown["status"] == "open" and shown["created_at"].endswith("Z")
    assert set(shown["limits"]) == {"balance_cap", "transfer_cap", "daily_debit_cap", "annual_debit_cap"}

    console = quiet()
    assert await cli.wallets_show(settings, console, wallet.id, "hk-alphapay", as_json=False) == 0
    assert "128.50" in console.file.getvalue()
    # Another institution's wallet is not found, never shown.
    with pytest.raises(NotFound):
        await cli.wallets_show(settings, quiet(), wallet.id, "operator", as_json=True)
    monkeypatch.setenv("LEDGER_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("LEDGER_DATABASE_URL", settings.database_url)
    argv = ["wallets", "show", str(wallet.id), "--institution", "operator", "--json"]
    assert await asyncio.to_thread(cli.main, argv) == 2  # main runs its own event loop
    captured = capsys.readouterr()
    assert captured.out == "" and "not_found" in captured.err  # nothing a script could take for a wallet
    with pytest.raises(SystemExit):
        cli.main(["wallets", "show", "not-a-uuid", "--institution", "hk-alphapay"])


# -- the demo runs through the HTTP API -------------------------------------------------------


def wide() -> Console:
    return Console(file=io.StringIO(), width=400)  # table cells and paths unwrapped


def table_rows(output: str) -> list[list[str]]:
    """The cells of every rich table row printed, stripped."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in output.splitlines() if line.startswith("│")]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.slow  # a whole demo through a served API
async def test_demo_runs_the_corridor_through_the_api_and_keeps_the_institutions_keys(settings):
    console = wide()
    assert await cli.demo(settings, console, payments=25) == 0
    output = console.file.getvalue()
    assert "API started in this process at http://127.0.0.1:" in output
    for institution_id in ("hk-alphapay", "sz-bank"):
        path = settings.data_dir / f"{institution_id}.key"
        assert path.stat().st_mode & 0o777 == 0o600
        read_signing_key(path)  # a base64 seed, as operator.key
        assert f"key of {institution_id!r} created: {path}" in output
    assert output.count("registered (201)") == 2
    assert "201 ecny-4: transfer cap 2000.00" in output and "201 svf-basic: balance cap 3000.00" in output
    assert "200, Idempotent-Replayed: true, the same transfer" in output
    rows = table_rows(output)
    assert ["hk-alphapay", "POST /v1/transfers 2,500.00 CNY (tier 4 cap: 2,000.00)", "422 limit_exceeded"] in rows
    assert "422 limit_exceeded, Idempotent-Replayed: true, the same problem" in output
    assert "201 pending, 900 s" in output and "posted_from_pending, 140.00 released" in output
    # Balances: 3,000 in, 128.50 paid, 860 of the 1,000 hold posted; the merchant got both.
    balances = {row[0]: row[1:] for row in rows if len(row) == 7}
    assert balances["e-CNY personal"] == ["hk-alphapay", "ecny-4", "CNY", "2011.50", "0.00", "2011.50"]
    assert balances["HKD personal"] == ["hk-alphapay", "svf-basic", "HKD", "800.00", "0.00", "800.00"]
    assert balances["merchant: Futian Dim Sum House"] == ["sz-bank", "merchant", "CNY", "988.50", "0.00", "988.50"]
    assert "Statement of the merchant wallet" in output
    assert "25 posted in" in output and "requests/s" in output
    assert "burst refusals" not in output
    assert f"--key-id hk-alphapay --key-file {settings.data_dir / 'hk-alphapay.key'}" in output
    assert "audit chain verified" in output
    assert await cli.audit_verify(settings, quiet(), public_key=None) == 0

    keys = {path.name: path.read_text() for path in settings.data_dir.glob("*.key")}
    again = wide()
    assert await cli.demo(settings, again, payments=5) == 0  # new ids, the same registrations
    output = again.file.getvalue()
    assert output.count("already registered (200, Idempotent-Replayed)") == 2
    assert "key of 'hk-alphapay' kept" in output and "audit chain verified" in output
    assert {path.name: path.read_text() for path in settings.data_dir.glob("*.key")} == keys


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_demo_with_an_institution_key_that_is_not_the_registered_one_says_so(settings):
    assert await cli.demo(settings, quiet(), payments=0) == 0
    path = settings.data_dir / "sz-bank.key"
    path.write_text(public_key_text(SigningKey.generate()) + "\n")  # another 32-byte seed
    console = wide()
    assert await cli.demo(settings, console, payments=0) == 2
    assert f"'sz-bank' is registered with another key than the one in {path}" in console.file.getvalue()


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_demo_needs_the_operators_private_key(settings):
    assert await cli.init(settings, quiet(), operator_public_key=key_text()) == 0
    console = wide()
    assert await cli.demo(settings, console, payments=0) == 2
    assert "the demo signs as the operator" in console.file.getvalue()


def test_demo_refuses_a_negative_burst(tmp_path, monkeypatch):
    monkeypatch.setenv("LEDGER_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--payments", "-1"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "data").exists()


def test_fx_set_rate_and_rates_on_the_host_with_tables_and_json(on_the_host, capsys):
    assert on_the_host(capsys, "init")[0] == 0
    code, out, _ = on_the_host(capsys, "fx", "rates")
    assert code == 0 and "ledger fx set-rate" in out  # no rates yet: says how to set one

    code, out, _ = on_the_host(capsys, "fx", "set-rate", "HKD", "CNY", "0.9200", "--spread-bps", "40", "--json")
    assert code == 0
    first = json.loads(out)
    assert (first["mid_rate"], first["spread_bps"], first["customer_rate"]) == ("0.9200", 40, "0.9163200000")
    assert first["set_by"] == "ledger-cli" and first["set_at"].endswith("Z")
    code, out, _ = on_the_host(capsys, "fx", "set-rate", "HKD", "CNY", "0.9234", "--spread-bps", "50")
    assert code == 0 and "0.9187830000" in out and "HKD→CNY" in out

    code, out, _ = on_the_host(capsys, "fx", "rates", "--json")
    assert code == 0 and [item["mid_rate"] for item in json.loads(out)["items"]] == ["0.9234"]
    code, out, _ = on_the_host(capsys, "fx", "rates", "--history", "--json")
    assert [item["mid_rate"] for item in json.loads(out)["items"]] == ["0.9234", "0.9200"]
    code, out, _ = on_the_host(capsys, "fx", "rates", "--history", "--limit", "1", "--json")
    assert [item["mid_rate"] for item in json.loads(out)["items"]] == ["0.9234"]
    code, out, _ = on_the_host(capsys, "fx", "rates", "--history")
    assert code == 0 and "Rates set, newest first" in out and "0.9200" in out and "0.9234" in out


def test_fx_set_rate_refuses_another_pair_a_bad_rate_or_spread_with_exit_2(on_the_host, capsys):
    assert on_the_host(capsys, "init")[0] == 0
    code, out, _ = on_the_host(capsys, "fx", "set-rate", "HKD", "USD", "7.8")
    assert code == 2 and "HKD to CNY" in out
    code, out, _ = on_the_host(capsys, "fx", "set-rate", "HKD", "CNY", "0")
    assert code == 2 and "greater than zero" in out
    code, out, _ = on_the_host(capsys, "fx", "set-rate", "HKD", "CNY", "0.92", "--spread-bps", "10000")
    assert code == 2 and "rounds to zero" in out
    for argv in (["0.92", "--spread-bps", "10001"], ["-0.92"], ["9e-1"], ["NaN"]):
        with pytest.raises(SystemExit) as exit_info:  # argparse refuses it before the ledger is opened
            cli.main(["fx", "set-rate", "HKD", "CNY", *argv])
        assert exit_info.value.code == 2
    code, out, _ = on_the_host(capsys, "fx", "rates", "--json")
    assert json.loads(out)["items"] == []


def test_fx_commands_before_init_say_to_run_it(on_the_host, capsys):
    code, out, _ = on_the_host(capsys, "fx", "rates")
    assert code == 2 and "ledger init" in out


async def test_fx_commands_work_on_both_databases(settings, capsys):
    assert await cli.init(settings, quiet()) == 0
    assert await cli.fx_set_rate(settings, quiet(), "CNY", "HKD", Decimal("1.083"), 25, as_json=False) == 0
    capsys.readouterr()
    assert await cli.fx_rates(settings, quiet(), history=False, limit=50, as_json=True) == 0
    [rate] = json.loads(capsys.readouterr().out)["items"]
    assert (rate["source_currency"], rate["target_currency"], rate["customer_rate"]) == ("CNY", "HKD", "1.0802925000")
