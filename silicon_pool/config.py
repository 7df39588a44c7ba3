"""Start-up configuration: what the command line decides (the rest are runtime settings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 7898
    data_dir: Path = Path("data")
    upstream: str | None = None  # None: keep the stored `upstream` setting
    log_level: str = "INFO"
    allowed_hosts: tuple[str, ...] = ()  # names (besides IPs and localhost) the admin answers to
