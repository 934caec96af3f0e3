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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


# VinVL extraction settings (scene_graph_benchmark `sgg_configs/vgattr/vinvl_x152c4.yaml`).
VINVL_SCORE_THRESHOLD = 0.2
VINVL_MIN_BOXES = 10
VINVL_MAX_BOXES = 100
# Models whose class scores are independent sigmoids (no "no object" class).
SIGMOID_MODEL_TYPES = ("rt_detr", "rt_detr_v2", "deformable_detr", "conditional_detr", "dab_detr", "d_fine", "dfine")


def select_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    label_ids: torch.Tensor,
    score_threshold: float = VINVL_SCORE_THRESHOLD,
    min_boxes: int = VINVL_MIN_BOXES,
    max_boxes: int = VINVL_MAX_BOXES,
    nms_threshold: float | None = None,
) -> torch.Tensor:
    """Indices of the detections to keep, best score first.

    Boxes scoring at least `score_threshold` are kept, at most `max_boxes`; when fewer than
    `min_boxes` pass, the best-scoring remaining boxes fill up to `min_boxes` (VinVL's
    `MIN_DETECTIONS_PER_IMG`). With `nms_threshold`, class-wise NMS at that IoU runs first.

    Example:
        >>> import torch
        >>> boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 10, 10], [20.0, 20, 30, 30]])
        >>> select_detections(boxes, torch.tensor([0.9, 0.8, 0.1]), torch.tensor([1, 1, 2]), min_boxes=2).tolist()
        [0, 1]
        >>> select_detections(boxes, torch.tensor([0.9, 0.8, 0.1]), torch.tensor([1, 1, 2]), min_boxes=2,
        ...                   nms_threshold=0.5).tolist()
        [0, 2]
    """
    if min_boxes < 0 or max_boxes < 1 or min_boxes > max_boxes:
        raise ValueError(f"min_boxes={min_boxes}, max_boxes={max_boxes}; expected 0 <= min_boxes <= max_boxes, >= 1.")
    candidates = torch.arange(scores.numel())
    if nms_threshold is not None and scores.numel():
        from torchvision.ops import batched_nms

        candidates = batched_nms(boxes.float(), scores.float(), label_ids, nms_threshold)
    order = candidates[torch.argsort(scores[candidates], descending=True, stable=True)]
    passing = int((scores[order] >= score_threshold).sum())
    return order[: min(max(passing, min_boxes), max_boxes)]


def unique_tags(tags: Sequence[str]) -> list[str]:
    """Tags without repeats, first occurrence kept (the original keeps duplicates; this is an option)."""
    return list(dict.fromkeys(tags))


def _cxcywh_to_xyxy(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    xyxy = xyxy * torch.tensor([width, height, width, height], dtype=xyxy.dtype)
    # Predicted boxes can extend past the border; clip so they are valid pixel boxes.
    return torch.minimum(xyxy.clamp(min=0), torch.tensor([width, height, width, height], dtype=xyxy.dtype))


def _image_size(image: Any) -> tuple[int, int]:
    if not hasattr(image, "size") or not hasattr(image, "convert"):
        raise ValueError(f"Expected PIL images, got {type(image).__name__}; open files with PIL.Image.open first.")
    width, height = image.size
    return height, width


class TransformersDetector:
    r"""Regions from a `transformers` object-detection model (DETR, RT-DETR, YOLOS, ...).

    Args:
        model: an `AutoModelForObjectDetection` model; tags come from `model.config.id2label`.
        image_processor: its image processor (resizing and normalisation).
        score_threshold, min_boxes, max_boxes, nms_threshold: box selection, see `select_detections`.
        dedupe_tags: drop repeated tags from `tags` (boxes and features are unaffected). Off by
            default: the original joins every detected class name, duplicates included.
        device: where to run the model (defaults to the model's device).

    Example:
        >>> detector = TransformersDetector.from_pretrained("path/to/detr-resnet-50")  # doctest: +SKIP
        >>> regions = detector([PIL.Image.open("photo.jpg")])  # doctest: +SKIP
        >>> regions[0]["tags"][:3], regions[0]["features"].shape  # doctest: +SKIP
        (['person', 'dog', 'couch'], torch.Size([10, 256]))
    """

    def __init__(
        self,
        model: torch.nn.Module,
        image_processor: Any,
        score_threshold: float = VINVL_SCORE_THRESHOLD,
        min_boxes: int = VINVL_MIN_BOXES,
        max_boxes: int = VINVL_MAX_BOXES,
        nms_threshold: float | None = None,
        dedupe_tags: bool = False,
        device: str | torch.device | None = None,
    ) -> None:
        self.model = model.eval()
        self.image_processor = image_processor
        self.score_threshold = score_threshold
        self.min_boxes, self.max_boxes = min_boxes, max_boxes
        self.nms_threshold = nms_threshold
        self.dedupe_tags = dedupe_tags
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        config = model.config
        self.sigmoid = bool(getattr(config, "use_focal_loss", False)) or config.model_type in SIGMOID_MODEL_TYPES
        self.id2label = {int(k): v for k, v in config.id2label.items()}

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> TransformersDetector:
        """Loads a local (or cached) checkpoint folder; `kwargs` go to the constructor."""
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        model = AutoModelForObjectDetection.from_pretrained(name_or_path)
        return cls(model, AutoImageProcessor.from_pretrained(name_or_path), **kwargs)

    @property
    def feature_dim(self) -> int:
        """Width of the region features (the decoder width, `d_model` / `hidden_size`)."""
        config = self.model.config
        return int(getattr(config, "d_model", None) or config.hidden_size)

    @torch.no_grad()
    def __call__(self, images: Sequence[Any]) -> list[dict[str, Any]]:
        images = list(images)
        sizes = [_image_size(image) for image in images]
        inputs = self.image_processor([image.convert("RGB") for image in images], return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if torch.is_tensor(v)}
        outputs = self.model(**inputs)
        logits, pred_boxes = outputs.logits.float().cpu(), outputs.pred_boxes.float().cpu()
        num_queries = logits.shape[1]
        # YOLOS returns the whole ViT sequence; its detection tokens are the last `num_queries`.
        hidden = outputs.last_hidden_state[:, -num_queries:].float().cpu()
        if self.sigmoid:
            scores, label_ids = logits.sigmoid().max(-1)
        else:  # softmax with a trailing "no object" class (DETR, YOLOS)
            scores, label_ids = logits.softmax(-1)[..., :-1].max(-1)
        results = []
        for b, (height, width) in enumerate(sizes):
            boxes = _cxcywh_to_xyxy(pred_boxes[b], height, width)
            keep = select_detections(
                boxes,
                scores[b],
                label_ids[b],
                self.score_threshold,
                self.min_boxes,
                self.max_boxes,
                self.nms_threshold,
            )
            tags = [self.id2label.get(int(i), str(int(i))) for i in label_ids[b][keep]]
            results.append(
                {
                    "boxes": boxes[keep],
                    "scores": scores[b][keep],
                    "label_ids": label_ids[b][keep],
                    "tags": unique_tags(tags) if self.dedupe_tags else tags,
                    "features": hidden[b][keep],
                    "image_size": (height, width),
                }
            )
        return results


class RoIAlignFeatureExtractor:
    r"""Bottom-up / VinVL style region features: a timm CNN, then RoIAlign over each box, then a mean.

    The image is resized so its short side is `min_size` (long side at most `max_size`, VinVL's test
    setting 600/1000), normalised with the backbone's mean/std, and run through the backbone; each
    box is pooled from the last feature map with `torchvision.ops.roi_align` (`pool_size` squared,
    aligned) and averaged into one vector of the backbone's channel width (2048 for ResNet-50 and
    wider ResNe(X)ts, as the released features).

    Args:
        backbone: a timm model name (built with `features_only=True`) or a timm features model.
        box_source: optional detector callable giving `boxes` (and `tags`, `scores`) per image; its
            boxes are pooled, its tags and scores passed through.
        pretrained: load timm's pretrained weights (needs them cached locally when offline).
        min_size, max_size, pool_size, sampling_ratio: see above.
        timm_kwargs: more arguments for `timm.create_model` (e.g. `pretrained_cfg_overlay` with a
            local weights file).

    Example:
        >>> extractor = RoIAlignFeatureExtractor("resnet50", pretrained=True)  # doctest: +SKIP
        >>> regions = extractor([image], boxes=[torch.tensor([[10.0, 20.0, 200.0, 180.0]])])  # doctest: +SKIP
        >>> regions[0]["features"].shape  # doctest: +SKIP
        torch.Size([1, 2048])
    """

    def __init__(
        self,
        backbone: str | torch.nn.Module = "resnet50",
        box_source: Callable[[list], list[Mapping[str, Any]]] | None = None,
        pretrained: bool = False,
        min_size: int = 600,
        max_size: int = 1000,
        pool_size: int = 7,
        sampling_ratio: int = 2,
        device: str | torch.device | None = None,
        **timm_kwargs: Any,
    ) -> None:
        import timm

        if isinstance(backbone, str):
            backbone = timm.create_model(
                backbone, pretrained=pretrained, features_only=True, out_indices=(-1,), **timm_kwargs
            )
        if not hasattr(backbone, "feature_info"):
            raise ValueError("backbone must be a timm model name or a timm model created with features_only=True.")
        self.backbone = backbone.eval()
        self.box_source = box_source
        self.min_size, self.max_size = min_size, max_size
        self.pool_size, self.sampling_ratio = pool_size, sampling_ratio
        self.device = torch.device(device) if device is not None else next(backbone.parameters()).device
        self.backbone.to(self.device)
        config = timm.data.resolve_data_config({}, model=backbone)
        self.mean = torch.tensor(config["mean"]).view(3, 1, 1)
        self.std = torch.tensor(config["std"]).view(3, 1, 1)

    @property
    def feature_dim(self) -> int:
        """Channels of the pooled feature map (the region feature width)."""
        return int(self.backbone.feature_info.channels()[-1])

    def _prepare(self, image: Any) -> tuple[torch.Tensor, float]:
        height, width = _image_size(image)
        scale = min(self.min_size / min(height, width), self.max_size / max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = np.asarray(image.convert("RGB").resize(size), dtype=np.float32) / 255.0
        pixels = (torch.from_numpy(resized).permute(2, 0, 1) - self.mean) / self.std
        return pixels, scale

    @torch.no_grad()
    def pool(self, image: Any, boxes: torch.Tensor) -> torch.Tensor:
        """(N, C) features of `boxes` (x1, y1, x2, y2 pixels of `image`)."""
        from torchvision.ops import roi_align

        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if boxes.numel() == 0:
            return torch.zeros(0, self.feature_dim)
        pixels, scale = self._prepare(image)
        feature_map = self.backbone(pixels[None].to(self.device))[-1]  # (1, C, h, w)
        stride = pixels.shape[-1] / feature_map.shape[-1]
        rois = torch.cat([torch.zeros(len(boxes), 1), boxes * scale], 1).to(self.device)
        pooled = roi_align(
            feature_map,
            rois,
            self.pool_size,
            spatial_scale=1.0 / stride,
            sampling_ratio=self.sampling_ratio,
            aligned=True,
        )  # (N, C, pool, pool)
        return pooled.mean((2, 3)).float().cpu()

    def __call__(self, images: Sequence[Any], boxes: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        images = list(images)
        if boxes is None:
            if self.box_source is None:
                raise ValueError("Pass boxes=[...] (one (N, 4) array per image) or give the extractor a box_source.")
            detections = self.box_source(images)
        else:
            if len(boxes) != len(images):
                raise ValueError(f"Got {len(boxes)} box arrays for {len(images)} images; pass one per image.")
            detections = [{"boxes": b} for b in boxes]
        results = []
        for index, (image, detection) in enumerate(zip(images, detections)):
            height, width = _image_size(image)
            box = torch.as_tensor(detection["boxes"], dtype=torch.float32).reshape(-1, 4)
            if ((box[:, 2:] - box[:, :2]) < 0).any():
                raise ValueError(f"boxes[{index}] has a negative width or height; pass x1, y1, x2, y2 pixel boxes.")
            count = len(box)
            results.append(
                {
                    "boxes": box,
                    "scores": torch.as_tensor(detection.get("scores", torch.ones(count)), dtype=torch.float32),
                    "label_ids": torch.as_tensor(
                        detection.get("label_ids", torch.full((count,), -1)), dtype=torch.long
                    ),
                    "tags": list(detection.get("tags", [])),
                    "features": self.pool(image, box),
                    "image_size": (height, width),
                }
            )
        return results


def transformers_detector(name_or_path: str, **kwargs: Any) -> TransformersDetector:
    """Factory for `package.module:factory` detector specs (e.g. the dataset CLI's `--detector`):
    `oscar_hf.processors.detectors:transformers_detector` with `{"name_or_path": "folder", ...}`."""
    return TransformersDetector.from_pretrained(name_or_path, **kwargs)


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
    "PrecomputedRegions",
    "RoIAlignFeatureExtractor",
    "TransformersDetector",
    "decode_features",
    "select_detections",
    "transformers_detector",
    "unique_tags",
]
