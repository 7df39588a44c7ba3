"""The floor of any relay on this machine: a uvloop TCP pipe that knows nothing of HTTP.

Each client connection gets its own connection to the upstream, and bytes go from one socket
to the other in the read callback, untouched. What it costs per relayed event is what the
kernel charges for a read and a write on loopback (plus uvloop's own turn): no proxy that
reads and writes each event can cost less.

    python bench/tcp_pipe.py --port 8001 --upstream-port 8000
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop


class _Side(asyncio.Protocol):
    """One end; what it reads goes to `peer`, held until the peer is connected."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.early: list[bytes] = []  # bytes read before the peer connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - either way, the other end goes too
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _Client(_Side):
    """A client's end: connects its upstream end as it arrives."""

    upstream_port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        upstream = _Side()
        upstream.peer, self.peer = self, upstream
        await asyncio.get_running_loop().create_connection(lambda: upstream, "127.0.0.1", self.upstream_port)
        assert upstream.transport is not None
        for data in self.early:
            upstream.transport.write(data)
        self.early.clear()


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Client, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    _Client.upstream_port = args.upstream_port
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
