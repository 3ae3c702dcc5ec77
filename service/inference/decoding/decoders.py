"""The three ways the engine can decode, behind one call: plain, constrained, jump-forward.

``constrained`` is transformers' greedy ``generate`` with the grammar mask as a logits
processor: the reference. ``jump-forward`` produces the same tokens with fewer decoder
passes (tests hold it to that). ``plain`` is unconstrained greedy decoding, kept for
diagnosis (``FF_CONSTRAINED_DECODING=false``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import torch

from model_store.profiles import PROJECT_PROFILE, OutputProfile
from service.inference.decoding.constrained import GrammarLogitsProcessor
from service.inference.decoding.florence import Florence2Stepper, UnsupportedModelError
from service.inference.decoding.grammar import SchemaGrammar, compile_schema_grammar
from service.inference.decoding.jump_forward import JumpForwardDecoder

log = logging.getLogger(__name__)


class DecodingMode(StrEnum):
    PLAIN = "plain"
    CONSTRAINED = "constrained"
    JUMP_FORWARD = "jump-forward"


class DecodingConfigError(ValueError):
    """The decoding settings cannot work with this model; the message says what to change."""


@dataclass(frozen=True, slots=True)
class SpecialIds:
    start: int  # the decoder start token (Florence-2: </s>)
    bos: int  # what a trained model emits first (<s>); the grammar begins after it
    eos: int
    pad: int

    @classmethod
    def of(cls, model: Any, tokenizer: Any) -> SpecialIds:
        start = model.generation_config.decoder_start_token_id
        if start is None:
            start = model.config.text_config.decoder_start_token_id
        return cls(
            start=int(start),
            bos=int(tokenizer.bos_token_id),
            eos=int(tokenizer.eos_token_id),
            pad=int(tokenizer.pad_token_id),
        )


@dataclass(frozen=True, slots=True)
class Decoded:
    """One image's tokens after the decoder start, through the first ``</s>`` if any."""

    tokens: list[int]
    #: Constrained modes: the log-probability of every token after ``<s>`` (aligned with
    #: ``tokens[1:]``) under the grammar-renormalized distribution. None in plain mode.
    logprobs: list[float] | None
    forward_passes: int


class Decoder(Protocol):
    mode: DecodingMode
    grammar: SchemaGrammar | None

    def decode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> list[Decoded]: ...


def _until_stop(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row


class GenerateDecoder:
    """Greedy ``generate``: plain, or constrained when given a grammar."""

    def __init__(
        self, model: Any, ids: SpecialIds, max_new_tokens: int, grammar: SchemaGrammar | None
    ) -> None:
        self._model = model
        self._ids = ids
        self._max_new_tokens = max_new_tokens
        self.grammar = grammar
        self.mode = DecodingMode.PLAIN if grammar is None else DecodingMode.CONSTRAINED

    def decode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> list[Decoded]:
        common: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values,
            "num_beams": 1,
            "do_sample": False,
            # Florence-2 ships no_repeat_ngram_size=3, which forbids the repeated `","`
            # and `":"` that every JSON object needs.
            "no_repeat_ngram_size": 0,
        }
        if self.grammar is None:
            sequences = self._model.generate(**common, max_new_tokens=self._max_new_tokens)
            rows = [_until_stop(r, self._ids.eos) for r in sequences[:, 1:].tolist()]
            return [Decoded(r, None, len(r)) for r in rows]
        batch = input_ids.shape[0]
        processor = GrammarLogitsProcessor(self.grammar, batch, input_ids.device)
        prefix = torch.tensor([[self._ids.start, self._ids.bos]], device=input_ids.device)
        sequences = self._model.generate(
            **common,
            decoder_input_ids=prefix.expand(batch, -1),
            max_new_tokens=self._max_new_tokens - 1,  # <s> is given, and counts
            logits_processor=[processor],
            # Checkpoints may force </s> at the length limit, which the grammar does not
            # allow there; only an explicit keyword argument overrides the model's config.
            forced_eos_token_id=None,
            forced_bos_token_id=None,
        )
        processor.finish(sequences)
        rows = [_until_stop(r, self._ids.eos) for r in sequences[:, 1:].tolist()]
        return [
            Decoded(r, lp[: len(r) - 1], len(r) - 1)
            for r, lp in zip(rows, processor.logprobs, strict=True)
        ]


class JumpForward:
    """Adapts :class:`JumpForwardDecoder` to :class:`Decoder`."""

    mode = DecodingMode.JUMP_FORWARD

    def __init__(self, decoder: JumpForwardDecoder, grammar: SchemaGrammar) -> None:
        self.decoder = decoder
        self.grammar: SchemaGrammar | None = grammar

    def decode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> list[Decoded]:
        rows = self.decoder.decode(input_ids, attention_mask, pixel_values)
        return [Decoded(r.tokens, r.logprobs, r.forward_passes) for r in rows]


def build_decoder(
    model: Any,
    tokenizer: Any,
    mode: DecodingMode,
    *,
    max_new_tokens: int,
    profile: OutputProfile = PROJECT_PROFILE,
) -> Decoder:
    """Compile the grammar of the text ``profile``'s model writes (constrained modes; once
    per loaded model) and build the decoder."""
    ids = SpecialIds.of(model, tokenizer)
    if mode is DecodingMode.PLAIN:
        return GenerateDecoder(model, ids, max_new_tokens, None)
    grammar = compile_schema_grammar(
        tokenizer, int(model.config.text_config.vocab_size), profile=profile
    )
    log.info("schema grammar compiled in %.1f ms", grammar.compile_ms)
    needed = grammar.max_output_tokens + 2  # one token per byte, plus <s> and </s>
    if max_new_tokens < needed:
        raise DecodingConfigError(
            f"FF_MAX_NEW_TOKENS={max_new_tokens} is too small for constrained decoding: the "
            f"schema's longest output can take {needed} tokens with this tokenizer (one per "
            f"byte, plus <s> and </s>); set FF_MAX_NEW_TOKENS>={needed}, or "
            "FF_CONSTRAINED_DECODING=false"
        )
    if ids.eos not in grammar.stop_token_ids:
        raise DecodingConfigError(f"the grammar stops on {grammar.stop_token_ids}, not {ids.eos}")
    if mode is DecodingMode.JUMP_FORWARD:
        try:
            stepper = Florence2Stepper(model)
        except UnsupportedModelError as exc:
            log.warning("%s; using constrained generate instead (same output)", exc)
        else:
            if max_new_tokens > stepper.max_positions:
                raise DecodingConfigError(
                    f"FF_MAX_NEW_TOKENS={max_new_tokens} exceeds the decoder's "
                    f"{stepper.max_positions} positions"
                )
            decoder = JumpForwardDecoder(
                stepper, grammar, tokenizer,
                start_id=ids.start, bos_id=ids.bos, pad_id=ids.pad,
                max_new_tokens=max_new_tokens,
            )  # fmt: skip
            return JumpForward(decoder, grammar)
    return GenerateDecoder(model, ids, max_new_tokens, grammar)
