"""One middleware in front of everything but the proxy: sessions, login, CSRF, errors.

`/v1/*` passes untouched (the proxy has its own token check and error format; server.py skips
this middleware for it altogether). For `/api/*`, a request without a session gets 401 (login
alone is open), and an unsafe request whose Origin or Referer names another site gets 403.
Whatever a handler raises unexpectedly is logged here and answered as a JSON 500 (`/api/*`)
or a plain error page, never with a traceback.
"""

from __future__ import annotations

import functools
import logging
import warnings

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp_session import AbstractStorage, session_middleware

from ..typedefs import ACCOUNT, CONFIG, HOSTS, REVOKED, SETTINGS
from .api import ApiError, dumps
from .auth import current_session, same_origin
from .pages import PAGES

# aiohttp-session keeps its request state under string keys; that is its business, not ours.
warnings.filterwarnings("ignore", category=web.NotAppKeyWarning, module="aiohttp_session")

log = logging.getLogger(__name__)

V1_ROUTE = "v1"  # the app's route to the proxy (app.py): what the router chose, not what the path looks like
PUBLIC = frozenset({("POST", "/api/login")})
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def admin_gate(storage: AbstractStorage) -> Middleware:
    sessions = session_middleware(storage)

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.route.name == V1_ROUTE:
            return await handler(request)
        try:
            return await sessions(request, functools.partial(_guard, handler=handler))
        except web.HTTPException:  # redirects and the router's 404/405 are answers, not failures
            raise
        except Exception:
            log.exception("admin %s %s failed", request.method, request.path)
            if request.path.startswith("/api/"):
                return _error(500, "internal error: see the server log (内部错误，请查看服务日志)")
            return web.Response(
                status=500,
                text="silicon-pool: internal error, see the server log (内部错误，请查看服务日志)",
                headers=_page_headers(""),
            )

    return gate


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    response = dumps({"error": message}, status=status)
    if headers:
        response.headers.update(headers)
    return response


async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.app[HOSTS](request.headers.get("Host")):
        message = "unknown Host name: open the admin by IP or localhost, or start with --allowed-host NAME"
        if request.path.startswith("/api/"):
            return _error(403, message)
        return web.Response(status=403, text=message)
    if not request.path.startswith("/api/"):
        return await _page_guard(request, handler)
    try:
        if request.method in UNSAFE and not same_origin(request, request.app[CONFIG].allowed_hosts):
            raise ApiError(403, "cross-site request refused (拒绝跨站请求)")
        public = (request.method, request.path) in PUBLIC
        if not public and await current_session(request, request.app[ACCOUNT], request.app[REVOKED]) is None:
            raise ApiError(401, "login required (请先登录)")
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


async def _page_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Pages need a session (else the login page, which sends the user back afterwards)."""
    logged_in = await current_session(request, request.app[ACCOUNT], request.app[REVOKED]) is not None
    if request.path in PAGES and not logged_in:
        raise web.HTTPFound(request.app.router["login"].url_for().with_query(next=request.path_qs))
    if request.path == "/login" and logged_in:
        raise web.HTTPFound("/")
    response = await handler(request)
    if request.path in PAGES or request.path == "/login":
        response.headers.update(_page_headers(request.app[SETTINGS].chartjs_url))
    return response


def _page_headers(chartjs_url: str) -> dict[str, str]:
    chart_source = chartjs_url if chartjs_url.startswith("http") else ""  # that one file, not its whole host
    return {
        "Content-Security-Policy": (
            f"default-src 'self'; script-src 'self' {chart_source}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        ),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }
