"""Oscar / Oscar+ (VinVL): BERT over text, object tags and detector regions.

Paper: "Oscar: Object-Semantics Aligned Pre-training for Vision-Language Tasks", Li et al., ECCV 2020
(arXiv 2004.06165); Oscar+ in "VinVL: Revisiting Visual Representations in Vision-Language Models",
Zhang et al., CVPR 2021. Original code: microsoft/Oscar at 266075f (pytorch_transformers 1.0).

The file reads top to bottom: text and region embeddings -> self-attention -> layer -> encoder ->
`OscarModel` -> the task heads (pre-training, classification/VQA/GQA, retrieval, NLVR2,
captioning with `generate()`).

What differs from the original, on purpose:
- one forward per purpose; decoding goes through `GenerationMixin` with a real key/value cache that
  is re-ordered across beams (the original's cached "fast" path forgot to re-order its history);
- `OscarForImageCaptioning.generate(..., original_decoding=True)` reproduces the original greedy and
  beam search exactly (scores, hypothesis bookkeeping, the `[SEP]` written at `max_length`);
- SDPA attention next to the eager one, gradient checkpointing, typed outputs, clear input errors.
What is kept on purpose: the -10000 additive mask constant (finite in fp16/bf16, so the all-masked
caption-padding rows of the seq2seq mask stay finite), exact GELU, LayerNorm eps 1e-12.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, StaticCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithPast,
    SequenceClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .configuration_oscar import OscarConfig


logger = logging.get_logger(__name__)

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
# The generation loop hands the cache to the model under `cache` in recent releases and under
# `past_key_values` before; the model returns it under the name the installed loop reads back.
try:
    from transformers.generation.utils import ALL_CACHE_NAMES as _ALL_CACHE_NAMES
except ImportError:  # transformers < 5.2x
    _ALL_CACHE_NAMES = ["past_key_values"]
_CACHE_NAME = "cache" if "cache" in _ALL_CACHE_NAMES else "past_key_values"

# The original's additive mask value (see module docstring).
MASK_VALUE = -10000.0


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


# `OscarModel` returns transformers' own output: last_hidden_state (batch, text_len + num_regions,
# hidden) for text tokens then regions, pooler_output (batch, hidden) = tanh(dense([CLS])), the
# per-layer hidden states and attentions, and the key/value cache when `use_cache` is on.
OscarModelOutput = BaseModelOutputWithPoolingAndCrossAttentions


@dataclass
class OscarForPreTrainingOutput(ModelOutput):
    """Output of `OscarForPreTraining`.

    Args:
        loss: masked-token loss + contrastive loss (unweighted sum, as the original).
        masked_lm_loss: cross entropy over the labelled text/tag positions.
        contrastive_loss: cross entropy of the 2- or 3-way contrastive head.
        prediction_logits: (batch, text_len + num_regions, vocab); region rows are never labelled.
            With `sparse_prediction=True`: (num_labelled, vocab), the labelled positions only.
        contrastive_logits: (batch, num_contrast_classes).
    """

    loss: torch.FloatTensor | None = None
    masked_lm_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    prediction_logits: torch.FloatTensor | None = None
    contrastive_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class OscarImageTextRetrievalOutput(ModelOutput):
    """Output of `OscarForImageTextRetrieval`.

    Args:
        loss: 2-way cross entropy (0 = not matching, 1 = matching).
        logits: (batch, 2).
        scores: (batch,), softmax probability of "matching", the score the original ranks by.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class OscarCaptioningOutput(CausalLMOutputWithPast):
    """Output of `OscarForImageCaptioning`: transformers' `CausalLMOutputWithPast`, whose cache
    field carries the name the installed generation loop reads (`cache`, or `past_key_values`
    before transformers 5.2x).

    Args:
        loss: caption loss (masked-token or shifted, with optional label smoothing / drop-worst).
        logits: with `labels`, (num_targets, vocab) at the target positions in row-major order (the
            original computes the vocabulary projection only there); with `logits_position`,
            (batch, 1, vocab) at that position (the `[MASK]` slot while decoding); otherwise
            (batch, text_len, vocab).
    """


@dataclass
class OscarCaptionGenerationOutput(ModelOutput):
    """Output of `OscarForImageCaptioning.generate(..., original_decoding=True, return_dict_in_generate=True)`.

    Args:
        sequences: (batch * num_return_sequences, max_length): `[CLS]`, the caption, `[SEP]`, then pad.
        sequences_scores: (batch * num_return_sequences,): mean token log-probability (greedy/sampling)
            or the beam score sum(logprob) / len(hypothesis incl. `[CLS]`) ** length_penalty.
    """

    sequences: torch.LongTensor | None = None
    sequences_scores: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------


class OscarEmbeddings(nn.Module):
    """BERT's text embeddings (word + position + token type, LayerNorm, dropout), as in BERT."""

    def __init__(self, config: OscarConfig):
        super().__init__()
        _check_special_token_ids(config, ("pad_token_id",))
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.LongTensor | None,
        token_type_ids: torch.LongTensor,
        position_ids: torch.LongTensor,
        inputs_embeds: torch.FloatTensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        embeddings = (
            inputs_embeds + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(embeddings))  # (batch, text_len, hidden)


def _check_special_token_ids(config: OscarConfig, fields: tuple[str, ...]) -> None:
    for field in fields:
        value = getattr(config, field, None)
        if value is not None and not 0 <= value < config.vocab_size:
            raise ValueError(
                f"config.{field}={value} is outside the vocabulary: expected None or an id in "
                f"[0, vocab_size={config.vocab_size}). Take it from the tokenizer (e.g. tokenizer.{field}) "
                "or raise vocab_size."
            )


class OscarRegionEmbeddings(nn.Module):
    """Projects detector region vectors into the hidden space.

    Regions get no position and no token-type embedding: their only spatial signal is the 6 box
    values inside the 2054-d vector. The LayerNorm exists only with `use_img_layernorm` (VinVL).
    """

    def __init__(self, config: OscarConfig):
        super().__init__()
        self.img_embedding = nn.Linear(config.img_feature_dim, config.hidden_size)
        self.LayerNorm = (
            nn.LayerNorm(config.hidden_size, eps=config.img_layer_norm_eps) if config.use_img_layernorm else None
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, img_feats: torch.Tensor) -> torch.Tensor:
        embeddings = self.img_embedding(img_feats)  # (batch, num_regions, hidden)
        if self.LayerNorm is not None:
            embeddings = self.LayerNorm(embeddings)
        return self.dropout(embeddings)


# ----------------------------------------------------------------------------------------------
# Transformer blocks (BERT's, with SDPA and a key/value cache that can keep some keys transient)
# ----------------------------------------------------------------------------------------------


@dataclass
class KeyLayout:
    """How the new keys/values of a decoding step are laid out and cached.

    Args:
        order: indices into the new positions giving the key order of this step (the attention
            mask's columns after the cached ones).
        num_transient: how many trailing keys of that order are used for this step only and not
            written to the cache (the `[MASK]` slot of caption decoding).
        cache_position: (num_persistent,) slots the persistent keys take in the cache (a static
            cache writes there; a dynamic cache appends).
        row_copies: the step encodes every `row_copies`-th row only and repeats the result (and
            the cache) that many times: beam copies of one image are identical before the first
            token, so tags, regions and `[CLS]` are encoded once per image.
    """

    order: torch.LongTensor
    num_transient: int = 0
    cache_position: torch.LongTensor | None = None
    row_copies: int = 1


class _SlottedLayer(DynamicLayer):
    """One layer of `OscarDecodingCache`: keys and values live in storage with room to grow.

    `update` writes new persistent keys in place after the cached ones (a `DynamicLayer`
    concatenates, copying the whole cache every step); `with_transient` writes the step's `[MASK]`
    key into the slot right after them and returns views that include it. The next step's real token
    sits at that `[MASK]` position, so it simply overwrites the slot.
    """

    # Free slots allocated beyond what a step needs: original captions stop at 20 tokens, so most
    # decodes never reallocate after the prefill.
    spare_slots = 32

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.length = 0
        self._keys = self._values = None  # (batch, heads, capacity, head_dim)

    def _reserve(self, sample: torch.Tensor, needed: int) -> None:
        if self._keys is not None and self._keys.shape[2] >= needed and self._keys.shape[0] == sample.shape[0]:
            return
        batch, heads, _, head_dim = sample.shape
        capacity = needed + self.spare_slots
        keys = sample.new_empty(batch, heads, capacity, head_dim)
        values = sample.new_empty(batch, heads, capacity, head_dim)
        if self._keys is not None and self.length > 0:
            keys[:, :, : self.length] = self._keys[:, :, : self.length]
            values[:, :, : self.length] = self._values[:, :, : self.length]
        self._keys, self._values = keys, values
        self.device, self.dtype = sample.device, sample.dtype
        self.is_initialized = True

    def _publish(self) -> None:
        # `keys`/`values` are what transformers' code reads: views of the used slots.
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[2]
        self._reserve(key_states, self.length + new + 1)  # + 1: the transient [MASK] slot
        self._keys[:, :, self.length : self.length + new] = key_states
        self._values[:, :, self.length : self.length + new] = value_states
        self.length += new
        self._publish()
        return self.keys, self.values

    def with_transient(self, key_states: torch.Tensor, value_states: torch.Tensor):
        """The cached keys followed by this step's transient ones (written to the free slots, not kept)."""
        new = key_states.shape[2]
        self._reserve(key_states, self.length + new)
        self._keys[:, :, self.length : self.length + new] = key_states
        self._values[:, :, self.length : self.length + new] = value_states
        end = self.length + new
        return self._keys[:, :, :end], self._values[:, :, :end]

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.length

    def _select_rows(self, rows: torch.LongTensor | slice) -> None:
        if self._keys is not None:
            self._keys, self._values = self._keys[rows], self._values[rows]
            self._publish()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self._keys is not None:
            beam_idx = beam_idx.to(self._keys.device)
            self._keys, self._values = self._keys.index_select(0, beam_idx), self._values.index_select(0, beam_idx)
            self._publish()

    def reorder_rows_after(self, beam_idx: torch.LongTensor, start: int) -> None:
        """Reorders only slots `start:` (the caption): the slots before are equal in every row of a group."""
        if self._keys is not None and self.length > start:
            beam_idx = beam_idx.to(self._keys.device)
            for storage in (self._keys, self._values):
                storage[:, :, start : self.length] = storage[:, :, start : self.length].index_select(0, beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._keys is not None:
            self._keys = self._keys.repeat_interleave(repeats, dim=0)
            self._values = self._values.repeat_interleave(repeats, dim=0)
            self._publish()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._select_rows(indices)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0:  # transformers 5 passes minus the count; 4.x the length to keep
            self.length = max(0, self.length + tokens_to_remove)
        else:
            self.length = min(self.length, tokens_to_remove)
        if self._keys is not None:
            self._publish()

    def reset(self) -> None:
        self.length = 0
        self._keys = self._values = self.keys = self.values = None
        self.is_initialized = False


class OscarDecodingCache(DynamicCache):
    """The key/value cache `OscarForImageCaptioning.generate()` uses by default.

    A `DynamicCache` whose layers keep their keys in growing storage (`_SlottedLayer`): each decoding
    step writes `w_t` and the transient `[MASK]` key in place instead of concatenating twice, and
    beam re-ordering (`reorder_beams`) moves only the caption slots, because the tags and regions
    before them are the same in every beam of an image. Any other cache works too, with copies.
    """

    def __init__(self):
        super().__init__()
        self.layer_class_to_replicate = _SlottedLayer
        self.shared_length = 0  # leading slots equal across the beams of an image (tags + regions)

    def reorder_beams(self, beam_idx: torch.LongTensor) -> None:
        """Re-orders rows for beam search where every row moves within its image's group of beams."""
        for layer in self.layers:
            layer.reorder_rows_after(beam_idx, self.shared_length)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention with an additive mask; the signature of transformers' attention interface."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (batch, heads, query_len, key_len)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = scores.softmax(dim=-1)
    context = torch.matmul(F.dropout(probs, p=dropout, training=module.training), value)
    return context.transpose(1, 2).contiguous(), probs  # (batch, query_len, heads, head_dim)


def _attention_function(implementation: str, output_attentions: bool):
    # Only the eager kernel materialises the weights, so `output_attentions` runs it.
    if implementation == "eager" or output_attentions:
        return eager_attention_forward
    if hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):  # transformers 5
        return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
    return ALL_ATTENTION_FUNCTIONS[implementation]


class OscarSelfAttention(nn.Module):
    def __init__(self, config: OscarConfig, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.layer_idx = layer_idx
        self.is_causal = False  # causality, where there is any, lives in the mask
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.config = config

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (batch, heads, len, head_dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        key_layout: KeyLayout | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query = self._split_heads(self.query(hidden_states))
        key = self._split_heads(self.key(hidden_states))
        value = self._split_heads(self.value(hidden_states))
        if key_layout is not None:
            key, value = key[:, :, key_layout.order], value[:, :, key_layout.order]
        if cache is not None:
            # Write the persistent keys, then append the transient ones for this step only.
            keep = key.shape[2] - (key_layout.num_transient if key_layout is not None else 0)
            position = key_layout.cache_position if key_layout is not None else None
            cached_key, cached_value = cache.update(
                key[:, :, :keep], value[:, :, :keep], self.layer_idx, {"cache_position": position}
            )
            if keep == key.shape[2]:
                key, value = cached_key, cached_value
            elif isinstance(cache, OscarDecodingCache):  # the transient keys go in place, no copy
                key, value = cache.layers[self.layer_idx].with_transient(key[:, :, keep:], value[:, :, keep:])
            else:
                key = torch.cat([cached_key, key[:, :, keep:]], dim=2)
                value = torch.cat([cached_value, value[:, :, keep:]], dim=2)

        attention = _attention_function(self.config._attn_implementation, output_attentions)
        context, probs = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout_prob if self.training else 0.0,
            scaling=self.scaling,
        )
        batch, length = context.shape[:2]
        return context.reshape(batch, length, self.num_heads * self.head_dim), probs


class OscarSelfOutput(nn.Module):
    def __init__(self, config: OscarConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class OscarAttention(nn.Module):
    def __init__(self, config: OscarConfig, layer_idx: int):
        super().__init__()
        self.self = OscarSelfAttention(config, layer_idx)
        self.output = OscarSelfOutput(config)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> tuple:
        context, probs = self.self(hidden_states, attention_mask, **kwargs)
        return self.output(context, hidden_states), probs


class OscarIntermediate(nn.Module):
    def __init__(self, config: OscarConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]  # "gelu" is the exact erf GELU

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class OscarOutput(nn.Module):
    def __init__(self, config: OscarConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class OscarLayer(GradientCheckpointingLayer):
    def __init__(self, config: OscarConfig, layer_idx: int):
        super().__init__()
        self.attention = OscarAttention(config, layer_idx)
        self.intermediate = OscarIntermediate(config)
        self.output = OscarOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        key_layout: KeyLayout | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, probs = self.attention(
            hidden_states, attention_mask, cache=cache, key_layout=key_layout, output_attentions=output_attentions
        )
        return self.output(self.intermediate(attended), attended), probs


class OscarEncoder(nn.Module):
    def __init__(self, config: OscarConfig):
        super().__init__()
        self.layer = nn.ModuleList([OscarLayer(config, i) for i in range(config.num_hidden_layers)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        key_layout: KeyLayout | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layer:
            # Hidden states go positionally: the checkpointing layer only checkpoints positional inputs.
            hidden_states, probs = layer(
                hidden_states,
                attention_mask=attention_mask,
                cache=cache,
                key_layout=key_layout,
                output_attentions=output_attentions,
            )
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if output_attentions:
                all_attentions += (probs,)
        return hidden_states, all_hidden, all_attentions


class OscarPooler(nn.Module):
    def __init__(self, config: OscarConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))  # (batch, hidden) from [CLS]


# ----------------------------------------------------------------------------------------------
# Pre-trained model base and the trunk
# ----------------------------------------------------------------------------------------------


class OscarPreTrainedModel(PreTrainedModel):
    config_class = OscarConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["OscarEmbeddings", "OscarLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        elif isinstance(module, OscarLMPredictionHead):
            module.bias.data.zero_()


def _check_img_feats(img_feats: torch.Tensor, config: OscarConfig, batch: int) -> None:
    if img_feats.dim() != 3:
        raise ValueError(
            f"img_feats must be (batch, num_regions, {config.img_feature_dim}), got shape {tuple(img_feats.shape)}."
        )
    if img_feats.shape[-1] != config.img_feature_dim:
        raise ValueError(
            f"img_feats has last dim {img_feats.shape[-1]}, but config.img_feature_dim is {config.img_feature_dim}. "
            "Append the 6 box values ([x1/W, y1/H, x2/W, y2/H, w/W, h/H]) to 2048-d features with the processor, "
            "or set img_feature_dim to the width of your features."
        )
    if img_feats.shape[0] != batch:
        raise ValueError(
            f"img_feats has batch size {img_feats.shape[0]} but input_ids has {batch}: pass one region set per text."
        )
    if img_feats.shape[1] > config.max_img_seq_length:
        raise ValueError(
            f"img_feats holds {img_feats.shape[1]} regions, more than config.max_img_seq_length="
            f"{config.max_img_seq_length}. Keep the first {config.max_img_seq_length} regions (the processor does) "
            "or raise max_img_seq_length."
        )


# ----------------------------------------------------------------------------------------------
# Value checks: ids, labels and scores in range before torch indexes with them
# ----------------------------------------------------------------------------------------------


@dataclass
class ValueCheck:
    """A range every value of one input tensor must lie in.

    An id outside its embedding table fails deep inside torch on CPU ("index out of range in
    self") and as a device-side assert on CUDA, naming neither the argument nor the value; a
    class label outside the classifier does the same in the loss. `check_values` tests all of an
    input's ranges with one min/max reduction per tensor and one host sync in all.

    Args:
        name: the argument as the error names it, e.g. "input_ids".
        tensor: its values (ids, labels, scores or features).
        low, high: inclusive bounds; values must also be finite (no NaN or inf).
        expected: what the error says was expected, e.g. "ids in [0, vocab_size=99)".
        ignore_index: one more allowed value outside the range (-100: "no target").
        hint: how to fix it, appended to the error.
    """

    name: str
    tensor: torch.Tensor | None
    low: float
    high: float
    expected: str
    ignore_index: int | None = None
    hint: str = ""


def _id_check(name: str, tensor: torch.Tensor | None, size: int, size_name: str, hint: str = "") -> ValueCheck:
    return ValueCheck(name, tensor, 0, size - 1, f"ids in [0, {size_name}={size})", hint=hint)


def _checks_apply() -> bool:
    # Data-dependent Python control flow has no place in a compiled or traced graph.
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting())


def check_values(checks: list[ValueCheck]) -> None:
    """Raises `ValueError` naming the tensor, the first offending value, its index and the range,
    for the first check some value of whose tensor is out of range (or NaN/inf).

    Costs one `aminmax` per tensor and one host sync for all of them; skipped inside
    `torch.compile`, `torch.jit` tracing and scripting, and for empty or meta tensors.
    """
    checks = [c for c in checks if c.tensor is not None and c.tensor.numel() > 0 and c.tensor.device.type != "meta"]
    if not checks or not _checks_apply():
        return
    device = checks[0].tensor.device
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    extremes = []
    for check in checks:
        values = _comparable(check)
        extremes.append(torch.stack(torch.aminmax(values)).to(device=device, dtype=dtype))
    found = torch.cat(extremes).tolist()  # the one host sync
    for i, check in enumerate(checks):
        low, high = found[2 * i], found[2 * i + 1]
        if not (math.isfinite(low) and math.isfinite(high) and low >= check.low and high <= check.high):
            raise ValueError(_out_of_range_message(check))


def _comparable(check: ValueCheck) -> torch.Tensor:
    values = check.tensor.detach()
    if values.dtype == torch.bool:
        values = values.to(torch.uint8)
    if check.ignore_index is not None:
        values = values.masked_fill(values == check.ignore_index, int(check.low))
    return values


def _out_of_range_message(check: ValueCheck) -> str:
    """The error of a failed check: where the first bad value is, and how many there are (slow path)."""
    values = check.tensor.detach()
    if values.dtype == torch.bool:
        values = values.to(torch.uint8)
    bad = (values < check.low) | (values > check.high)
    if values.is_floating_point():
        bad |= ~torch.isfinite(values)
    if check.ignore_index is not None:
        bad &= values != check.ignore_index
    where = bad.nonzero()
    index = tuple(where[0].tolist())
    value = values[index].item()
    allowed = f" or {check.ignore_index} (no target)" if check.ignore_index is not None else ""
    message = (
        f"{check.name} holds {value!r} at index {index} ({len(where)} value(s) out of range): "
        f"expected {check.expected}{allowed}."
    )
    return f"{message} {check.hint}" if check.hint else message


def _full_attention_mask(
    attention_mask: torch.Tensor | None,
    img_attention_mask: torch.Tensor | None,
    batch: int,
    text_len: int,
    num_regions: int,
    device: torch.device,
) -> torch.Tensor:
    """Returns a 2-D (batch, text_len + num_regions) or 3-D (batch, query_len, key_len) 0/1 mask."""
    total = text_len + num_regions
    if attention_mask is None:
        attention_mask = torch.ones(batch, text_len, dtype=torch.long, device=device)
    if attention_mask.dim() == 3:
        if img_attention_mask is not None:
            raise ValueError(
                "Pass img_attention_mask only with a 2-D text attention_mask; a 3-D mask already covers regions."
            )
        if attention_mask.shape[0] != batch or attention_mask.shape[1] != total:
            raise ValueError(
                f"3-D attention_mask has shape {tuple(attention_mask.shape)}, expected ({batch}, {total}, key_len) "
                f"for {text_len} text tokens and {num_regions} regions."
            )
        return attention_mask
    if attention_mask.dim() != 2 or attention_mask.shape[0] != batch:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({batch}, {text_len}) for the text, "
            f"({batch}, {total}) for text and regions, or ({batch}, {total}, {total})."
        )
    if attention_mask.shape[1] == text_len and num_regions > 0:
        if img_attention_mask is None:
            img_attention_mask = torch.ones(batch, num_regions, dtype=attention_mask.dtype, device=device)
        if tuple(img_attention_mask.shape) != (batch, num_regions):
            raise ValueError(
                f"img_attention_mask has shape {tuple(img_attention_mask.shape)}, expected ({batch}, {num_regions})."
            )
        return torch.cat([attention_mask, img_attention_mask.to(attention_mask.dtype)], dim=1)
    if attention_mask.shape[1] != total:
        raise ValueError(
            f"attention_mask has length {attention_mask.shape[1]}, expected {text_len} (text only, regions taken from "
            f"img_attention_mask) or {total} (text + regions)."
        )
    if img_attention_mask is not None:
        raise ValueError("attention_mask already covers the regions; do not pass img_attention_mask as well.")
    return attention_mask


def _pack_unmasked(
    hidden: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.LongTensor] | None:
    """Moves each row's unmasked positions to the front, in order, and cuts the rows to the
    longest one. Returns (hidden, mask, index) with index (batch, packed_len) into the original
    positions, or None when no position would be dropped or a row's `[CLS]` (position 0, which
    the pooler reads) is masked.

    Exact for every unmasked position: a masked key gets weight exp(-10000 + ...) = 0, so dropping
    it changes no unmasked output; only the order of the softmax sums changes.
    """
    lengths = (mask != 0).sum(dim=1)  # (batch,)
    # One host sync for both facts; shapes depend on the data from here on.
    cls_kept, packed_len = torch.stack([(mask[:, 0] != 0).all().to(lengths.dtype), lengths.max()]).tolist()
    if not cls_kept or packed_len == mask.shape[1]:
        return None
    # A stable sort on "is masked" keeps the unmasked positions first and in their order.
    index = torch.sort((mask == 0).to(torch.uint8), dim=1, stable=True).indices[:, :packed_len]
    packed = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # (batch, packed_len, hidden)
    return packed, mask.gather(1, index), index


def _unpack(packed: torch.Tensor, packed_mask: torch.Tensor, index: torch.LongTensor, length: int) -> torch.Tensor:
    """Inverse of `_pack_unmasked` for the encoder output; masked positions come back as zeros."""
    batch, _, width = packed.shape
    packed = packed * (packed_mask != 0)[..., None].to(packed.dtype)
    out = packed.new_zeros(batch, length, width)
    return out.scatter(1, index[..., None].expand(-1, -1, width), packed)  # (batch, length, hidden)


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0/1 mask (batch, key) or (batch, query, key) -> additive (batch, 1, 1 or query, key)."""
    mask = mask[:, None, None, :] if mask.dim() == 2 else mask[:, None, :, :]
    return (1.0 - mask.to(dtype)) * MASK_VALUE


class OscarModel(OscarPreTrainedModel):
    """The Oscar trunk: BERT over `[CLS] text [SEP] tags [SEP] [PAD]...` followed by the regions.

    Example:
        >>> import torch
        >>> from oscar_hf import OscarConfig, OscarModel
        >>> config = OscarConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        >>> model = OscarModel(config).eval()
        >>> out = model(input_ids=torch.tensor([[101, 1037, 102, 3899, 102]]), img_feats=torch.randn(1, 3, 2054))
        >>> out.last_hidden_state.shape, out.pooler_output.shape
        (torch.Size([1, 8, 32]), torch.Size([1, 32]))
    """

    # Loading the trunk from a task checkpoint leaves the heads out on purpose.
    _keys_to_ignore_on_load_unexpected = [r"^cls\.", r"^classifier\."]

    def __init__(self, config: OscarConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = OscarEmbeddings(config)
        self.region_embeddings = OscarRegionEmbeddings(config)
        self.encoder = OscarEncoder(config)
        self.pooler = OscarPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        img_feats: torch.FloatTensor | None = None,
        img_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        key_layout: KeyLayout | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        skip_padding: bool = False,
        require_cls: bool = False,
        value_checks: list[ValueCheck] | None = None,
    ) -> OscarModelOutput | tuple:
        """
        Args:
            input_ids: (batch, text_len), `[CLS] text_a [SEP] tags [SEP]` then padding.
            attention_mask: 0/1 mask, (batch, text_len) with `img_attention_mask` for the regions,
                (batch, text_len + num_regions), or a full (batch, query_len, key_len) block mask.
            token_type_ids: (batch, text_len); 0 for `[CLS]` text_a `[SEP]`, 1 for the tags.
            position_ids: (batch, text_len); defaults to 0..text_len-1 (tags continue the text).
            img_feats: (batch, num_regions, img_feature_dim) region vectors, appended after the text.
            img_attention_mask: (batch, num_regions) 0/1 validity of the region slots.
            inputs_embeds: (batch, text_len, hidden) word embeddings to use instead of `input_ids`.
            cache (`past_key_values` is the name before transformers 5.2x): a `Cache` the keys and
                values of this call are written to; with `use_cache=True` and none given, a
                `DynamicCache` is created. Returned in the output's cache field.
            key_layout: decoding state, set by `OscarForImageCaptioning.prepare_inputs_for_generation`.
            skip_padding: run the encoder on the unmasked positions only (see
                `OscarConfig.skip_padding`); applies to a 2-D mask whose `[CLS]` column is set, without
                cache, attentions or hidden states. `pooler_output` and every unmasked position are
                unchanged; masked positions of `last_hidden_state` are zeros.
            require_cls: refuse rows whose `[CLS]` position (0) is masked; set by the heads that read
                the pooled output, which would otherwise pool a padding vector.
            value_checks: ranges of the calling head's labels, checked with the ids in one host sync
                (see `check_values`) before anything is embedded or indexed.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        cache = _resolve_cache_argument(cache, past_key_values)
        if use_cache and cache is None:
            cache = DynamicCache()
        if not use_cache and use_cache is not None:
            cache = None
        batch, text_len, device = _text_shape(input_ids, inputs_embeds)
        num_regions = 0
        if img_feats is not None:
            _check_img_feats(img_feats, self.config, batch)
            num_regions = img_feats.shape[1]

        given_positions, given_token_types = position_ids, token_type_ids
        if position_ids is None:
            if text_len > self.config.max_position_embeddings:
                raise ValueError(
                    f"input_ids has {text_len} tokens but max_position_embeddings is "
                    f"{self.config.max_position_embeddings}; truncate the text and tags."
                )
            position_ids = torch.arange(text_len, device=device).expand(batch, text_len)
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch, text_len, dtype=torch.long, device=device)
        for name, tensor in (("token_type_ids", token_type_ids), ("position_ids", position_ids)):
            if tuple(tensor.shape) != (batch, text_len):
                raise ValueError(
                    f"{name} has shape {tuple(tensor.shape)}, expected ({batch}, {text_len}) like input_ids."
                )

        mask = _full_attention_mask(attention_mask, img_attention_mask, batch, text_len, num_regions, device)
        check_values(
            self._input_checks(input_ids, given_token_types, given_positions, img_feats, mask, require_cls)
            + list(value_checks or ())
        )
        hidden = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)  # (batch, text_len, hidden)
        if img_feats is not None:
            regions = self.region_embeddings(img_feats.to(hidden.dtype))  # (batch, num_regions, hidden)
            hidden = torch.cat([hidden, regions], dim=1)  # (batch, text_len + num_regions, hidden)
        if mask.shape[-1] != hidden.shape[1] and key_layout is None and (cache is None or cache.get_seq_length() == 0):
            raise ValueError(f"attention_mask covers {mask.shape[-1]} keys but the sequence has {hidden.shape[1]}.")
        packing = None
        if (
            skip_padding
            and mask.dim() == 2
            and cache is None
            and not (output_attentions or output_hidden_states or torch.compiler.is_compiling())
        ):
            packing = _pack_unmasked(hidden, mask)
            if packing is not None:
                hidden, mask, packed_index = packing  # (batch, packed_len, hidden), (batch, packed_len) x 2
        extended = _additive_mask(mask, hidden.dtype)

        sequence, all_hidden, all_attentions = self.encoder(
            hidden,
            extended,
            cache=cache,
            key_layout=key_layout,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        if packing is not None:
            sequence = _unpack(sequence, mask, packed_index, text_len + num_regions)
        pooled = self.pooler(sequence) if self.pooler is not None else None
        output = OscarModelOutput(
            last_hidden_state=sequence,
            pooler_output=pooled,
            hidden_states=all_hidden,
            attentions=all_attentions,
            **{_CACHE_NAME: cache},
        )
        return output if return_dict else output.to_tuple()

    def _input_checks(
        self,
        input_ids: torch.LongTensor | None,
        token_type_ids: torch.LongTensor | None,
        position_ids: torch.LongTensor | None,
        img_feats: torch.FloatTensor | None,
        mask: torch.Tensor,
        require_cls: bool,
    ) -> list[ValueCheck]:
        """The ranges of the trunk's inputs: every id indexes an embedding table."""
        config = self.config
        checks = [
            _id_check(
                "input_ids",
                input_ids,
                config.vocab_size,
                "vocab_size",
                "Tokenize with the model's own tokenizer, or resize_token_embeddings() after adding tokens.",
            ),
            _id_check(
                "token_type_ids",
                token_type_ids,
                config.type_vocab_size,
                "type_vocab_size",
                "Oscar uses 0 for [CLS] text [SEP] and padding, 1 for the tags and their [SEP].",
            ),
            _id_check(
                "position_ids",
                position_ids,
                config.max_position_embeddings,
                "max_position_embeddings",
                "Truncate the text and tags, or leave position_ids out.",
            ),
        ]
        if img_feats is not None:
            checks.append(
                ValueCheck(
                    "img_feats",
                    img_feats,
                    -math.inf,
                    math.inf,
                    "finite values (no NaN or inf)",
                    hint="Fix or drop those regions before the forward pass.",
                )
            )
        if require_cls:
            # 2-D: the [CLS] key of each row; 3-D: whether any query of the row sees [CLS].
            cls_valid = mask[:, 0] if mask.dim() == 2 else mask[:, :, 0].amax(dim=1)
            checks.append(
                ValueCheck(
                    "attention_mask[:, 0] (the [CLS] position the pooled output reads)",
                    cls_valid,
                    1,
                    math.inf,
                    "a nonzero value in every row",
                    hint="Start every row with [CLS] and pad on the right (as the processor does); a row "
                    "without its [CLS] would pool a padding or region vector.",
                )
            )
        return checks


def _text_shape(
    input_ids: torch.LongTensor | None, inputs_embeds: torch.FloatTensor | None
) -> tuple[int, int, torch.device]:
    """(batch, text_len, device) of the text, from exactly one of `input_ids` / `inputs_embeds`."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(
            "Pass exactly one of input_ids (batch, text_len) and inputs_embeds (batch, text_len, hidden); "
            f"got {'both' if input_ids is not None else 'neither'}."
        )
    name, text = ("input_ids", input_ids) if input_ids is not None else ("inputs_embeds", inputs_embeds)
    dims = 2 if input_ids is not None else 3
    if text.dim() != dims:
        layout = "(batch, text_len)" if dims == 2 else "(batch, text_len, hidden)"
        raise ValueError(f"{name} must be {layout}, got shape {tuple(text.shape)}.")
    batch, text_len = text.shape[:2]
    if batch == 0:
        raise ValueError(f"{name} has shape {tuple(text.shape)}: an empty batch. Pass at least one example.")
    if text_len == 0:
        raise ValueError(
            f"{name} has shape {tuple(text.shape)}: zero text tokens. Every sequence starts with [CLS] (the "
            "position the pooled output and the caption read); without it a region would be pooled instead."
        )
    return batch, text_len, text.device


def _resolve_cache_argument(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """One cache from the two names (`past_key_values` is the name before transformers 5.2x)."""
    if past_key_values is None:
        return cache
    if cache is not None:
        raise ValueError("Pass the key/value cache once, as `cache` or as `past_key_values`, not both.")
    if _CACHE_NAME == "cache":
        warnings.warn(
            "`past_key_values` is deprecated in this transformers release; pass the cache as `cache`.",
            FutureWarning,
            stacklevel=3,
        )
    return past_key_values


# ----------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------


class OscarPredictionHeadTransform(nn.Module):
    def __init__(self, config: OscarConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class OscarLMPredictionHead(nn.Module):
    """Transform then a vocabulary projection (tied to the word embeddings) plus an output bias.

    The bias stays its own parameter (the checkpoint name `cls.predictions.bias`), used whether or
    not the projection is tied; `resize_token_embeddings` resizes it with the vocabulary.
    """

    def __init__(self, config: OscarConfig):
        super().__init__()
        self.transform = OscarPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def resize_bias(self, vocab_size: int) -> None:
        """Keeps the first min(old, new) entries; new tokens start at 0."""
        old = self.bias.shape[0]
        if vocab_size == old:
            return
        bias = self.bias.new_zeros(vocab_size)
        bias[: min(old, vocab_size)] = self.bias.data[: min(old, vocab_size)]
        self.bias = nn.Parameter(bias, requires_grad=self.bias.requires_grad)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # One fused product + bias (addmm): the separate add cost a pass over (rows, vocab) logits.
        return F.linear(self.transform(hidden_states), self.decoder.weight, self.bias)


class OscarOnlyMLMHead(nn.Module):
    def __init__(self, config: OscarConfig):
        super().__init__()
        self.predictions = OscarLMPredictionHead(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden_states)


class OscarPreTrainingHeads(nn.Module):
    def __init__(self, config: OscarConfig):
        super().__init__()
        self.predictions = OscarLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, config.num_contrast_classes)

    def forward(self, sequence: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictions(sequence), self.seq_relationship(pooled)


def _tied_decoder_keys() -> dict[str, str] | list[str]:
    # transformers 5 wants {target: source}; 4.x wants the list of targets.
    target, source = "cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"
    return {target: source} if _TRANSFORMERS_MAJOR >= 5 else [target]


class _OscarWithLMHead(OscarPreTrainedModel):
    """Shared embedding-tying plumbing of the two classes with a vocabulary head."""

    _tied_weights_keys = _tied_decoder_keys()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings

    def resize_token_embeddings(self, *args, **kwargs) -> nn.Embedding:
        # The output bias is a separate parameter that transformers does not know to resize.
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        self.cls.predictions.resize_bias(self.get_output_embeddings().weight.shape[0])
        return embeddings


class OscarForPreTraining(_OscarWithLMHead):
    """Oscar pre-training: masked tokens over text+tags and the contrastive head on `[CLS]`.

    Contrastive labels keep the original meaning: 0 matched, 1 text_b (tags or answer) polluted,
    2 text_a (caption or question) polluted; Oscar uses classes 0/1 only.
    """

    def __init__(self, config: OscarConfig):
        super().__init__(config)
        self.bert = OscarModel(config)
        self.cls = OscarPreTrainingHeads(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        img_feats: torch.FloatTensor | None = None,
        img_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        contrastive_labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        sparse_prediction: bool = False,
    ) -> OscarForPreTrainingOutput | tuple:
        """
        Args:
            labels: (batch, text_len) or (batch, text_len + num_regions) masked-token targets; -100
                (or the original's -1) marks positions without a target.
            contrastive_labels: (batch,) in [0, num_contrast_classes).
            sparse_prediction: with `labels`, run the vocabulary head only at the labelled
                positions; `prediction_logits` is then (num_labelled, vocab) in row-major order
                of the labelled positions. Same loss, and the head's cost (about 15% of 35 text
                positions instead of all text and region rows) drops out of a training step.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        config = self.config
        batch, text_len, _ = _text_shape(input_ids, inputs_embeds)
        checks = []
        if labels is not None:
            num_regions = img_feats.shape[1] if img_feats is not None and img_feats.dim() == 3 else 0
            labels = _pad_labels_over_regions(labels, (batch, text_len + num_regions))
            labels = labels.masked_fill(labels == -1, -100)
            checks.append(
                _target_check("labels", labels, config.vocab_size, "Masked-token targets are token ids of the text.")
            )
        if contrastive_labels is not None:
            if tuple(contrastive_labels.shape) != (batch,):
                raise ValueError(
                    f"contrastive_labels has shape {tuple(contrastive_labels.shape)}, expected ({batch},)."
                )
            checks.append(
                ValueCheck(
                    "contrastive_labels",
                    contrastive_labels,
                    0,
                    config.num_contrast_classes - 1,
                    f"classes in [0, num_contrast_classes={config.num_contrast_classes})",
                    ignore_index=-100,
                    hint="0 matched, 1 tags/answer polluted, 2 caption/question polluted (Oscar+ only).",
                )
            )
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            img_feats=img_feats,
            img_attention_mask=img_attention_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            require_cls=True,
            value_checks=checks,
        )
        sequence = outputs.last_hidden_state  # (batch, text_len + num_regions, hidden)
        if labels is not None and sparse_prediction:
            labelled = labels != -100
            sequence, labels = sequence[labelled], labels[labelled]  # (num_labelled, hidden), (num_labelled,)
        prediction_logits, contrastive_logits = self.cls(sequence, outputs.pooler_output)

        masked_lm_loss = contrastive_loss = loss = None
        if labels is not None:
            masked_lm_loss = _cross_entropy(
                prediction_logits.reshape(-1, config.vocab_size).float(), labels.reshape(-1)
            )
            loss = masked_lm_loss
        if contrastive_labels is not None:
            contrastive_loss = _cross_entropy(contrastive_logits.float(), contrastive_labels)
            loss = contrastive_loss if loss is None else loss + contrastive_loss

        output = OscarForPreTrainingOutput(
            loss=loss,
            masked_lm_loss=masked_lm_loss,
            contrastive_loss=contrastive_loss,
            prediction_logits=prediction_logits,
            contrastive_logits=contrastive_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


def _target_check(name: str, labels: torch.Tensor, vocab_size: int, hint: str) -> ValueCheck:
    """Token-id targets: in the vocabulary, or -100 where there is no target."""
    return ValueCheck(
        name,
        labels,
        0,
        vocab_size - 1,
        f"token ids in [0, vocab_size={vocab_size})",
        ignore_index=-100,
        hint=hint,
    )


def _pad_labels_over_regions(labels: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Accepts text-only labels (batch, text_len) and pads them with -100 over the region slots."""
    batch, total = shape
    if labels.dim() != 2 or labels.shape[0] != batch or labels.shape[1] > total:
        raise ValueError(
            f"labels has shape {tuple(labels.shape)}; expected ({batch}, text_len) or ({batch}, {total}) "
            "with -100 at positions without a target."
        )
    if labels.shape[1] < total:
        labels = F.pad(labels, (0, total - labels.shape[1]), value=-100)
    return labels


def _build_classifier(config: OscarConfig, in_features: int, pair: bool = False) -> nn.Module:
    """`linear`: Linear(in, num_labels). `mlp`: Linear(in, H*scale) -> ReLU -> [LayerNorm] -> Linear."""
    if config.classifier == "linear":
        return nn.Linear(in_features, config.num_labels)
    hidden = config.hidden_size * config.cls_hidden_scale
    layers: list[nn.Module] = [nn.Linear(in_features, hidden), nn.ReLU()]
    if pair and config.pair_classifier_layernorm:
        layers.append(nn.LayerNorm(hidden, eps=config.layer_norm_eps))
    layers.append(nn.Linear(hidden, config.num_labels))
    return nn.Sequential(*layers)


# transformers' `config.problem_type` names, mapped onto the Oscar loss types.
_PROBLEM_TYPE_LOSSES = {
    "regression": "mse",
    "single_label_classification": "ce",
    "multi_label_classification": "multi_label",
}


def _loss_kind(config: OscarConfig, labels: torch.Tensor) -> str:
    """`config.problem_type` when set (as BertForSequenceClassification); else `config.loss_type`,
    where the default "ce" follows BERT's inference: one label means regression, float labels
    shaped like the logits mean multi-label."""
    if config.problem_type is not None:
        if config.problem_type not in _PROBLEM_TYPE_LOSSES:
            raise ValueError(
                f"config.problem_type={config.problem_type!r} is not supported: expected one of "
                f"{sorted(_PROBLEM_TYPE_LOSSES)} or None (then config.loss_type decides)."
            )
        return _PROBLEM_TYPE_LOSSES[config.problem_type]
    if config.loss_type == "ce":
        if config.num_labels == 1:
            return "mse"
        if labels.is_floating_point() and labels.dim() == 2 and labels.shape[-1] == config.num_labels:
            return "multi_label"
    return config.loss_type


def _classification_label_checks(config: OscarConfig, labels: torch.Tensor | None, batch: int) -> list[ValueCheck]:
    """Checks the labels' shape for the loss `config` selects and returns their value ranges,
    which the trunk checks with its ids, before the forward pass."""
    if labels is None:
        return []
    num_labels = config.num_labels
    kind = _loss_kind(config, labels)
    if kind in ("bce", "kl", "multi_label"):
        if tuple(labels.shape) != (batch, num_labels):
            raise ValueError(
                f"{kind} loss needs soft-score labels of shape ({batch}, {num_labels}) (multi-hot for multi-label), "
                f"got {tuple(labels.shape)}."
            )
        return [
            ValueCheck(
                "labels",
                labels,
                0.0,
                1.0,
                f"soft scores in [0, 1] for loss {kind!r}",
                hint="VQA targets score 0.3/0.6/0.9/1 for 1/2/3/>=4 annotators; multi-label targets are 0/1.",
            )
        ]
    if kind == "mse":
        if labels.numel() != batch * num_labels:
            raise ValueError(
                f"regression needs ({batch},) targets (or ({batch}, {num_labels})), got shape {tuple(labels.shape)}."
            )
        return [ValueCheck("labels", labels, -math.inf, math.inf, "finite regression targets")]
    if tuple(labels.shape) != (batch,):
        raise ValueError(
            f"single-label classification needs class-index labels of shape ({batch},), got {tuple(labels.shape)}; "
            "use loss_type='bce' (or problem_type='multi_label_classification') for soft scores."
        )
    return [
        ValueCheck(
            "labels",
            labels,
            0,
            num_labels - 1,
            f"class indices in [0, num_labels={num_labels})",
            ignore_index=-100,
            hint="Map answers to indices with config.label2id; pass soft scores with loss_type='bce'.",
        )
    ]


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy over the labels that are not -100.

    When every label is -100, `F.cross_entropy` (and BERT's heads) return NaN (0 / 0); this returns
    a zero loss that is still part of the graph, so an accumulation step or a DDP rank whose batch
    holds no target adds nothing instead of poisoning the run. Equal to `F.cross_entropy` otherwise.
    """
    total = F.cross_entropy(logits, labels, reduction="sum")
    return total / (labels != -100).sum().clamp(min=1)


def _classification_loss(config: OscarConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss `_loss_kind` names; the labels were checked by `_classification_label_checks`."""
    batch, num_labels = logits.shape
    logits = logits.float()
    kind = _loss_kind(config, labels)
    if kind == "multi_label":  # BertForSequenceClassification's multi-label loss
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    if kind == "bce":
        # The original multiplies the mean by the number of answers (instance_bce_with_logits).
        return F.binary_cross_entropy_with_logits(logits, labels.float()) * num_labels
    if kind == "kl":
        return F.kl_div(F.log_softmax(logits, dim=-1), labels.float(), reduction="batchmean")
    if kind == "mse":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(-1), labels.float().view(-1))
        return F.mse_loss(logits, labels.float().view(batch, num_labels))
    return _cross_entropy(logits, labels.long())


class OscarForSequenceClassification(OscarPreTrainedModel):
    """`[CLS]` pooled output -> dropout -> classifier. VQA (3129 soft labels, `loss_type="bce"`),
    GQA (1853-way, `"ce"`), and any text-image classification."""

    def __init__(self, config: OscarConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = OscarModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = _build_classifier(config, config.hidden_size)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        img_feats: torch.FloatTensor | None = None,
        img_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        """
        Args:
            labels: (batch,) class indices for `loss_type="ce"`, (batch, num_labels) soft scores for
                `"bce"`/`"kl"`, (batch,) floats for `"mse"`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            img_feats=img_feats,
            img_attention_mask=img_attention_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            skip_padding=self.config.skip_padding,
            require_cls=True,
            value_checks=_classification_label_checks(self.config, labels, _text_shape(input_ids, inputs_embeds)[0]),
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))  # (batch, num_labels)
        loss = _classification_loss(self.config, logits, labels) if labels is not None else None
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


class OscarForImageTextRetrieval(OscarForSequenceClassification):
    """Image-text matching (ITM) cross-encoder: 2-way classifier, score = p(match).

    Rank captions for an image (or images for a caption) by `scores`, as the original evaluation.
    """

    def __init__(self, config: OscarConfig):
        if config.num_labels != 2:
            raise ValueError(
                f"OscarForImageTextRetrieval needs num_labels=2 (no match / match), got {config.num_labels}."
            )
        super().__init__(config)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        img_feats: torch.FloatTensor | None = None,
        img_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> OscarImageTextRetrievalOutput | tuple:
        """Same inputs as `OscarForSequenceClassification`; `labels` (batch,) with 1 for matching pairs."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        out = super().forward(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            img_feats=img_feats,
            img_attention_mask=img_attention_mask,
            inputs_embeds=inputs_embeds,
            labels=labels,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        output = OscarImageTextRetrievalOutput(
            loss=out.loss,
            logits=out.logits,
            scores=out.logits.float().softmax(dim=-1)[:, 1],
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return output if return_dict else output.to_tuple()


class OscarForNLVR2(OscarPreTrainedModel):
    """NLVR2: the sentence is encoded with each of the `num_choice` images; the pooled outputs are
    concatenated (batch, num_choice * hidden) and classified (true/false)."""

    def __init__(self, config: OscarConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = OscarModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = _build_classifier(config, config.num_choice * config.hidden_size, pair=True)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        img_feats: torch.FloatTensor | None = None,
        img_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        """
        Args:
            input_ids: (batch, num_choice, text_len); every other input carries the same choice dim,
                e.g. img_feats (batch, num_choice, num_regions, img_feature_dim).
            labels: (batch,) 0/1 for `loss_type="ce"`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        text = input_ids if input_ids is not None else inputs_embeds
        if text is None or text.dim() < 3 or text.shape[1] != self.config.num_choice:
            raise ValueError(
                f"input_ids must be (batch, num_choice={self.config.num_choice}, text_len) (inputs_embeds: with a "
                f"trailing hidden dim), got shape {None if text is None else tuple(text.shape)}."
            )
        batch = text.shape[0]

        def flat(x: torch.Tensor | None) -> torch.Tensor | None:  # (batch, choice, ...) -> (batch * choice, ...)
            if x is None:
                return None
            if x.shape[:2] != text.shape[:2]:
                raise ValueError(
                    f"Every NLVR2 input needs the leading (batch, num_choice) dims {tuple(text.shape[:2])}, "
                    f"got {tuple(x.shape)}."
                )
            return x.reshape(-1, *x.shape[2:])

        outputs = self.bert(
            flat(input_ids),
            attention_mask=flat(attention_mask),
            token_type_ids=flat(token_type_ids),
            position_ids=flat(position_ids),
            img_feats=flat(img_feats),
            img_attention_mask=flat(img_attention_mask),
            inputs_embeds=flat(inputs_embeds),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            skip_padding=self.config.skip_padding,
            require_cls=True,
            value_checks=_classification_label_checks(self.config, labels, batch),
        )
        pooled = outputs.pooler_output.reshape(batch, -1)  # (batch, num_choice * hidden)
        logits = self.classifier(self.dropout(pooled))
        loss = _classification_loss(self.config, logits, labels) if labels is not None else None
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


# ----------------------------------------------------------------------------------------------
# Captioning
# ----------------------------------------------------------------------------------------------


def seq2seq_attention_mask(text_mask: torch.Tensor, img_mask: torch.Tensor, caption_length: int) -> torch.Tensor:
    """UniLM seq2seq mask of captioning, (batch, L, L) for L = text_len + num_regions.

    The caption slot (first `caption_length` tokens) attends causally to itself and fully to the
    tags and regions; tags and regions attend to each other but never to the caption. Padding rows
    and columns are 0.
    """
    valid = torch.cat([text_mask, img_mask.to(text_mask.dtype)], dim=1).bool()  # (batch, L)
    total = valid.shape[1]
    idx = torch.arange(total, device=valid.device)
    in_caption = idx < caption_length
    causal = idx[None, :] <= idx[:, None]  # (L, L): key j <= query i
    allowed = torch.where(in_caption[:, None], ~in_caption[None, :] | causal, ~in_caption[None, :])
    return (allowed[None] & valid[:, :, None] & valid[:, None, :]).long()


def caption_decoding_mask(
    caption_valid: torch.Tensor, context_valid: torch.Tensor, num_new: int, with_context_rows: bool
) -> torch.Tensor:
    """Mask of one decoding step, (batch, queries, keys), 0/1.

    Keys are laid out as [context (tags, regions) | caption tokens so far | `[MASK]`]; queries as
    [the `num_new` newest caption tokens | `[MASK]` | context rows, when the context is encoded in
    this step]. Caption tokens see the context and earlier captions, `[MASK]` sees everything, the
    context sees only the context.
    """
    batch, num_caption = caption_valid.shape
    num_context = context_valid.shape[1]
    caption_valid, context_valid = caption_valid.bool(), context_valid.bool()
    first_new = num_caption - num_new
    rows = torch.arange(first_new, num_caption, device=caption_valid.device)
    causal = torch.arange(num_caption, device=caption_valid.device)[None, :] <= rows[:, None]  # (new, caption)
    new_rows = torch.cat(
        [
            context_valid[:, None, :].expand(batch, num_new, num_context),
            causal[None] & caption_valid[:, None, :],
            caption_valid.new_zeros(batch, num_new, 1),
        ],
        dim=2,
    )
    mask_row = torch.cat([context_valid, caption_valid, caption_valid.new_ones(batch, 1)], dim=1)[:, None, :]
    parts = [new_rows, mask_row]
    if with_context_rows:
        context_rows = (
            torch.cat([context_valid, caption_valid.new_zeros(batch, num_caption + 1)], dim=1)[:, None, :]
            & context_valid[:, :, None]
        )
        parts.append(context_rows)
    return torch.cat(parts, dim=1).long()


def caption_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float, drop_worst_ratio: float
) -> torch.Tensor:
    """The original captioning loss: KL to a smoothed one-hot (eps/(V-1) off target), then
    optionally keeps the `1 - drop_worst_ratio` lowest per-token losses (at least one). Without
    targets it is a zero attached to the graph (`F.cross_entropy` would give NaN)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (num_targets, vocab)
    vocab = log_probs.shape[-1]
    off = label_smoothing / (vocab - 1)
    on = 1.0 - label_smoothing
    target_logp = log_probs.gather(1, targets[:, None]).squeeze(1)
    # sum_c t_c (log t_c - log p_c) with t = on at the target and `off` elsewhere.
    entropy = on * math.log(on) + (vocab - 1) * (off * math.log(off) if off > 0 else 0.0)
    cross = -(on * target_logp + off * (log_probs.sum(dim=-1) - target_logp))
    losses = entropy + cross
    if losses.numel() == 0:
        # No target in the batch: a zero loss still attached to the graph, not the NaN of an empty mean.
        return losses.sum()
    if drop_worst_ratio > 0:
        # At least one loss stays: the original's k=0 would average nothing (NaN).
        keep = max(1, int(losses.shape[0] * (1 - drop_worst_ratio)))
        losses = torch.topk(losses, k=keep, largest=False).values
    return losses.mean()


def _static_cache_length(cache: StaticCache) -> int:
    # `get_max_length` in transformers 5.2x, `get_max_cache_shape` before.
    length = getattr(cache, "get_max_length", None) or cache.get_max_cache_shape
    return length()


# The per-image inputs of `generate`, besides the prompt; all share its batch size.
_DECODING_INPUTS = (
    "attention_mask",
    "img_feats",
    "img_attention_mask",
    "tag_input_ids",
    "tag_attention_mask",
    "tag_position_ids",
)


@functools.cache
def _forward_parameters(model_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_class.forward).parameters)


class OscarForImageCaptioning(_OscarWithLMHead, GenerationMixin):
    """Captioning as UniLM seq2seq over `[caption slot | tags | regions]`.

    Training predicts masked caption tokens under the seq2seq mask (`caption_loss="masked"`, the
    original) or the next caption token (`"shifted"`). Decoding feeds `[CLS] w1..wt [MASK]` and reads
    the prediction at `[MASK]`; with the cache each step only encodes `[w_t, [MASK]]`.

    Example:
        >>> import torch
        >>> from oscar_hf import OscarConfig, OscarForImageCaptioning
        >>> config = OscarConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        >>> model = OscarForImageCaptioning(config).eval()
        >>> out = model.generate(
        ...     input_ids=torch.tensor([[101]]), tag_input_ids=torch.tensor([[3899, 102]]),
        ...     img_feats=torch.randn(1, 3, 2054), max_length=6, num_beams=2)
        >>> out.shape[1] <= 6
        True
    """

    def __init__(self, config: OscarConfig):
        super().__init__(config)
        self.bert = OscarModel(config)
        self.cls = OscarOnlyMLMHead(config)
        self.post_init()

    # -- training / scoring forward ------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        img_feats: torch.FloatTensor | None = None,
        img_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        drop_worst_ratio: float | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        logits_position: int | None = None,
        key_layout: KeyLayout | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> OscarCaptioningOutput | tuple:
        """
        Args:
            input_ids: (batch, text_len), caption slot of `config.max_caption_length` tokens
                (`[CLS] caption [SEP] [PAD]...`) then the tags. A shorter text is all caption.
            attention_mask: the 3-D seq2seq mask (batch, L, L), or a 2-D padding mask of the text
                (with `img_attention_mask` for the regions) or of text + regions, from which the
                seq2seq mask is built; no mask means every position is valid.
            inputs_embeds: (batch, text_len, hidden) word embeddings instead of `input_ids`.
            labels: (batch, text_len), target ids at the masked caption positions and -100 elsewhere
                (`caption_loss="masked"`), or the caption ids with -100 off the caption
                (`"shifted"`).
            drop_worst_ratio: overrides `config.drop_worst_ratio` for this call (the caption recipe
                passes 0 before `config.drop_worst_after` steps).
            cache (`past_key_values` before transformers 5.2x), use_cache: the key/value cache
                (`use_cache` defaults to `config.use_cache` when there are no labels); returned in
                the output's cache field.
            logits_position: compute the vocabulary logits at this text position only,
                (batch, 1, vocab) (the `[MASK]` slot while decoding).
            key_layout: decoding state set by `prepare_inputs_for_generation`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        cache = _resolve_cache_argument(cache, past_key_values)
        if use_cache is None:
            use_cache = cache is not None or (self.config.use_cache and labels is None and not self.training)
        if not use_cache:
            cache = None
        elif cache is None:
            cache = OscarDecodingCache()
        batch, text_len, _ = _text_shape(input_ids, inputs_embeds)
        checks = []
        if labels is not None:
            if tuple(labels.shape) != (batch, text_len):
                raise ValueError(
                    f"labels has shape {tuple(labels.shape)}, expected {(batch, text_len)} like input_ids "
                    "(-100 where there is no target)."
                )
            checks.append(
                _target_check(
                    "labels",
                    labels,
                    self.config.vocab_size,
                    "Mark positions without a target with -100 (the original code's -1 is not accepted).",
                )
            )
        continuing = key_layout is not None or (cache is not None and cache.get_seq_length() > 0)
        if not continuing and (attention_mask is None or attention_mask.dim() == 2):
            attention_mask = self._seq2seq_mask(attention_mask, img_attention_mask, img_feats, batch, text_len)
            img_attention_mask = None
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            img_feats=img_feats,
            img_attention_mask=img_attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            key_layout=key_layout,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            value_checks=checks,
        )
        text_hidden = outputs.last_hidden_state[:, :text_len]  # (batch, text_len, hidden)

        loss = None
        if logits_position is not None:
            logits = self.cls(text_hidden[:, logits_position : logits_position + 1])  # (batch, 1, vocab)
        elif labels is not None:
            if self.config.caption_loss == "shifted":
                text_hidden, labels = text_hidden[:, :-1], labels[:, 1:]
            targets = labels != -100
            logits = self.cls(text_hidden[targets])  # (num_targets, vocab)
            drop = self.config.drop_worst_ratio if drop_worst_ratio is None else drop_worst_ratio
            loss = caption_loss(logits, labels[targets], self.config.label_smoothing, drop)
        else:
            logits = self.cls(text_hidden)

        if key_layout is not None and key_layout.row_copies > 1:
            # The step encoded one row per image; every copy (beam) continues from it.
            logits = logits.repeat_interleave(key_layout.row_copies, dim=0)
            cache.batch_repeat_interleave(key_layout.row_copies)
        output = OscarCaptioningOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{_CACHE_NAME: cache},
        )
        return output if return_dict else output.to_tuple()

    def _seq2seq_mask(
        self,
        attention_mask: torch.Tensor | None,
        img_attention_mask: torch.Tensor | None,
        img_feats: torch.FloatTensor | None,
        batch: int,
        text_len: int,
    ) -> torch.Tensor:
        """The (batch, L, L) seq2seq mask from a 2-D padding mask (or none): the caption is the first
        `min(max_caption_length, text_len)` text tokens, never a region slot."""
        num_regions = img_feats.shape[1] if img_feats is not None else 0
        device = img_feats.device if img_feats is not None else self.device
        if attention_mask is None:
            attention_mask = torch.ones(batch, text_len, dtype=torch.long, device=device)
        if attention_mask.shape[1] == text_len + num_regions and num_regions > 0 and img_attention_mask is None:
            attention_mask, img_attention_mask = attention_mask[:, :text_len], attention_mask[:, text_len:]
        if tuple(attention_mask.shape) != (batch, text_len):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({batch}, {text_len}) for the "
                f"text, ({batch}, {text_len + num_regions}) for text and regions, or a 3-D seq2seq mask."
            )
        if img_attention_mask is None:
            img_attention_mask = attention_mask.new_ones(batch, num_regions)
        if tuple(img_attention_mask.shape) != (batch, num_regions):
            raise ValueError(
                f"img_attention_mask has shape {tuple(img_attention_mask.shape)}, expected ({batch}, {num_regions})."
            )
        caption_length = min(self.config.max_caption_length, text_len)
        return seq2seq_attention_mask(attention_mask, img_attention_mask, caption_length)

    # -- decoding ------------------------------------------------------------------------------

    def _expand_inputs_for_generation(self, *args, **kwargs):
        # Rows are copies of each other right after this expansion: the first decoding step
        # encodes one of each `expand_size` rows (see `KeyLayout.row_copies`). A static method
        # before transformers 5, a method since: `super()` serves both.
        input_ids, model_kwargs = super()._expand_inputs_for_generation(*args, **kwargs)
        model_kwargs["decoding_row_copies"] = kwargs.get("expand_size", args[0] if args else 1)
        return input_ids, model_kwargs

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        img_feats: torch.FloatTensor | None = None,
        img_attention_mask: torch.Tensor | None = None,
        tag_input_ids: torch.LongTensor | None = None,
        tag_attention_mask: torch.Tensor | None = None,
        tag_position_ids: torch.LongTensor | None = None,
        use_cache: bool = True,
        decoding_row_copies: int = 1,
        **kwargs,
    ) -> dict:
        """Builds one decoding step: `[new caption tokens, [MASK]]` (+ tags and regions on the first
        step or without a cache), positions counted over the caption's attention mask (so left
        padding changes nothing), token types, the step's mask, and the cache slots.

        Other keyword arguments (`output_attentions`, `output_hidden_states`, ...) pass through to
        `forward`; the loop's own position bookkeeping does not apply to this layout.
        """
        cache = kwargs.pop("cache", None)
        cache = _resolve_cache_argument(cache, kwargs.pop("past_key_values", None))
        # Pass on what `forward` takes (output_attentions, ...); the loop's own position bookkeeping
        # (cache_position, position_ids, ...) does not apply to this layout and is built below.
        own = {"cache_position", "position_ids", "token_type_ids", "inputs_embeds"}
        kwargs = {k: v for k, v in kwargs.items() if k in _forward_parameters(type(self)) and k not in own}
        batch, num_caption = input_ids.shape
        device = input_ids.device
        config = self.config
        if tag_input_ids is None:
            if tag_attention_mask is not None:
                raise ValueError("tag_attention_mask was given without tag_input_ids; pass both or neither.")
            tag_input_ids = input_ids.new_zeros(batch, 0)
        if tag_attention_mask is None:
            tag_attention_mask = (tag_input_ids != config.pad_token_id).long()
        num_regions = img_feats.shape[1] if img_feats is not None else 0
        if img_attention_mask is None:
            img_attention_mask = input_ids.new_ones(batch, num_regions)
        caption_valid = attention_mask.long() if attention_mask is not None else torch.ones_like(input_ids)
        context_valid = torch.cat([tag_attention_mask.long(), img_attention_mask.long()], dim=1)
        num_tags = tag_input_ids.shape[1]
        num_context = num_tags + num_regions
        if tag_position_ids is None and config.max_caption_length + num_tags > config.max_position_embeddings:
            raise ValueError(
                f"{num_tags} tag tokens from position {config.max_caption_length} exceed max_position_embeddings="
                f"{config.max_position_embeddings}; truncate the tags."
            )
        # Positions over the valid caption tokens: a left-padded prompt decodes like an unpadded one.
        positions = (caption_valid.cumsum(dim=1) - 1).clamp(min=0)  # (batch, num_caption)
        mask_position = caption_valid.sum(dim=1, keepdim=True)  # (batch, 1): the [MASK] slot
        if num_caption + 1 > config.max_caption_length and int(mask_position.max()) + 1 > config.max_caption_length:
            raise ValueError(
                f"Caption of {int(mask_position.max())} tokens plus [MASK] would overlap the tags at position "
                f"{config.max_caption_length}; lower max_length or raise max_caption_length."
            )

        use_cache = use_cache and cache is not None
        incremental = use_cache and cache.get_seq_length() > 0
        num_new = 1 if incremental else num_caption
        step_mask = caption_decoding_mask(caption_valid, context_valid, num_new, not incremental)
        num_cached = num_context + num_caption  # persistent keys once this step is written
        if use_cache and isinstance(cache, StaticCache):
            # The static cache returns all its slots: mask the ones not written yet.
            capacity = _static_cache_length(cache)
            free = capacity - num_cached
            if free < 0:
                raise ValueError(
                    f"The static cache holds {capacity} positions but tags, regions and caption "
                    f"need {num_cached}; let generate() size it (cache_implementation='static')."
                )
            step_mask = torch.cat(
                [step_mask[..., :-1], step_mask.new_zeros(*step_mask.shape[:2], free), step_mask[..., -1:]], dim=-1
            )
        step = {
            "use_cache": use_cache,
            "logits_position": num_new,  # the [MASK] slot
            "attention_mask": step_mask,
            "cache": cache if use_cache else None,
            **kwargs,
        }
        caption_positions = torch.cat([positions[:, num_caption - num_new :], mask_position], dim=1)
        if incremental:
            # Query [w_t, MASK]; keys [cache | w_t | MASK]; only w_t is written to the cache.
            step.update(
                input_ids=torch.cat([input_ids[:, -1:], input_ids.new_full((batch, 1), config.mask_token_id)], dim=1),
                token_type_ids=torch.zeros(batch, 2, dtype=torch.long, device=device),
                position_ids=caption_positions,
                key_layout=KeyLayout(
                    order=torch.arange(2, device=device),
                    num_transient=1,
                    cache_position=torch.tensor([num_cached - 1], device=device),
                ),
            )
            return step
        # Query [caption, MASK, tags, regions]; keys in the cache order [tags, regions, caption] + MASK.
        if tag_position_ids is None:
            tag_position_ids = (torch.arange(num_tags, device=device) + config.max_caption_length).expand(batch, -1)
        step.update(
            input_ids=torch.cat([input_ids, input_ids.new_full((batch, 1), config.mask_token_id), tag_input_ids], 1),
            token_type_ids=torch.cat(
                [torch.zeros(batch, num_new + 1, dtype=torch.long, device=device), torch.ones_like(tag_input_ids)],
                dim=1,
            ),
            position_ids=torch.cat([caption_positions, tag_position_ids], dim=1),
            img_feats=img_feats,
            key_layout=KeyLayout(
                order=torch.cat(
                    [
                        torch.arange(num_new + 1, num_new + 1 + num_context, device=device),
                        torch.arange(num_new, device=device),
                        torch.tensor([num_new], device=device),
                    ]
                ),
                num_transient=1 if use_cache else 0,
                cache_position=torch.arange(num_cached, device=device),
            ),
        )
        if isinstance(cache, OscarDecodingCache):
            cache.shared_length = num_context  # tags and regions come first in the cache
        copies = decoding_row_copies
        if (
            copies > 1
            and use_cache
            and not isinstance(cache, StaticCache)
            and not (step.get("output_attentions") or step.get("output_hidden_states"))
        ):
            # Encode one row per image; the forward repeats the logits and the cache to the copies.
            for name in ("input_ids", "token_type_ids", "position_ids", "img_feats", "attention_mask"):
                if step[name] is not None:
                    step[name] = step[name][::copies]
            step["key_layout"].row_copies = copies
        return step

    def generate(
        self,
        *args,
        original_decoding: bool | None = None,
        use_cbs: bool = False,
        fsm: Any = None,
        num_constraints: Any = None,
        min_constraints_to_satisfy: int = 2,
        **kwargs,
    ):
        """`GenerationMixin.generate`, plus `original_decoding=True` for the original greedy/beam search.

        The original search (what the paper's numbers used) keeps 2 candidates per beam, scores a
        finished hypothesis by sum(logprob) / len(hypothesis incl. `[CLS]`) ** length_penalty, never
        stops early, and writes `[SEP]` in the last slot of an unfinished caption. It supports
        greedy (`num_beams=1`) and beam search, `max_length`, `length_penalty` and
        `num_return_sequences` (the original's `num_keep_best`). `original_decoding` defaults to
        `generation_config.original_decoding` when that is set (converted checkpoints set it).

        `cache_implementation="static"` gets a static cache sized for tags + regions + caption.
        Assisted and prompt-lookup decoding are refused: each step predicts the one `[MASK]` slot,
        so there are no logits at candidate positions to verify.

        `use_cbs=True` runs the original NoCaps constrained beam search (`cbs_oscar.py`) instead: `fsm`
        holds one `ConstraintFSM` per image (`oscar_hf.processors.cbs_constraints`) or the original's
        dense tensor with `num_constraints`, and the caption is the best beam of a state satisfying
        at least `min_constraints_to_satisfy` constraints.
        """
        if use_cbs:
            return self._generate_constrained(fsm, num_constraints, min_constraints_to_satisfy, *args, **kwargs)
        generation_config = kwargs.get("generation_config") or self.generation_config
        if original_decoding is None:
            original_decoding = bool(getattr(generation_config, "original_decoding", False))
        for name in ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit"):
            if kwargs.get(name) is not None or getattr(generation_config, name, None) is not None:
                raise ValueError(
                    f"{name} is not supported by OscarForImageCaptioning: each decoding step predicts the token at "
                    "the one [MASK] slot, so candidate tokens cannot be verified in one pass. Use greedy, sampling "
                    "or beam search (num_beams)."
                )
        self._check_generate_inputs(args[0] if args else None, kwargs, generation_config, original_decoding)
        if original_decoding:
            return self._generate_original(*args, **kwargs)
        cache_implementation = kwargs.pop("cache_implementation", None) or generation_config.cache_implementation
        if cache_implementation == "static":
            kwargs = self._with_static_cache(generation_config, kwargs, *args)
        elif cache_implementation is not None:
            kwargs["cache_implementation"] = cache_implementation
        elif (
            kwargs.get("cache") is None
            and kwargs.get("past_key_values") is None
            and kwargs.get("use_cache", generation_config.use_cache) is not False
        ):
            kwargs[_CACHE_NAME] = OscarDecodingCache()
        return super().generate(*args, **kwargs)

    def _reorder_cache(self, cache: Cache, beam_idx: torch.LongTensor) -> Cache:
        """Beam search's re-ordering hook: beams move within their image, so `OscarDecodingCache`
        moves only the caption slots."""
        if isinstance(cache, OscarDecodingCache):
            cache.reorder_beams(beam_idx)
        else:
            cache.reorder_cache(beam_idx)
        return cache

    def _generate_constrained(
        self, fsm: Any, num_constraints: Any, min_constraints_to_satisfy: int, input_ids=None, **kwargs
    ):
        """`generate(use_cbs=True)`: the constrained beam search on the caption prompt's inputs."""
        from .cbs_oscar import constrained_beam_search

        if fsm is None:
            raise ValueError(
                "use_cbs=True needs fsm=: one ConstraintFSM per image (oscar_hf.processors.cbs_constraints)."
            )
        generation_config = kwargs.pop("generation_config", None) or self.generation_config
        return_dict = kwargs.pop("return_dict_in_generate", generation_config.return_dict_in_generate)
        kwargs.pop("attention_mask", None)  # the [CLS] prompt's mask: the search builds its own masks
        kwargs.pop("original_decoding", None)
        search = {
            name: kwargs.pop(name)
            for name in ("img_feats", "img_attention_mask", "tag_input_ids", "tag_attention_mask", "tag_position_ids")
            if name in kwargs
        }
        num_beams = kwargs.pop("num_beams", None) or generation_config.num_beams
        max_length = kwargs.pop("max_length", None) or generation_config.max_length
        use_cache = bool(kwargs.pop("use_cache", False))
        if kwargs:
            raise ValueError(
                f"generate(use_cbs=True) does not take {sorted(kwargs)}; the constrained search takes the caption "
                "prompt (input_ids, img_feats, tag inputs), num_beams, max_length and use_cache."
            )
        out = constrained_beam_search(
            self,
            fsm=fsm,
            num_constraints=num_constraints,
            min_constraints_to_satisfy=min_constraints_to_satisfy,
            input_ids=input_ids,
            num_beams=num_beams,
            max_length=max_length,
            use_cache=use_cache,
            bos_token_id=generation_config.bos_token_id,
            eos_token_id=generation_config.eos_token_id,
            **search,
        )
        return out if return_dict else out.sequences

    def _check_generate_inputs(
        self, prompt: torch.Tensor | None, kwargs: dict, generation_config, original_decoding: bool
    ) -> None:
        """What `generate` refuses before the first step: beam counts below 1, a tag mask without
        tags, inputs that disagree on the batch size, and (original search) no room after the prompt."""
        # Decoding appends [MASK] to every step, starts from [CLS] and stops at [SEP].
        _check_special_token_ids(self.config, ("mask_token_id", "bos_token_id", "eos_token_id"))
        num_beams = kwargs.get("num_beams", generation_config.num_beams)
        if num_beams is not None and (isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1):
            raise ValueError(f"num_beams={num_beams!r} is invalid: expected an integer >= 1 (1 is greedy search).")
        if kwargs.get("tag_attention_mask") is not None and kwargs.get("tag_input_ids") is None:
            raise ValueError(
                f"tag_attention_mask of shape {tuple(kwargs['tag_attention_mask'].shape)} was given without "
                "tag_input_ids: pass the tag ids with their mask, or neither."
            )
        prompt = prompt if prompt is not None else kwargs.get("input_ids", kwargs.get("inputs"))
        named = {"input_ids": prompt, **{name: kwargs.get(name) for name in _DECODING_INPUTS}}
        sizes = {name: value.shape[0] for name, value in named.items() if isinstance(value, torch.Tensor)}
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{name}: {size}" for name, size in sizes.items())
            raise ValueError(
                f"The decoding inputs disagree on the batch size ({listed}): expected one row per image in each "
                "(prompt, tags, regions and their masks)."
            )
        if 0 in sizes.values():
            raise ValueError(f"An empty batch ({sizes}): pass at least one image to caption.")
        if original_decoding:
            max_length = kwargs.get("max_length") or generation_config.max_length or 20
            prompt_length = prompt.shape[1] if isinstance(prompt, torch.Tensor) else 1
            if max_length <= prompt_length:
                raise ValueError(
                    f"max_length={max_length} leaves no room to decode: the prompt already holds {prompt_length} "
                    f"tokens and max_length counts them. Expected max_length > {prompt_length}; raise it."
                )

    def _with_static_cache(self, generation_config, kwargs: dict, *args) -> dict:
        """A static cache sized for tags + regions + the caption, instead of prompt + new tokens."""
        prompt = args[0] if args else kwargs.get("input_ids")
        prompt_length = prompt.shape[1] if prompt is not None else 1
        max_new = kwargs.get("max_new_tokens", generation_config.max_new_tokens)
        if kwargs.get("max_length") is not None:
            max_length = kwargs["max_length"]
        elif max_new is not None:
            max_length = prompt_length + max_new
        else:
            max_length = generation_config.max_length
        context = 0
        for name in ("tag_input_ids", "img_feats"):
            if kwargs.get(name) is not None:
                context += kwargs[name].shape[1]
        generation_config = copy.deepcopy(generation_config)
        generation_config.cache_implementation = None
        kwargs["generation_config"] = generation_config
        kwargs[_CACHE_NAME] = StaticCache(config=self.config, max_cache_len=context + max_length)
        return kwargs

    @torch.no_grad()
    def _generate_original(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        img_feats: torch.FloatTensor | None = None,
        img_attention_mask: torch.Tensor | None = None,
        tag_input_ids: torch.LongTensor | None = None,
        tag_attention_mask: torch.Tensor | None = None,
        tag_position_ids: torch.LongTensor | None = None,
        max_length: int | None = None,
        num_beams: int | None = None,
        length_penalty: float | None = None,
        num_return_sequences: int = 1,
        use_cache: bool = True,
        return_dict_in_generate: bool = False,
        pad_token_id: int | None = None,
        eos_token_id: int | None = None,
        do_sample: bool = False,
        **unsupported,
    ) -> OscarCaptionGenerationOutput | torch.LongTensor:
        if do_sample or unsupported:
            raise ValueError(
                f"original_decoding=True supports greedy and beam search only; unsupported arguments: "
                f"{sorted(unsupported) + (['do_sample'] if do_sample else [])}. Use original_decoding=False for "
                "sampling and other strategies."
            )
        gen = self.generation_config
        max_length = max_length if max_length is not None else (gen.max_length or 20)
        num_beams = num_beams if num_beams is not None else (gen.num_beams or 1)
        if length_penalty is None:
            length_penalty = gen.length_penalty if gen.length_penalty is not None else 1.0
        if img_feats is None:
            raise ValueError("img_feats is required for captioning.")
        batch = img_feats.shape[0]
        if input_ids is None:
            input_ids = torch.full((batch, 1), self.config.bos_token_id, dtype=torch.long, device=img_feats.device)
        search = _OriginalSearch(
            self,
            max_length=max_length,
            num_beams=num_beams,
            length_penalty=length_penalty,
            num_keep_best=num_return_sequences,
            use_cache=use_cache,
            pad_token_id=pad_token_id if pad_token_id is not None else self.config.pad_token_id,
            eos_token_id=eos_token_id if eos_token_id is not None else self.config.eos_token_id,
        )
        sequences, scores = search.run(
            input_ids,
            attention_mask,
            {
                "img_feats": img_feats,
                "img_attention_mask": img_attention_mask,
                "tag_input_ids": tag_input_ids,
                "tag_attention_mask": tag_attention_mask,
                "tag_position_ids": tag_position_ids,
            },
        )
        if return_dict_in_generate:
            return OscarCaptionGenerationOutput(sequences=sequences, sequences_scores=scores)
        return sequences


class _OriginalSearch:
    """Greedy and beam search exactly as the original Oscar code, on top of the cached decoding step."""

    def __init__(
        self,
        model: OscarForImageCaptioning,
        max_length: int,
        num_beams: int,
        length_penalty: float,
        num_keep_best: int,
        use_cache: bool,
        pad_token_id: int,
        eos_token_id: int,
    ):
        self.model = model
        self.max_length = max_length
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.num_keep_best = num_keep_best
        self.use_cache = use_cache
        self.eos = eos_token_id
        self.pad = pad_token_id
        if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"num_beams={num_beams!r} is invalid: expected an integer >= 1 (1 is greedy search).")
        if num_beams == 1 and num_keep_best != 1:
            raise ValueError("Greedy original decoding returns one sequence; set num_return_sequences=1.")
        if num_keep_best > num_beams:
            raise ValueError(f"num_return_sequences={num_keep_best} must be <= num_beams={num_beams}.")

    def _step(self, input_ids: torch.LongTensor, model_kwargs: dict) -> torch.Tensor:
        step = self.model.prepare_inputs_for_generation(input_ids, **model_kwargs)
        out = self.model(**step, return_dict=True)
        return out.logits[:, -1, :].float()  # (rows, vocab)

    def run(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None, context: dict):
        batch = input_ids.shape[0]

        def rep(x):  # one copy per beam, beams of an example adjacent
            return None if x is None else x.repeat_interleave(self.num_beams, dim=0)

        model_kwargs = {key: rep(value) for key, value in context.items()}
        model_kwargs.update(use_cache=self.use_cache, cache=OscarDecodingCache() if self.use_cache else None)
        # With the cache, tags, regions and [CLS] are encoded once per image, then copied to the beams.
        model_kwargs["decoding_row_copies"] = self.num_beams
        if attention_mask is not None:
            model_kwargs["attention_mask"] = rep(attention_mask)
        input_ids = rep(input_ids)
        if self.num_beams == 1:
            return self._greedy(input_ids, model_kwargs)
        return self._beam(input_ids, model_kwargs, batch)

    def _grow_mask(self, model_kwargs: dict, order: torch.LongTensor | None = None) -> None:
        mask = model_kwargs.get("attention_mask")
        if mask is not None:
            if order is not None:
                mask = mask[order]
            model_kwargs["attention_mask"] = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)

    def _greedy(self, input_ids: torch.LongTensor, model_kwargs: dict):
        batch = input_ids.shape[0]
        unfinished = torch.ones(batch, dtype=torch.long, device=input_ids.device)
        logprobs, alive = [], []
        while input_ids.shape[1] < self.max_length:
            logits = self._step(input_ids, model_kwargs)
            next_token = logits.argmax(dim=-1)
            logprobs.append(F.log_softmax(logits, dim=-1).gather(1, next_token[:, None]).squeeze(1))
            alive.append(unfinished.clone())
            tokens = next_token * unfinished + self.pad * (1 - unfinished)
            input_ids = torch.cat([input_ids, tokens[:, None]], dim=1)
            self._grow_mask(model_kwargs)
            unfinished = unfinished * (tokens != self.eos).long()
            if unfinished.max() == 0:
                break
        if input_ids.shape[1] == self.max_length:
            # An unfinished caption gets [SEP] in its last slot.
            input_ids[:, -1] = torch.where(unfinished.bool(), torch.full_like(unfinished, self.eos), input_ids[:, -1])
        alive_t = torch.stack(alive, dim=1).float()
        scores = (torch.stack(logprobs, dim=1) * alive_t).sum(dim=1) / alive_t.sum(dim=1)
        pad = self.max_length - input_ids.shape[1]
        if pad > 0:
            input_ids = F.pad(input_ids, (0, pad), value=self.pad)
        return input_ids, scores

    def _beam(self, input_ids: torch.LongTensor, model_kwargs: dict, batch: int):
        beams, device = self.num_beams, input_ids.device
        hyps = [_BeamHypotheses(self.num_keep_best, self.max_length, self.length_penalty) for _ in range(batch)]
        beam_scores = torch.zeros(batch, beams, device=device)
        beam_scores[:, 1:] = -1e9  # at the first step only the first copy of each example expands
        beam_scores = beam_scores.view(-1)
        done = [False] * batch
        while input_ids.shape[1] < self.max_length:
            cur_len = input_ids.shape[1]
            logits = self._step(input_ids, model_kwargs)
            vocab = logits.shape[-1]
            scores = F.log_softmax(logits, dim=-1) + beam_scores[:, None]
            next_scores, next_words = scores.view(batch, beams * vocab).topk(2 * beams, dim=1)
            chosen: list[tuple[float, int, int]] = []
            for b in range(batch):
                done[b] = done[b] or hyps[b].is_done(next_scores[b].max().item())
                if done[b]:
                    # Finished example: keep its rows in place (their content no longer matters).
                    chosen.extend((0.0, self.pad, b * beams + k) for k in range(beams))
                    continue
                kept = []
                for idx, score in zip(next_words[b].tolist(), next_scores[b].tolist()):
                    beam_id, word = divmod(idx, vocab)
                    row = b * beams + beam_id
                    if word == self.eos or cur_len + 1 == self.max_length:
                        hyps[b].add(input_ids[row, :cur_len].clone(), score)
                    else:
                        kept.append((score, word, row))
                    if len(kept) == beams:
                        break
                if not kept:
                    kept = [(0.0, self.pad, b * beams + k) for k in range(beams)]
                chosen.extend(kept)
            beam_scores = torch.tensor([c[0] for c in chosen], device=device, dtype=beam_scores.dtype)
            words = torch.tensor([c[1] for c in chosen], device=device, dtype=torch.long)
            rows = torch.tensor([c[2] for c in chosen], device=device, dtype=torch.long)
            input_ids = torch.cat([input_ids[rows], words[:, None]], dim=1)
            self._grow_mask(model_kwargs, rows)
            if model_kwargs.get("cache") is not None:
                # Beams only move within their example, whose context rows are equal: only the
                # cache needs the new order (the original's cached path forgot even this).
                model_kwargs["cache"].reorder_beams(rows)
            else:
                for key in (
                    "img_feats",
                    "img_attention_mask",
                    "tag_input_ids",
                    "tag_attention_mask",
                    "tag_position_ids",
                ):
                    if model_kwargs.get(key) is not None:
                        model_kwargs[key] = model_kwargs[key][rows]
            if all(done):
                break
        return self._collect(hyps, batch, device)

    def _collect(self, hyps: list[_BeamHypotheses], batch: int, device: torch.device):
        sequences = torch.full((batch, self.num_keep_best, self.max_length), self.pad, dtype=torch.long, device=device)
        scores = torch.full((batch, self.num_keep_best), -1e5, device=device)
        for b, hyp in enumerate(hyps):
            ranked = sorted(hyp.beams, key=lambda item: item[0], reverse=True)[: self.num_keep_best]
            for k, (score, tokens) in enumerate(ranked):
                sequences[b, k, : len(tokens)] = tokens
                sequences[b, k, len(tokens)] = self.eos
                scores[b, k] = score
        return sequences.view(batch * self.num_keep_best, -1), scores.view(-1)


class _BeamHypotheses:
    """The n best finished hypotheses of one example, scored sum(logprob) / len ** length_penalty."""

    def __init__(self, num_keep: int, max_length: int, length_penalty: float):
        self.num_keep = num_keep
        self.max_length = max_length - 1  # the original does not count [CLS] here
        self.length_penalty = length_penalty
        self.beams: list[tuple[float, torch.Tensor]] = []
        self.worst_score = 1e9

    def add(self, tokens: torch.Tensor, sum_logprobs: float) -> None:
        score = sum_logprobs / len(tokens) ** self.length_penalty
        if len(self.beams) < self.num_keep or score > self.worst_score:
            self.beams.append((score, tokens))
            if len(self.beams) > self.num_keep:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float) -> bool:
        if len(self.beams) < self.num_keep:
            return False
        return self.worst_score >= best_sum_logprobs / self.max_length**self.length_penalty


__all__ = [
    "OscarCaptionGenerationOutput",
    "OscarCaptioningOutput",
    "OscarForImageCaptioning",
    "OscarForImageTextRetrieval",
    "OscarForNLVR2",
    "OscarForPreTraining",
    "OscarForPreTrainingOutput",
    "OscarForSequenceClassification",
    "OscarImageTextRetrievalOutput",
    "OscarModel",
    "OscarModelOutput",
    "OscarPreTrainedModel",
    "caption_decoding_mask",
    "caption_loss",
    "seq2seq_attention_mask",
]
