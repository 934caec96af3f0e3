"""Collators for the fine-tuning tasks: rows of the `oscar_hf.data` datasets -> model inputs.

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
    "model_inputs",
    "retrieval_pairs",
]
