"""The demo's network link between a site's edge and the centre: a TCP relay it can cut.

A hospital's link to the centre drops for a while and comes back; the demo cannot pull a
cable, so the edge reaches ``medai serve`` through this relay on loopback and the demo sets
its state:

``up``
    Every byte passes both ways.
``uploads-cut``
    A degraded link: a connection that starts a STOW-RS upload (a request to
    ``/dicomweb/``) is reset with RST once a few kilobytes of it have crossed, as when the
    link drops mid-upload; small requests (the edge's heartbeats) still pass.
``down``
    Nothing passes: open connections are reset and new ones are reset as they arrive.

Connections are reset, never left hanging, so the edge notices at once and backs off,
exactly as after a real cut.
"""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType
from typing import Literal

__all__ = ["Link", "LinkState"]

LinkState = Literal["up", "uploads-cut", "down"]
# What marks an upload in the request stream, and how much of one crosses before the cut.
_UPLOAD_MARK = b"/dicomweb/"
_UPLOAD_ALLOWANCE = 1024


class Link:
    """Relay ``127.0.0.1:<port>`` to ``target_host:target_port``; :attr:`state` sets what passes.

    Parameters
    ----------
    target_port
        The centre's port.
    target_host
        The centre's address.
    """

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._state: LinkState = "up"
        self.resets = 0  # connections reset by a cut
        self._lock = threading.Lock()
        self._pipes: set[_Pipe] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="demo-link", daemon=True)

    @property
    def url(self) -> str:
        """The address the edge is given for the centre."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> LinkState:
        return self._state

    def set_state(self, state: LinkState) -> None:
        """Change what passes; going ``down`` resets every open connection at once."""
        with self._lock:
            self._state = state
            pipes = list(self._pipes) if state == "down" else []
        for pipe in pipes:
            pipe.reset()

    def start(self) -> Link:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting and reset whatever is still open."""
        self._closed.set()
        self._listener.close()
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.reset(counted=False)

    def __enter__(self) -> Link:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._state == "down":
                _Pipe(self, client, None).reset()
                continue
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            pipe = _Pipe(self, client, server)
            with self._lock:
                self._pipes.add(pipe)
            pipe.start()

    def _forget(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.discard(pipe)


class _Pipe:
    """One relayed connection: two pump threads, and the reset that cuts it."""

    def __init__(self, link: Link, client: socket.socket, server: socket.socket | None) -> None:
        self.link = link
        self.client = client
        self.server = server
        self.dead = threading.Event()
        self._upload_bytes: int | None = None  # bytes of an upload seen since its mark
        self._tail = b""

    def start(self) -> None:
        assert self.server is not None
        for source, sink, upstream in ((self.client, self.server, True),
                                       (self.server, self.client, False)):  # fmt: skip
            threading.Thread(target=self._pump, args=(source, sink, upstream), daemon=True).start()

    def _cut_now(self, chunk: bytes) -> int | None:
        """With uploads cut: how much of ``chunk`` may still pass (None: all of it)."""
        if self._upload_bytes is None:
            seen = self._tail + chunk
            at = seen.find(_UPLOAD_MARK)
            self._tail = seen[-len(_UPLOAD_MARK) :]
            if at < 0:
                return None
            self._upload_bytes = 0
        room = _UPLOAD_ALLOWANCE - self._upload_bytes
        if len(chunk) < room:
            self._upload_bytes += len(chunk)
            return None
        return max(0, room)

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while not self.dead.is_set():
                chunk = source.recv(65536)
                if not chunk:
                    break
                state = self.link.state
                if state == "down":
                    self.reset()
                    return
                if state == "uploads-cut" and upstream:
                    room = self._cut_now(chunk)
                    if room is not None:
                        if room:
                            sink.sendall(chunk[:room])
                        self.reset()
                        return
                sink.sendall(chunk)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)  # pass a clean half-close on
        except OSError:
            pass
        self.link._forget(self)

    def reset(self, *, counted: bool = True) -> None:
        """Drop both sides with RST (SO_LINGER 0), as a broken link does."""
        if self.dead.is_set():
            return
        self.dead.set()
        if counted:
            with self.link._lock:
                self.link.resets += 1
        for sock in (self.client, self.server):
            if sock is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # Wake the other pump blocked in recv(): close() alone sends no RST then.
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass
        self.link._forget(self)
