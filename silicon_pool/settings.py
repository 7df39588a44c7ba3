"""Every runtime setting, declared once, as one line of the `Settings` class.

A declaration holds the setting's kind (which decides how a value is parsed and how the
settings page shows it), its bounds, default, and label and help in Chinese and English. The
admin's form, the JSON schema, validation and the stored values all come from it. The request
path reads settings as plain attributes of the one `Settings` object: each declaration is a
non-data descriptor, so once a value is set on the instance, reading it is a dict lookup.
Values are validated as a whole before any is applied, so a bad PATCH changes nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, timedelta, timezone, tzinfo
from typing import Any, ClassVar, Generic, NamedTuple, Self, TypeVar, overload
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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

DEFAULT_LIMIT_ZONE = "Asia/Shanghai"  # where SiliconFlow's daily limits are assumed to end (fact sheet)

T = TypeVar("T")
log = logging.getLogger(__name__)


class SettingError(ValueError):
    """A setting's name or value was refused; the message names it."""


class Words(NamedTuple):
    """One text in both languages of the admin."""

    zh: str
    en: str

    def of(self, lang: str) -> str:
        return self.en if lang == "en" else self.zh


class Setting(Generic[T]):
    """One setting's declaration; subclasses are its kinds. `grid` names kinds laid out side by side."""

    kind: ClassVar[str]
    grid: ClassVar[str | None] = None
    name: str

    def __init__(self, default: T, label: Words, help: Words) -> None:  # noqa: A002 - what it is
        self.default, self.label, self.help = default, label, help

    def __set_name__(self, _owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...
    def __get__(self, obj: object, owner: type) -> Self | T:
        return self if obj is None else self.default

    def parse(self, value: Any) -> T:
        """The value to use, or ValueError saying what is wrong with it."""
        raise NotImplementedError

    def bounds(self) -> dict[str, Any]:
        """What the form and the schema need beyond the kind (limits, options)."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "default": jsonable(self.default),
            "label": self.label._asdict(),
            "help": self.help._asdict(),
            **self.bounds(),
        }


def jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class Choice(Setting[str]):
    kind = "choice"

    def __init__(self, default: str, options: Mapping[str, Words], label: Words, help: Words) -> None:  # noqa: A002
        super().__init__(default, label, help)
        self.options = dict(options)

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.options:
            raise ValueError(f"must be one of {', '.join(self.options)}")
        return value

    def bounds(self) -> dict[str, Any]:
        return {"options": [{"value": v, **words._asdict()} for v, words in self.options.items()]}


def _number_within(value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError("must be a number")
    if not low <= value <= high:
        raise ValueError(f"must be between {low:g} and {high:g}")
    return value


class Number(Setting[float]):
    kind = "number"
    grid = "numbers"

    def __init__(self, default: float, low: float, high: float, label: Words, help: Words) -> None:  # noqa: A002
        super().__init__(default, label, help)
        self.low, self.high = low, high

    def parse(self, value: Any) -> float:
        return float(_number_within(value, self.low, self.high))

    def bounds(self) -> dict[str, Any]:
        return {"min": self.low, "max": self.high}


class Integer(Setting[int]):
    kind = "integer"
    grid = "numbers"

    def __init__(self, default: int, low: int, high: int, label: Words, help: Words) -> None:  # noqa: A002
        super().__init__(default, label, help)
        self.low, self.high = low, high

    def parse(self, value: Any) -> int:
        number = _number_within(value, self.low, self.high)
        if number != int(number):
            raise ValueError("must be a whole number")
        return int(number)

    def bounds(self) -> dict[str, Any]:
        return {"min": self.low, "max": self.high}


_TOKEN = re.compile(r"[\x21-\x7e]{0,256}")


class Token(Setting[str]):
    """A secret clients send as Bearer; the form offers to generate one."""

    kind = "token"
    grid = "tokens"

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or not _TOKEN.fullmatch(value.strip()):
            raise ValueError(
                "must be up to 256 printable ASCII characters without spaces (最多 256 个可打印 ASCII 字符，不能含空格)"
            )
        return value.strip()


class ModelList(Setting[tuple[str, ...]]):
    kind = "models"

    def parse(self, value: Any) -> tuple[str, ...]:
        """A list of model ids, or text with one per line or comma-separated."""
        if isinstance(value, str):
            value = re.split(r"[\s,，;]+", value)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError("must be a list of model ids (须为模型 ID 列表)")
        models = tuple(dict.fromkeys(v.strip() for v in value if v.strip()))
        if any(len(m) > 200 or not m.isprintable() or " " in m for m in models):  # isprintable: no other space
            raise ValueError(
                "model ids must be short, without spaces or control characters (模型 ID 须简短，不能含空格或控制字符)"
            )
        return models


_PRINTABLE = re.compile(r"[\x21-\x7e]{1,2048}")  # ASCII without spaces or control characters
_HTTP = re.compile(r"https?://(\[[^\]/]*\]|[^:/?#\[\]]*)(?::(\d*))?(/.*)?", re.DOTALL)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_NUMERIC_LABEL = re.compile(r"\d+|0[xX][0-9A-Fa-f]*")  # what makes parsers read a host as an IPv4 address
_SCRIPT_CHARS = re.compile(r"[^\"'<>\\;,*]*")  # nothing that ends a CSP source, quotes HTML, or is a wildcard


def _is_ip(text: str, version: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    try:
        address = version(text)
    except ValueError:
        return False
    return not isinstance(address, ipaddress.IPv6Address) or address.scope_id is None


def _reachable_host(host: str, *, ipv6: bool) -> bool:
    """A DNS name, a dotted-quad IPv4 address or (where allowed) a bracketed IPv6 one: nothing a resolver
    raises on (an empty or 64-character label), nothing parsers disagree on (`127.1`), no wildcard."""
    if host.startswith("["):
        return ipv6 and _is_ip(host[1:-1], ipaddress.IPv6Address)
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return _is_ip(host, ipaddress.IPv4Address)
    return len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def _http_path(text: str, *, ipv6: bool) -> str | None:
    """What follows the host and port of an http(s) URL whose host and port can exist, else None."""
    match = _HTTP.fullmatch(text)
    if match is None or not _reachable_host(match.group(1), ipv6=ipv6):
        return None
    port = match.group(2)
    if port is not None and not (len(port) <= 5 and port.isdigit() and 0 < int(port) < 65536):
        return None
    return match.group(3) or ""


class Url(Setting[str]):
    """An http(s) URL; with `paths`, a path on this server too (for a script the pages load).

    One host that a resolver can look up (no wildcard, no user info), a port that exists, printable
    ASCII only (a control character in the pages' CSP header makes aiohttp drop every page). A script
    URL names one file, as the CSP's `script-src` then allows that file and not its whole host."""

    kind = "url"

    def __init__(self, default: str, label: Words, help: Words, *, paths: bool = False) -> None:  # noqa: A002
        super().__init__(default, label, help)
        self.paths = paths

    def parse(self, value: Any) -> str:
        text = value.strip() if isinstance(value, str) else ""
        if not _PRINTABLE.fullmatch(text):
            raise ValueError(
                "must be a URL of at most 2048 printable ASCII characters, without spaces or control characters"
                " (须为不超过 2048 个可打印 ASCII 字符的地址，不能含空格或控制字符)"
            )
        return self._script(text) if self.paths else self._base(text)

    @staticmethod
    def _base(text: str) -> str:
        path = _http_path(text, ipv6=True)
        if path is None or re.search(r"[?#\\]", path):
            raise ValueError(
                "must be an http(s) URL such as https://api.siliconflow.cn/v1, its host a name or IP address"
                " (no wildcard), its port 1-65535, without ?, # or \\"
                " (须为 http(s) 地址，如 https://api.siliconflow.cn/v1；主机须为域名或 IP，不含通配符，端口 1-65535)"
            )
        return text.rstrip("/")

    @staticmethod
    def _script(text: str) -> str:
        local = text.startswith("/") and not text.startswith(("//", "/\\"))
        path = text if local else _http_path(text, ipv6=False)  # CSP cannot name an IPv6 host
        if path is None or not path.startswith("/") or path.endswith("/") or not _SCRIPT_CHARS.fullmatch(path):
            raise ValueError(
                "must name one file: an http(s) URL, its host a name or IPv4 address (no wildcard) and its port"
                " 1-65535, or a path on this server such as /static/chart.umd.min.js; without quotes, <, >, \\, ;,"
                " commas or * (须指向单个文件：http(s) 地址（主机为域名或 IPv4，不含通配符，端口 1-65535）"
                "或本站路径，如 /static/chart.umd.min.js；不能含引号、<、>、\\、;、逗号或 *)"
            )
        return text

    def bounds(self) -> dict[str, Any]:
        return {"paths": self.paths}


class Zone(Setting[str]):
    """An IANA time zone name, such as Asia/Shanghai."""

    kind = "zone"

    @staticmethod
    def resolve(name: str) -> tzinfo:
        """The zone itself (read from the tz database once, when the setting applies, never per request);
        China's fixed UTC+8 for the default where no tz database is installed."""
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            return timezone(timedelta(hours=8), "UTC+8") if name == DEFAULT_LIMIT_ZONE else UTC

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_+\-/]{0,63}", value.strip()):
            raise ValueError("must be a time zone name such as Asia/Shanghai or UTC")
        name = value.strip()
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            if name != DEFAULT_LIMIT_ZONE:  # known even where no tz database is installed (limits.zone)
                raise ValueError(f"unknown time zone {name!r}") from None
        return name


class Settings:
    """Current values as attributes, plus listeners told what changed. One line per setting."""

    strategy = Choice(
        "least_inflight",
        {name: Words(zh, en) for name, (_, zh, en) in STRATEGIES.items()},
        Words("Key 选择策略", "Key strategy"),
        Words("下一个请求如何挑选 Key，修改后立即生效", "How the next key is picked; applies to the next request"),
    )
    api_token = Token(
        "",
        Words("访问令牌（留空则不校验）", "API token (empty accepts anyone)"),
        Words("客户端以 Bearer 发送此令牌；留空时任何人都可使用", "Clients send it as Bearer; empty accepts anyone"),
    )
    free_token = Token(
        "",
        Words("免费模型令牌（永不花钱）", "Free token (never spends money)"),
        Words(
            "只能请求免费模型（其他模型返回 403，不动用任何 Key），所以永远不会花钱；用哪些 Key 见下一项",
            "Free models only (others are refused with a 403 before any key is touched), so it never spends "
            "money; which keys it uses is the next setting",
        ),
    )
    free_token_keys = Choice(
        "zero_then_unknown",
        {
            "zero_only": Words("只用零余额 Key", "Zero-balance keys only"),
            "zero_then_unknown": Words(
                "先用零余额 Key，再用余额未知的 Key", "Zero-balance keys first, then keys of unknown balance"
            ),
            "any": Words("先用零余额 Key，再用任何 Key", "Zero-balance keys first, then any key"),
        },
        Words("免费令牌使用的 Key", "Keys the free token uses"),
        Words(
            "免费模型在任何 Key 上都不花钱；硅基流动已不再提供国内 Key 的余额，余额未知的 Key 很常见。"
            "选“只用零余额 Key”可让免费令牌不占用有余额 Key 的模型额度",
            "A free model costs nothing on any key; SiliconFlow no longer reports China keys' balances, so "
            "unknown balances are common. Zero-balance only keeps free-token traffic off the per-model "
            "budgets of keys with balance",
        ),
    )
    metrics_token = Token(
        "",
        Words("监控令牌（/metrics，留空则仅限本机）", "Metrics token (/metrics; empty: this machine only)"),
        Words(
            "Prometheus 以 Bearer 发送此令牌抓取 /metrics；留空时只有本机地址可以抓取",
            "Prometheus sends it as Bearer to scrape /metrics; empty lets only this machine's addresses scrape",
        ),
    )
    free_models = ModelList(
        DEFAULT_FREE_MODELS,
        Words("免费模型（每行一个，优先用零余额 Key）", "Free models (one a line; zero-balance keys first)"),
        Words("请求这些模型时先用零余额 Key，再用有余额的 Key", "These models try zero-balance keys before paid ones"),
    )
    max_attempts = Integer(
        3,
        1,
        20,
        Words("每个请求最多尝试的 Key 数", "Keys tried per request"),
        Words("首字节发出前，失败后最多换几个 Key", "How many keys one request may try before it fails"),
    )
    cooldown_seconds = Number(
        30.0,
        0,
        3600,
        Words("出错 Key 冷却秒数", "Cooldown for a failing key (s)"),
        Words("限流、过载或连不上的 Key 休息多久", "How long a rate-limited, overloaded or unreachable key rests"),
    )
    wait_for_key_seconds = Number(
        0.0,
        0,
        600,
        Words("等待 Key 恢复的秒数（0 为不等）", "Wait for a key to come back (s, 0 = never)"),
        Words(
            "某模型的 Key 全部限流时，若在此秒数内有 Key 恢复，请求排队等待而不是立即返回 429",
            "When every key rests for a model, a request waits this long for one to come back instead of a 429",
        ),
    )
    max_inflight_per_key = Integer(
        0,
        0,
        100_000,
        Words("每个 Key 的最大并发（0 为不限）", "Requests in flight per key (0 = no cap)"),
        Words("达到上限的 Key 暂不分配，直到它有请求结束", "A key at its cap is not picked until a request on it ends"),
    )
    connect_timeout = Number(
        10.0,
        1,
        600,
        Words("连接超时（秒）", "Connect timeout (s)"),
        Words("连接上游的最长等待", "Longest wait to connect to the upstream"),
    )
    read_timeout = Number(
        300.0,
        1,
        3600,
        Words("读取超时（两次读取间最长静默，秒）", "Read timeout (longest silence, s)"),
        Words(
            "上游两次发来数据之间允许的最长静默；客户端停止读取（发送缓冲区不清空）超过此时长，请求也结束（记录 408）",
            "Longest silence allowed between two reads from the upstream; a client that stops reading "
            "for this long ends its request too (logged 408)",
        ),
    )
    max_upstream_connections = Integer(
        512,
        1,
        100_000,
        Words("到上游的最大连接数", "Upstream connections (most at once)"),
        Words(
            "忙碌、空闲与正在建立的连接合计；用满时请求按到达顺序排队，在连接超时内仍无空闲连接则返回 503，不怪罪 Key",
            "Busy, idle and opening ones together; when all are in use, requests queue in arrival order and "
            "get a 503 (blaming no key) if none comes free within the connect timeout",
        ),
    )
    max_body_mb = Integer(
        64,
        1,
        1024,
        Words("请求体上限（MB）", "Largest request body (MB)"),
        Words("更大的请求返回 413", "Larger requests are answered 413"),
    )
    max_answer_mb = Integer(
        64,
        1,
        1024,
        Words("上游应答上限（MB）", "Largest upstream answer held in memory (MB)"),
        Words(
            "非流式应答、错误应答或单个流式事件超过此大小时返回 502，不怪罪 Key",
            "A JSON answer, an error answer or one stream event larger than this is answered 502, blaming no key",
        ),
    )
    stream_usage = Choice(
        "as_upstream",
        {
            "as_upstream": Words(
                "与上游相同（每个分块都带累计用量）", "As the upstream sends it (running usage in every chunk)"
            ),
            "final_only": Words(
                "只在结束的分块中（与 OpenAI 相同）", "In the finishing chunk only (as OpenAI sends it)"
            ),
        },
        Words("流式应答中的用量", "Usage in streamed answers"),
        Words(
            "硅基流动在每个分块中重复累计用量，把各块用量相加的客户端（如 langchain）会多计；调用日志两种方式都准确",
            "SiliconFlow repeats the running usage in every chunk, so clients that add chunks up (langchain) "
            "overcount; the call log is right either way",
        ),
    )
    check_concurrency = Integer(
        16,
        1,
        256,
        Words("余额检查并发数", "Balance checks at once"),
        Words("导入与刷新时同时查询余额的数量", "Balance checks run at once during imports and refreshes"),
    )
    refresh_interval_minutes = Integer(
        0,
        0,
        10080,
        Words("自动刷新余额间隔（分钟，0 为关闭）", "Refresh balances every (min, 0 = off)"),
        Words("定时刷新全部余额；0 表示不自动刷新", "Refresh every balance on a timer; 0 turns it off"),
    )
    limit_zone = Zone(
        DEFAULT_LIMIT_ZONE,
        Words("每日限额的时区", "Time zone of daily limits"),
        Words(
            "按天的限额（RPD、TPD、IPD）在此时区的午夜恢复，默认北京时间",
            "Daily limits (RPD, TPD, IPD) come back at midnight in this zone; Beijing time by default",
        ),
    )
    upstream = Url(
        DEFAULT_UPSTREAM,
        Words("上游地址（含 /v1）", "Upstream base URL (with /v1)"),
        Words("/v1/X 转发到 <上游>/X", "/v1/X is forwarded to <upstream>/X"),
    )
    chartjs_url = Url(
        DEFAULT_CHARTJS,
        Words("Chart.js 地址（可改为本地）", "Chart.js URL (may point to a local copy)"),
        Words("统计页从这里加载图表库，可填本机路径", "Where the stats page loads Chart.js; a local path works"),
        paths=True,
    )

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
        # A stored value that no longer parses (an old version's, or one a newer check refuses) falls back
        # to the default: pages and requests then work, and the settings page shows what applies.
        for name, value in (stored or {}).items():
            if name in BY_NAME:
                try:
                    setattr(self, name, BY_NAME[name].parse(value))
                except ValueError as exc:
                    log.warning("stored setting %s is refused, its default applies: %s", name, exc)
        self._derive()

    def _derive(self) -> None:
        """Values the request path needs in another form than the setting's own."""
        self.free_model_set = frozenset(self.free_models)
        self.day_zone = Zone.resolve(self.limit_zone)

    def as_dict(self) -> dict[str, Any]:
        return {s.name: jsonable(getattr(self, s.name)) for s in SETTINGS}

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
                await self._persist({name: jsonable(value) for name, value in parsed.items()})
            self.apply(parsed)
            return parsed

    def apply(self, parsed: dict[str, Any]) -> None:
        """Set already-validated values and tell the listeners."""
        for name, value in parsed.items():
            setattr(self, name, value)
        self._derive()
        for listener in self._listeners:
            listener(set(parsed))

    def subscribe(self, listener: Callable[[set[str]], None]) -> None:
        self._listeners.append(listener)


SETTINGS: tuple[Setting[Any], ...] = tuple(v for v in vars(Settings).values() if isinstance(v, Setting))
BY_NAME = {s.name: s for s in SETTINGS}
