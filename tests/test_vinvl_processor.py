"""`OscarProcessor(images=...)` with the native VinVL detector gives the ORIGINAL code's region vectors.

The reduced fixture detector (`weights.pth`) is converted with the `extract` case's settings (the README
feature-extraction recipe); the processor's `img_feats` on the fixture images must then be the region
vectors built from that case's `box_features` and `boxes_orig` (pooled feature + the 6 box values), in
the same order, with the case's class names as tags. Fixture folders come from
`VINVL_DETECTOR_FIXTURES` (and `VINVL_DETECTOR_FIXTURES_TORCHVISION_NMS`), as in the parity tests.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from support import fixture_folder, manifest_cases
from support.folders import real_tokenizer


yaml = pytest.importorskip("yaml", reason="pyyaml reads the fixtures' config.yaml")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="the fixtures are safetensors files")
pytest.importorskip("torchvision", reason="the VinVL detector needs torchvision (RoIAlign, NMS)")

from oscar_hf.convert_vinvl_detector import convert  # noqa: E402
from oscar_hf.processors import OscarProcessor, OscarRegionFeatureProcessor, box_geometry  # noqa: E402
from oscar_hf.processors.detection_oscar import VinVLDetectorAdapter, load_detector  # noqa: E402


RTOL, ATOL = 1e-4, 1e-5
CASE = "extract"
LEGACY = fixture_folder("VINVL_DETECTOR_FIXTURES", "vinvl_detector")
TORCHVISION = Path(
    os.environ.get("VINVL_DETECTOR_FIXTURES_TORCHVISION_NMS", LEGACY.parent / "vinvl_detector_torchvision_nms")
)
FOLDERS = [
    pytest.param(folder, id=json.loads((folder / "manifest.json").read_text())["nms"])
    for folder in (LEGACY, TORCHVISION)
    if CASE in manifest_cases(folder)
]
pytestmark = pytest.mark.skipif(not FOLDERS, reason=f"no VinVL fixture folder with an {CASE!r} case at {LEGACY}")


def case_overrides(folder: Path, case: str) -> dict:
    """Converter overrides that reproduce one fixture case (its dumped yacs config + the manifest's NMS)."""
    cfg = yaml.safe_load((folder / case / "config.yaml").read_text())
    heads = cfg["MODEL"]["ROI_HEADS"]
    return {
        "nms_filter": heads["NMS_FILTER"],
        "score_threshold": heads["SCORE_THRESH"],
        "min_detections_per_image": heads["MIN_DETECTIONS_PER_IMG"],
        "max_detections_per_image": heads["DETECTIONS_PER_IMG"],
        "ignore_box_regression": cfg["TEST"]["IGNORE_BOX_REGRESSION"],
        "min_size_test": cfg["INPUT"]["MIN_SIZE_TEST"],
        "max_size_test": cfg["INPUT"]["MAX_SIZE_TEST"],
        "nms_implementation": json.loads((folder / "manifest.json").read_text())["nms"],
    }


@functools.cache
def detector_folder(folder: Path, root: Path) -> Path:
    return convert(folder / "weights.pth", root / f"detector-{folder.name}", **case_overrides(folder, CASE))


@functools.cache
def fixture_case(folder: Path) -> dict:
    inputs = safetensors_torch.load_file(folder / "inputs.safetensors")
    count = len(manifest_cases(folder)[CASE]["images"])
    return {
        "images": [inputs[f"img{i}/image_rgb_uint8"].numpy() for i in range(count)],
        "outputs": safetensors_torch.load_file(folder / CASE / "outputs.safetensors"),
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vinvl_processor")


@pytest.fixture(scope="module")
def tokenizer():
    return real_tokenizer()


def make_processor(tokenizer, detector=None, slots: int = 100, **kwargs) -> OscarProcessor:
    regions = OscarRegionFeatureProcessor(region_feature_dim=128, max_img_seq_length=slots)
    return OscarProcessor(regions, tokenizer, max_seq_length=64, detector=detector, **kwargs)


def expected_vectors(case: dict, index: int) -> torch.Tensor:
    """The fixture's region vectors of image `index`: pooled feature + [x1/W, y1/H, x2/W, y2/H, w/W, h/H]."""
    height, width = case["images"][index].shape[:2]
    out = case["outputs"]
    return torch.cat(
        [out[f"img{index}/box_features"], box_geometry(out[f"img{index}/boxes_orig"], (height, width))], -1
    )


@pytest.mark.parametrize("folder", FOLDERS)
def test_images_give_the_fixture_region_vectors(folder, root, tokenizer):
    detector = VinVLDetectorAdapter.from_pretrained(detector_folder(folder, root))
    assert detector.feature_dim == 128
    processor = make_processor(tokenizer, detector)
    case = fixture_case(folder)
    names = detector.model.config.id2label
    texts = ["what is this?"] * len(case["images"])
    inputs = processor(texts, images=case["images"])
    records = processor.detect(case["images"])
    for i in range(len(case["images"])):
        expected = expected_vectors(case, i)
        count = len(expected)
        assert int(inputs["img_attention_mask"][i].sum()) == count
        torch.testing.assert_close(inputs["img_feats"][i, :count], expected, rtol=RTOL, atol=ATOL)
        assert torch.equal(inputs["img_feats"][i, count:], torch.zeros_like(inputs["img_feats"][i, count:]))
        labels = case["outputs"][f"img{i}/labels"]
        assert records[i]["tags"] == [names[int(j)] for j in labels]
        assert torch.equal(records[i]["label_ids"], labels)
        assert records[i]["image_size"] == tuple(case["images"][i].shape[:2])
        assert len(records[i]["attributes"]) == count
    # images= is exactly the detector's records passed as regions= (tags included).
    from_regions = processor(texts, regions=records)
    assert sorted(inputs) == sorted(from_regions)
    for key in inputs:
        assert torch.equal(inputs[key], from_regions[key]), key


@pytest.mark.parametrize("folder", FOLDERS[:1])
def test_detector_loads_from_the_model_folder(folder, root, tokenizer):
    """A processor saved in a folder with a `detector/` subfolder finds it, named or not."""
    case = fixture_case(folder)
    image = case["images"][0]
    expected = make_processor(tokenizer, VinVLDetectorAdapter.from_pretrained(detector_folder(folder, root)))
    reference = expected.caption_prompt(images=image)
    for name in ("detector", None):
        model_folder = root / f"model-{name}"
        shutil.rmtree(model_folder, ignore_errors=True)
        make_processor(tokenizer, detector_name_or_path=name).save_pretrained(model_folder)
        shutil.copytree(detector_folder(folder, root), model_folder / "detector")
        saved = json.loads((model_folder / "processor_config.json").read_text())
        assert "detector" not in saved and "_detector" not in saved
        loaded = OscarProcessor.from_pretrained(model_folder)
        assert not loaded.has_detector  # loaded on first use
        prompt = loaded.caption_prompt(images=image)
        assert loaded.has_detector and isinstance(loaded.detector, VinVLDetectorAdapter)
        for key in reference:
            assert torch.equal(prompt[key], reference[key]), (name, key)
        count = len(expected_vectors(case, 0))
        tags = " ".join(names for names in expected.detect(image)[0]["tags"])
        tag_ids = tokenizer(tags, add_special_tokens=False)["input_ids"][: expected.max_tag_length - 1]
        assert prompt["tag_input_ids"][0, : len(tag_ids)].tolist() == tag_ids
        assert int(prompt["img_attention_mask"][0].sum()) == count


@pytest.mark.parametrize("folder", FOLDERS[:1])
def test_nlvr2_pairs_and_captioning_take_images(folder, root, tokenizer):
    detector = VinVLDetectorAdapter.from_pretrained(detector_folder(folder, root))
    processor = make_processor(tokenizer, detector, slots=40)
    left, right = fixture_case(folder)["images"][:2]
    pair = processor.nlvr2(["the left image has more objects"], images=[(left, right)], labels=[1])
    records = processor.detect([left, right])
    expected = processor.nlvr2(["the left image has more objects"], regions=[records], labels=[1])
    assert pair["img_feats"].shape == (1, 2, 40, 134)
    for key in expected:
        assert torch.equal(pair[key], expected[key]), key
    caption = processor.captioning("a photo", images=[left])
    assert torch.equal(caption["img_feats"], processor.captioning("a photo", regions=records[:1])["img_feats"])


def test_bad_detector_inputs_name_the_fix(tokenizer):
    processor = make_processor(tokenizer)
    with pytest.raises(ValueError, match="detector_name_or_path"):
        processor("a question", images=torch.zeros(8, 8, 3, dtype=torch.uint8).numpy())
    with pytest.raises(ValueError, match="not both"):
        make_processor(tokenizer, lambda images: []).caption_prompt(images=[Path("x.png")], regions=[{}])
    with pytest.raises(ValueError, match="callable"):
        make_processor(tokenizer, detector="folder")
    with pytest.raises(ValueError, match="2 images"):
        make_processor(tokenizer, lambda images: []).detect([torch.zeros(4, 4, 3).numpy()] * 2)
    with pytest.raises(FileNotFoundError, match="detector"):
        load_detector("no-such-detector-folder", model_folder=None)
