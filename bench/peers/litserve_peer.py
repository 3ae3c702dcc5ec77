"""LitServe serving the model, as LitServe's docs write a batched image API.

    python -m bench.peers.litserve_peer --model-dir DIR --port P [--style same|users]

``LitAPI(max_batch_size, batch_timeout, api_path)`` with ``setup`` / ``decode_request`` /
``batch`` / ``predict`` / ``unbatch`` / ``encode_response``, and ``LitServer`` on CPU with
one worker; the upload is read from the form as LitServe's image examples do
(``request["image"].file.read()``), a bad one raised as ``HTTPException`` (its docs' way
to answer an error). Readiness: LitServe's ``/health``. Runs in ``.venv-peers/litserve``.
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation
# at run time to choose how to parse the request (a string would make it a query field).

import argparse
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import HTTPException, Request

from bench.peers.model import (
    BATCH_WAIT_S,
    MAX_BATCH,
    BadImageError,
    SameEngine,
    UsersModel,
    open_image,
)
from bench.servers import LOOPBACK


class SameEngineAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, model_dir: Path) -> None:
        super().__init__(
            max_batch_size=MAX_BATCH, batch_timeout=BATCH_WAIT_S, api_path="/v1/extract"
        )
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        self.model = SameEngine(self.model_dir)

    def decode_request(self, request: Request) -> Any:
        try:
            return self.model.prepare(request["image"].file.read())
        except BadImageError as exc:
            raise HTTPException(422, detail=str(exc)) from exc

    def batch(self, inputs: list[Any]) -> list[Any]:
        return inputs

    def predict(self, x: list[Any]) -> list[dict[str, Any]]:
        return self.model.run(x)

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


class UsersAPI(SameEngineAPI):
    def setup(self, device: str) -> None:
        self.users = UsersModel(self.model_dir)

    def decode_request(self, request: Request) -> Any:
        try:
            return open_image(request["image"].file.read())
        except BadImageError as exc:
            raise HTTPException(422, detail=str(exc)) from exc

    def predict(self, x: list[Any]) -> list[dict[str, Any]]:
        return self.users.run(x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--style", choices=["same", "users"], default="same")
    args = parser.parse_args()
    api = (SameEngineAPI if args.style == "same" else UsersAPI)(args.model_dir)
    # timeout: LitServe's per-request timeout (default 30 s), raised so a 3x overload point
    # measures queueing rather than this server's own 504s.
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=120)
    server.run(host=LOOPBACK, port=args.port, num_api_servers=1, log_level="warning",
               generate_client_file=False)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
