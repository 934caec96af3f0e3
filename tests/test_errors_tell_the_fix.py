"""Errors that tell the fix: a missing extra names the extra, a missing checkpoint is reported as such.

Missing libraries are simulated in a fresh interpreter: a meta-path finder refuses the module and its
submodules, and the top-level name is set to None in `sys.modules`, so `importlib.util.find_spec` (which
transformers uses to probe optional packages) answers "not installed" as it would without the package.
"""

from __future__ import annotations

import sys

import pytest
from support import REPO_ROOT, run_isolated
from support.recipes import tiny_overrides, tokenizer_folder, write_caption_data


sys.path.insert(0, str(REPO_ROOT / "recipes"))
import caption  # noqa: E402


BLOCK_MODULES = """
import importlib.abc, json, sys
BLOCKED = set(sys.argv[1].split(","))

class BlockModules(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, BlockModules())
for name in BLOCKED:
    sys.modules[name] = None  # find_spec(name) -> None: "not installed"
try:
    exec(sys.argv[2])
    error = None
except Exception as caught:
    error = {"type": type(caught).__name__, "message": str(caught)}
print("RESULT " + json.dumps(error))
"""

RECIPE_HELP = (
    "import runpy, sys; sys.argv = ['vqa.py', '--help']; "
    f"runpy.run_path({str(REPO_ROOT / 'recipes' / 'vqa.py')!r}, run_name='__main__')"
)


@pytest.mark.parametrize(
    ("blocked", "statement", "extra"),
    [
        ("datasets", "import oscar_hf.data", "data"),
        ("pyarrow", "import oscar_hf.data", "data"),
        ("accelerate", RECIPE_HELP, "train"),  # a recipe imports oscar_hf.training first
        ("evaluate", "from oscar_hf.metrics import load_metric; load_metric('vqa_accuracy')", "metrics"),
        (
            "pycocoevalcap",
            "from oscar_hf.metrics import coco_caption_scores\n"
            "coco_caption_scores(['a dog'], [['a dog on a couch']], backend='official')",
            "metrics",
        ),
        (
            "timm",
            "from oscar_hf.processors.detection_oscar import RoIAlignFeatureExtractor\n"
            "RoIAlignFeatureExtractor('resnet18')",
            "detect",
        ),
    ],
    ids=[
        "data-datasets",
        "data-pyarrow",
        "train-recipe",
        "metrics-evaluate",
        "metrics-coco",
        "detect",
    ],
)
@pytest.mark.slow  # a fresh interpreter per case
def test_a_missing_extra_names_the_extra(blocked, statement, extra, tmp_path):
    error = run_isolated(BLOCK_MODULES, blocked, statement, workdir=tmp_path, block_package=False, timeout=300)
    assert error is not None, f"{statement!r} ran although {blocked} was blocked"
    assert f'pip install "oscar-hf[{extra}]"' in error["message"], error
    assert f"`{blocked}`" in error["message"] or blocked == "pyarrow", error  # names what is missing


# ---------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def caption_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("caption")
    return write_caption_data(root, num_images=4), tokenizer_folder(root)


def caption_args(caption_data, out, *extra: str) -> list[str]:
    dataset, _ = caption_data
    return [
        "--train_data", str(dataset), "--output_dir", str(out), "--config_overrides", tiny_overrides(),
        "--max_train_steps", "1", "--report_to", "none", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "checkpoint",
    ["no-such-folder/checkpoint-29-66420", "org/oscar-base-not-cached"],
    ids=["path", "hub-id-offline"],
)
@pytest.mark.parametrize("with_tokenizer", [False, True], ids=["no-tokenizer-flag", "tokenizer-flag"])
def test_a_missing_checkpoint_is_reported_as_such_and_writes_nothing(
    caption_data, tmp_path, checkpoint, with_tokenizer, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    extra = ["--tokenizer_name_or_path", str(caption_data[1])] if with_tokenizer else []
    with pytest.raises(FileNotFoundError) as caught:
        caption.main(caption_args(caption_data, out, "--model_name_or_path", checkpoint, *extra))
    message = str(caught.value)
    assert "Pre-trained checkpoint not found" in message and f"--model_name_or_path={checkpoint!r}" in message
    assert "tokenizer" not in message.lower()  # not misreported as a missing tokenizer folder
    assert "oscar-hf convert" in message  # the fix: where real weights come from
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_a_missing_tokenizer_folder_names_its_argument(caption_data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="--tokenizer_name_or_path='no-such-tokenizer-folder/vocab'"):
        caption.main(caption_args(caption_data, out, "--tokenizer_name_or_path", "no-such-tokenizer-folder/vocab"))
    assert not out.exists()


def test_a_file_given_as_checkpoint_asks_for_its_folder(caption_data, tmp_path):
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file, not a checkpoint folder"):
        caption.main(caption_args(caption_data, tmp_path / "run", "--model_name_or_path", str(weights)))
    assert not (tmp_path / "run").exists()
