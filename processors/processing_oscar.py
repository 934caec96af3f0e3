"""`OscarProcessor`: text, object tags and regions -> Oscar model inputs, for every task.

The layouts are those of the original tensorizers (microsoft/Oscar):

- classification, VQA, GQA, retrieval, pre-training: `[CLS] text [SEP] tags [SEP] [PAD]...`, token
  type 0 for `[CLS]` + text + `[SEP]`, 1 for the tags and their `[SEP]`, 0 for padding; text and
  tags truncated together by popping from the longer one (ties pop the tags);
- NLVR2: the same per (sentence, image) pair, stacked into a choice dimension;
- captioning training: a caption slot of `max_caption_length` tokens (`[CLS] caption [SEP] [PAD]...`),
  then `tags [SEP]`, then padding, with 2-D padding masks from which the model builds the seq2seq mask;
- caption generation: the `[CLS]` prompt plus `tag_input_ids` for `OscarForImageCaptioning.generate`.

Raw images: every layout also takes `images=` (paths, URLs, PIL images, arrays); the processor's
detector turns them into regions first. The detector is passed in (`detector=`) or loaded on first
use from the processor config's `detector_name_or_path`, or from the `detector/` subfolder of the
folder the processor was loaded from (a converted VinVL detector there gives the exact 2054-d region
vectors and tags of the released features).

Masking (MLM, caption targets) and contrastive pollution are applied by the data collators in
`oscar_hf.processors.collators`, which call this processor.

This file is a flat remote-code file: it imports installed libraries and, relatively, only
`image_processing_oscar.py` and `detection_oscar.py`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .detection_oscar import load_detector, load_rgb_image
from .image_processing_oscar import OscarRegionFeatureProcessor


TagsInput = str | Sequence[str] | None
TEXT_PADDING = ("max_length", "longest")


def join_tags(tags: TagsInput) -> str:
    """Object tags as Oscar reads them: class names joined by spaces, duplicates kept.

    Example:
        >>> join_tags(["giraffe", "giraffe", "tree"])
        'giraffe giraffe tree'
        >>> join_tags("dog couch")
        'dog couch'
    """
    if tags is None:
        return ""
    if isinstance(tags, str):
        return tags.strip()
    if not all(isinstance(tag, str) for tag in tags):
        raise ValueError(f"tags must be a string or a list of class-name strings, got {tags!r}.")
    return " ".join(tag.strip() for tag in tags if tag.strip())


def truncate_pair(tokens_a: list[int], tokens_b: list[int], max_total: int) -> tuple[list[int], list[int]]:
    """The original `_truncate_seq_pair`: pop from the longer list until both fit; ties pop `tokens_b`.

    Example:
        >>> truncate_pair([1, 2, 3], [4, 5, 6], 4)
        ([1, 2], [4, 5])
    """
    a, b = list(tokens_a), list(tokens_b)
    while len(a) + len(b) > max_total:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def _image_list(images: Any) -> list:
    """One image (path, URL, PIL image, array) or a list of them -> a list."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)) or torch.is_tensor(images):
        return [images]
    return list(images)


def _batch_size(text: Any) -> int | None:
    if text is None:
        return None
    return 1 if isinstance(text, str) else len(text)


class OscarProcessor(ProcessorMixin):
    r"""Tokenizer + region processor with the original Oscar layouts of every task.

    Args:
        image_processor: an `OscarRegionFeatureProcessor` (region features -> `img_feats`).
        tokenizer: a BERT WordPiece tokenizer (bert-base-uncased vocabulary for released checkpoints).
        max_seq_length: text length of the classification-style layouts (VQA 128, GQA 165,
            NLVR2 55, retrieval 70, pre-training 35).
        max_caption_length: caption slot width in captioning (`max_seq_a_length`, 40); tags start at
            this position.
        max_tag_length: tag tokens plus their `[SEP]` after the caption slot (30).
        text_padding: "max_length" pads to the fixed lengths (the original), "longest" to the
            longest row of the batch (classification layouts and tag prompts).
        detector_name_or_path: the object detector the pipelines run on raw images (an
            `AutoModelForObjectDetection` folder or Hub repository). A relative path is resolved
            against the model folder, so an exported folder can carry its detector in `detector/`.
            Loaded on the first `images=` call (the pipelines load their own copy on their device).
            When None, the `detector/` subfolder of the folder the processor was loaded from is used
            if it exists.
        detector_score_threshold, detector_min_boxes, detector_max_boxes, detector_nms_threshold:
            the detector's box selection (VinVL: 0.2, 10, 100, no NMS), see `select_detections`. A
            VinVL detector takes the first three as its config's values and keeps its own NMS.
        detector: a detector callable (`detector(list_of_pil_images) -> list of region records`)
            used for `images=` instead of loading one. Not saved with the processor.

    Region inputs (every method): `images=` raw images run through the detector, `regions=` a list
    of detector outputs (mappings with `features`, `boxes`, `image_size` and optionally `tags`), or
    `region_features=` with `boxes=` and `image_sizes=` (see `OscarRegionFeatureProcessor`), or
    nothing for text alone.

    Example:
        >>> from transformers import BertTokenizerFast
        >>> processor = OscarProcessor(OscarRegionFeatureProcessor(max_img_seq_length=4), tokenizer, max_seq_length=16)  # doctest: +SKIP
        >>> inputs = processor("what is the dog on?", tags=["dog", "couch"], region_features=[feats],
        ...                    boxes=[boxes], image_sizes=[(480, 640)])  # doctest: +SKIP
        >>> sorted(inputs)  # doctest: +SKIP
        ['attention_mask', 'img_attention_mask', 'img_feats', 'input_ids', 'token_type_ids']
    """

    attributes = ["image_processor", "tokenizer"]
    # transformers 4 finds the sub-processors through these names; 5 derives them from `__init__`
    # and warns on every load that `image_processor_class` is deprecated.
    if int(transformers.__version__.split(".")[0]) < 5:
        image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        image_processor: OscarRegionFeatureProcessor | None = None,
        tokenizer: Any = None,
        max_seq_length: int = 128,
        max_caption_length: int = 40,
        max_tag_length: int = 30,
        text_padding: str = "max_length",
        detector_name_or_path: str | None = None,
        detector_score_threshold: float = 0.2,
        detector_min_boxes: int = 10,
        detector_max_boxes: int = 100,
        detector_nms_threshold: float | None = None,
        detector: Any = None,
        **kwargs: Any,
    ) -> None:
        if detector is not None and not callable(detector):
            raise ValueError(
                f"detector is a {type(detector).__name__}; expected a callable detector(images) -> region records "
                "(e.g. VinVLDetectorAdapter.from_pretrained(folder)). Folders go to detector_name_or_path."
            )
        if image_processor is None:
            image_processor = OscarRegionFeatureProcessor()
        if tokenizer is None:
            raise ValueError("OscarProcessor needs a tokenizer (a BERT WordPiece tokenizer with [CLS]/[SEP]/[MASK]).")
        if text_padding not in TEXT_PADDING:
            raise ValueError(f"text_padding={text_padding!r}; expected one of {TEXT_PADDING}.")
        for name in ("cls_token_id", "sep_token_id", "pad_token_id", "mask_token_id"):
            if getattr(tokenizer, name, None) is None:
                raise ValueError(
                    f"The tokenizer has no {name}; Oscar needs a BERT-style tokenizer with [CLS], [SEP], "
                    "[PAD] and [MASK]."
                )
        if max_caption_length < 2 or max_tag_length < 1:
            raise ValueError(
                f"max_caption_length={max_caption_length} and max_tag_length={max_tag_length}; the caption slot "
                "needs room for [CLS] and [SEP] (>= 2) and the tag slot for [SEP] (>= 1)."
            )
        self.max_seq_length = int(max_seq_length)
        self.max_caption_length = int(max_caption_length)
        self.max_tag_length = int(max_tag_length)
        self.text_padding = text_padding
        if detector_name_or_path is not None and not isinstance(detector_name_or_path, str):
            detector_name_or_path = str(detector_name_or_path)  # a PathLike must serialise to JSON
        if not 0 <= int(detector_min_boxes) <= int(detector_max_boxes) or int(detector_max_boxes) < 1:
            raise ValueError(
                f"detector_min_boxes={detector_min_boxes}, detector_max_boxes={detector_max_boxes}; expected "
                "0 <= min <= max and max >= 1."
            )
        self.detector_name_or_path = detector_name_or_path
        self.detector_score_threshold = float(detector_score_threshold)
        self.detector_min_boxes = int(detector_min_boxes)
        self.detector_max_boxes = int(detector_max_boxes)
        self.detector_nms_threshold = None if detector_nms_threshold is None else float(detector_nms_threshold)
        super().__init__(image_processor, tokenizer, **kwargs)
        # Underscored: a detector is never serialised with the processor config.
        self._detector = detector
        self._source_folder: str | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """As `ProcessorMixin.from_pretrained`; also remembers the folder, where the detector is looked up."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        processor = loaded[0] if isinstance(loaded, tuple) else loaded
        processor._source_folder = os.fspath(pretrained_model_name_or_path)
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """As `ProcessorMixin.save_pretrained`. Saving writes `auto_map` onto the processor to put it in the
        config file; it is removed again so that a saved processor equals itself reloaded."""
        had_auto_map = "auto_map" in self.__dict__
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            if not had_auto_map:
                self.__dict__.pop("auto_map", None)

    def to_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # Keep the detector (a model) out of the deep copy the base class makes of every attribute.
        detector = self.__dict__.pop("_detector", None)
        try:
            return super().to_dict(*args, **kwargs)
        finally:
            self._detector = detector

    # -- detector ----------------------------------------------------------------------------------

    @property
    def has_detector(self) -> bool:
        """Whether a detector is in memory (passed in or already loaded)."""
        return getattr(self, "_detector", None) is not None

    @property
    def detector(self) -> Any:
        """The detector `images=` runs (loaded on first use, see the class doc)."""
        if getattr(self, "_detector", None) is None:
            self._detector = load_detector(
                self.detector_name_or_path,
                model_folder=getattr(self, "_source_folder", None),
                score_threshold=self.detector_score_threshold,
                min_boxes=self.detector_min_boxes,
                max_boxes=self.detector_max_boxes,
                nms_threshold=self.detector_nms_threshold,
            )
        return self._detector

    @detector.setter
    def detector(self, detector: Any) -> None:
        if detector is not None and not callable(detector):
            raise ValueError(f"detector is a {type(detector).__name__}; expected a callable detector(images).")
        self._detector = detector

    def detect(self, images: Any) -> list[dict[str, Any]]:
        """Raw images (one or a list of paths, URLs, PIL images, arrays) -> one region record each.

        Images become 8-bit RGB first (`load_rgb_image`: EXIF rotation, grayscale replicated, alpha
        composited on white, 16-bit scaled), then run through `detector`.
        """
        batch = _image_list(images)
        if not batch:
            raise ValueError("images is empty; pass one image (a path, PIL image or array) or a list of them.")
        records = self.detector([load_rgb_image(image) for image in batch])
        if not isinstance(records, Sequence) or len(records) != len(batch):
            count = len(records) if isinstance(records, Sequence) else type(records).__name__
            raise ValueError(f"The detector returned {count} records for {len(batch)} images; expected one each.")
        return list(records)

    def _detected(self, images: Any, regions: Any, region_features: Any) -> Any:
        """`regions` from `images` when images are given (and no other region input is)."""
        if images is None:
            return regions
        if regions is not None or region_features is not None:
            raise ValueError("Pass images (raw, run through the detector) or regions / region_features, not both.")
        return self.detect(images)

    # -- helpers -------------------------------------------------------------------------------

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "token_type_ids", "attention_mask", "img_feats", "img_attention_mask"]

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def _regions(
        self,
        batch: int,
        regions: Sequence[Mapping[str, Any]] | None,
        region_features: Any,
        boxes: Any,
        image_sizes: Any,
        **region_kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """`img_feats` / `img_attention_mask` for `batch` images, or {} when no regions are given."""
        if regions is not None:
            if region_features is not None:
                raise ValueError("Pass regions (detector outputs) or region_features, not both.")
            region_features = [self._record_field(r, "features", i) for i, r in enumerate(regions)]
            # Records whose features already carry the 6 box values (e.g. original 2054-d files) keep
            # their boxes for display only; appending box values twice would be wrong.
            needs_boxes = [self._feature_width(f) == self.image_processor.region_feature_dim for f in region_features]
            for index, (record, need) in enumerate(zip(regions, needs_boxes)):
                if need:
                    self._record_field(record, "boxes", index)
                    self._record_field(record, "image_size", index)
            boxes = [r.get("boxes") if need else None for r, need in zip(regions, needs_boxes)]
            image_sizes = [r.get("image_size") if need else None for r, need in zip(regions, needs_boxes)]
            if not any(needs_boxes):
                boxes = image_sizes = None
        if region_features is None:
            return {}
        out = self.image_processor(region_features, boxes=boxes, image_sizes=image_sizes, **region_kwargs)
        if out["img_feats"].shape[0] != batch:
            raise ValueError(
                f"Got {out['img_feats'].shape[0]} region sets for {batch} texts; pass one region set per example."
            )
        return {"img_feats": out["img_feats"], "img_attention_mask": out["img_attention_mask"]}

    def _record_field(self, record: Any, key: str, index: int) -> Any:
        """`regions[index][key]`, or a ValueError naming the record, the key and what the record holds."""
        if not isinstance(record, Mapping):
            raise ValueError(
                f"regions[{index}] is {type(record).__name__}; expected a detector record, a dict with 'features' "
                "(num_regions, D), 'boxes' (num_regions, 4), 'image_size' (height, width) and 'tags'."
            )
        if record.get(key) is None:
            why = {
                "features": "the region features (num_regions, D) are what the model reads",
                "boxes": f"its features have {self.image_processor.region_feature_dim} dims, so the 6 box values "
                "are computed from 'boxes' (x1, y1, x2, y2 pixels)",
                "image_size": "the box values are divided by the image's (height, width)",
            }[key]
            raise ValueError(
                f"regions[{index}] has no {key!r} (keys: {sorted(record)}); {why}. Pass records as the detector "
                "returns them, or region_features= with boxes= and image_sizes=."
            )
        return record[key]

    @staticmethod
    def _feature_width(features: Any) -> int | None:
        shape = getattr(features, "shape", None)
        return int(shape[-1]) if shape is not None and len(shape) == 2 else None

    @staticmethod
    def _tags_list(tags: Any, batch: int, regions: Sequence[Mapping[str, Any]] | None) -> list[str]:
        """One joined tag string per example. A list of strings with batch 1 is one image's class names."""
        if tags is None and regions is not None:
            tags = [r.get("tags", r.get("labels")) if isinstance(r, Mapping) else None for r in regions]
        if tags is None:
            return [""] * batch
        if isinstance(tags, str):
            tags = [tags]
        elif batch == 1 and len(tags) > 0 and all(isinstance(t, str) for t in tags) and len(tags) != 1:
            tags = [list(tags)]
        if len(tags) != batch:
            raise ValueError(f"Got {len(tags)} tag entries for {batch} examples; pass one tag string (or list) each.")
        return [join_tags(t) for t in tags]

    @staticmethod
    def _texts(text: Any, name: str, allow_empty: bool) -> list[str]:
        texts = [text] if isinstance(text, str) else list(text)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"{name}[{i}] is {type(t).__name__}; expected a string.")
            if not allow_empty and not t.strip():
                raise ValueError(
                    f"{name}[{i}] is empty. Oscar reads the text before the tags; pass a non-empty {name}, "
                    "or allow_empty_text=True for a tags-only example."
                )
        return texts

    def _pad_rows(
        self, rows: list[list[int]], types: list[list[int]], length: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = len(rows)
        input_ids = torch.full((batch, length), self.tokenizer.pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros(batch, length, dtype=torch.long)
        attention_mask = torch.zeros(batch, length, dtype=torch.long)
        for i, (row, row_types) in enumerate(zip(rows, types)):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            token_type_ids[i, : len(row)] = torch.tensor(row_types, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return input_ids, token_type_ids, attention_mask

    @staticmethod
    def _labels(labels: Any) -> torch.Tensor:
        tensor = torch.as_tensor(labels)
        # Integer class ids for CE; soft scores (VQA) stay float.
        return tensor.long() if not tensor.is_floating_point() else tensor.float()

    # -- classification / VQA / GQA / retrieval / pre-training -----------------------------------

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        tags: Any = None,
        regions: Sequence[Mapping[str, Any]] | None = None,
        region_features: Any = None,
        boxes: Any = None,
        image_sizes: Any = None,
        labels: Any = None,
        max_seq_length: int | None = None,
        padding: str | None = None,
        truncation: bool = True,
        allow_empty_text: bool = False,
        return_tensors: str = "pt",
        images: Any = None,
        **region_kwargs: Any,
    ) -> BatchFeature:
        """`[CLS] text [SEP] tags [SEP]` inputs of classification, VQA, GQA, retrieval and pre-training.

        Args:
            text: the question / caption / sentence (text_a), one string or a batch.
            tags: object tags (text_b): per example a string or a list of class names (joined with
                spaces, duplicates kept). For pre-training on QA data text_b is the answer.
                Defaults to the `tags` of `regions`.
            regions / region_features / boxes / image_sizes: the image side, see the class doc.
            labels: class ids (batch,) or soft scores (batch, num_labels), passed through.
            max_seq_length: overrides the processor's text length.
            padding: "max_length" (original) or "longest".
            truncation: truncate text and tags together ("longest first", ties cut the tags). With
                False, a pair that does not fit raises a ValueError.
            allow_empty_text: accept an empty text (the layout becomes `[CLS] [SEP] tags [SEP]`).
            return_tensors: only "pt" is supported.
            images: raw images (one per text), run through the detector into `regions`.
        """
        regions = self._detected(images, regions, region_features)
        if text is None:
            raise ValueError("text is required for this layout; use caption_prompt() for caption generation.")
        if return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r}; OscarProcessor returns PyTorch tensors ('pt').")
        texts = self._texts(text, "text", allow_empty_text)
        batch = len(texts)
        tag_strings = self._tags_list(tags, batch, regions)
        length = int(max_seq_length or self.max_seq_length)
        rows, types = self._pair_rows(self._tokenize(texts), self._tokenize(tag_strings), length, truncation)
        padding = padding or self.text_padding
        if padding not in TEXT_PADDING:
            raise ValueError(f"padding={padding!r}; expected one of {TEXT_PADDING}.")
        width = length if padding == "max_length" else max(len(r) for r in rows)
        input_ids, token_type_ids, attention_mask = self._pad_rows(rows, types, width)
        data = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
        data.update(self._regions(batch, regions, region_features, boxes, image_sizes, **region_kwargs))
        if labels is not None:
            data["labels"] = self._labels(labels)
        return BatchFeature(data=data)

    def _pair_rows(
        self, tokens_a: list[list[int]], tokens_b: list[list[int]], length: int, truncation: bool
    ) -> tuple[list[list[int]], list[list[int]]]:
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        rows, types = [], []
        for i, (a, b) in enumerate(zip(tokens_a, tokens_b)):
            budget = length - (3 if b else 2)
            if budget < 0:
                raise ValueError(f"max_seq_length={length} leaves no room for [CLS] and [SEP]; raise it.")
            if len(a) + len(b) > budget:
                if not truncation:
                    raise ValueError(
                        f"Example {i}: {len(a)} text + {len(b)} tag tokens exceed max_seq_length={length} "
                        f"(room for {budget} after special tokens). Pass truncation=True or raise max_seq_length."
                    )
                a, b = truncate_pair(a, b, budget)
            row = [cls_id, *a, sep_id]
            row_types = [0] * len(row)
            if b:
                row += [*b, sep_id]
                row_types += [1] * (len(b) + 1)
            rows.append(row)
            types.append(row_types)
        return rows, types

    # -- NLVR2 -----------------------------------------------------------------------------------

    def nlvr2(
        self,
        text: str | Sequence[str],
        tags: Sequence[Sequence[Any]] | None = None,
        regions: Sequence[Sequence[Mapping[str, Any]]] | None = None,
        region_features: Sequence[Sequence[Any]] | None = None,
        boxes: Sequence[Sequence[Any]] | None = None,
        image_sizes: Sequence[Sequence[Any]] | None = None,
        labels: Any = None,
        images: Sequence[Sequence[Any]] | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """NLVR2 pairs: each sentence is encoded with each of its two images.

        `tags`, `regions`, `region_features`, `boxes`, `image_sizes` and `images` (raw, run through
        the detector) hold one (left, right) pair per sentence. Returns (batch, 2, Lt) text tensors
        and (batch, 2, R, D) `img_feats`; other arguments as in `__call__`.
        """
        texts = self._texts(text, "text", kwargs.get("allow_empty_text", False))
        batch = len(texts)

        def flat(pairs: Any, name: str) -> list | None:
            if pairs is None:
                return None
            if len(pairs) != batch or any(len(p) != 2 for p in pairs):
                raise ValueError(f"{name} must hold one (left, right) pair per sentence ({batch} sentences).")
            return [item for pair in pairs for item in pair]

        flat_tags = flat(tags, "tags")
        if images is not None:
            if regions is not None or region_features is not None:
                raise ValueError("Pass images or regions / region_features, not both.")
            records = self.detect(flat(images, "images"))
            regions = [records[i : i + 2] for i in range(0, len(records), 2)]
        out = self(
            [t for t in texts for _ in range(2)],
            tags=[join_tags(t) for t in flat_tags] if flat_tags is not None else None,
            regions=flat(regions, "regions"),
            region_features=flat(region_features, "region_features"),
            boxes=flat(boxes, "boxes"),
            image_sizes=flat(image_sizes, "image_sizes"),
            **kwargs,
        )
        data = {k: v.reshape(batch, 2, *v.shape[1:]) for k, v in out.items()}
        if labels is not None:
            data["labels"] = self._labels(labels)
        return BatchFeature(data=data)

    # -- captioning --------------------------------------------------------------------------------

    def _caption_rows(
        self, captions: list[list[int]], tags: list[list[int]], caption_slot: int, text_length: int
    ) -> tuple[list[list[int]], list[list[int]], list[int], list[int]]:
        """Caption slot then tags; returns rows, token types, caption lengths and tag lengths."""
        cls_id, sep_id, pad_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id, self.tokenizer.pad_token_id
        rows, types, caption_lengths, tag_lengths = [], [], [], []
        for caption, tag in zip(captions, tags):
            row = [cls_id, *caption[: caption_slot - 2], sep_id]
            caption_lengths.append(len(row))
            row += [pad_id] * (caption_slot - len(row))
            row_types = [0] * caption_slot
            tag = tag[: text_length - caption_slot - 1]
            if tag:
                row += [*tag, sep_id]
                row_types += [1] * (len(tag) + 1)
            tag_lengths.append(len(row) - caption_slot)
            rows.append(row)
            types.append(row_types)
        return rows, types, caption_lengths, tag_lengths

    def _caption_batch(
        self,
        captions: list[list[int]],
        tag_strings: list[str],
        regions: dict[str, torch.Tensor],
        max_caption_length: int | None,
        max_tag_length: int | None,
    ) -> dict[str, torch.Tensor]:
        caption_slot = int(max_caption_length or self.max_caption_length)
        text_length = caption_slot + int(max_tag_length or self.max_tag_length)
        rows, types, caption_lengths, _ = self._caption_rows(
            captions, self._tokenize(tag_strings), caption_slot, text_length
        )
        input_ids, token_type_ids, text_mask = self._pad_rows(rows, types, text_length)
        # The caption slot is padded inside the row (tags start at `caption_slot`): mask that padding.
        positions = torch.arange(text_length)[None, :]
        inside_slot_padding = (positions >= torch.tensor(caption_lengths)[:, None]) & (positions < caption_slot)
        text_mask = text_mask.masked_fill(inside_slot_padding, 0)
        # 2-D padding masks: `OscarForImageCaptioning` builds the seq2seq mask from them (its caption
        # slot is `config.max_caption_length`, which must equal this processor's `max_caption_length`).
        data = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": text_mask}
        data.update(regions)
        return data

    def captioning(
        self,
        text: str | Sequence[str],
        tags: Any = None,
        regions: Sequence[Mapping[str, Any]] | None = None,
        region_features: Any = None,
        boxes: Any = None,
        image_sizes: Any = None,
        max_caption_length: int | None = None,
        max_tag_length: int | None = None,
        images: Any = None,
        **region_kwargs: Any,
    ) -> BatchFeature:
        """Captioning training layout (before target masking, which `OscarCaptioningCollator` does).

        `input_ids` (batch, max_caption_length + max_tag_length): `[CLS] caption [SEP] [PAD]...` in
        the caption slot (captions longer than the slot are cut, as in the original), then
        `tags [SEP]` (cut to the tag budget), then padding. `token_type_ids` 0 caption / 1 tags.
        `attention_mask` (batch, Lt) and `img_attention_mask` (batch, R) are padding masks: the model
        builds the seq2seq mask from them (`modeling_oscar.seq2seq_attention_mask`), so the processor's
        `max_caption_length` must equal the model's `config.max_caption_length`. `img_feats` as usual.
        """
        regions = self._detected(images, regions, region_features)
        captions = self._texts(text, "text", allow_empty=False)
        batch = len(captions)
        tag_strings = self._tags_list(tags, batch, regions)
        region_data = self._regions(batch, regions, region_features, boxes, image_sizes, **region_kwargs)
        data = self._caption_batch(
            self._tokenize(captions), tag_strings, region_data, max_caption_length, max_tag_length
        )
        return BatchFeature(data=data)

    def caption_prompt(
        self,
        tags: Any = None,
        regions: Sequence[Mapping[str, Any]] | None = None,
        region_features: Any = None,
        boxes: Any = None,
        image_sizes: Any = None,
        batch_size: int | None = None,
        max_tag_length: int | None = None,
        padding: str | None = None,
        images: Any = None,
        **region_kwargs: Any,
    ) -> BatchFeature:
        """Inputs of `OscarForImageCaptioning.generate`: `[CLS]` prompt, tags and regions.

        Returns `input_ids` (batch, 1) = `[CLS]`, `attention_mask` (batch, 1), `tag_input_ids`
        (batch, T) = `tags [SEP]` padded (cut to `max_tag_length` including `[SEP]`),
        `tag_attention_mask`, and `img_feats` / `img_attention_mask` when regions are given. The model
        places the tags at positions from `config.max_caption_length` with token type 1. An example
        without tags gets an empty tag row (all mask 0), as the original omits the tag segment.
        `images=` (raw images) runs the detector for the regions and tags.
        """
        regions = self._detected(images, regions, region_features)
        batch = self._prompt_batch(tags, regions, region_features, batch_size)
        tag_strings = self._tags_list(tags, batch, regions)
        budget = int(max_tag_length or self.max_tag_length)
        sep_id = self.tokenizer.sep_token_id
        rows = [[*t[: budget - 1], sep_id] if t else [] for t in self._tokenize(tag_strings)]
        padding = padding or self.text_padding
        width = budget if padding == "max_length" else max(len(r) for r in rows)
        tag_input_ids, _, tag_attention_mask = self._pad_rows(rows, [[1] * len(r) for r in rows], width)
        data = {
            "input_ids": torch.full((batch, 1), self.tokenizer.cls_token_id, dtype=torch.long),
            "attention_mask": torch.ones(batch, 1, dtype=torch.long),
            "tag_input_ids": tag_input_ids,
            "tag_attention_mask": tag_attention_mask,
        }
        data.update(self._regions(batch, regions, region_features, boxes, image_sizes, **region_kwargs))
        return BatchFeature(data=data)

    @staticmethod
    def _prompt_batch(tags: Any, regions: Any, region_features: Any, batch_size: int | None) -> int:
        for source in (regions, region_features):
            if source is not None:
                return len(source)
        if tags is not None:
            return 1 if isinstance(tags, str) else len(tags)
        if batch_size is None:
            raise ValueError("Pass tags, regions or region_features (or batch_size) to size the caption batch.")
        return batch_size

    # -- decoding ----------------------------------------------------------------------------------

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        """Forwards to the tokenizer's `batch_decode` (pass `skip_special_tokens=True` for captions)."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        """Forwards to the tokenizer's `decode`."""
        return self.tokenizer.decode(*args, **kwargs)


__all__ = ["OscarProcessor", "join_tags", "truncate_pair"]
