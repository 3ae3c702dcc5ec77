"""Florence-2's language model driven step by step: encoder once, decoder blocks after.

``generate`` moves every row of a batch by one token per forward pass, at the same
position. The jump-forward loop needs more: each row appends a block of its own length
at its own positions, and some cached entries (padding, rejected drafts) must be hidden
from later queries. This module is that decoder call, built from the model's own
modules and transformers' mask helpers so it computes what ``BartDecoder.forward`` does,
except that positions come per row and the key mask may have holes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask


class UnsupportedModelError(TypeError):
    """The model is not a Florence-2 with a BART-style decoder this loop can drive."""


def _cache_keyword(function: Any) -> str:
    """The name ``function`` takes the KV cache under: ``past_key_values`` in transformers
    5.17, ``cache`` in later releases (5.24 still maps the old name, with a deprecation
    warning, until 5.40).

    Both the mask helper and the decoder layers must get the name they declare: the layers
    also take ``**kwargs``, so a wrong name is swallowed there and the layer silently runs
    without its cache, attending to the new block alone.
    """
    parameters = inspect.signature(function).parameters  # follows the deprecation wrapper
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise UnsupportedModelError(f"{getattr(function, '__qualname__', function)} takes no KV cache")


_MASK_CACHE = _cache_keyword(create_causal_mask)


@dataclass(slots=True)
class EncoderState:
    hidden: torch.Tensor  # (B, S, D)
    mask: torch.Tensor  # (B, S)

    def select(self, index: torch.Tensor) -> EncoderState:
        return EncoderState(self.hidden.index_select(0, index), self.mask.index_select(0, index))


class Florence2Stepper:
    """Encoder and per-row-positioned decoder calls on a ``Florence2ForConditionalGeneration``."""

    def __init__(self, model: Any) -> None:
        try:
            self._core = model.model
            self._decoder = self._core.language_model.decoder
            self._lm_head = model.lm_head
            positions = self._decoder.embed_positions
            self._offset = int(positions.offset)
            self._max_positions = int(positions.weight.shape[0]) - self._offset
            self._layers = list(self._decoder.layers)
            self._layernorm = self._decoder.layernorm_embedding
        except AttributeError as exc:
            raise UnsupportedModelError(
                f"jump-forward decoding needs Florence-2's BART decoder: {exc}"
            ) from exc
        self._config = self._decoder.config
        self._layer_cache = (
            _cache_keyword(type(self._layers[0]).forward) if self._layers else "cache"
        )
        if getattr(self._decoder, "layer_norm", None) is not None:
            # mBART-style decoders end with a layer norm that BartDecoder does not have.
            raise UnsupportedModelError("decoders with a final layer norm are not supported")

    @property
    def max_positions(self) -> int:
        return self._max_positions

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> EncoderState:
        """The same computation ``generate`` runs once before decoding."""
        embeds = self._core.get_input_embeddings()(input_ids)
        features = self._core.get_image_features(pixel_values).pooler_output
        features = features.to(embeds.device, embeds.dtype)
        placeholders = self._core.get_placeholder_mask(
            input_ids, inputs_embeds=embeds, image_features=features
        )
        embeds = embeds.masked_scatter(placeholders, features)
        encoder = self._core.language_model.encoder
        hidden = encoder(attention_mask=attention_mask, inputs_embeds=embeds).last_hidden_state
        return EncoderState(hidden, attention_mask)

    def new_cache(self) -> EncoderDecoderCache:
        return EncoderDecoderCache(
            DynamicCache(config=self._config), DynamicCache(config=self._config)
        )

    def decode(
        self,
        cache: EncoderDecoderCache,
        encoder: EncoderState,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        key_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Append ``tokens`` (B, W) at ``positions`` (B, W); returns hidden states (B, W, D).

        ``key_mask`` (B, cached + W) is 1 where a cached or new entry may be attended to;
        causality within the block comes from the cache layout, as in ``generate``.
        """
        embeds = self._decoder.embed_tokens(tokens)
        # Entries that are masked out may carry any position; clamp so they stay in range.
        positions = positions.clamp(max=self._max_positions - 1) + self._offset
        position_embeds = torch.nn.functional.embedding(
            positions, self._decoder.embed_positions.weight
        )
        hidden = self._layernorm(embeds + position_embeds.to(embeds.device))
        self_mask = create_causal_mask(
            config=self._config,
            inputs_embeds=embeds,
            attention_mask=key_mask,
            **{_MASK_CACHE: cache.self_attention_cache},
        )
        cross_mask = create_bidirectional_mask(
            config=self._config,
            inputs_embeds=embeds,
            attention_mask=encoder.mask,
            encoder_hidden_states=encoder.hidden,
        )
        for layer in self._layers:
            hidden = layer(  # BartDecoderLayer returns just the hidden states
                hidden,
                self_mask,
                encoder.hidden,
                encoder_attention_mask=cross_mask,
                use_cache=True,
                **{self._layer_cache: cache},
            )
        return torch.as_tensor(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits (as ``generate`` computes them) for hidden states (N, D)."""
        logits: torch.Tensor = self._lm_head(hidden).float()
        return logits
