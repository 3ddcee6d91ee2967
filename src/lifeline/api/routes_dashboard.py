"""The dashboard: one page at ``/dashboard`` and its static files at ``/dashboard/static/…``.

Nothing here is in the OpenAPI schema (these are files, not API operations). The page needs no
login to be fetched (it holds no data); everything it shows comes from the API with the cookie
session. Only files shipped in :mod:`lifeline.dashboard` are served, looked up by exact name.
"""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import RedirectResponse, Response

import lifeline.dashboard

router = APIRouter(include_in_schema=False)

ROOT = Path(lifeline.dashboard.__file__).resolve().parent
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# the page loads only its own files and talks only to its own origin; no inline script or style
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",  # revalidate: a new release shows at once
}


@functools.cache
def _static_files() -> dict[str, Path]:
    """The servable files by URL name (``app.js``, ``views/overview.js``), found once."""
    static = ROOT / "static"
    return {
        path.relative_to(static).as_posix(): path
        for path in static.rglob("*")
        if path.is_file() and path.suffix in _TYPES
    }


def _file(path: Path) -> Response:
    # the routes are plain functions: FastAPI runs them in its thread pool, off the event loop
    return Response(path.read_bytes(), media_type=_TYPES[path.suffix], headers=_HEADERS)


@router.get("/dashboard")
def dashboard() -> Response:
    return _file(ROOT / "index.html")


@router.get("/dashboard/")
def dashboard_slash() -> Response:
    return RedirectResponse("/dashboard", status_code=status.HTTP_308_PERMANENT_REDIRECT)


@router.get("/dashboard/static/{name:path}")
def static_file(name: str) -> Response:
    path = _static_files().get(name)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
    return _file(path)
