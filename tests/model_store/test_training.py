"""``train``: loss masking, schedule, best-by-val, exact resume, manifest, merge parity."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from model_store.data.build import SplitConfig, build_dataset
from model_store.data.dataset import read_split
from model_store.data.rules import load_rules
from model_store.data.sources import read_table
from model_store.data.synthesize import write_synthetic_source
from model_store.evaluation.predict import open_rgb, predict_records
from model_store.loading import load_model
from model_store.lora import ADAPTER_WEIGHTS, peft_wrapping
from model_store.manifest import TRAINING_MANIFEST_NAME, read_training_manifest, verify_directory
from model_store.training.batches import learning_rate_at, micro_batches
from model_store.training.config import TrainConfig
from model_store.training.encoding import TrainingExample, encode_batch
from model_store.training.loop import CHECKPOINT_DIR, TrainingError, train
from service.cli import main as cli_main

# train and merge must not print peft's deprecation warning at users (model_store.lora.peft_wrapping).
pytestmark = pytest.mark.filterwarnings("error:.*is_gradient_checkpointing:FutureWarning")

SHORT = TrainConfig(
    preset="all-linear",
    learning_rate=5e-3,
    batch_size=4,
    grad_accum=2,
    max_steps=6,
    eval_every=2,
    val_generate=8,
    device="cpu",
)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small-data")
    table = write_synthetic_source(root / "source", n=60, seed=1, faulty_rows=False)
    build_dataset(
        read_table(table, root / "source" / "images", load_rules()),
        root / "data",
        source={"format": "table", "synthetic": True},
        split=SplitConfig(0.2, 0.2, seed=0),
    )
    return root / "data"


@pytest.fixture(scope="module")
def short_run(
    small_data: Path, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("runs") / "adapter"
    assert train(small_data, str(demo_model_dir), out, SHORT, progress=False) is not None
    return out


def test_loss_covers_exactly_the_target_tokens(demo_model_dir: Path, small_data: Path) -> None:
    loaded = load_model(str(demo_model_dir))
    records = read_split(small_data, "train")[:3]
    examples = [TrainingExample(open_rgb(r.image), r.target) for r in records]
    batch = encode_batch(loaded.processor, loaded.manifest.prompt, examples)
    tokenizer = loaded.processor.tokenizer
    prompt_ids = set(tokenizer(loaded.manifest.prompt, add_special_tokens=False)["input_ids"])
    for row, record in zip(batch["labels"].tolist(), records, strict=True):
        kept = [t for t in row if t != -100]
        # <s> target </s>, nothing else: no prompt, no image tokens, no padding
        assert kept == tokenizer(record.target.to_target_text())["input_ids"]
        assert row[len(kept) :] == [-100] * (len(row) - len(kept))
        assert tokenizer.image_token_id not in kept
    assert not prompt_ids <= {t for row in batch["labels"].tolist() for t in row}


def test_schedule_warms_up_then_decays_to_zero() -> None:
    config = TrainConfig(learning_rate=1.0, warmup_ratio=0.1)
    rates = [learning_rate_at(step, 100, config) for step in range(100)]
    assert rates[0] == pytest.approx(0.1)
    assert rates[9] == pytest.approx(1.0)
    assert max(rates) == pytest.approx(1.0)
    assert rates[-1] == pytest.approx(1 / 90)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))


def test_data_order_depends_only_on_seed_and_position() -> None:
    config = TrainConfig(batch_size=3, seed=5)
    stream = micro_batches(10, config, 0)
    first = [next(stream) for _ in range(12)]
    resumed = micro_batches(10, config, 5)
    assert [next(resumed) for _ in range(7)] == first[5:]
    epoch_zero = sorted(i for epoch, batch in first if epoch == 0 for i in batch)
    assert epoch_zero == list(range(10))  # an epoch sees every item once


def test_adapter_manifest_records_data_rules_and_hyperparameters(
    short_run: Path, small_data: Path, demo_model_dir: Path
) -> None:
    manifest = read_training_manifest(short_run)
    assert manifest is not None
    report = json.loads((small_data / "report.json").read_text(encoding="utf-8"))
    assert manifest.data["data_version"] == report["data_version"]
    assert manifest.data["rules_version"] == "imat-collapse-v2"
    assert manifest.hyperparameters["rank"] == 16
    assert manifest.hyperparameters["alpha"] == 32
    assert manifest.hyperparameters["dropout"] == 0.05
    assert manifest.preset == "all-linear"
    assert manifest.base_weights == verify_directory(demo_model_dir).weights
    history = manifest.metrics["history"]
    assert isinstance(history, list)
    assert [entry["step"] for entry in history] == [2.0, 4.0, 6.0]
    best = min(history, key=lambda entry: entry["val_loss"])
    assert manifest.metrics["best_step"] == int(best["step"])
    assert manifest.metrics["best_val_loss"] == best["val_loss"]
    # Called without the service's validator: plain generate's text, named for what it is.
    assert "val" not in manifest.metrics
    val = manifest.metrics["val_unconstrained"]
    assert isinstance(val, dict)
    assert set(val) >= {"n", "valid_json_rate", "primary_color_accuracy"}
    assert not (short_run / CHECKPOINT_DIR).exists()  # removed once the run completed


def test_a_second_run_into_the_same_directory_is_refused(
    short_run: Path, small_data: Path, demo_model_dir: Path
) -> None:
    with pytest.raises(TrainingError, match="already holds a run"):
        train(small_data, str(demo_model_dir), short_run, SHORT, progress=False)


def test_interrupted_and_resumed_equals_uninterrupted(
    short_run: Path, small_data: Path, demo_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "resumed"
    assert train(small_data, str(demo_model_dir), out, SHORT, progress=False, stop_after_steps=3) is None  # fmt: skip
    assert (out / CHECKPOINT_DIR).is_dir()
    assert not (out / TRAINING_MANIFEST_NAME).exists()
    other = SHORT.model_copy(update={"learning_rate": 1e-3})
    with pytest.raises(TrainingError, match="another run"):
        train(small_data, str(demo_model_dir), out, other, resume=True, progress=False)
    manifest = train(small_data, str(demo_model_dir), out, SHORT, resume=True, progress=False)
    assert manifest is not None
    expected = read_training_manifest(short_run)
    assert expected is not None
    assert manifest.metrics["history"] == expected.metrics["history"]
    resumed, straight = load_file(out / ADAPTER_WEIGHTS), load_file(short_run / ADAPTER_WEIGHTS)
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


def test_augmented_training_resumes_exactly_and_differs_from_plain(
    short_run: Path, small_data: Path, demo_model_dir: Path, tmp_path: Path
) -> None:
    config = SHORT.model_copy(update={"augment": True})
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(small_data, str(demo_model_dir), straight, config, progress=False) is not None
    assert train(small_data, str(demo_model_dir), resumed, config, progress=False, stop_after_steps=3) is None  # fmt: skip
    with pytest.raises(TrainingError, match="another run"):  # augmenting is part of the run
        train(small_data, str(demo_model_dir), resumed, SHORT, resume=True, progress=False)
    assert train(small_data, str(demo_model_dir), resumed, config, resume=True, progress=False)
    weights, again = load_file(straight / ADAPTER_WEIGHTS), load_file(resumed / ADAPTER_WEIGHTS)
    plain = load_file(short_run / ADAPTER_WEIGHTS)
    assert all(torch.equal(weights[key], again[key]) for key in weights)
    assert not all(torch.equal(weights[key], plain[key]) for key in weights)


def test_merged_model_reproduces_the_adapter_predictions(
    short_run: Path, small_data: Path, demo_model_dir: Path, tmp_path: Path
) -> None:
    merged_dir = tmp_path / "merged"
    assert cli_main(["model", "merge", str(demo_model_dir), str(short_run), str(merged_dir)]) == 0
    assert (merged_dir / TRAINING_MANIFEST_NAME).is_file()  # provenance travels with it
    records = read_split(small_data, "test")[:8]
    base = load_model(str(demo_model_dir))
    with peft_wrapping():
        adapter_model = PeftModel.from_pretrained(base.model, str(short_run))
    adapter_model.train(False)
    merged = load_model(str(merged_dir))
    prompt = base.manifest.prompt
    from_adapter = predict_records(adapter_model, base.processor, prompt, records)
    from_merged = predict_records(merged.model, merged.processor, prompt, records)
    assert from_merged == from_adapter
    assert len(set(from_adapter.values())) >= 1


def test_cli_train_reports_failures(
    small_data: Path, demo_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    code = cli_main(
        ["train", "--data", str(empty), "--base", str(demo_model_dir), "--out", str(tmp_path / "x")]
    )
    assert code == 1
    assert capsys.readouterr().out.startswith("FAILED:")
    shutil.rmtree(tmp_path / "x", ignore_errors=True)


def test_cli_pipeline_end_to_end(
    tmp_path: Path, demo_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stable command lines: synth -> data build -> train -> model merge -> eval."""
    source, data = tmp_path / "source", tmp_path / "data"
    adapter, merged, report_dir = tmp_path / "adapter", tmp_path / "merged", tmp_path / "eval"
    assert cli_main(["data", "synth", "--out", str(source), "--n", "40", "--seed", "2"]) == 0
    capsys.readouterr()
    build = ["data", "build", "--format", "table", "--table", str(source / "table.csv")]
    build += ["--images", str(source / "images"), "--out", str(data)]
    assert cli_main([*build, "--val-ratio", "0.2", "--test-ratio", "0.2"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["rules_version"] == "imat-collapse-v2"
    assert built["kept"]["total"] + built["dropped"]["total"] == 40
    train_args = [
        "train",
        "--data",
        str(data),
        "--base",
        str(demo_model_dir),
        "--out",
        str(adapter),
    ]
    train_args += ["--preset", "decoder", "--max-steps", "2", "--batch-size", "4"]
    train_args += ["--grad-accum", "1", "--val-generate", "2", "--no-progress", "--device", "cpu"]
    assert cli_main([*train_args, "--augment"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["steps"] == 2
    # The validation is decoded by the serving engine: under the schema grammar every
    # answer is valid, which two steps of training cannot teach the model's own text.
    assert metrics["val"]["n"] == 2
    assert metrics["val"]["valid_json_rate"] == 1.0
    assert metrics["val_unconstrained"]["n"] == 2
    trained = read_training_manifest(adapter)
    assert trained is not None
    assert trained.hyperparameters["augment"] is True
    assert cli_main(["model", "merge", str(demo_model_dir), str(adapter), str(merged)]) == 0
    capsys.readouterr()
    evaluate = ["eval", "--test", str(data / "test.jsonl"), "--model", str(merged)]
    assert cli_main([*evaluate, "--out", str(report_dir), "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["figures"]) == {"served", "unconstrained"}
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    test_items = len(read_split(data, "test"))
    assert report["n"] == report["unconstrained"]["n"] == test_items
    assert report["headline"] == "served"
    assert report["valid_json_rate"] == printed["served"]["valid_json_rate"] == 1.0
    assert printed["unconstrained"]["valid_json_rate"] == report["unconstrained"]["valid_json_rate"]
    for name in ("predictions.jsonl", "predictions-unconstrained.jsonl"):
        lines = (report_dir / name).read_text(encoding="utf-8").splitlines()
        assert len(lines) == test_items
    markdown = (report_dir / "report.md").read_text(encoding="utf-8")
    assert "Headline: **served**" in markdown
    assert "## unconstrained" in markdown
    assert (report_dir / "confusion_category.png").is_file()
    assert cli_main(["data", "build", "--format", "imat-json", *build[4:]]) == 1
    assert "needs --annotations and --labels" in capsys.readouterr().out
