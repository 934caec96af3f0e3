"""Configuration of the VinVL object-attribute detector.

VinVL (Zhang et al., CVPR 2021) trained its Oscar+ checkpoints on the region features and tags of
one detector: a ResNeXt-152 32x8d C4 Faster R-CNN with an attribute head (microsoft/scene_graph_benchmark,
`sgg_configs/vgattr/vinvl_x152c4.yaml`). Every setting of that config stack that changes inference is a
field here, with the value VinVL used, so the reduced test model and the released one are the same class.

The post-processing defaults are the README's feature-extraction command (`NMS_FILTER 1`,
`TEST.IGNORE_BOX_REGRESSION True`, score threshold 0.2, 10 to 100 boxes): the recipe whose boxes are the
RPN proposals and whose features Oscar+ reads.

This file is flat remote code: it imports installed libraries only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from transformers import PretrainedConfig


NMS_IMPLEMENTATIONS = ("legacy", "torchvision")
NMS_FILTERS = (0, 1, 2)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} = {value!r}; expected a positive integer.")
    return value


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} = {value!r}; expected an integer >= 0.")
    return value


def _probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} = {value!r}; expected a number in [0, 1].")
    return float(value)


class VinVLDetectorConfig(PretrainedConfig):
    r"""Configuration of [`VinVLDetector`]; the defaults are the released `vinvl_vg_x152c4.pth`.

    The names in brackets are the original yacs keys.

    Args:
        stage_block_counts: bottleneck blocks of res2, res3, res4 (`R-152-C4`: 3, 8, 36).
        head_block_count: bottleneck blocks of the res5 box head (3).
        num_groups: groups of the 3x3 convolutions [`RESNETS.NUM_GROUPS`] (32).
        width_per_group: channels per group in res2 [`RESNETS.WIDTH_PER_GROUP`] (8); each stage doubles it.
        stem_out_channels: channels of the 7x7 stem [`RESNETS.STEM_OUT_CHANNELS`] (64).
        res2_out_channels: output channels of res2 [`RESNETS.RES2_OUT_CHANNELS`] (256); each stage doubles it.
        backbone_out_channels: channels of the C4 map the RPN and the box head read (1024). It must equal
            `res2_out_channels * 4` (the original inserts a `trans_conv` otherwise, which VinVL has not).
        stride_in_1x1: put a block's stride on its 1x1 convolution instead of the 3x3 (False for VinVL).
        num_classes: object classes including background at index 0 (1595).
        num_attributes: attributes including "no attribute" at index 0 (525).
        class_embedding_dim: class embedding the attribute head concatenates [`CLS_EMD_DIM`] (256).
        attribute_embedding_dim: hidden width of the attribute head [`ATTR_EMD_DIM`] (512).
        anchor_sizes, anchor_aspect_ratios, anchor_stride: RPN anchors (32..512, 0.5/1/2, stride 16).
        rpn_pre_nms_top_n, rpn_post_nms_top_n: proposals kept before / after the RPN NMS (6000 / 300).
        rpn_nms_threshold: IoU of the RPN NMS (0.7).
        rpn_min_size: proposals narrower or lower than this (legacy +1 widths) are dropped (0).
        pooler_resolution, pooler_scale, pooler_sampling_ratio: RoIAlign on C4 (14, 1/16, 0 = adaptive).
        box_regression_weights: weights of the box-head box coder (10, 10, 5, 5).
        box_regression_clip: clamp of the decoded log-width/height deltas (log(1000 / 16)).
        nms_filter: post-processing of the box head [`ROI_HEADS.NMS_FILTER`]: 0 per-class NMS at
            `nms_threshold` above `score_threshold`; 1 (bottom-up attention, the extraction recipe) per-class
            NMS at `class_nms_threshold` over every proposal, best surviving class per proposal; 2 one
            class-agnostic NMS at `nms_threshold` on the best class per proposal.
        nms_threshold: IoU of filters 0 and 2 [`ROI_HEADS.NMS`] (0.5).
        class_nms_threshold: the fixed IoU of filter 1 (0.3, hard-coded in the original).
        ignore_box_regression: keep the proposals as boxes instead of the regressed class boxes
            [`TEST.IGNORE_BOX_REGRESSION`] (True in the extraction recipe, False in the demo).
        score_threshold: minimum class probability [`ROI_HEADS.SCORE_THRESH`] (0.2).
        min_detections_per_image, max_detections_per_image: box count bounds (10 / 100).
        attribute_threshold: attribute probabilities at or below this are zeroed (0.05).
        max_attributes_per_box: attributes reported per box (16).
        max_attributes_per_image: the original's per-image attribute cap (100); reproduced as the original
            computes it, which in practice never removes anything.
        nms_implementation: "legacy" (the Feb-2021 release that made the published features: +1 pixel areas,
            kept indices in index order) or "torchvision" (the repository head: `torchvision.ops.nms`).
        attribute_names: names of the attributes, index 0 = "no attribute" (from the label map).
        min_size_test, max_size_test: resize rule of the input (600 / 1000).
        pixel_mean, pixel_std: BGR 0-255 normalisation ([103.53, 116.28, 123.675] / 1).
        reuse_proposal_features: when the kept boxes are exactly pooled proposals (`ignore_box_regression`),
            the attribute head reuses their res5 output instead of running res5 again (identical numbers).
        channels_last: run the convolutions in channels-last memory format (faster on CPU with oneDNN).
        fold_batchnorm: run each convolution + frozen BN pair as one convolution, BN folded into its weights
            and bias (the same affine map in one pass; rounding differs at the 1e-7 relative level). False
            computes as the original, BN as a separate step.
        roi_head_chunk_size: RoIs per res5 pass (each RoI's result is independent of the others); bounds the
            head's activation memory. 0 runs all RoIs at once (better on a GPU).
        id2label: class names, index 0 = background (from the label map; placeholders otherwise).
    """

    model_type = "vinvl_detector"

    def __init__(
        self,
        stage_block_counts: Sequence[int] = (3, 8, 36),
        head_block_count: int = 3,
        num_groups: int = 32,
        width_per_group: int = 8,
        stem_out_channels: int = 64,
        res2_out_channels: int = 256,
        backbone_out_channels: int = 1024,
        stride_in_1x1: bool = False,
        num_classes: int = 1595,
        num_attributes: int = 525,
        class_embedding_dim: int = 256,
        attribute_embedding_dim: int = 512,
        anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
        anchor_aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        anchor_stride: int = 16,
        rpn_pre_nms_top_n: int = 6000,
        rpn_post_nms_top_n: int = 300,
        rpn_nms_threshold: float = 0.7,
        rpn_min_size: float = 0,
        pooler_resolution: int = 14,
        pooler_scale: float = 1.0 / 16,
        pooler_sampling_ratio: int = 0,
        box_regression_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        box_regression_clip: float = math.log(1000.0 / 16),
        nms_filter: int = 1,
        nms_threshold: float = 0.5,
        class_nms_threshold: float = 0.3,
        ignore_box_regression: bool = True,
        score_threshold: float = 0.2,
        min_detections_per_image: int = 10,
        max_detections_per_image: int = 100,
        attribute_threshold: float = 0.05,
        max_attributes_per_box: int = 16,
        max_attributes_per_image: int = 100,
        nms_implementation: str = "legacy",
        attribute_names: Sequence[str] | None = None,
        min_size_test: int = 600,
        max_size_test: int = 1000,
        pixel_mean: Sequence[float] = (103.53, 116.28, 123.675),
        pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
        reuse_proposal_features: bool = True,
        channels_last: bool = True,
        fold_batchnorm: bool = True,
        roi_head_chunk_size: int = 32,
        id2label: dict[int, str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.stage_block_counts = [_positive_int("stage_block_counts[i]", int(n)) for n in stage_block_counts]
        if len(self.stage_block_counts) != 3:
            raise ValueError(
                f"stage_block_counts = {list(stage_block_counts)}; expected 3 counts (res2, res3, res4), "
                "e.g. (3, 8, 36) for ResNeXt-152 C4."
            )
        self.head_block_count = _positive_int("head_block_count", head_block_count)
        self.num_groups = _positive_int("num_groups", num_groups)
        self.width_per_group = _positive_int("width_per_group", width_per_group)
        self.stem_out_channels = _positive_int("stem_out_channels", stem_out_channels)
        self.res2_out_channels = _positive_int("res2_out_channels", res2_out_channels)
        self.backbone_out_channels = _positive_int("backbone_out_channels", backbone_out_channels)
        if self.backbone_out_channels != self.res2_out_channels * 4:
            raise ValueError(
                f"backbone_out_channels = {backbone_out_channels} but res2_out_channels * 4 = "
                f"{self.res2_out_channels * 4}; the C4 map has res2_out_channels * 4 channels (set both consistently)."
            )
        self.stride_in_1x1 = bool(stride_in_1x1)
        self.num_classes = _positive_int("num_classes", num_classes)
        self.num_attributes = _positive_int("num_attributes", num_attributes)
        self.class_embedding_dim = _positive_int("class_embedding_dim", class_embedding_dim)
        self.attribute_embedding_dim = _positive_int("attribute_embedding_dim", attribute_embedding_dim)
        self.anchor_sizes = [float(s) for s in anchor_sizes]
        self.anchor_aspect_ratios = [float(r) for r in anchor_aspect_ratios]
        if (
            not self.anchor_sizes
            or not self.anchor_aspect_ratios
            or min(self.anchor_sizes + self.anchor_aspect_ratios) <= 0
        ):
            raise ValueError(
                f"anchor_sizes = {list(anchor_sizes)}, anchor_aspect_ratios = {list(anchor_aspect_ratios)}; "
                "expected non-empty lists of positive numbers."
            )
        self.anchor_stride = _positive_int("anchor_stride", anchor_stride)
        self.rpn_pre_nms_top_n = _positive_int("rpn_pre_nms_top_n", rpn_pre_nms_top_n)
        self.rpn_post_nms_top_n = _positive_int("rpn_post_nms_top_n", rpn_post_nms_top_n)
        self.rpn_nms_threshold = _probability("rpn_nms_threshold", rpn_nms_threshold)
        self.rpn_min_size = float(rpn_min_size)
        self.pooler_resolution = _positive_int("pooler_resolution", pooler_resolution)
        self.pooler_scale = float(pooler_scale)
        self.pooler_sampling_ratio = int(pooler_sampling_ratio)
        self.box_regression_weights = [float(w) for w in box_regression_weights]
        if len(self.box_regression_weights) != 4:
            raise ValueError(
                f"box_regression_weights = {list(box_regression_weights)}; expected 4 numbers (wx, wy, ww, wh)."
            )
        self.box_regression_clip = float(box_regression_clip)
        if nms_filter not in NMS_FILTERS:
            raise ValueError(
                f"nms_filter = {nms_filter!r}; expected 0 (per-class NMS), 1 (bottom-up attention, the extraction "
                "recipe) or 2 (one class-agnostic NMS)."
            )
        self.nms_filter = int(nms_filter)
        self.nms_threshold = _probability("nms_threshold", nms_threshold)
        self.class_nms_threshold = _probability("class_nms_threshold", class_nms_threshold)
        self.ignore_box_regression = bool(ignore_box_regression)
        self.score_threshold = _probability("score_threshold", score_threshold)
        self.min_detections_per_image = int(min_detections_per_image)
        self.max_detections_per_image = _positive_int("max_detections_per_image", max_detections_per_image)
        if not 0 <= self.min_detections_per_image <= self.max_detections_per_image:
            raise ValueError(
                f"min_detections_per_image = {min_detections_per_image} and max_detections_per_image = "
                f"{max_detections_per_image}; expected 0 <= min <= max."
            )
        self.attribute_threshold = _probability("attribute_threshold", attribute_threshold)
        self.max_attributes_per_box = _positive_int("max_attributes_per_box", max_attributes_per_box)
        if self.max_attributes_per_box > self.num_attributes:
            raise ValueError(
                f"max_attributes_per_box = {max_attributes_per_box} exceeds num_attributes = {num_attributes}; "
                "lower it."
            )
        self.max_attributes_per_image = int(max_attributes_per_image)
        if nms_implementation not in NMS_IMPLEMENTATIONS:
            raise ValueError(
                f"nms_implementation = {nms_implementation!r}; expected 'legacy' (the release that made the "
                "published features) or 'torchvision' (the repository head)."
            )
        self.nms_implementation = nms_implementation
        if attribute_names is None:
            attribute_names = ["__no_attribute__"] + [f"attribute_{i}" for i in range(1, self.num_attributes)]
        self.attribute_names = [str(name) for name in attribute_names]
        if len(self.attribute_names) != self.num_attributes:
            raise ValueError(
                f"attribute_names has {len(self.attribute_names)} names but num_attributes = {self.num_attributes}; "
                "give one name per attribute, index 0 = no attribute."
            )
        self.min_size_test = _positive_int("min_size_test", min_size_test)
        self.max_size_test = _positive_int("max_size_test", max_size_test)
        self.pixel_mean = [float(m) for m in pixel_mean]
        self.pixel_std = [float(s) for s in pixel_std]
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ValueError(
                f"pixel_mean = {list(pixel_mean)}, pixel_std = {list(pixel_std)}; expected 3 BGR values each, "
                "std positive."
            )
        self.reuse_proposal_features = bool(reuse_proposal_features)
        self.channels_last = bool(channels_last)
        self.fold_batchnorm = bool(fold_batchnorm)
        self.roi_head_chunk_size = _non_negative_int("roi_head_chunk_size", roi_head_chunk_size)
        if id2label is None:
            id2label = {0: "__background__", **{i: f"class_{i}" for i in range(1, self.num_classes)}}
        id2label = {int(k): str(v) for k, v in id2label.items()}
        if sorted(id2label) != list(range(self.num_classes)):
            raise ValueError(
                f"id2label has {len(id2label)} entries but num_classes = {self.num_classes}; give one name per "
                "class id 0..num_classes-1 (0 = background)."
            )
        kwargs.pop("num_labels", None)
        kwargs.pop("label2id", None)
        super().__init__(id2label=id2label, **kwargs)

    @property
    def class_names(self) -> list[str]:
        """Class names by id, index 0 = background."""
        return [self.id2label[i] for i in range(self.num_classes)]


__all__ = ["VinVLDetectorConfig"]
