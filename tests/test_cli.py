"""Flags, environment variables and their validation; the real entry point starts and serves."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from silicon_pool.cli import parse_config
from silicon_pool.settings import SettingError, Settings

ROOT = Path(__file__).resolve().parent.parent


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOST", "PORT", "DATA_DIR", "UPSTREAM", "LOG_LEVEL"):
        monkeypatch.delenv(f"SILICON_POOL_{name}", raising=False)
    _, config = parse_config([])
    assert (config.host, config.port, str(config.data_dir), config.upstream, config.log_level) == (
        "127.0.0.1",
        7898,
        "data",
        None,
        "INFO",
    )


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SILICON_POOL_PORT", "8001")
    monkeypatch.setenv("SILICON_POOL_UPSTREAM", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("SILICON_POOL_LOG_LEVEL", "debug")
    _, config = parse_config([])
    assert (config.port, config.upstream, config.log_level) == (8001, "http://127.0.0.1:9/v1", "DEBUG")
    assert parse_config(["--port", "8002"])[1].port == 8002  # the flag wins


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "not a port number"),
        (["--port", "abc"], "not a port number"),
        (["--upstream", "ftp://x"], "http(s) URL"),
        (["--log-level", "LOUD"], "not one of"),
        (["--data-dir", __file__], "not a directory"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_values_exit_2_with_a_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_config(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_environment_value_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SILICON_POOL_PORT", "0")
    with pytest.raises(SystemExit) as caught:
        parse_config([])
    assert caught.value.code == 2 and "not a port number" in capsys.readouterr().err


def test_help_explains_every_flag() -> None:
    out = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True)
    for flag in ("--host", "--port", "--data-dir", "--upstream", "--log-level"):
        assert flag in out.stdout
    for env in ("SILICON_POOL_HOST", "SILICON_POOL_PORT", "SILICON_POOL_DATA_DIR", "SILICON_POOL_UPSTREAM"):
        assert env in out.stdout


@pytest.mark.parametrize("entry", [["run.py"], ["-m", "silicon_pool"]])
async def test_entry_points_start_serve_and_announce(entry: list[str], tmp_path: Path, unused_tcp_port: int) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [
        sys.executable,
        *entry,
        "--port",
        str(unused_tcp_port),
        "--data-dir",
        str(tmp_path / "d"),
        "--upstream",
        "http://127.0.0.1:9/v1",
    ]
    proc = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        async with asyncio.timeout(20):
            while not any("/v1" in line for line in lines):
                lines.append((await proc.stderr.readline()).decode())
        log = "".join(lines)
        assert f"http://127.0.0.1:{unused_tcp_port}/" in log
        assert f"base URL http://127.0.0.1:{unused_tcp_port}/v1" in log
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{unused_tcp_port}/healthz") as resp:
            assert resp.status == 503 and (await resp.json())["keys"] == 0
    finally:
        proc.terminate()
        await proc.wait()
    assert proc.returncode == 0
    assert (tmp_path / "d" / "pool.db").exists()


def test_settings_validate_as_a_whole() -> None:
    settings = Settings()
    assert settings.strategy == "least_inflight" and settings.max_attempts == 3
    for changes, name in [
        ({"strategy": "fastest"}, "strategy"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"cooldown_seconds": "30"}, "cooldown_seconds"),
        ({"read_timeout": 0.5}, "read_timeout"),
        ({"api_token": "has space"}, "api_token"),
        ({"upstream": "not a url"}, "upstream"),
        ({"free_models": 3}, "free_models"),
        ({"nope": 1}, "nope"),
        ({"api_token": "same", "free_token": "same"}, "free_token"),
    ]:
        with pytest.raises(SettingError, match=name):
            settings.validate({"max_attempts": 5, **changes})
    assert settings.max_attempts == 3  # nothing applied
    parsed = settings.validate({"free_models": "a/b, c/d\ne/f", "max_attempts": 4.0})
    assert parsed == {"free_models": ("a/b", "c/d", "e/f"), "max_attempts": 4}
