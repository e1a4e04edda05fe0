"""The request-body size limit, for every route: 413 before or while the body arrives.

A declared ``Content-Length`` over the limit is refused before any of the body is read.
Bodies without one (chunked uploads) or with one that lies are counted as they are
received, and refused as soon as they pass the limit, so no request can make the
service hold more than ``max_request_bytes`` of its body in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CLOSE_CONNECTION", "BodyLimitMiddleware", "RequestTooLarge", "read_whole_body"]

logger = logging.getLogger(__name__)
# The rest of an unread body cannot be skipped cheaply: end the connection after the answer.
CLOSE_CONNECTION = {"Connection": "close"}


class RequestTooLarge(HTTPException):
    """A request body over the limit (HTTP 413)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413,
            detail=f"the request body is larger than the {max_bytes}-byte limit "
            "(MEDAI_MAX_REQUEST_BYTES): send fewer instances per request",
            # The rest of the body is not read: end the connection after the answer.
            headers=CLOSE_CONNECTION,
        )


async def read_whole_body(
    request: Request,
    *,
    max_bytes: int,
    idle_timeout: float,
    too_large: Callable[[], HTTPException],
    what: str,
) -> bytes:
    """The whole body in memory, or an HTTP error: nothing is used of a body not received whole.

    Parameters
    ----------
    request
        The request whose body to read.
    max_bytes
        Largest body accepted; ``too_large()`` is raised past it.
    idle_timeout
        Seconds the client may send nothing before the upload is given up (408).
    too_large
        The 413 error to raise (its message names the setting that limits it).
    what
        What the body is, for the log (``"STOW-RS upload"``).

    Raises
    ------
    starlette.exceptions.HTTPException
        400 for an upload cut short, 408 for one that stalled, ``too_large()`` for one
        over the limit; each closes the connection.
    """
    chunks: list[bytes] = []
    size = 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream), idle_timeout)
        except StopAsyncIteration:
            return b"".join(chunks)
        except ClientDisconnect:
            logger.info("a %s was cut short; nothing from it was recorded", what)
            raise HTTPException(
                400, detail="the upload was cut short; send it again", headers=CLOSE_CONNECTION
            ) from None
        except TimeoutError:
            logger.info("a %s stalled for %.0f s; nothing from it was recorded", what, idle_timeout)
            raise HTTPException(
                408,
                detail=f"the upload stalled for {idle_timeout:.0f} s; send it again",
                headers=CLOSE_CONNECTION,
            ) from None
        size += len(chunk)
        if size > max_bytes:
            raise too_large()
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
        if declared == -1:
            await _json(scope, receive, send, 400, "the Content-Length header is not a number")
            return
        if declared is not None and declared > self.max_bytes:
            error = RequestTooLarge(self.max_bytes)
            await _json(scope, receive, send, error.status_code, error.detail)
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body read: the app's handler turns it into
                    # the JSON 413 (the except below covers a read outside the route).
                    raise RequestTooLarge(self.max_bytes)
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
            await _json(scope, receive, send, exc.status_code, exc.detail)


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


async def _json(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=status, headers=CLOSE_CONNECTION)
    await response(scope, receive, send)
