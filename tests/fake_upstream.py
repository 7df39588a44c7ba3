"""A fake SiliconFlow (硅基流动) HTTP API for the proxy's tests.

It follows /work/shared/reference/upstream-api.md: flat error envelopes, balances as strings,
streams where every SSE chunk carries cumulative usage, rerank usage at top level or under `meta`.
Everything is in memory and deterministic, so tests can predict bodies, usage and key ids.
Serve `FakeUpstream().app` with pytest-aiohttp's `aiohttp_server` or a `web.AppRunner`.

Rate limits work as SiliconFlow's do: per (account, model), in seven kinds (RPM, RPH, RPD, TPM,
TPD, IPM, IPD), counted in calendar windows of Asia/Shanghai (UTC+8) read from `clock`, so a test
moves time by swapping the clock. `limit()` sets a model's budgets; only served requests count.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import orjson
from aiohttp import web

__all__ = [
    "BEHAVIORS",
    "FREE_MODELS",
    "LIMIT_KINDS",
    "MSG_RATE_LIMITED_LEGACY",
    "MSG_UNVERIFIED_RPD",
    "UNVERIFIED_RPD",
    "UNVERIFIED_RPD_MODELS",
    "FakeUpstream",
    "Seen",
    "limit_message",
    "make_key",
]

CHAT = ("text", "chat")
EMBEDDING = ("text", "embedding")
RERANKER = ("text", "reranker")
TEXT_TO_IMAGE = ("image", "text-to-image")

# The fact sheet's free list, grouped by kind; each also gets a paid "Pro/" twin.
_FREE_BY_KIND: dict[tuple[str, str], tuple[str, ...]] = {
    CHAT: (
        "Qwen/Qwen2.5-7B-Instruct",
        "Qwen/Qwen2.5-Coder-7B-Instruct",
        "Qwen/Qwen3-8B",
        "THUDM/glm-4-9b-chat",
        "THUDM/GLM-4-9B-0414",
        "internlm/internlm2_5-7b-chat",
    ),
    EMBEDDING: (
        "BAAI/bge-m3",
        "BAAI/bge-large-zh-v1.5",
        "netease-youdao/bce-embedding-base_v1",
    ),
    RERANKER: ("BAAI/bge-reranker-v2-m3", "netease-youdao/bce-reranker-base_v1"),
    TEXT_TO_IMAGE: ("Kwai-Kolors/Kolors",),
}
# Paid models that have no free twin, so tests have an obviously paid model of each kind.
_PAID_EXTRA: dict[str, tuple[str, str]] = {
    "deepseek-ai/DeepSeek-V3": CHAT,
    "deepseek-ai/DeepSeek-R1": CHAT,
    "Qwen/Qwen3-Embedding-8B": EMBEDDING,
    "Qwen/Qwen3-Reranker-8B": RERANKER,
    "black-forest-labs/FLUX.1-dev": TEXT_TO_IMAGE,
    "FunAudioLLM/CosyVoice2-0.5B": ("audio", "text-to-speech"),
}

FREE_MODELS: frozenset[str] = frozenset(m for ms in _FREE_BY_KIND.values() for m in ms)

BEHAVIORS: frozenset[str] = frozenset(
    {
        "ok",
        "invalid",
        "no_balance",
        "rate_limited",
        "overloaded",
        "gateway_timeout",
        "server_error",
        "reset",
        "stall",
        "model_disabled",
        "bad_request",
    }
)
# Behaviours that /user/info honours too (besides "invalid"): transport and capacity trouble.
_USER_INFO_BEHAVIORS = frozenset({"rate_limited", "overloaded", "gateway_timeout", "server_error", "reset", "stall"})

MSG_INVALID = "Token is invalid."
MSG_NO_BALANCE = "Sorry, your account balance is insufficient"
MSG_DISABLED = "Model disabled."
MSG_UNKNOWN_MODEL = "Model does not exist. Please check it carefully."
MSG_BAD_PARAM = "The parameter is invalid. Please check again."
MSG_RATE_LIMITED = "Request was rejected due to rate limiting. Details: TPM limit reached."
# The older refusal, which names no kind.
MSG_RATE_LIMITED_LEGACY = (
    "Request was rejected due to rate limiting. If you want more, please contact contact@siliconflow.cn"
)
MSG_UNVERIFIED_RPD = (
    "Request was rejected due to rate limiting. Details: RPD limit reached. "
    "Could only send 100 requests per day without real name verification."
)
MSG_BUSY = "System is too busy now. Please try again later."
_GATEWAY_TIMEOUT_HTML = (
    "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
    "<center><h1>504 Gateway Time-out</h1></center>\r\n</body>\r\n</html>\r\n"
)
SPEECH_BYTES: bytes = bytes(range(256)) * 64  # 16 KiB, not JSON, for passthrough tests


# The seven limit kinds, in the order a refusal is decided: what each counts, and its window.
LIMIT_KINDS: tuple[str, ...] = ("RPM", "RPH", "RPD", "TPM", "TPD", "IPM", "IPD")
_COUNTS = {"R": "requests", "T": "tokens", "I": "images"}
_WINDOW_SECONDS = {"M": 60, "H": 3600, "D": 86400}
_SHANGHAI_OFFSET = 8 * 3600  # Asia/Shanghai is UTC+8 all year (no daylight saving since 1991)
# Accounts without real-name verification may send this many requests a day to these models.
UNVERIFIED_RPD_MODELS: frozenset[str] = frozenset({"deepseek-ai/DeepSeek-R1", "deepseek-ai/DeepSeek-V3"})
UNVERIFIED_RPD = 100


def limit_message(kind: str) -> str:
    """The message of a 429 for `kind`, as SiliconFlow words it."""
    return f"Request was rejected due to rate limiting. Details: {kind} limit reached."


def _window(kind: str, now: float) -> int:
    """Which calendar minute, hour or day (Asia/Shanghai) `now` falls in, for `kind`."""
    return int((now + _SHANGHAI_OFFSET) // _WINDOW_SECONDS[kind[-1]])


def make_key(seed: int | str) -> str:
    """Derive a realistic key (`sk-` + 48 lowercase letters) so no literal key sits in the code."""
    digest = hashlib.sha512(f"fake-upstream-key:{seed}".encode()).digest()
    return "sk-" + "".join(chr(ord("a") + b % 26) for b in digest[:48])


def _account_id_for(key: str) -> str:
    """Give each key its own stable account id unless the test groups keys explicitly."""
    return hashlib.sha256(f"fake-account:{key}".encode()).hexdigest()[:20]


def _tokens(text: str) -> int:
    """Count tokens deterministically (about four characters each), never zero."""
    return max(1, (len(text) + 3) // 4)


def _unit_float(*parts: str) -> float:
    """Map strings to a stable float in [0, 1) for embeddings and scores."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


def _balance_is_zero(balance: str) -> bool:
    """Apply the zero-balance rule; an unparsable balance counts as zero."""
    try:
        return Decimal(balance) <= 0
    except InvalidOperation:
        return True


def _message_text(message: Any) -> str:
    """Flatten a chat message's content (string or list of parts) for token counting."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


class _Headers(dict[str, str]):
    """A plain dict with lowercased keys and case-insensitive lookups, so tests need not guess case."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass
class Seen:
    """One request as the fake received it, so tests can assert what the proxy forwarded."""

    method: str
    path: str
    key: str | None
    body: bytes
    headers: dict[str, str]

    @property
    def json(self) -> Any | None:
        """The parsed body, or None when it is empty or not JSON."""
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None


@dataclass
class _KeyState:
    """What the fake knows about one key."""

    balance: str
    account_id: str
    behavior: str = "ok"


@dataclass
class _Usage:
    """Token counts for one generation; stream chunks report a running prefix of it."""

    prompt: int
    reasoning: int
    content: int

    def as_dict(self, completion: int | None = None) -> dict[str, Any]:
        """Render OpenAI-style usage, cumulative up to `completion` tokens when given."""
        done = self.reasoning + self.content if completion is None else completion
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt,
            "completion_tokens": done,
            "total_tokens": self.prompt + done,
        }
        if self.reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": min(done, self.reasoning)}
        return usage


class _Reply(Exception):
    """Short-circuit a handler with a finished response (caught by the middleware)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _json(status: int, payload: Any) -> web.Response:
    """Answer compact JSON, as SiliconFlow does."""
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def _error(status: int, code: int, message: str) -> _Reply:
    """Build SiliconFlow's flat error envelope."""
    return _Reply(_json(status, {"code": code, "message": message, "data": None}))


def _bad_param(message: str = MSG_BAD_PARAM) -> _Reply:
    """400/20015: the request is wrong, whatever key is used."""
    return _error(400, 20015, message)


@dataclass(eq=False)
class FakeUpstream:
    """State plus an aiohttp app imitating SiliconFlow under /v1; tests flip the knobs directly."""

    free_models: set[str] = field(default_factory=lambda: set(FREE_MODELS))
    models: dict[str, tuple[str, str]] = field(default_factory=dict)
    zero_balance_free_ok: bool = True
    no_balance_status: int = 403
    stream_chunks: int = 5
    reasoning_chunks: int = 0
    chunk_delay: float = 0.0
    split_events: bool = False
    stall_seconds: float = 30.0
    user_info_status: int = 200
    user_info_delay: float = 0.0
    user_info_message: str = "OK"
    rerank_usage_in_meta: bool = False
    images_data_list: bool = False
    legacy_invalid_body: bool = False
    plain_text_rate_limit: bool = False
    requests: list[Seen] = field(default_factory=list)
    chunk_sent_at: list[float] = field(default_factory=list)
    cut_after_chunks: int | None = None  # abort the connection mid-stream after this many chunks
    stall_after_chunks: int | None = None  # go silent for stall_seconds mid-stream after this many chunks
    broken_answer: str | None = None  # non-stream chat: "truncated" (cut mid-body) or "not_json" (HTML, 200)
    compress: bool = False  # gzip answers (streams too) for clients that accept it, as a CDN in front may
    clock: Callable[[], float] = time.time  # Unix time the rate-limit windows are read from
    limits: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> kind -> budget, see limit()
    unverified_accounts: set[str] = field(default_factory=set)  # no real-name verification: RPD 100 on R1/V3
    retry_after: str | None = None  # sent as Retry-After on every 429 when set
    rate_limited_message: str = MSG_RATE_LIMITED  # what the per-key "rate_limited" behaviour answers
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (account, model, kind) per budget 429
    sse_content_type: str = "text/event-stream; charset=utf-8"  # SiliconFlow's own names no charset

    def __post_init__(self) -> None:
        if not self.models:
            for kind, names in _FREE_BY_KIND.items():
                for name in names:
                    self.models[name] = kind
                    self.models[f"Pro/{name}"] = kind
            self.models.update(_PAID_EXTRA)
        self._keys: dict[str, _KeyState] = {}
        # (account, model, kind) -> (window, amount spent in it)
        self._spent: dict[tuple[str, str, str], tuple[int, int]] = {}
        self._closing = asyncio.Event()
        self.app = self._build_app()

    # ----- test-facing helpers -------------------------------------------------------------

    def add_key(self, key: str, balance: str = "10.00", account_id: str | None = None) -> None:
        """Register (or update) a key; re-adding keeps its behaviour, so tests can change balance."""
        old = self._keys.get(key)
        self._keys[key] = _KeyState(
            balance=balance,
            account_id=account_id or _account_id_for(key),
            behavior=old.behavior if old else "ok",
        )

    def set_balance(self, key: str, balance: str) -> None:
        """Change a known key's balance string (e.g. to simulate it running dry)."""
        self._keys[key].balance = balance

    def set_behavior(self, key: str, behavior: str) -> None:
        """Make one key misbehave; unknown keys are registered first so the behaviour sticks."""
        if behavior not in BEHAVIORS:
            raise ValueError(f"unknown behavior {behavior!r}; expected one of {sorted(BEHAVIORS)}")
        if key not in self._keys:
            self.add_key(key)
        self._keys[key].behavior = behavior

    def seen(self, path: str | None = None) -> list[Seen]:
        """Requests received so far, optionally only those for one path."""
        return [r for r in self.requests if path is None or r.path == path]

    # ----- rate limits ---------------------------------------------------------------------

    def limit(
        self,
        model: str,
        *,
        rpm: int | None = None,
        rph: int | None = None,
        rpd: int | None = None,
        tpm: int | None = None,
        tpd: int | None = None,
        ipm: int | None = None,
        ipd: int | None = None,
    ) -> None:
        """Give every account these budgets for `model` (kinds not named keep theirs).

        Requests and images are refused when one more would go over the budget; tokens once the
        window's spend has reached it (the upstream cannot know a completion's length before it
        is generated, so the request that crosses the budget is still served)."""
        budgets = {"RPM": rpm, "RPH": rph, "RPD": rpd, "TPM": tpm, "TPD": tpd, "IPM": ipm, "IPD": ipd}
        self.limits.setdefault(model, {}).update({k: v for k, v in budgets.items() if v is not None})

    def account_of(self, key: str) -> str:
        """The account id a known key belongs to (what /user/info answers as `data.id`)."""
        return self._keys[key].account_id

    def spend(self, account: str, model: str, *, requests: int = 0, tokens: int = 0, images: int = 0) -> None:
        """Count use in the current windows, as if served earlier (say, a quota used up this morning)."""
        amounts = {"requests": requests, "tokens": tokens, "images": images}
        now = self.clock()
        for kind in LIMIT_KINDS:
            amount = amounts[_COUNTS[kind[0]]]
            if amount:
                window = _window(kind, now)
                held, spent = self._spent.get((account, model, kind), (window, 0))
                self._spent[(account, model, kind)] = (window, (spent if held == window else 0) + amount)

    def spent(self, account: str, model: str) -> dict[str, int]:
        """What `account` has spent on `model` in each kind's current window."""
        now = self.clock()
        return {kind: self._spent_now(account, model, kind, now) for kind in LIMIT_KINDS}

    def _spent_now(self, account: str, model: str, kind: str, now: float) -> int:
        window, spent = self._spent.get((account, model, kind), (None, 0))
        return spent if window == _window(kind, now) else 0

    def _budget(self, account: str, model: str, kind: str) -> int | None:
        budget = self.limits.get(model, {}).get(kind)
        if kind == "RPD" and model in UNVERIFIED_RPD_MODELS and account in self.unverified_accounts:
            budget = UNVERIFIED_RPD if budget is None else min(budget, UNVERIFIED_RPD)
        return budget

    def _serve(self, state: _KeyState, model: str, *, tokens: int = 0, images: int = 0) -> None:
        """Refuse the request with SiliconFlow's 429 if it goes over a budget, else count it as served."""
        account, now = state.account_id, self.clock()
        for kind in LIMIT_KINDS:
            budget = self._budget(account, model, kind)
            if budget is None:
                continue
            spent = self._spent_now(account, model, kind, now)
            counts = _COUNTS[kind[0]]
            over = spent >= budget if counts == "tokens" else spent + (images if counts == "images" else 1) > budget
            if over:
                self.refused.append((account, model, kind))
                unverified = kind == "RPD" and model in UNVERIFIED_RPD_MODELS and account in self.unverified_accounts
                raise self._rate_limited(MSG_UNVERIFIED_RPD if unverified else limit_message(kind))
        self.spend(account, model, requests=1, tokens=tokens, images=images)

    def _rate_limited(self, message: str) -> _Reply:
        """A 429 in SiliconFlow's shape (no code), with Retry-After when a test asks for one."""
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else None
        if self.plain_text_rate_limit:
            return _Reply(web.Response(status=429, text=message, headers=headers))
        body = orjson.dumps({"message": message, "data": None})
        return _Reply(web.Response(status=429, body=body, content_type="application/json", headers=headers))

    # ----- app wiring ----------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        """Wire the routes, the recording middleware and the shutdown hook."""

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            """Log every request before anything can reject it, then unwrap `_Reply`."""
            body = await request.read()
            self.requests.append(
                Seen(
                    method=request.method,
                    path=request.path,
                    key=self._bearer(request),
                    body=body,
                    headers=_Headers((k.lower(), v) for k, v in request.headers.items()),
                )
            )
            try:
                response = await handler(request)
            except _Reply as reply:
                response = reply.response
            if self.compress and not response.prepared:
                response.enable_compression()
            return response

        async def on_shutdown(_app: web.Application) -> None:
            """Wake stalled handlers so server teardown does not wait out `stall_seconds`."""
            self._closing.set()

        app = web.Application(middlewares=[record])
        app.on_shutdown.append(on_shutdown)
        app.router.add_get("/v1/user/info", self._user_info)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/rerank", self._rerank)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        """Extract the bearer token, None when the header is missing or malformed."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, but return True early if the server is shutting down."""
        if seconds <= 0:
            return self._closing.is_set()
        try:
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    def _invalid(self) -> _Reply:
        """401 for a bad key, in the current or the legacy (bare JSON string) shape."""
        if self.legacy_invalid_body:
            return _Reply(_json(401, "Invalid token"))
        return _error(401, 30014, MSG_INVALID)

    @staticmethod
    def _reset(request: web.Request) -> _Reply:
        """Drop the connection without answering, as a flaky network would."""
        if request.transport is not None:
            request.transport.abort()
        return _Reply(web.Response(status=500))  # never reaches the wire

    async def _gate(self, request: web.Request, scope: str) -> _KeyState:
        """Check the key and apply its behaviour; scope is "models", "user_info" or "full"."""
        token = self._bearer(request)
        state = self._keys.get(token) if token else None
        if state is None or state.behavior == "invalid":
            raise self._invalid()
        behavior = state.behavior
        if scope == "models" or (scope == "user_info" and behavior not in _USER_INFO_BEHAVIORS):
            return state
        if behavior == "reset":
            raise self._reset(request)
        if behavior == "stall":
            if await self._sleep(self.stall_seconds):
                raise self._reset(request)
            return state
        if behavior == "rate_limited":
            raise self._rate_limited(self.rate_limited_message)
        if behavior == "overloaded":
            raise _error(503, 50508, MSG_BUSY)
        if behavior == "gateway_timeout":
            raise _Reply(web.Response(status=504, text=_GATEWAY_TIMEOUT_HTML, content_type="text/html"))
        if behavior == "server_error":
            raise _error(500, 50000, "Internal Server Error")
        if behavior == "no_balance":
            raise _error(self.no_balance_status, 30001, MSG_NO_BALANCE)
        if behavior == "model_disabled":
            raise _error(403, 30003, MSG_DISABLED)
        if behavior == "bad_request":
            raise _bad_param()
        return state

    def _check_balance(self, state: _KeyState, model: str | None) -> None:
        """Zero-balance keys may only call free models, and only while `zero_balance_free_ok`."""
        if not _balance_is_zero(state.balance):
            return
        if model in self.free_models and self.zero_balance_free_ok:
            return
        raise _error(self.no_balance_status, 30001, MSG_NO_BALANCE)

    async def _model_call(self, request: web.Request) -> tuple[_KeyState, dict[str, Any], str]:
        """Shared front half of every model endpoint: key, behaviour, body, model, balance.

        Each endpoint then checks its own fields and calls `_serve` (the rate limits) last."""
        state = await self._gate(request, "full")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise _bad_param("Invalid JSON body.") from None
        if not isinstance(body, dict):
            raise _bad_param("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _bad_param("Field 'model' is required.")
        if model not in self.models:
            raise _error(400, 20012, MSG_UNKNOWN_MODEL)
        self._check_balance(state, model)
        return state, body, model

    # ----- streaming -----------------------------------------------------------------------

    async def _write_event(self, resp: web.StreamResponse, event: bytes) -> None:
        """Write one SSE event, in two reads' worth when `split_events` asks for it."""
        if not self.split_events:
            await resp.write(event)
            return
        cut = len(event) // 2
        await resp.write(event[:cut])
        await asyncio.sleep(0.005)
        await resp.write(event[cut:])

    async def _stream(self, request: web.Request, chunks: list[dict[str, Any]]) -> web.StreamResponse:
        """Send chunks as SSE, recording when each was written, then `data: [DONE]`."""
        resp = web.StreamResponse(
            headers={
                "Content-Type": self.sse_content_type,
                "Cache-Control": "no-cache",
            }
        )
        self.chunk_sent_at.clear()
        if self.compress:
            resp.enable_compression()
        await resp.prepare(request)
        try:
            for i, chunk in enumerate(chunks):
                if i and self.chunk_delay > 0 and await self._sleep(self.chunk_delay):
                    return resp
                if i == self.cut_after_chunks and request.transport is not None:
                    await asyncio.sleep(0.01)
                    request.transport.abort()
                    return resp
                if i == self.stall_after_chunks and await self._sleep(self.stall_seconds):
                    return resp
                await self._write_event(resp, b"data: " + orjson.dumps(chunk) + b"\n\n")
                self.chunk_sent_at.append(time.monotonic())
            await self._write_event(resp, b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away mid-stream; nothing left to do
        return resp

    async def _broken(self, request: web.Request) -> web.StreamResponse:
        """A 200 that is no good: HTML instead of JSON, or a JSON body cut off mid-way."""
        if self.broken_answer == "not_json":
            return web.Response(text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "400"})
        await resp.prepare(request)
        await resp.write(b'{"id": "x", "choices": [{"message": {"content": "half')
        await asyncio.sleep(0.01)
        if request.transport is not None:
            request.transport.abort()
        return resp

    # ----- generation ----------------------------------------------------------------------

    def _pieces(self) -> tuple[list[str], list[str]]:
        """The reasoning and content pieces one generation emits, one token each."""
        reasoning = [f"thinking {i}. " for i in range(self.reasoning_chunks)]
        content = [f"fake reply {i}. " for i in range(self.stream_chunks)]
        return reasoning, content

    async def _generate(
        self,
        request: web.Request,
        state: _KeyState,
        body: dict[str, Any],
        model: str,
        prompt: int,
        chat: bool,
    ) -> web.StreamResponse:
        """Answer chat or FIM completions; stream totals equal the non-stream usage."""
        reasoning, content = self._pieces()
        usage = _Usage(prompt=prompt, reasoning=len(reasoning), content=len(content))
        self._serve(state, model, tokens=usage.as_dict()["total_tokens"])
        gen_id = uuid.uuid4().hex
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        if body.get("stream") is not True:
            choice: dict[str, Any]
            if chat:
                message = {
                    "role": "assistant",
                    "content": "".join(content),
                    "reasoning_content": "".join(reasoning) or None,
                }
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
            else:
                choice = {
                    "index": 0,
                    "text": "".join(content),
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            if self.broken_answer is not None:
                return await self._broken(request)
            return _json(
                200,
                {
                    "id": gen_id,
                    "object": obj,
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": usage.as_dict(),
                    "system_fingerprint": "",
                },
            )

        def chunk(n: int, reasoning_piece: str | None, text: str | None, finish: str | None) -> dict[str, Any]:
            """One SSE chunk whose usage counts the first `n` completion tokens."""
            if chat:
                delta = {"content": text, "reasoning_content": reasoning_piece}
                if n == 1:
                    delta["role"] = "assistant"
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {
                    "index": 0,
                    "text": text or "",
                    "finish_reason": finish,
                    "logprobs": None,
                }
            return {
                "id": gen_id,
                "object": f"{obj}.chunk" if chat else obj,
                "created": created,
                "model": model,
                "choices": [choice],
                "system_fingerprint": "",
                "usage": usage.as_dict(completion=n),
            }

        chunks: list[dict[str, Any]] = []
        for piece in reasoning:
            chunks.append(chunk(len(chunks) + 1, piece, None, None))
        for piece in content:
            chunks.append(chunk(len(chunks) + 1, None, piece, None))
        chunks.append(chunk(len(chunks), None, "", "stop"))
        return await self._stream(request, chunks)

    # ----- handlers --------------------------------------------------------------------------

    async def _user_info(self, request: web.Request) -> web.StreamResponse:
        """Balance and account id, with the retirement (410) and slowness knobs."""
        state = await self._gate(request, "user_info")
        if await self._sleep(self.user_info_delay):
            raise self._reset(request)
        if self.user_info_status == 410:
            raise _error(410, 20092, "This API has been retired.")
        if self.user_info_status != 200:
            raise _error(
                self.user_info_status,
                self.user_info_status * 100,
                "Fake upstream status.",
            )
        data = {
            "id": state.account_id,
            "name": "fake",
            "image": "",
            "email": "",
            "isAdmin": False,
            "balance": "0",
            "status": "normal",
            "introduction": "",
            "role": "",
            "chargeBalance": state.balance,
            "totalBalance": state.balance,
            "category": "0",
        }
        return _json(
            200,
            {
                "code": 20000,
                "message": self.user_info_message,
                "status": True,
                "data": data,
            },
        )

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        """List models filtered by `type`/`sub_type`; any valid key gets 200, even at zero balance."""
        await self._gate(request, "models")
        want_type = request.query.get("type")
        want_sub = request.query.get("sub_type")
        data = [
            {"id": mid, "object": "model", "created": 0, "owned_by": ""}
            for mid, (mtype, sub) in self.models.items()
            if (not want_type or mtype == want_type) and (not want_sub or sub == want_sub)
        ]
        return _json(200, {"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        """OpenAI-style chat completion, streamed or not."""
        state, body, model = await self._model_call(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad_param("Field 'messages' is required.")
        prompt = sum(_tokens(_message_text(m)) for m in messages)
        return await self._generate(request, state, body, model, prompt, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        """FIM/code completion: `prompt` (+ optional `suffix`) in, `choices[].text` out."""
        state, body, model = await self._model_call(request)
        prompt = body.get("prompt")
        suffix = body.get("suffix") or ""
        if not isinstance(prompt, str) or not isinstance(suffix, str):
            raise _bad_param("Field 'prompt' is required.")
        return await self._generate(request, state, body, model, _tokens(prompt + suffix), chat=False)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        """Eight deterministic floats per input; usage counts prompt tokens only."""
        state, body, model = await self._model_call(request)
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if (
            not isinstance(inputs, list)
            or not 1 <= len(inputs) <= 32
            or not all(isinstance(t, str) and t for t in inputs)
        ):
            raise _bad_param("Field 'input' must be a string or a list of 1 to 32 strings.")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(inputs):
            vector = [round(_unit_float(model, text, str(d)) * 2 - 1, 6) for d in range(8)]
            embedding: Any = base64.b64encode(struct.pack("<8f", *vector)).decode() if as_base64 else vector
            data.append({"object": "embedding", "embedding": embedding, "index": i})
        tokens = sum(_tokens(t) for t in inputs)
        self._serve(state, model, tokens=tokens)
        usage = {
            "prompt_tokens": tokens,
            "completion_tokens": 0,
            "total_tokens": tokens,
        }
        return _json(200, {"object": "list", "model": model, "data": data, "usage": usage})

    async def _rerank(self, request: web.Request) -> web.StreamResponse:
        """Score documents deterministically; usage sits at `tokens` or `meta.tokens` per knob."""
        state, body, model = await self._model_call(request)
        query = body.get("query")
        docs = body.get("documents")
        if not isinstance(query, str) or not isinstance(docs, list) or not docs:
            raise _bad_param("Fields 'query' and 'documents' are required.")
        if not all(isinstance(d, str) for d in docs):
            raise _bad_param("Field 'documents' must be a list of strings.")
        top_n = body.get("top_n")
        with_docs = body.get("return_documents") is not False
        scored = sorted(
            ((round(_unit_float(model, query, d), 6), i, d) for i, d in enumerate(docs)),
            key=lambda t: (-t[0], t[1]),
        )
        if isinstance(top_n, int) and top_n > 0:
            scored = scored[:top_n]
        results = []
        for score, i, doc in scored:
            result: dict[str, Any] = {"index": i, "relevance_score": score}
            if with_docs:
                result["document"] = {"text": doc}
            results.append(result)
        tokens = {
            "input_tokens": sum(_tokens(query) + _tokens(d) for d in docs),
            "output_tokens": 0,
        }
        self._serve(state, model, tokens=tokens["input_tokens"])
        payload: dict[str, Any] = {"id": uuid.uuid4().hex, "results": results}
        if self.rerank_usage_in_meta:
            payload["meta"] = {"tokens": tokens}
        else:
            payload["tokens"] = tokens
        return _json(200, payload)

    async def _images(self, request: web.Request) -> web.StreamResponse:
        """`batch_size` image URLs (no token usage), optionally with an OpenAI-style `data` copy."""
        state, body, model = await self._model_call(request)
        prompt = body.get("prompt")
        batch = body.get("batch_size", 1)
        if not isinstance(prompt, str) or not prompt:
            raise _bad_param("Field 'prompt' is required.")
        if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 4:
            raise _bad_param("Field 'batch_size' must be between 1 and 4.")
        self._serve(state, model, images=batch)
        seed = body.get("seed")
        images = [{"url": f"https://example.invalid/img/{n}.png"} for n in range(batch)]
        payload: dict[str, Any] = {
            "images": images,
            "timings": {"inference": 0.1},
            "seed": seed if isinstance(seed, int) else 123,
        }
        if self.images_data_list:
            payload["data"] = [dict(img) for img in images]
        return _json(200, payload)

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        """16 KiB of non-JSON audio, to test that other paths pass through untouched."""
        state = await self._gate(request, "full")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        model = body.get("model") if isinstance(body, dict) else None
        self._check_balance(state, model if isinstance(model, str) else None)
        return web.Response(body=SPEECH_BYTES, content_type="audio/mpeg")

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        """A multipart upload whose `model` field names the model, as SiliconFlow's speech-to-text takes it."""
        state = await self._gate(request, "full")
        head = f"Content-Type: {request.headers.get('Content-Type', '')}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + await request.read())
        form = {
            part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in (message.iter_parts() if message.is_multipart() else ())
        }
        model = form.get("model")
        if not isinstance(model, bytes) or "file" not in form:
            raise _bad_param("Fields 'model' and 'file' are required.")
        model = model.decode()
        self._check_balance(state, model)
        return _json(200, {"text": f"fake transcript by {model}"})

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        """Any other path: key and behaviour still apply, then a JSON 404."""
        await self._gate(request, "full")
        raise _error(404, 404, "Not Found")
