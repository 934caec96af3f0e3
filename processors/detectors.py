"""Detector adapters: PIL images -> regions (boxes, tags, scores, features) for Oscar.

Every adapter is a callable `detector(images) -> list[dict]`, one dict per image with

- `boxes`: (N, 4) float32 `x1, y1, x2, y2` in pixels of the image as given;
- `scores`: (N,) float32; `label_ids`: (N,) int64; `tags`: N class names (duplicates kept);
- `features`: (N, D) float32 region vectors (D = 2048 for bottom-up / VinVL style backbones);
- `image_size`: `(height, width)`.

These dicts feed `OscarProcessor(..., regions=detections)` and the dataset builders directly.

Adapters:

- `TransformersDetector`: any `AutoModelForObjectDetection` checkpoint (DETR, RT-DETR, YOLOS, ...).
  The features are the decoder hidden states of the queries whose boxes are kept (the library's
  post-processing drops the query indices, so the selection is redone here).
- `RoIAlignFeatureExtractor`: VinVL / bottom-up style. A timm backbone and torchvision `roi_align`
  pool one vector per box; the boxes come from any detector above or from the user.
- `PrecomputedRegions`: regions stored in files (`.npz` folders, `torch.save` dicts, the original
  feature/label TSVs).

Selection follows VinVL's extraction settings: score threshold 0.2, at least 10 and at most 100
boxes per image, optional class-wise NMS. Features of a DETR-style model are NOT the 2048-d Faster
R-CNN features released Oscar/VinVL checkpoints were trained on: use them with a model trained on
them (`img_feature_dim = d_model + 6`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

# One implementation: the detectors live in the flat remote-code file that exported pipeline
# folders carry; this module re-exports them next to the file readers.
from .detection_oscar import (
    SIGMOID_MODEL_TYPES,
    VINVL_MAX_BOXES,
    VINVL_MIN_BOXES,
    VINVL_SCORE_THRESHOLD,
    RoIAlignFeatureExtractor,
    TransformersDetector,
    load_rgb_image,
    select_detections,
    to_rgb,
    transformers_detector,
    unique_tags,
)


# ------------------------------------------------------------------------------------------------
# Precomputed regions
# ------------------------------------------------------------------------------------------------


def decode_features(encoded: str | bytes, num_boxes: int, feature_dim: int = 2054) -> np.ndarray:
    """Base64 region features of the original TSVs -> (num_boxes, feature_dim) float32.

    The dtype follows from the byte length (float32 normally, float16 in some released files).
    """
    raw = base64.b64decode(encoded)
    for dtype in (np.float32, np.float16):
        if len(raw) == num_boxes * feature_dim * np.dtype(dtype).itemsize:
            return np.frombuffer(raw, dtype=dtype).astype(np.float32).reshape(num_boxes, feature_dim)
    raise ValueError(
        f"{len(raw)} feature bytes do not hold {num_boxes} boxes of {feature_dim} float32 or float16 values; "
        "check num_boxes and feature_dim (2054 with box values, 2048 without)."
    )


def _label_record(value: Any) -> dict[str, Any]:
    """An original label cell (`[{class, conf, rect}]` or `{objects, image_h, image_w}`) as a region dict."""
    objects = value.get("objects", []) if isinstance(value, dict) else value
    record: dict[str, Any] = {
        "tags": [o["class"] for o in objects],
        "scores": np.asarray([o.get("conf", 1.0) for o in objects], dtype=np.float32),
        "boxes": np.asarray([o["rect"] for o in objects], dtype=np.float32).reshape(-1, 4),
    }
    if isinstance(value, dict) and "image_h" in value:
        record["image_size"] = (int(value["image_h"]), int(value["image_w"]))
    return record


class PrecomputedRegions:
    r"""Regions read from files, served by image id: `regions[image_id]` or `regions(image_ids)`.

    Each record holds `features` and, when the files have them, `boxes`, `tags`, `scores` and
    `image_size`. Constructors: `from_npz_folder`, `from_torch`, `from_tsv`.

    Example:
        >>> regions = PrecomputedRegions({"42": {"features": np.zeros((3, 2054), np.float32)}})
        >>> regions["42"]["features"].shape
        (3, 2054)
    """

    def __init__(self, records: Mapping[str, Mapping[str, Any]]) -> None:
        self.records = {str(k): dict(v) for k, v in records.items()}

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, image_id: object) -> bool:
        return str(image_id) in self.records

    def __getitem__(self, image_id: str | int) -> dict[str, Any]:
        key = str(image_id)
        if key not in self.records:
            raise KeyError(f"No regions for image id {key!r} ({len(self.records)} images stored).")
        return self.records[key]

    def __call__(self, image_ids: Iterable[str | int]) -> list[dict[str, Any]]:
        return [self[i] for i in image_ids]

    @classmethod
    def from_npz_folder(cls, folder: str | Path) -> PrecomputedRegions:
        """`<image_id>.npz` files with `features` and optional `boxes`, `tags`, `scores`, `image_size`."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"Region folder {str(folder)!r} does not exist.")
        records = {}
        for path in sorted(folder.glob("*.npz")):
            with np.load(path, allow_pickle=False) as data:
                record = {k: data[k] for k in data.files}
            if "features" not in record:
                raise ValueError(f"{path.name} has no 'features' array (found {sorted(record)}).")
            if "tags" in record:
                record["tags"] = [str(t) for t in record["tags"]]
            if "image_size" in record:
                record["image_size"] = tuple(int(v) for v in record["image_size"])
            records[path.stem] = record
        return cls(records)

    @classmethod
    def from_torch(cls, path: str | Path) -> PrecomputedRegions:
        """A `torch.save`d `{image_id: Tensor[N, 2054]}` dict (the original VQA/GQA/NLVR2 `*_feats.pt`)."""
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, Mapping):
            raise ValueError(f"{path} holds {type(data).__name__}; expected a dict of image id -> (N, D) tensor.")
        return cls({k: {"features": v.float().numpy()} for k, v in data.items()})

    @classmethod
    def from_tsv(
        cls, feature_tsv: str | Path, label_tsv: str | Path | None = None, feature_dim: int = 2054
    ) -> PrecomputedRegions:
        """The original TSVs: features `[id, num_boxes, base64]` or `[id, {"num_boxes", "features"}]`,
        labels `[id, [{class, conf, rect}, ...]]` or `[id, {"objects": [...], "image_h", "image_w"}]`.

        Reads whole files; for corpora that do not fit in memory use the dataset builders instead.
        """
        records: dict[str, dict[str, Any]] = {}
        for number, cells in enumerate(_tsv_rows(feature_tsv), start=1):
            if len(cells) == 3:
                key, num_boxes, encoded = cells[0], int(cells[1]), cells[2]
            elif len(cells) == 2:
                cell = json.loads(cells[1])
                key, num_boxes, encoded = cells[0], int(cell["num_boxes"]), cell["features"]
            else:
                raise ValueError(f"{feature_tsv} line {number}: {len(cells)} columns; expected 2 or 3.")
            records[key] = {"features": decode_features(encoded, num_boxes, feature_dim)}
        if label_tsv is not None:
            for key, cell, *_ in _tsv_rows(label_tsv):
                records.setdefault(key, {}).update(_label_record(json.loads(cell)))
        return cls(records)


def _tsv_rows(path: str | Path) -> Iterable[list[str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TSV file {str(path)!r} does not exist.")
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield line.rstrip("\n").split("\t")


__all__ = [
    "SIGMOID_MODEL_TYPES",
    "VINVL_MAX_BOXES",
    "VINVL_MIN_BOXES",
    "VINVL_SCORE_THRESHOLD",
    "PrecomputedRegions",
    "RoIAlignFeatureExtractor",
    "TransformersDetector",
    "decode_features",
    "load_rgb_image",
    "select_detections",
    "to_rgb",
    "transformers_detector",
    "unique_tags",
]
