"""The ``ledger`` console script on both databases: init, the demo, and the audit commands an
operator runs (verify, head, --anchor). The commands' coroutines are called directly with the
test's database; ``main`` (argument parsing and exit codes) is checked on the embedded default."""

from __future__ import annotations

import io

import pytest
import sqlalchemy as sa
from nacl.signing import SigningKey
from rich.console import Console

from ledger.audit import Anchor
from ledger.db import async_url, create_engine
from ledger.keys import public_key_text, read_signing_key
from ledger.schema import transfers
from service import cli
from service.config import Settings


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
    await cli.init(settings, quiet())
    capsys.readouterr()
    console = quiet()
    assert await cli.audit_head(settings, console) == 0
    assert "no blocks yet" in console.file.getvalue()
    assert capsys.readouterr().out == ""  # nothing a script could take for an anchor


def test_main_runs_init_demo_and_audit_on_the_embedded_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEDGER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    assert cli.main(["init"]) == 0
    assert cli.main(["demo", "--payments", "30"]) == 0
    assert (tmp_path / "data" / "ledger.db").exists()
    capsys.readouterr()
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
