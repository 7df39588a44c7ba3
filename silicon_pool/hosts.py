"""Which Host names this server answers to: IP addresses, localhost, and names the user allowed.

A web page on another site can re-point its own domain at 127.0.0.1 (DNS rebinding); its
requests then carry its own name as Host. Refusing unknown names keeps such pages out of the
admin and away from the proxy. A verdict is remembered per Host header, so the request path
pays one dictionary lookup.
"""

from __future__ import annotations

import ipaddress

from yarl import URL

_MEMORY = 1024  # distinct Host headers remembered


class HostCheck:
    def __init__(self, allowed: tuple[str, ...]) -> None:
        self._allowed = frozenset(h.lower() for h in allowed) | {"localhost"}
        self._verdicts: dict[str | None, bool] = {}

    def __call__(self, host_header: str | None) -> bool:
        verdict = self._verdicts.get(host_header)
        if verdict is None:
            verdict = self._judge(host_header)
            if len(self._verdicts) < _MEMORY:
                self._verdicts[host_header] = verdict
        return verdict

    def _judge(self, host_header: str | None) -> bool:
        if not host_header:
            return True  # HTTP/1.0 without Host: no name was used, so none was rebound
        try:
            host = URL(f"http://{host_header}").host
        except ValueError:
            return False
        if host is None:
            return False
        if host.lower() in self._allowed:
            return True
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        return True
