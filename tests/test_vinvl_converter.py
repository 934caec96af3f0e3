"""The VinVL detector converter: original checkpoint layouts in, a self-contained remote-code folder out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support import fixture_folder, run_isolated


safetensors_torch = pytest.importorskip("safetensors.torch", reason="the fixtures are safetensors files")

from oscar_hf.convert_vinvl_detector import (  # noqa: E402
    convert,
    convert_state_dict,
    load_original_state_dict,
    main,
)
from oscar_hf.processors.configuration_vinvl import VinVLDetectorConfig  # noqa: E402
from oscar_hf.processors.modeling_vinvl import VinVLDetector  # noqa: E402


FIXTURES = fixture_folder("VINVL_DETECTOR_FIXTURES", "vinvl_detector")
WEIGHTS = FIXTURES / "weights.pth"
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"no VinVL detector fixture weights at {WEIGHTS}")
# The fixture's reduced input size; everything else of the extract case is the converter's default.
TINY_INPUT = {"min_size_test": 160, "max_size_test": 256}


@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    return torch.load(WEIGHTS, map_location="cpu", weights_only=True)["model"]


def write_label_map(path: Path, num_classes: int, num_attributes: int) -> Path:
    """A label map in the layout of VG-SGG-dicts-vgoi6-clipped.json (1-based ids, 0 reserved)."""
    path.write_text(
        json.dumps(
            {
                "label_to_idx": {f"object{i}": i for i in range(1, num_classes)},
                "idx_to_label": {str(i): f"object{i}" for i in range(1, num_classes)},
                "attribute_to_idx": {f"attr{i}": i for i in range(1, num_attributes)},
                "idx_to_attribute": {str(i): f"attr{i}" for i in range(1, num_attributes)},
                "predicate_to_idx": {"on": 1},
            }
        )
    )
    return path


@pytest.mark.parametrize("layout", ["as_is", "flat", "module_prefixed", "flat_module_prefixed"])
def test_checkpoint_layouts(tmp_path, original, layout):
    flat = layout.startswith("flat")
    tensors = {("module." + k if "module" in layout else k): v for k, v in original.items()}
    path = tmp_path / "ckpt.pth"
    torch.save(tensors if flat else {"model": tensors, "iteration": 5}, path)
    if layout == "as_is":
        path = WEIGHTS
    state_dict = load_original_state_dict(path)
    assert set(state_dict) == set(original)
    config, native = convert_state_dict(state_dict)
    assert config.num_classes == 51 and config.num_attributes == 21
    assert config.stage_block_counts == [3, 8, 36] and config.num_groups == 4 and config.width_per_group == 4
    assert not any(k.startswith("attribute.feature_extractor.") for k in native)
    model = VinVLDetector(config)
    model.load_state_dict(native, strict=True)


@pytest.mark.parametrize(
    "edit, key",
    [
        ("missing", "backbone.body.layer3.17.conv2.weight"),
        ("extra", "roi_heads.mask.predictor.weight"),
        ("shape", "rpn.head.bbox_pred.bias"),
        ("duplicate_differs", "attribute.feature_extractor.head.layer4.1.conv1.weight"),
    ],
)
def test_bad_checkpoints_name_the_key(original, edit, key):
    tensors = dict(original)
    if edit == "missing":
        del tensors[key]
    elif edit == "extra":
        tensors[key] = torch.zeros(3)
    elif edit == "shape":
        tensors[key] = torch.zeros(61)
    else:
        tensors[key] = tensors[key] + 1
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        convert_state_dict(tensors)


def test_full_size_layout_matches_the_original():
    """The default (real-size) model on the meta device has the original's keys and shapes, minus the duplicates."""
    layout = json.loads((FIXTURES / "full_size_state_dict.json").read_text())
    with torch.device("meta"):
        model = VinVLDetector(VinVLDetectorConfig())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    duplicates = layout["same_tensor_as"]
    expected = {k: v for k, v in layout["keys"].items() if k not in duplicates}
    assert ours == expected
    assert all(layout["keys"][k] == layout["keys"][twin] for k, twin in duplicates.items())
    assert sum(p.numel() for p in model.parameters()) == layout["parameters"]  # FrozenBN statistics are buffers


def test_label_map_fills_names_and_must_match(tmp_path):
    good = write_label_map(tmp_path / "labelmap.json", 51, 21)
    out = convert(WEIGHTS, tmp_path / "out", labelmap=good, **TINY_INPUT)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"]["0"] == "__background__" and config["id2label"]["7"] == "object7"
    assert config["attribute_names"][0] == "__no_attribute__" and config["attribute_names"][20] == "attr20"
    wrong = write_label_map(tmp_path / "wrong.json", 1595, 21)
    with pytest.raises(ValueError, match=r"1594 classes .* has 51"):
        convert(WEIGHTS, tmp_path / "out2", labelmap=wrong)
    assert not (tmp_path / "out2").exists()


def test_output_folder_rules(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty; pass --overwrite"):
        convert(WEIGHTS, out)
    with pytest.raises(ValueError, match="holds the checkpoint"):
        convert(WEIGHTS, WEIGHTS.parent)
    main([str(WEIGHTS), str(out), "--overwrite"])
    assert not (out / "keep.txt").exists()
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_vinvl.py"} <= {
        p.name for p in out.iterdir()
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "staging folder left behind"


LOAD_AND_RUN = """
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel
torch.set_num_threads(1)
folder, fixtures = sys.argv[1], sys.argv[2]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = load_file(f"{fixtures}/inputs.safetensors")
expected = load_file(f"{fixtures}/extract/outputs.safetensors")
images = [inputs[f"img{i}/image_rgb_uint8"].numpy() for i in range(3)]
out = model(**processor(images))
report = {"module": type(model).__module__, "labels_equal": [], "max_feature_diff": [], "max_box_diff": []}
for i in range(3):
    report["labels_equal"].append(torch.equal(out.labels[i], expected[f"img{i}/labels"]))
    report["max_feature_diff"].append((out.region_features[i] - expected[f"img{i}/box_features"]).abs().max().item())
    report["max_box_diff"].append((out.boxes[i] - expected[f"img{i}/boxes_orig"]).abs().max().item())
report["tags"] = out.class_names[0][:3]
print("RESULT " + json.dumps(report))
"""


@pytest.mark.remote_code
@pytest.mark.slow
def test_converted_folder_loads_without_the_package(tmp_path):
    labelmap = write_label_map(tmp_path / "labelmap.json", 51, 21)
    out = convert(WEIGHTS, tmp_path / "detector", labelmap=labelmap, **TINY_INPUT)
    report = run_isolated(LOAD_AND_RUN, str(out), str(FIXTURES), workdir=tmp_path / "run")
    assert report["module"].startswith("transformers_modules"), report
    assert all(report["labels_equal"]), report
    assert max(report["max_feature_diff"]) < 1e-4 and max(report["max_box_diff"]) < 1e-3, report
    assert all(tag.startswith("object") for tag in report["tags"]), report


def test_auto_class_registration(tmp_path):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    from oscar_hf.processors.image_processing_vinvl import VinVLImageProcessor
    from oscar_hf.processors.modeling_vinvl import register_vinvl_auto_classes

    register_vinvl_auto_classes()
    register_vinvl_auto_classes()  # harmless twice
    config = AutoConfig.for_model("vinvl_detector", stage_block_counts=(1, 1, 1), head_block_count=1)
    assert isinstance(AutoModel.from_config(config), VinVLDetector)
    config.save_pretrained(tmp_path)
    VinVLImageProcessor(min_size=160).save_pretrained(tmp_path)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), VinVLImageProcessor)
