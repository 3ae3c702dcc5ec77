"""The client distribution installs and works on its own: a fresh virtual environment with
``pip install ./clients/python`` and nothing else (no torch, no server), calling a live
service on 127.0.0.1 through the library and through its console script."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.live import _no_ff_environment, live_service

__all__ = ["_no_ff_environment"]  # the autouse fixture, shared

pytestmark = pytest.mark.slow

INSTALL_TIMEOUT_S = 300  # venv + pip from the registry: about 30 s on the project's CPUs
RUN_TIMEOUT_S = 60

CALL = """
import importlib.util, json, sys
import fashion_florence_client
from fashion_florence_client import Client
with Client(sys.argv[1]) as client:
    result = client.extract(open(sys.argv[2], "rb").read())
    model = client.model()
print(json.dumps({
    "category": result.attributes.category,
    "primary_color": result.attributes.primary_color,
    "model": model.name,
    "package": fashion_florence_client.__file__,
    "tqdm": importlib.util.find_spec("tqdm") is not None,
}))
"""


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
    return buffer.getvalue()


def clean_env(*, network: bool) -> dict[str, str]:
    """The caller's environment without what would point the fresh venv back at this
    checkout (PYTHONPATH) or send loopback calls through a proxy."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("FF_")}
    if not network:
        env = {k: v for k, v in env.items() if not k.lower().endswith("_proxy")}
    return env


def run(command: list[str], *, cwd: Path, timeout: float, network: bool = False) -> str:
    result = subprocess.run(
        command, cwd=cwd, env=clean_env(network=network), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{command[:3]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the client installed from a copy of its source (a build in place
    would leave build/ and egg-info in the checkout)."""
    root = tmp_path_factory.mktemp("client-install")
    source = root / "src"
    shutil.copytree(
        REPO_ROOT / "clients" / "python", source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )  # fmt: skip
    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=root, timeout=INSTALL_TIMEOUT_S)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    run([*pip, str(source)], cwd=root, timeout=INSTALL_TIMEOUT_S, network=True)
    return venv


def test_the_client_alone_has_no_torch_and_calls_a_live_service(
    client_venv: Path, tmp_path: Path
) -> None:
    python = str(client_venv / "bin" / "python")
    torch = subprocess.run(
        [python, "-c", "import torch"], cwd=tmp_path, env=clean_env(network=False),
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert torch.returncode != 0
    assert "No module named 'torch'" in torch.stderr
    image = tmp_path / "red.png"
    image.write_bytes(png((200, 30, 30)))
    with live_service() as (url, _):
        out = run([python, "-c", CALL, url, str(image)], cwd=tmp_path, timeout=RUN_TIMEOUT_S)
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["package"].startswith(str(client_venv))  # the installed copy, not ours
    assert answer["tqdm"] is False  # base dependencies: httpx and pydantic only
    assert (answer["category"], answer["primary_color"], answer["model"]) == ("top", "red", "fake")


def test_the_client_console_script_runs_a_catalogue_job(client_venv: Path, tmp_path: Path) -> None:
    images = {"red": tmp_path / "red.png", "blue": tmp_path / "blue.png"}
    images["red"].write_bytes(png((200, 30, 30)))
    images["blue"].write_bytes(png((30, 30, 200)))
    out = tmp_path / "results.jsonl"
    command = [str(client_venv / "bin" / "fashion-florence-client"), "extract",
               *(str(p) for p in images.values()), "--out", str(out)]  # fmt: skip
    with live_service() as (url, _):
        log = run([*command, "--server", url], cwd=tmp_path, timeout=RUN_TIMEOUT_S)
    records = {Path(r["item"]).stem: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {"red", "blue"}
    for color, record in records.items():
        assert record["model"]["name"] == "fake"
        assert record["attributes"]["category"] == "top"
        assert record["attributes"]["primary_color"] == color
        assert record["request_id"]
    assert "2/2 images" in log  # the plain progress line: tqdm is not installed
    assert "done 2, failed 0" in log
