"""`python -m oscar_hf.data detect --detector VINVL_FOLDER`: regions datasets and the original files, at scale.

The detector is the reduced fixture detector (`weights.pth`, 128-d features, so region vectors are
134-d) converted at the fixture's input size; the images are tiny random PNGs. One process, two gloo
processes (`torch.distributed.run` with `ACCELERATE_USE_CPU=true`, as in `test_recipe_distributed.py`)
and a run killed mid-way then restarted must all write the same dataset.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from support import fixture_folder


pytest.importorskip("torchvision", reason="the VinVL detector needs torchvision (RoIAlign, NMS)")

from oscar_hf.convert_vinvl_detector import convert  # noqa: E402
from oscar_hf.data import TsvFile, TsvRegionSource, box_geometry  # noqa: E402
from oscar_hf.data.cli import main  # noqa: E402
from oscar_hf.processors.detection_oscar import VinVLDetectorAdapter  # noqa: E402


WEIGHTS = fixture_folder("VINVL_DETECTOR_FIXTURES", "vinvl_detector") / "weights.pth"
FEATURE_DIM = 128 + 6
NUM_IMAGES = 6
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"no reduced VinVL detector weights at {WEIGHTS}")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """The converted detector, an image folder (one image in a subfolder) and a one-process build of it."""
    from PIL import Image

    root = tmp_path_factory.mktemp("vinvl_detect")
    detector = convert(WEIGHTS, root / "detector", min_size_test=160, max_size_test=256)
    images = root / "images"
    rng = np.random.default_rng(0)
    for i in range(NUM_IMAGES):
        folder = images / ("sub" if i == NUM_IMAGES - 1 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (30 + 7 * i, 48, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    one = root / "one"
    assert main([*detect_args(detector, images, one), "--original-files"]) == 0
    return {"root": root, "detector": detector, "images": images, "one": one}


def detect_args(detector: Path, images: Path, out: Path) -> list[str]:
    return [
        "detect", "--detector", str(detector), "--images", str(images), "--out", str(out),
        "--feature-dim", str(FEATURE_DIM), "--rows-per-shard", "1", "--batch-size", "1", "--no-progress",
    ]  # fmt: skip


def rows(folder: Path) -> list[dict]:
    from datasets import load_dataset

    dataset = load_dataset("parquet", data_files=str(folder / "data" / "*.parquet"), split="train")
    return list(dataset.with_format("numpy"))


def assert_same_dataset(actual: Path, expected: Path) -> None:
    got, want = rows(actual), rows(expected)
    assert [r["image_id"] for r in got] == [r["image_id"] for r in want]
    for a, b in zip(got, want):
        for key in b:
            assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), (b["image_id"], key)


def run_cli(args: list[str], **popen) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)  # fmt: skip


def test_one_process_writes_the_detector_regions_and_the_original_files(world):
    from PIL import Image

    built = rows(world["one"])
    assert [r["image_id"] for r in built] == [f"img{i}" for i in range(NUM_IMAGES - 1)] + ["sub/img5"]
    adapter = VinVLDetectorAdapter.from_pretrained(world["detector"])
    paths = sorted(p for p in world["images"].rglob("*.png"))
    records = adapter([Image.open(p).convert("RGB") for p in paths])
    features_tsv = TsvFile(world["one"] / "original" / "features.tsv")
    labels_tsv = TsvFile(world["one"] / "original" / "labels.tsv")
    predictions_tsv = TsvFile(world["one"] / "original" / "predictions.tsv")
    assert len(features_tsv) == len(labels_tsv) == len(predictions_tsv) == NUM_IMAGES
    for index, (row, record) in enumerate(zip(built, records)):
        height, width = record["image_size"]
        geometry = torch.from_numpy(box_geometry(record["boxes"].numpy(), width, height))
        vectors = torch.cat([record["features"], geometry], -1)
        assert row["img_feats"].shape == (len(record["boxes"]), FEATURE_DIM)
        np.testing.assert_array_equal(row["img_feats"], vectors.numpy().astype(np.float16))
        assert list(row["tags"]) == record["tags"]
        assert (row["image_width"], row["image_height"]) == (width, height)
        # The original files keep float32: Oscar's feature TSV and scene_graph_benchmark's predictions.tsv.
        key, count, blob = features_tsv.read(index)
        assert key == row["image_id"] and int(count) == len(record["boxes"])
        decoded = np.frombuffer(base64.b64decode(blob), dtype=np.float32).reshape(int(count), FEATURE_DIM)
        np.testing.assert_array_equal(decoded, vectors.numpy())
        key, cell = predictions_tsv.read(index)
        objects = json.loads(cell)["objects"]
        assert [o["class"] for o in objects] == record["tags"]
        first = np.frombuffer(base64.b64decode(objects[0]["feature"]), dtype=np.float32)
        np.testing.assert_array_equal(first, record["features"][0].numpy())
        assert objects[0]["attributes"] == record["attributes"][0]
        assert (json.loads(cell)["image_h"], json.loads(cell)["image_w"]) == (height, width)
        labels = json.loads(labels_tsv.read(index)[1])
        assert (labels["image_h"], labels["image_w"]) == (height, width) and len(labels["objects"]) == int(count)
    # The original-format files read back through the builders' TSV reader.
    original = world["one"] / "original"
    source = TsvRegionSource([original / "features.tsv"], labels=[original / "labels.tsv"], feature_dim=FEATURE_DIM)
    again = source.get(built[-1]["image_id"])
    np.testing.assert_array_equal(again.features.astype(np.float16), built[-1]["img_feats"])
    assert again.tags == list(built[-1]["tags"])


@pytest.mark.slow
def test_two_processes_write_the_same_dataset(world):
    out = world["root"] / "two"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    process = run_cli([*launch, "oscar_hf.data", *detect_args(world["detector"], world["images"], out),
                       "--original-files"])  # fmt: skip
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-4000:]
    assert "process 1/2 ran the detector on 3 images" in stderr, stderr[-3000:]
    assert json.loads(stdout[stdout.index("{") :])["rows"] == {"train": NUM_IMAGES}  # one report, the main's
    assert_same_dataset(out, world["one"])
    for name in ("predictions.tsv", "features.tsv", "labels.tsv", "features.lineidx"):
        assert (out / "original" / name).read_bytes() == (world["one"] / "original" / name).read_bytes(), name


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_dataset(world):
    out = world["root"] / "killed"
    work = out.parent / f".{out.name}.oscar-partial"
    args = [sys.executable, "-m", "oscar_hf.data", *detect_args(world["detector"], world["images"], out)]
    process = run_cli(args)
    deadline = time.monotonic() + 300
    while not (work / ".build" / "train-00001-of-00006.json").is_file():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the first shards never appeared"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    done = len(list((work / ".build").glob("train-*.json")))
    assert not out.exists() and 2 <= done < NUM_IMAGES, done  # killed mid-way: nothing in place yet
    assert main(detect_args(world["detector"], world["images"], out)) == 0
    summary = json.loads((out / ".build" / "summary-node0.json").read_text())
    assert summary["shards_resumed"] == done and summary["shards_written"] == NUM_IMAGES - done
    assert_same_dataset(out, world["one"])


def test_bad_detector_arguments_are_one_line_errors(world, capsys):
    assert main(["detect", "--images", str(world["images"]), "--out", str(world["root"] / "x")]) == 2
    assert "--detector" in capsys.readouterr().err
    missing = world["root"] / "no-such-folder"
    out = world["root"] / "y"
    assert main(["detect", "--detector", str(missing), "--images", str(world["images"]), "--out", str(out)]) == 2
    assert "detector folder" in capsys.readouterr().err
    assert not out.exists() and not (out.parent / ".y.oscar-partial").exists()  # failed before writing anything
