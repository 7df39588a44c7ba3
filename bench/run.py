"""Run every benchmark scenario side by side and print a table of figures and ratios.

    python bench/run.py                  # the full run (about 6 minutes on 2 cores)
    python bench/run.py --duration 3     # shorter load phases
    python bench/run.py --only streams   # only the proxies' CPU per request and per event (about 2 minutes)

Everything runs on 127.0.0.1: a fast fake upstream (bench/upstream.py), the bare reference
proxy (bench/bare_proxy.py), a TCP pipe that knows no HTTP (bench/tcp_pipe.py: what the kernel
charges for a read and a write, the floor of any relay), silicon-pool itself (`python run.py`),
and wrk as the load generator (Debian package `wrk`; an aiohttp client measures the slow
streams). Beside req/s,
each proxy's CPU (utime + stime from /proc/<pid>/stat) per request and per event: on two
shared cores req/s mostly measures the scheduler, CPU per request served is the stable figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from picks import report as pick_report  # noqa: E402  (bench/picks.py)
from tables import table  # noqa: E402  (bench/tables.py, beside this file)

from silicon_pool.crypto import Secrets, ensure_private_dir  # noqa: E402
from silicon_pool.keys import Key  # noqa: E402
from silicon_pool.store import Store  # noqa: E402

TOKEN = "bench-token"
CHAT = {"model": "bench/model", "messages": [{"role": "user", "content": "hello"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """utime + stime of the process so far."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_mb(self) -> float:
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self) -> None:
        self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()


def wait_until_up(url: str, timeout: float = 30) -> float:
    """Seconds until `url` answers (any status)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])), 0.2):
                pass
        except OSError:
            time.sleep(0.02)
            continue
        return time.monotonic() - start
    raise RuntimeError(f"{url} did not come up")


def spawn(name: str, *argv: str, port: int) -> Proc:
    popen = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = Proc(name, popen, port)
    wait_until_up(proc.base)
    return proc


def seed(data_dir: Path, keys: int, *, upstream: str) -> None:
    """A data dir with `keys` keys and every feature on (api_token set)."""
    ensure_private_dir(data_dir)
    store = Store(data_dir, Secrets(data_dir))
    store.open()

    async def fill() -> None:
        for start in range(0, keys, 5000):
            await store.insert_keys(
                Key(0, f"sk-{i:048d}", time.time(), 10.0) for i in range(start, min(keys, start + 5000))
            )
        await store.save_settings({"api_token": TOKEN, "upstream": upstream})

    asyncio.run(fill())
    store.close()


def seed_calls(data_dir: Path, rows: int) -> None:
    """`rows` call-log rows over the last 30 days, and their hourly totals, written by SQLite itself."""
    conn = sqlite3.connect(data_dir / "pool.db")
    now = time.time()
    with conn:
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO calls (ts, endpoint, model, key_id, status, attempts, latency_ms, ttfb_ms, prompt_tokens,"
            " completion_tokens, total_tokens, images, stream, caller, error) "
            "SELECT ? - (i * 2592000.0 / ?), CASE i % 3 WHEN 0 THEN 'embeddings' ELSE 'chat/completions' END,"
            " 'model/' || (i % 7), 1 + i % 10, CASE WHEN i % 50 = 0 THEN 429 ELSE 200 END, 1, 100 + i % 900, 50,"
            " 12, 20, 32, 0, i % 2, 'main', CASE WHEN i % 50 = 0 THEN 'rate limited' END FROM n",
            (rows, now, rows),
        )
        conn.execute(
            "INSERT INTO usage_hourly SELECT CAST(ts / 3600 AS INTEGER) * 3600, COALESCE(model, ''), endpoint,"
            " COUNT(*), SUM(status >= 400), SUM(prompt_tokens), SUM(completion_tokens), SUM(total_tokens), 0"
            " FROM calls WHERE true GROUP BY 1, 2, 3"
        )
    conn.close()


@contextmanager
def silicon_pool(data_dir: Path, upstream: str) -> Iterator[tuple[Proc, float]]:
    port = free_port()
    started = time.monotonic()
    popen = subprocess.Popen(
        [
            sys.executable,
            "run.py",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--upstream",
            upstream,
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proc = Proc("silicon-pool", popen, port)
    while True:  # up when /healthz answers, i.e. the pool is loaded and the port bound
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2) as s:
                s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/"):
                    break
        except OSError:
            pass
        if time.monotonic() - started > 60:
            raise RuntimeError("silicon-pool did not start")
        time.sleep(0.01)
    try:
        yield proc, time.monotonic() - started
    finally:
        proc.stop()


# -- load --------------------------------------------------------------------------------------

GAP = 0.002  # seconds between two events of a stream "each alone": each reaches the proxy on its own
SLOW_STREAMS, SLOW_GAP = 256, 0.05  # the slow-stream scenario: this many streams open at once, events this far apart


@dataclass(frozen=True)
class Scenario:
    """One wrk load: `events` per answer (0: not a stream), `gap` seconds between two of them.

    With no gap the fake upstream writes an answer's events in one burst: one read and one write
    per answer for the proxy, which hides its cost per event. With a gap each event arrives alone,
    as a model's tokens do."""

    title: str
    connections: int
    events: int = 0
    gap: float = 0.0

    def script(self, folder: Path) -> Path:
        """The wrk script asking the fake upstream for this answer (X-Bench-Events, X-Bench-Delay)."""
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        if self.events:
            headers |= {"X-Bench-Events": str(self.events), "X-Bench-Delay": str(self.gap)}
        lines = ['wrk.method = "POST"', f"wrk.body = '{orjson.dumps({**CHAT, 'stream': bool(self.events)}).decode()}'"]
        lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
        script = folder / f"{re.sub(r'[^a-z0-9]+', '-', self.title)}.lua"
        script.write_text("\n".join(lines) + "\n")
        return script


NON_STREAM = Scenario("non-stream, 32 clients", 32)
SCENARIOS = (
    NON_STREAM,
    WIDE := Scenario("non-stream, 128 clients", 128),
    Scenario("stream of 20 events in one burst, 32 clients", 32, 20),
    Scenario(f"stream of 20 events each alone ({GAP * 1000:g} ms apart), 64 clients", 64, 20, GAP),
    Scenario(f"stream of 200 events each alone ({GAP * 1000:g} ms apart), 64 clients", 64, 200, GAP),
)
CPU_SCENARIOS = tuple(s for s in SCENARIOS if s is not WIDE)  # --only streams: one non-stream load is enough


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float | None  # CPU µs the measured process spent per request served (None: not measured)


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000}[unit]


def wrk(base: str, scenario: Scenario, seconds: int, folder: Path, cpu_of: Proc | None = None) -> Load:
    """wrk's figures for `scenario` against `base`; with `cpu_of`, that process's CPU per request.

    req/s on two shared cores mostly measures the scheduler; the CPU seconds a proxy process spent
    over a fixed run, divided by the requests it served, is the stable figure."""
    before = cpu_of.cpu_seconds() if cpu_of else 0.0
    out = subprocess.run(
        [
            *("wrk", "-t1", f"-c{scenario.connections}", f"-d{seconds}s", "--latency"),
            *("-s", str(scenario.script(folder)), f"{base}/v1/chat/completions"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spent = cpu_of.cpu_seconds() - before if cpu_of else 0.0
    served = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)$", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)$", out, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Load(
        rps,
        p50,
        p99,
        (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0),
        spent / served * 1e6 if cpu_of and served else None,
    )


async def slow_streams(url: str, streams: int, events: int, gap: float) -> list[float]:
    """Hold `streams` streams open together; return each event's transit time (ms) from the upstream's stamp.

    Starts are spread over one event interval, as independent clients' would be: started in the
    same instant, every stream's events would arrive in one burst and the figure would measure
    the queue behind that burst rather than the delay the proxy adds to an event."""
    transit: list[float] = []
    body = orjson.dumps({**CHAT, "stream": True})
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/json",
        "X-Bench-Events": str(events),
        "X-Bench-Delay": str(gap),
    }
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one(n: int) -> None:
            await asyncio.sleep(gap * n / streams)
            async with session.post(url, data=body, headers=headers) as resp:
                buffer = b""
                async for chunk in resp.content.iter_any():
                    now = time.monotonic()
                    buffer += chunk
                    *received, buffer = buffer.split(b"\n\n")
                    for event in received:
                        if event.startswith(b"data: {"):
                            transit.append((now - orjson.loads(event[6:])["t"]) * 1000)

        await asyncio.gather(*(one(n) for n in range(streams)))
    return transit


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


# -- admin API timing --------------------------------------------------------------------------


@asynccontextmanager
async def admin_session(base: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client logged in to the admin as admin/admin (the bench's data dirs keep the default)."""
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base_url=base, cookie_jar=jar) as http:
        async with http.post("/api/login", json={"username": "admin", "password": "admin"}) as resp:
            assert resp.status == 200
        yield http


async def admin_timings(base: str, repeat: int = 10) -> dict[str, float]:
    async with admin_session(base) as http:
        timings = {}
        for name, path in (
            ("stats API (month)", "/api/stats?range=month"),
            ("stats API (day)", "/api/stats?range=day"),
            ("logs page 1", "/api/logs?page=1&page_size=50"),
            ("logs page, model filter", "/api/logs?page=3&page_size=50&model=model%2F3"),
            ("logs page, errors only", "/api/logs?page=1&page_size=50&status=error"),
            ("summary", "/api/summary"),
        ):
            best = []
            for _ in range(repeat):
                start = time.perf_counter()
                async with http.get(path) as resp:
                    await resp.read()
                    assert resp.status == 200, path
                best.append((time.perf_counter() - start) * 1000)
            timings[name] = percentile(best, 0.5)
        return timings


async def import_keys(base: str, count: int) -> tuple[float, dict[str, Any]]:
    async with admin_session(base) as http:
        paste = "\n".join(f"sk-{'import'}{i:042d}" for i in range(count))
        start = time.monotonic()
        async with http.post("/api/keys/import", json={"keys": paste}) as resp:
            job_id = (await resp.json())["job_id"]
        while True:
            async with http.get(f"/api/jobs/{job_id}") as resp:
                job = await resp.json()
            if job["state"] != "running":
                return time.monotonic() - start, job
            await asyncio.sleep(0.2)


async def set_strategy(base: str, strategy: str) -> None:
    async with admin_session(base) as http, http.patch("/api/settings", json={"strategy": strategy}) as resp:
        assert resp.status == 200


# -- the proxies side by side -------------------------------------------------------------------

LOOPS = "silicon-pool on uvloop, the bare proxy on asyncio's own loop"


@dataclass(frozen=True)
class Target:
    """Where a load goes: `proc` serves it, with `strategy` set first (silicon-pool's); `cpu`: a proxy, measured."""

    label: str
    proc: Proc
    strategy: str | None = None
    cpu: bool = True


def put_in_force(target: Target) -> None:
    """`target`'s strategy, set before a load on it (silicon-pool serves every strategy from one process)."""
    if target.strategy:
        asyncio.run(set_strategy(target.proc.base, target.strategy))


def load_runs(
    targets: list[Target], scenarios: tuple[Scenario, ...], seconds: int, folder: Path
) -> dict[Scenario, dict[str, Load]]:
    """Every scenario against every target, one scenario after the other: a scenario's figures
    for the bare proxy and silicon-pool come from the same minute of the machine."""
    widest = max(scenarios, key=lambda s: s.connections)
    for target in targets:  # warm: upstream connections opened, lazy imports done
        wrk(target.proc.base, widest, 1, folder)
    runs: dict[Scenario, dict[str, Load]] = {}
    for scenario in scenarios:
        for target in targets:
            put_in_force(target)
            load = wrk(target.proc.base, scenario, seconds, folder, target.proc if target.cpu else None)
            runs.setdefault(scenario, {})[target.label] = load
    return runs


def cpu_cells(cpu_us: float | None, bare_us: float | None, events: int) -> list[str]:
    """CPU µs per request, per event (streams), and × the bare proxy's; dashes where not measured."""
    if cpu_us is None or not bare_us:
        return ["—"] * (3 if events else 2)
    return [f"{cpu_us:,.0f}", *([f"{cpu_us / events:.1f}"] if events else []), f"{cpu_us / bare_us:.2f}"]


def load_tables(runs: dict[Scenario, dict[str, Load]]) -> None:
    for scenario, results in runs.items():
        ref = results["bare proxy"]
        cpu_header = ["CPU µs/req", *(["CPU µs/event"] if scenario.events else []), "CPU × bare"]
        table(
            f"{scenario.title}; {LOOPS}",
            ["target", "req/s", "× bare", "p50 ms", "p99 ms", "errors", *cpu_header],
            [
                [
                    *(label, f"{r.rps:,.0f}", f"{r.rps / ref.rps:.2f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}"),
                    *(str(r.errors), *cpu_cells(r.cpu_us, ref.cpu_us, scenario.events)),
                ]
                for label, r in results.items()
            ],
        )
    few, many = (scenario for scenario in runs if scenario.gap)
    marginal = {
        label: (load.cpu_us - few_us) / (many.events - few.events)
        for label, load in runs[many].items()
        if load.cpu_us is not None and (few_us := runs[few][label].cpu_us) is not None
    }
    bare = marginal.pop("bare proxy")
    print(
        f"\nCPU per event relayed alone (µs per request at {many.events} events minus at {few.events},"
        f" over {many.events - few.events}): bare proxy {bare:.1f}, "
        + ", ".join(f"{label} {us:.1f} ({us / bare:.2f}× bare)" for label, us in marginal.items())
    )


def slow_stream_runs(targets: list[Target], events: int) -> dict[str, tuple[list[float], float | None]]:
    """Per target: each event's transit (ms) over SLOW_STREAMS streams open at once, and the CPU µs
    the proxy spent per event relayed (its streams' own cost included, spread over their events)."""
    runs = {}
    for target in targets:
        put_in_force(target)
        url = f"{target.proc.base}/v1/chat/completions"
        asyncio.run(slow_streams(url, SLOW_STREAMS, 5, SLOW_GAP))  # warm: the upstream connections get opened
        before = target.proc.cpu_seconds()
        transit = asyncio.run(slow_streams(url, SLOW_STREAMS, events, SLOW_GAP))
        cpu = (target.proc.cpu_seconds() - before) / len(transit) * 1e6 if target.cpu else None
        runs[target.label] = transit, cpu
    return runs


def slow_stream_table(runs: dict[str, tuple[list[float], float | None]], events: int) -> None:
    direct, _ = runs["direct to upstream"]
    _, bare_us = runs["bare proxy"]
    table(
        f"{SLOW_STREAMS} slow streams ({SLOW_GAP * 1000:g} ms between events, {events} each):"
        f" time an event spends between upstream and client; {LOOPS}",
        ["path", "events", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "CPU µs/event", "CPU × bare"],
        [
            [
                *(label, str(len(v)), f"{percentile(v, 0.5):.2f}", f"{percentile(v, 0.99):.2f}"),
                f"{percentile(v, 0.5) - percentile(direct, 0.5):.2f}",
                f"{percentile(v, 0.99) - percentile(direct, 0.99):.2f}",
                *([f"{cpu_us:.1f}", f"{cpu_us / bare_us:.2f}"] if cpu_us is not None and bare_us else ["—", "—"]),
            ]
            for label, (v, cpu_us) in runs.items()
        ],
    )


# -- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds of each load phase (default 8)")
    parser.add_argument(
        "--only",
        choices=["streams"],
        help="streams: only the proxies' CPU per request and per event (bare proxy and least_inflight)",
    )
    parser.add_argument("--keys", type=int, default=100_000, help="keys for the large-pool scenarios")
    parser.add_argument("--log-rows", type=int, default=1_000_000, help="call-log rows for the admin API scenario")
    parser.add_argument("--import-keys", type=int, default=10_000, help="keys pasted in the import scenario")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench needs wrk: apt-get install wrk")

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"machine: {machine}; {subprocess.run(['wrk', '-v'], capture_output=True, text=True).stdout.split(' [')[0]}")
    work = Path(tempfile.mkdtemp(prefix="silicon-pool-bench-"))
    up_port = free_port()
    upstream = spawn("upstream", "bench/upstream.py", "--port", str(up_port), "--user-info-delay", "0.05", port=up_port)
    upstream_v1 = f"{upstream.base}/v1"
    bare_port = free_port()
    bare = spawn(
        "bare proxy", "bench/bare_proxy.py", "--port", str(bare_port), "--upstream", upstream_v1, port=bare_port
    )
    pipe_port = free_port()
    pipe = spawn(
        "tcp pipe", "bench/tcp_pipe.py", "--port", str(pipe_port), "--upstream-port", str(up_port), port=pipe_port
    )
    small, large, logs, imports = (work / n for n in ("small", "large", "logs", "import"))
    seed(small, 10, upstream=upstream_v1)
    slow_events = max(20, round(args.duration / SLOW_GAP))  # a slow stream lasts about one load phase
    try:
        # 1. throughput, latency and CPU, side by side; 2. slow streams: the delay each proxy adds to an event
        with silicon_pool(small, upstream_v1) as (sp, _):
            direct, reference = Target("direct to upstream", upstream, cpu=False), Target("bare proxy", bare)
            floor = Target("tcp pipe (the floor)", pipe)
            inflight = Target("silicon-pool (least_inflight)", sp, "least_inflight")
            pools = [Target(f"silicon-pool ({s})", sp, s) for s in ("random", "least_used")] + [inflight]
            if args.only:
                runs = load_runs([reference, floor, inflight], CPU_SCENARIOS, args.duration, work)
            else:
                runs = load_runs([direct, reference, floor, *pools], SCENARIOS, args.duration, work)
            slow = slow_stream_runs([direct, reference, inflight], slow_events)
            small_peak = sp.peak_mb()
        load_tables(runs)
        slow_stream_table(slow, slow_events)
        if args.only:
            return

        # 3. a large pool: startup, memory, throughput
        seed(large, args.keys, upstream=upstream_v1)
        with silicon_pool(large, upstream_v1) as (sp, startup):
            asyncio.run(set_strategy(sp.base, "least_inflight"))
            wrk(sp.base, NON_STREAM, 1, work)  # warm, as the 10-key process was
            big = wrk(sp.base, NON_STREAM, args.duration, work, sp)
            large_peak = sp.peak_mb()
        ten = runs[NON_STREAM][inflight.label]
        assert big.cpu_us and ten.cpu_us
        table(
            f"{args.keys:,} keys in the pool",
            ["figure", "value", "target"],
            [
                ["startup until /healthz answers", f"{startup:.2f} s", "≤ 3 s"],
                ["peak memory", f"{large_peak:.0f} MB", "≤ 200 MB"],
                ["non-stream req/s, 32 clients", f"{big.rps:,.0f} ({big.rps / ten.rps:.2f}× of 10 keys)", "within 10%"],
                ["non-stream CPU µs/req", f"{big.cpu_us:,.0f} ({big.cpu_us / ten.cpu_us:.2f}× of 10 keys)", ""],
            ],
        )

        # 4. the admin API on a large call log
        seed(logs, 10, upstream=upstream_v1)
        seed_calls(logs, args.log_rows)
        with silicon_pool(logs, upstream_v1) as (sp, _):
            timings = asyncio.run(admin_timings(sp.base))
        table(
            f"admin API with {args.log_rows:,} call-log rows (median of 10)",
            ["request", "ms", "target"],
            [
                [name, f"{ms:.1f}", "≤ 100" if "stats" in name else "≤ 50" if "logs" in name else ""]
                for name, ms in timings.items()
            ],
        )

        # 5. importing keys against a /user/info that takes 50 ms
        seed(imports, 0, upstream=upstream_v1)
        with silicon_pool(imports, upstream_v1) as (sp, _):
            seconds, job = asyncio.run(import_keys(sp.base, args.import_keys))
            import_peak = sp.peak_mb()
        result = job.get("result") or {}
        table(
            f"import of {args.import_keys:,} keys (/user/info answers after 50 ms, 16 checks at once)",
            ["figure", "value", "target"],
            [
                ["time", f"{seconds:.1f} s", "≤ 60 s"],
                ["imported", str(result.get("imported")), str(args.import_keys)],
                ["unchecked / rejected", f"{result.get('unchecked')} / {result.get('rejected')}", "0 / 0"],
            ],
        )
        table(
            "peak memory (VmHWM)",
            ["process", "MB"],
            [
                ["fake upstream", f"{upstream.peak_mb():.0f}"],
                ["bare proxy", f"{bare.peak_mb():.0f}"],
                ["silicon-pool, 10 keys", f"{small_peak:.0f}"],
                [f"silicon-pool, {args.keys:,} keys", f"{large_peak:.0f}"],
                ["silicon-pool, import run", f"{import_peak:.0f}"],
            ],
        )
    finally:
        bare.stop()
        pipe.stop()
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)
    pick_report(keys=args.keys)  # in-process: the pick cost with keys resting for a model


if __name__ == "__main__":
    main()
