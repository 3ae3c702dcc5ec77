"""Partial labels: the data format's "unknown", the loss that skips it, the scores that do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from fashion_florence_client.schema import FashionAttributes
from model_store.data.dataset import Record, data_version, read_jsonl, write_jsonl
from model_store.evaluation.metrics import evaluate
from model_store.loading import load_model
from model_store.training.batches import Examples
from model_store.training.encoding import TrainingExample, encode_batch, value_spans

SHIRT = FashionAttributes(
    category="top", primary_color="red", material="cotton",
    style_tags=["casual"], occasion_tags=["everyday"],
)  # fmt: skip


def _photo(tmp_path: Path) -> str:
    path = tmp_path / "p.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return str(path)


def test_unknown_fields_are_absent_from_the_file_and_distinct_from_null(tmp_path: Path) -> None:
    record = Record(
        id="a", image=_photo(tmp_path), target=SHIRT.model_copy(update={"material": None}),
        unknown=("material", "style_tags"), weak=("primary_color",),
    )  # fmt: skip
    known_null = Record(id="b", image=record.image, target=SHIRT.model_copy(update={"material": None}))  # fmt: skip
    write_jsonl(tmp_path / "d.jsonl", [record, known_null])
    lines = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert "material" not in lines[0]["target"]
    assert "style_tags" not in lines[0]["target"]
    assert lines[0]["unknown"] == ["material", "style_tags"]
    assert lines[0]["weak"] == ["primary_color"]
    assert lines[1]["target"]["material"] is None
    assert "unknown" not in lines[1]
    back = read_jsonl(tmp_path / "d.jsonl")
    assert not back[0].known("material")
    assert back[1].known("material")
    assert back[0].label_key != back[1].label_key  # unknown material is not "no material"
    assert data_version({"train": [record]}) != data_version({"train": [known_null]})


def test_a_field_both_labelled_and_unknown_is_refused(tmp_path: Path) -> None:
    line = {"id": "a", "image": "x.png", "target": SHIRT.model_dump(), "unknown": ["material"]}
    (tmp_path / "d.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(Exception, match="both labelled and marked unknown"):
        read_jsonl(tmp_path / "d.jsonl")
    with pytest.raises(ValueError, match="every field is unknown"):
        Record(id="a", image="x", target=SHIRT, unknown=tuple(SHIRT.model_dump()))  # type: ignore[arg-type]


def test_value_spans_cover_each_value() -> None:
    text, spans = value_spans(SHIRT)
    assert text == SHIRT.to_target_text()
    assert text[slice(*spans["primary_color"])] == '"red"'
    assert text[slice(*spans["style_tags"])] == '["casual"]'


def _lm_head_gradient(
    demo_model_dir: Path, examples: list[TrainingExample]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The batch, and d(loss)/d(logits) through the real model's forward and loss."""
    loaded = load_model(str(demo_model_dir))
    batch = encode_batch(loaded.processor, loaded.manifest.prompt, examples)
    captured: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        output.retain_grad()
        captured.append(output)

    handle = loaded.model.lm_head.register_forward_hook(keep)
    try:
        loaded.model(**batch).loss.backward()
    finally:
        handle.remove()
    grad = captured[0].grad
    assert grad is not None
    return batch, grad


def test_an_unknown_field_contributes_no_loss(demo_model_dir: Path, tmp_path: Path) -> None:
    image = Image.open(_photo(tmp_path)).convert("RGB")
    partial = TrainingExample(image, SHIRT, unknown=("primary_color", "occasion_tags"))
    batch, grad = _lm_head_gradient(demo_model_dir, [TrainingExample(image, SHIRT), partial])
    tokenizer_text, spans = value_spans(SHIRT)
    loaded = load_model(str(demo_model_dir))
    offsets = loaded.processor.tokenizer(tokenizer_text, return_offsets_mapping=True)["offset_mapping"]  # fmt: skip
    hidden = [
        i for i, (a, b) in enumerate(offsets)
        if b > a and any(a < stop and b > start for start, stop in (spans["primary_color"], spans["occasion_tags"]))
    ]  # fmt: skip
    assert hidden, "the colour and occasion values have tokens"
    per_token = grad.abs().sum(-1)  # (batch, positions): how much each label moves the loss
    for position in hidden:
        assert per_token[1, position] == 0, f"unknown value token {position} has loss"
        assert per_token[0, position] > 0, "the same token is taught when known"
    taught = (batch["labels"][1] != -100).nonzero().flatten().tolist()
    assert taught
    assert all(per_token[1, p] > 0 for p in taught)
    assert set(taught).isdisjoint(hidden)
    # The decoder still reads the whole text (placeholders included), not <pad> holes.
    assert batch["decoder_input_ids"][1, 1:].tolist() == batch["decoder_input_ids"][0, 1:].tolist()


def test_the_trainer_passes_unknown_fields_on(tmp_path: Path) -> None:
    record = Record(id="a", image=_photo(tmp_path), target=SHIRT, unknown=("material",))
    assert Examples([record]).batch([0])[0].unknown == ("material",)


def test_each_field_is_scored_only_where_labelled() -> None:
    truth = {"a": SHIRT, "b": SHIRT}
    wrong_colour = SHIRT.model_copy(update={"primary_color": "blue"}).to_target_text()
    outputs = {"a": SHIRT.to_target_text(), "b": wrong_colour}
    full = evaluate(truth, outputs)
    partial = evaluate(truth, outputs, {"b": ("primary_color", "material")})
    assert full["primary_color_accuracy"] == 0.5
    assert partial["primary_color_accuracy"] == 1.0  # b's colour is unknown, not wrong
    assert partial["denominators"] == {
        "category": 2, "primary_color": 1, "material": 1, "style_tags": 2, "occasion_tags": 2,
    }  # fmt: skip
    assert partial["valid_only"]["denominators"]["primary_color"] == 1
    assert sum(map(sum, partial["confusion"]["primary_color"]["matrix"])) == 1
    assert partial["per_class"]["material"]["cotton"]["support"] == 1
