"""Routes declared once, for both the router and the OpenAPI 3.1 document.

Each resource module keeps a :class:`RouteTable` (like aiohttp's ``RouteTableDef``) and declares
its handlers with what the document needs: method, path, summary, request model, response models
by status, the problem codes it can answer, and whether it is signed. ``create_app`` adds the
tables to the router and builds ``/openapi.json`` from the same declarations, so the document
cannot drift from the routes. ``/docs`` is Swagger UI, served from the ``swagger-ui-bundle``
package's files (no CDN).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.problems import CODES, PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX
from service.schemas import Problem

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPENAPI_VERSION = "3.1.0"
SIGNED_PATH_PREFIX = "/v1/"
SECURITY_SCHEME_NAME = "httpMessageSignature"
SECURITY_SCHEME_DESCRIPTION = """\
Every `/v1` request is signed with the institution's Ed25519 key, as RFC 9421 (HTTP Message
Signatures) says. OpenAPI has no scheme type for RFC 9421, so it is declared here as an `apiKey` in
the `Signature` header only to mark which operations need it; the signature is not a static key.
A signed request carries three headers:

- `Content-Digest: sha-256=:<base64 SHA-256 of the body>:` (RFC 9530) when it has a body;
- `Signature-Input: sig1=("@method" "@path" "@query" "content-digest")`
  `;created=<unix seconds>;keyid="<key id>";alg="ed25519"` (one line), covering at least
  `@method` and `@path`, `@query` when the URL has a query, and `content-digest` with a body;
- `Signature: sig1=:<base64 Ed25519 signature over the RFC 9421 signature base>:`.

`created` must be within 300 seconds of the server clock; `keyid` is the institution id. Failures
answer 401 `signature_missing`, `signature_invalid`, `signature_expired`, `unknown_key`, or 400
`content_digest_mismatch`."""

# Problems any signed route can answer, added to each one's declaration.
SIGNED_PROBLEMS = ("signature_missing", "signature_invalid", "signature_expired", "unknown_key")
SIGNED_BODY_PROBLEMS = ("content_digest_mismatch",)
# Problems any route with a body can answer (read_json's checks).
BODY_PROBLEMS = ("invalid_request", "payload_too_large")
# Methods that may carry a body: a body that is not JSON, or a route's missing one, answers 415
# (``middlewares.body_limit_middleware`` for every such route, ``read_json`` for those with a model).
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
BODY_METHOD_PROBLEMS = ((415, "invalid_request"),)


@dataclass(frozen=True)
class RawResponse:
    """A response that is not a JSON model, such as Prometheus text."""

    content_type: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class JsonOrRaw:
    """A JSON model, or the same content in another media type (a report as JSON or CSV)."""

    model: type[BaseModel]
    raw: RawResponse


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    handler: Handler
    summary: str
    request: type[BaseModel] | None
    responses: Mapping[int, type[BaseModel] | RawResponse | JsonOrRaw | None]
    problems: tuple[tuple[int, str], ...]
    signed: bool
    tags: tuple[str, ...]
    description: str | None

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


class RouteTable:
    """Handlers of one resource module. ``@table.route("POST", "/v1/transfers", ...)``."""

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag
        self.specs: list[RouteSpec] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        responses: Mapping[int, type[BaseModel] | RawResponse | JsonOrRaw | None],
        request: type[BaseModel] | None = None,
        problems: Iterable[str | tuple[int, str]] = (),
        signed: bool | None = None,
        description: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Declare a handler. ``problems`` are stable codes (at their usual status from
        ``problems.CODES``) or ``(status, code)`` pairs. ``signed`` defaults to whether the path is
        under ``/v1/``, which is where the authentication middleware runs; saying otherwise for a
        route is refused, since the document would then lie about it."""
        is_v1 = path.startswith(SIGNED_PATH_PREFIX)
        if signed is not None and signed != is_v1:
            raise ValueError(f"{method} {path}: every /v1/ route is signed and no other is (signed={signed})")

        def register(handler: Handler) -> Handler:
            self.specs.append(
                RouteSpec(
                    method=method.upper(),
                    path=path,
                    handler=handler,
                    summary=summary,
                    request=request,
                    responses=dict(responses),
                    problems=_problem_pairs(
                        problems, has_body=request is not None, signed=is_v1, body_method=method.upper() in BODY_METHODS
                    ),
                    signed=is_v1,
                    tags=(self.tag,) if self.tag else (),
                    description=description,
                )
            )
            return handler

        return register


def _problem_pairs(
    problems: Iterable[str | tuple[int, str]], *, has_body: bool, signed: bool, body_method: bool = False
) -> tuple:
    codes: list[str | tuple[int, str]] = list(problems)
    codes += BODY_PROBLEMS if has_body else ()
    codes += BODY_METHOD_PROBLEMS if body_method else ()
    codes += SIGNED_PROBLEMS if signed else ()
    codes += SIGNED_BODY_PROBLEMS if signed and has_body else ()
    pairs: list[tuple[int, str]] = []
    for item in codes:
        status, code = item if isinstance(item, tuple) else (CODES[item].status if item in CODES else 0, item)
        if code not in CODES:
            raise ValueError(f"unknown problem code {code!r}: add it to service.problems.CODES first")
        if (status, code) not in pairs:
            pairs.append((status, code))
    return tuple(pairs)


def add_routes(app: web.Application, specs: Sequence[RouteSpec]) -> None:
    for spec in specs:
        app.router.add_route(spec.method, spec.path, spec.handler, name=spec.operation_id)


def build_openapi(specs: Sequence[RouteSpec], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``specs``. All models go through one ``models_json_schema``
    call so that nested models land once in ``components.schemas`` and every ``$ref`` points there."""
    models = _models(specs)
    refs, definitions = models_json_schema(models, ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec, refs)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": "Shenzhen–Hong Kong payment ledger. Errors are RFC 9457 problem details; match on `code`.",
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                SECURITY_SCHEME_NAME: {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Signature",
                    "description": SECURITY_SCHEME_DESCRIPTION,
                }
            },
        },
    }


def _models(specs: Sequence[RouteSpec]) -> list[tuple[type[BaseModel], str]]:
    models: list[tuple[type[BaseModel], str]] = [(Problem, "serialization")]
    for spec in specs:
        if spec.request is not None:
            models.append((spec.request, "validation"))
        models += [(model, "serialization") for model in spec.responses.values() if _is_model(model)]
        models += [(r.model, "serialization") for r in spec.responses.values() if isinstance(r, JsonOrRaw)]
    return list(dict.fromkeys(models))


def _is_model(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _operation(spec: RouteSpec, refs: Mapping[tuple[type[BaseModel], str], Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": spec.operation_id, "summary": spec.summary, "tags": list(spec.tags)}
    if spec.description:
        operation["description"] = spec.description
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in _path_params(spec.path)
    ]
    if parameters:
        operation["parameters"] = parameters
    if spec.request is not None:
        schema = refs[(spec.request, "validation")]
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    responses: dict[str, Any] = {}
    for status, model in sorted(spec.responses.items()):
        responses[str(status)] = _success_response(status, model, refs)
    for status, codes in _problems_by_status(spec.problems).items():
        responses[str(status)] = _problem_response(codes, refs)
    operation["responses"] = responses
    operation["security"] = [{SECURITY_SCHEME_NAME: []}] if spec.signed else []
    return operation


def _path_params(path: str) -> list[str]:
    # aiohttp's "{id}" and "{id:regex}" placeholders; OpenAPI names them without the regex.
    names: list[str] = []
    for part in path.split("{")[1:]:
        names.append(part.split("}", 1)[0].split(":", 1)[0])
    return names


def _success_response(status: int, model: object, refs: Mapping) -> dict[str, Any]:
    if model is None:
        return {"description": "No content" if status == 204 else "Done"}
    if isinstance(model, RawResponse):
        return {"description": model.description, "content": {model.content_type: {"schema": dict(model.schema)}}}
    if isinstance(model, JsonOrRaw):
        content = {
            "application/json": {"schema": refs[(model.model, "serialization")]},
            model.raw.content_type: {"schema": dict(model.raw.schema)},
        }
        return {
            "description": f"{model.model.__doc__ or model.model.__name__} {model.raw.description}",
            "content": content,
        }
    schema = refs[(model, "serialization")]
    return {"description": model.__doc__ or model.__name__, "content": {"application/json": {"schema": schema}}}


def _problems_by_status(problems: Iterable[tuple[int, str]]) -> dict[int, list[str]]:
    grouped: dict[int, list[str]] = {}
    for status, code in sorted(problems):
        grouped.setdefault(status, []).append(code)
    return grouped


def _problem_response(codes: list[str], refs: Mapping) -> dict[str, Any]:
    examples = {
        code: {"value": {"type": PROBLEM_TYPE_PREFIX + code, "title": CODES[code].title, "code": code}}
        for code in codes
    }
    return {
        "description": "Problem: " + ", ".join(f"`{code}`" for code in codes),
        "content": {PROBLEM_CONTENT_TYPE: {"schema": refs[(Problem, "serialization")], "examples": examples}},
    }


# -- /openapi.json and /docs ------------------------------------------------------------------

# swagger-ui-bundle's newest release carries Swagger UI 4, which reads only OpenAPI 2.0 and 3.0.x
# documents and refuses to render a 3.1 one. Until a newer bundle exists, the page relabels the
# document it fetched as 3.0.3 for the viewer only (pydantic's schemas display well enough);
# /openapi.json itself stays an honest, valid 3.1 document.
DOCS_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title}</title>
  <link rel="stylesheet" href="docs/static/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/static/swagger-ui-bundle.js"></script>
  <script src="docs/static/swagger-ui-standalone-preset.js"></script>
  <script>
    function viewAs30(response) {{
      if (response.url && response.url.split("?")[0].endsWith("openapi.json") && response.text) {{
        const document = JSON.parse(response.text);
        if (String(document.openapi).startsWith("3.1")) {{
          document.openapi = "3.0.3";
          response.text = JSON.stringify(document);
        }}
      }}
      return response;
    }}
    window.ui = SwaggerUIBundle({{
      url: "openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "BaseLayout",
      responseInterceptor: viewAs30,
    }});
  </script>
</body>
</html>
"""


def swagger_ui_directory() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


# The served document and the docs page, as bytes, made once by ``add_docs_routes``.
_DOCS_KEY = web.AppKey("openapi_docs", tuple)


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_DOCS_KEY][0], content_type="application/json")


async def docs(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_DOCS_KEY][1], content_type="text/html", charset="utf-8")


_docs_table = RouteTable(tag="operations")
_docs_table.route(
    "GET",
    "/openapi.json",
    summary="This OpenAPI 3.1 document",
    responses={200: RawResponse("application/json", "The OpenAPI 3.1 document", {"type": "object"})},
)(openapi_json)
_docs_table.route(
    "GET",
    "/docs",
    summary="Swagger UI over this document",
    responses={200: RawResponse("text/html", "The Swagger UI page")},
)(docs)
# ``/openapi.json`` and ``/docs`` as routes, so that the document describes them too: pass them to
# ``build_openapi`` beside the routes of the app that ``add_docs_routes`` serves them in.
DOCS_SPECS: tuple[RouteSpec, ...] = tuple(_docs_table.specs)


def add_docs_routes(app: web.Application, document: Mapping[str, Any]) -> None:
    """``/openapi.json`` and ``/docs`` (``DOCS_SPECS``, with the page's static files under ``/docs/static/``)."""
    document_bytes = json.dumps(document, ensure_ascii=False).encode()
    page = DOCS_HTML.format(title=document["info"]["title"]).encode()
    app[_DOCS_KEY] = (document_bytes, page)
    add_routes(app, DOCS_SPECS)
    app.router.add_static("/docs/static", swagger_ui_directory(), name="docs_static")
