"""The request-body limits: 413 past the size limit, 408 for a body that stalls or trickles.

A declared ``Content-Length`` over the limit is refused before any of the body is read.
Bodies without one (chunked uploads) or with one that lies are counted as they are
received, and refused as soon as they pass the limit, so no request can make the
service hold more than ``max_request_bytes`` of its body in memory. The refusal is the
domain error :class:`~medai.errors.RequestTooLarge`, answered (413, connection closed) by
:mod:`medai.serving.errors` like every other error.

:func:`read_whole_body` also bounds the time a body may take: it is given up (408) when
nothing arrives for ``body_idle_timeout`` seconds, and when the whole of it has not
arrived within ``body_timeout`` seconds, so a body trickled a byte at a time cannot hold
a connection, its memory and a graceful stop for ever.

The middleware also records whether a request's body was received whole
(:func:`medai.serving.errors.body_received`): an error answered before that closes the
connection.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medai.errors import RequestTooLarge
from medai.serving.errors import BODY_RECEIVED, CLOSE_CONNECTION, error_response, send_error

__all__ = ["BodyLimitMiddleware", "read_whole_body"]

logger = logging.getLogger(__name__)


async def read_whole_body(
    request: Request,
    *,
    max_bytes: int,
    idle_timeout: float,
    too_large: RequestTooLarge,
    what: str,
    total_timeout: float | None = None,
) -> bytes:
    """The whole body in memory, or an HTTP error: nothing is used of a body not received whole.

    Parameters
    ----------
    request
        The request whose body to read.
    max_bytes
        Largest body accepted; ``too_large`` is raised past it.
    idle_timeout
        Seconds the client may send nothing before the upload is given up (408).
    too_large
        The error to raise past ``max_bytes`` (its message names the setting).
    what
        What the body is, for the log (``"STOW-RS upload"``).
    total_timeout
        Seconds the whole body may take to arrive, however steadily it comes (408);
        None for no limit.

    Raises
    ------
    starlette.exceptions.HTTPException
        400 for an upload cut short, 408 for one that stalled or took longer than
        ``total_timeout``; each closes the connection.
    medai.errors.RequestTooLarge
        ``too_large``, for a body over ``max_bytes``.
    """
    chunks: list[bytes] = []
    size = 0
    stream = request.stream().__aiter__()
    clock = asyncio.get_running_loop().time
    deadline = clock() + (total_timeout if total_timeout is not None else float("inf"))
    while True:
        left = deadline - clock()
        wait = min(idle_timeout, left)
        try:
            chunk = await asyncio.wait_for(anext(stream), max(wait, 0.0))
        except StopAsyncIteration:
            return b"".join(chunks)
        except ClientDisconnect:
            logger.info("a %s was cut short; nothing from it was recorded", what)
            raise HTTPException(
                400, detail="the upload was cut short; send it again", headers=CLOSE_CONNECTION
            ) from None
        except TimeoutError:
            if left < idle_timeout:  # the deadline, not a silence, ran out
                logger.info(
                    "a %s took longer than %.0f s; nothing from it was recorded",
                    what,
                    total_timeout,
                )
                raise HTTPException(
                    408,
                    detail=f"the upload did not arrive whole within {total_timeout:.0f} s "
                    "(MEDAI_BODY_TIMEOUT); send it again over a faster link, or in smaller "
                    "requests",
                    headers=CLOSE_CONNECTION,
                ) from None
            logger.info("a %s stalled for %.0f s; nothing from it was recorded", what, idle_timeout)
            raise HTTPException(
                408,
                detail=f"the upload stalled for {idle_timeout:.0f} s; send it again",
                headers=CLOSE_CONNECTION,
            ) from None
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)


class BodyLimitMiddleware:
    """Pure ASGI middleware enforcing ``max_bytes`` on request bodies.

    Parameters
    ----------
    app
        The wrapped application.
    max_bytes
        Largest request body accepted.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        scope[BODY_RECEIVED] = declared == 0 or not _has_body(scope)
        if declared == -1:
            response = error_response(scope, 400, "the Content-Length header is not a number")
            await response(scope, receive, send)
            return
        if declared is not None and declared > self.max_bytes:
            await send_error(scope, receive, send, RequestTooLarge(self.max_bytes))
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body read: the app's handler answers it
                    # (the except below covers a read outside the route).
                    raise RequestTooLarge(self.max_bytes)
                if not message.get("more_body", False):
                    scope[BODY_RECEIVED] = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except RequestTooLarge as exc:
            if started:
                raise
            await send_error(scope, receive, send, exc)


def _has_body(scope: Scope) -> bool:
    return any(name in (b"content-length", b"transfer-encoding") for name, _ in scope["headers"])


def _content_length(scope: Scope) -> int | None:
    """The declared body length; None when absent, -1 when malformed."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return -1
            return length if length >= 0 else -1
    return None
