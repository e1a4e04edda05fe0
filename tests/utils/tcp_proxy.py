"""A loopback TCP proxy that can cut connections mid-way, to prove fault tolerance.

``CuttingProxy(target_port, cut_after=N, cuts=K)`` forwards connections to the
target; the first ``K`` connections are reset abruptly (RST, as when a network
link drops) once ``N`` bytes have crossed in the chosen direction. Later
connections pass through untouched, as after the link comes back.
"""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType
from typing import Literal

Direction = Literal["upstream", "downstream"]


class CuttingProxy:
    """Forward ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``, cutting some connections.

    Parameters
    ----------
    target_port
        Where connections are forwarded.
    cut_after
        Bytes allowed through (in ``direction``) before a cut connection is reset.
    cuts
        How many connections (the first ones) are cut; later ones pass through.
    direction
        ``upstream`` counts client → server bytes (an upload), ``downstream``
        server → client bytes (a download).
    """

    def __init__(
        self,
        target_port: int,
        *,
        cut_after: int,
        cuts: int = 1,
        direction: Direction = "upstream",
        target_host: str = "127.0.0.1",
    ) -> None:
        self.target = (target_host, target_port)
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.direction = direction
        self.connections = 0
        self.cut_connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> CuttingProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                cut = self.cuts_left > 0
                if cut:
                    self.cuts_left -= 1
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            _Link(self, client, server, cut).start()


class _Link:
    """The two pump threads of one proxied connection."""

    def __init__(
        self, proxy: CuttingProxy, client: socket.socket, server: socket.socket, cut: bool
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.cut = cut
        self.passed = 0
        self.dead = threading.Event()

    def start(self) -> None:
        for source, sink, direction in (
            (self.client, self.server, "upstream"),
            (self.server, self.client, "downstream"),
        ):
            threading.Thread(target=self._pump, args=(source, sink, direction), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        counted = self.cut and direction == self.proxy.direction
        try:
            while not self.dead.is_set():
                chunk = source.recv(65536)
                if not chunk:
                    break
                if counted:
                    room = self.proxy.cut_after - self.passed
                    if len(chunk) >= room:
                        if room > 0:
                            sink.sendall(chunk[:room])
                        self.passed += room
                        self._reset()
                        return
                    self.passed += len(chunk)
                sink.sendall(chunk)
        except OSError:
            pass
        # A clean end on one side: pass the half-close on, then tear down.
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _reset(self) -> None:
        """Drop both sides with RST (SO_LINGER 0), like a broken link."""
        with self.proxy._lock:
            self.proxy.cut_connections += 1
        self.dead.set()
        for sock in (self.client, self.server):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # Wake the other pump blocked in recv() on this socket; close() alone would
                # leave the socket open (and send no RST) while that call holds it.
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass
