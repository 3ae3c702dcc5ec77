"""The playground page: static HTML, CSS and JavaScript shipped as package data.

The page calls the public API exactly as a client would (``/v1/model``, ``/v1/extract``,
``/v1/extract/batch``, with the same API key), so these routes serve files only. Every
answer carries a strict Content-Security-Policy: scripts and styles from this service
only (no inline code), images from this service or the page's own blob: previews,
requests to this service only, and Trusted Types required so that no script can turn a
string into HTML.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Final

from fastapi import APIRouter, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

router = APIRouter(include_in_schema=False)

CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "form-action 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)
# The files change only with a deploy: the browser keeps them but asks each time whether
# they changed (a 304 from the ETag), so a new release is never hidden behind a stale page.
CACHE_CONTROL: Final = "no-cache"

_MEDIA_TYPES: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
PAGE: Final = "index.html"
ASSETS: Final = frozenset(_MEDIA_TYPES) - {PAGE}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    media_type: str
    etag: str


@cache
def static_file(name: str) -> StaticFile:
    """One of the shipped files, read from the package once per process."""
    body = (files("service.http") / "static" / name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return StaticFile(body, _MEDIA_TYPES[name], etag)


def _serve(name: str, request: Request) -> Response:
    shipped = static_file(name)
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": CACHE_CONTROL,
        "ETag": shipped.etag,
    }
    if shipped.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(shipped.body, media_type=shipped.media_type, headers=headers)


@router.get("/")
@router.get("/ui")
async def page(request: Request) -> Response:
    return _serve(PAGE, request)


@router.get("/ui/{name}")
async def asset(name: str, request: Request) -> Response:
    if name not in ASSETS:  # a fixed list: no path from the request reaches the file system
        raise StarletteHTTPException(404, f"no such file: /ui/{name}")
    return _serve(name, request)
