"""The raw-images path: run a detector over an image folder and store its regions as a dataset.

Any detector adapter fits if it is a callable with this contract (:class:`Detector`)::

    detector(images: list[PIL.Image.Image]) -> list[dict]   # one dict per image, keys:
        "boxes":    (N, 4) xyxy pixel boxes
        "tags":     N class names (or "labels": N class names)
        "scores":   N confidences
        "features": (N, D) region vectors; D = feature_dim - 6 gets Oscar's 6 box dims appended

The output is a `regions` dataset (`image_id`, features, boxes, size, tags, `file_name`), built by
the same sharded, resumable writer as the task datasets; every task builder then reads it through
:class:`~oscar_hf.data.regions.ParquetRegionSource` (`--regions` on the command line).

A detector folder given by path (a converted VinVL detector, or any `AutoModelForObjectDetection`
checkpoint) is recognised from its `config.json`. With `original_dir` set, the builder also writes, per
shard, the lines of the original files (`predictions.tsv` of scene_graph_benchmark with base64 float32
features, Oscar's feature and label TSVs); `oscar_hf.data.detect` merges them into whole files.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from datasets import Features

from . import schema
from .errors import BadRowError, RowErrorPolicy
from .original_format import encode_features, feature_row, label_row
from .regions import BOX_DIMS, RegionRecord, box_geometry


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class Detector(Protocol):
    """A batched detector: PIL images in, one `{boxes, tags|labels, scores, features}` dict per image out."""

    def __call__(self, images: list) -> list[dict]: ...


# The built-in adapters, by the names `--detector` accepts besides 'package.module:factory'.
BUILTIN_DETECTORS = {
    # {"name_or_path": folder} of an AutoModelForObjectDetection checkpoint (DETR, RT-DETR, YOLOS, ...)
    "transformers": "oscar_hf.processors.detection_oscar:transformers_detector",
    # {"backbone": timm name, ...}: RoIAlign features over boxes from a box source
    "roi-align": "oscar_hf.processors.detection_oscar:RoIAlignFeatureExtractor",
    # {"name_or_path": folder} of a converted VinVL detector (python -m oscar_hf.convert_vinvl_detector)
    "vinvl": "oscar_hf.processors.detection_oscar:vinvl_detector",
}
# The original files `original_dir` collects, one piece per shard (merged by `oscar_hf.data.detect`).
ORIGINAL_FILES = ("predictions.tsv", "features.tsv", "labels.tsv")


def load_detector(spec: str, kwargs: dict | None = None) -> Detector:
    """A detector folder, a built-in adapter's name (`BUILTIN_DETECTORS`) or `package.module:factory`.

    A folder (a converted VinVL detector or an `AutoModelForObjectDetection` checkpoint) is loaded with
    `detector_from_pretrained(folder, **kwargs)`; the others call `factory(**kwargs)`.
    """
    if os.path.isdir(spec):
        from oscar_hf.processors.detection_oscar import detector_from_pretrained

        return detector_from_pretrained(spec, **(kwargs or {}))
    spec = BUILTIN_DETECTORS.get(spec, spec)
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(
            f"--detector must be a detector folder, a built-in adapter ({', '.join(sorted(BUILTIN_DETECTORS))}) "
            f"or look like 'package.module:factory', got {spec!r} (not an existing folder either)."
        )
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"--detector {spec!r} cannot be imported ({error}). Fix: install the adapter's package."
        ) from None
    return factory(**(kwargs or {}))


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursively), in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist. Fix: check --images.")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def image_id_for(path: Path, root: Path, scheme: str = "stem") -> str:
    """`stem`: relative path without suffix; `coco`: the trailing integer (COCO_val2014_000000000042 -> 42)."""
    relative = path.relative_to(root).with_suffix("").as_posix()
    if scheme == "stem":
        return relative
    if scheme == "coco":
        tail = relative.rsplit("_", 1)[-1].rsplit("/", 1)[-1]
        if not tail.isdigit():
            raise ValueError(f"{path}: --image-id coco needs a file name ending in digits. Fix: use --image-id stem.")
        return str(int(tail))
    raise ValueError(f"image id scheme must be 'stem' or 'coco', got {scheme!r}.")


def record_from_detection(image_id: str, detection: dict, width: int, height: int, feature_dim: int, where: str):
    """Validate one detector output and turn it into a RegionRecord (appending the 6 box dims)."""
    try:
        boxes = np.asarray(detection["boxes"], dtype=np.float32).reshape(-1, 4)
        features = np.asarray(detection["features"], dtype=np.float32)
        scores = [float(s) for s in np.asarray(detection["scores"]).reshape(-1)]
        tags = [str(t) for t in detection.get("tags", detection.get("labels", []))]
    except (KeyError, TypeError, ValueError) as error:
        raise BadRowError(
            "detector", where, None, image_id, f"detector output lacks or mangles a key ({error!r}).", ""
        ) from None
    features = features.reshape(len(boxes), -1) if features.size or len(boxes) else features.reshape(0, feature_dim)
    counts = {len(boxes), len(features), len(scores), len(tags)}
    if len(counts) != 1:
        raise BadRowError(
            "detector",
            where,
            None,
            image_id,
            f"detector returned {len(boxes)} boxes, {len(features)} features, {len(scores)} scores, {len(tags)} tags.",
            "the adapter must return one entry per kept region in every field.",
        )
    if features.shape[1] == feature_dim - BOX_DIMS:
        features = np.concatenate([features, box_geometry(boxes, width, height)], axis=1)
    if features.shape[1] != feature_dim:
        raise BadRowError(
            "detector",
            where,
            None,
            image_id,
            f"region features are {features.shape[1]}-d; expected {feature_dim} or {feature_dim - BOX_DIMS}.",
            "pass --feature-dim matching the detector (its width + 6).",
        )
    return RegionRecord(image_id, features, boxes, width, height, tags, scores)


def original_lines(record: RegionRecord, detection: dict) -> tuple[str, str, str]:
    """One image's lines of `predictions.tsv`, Oscar's feature TSV and its label TSV, in float32.

    `predictions.tsv` is scene_graph_benchmark's `test_sg_net.py` output: `key \\t {"objects": [{"rect",
    "bbox_id", "class", "conf", "feature" (base64 float32 of the detector's own feature), "attributes",
    "attr_scores"}], "relations": []}`, boxes in original pixels (plus `image_h`, `image_w`). The feature TSV holds
    `[key, num_boxes, base64(float32[num_boxes x feature_dim])]` (features with the 6 box values), the
    label TSV `{"image_h", "image_w", "objects": [{"class", "conf", "rect"}]}`.
    """
    raw = np.asarray(detection["features"], dtype=np.float32).reshape(len(record.boxes), -1)
    attributes = detection.get("attributes")
    attribute_scores = detection.get("attribute_scores")
    objects = []
    for index, (box, tag, score) in enumerate(zip(record.boxes, record.tags, record.tag_scores)):
        item = {
            "rect": [float(v) for v in box],
            "bbox_id": index,
            "class": tag,
            "conf": float(score),
            "feature": encode_features(raw[index]),
        }
        if attributes is not None:
            item["attributes"] = list(attributes[index])
            scores = np.asarray(attribute_scores[index], dtype=np.float32) if attribute_scores is not None else []
            item["attr_scores"] = [float(v) for v in scores if v > 0][: len(item["attributes"])]
        objects.append(item)
    # image_h / image_w are our addition (the original keeps sizes in a separate hw.tsv); readers ignore them.
    cell = {"objects": objects, "relations": [], "image_h": record.image_height, "image_w": record.image_width}
    prediction = f"{record.image_id}\t{json.dumps(cell)}"
    size = (record.image_width, record.image_height)
    labels = label_row(record.image_id, record.tags, record.boxes, record.tag_scores, image_size=size)
    return prediction, feature_row(record.image_id, record.features), labels


class ImageRegionsBuilder:
    """Writer-compatible builder of a `regions` dataset from image files and a detector."""

    name = "regions"

    def __init__(
        self,
        images: str | Path,
        detector: Detector | None = None,
        detector_spec: str | None = None,
        detector_kwargs: dict | None = None,
        batch_size: int = 8,
        feature_dim: int = 2054,
        image_id: str = "stem",
        device: str | None = None,
        original_dir: str | Path | None = None,
    ) -> None:
        if detector is None and detector_spec is None:
            raise ValueError("pass a detector callable or --detector 'package.module:factory'.")
        self.root = Path(images)
        self.paths = list_images(self.root)
        self._detector = detector
        self.detector_spec, self.detector_kwargs = detector_spec, detector_kwargs or {}
        self.batch_size, self.feature_dim, self.image_id_scheme = batch_size, feature_dim, image_id
        # Where this process runs its detector (e.g. its GPU); not an input of the build, so not in describe().
        self.device = device
        # Set to collect the original files' lines, one piece per shard (see the module docstring).
        self.original_dir = Path(original_dir) if original_dir is not None else None
        self._positions: dict[Path, int] | None = None
        self.images_detected = 0  # images this process ran the detector on (for images/s in the log)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.detector_spec is not None:
            state["_detector"] = None  # worker processes load their own copy (e.g. onto their GPU)
        return state

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            kwargs = dict(self.detector_kwargs)
            if self.device is not None:
                kwargs["device"] = self.device
            self._detector = load_detector(self.detector_spec, kwargs)
        return self._detector

    def features(self) -> Features:
        return schema.regions_schema(self.feature_dim)

    def describe(self) -> dict:
        detector = self.detector_spec or type(self._detector).__name__
        return {
            "images": str(self.root),
            "num_images": len(self.paths),
            "detector": detector,
            "detector_kwargs": json.dumps(self.detector_kwargs, sort_keys=True),
            "feature_dim": self.feature_dim,
            "image_id": self.image_id_scheme,
            # A run resumed with the other setting would leave shards without their original-file lines.
            "original_files": self.original_dir is not None,
        }

    def plan(self) -> dict[str, Sequence]:
        return {"train": self.paths}

    def rows(self, units: Sequence[Path], policy: RowErrorPolicy) -> Iterator[dict]:
        original = {name: [] for name in ORIGINAL_FILES} if self.original_dir is not None else None
        for start in range(0, len(units), self.batch_size):
            yield from self._batch_rows(units[start : start + self.batch_size], policy, original)
        if original is not None and len(units):
            self._write_original_piece(units[0], original)

    def _write_original_piece(self, first: Path, lines: dict[str, list[str]]) -> None:
        """The shard's original-file lines, named by its first image's position (so pieces sort in image order)."""
        if self._positions is None:
            self._positions = {path: index for index, path in enumerate(self.paths)}
        self.original_dir.mkdir(parents=True, exist_ok=True)
        for name, rows in lines.items():
            piece = self.original_dir / f"{self._positions[first]:09d}.{name}"
            tmp = piece.with_name(f".{piece.name}.tmp")
            tmp.write_text("".join(row + "\n" for row in rows), encoding="utf-8")
            os.replace(tmp, piece)  # a killed run leaves no half piece

    def _batch_rows(
        self, paths: Sequence[Path], policy: RowErrorPolicy, original: dict | None = None
    ) -> Iterator[dict]:
        loaded = []
        for path in paths:
            try:
                loaded.append((path, self._open(path)))
            except BadRowError as error:
                policy.handle(error)
        if not loaded:
            return
        detections = self.detector([image for _, image in loaded])
        self.images_detected += len(loaded)
        if len(detections) != len(loaded):
            raise ValueError(f"the detector returned {len(detections)} results for {len(loaded)} images.")
        for (path, image), detection in zip(loaded, detections):
            try:
                image_id = image_id_for(path, self.root, self.image_id_scheme)
                record = record_from_detection(image_id, detection, *image.size, self.feature_dim, str(path))
                if original is not None:
                    for name, line in zip(ORIGINAL_FILES, original_lines(record, detection)):
                        original[name].append(line)
                yield {**record.as_columns(), "file_name": path.relative_to(self.root).as_posix()}
            except BadRowError as error:
                policy.handle(error)

    @staticmethod
    def _open(path: Path):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise BadRowError(
                "image", path, None, path.stem, f"cannot read the image ({error}).", "remove or re-encode the file."
            ) from None
