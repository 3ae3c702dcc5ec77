"""Florence-2's language model driven step by step: encoder once, decoder blocks after.

``generate`` moves every row of a batch by one token per forward pass, at the same
position. The jump-forward loop needs more: each row appends a block of its own length
at its own positions. This module is that decoder call, built from the model's own
modules so it computes what ``BartDecoder.forward`` does, except that each row has its own
offset: row ``b``'s block starts at entry ``offsets[b]`` of a :class:`SlotCache`, which holds
that row's valid entries compactly, so the self-attention mask is "key ``k`` is visible to
block position ``j`` iff ``k <= offsets[b] + j``", built on the device from ``offsets``
alone. The cross-attention mask depends only on the encoder's padding: it is built once
per batch, when the encoder runs.

Masks are built here rather than by transformers' helpers, because those read the masks
back to the host to decide whether a mask can be skipped (``padding_mask.all()``), a
device sync per call. The attention implementations supported are those whose mask is a
plain 4-D tensor: ``sdpa`` (boolean, True = attend) and ``eager`` (additive).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

from service.inference.decoding.kv_slots import SlotCache

#: Attention implementations whose mask is a 4-D tensor this module can build itself.
SUPPORTED_ATTENTION = frozenset({"sdpa", "eager"})


class UnsupportedModelError(TypeError):
    """The model is not a Florence-2 with a BART-style decoder this loop can drive."""


def _cache_keyword(function: Any) -> str:
    """The name ``function`` takes the KV cache under: ``past_key_values`` in transformers
    5.17, ``cache`` in later releases (5.24 still maps the old name, with a deprecation
    warning, until 5.40).

    The decoder layers must get the name they declare: they also take ``**kwargs``, so a
    wrong name is swallowed there and the layer silently runs without its cache, attending
    to the new block alone.
    """
    parameters = inspect.signature(function).parameters  # follows the deprecation wrapper
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise UnsupportedModelError(f"{getattr(function, '__qualname__', function)} takes no KV cache")


@dataclass(slots=True)
class EncoderState:
    hidden: torch.Tensor  # (B, S, D)
    mask: torch.Tensor  # (B, S)
    #: The cross-attention mask, (B, 1, 1, S): built once per batch, broadcast over queries.
    cross_mask: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> EncoderState:
        cross = None if self.cross_mask is None else self.cross_mask.index_select(0, index)
        return EncoderState(
            self.hidden.index_select(0, index), self.mask.index_select(0, index), cross
        )

    def extend(self, other: EncoderState) -> EncoderState:
        """These rows, then ``other``'s (rows joining a running set; same prompt length)."""
        cross = None
        if self.cross_mask is not None and other.cross_mask is not None:
            cross = torch.cat((self.cross_mask, other.cross_mask))
        return EncoderState(
            torch.cat((self.hidden, other.hidden)), torch.cat((self.mask, other.mask)), cross
        )


def _as_attention_mask(allowed: torch.Tensor, implementation: str, dtype: torch.dtype) -> Any:
    """A boolean "may attend" mask in the form ``implementation`` takes."""
    if implementation == "sdpa":
        return allowed
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)


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
        self._attention = str(getattr(self._config, "_attn_implementation", None) or "eager")
        if self._attention not in SUPPORTED_ATTENTION:
            raise UnsupportedModelError(
                f"jump-forward decoding builds sdpa or eager masks, not {self._attention!r}"
            )
        self._layer_cache = (
            _cache_keyword(type(self._layers[0]).forward) if self._layers else "cache"
        )
        # A cross-attention cache built from the config costs about 0.4 ms (it walks the
        # config for layer types); where every layer is a plain one, as in BART, the lazy
        # default cache is the same thing.
        self._plain_cross = all(
            type(layer) is DynamicLayer for layer in DynamicCache(config=self._config).layers
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
        cross = attention_mask[:, None, None, :].bool()
        return EncoderState(
            hidden, attention_mask, _as_attention_mask(cross, self._attention, hidden.dtype)
        )

    def new_cache(self, batch: int, capacity: int) -> EncoderDecoderCache:
        """Self-attention: ``capacity`` preallocated entries per row (:class:`SlotCache`);
        cross-attention: the encoder's keys and values, computed at the first step."""
        cross = DynamicCache() if self._plain_cross else DynamicCache(config=self._config)
        return EncoderDecoderCache(SlotCache(batch, capacity), cross)

    def add_rows(self, cache: EncoderDecoderCache, count: int) -> EncoderDecoderCache:
        """The cache with ``count`` empty rows after the others. The cross-attention keys
        and values start again (the next step computes them for every row from the
        extended encoder outputs): this decoder call never computes them per row."""
        self_cache = cache.self_attention_cache
        if not isinstance(self_cache, SlotCache):
            raise TypeError("add_rows() needs the cache new_cache() built")
        self_cache.add_rows(count)
        cross = DynamicCache() if self._plain_cross else DynamicCache(config=self._config)
        return EncoderDecoderCache(self_cache, cross)

    @staticmethod
    def keep_rows(
        cache: EncoderDecoderCache, encoder: EncoderState, index: torch.Tensor
    ) -> EncoderState:
        """Drop every row but ``index`` (on the device) from the cache and the encoder."""
        # EncoderDecoderCache.batch_select_indices accepts only dynamic caches.
        cache.self_attention_cache.batch_select_indices(index)
        cache.cross_attention_cache.batch_select_indices(index)
        return encoder.select(index)

    def decode(
        self,
        cache: EncoderDecoderCache,
        encoder: EncoderState,
        tokens: torch.Tensor,
        slots: torch.Tensor,
        offsets: torch.Tensor,
        length: int,
    ) -> torch.Tensor:
        """Feed ``tokens`` (B, W); returns hidden states (B, W, D).

        Row ``b``'s valid entries are ``tokens[b, :n]``, written at cache slots and
        positions ``offsets[b] + j``; ``slots`` (B, W) holds those slots and the cache's
        sink for padding. ``length`` is the number of cache entries any valid query can
        see (``max(offsets[b] + n_b)``). All tensors on the model's device.
        """
        self_cache = cache.self_attention_cache
        if not isinstance(self_cache, SlotCache):
            raise TypeError("decode() needs the cache new_cache() built")
        self_cache.place(slots, length)
        embeds = self._decoder.embed_tokens(tokens)
        # Padding goes to the sink slot, which may lie past the last position; clamp it.
        positions = slots.clamp(max=self._max_positions - 1) + self._offset
        position_embeds = torch.nn.functional.embedding(
            positions, self._decoder.embed_positions.weight
        )
        hidden = self._layernorm(embeds + position_embeds.to(embeds.device))
        keys = torch.arange(length, device=tokens.device)
        queries = offsets[:, None] + torch.arange(tokens.shape[1], device=tokens.device)
        allowed = (keys[None, None, :] <= queries[:, :, None]).unsqueeze(1)  # (B, 1, W, L)
        self_mask = _as_attention_mask(allowed, self._attention, hidden.dtype)
        for layer in self._layers:
            hidden = layer(  # BartDecoderLayer returns just the hidden states
                hidden,
                self_mask,
                encoder.hidden,
                encoder_attention_mask=encoder.cross_mask,
                use_cache=True,
                **{self._layer_cache: cache},
            )
        return torch.as_tensor(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits (as ``generate`` computes them) for hidden states (N, D)."""
        logits: torch.Tensor = self._lm_head(hidden).float()
        return logits
