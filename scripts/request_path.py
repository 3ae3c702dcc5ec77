"""List the project modules one ``/v1/extract`` upload runs through, in first-call order.

The walk docs/architecture.md describes, measured: an in-process service on the
random-weight demo model (built in a temporary folder, about a second), one PNG upload,
and a trace of every Python function call on every thread the request uses (the batcher's
engine thread and the preprocessing pool start with the first request, so they are
traced too). Model loading and warm-up happen before tracing starts.

    PYTHONPATH=.:clients/python .venv/bin/python scripts/request_path.py
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory() as demo_dir:
        os.environ.update(
            FF_DEMO_MODEL="random", FF_DEMO_MODEL_DIR=demo_dir, FF_CACHE_ENABLED="false"
        )
        seen = asyncio.run(_trace_one_upload())
    for name in seen:
        print(name)
    print(f"{len(seen)} modules")
    return 0


async def _trace_one_upload() -> list[str]:
    import httpx
    from PIL import Image

    from service.http.app import create_app

    seen: dict[str, None] = {}

    def tracer(frame: FrameType, event: str, _arg: Any) -> None:
        path = frame.f_code.co_filename
        ours = path.startswith(str(ROOT)) and "/.venv/" not in path and path != __file__
        if event == "call" and ours:
            seen.setdefault(str(Path(path).relative_to(ROOT)))

    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(png, "PNG")
    app = create_app()
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://local") as client,
    ):
        await app.state.runtime.wait_ready()
        sys.settrace(tracer)
        threading.settrace(tracer)
        try:
            response = await client.post("/v1/extract", files={"image": ("a.png", png.getvalue())})
        finally:
            sys.settrace(None)
            threading.settrace(None)  # type: ignore[arg-type,unused-ignore]
    response.raise_for_status()
    return list(seen)


if __name__ == "__main__":
    sys.exit(main())
