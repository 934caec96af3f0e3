"""Jobs killed with SIGKILL on real subprocesses resume to the same result as uninterrupted runs.

- Training: a pre-training run killed inside `save_state` (a half-saved step) or in the middle of an
  optimizer step resumes with `--resume_from_checkpoint latest` from the last complete state and
  ends with weights identical to an uninterrupted run.
- Builds and feature extraction: killed mid-way and rerun, they finish with the same dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from datasets import load_dataset
from PIL import Image
from safetensors.torch import load_file
from support import REPO_ROOT
from support.data import coco_world
from support.recipes import tiny_overrides, tokenizer_folder, write_pretrain_corpus

from oscar_hf.data.cli import main as data_main
from oscar_hf.data.writer import partial_folder
from oscar_hf.training import latest_checkpoint


pytestmark = pytest.mark.slow

# Runs a recipe or the data CLI with one hook that writes MARKER and then sleeps where the test
# wants the process killed. The hooks live here, not in the package.
RUNNER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path

    marker, hook, target, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]

    def hang():
        marker.write_text(hook)
        time.sleep(600)

    if hook == "save_state":  # inside Accelerator.save_state of the state named `target`, after writing it
        import accelerate
        original = accelerate.Accelerator.save_state
        def save_state(self, output_dir=None, **kwargs):
            result = original(self, output_dir, **kwargs)
            if Path(output_dir).name == target:
                hang()
            return result
        accelerate.Accelerator.save_state = save_state
    elif hook == "optimizer_step":  # inside optimizer step number `target`, before the update
        from accelerate.optimizer import AcceleratedOptimizer
        original, calls = AcceleratedOptimizer.step, [0]
        def step(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == int(target):
                hang()
            return original(self, *args, **kwargs)
        AcceleratedOptimizer.step = step
    elif hook == "unit":  # while the builder turns the unit of image `target` into rows
        from oscar_hf.data import builders
        original = builders.CaptionBuilder.unit_rows
        def unit_rows(self, unit):
            if unit[0].image_id == target:
                hang()
            yield from original(self, unit)
        builders.CaptionBuilder.unit_rows = unit_rows
    elif hook == "detector":  # inside the detector's call number `target`
        import kill_detector
        kill_detector.HANG_AT = int(target)
        kill_detector.hang = hang

    if argv[0] == "pretrain":
        sys.path.insert(0, os.environ["RECIPES_DIR"])
        import pretrain
        pretrain.main(argv[1:])
    else:
        from oscar_hf.data.cli import main
        sys.exit(main(argv))
    """
)

DETECTOR_MODULE = textwrap.dedent(
    """
    import numpy as np

    HANG_AT = None
    hang = None

    class Detector:
        calls = 0

        def __call__(self, images):
            Detector.calls += 1
            if HANG_AT is not None and Detector.calls == HANG_AT:
                hang()
            out = []
            for image in images:
                width, height = image.size
                value = float(np.asarray(image).mean()) / 255.0
                out.append({
                    "boxes": np.array([[0, 0, width / 2, height / 2], [width / 4, height / 4, width, height]]),
                    "labels": ["cat", "dog"],
                    "scores": np.array([0.9, 0.5]),
                    "features": np.full((2, 16), value, dtype=np.float32),
                })
            return out

    def make():
        return Detector()
    """
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The killed runs use one thread (OMP_NUM_THREADS=1); the in-process runs they are compared with
    bit for bit must too, since the thread count changes the summation order of the kernels."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def kill_when_hooked(tmp_path: Path, hook: str, target: str, argv: list[str], timeout: float = 300) -> None:
    """Start the runner, wait until it reaches the hook, SIGKILL it."""
    runner, marker = tmp_path / "runner.py", tmp_path / f"marker-{hook}"
    runner.write_text(RUNNER)
    (tmp_path / "kill_detector.py").write_text(DETECTOR_MODULE)
    env = {
        **os.environ,
        "RECIPES_DIR": str(REPO_ROOT / "recipes"),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    process = subprocess.Popen(
        [sys.executable, str(runner), str(marker), hook, target, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if process.poll() is not None:
                output = process.stdout.read().decode(errors="replace")
                pytest.fail(f"the run ended (status {process.returncode}) before reaching {hook}:\n{output[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the run did not reach {hook} within {timeout} s")
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -------------------------------------------------------------------------------------------- training


def pretrain_argv(data: Path, tokenizer: Path, out: Path, *extra: str) -> list[str]:
    return ["--train_data", str(data), "--tokenizer_name_or_path", str(tokenizer),
            "--config_overrides", tiny_overrides(num_contrast_classes=3), "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--max_img_seq_length", "10", "--report_to", "none",
            "--seed", "3", "--max_train_steps", "6", "--warmup_steps", "2", "--checkpointing_steps", "2",
            *extra]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The tiny corpus, its tokenizer and the weights of a run that was never killed."""
    root = tmp_path_factory.mktemp("pretrain")
    data, tokenizer = write_pretrain_corpus(root), tokenizer_folder(root)
    sys.path.insert(0, str(REPO_ROOT / "recipes"))
    import pretrain

    full, _ = pretrain.main(pretrain_argv(data, tokenizer, root / "full"))
    return data, tokenizer, load_file(full / "model.safetensors")


@pytest.mark.parametrize(
    "hook, target, last_complete",
    [
        ("save_state", ".step_4.partial", "step_2"),  # killed while the step-4 state was being saved
        ("optimizer_step", "5", "step_4"),  # killed between checkpoints, in the middle of step 5
    ],
)
def test_training_killed_resumes_to_identical_weights(uninterrupted, tmp_path, hook, target, last_complete):
    import pretrain

    data, tokenizer, expected = uninterrupted
    run = tmp_path / "killed"
    kill_when_hooked(tmp_path, hook, target, ["pretrain", *pretrain_argv(data, tokenizer, run)])
    checkpoints = run / "checkpoints"
    if hook == "save_state":
        assert (checkpoints / ".step_4.partial").is_dir()  # the state being saved when the process died
    assert latest_checkpoint(run) == checkpoints / last_complete  # never a half-saved one
    assert not (run / "final").exists()

    resumed, result = pretrain.main(pretrain_argv(data, tokenizer, run, "--resume_from_checkpoint", "latest"))
    assert result.global_step == 6
    assert not list(checkpoints.glob(".step_*.partial"))  # a leftover is cleared by the next save
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_2", "step_4", "step_6"]
    got = load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0, msg=key)


# ------------------------------------------------------------------------------ builds and extraction


def build_argv(world_root: Path, out: Path) -> list[str]:
    return ["build", "caption", "--features", str(world_root / "train.feature.tsv"), "--labels",
            str(world_root / "train.label.tsv"), "--annotations", str(world_root / "dataset_coco.json"),
            "--out", str(out), "--rows-per-shard", "1", "--no-progress"]  # fmt: skip


def assert_same_dataset(a: Path, b: Path) -> None:
    first, second = load_dataset(str(a)), load_dataset(str(b))
    assert sorted(first) == sorted(second)
    for split in first:
        assert first[split].to_dict() == second[split].to_dict(), split


def test_build_killed_mid_way_finishes_with_the_same_dataset(tmp_path):
    world = coco_world(tmp_path / "src")
    inputs = snapshot(world.root)
    assert data_main(build_argv(world.root, tmp_path / "reference")) == 0

    out = tmp_path / "killed"
    kill_when_hooked(tmp_path, "unit", "105", build_argv(world.root, out))  # in the 5th of 6 shards
    assert not out.exists()  # nothing that load_dataset(out) could mistake for the dataset
    done = sorted(p.name for p in (partial_folder(out) / "data").glob("*.parquet"))
    assert len(done) == 4, done

    assert data_main(build_argv(world.root, out)) == 0
    assert not partial_folder(out).exists()
    assert_same_dataset(out, tmp_path / "reference")
    assert snapshot(world.root) == inputs


def test_feature_extraction_killed_mid_way_finishes_with_the_same_dataset(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(5):
        Image.new("RGB", (40 + 8 * index, 32), (30 * index, 20, 200 - 30 * index)).save(images / f"p{index}.png")
    inputs = snapshot(images)

    def detect_argv(out: Path) -> list[str]:
        return ["detect", "--images", str(images), "--detector", "kill_detector:make", "--batch-size", "1",
                "--rows-per-shard", "2", "--feature-dim", "22", "--out", str(out), "--no-progress"]  # fmt: skip

    sys.path.insert(0, str(tmp_path))
    (tmp_path / "kill_detector.py").write_text(DETECTOR_MODULE)
    try:
        assert data_main(detect_argv(tmp_path / "reference")) == 0
        out = tmp_path / "killed"
        kill_when_hooked(tmp_path, "detector", "4", detect_argv(out))  # in the 2nd of 3 shards
        assert not out.exists()
        assert len(list((partial_folder(out) / "data").glob("*.parquet"))) == 1
        assert data_main(detect_argv(out)) == 0
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("kill_detector", None)
    assert_same_dataset(out, tmp_path / "reference")
    assert json.loads((out / "oscar_build.json").read_text())["plan"]["task"] == "regions"
    assert snapshot(images) == inputs
