"""CPU of the proxy process per request and per relayed event, the bare proxy and silicon-pool
side by side in one run, with the events of a stream arriving one at a time as a model sends them.

    python bench/stream_cpu.py               # 8 s per phase
    python bench/stream_cpu.py --duration 4

req/s on two shared cores mostly measures the scheduler; the CPU seconds a proxy process spent
(utime + stime from /proc/<pid>/stat) over a fixed wrk run, divided by what it served, is the
stable figure. The burst scenario sends a stream's events in one write (one read and one write
per answer for the proxy, so it hides the cost per event); the others write each event on its
own, DELAY_MS apart, so each reaches the proxy alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import table

from run import CHAT, TOKEN, Proc, free_port, seed, set_strategy, silicon_pool, spawn, wrk

DELAY_MS = 2  # between two events of a stream: each arrives alone, as a model's tokens do
# name, events per answer (0: not a stream), each alone, connections
SCENARIOS = [
    ("non-stream", 0, False, 32),
    ("stream of 20 events, one burst", 20, False, 32),
    ("stream of 20 events, each alone", 20, True, 64),
    ("stream of 200 events, each alone", 200, True, 64),
]


def cpu_seconds(proc: Proc) -> float:
    """utime + stime of the process so far."""
    fields = Path(f"/proc/{proc.popen.pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_script(folder: Path, name: str, events: int, alone: bool) -> Path:
    body = {**CHAT, "stream": True} if events else CHAT
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    if events:
        headers["X-Bench-Events"] = str(events)
        headers["X-Bench-Delay"] = str(DELAY_MS / 1000 if alone else 0)
    lines = ['wrk.method = "POST"', f"wrk.body = '{orjson.dumps(body).decode()}'"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script = folder / f"{name}.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds of each load phase (default 8)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench needs wrk: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="silicon-pool-stream-cpu-"))
    up_port, bare_port = free_port(), free_port()
    upstream = spawn("upstream", "bench/upstream.py", "--port", str(up_port), port=up_port)
    upstream_v1 = f"{upstream.base}/v1"
    bare = spawn(
        "bare proxy", "bench/bare_proxy.py", "--port", str(bare_port), "--upstream", upstream_v1, port=bare_port
    )
    seed(work / "data", 10, upstream=upstream_v1)
    rows = []
    cpu: dict[tuple[str, int], float] = {}  # (process, events of an answer each alone) → µs per request
    try:
        with silicon_pool(work / "data", upstream_v1) as (sp, _):
            asyncio.run(set_strategy(sp.base, "least_inflight"))
            for i, (scenario, events, alone, connections) in enumerate(SCENARIOS):
                script = write_script(work, f"s{i}", events, alone)
                figures = {}
                for proc in (bare, sp):  # one after the other in the same run: the same machine state
                    wrk_scripted(f"{proc.base}/v1/chat/completions", connections, 1, script)  # warm
                    before = cpu_seconds(proc)
                    load = wrk_scripted(f"{proc.base}/v1/chat/completions", connections, args.duration, script)
                    served = load.rps * args.duration
                    per_request = (cpu_seconds(proc) - before) / served * 1e6
                    figures[proc.name] = (load.rps, per_request)
                (bare_rps, bare_cpu), (sp_rps, sp_cpu) = figures["bare proxy"], figures["silicon-pool"]
                if alone:
                    cpu["bare proxy", events], cpu["silicon-pool", events] = bare_cpu, sp_cpu
                rows.append(
                    [
                        scenario,
                        f"{bare_rps:,.0f}",
                        f"{sp_rps:,.0f}",
                        f"{bare_cpu:,.0f}",
                        f"{sp_cpu:,.0f}",
                        f"{bare_cpu / events:.1f}" if events else "—",
                        f"{sp_cpu / events:.1f}" if events else "—",
                        f"{sp_cpu / bare_cpu:.2f}",
                    ]
                )
    finally:
        bare.stop()
        upstream.stop()
    table(
        f"CPU of the proxy process (events {DELAY_MS} ms apart where alone; least_inflight, uvloop for silicon-pool)",
        [
            "scenario",
            "bare req/s",
            "pool req/s",
            "bare µs/req",
            "pool µs/req",
            "bare µs/event",
            "pool µs/event",
            "pool ÷ bare",
        ],
        rows,
    )
    few, many = (events for _, events, alone, _ in SCENARIOS if alone)
    marginal = {name: (cpu[name, many] - cpu[name, few]) / (many - few) for name in ("bare proxy", "silicon-pool")}
    print(
        f"CPU per event, relayed alone (µs per request at {many} events minus at {few}, over {many - few}): "
        f"bare proxy {marginal['bare proxy']:.1f}, silicon-pool {marginal['silicon-pool']:.1f} "
        f"({marginal['silicon-pool'] / marginal['bare proxy']:.2f}×)"
    )


def wrk_scripted(url: str, connections: int, seconds: int, script: Path):  # type: ignore[no-untyped-def]
    """wrk with a script of its own (run.wrk picks one of two by name)."""
    folder = script.parent / script.stem
    folder.mkdir(exist_ok=True)
    shutil.copy(script, folder / "chat.lua")
    return wrk(url, connections, seconds, False, folder)


if __name__ == "__main__":
    main()
