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

Fine-tuning collators (rows of the `oscar_hf.data` datasets -> model inputs):

Each collator takes the rows a `DataLoader` fetched (mappings with the dataset columns, as
`datasets` returns them with `with_format("numpy")`) and calls `OscarProcessor` with the layout of
the task, so the recipes only choose a collator:

- `OscarClassificationCollator`: VQA (dense soft scores) and GQA (answer ids), `[CLS] question
  [SEP] tags [SEP]` + regions;
- `OscarNLVR2Collator`: the sentence with the left and the right image, (batch, 2, ...) tensors;
- `OscarRetrievalTrainCollator`: image-text matching with one negative per positive pair, drawn as
  the original `run_retrieval.py` does (a caption of another image, or another image);
- `OscarRetrievalPairCollator`: (image, caption) pairs to score, for evaluation.

`IndexedRows` wraps a dataset so every row also carries its position (`row_index`), which the
evaluation loops gather to look up answers or identifiers after `gather_for_metrics`.

Example:
    >>> from torch.utils.data import DataLoader
    >>> loader = DataLoader(IndexedRows(vqa_val), batch_size=64,
    ...                     collate_fn=OscarClassificationCollator(processor))  # doctest: +SKIP
    >>> batch = next(iter(loader))  # input_ids, ..., img_feats, labels, row_index  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
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

    Returns `input_ids`, `token_type_ids`, `attention_mask`, `img_feats`, `img_attention_mask` and `labels`
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
        return batch


# ------------------------------------------------------------------------------------------------
# Fine-tuning tasks
# ------------------------------------------------------------------------------------------------


#: Keys the collators add that are not model inputs; recipes pop them before the forward pass.
META_KEYS = ("row_index", "pair_index")


def _tags(value: Any) -> str:
    # Parquet list columns come back as NumPy object arrays; join_tags wants a list of str.
    if value is None:
        return ""
    return join_tags(value if isinstance(value, str) else [str(t) for t in value])


def _column(example: Mapping[str, Any], key: str, index: int) -> Any:
    if key not in example:
        raise ValueError(
            f"Row {index} has no column {key!r} (columns: {sorted(example)}); build the dataset with "
            "`python -m oscar_hf.data build <task>` or rename the column."
        )
    return example[key]


def _row_index(examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    if all("row_index" in e for e in examples):
        return {"row_index": torch.tensor([int(e["row_index"]) for e in examples], dtype=torch.long)}
    return {}


class IndexedRows(torch.utils.data.Dataset):
    """A map-style dataset whose rows carry their position as `row_index` (batched fetch kept)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[int(index)], "row_index": int(index)}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        # `datasets.Dataset` reads a list of rows in one Arrow call; keep that speed.
        rows = self.dataset.__getitems__([int(i) for i in indices])
        return [{**row, "row_index": int(i)} for row, i in zip(rows, indices)]


class OscarClassificationCollator:
    """VQA / GQA rows -> `[CLS] question [SEP] tags [SEP]` + regions (+ labels).

    Args:
        processor: the `OscarProcessor` (its `max_seq_length` unless `max_seq_length` is given).
        text_key / tags_key / labels_key: dataset columns (defaults: the VQA/GQA schema).
        drop_tags: encode the question alone (ablation; Oscar always reads the tags).

    `labels` (dense soft scores for VQA, answer ids for GQA) are passed through when present.
    """

    def __init__(
        self,
        processor: OscarProcessor,
        text_key: str = "question",
        tags_key: str = "tags",
        labels_key: str = "labels",
        max_seq_length: int | None = None,
        drop_tags: bool = False,
    ) -> None:
        self.processor = processor
        self.text_key, self.tags_key, self.labels_key = text_key, tags_key, labels_key
        self.max_seq_length = max_seq_length
        self.drop_tags = drop_tags

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> BatchFeature:
        texts = [str(_column(e, self.text_key, i)) for i, e in enumerate(examples)]
        tags = None if self.drop_tags else [_tags(e.get(self.tags_key)) for e in examples]
        labels = None
        if all(self.labels_key in e for e in examples):
            labels = np.stack([np.asarray(e[self.labels_key]) for e in examples])
        out = self.processor(
            texts,
            tags=tags,
            region_features=[_column(e, "img_feats", i) for i, e in enumerate(examples)],
            labels=labels,
            max_seq_length=self.max_seq_length,
        )
        out.update(_row_index(examples))
        return out


class OscarNLVR2Collator:
    """NLVR2 rows (`sentence`, `left_*` / `right_*` regions, `labels`) -> (batch, 2, ...) inputs.

    Args:
        use_tags: put each image's tags after the sentence. The original reads them only with
            `--use_label_seq`, which the released NLVR2 commands do not pass, so the default is False.
    """

    def __init__(self, processor: OscarProcessor, use_tags: bool = False, max_seq_length: int | None = None) -> None:
        self.processor = processor
        self.use_tags = use_tags
        self.max_seq_length = max_seq_length

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> BatchFeature:
        sentences = [str(_column(e, "sentence", i)) for i, e in enumerate(examples)]
        regions = [(_column(e, "left_img_feats", i), _column(e, "right_img_feats", i)) for i, e in enumerate(examples)]
        tags = None
        if self.use_tags:
            tags = [(_tags(e.get("left_tags")), _tags(e.get("right_tags"))) for e in examples]
        labels = None
        if all("labels" in e for e in examples):
            labels = np.asarray([int(e["labels"]) for e in examples], dtype=np.int64)
        out = self.processor.nlvr2(
            sentences, tags=tags, region_features=regions, labels=labels, max_seq_length=self.max_seq_length
        )
        out.update(_row_index(examples))
        return out


def caption_table(images: Any) -> tuple[list[str], np.ndarray]:
    """All captions of a retrieval split, image by image, and the image row of each caption."""
    captions: list[str] = []
    owner: list[int] = []
    for row, texts in enumerate(images["captions"]):
        if len(texts) == 0:
            raise ValueError(
                f"Image row {row} (image_id {images[row]['image_id']!r}) has no caption; retrieval needs at "
                "least one per image. Fix: drop the image or rebuild the split."
            )
        captions.extend(str(t) for t in texts)
        owner.extend([row] * len(texts))
    return captions, np.asarray(owner, dtype=np.int64)


class OscarRetrievalTrainCollator:
    """Image-text matching batches: every positive (image, caption) pair plus one negative.

    As in the original `run_retrieval.py`: draw another image uniformly; with probability
    `caption_negative_probability` (0.5) the negative is a random caption of that image with the
    positive's regions and tags, otherwise the positive caption with that image's regions and
    tags. The batch is the positives followed by the negatives (labels 1, then 0), so a
    `DataLoader` batch of B pairs gives 2B model rows.

    Args:
        images: the retrieval split (one row per image: `captions`, `img_feats`, `tags`), the same
            object the training pairs index into.
        generator: every random draw comes from it (save it with the checkpoints to resume exactly).

    Examples fed to it are `(image_row, caption_index)` pairs; `retrieval_pairs(images)` lists them.
    """

    def __init__(
        self,
        processor: OscarProcessor,
        images: Any,
        generator: torch.Generator | None = None,
        caption_negative_probability: float = 0.5,
        max_seq_length: int | None = None,
    ) -> None:
        if len(images) < 2:
            raise ValueError(f"Retrieval training needs at least 2 images to draw negatives, got {len(images)}.")
        if not 0.0 <= caption_negative_probability <= 1.0:
            raise ValueError(
                f"caption_negative_probability={caption_negative_probability}; expected a value in [0, 1]."
            )
        self.processor = processor
        self.images = images
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.caption_negative_probability = caption_negative_probability
        self.max_seq_length = max_seq_length
        self.num_captions = [len(c) for c in images["captions"]]

    def __call__(self, examples: Sequence[tuple[int, int]]) -> BatchFeature:
        rows = [int(image) for image, _ in examples]
        count = len(rows)
        # Another image for each pair: a draw over the other n - 1 images, shifted past its own.
        others = torch.randint(0, len(self.images) - 1, (count,), generator=self.generator).tolist()
        others = [o + (o >= r) for o, r in zip(others, rows)]
        caption_side = (torch.rand(count, generator=self.generator) < self.caption_negative_probability).tolist()
        pick = torch.rand(count, generator=self.generator).tolist()
        needed = sorted(set(rows) | set(others))
        fetched = dict(zip(needed, self.images.__getitems__(needed)))
        texts, tags, feats = [], [], []
        for row, cap in examples:
            texts.append(str(fetched[row]["captions"][cap]))
            tags.append(_tags(fetched[row]["tags"]))
            feats.append(fetched[row]["img_feats"])
        for (row, cap), other, caption_negative, u in zip(examples, others, caption_side, pick):
            if caption_negative:  # a caption of another image, own regions and tags
                neg_cap = min(int(u * self.num_captions[other]), self.num_captions[other] - 1)
                texts.append(str(fetched[other]["captions"][neg_cap]))
                tags.append(_tags(fetched[row]["tags"]))
                feats.append(fetched[row]["img_feats"])
            else:  # own caption, another image's regions and tags
                texts.append(str(fetched[row]["captions"][cap]))
                tags.append(_tags(fetched[other]["tags"]))
                feats.append(fetched[other]["img_feats"])
        labels = np.asarray([1] * count + [0] * count, dtype=np.int64)
        return self.processor(
            texts, tags=tags, region_features=feats, labels=labels, max_seq_length=self.max_seq_length
        )


def retrieval_pairs(images: Any) -> list[tuple[int, int]]:
    """Every (image_row, caption_index) positive pair of a retrieval split (the training examples)."""
    return [(row, cap) for row, texts in enumerate(images["captions"]) for cap in range(len(texts))]


class ScoringPairs(torch.utils.data.Dataset):
    """(image_row, caption_number) pairs to score: the full grid, image by image, or given pairs.

    The grid is computed on access, so a COCO 5K evaluation (125M pairs) costs no memory up front.

    Example:
        >>> pairs = ScoringPairs.grid(2, 3)
        >>> len(pairs), pairs[4]
        (6, (1, 1))
    """

    def __init__(self, pairs: np.ndarray | None = None, num_texts: int | None = None, num_images: int | None = None):
        self.pairs = None if pairs is None else np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        self.num_images, self.num_texts = num_images, num_texts

    @classmethod
    def grid(cls, num_images: int, num_texts: int) -> ScoringPairs:
        return cls(None, num_texts=num_texts, num_images=num_images)

    def __len__(self) -> int:
        return len(self.pairs) if self.pairs is not None else self.num_images * self.num_texts

    def __getitem__(self, index: int) -> tuple[int, int]:
        if self.pairs is not None:
            image, text = self.pairs[index]
            return int(image), int(text)
        return divmod(int(index), self.num_texts)


class OscarRetrievalPairCollator:
    """(image_row, caption_number) pairs -> inputs for scoring, with `pair_index` (B, 2) kept.

    `captions` is the flat caption list of `caption_table(images)`; the caption number indexes it.
    """

    def __init__(
        self, processor: OscarProcessor, images: Any, captions: Sequence[str], max_seq_length: int | None = None
    ) -> None:
        self.processor = processor
        self.images = images
        self.captions = captions
        self.max_seq_length = max_seq_length

    def __call__(self, pairs: Sequence[tuple[int, int]]) -> BatchFeature:
        needed = sorted({int(image) for image, _ in pairs})
        fetched = dict(zip(needed, self.images.__getitems__(needed)))
        out = self.processor(
            [self.captions[int(text)] for _, text in pairs],
            tags=[_tags(fetched[int(image)]["tags"]) for image, _ in pairs],
            region_features=[fetched[int(image)]["img_feats"] for image, _ in pairs],
            max_seq_length=self.max_seq_length,
        )
        out["pair_index"] = torch.tensor([[int(i), int(t)] for i, t in pairs], dtype=torch.long)
        return out


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch without the collators' bookkeeping keys (`row_index`, `pair_index`)."""
    return {k: v for k, v in batch.items() if k not in META_KEYS}


__all__ = [
    "META_KEYS",
    "IndexedRows",
    "OscarClassificationCollator",
    "OscarNLVR2Collator",
    "OscarRetrievalPairCollator",
    "OscarRetrievalTrainCollator",
    "ScoringPairs",
    "caption_table",
    "mask_tokens",
    "model_inputs",
    "retrieval_pairs",
    "text_candidates",
]
