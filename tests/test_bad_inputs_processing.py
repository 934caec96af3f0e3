"""Bad inputs to the processor, the region-feature image processor, image loading and the pipelines.

Each is an exception naming the argument, the value and what was expected: detector records without
`features`/`boxes`, NaN image sizes, a directory named like an image, 0x0 images, truncated files.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from support import FIXTURES_ROOT, tiny_config
from transformers import BertTokenizerFast

from oscar_hf import OscarForSequenceClassification
from oscar_hf.processors import OscarProcessor, OscarRegionFeatureProcessor
from oscar_hf.processors.detection_oscar import load_rgb_image, to_rgb
from oscar_hf.processors.pipeline_oscar import OscarVQAPipeline


WIDTH = 8  # region feature width; img_feature_dim = 8 + 6 = 14 as in support.tiny_config


def raises(error: type, *fragments: str):
    pattern = "".join(f"(?=.*{re.escape(fragment)})" for fragment in fragments)
    return pytest.raises(error, match=re.compile(pattern, re.S))


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    (folder / "vocab.txt").write_text((FIXTURES_ROOT / "oscar_original" / "vocab.txt").read_text())
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    regions = OscarRegionFeatureProcessor(region_feature_dim=WIDTH, max_img_seq_length=4)
    return OscarProcessor(regions, tokenizer, max_seq_length=16, max_caption_length=8, max_tag_length=6)


def record(**overrides):
    values = {
        "features": np.ones((2, WIDTH), np.float32),
        "boxes": np.array([[0, 0, 10, 10], [5, 5, 20, 15]], np.float32),
        "image_size": (20, 30),
        "tags": ["cat", "dog"],
    }
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


# --------------------------------------------------------------------------------- processor: records


@pytest.mark.parametrize(
    "missing, fragments",
    [
        ("features", ("regions[0] has no 'features'", "keys: ['boxes', 'image_size', 'tags']")),
        ("boxes", ("regions[0] has no 'boxes'", f"have {WIDTH} dims", "x1, y1, x2, y2")),
        ("image_size", ("regions[0] has no 'image_size'", "(height, width)")),
    ],
)
def test_detector_record_missing_a_key(processor, missing, fragments):
    with raises(ValueError, *fragments):
        processor("a question", regions=[record(**{missing: None})])


def test_a_record_that_is_not_a_dict(processor):
    with raises(ValueError, "regions[1] is list", "detector record"):
        processor(["q1", "q2"], regions=[record(), [1, 2]])


def test_full_width_records_need_no_boxes(processor):
    out = processor("a question", regions=[{"features": np.ones((2, WIDTH + 6), np.float32), "tags": "cat"}])
    assert out["img_feats"].shape == (1, 4, WIDTH + 6)


@pytest.mark.parametrize(
    "size, shown",
    [
        ((float("nan"), 30), "[nan, 30.0]"),
        ((20, float("inf")), "[20.0, inf]"),
        ((0, 30), "[0.0, 30.0]"),
        ((20, -5), "[20.0, -5.0]"),
        ((20, 30, 3), "[20.0, 30.0, 3.0]"),
    ],
)
def test_bad_image_sizes(processor, size, shown):
    with raises(ValueError, f"image_sizes[0] = {shown}", "finite, positive (height, width)"):
        processor("q", regions=[record(image_size=size)])


def test_image_size_none_in_region_features_call(processor):
    with raises(ValueError, "image_sizes[0] is None", "(height, width)"):
        processor.image_processor([np.ones((2, WIDTH))], boxes=[np.zeros((2, 4))], image_sizes=[None])
    with raises(ValueError, "boxes[0] is None", "x1, y1, x2, y2"):
        processor.image_processor([np.ones((2, WIDTH))], boxes=[None], image_sizes=[(10, 10)])


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        ({"features": np.full((2, WIDTH), np.nan, np.float32)}, ("region_features[0][0] contains NaN or inf",)),
        (
            {"features": np.ones((2, 5), np.float32)},
            ("region_features[0] has shape (2, 5)", f"(num_regions, {WIDTH})"),
        ),
        (
            {"features": np.ones((0, WIDTH), np.float32), "boxes": np.zeros((0, 4))},
            ("has 0 regions", "allow_empty_regions"),
        ),
        (
            {"boxes": np.array([[0, 0, 10, 10]], np.float32)},
            ("boxes[0] has 1 boxes but region_features[0] has 2 rows",),
        ),
        ({"boxes": np.array([[10, 0, 0, 10], [0, 0, 1, 1]], np.float32)}, ("negative width or height", "xywh")),
        (
            {"boxes": np.array([[0, 0, 99, 10], [0, 0, 1, 1]], np.float32)},
            ("lies outside the image", "clip_boxes=True"),
        ),
        ({"boxes": np.array([[0, 0, np.nan, 10], [0, 0, 1, 1]], np.float32)}, ("boxes[0] contains NaN or inf",)),
        ({"boxes": np.zeros((2, 5), np.float32)}, ("boxes[0] has shape (2, 5)", "(num_regions, 4)")),
        ({"features": [["a"] * WIDTH] * 2}, ("region_features[0] is not numeric",)),
    ],
)
def test_bad_region_values(processor, kwargs, fragments):
    with raises(ValueError, *fragments):
        processor("q", regions=[record(**kwargs)])


def test_region_count_must_match_texts(processor):
    with raises(ValueError, "Got 1 region sets for 2 texts", "one region set per example"):
        processor(["q1", "q2"], tags=["cat", "dog"], regions=[record()])


def test_regions_and_region_features_together(processor):
    with raises(ValueError, "Pass regions (detector outputs) or region_features, not both"):
        processor("q", regions=[record()], region_features=[np.ones((2, WIDTH))])


# ------------------------------------------------------------------------------------------ images


def test_a_directory_named_like_an_image(tmp_path):
    (tmp_path / "photo.jpg").mkdir()
    with raises(ValueError, "photo.jpg", "is a directory", "image file"):
        load_rgb_image(str(tmp_path / "photo.jpg"))


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
def test_zero_sized_images(size):
    with raises(ValueError, f"{size[0]}x{size[1]} pixels", "at least 1x1"):
        to_rgb(Image.new("RGB", size))
    with raises(ValueError, f"shape {(size[1], size[0], 3)}", "at least 1x1 pixels"):
        to_rgb(np.zeros((size[1], size[0], 3), np.uint8))


def test_truncated_image_files(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    for name, cut in (("half.png", len(data) // 2), ("header.png", 20), ("empty.png", 0)):
        (tmp_path / name).write_bytes(data[:cut])
        with raises(ValueError, name, "could not be read as an image", "PIL can open"):
            load_rgb_image(str(tmp_path / name))


def test_missing_file_and_wrong_types(tmp_path):
    with raises(FileNotFoundError, "nope.jpg", "does not exist"):
        load_rgb_image(str(tmp_path / "nope.jpg"))
    with raises(ValueError, "got dict", "PIL image or a numpy array"):
        to_rgb({"image": 1})
    with raises(ValueError, "NaN or inf", "finite pixel values"):
        to_rgb(np.full((4, 4, 3), np.nan, np.float32))


# ----------------------------------------------------------------------------------------- pipelines


class Detector:
    """A stand-in detector returning whatever record it is given."""

    def __init__(self, output):
        self.output = output

    def __call__(self, images):
        return [self.output for _ in images]


@pytest.fixture(scope="module")
def vqa_model():
    torch.manual_seed(0)
    return OscarForSequenceClassification(
        tiny_config(vocab_size=30522, num_labels=3, loss_type="bce", id2label={0: "yes", 1: "no", 2: "two"})
    ).eval()


def vqa(vqa_model, processor, detector):
    return OscarVQAPipeline(model=vqa_model, processor=processor, detector=detector, device="cpu")


@pytest.mark.parametrize(
    "output, fragments",
    [
        ({"boxes": np.zeros((1, 4))}, ("The detector returned ['boxes']", "'features' (N, D)")),
        ([1, 2], ("The detector returned list", "'features' (N, D)")),
        (record(boxes=None), ("regions[0] has no 'boxes'",)),
        (record(image_size=(float("nan"), 30)), ("image_sizes[0] = [nan, 30.0]",)),
    ],
)
def test_pipeline_detector_outputs(vqa_model, processor, output, fragments):
    with raises(ValueError, *fragments):
        vqa(vqa_model, processor, Detector(output))(Image.new("RGB", (30, 20)), question="is it red?")


def test_pipeline_image_inputs(vqa_model, processor, tmp_path):
    pipe = vqa(vqa_model, processor, Detector(record()))
    assert len(pipe(Image.new("RGB", (30, 20)), question="is it red?", top_k=2)) == 2
    (tmp_path / "dir.png").mkdir()
    with raises(ValueError, "dir.png", "is a directory"):
        pipe(str(tmp_path / "dir.png"), question="is it red?")
    with raises(ValueError, "0x0 pixels"):
        pipe(Image.new("RGB", (0, 0)), question="is it red?")
    with raises(ValueError, "question=''", "non-empty string"):
        pipe(Image.new("RGB", (30, 20)), question="")
    with raises(ValueError, "precomputed regions need 'features'"):
        pipe({"boxes": np.zeros((1, 4))}, question="is it red?")
    with raises(ValueError, "regions[0] has no 'boxes'"):
        pipe({"features": np.ones((2, WIDTH), np.float32)}, question="is it red?")
