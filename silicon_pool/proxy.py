"""The one forwarding path for every `/v1/*` request.

check token → read body → pick key (memory) → forward → relay the answer → queue a log row.
Nothing here touches the disk or holds a lock across an `await`. Until the first byte reaches
the client a failed attempt can move on to another key; after it, a stream is ended with an
SSE error event and `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import random
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson
from aiohttp import web

from .hosts import HostCheck
from .http1 import (
    Answer,
    AnswerTooLarge,
    Http1Client,
    PoolExhausted,
    ProtocolError,
    Target,
    UpstreamError,
    target,
)
from .keys import MAX_ERROR, UNCHECKED, Key
from .limits import (
    BUSY,
    GATEWAY_TIMEOUT,
    JITTER,
    KINDS,
    RATE_LIMITED,
    REASONS,
    clock_time,
    limit_kind,
    rest_until,
    retry_after,
)
from .metrics import Metrics
from .models import CatalogUnavailable, ModelCatalog
from .multipart import boundary, form_field
from .pool import FREE, PAID, UNKNOWN, KeyPool, Rest
from .redact import scrub, scrub_bytes
from .relay import ClientStalled, StreamRelay
from .settings import Settings
from .shapes import openai_error_body, openai_images
from .store import CallRecord, Store
from .text import MAX_LOGGED, clean
from .upstream import DROP_FROM_CLIENT, DROP_FROM_UPSTREAM, Outcome, classify, describe, describe_exception
from .usage import NO_USAGE, FinalUsageOnly, StreamUsage, Usage, image_usage, token_usage

log = logging.getLogger(__name__)

UPSTREAM_FAILURES = (UpstreamError, TimeoutError)
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "Access-Control-Max-Age": "86400",
}
# Whatever the upstream (or anything on the way) answers, a browser must never run it as a page
# of the proxy's origin, where the admin's session could export every key.
CONTAINED = {"Content-Security-Policy": "sandbox; default-src 'none'", "X-Content-Type-Options": "nosniff"}
# Pages the proxy serves to without an api_token: the same machine's, on any port.
LOOPBACK_ORIGIN = re.compile(r"https?://(localhost|[a-z0-9.-]+\.localhost|127(\.\d{1,3}){3}|\[::1\])(:\d{1,5})?", re.I)
MAX_CACHED_ORIGINS = 64
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_UTF8 = "text/event-stream; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What differs between endpoints is data: whether the body must be JSON, how usage is read."""

    json_body: bool
    usage: Callable[[bytes | bytearray], Usage]
    reshape: Callable[[bytes], bytes] | None = None  # a successful JSON answer, into OpenAI's shape


ENDPOINTS = {
    "chat/completions": Endpoint(True, token_usage),
    "completions": Endpoint(True, token_usage),
    "embeddings": Endpoint(True, token_usage),
    "rerank": Endpoint(True, token_usage),
    "images/generations": Endpoint(True, image_usage, openai_images),
}
OTHER = Endpoint(False, token_usage)

UNKNOWN_HOST = "Unknown Host name: use an IP address or localhost, or start silicon-pool with --allowed-host NAME"
FOREIGN_PAGE = (
    "A web page of another machine or site may use the pool only once an api_token is set "
    "(未设置 api_token 时，只有本机网页可以使用代理；请在设置中设置 api_token)"
)
ACCOUNT_INFO = (
    "/v1/user/info is not served through the proxy: it would show the account of whichever pool key "
    "answered; balances are in the admin (账户信息不经代理提供，余额请在管理页面查看)"
)
_HEADER_LIST = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+([ \t]*,[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")
ONLY_PAID, FREE_FIRST = (PAID,), (FREE, PAID)
# The free token's keys, by `free_token_keys`: zero-balance ones first, then (by choice) others.
FREE_TOKEN_TIERS = {"zero_only": (FREE,), "zero_then_unknown": (FREE, UNKNOWN), "any": (FREE, PAID)}
_SEGMENT_SEPARATORS = re.compile(r"[/\\]")  # a backslash too: some servers read it as a slash
_SEGMENT_END = re.compile("[;\x00]")  # what ends a segment's name for some servers: a parameter, a NUL
MAX_DECODES = 4  # percent-decodings a path is checked through for dot segments
MB = 1024 * 1024
MAX_MODEL = 256  # characters of a model id: no real one comes near, and it is logged and rested on
WAKE_MARGIN = 0.005  # seconds past a rest's end before a waiter looks again
MAX_CACHED_TARGETS = 256  # upstream targets kept per path; odd paths (ids, queries) beyond that are parsed each time


def openai_error(
    status: int, message: str, type_: str, code: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An error in OpenAI's shape, which every client SDK knows how to show."""
    body = orjson.dumps({"error": {"message": message, "type": type_, "code": code}})
    reply_headers = {**CONTAINED, **headers} if headers else CONTAINED
    return web.Response(status=status, body=body, content_type="application/json", headers=reply_headers)


def media_type(raw: str | None) -> str:
    """A Content-Type without its parameters: aiohttp's full parse costs a microsecond a message,
    and the few distinct values seen (`application/json; charset=utf-8`...) are remembered."""
    if raw is None:
        return "application/octet-stream"
    media = _MEDIA_TYPES.get(raw)
    if media is None:
        media = raw.partition(";")[0].strip().lower()
        if len(_MEDIA_TYPES) < MAX_CACHED_MEDIA_TYPES:
            _MEDIA_TYPES[raw] = media
    return media


_MEDIA_TYPES: dict[str, str] = {}
MAX_CACHED_MEDIA_TYPES = 64


def _is_json(request: web.BaseRequest) -> bool:
    """No Content-Type (curl -d sends a form type, many scripts none) or a JSON one."""
    if "Content-Type" not in request.headers:
        return True
    content_type = media_type(request.headers.get("Content-Type"))
    return (
        content_type == "application/json"
        or content_type.endswith("+json")
        or content_type == "application/x-www-form-urlencoded"  # curl's default for -d
    )


async def _continue(request: web.BaseRequest) -> None:
    """Answer `Expect: 100-continue`, or the client waits for a go-ahead before sending the body."""
    expect = request.headers.get("Expect")
    if expect is None or request.version < (1, 1):
        return
    if expect.lower() != "100-continue":
        raise RequestRejected(417, f"Unsupported Expect: {expect[:50]}", "expectation_failed")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the 100 is not part of the answer's size


class _Call:
    """One request's facts, gathered as it goes and logged once at the end."""

    __slots__ = ("caller", "key", "limited", "logged", "model", "path", "started", "stream", "tried")

    def __init__(self, path: str, started: float) -> None:
        self.path, self.started = path, started
        self.caller = "none"
        self.model: str | None = None
        self.stream = False
        self.tried: tuple[int, ...] = ()
        self.key: Key | None = None  # the key of the attempt under way
        self.limited: list[Rest] = []  # the rate limits its attempts met
        self.logged = False


def _has_dot_segment(raw_path: str) -> bool:
    """A `.` or `..` segment, written plainly or percent-encoded (`%2e`, `..%2f`), or in a form some
    server behind the upstream may still resolve: encoded twice or more (`%252e`), with a path
    parameter (`..;x`) or cut by a NUL (`..%00`). The path might then reach another route, with a
    pool key attached."""
    path = raw_path
    for _ in range(MAX_DECODES):
        for segment in _SEGMENT_SEPARATORS.split(path):
            if _SEGMENT_END.split(segment, 1)[0] in (".", ".."):
                return True
        decoded = urllib.parse.unquote(path, errors="replace")
        if decoded == path:
            return False
        path = decoded
    return True  # still more encoded than any real path: refused as well


def _failure(exc: BaseException) -> str:
    """An attempt's outcome, for the metrics, when the answer never came whole."""
    if isinstance(exc, AnswerTooLarge):
        return "too_large"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "protocol" if isinstance(exc, ProtocolError) else "network"


def _take_model(call: _Call, model: str) -> None:
    """The model the request names, which its log row, tiers and rests go by."""
    if len(model) > MAX_MODEL:
        raise RequestRejected(400, f"The model id is over {MAX_MODEL} characters", "model_too_long")
    call.model = model


def _header(answer: Answer, name: str) -> str | None:
    """One header of the upstream's answer (`name` in lower case)."""
    return next((v for k, v in answer.headers if k.lower() == name), None)


class _Turns:
    """Per (model, tiers), one waiter at a time, in arrival order (asyncio.Lock is fair): waiters
    compete only with those who could take the same keys. Idle locks are dropped."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, tuple[int, ...]], tuple[asyncio.Lock, list[int]]] = {}

    def queued(self, wanted: tuple[str, tuple[int, ...]]) -> bool:
        return wanted in self._locks

    @contextlib.asynccontextmanager
    async def take(self, wanted: tuple[str, tuple[int, ...]]) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(wanted, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[wanted]


class BadAnswer(Exception):
    """The upstream said 200 but sent something no client can use (say, an HTML error page)."""


class RequestRejected(Exception):
    """The proxy refuses the request itself, before any key is spent."""

    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error") -> None:
        message = clean(message, MAX_ERROR)
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type_


class Proxy:
    """Forwards requests with keys from `pool`; reads everything else from `settings`."""

    def __init__(
        self,
        pool: KeyPool,
        settings: Settings,
        store: Store,
        client: Http1Client,
        hosts: HostCheck,
        catalog: ModelCatalog,
        metrics: Metrics,
    ) -> None:
        self.pool, self.settings, self.store, self.client, self.hosts = pool, settings, store, client, hosts
        self.catalog, self.metrics = catalog, metrics
        self._targets: dict[str, Target] = {}
        self._targets_base = settings.upstream
        self._turns = _Turns()
        self._origins: dict[str, bool] = {}  # Origin header → a loopback page's

    def _target(self, path_qs: str) -> Target:
        """Where a `/v1/...` path goes upstream; the few paths clients use are parsed once per upstream."""
        base = self.settings.upstream
        if base != self._targets_base:
            self._targets, self._targets_base = {}, base
        found = self._targets.get(path_qs)
        if found is None:
            found = target(base + path_qs[3:])
            if len(self._targets) < MAX_CACHED_TARGETS:
                self._targets[path_qs] = found
        return found

    # -- entry point --------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer the request; browsers get CORS headers when their page may use the pool."""
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS":
            return self._preflight(request, origin)
        response = await self._serve(request, origin)
        if origin is not None and not response.prepared and self._origin_allowed(origin, request):
            response.headers.update(CORS)
        return response

    async def _serve(self, request: web.BaseRequest, origin: str | None) -> web.StreamResponse:
        """Admit the request, forward it, and log it exactly once, whatever happens."""
        call = _Call(request.path[4:], time.monotonic())  # the path after "/v1/"
        try:
            endpoint = ENDPOINTS.get(call.path, OTHER)
            try:
                self._admit(request, call, endpoint, origin)
                body = self._body_if_here(request)
                if body is None:
                    body = await self._read_body(request)
                self._inspect(request, call, endpoint, body)
                if call.caller == "free":
                    body = self._free_models_only(request, call, endpoint, body)
            except RequestRejected as exc:
                self._log(call, exc.status, None, error=exc.message)
                return openai_error(exc.status, exc.message, exc.type, exc.code)
            if request.method == "GET" and call.path.startswith("models/") and len(call.path) > len("models/"):
                return await self._model(call)
            return await self._forward(request, call, endpoint, body, self._tiers(call))
        except asyncio.CancelledError:  # the client went away
            if not call.logged:
                self._log(call, 499, call.key, error="client disconnected")
            raise
        except Exception:
            log.exception("unexpected error while proxying /v1/%s", call.path)
            if not call.logged:
                self._log(call, 500, call.key, error="internal proxy error")
            return openai_error(500, "Internal proxy error (代理内部错误)", "server_error", "internal_error")

    def _admit(self, request: web.BaseRequest, call: _Call, endpoint: Endpoint, origin: str | None) -> None:
        """Host, origin, path, token and content type: refused here, a request costs no key."""
        headers = request.headers
        if not self.hosts(headers.get("Host")):
            raise RequestRejected(403, UNKNOWN_HOST, "unknown_host")
        if origin is not None and not self._origin_allowed(origin, request):
            raise RequestRejected(403, FOREIGN_PAGE, "origin_not_allowed", "permission_error")
        caller = self._caller(headers.get("Authorization"))
        if caller is None:
            raise RequestRejected(401, "Invalid API token: send the proxy's api_token as Bearer", "invalid_api_key")
        call.caller = caller
        raw_path = request.rel_url.raw_path
        if ("." in raw_path or "%" in raw_path) and _has_dot_segment(raw_path):
            raise RequestRejected(400, "A path with . or .. segments is not forwarded", "invalid_path")
        if call.path[:1] in ("u", "U") and call.path.partition("/")[0].lower() == "user":
            raise RequestRejected(404, ACCOUNT_INFO, "not_found")
        if endpoint.json_body and request.method == "POST" and not _is_json(request):
            raise RequestRejected(415, "Content-Type must be application/json", "unsupported_media_type")

    def _free_models_only(self, request: web.BaseRequest, call: _Call, endpoint: Endpoint, body: bytes) -> bytes:
        """The free token can never spend money, by rule: it is served on the model endpoints for
        models in free_models only (and the model list, which costs nothing); anything else is
        refused before a key is touched. Elsewhere (a batch, say) `model` does not decide the cost.

        The body goes on as parsed, so the upstream reads the model checked: one `model` (parsers
        differ on which of two counts), and no `MODEL`, which Go's decoder takes for `model`."""
        if (
            call.model is None
            and request.method == "GET"
            and (call.path == "models" or call.path.startswith("models/"))
        ):
            return body
        free = call.model in self.settings.free_model_set
        if endpoint.json_body and free:
            payload = orjson.loads(body)
            if any(name != "model" and name.casefold() == "model" for name in payload):
                raise RequestRejected(
                    400, "The body names its model twice (model, MODEL) (请求体重复给出 model)", "model_twice"
                )
            return orjson.dumps(payload)
        shown = f"/v1/{call.path[:100]}" if free or call.model is None else call.model
        raise RequestRejected(
            403,
            f"The free token is for free models on the model endpoints only, and {shown} is not one of them "
            f"(免费令牌只能通过模型接口使用免费模型，{shown} 不在其列)",
            "free_models_only",
            "permission_error",
        )

    def _tiers(self, call: _Call) -> tuple[int, ...]:
        """Free-token callers use zero-balance keys first, then what `free_token_keys` allows; free models
        try zero-balance keys first."""
        if call.caller == "free":
            return FREE_TOKEN_TIERS[self.settings.free_token_keys]
        if call.model is not None and call.model in self.settings.free_model_set:
            return FREE_FIRST
        return ONLY_PAID

    def _caller(self, authorization: str | None) -> str | None:
        """ "main", "free" or "none" (no api_token set); None when the token is wrong.

        Tokens are printable ASCII (settings.Token), so a token with anything else is simply wrong."""
        settings = self.settings
        token = ""
        if authorization and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
            if not token.isascii():
                token = ""
        if settings.free_token and hmac.compare_digest(token, settings.free_token):
            return "free"
        if not settings.api_token:
            return "none"
        return "main" if hmac.compare_digest(token, settings.api_token) else None

    def _body_if_here(self, request: web.BaseRequest) -> bytes | None:
        """The whole body if it has all arrived (the usual case: no waiting, no timer), else None."""
        limit = self.settings.max_body_mb * MB
        length = request.content_length
        if length is not None and length > limit:
            raise self._too_large()
        content = request.content
        if not content.is_eof():
            return None
        body = content.read_nowait()
        if len(body) > limit:
            raise self._too_large()
        return body

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        """The rest of the body, within `max_body_mb` and without a silence longer than `read_timeout`."""
        content = request.content
        await _continue(request)
        chunks: list[bytes] = []
        size, silence, limit = 0, self.settings.read_timeout, self.settings.max_body_mb * MB
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(silence) as deadline:
                while chunk := await content.readany():
                    size += len(chunk)
                    if size > limit:
                        raise self._too_large()
                    chunks.append(chunk)
                    deadline.reschedule(loop.time() + silence)
        except TimeoutError:
            raise RequestRejected(408, "The request body stopped arriving (read_timeout)", "request_timeout") from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self) -> RequestRejected:
        return RequestRejected(413, f"Request body over {self.settings.max_body_mb} MB", "body_too_large")

    @staticmethod
    def _inspect(request: web.BaseRequest, call: _Call, endpoint: Endpoint, body: bytes) -> None:
        """The model and stream flag; on a JSON endpoint anything but a JSON object is refused."""
        strict = endpoint.json_body
        if body and not strict and (delimiter := boundary(request.headers.get("Content-Type"))) is not None:
            field = form_field(body, delimiter, "model", 4 * MAX_MODEL)  # UTF-8: at most 4 bytes a character
            if field:
                _take_model(call, field.decode("utf-8", "replace"))
            return
        if not body or not (strict or media_type(request.headers.get("Content-Type")) == "application/json"):
            if strict and request.method == "POST":
                raise RequestRejected(400, "The request body must be a JSON object", "invalid_json")
            return
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            if strict:
                raise RequestRejected(400, "The request body must be a JSON object", "invalid_json")
            return
        model = payload.get("model")
        if isinstance(model, str) and model:
            _take_model(call, model)
        elif strict:
            raise RequestRejected(400, "The request needs a model (a model id string)", "model_required")
        call.stream = payload.get("stream") is True

    def _origin_allowed(self, origin: str, request: web.BaseRequest) -> bool:
        """Any page once an api_token guards the pool; without one, pages of this machine and the
        proxy's own only: any site the user visits could otherwise spend the keys."""
        if self.settings.api_token:
            return True
        allowed = self._origins.get(origin)
        if allowed is None:
            allowed = LOOPBACK_ORIGIN.fullmatch(origin) is not None
            if len(self._origins) < MAX_CACHED_ORIGINS:
                self._origins[origin] = allowed
        return allowed or origin.partition("://")[2] == request.host

    def _preflight(self, request: web.BaseRequest, origin: str | None) -> web.Response:
        """A browser asks before sending: yes for pages that may use the pool, no CORS headers otherwise."""
        if not self.hosts(request.headers.get("Host")):
            return openai_error(403, UNKNOWN_HOST, "invalid_request_error", "unknown_host")
        if origin is not None and not self._origin_allowed(origin, request):
            return openai_error(403, FOREIGN_PAGE, "permission_error", "origin_not_allowed")
        headers = dict(CORS)
        asked = request.headers.get("Access-Control-Request-Headers", "")
        headers["Access-Control-Allow-Headers"] = asked if _HEADER_LIST.fullmatch(asked) else "*, Authorization"
        if "Access-Control-Request-Private-Network" in request.headers:  # a page on the internet calling this machine
            headers["Access-Control-Allow-Private-Network"] = "true"
        return web.Response(status=204, headers=headers)

    async def _model(self, call: _Call) -> web.Response:
        """`GET /v1/models/{id}` (the SDKs' `models.retrieve`), from the cached list: ids hold slashes,
        which clients may send as %2F."""
        model_id = call.path[len("models/") :].replace("%2F", "/").replace("%2f", "/")
        try:
            models, _ = await self.catalog.models()
        except CatalogUnavailable as exc:
            message = f"The model list is unavailable: {exc} (模型列表暂不可用)"
            self._log(call, exc.status, None, error=message)
            return openai_error(exc.status, message, "server_error", "models_unavailable")
        if not any(m["id"] == model_id for m in models):
            shown = clean(model_id, 100)
            message = f"The model {shown} does not exist (模型 {shown} 不存在)"
            self._log(call, 404, None, error=message)
            return openai_error(404, message, "invalid_request_error", "model_not_found")
        self._log(call, 200, None)
        body = orjson.dumps({"id": model_id, "object": "model", "created": 0, "owned_by": ""})
        return web.Response(body=body, content_type="application/json", headers=CONTAINED)

    # -- forwarding with failover -------------------------------------------------------------

    async def _forward(
        self, request: web.BaseRequest, call: _Call, endpoint: Endpoint, body: bytes, tiers: tuple[int, ...]
    ) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP_FROM_CLIENT}
        where = self._target(request.rel_url.raw_path_qs)
        settings, pool = self.settings, self.pool
        model = call.model or ""
        failures: list[str] = []
        cooled = False
        deadline: float | None = None
        outcome_of_last: str | None = None  # the last attempt's, for the metrics
        while len(call.tried) < settings.max_attempts and tiers:  # no tier left: nothing to wait for
            waits = settings.wait_for_key_seconds > 0
            # While others wait for this model, a newcomer queues behind them: first come, first served.
            key = None if waits and self._turns.queued((model, tiers)) else pool.acquire(tiers, model, call.tried)
            if key is None and waits:
                loop = asyncio.get_running_loop()
                deadline = deadline or loop.time() + settings.wait_for_key_seconds
                key = await self._wait_for_key(tiers, model, deadline)
            if key is None:
                break
            if outcome_of_last is not None:
                self.metrics.failover(outcome_of_last)
            call.tried += (key.id,)
            call.key = key
            # Its tier as picked: `key.tier` is None while the key is at its cap, and a 30001 on its
            # account (or a refresh) may move it before its own answer comes.
            picked_zero = key.balance is not None and key.balance <= 0
            headers["Authorization"] = key.auth
            try:
                upstream = await self.client.request(
                    request.method,
                    where,
                    headers,
                    body,
                    connect_timeout=settings.connect_timeout,
                    read_timeout=settings.read_timeout,
                )
            except BaseException as exc:
                pool.release(key)
                if isinstance(exc, PoolExhausted):  # the proxy's own limit: no key is to blame, none would help
                    return self._pool_exhausted(call)
                if not isinstance(exc, UPSTREAM_FAILURES):
                    raise
                self.metrics.attempt(outcome_of_last := _failure(exc))
                cooled |= self._upstream_failed(key, exc, failures)
                continue
            outcome_of_last = "client_left"  # unless the attempt ends otherwise
            try:
                if upstream.status < 400:
                    outcome_of_last = "ok"
                    return await self._relay(request, upstream, key, call, endpoint)
                answer = await upstream.read(settings.max_answer_mb * MB)
                outcome = classify(upstream.status, answer)
                outcome_of_last = outcome.value
                zero_balance_refused = outcome is Outcome.NO_BALANCE and picked_zero
                if outcome is Outcome.CLIENT or (zero_balance_refused and call.model not in settings.free_model_set):
                    # The request is wrong (or asks a zero-balance key for a paid model): no key would help.
                    self._log(call, upstream.status, key, error=describe(upstream.status, answer))
                    return self._relay_error(request, upstream, answer)
                failures.append(describe(upstream.status, answer))
                cooled |= self._penalise(key, call, outcome, upstream, answer, failures[-1], picked_zero)
                if zero_balance_refused:
                    # Zero-balance keys refuse even free models now: spend the other attempts on keys with balance.
                    tiers = tuple(t for t in tiers if t != FREE)
            except AnswerTooLarge:  # whatever the upstream is doing, no key would fare better
                outcome_of_last = "too_large"
                mb = settings.max_answer_mb
                message = f"The upstream's answer is over max_answer_mb ({mb} MB) (上游应答超过 {mb} MB)"
                self._log(call, 502, key, error=message)
                return openai_error(502, message, "upstream_error", "answer_too_large")
            except UPSTREAM_FAILURES as exc:  # the answer broke before a byte reached the client
                outcome_of_last = _failure(exc)
                cooled |= self._upstream_failed(key, exc, failures)
            except BadAnswer as exc:  # the upstream's fault, not the key's: another key may fare better
                outcome_of_last = "bad_answer"
                failures.append(str(exc))
                pool.note_error(key, failures[-1])
            finally:
                upstream.release()
                pool.release(key)
                self.metrics.attempt(outcome_of_last)
        call.key = None
        return self._no_key(call, tiers, failures, cooled)

    def _upstream_failed(self, key: Key, exc: BaseException, failures: list[str]) -> bool:
        """The network to the upstream failed: the key rests (True). Bytes that are not HTTP are
        the upstream's doing, not the key's: noted, and the next attempt may take the key again."""
        failures.append(describe_exception(exc))
        if isinstance(exc, ProtocolError):
            self.pool.note_error(key, failures[-1])
            return False
        self.pool.cool(key, self.settings.cooldown_seconds, failures[-1])
        return True

    def _pool_exhausted(self, call: _Call) -> web.Response:
        """503: every connection to the upstream the limit allows stayed busy for connect_timeout."""
        call.key = None
        limit, wait = self.settings.max_upstream_connections, self.settings.connect_timeout
        message = (
            f"All {limit} connections to the upstream (max_upstream_connections) stayed busy for {wait:g}s "
            f"(connect_timeout); retry shortly (到上游的 {limit} 个连接在 {wait:g} 秒内一直全部占用，请稍后重试)"
        )
        self._log(call, 503, None, error=message)
        return openai_error(503, message, "service_unavailable", "upstream_connections_busy", {"Retry-After": "1"})

    def _penalise(
        self, key: Key, call: _Call, outcome: Outcome, upstream: Answer, answer: bytes, error: str, picked_zero: bool
    ) -> bool:
        """Apply an upstream error to the key (or the account) that earned it; True when it now rests."""
        pool, model = self.pool, call.model or ""
        if outcome is Outcome.INVALID:
            pool.mark_invalid(key, error)
        elif outcome is Outcome.NO_BALANCE and not picked_zero:
            pool.account_out_of_balance(key, error)
        elif outcome is Outcome.RETRY:
            pool.note_error(key, error)
        elif outcome is Outcome.RATE_LIMITED:  # the account's budget for this model: its other keys wait too
            kind = limit_kind(answer) or RATE_LIMITED
            call.limited.append(self._rest(key, model, kind, upstream, error, whole_account=True))
            return True
        elif outcome is Outcome.BUSY:  # this key's trouble with this model, not its account's
            kind = BUSY if upstream.status == 503 else GATEWAY_TIMEOUT
            self._rest(key, model, kind, upstream, error, whole_account=False)
            return True
        else:  # a zero-balance key refused even a free model: it can serve nothing now
            pool.cool(key, self.settings.cooldown_seconds, error)
            return True
        return False

    def _rest(self, key: Key, model: str, kind: str, upstream: Answer, error: str, *, whole_account: bool) -> Rest:
        """Rest the pair for as long as `kind` says, or as the upstream's Retry-After asks."""
        settings, pool = self.settings, self.pool
        now = pool.clock()
        asked = retry_after(_header(upstream, "retry-after"), now)
        if asked is not None:  # at least a second: "0" or a date past would send the next request straight back
            until = now + max(asked, 1.0)
        else:
            until = rest_until(
                kind,
                now,
                day_zone=settings.day_zone,
                cooldown=settings.cooldown_seconds,
                jitter=random.random() * JITTER,
            )
        rest = pool.rest(key, model, kind, until, whole_account=whole_account)
        pool.note_error(key, f"{error} [{kind}]" if kind in KINDS else error)
        return rest

    async def _wait_for_key(self, tiers: tuple[int, ...], model: str, deadline: float) -> Key | None:
        """A key for `model` once one comes back before `deadline` (loop time), else None.

        Waiters for one model take turns in arrival order; a client that leaves stops waiting."""
        pool, loop = self.pool, asyncio.get_running_loop()
        key: Key | None = None
        try:
            async with asyncio.timeout_at(deadline), self._turns.take((model, tiers)):  # the turn is in the budget too
                while (key := pool.acquire(tiers, model)) is None:
                    chance = pool.next_chance(tiers, model)
                    if chance is None or chance > deadline - loop.time():
                        break
                    await pool.wait_for_change(chance + WAKE_MARGIN)
        except TimeoutError:
            pass  # the budget ran out: with the key if it came just as the turn ended, else without one
        except BaseException:  # the client left: a key taken as it did goes back
            if key is not None:
                pool.release(key)
            raise
        return key

    def _no_key(self, call: _Call, tiers: tuple[int, ...], failures: list[str], cooled: bool) -> web.Response:
        why = self.pool.unavailable(tiers, call.model or "")
        retry_after = why.retry_after
        if why.rest is not None:  # every key that could serve rests for this model
            message = self._resting(call.model or "", why.rest)
            call.limited.append(why.rest)
            self._log(call, 429, None, error=message)
            wait = {"Retry-After": str(max(1, retry_after or 1))}
            return openai_error(429, message, "rate_limit_error", "rate_limit_exceeded", wait)
        if failures and len(call.limited) == len(failures):  # every attempt met a rate limit
            return self._limited(call)
        if failures:
            message = f"All {len(call.tried)} keys tried failed; last error: {failures[-1]} (所有尝试的 Key 均失败)"
            retry_after = round(self.settings.cooldown_seconds) if cooled else None
        else:
            message = why.message
        self._log(call, 503, None, error=message)
        headers = {"Retry-After": str(max(1, retry_after))} if retry_after is not None else None
        return openai_error(503, message, "service_unavailable", "no_key_available", headers)

    def _limited(self, call: _Call) -> web.Response:
        """429: each key tried met a rate limit for this model (others may still be free for the next request)."""
        shown, kinds = call.model or "this endpoint", ", ".join(dict.fromkeys(r.kind for r in call.limited))
        wait = max(1, math.ceil(min(r.until for r in call.limited) - self.pool.clock()))
        message = (
            f"All {len(call.tried)} keys tried are rate limited for {shown} ({kinds}); retry in {wait}s "
            f"(尝试的 {len(call.tried)} 个 Key 对 {shown} 均已限流（{kinds}），请 {wait} 秒后重试)"
        )
        self._log(call, 429, None, error=message)
        return openai_error(429, message, "rate_limit_error", "rate_limit_exceeded", {"Retry-After": str(wait)})

    def _resting(self, model: str, rest: Rest) -> str:
        """Why every key rests for `model`, in both languages: the limit and when the first comes back."""
        shown = model or "this endpoint"
        when = clock_time(rest.until, self.settings.day_zone)
        reason = REASONS.get(rest.kind, REASONS[RATE_LIMITED])
        if rest.kind in KINDS:
            return (
                f"The {reason.en} limit ({rest.kind}) of {shown} is reached on every key; the first comes back "
                f"at {when} ({shown} 的{reason.zh}限额（{rest.kind}）在所有 Key 上均已用完，最早于 {when} 恢复)"
            )
        return (
            f"Every key rests for {shown} after {reason.en}; the first comes back at {when} "
            f"(所有 Key 因{reason.zh}暂停服务 {shown}，最早于 {when} 恢复)"
        )

    # -- relaying a successful answer ---------------------------------------------------------

    @staticmethod
    def _reply_headers(upstream: Answer, request: web.BaseRequest) -> dict[str, str]:
        """The upstream's headers minus hop-by-hop ones, with no key echoed back whole, contained
        so no browser runs them as a page; CORS only for browsers (they send Origin, admitted by now)."""
        headers = {
            k: scrub(v) if "sk-" in v or "earer" in v or "EARER" in v else v
            for k, v in upstream.headers
            if k.lower() not in DROP_FROM_UPSTREAM
        }
        headers.update(CONTAINED)
        if "Origin" in request.headers:
            headers.update(CORS)
        return headers

    def _relay_error(self, request: web.BaseRequest, upstream: Answer, answer: bytes) -> web.Response:
        """The upstream's error for the client, no key in it, in OpenAI's shape (an encoded body as it came)."""
        headers = self._reply_headers(upstream, request)
        shaped = None if _header(upstream, "content-encoding") else openai_error_body(upstream.status, answer)
        if shaped is None:
            return web.Response(status=upstream.status, body=scrub_bytes(answer), headers=headers)
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        headers["Content-Type"] = "application/json"
        return web.Response(status=upstream.status, body=shaped, headers=headers)

    async def _relay(
        self, request: web.BaseRequest, upstream: Answer, key: Key, call: _Call, endpoint: Endpoint
    ) -> web.StreamResponse:
        if key.state == UNCHECKED:  # it just served a request, so it is a valid key
            self.pool.set_balance(key, key.balance)
        content_type = media_type(upstream.content_type)
        if content_type == "application/json":
            answer = await upstream.read(self.settings.max_answer_mb * MB)
            self._log(call, upstream.status, key, time.monotonic(), endpoint.usage(answer))
            if endpoint.reshape is not None and upstream.status < 300 and not _header(upstream, "content-encoding"):
                answer = endpoint.reshape(answer)
            return web.Response(status=upstream.status, body=answer, headers=self._reply_headers(upstream, request))
        if endpoint.json_body and content_type != "text/event-stream":
            shown = clean(content_type, 100)
            raise BadAnswer(f"upstream answered HTTP {upstream.status} with {shown} instead of JSON")
        return await self._relay_stream(request, upstream, key, call, content_type == "text/event-stream")

    async def _relay_stream(
        self, request: web.BaseRequest, upstream: Answer, key: Key, call: _Call, is_sse: bool
    ) -> web.StreamResponse:
        """Relay the body as it arrives (relay.py); SSE streams also yield their usage.

        The first piece goes out with the head; an answer that has all arrived by then goes
        out whole, in one write. The rest goes from the upstream's callback to the client."""
        sse = StreamUsage() if is_sse else None
        trim = FinalUsageOnly() if is_sse and self.settings.stream_usage == "final_only" else None
        chunk = await upstream.readany()  # a failure here may still move on to another key
        response = web.StreamResponse(status=upstream.status, headers=self._reply_headers(upstream, request))
        if request.version < (1, 1):  # unframed, the body ends with the connection: aiohttp would keep it open
            response.force_close()
        if sse is not None:
            response.headers.update(SSE_HEADERS)
            if "charset" not in (upstream.content_type or "").lower():  # `requests` would read it as ISO-8859-1
                response.headers["Content-Type"] = SSE_UTF8
            call.stream = True  # what the client asked for aside (audio comes in chunks too)
        relay = StreamRelay(request, upstream, sse, trim, self.settings.max_answer_mb * MB)
        status, error, read_timeout = upstream.status, None, self.settings.read_timeout
        # From here on the answer is the client's: whatever breaks, no other key is tried.
        try:
            await response.prepare(request)
            out = relay.process(chunk) if chunk else b""
            if out:
                relay.first_byte = time.monotonic()
            if not upstream.at_eof():
                await relay.run(out, read_timeout)
                out = b""
            await relay.finish(response, out if trim is None else out + trim.feed(b"", last=True), read_timeout)
        except asyncio.CancelledError:
            status, error = 499, "client disconnected"
            raise
        except ConnectionResetError:  # a write to a client that left
            status, error = 499, "client disconnected"
        except ClientStalled as exc:  # its socket stays full: the key and the upstream are let go
            status, error = 408, str(exc)
            if request.transport is not None:
                request.transport.abort()
        except UPSTREAM_FAILURES as exc:
            if isinstance(exc, AnswerTooLarge):  # the upstream's doing: nothing to note on the key
                error = str(exc)
            else:
                error = describe_exception(exc)
                self.pool.note_error(key, error)
            if sse is not None:
                await self._end_stream_with_error(request, relay, response, sse, error, read_timeout)
            elif request.transport is not None:  # a cut binary body can only be signalled by closing
                request.transport.close()
        finally:
            usage = sse.result() if sse is not None else NO_USAGE
            self._log(call, status, key, relay.first_byte, usage, error)
        return response

    @staticmethod
    async def _end_stream_with_error(
        request: web.BaseRequest,
        relay: StreamRelay,
        response: web.StreamResponse,
        sse: StreamUsage,
        error: str,
        read_timeout: float,
    ) -> None:
        """Close the SSE stream so clients see an error, not a hang or a silent cut."""
        event = orjson.dumps(
            {
                "error": {
                    "message": f"Upstream stream interrupted: {error}",
                    "type": "upstream_error",
                    "code": "stream_interrupted",
                }
            }
        )
        lead = b"" if sse.at_event_boundary() else b"\n\n"
        try:
            await relay.finish(response, lead + b"data: " + event + b"\n\ndata: [DONE]\n\n", read_timeout)
        except ConnectionResetError:
            pass
        except ClientStalled:  # it stopped reading too: the event cannot reach it
            if request.transport is not None:
                request.transport.abort()

    # -- the call log -------------------------------------------------------------------------

    def _log(
        self,
        call: _Call,
        status: int,
        key: Key | None,
        first_byte: float | None = None,
        usage: Usage = NO_USAGE,
        error: str | None = None,
    ) -> None:
        """Queue the call-log row; the writer thread stores it."""
        call.logged = True
        started = call.started
        record = CallRecord(
            time.time(),
            clean(call.path, MAX_LOGGED),
            clean(call.model, MAX_LOGGED) if call.model is not None else None,
            key.id if key is not None else None,
            status,
            len(call.tried),
            round((time.monotonic() - started) * 1000),
            round((first_byte - started) * 1000) if first_byte is not None else None,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens,
            usage.images,
            call.stream,
            call.caller,
            clean(error, MAX_ERROR) if error is not None else None,
            ",".join(dict.fromkeys(r.kind for r in call.limited)) if call.limited else None,
        )
        self.store.log_call(record)
        self.metrics.observe(record)
