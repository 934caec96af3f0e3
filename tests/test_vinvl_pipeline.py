"""A folder that carries a converted VinVL detector runs photo -> detector -> processor -> model by itself.

The detector is the reduced fixture detector (`weights.pth`, 128-d pooled features) converted with
the converter's defaults (the README extraction recipe) at the fixture's input size; the captioner is a
tiny random Oscar whose `img_feature_dim` is 128 + 6. The photo is scikit-image's astronaut.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
from support import TF457_TARGET, fixture_folder, run_isolated
from support.folders import real_tokenizer, sample_photos, tiny_pipeline_config
from support.folders import tiny_processor as folders_processor


pytest.importorskip("torchvision", reason="the VinVL detector needs torchvision (RoIAlign, NMS)")

from oscar_hf import OscarConfig, OscarForImageCaptioning, OscarForSequenceClassification  # noqa: E402
from oscar_hf.convert_vinvl_detector import convert  # noqa: E402
from oscar_hf.processors import OscarProcessor  # noqa: E402
from oscar_hf.processors.detection_oscar import VinVLDetectorAdapter  # noqa: E402
from oscar_hf.registration import PIPELINE_CODE_FILES, export_pipeline_folder  # noqa: E402


FIXTURES = fixture_folder("VINVL_DETECTOR_FIXTURES", "vinvl_detector")
WEIGHTS = FIXTURES / "weights.pth"
FEATURE_DIM = 128  # the reduced fixture detector's pooled width (the real one: 2048)
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"no reduced VinVL detector weights at {WEIGHTS}")


@functools.cache
def detector_folder(root: Path) -> Path:
    return convert(WEIGHTS, root / "vinvl-detector", min_size_test=160, max_size_test=256)


def tiny_config(tokenizer, **overrides) -> OscarConfig:
    return tiny_pipeline_config(tokenizer, feature_dim=FEATURE_DIM, **overrides)


def tiny_processor(tokenizer, **kwargs) -> OscarProcessor:
    return folders_processor(tokenizer, feature_dim=FEATURE_DIM, **kwargs)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vinvl_pipeline")


@pytest.fixture(scope="module")
def captioning_folder(root) -> Path:
    """A captioning folder exported with the VinVL detector saved into its `detector/`."""
    tokenizer = real_tokenizer()
    torch.manual_seed(0)
    model = OscarForImageCaptioning(tiny_config(tokenizer)).eval()
    detector = VinVLDetectorAdapter.from_pretrained(detector_folder(root))
    return export_pipeline_folder(model, tiny_processor(tokenizer), root / "captioning", detector=detector)


@pytest.fixture(scope="module")
def photo(root) -> Path:
    return sample_photos(root / "photos", ("astronaut",))[0]


def test_exported_folder_carries_the_detector_and_its_code(captioning_folder):
    detector = captioning_folder / "detector"
    for name in ("configuration_vinvl.py", "modeling_vinvl.py", "image_processing_vinvl.py", "model.safetensors"):
        assert (detector / name).is_file(), name
    config = json.loads((detector / "config.json").read_text())
    assert config["model_type"] == "vinvl_detector" and "AutoModel" in config["auto_map"]
    assert "AutoImageProcessor" in json.loads((detector / "preprocessor_config.json").read_text())["auto_map"]
    assert json.loads((captioning_folder / "processor_config.json").read_text())["detector_name_or_path"] == "detector"
    for name in PIPELINE_CODE_FILES:
        assert (captioning_folder / name).is_file(), name


PIPELINE_RUN = """
import json, sys
from transformers import pipeline
folder, photo = sys.argv[1], sys.argv[2]
captioner = pipeline(model=folder, trust_remote_code=True)
caption = captioner(photo, max_length=8)
detector = captioner.detector
regions = detector([__import__("PIL.Image").Image.open(photo).convert("RGB")])[0]
print("RESULT " + json.dumps({
    "caption": caption[0]["generated_text"],
    "adapter": type(detector).__module__,
    "model": type(detector.model).__module__,
    "num_regions": len(regions["features"]),
    "feature_dim": int(regions["features"].shape[1]),
    "tags": regions["tags"][:5],
}))
"""


TF457 = pytest.param(
    TF457_TARGET,
    id="transformers-4.57",
    marks=pytest.mark.skipif(
        not (TF457_TARGET / "transformers").is_dir(),
        reason=f"transformers 4.57 target dir missing at {TF457_TARGET} (.ci/run installs it; set OSCAR_TF457_TARGET)",
    ),
)


@pytest.mark.remote_code
@pytest.mark.slow
@pytest.mark.parametrize("extra_path", [pytest.param(None, id="installed"), TF457])
def test_pipeline_runs_the_vinvl_detector_without_the_package(captioning_folder, photo, root, extra_path):
    from transformers import pipeline

    workdir = root / f"isolated-{extra_path is not None}"
    report = run_isolated(PIPELINE_RUN, str(captioning_folder), str(photo), workdir=workdir, extra_path=extra_path)
    assert report["adapter"].startswith("transformers_modules"), report
    assert report["model"].startswith("transformers_modules"), report
    assert report["feature_dim"] == FEATURE_DIM and 10 <= report["num_regions"] <= 100, report
    # Same weights, same photo, greedy decoding: the same caption as with the package installed.
    local = pipeline(model=str(captioning_folder), trust_remote_code=True)
    assert local(str(photo), max_length=8)[0]["generated_text"] == report["caption"]
    assert local.detector([__import__("PIL.Image").Image.open(photo).convert("RGB")])[0]["tags"][:5] == report["tags"]


@pytest.mark.filterwarnings("ignore:The question:UserWarning")  # 24 text slots cannot hold the detector's tags
def test_folder_without_a_named_detector_defaults_to_its_detector_subfolder(root, photo):
    """A VQA folder whose processor names no detector, with a converted detector copied into `detector/`."""
    from transformers import pipeline

    tokenizer = real_tokenizer()
    torch.manual_seed(0)
    answers = ["yes", "no", "two"]
    model = OscarForSequenceClassification(
        tiny_config(tokenizer, num_labels=3, loss_type="bce", id2label=dict(enumerate(answers)))
    ).eval()
    folder = export_pipeline_folder(model, tiny_processor(tokenizer), root / "vqa")
    assert json.loads((folder / "processor_config.json").read_text()).get("detector_name_or_path") is None
    shutil.copytree(detector_folder(root), folder / "detector")
    answerer = pipeline(model=str(folder), trust_remote_code=True)
    result = answerer(str(photo), question="is there a person?", top_k=2)
    assert [r["answer"] in answers for r in result] == [True, True]
    # The folder's own (remote-code) adapter class, so compared by name.
    assert type(answerer.detector).__name__ == "VinVLDetectorAdapter"


def test_detections_are_drawn_with_their_attributes(root, photo):
    from PIL import Image

    from oscar_hf.processors.visualization import draw_detections

    image = Image.open(photo).convert("RGB")
    record = VinVLDetectorAdapter.from_pretrained(detector_folder(root))([image])[0]
    assert len(record["attributes"]) == len(record["boxes"])
    drawn = draw_detections(image, record, text="a caption", max_boxes=5)
    assert drawn.width == image.width and drawn.height > image.height  # the text band below
    without = draw_detections(image, {**record, "attributes": None}, text="a caption", max_boxes=5)
    assert drawn.tobytes() != without.tobytes()  # the attribute names are part of the labels
    with pytest.raises(ValueError, match="attribute lists"):
        draw_detections(image, {**record, "attributes": record["attributes"][:1]})
