"""The compute bound: FLOPs per image, and how far measured images/s are from it.

    python -m bench.flops --model-dir DIR [--tokens 80] [--peak-tflops 790] [--img-s X]

Bounds are given against both named peaks in ``PEAKS`` (790 measured, 989 datasheet) and
against ``--peak-tflops``.

What is counted (``torch.utils.flop_counter.FlopCounterMode``, one image, batch 1):

- ``vision``: the DaViT tower and the projector (``get_image_features``);
- ``encoder``: the BART encoder over the image tokens and the prompt;
- ``decoder``: one single-token decoder pass per output token, as greedy ``generate``
  runs them (KV cache; the first pass also projects the encoder states into every layer's
  cross-attention keys and values), each followed by the LM head.

FlopCounterMode counts matrix multiplies, convolutions and attention (2 FLOPs per
multiply-add); norms, activations, softmax and the grammar mask are not counted, nor is
anything a real run does beyond the tokens it keeps. Jump-forward decoding runs fewer,
wider passes over the same tokens; the bound here charges every mode the same per token,
so the fraction of the bound compares modes fairly.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

#: What a large bf16 matmul measured on H100/H200: the bound the issue uses. It is not
#: the datasheet peak, so figures are also given against that (below).
DEFAULT_PEAK_FLOPS: Final = 790e12
#: H100/H200 SXM datasheet dense bf16 tensor-core peak (no sparsity).
SPEC_PEAK_FLOPS: Final = 989e12
#: Both bounds by the name every report uses for them.
PEAKS: Final = {"measured_matmul_790": DEFAULT_PEAK_FLOPS, "spec_dense_bf16_989": SPEC_PEAK_FLOPS}
#: Decoder passes counted one by one; later ones are extrapolated (see profile_model).
COUNTED_DECODER_STEPS: Final = 3
#: The issue's figures: GFLOP per image at 768 px and 80 output tokens.
ISSUE_FIGURES: Final[dict[str, dict[str, float]]] = {
    "florence-2-base": {"gflop_per_image": 462.0, "vision_fraction": 0.82, "tokens": 80},
    "florence-2-large": {"gflop_per_image": 1757.0, "tokens": 80},
}


@dataclass(frozen=True, slots=True)
class FlopProfile:
    """FLOPs for one image; ``decoder_steps[i]`` is the ``i``-th decoder pass."""

    vision: int
    encoder: int
    decoder_steps: tuple[int, ...]

    def decoder(self, tokens: float) -> float:
        """Decoder FLOPs for ``tokens`` output tokens (fractional: a mean over images).
        Past the counted steps, the last step's cost is extrapolated."""
        whole = int(tokens)
        counted = sum(self.decoder_steps[:whole])
        last = self.decoder_steps[-1] if self.decoder_steps else 0
        extra = max(whole - len(self.decoder_steps), 0) * last
        step = self.decoder_steps[whole] if whole < len(self.decoder_steps) else last
        return counted + extra + (tokens - whole) * step

    def per_image(self, tokens: float) -> float:
        return self.vision + self.encoder + self.decoder(tokens)

    def summary(self, tokens: float) -> dict[str, float]:
        total = self.per_image(tokens)
        return {
            "tokens": tokens,
            "gflop_per_image": total / 1e9,
            "vision_gflop": self.vision / 1e9,
            "encoder_gflop": self.encoder / 1e9,
            "decoder_gflop": self.decoder(tokens) / 1e9,
            "vision_fraction": self.vision / total,
        }


def _cpu_sdpa_flops(
    query_shape: Sequence[int],
    key_shape: Sequence[int],
    value_shape: Sequence[int],
    *_: Any,
    **__: Any,
) -> int:
    """torch's formula for its CUDA kernels: scores (Q K^T) plus output (P V), no causal
    discount."""
    *batch, queries, head_dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * queries * keys * (head_dim + value_dim)


#: torch counts the CUDA attention kernels but not the CPU one; without this, attention
#: would vanish from CPU counts and the same model would count less there than on a GPU.
CPU_ATTENTION: Final = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def _counted(work: Callable[[], Any]) -> tuple[int, Any]:
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        result = work()
    return int(counter.get_total_flops()), result


@torch.inference_mode()
def profile_model(
    model: Any,
    processor: Any,
    prompt: str,
    *,
    steps: int,
    counted_steps: int | None = COUNTED_DECODER_STEPS,
) -> FlopProfile:
    """Count one image through ``model`` (any device/dtype: counts depend on shapes only).

    Only the first ``counted_steps`` decoder passes are counted (``None``: all of them).
    After the first, which also projects the encoder states for cross-attention, a pass
    costs a constant plus a term linear in its position (self-attention over one more
    cached key each step), so two counted passes fix every later one exactly; counting
    each of ~250 passes under FlopCounterMode cost tens of seconds of a GPU run's budget.
    """
    from service.inference.decoding.florence import Florence2Stepper

    first = next(model.parameters())
    size = int(processor.image_processor.size["height"])
    inputs = processor(text=[prompt], images=[Image.new("RGB", (size, size))], return_tensors="pt")
    ids = inputs["input_ids"].to(first.device)
    mask = torch.ones_like(ids)
    pixels = inputs["pixel_values"].to(first.device, first.dtype)
    stepper = Florence2Stepper(model)
    vision, _ = _counted(lambda: model.model.get_image_features(pixels))
    encode_total, encoder = _counted(lambda: stepper.encode(ids, mask, pixels))
    costs: list[int] = []
    counted = steps if counted_steps is None else min(steps, max(counted_steps, 3))
    cache = stepper.new_cache(1, counted + 2)
    for position in range(counted):
        token = torch.full((1, 1), 5, dtype=torch.long, device=ids.device)
        where = torch.full_like(token, position)
        cost, _ = _counted(
            # Called at once, so the loop variables are the current ones.
            lambda: stepper.logits(
                stepper.decode(cache, encoder, token, where, where[:, 0], position + 1)[:, -1]  # noqa: B023
            )
        )
        costs.append(cost)
    if counted < steps:
        slope = costs[-1] - costs[-2]
        costs += [costs[-1] + slope * k for k in range(1, steps - counted + 1)]
    return FlopProfile(vision, encode_total - vision, tuple(costs))


def profile_directory(model_dir: Path, *, steps: int, device: str = "cpu") -> FlopProfile:
    """Load ``model_dir`` (no checksum pass: counting trusts the bytes) and profile it."""
    from model_store.loading import load_model
    from service.inference.engine import resolve_device, resolve_dtype

    target = resolve_device(device)
    loaded = load_model(
        str(model_dir),
        device=target,
        dtype=resolve_dtype("auto", target),
        verify_checksums=False,
    )
    return profile_model(loaded.model, loaded.processor, loaded.manifest.prompt, steps=steps)


def bound_img_s(flops_per_image: float, peak_flops: float = DEFAULT_PEAK_FLOPS) -> float:
    """Images/s if every FLOP ran at the device's dense peak."""
    return peak_flops / flops_per_image


def fraction_of_bound(
    measured_img_s: float, flops_per_image: float, peak_flops: float = DEFAULT_PEAK_FLOPS
) -> float:
    return measured_img_s / bound_img_s(flops_per_image, peak_flops)


def compare_with_issue(shape: str, profile: FlopProfile) -> dict[str, Any] | None:
    """Our count at the issue's token count beside the issue's figure, if it has one."""
    issue = ISSUE_FIGURES.get(shape)
    if issue is None:
        return None
    ours = profile.summary(issue["tokens"])
    return {
        "issue": issue,
        "measured": ours,
        "ratio": ours["gflop_per_image"] / issue["gflop_per_image"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--tokens", type=float, default=80.0, help="output tokens per image")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--peak-tflops", type=float, default=DEFAULT_PEAK_FLOPS / 1e12)
    parser.add_argument("--img-s", type=float, default=None, help="a measured images/s")
    parser.add_argument("--shape", default=None, help="compare with the issue's figure")
    args = parser.parse_args()
    profile = profile_directory(args.model_dir, steps=int(args.tokens) + 1, device=args.device)
    report: dict[str, Any] = {"profile": profile.summary(args.tokens)}
    flops = profile.per_image(args.tokens)
    report["bound_img_s"] = bound_img_s(flops, args.peak_tflops * 1e12)
    report["bounds_img_s"] = {name: bound_img_s(flops, peak) for name, peak in PEAKS.items()}
    if args.img_s is not None:
        report["fraction_of_bound"] = fraction_of_bound(args.img_s, flops, args.peak_tflops * 1e12)
        report["fractions"] = {
            name: fraction_of_bound(args.img_s, flops, peak) for name, peak in PEAKS.items()
        }
    if args.shape is not None:
        report["issue"] = compare_with_issue(args.shape, profile)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
