"""The console's batch pages over HTTP (aiohttp test client, SQLite and PostgreSQL), on a corridor
set up through the signed API: the page's figures are the API's, settling goes through the
confirmation form and its CSRF token, the exports are the API's report byte for byte, and a refusal
is a message on the page."""

from __future__ import annotations

import re

from ledger.ids import uuid7
from tests.api_support import Api
from tests.test_api_settlement import Corridor, corridor
from tests.test_console import CSRF, api, sign_in

__all__ = ["api", "corridor"]


def cells(text: str, row: str, cls: str) -> str:
    """The text of the ``cls`` cell in the table row whose opening tag holds ``row``."""
    match = re.search(rf"<tr {row}>.*?<td class=\"num {cls}\">([^<]*)</td>", text, re.S)
    assert match, (row, cls)
    return match[1]


async def close_through_console(api: Api, window_id: int) -> str:
    """Close the window with the console's form; answers the batch page it lands on."""
    csrf = await sign_in(api)
    path = f"/console/settlement/windows/{window_id}/close"
    async with api.client.post(path, data={"csrf_token": csrf, "confirm": "yes"}, allow_redirects=False) as closed:
        assert closed.status == 303, await closed.text()
        assert closed.headers["Location"] == f"/console/settlement/batches/{window_id}?done=closed"
    async with api.client.get(closed.headers["Location"]) as page:
        assert page.status == 200
        return await page.text()


async def test_the_batch_page_shows_the_figures_of_the_api(corridor: Corridor):
    api = corridor.api
    paid = (await corridor.pay(corridor.alpha, corridor.alpha_customer, "300.00")).body
    assert (await corridor.pay(corridor.beta, corridor.beta_customer, "200.00")).status == 201
    refund_body = {"id": str(uuid7()), "amount": "100.00"}
    refund = await api.post(corridor.alpha, f"/v1/payments/{paid['id']}/refunds", refund_body)
    assert refund.status == 201, refund.body
    text = await close_through_console(api, 1)
    batch = (await api.get(api.operator, "/v1/settlement/batches/1")).body
    assert 'id="batch-status">closed<' in text and 'id="closed-notice"' in text
    [total] = batch["totals"]
    assert (total["gross"], total["net"], total["liquidity_saved"]) == ("600.00", "400.00", "200.00")
    row = 'data-currency="CNY"'
    assert cells(text, row, "gross") == total["gross"] and cells(text, row, "net") == total["net"]
    assert cells(text, row, "saved") == total["liquidity_saved"]
    assert cells(text, row, "ratio") == total["liquidity_saving_ratio"] == "0.3333"
    for p in batch["positions"]:
        assert cells(text, f'data-institution="{p["institution_id"]}" data-currency="CNY"', "net") == p["net_amount"]
        verb = "pays" if p["direction"] == "pay" else "receives"
        assert f"{p['institution_id']} {verb} {p['net_amount']} CNY" in text  # the bar's tooltip in the SVG
    assert "<svg" in text and 'sz-acq</td><td>hk-alpha</td><td>CNY</td><td class="num">100.00<' in text
    for i in batch["instructions"]:
        assert f'<td>{i["payer"]}</td><td>{i["payee"]}</td><td>CNY</td><td class="num">{i["amount"]}</td>' in text
    assert f'id="signature">{batch["signature"]}<' in text  # Ed25519 is deterministic: the same report
    assert "console:operator" in text and 'id="settle"' in text
    async with api.client.get("/console/settlement/windows/1") as window:
        assert 'href="/console/settlement/batches/1" id="open-batch"' in await window.text()
    async with api.client.get("/console/settlement/batches/2", allow_redirects=False) as still_open:
        assert still_open.status == 303 and still_open.headers["Location"] == "/console/settlement/windows/2"
    async with api.client.get("/console/settlement/batches/9") as unknown:
        assert unknown.status == 404


async def test_settling_through_the_confirmation_form_and_exporting_the_apis_report(corridor: Corridor):
    api = corridor.api
    assert (await corridor.pay(corridor.alpha, corridor.alpha_customer, "300.00")).status == 201
    await close_through_console(api, 1)
    async with api.client.get("/console/settlement/batches/1/settle") as confirm:
        text = await confirm.text()
        csrf = CSRF.search(text)[1]
    assert confirm.status == 200 and "Settle batch 1?" in text and 'id="confirm-settle"' in text
    assert re.search(r'data-institution="hk-alpha">.*?300\.00.*?5000\.00.*?funded', text, re.S)
    path = "/console/settlement/batches/1/settle"
    for form in ({"confirm": "yes"}, {"confirm": "yes", "csrf_token": "forged"}):
        async with api.client.post(path, data=form, allow_redirects=False) as refused:
            assert refused.status == 403 and "CSRF" in await refused.text()
    async with api.client.post(path, data={"csrf_token": csrf}, allow_redirects=False) as unconfirmed:
        assert unconfirmed.status == 303 and unconfirmed.headers["Location"] == path
    assert (await api.get(api.operator, "/v1/settlement/batches/1")).body["status"] == "closed"
    async with api.client.post(path, data={"csrf_token": csrf, "confirm": "yes"}, allow_redirects=False) as settled:
        assert settled.status == 303 and settled.headers["Location"] == "/console/settlement/batches/1?done=settled"
    async with api.client.get(settled.headers["Location"]) as page:
        text = await page.text()
    assert 'id="batch-status">settled<' in text and "Batch 1 is settled." in text and 'id="settle"' not in text
    batch = (await api.get(api.operator, "/v1/settlement/batches/1")).body
    assert batch["status"] == "settled" and batch["history"][-1]["actor"] == "console:operator"
    assert (await api.get(api.operator, "/v1/institutions/hk-alpha/position")).body["liquidity"] == "4700.00"

    for report_format in ("json", "csv"):
        from_api = await api.get(api.operator, f"/v1/settlement/batches/1/report?format={report_format}")
        async with api.client.get(f"/console/settlement/batches/1/export/confirm?format={report_format}") as step:
            assert step.status == 200 and batch["signature"] in await step.text()  # the confirmation step
        async with api.client.get(f"/console/settlement/batches/1/export?format={report_format}") as download:
            assert download.status == 200 and await download.read() == from_api.raw, report_format
            assert download.headers["Content-Type"] == from_api.headers["Content-Type"]
            assert download.headers["Content-Disposition"].startswith("attachment")
            if report_format == "csv":
                assert download.headers["Report-Signature"] == from_api.headers["Report-Signature"]
    async with api.client.get("/console/settlement/batches/1/export?format=xml") as bad:
        assert bad.status == 400
    # Settling a settled batch from a stale tab: nothing to settle, said on the page.
    async with api.client.get(path) as stale:
        assert stale.status == 409 and "nothing to settle" in await stale.text()


async def test_refusals_are_messages_on_the_page_and_an_unwound_batch_shows_who_left(corridor: Corridor):
    api = corridor.api
    gamma = await api.institution("hk-gamma", liquidity=None)
    customer = await api.wallet(gamma, "HKD", limit_profile="svf-verified")
    await api.deposit(gamma, customer["id"], "1000.00")
    assert (await corridor.liquidity(gamma, "100.00")).status == 201
    allow = {"beyond_liquidity": True}
    assert (await api.post(api.operator, "/v1/institutions/hk-gamma/net-debit-cap-policy", allow)).status == 200
    assert (await corridor.pay(gamma, customer["id"], "500.00")).status == 201
    assert (await corridor.pay(corridor.alpha, corridor.alpha_customer, "300.00")).status == 201
    await close_through_console(api, 1)
    assert (await api.post(api.operator, "/v1/settlement/windows/2/close")).status == 201
    async with api.client.get("/console/settlement") as page:
        csrf = CSRF.search(await page.text())[1]
    # window_not_open: closing a window closed meanwhile (another tab, the API).
    close = {"csrf_token": csrf, "confirm": "yes"}
    async with api.client.post("/console/settlement/windows/1/close", data=close) as refused:
        text = await refused.text()
        assert refused.status == 409 and 'id="window-error"' in text and "window_not_open" in text
        assert "window 1 is not the open window" in text
    # batch_not_settleable: batches settle oldest first.
    async with api.client.post("/console/settlement/batches/2/settle", data=close) as refused:
        text = await refused.text()
        assert refused.status == 409 and 'id="batch-error"' in text and "batch_not_settleable" in text
        assert "settle batch 1 first" in text and 'id="batch-status">closed<' in text
    async with api.client.post("/console/settlement/batches/1/settle", data=close, allow_redirects=False) as done:
        assert done.status == 303
    async with api.client.get("/console/settlement/batches/1?done=settled") as page:
        text = await page.text()
    assert 'id="batch-status">unwound<' in text and "settled without hk-gamma" in text
    assert re.search(r'id="exclusions".*?hk-gamma</td><td>CNY</td><td class="num">500.00</td>'
                     r'<td class="num">100.00</td>', text, re.S)  # fmt: skip
    carried = r'id="carried_out".*?<td>hk-gamma</td><td>sz-acq</td><td>CNY</td><td class="num">500.00<'
    assert re.search(carried, text, re.S)


async def test_the_institutions_index_pages_and_the_gauge_follows_the_position_api(corridor: Corridor):
    api = corridor.api
    assert (await corridor.pay(corridor.alpha, corridor.alpha_customer, "1250.00")).status == 201
    await sign_in(api)
    async with api.client.get("/console/institutions?size=2") as page:
        text = await page.text()
    assert re.findall(r'<tr data-institution="([^"]+)"', text) == ["hk-alpha", "hk-beta"]
    assert 'href="/console/institutions"' in text  # in the nav
    async with api.client.get("/console/institutions?after=hk-beta&size=2") as page:
        text = await page.text()
    assert re.findall(r'<tr data-institution="([^"]+)"', text) == ["operator", "settlement-bank"]
    assert "after=settlement-bank&amp;size=2" in text
    position = (await api.get(api.operator, "/v1/institutions/hk-alpha/position")).body
    async with api.client.get("/console/institutions/hk-alpha") as page:
        text = await page.text()
    assert f'id="cap">{position["cap_in_force"]} CNY<' in text
    assert f'id="liquidity">{position["liquidity"]} CNY<' in text
    assert position["open_window_net"] == "-1250.00" and 'id="open-window-net">-1250.00 CNY<' in text
    assert 'aria-label="cap usage 25 percent"' in text  # 1,250 of the 5,000 in force
    # Liquidity bounds the cap in force: a smaller prefund than the registered cap shows against it.
    gamma = await api.institution("hk-gamma", liquidity=None)
    async with api.client.get(f"/console/institutions/{gamma.id}") as page:
        text = await page.text()
    assert 'id="registered-cap">none<' in text and 'id="cap">0.00 CNY<' in text
