"""The pipeline's ``eval --model`` and ``train``'s validation, decoded by the serving engine.

model_store scores text and never imports the service; the ``fashion-florence`` command
hands it :func:`decoding_runs`, which builds predictors on the engine ``/v1/extract``
uses (loaded by :func:`service.serving.lifecycle.load_real_engine`, the engine's only
builder), so the figures come from the same grammar, output profile, parser and decode
loop as the service's answers, not from a copy of them:

* ``served``: the engine as configured by ``FF_*`` (constrained decoding by default); an
  item the service would refuse (no valid answer) is scored as invalid;
* ``unconstrained``: the same engine with ``FF_CONSTRAINED_DECODING=false``, the model's
  own greedy text as the paper scores it; where that text parses under the model's output
  profile it is scored as the attributes the service would answer (for ``paper-v1``, with
  its derived occasions), else as written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from model_store.loading import ModelLoadError
from model_store.predictors import SERVED, UNCONSTRAINED, Predictor, PredictorFactory
from service.backend import InferenceBackend, ItemOutcome
from service.settings import Settings


def _served_text(outcome: ItemOutcome) -> str | None:
    """What the service answers: the attributes, or nothing (an error response)."""
    if outcome.attributes is None:
        return None
    return outcome.attributes.to_target_text()


def _unconstrained_text(outcome: ItemOutcome) -> str | None:
    return _served_text(outcome) if outcome.attributes is not None else outcome.text


def _load(settings: Settings) -> InferenceBackend:
    from service.serving.lifecycle import load_real_engine

    try:
        return load_real_engine(settings)
    except RuntimeError as exc:  # e.g. a CUDA device asked for and absent
        raise ModelLoadError(str(exc)) from exc


def engine_predictor(settings: Settings, *, served: bool) -> PredictorFactory:
    """A factory that loads the engine for ``settings`` and answers batches with it."""
    judge = _served_text if served else _unconstrained_text

    def load() -> Predictor:
        backend = _load(settings)

        def predict(images: Sequence[Image.Image]) -> list[str | None]:
            outcomes = backend.run_batch([backend.preprocess(image) for image in images])
            return [judge(outcome) for outcome in outcomes]

        return predict

    return load


def decoding_runs(
    model: str,
    *,
    adapter: Path | None = None,
    device: str | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, PredictorFactory]:
    """``served`` then ``unconstrained`` for ``model`` (settings from ``FF_*`` otherwise).

    Raises ValueError (pydantic's ValidationError) at once for a bad setting, before any
    model is loaded.
    """
    overrides: dict[str, Any] = {"model_path": model, "adapter_path": adapter}
    if device is not None:
        overrides["device"] = device
    if max_new_tokens is not None:
        overrides["max_new_tokens"] = max_new_tokens
    if "FF_TORCH_THREADS" not in os.environ:
        # The service leaves half the cores to HTTP and decoding; here the model is alone.
        overrides["torch_threads"] = len(os.sched_getaffinity(0))
    served = Settings(**overrides)
    unconstrained = Settings(**{**overrides, "constrained_decoding": False})
    return {
        SERVED: engine_predictor(served, served=True),
        UNCONSTRAINED: engine_predictor(unconstrained, served=False),
    }
