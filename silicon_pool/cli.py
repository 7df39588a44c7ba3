"""Command line: parse flags (environment variables as defaults), then run the one app factory."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .admin.auth import reset_account
from .app import create_app
from .config import Config
from .crypto import SecretError, ensure_private_dir
from .schema import SchemaError
from .server import run
from .settings import DEFAULT_UPSTREAM, Settings
from .store import Store, open_secrets

log = logging.getLogger("silicon_pool")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def _upstream(text: str) -> str:
    try:
        return Settings.upstream.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None


def _log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.upper()


def _data_dir(text: str) -> Path:
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return path


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="silicon-pool",
        description="A local OpenAI-compatible proxy that pools SiliconFlow API keys, with a web admin. "
        "Each flag falls back to the environment variable shown, then to its default.",
    )
    parser.add_argument(
        "--host",
        default=env("SILICON_POOL_HOST", "127.0.0.1"),
        help="address to listen on; keep 127.0.0.1 unless other machines must reach it "
        "[SILICON_POOL_HOST, default 127.0.0.1]",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=env("SILICON_POOL_PORT", "7898"),
        help="port to listen on [SILICON_POOL_PORT, default 7898]",
    )
    parser.add_argument(
        "--data-dir",
        type=_data_dir,
        default=env("SILICON_POOL_DATA_DIR", "data"),
        help="folder for pool.db and secret.key, created if missing [SILICON_POOL_DATA_DIR, default ./data]",
    )
    parser.add_argument(
        "--upstream",
        type=_upstream,
        default=env("SILICON_POOL_UPSTREAM"),
        help="upstream base URL including /v1; the proxy's /v1/X goes to <upstream>/X and balance checks to "
        "<upstream>/user/info. Overrides (and updates) the stored setting "
        f"[SILICON_POOL_UPSTREAM, default {DEFAULT_UPSTREAM}]",
    )
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default=env("SILICON_POOL_LOG_LEVEL", "INFO"),
        help=f"one of {', '.join(LOG_LEVELS)} [SILICON_POOL_LOG_LEVEL, default INFO]",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[h for h in env("SILICON_POOL_ALLOWED_HOSTS", "").split(",") if h.strip()],
        metavar="NAME",
        help="a host name the admin and /v1 answer to, besides IP addresses and localhost (repeatable; "
        "for a reverse proxy or a LAN name). A page at https://NAME counts as the admin's own, for a proxy "
        "that terminates TLS [SILICON_POOL_ALLOWED_HOSTS, comma-separated]",
    )
    parser.add_argument(
        "--reset-admin",
        action="store_true",
        help="reset the admin login to admin/admin (logging every session out), then exit",
    )
    parser.add_argument("--version", action="version", version=f"silicon-pool {__version__}")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Config]:
    """Flags to a Config; a bad value prints a clear message and exits with status 2."""
    args = build_parser().parse_args(argv)
    return args, Config(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        upstream=args.upstream,
        log_level=args.log_level,
        allowed_hosts=tuple(h.strip().lower() for h in args.allowed_host),
    )


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (it is faster), the standard loop elsewhere."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def reset_admin(config: Config) -> None:
    """Put admin/admin back (for a forgotten password); keys and settings are untouched."""
    ensure_private_dir(config.data_dir)
    store = Store(config.data_dir, open_secrets(config.data_dir))
    store.open()
    store.close()
    reset_account(str(store.path))
    print(
        f"silicon-pool: the admin login in {config.data_dir} is now admin / admin; "
        "restart silicon-pool if it is running, then change the password after logging in."
    )


def main(argv: Sequence[str] | None = None) -> None:
    try:
        _main(argv)
    except (SchemaError, SecretError) as exc:  # the data dir cannot be opened as it is: say why, touch nothing
        print(f"silicon-pool: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _main(argv: Sequence[str] | None) -> None:
    args, config = parse_config(argv)
    if args.reset_admin:
        reset_admin(config)
        return
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    shown = f"[{config.host}]" if ":" in config.host else config.host
    if config.host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"

    def announce() -> None:
        log.info("silicon-pool %s is running: admin at http://%s:%d/", __version__, shown, config.port)
        log.info("point OpenAI clients at base URL http://%s:%d/v1", shown, config.port)

    try:
        run(app, config.host, config.port, announce, _event_loop())
    except OSError as exc:
        print(f"silicon-pool: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(1) from None
