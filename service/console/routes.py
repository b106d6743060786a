"""The console's pages and actions. Every handler but sign-in runs behind ``operator_only``: a
live session or nothing (a page redirects to sign-in, an action answers 403), and every POST must
carry the session's CSRF token. Actions answer with a redirect (post/redirect/get), so a reload
never repeats one."""

from __future__ import annotations

import base64
import datetime
import functools
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web

from ledger.keys import public_key_text
from service.console import views
from service.console.auth import COOKIE_NAME, CSRF_FIELD, SESSION_TTL_S, LoginRefused, csrf_matches
from service.console.state import CONSOLE_KEY, SESSION_KEY, SESSION_TOKEN_KEY
from service.console.tokens import LoginStatement, MalformedToken, parse_login_token, parse_signature
from service.keys import LEDGER_KEY, SETTLEMENT_KEY, WALLETS_KEY
from settlement.errors import WindowNotOpen
from settlement.windows import Window
from wallets.errors import NotFound

routes = web.RouteTableDef()

LOGIN_PATH = "/console/login"
LANDING_PATH = "/console/settlement"
OPERATOR_DEFAULT = "operator"
FORM_FIELD_LENGTH_MAX = 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def operator_only(*, csrf: bool = False) -> Callable[[Handler], Handler]:
    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            token = request.cookies.get(COOKIE_NAME)
            session = await request.app[CONSOLE_KEY].auth.find(token)
            if session is None or token is None:
                if request.method == "GET":
                    raise web.HTTPSeeOther(LOGIN_PATH)
                return refusal(request, "no console session: sign in again", status=403)
            request[SESSION_KEY] = session
            request[SESSION_TOKEN_KEY] = token
            if csrf:
                form = await request.post()
                if not csrf_matches(session, form.get(CSRF_FIELD)):
                    return refusal(request, "this form is stale or was not made by the console (CSRF token)")
            return await handler(request)

        return guarded

    return decorate


def render(template: str, request: web.Request, context: dict[str, object], *, status: int = 200) -> web.Response:
    """A page, with what the layout needs: who is signed in, and the session's CSRF token for
    the forms (the sign-out form of every page among them)."""
    session = request.get(SESSION_KEY)
    layout = {
        "operator_id": None if session is None else session.operator_id,
        "csrf_field": CSRF_FIELD,
        "csrf_token": None if session is None else session.csrf_token,
    }
    return aiohttp_jinja2.render_template(template, request, {**layout, **context}, status=status)


def page(template: str) -> Callable[[Callable[[web.Request], Awaitable[dict[str, object]]]], Handler]:
    def decorate(handler: Callable[[web.Request], Awaitable[dict[str, object]]]) -> Handler:
        @functools.wraps(handler)
        async def rendered(request: web.Request) -> web.StreamResponse:
            return render(template, request, await handler(request))

        return rendered

    return decorate


def refusal(request: web.Request, message: str, *, status: int = 403) -> web.Response:
    return render("refused.html", request, {"message": message}, status=status)


def _form_text(form, name: str) -> str:
    value = form.get(name, "")
    return value[:FORM_FIELD_LENGTH_MAX] if isinstance(value, str) else ""


# -- sign-in ----------------------------------------------------------------------------------


@routes.get("/console")
async def console_root(_request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(LANDING_PATH)


@routes.get(LOGIN_PATH)
async def login_page(request: web.Request) -> web.Response:
    return _login_form(request, request.query.get("operator", OPERATOR_DEFAULT)[:64])


def _login_form(request: web.Request, operator_id: str, error: str | None = None, status: int = 200) -> web.Response:
    now_s = request.app[LEDGER_KEY].clock() // 1_000_000
    try:
        challenge = LoginStatement.new(operator_id, now_s).text()
        LoginStatement.parse(challenge)
    except MalformedToken:
        operator_id, challenge = OPERATOR_DEFAULT, LoginStatement.new(OPERATOR_DEFAULT, now_s).text()
        error = error or "an operator id is a slug of lower-case letters, digits and dashes"
    context = {"operator_id": operator_id, "challenge": challenge, "error": error}
    return render("login.html", request, context, status=status)


@routes.post(LOGIN_PATH)
async def login_with_signature(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    try:
        statement = LoginStatement.parse(_form_text(form, "challenge"))
        signature = parse_signature(_form_text(form, "signature"))
    except MalformedToken as error:
        return _login_form(request, OPERATOR_DEFAULT, str(error), status=400)
    return await _open_session(request, statement, signature, on_refusal="form")


@routes.get(LOGIN_PATH + "/link")
async def login_with_link(request: web.Request) -> web.StreamResponse:
    try:
        statement, signature = parse_login_token(request.query.get("token", ""))
    except MalformedToken as error:
        return refusal(request, f"this login link is not valid: {error}", status=400)
    return await _open_session(request, statement, signature, on_refusal="page")


async def _open_session(
    request: web.Request, statement: LoginStatement, signature: bytes, *, on_refusal: str
) -> web.Response:
    try:
        token, _session = await request.app[CONSOLE_KEY].auth.redeem(statement, signature)
    except LoginRefused as error:
        if on_refusal == "form":
            return _login_form(request, statement.operator_id, str(error), status=403)
        return refusal(request, str(error))
    response = web.HTTPSeeOther(LANDING_PATH)
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=SESSION_TTL_S,
        path="/console",
        httponly=True,
        samesite="Strict",
        secure=request.secure,  # always behind TLS in production; plain http on a loopback test
    )
    raise response


@routes.post("/console/logout")
@operator_only(csrf=True)
async def logout(request: web.Request) -> web.StreamResponse:
    await request.app[CONSOLE_KEY].auth.end(request[SESSION_TOKEN_KEY])
    response = web.HTTPSeeOther(LOGIN_PATH)
    response.del_cookie(COOKIE_NAME, path="/console")
    raise response


# -- settlement windows -----------------------------------------------------------------------


@routes.get(LANDING_PATH)
@operator_only()
@page("windows.html")
async def windows_page(request: web.Request) -> dict[str, object]:
    ledger, console = request.app[LEDGER_KEY], request.app[CONSOLE_KEY]
    before = _int_query(request, "before")
    size = _int_query(request, "size") or views.WINDOWS_PAGE_SIZE_DEFAULT
    page = await views.windows_page(ledger, before, size)
    current = await views.open_window(ledger)
    figures = None if current is None else await views.window_figures(ledger, console.windows, current.id)
    return {"page": page, "open_window": current, "figures": figures, "size": size}


@routes.get(LANDING_PATH + "/windows/{window_id:[0-9]{1,9}}")
@operator_only()
@page("window.html")
async def window_page(request: web.Request) -> dict[str, object]:
    console = request.app[CONSOLE_KEY]
    window = await console.windows.get(int(request.match_info["window_id"]))
    if window is None:
        raise web.HTTPNotFound(text=f"no settlement window {request.match_info['window_id']}")
    return await _window_context(request, window)


async def _window_context(request: web.Request, window: Window) -> dict[str, object]:
    ledger, console = request.app[LEDGER_KEY], request.app[CONSOLE_KEY]
    return {
        "window": window,
        "history": await console.windows.history(window.id),
        "figures": await views.window_figures(ledger, console.windows, window.id),
        "error": None,
    }


@routes.get(LANDING_PATH + "/windows/{window_id:[0-9]{1,9}}/close")
@operator_only()
async def close_window_confirm(request: web.Request) -> web.StreamResponse:
    ledger, console = request.app[LEDGER_KEY], request.app[CONSOLE_KEY]
    window_id = int(request.match_info["window_id"])
    window = await console.windows.get(window_id)
    if window is None or window.status != "open":
        return refusal(request, f"window {window_id} is not the open window", status=409)
    figures = await views.window_figures(ledger, console.windows, window_id)
    return render("close_confirm.html", request, {"window": window, "figures": figures})


@routes.post(LANDING_PATH + "/windows/{window_id:[0-9]{1,9}}/close")
@operator_only(csrf=True)
async def close_window(request: web.Request) -> web.StreamResponse:
    window_id = int(request.match_info["window_id"])
    form = await request.post()
    if form.get("confirm") != "yes":  # the confirmation step: the form of the confirmation page
        raise web.HTTPSeeOther(f"{LANDING_PATH}/windows/{window_id}/close")
    actor = f"console:{request[SESSION_KEY].operator_id}"
    try:
        await request.app[SETTLEMENT_KEY].batches.close(window_id, actor=actor)
    except WindowNotOpen as refused:  # closed meanwhile, perhaps from another tab: say so on its page
        window = await request.app[CONSOLE_KEY].windows.get(window_id)
        if window is None:
            return refusal(request, str(refused), status=404)
        context = await _window_context(request, window)
        return render(
            "window.html", request, {**context, "error": f"Not closed ({refused.code}): {refused}"}, status=409
        )
    raise web.HTTPSeeOther(f"{LANDING_PATH}/batches/{window_id}?done=closed")


# -- institutions -----------------------------------------------------------------------------


@routes.get("/console/institutions")
@operator_only()
@page("institutions.html")
async def institutions_page(request: web.Request) -> dict[str, object]:
    after = request.query.get("after", "")[:64] or None
    size = _int_query(request, "size") or views.INSTITUTIONS_PAGE_SIZE_DEFAULT
    return {"page": await views.institutions_page(request.app[LEDGER_KEY], after, size), "size": size}


@routes.get("/console/institutions/{institution_id:[a-z0-9-]{1,64}}")
@operator_only()
@page("institution.html")
async def institution_page(request: web.Request) -> dict[str, object]:
    ledger = request.app[LEDGER_KEY]
    try:
        institution = await request.app[WALLETS_KEY].get_institution(request.match_info["institution_id"])
    except NotFound:
        raise web.HTTPNotFound(text="no such institution") from None
    return {
        "institution": institution,
        "wallets_count": await views.wallets_count(ledger, institution.id),
        "usage": await views.cap_usage(ledger, request.app[SETTLEMENT_KEY], institution),
        "keys": [(base64.b64encode(key.public_key).decode("ascii"), key.active) for key in institution.keys],
    }


# -- audit ------------------------------------------------------------------------------------


@routes.get("/console/audit")
@operator_only()
@page("audit.html")
async def audit_page(request: web.Request) -> dict[str, object]:
    ledger = request.app[LEDGER_KEY]
    runs = await request.app[CONSOLE_KEY].audit_runs.latest()
    return {
        "head": await ledger.newest_block(),
        "public_key": public_key_text(ledger.verify_key),
        "runs": runs,
        "running": any(run.running for run in runs),
        "busy": request.query.get("busy") == "1",
    }


@routes.post("/console/audit/verify")
@operator_only(csrf=True)
async def audit_verify(request: web.Request) -> web.StreamResponse:
    started = await request.app[CONSOLE_KEY].audit_runs.start(f"console:{request[SESSION_KEY].operator_id}")
    raise web.HTTPSeeOther("/console/audit" + ("" if started is not None else "?busy=1"))


# -- helpers for the templates ------------------------------------------------------------------


def _int_query(request: web.Request, name: str) -> int | None:
    text = request.query.get(name, "")
    return int(text) if text.isdigit() and len(text) <= 9 else None


def timestamp(at_us: int | None) -> str:
    if at_us is None:
        return "–"
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(microseconds=at_us)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def login_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}{LOGIN_PATH}/link?token={quote(token, safe='')}"
