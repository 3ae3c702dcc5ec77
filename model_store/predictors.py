"""What a model answers for a batch of images, as text to score, and who builds it.

Light on purpose (no torch): the CLI imports it at start. The service's CLI hands
model_store a :class:`ServedDecoding`, which builds predictors on the serving engine, so
``eval`` and ``train``'s validation score what the service answers without model_store
importing the service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Protocol

from PIL import Image

#: Per image of a batch, the text to score (None: no answer, scored as invalid).
Predictor = Callable[[Sequence[Image.Image]], list[str | None]]
#: Loads a model and returns its predictor. Called when its run starts, so two runs over
#: one model hold it once at a time, not twice.
PredictorFactory = Callable[[], Predictor]

#: The runs ``eval --model`` and ``train``'s validation report, and what each one means.
SERVED: Final = "served"
UNCONSTRAINED: Final = "unconstrained"
RUN_MEANINGS: Final = {
    SERVED: "what /v1/extract answers: the serving engine with the schema grammar and the "
    "model's output profile (the headline figures)",
    UNCONSTRAINED: "the model's own greedy text without the grammar, as the paper scores it "
    "(valid-JSON rate and the rest)",
}


class ServedDecoding(Protocol):
    """Predictor factories for a model, keyed by run (:data:`SERVED` first, then
    :data:`UNCONSTRAINED`), decoding as the service does. The service's CLI provides it."""

    def __call__(
        self,
        model: str,
        *,
        adapter: Path | None = None,
        device: str | None = None,
        max_new_tokens: int | None = None,
    ) -> dict[str, PredictorFactory]: ...
