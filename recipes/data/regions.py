"""Region features, boxes and object tags per image, from the original files or from built Parquet.

Feature rows come in the forms the original releases use:

* 3 columns ``[image_key, num_boxes, base64(float[num_boxes * D])]`` (Oscar retrieval/VQA/pre-training);
* 2 columns ``[image_key, {"num_boxes": N, "features": base64}]`` (VinVL captioning ``feature.tsv``);
* 2 columns ``[image_key, {"image_h", "image_w", "objects": [{"rect", "class", "conf", "feature"}]}]``
  (raw ``predictions.tsv`` from the VinVL detector, 2048-d features per object).

The float width is inferred from the byte length: ``D * 4`` bytes per box is float32, ``D * 2`` is
float16; rows with ``D - 6`` (2048) values per box get the 6 box dimensions appended from the
label boxes and the image size. Label rows are ``[image_key, [{"class", "conf", "rect"}, ...]]`` or
``[image_key, {"image_h", "image_w", "objects": [...]}]``; image-size rows (VinVL ``hw.tsv``) are
``[image_key, [{"height", "width"}]]``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from oscar_hf.processors.image_processing_oscar import box_geometry as _box_geometry

from .errors import BadRowError
from .tsv import TsvFile


BOX_DIMS = 6  # [x1/W, y1/H, x2/W, y2/H, w/W, h/H] appended to the pooled RoI feature


@dataclass
class RegionRecord:
    """Everything the datasets store about one image's regions."""

    image_id: str
    features: np.ndarray  # (num_regions, feature_dim) float32
    boxes: np.ndarray  # (num_regions, 4) xyxy pixels float32; (0, 4) when the image size is unknown
    image_width: int | None
    image_height: int | None
    tags: list[str] = field(default_factory=list)
    tag_scores: list[float] = field(default_factory=list)

    def as_columns(self, prefix: str = "") -> dict:
        """Columns of the region part of a dataset row (`prefix` for NLVR2's left/right images)."""
        return {
            f"{prefix}image_id": self.image_id,
            f"{prefix}img_feats": self.features.astype(np.float16),
            f"{prefix}boxes": self.boxes.astype(np.float32),
            f"{prefix}image_width": self.image_width,
            f"{prefix}image_height": self.image_height,
            f"{prefix}tags": list(self.tags),
            f"{prefix}tag_scores": [float(score) for score in self.tag_scores],
        }


class RegionSource(Protocol):
    """Anything that returns the regions of an image id (TSV files, a built Parquet regions set)."""

    def get(self, image_id: str) -> RegionRecord | None: ...


def box_geometry(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Oscar's 6 box values for xyxy pixel boxes, as numpy (`image_processing_oscar.box_geometry` computes them)."""
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    return _box_geometry(boxes, (height, width)).numpy()


def _b64(text: str, path: Path, line: int, key: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRowError(
            "base64",
            path,
            line,
            key,
            f"feature column is not valid base64 ({error}); the row is probably truncated.",
            "re-export the row, or pass --skip-bad-rows to skip it and count it.",
        ) from None


def decode_feature_blob(
    raw: bytes, num_boxes: int, feature_dim: int, path: Path, line: int, key: str
) -> tuple[np.ndarray, bool]:
    """(features float32 (N, D or D-6), has_box_dims) from the raw bytes, inferring float32/float16."""
    if num_boxes < 0:
        raise BadRowError("num_boxes", path, line, key, f"num_boxes is {num_boxes}.", "fix the count column.")
    if num_boxes == 0:
        if raw:
            raise BadRowError(
                "num_boxes", path, line, key, f"num_boxes is 0 but {len(raw)} feature bytes follow.", "fix the count."
            )
        return np.zeros((0, feature_dim), dtype=np.float32), True
    candidates = [(feature_dim, np.float32, True), (feature_dim, np.float16, True)]
    if feature_dim > BOX_DIMS:
        candidates += [(feature_dim - BOX_DIMS, np.float32, False), (feature_dim - BOX_DIMS, np.float16, False)]
    for dim, dtype, has_box in candidates:
        if len(raw) == num_boxes * dim * np.dtype(dtype).itemsize:
            array = np.frombuffer(raw, dtype=dtype).reshape(num_boxes, dim).astype(np.float32)
            # Bytes that also fit float32 rows with another num_boxes: a wrong count column would make
            # float32 data read as float16 garbage. Box values (in [0, 1], w = x2 - x1) tell them apart.
            fits_float32 = any(len(raw) % (d * 4) == 0 for d, t, _ in candidates if t == np.float32)
            if dtype == np.float16 and fits_float32 and has_box and not _plausible_box_dims(array[:, -BOX_DIMS:]):
                raise BadRowError(
                    "num_boxes",
                    path,
                    line,
                    key,
                    f"{len(raw)} feature bytes fit num_boxes={num_boxes} only as float16, whose box values "
                    f"are not boxes, or {len(raw) // (dim * 4)} float32 rows: the count column looks wrong.",
                    "fix num_boxes, or pass --skip-bad-rows to skip and count the row.",
                )
            return array, has_box
    expected = ", ".join(
        f"{num_boxes * d * np.dtype(t).itemsize} ({d} x {np.dtype(t).name})" for d, t, _ in candidates
    )
    raise BadRowError(
        "num_boxes",
        path,
        line,
        key,
        f"{len(raw)} feature bytes do not fit num_boxes={num_boxes}; expected one of {expected} bytes.",
        "check num_boxes and --feature-dim, or pass --skip-bad-rows to skip and count the row.",
    )


def _plausible_box_dims(box_dims: np.ndarray) -> bool:
    """`[x1, y1, x2, y2, w, h]` normalised by the image size: inside [0, 1] (with slack) and w = x2 - x1."""
    if not np.isfinite(box_dims).all():
        return False
    x1, y1, x2, y2, w, h = box_dims.T
    inside = (box_dims >= -0.05).all() and (box_dims <= 1.05).all()
    return bool(inside and np.allclose(x2 - x1, w, atol=0.01) and np.allclose(y2 - y1, h, atol=0.01))


def _json_cell(text: str, path: Path, line: int, key: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise BadRowError(
            "json",
            path,
            line,
            key,
            f"malformed JSON cell ({error.msg} at character {error.pos}).",
            "re-export the row, or pass --skip-bad-rows to skip and count it.",
        ) from None


@dataclass
class FeatureRow:
    """A decoded feature row: features, whether they carry the 6 box dims, and any detections inline."""

    features: np.ndarray
    has_box_dims: bool
    labels: LabelRow | None = None


def parse_feature_row(columns: list[str], feature_dim: int, path: Path, line: int) -> FeatureRow:
    """Decode one feature-TSV row in any of the three layouts in the module docstring."""
    key = columns[0]
    if len(columns) == 3:
        try:
            num_boxes = int(columns[1])
        except ValueError:
            raise BadRowError(
                "num_boxes", path, line, key, f"num_boxes column is {columns[1][:20]!r}, not an integer.", ""
            ) from None
        features, has_box = decode_feature_blob(
            _b64(columns[2], path, line, key), num_boxes, feature_dim, path, line, key
        )
        return FeatureRow(features, has_box)
    if len(columns) == 2:
        cell = _json_cell(columns[1], path, line, key)
        if isinstance(cell, dict) and "features" in cell:
            num_boxes = _int_field(cell, "num_boxes", path, line, key)
            raw = _b64(cell["features"], path, line, key)
            features, has_box = decode_feature_blob(raw, num_boxes, feature_dim, path, line, key)
            return FeatureRow(features, has_box)
        return _features_from_objects(cell, feature_dim, path, line, key)
    raise BadRowError(
        "columns",
        path,
        line,
        key,
        f"feature rows have 3 columns [id, num_boxes, base64] or 2 [id, json]; this one has {len(columns)}.",
        "check that the file is a feature TSV and is tab-separated.",
    )


def _features_from_objects(cell, feature_dim: int, path: Path, line: int, key: str) -> FeatureRow:
    labels = parse_label_cell(cell, path, line, key)
    objects = cell["objects"] if isinstance(cell, dict) else cell
    if not all(isinstance(obj, dict) and "feature" in obj for obj in objects):
        raise BadRowError(
            "columns",
            path,
            line,
            key,
            'JSON feature cell has neither "features" nor a "feature" on every object.',
            "pass the feature TSV (not the label TSV) as --features.",
        )
    blobs = [_b64(obj["feature"], path, line, key) for obj in objects]
    features, has_box = decode_feature_blob(b"".join(blobs), len(blobs), feature_dim, path, line, key)
    return FeatureRow(features, has_box, labels)


def _int_field(cell: dict, name: str, path: Path, line: int, key: str) -> int:
    try:
        return int(cell[name])
    except (KeyError, TypeError, ValueError):
        raise BadRowError("json", path, line, key, f"JSON cell needs an integer {name!r}.", "") from None


@dataclass
class LabelRow:
    """Detections of one image: tag names, confidences, xyxy pixel boxes and the image size if given."""

    tags: list[str]
    scores: list[float]
    boxes: np.ndarray
    image_width: int | None = None
    image_height: int | None = None


def parse_label_cell(cell, path: Path, line: int, key: str) -> LabelRow:
    """Objects `{class, conf, rect}` from a list cell or an `{image_h, image_w, objects}` cell."""
    width = height = None
    objects = cell
    if isinstance(cell, dict):
        if "objects" not in cell:
            raise BadRowError("label", path, line, key, 'label JSON object has no "objects" list.', "")
        objects = cell["objects"]
        width, height = cell.get("image_w"), cell.get("image_h")
    if not isinstance(objects, list):
        raise BadRowError("label", path, line, key, "label cell must be a list of objects.", "")
    tags, scores, boxes = [], [], []
    for number, obj in enumerate(objects):
        if not isinstance(obj, dict) or "class" not in obj or "rect" not in obj or len(obj["rect"]) != 4:
            raise BadRowError(
                "label",
                path,
                line,
                key,
                f'object {number} needs "class" and a 4-number "rect" [x1, y1, x2, y2]; got {str(obj)[:80]}.',
                "fix the label row.",
            )
        tags.append(str(obj["class"]))
        scores.append(float(obj.get("conf", 1.0)))  # ground-truth objects carry no confidence
        boxes.append([float(v) for v in obj["rect"]])
    box_array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return LabelRow(tags, scores, box_array, _opt_int(width), _opt_int(height))


def _opt_int(value) -> int | None:
    return None if value is None else round(float(value))


def parse_size_cell(cell, path: Path, line: int, key: str) -> tuple[int, int]:
    """(width, height) from a VinVL `hw.tsv` cell `[{"height", "width"}]` or `{"height", "width"}`."""
    entry = cell[0] if isinstance(cell, list) and cell else cell
    try:
        return round(float(entry["width"])), round(float(entry["height"]))
    except (KeyError, TypeError, ValueError):
        raise BadRowError(
            "size", path, line, key, 'image-size cell needs "width" and "height".', "fix the hw.tsv row."
        ) from None


class _KeyedTsv:
    """Several TSV files searched in order by key (e.g. one per split or per chunk)."""

    def __init__(self, paths: Sequence[str | Path], key_index: str | Path | None = None) -> None:
        self.files = [TsvFile(path, key_index=key_index) for path in paths]

    def get(self, key: str) -> tuple[list[str], Path, int] | None:
        for tsv in self.files:
            found = tsv.get(key)
            if found is not None:
                columns, index = found
                return columns, tsv.path, index + 1
        return None


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class TsvRegionSource:
    """Regions of an image from feature TSVs, label TSVs and optional image-size TSVs.

    Args:
        features: one or more feature TSVs (with `.lineidx`).
        labels: label TSVs giving the tags; may have other box counts than the features (VinVL).
        image_sizes: VinVL `hw.tsv` files, used when the label rows carry no image_h/image_w.
        feature_dim: region vector width stored in the dataset (2054 = 2048 + 6 box dims).
        extra_sizes: `{image_key: (width, height)}` from annotations (COCO JSONs carry sizes).
        feature_key_index: the original `imageid2idx.json` for the feature TSV (optional).
    """

    def __init__(
        self,
        features: str | Path | Sequence[str | Path],
        labels: str | Path | Sequence[str | Path] | None = None,
        image_sizes: str | Path | Sequence[str | Path] | None = None,
        feature_dim: int = 2054,
        extra_sizes: dict[str, tuple[int, int]] | None = None,
        feature_key_index: str | Path | None = None,
    ) -> None:
        self.features = _KeyedTsv(_as_list(features), key_index=feature_key_index)
        self.labels = _KeyedTsv(_as_list(labels)) if labels else None
        self.sizes = _KeyedTsv(_as_list(image_sizes)) if image_sizes else None
        self.feature_dim = feature_dim
        self.extra_sizes = extra_sizes or {}

    def describe(self) -> dict:
        return {
            "features": [str(tsv.path) for tsv in self.features.files],
            "labels": [str(tsv.path) for tsv in self.labels.files] if self.labels else [],
            "image_sizes": [str(tsv.path) for tsv in self.sizes.files] if self.sizes else [],
            "feature_dim": self.feature_dim,
        }

    def get(self, image_id: str) -> RegionRecord | None:
        """The record of `image_id`, None when no feature row has that key; bad rows raise BadRowError."""
        found = self.features.get(image_id)
        if found is None:
            return None
        columns, path, line = found
        row = parse_feature_row(columns, self.feature_dim, path, line)
        labels = row.labels or self._labels(image_id)
        width, height = self._size(image_id, labels)
        features = self._with_box_dims(row, labels, width, height, path, line, image_id)
        boxes = self._boxes(features, labels, width, height)
        self._check_finite(features, path, line, image_id)
        return RegionRecord(
            image_id=image_id,
            features=features,
            boxes=boxes,
            image_width=width,
            image_height=height,
            tags=labels.tags if labels else [],
            tag_scores=labels.scores if labels else [],
        )

    def _labels(self, image_id: str) -> LabelRow | None:
        if self.labels is None:
            return None
        found = self.labels.get(image_id)
        if found is None:
            return None
        columns, path, line = found
        if len(columns) != 2:
            raise BadRowError("columns", path, line, image_id, f"label rows have 2 columns, got {len(columns)}.", "")
        return parse_label_cell(_json_cell(columns[1], path, line, image_id), path, line, image_id)

    def _size(self, image_id: str, labels: LabelRow | None) -> tuple[int | None, int | None]:
        if labels is not None and labels.image_width and labels.image_height:
            return labels.image_width, labels.image_height
        if self.sizes is not None:
            found = self.sizes.get(image_id)
            if found is not None:
                columns, path, line = found
                return parse_size_cell(_json_cell(columns[-1], path, line, image_id), path, line, image_id)
        return self.extra_sizes.get(image_id, (None, None))

    def _with_box_dims(self, row: FeatureRow, labels, width, height, path: Path, line: int, key: str) -> np.ndarray:
        if row.has_box_dims:
            return row.features
        # 2048-d features (self-extracted VinVL): the 6 box dims come from the label boxes.
        if labels is None or len(labels.boxes) != len(row.features) or not width or not height:
            raise BadRowError(
                "geometry",
                path,
                line,
                key,
                f"features are {row.features.shape[1]}-d without the {BOX_DIMS} box dims, and no label row with "
                f"{len(row.features)} boxes plus the image size is available to compute them.",
                "pass --labels with the detector's boxes (and image_h/image_w or --image-sizes), or 2054-d features.",
            )
        return np.concatenate([row.features, box_geometry(labels.boxes, width, height)], axis=1)

    def _boxes(self, features: np.ndarray, labels, width, height) -> np.ndarray:
        if width and height and features.shape[1] >= BOX_DIMS:
            normalised = features[:, -BOX_DIMS:-2]  # x1/W, y1/H, x2/W, y2/H
            return normalised * np.array([width, height, width, height], dtype=np.float32)
        if labels is not None and len(labels.boxes) == len(features):
            return labels.boxes
        return np.zeros((0, 4), dtype=np.float32)

    @staticmethod
    def _check_finite(features: np.ndarray, path: Path, line: int, key: str) -> None:
        # float16 tops out at 65504; an overflow would silently become inf in the dataset.
        finite = np.isfinite(features).all()
        if not finite or (features.size and np.abs(features).max() > np.finfo(np.float16).max):
            raise BadRowError(
                "values",
                path,
                line,
                key,
                "features contain NaN/inf or values beyond the float16 range (|x| > 65504).",
                "check the feature file; it may be a different dtype than its byte length suggests.",
            )


class ParquetRegionSource:
    """Regions from a built `regions` dataset (the raw-images path), served by image id."""

    def __init__(self, folder: str | Path, split: str = "train") -> None:
        from datasets import load_dataset

        self.folder = Path(folder)
        self.dataset = load_dataset("parquet", data_files={split: str(self.folder / "data" / f"{split}-*.parquet")})[
            split
        ].with_format("numpy")
        self.feature_dim = self.dataset.features["img_feats"].shape[1]
        self.index = {str(image_id): i for i, image_id in enumerate(self.dataset["image_id"])}

    def describe(self) -> dict:
        return {"features": str(self.folder), "type": "parquet-regions"}

    def get(self, image_id: str) -> RegionRecord | None:
        position = self.index.get(image_id)
        if position is None:
            return None
        row = self.dataset[position]
        return RegionRecord(
            image_id=image_id,
            features=np.asarray(row["img_feats"], dtype=np.float32).reshape(-1, self.feature_dim),
            boxes=np.asarray(row["boxes"], dtype=np.float32).reshape(-1, 4),
            image_width=_none_if_missing(row["image_width"]),
            image_height=_none_if_missing(row["image_height"]),
            tags=[str(tag) for tag in row["tags"]],
            tag_scores=[float(score) for score in row["tag_scores"]],
        )


def _none_if_missing(value) -> int | None:
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else int(value)


class PrecomputedRegions:
    r"""Regions read from files, served by image id as the region dicts the processor and pipelines take.

    `regions[image_id]` or `regions(image_ids)` give dicts with `features` and, when the files have
    them, `boxes`, `tags`, `scores` and `image_size` (height, width): what
    `OscarProcessor(..., regions=...)` and the pipelines accept. Constructors: `from_npz_folder`,
    `from_torch`, `from_tsv` (the original files, read by `TsvRegionSource`).

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
        """The original feature TSV (+ label TSV), every row read and checked by `TsvRegionSource`.

        Reads whole files into memory; for corpora that do not fit use the dataset builders instead.
        """
        source = TsvRegionSource(feature_tsv, labels=label_tsv, feature_dim=feature_dim)
        records = {}
        for tsv in source.features.files:
            for index in range(len(tsv)):
                key = tsv.read_key(index)
                records[key] = _region_dict(source.get(key))
        return cls(records)


def _region_dict(record: RegionRecord) -> dict[str, Any]:
    region: dict[str, Any] = {"features": record.features, "tags": list(record.tags)}
    if record.tag_scores:
        region["scores"] = np.asarray(record.tag_scores, dtype=np.float32)
    if len(record.boxes):
        region["boxes"] = record.boxes
    if record.image_width is not None and record.image_height is not None:
        region["image_size"] = (record.image_height, record.image_width)
    return region
