"""Bad input to the VinVL detector, its image processor, config and converter: clear errors or the
documented conversions, nothing silent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from support import fixture_folder

from oscar_hf.convert_vinvl_detector import convert, read_label_map
from oscar_hf.processors.configuration_vinvl import VinVLDetectorConfig
from oscar_hf.processors.image_processing_vinvl import VinVLImageProcessor, resized_size
from oscar_hf.processors.modeling_vinvl import VinVLDetector


WEIGHTS = fixture_folder("VINVL_DETECTOR_FIXTURES", "vinvl_detector") / "weights.pth"


@pytest.fixture(scope="module")
def processor() -> VinVLImageProcessor:
    return VinVLImageProcessor(min_size=32, max_size=48)


@pytest.fixture(scope="module")
def detector() -> VinVLDetector:
    torch.manual_seed(0)
    config = VinVLDetectorConfig(
        stage_block_counts=(1, 1, 1), head_block_count=1, num_groups=2, width_per_group=2, stem_out_channels=4,
        res2_out_channels=4, backbone_out_channels=16, num_classes=5, num_attributes=4, class_embedding_dim=4,
        attribute_embedding_dim=4, max_attributes_per_box=3, rpn_post_nms_top_n=20,
    )  # fmt: skip
    return VinVLDetector(config).eval()


def rgb(height: int = 30, width: int = 40) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- files ----------------------------------------------------------------------------------------


def test_missing_and_non_image_files(tmp_path, processor):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        processor(str(tmp_path / "nope.jpg"))
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.jpg.*not an image"):
        processor(str(text))
    with pytest.raises(ValueError, match="expected a file path, a PIL image"):
        processor([rgb(), 42])


def test_a_path_gives_the_same_input_as_the_pil_image(tmp_path, processor):
    Image.fromarray(rgb()).save(tmp_path / "photo.png")
    from_path = processor(tmp_path / "photo.png")["pixel_values"][0]
    assert torch.equal(from_path, processor(Image.fromarray(rgb()))["pixel_values"][0])


# --- sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 10, 3), (10, 0)])
def test_empty_images(processor, shape):
    with pytest.raises(ValueError, match="empty"):
        processor(np.zeros(shape, dtype=np.uint8))


def test_huge_images_are_refused_before_resizing():
    small_limit = VinVLImageProcessor(max_image_pixels=1000)
    with pytest.raises(ValueError, match=r"above max_image_pixels = 1000; downscale"):
        small_limit(np.zeros((40, 40, 3), dtype=np.uint8))


def test_resize_rule_truncates():
    assert resized_size(90, 120, 160, 256) == (160, 213)  # 160 * 120 / 90 = 213.3
    assert resized_size(60, 200, 160, 256) == (77, 256)  # long side clamp: short = round(256 * 60 / 200) = 77
    assert resized_size(600, 800, 600, 1000) == (600, 800)  # already the target size: unchanged


# --- pixel formats: documented conversions --------------------------------------------------------


def test_grayscale_is_replicated(processor):
    gray = rgb()[..., 0]
    expected = processor(np.repeat(gray[..., None], 3, axis=-1))["pixel_values"][0]
    assert torch.equal(processor(gray)["pixel_values"][0], expected)
    assert torch.equal(processor(Image.fromarray(gray, mode="L"))["pixel_values"][0], expected)
    assert torch.equal(processor(gray[..., None])["pixel_values"][0], expected)


def test_alpha_is_dropped(processor):
    rgba = np.concatenate([rgb(), np.full((30, 40, 1), 7, dtype=np.uint8)], axis=-1)
    expected = processor(rgb())["pixel_values"][0]
    assert torch.equal(processor(rgba)["pixel_values"][0], expected)
    assert torch.equal(processor(Image.fromarray(rgba, mode="RGBA"))["pixel_values"][0], expected)


def test_16_bit_and_float_images_map_to_8_bit(processor):
    image = rgb()
    expected = processor(image)["pixel_values"][0]
    assert torch.equal(processor(image.astype(np.uint16) * 257)["pixel_values"][0], expected)
    assert torch.equal(processor(image.astype(np.float32) / 255)["pixel_values"][0], expected)
    gray16 = image[..., 0].astype(np.uint16) * 257
    assert torch.equal(
        processor(Image.fromarray(gray16))["pixel_values"][0], processor(image[..., 0])["pixel_values"][0]
    )


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((8, 8, 3), 2.0, dtype=np.float32), r"values in \[0, 1\]"),
        (np.full((8, 8, 3), np.nan, dtype=np.float32), "NaN or inf"),
        (np.zeros((8, 8, 3), dtype=np.int64), "dtype int64"),
        (np.zeros((2, 8, 8), dtype=np.uint8), "1/3/4 x H x W \\(channels first\\)"),
        (np.zeros((8, 8, 2), dtype=np.uint8), "expected H x W"),
    ],
)
def test_unsupported_arrays(processor, array, message):
    with pytest.raises(ValueError, match=message):
        processor(array)


# --- the detector ---------------------------------------------------------------------------------


def test_pixel_values_shape(detector):
    with pytest.raises(ValueError, match=r"pixel_values has shape \(3, 32, 32\)"):
        detector(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="image_sizes"):
        detector(torch.zeros(1, 3, 32, 32), image_sizes=[(32, 32), (32, 32)])


def test_given_boxes_outside_the_image(detector, processor):
    features = processor(rgb())
    with pytest.raises(ValueError, match=r"boxes\[0\]\[1\] .* lies entirely outside the image"):
        detector(**features, boxes=[torch.tensor([[1.0, 1.0, 10.0, 10.0], [50.0, 5.0, 60.0, 9.0]])])
    with pytest.raises(ValueError, match="x2 < x1"):
        detector(**features, boxes=[torch.tensor([[10.0, 1.0, 5.0, 10.0]])])
    with pytest.raises(ValueError, match="NaN"):
        detector(**features, boxes=[torch.tensor([[float("nan"), 1.0, 5.0, 10.0]])])
    with pytest.raises(ValueError, match="one per image"):
        detector(**features, boxes=torch.zeros(1, 4))
    # Partly outside: pooled as given, reported clipped to the image (the original's behaviour).
    out = detector(**features, boxes=[torch.tensor([[-5.0, 2.0, 50.0, 20.0]])])
    assert out.boxes[0][0, 0] == 0 and out.boxes[0][0, 2] <= 40


def test_outputs_are_in_original_pixels(detector, processor):
    out = detector(**processor(rgb(30, 40)))
    assert out.image_sizes == [(30, 40)]
    boxes = out.boxes[0]
    assert len(boxes) > 0
    assert (boxes[:, 2] <= 40).all() and (boxes[:, 3] <= 30).all() and (boxes >= 0).all()
    regions = out.oscar_regions(0)
    assert regions["region_features"].shape == (len(boxes), detector.config.res2_out_channels * 8 + 6)
    with pytest.raises(ValueError, match="holds 1 images"):
        out.oscar_regions(3)


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("nms_filter", 3, "nms_filter = 3"),
        ("nms_implementation", "cuda", "nms_implementation = 'cuda'"),
        ("score_threshold", 1.5, r"score_threshold = 1.5; expected a number in \[0, 1\]"),
        ("backbone_out_channels", 100, "backbone_out_channels = 100"),
        ("stage_block_counts", (3, 4), "expected 3 counts"),
        ("id2label", {0: "bg", 1: "cat"}, "id2label has 2 entries but num_classes = 1595"),
        ("min_detections_per_image", 500, "expected 0 <= min <= max"),
        ("roi_head_chunk_size", -1, "roi_head_chunk_size = -1; expected an integer >= 0"),
    ],
)
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        VinVLDetectorConfig(**{field: value})


# --- label maps -----------------------------------------------------------------------------------


def test_label_map_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_label_map(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        read_label_map(tmp_path / "bad.json")
    (tmp_path / "no_attrs.json").write_text(json.dumps({"label_to_idx": {"cat": 1}}))
    with pytest.raises(ValueError, match="no attribute_to_idx"):
        read_label_map(tmp_path / "no_attrs.json")
    (tmp_path / "gap.json").write_text(
        json.dumps({"label_to_idx": {"cat": 1, "dog": 3}, "attribute_to_idx": {"red": 1}})
    )
    with pytest.raises(ValueError, match=r"label ids are not 1\.\.2"):
        read_label_map(tmp_path / "gap.json")


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"no VinVL detector fixture weights at {WEIGHTS}")
def test_label_map_with_another_class_count(tmp_path):
    labels = {f"c{i}": i for i in range(1, 1595)}
    attributes = {f"a{i}": i for i in range(1, 21)}
    (tmp_path / "vg.json").write_text(json.dumps({"label_to_idx": labels, "attribute_to_idx": attributes}))
    with pytest.raises(ValueError, match=r"1594 classes \(\+1 for index 0\) but the checkpoint .* has 51"):
        convert(WEIGHTS, tmp_path / "out", labelmap=tmp_path / "vg.json")
