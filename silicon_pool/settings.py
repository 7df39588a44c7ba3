"""Every runtime setting, declared once: name, default, parser and help.

The admin edits them, SQLite keeps them, the request path reads them as plain attributes of
one `Settings` object. Values are validated as a whole before any is applied, so a bad
PATCH changes nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .selection import STRATEGIES

DEFAULT_UPSTREAM = "https://api.siliconflow.cn/v1"
DEFAULT_CHARTJS = "https://cdn.jsdelivr.net/npm/chart.js@4.6.1/dist/chart.umd.min.js"  # Chart.js's official CDN build
# Subresource integrity of that exact file (the npm package's dist/chart.umd.min.js, byte for byte).
DEFAULT_CHARTJS_INTEGRITY = "sha384-Emf5ZVIUiarAdhkgtqK+5/Z5qIvM6QoVrS+qAVtfyZVuD5lIHrac0me485+Antp0"

# Models SiliconFlow has served free of charge (see the upstream fact sheet); editable.
DEFAULT_FREE_MODELS = (
    "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen2.5-Coder-7B-Instruct",
    "Qwen/Qwen3-8B",
    "THUDM/glm-4-9b-chat",
    "THUDM/GLM-4-9B-0414",
    "internlm/internlm2_5-7b-chat",
    "BAAI/bge-m3",
    "BAAI/bge-large-zh-v1.5",
    "netease-youdao/bce-embedding-base_v1",
    "BAAI/bge-reranker-v2-m3",
    "netease-youdao/bce-reranker-base_v1",
    "Kwai-Kolors/Kolors",
)


class SettingError(ValueError):
    """A setting's name or value was refused; the message names it."""


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _number(low: float, high: float, *, integer: bool = False) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ValueError("must be a number")
        if integer and value != int(value):
            raise ValueError("must be a whole number")
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}")
        return int(value) if integer else float(value)

    return parse


_TOKEN = re.compile(r"[\x21-\x7e]{0,256}")


def _token(value: Any) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value.strip()):
        raise ValueError("must be up to 256 printable ASCII characters without spaces")
    return value.strip()


def _model_list(value: Any) -> tuple[str, ...]:
    """A list of model ids, or text with one per line or comma-separated."""
    if isinstance(value, str):
        value = re.split(r"[\s,，;]+", value)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of model ids")
    models = tuple(dict.fromkeys(v.strip() for v in value if v.strip()))
    if any(len(m) > 200 or any(c.isspace() for c in m) for m in models):
        raise ValueError("model ids must be short and contain no spaces")
    return models


def _url(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value.strip()):
        raise ValueError("must be an http(s) URL such as https://api.siliconflow.cn/v1")
    return value.strip().rstrip("/")


def _script_url(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"(https?://[^\s\"'<>]+|/(?!/)[^\s\"'<>]*)", value.strip()):
        raise ValueError("must be an http(s) URL or a path on this server such as /static/chart.umd.min.js")
    return value.strip()


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("strategy", "least_inflight", _choice(tuple(STRATEGIES)), "How the next key is picked (Key 选择策略)"),
    Setting("api_token", "", _token, "Token clients must send as Bearer; empty accepts anyone (访问令牌，留空不校验)"),
    Setting("free_token", "", _token, "Token that is served by zero-balance keys only (免费模型专用令牌)"),
    Setting("free_models", DEFAULT_FREE_MODELS, _model_list, "Models tried on zero-balance keys first (免费模型列表)"),
    Setting(
        "max_attempts",
        3,
        _number(1, 20, integer=True),
        "Keys tried per request before giving up (每个请求最多尝试的 Key 数)",
    ),
    Setting("cooldown_seconds", 30.0, _number(0, 3600), "Rest for a rate-limited or failing key (Key 冷却秒数)"),
    Setting("connect_timeout", 10.0, _number(1, 600), "Seconds to connect to the upstream (连接超时)"),
    Setting("read_timeout", 300.0, _number(1, 3600), "Longest silence between two upstream reads (读取超时)"),
    Setting("max_body_mb", 64, _number(1, 1024, integer=True), "Largest request body accepted, in MB (请求体上限)"),
    Setting("check_concurrency", 16, _number(1, 256, integer=True), "Balance checks run at once (余额检查并发数)"),
    Setting(
        "refresh_interval_minutes",
        0,
        _number(0, 10080, integer=True),
        "Refresh balances every N minutes, 0 = off (自动刷新间隔)",
    ),
    Setting("upstream", DEFAULT_UPSTREAM, _url, "Upstream base URL including /v1 (上游地址)"),
    Setting("chartjs_url", DEFAULT_CHARTJS, _script_url, "Where the stats page loads Chart.js from (图表库地址)"),
)
BY_NAME = {s.name: s for s in SETTINGS}


class Settings:
    """Current values as attributes (typed below), plus listeners told what changed."""

    strategy: str
    api_token: str
    free_token: str
    free_models: tuple[str, ...]
    max_attempts: int
    cooldown_seconds: float
    connect_timeout: float
    read_timeout: float
    max_body_mb: int
    check_concurrency: int
    refresh_interval_minutes: int
    upstream: str
    chartjs_url: str

    def __init__(
        self,
        stored: dict[str, Any] | None = None,
        persist: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        self._listeners: list[Callable[[set[str]], None]] = []
        self._persist = persist
        self._lock = asyncio.Lock()
        for setting in SETTINGS:
            setattr(self, setting.name, setting.default)
        # A stored value that no longer parses (an old version's) falls back to the default.
        for name, value in (stored or {}).items():
            if name in BY_NAME:
                try:
                    setattr(self, name, BY_NAME[name].parse(value))
                except ValueError:
                    continue
        self.free_model_set = frozenset(self.free_models)

    def as_dict(self) -> dict[str, Any]:
        return {s.name: list(v) if isinstance(v := getattr(self, s.name), tuple) else v for s in SETTINGS}

    def validate(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Parse every change or raise SettingError naming the first bad one."""
        if not isinstance(changes, dict):
            raise SettingError("settings must be a JSON object")
        parsed: dict[str, Any] = {}
        for name, value in changes.items():
            setting = BY_NAME.get(name)
            if setting is None:
                raise SettingError(f"unknown setting {name!r}")
            try:
                parsed[name] = setting.parse(value)
            except ValueError as exc:
                raise SettingError(f"{name}: {exc}") from None
        api = parsed.get("api_token", self.api_token)
        free = parsed.get("free_token", self.free_token)
        if free and free == api:
            raise SettingError("free_token: must differ from api_token")
        return parsed

    async def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate all, persist, then apply: a refused or unsaved change leaves everything as it was.

        One update at a time, so two that are each valid cannot combine into an invalid state."""
        async with self._lock:
            parsed = self.validate(changes)
            if self._persist is not None:
                await self._persist(parsed)
            self.apply(parsed)
            return parsed

    def apply(self, parsed: dict[str, Any]) -> None:
        """Set already-validated values and tell the listeners."""
        for name, value in parsed.items():
            setattr(self, name, value)
        self.free_model_set = frozenset(self.free_models)
        for listener in self._listeners:
            listener(set(parsed))

    def subscribe(self, listener: Callable[[set[str]], None]) -> None:
        self._listeners.append(listener)
