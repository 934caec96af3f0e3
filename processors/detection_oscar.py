"""Detection for Oscar: images -> regions (boxes, tags, scores, features), and image loading.

This file is a flat remote-code file: exported folders carry it next to `pipeline_oscar.py`, so the
pipelines run where this package is not installed. It imports only installed libraries (torch,
numpy, PIL, transformers); timm and torchvision are optional and imported only when used.
Library code imports it as `oscar_hf.processors.detection_oscar`.

Every detector is a callable `detector(images) -> list[dict]`, one dict per PIL image with

- `boxes`: (N, 4) float32 `x1, y1, x2, y2` in pixels of the image as given;
- `scores`: (N,) float32; `label_ids`: (N,) int64; `tags`: N class names (duplicates kept);
- `features`: (N, D) float32 region vectors (D = 2048 for bottom-up / VinVL style backbones);
- `image_size`: `(height, width)`.

- `TransformersDetector`: any `AutoModelForObjectDetection` checkpoint (DETR, RT-DETR, YOLOS, ...).
  The features are the decoder hidden states of the queries whose boxes are kept (the library's
  post-processing drops the query indices, so the selection is redone here).
- `RoIAlignFeatureExtractor`: VinVL / bottom-up style. A timm backbone and torchvision `roi_align`
  pool one vector per box; the boxes come from any detector above or from the user.
- `VinVLDetectorAdapter`: the native VinVL detector (a folder written by
  `python -m oscar_hf.convert_vinvl_detector`), the one whose 2048-d features and tags the released
  Oscar+ / VinVL checkpoints read. Its records also carry `attributes` (names per box) and
  `attribute_scores`; its box selection is the detector config's (the original post-processing).
- `load_detector`: a detector reference (a folder, a model folder's `detector/` subfolder, a Hub
  repository) -> the right adapter, VinVL or transformers, from the folder's `config.json`.

Selection follows VinVL's extraction settings: score threshold 0.2, at least 10 and at most 100
boxes per image, optional class-wise NMS. Features of a DETR-style model are NOT the 2048-d Faster
R-CNN features released Oscar/VinVL checkpoints were trained on: use them with a model trained on
them (`img_feature_dim = d_model + 6`).

`load_rgb_image` / `to_rgb` turn paths, URLs, PIL images and numpy arrays (grayscale, RGBA,
16-bit, float) into 8-bit RGB PIL images.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps


def _optional(module: str, extra: str) -> Any:
    """Imports an optional dependency (kept out of the remote-code import check), with an install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        # The wording of oscar_hf.extras, repeated: remote code cannot import the package.
        raise ImportError(
            f"`{module}` is not installed ({error}), and {extra} cannot work without it. Install the 'detect' extra: "
            f'pip install "oscar-hf[detect]"  (or `pip install {module.split(".")[0]}` with a matching torch).',
            name=module,
        ) from error


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
        ops = _optional("torchvision.ops", "non-maximum suppression (nms_threshold)")
        candidates = ops.batched_nms(boxes.float(), scores.float(), label_ids, nms_threshold)
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
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        subfolder: str = "",
        hub_kwargs: Mapping[str, Any] | None = None,
        **kwargs,
    ) -> TransformersDetector:
        """Loads a checkpoint folder or Hub repository (optionally its `subfolder`); `kwargs` go to the constructor.

        The folder needs the detector's `config.json`, weights and image-processor config, as
        `model.save_pretrained(folder)` and `image_processor.save_pretrained(folder)` write them.
        """
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        hub_kwargs = dict(hub_kwargs or {})
        if subfolder:
            hub_kwargs["subfolder"] = subfolder
        where = f"{os.fspath(name_or_path)!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
        try:
            model = AutoModelForObjectDetection.from_pretrained(name_or_path, **hub_kwargs)
            image_processor = AutoImageProcessor.from_pretrained(name_or_path, **hub_kwargs)
        except (OSError, ValueError) as error:
            raise FileNotFoundError(
                f"Could not load an object detector from {where}: {error}. Expected a folder (or Hub repository) "
                "holding an AutoModelForObjectDetection checkpoint and its image processor config; save one with "
                "model.save_pretrained(folder) and image_processor.save_pretrained(folder), or download it first "
                "when offline."
            ) from error
        return cls(model, image_processor, **kwargs)

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
        timm = _optional("timm", "RoIAlignFeatureExtractor backbones")
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
        config = importlib.import_module("timm.data").resolve_data_config({}, model=backbone)
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
        ops = _optional("torchvision.ops", "RoIAlign region features")
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if boxes.numel() == 0:
            return torch.zeros(0, self.feature_dim)
        pixels, scale = self._prepare(image)
        feature_map = self.backbone(pixels[None].to(self.device))[-1]  # (1, C, h, w)
        stride = pixels.shape[-1] / feature_map.shape[-1]
        rois = torch.cat([torch.zeros(len(boxes), 1), boxes * scale], 1).to(self.device)
        pooled = ops.roi_align(
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


VINVL_MODEL_TYPE = "vinvl_detector"
# The box selection of a TransformersDetector, named after the processor's `detector_*` settings.
SELECTION_KWARGS = ("score_threshold", "min_boxes", "max_boxes", "nms_threshold")


class VinVLDetectorAdapter:
    r"""Regions from the native VinVL object-attribute detector, as every detector here returns them.

    The detector (`VinVLDetector`) and its image processor (`VinVLImageProcessor`) come from a folder
    written by `python -m oscar_hf.convert_vinvl_detector`; that folder carries their flat code, so it
    loads where this package is absent. Images run one per forward (the released features'
    setting, `TEST.IMS_PER_BATCH 1`): the records equal `detector(**image_processor(images))` exactly.

    Each record has `boxes` (original pixels), `scores`, `label_ids`, `tags` (class names),
    `features` (N, 2048) pooled res5 features of the proposal each box came from, `image_size`
    `(height, width)`, and the attribute head's `attributes` (per box, the names with a non-zero
    score) and `attribute_scores` (N, k). The processor appends the 6 box values to `features`,
    giving the 2054-d vectors Oscar+ reads.

    Args:
        model: a `VinVLDetector` (or the same class loaded as remote code).
        image_processor: its `VinVLImageProcessor`.
        score_threshold, min_boxes, max_boxes: override the detector config's `score_threshold`,
            `min_detections_per_image` and `max_detections_per_image` (None keeps the config's; the
            released setting is 0.2 / 10 / 100, the processor's defaults too).
        device: where to run the detector (defaults to the model's device).
        autocast_dtype: run under `torch.autocast` in this dtype (e.g. `torch.bfloat16`); None is fp32,
            the original's numbers.

    Example:
        >>> detector = VinVLDetectorAdapter.from_pretrained("vinvl-detector")  # doctest: +SKIP
        >>> regions = detector([PIL.Image.open("photo.jpg")])  # doctest: +SKIP
        >>> regions[0]["tags"][:3], regions[0]["features"].shape  # doctest: +SKIP
        (['man', 'shirt', 'table'], torch.Size([52, 2048]))
    """

    def __init__(
        self,
        model: torch.nn.Module,
        image_processor: Any,
        score_threshold: float | None = None,
        min_boxes: int | None = None,
        max_boxes: int | None = None,
        device: str | torch.device | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        if getattr(getattr(model, "config", None), "model_type", None) != VINVL_MODEL_TYPE:
            raise ValueError(
                f"model is a {type(model).__name__}; VinVLDetectorAdapter expects a VinVLDetector (model_type "
                f"{VINVL_MODEL_TYPE!r}). Use TransformersDetector for other object detectors."
            )
        self.model = model.eval()
        self.image_processor = image_processor
        config = model.config
        for name, value in (
            ("score_threshold", score_threshold),
            ("min_detections_per_image", min_boxes),
            ("max_detections_per_image", max_boxes),
        ):
            if value is not None:
                setattr(config, name, type(getattr(config, name))(value))
        if not 0 <= config.min_detections_per_image <= config.max_detections_per_image:
            raise ValueError(
                f"min_boxes={config.min_detections_per_image}, max_boxes={config.max_detections_per_image}; "
                "expected 0 <= min_boxes <= max_boxes."
            )
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.autocast_dtype = autocast_dtype

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        subfolder: str = "",
        hub_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> VinVLDetectorAdapter:
        """Loads a converted detector folder or Hub repository (optionally its `subfolder`).

        The folder's own flat code is used when this package is not installed (the detector folder is
        part of a model folder the user already trusts); with the package installed, its registered
        classes load it.
        """
        from transformers import AutoConfig, AutoImageProcessor, AutoModel
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        hub_kwargs = dict(hub_kwargs or {})
        if subfolder:
            hub_kwargs["subfolder"] = subfolder
        # Prefer the installed classes; otherwise the folder's flat remote code.
        hub_kwargs.setdefault("trust_remote_code", VINVL_MODEL_TYPE not in CONFIG_MAPPING)
        where = f"{os.fspath(name_or_path)!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
        try:
            config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
            model = AutoModel.from_pretrained(name_or_path, config=config, **hub_kwargs)
            image_processor = AutoImageProcessor.from_pretrained(name_or_path, **hub_kwargs)
        except (OSError, ValueError) as error:
            raise FileNotFoundError(
                f"Could not load the VinVL detector from {where}: {error}. Expected a folder written by "
                "`python -m oscar_hf.convert_vinvl_detector vinvl_vg_x152c4.pth OUT --labelmap "
                "VG-SGG-dicts-vgoi6-clipped.json` (config.json, model.safetensors, preprocessor_config.json and "
                "the flat code files)."
            ) from error
        return cls(model, image_processor, **kwargs)

    @property
    def feature_dim(self) -> int:
        """Width of the pooled region features (2048 for the released detector)."""
        return int(self.model.roi_heads.box.predictor.cls_score.in_features)

    @torch.no_grad()
    def detect(self, images: Sequence[Any], boxes: Sequence[Any] | None = None) -> Any:
        """The detector's full output (`VinVLDetectorOutput`) for `images` (PIL images, arrays or paths).

        `boxes`: per image (n_i, 4) boxes in original pixels to describe instead of detecting.
        """
        inputs = self.image_processor(list(images))
        pixel_values = [tensor.to(self.device) for tensor in inputs["pixel_values"]]
        if boxes is not None:
            boxes = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4).to(self.device) for b in boxes]
        enabled = self.autocast_dtype is not None
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled):
            return self.model(
                pixel_values,
                image_sizes=inputs["image_sizes"],
                original_sizes=inputs["original_sizes"],
                boxes=boxes,
            )

    def __call__(self, images: Sequence[Any], boxes: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        images = list(images)
        if not images:
            return []
        output = self.detect(images, boxes)
        records = []
        for index in range(len(images)):
            regions = output.oscar_regions(index)
            records.append(
                {
                    "boxes": regions["boxes"].float().cpu(),
                    "scores": regions["scores"].float().cpu(),
                    "label_ids": regions["label_ids"].cpu(),
                    "tags": regions["tags"],
                    "features": regions["features"].float().cpu(),
                    "image_size": regions["image_size"],
                    "attributes": output.attribute_names[index],
                    "attribute_scores": output.attribute_scores[index].float().cpu(),
                }
            )
        return records


def vinvl_detector(name_or_path: str, **kwargs: Any) -> VinVLDetectorAdapter:
    """Factory for `package.module:factory` detector specs: a converted VinVL detector folder."""
    return VinVLDetectorAdapter.from_pretrained(name_or_path, **kwargs)


def detector_model_type(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> str | None:
    """`model_type` in a detector folder's (or Hub repository's) `config.json`, None when it has none."""
    path = os.path.join(os.fspath(name_or_path), hub_kwargs.get("subfolder", ""), "config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            return json.load(handle).get("model_type")
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(name_or_path, **hub_kwargs)
    return config.get("model_type")


def detector_from_pretrained(
    name_or_path: str | os.PathLike, subfolder: str = "", **kwargs: Any
) -> VinVLDetectorAdapter | TransformersDetector:
    """The adapter a detector folder needs: `VinVLDetectorAdapter` for a converted VinVL detector,
    `TransformersDetector` for any `AutoModelForObjectDetection` checkpoint.

    `kwargs` go to the adapter; the box-selection ones (`score_threshold`, `min_boxes`, `max_boxes`,
    `nms_threshold`) are given to a VinVL detector only when they are set (its NMS is its config's).
    """
    hub = {"subfolder": subfolder} if subfolder else {}
    try:
        model_type = detector_model_type(name_or_path, **hub)
    except (OSError, ValueError) as error:
        where = f"{os.fspath(name_or_path)!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
        raise FileNotFoundError(
            f"No detector config.json at {where} ({error}); expected a converted VinVL detector folder or an "
            "AutoModelForObjectDetection checkpoint."
        ) from error
    if model_type == VINVL_MODEL_TYPE:
        kwargs.pop("nms_threshold", None)
        kwargs = {k: v for k, v in kwargs.items() if k not in SELECTION_KWARGS or v is not None}
        return VinVLDetectorAdapter.from_pretrained(name_or_path, subfolder=subfolder, **kwargs)
    return TransformersDetector.from_pretrained(name_or_path, subfolder=subfolder, **kwargs)


def load_detector(
    reference: str | os.PathLike | None, model_folder: str | os.PathLike | None = None, **kwargs: Any
) -> VinVLDetectorAdapter | TransformersDetector:
    """Loads the detector a processor config names (`detector_name_or_path`), wherever it lives.

    Looked up in this order: `reference` inside the model folder (relative references; an exported
    folder keeps its detector in `detector/`), `reference` as a local folder, `reference` as a
    subfolder of the model's Hub repository, `reference` as a Hub repository of its own. With
    `reference=None`, the model folder's `detector/` subfolder when it has one (the converters'
    `--detector DIR` puts it there). `kwargs` go to `detector_from_pretrained`.
    """
    folder = os.fspath(model_folder) if model_folder else None
    if reference is None:
        if folder and os.path.isfile(os.path.join(folder, "detector", "config.json")):
            return detector_from_pretrained(os.path.join(folder, "detector"), **kwargs)
        raise ValueError(
            "Got an image but there is no object detector: the processor config sets no detector_name_or_path"
            + (f" and the model folder {folder!r} has no detector/ subfolder" if folder else "")
            + ". Convert the VinVL detector (python -m oscar_hf.convert_vinvl_detector) and pass it to the model "
            "converter with --detector DIR, pass detector=... (a folder or a callable), or pass precomputed "
            "regions {'features', 'boxes', 'image_size', 'tags'}."
        )
    reference = os.fspath(reference)
    relative = not os.path.isabs(reference)
    if relative and folder and os.path.isdir(folder) and os.path.isdir(os.path.join(folder, reference)):
        return detector_from_pretrained(os.path.join(folder, reference), **kwargs)
    if os.path.isdir(reference):
        return detector_from_pretrained(reference, **kwargs)
    if relative and folder and not os.path.isdir(folder):
        try:  # the model is a Hub repository that carries its detector in a subfolder
            return detector_from_pretrained(folder, subfolder=reference, **kwargs)
        except FileNotFoundError:
            pass
    try:  # a Hub repository of its own
        return detector_from_pretrained(reference, **kwargs)
    except FileNotFoundError as error:
        looked = f" nor inside the model folder {folder!r}" if folder else ""
        raise FileNotFoundError(
            f"The detector {reference!r} (detector_name_or_path) is not a local folder{looked}, and loading it "
            f"from the Hub failed ({error}). Put the detector checkpoint there (an exported folder keeps it in "
            "detector/), download it first when offline, or pass detector=..."
        ) from error


def transformers_detector(name_or_path: str, **kwargs: Any) -> TransformersDetector:
    """Factory for `package.module:factory` detector specs (e.g. the dataset CLI's `--detector`):
    `oscar_hf.processors.detection_oscar:transformers_detector` with `{"name_or_path": "folder", ...}`."""
    return TransformersDetector.from_pretrained(name_or_path, **kwargs)


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Integer or float pixels -> uint8: 16-bit range scaled down, floats in [0, 1] scaled up."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        top = int(array.max()) if array.size else 0
        if top <= 255:
            return array.clip(0, 255).astype(np.uint8)
        # 16-bit (or wider) data: map the type's range (65535 for 16-bit) onto 0..255.
        scale = 65535.0 if top <= 65535 else float(top)
        return (array.astype(np.float64) / scale * 255.0).round().clip(0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("The image array contains NaN or inf; pass finite pixel values.")
        top = float(array.max()) if array.size else 0.0
        factor = 255.0 if top <= 1.0 else 1.0  # [0, 1] floats (skimage) or [0, 255] floats
        return (array * factor).round().clip(0, 255).astype(np.uint8)
    raise ValueError(f"Image arrays of dtype {array.dtype} are not supported; pass uint8, uint16 or float pixels.")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] > 4:
        array = np.moveaxis(array, 0, -1)  # channels first (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))) or 0 in array.shape:
        raise ValueError(
            f"Image array of shape {array.shape} is not an image; expected (H, W) grayscale, (H, W, 3) RGB or "
            "(H, W, 4) RGBA (channels-first (3, H, W) is accepted too), at least 1x1 pixels."
        )
    return Image.fromarray(np.ascontiguousarray(_scale_to_uint8(array)))  # L, RGB or RGBA from the shape


def to_rgb(image: Any) -> Image.Image:
    """An 8-bit RGB PIL image from a PIL image or array of any common mode.

    Grayscale is replicated to three channels; transparency (RGBA, LA, P with a transparent
    colour) is composited on white; 16-bit (`I;16`, `I`) and float (`F`) images are scaled to
    0..255 rather than clipped.

    Example:
        >>> import numpy as np
        >>> to_rgb(np.full((2, 3), 65535, np.uint16)).getpixel((0, 0))
        (255, 255, 255)
        >>> to_rgb(np.zeros((2, 2, 4), np.uint8)).getpixel((0, 0))  # fully transparent -> white
        (255, 255, 255)
    """
    if torch.is_tensor(image):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"Expected a PIL image or a numpy array, got {type(image).__name__}; open files with PIL.Image.open "
            "or pass a path."
        )
    if image.width == 0 or image.height == 0:
        raise ValueError(
            f"The image is {image.width}x{image.height} pixels; expected at least 1x1 (an empty image has no regions)."
        )
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _array_to_pil(np.asarray(image))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def load_rgb_image(image: Any, timeout: float | None = None) -> Image.Image:
    """Paths, `http(s)://` URLs, PIL images and arrays -> an 8-bit RGB PIL image (EXIF rotation applied).

    URLs are fetched with `transformers.image_utils.load_image`; a failed download (for example on
    a machine without network) raises a ValueError that says so.
    """
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        if image.startswith(("http://", "https://")):
            from transformers.image_utils import load_image

            try:
                return to_rgb(load_image(image, timeout=timeout))
            except Exception as error:  # network errors differ between httpx and requests
                raise ValueError(
                    f"Could not download the image {image!r} ({type(error).__name__}: {error}). If this machine is "
                    "offline, download the image elsewhere and pass a local path or a PIL image."
                ) from error
        if os.path.isdir(image):
            raise ValueError(
                f"Image path {image!r} is a directory, not an image file; pass the path of one JPEG/PNG/... file "
                "(or a list of file paths for a batch)."
            )
        if not os.path.isfile(image):
            raise FileNotFoundError(
                f"Image file {image!r} does not exist; pass an existing path, an http(s) URL, a PIL image or an array."
            )
        try:
            with Image.open(image) as opened:
                opened.load()
                loaded = ImageOps.exif_transpose(opened)
        except Exception as error:
            raise ValueError(
                f"{image!r} could not be read as an image ({type(error).__name__}: {error}); pass a JPEG/PNG/... file "
                "that PIL can open."
            ) from error
        return to_rgb(loaded)
    return to_rgb(image)
