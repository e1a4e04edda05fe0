"""CORS for the DICOMweb browsing routes, so a viewer served from another origin may call them.

A browser DICOMweb viewer (OHIF) on ``https://viewer.hospital.example`` may only read
``/dicomweb`` answers if they carry ``Access-Control-Allow-Origin`` for its origin, and
first sends a preflight ``OPTIONS`` (with no ``Authorization``) for any request carrying
a bearer key. Starlette's :class:`~starlette.middleware.cors.CORSMiddleware` answers the
preflight itself, before routing and so before the key dependency, and adds the headers
to the real answers, for the exact origins of ``MEDAI_CORS_ORIGINS`` only.

Only ``/dicomweb`` gets it: the viewer needs nothing else, and the rest of the service
(inference, the cookie-signed dashboard, keys) stays same-origin. No credentials mode:
viewers send bearer keys, never cookies.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["PREFIX", "DicomwebCORSMiddleware"]

PREFIX = "/dicomweb"
"""The routes CORS applies to (QIDO-RS, WADO-RS, STOW-RS)."""

_METHODS = ("GET", "POST", "OPTIONS")
_HEADERS = ("Authorization", "Accept", "Content-Type")
# Warning: QIDO-RS says "more results" and "matched on a removed attribute" in it.
_EXPOSED = ("Warning", "Content-Type")


class DicomwebCORSMiddleware:
    """Pure ASGI middleware: CORS for the listed origins under :data:`PREFIX`, nothing elsewhere.

    Parameters
    ----------
    app
        The application it wraps.
    origins
        Exact origins (``scheme://host[:port]``), as validated by
        :class:`medai.config.Settings` ``cors_origins``; never ``*``.
    """

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        if not origins or "*" in origins:  # Settings refuses both; a caller must not bypass it
            raise ValueError("DicomwebCORSMiddleware needs exact origins, never '*' or none")
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=list(_METHODS),
            allow_headers=list(_HEADERS),
            expose_headers=list(_EXPOSED),
            allow_credentials=False,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _under_prefix(scope):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _under_prefix(scope: Scope) -> bool:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):  # mounted under a prefix: the app's own path
        path = path[len(root) :]
    return path == PREFIX or path.startswith(PREFIX + "/")
