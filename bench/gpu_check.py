"""Before a GPU run: does this Python import what the run needs, and is the device usable?

    python -m bench.gpu_check [--device cuda|cpu] [--skip-service] [--device-only]

``bench/gpu.sh`` runs it first, so a host without a package or without a working CUDA
device fails in seconds, with every missing piece named, instead of minutes into a run.
Exit status 0: all there; 2: something is missing (printed to stderr).
Only the standard library is imported at module level: the check must run where the
things it checks for are absent.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable, Sequence
from typing import Final

#: The sweep and the gpu-marked tests: the engine and what it imports.
RUNTIME: Final = (
    "torch", "transformers", "safetensors", "numpy", "PIL", "pydantic", "pydantic_settings",
    "xgrammar", "httpx", "prometheus_client",
    "fashion_florence_client", "model_store.build", "service.inference.engine", "bench.gpu",
)  # fmt: skip
#: The service suite on top (servers under load, the baselines).
SERVICE: Final = ("fastapi", "starlette", "uvicorn", "python_multipart", "bench.serving")
TESTS: Final = ("pytest",)


def missing_modules(names: Iterable[str]) -> list[str]:
    """``name: why`` for each module that does not import."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an ImportError, or a module that fails while importing
            missing.append(f"{name}: {type(exc).__name__}: {exc}")
    return missing


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot run the benchmark, or None; prints what it found."""
    try:
        import torch
    except ImportError as exc:
        return f"torch does not import: {exc}"
    if device == "cpu":
        print(f"device: cpu (torch {torch.__version__})")
        return None
    if not torch.cuda.is_available():
        return (
            f"torch {torch.__version__} sees no CUDA device (CUDA build: "
            f"{torch.version.cuda or 'no'}); use --dry-run for the CPU run"
        )
    try:
        name = torch.cuda.get_device_name(0)
        total = torch.cuda.get_device_properties(0).total_memory
        torch.ones(1, device="cuda").add_(1).item()  # a kernel actually runs
        bf16 = torch.cuda.is_bf16_supported()
    except RuntimeError as exc:
        return f"the CUDA device does not run a kernel: {exc}"
    print(
        f"device: {name}, {total / 2**30:.0f} GiB, bf16 {'yes' if bf16 else 'no'} "
        f"(torch {torch.__version__}, CUDA {torch.version.cuda})"
    )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--skip-service", action="store_true", help="FastAPI etc. not needed")
    parser.add_argument("--skip-tests", action="store_true", help="pytest not needed")
    parser.add_argument("--device-only", action="store_true", help="only torch and the device")
    args = parser.parse_args(argv)
    problems = []
    problem = device_problem(args.device)
    if problem is not None:
        problems.append(f"device: {problem}")
    if not args.device_only:
        needed = list(RUNTIME)
        needed += [] if args.skip_service else list(SERVICE)
        needed += [] if args.skip_tests else list(TESTS)
        problems += [f"missing {why}" for why in missing_modules(needed)]
    if problems:
        print("bench.gpu_check: cannot run:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    print("bench.gpu_check: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
