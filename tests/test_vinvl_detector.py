"""Parity of the native VinVL detector with the ORIGINAL code's fixtures, stage by stage and end to end.

Cases come from each fixture folder's `manifest.json` (its `nms` field says which NMS made them); the
model is built from the case's `config.yaml`, so other fixture sets of the same format run unchanged.
Each stage is checked from the previous stage's fixture tensors (so that a 1e-6 drift upstream cannot flip
an NMS or top-k decision downstream) and once end to end from the raw image.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import torch
from support import fixture_folder, manifest_cases


yaml = pytest.importorskip("yaml", reason="pyyaml reads the fixtures' config.yaml")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="the fixtures are safetensors files")

from oscar_hf.processors.configuration_vinvl import VinVLDetectorConfig  # noqa: E402
from oscar_hf.processors.image_processing_vinvl import VinVLImageProcessor  # noqa: E402
from oscar_hf.processors.modeling_vinvl import VinVLDetector  # noqa: E402


RTOL, ATOL = 1e-4, 1e-5
LEGACY = fixture_folder("VINVL_DETECTOR_FIXTURES", "vinvl_detector")
TORCHVISION = Path(
    os.environ.get("VINVL_DETECTOR_FIXTURES_TORCHVISION_NMS", LEGACY.parent / "vinvl_detector_torchvision_nms")
)
FOLDERS = [folder for folder in (LEGACY, TORCHVISION) if (folder / "manifest.json").is_file()]
CASES = [
    pytest.param(folder, case, id=f"{json.loads((folder / 'manifest.json').read_text())['nms']}-{case}")
    for folder in FOLDERS
    for case in manifest_cases(folder)
]


def cases_with(*names: str) -> list:
    """The cases whose fixture stores every named tensor (only some cases keep every stage)."""
    selected = [
        param
        for param in CASES
        if all(f"img0/{n}" in manifest_cases(param.values[0])[param.values[1]]["tensors"] for n in names)
    ]
    return selected or [pytest.param(None, None, marks=pytest.mark.skip(reason=f"no fixture case stores {names}"))]


pytestmark = [
    pytest.mark.parity,
    pytest.mark.skipif(not CASES, reason=f"no VinVL detector fixtures at {LEGACY} or {TORCHVISION}"),
]


# ------------------------------------------------------------------------------------------------
# Fixture loading
# ------------------------------------------------------------------------------------------------


def config_from_yaml(path: Path, nms: str) -> VinVLDetectorConfig:
    """The detector config of one case, read from the original's dumped yacs config."""
    cfg = yaml.safe_load(path.read_text())
    model, resnets = cfg["MODEL"], cfg["MODEL"]["RESNETS"]
    return VinVLDetectorConfig(
        num_groups=resnets["NUM_GROUPS"],
        width_per_group=resnets["WIDTH_PER_GROUP"],
        stem_out_channels=resnets["STEM_OUT_CHANNELS"],
        res2_out_channels=resnets["RES2_OUT_CHANNELS"],
        backbone_out_channels=resnets["BACKBONE_OUT_CHANNELS"],
        stride_in_1x1=resnets["STRIDE_IN_1X1"],
        num_classes=model["ROI_BOX_HEAD"]["NUM_CLASSES"],
        num_attributes=model["ROI_ATTRIBUTE_HEAD"]["NUM_ATTRIBUTES"],
        class_embedding_dim=model["ROI_ATTRIBUTE_HEAD"]["CLS_EMD_DIM"],
        attribute_embedding_dim=model["ROI_ATTRIBUTE_HEAD"]["ATTR_EMD_DIM"],
        anchor_sizes=model["RPN"]["ANCHOR_SIZES"],
        anchor_aspect_ratios=model["RPN"]["ASPECT_RATIOS"],
        anchor_stride=model["RPN"]["ANCHOR_STRIDE"][0],
        rpn_pre_nms_top_n=model["RPN"]["PRE_NMS_TOP_N_TEST"],
        rpn_post_nms_top_n=model["RPN"]["POST_NMS_TOP_N_TEST"],
        rpn_nms_threshold=model["RPN"]["NMS_THRESH"],
        rpn_min_size=model["RPN"]["MIN_SIZE"],
        pooler_resolution=model["ROI_BOX_HEAD"]["POOLER_RESOLUTION"],
        pooler_scale=model["ROI_BOX_HEAD"]["POOLER_SCALES"][0],
        pooler_sampling_ratio=model["ROI_BOX_HEAD"]["POOLER_SAMPLING_RATIO"],
        box_regression_weights=model["ROI_HEADS"]["BBOX_REG_WEIGHTS"],
        nms_filter=model["ROI_HEADS"]["NMS_FILTER"],
        nms_threshold=model["ROI_HEADS"]["NMS"],
        score_threshold=model["ROI_HEADS"]["SCORE_THRESH"],
        min_detections_per_image=model["ROI_HEADS"]["MIN_DETECTIONS_PER_IMG"],
        max_detections_per_image=model["ROI_HEADS"]["DETECTIONS_PER_IMG"],
        ignore_box_regression=cfg["TEST"]["IGNORE_BOX_REGRESSION"],
        attribute_threshold=model["ROI_ATTRIBUTE_HEAD"]["POSTPROCESS_ATTRIBUTES_THRESHOLD"],
        max_attributes_per_box=model["ROI_ATTRIBUTE_HEAD"]["MAX_NUM_ATTR_PER_OBJ"],
        max_attributes_per_image=model["ROI_ATTRIBUTE_HEAD"]["MAX_NUM_ATTR_PER_IMG"],
        min_size_test=cfg["INPUT"]["MIN_SIZE_TEST"],
        max_size_test=cfg["INPUT"]["MAX_SIZE_TEST"],
        pixel_mean=cfg["INPUT"]["PIXEL_MEAN"],
        pixel_std=cfg["INPUT"]["PIXEL_STD"],
        nms_implementation=nms,
    )


@functools.cache
def load_case(folder: Path, case: str) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    config = config_from_yaml(folder / case / "config.yaml", manifest["nms"])
    weights = torch.load(folder / "weights.pth", map_location="cpu", weights_only=True)["model"]
    weights = {k: v for k, v in weights.items() if not k.startswith("attribute.feature_extractor.")}
    model = VinVLDetector(config).eval()
    model.load_state_dict(weights, strict=True)
    inputs = safetensors_torch.load_file(folder / "inputs.safetensors")
    num_images = len(manifest["cases"][case]["images"])
    return {
        "spec": manifest["cases"][case],
        "model": model,
        "processor": VinVLImageProcessor(min_size=config.min_size_test, max_size=config.max_size_test),
        "outputs": safetensors_torch.load_file(folder / case / "outputs.safetensors"),
        "images": [inputs[f"img{i}/image_rgb_uint8"].numpy() for i in range(num_images)],
        "given_boxes": [inputs.get(f"img{i}/given_boxes_orig") for i in range(num_images)],
    }


@functools.cache
def run_case(folder: Path, case: str):
    """The end-to-end run of one case from the raw images (shared by the end-to-end tests)."""
    data = load_case(folder, case)
    features = data["processor"](data["images"], pad_batch=data["spec"]["batched"])
    boxes = data["given_boxes"] if case == "force_boxes" else None
    torch.manual_seed(0)
    with torch.inference_mode():
        return features, data["model"](**features, boxes=boxes, output_stages=True)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    if expected.dtype in (torch.int64, torch.int32, torch.bool):
        mismatches = (actual.to(expected.dtype) != expected).sum().item()
        assert mismatches == 0, f"{name}: {mismatches} entries differ"
    else:
        torch.testing.assert_close(actual.float(), expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")


def images_of(folder: Path, case: str) -> range:
    return range(len(load_case(folder, case)["spec"]["images"]))


# ------------------------------------------------------------------------------------------------
# Stage by stage, each from the previous stage's fixture tensors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder, case", CASES)
def test_transformed_image(folder, case):
    data = load_case(folder, case)
    for i, image in enumerate(data["images"]):
        tensor = data["processor"].normalize_image(data["processor"].to_rgb(image))
        assert list(tensor.shape[1:]) == data["spec"]["images"][i]["resized_hw"]
        if f"img{i}/image_tensor" in data["outputs"]:
            assert_close(tensor, data["outputs"][f"img{i}/image_tensor"], f"img{i}/image_tensor")


@pytest.mark.parametrize("folder, case", cases_with("image_tensor", "backbone_c4", "rpn_objectness", "anchors"))
def test_backbone_rpn_and_anchors(folder, case):
    data = load_case(folder, case)
    model, out = data["model"], data["outputs"]
    for i in images_of(folder, case):
        with torch.inference_mode():
            c4 = model.extract_c4(out[f"img{i}/image_tensor"][None])
            objectness, deltas, anchors = model.rpn(out[f"img{i}/backbone_c4"])
        assert_close(c4, out[f"img{i}/backbone_c4"], f"img{i}/backbone_c4")
        assert_close(objectness, out[f"img{i}/rpn_objectness"], f"img{i}/rpn_objectness")
        assert_close(deltas, out[f"img{i}/rpn_box_regression"], f"img{i}/rpn_box_regression")
        assert_close(anchors, out[f"img{i}/anchors"], f"img{i}/anchors")


@pytest.mark.parametrize("folder, case", cases_with("rpn_objectness", "rpn_box_regression", "anchors", "proposals"))
def test_proposals_from_rpn_outputs(folder, case):
    data = load_case(folder, case)
    model, out = data["model"], data["outputs"]
    for i in images_of(folder, case):
        size = tuple(data["spec"]["images"][i]["resized_hw"])
        ((proposals, objectness),) = model.rpn.select_proposals(
            out[f"img{i}/rpn_objectness"], out[f"img{i}/rpn_box_regression"], out[f"img{i}/anchors"], [size]
        )
        assert_close(proposals, out[f"img{i}/proposals"], f"img{i}/proposals")
        assert_close(objectness, out[f"img{i}/proposal_objectness"], f"img{i}/proposal_objectness")


@pytest.mark.parametrize(
    "folder, case", cases_with("backbone_c4", "proposals", "proposal_pooled_features", "class_logits")
)
def test_box_head_from_proposals(folder, case):
    """RoIAlign + res5 + predictor on the fixture's proposals and C4 map."""
    data = load_case(folder, case)
    model, out = data["model"], data["outputs"]
    for i in images_of(folder, case):
        with torch.inference_mode():
            pooled = model.pool_regions(out[f"img{i}/backbone_c4"], [out[f"img{i}/proposals"]])["pooled"]
            class_logits, box_regression = model.classify_regions(out[f"img{i}/proposal_pooled_features"])
        assert_close(pooled, out[f"img{i}/proposal_pooled_features"], f"img{i}/proposal_pooled_features")
        assert_close(class_logits, out[f"img{i}/class_logits"], f"img{i}/class_logits")
        if f"img{i}/box_regression" in out:
            assert_close(box_regression, out[f"img{i}/box_regression"], f"img{i}/box_regression")


@pytest.mark.parametrize("folder, case", cases_with("proposals", "class_logits", "proposal_pooled_features"))
def test_post_processing_from_logits(folder, case):
    """Boxes, scores, labels (count and order exactly) and pooled features from the fixture's logits."""
    data = load_case(folder, case)
    model, out = data["model"], data["outputs"]
    for i in images_of(folder, case):
        size = tuple(data["spec"]["images"][i]["resized_hw"])
        detections = model.select_detections(
            out[f"img{i}/proposals"], out[f"img{i}/class_logits"], out.get(f"img{i}/box_regression"), size
        )
        assert_close(detections["labels"], out[f"img{i}/labels"], f"img{i}/labels")
        assert_close(detections["boxes"], out[f"img{i}/boxes"], f"img{i}/boxes")
        assert_close(detections["scores"], out[f"img{i}/scores"], f"img{i}/scores")
        features = out[f"img{i}/proposal_pooled_features"][detections["proposal_index"]]
        assert_close(features, out[f"img{i}/box_features"], f"img{i}/box_features")
        for name in ("scores_all", "boxes_all"):
            if f"img{i}/{name}" in out:
                assert_close(detections[name], out[f"img{i}/{name}"], f"img{i}/{name}")


@pytest.mark.parametrize("folder, case", cases_with("given_boxes", "given_roi_align", "given_res5"))
def test_given_boxes_roi_align_and_res5(folder, case):
    data = load_case(folder, case)
    model, out, processor = data["model"], data["outputs"], data["processor"]
    for i, image in enumerate(data["images"]):
        features = processor(image)
        boxes = model._given_boxes(
            [data["given_boxes"][i]], 1, features["image_sizes"].tolist(), features["original_sizes"].tolist(), "cpu"
        )
        assert_close(boxes[0], out[f"img{i}/given_boxes"], f"img{i}/given_boxes")
        with torch.inference_mode():
            c4 = model.extract_c4(features["pixel_values"][0][None])
            regions = model.pool_regions(c4, [out[f"img{i}/given_boxes"]])
        assert_close(regions["roi_align"], out[f"img{i}/given_roi_align"], f"img{i}/given_roi_align")
        assert_close(regions["res5"], out[f"img{i}/given_res5"], f"img{i}/given_res5")


@pytest.mark.parametrize("folder, case", [c for c in CASES if not manifest_cases(c.values[0])[c.values[1]]["batched"]])
def test_attributes_from_final_boxes(folder, case):
    """Attribute head on the fixture's final boxes and labels (C4 from the fixture or the image; the padded
    batch's attributes are checked end to end)."""
    data = load_case(folder, case)
    model, out, processor = data["model"], data["outputs"], data["processor"]
    for i, image in enumerate(data["images"]):
        with torch.inference_mode():
            c4 = out.get(f"img{i}/backbone_c4")
            if c4 is None:
                c4 = model.extract_c4(processor(image)["pixel_values"][0][None])
            pooled = model.pool_regions(c4, [out[f"img{i}/boxes"]])["pooled"]
            logits, labels, scores = model.predict_attributes(pooled, out[f"img{i}/labels"], [len(pooled)])
        assert_close(logits, out[f"img{i}/attr_logits"], f"img{i}/attr_logits")
        assert_close(labels[0], out[f"img{i}/attr_labels"], f"img{i}/attr_labels")
        assert_close(scores[0], out[f"img{i}/attr_scores"], f"img{i}/attr_scores")


# ------------------------------------------------------------------------------------------------
# End to end from the raw image
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder, case", CASES)
def test_end_to_end(folder, case):
    data = load_case(folder, case)
    _, result = run_case(folder, case)
    out = data["outputs"]
    for i in images_of(folder, case):
        assert len(result.labels[i]) == data["spec"]["images"][i]["num_detections"]
        assert_close(result.labels[i], out[f"img{i}/labels"], f"img{i}/labels")
        assert_close(result.resized_boxes[i], out[f"img{i}/boxes"], f"img{i}/boxes")
        assert_close(result.boxes[i], out[f"img{i}/boxes_orig"], f"img{i}/boxes_orig")
        assert_close(result.scores[i], out[f"img{i}/scores"], f"img{i}/scores")
        assert_close(result.region_features[i], out[f"img{i}/box_features"], f"img{i}/box_features")
        assert_close(result.attribute_logits[i], out[f"img{i}/attr_logits"], f"img{i}/attr_logits")
        assert_close(result.attribute_labels[i], out[f"img{i}/attr_labels"], f"img{i}/attr_labels")
        assert_close(result.attribute_scores[i], out[f"img{i}/attr_scores"], f"img{i}/attr_scores")
        if f"img{i}/scores_all" in out:
            assert_close(result.scores_all[i], out[f"img{i}/scores_all"], f"img{i}/scores_all")
        stages = result.stages[i]
        for name in ("backbone_c4", "proposals", "proposal_objectness", "proposal_pooled_features", "class_logits"):
            if f"img{i}/{name}" in out:
                assert_close(stages[name], out[f"img{i}/{name}"], f"img{i}/{name} (end to end)")
    if "batch/backbone_c4" in out:
        c4 = torch.cat([stages["backbone_c4"] for stages in result.stages])
        assert_close(c4, out["batch/backbone_c4"], "batch/backbone_c4")
        assert list(c4.shape[-2:]) == [-(-int(v) // 16) for v in out["batch/padded_hw"].tolist()]


@pytest.mark.parametrize("folder, case", CASES)
def test_oscar_region_vectors(folder, case):
    """The 2054-d-style region vectors: pooled feature + the 6 box values of the processor's `box_geometry`."""
    from oscar_hf.processors.image_processing_oscar import box_geometry

    data = load_case(folder, case)
    _, result = run_case(folder, case)
    for i in images_of(folder, case):
        regions = result.oscar_regions(i)
        height, width = data["images"][i].shape[:2]
        assert regions["image_size"] == (height, width)
        expected = torch.cat(
            [
                data["outputs"][f"img{i}/box_features"],
                box_geometry(data["outputs"][f"img{i}/boxes_orig"], (height, width)),
            ],
            -1,
        )
        assert_close(regions["region_features"], expected, f"img{i}/region_features")
        assert regions["tags"] == [data["model"].config.id2label[int(j)] for j in data["outputs"][f"img{i}/labels"]]
        assert len(regions["tags"]) == len(regions["region_features"])


def test_one_image_per_forward_is_the_default():
    """The processor's default (a list of images) runs one image per forward: equal to separate calls."""
    folder, case = CASES[0].values
    data = load_case(folder, case)
    model, processor = data["model"], data["processor"]
    together = model(**processor(data["images"][:2]))
    for i in range(2):
        alone = model(**processor(data["images"][i]))
        assert torch.equal(alone.labels[0], together.labels[i])
        torch.testing.assert_close(alone.region_features[0], together.region_features[i])


@pytest.mark.parametrize(
    "switches",
    [
        {"fold_batchnorm": False, "channels_last": False, "roi_head_chunk_size": 0, "reuse_proposal_features": False},
        {"roi_head_chunk_size": 1},
        {"roi_head_chunk_size": 7},
    ],
    ids=["as-the-original-computes", "one-roi-per-pass", "chunks-of-7"],
)
def test_speed_switches_give_the_fixture_outputs(switches):
    """The speed settings (BN folded into the convolutions, channels-last, res5 in RoI chunks, reuse of the
    proposals' res5) change how, not what: each setting matches the fixture end to end."""
    folder, case = CASES[0].values
    data = load_case(folder, case)
    config = VinVLDetectorConfig.from_dict({**data["model"].config.to_dict(), **switches})
    model = VinVLDetector(config).eval()
    model.load_state_dict(data["model"].state_dict())
    features = data["processor"](data["images"], pad_batch=data["spec"]["batched"])
    with torch.inference_mode():
        result = model(**features, boxes=data["given_boxes"] if case == "force_boxes" else None)
    out = data["outputs"]
    for i in images_of(folder, case):
        assert torch.equal(result.labels[i], out[f"img{i}/labels"].to(result.labels[i].dtype))
        assert_close(result.boxes[i], out[f"img{i}/boxes_orig"], f"img{i}/boxes_orig")
        assert_close(result.region_features[i], out[f"img{i}/box_features"], f"img{i}/box_features")
        assert_close(result.attribute_labels[i], out[f"img{i}/attr_labels"], f"img{i}/attr_labels")
