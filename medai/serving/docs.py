"""The OpenAPI document and the API browser (Swagger UI), behind a key like every route.

- ``GET /openapi.json`` and ``GET /docs``: any valid key as ``Authorization: Bearer``
  (tools, schemathesis, a browser extension that adds the header).
- ``GET /dashboard/docs`` and ``GET /dashboard/openapi.json``: for a browser signed in to
  the dashboard (its HttpOnly cookie is scoped to ``/dashboard``); without the cookie,
  the sign-in page. The "Authorize" button of the browser takes a key for "Try it out".

:func:`build_openapi` adds the 401/403 answers to every route that checks a key (those
FastAPI marks with the bearer scheme of :func:`medai.serving.deps.authenticate`).

The browser's code comes from the service itself, not a CDN: a hospital network often
reaches no CDN, and a page that loads scripts from elsewhere runs whatever that host
serves. ``GET /docs/assets/{name}`` answers the Swagger UI files (JavaScript, CSS,
favicon) that the ``fastapi-offline`` package ships (a current Swagger UI 5, which reads
FastAPI's OpenAPI 3.1; ``swagger-ui-bundle``'s 4.x does not). They are open, like any
site's static files: public code, no data; only the listed files, so no path reaches
anything else.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from medai.serving.auth import Caller
from medai.serving.dashboard import cookie_caller
from medai.serving.deps import CallerDep, EngineDep, ServiceDep, authenticate

__all__ = ["ASSETS_PATH", "build_openapi", "router"]

router = APIRouter(include_in_schema=False)

ASSETS_PATH: Final = "/docs/assets"
# name -> media type of the Swagger UI files the pages load (fastapi-offline's static/).
_ASSETS: Final = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}
_LISTED: Final = ", ".join(sorted(_ASSETS))

_ERROR = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"detail": {"type": "string"}},
                "required": ["detail"],
            }
        }
    }
}
_REFUSALS = {
    "401": {"description": "No key, or an unknown or revoked key"} | _ERROR,
    "403": {"description": "The key's role may not do this"} | _ERROR,
    "429": {
        "description": "Too many failed authentications from this address "
        "(MEDAI_AUTH_FAILURES_PER_MINUTE): try again after Retry-After seconds"
    }
    | _ERROR,
}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with the refusals of keyed routes (cached on the app).

    The bearer scheme comes from :func:`medai.serving.deps.authenticate`'s dependency, so
    the document marks exactly the routes that check a key; each gets its 401 and 403.
    """
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and operation.get("security"):
                responses = operation.setdefault("responses", {})
                for status, response in _REFUSALS.items():
                    responses.setdefault(status, response)
    app.openapi_schema = schema
    return schema


def _swagger(openapi_url: str) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title="medai API",
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
        swagger_ui_parameters={"persistAuthorization": False, "tryItOutEnabled": False},
    )
    page.headers["Cache-Control"] = "no-store"
    page.headers["X-Frame-Options"] = "DENY"
    return page


@router.get(ASSETS_PATH + "/{name}")
def docs_asset(name: str) -> FileResponse:
    """One Swagger UI file, from the installed package (open: public code, no data)."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, detail=f"no such file; the API browser's files are {_LISTED}")
    path = files("fastapi_offline").joinpath("static", name)
    # The package is a plain directory in site-packages (a wheel is never imported zipped).
    return FileResponse(
        str(path),
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/openapi.json")
def openapi_document(request: Request, caller: CallerDep) -> JSONResponse:
    """The OpenAPI document, for any valid key."""
    return JSONResponse(build_openapi(request.app))


def _docs_caller(request: Request, engine: EngineDep) -> Caller:
    try:
        return authenticate(request, engine)
    except HTTPException as exc:
        if exc.status_code == 401:
            exc.detail = (
                f"{exc.detail}; in a browser, sign in at /dashboard/login and open /dashboard/docs"
            )
        raise


@router.get("/docs")
def docs(caller: Annotated[Caller, Depends(_docs_caller)]) -> HTMLResponse:
    """The API browser, for a client that sends a bearer key."""
    return _swagger("/openapi.json")


def _signed_in(request: Request, service: ServiceDep) -> bool:
    return cookie_caller(request, service) is not None


@router.get("/dashboard/docs")
def dashboard_docs(request: Request, service: ServiceDep) -> Response:
    """The API browser for a signed-in dashboard user; the sign-in page otherwise."""
    if not _signed_in(request, service):
        return RedirectResponse("/dashboard/login", status_code=303)
    return _swagger("/dashboard/openapi.json")


@router.get("/dashboard/openapi.json")
def dashboard_openapi(request: Request, service: ServiceDep) -> JSONResponse:
    """The OpenAPI document for the API browser of a signed-in dashboard user."""
    if not _signed_in(request, service):
        raise HTTPException(
            401,
            detail="sign in at /dashboard/login first, or send 'Authorization: Bearer <key>'"
            " to /openapi.json",
        )
    return JSONResponse(build_openapi(request.app))
