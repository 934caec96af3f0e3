"""Data collators that apply Oscar's training-time randomness: masking and contrastive pollution.

Every random choice comes from a `torch.Generator` the caller seeds, so a batch is reproducible
from (seed, examples) alone, independent of the global RNG and of the data-loader workers.

- `OscarPretrainingCollator`: the Oscar / Oscar+ pre-training batch. Contrastive pollution of the
  (text_a, text_b, image) triple with the original label meaning (0 matched, 1 text_b polluted,
  2 text_a polluted), then BERT masking over text_a and text_b tokens (15%; 80% `[MASK]`,
  10% random token, 10% unchanged).
- `OscarCaptioningCollator`: captioning training. Masks `min(max(round(0.15 * n), 1), 3)` positions of
  each caption (`n` counts `[CLS]` caption `[SEP]`; candidates exclude `[CLS]` and include `[SEP]`),
  80/10/10 as above, labels -100 except at the masked positions.

Examples are mappings. Text: `text_a` (or `text` / `caption` / `question`), `text_b` (or `tags`, a
string or list of class names). Regions: `img_feats` (num_regions, 2054), or `region_features`
with `boxes` and `image_size`. Optional `image_id` keeps pollution from drawing the same image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.feature_extraction_utils import BatchFeature

from .processing_oscar import OscarProcessor, join_tags


TEXT_A_KEYS = ("text_a", "text", "caption", "question")
TEXT_B_KEYS = ("text_b", "tags", "answer")


def _get(example: Mapping[str, Any], keys: Sequence[str], index: int, required: bool = True) -> Any:
    for key in keys:
        if key in example:
            return example[key]
    if required:
        raise ValueError(f"Example {index} has none of the keys {list(keys)}; got {sorted(example)}.")
    return None


def _region_kwargs(examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Processor keyword arguments for the regions of `examples` (all in one format)."""
    if all("img_feats" in e for e in examples):
        return {"region_features": [e["img_feats"] for e in examples]}
    if all("region_features" in e for e in examples):
        return {
            "region_features": [e["region_features"] for e in examples],
            "boxes": [e.get("boxes") for e in examples],
            "image_sizes": [e.get("image_size") for e in examples],
        }
    if any("img_feats" in e or "region_features" in e for e in examples):
        raise ValueError("Every example of a batch needs regions in the same format (img_feats or region_features).")
    return {}


def mask_tokens(
    input_ids: torch.Tensor,
    candidates: torch.Tensor,
    probability: float,
    vocab_size: int,
    mask_token_id: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: each candidate is chosen with `probability`; chosen tokens become `[MASK]` (80%),
    a random vocabulary token (10%) or stay (10%). Returns (masked ids, labels with -100 off target)."""
    draw = torch.rand(input_ids.shape, generator=generator)
    chosen = candidates & (draw < probability)
    return _replace(input_ids, chosen, vocab_size, mask_token_id, generator)


def _replace(
    input_ids: torch.Tensor,
    chosen: torch.Tensor,
    vocab_size: int,
    mask_token_id: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[chosen & (action < 0.8)] = mask_token_id
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    masked[to_random] = random_ids[to_random]
    return masked, labels


def text_candidates(
    input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Positions of text_a and text_b tokens in `[CLS] a [SEP] b [SEP] [PAD]...` rows (no special tokens)."""
    valid = attention_mask.bool()
    lengths = valid.sum(1)
    positions = torch.arange(input_ids.shape[1])[None, :]
    # The [SEP] closing text_a is the last type-0 token before the tags (or the last token without tags).
    sep_a = ((token_type_ids == 0) & valid).sum(1) - 1
    special = (positions == 0) | (positions == (lengths - 1)[:, None]) | (positions == sep_a[:, None])
    return valid & ~special


class OscarPretrainingCollator:
    r"""Pre-training batches: contrastive pollution, then masked-token targets.

    Args:
        processor: the `OscarProcessor` that lays out `[CLS] a [SEP] b [SEP]` and the regions.
        num_contrast_classes: 3 (Oscar+: 50% matched, 25% text_b polluted, 25% text_a polluted) or
            2 (Oscar: 50% matched, 50% text_b polluted).
        text_a_pollution_probability: the original `texta_false_prob` (0.25 for Oscar+, 0 for Oscar).
            One uniform draw `u` per example decides, as the original: `u > 0.5` matched (0);
            `u > texta_false_prob` and text_b non-empty: text_b polluted (1); else text_a polluted
            (`num_contrast_classes - 1`).
        mlm_probability: chance that each text_a / text_b token becomes a target (0.15).
        mask_polluted_text_b: keep masked-token targets on a polluted text_b (the original's
            default `mask_loss_for_unmatched=1`).
        negatives: optional pool of examples to draw polluting texts from; by default other
            examples of the batch (with a different `image_id` when given).
        generator: seeded `torch.Generator`; every random choice comes from it.
        original_labels: return labels as the original (`-1` off target, spanning text + regions)
            instead of `-100` over the text.
        max_seq_length: text length (35 in Oscar pre-training); defaults to the processor's.

    Example:
        >>> import torch
        >>> collator = OscarPretrainingCollator(processor, generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
        >>> batch = collator([{"text_a": "a dog on a couch", "text_b": "dog couch", "img_feats": feats}, ...])  # doctest: +SKIP
        >>> batch["labels"].shape, batch["contrastive_labels"].shape  # doctest: +SKIP
    """

    def __init__(
        self,
        processor: OscarProcessor,
        num_contrast_classes: int = 3,
        text_a_pollution_probability: float | None = None,
        mlm_probability: float = 0.15,
        mask_polluted_text_b: bool = True,
        negatives: Sequence[Mapping[str, Any]] | None = None,
        generator: torch.Generator | None = None,
        original_labels: bool = False,
        max_seq_length: int | None = None,
    ) -> None:
        if num_contrast_classes not in (2, 3):
            raise ValueError(f"num_contrast_classes={num_contrast_classes}; expected 2 (Oscar) or 3 (Oscar+).")
        if text_a_pollution_probability is None:
            text_a_pollution_probability = 0.25 if num_contrast_classes == 3 else 0.0
        if not 0.0 <= text_a_pollution_probability <= 0.5:
            raise ValueError(
                f"text_a_pollution_probability={text_a_pollution_probability}; expected a value in [0, 0.5] "
                "(0.25 for Oscar+, 0 for Oscar)."
            )
        if num_contrast_classes == 2 and text_a_pollution_probability > 0:
            raise ValueError("With 2 contrast classes only text_b is polluted; set text_a_pollution_probability=0.")
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability={mlm_probability}; expected a value in (0, 1).")
        self.processor = processor
        self.num_contrast_classes = num_contrast_classes
        self.text_a_pollution_probability = text_a_pollution_probability
        self.mlm_probability = mlm_probability
        self.mask_polluted_text_b = mask_polluted_text_b
        self.negatives = list(negatives) if negatives is not None else None
        self.generator = generator
        self.original_labels = original_labels
        self.max_seq_length = max_seq_length

    def _draw_other(self, pool: Sequence[Mapping[str, Any]], example: Mapping[str, Any], own: int | None) -> Mapping:
        """A random example of `pool` from another image (by `image_id`, else by position)."""
        image_id = example.get("image_id")
        allowed = [
            i
            for i, other in enumerate(pool)
            if (own is None or i != own) and (image_id is None or other.get("image_id") != image_id)
        ]
        if not allowed:
            raise ValueError(
                "Cannot pollute: no example from another image to draw text from. Use batches of at least 2 "
                "images or pass negatives=[...] to the collator."
            )
        pick = int(torch.randint(len(allowed), (1,), generator=self.generator))
        return pool[allowed[pick]]

    def pollute(self, examples: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], list[int]]:
        """(text_a, text_b, contrastive label) per example, after the original pollution rule."""
        pool = self.negatives if self.negatives is not None else examples
        texts_a, texts_b, labels = [], [], []
        for i, example in enumerate(examples):
            text_a = _get(example, TEXT_A_KEYS, i)
            text_b = join_tags(_get(example, TEXT_B_KEYS, i, required=False))
            u = float(torch.rand((), generator=self.generator))
            label = 0
            if u <= 0.5:
                other = self._draw_other(pool, example, None if self.negatives is not None else i)
                if u > self.text_a_pollution_probability and text_b:
                    text_b, label = join_tags(_get(other, TEXT_B_KEYS, i, required=False)), 1
                else:
                    text_a, label = _get(other, TEXT_A_KEYS, i), self.num_contrast_classes - 1
            texts_a.append(text_a)
            texts_b.append(text_b)
            labels.append(label)
        return texts_a, texts_b, labels

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> BatchFeature:
        if not examples:
            raise ValueError("Cannot collate an empty list of examples.")
        texts_a, texts_b, contrastive = self.pollute(examples)
        batch = self.processor(texts_a, tags=texts_b, max_seq_length=self.max_seq_length, **_region_kwargs(examples))
        candidates = text_candidates(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        if not self.mask_polluted_text_b:
            polluted_b = torch.tensor(contrastive)[:, None] == 1
            candidates &= ~(polluted_b & (batch["token_type_ids"] == 1))
        tokenizer = self.processor.tokenizer
        input_ids, labels = mask_tokens(
            batch["input_ids"],
            candidates,
            self.mlm_probability,
            len(tokenizer),
            tokenizer.mask_token_id,
            self.generator,
        )
        batch["input_ids"] = input_ids
        if self.original_labels:
            regions = batch["img_feats"].shape[1] if "img_feats" in batch else 0
            labels = torch.cat(
                [labels.masked_fill(labels == -100, -1), labels.new_full((labels.shape[0], regions), -1)], 1
            )
        batch["labels"] = labels
        batch["contrastive_labels"] = torch.tensor(contrastive, dtype=torch.long)
        return batch


class OscarCaptioningCollator:
    r"""Captioning training batches: the seq2seq layout with masked caption targets.

    Args:
        processor: the `OscarProcessor` (its `max_caption_length` / `max_tag_length` set the layout).
        mask_probability: fraction of caption tokens to mask (0.15), rounded as the original
            (Python `round`), at least 1 and at most `max_masked_tokens`.
        max_masked_tokens: cap on targets per caption (3).
        generator: seeded `torch.Generator`.
        return_original: also return `masked_pos` (batch, Lt) int32 and `masked_ids`
            (batch, max_masked_tokens) padded with `[PAD]`, the original training tensors.

    Returns `input_ids`, `token_type_ids`, 3-D `attention_mask`, `img_feats` and `labels`
    (batch, Lt): -100 everywhere except masked caption positions, which hold the original id.

    Example:
        >>> collator = OscarCaptioningCollator(processor, generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
        >>> batch = collator([{"caption": "a dog on a couch", "tags": "dog couch", "img_feats": feats}])  # doctest: +SKIP
    """

    def __init__(
        self,
        processor: OscarProcessor,
        mask_probability: float = 0.15,
        max_masked_tokens: int = 3,
        generator: torch.Generator | None = None,
        return_original: bool = False,
    ) -> None:
        if not 0.0 < mask_probability <= 1.0 or max_masked_tokens < 1:
            raise ValueError(
                f"mask_probability={mask_probability}, max_masked_tokens={max_masked_tokens}; expected a "
                "probability in (0, 1] and at least 1 target per caption."
            )
        self.processor = processor
        self.mask_probability = mask_probability
        self.max_masked_tokens = max_masked_tokens
        self.generator = generator
        self.return_original = return_original

    def num_masked(self, caption_length: int) -> int:
        """Targets for a caption of `caption_length` tokens including `[CLS]` and `[SEP]` (the original rule)."""
        return int(min(max(round(self.mask_probability * caption_length), 1), self.max_masked_tokens))

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> BatchFeature:
        if not examples:
            raise ValueError("Cannot collate an empty list of examples.")
        captions = [_get(e, TEXT_A_KEYS, i) for i, e in enumerate(examples)]
        tags = [join_tags(_get(e, TEXT_B_KEYS, i, required=False)) for i, e in enumerate(examples)]
        batch = self.processor.captioning(captions, tags=tags, **_region_kwargs(examples))
        input_ids = batch["input_ids"]
        slot = self.processor.max_caption_length
        tokenizer = self.processor.tokenizer
        # Real caption tokens are the non-[PAD] tokens of the caption slot ([CLS] caption [SEP]).
        caption_lengths = (input_ids[:, :slot] != tokenizer.pad_token_id).sum(1).tolist()
        chosen = torch.zeros_like(input_ids, dtype=torch.bool)
        for row, length in enumerate(caption_lengths):
            order = torch.randperm(length - 1, generator=self.generator)[: self.num_masked(length)] + 1
            chosen[row, order] = True
        masked, labels = _replace(input_ids, chosen, len(tokenizer), tokenizer.mask_token_id, self.generator)
        batch["input_ids"] = masked
        batch["labels"] = labels
        if self.return_original:
            batch["masked_pos"] = chosen.to(torch.int32)
            masked_ids = torch.full((len(examples), self.max_masked_tokens), tokenizer.pad_token_id, dtype=torch.long)
            for row in range(len(examples)):
                targets = input_ids[row][chosen[row]]
                masked_ids[row, : targets.numel()] = targets
            batch["masked_ids"] = masked_ids
        return batch


__all__ = ["OscarCaptioningCollator", "OscarPretrainingCollator", "mask_tokens", "text_candidates"]
