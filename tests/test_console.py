"""The operator console over HTTP (aiohttp test client, SQLite and PostgreSQL): who gets in and who
does not, CSRF on every action, and the pages' figures against the ledger's own."""

from __future__ import annotations

import base64
import io
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from nacl.signing import SigningKey
from rich.console import Console

from ledger import TransferCommand
from ledger.ids import uuid7
from service import cli
from service.config import Settings
from service.console.auth import COOKIE_NAME, SESSION_TTL_S
from service.console.state import CONSOLE_KEY
from service.console.tokens import LOGIN_TTL_S, LoginStatement, login_token, parse_login_token, signature_text
from service.keys import BATCHER_KEY
from settlement.windows import WindowBook
from tests.api_support import Api, Party, api

__all__ = ["api"]

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def now_s(api: Api) -> int:
    return api.ledger.clock() // 1_000_000


def link_for(api: Api, party: Party, *, operator_id: str | None = None, now: int | None = None) -> str:
    statement = LoginStatement.new(operator_id or party.id, now if now is not None else now_s(api))
    return f"/console/login/link?token={login_token(statement, party.key)}"


async def sign_in(api: Api) -> str:
    """Sign in as the operator with a login link; answers the session's CSRF token."""
    async with api.client.get(link_for(api, api.operator), allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "/console/settlement"
    async with api.client.get("/console/settlement") as page:
        assert page.status == 200
        return CSRF.search(await page.text())[1]


async def open_window_with_payments(api: Api) -> tuple[int, Party, Party]:
    """Window 1 open, with two obligations of hk-alphapay towards sz-bank (123.45 and 10.00 CNY)."""
    alpha = await api.institution("hk-alphapay")
    bank = await api.institution("sz-bank", "sz_acquirer")
    book = WindowBook(api.ledger, api.ledger.clock)
    window = await book.open_window()
    payer = await book.position_for_payment(window, alpha.id, None, actor="test")
    acquirer = await book.position_for_payment(window, bank.id, None, actor="test")
    batcher = api.app[BATCHER_KEY]
    for amount_minor in (12_345, 1_000):
        result = await batcher.submit(TransferCommand.posted(uuid7(), payer, acquirer, amount_minor, "CNY"))
        assert result.code.value == "ok"
    return window.id, alpha, bank


# -- who gets in --------------------------------------------------------------------------------


async def test_a_login_link_lands_on_the_settlement_page_with_a_strict_session_cookie(api):
    async with api.client.get(link_for(api, api.operator), allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "/console/settlement"
        cookie = response.cookies[COOKIE_NAME]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console"
        assert int(cookie["max-age"]) == SESSION_TTL_S
        assert response.headers["Referrer-Policy"] == "no-referrer"
    async with api.client.get("/console/settlement") as page:
        text = await page.text()
        assert page.status == 200 and "Settlement windows" in text and "operator" in text
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]


async def test_a_used_login_link_is_refused(api):
    link = link_for(api, api.operator)
    async with api.client.get(link, allow_redirects=False) as first:
        assert first.status == 303
    api.client.session.cookie_jar.clear()
    async with api.client.get(link, allow_redirects=False) as again:
        assert again.status == 403 and "used already" in await again.text()
        assert COOKIE_NAME not in again.cookies


async def test_an_expired_login_link_is_refused(api, clock):
    link = link_for(api, api.operator)
    clock.advance(seconds=LOGIN_TTL_S)
    async with api.client.get(link, allow_redirects=False) as response:
        assert response.status == 403 and "expired" in await response.text()
    # Nor may an operator mint a link that lives longer than five minutes.
    long_lived = LoginStatement(api.operator.id, now_s(api) + 3600, "ab" * 16)
    token = f"{long_lived.text()}.{signature_text(long_lived.sign(api.operator.key))}"
    async with api.client.get(f"/console/login/link?token={token}", allow_redirects=False) as response:
        assert response.status == 403 and "at most 5 minutes" in await response.text()


async def test_a_non_operator_key_is_refused(api):
    alpha = await api.institution("hk-alphapay")
    async with api.client.get(link_for(api, alpha), allow_redirects=False) as own_statement:
        assert own_statement.status == 403 and "only operators" in await own_statement.text()
    # Naming the operator does not help without the operator's key.
    async with api.client.get(link_for(api, alpha, operator_id="operator"), allow_redirects=False) as forged:
        assert forged.status == 403 and "does not verify" in await forged.text()
    async with api.client.get("/console/login/link?token=nonsense", allow_redirects=False) as garbage:
        assert garbage.status == 400
    async with api.client.get("/console/settlement", allow_redirects=False) as page:
        assert page.status == 303 and page.headers["Location"] == "/console/login"


async def test_no_session_or_a_forged_or_expired_one_gets_nothing(api, clock):
    window_id, _alpha, _bank = await open_window_with_payments(api)
    for path in ("/console/settlement", f"/console/settlement/windows/{window_id}", "/console/audit"):
        async with api.client.get(path, allow_redirects=False) as page:
            assert page.status == 303 and page.headers["Location"] == "/console/login", path
    forged = {"Cookie": f"{COOKIE_NAME}={base64.urlsafe_b64encode(b'x' * 32).decode()}"}
    async with api.client.get("/console/institutions/hk-alphapay", headers=forged, allow_redirects=False) as page:
        assert page.status == 303
    async with api.client.post(
        f"/console/settlement/windows/{window_id}/close", data={"confirm": "yes"}, headers=forged
    ) as action:
        assert action.status == 403
    csrf = await sign_in(api)
    clock.advance(seconds=SESSION_TTL_S)
    async with api.client.get("/console/settlement", allow_redirects=False) as page:
        assert page.status == 303, "a session ends after 30 minutes"
    async with api.client.post(
        f"/console/settlement/windows/{window_id}/close", data={"csrf_token": csrf, "confirm": "yes"}
    ) as action:
        assert action.status == 403
    assert (await api.app[CONSOLE_KEY].windows.get(window_id)).status == "open"


async def test_actions_without_the_sessions_csrf_token_are_refused(api):
    window_id, _alpha, _bank = await open_window_with_payments(api)
    csrf = await sign_in(api)
    path = f"/console/settlement/windows/{window_id}/close"
    for form in ({"confirm": "yes"}, {"confirm": "yes", "csrf_token": "wrong"}, {"confirm": "yes", "csrf_token": ""}):
        async with api.client.post(path, data=form, allow_redirects=False) as refused:
            assert refused.status == 403 and "CSRF" in await refused.text()
    async with api.client.post("/console/audit/verify", data={}, allow_redirects=False) as refused:
        assert refused.status == 403
    async with api.client.post("/console/logout", data={}, allow_redirects=False) as refused:
        assert refused.status == 403
    assert (await api.app[CONSOLE_KEY].windows.get(window_id)).status == "open"
    # Another session's token is no good either.
    api.client.session.cookie_jar.clear()
    await sign_in(api)
    async with api.client.post(path, data={"confirm": "yes", "csrf_token": csrf}, allow_redirects=False) as refused:
        assert refused.status == 403
    assert (await api.app[CONSOLE_KEY].windows.get(window_id)).status == "open"


async def test_the_signed_challenge_form_signs_an_operator_in(api):
    async with api.client.get("/console/login") as page:
        challenge = re.search(r'name="challenge" value="([^"]+)"', await page.text())[1]
    statement = LoginStatement.parse(challenge)
    assert statement.operator_id == "operator" and statement.expires_at_s == now_s(api) + LOGIN_TTL_S
    wrong = signature_text(statement.sign(SigningKey.generate()))
    async with api.client.post("/console/login", data={"challenge": challenge, "signature": wrong}) as refused:
        assert refused.status == 403 and "does not verify" in await refused.text()
    good = base64.b64encode(statement.sign(api.operator.key)).decode()  # standard base64 is accepted too
    form = {"challenge": challenge, "signature": good}
    async with api.client.post("/console/login", data=form, allow_redirects=False) as signed_in:
        assert signed_in.status == 303 and signed_in.headers["Location"] == "/console/settlement"
    async with api.client.post("/console/login", data=form, allow_redirects=False) as replayed:
        assert replayed.status == 403 and "used already" in await replayed.text()


async def test_signing_out_ends_the_session(api):
    csrf = await sign_in(api)
    async with api.client.post("/console/logout", data={"csrf_token": csrf}, allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "/console/login"
    async with api.client.get("/console/settlement", allow_redirects=False) as page:
        assert page.status == 303


# -- pages and actions ----------------------------------------------------------------------------


async def test_closing_a_window_through_the_confirmation_form(api):
    window_id, _alpha, _bank = await open_window_with_payments(api)
    csrf = await sign_in(api)
    path = f"/console/settlement/windows/{window_id}/close"
    async with api.client.get(path) as confirm:
        text = await confirm.text()
        assert confirm.status == 200 and f"Close settlement window {window_id}?" in text and "2 payments" in text
    # A POST without the confirmation field goes back to the confirmation step.
    async with api.client.post(path, data={"csrf_token": csrf}, allow_redirects=False) as unconfirmed:
        assert unconfirmed.status == 303 and unconfirmed.headers["Location"] == path
    assert (await api.app[CONSOLE_KEY].windows.get(window_id)).status == "open"
    async with api.client.post(path, data={"csrf_token": csrf, "confirm": "yes"}, allow_redirects=False) as closed:
        assert closed.status == 303  # on the new batch's page
        assert closed.headers["Location"] == f"/console/settlement/batches/{window_id}?done=closed"
    windows = api.app[CONSOLE_KEY].windows
    assert (await windows.get(window_id)).status == "closed"
    assert (await windows.get(window_id + 1)).status == "open"
    assert (await windows.history(window_id))[-1][::2] == ("closed", "console:operator")
    async with api.client.get(closed.headers["Location"]) as page:
        text = await page.text()
        assert "is closed" in text and "console:operator" in text and 'id="batch-status">closed<' in text
    async with api.client.get(f"/console/settlement/windows/{window_id}") as page:
        assert f'href="/console/settlement/batches/{window_id}" id="open-batch"' in await page.text()
    async with api.client.post(path, data={"csrf_token": csrf, "confirm": "yes"}) as again:
        assert again.status == 409 and "not the open window" in await again.text()


async def test_the_windows_pages_show_the_ledgers_figures(api):
    window_id, _alpha, _bank = await open_window_with_payments(api)
    await sign_in(api)
    async with api.client.get("/console/settlement") as page:
        text = await page.text()
    assert 'id="open-obligations">2<' in text and 'data-currency="CNY">133.45<' in text
    async with api.client.get(f"/console/settlement/windows/{window_id}") as page:
        text = await page.text()
    assert "<svg" in text and "hk-alphapay pays 133.45 CNY" in text and "sz-bank receives 133.45 CNY" in text
    assert re.search(r"<td>open</td>\s*<td>[^<]+</td>\s*<td>system</td>", text)


async def test_the_windows_list_pages_by_id(api):
    book = WindowBook(api.ledger, api.ledger.clock)
    window = await book.open_window()
    for _ in range(4):
        window = (await book.close(window.id, actor="test"))[1]
    await sign_in(api)
    async with api.client.get("/console/settlement?size=2") as page:
        text = await page.text()
    assert re.findall(r'data-window="(\d+)"', text) == ["5", "4"]
    before = re.search(r'before=(\d+)&amp;size=2" id="older"', text)[1]
    async with api.client.get(f"/console/settlement?before={before}&size=2") as page:
        assert re.findall(r'data-window="(\d+)"', await page.text()) == ["3", "2"]


async def test_the_institution_page_shows_wallets_and_cap_usage(api):
    capped = Party("hk-capped")
    answer = await api.post(
        api.operator,
        "/v1/institutions",
        {"id": capped.id, "name": "Capped", "kind": "hk_payment_institution", "public_key": capped.public_key,
         "net_debit_cap": {"amount": "200.00", "currency": "CNY"}},
    )  # fmt: skip
    assert answer.status == 201, answer.body
    bank = await api.institution("sz-bank", "sz_acquirer")
    await api.wallet(capped, "HKD")
    book = WindowBook(api.ledger, api.ledger.clock)
    window = await book.open_window()
    payer = await book.position_for_payment(window, capped.id, 20_000, actor="test")
    acquirer = await book.position_for_payment(window, bank.id, None, actor="test")
    await api.app[BATCHER_KEY].submit(TransferCommand.posted(uuid7(), payer, acquirer, 15_000, "CNY"))
    await sign_in(api)
    async with api.client.get(f"/console/institutions/{capped.id}") as page:
        text = await page.text()
    assert 'id="kind">hk_payment_institution<' in text and 'id="wallets-count">1<' in text
    # Nothing prefunded: the cap in force is the liquidity, 0, and the gauge is full.
    assert 'id="registered-cap">200.00 CNY<' in text and 'id="cap">0.00 CNY<' in text
    assert 'id="cap-used">150.00 CNY<' in text and 'aria-label="cap usage 100 percent"' in text
    liquidity = {"id": str(uuid7()), "amount": "200.00", "currency": "CNY"}
    assert (await api.post(api.operator, f"/v1/institutions/{capped.id}/liquidity", liquidity)).status == 201
    async with api.client.get(f"/console/institutions/{capped.id}") as page:
        text = await page.text()
    assert 'id="cap">200.00 CNY<' in text and 'aria-label="cap usage 75 percent"' in text
    # After the close, what the closed window owes still counts against the cap.
    await book.close(window.id, actor="test")
    async with api.client.get(f"/console/institutions/{capped.id}") as page:
        text = await page.text()
    assert 'id="cap-used">150.00 CNY<' in text and 'id="unsettled-debit">150.00 CNY<' in text
    position = (await api.get(api.operator, f"/v1/institutions/{capped.id}/position")).body
    assert (position["cap_in_force"], position["unsettled_debit"]) == ("200.00", "150.00")


async def test_verify_now_runs_in_the_background_and_shows_the_result(api):
    alpha = await api.institution("hk-alphapay")
    wallet = await api.wallet(alpha)
    await api.deposit(alpha, wallet["id"], "10.00")
    csrf = await sign_in(api)
    async with api.client.post("/console/audit/verify", data={"csrf_token": csrf}, allow_redirects=False) as started:
        assert started.status == 303 and started.headers["Location"] == "/console/audit"
    await api.app[CONSOLE_KEY].audit_runs.wait()
    async with api.client.get("/console/audit") as page:
        text = await page.text()
    head = await api.ledger.newest_block()
    assert head.hash.hex() in text and "verified" in text and "console:operator" in text
    assert 'http-equiv="refresh"' not in text  # nothing running: the page stops refreshing


# -- the command line -------------------------------------------------------------------------------


def test_console_login_prints_a_link_signed_by_the_data_directorys_operator_key(tmp_path, capsys):
    settings = Settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    key = SigningKey.generate()
    cli.write_signing_key(cli.operator_key_path(settings), key)
    quiet = Console(file=io.StringIO())
    assert cli.console_login(settings, quiet, "http://127.0.0.1:9999/", "operator", None) == 0
    url = urlsplit(capsys.readouterr().out.strip())
    assert (url.scheme, url.netloc, url.path) == ("http", "127.0.0.1:9999", "/console/login/link")
    statement, signature = parse_login_token(parse_qs(url.query)["token"][0])
    assert statement.operator_id == "operator" and statement.signed_by(signature, [bytes(key.verify_key)])
    assert 0 < statement.expires_at_s - time.time() <= LOGIN_TTL_S

    challenge = LoginStatement.new("operator", int(time.time())).text()
    assert cli.console_sign(settings, quiet, challenge, None) == 0
    signature_out = capsys.readouterr().out.strip()
    assert LoginStatement.parse(challenge).signed_by(
        base64.urlsafe_b64decode(signature_out + "=="), [bytes(key.verify_key)]
    )
    # It signs login statements and nothing else (never a request's signature base).
    assert cli.console_sign(settings, quiet, '"@method": POST', None) == 2
    assert (
        cli.console_login(Settings(tmp_path / "none", settings.database_url), quiet, "http://x", "operator", None) == 2
    )


@pytest.mark.parametrize("text", ["", "szhk-console-login-v1:operator:1:zz", "a" * 600, "x.y"])
def test_malformed_tokens_are_refused_before_any_lookup(text):
    with pytest.raises(ValueError):
        parse_login_token(text)
