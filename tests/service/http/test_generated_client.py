"""A new integrator's round trip: a client generated with openapi-python-client from the
LIVE server's /openapi.json, imported and used for an upload, a URL (served by a real HTTP
server on 127.0.0.1), a batch of each kind, /v1/model and an error: every answer parses
into the generated typed models."""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.service.http.conftest import BLUE, RED
from tests.service.http.contract_server import run_server

pytestmark = pytest.mark.slow

PACKAGE = "ff_generated"  # not the real client's name, which is importable here too
IMAGES = {"/red.jpg": RED, "/blue.jpg": BLUE}


class _ImageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        image = IMAGES.get(self.path)
        if image is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(image)))
        self.end_headers()
        self.wfile.write(image)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with run_server() as url:
        yield url


@pytest.fixture(scope="module")
def generated(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The generator's package, built from the live spec and imported."""
    root = tmp_path_factory.mktemp("generated")
    spec = root / "openapi.json"
    spec.write_bytes(httpx.get(f"{base_url}/openapi.json", timeout=10).content)
    config = root / "config.yml"
    config.write_text(f"package_name_override: {PACKAGE}\npost_hooks: []\n")
    command = [sys.executable, "-m", "openapi_python_client", "generate", "--meta", "none"]
    command += ["--path", str(spec), "--config", str(config), "--output-path", str(root / PACKAGE)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def _file(image: bytes) -> Any:
    return _module("types").File(
        payload=io.BytesIO(image), file_name="shirt.jpg", mime_type="image/jpeg"
    )


def test_generated_client_round_trip(generated: ModuleType, base_url: str, image_host: str) -> None:
    models = _module("models")
    extract = _module("api.extract.extract_v1_extract_post")
    batch = _module("api.extract.extract_batch_v1_extract_batch_post")
    model = _module("api.operations.model_v1_model_get")
    client = generated.Client(base_url=base_url, raise_on_unexpected_status=True)

    # FakeBackend reads the mean red level: a red image is "red", a blue one "blue".
    upload = extract.sync(
        client=client, body=models.ExtractV1ExtractPostFilesBody(image=_file(RED))
    )
    assert isinstance(upload, models.ExtractResponse), upload
    assert upload.attributes.primary_color.value == "red"
    assert upload.request_id
    assert upload.timing_ms.total >= upload.timing_ms.inference >= 0

    by_url = extract.sync(
        client=client,
        body=models.ExtractV1ExtractPostJsonUrlRequest(url=f"{image_host}/blue.jpg"),
        min_tag_confidence=0.0,
    )
    assert isinstance(by_url, models.ExtractResponse), by_url
    assert by_url.attributes.primary_color.value == "blue"

    uploads = batch.sync(
        client=client,
        body=models.ExtractBatchV1ExtractBatchPostFilesBody(image=[_file(RED), _file(BLUE)]),
    )
    assert isinstance(uploads, models.BatchResponse), uploads
    colours = [item.attributes.primary_color.value for item in uploads.results]
    assert colours == ["red", "blue"]

    urls = batch.sync(
        client=client,
        body=models.ExtractBatchV1ExtractBatchPostJsonUrlBatchRequest(
            urls=[f"{image_host}/red.jpg", "ftp://example.com/a.jpg"]
        ),
    )
    assert isinstance(urls, models.BatchResponse), urls
    ok, failed = urls.results
    assert isinstance(ok, models.BatchSuccess)
    assert ok.attributes.primary_color.value == "red"
    assert isinstance(failed, models.BatchFailure)
    assert failed.error.code == "url_not_allowed"

    described = model.sync(client=client)
    assert isinstance(described, models.ModelResponse), described
    assert described.name == "fake"

    refused = extract.sync_detailed(
        client=client, body=models.ExtractV1ExtractPostJsonUrlRequest(url=f"{image_host}/nothing")
    )
    assert refused.status_code == 502
    assert isinstance(refused.parsed, models.Problem)
    assert refused.parsed.code == "url_fetch_failed"
    assert refused.headers["x-request-id"]
