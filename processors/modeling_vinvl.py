"""The VinVL object-attribute detector, native PyTorch + torchvision.

VinVL's Oscar+ checkpoints read the region features and tags of one detector: a ResNeXt-152 32x8d C4
Faster R-CNN with an attribute head, released as `vinvl_vg_x152c4.pth` (microsoft/scene_graph_benchmark).
This file reimplements its inference path so that the released weights load key for key and give the
original's numbers, with nothing to compile:

    image (BGR x 255 - mean) -> backbone (stem, res2..res4; frozen BatchNorm without epsilon) -> C4 (stride 16)
      -> RPN (one 3x3 conv, 15 anchors per cell) -> 300 proposals (legacy +1 box coder, NMS 0.7)
      -> RoIAlign 14x14 (legacy, non-aligned) -> res5 head (3 bottlenecks, stride 2) -> avg-pool (2048-d)
      -> class logits + class-specific box deltas -> post-processing (`nms_filter` 0 / 1 / 2)
      -> attribute head (class embedding + pooled feature -> 525 attributes) on the kept boxes.

The region feature Oscar+ consumes is the pooled res5 output of the PROPOSAL each detection came from.
Outputs are in original-image pixels.

Exactness traps reproduced on purpose (see the configuration for the switches): the box arithmetic is the
legacy "+1 pixel" kind (box coder, clipping to W-1 / H-1, NMS areas); the legacy NMS keeps indices in index
order; filter 2 with box regression returns rows of the flattened per-class box table (the original indexes
that table with proposal indices); the per-image attribute cap uses a threshold over all entries, zeros
included, so it removes nothing in practice.

Speed without changing results: the per-class NMS runs for all classes at once (one greedy sweep over the
ranks, vectorised over classes); when the kept boxes are pooled proposals, the attribute head reuses their
res5 features instead of running res5 again; convolutions can run channels-last.

This file is flat remote code: it imports `.configuration_vinvl` and installed libraries only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms as torchvision_nms
from torchvision.ops import roi_align
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_vinvl import VinVLDetectorConfig


# ------------------------------------------------------------------------------------------------
# Box arithmetic (the legacy "+1 pixel" convention of maskrcnn_benchmark)
# ------------------------------------------------------------------------------------------------


def decode_boxes(deltas: torch.Tensor, boxes: torch.Tensor, weights: tuple[float, ...], clip: float) -> torch.Tensor:
    """Applies box deltas to reference boxes, the legacy way (widths are `x2 - x1 + 1`).

    Args:
        deltas: (N, 4 * K) `dx, dy, dw, dh` per box and class.
        boxes: (N, 4) reference boxes `x1, y1, x2, y2`.
        weights: the coder weights `(wx, wy, ww, wh)`.
        clip: upper bound of `dw / ww` and `dh / wh` before `exp`.

    Returns:
        (N, 4 * K) decoded boxes.
    """
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights

    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=clip)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=clip)

    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]

    decoded = torch.zeros_like(deltas)
    decoded[:, 0::4] = pred_ctr_x - 0.5 * pred_w
    decoded[:, 1::4] = pred_ctr_y - 0.5 * pred_h
    # The "- 1" undoes the "+ 1" of the widths: x2 is the last pixel, not one past it.
    decoded[:, 2::4] = pred_ctr_x + 0.5 * pred_w - 1
    decoded[:, 3::4] = pred_ctr_y + 0.5 * pred_h - 1
    return decoded


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clips `(..., 4)` boxes to the last pixel of a `height x width` image (x to `[0, W-1]`, y to `[0, H-1]`)."""
    boxes = boxes.clone()
    boxes[..., 0].clamp_(min=0, max=width - 1)
    boxes[..., 1].clamp_(min=0, max=height - 1)
    boxes[..., 2].clamp_(min=0, max=width - 1)
    boxes[..., 3].clamp_(min=0, max=height - 1)
    return boxes


def _legacy_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes whose plain areas are the legacy +1 areas (what the Feb-2021 NMS kernel computes)."""
    return torch.cat([boxes[..., :2], boxes[..., 2:] + 1], dim=-1)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, implementation: str) -> torch.Tensor:
    """Greedy NMS; returns kept indices.

    "legacy" (the release that made the published features): +1 pixel areas, kept indices in index order.
    "torchvision" (the repository head): `torchvision.ops.nms`, kept indices in decreasing score order.
    """
    if implementation == "legacy":
        return torchvision_nms(_legacy_boxes(boxes), scores, iou_threshold).sort().values
    return torchvision_nms(boxes, scores, iou_threshold)


def pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """(..., N, 4) boxes -> (..., N, N) IoU, with the arithmetic of torchvision's NMS kernel (plain areas)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    areas = (x2 - x1) * (y2 - y1)
    width = (
        torch.minimum(x2[..., :, None], x2[..., None, :]) - torch.maximum(x1[..., :, None], x1[..., None, :])
    ).clamp(min=0)
    height = (
        torch.minimum(y2[..., :, None], y2[..., None, :]) - torch.maximum(y1[..., :, None], y1[..., None, :])
    ).clamp(min=0)
    inter = width * height
    return inter / (areas[..., :, None] + areas[..., None, :] - inter)


def class_wise_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    implementation: str,
    candidates: torch.Tensor | None = None,
    class_chunk: int = 128,
) -> torch.Tensor:
    """One greedy NMS per class, all classes at once; returns the (N, K) mask of kept (box, class) pairs.

    Equal, decision for decision, to running `nms` once per class: each class visits its boxes in decreasing
    score order (stable, as the kernel sorts) and a kept box suppresses later boxes whose IoU exceeds the
    threshold. Only the Python loop over ranks remains; classes are the vectorised dimension.

    Args:
        boxes: (N, 4) boxes shared by every class, or (N, K, 4) one box per proposal and class.
        scores: (N, K) scores.
        iou_threshold: suppress at IoU strictly above this.
        implementation: "legacy" (+1 pixel areas) or "torchvision".
        candidates: optional (N, K) mask of the pairs taking part (others are neither kept nor suppress).
        class_chunk: classes whose (N, N) overlap matrices are computed together (memory bound).
    """
    num_boxes, num_classes = scores.shape
    if implementation == "legacy":
        boxes = _legacy_boxes(boxes)
    # The kernel compares a float32 IoU with a double threshold: compare in float64 so ties match.
    if boxes.dim() == 2:
        overlaps = (pairwise_iou(boxes).double() > iou_threshold).unsqueeze(0)  # (1, N, N)
    else:
        per_class = boxes.transpose(0, 1)  # (K, N, 4)
        overlaps = torch.cat(
            [
                pairwise_iou(per_class[start : start + class_chunk]).double() > iou_threshold
                for start in range(0, num_classes, class_chunk)
            ]
        )  # (K, N, N)

    order = torch.sort(scores.t(), dim=1, descending=True, stable=True).indices  # (K, N)
    class_index = torch.arange(num_classes, device=scores.device)
    suppressed = torch.zeros(num_classes, num_boxes, dtype=torch.bool, device=scores.device)
    if candidates is not None:
        suppressed |= ~candidates.t()
    keep = torch.zeros_like(suppressed)
    for rank in range(num_boxes):
        current = order[:, rank]  # (K,) the box each class visits now
        alive = ~suppressed[class_index, current]
        keep[class_index, current] = alive
        rows = overlaps[0, current] if overlaps.shape[0] == 1 else overlaps[class_index, current]  # (K, N)
        suppressed |= rows & alive[:, None]
    return keep.t()


def remove_small_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Indices of the boxes whose legacy widths and heights (`x2 - x1 + 1`) are at least `min_size`."""
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    return torch.nonzero((widths >= min_size) & (heights >= min_size)).squeeze(1)


def scale_boxes(boxes: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """Rescales `x1, y1, x2, y2` boxes from a `(height, width)` image to another (no +1, as the original)."""
    ratio_w = float(to_size[1]) / float(from_size[1])
    ratio_h = float(to_size[0]) / float(from_size[0])
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h], dim=-1)


def region_geometry(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """The 6 box values Oscar appends to a region feature: `[x1/W, y1/H, x2/W, y2/H, w/W, h/H]`.

    Same formula as the region-feature image processor's `box_geometry` (this file must not import it).
    """
    height, width = float(image_size[0]), float(image_size[1])
    x1, y1, x2, y2 = boxes.to(torch.float32).unbind(-1)
    return torch.stack([x1 / width, y1 / height, x2 / width, y2 / height, (x2 - x1) / width, (y2 - y1) / height], -1)


# ------------------------------------------------------------------------------------------------
# Backbone: ResNeXt C4 with frozen BatchNorm
# ------------------------------------------------------------------------------------------------


class VinVLFrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and NO epsilon (`weight * running_var.rsqrt()`), as the original."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The affine map this BN applies: `x * scale + shift`, each (C,)."""
        scale = self.weight * self.running_var.rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift()
        # Kept in the activation dtype so that bf16 autocast stays bf16 between convolutions.
        return hidden * scale.reshape(1, -1, 1, 1).to(hidden.dtype) + shift.reshape(1, -1, 1, 1).to(hidden.dtype)


def conv_frozen_bn(conv: nn.Conv2d, bn: VinVLFrozenBatchNorm2d, hidden: torch.Tensor, fold: bool) -> torch.Tensor:
    """`bn(conv(hidden))` for a bias-free convolution; with `fold`, as ONE convolution.

    Folding puts BN's scale into the convolution's weights and its shift into the bias: the same affine
    map, one pass over the activations instead of three (float rounding differs at the 1e-7 relative
    level). The folded weights are recomputed per call rather than cached, so that loading, `.to()` and
    autograd need no invalidation and peak memory holds one copy of the weights; at full size that costs
    0.03 s for the backbone and 0.012 s per res5 pass, under 1% of a forward on 2 CPU cores.
    """
    if not fold:
        return bn(conv(hidden))
    scale, shift = bn.scale_and_shift()
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    return F.conv2d(hidden, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)


class VinVLStem(nn.Module):
    """7x7 / 2 convolution, frozen BN, ReLU, 3x3 / 2 max-pool with padding 1."""

    def __init__(self, out_channels: int, fold_batchnorm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = VinVLFrozenBatchNorm2d(out_channels)
        self.fold_batchnorm = fold_batchnorm

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = F.relu_(conv_frozen_bn(self.conv1, self.bn1, pixel_values, self.fold_batchnorm))
        return F.max_pool2d(hidden, kernel_size=3, stride=2, padding=1)


class VinVLBottleneck(nn.Module):
    """ResNeXt bottleneck: 1x1 -> grouped 3x3 -> 1x1, each followed by frozen BN; identity or 1x1 shortcut."""

    def __init__(
        self,
        in_channels: int,
        bottleneck_channels: int,
        out_channels: int,
        num_groups: int,
        stride: int,
        stride_in_1x1: bool,
        fold_batchnorm: bool,
    ) -> None:
        super().__init__()
        self.fold_batchnorm = fold_batchnorm
        # A shortcut projection exists exactly when the width changes (every first block of a stage).
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                VinVLFrozenBatchNorm2d(out_channels),
            )
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1, bias=False)
        self.bn1 = VinVLFrozenBatchNorm2d(bottleneck_channels)
        self.conv2 = nn.Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=1,
            groups=num_groups,
            bias=False,
        )
        self.bn2 = VinVLFrozenBatchNorm2d(bottleneck_channels)
        self.conv3 = nn.Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False)
        self.bn3 = VinVLFrozenBatchNorm2d(out_channels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        fold = self.fold_batchnorm
        identity = hidden
        if self.downsample is not None:
            identity = conv_frozen_bn(self.downsample[0], self.downsample[1], hidden, fold)
        out = F.relu_(conv_frozen_bn(self.conv1, self.bn1, hidden, fold))
        out = F.relu_(conv_frozen_bn(self.conv2, self.bn2, out, fold))
        out = conv_frozen_bn(self.conv3, self.bn3, out, fold)
        return F.relu_(out.add_(identity))


def make_stage(
    config: VinVLDetectorConfig, stage_index: int, in_channels: int, block_count: int, first_stride: int
) -> nn.Sequential:
    """Stage `stage_index` (1 = res2 ... 4 = res5): widths double per stage from res2's."""
    factor = 2 ** (stage_index - 1)
    out_channels = config.res2_out_channels * factor
    bottleneck_channels = config.num_groups * config.width_per_group * factor
    blocks = []
    for block in range(block_count):
        blocks.append(
            VinVLBottleneck(
                in_channels,
                bottleneck_channels,
                out_channels,
                config.num_groups,
                first_stride if block == 0 else 1,
                config.stride_in_1x1,
                config.fold_batchnorm,
            )
        )
        in_channels = out_channels
    return nn.Sequential(*blocks)


class VinVLBackboneBody(nn.Module):
    """Stem + res2 (stride 1) + res3, res4 (stride 2): the C4 map, stride 16."""

    def __init__(self, config: VinVLDetectorConfig) -> None:
        super().__init__()
        self.stem = VinVLStem(config.stem_out_channels, config.fold_batchnorm)
        in_channels = config.stem_out_channels
        for index, block_count in enumerate(config.stage_block_counts, start=1):
            self.add_module(
                f"layer{index}",
                make_stage(config, index, in_channels, block_count, first_stride=1 if index == 1 else 2),
            )
            in_channels = config.res2_out_channels * 2 ** (index - 1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.stem(pixel_values)
        return self.layer3(self.layer2(self.layer1(hidden)))


class VinVLBackbone(nn.Module):
    def __init__(self, config: VinVLDetectorConfig) -> None:
        super().__init__()
        self.body = VinVLBackboneBody(config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.body(pixel_values)


# ------------------------------------------------------------------------------------------------
# Region proposal network (one level, on C4)
# ------------------------------------------------------------------------------------------------


def cell_anchors(stride: int, sizes: list[float], aspect_ratios: list[float]) -> torch.Tensor:
    """Detectron's `generate_anchors`: (len(ratios) * len(sizes), 4) anchors around a `stride`-pixel cell.

    Ratios are the outer loop: for each, the base window's widths are rounded (`round(sqrt(area / r))`,
    heights `round(w * r)`), then scaled by each `size / stride`, centred at `(stride - 1) / 2`.
    """
    rows = []
    base = float(stride)
    center = 0.5 * (base - 1)
    for ratio in aspect_ratios:
        width = float(round(math.sqrt(base * base / ratio)))
        height = float(round(width * ratio))
        for size in sizes:
            scale = size / stride
            w, h = width * scale, height * scale
            rows.append(
                [center - 0.5 * (w - 1), center - 0.5 * (h - 1), center + 0.5 * (w - 1), center + 0.5 * (h - 1)]
            )
    return torch.tensor(rows, dtype=torch.float64).float()


class VinVLCellAnchors(nn.Module):
    """Holds the cell anchors as the buffer `0` (the original's `BufferList` key `cell_anchors.0`)."""

    def __init__(self, anchors: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("0", anchors)

    def forward(self) -> torch.Tensor:
        return self._buffers["0"]


class VinVLAnchorGenerator(nn.Module):
    def __init__(self, config: VinVLDetectorConfig) -> None:
        super().__init__()
        self.stride = config.anchor_stride
        self.cell_anchors = VinVLCellAnchors(
            cell_anchors(config.anchor_stride, config.anchor_sizes, config.anchor_aspect_ratios)
        )

    def forward(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """(grid_height * grid_width * A, 4) anchors, index order (y, x, anchor)."""
        base = self.cell_anchors()
        shifts_x = torch.arange(0, grid_width * self.stride, step=self.stride, dtype=torch.float32, device=base.device)
        shifts_y = torch.arange(
            0, grid_height * self.stride, step=self.stride, dtype=torch.float32, device=base.device
        )
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)


class VinVLRPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 convs to A objectness logits and 4A box deltas per cell."""

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.cls_logits = nn.Conv2d(channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, kernel_size=1)

    def forward(self, c4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.relu(self.conv(c4))
        return self.cls_logits(hidden), self.bbox_pred(hidden)


class VinVLRPN(nn.Module):
    def __init__(self, config: VinVLDetectorConfig) -> None:
        super().__init__()
        self.config = config
        self.anchor_generator = VinVLAnchorGenerator(config)
        num_anchors = len(config.anchor_sizes) * len(config.anchor_aspect_ratios)
        self.head = VinVLRPNHead(config.backbone_out_channels, num_anchors)

    def forward(self, c4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """C4 (B, C, h, w) -> objectness logits (B, A, h, w), deltas (B, 4A, h, w), anchors (h * w * A, 4)."""
        objectness, deltas = self.head(c4)
        anchors = self.anchor_generator(c4.shape[-2], c4.shape[-1])
        return objectness.float(), deltas.float(), anchors

    def select_proposals(
        self,
        objectness: torch.Tensor,
        deltas: torch.Tensor,
        anchors: torch.Tensor,
        image_sizes: list[tuple[int, int]],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Top anchors by objectness -> decoded, clipped, NMS'ed proposals; one `(boxes, objectness)` per image.

        `image_sizes` are the unpadded `(height, width)` of each image: proposals are clipped to them even
        when the batch is padded.
        """
        config = self.config
        batch, num_anchors, height, width = objectness.shape
        # (B, A, h, w) -> (B, h * w * A), the anchors' (y, x, anchor) order.
        objectness = objectness.permute(0, 2, 3, 1).reshape(batch, -1).sigmoid()
        deltas = deltas.view(batch, num_anchors, 4, height, width).permute(0, 3, 4, 1, 2).reshape(batch, -1, 4)

        top_n = min(config.rpn_pre_nms_top_n, objectness.shape[1])
        objectness, top_index = objectness.topk(top_n, dim=1, sorted=True)
        batch_index = torch.arange(batch, device=objectness.device)[:, None]
        deltas = deltas[batch_index, top_index]
        top_anchors = anchors[top_index]  # (B, top_n, 4)
        proposals = decode_boxes(
            deltas.reshape(-1, 4), top_anchors.reshape(-1, 4), (1.0, 1.0, 1.0, 1.0), math.log(1000.0 / 16)
        )
        proposals = proposals.view(batch, -1, 4)

        results = []
        for boxes, scores, (image_height, image_width) in zip(proposals, objectness, image_sizes):
            boxes = clip_boxes(boxes, image_height, image_width)
            keep = remove_small_boxes(boxes, config.rpn_min_size)
            boxes, scores = boxes[keep], scores[keep]
            keep = nms(boxes, scores, config.rpn_nms_threshold, config.nms_implementation)[: config.rpn_post_nms_top_n]
            results.append((boxes[keep], scores[keep]))
        return results


# ------------------------------------------------------------------------------------------------
# Box head: RoIAlign + res5 + predictor
# ------------------------------------------------------------------------------------------------


class VinVLResHead(nn.Module):
    """res5: `head_block_count` bottlenecks, first stride 2 (14x14 RoIs -> 7x7)."""

    def __init__(self, config: VinVLDetectorConfig) -> None:
        super().__init__()
        self.layer4 = make_stage(config, 4, config.backbone_out_channels, config.head_block_count, first_stride=2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layer4(hidden)


class VinVLBoxFeatureExtractor(nn.Module):
    """Legacy RoIAlign on C4, then the res5 head. Shared by the box and the attribute heads."""

    def __init__(self, config: VinVLDetectorConfig) -> None:
        super().__init__()
        self.config = config
        self.head = VinVLResHead(config)

    def pool(self, c4: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """(B, C, h, w) map + per-image (n_i, 4) boxes in (padded) input pixels -> (sum n_i, C, R, R)."""
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0)
        resolution = self.config.pooler_resolution
        return roi_align(
            c4.float(),
            rois.float(),
            output_size=(resolution, resolution),
            spatial_scale=self.config.pooler_scale,
            sampling_ratio=self.config.pooler_sampling_ratio,
            aligned=False,
        )

    def forward(self, c4: torch.Tensor, boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the RoIAlign output (N, C, 14, 14) and the res5 output (N, 2C, 7, 7)."""
        pooled = self.pool(c4, boxes)
        if self.config.channels_last:
            pooled = pooled.contiguous(memory_format=torch.channels_last)
        chunk = self.config.roi_head_chunk_size
        if not chunk or len(pooled) <= chunk:
            return pooled, self.head(pooled)
        # A few RoIs per pass keep res5's activations small and in cache: at full size, 300 RoIs at once
        # raised the peak RSS by about 1 GB.
        return pooled, torch.cat([self.head(part) for part in pooled.split(chunk)])


class VinVLBoxPredictor(nn.Module):
    """Average pool, then class logits and class-specific box deltas."""

    def __init__(self, config: VinVLDetectorConfig) -> None:
        super().__init__()
        feature_dim = config.res2_out_channels * 8
        self.cls_score = nn.Linear(feature_dim, config.num_classes)
        self.bbox_pred = nn.Linear(feature_dim, config.num_classes * 4)

    def forward(self, pooled_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(pooled_features), self.bbox_pred(pooled_features)


class VinVLBoxHead(nn.Module):
    def __init__(self, config: VinVLDetectorConfig) -> None:
        super().__init__()
        self.feature_extractor = VinVLBoxFeatureExtractor(config)
        self.predictor = VinVLBoxPredictor(config)


class VinVLROIHeads(nn.Module):
    def __init__(self, config: VinVLDetectorConfig) -> None:
        super().__init__()
        self.box = VinVLBoxHead(config)


# ------------------------------------------------------------------------------------------------
# Attribute head
# ------------------------------------------------------------------------------------------------


class VinVLAttributePredictor(nn.Module):
    """Pooled region feature + class embedding -> ReLU(fc_attr) -> attribute logits."""

    def __init__(self, config: VinVLDetectorConfig) -> None:
        super().__init__()
        feature_dim = config.res2_out_channels * 8
        self.cls_embedding = nn.Embedding(config.num_classes, config.class_embedding_dim)
        self.fc_attr = nn.Linear(feature_dim + config.class_embedding_dim, config.attribute_embedding_dim)
        self.attr_score = nn.Linear(config.attribute_embedding_dim, config.num_attributes)

    def forward(self, pooled_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden = torch.cat([pooled_features, self.cls_embedding(labels).to(pooled_features.dtype)], dim=1)
        return self.attr_score(F.relu(self.fc_attr(hidden)))


class VinVLAttributeHead(nn.Module):
    """The attribute predictor. Its feature extractor IS the box head's (the original's duplicated
    `attribute.feature_extractor.*` keys are the same tensors), so it is not a submodule here."""

    def __init__(self, config: VinVLDetectorConfig) -> None:
        super().__init__()
        self.predictor = VinVLAttributePredictor(config)


# ------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------


@dataclass
class VinVLDetectorOutput(ModelOutput):
    """Detections of [`VinVLDetector`], one list entry per image (counts differ between images).

    Boxes are `x1, y1, x2, y2` in ORIGINAL-image pixels (the sizes given as `original_sizes`).

    Args:
        boxes: (n_i, 4) float32 boxes.
        scores: (n_i,) class probability of each box.
        labels: (n_i,) int64 class ids (0 = background never appears).
        class_names: n_i class names (`config.id2label`); the Oscar object tags.
        attribute_labels: (n_i, k) int64 top attribute ids per box (k = `max_attributes_per_box`).
        attribute_scores: (n_i, k) their probabilities, 0 where filtered out.
        attribute_names: per box, the names of its attributes with a non-zero score.
        region_features: (n_i, D) pooled res5 feature of the proposal each box came from (D = 2048).
        image_sizes: `(height, width)` of each original image.
        resized_boxes: (n_i, 4) the boxes in the resized input's pixels (what the network saw).
        scores_all: (n_i, num_classes) softmax over all classes (filters 0 and 1, given boxes).
        attribute_logits: (n_i, num_attributes) attribute logits.
        stages: with `output_stages=True`, per image a dict of intermediate tensors: `backbone_c4`,
            `rpn_objectness`, `rpn_box_regression`, `anchors`, `proposals`, `proposal_objectness`,
            `roi_align`, `res5`, `proposal_pooled_features`, `class_logits`, `box_regression`, `boxes_all`.
    """

    boxes: list[torch.Tensor] | None = None
    scores: list[torch.Tensor] | None = None
    labels: list[torch.Tensor] | None = None
    class_names: list[list[str]] | None = None
    attribute_labels: list[torch.Tensor] | None = None
    attribute_scores: list[torch.Tensor] | None = None
    attribute_names: list[list[list[str]]] | None = None
    region_features: list[torch.Tensor] | None = None
    image_sizes: list[tuple[int, int]] | None = None
    resized_boxes: list[torch.Tensor] | None = None
    scores_all: list[torch.Tensor | None] | None = None
    attribute_logits: list[torch.Tensor] | None = None
    stages: list[dict[str, torch.Tensor]] | None = None

    def oscar_regions(self, index: int = 0) -> dict[str, Any]:
        """Image `index` as Oscar+ inputs: 2054-d region vectors and object tags.

        Returns a dict with `region_features` (n, D + 6) float32 = pooled feature followed by
        `[x1/W, y1/H, x2/W, y2/H, w/W, h/H]` of the box in original pixels, `tags` (class names),
        `boxes`, `scores`, `features` (n, D) and `image_size` `(H, W)`, the region dict the
        Oscar processor and the dataset builders read.
        """
        if self.boxes is None or not 0 <= index < len(self.boxes):
            count = 0 if self.boxes is None else len(self.boxes)
            raise ValueError(f"index = {index}; this output holds {count} images, pass 0..{count - 1}.")
        boxes, features, size = self.boxes[index], self.region_features[index].float(), self.image_sizes[index]
        return {
            "region_features": torch.cat([features, region_geometry(boxes, size)], dim=-1),
            "features": features,
            "boxes": boxes,
            "scores": self.scores[index],
            "label_ids": self.labels[index],
            "tags": list(self.class_names[index]),
            "image_size": tuple(size),
        }


# ------------------------------------------------------------------------------------------------
# The detector
# ------------------------------------------------------------------------------------------------


class VinVLPreTrainedModel(PreTrainedModel):
    config_class = VinVLDetectorConfig
    base_model_prefix = "vinvl"
    main_input_name = "pixel_values"
    _no_split_modules = ["VinVLBottleneck"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Random weights for tests and benchmarks (the detector is only ever used with converted weights)."""
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.01)
        elif isinstance(module, VinVLFrozenBatchNorm2d):
            module.weight.fill_(1.0)
            module.bias.zero_()
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
        elif isinstance(module, VinVLCellAnchors):
            config = self.config
            module._buffers["0"].copy_(
                cell_anchors(config.anchor_stride, config.anchor_sizes, config.anchor_aspect_ratios)
            )


class VinVLDetector(VinVLPreTrainedModel):
    r"""The VinVL ResNeXt C4 object-attribute Faster R-CNN (inference only).

    Submodule names mirror the original state dict (`backbone.body.*`, `rpn.*`, `roi_heads.box.*`,
    `attribute.predictor.*`), so converting `vinvl_vg_x152c4.pth` is a key-for-key copy.

    Example:
        >>> from transformers import AutoImageProcessor, AutoModel  # doctest: +SKIP
        >>> detector = AutoModel.from_pretrained("vinvl-detector", trust_remote_code=True)  # doctest: +SKIP
        >>> processor = AutoImageProcessor.from_pretrained("vinvl-detector", trust_remote_code=True)  # doctest: +SKIP
        >>> out = detector(**processor("photo.jpg"))  # doctest: +SKIP
        >>> out.oscar_regions(0)["region_features"].shape  # doctest: +SKIP
        torch.Size([n, 2054])
    """

    def __init__(self, config: VinVLDetectorConfig) -> None:
        super().__init__(config)
        self.backbone = VinVLBackbone(config)
        self.rpn = VinVLRPN(config)
        self.roi_heads = VinVLROIHeads(config)
        self.attribute = VinVLAttributeHead(config)
        self.post_init()

    # --- stages -----------------------------------------------------------------------------------

    def extract_c4(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised BGR images -> (B, C, ceil(H/16), ceil(W/16)) C4 map."""
        if self.config.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return self.backbone(pixel_values)

    def pool_regions(self, c4: torch.Tensor, boxes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """RoIAlign + res5 + average pool for per-image boxes (input pixels). Keys `roi_align`, `res5`, `pooled`."""
        pooled_rois, res5 = self.roi_heads.box.feature_extractor(c4, boxes)
        pooled = F.adaptive_avg_pool2d(res5, 1).flatten(1).float()
        return {"roi_align": pooled_rois, "res5": res5, "pooled": pooled}

    def classify_regions(
        self, pooled: torch.Tensor, with_regression: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, D) pooled features -> class logits (N, K) and box deltas (N, 4K) (None when not needed)."""
        predictor = self.roi_heads.box.predictor
        class_logits = predictor.cls_score(pooled.to(predictor.cls_score.weight.dtype)).float()
        box_regression = None
        if with_regression:
            box_regression = predictor.bbox_pred(pooled.to(predictor.bbox_pred.weight.dtype)).float()
        return class_logits, box_regression

    def select_detections(
        self,
        proposals: torch.Tensor,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor | None,
        image_size: tuple[int, int],
        given_boxes: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Box-head post-processing of one image (resized-image pixels).

        Returns `boxes`, `scores`, `labels`, `proposal_index` (which proposal each detection came from, for
        its pooled feature) and, where the original reports them, `scores_all` and `boxes_all`.
        """
        config = self.config
        height, width = image_size
        probs = F.softmax(class_logits, -1)
        num_classes = probs.shape[1]
        use_proposals = config.ignore_box_regression or given_boxes or box_regression is None
        if use_proposals:
            boxes = proposals
        else:
            boxes = decode_boxes(
                box_regression, proposals, tuple(config.box_regression_weights), config.box_regression_clip
            )

        if given_boxes:
            boxes = clip_boxes(boxes, height, width)
            scores, labels = probs[:, 1:].max(1)
            return {
                "boxes": boxes,
                "scores": scores,
                "labels": labels + 1,
                "proposal_index": torch.arange(len(boxes), device=boxes.device),
                "scores_all": probs,
                "boxes_all": boxes.view(-1, 1, 4),
            }
        if config.nms_filter == 2:
            return self._filter_fast(boxes, probs, use_proposals, height, width)
        # Filters 0 and 1 work on one box per proposal and class.
        boxes = boxes.repeat(1, num_classes) if use_proposals else boxes
        boxes = clip_boxes(boxes.view(-1, num_classes, 4), height, width)  # (N, K, 4)
        if config.nms_filter == 1:
            return self._filter_bottom_up(boxes, probs, shared_boxes=use_proposals)
        return self._filter_per_class(boxes, probs, shared_boxes=use_proposals)

    def _class_nms_mask(
        self, boxes: torch.Tensor, probs: torch.Tensor, threshold: float, shared_boxes: bool, candidates=None
    ) -> torch.Tensor:
        """(N, K) mask of the (proposal, class) pairs a per-class NMS keeps; column 0 (background) is never kept."""
        mask = torch.zeros_like(probs, dtype=torch.bool)
        class_boxes = boxes[:, 0] if shared_boxes else boxes[:, 1:]
        mask[:, 1:] = class_wise_nms(
            class_boxes,
            probs[:, 1:],
            threshold,
            self.config.nms_implementation,
            candidates=None if candidates is None else candidates[:, 1:],
        )
        return mask

    def _filter_bottom_up(
        self, boxes: torch.Tensor, probs: torch.Tensor, shared_boxes: bool
    ) -> dict[str, torch.Tensor]:
        """`nms_filter` 1 (bottom-up attention's recipe): per-class NMS at a fixed IoU over every proposal, then
        the best surviving class of each proposal; keep >= threshold, at least min and at most max, by score."""
        config = self.config
        keep_mask = self._class_nms_mask(boxes, probs, config.class_nms_threshold, shared_boxes)
        best_scores, best_labels = (keep_mask.to(probs.dtype) * probs).max(1)
        candidates = best_scores.nonzero().squeeze(1)
        best_scores, best_labels = best_scores[candidates], best_labels[candidates]

        order = torch.sort(best_scores, dim=0, descending=True).indices
        num_passing = int((best_scores >= config.score_threshold).sum())
        count = min(max(num_passing, config.min_detections_per_image), config.max_detections_per_image)
        kept = order[:count]
        proposal_index = candidates[kept]
        labels = best_labels[kept]
        return {
            "boxes": boxes[proposal_index, labels],
            "scores": best_scores[kept],
            "labels": labels,
            "proposal_index": proposal_index,
            "scores_all": probs[proposal_index],
            "boxes_all": boxes[proposal_index],
        }

    def _filter_fast(
        self, boxes: torch.Tensor, probs: torch.Tensor, use_proposals: bool, height: int, width: int
    ) -> dict[str, torch.Tensor]:
        """`nms_filter` 2: best non-background class per proposal, one class-agnostic NMS, top by score."""
        config = self.config
        num_classes = probs.shape[1]
        scores, labels = probs[:, 1:].max(1)
        labels = labels + 1
        # The original clips the (N * K, 4) table but suppresses with the mean class box of each proposal ...
        table = clip_boxes(boxes.reshape(-1, 4), height, width)
        nms_boxes = table if use_proposals else table.reshape(-1, num_classes, 4).mean(1)
        widths, heights = nms_boxes[:, 2] - nms_boxes[:, 0], nms_boxes[:, 3] - nms_boxes[:, 1]
        candidates = ((widths >= 0) & (heights >= 0) & (scores > config.score_threshold * 0.01)).nonzero().squeeze(1)
        survivors = candidates[
            nms(nms_boxes[candidates], scores[candidates], config.nms_threshold, config.nms_implementation)
        ]
        order = survivors[torch.sort(scores[survivors], dim=0, descending=True).indices]
        num_passing = int((scores[survivors] >= config.score_threshold).sum())
        count = min(max(num_passing, config.min_detections_per_image), config.max_detections_per_image)
        kept = order[:count]
        # ... and then indexes that table with proposal indices: with box regression, detection i gets row
        # kept[i] of the flattened table (proposal kept[i] // K, class kept[i] % K), not its own box. Reproduced.
        return {"boxes": table[kept], "scores": scores[kept], "labels": labels[kept], "proposal_index": kept}

    def _filter_per_class(
        self, boxes: torch.Tensor, probs: torch.Tensor, shared_boxes: bool
    ) -> dict[str, torch.Tensor]:
        """`nms_filter` 0: per class, boxes above the threshold, NMS, concatenated by class; capped at max by a
        score threshold; while fewer than min survive, the threshold is halved (at most 10 times)."""
        result = {}
        for attempt in range(11):
            result = self._filter_per_class_at(boxes, probs, shared_boxes, self.config.score_threshold / 2**attempt)
            if len(result["labels"]) >= self.config.min_detections_per_image:
                break
        return result

    def _filter_per_class_at(
        self, boxes: torch.Tensor, probs: torch.Tensor, shared_boxes: bool, threshold: float
    ) -> dict[str, torch.Tensor]:
        config = self.config
        candidates = probs > threshold
        candidates[:, 0] = False
        keep_mask = self._class_nms_mask(boxes, probs, config.nms_threshold, shared_boxes, candidates=candidates)
        # Concatenated class by class; inside a class, legacy NMS keeps index order, torchvision score order.
        class_index, proposal_index = keep_mask.t().nonzero(as_tuple=True)
        scores = probs[proposal_index, class_index]
        if config.nms_implementation == "torchvision":
            regroup = torch.argsort(class_index * 2.0 - scores.double(), stable=True)
            class_index, proposal_index, scores = class_index[regroup], proposal_index[regroup], scores[regroup]
        count = len(scores)
        if count > config.max_detections_per_image > 0:
            cutoff = torch.kthvalue(scores.cpu(), count - config.max_detections_per_image + 1).values.item()
            keep = torch.nonzero(scores >= cutoff).squeeze(1)
            class_index, proposal_index, scores = class_index[keep], proposal_index[keep], scores[keep]
        return {
            "boxes": boxes[proposal_index, class_index],
            "scores": scores,
            "labels": class_index,
            "proposal_index": proposal_index,
            "scores_all": probs[proposal_index],
            "boxes_all": boxes[proposal_index],
        }

    def predict_attributes(
        self, pooled_features: torch.Tensor, labels: torch.Tensor, boxes_per_image: list[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Attribute logits (N, A) and per-image top `max_attributes_per_box` labels and scores.

        Softmax, "no attribute" (column 0) zeroed, probabilities at or below `attribute_threshold` zeroed, the
        original's per-image cap (a k-th value over all entries, zeros included), then top-k per box.
        """
        config = self.config
        predictor = self.attribute.predictor
        logits = predictor(pooled_features.to(predictor.fc_attr.weight.dtype), labels).float()
        probs = F.softmax(logits, -1)
        attribute_labels, attribute_scores = [], []
        for image_probs in probs.split(boxes_per_image, dim=0):
            image_probs = image_probs.clone()
            image_probs[:, 0] = 0.0
            passing = image_probs > config.attribute_threshold
            count = int(passing.sum())
            image_probs[~passing] = 0.0
            if count > config.max_attributes_per_image > 0:
                cutoff = torch.kthvalue(
                    image_probs.flatten().cpu(), count - config.max_attributes_per_image + 1
                ).values
                image_probs[image_probs < cutoff.item()] = 0.0
            top_scores, top_labels = torch.topk(image_probs, config.max_attributes_per_box, dim=1)
            attribute_labels.append(top_labels)
            attribute_scores.append(top_scores)
        return logits, attribute_labels, attribute_scores

    # --- forward ----------------------------------------------------------------------------------

    @torch.no_grad()
    def forward(
        self,
        pixel_values: torch.Tensor | list[torch.Tensor],
        image_sizes: torch.Tensor | list[tuple[int, int]] | None = None,
        original_sizes: torch.Tensor | list[tuple[int, int]] | None = None,
        boxes: list[torch.Tensor] | None = None,
        output_stages: bool = False,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> VinVLDetectorOutput:
        r"""Detects objects and attributes.

        Args:
            pixel_values: (B, 3, H, W) normalised BGR images (a padded batch), or a list of (3, h_i, w_i)
                images that are then run one per forward (what the released features used).
            image_sizes: (B, 2) `(height, width)` of each image inside the batch before padding (default: the
                tensor's size).
            original_sizes: (B, 2) `(height, width)` of the images before resizing; outputs are mapped back to
                them (default: `image_sizes`).
            boxes: per image (n_i, 4) boxes in ORIGINAL pixels to describe instead of detecting (features,
                scores, labels, attributes for boxes you already have). Boxes spilling off the image are
                pooled as given and reported clipped, as the original does.
            output_stages: also return the intermediate tensors in `stages`.

        Returns:
            [`VinVLDetectorOutput`].
        """
        if kwargs:
            raise TypeError(
                f"unexpected arguments {sorted(kwargs)}; VinVLDetector.forward takes pixel_values, "
                "image_sizes, original_sizes, boxes and output_stages."
            )
        if isinstance(pixel_values, (list, tuple)):
            return self._forward_one_by_one(pixel_values, image_sizes, original_sizes, boxes, output_stages)
        if not torch.is_tensor(pixel_values) or pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
            raise ValueError(
                f"pixel_values has shape {shape}; expected (batch, 3, height, width) normalised BGR images from "
                "VinVLImageProcessor (or a list of (3, height, width) images)."
            )
        batch = pixel_values.shape[0]
        image_sizes = self._sizes(image_sizes, batch, tuple(pixel_values.shape[-2:]), "image_sizes")
        original_sizes = (
            self._sizes(original_sizes, batch, None, "original_sizes") if original_sizes is not None else image_sizes
        )
        if boxes is not None:
            boxes = self._given_boxes(boxes, batch, image_sizes, original_sizes, pixel_values.device)

        c4 = self.extract_c4(pixel_values)
        stages: list[dict[str, torch.Tensor]] = [{} for _ in range(batch)]
        if boxes is None:
            objectness, deltas, anchors = self.rpn(c4)
            proposals_and_scores = self.rpn.select_proposals(objectness, deltas, anchors, image_sizes)
            proposals = [p for p, _ in proposals_and_scores]
            if output_stages:
                for i, (p, s) in enumerate(proposals_and_scores):
                    stages[i].update(
                        rpn_objectness=objectness[i : i + 1],
                        rpn_box_regression=deltas[i : i + 1],
                        anchors=anchors,
                        proposals=p,
                        proposal_objectness=s,
                    )
        else:
            proposals = boxes

        regions = self.pool_regions(c4, proposals)
        with_regression = not (self.config.ignore_box_regression or boxes is not None)
        class_logits, box_regression = self.classify_regions(regions["pooled"], with_regression)

        detections = []
        counts = [len(p) for p in proposals]
        offsets = [0]
        for n in counts:
            offsets.append(offsets[-1] + n)
        for i in range(batch):
            start, end = offsets[i], offsets[i + 1]
            detection = self.select_detections(
                proposals[i],
                class_logits[start:end],
                None if box_regression is None else box_regression[start:end],
                image_sizes[i],
                given_boxes=boxes is not None,
            )
            detection["global_index"] = detection["proposal_index"] + start
            detections.append(detection)
            if output_stages:
                stages[i].update(
                    backbone_c4=c4[i : i + 1].float(),
                    roi_align=regions["roi_align"][start:end],
                    res5=regions["res5"][start:end].float(),
                    proposal_pooled_features=regions["pooled"][start:end],
                    class_logits=class_logits[start:end],
                )
                if box_regression is not None:
                    stages[i]["box_regression"] = box_regression[start:end]
                if "boxes_all" in detection:
                    stages[i]["boxes_all"] = detection["boxes_all"]

        region_features = [regions["pooled"][d["global_index"]] for d in detections]
        attribute_inputs = self._attribute_features(c4, proposals, detections, region_features)
        labels = torch.cat([d["labels"] for d in detections])
        attribute_logits, attribute_labels, attribute_scores = self.predict_attributes(
            attribute_inputs, labels, [len(d["labels"]) for d in detections]
        )
        attribute_logits = list(attribute_logits.split([len(d["labels"]) for d in detections]))
        return self._build_output(
            detections, region_features, attribute_logits, attribute_labels, attribute_scores,
            image_sizes, original_sizes, stages if output_stages else None,
        )  # fmt: skip

    def _attribute_features(
        self,
        c4: torch.Tensor,
        proposals: list[torch.Tensor],
        detections: list[dict[str, torch.Tensor]],
        region_features: list[torch.Tensor],
    ) -> torch.Tensor:
        """Pooled res5 features of the kept boxes, for the attribute head.

        The original runs RoIAlign + res5 again on the kept boxes. When every kept box IS the proposal it was
        pooled from (the extraction recipe), that output is already computed: reuse it.
        """
        if self.config.reuse_proposal_features and all(
            torch.equal(d["boxes"], p[d["proposal_index"]]) for d, p in zip(detections, proposals)
        ):
            return torch.cat(region_features)
        return self.pool_regions(c4, [d["boxes"] for d in detections])["pooled"]

    def _build_output(
        self,
        detections: list[dict[str, torch.Tensor]],
        region_features: list[torch.Tensor],
        attribute_logits: list[torch.Tensor],
        attribute_labels: list[torch.Tensor],
        attribute_scores: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        original_sizes: list[tuple[int, int]],
        stages: list[dict[str, torch.Tensor]] | None,
    ) -> VinVLDetectorOutput:
        class_names = self.config.class_names
        attribute_vocabulary = self.config.attribute_names
        boxes = [
            scale_boxes(d["boxes"], size, original)
            for d, size, original in zip(detections, image_sizes, original_sizes)
        ]
        names = [[class_names[i] for i in d["labels"].tolist()] for d in detections]
        attribute_names = [
            [
                [attribute_vocabulary[a] for a, s in zip(row_labels, row_scores) if s > 0]
                for row_labels, row_scores in zip(labels.tolist(), scores.tolist())
            ]
            for labels, scores in zip(attribute_labels, attribute_scores)
        ]
        return VinVLDetectorOutput(
            boxes=boxes,
            scores=[d["scores"] for d in detections],
            labels=[d["labels"] for d in detections],
            class_names=names,
            attribute_labels=attribute_labels,
            attribute_scores=attribute_scores,
            attribute_names=attribute_names,
            region_features=region_features,
            image_sizes=[tuple(s) for s in original_sizes],
            resized_boxes=[d["boxes"] for d in detections],
            scores_all=[d.get("scores_all") for d in detections],
            attribute_logits=attribute_logits,
            stages=stages,
        )

    def _forward_one_by_one(
        self, pixel_values, image_sizes, original_sizes, boxes, output_stages
    ) -> VinVLDetectorOutput:
        if boxes is not None and (not isinstance(boxes, (list, tuple)) or len(boxes) != len(pixel_values)):
            count = len(boxes) if isinstance(boxes, (list, tuple)) else type(boxes).__name__
            raise ValueError(
                f"boxes has {count} entries; expected a list of {len(pixel_values)} (n_i, 4) tensors, one per image, "
                "in original-image pixels."
            )
        outputs = []
        for i, image in enumerate(pixel_values):
            if not torch.is_tensor(image) or image.dim() != 3:
                raise ValueError(
                    f"pixel_values[{i}] is {type(image).__name__} of shape "
                    f"{tuple(getattr(image, 'shape', ()))}; expected a (3, height, width) tensor."
                )
            outputs.append(
                self.forward(
                    image[None],
                    None if image_sizes is None else [tuple(int(v) for v in image_sizes[i])],
                    None if original_sizes is None else [tuple(int(v) for v in original_sizes[i])],
                    None if boxes is None else [boxes[i]],
                    output_stages,
                )
            )
        merged = {}
        for field in VinVLDetectorOutput.__dataclass_fields__:
            values = [getattr(o, field) for o in outputs]
            merged[field] = None if any(v is None for v in values) else [item for v in values for item in v]
        return VinVLDetectorOutput(**merged)

    @staticmethod
    def _sizes(sizes, batch: int, default: tuple[int, int] | None, name: str) -> list[tuple[int, int]]:
        if sizes is None:
            return [tuple(int(v) for v in default)] * batch
        rows = [tuple(int(v) for v in row) for row in (sizes.tolist() if torch.is_tensor(sizes) else sizes)]
        if len(rows) != batch or any(len(r) != 2 or min(r) <= 0 for r in rows):
            raise ValueError(f"{name} = {rows}; expected {batch} positive (height, width) pairs, one per image.")
        return rows

    @staticmethod
    def _given_boxes(boxes, batch: int, image_sizes, original_sizes, device) -> list[torch.Tensor]:
        """User boxes in original pixels -> float32 boxes in resized-input pixels, validated."""
        if not isinstance(boxes, (list, tuple)) or len(boxes) != batch:
            raise ValueError(
                f"boxes has {len(boxes) if isinstance(boxes, (list, tuple)) else type(boxes).__name__} entries; "
                f"expected a list of {batch} (n_i, 4) tensors, one per image, in original-image pixels."
            )
        converted = []
        for i, (image_boxes, size, original) in enumerate(zip(boxes, image_sizes, original_sizes)):
            image_boxes = torch.as_tensor(image_boxes, dtype=torch.float32, device=device)
            if image_boxes.dim() != 2 or image_boxes.shape[1] != 4 or len(image_boxes) == 0:
                raise ValueError(
                    f"boxes[{i}] has shape {tuple(image_boxes.shape)}; expected (n, 4) with n >= 1, "
                    "x1, y1, x2, y2 in original-image pixels."
                )
            if not torch.isfinite(image_boxes).all():
                raise ValueError(f"boxes[{i}] contains NaN or inf; drop those boxes first.")
            bad = ((image_boxes[:, 2] < image_boxes[:, 0]) | (image_boxes[:, 3] < image_boxes[:, 1])).nonzero()
            if len(bad):
                row = int(bad[0])
                raise ValueError(
                    f"boxes[{i}][{row}] = {image_boxes[row].tolist()} has x2 < x1 or y2 < y1; boxes are "
                    "x1, y1, x2, y2 (convert xywh boxes first)."
                )
            height, width = original
            outside = (
                (image_boxes[:, 2] < 0)
                | (image_boxes[:, 3] < 0)
                | (image_boxes[:, 0] >= width)
                | (image_boxes[:, 1] >= height)
            ).nonzero()
            if len(outside):
                row = int(outside[0])
                raise ValueError(
                    f"boxes[{i}][{row}] = {image_boxes[row].tolist()} lies entirely outside the image of "
                    f"(height, width) = {tuple(original)}; boxes are in original-image pixels."
                )
            converted.append(scale_boxes(image_boxes, original, size))
        return converted


# ------------------------------------------------------------------------------------------------
# Auto classes
# ------------------------------------------------------------------------------------------------


def register_vinvl_auto_classes() -> None:
    """Registers the detector with AutoConfig / AutoModel / AutoImageProcessor (harmless to call twice)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    from .image_processing_vinvl import VinVLImageProcessor

    AutoConfig.register(VinVLDetectorConfig.model_type, VinVLDetectorConfig, exist_ok=True)
    AutoModel.register(VinVLDetectorConfig, VinVLDetector, exist_ok=True)
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        # One PIL-based processor for both image backends: transformers 5 otherwise warns on every load that
        # the (requested) torchvision backend has no class.
        backends = {"pil": VinVLImageProcessor, "torchvision": VinVLImageProcessor}
        AutoImageProcessor.register(VinVLDetectorConfig, image_processor_classes=backends, exist_ok=True)
    else:
        AutoImageProcessor.register(VinVLDetectorConfig, slow_image_processor_class=VinVLImageProcessor, exist_ok=True)


__all__ = [
    "VinVLDetector",
    "VinVLDetectorOutput",
    "VinVLPreTrainedModel",
    "register_vinvl_auto_classes",
]
