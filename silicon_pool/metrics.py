"""Prometheus metrics at `GET /metrics`, in the text exposition format 0.0.4, without a client library.

The request path pays a few dict increments: per request, fed from its call-log row as the proxy
queues it (count, latency, time to first byte), and per upstream attempt. Keys by state, rests,
the writer's backlog and the upstream connections are read from the pool, the store and the
upstream client when Prometheus scrapes. Series stay few whatever the traffic: no per-key
series, endpoints outside the known ones count as "other", and a model gets a label of its own
only once the upstream served it (at most MAX_MODELS), so ids a client makes up never become
series.

Access: with a `metrics_token`, a scrape must send it as Bearer; without one, only this machine
(a loopback address) may scrape.
"""

from __future__ import annotations

import bisect
import hmac
import ipaddress
import time
from collections import Counter
from collections.abc import Iterable

from aiohttp import web

from .http1 import Http1Client
from .keys import Key
from .pool import KeyPool
from .settings import Settings
from .store import CallRecord, Store
from .typedefs import CLIENT, METRICS, POOL, SETTINGS, STORE

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS_MS = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000, 300_000)
MAX_MODELS = 200
OTHER, NONE = "other", "none"
FORWARDED = ("Forwarded", "X-Forwarded-For", "X-Real-IP")  # what reverse proxies add
KEY_STATES = ("active", "unchecked", "zero", "cooling", "invalid", "disabled")  # Key.status() words

Labels = tuple[tuple[str, str], ...]


class Histogram:
    """Per label value, observations in BUCKETS_MS (each counted in its own bucket; summed up when scraped)."""

    __slots__ = ("counts", "sums")

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, int] = {}

    def observe(self, label: str, ms: int) -> None:
        counts = self.counts.get(label)
        if counts is None:
            counts = self.counts[label] = [0] * (len(BUCKETS_MS) + 1)
            self.sums[label] = 0
        counts[bisect.bisect_left(BUCKETS_MS, ms)] += 1
        self.sums[label] += ms


class Metrics:
    """The counters the proxy feeds; `render` adds what the pool and the store hold."""

    def __init__(self, endpoints: Iterable[str]) -> None:
        self._endpoints = {endpoint: endpoint for endpoint in endpoints}
        self._models: dict[str, str] = {}
        self.requests: dict[tuple[str, str, int], int] = {}
        self.attempts: dict[str, int] = {}
        self.failovers: dict[str, int] = {}
        self.latency, self.first_byte = Histogram(), Histogram()

    def observe(self, record: CallRecord) -> None:
        """One request, from its call-log row."""
        endpoint = self._endpoints.get(record.endpoint, OTHER)
        series = (endpoint, self.model_label(record.model, served=record.status < 400), record.status)
        self.requests[series] = self.requests.get(series, 0) + 1
        self.latency.observe(endpoint, record.latency_ms)
        if record.ttfb_ms is not None:
            self.first_byte.observe(endpoint, record.ttfb_ms)

    def attempt(self, outcome: str) -> None:
        self.attempts[outcome] = self.attempts.get(outcome, 0) + 1

    def failover(self, outcome: str) -> None:
        """An attempt that ended in `outcome` was followed by one with another key."""
        self.failovers[outcome] = self.failovers.get(outcome, 0) + 1

    def model_label(self, model: str | None, *, served: bool = False) -> str:
        """The model's own label once the upstream served it (MAX_MODELS at most), else "other"."""
        if model is None:
            return NONE
        label = self._models.get(model)
        if label is None:
            if not served or len(self._models) >= MAX_MODELS:
                return OTHER
            label = self._models[model] = model
        return label

    def render(self, pool: KeyPool, store: Store, client: Http1Client) -> str:
        """Everything, in the text exposition format."""
        out: list[str] = []
        requests = (((("endpoint", e), ("model", m), ("status", str(s))), n) for (e, m, s), n in self.requests.items())
        _family(out, "silicon_pool_requests_total", "counter", REQUESTS, requests)
        attempts = (((("outcome", o),), n) for o, n in self.attempts.items())
        _family(out, "silicon_pool_upstream_attempts_total", "counter", "Upstream attempts, by outcome.", attempts)
        failovers = (((("outcome", o),), n) for o, n in self.failovers.items())
        _family(out, "silicon_pool_failovers_total", "counter", FAILOVERS, failovers)
        for name, histogram, help_ in (
            ("silicon_pool_request_duration_seconds", self.latency, "arrival to the end of its answer"),
            ("silicon_pool_time_to_first_byte_seconds", self.first_byte, "arrival to the first byte of its answer"),
        ):
            _histogram(out, name, f"Time from a request's {help_}, by endpoint.", histogram)
        states = (((("state", state),), n) for state, n in _key_states(pool.keys.values()))
        _family(out, "silicon_pool_keys", "gauge", "Keys in the pool, by state.", states)
        rests = Counter((self.model_label(r.model), r.kind) for r in pool.live_rests())
        _family(
            out, "silicon_pool_rests", "gauge", RESTS, (((("model", m), ("kind", k)), n) for (m, k), n in rests.items())
        )
        _family(out, "silicon_pool_writer_queue_depth", "gauge", QUEUE, [((), store.queue_depth())])
        _family(out, "silicon_pool_log_rows_dropped_total", "counter", DROPPED, [((), store.dropped_rows)])
        for name, type_, help_, value in (
            ("silicon_pool_upstream_connections", "gauge", CONNECTIONS, client.open_connections),
            ("silicon_pool_upstream_connection_waiters", "gauge", WAITERS, client.waiting),
            ("silicon_pool_upstream_connection_waits_total", "counter", WAITS, client.waited),
            ("silicon_pool_upstream_connection_timeouts_total", "counter", POOL_TIMEOUTS, client.pool_timeouts),
        ):
            _family(out, name, type_, help_, [((), value)])
        return "".join(out)


REQUESTS = "Requests answered, by endpoint, model (once the upstream served it) and status."
FAILOVERS = "Failed upstream attempts followed by an attempt with another key, by the failed attempt's outcome."
RESTS = "Rate-limit rests running (of a key or a whole account), by model and kind."
QUEUE = "Items (batches of call-log rows and key changes, or jobs) waiting for the database writer."
DROPPED = "Call-log rows the writer could not store (values it cannot write, or a failed commit)."
CONNECTIONS = "Connections to the upstream open or being opened (at most max_upstream_connections)."
WAITERS = "Requests waiting for a connection to the upstream, all of max_upstream_connections being busy."
WAITS = "Requests that had to wait for a connection to the upstream."
POOL_TIMEOUTS = "Requests that got no connection to the upstream within connect_timeout (answered 503)."


def _key_states(keys: Iterable[Key]) -> list[tuple[str, int]]:
    now = time.monotonic()
    counts = Counter(key.status(now) for key in keys)
    return [(state, counts.get(state, 0)) for state in KEY_STATES]


def _escape(value: str) -> str:
    """A label value as the format quotes it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _line(out: list[str], name: str, labels: Labels, value: float) -> None:
    shown = "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}" if labels else ""
    out.append(f"{name}{shown} {_number(value)}\n")


def _family(out: list[str], name: str, type_: str, help_: str, samples: Iterable[tuple[Labels, float]]) -> None:
    out.append(f"# HELP {name} {help_}\n# TYPE {name} {type_}\n")
    for labels, value in sorted(samples):
        _line(out, name, labels, value)


def _histogram(out: list[str], name: str, help_: str, histogram: Histogram) -> None:
    """Cumulative buckets, then the sum and the count, per label value (seconds, as Prometheus counts time)."""
    out.append(f"# HELP {name} {help_}\n# TYPE {name} histogram\n")
    for label, counts in sorted(histogram.counts.items()):
        running, by = 0, ("endpoint", label)
        for bound, count in zip((*BUCKETS_MS, None), counts, strict=True):
            running += count
            _line(out, f"{name}_bucket", (by, ("le", "+Inf" if bound is None else f"{bound / 1000:g}")), running)
        _line(out, f"{name}_sum", (by,), histogram.sums[label] / 1000)
        _line(out, f"{name}_count", (by,), running)


def _may_scrape(request: web.Request, token: str) -> bool:
    """With a metrics_token, whoever sends it; without one, this machine only (not through a proxy on it)."""
    if token:
        sent = request.headers.get("Authorization", "")
        given = sent[7:].strip() if sent[:7].lower() == "bearer " else ""
        return given.isascii() and hmac.compare_digest(given, token)
    if any(name in request.headers for name in FORWARDED):  # a reverse proxy's client, however local the proxy
        return False
    try:
        address = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


async def scrape(request: web.Request) -> web.Response:
    """`GET /metrics`: no admin login, the metrics rule instead."""
    settings: Settings = request.app[SETTINGS]
    if not _may_scrape(request, settings.metrics_token):
        message = (
            "metrics: send the metrics_token as Bearer (请以 Bearer 发送 metrics_token)"
            if settings.metrics_token
            else "metrics: only this machine may scrape until a metrics_token is set (未设置 metrics_token 时仅限本机)"
        )
        if settings.metrics_token:
            return web.Response(status=401, text=message, headers={"WWW-Authenticate": "Bearer"})
        return web.Response(status=403, text=message)
    text = request.app[METRICS].render(request.app[POOL], request.app[STORE], request.app[CLIENT])
    return web.Response(text=text, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})
