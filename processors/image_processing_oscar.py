"""Region-feature image processor of Oscar / Oscar+ (VinVL).

Oscar never sees pixels: it reads one vector per detected region. This processor turns per-image
detector output (region features, boxes in pixels, image size) into the model inputs
`img_feats` (batch, regions, 2048 + 6) and `img_attention_mask` (batch, regions):

- the 6 box values appended to each feature are `[x1/W, y1/H, x2/W, y2/H, w/W, h/H]`, the layout
  every released Oscar/VinVL checkpoint was trained on;
- regions keep their file order; past `max_img_seq_length` the first regions are kept (as the
  original tensorizers do), below it zero vectors pad the slots and the mask marks them 0.

This file is a flat remote-code file: it imports only installed libraries, so it works next to a
`preprocessor_config.json` / `processor_config.json` on the Hub.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor


try:  # transformers >= 4.47 validates kwargs against a TypedDict; older releases have none.
    from transformers.processing_utils import ImagesKwargs
except ImportError:  # pragma: no cover - very old transformers
    from typing import TypedDict as _TypedDict

    class ImagesKwargs(_TypedDict, total=False):  # type: ignore[no-redef]
        pass


BOX_FEATURE_DIM = 6
# Detectron-style detectors (VinVL's) measure a box as `x2 - x1 + 1` pixels and keep boxes down to zero
# such pixels, i.e. `x2 = x1 - 1` at their input scale: a few pixels once scaled back to a small or
# elongated image. Those are kept, with the slightly negative box values the original computes for
# them; a box inverted by more than this fraction of the image side is not an `x1, y1, x2, y2` box.
LEGACY_BOX_SLACK = 0.02
PADDING_STRATEGIES = ("max_length", "longest")


class OscarRegionFeatureProcessorKwargs(ImagesKwargs, total=False):
    """Options of `OscarRegionFeatureProcessor` (declared so transformers 5 accepts and saves them)."""

    region_feature_dim: int
    max_img_seq_length: int
    add_box_geometry: bool
    clip_boxes: bool
    allow_empty_regions: bool
    region_padding: str


def box_geometry(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """The 6 box values Oscar appends to a region feature.

    Args:
        boxes: (num_boxes, 4) `x1, y1, x2, y2` in pixels.
        image_size: `(height, width)` of the image the boxes live in.

    Returns:
        (num_boxes, 6) float32 `[x1/W, y1/H, x2/W, y2/H, w/W, h/H]`.

    Example:
        >>> import torch
        >>> box_geometry(torch.tensor([[10.0, 20.0, 60.0, 120.0]]), (200, 100)).tolist()
        [[0.10000000149011612, 0.10000000149011612, 0.6000000238418579, 0.6000000238418579, 0.5, 0.5]]
    """
    height, width = float(image_size[0]), float(image_size[1])
    boxes = boxes.to(torch.float32)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1 / width, y1 / height, x2 / width, y2 / height, (x2 - x1) / width, (y2 - y1) / height], -1)


def _as_tensor(value: Any, name: str, index: int) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(value, dtype=np.float32) if not torch.is_tensor(value) else value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}[{index}] is not numeric ({type(value).__name__}): {error}") from error
    return tensor.to(torch.float32)


def _as_list(value: Any, name: str) -> list:
    """A batch given as a list/tuple of per-image items, or as one stacked (batch, ...) array."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        return list(value)
    raise ValueError(
        f"{name} must be a list with one entry per image (or a stacked array), got {type(value).__name__}."
    )


def validate_boxes(boxes: torch.Tensor, image_size: tuple[int, int], index: int, clip: bool) -> torch.Tensor:
    """Checks (and with `clip`, clips) the pixel boxes of image `index`; returns them as float32.

    Negative widths or heights beyond `LEGACY_BOX_SLACK` of the image side are always an error: they
    mean the boxes are not `x1, y1, x2, y2` (for example `x, y, w, h` or normalised centre format) and
    clipping would hide that.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(
            f"boxes[{index}] has shape {tuple(boxes.shape)}; expected (num_regions, 4) as x1, y1, x2, y2 in pixels."
        )
    if not torch.isfinite(boxes).all():
        raise ValueError(f"boxes[{index}] contains NaN or inf; drop those detections before processing.")
    height, width = image_size
    if height <= 0 or width <= 0:
        raise ValueError(f"image_sizes[{index}] = {tuple(image_size)}; expected a positive (height, width).")
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bad = torch.nonzero((widths < -LEGACY_BOX_SLACK * width) | (heights < -LEGACY_BOX_SLACK * height)).flatten()
    if bad.numel():
        row = int(bad[0])
        raise ValueError(
            f"boxes[{index}][{row}] = {boxes[row].tolist()} has a negative width or height; boxes must be "
            "x1, y1, x2, y2 in pixels with x2 >= x1 and y2 >= y1 (convert xywh or cxcywh boxes first)."
        )
    outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
    if outside.any():
        if not clip:
            row = int(torch.nonzero(outside).flatten()[0])
            raise ValueError(
                f"boxes[{index}][{row}] = {boxes[row].tolist()} lies outside the image of (height, width) = "
                f"{tuple(image_size)}. Check that image_sizes is (height, width) of the image the detector saw, "
                "or pass clip_boxes=True to clip boxes into the image."
            )
        limits = torch.tensor([width, height, width, height], dtype=boxes.dtype)
        boxes = torch.minimum(boxes.clamp(min=0), limits)
    return boxes


class OscarRegionFeatureProcessor(BaseImageProcessor):
    r"""Turns detector regions into Oscar's `img_feats` and `img_attention_mask`. Holds no weights.

    Args:
        region_feature_dim: width of the appearance features (2048 for bottom-up / VinVL).
            Features of width `region_feature_dim + 6` are taken as already carrying the box values.
        max_img_seq_length: number of region slots (50 for most Oscar checkpoints, 70 for VinVL
            retrieval).
        add_box_geometry: append the 6 box values to `region_feature_dim`-wide features (needs
            `boxes` and `image_sizes`). Without it, features are used as given.
        clip_boxes: clip boxes that stick out of the image instead of raising.
        allow_empty_regions: accept an image with zero regions (its mask row is all zeros and the
            model attends to the text only). Off by default, because zero regions usually mean a
            detector threshold or a file lookup went wrong.
        region_padding: "max_length" pads every batch to `max_img_seq_length` slots (the original),
            "longest" to the largest region count of the batch.

    Example:
        >>> import torch
        >>> processor = OscarRegionFeatureProcessor(region_feature_dim=4, max_img_seq_length=3)
        >>> out = processor(
        ...     [torch.ones(2, 4)], boxes=[torch.tensor([[0.0, 0.0, 50.0, 100.0], [50.0, 0.0, 100.0, 50.0]])],
        ...     image_sizes=[(100, 100)])
        >>> out["img_feats"].shape, out["img_attention_mask"].tolist()
        (torch.Size([1, 3, 10]), [[1, 1, 0]])
        >>> out["img_feats"][0, 0, 4:].tolist()
        [0.0, 0.0, 0.5, 1.0, 0.5, 1.0]
    """

    model_input_names = ["img_feats", "img_attention_mask"]
    valid_kwargs = OscarRegionFeatureProcessorKwargs

    def __init__(
        self,
        region_feature_dim: int = 2048,
        max_img_seq_length: int = 50,
        add_box_geometry: bool = True,
        clip_boxes: bool = False,
        allow_empty_regions: bool = False,
        region_padding: str = "max_length",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if region_padding not in PADDING_STRATEGIES:
            raise ValueError(f"region_padding={region_padding!r}; expected one of {PADDING_STRATEGIES}.")
        if max_img_seq_length < 1:
            raise ValueError(f"max_img_seq_length={max_img_seq_length}; expected at least 1 region slot.")
        self.region_feature_dim = int(region_feature_dim)
        self.max_img_seq_length = int(max_img_seq_length)
        self.add_box_geometry = bool(add_box_geometry)
        self.clip_boxes = bool(clip_boxes)
        self.allow_empty_regions = bool(allow_empty_regions)
        self.region_padding = region_padding

    @property
    def img_feature_dim(self) -> int:
        """Width of one `img_feats` row (the model's `config.img_feature_dim`)."""
        return self.region_feature_dim + (BOX_FEATURE_DIM if self.add_box_geometry else 0)

    def __call__(self, region_features: Any, *args: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(region_features, *args, **kwargs)

    def preprocess(
        self,
        region_features: Any,
        boxes: Any = None,
        image_sizes: Any = None,
        max_img_seq_length: int | None = None,
        region_padding: str | None = None,
        clip_boxes: bool | None = None,
        allow_empty_regions: bool | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Builds `img_feats` and `img_attention_mask` for a batch of images.

        Args:
            region_features: one (num_regions, D) array per image (list, or a stacked
                (batch, num_regions, D) array). D is `region_feature_dim` (box values are appended
                from `boxes`) or `region_feature_dim + 6` (already carrying them; pass no boxes).
            boxes: one (num_regions, 4) `x1, y1, x2, y2` pixel array per image.
            image_sizes: one `(height, width)` per image, the size the boxes refer to.
            max_img_seq_length, region_padding, clip_boxes, allow_empty_regions: override the
                processor's settings for this call.
            return_tensors: "pt" (default), "np" or None (lists).

        Returns:
            `BatchFeature` with `img_feats` (batch, R, D + 6) float32 and `img_attention_mask`
            (batch, R) int64.
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments {sorted(kwargs)} for OscarRegionFeatureProcessor.preprocess.")
        limit = int(max_img_seq_length or self.max_img_seq_length)
        padding = region_padding or self.region_padding
        if padding not in PADDING_STRATEGIES:
            raise ValueError(f"region_padding={padding!r}; expected one of {PADDING_STRATEGIES}.")
        clip = self.clip_boxes if clip_boxes is None else clip_boxes
        allow_empty = self.allow_empty_regions if allow_empty_regions is None else allow_empty_regions

        features = _as_list(region_features, "region_features")
        if not features:
            raise ValueError("region_features is empty; pass one (num_regions, D) array per image.")
        box_list = _as_list(boxes, "boxes")
        size_list = _as_list(image_sizes, "image_sizes")
        rows = [self._image_rows(features[i], box_list, size_list, i, clip, allow_empty) for i in range(len(features))]
        return self._pad(rows, limit, padding, return_tensors)

    def _image_rows(
        self, features: Any, boxes: list, sizes: list, index: int, clip: bool, allow_empty: bool
    ) -> torch.Tensor:
        """(num_regions, img_feature_dim) rows of image `index`, validated, before truncation."""
        feats = _as_tensor(features, "region_features", index)
        if feats.dim() == 1 and feats.numel() == 0:
            feats = feats.reshape(0, self.img_feature_dim)
        full_dim = self.region_feature_dim + BOX_FEATURE_DIM
        if feats.dim() != 2 or feats.shape[-1] not in (self.region_feature_dim, full_dim):
            raise ValueError(
                f"region_features[{index}] has shape {tuple(feats.shape)}; expected (num_regions, "
                f"{self.region_feature_dim}) with boxes, or (num_regions, {full_dim}) already carrying the 6 box "
                f"values. Set region_feature_dim to your detector's feature width if it is not {self.region_feature_dim}."
            )
        if feats.shape[0] == 0 and not allow_empty:
            raise ValueError(
                f"region_features[{index}] has 0 regions. Lower the detector's score threshold or set its min_boxes, "
                "or pass allow_empty_regions=True to run that example on text alone."
            )
        if not torch.isfinite(feats).all():
            row = int(torch.nonzero(~torch.isfinite(feats).all(-1)).flatten()[0])
            raise ValueError(
                f"region_features[{index}][{row}] contains NaN or inf; fix the feature file or drop that region."
            )
        has_box = feats.shape[-1] == full_dim
        if has_box or not self.add_box_geometry:
            if index < len(boxes) and boxes[index] is not None:
                raise ValueError(
                    f"region_features[{index}] already has {feats.shape[-1]} dims (box values included or "
                    "add_box_geometry=False), but boxes were passed too; pass one or the other."
                )
            return feats
        if index >= len(boxes) or index >= len(sizes):
            raise ValueError(
                f"region_features[{index}] has {self.region_feature_dim} dims, so boxes[{index}] (x1, y1, x2, y2 "
                f"pixels) and image_sizes[{index}] (height, width) are needed to append the 6 box values."
            )
        if sizes[index] is None:
            raise ValueError(
                f"image_sizes[{index}] is None; expected the (height, width) of the image the boxes are in."
            )
        size_values = _as_tensor(sizes[index], "image_sizes", index).flatten()
        if size_values.numel() != 2 or not torch.isfinite(size_values).all() or (size_values <= 0).any():
            raise ValueError(
                f"image_sizes[{index}] = {size_values.tolist()}; expected a finite, positive (height, width) in pixels."
            )
        size = tuple(int(v) for v in size_values.tolist())
        if boxes[index] is None:
            raise ValueError(
                f"boxes[{index}] is None but region_features[{index}] has {self.region_feature_dim} dims; expected "
                "(num_regions, 4) x1, y1, x2, y2 pixel boxes to append the 6 box values."
            )
        box = _as_tensor(boxes[index], "boxes", index)
        if box.numel() == 0:
            box = box.reshape(0, 4)
        box = validate_boxes(box, size, index, clip)
        if box.shape[0] != feats.shape[0]:
            raise ValueError(
                f"boxes[{index}] has {box.shape[0]} boxes but region_features[{index}] has {feats.shape[0]} rows; "
                "pass one box per region, in the same order."
            )
        return torch.cat([feats, box_geometry(box, size)], dim=-1)

    def _pad(self, rows: list[torch.Tensor], limit: int, padding: str, return_tensors: str | None) -> BatchFeature:
        # The original keeps the first `limit` regions in file order (detector score order for VinVL).
        rows = [r[:limit] for r in rows]
        dim = rows[0].shape[-1]
        for i, r in enumerate(rows):
            if r.shape[-1] != dim:
                raise ValueError(
                    f"region_features[{i}] has {r.shape[-1]} dims after adding box values, region_features[0] has "
                    f"{dim}; every image of a batch needs the same feature width."
                )
        slots = limit if padding == "max_length" else max(1, max(r.shape[0] for r in rows))
        img_feats = torch.zeros(len(rows), slots, dim, dtype=torch.float32)
        img_mask = torch.zeros(len(rows), slots, dtype=torch.long)
        for i, r in enumerate(rows):
            img_feats[i, : r.shape[0]] = r
            img_mask[i, : r.shape[0]] = 1
        data = {"img_feats": img_feats, "img_attention_mask": img_mask}
        if return_tensors != "pt":
            data = {k: v.numpy() if return_tensors == "np" else v.tolist() for k, v in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors if return_tensors == "pt" else None)


__all__ = ["BOX_FEATURE_DIM", "OscarRegionFeatureProcessor", "box_geometry", "validate_boxes"]
