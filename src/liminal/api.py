"""REST routes: tokens, metrics, connection statistics and the API description.

Handlers are aiohttp-pydantic views: their annotations validate the input and
produce the OpenAPI document served at ``/openapi.json`` and ``/docs``.
Every error is JSON ``{"detail": ...}``.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp_pydantic import PydanticView
from aiohttp_pydantic.injectors import CONTEXT
from aiohttp_pydantic.oas.typing import r200, r401, r403, r422, r429
from aiohttp_pydantic.oas.view import generate_oas
from pydantic import BaseModel, Field, ValidationError

from . import __version__
from .accounts import LoginBusy, User
from .errors import AuthError
from .metrics import CONTENT_TYPE
from .server import SERVER_KEY, Server
from .websocket import authenticate, bearer_token

__all__ = ["add_routes", "error_middleware", "require_user"]

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """Every REST error."""

    detail: Any = Field(description="what went wrong")


class TokenRequest(BaseModel):
    """Credentials, as JSON or as an OAuth2 password form."""

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="seconds until the token expires")


class ConnectionStats(BaseModel):
    total_connections: int
    connections_by_ip: dict[str, int]
    channel_subscriptions: dict[str, int]
    instance_id: str = Field(description="the instance these numbers describe")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    instance_id: str


def _detail(exc: web.HTTPException) -> Any:
    """The message of an HTTP error, unwrapped from aiohttp-pydantic's JSON."""
    text = exc.text or exc.reason
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if isinstance(body, dict):
        return body.get("detail") or body.get("error") or body
    return body


@web.middleware
async def error_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Turn every error into JSON ``{"detail": ...}``; never leak a traceback."""
    if request.body_exists and request.content_type == "application/json":
        try:
            json.loads(await request.text())
        except web.HTTPException as exc:  # 413: over the body size limit
            return web.json_response({"detail": exc.reason}, status=exc.status)
        except Exception:
            # Not JSON, nested past the recursion limit, a number too long
            # for Python, a bad charset or encoding: the client's doing.
            return web.json_response({"detail": "body is not valid JSON"}, status=400)
    try:
        return await handler(request)
    except ConnectionError:
        raise  # the client went away; there is nobody to answer
    except web.HTTPException as exc:
        if (
            exc.status < 400
            or exc.content_type == "application/json"
            and ('"detail"' in (exc.text or ""))
        ):
            raise
        return web.json_response(
            {"detail": _detail(exc)}, status=exc.status, headers=_kept_headers(exc)
        )
    except Exception:
        logger.exception("request failed", extra={"path": request.path})
        return web.json_response({"detail": "internal server error"}, status=500)


def _kept_headers(exc: web.HTTPException) -> dict[str, str]:
    keep = ("Retry-After", "WWW-Authenticate", "Allow")
    return {name: exc.headers[name] for name in keep if name in exc.headers}


def unauthorized(detail: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text=json.dumps({"detail": detail}),
        content_type="application/json",
        headers={"WWW-Authenticate": "Bearer"},
    )


def too_many_requests(detail: str, retry_after: float) -> web.HTTPException:
    return http_error(
        web.HTTPTooManyRequests,
        detail,
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


def http_error(
    cls: type[web.HTTPException], detail: Any, **kwargs: Any
) -> web.HTTPException:
    return cls(
        text=json.dumps({"detail": detail}), content_type="application/json", **kwargs
    )


async def require_user(request: web.Request, *, admin: bool = False) -> User:
    """The user of the request's bearer token.

    Raises:
        HTTPUnauthorized: no valid token (401).
        HTTPForbidden: ``admin`` asked and the user is not one (403).
    """
    server = request.app[SERVER_KEY]
    try:
        user, _ = await authenticate(server, bearer_token(request))
    except AuthError as exc:
        raise unauthorized(exc.reason) from None
    if admin and not user.is_admin:
        raise http_error(web.HTTPForbidden, "admin role required")
    return user


class LiminalView(PydanticView):
    """Base view: validation errors become 422 ``{"detail": [...]}``."""

    @property
    def server(self) -> Server:
        server: Server = self.request.app[SERVER_KEY]
        return server

    async def on_validation_error(
        self, exception: ValidationError, context: CONTEXT
    ) -> web.StreamResponse:
        return validation_error(exception, context)


def validation_error(exception: ValidationError, context: str) -> web.Response:
    """422 ``{"detail": [{"loc", "msg", "type"}, ...]}`` naming each bad field."""
    detail = [
        {"loc": [context, *error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in exception.errors(include_url=False, include_context=False)
    ]
    return web.json_response({"detail": detail}, status=422)


class TokenView(LiminalView):
    async def post(
        self,
    ) -> r200[TokenResponse] | r401[ErrorBody] | r422[ErrorBody] | r429[ErrorBody]:
        """Exchange a username and password for a bearer token.

        Accepts `application/json` or the OAuth2 password form
        (`application/x-www-form-urlencoded`).

        Tags: auth
        Status Codes:
            200: the token
            401: wrong username or password
            422: malformed request
            429: too many failed attempts; see Retry-After
        """
        credentials = await _read_credentials(self.request)
        if isinstance(credentials, web.StreamResponse):
            return credentials
        server = self.server
        ip = server.client_ip(self.request)
        wait = server.login_guard.attempt(credentials.username, ip)
        if wait > 0:
            raise too_many_requests("too many failed logins; try again later", wait)
        try:
            user = await server.users.authenticate(
                credentials.username, credentials.password
            )
        except LoginBusy:
            raise too_many_requests("too many logins in progress; retry shortly", 1)
        if user is None:
            raise unauthorized("wrong username or password")
        server.login_guard.succeeded(credentials.username, ip)
        token = server.tokens.issue(user.name, list(user.roles))
        return web.json_response(
            TokenResponse(
                access_token=token, expires_in=server.tokens.ttl_seconds
            ).model_dump()
        )


async def _read_credentials(request: web.Request) -> TokenRequest | web.StreamResponse:
    try:
        if request.content_type == "application/x-www-form-urlencoded":
            form = await request.post()
            data: Any = {key: form.get(key) for key in ("username", "password")}
        else:
            data = await request.json()
    except web.HTTPException:
        raise  # e.g. 413 for a body over the size limit
    except Exception:
        # Invalid JSON, nesting past the recursion limit, an unknown charset,
        # a broken Content-Encoding: all the client's doing.
        raise http_error(
            web.HTTPBadRequest, "unreadable body: send JSON or an OAuth2 form"
        ) from None
    try:
        return TokenRequest.model_validate(data)
    except ValidationError as exc:
        return validation_error(exc, "body")


class StatsView(LiminalView):
    async def get(self) -> r200[ConnectionStats] | r401[ErrorBody] | r403[ErrorBody]:
        """Connections and subscriptions of this instance (admins only).

        Tags: operations
        Status Codes:
            200: the statistics
            401: missing or invalid bearer token
            403: the token's user is not an admin
        """
        await require_user(self.request, admin=True)
        stats = self.server.hub.stats()
        stats["instance_id"] = self.server.settings.instance_id
        return web.json_response(stats)


class HealthView(LiminalView):
    async def get(self) -> r200[Health]:
        """Liveness check for load balancers; needs no token.

        Tags: operations
        """
        return web.json_response(
            Health(instance_id=self.server.settings.instance_id).model_dump()
        )


class MetricsView(LiminalView):
    async def get(self) -> r200[str]:
        """Metrics of this instance in the Prometheus text format.

        Tags: operations
        """
        body = self.server.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


# Routes that need no bearer token; every other documented route does.
_PUBLIC = {"/token", "/healthz", "/metrics"}

_WEBSOCKET_DOC = {
    "get": {
        "tags": ["realtime"],
        "summary": "Open the WebSocket (upgrade required; plain GET gets 426)",
        "description": "Authenticate with `?token=` or `Authorization: Bearer`. "
        "Refusals arrive as WebSocket close codes after the upgrade: 4001 bad "
        "token, 4002 expired, 4005 server full, 4006 too many from this IP. "
        "Events and codes: see the README.",
        "parameters": [
            {
                "name": "token",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
            },
        ],
        "responses": {
            "101": {"description": "switching to the WebSocket protocol"},
            "426": {"description": "not a WebSocket upgrade request"},
        },
    }
}

# Swagger UI, loaded by the browser from a CDN, showing /openapi.json.
_DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>liminal API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="swagger-ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""


def openapi_document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI document, generated from the views and their models."""
    spec: dict[str, Any] = generate_oas([app], __version__, "liminal")
    body_schema = TokenRequest.model_json_schema()
    spec["paths"]["/token"]["post"]["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {"schema": body_schema},
            "application/x-www-form-urlencoded": {"schema": body_schema},
        },
    }
    spec["components"].setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    for path, operations in spec["paths"].items():
        if path not in _PUBLIC:
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
    spec["paths"]["/ws"] = _WEBSOCKET_DOC
    return spec


async def openapi_endpoint(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app))


async def docs_endpoint(request: web.Request) -> web.Response:
    return web.Response(text=_DOCS_PAGE, content_type="text/html")


def add_routes(app: web.Application) -> None:
    app.router.add_view("/token", TokenView)
    app.router.add_view("/debug/connections/stats", StatsView)
    app.router.add_view("/healthz", HealthView)
    app.router.add_view("/metrics", MetricsView)
    app.router.add_get("/openapi.json", openapi_endpoint)
    app.router.add_get("/docs", docs_endpoint)
