"""Print the shipped demo model's answer to one photo, as ``POST /v1/extract`` gives it.

    python scripts/example_answer.py ../shared/data/clothing-small/validation/shirt/PHOTO.jpg

The service runs in-process (the same app, engine and settings as ``make run``, with the
shipped demo model; no port is opened). README.md's example answer is this command's
output, and ``tests/test_docs.py`` checks that it stays so (request id and timings
aside, which change every run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from service.http.app import create_app
from service.serving.lifecycle import Phase
from service.settings import Settings


async def answer(data: bytes, name: str) -> dict[str, Any]:
    """The response body for one image (its bytes and file name)."""
    # The shipped demo whatever FF_MODEL_PATH/FF_DEMO_MODEL say: the README shows its answer.
    app = create_app(Settings(model_path=None, adapter_path=None, demo_model="trained"))
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        await runtime.wait_ready()
        if runtime.phase != Phase.READY:
            raise SystemExit(f"the service did not start: {runtime.error}")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://local") as client:
            files = {"image": (name, data, "image/jpeg")}
            response = await client.post("/v1/extract", files=files)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("photo", type=Path, help="an image file")
    args = parser.parse_args()
    body = asyncio.run(answer(args.photo.read_bytes(), args.photo.name))
    print(json.dumps(body, indent=1))


if __name__ == "__main__":
    main()
