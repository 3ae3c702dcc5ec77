"""The playground page's routes without a browser: headers, the off switch, the shipped files."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from service.http.ui import ASSETS, PAGE
from tests.service.http.conftest import assert_problem, make_settings, serve

REPO = Path(__file__).resolve().parents[3]
STATIC = REPO / "service" / "http" / "static"


def _csp_directives(header: str) -> dict[str, list[str]]:
    parts = (part.split() for part in header.split(";") if part.strip())
    return {words[0]: words[1:] for words in parts}


@pytest.mark.parametrize("path", ["/", "/ui"])
async def test_the_page_is_served_with_a_strict_policy(path: str) -> None:
    async with serve() as served:
        response = await served.client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert b"Fashion Florence playground" in response.content
    csp = _csp_directives(response.headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["img-src"] == ["'self'", "blob:"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["require-trusted-types-for"] == ["'script'"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ],
)
async def test_assets_carry_their_type_and_revalidate_by_etag(name: str, media_type: str) -> None:
    async with serve() as served:
        first = await served.client.get(f"/ui/{name}")
        etag = first.headers["etag"]
        again = await served.client.get(f"/ui/{name}", headers={"If-None-Match": etag})
    assert first.status_code == 200
    assert first.headers["content-type"] == media_type
    assert first.content == (STATIC / name).read_bytes()
    assert first.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" in first.headers
    assert again.status_code == 304
    assert again.content == b""


@pytest.mark.parametrize("path", ["/ui/index.py", "/ui/..%2Fui.py", "/ui/%2e%2e", "/ui/APP.JS"])
async def test_only_the_shipped_files_are_served(path: str) -> None:
    async with serve() as served:
        response = await served.client.get(path)
    assert_problem(response, 404, "not_found")


@pytest.mark.parametrize("path", ["/", "/ui", "/ui/app.js"])
async def test_ui_disabled_answers_404(path: str) -> None:
    async with serve(make_settings(ui_enabled=False)) as served:
        response = await served.client.get(path)
        api = await served.client.get("/v1/model")
    assert_problem(response, 404, "not_found")
    assert api.status_code == 200  # the API itself is untouched


async def test_the_page_is_not_part_of_the_api_schema() -> None:
    async with serve() as served:
        paths = (await served.client.get("/openapi.json")).json()["paths"]
    assert not {"/", "/ui", "/ui/{name}"} & set(paths)


def test_every_static_file_ships_as_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service"]
    shipped = {path.name for path in STATIC.iterdir()}
    assert shipped == ASSETS | {PAGE}
    for name in shipped:
        relative = f"http/static/{name}"
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), f"{relative} not shipped"


class _Inline(HTMLParser):
    """Collects what the CSP would block: inline scripts, style attributes and elements,
    event-handler attributes, and anything referenced off this service."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked: list[str] = []
        self.references: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script" and not named.get("src"):
            self.blocked.append("inline <script>")
        if tag == "style":
            self.blocked.append("<style>")
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.blocked.append(f"{tag} {name}=")
            if name in {"src", "href"} and value is not None:
                self.references.append(value)


def test_the_page_has_no_inline_code_and_references_only_its_own_files() -> None:
    parser = _Inline()
    parser.feed((STATIC / PAGE).read_text())
    assert parser.blocked == []
    for reference in parser.references:
        assert not re.match(r"^[a-z]+:|^//", reference), reference
        if reference.startswith("ui/"):
            assert reference.removeprefix("ui/") in ASSETS


def test_the_script_never_parses_strings_as_html() -> None:
    script = (STATIC / "app.js").read_text()
    sinks = (
        r"\.(inner|outer)HTML\s*[+]?=|insertAdjacentHTML\(|document\.write|\beval\(|new Function"
    )
    assert re.findall(sinks, script) == []
