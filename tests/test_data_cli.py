"""Command line entry point and the raw-images path (a fake detector written here stands in for an adapter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from datasets import load_dataset
from PIL import Image
from support.data import coco_world, write_vqa

from oscar_hf.data import BadRowError, CaptionBuilder, ParquetRegionSource, build_dataset
from oscar_hf.data.cli import main
from oscar_hf.data.raw_images import ImageRegionsBuilder
from oscar_hf.data.regions import box_geometry


class FakeDetector:
    """Two regions per image; 2048-d features = the mean pixel value, so rows are traceable to images."""

    def __init__(self, feature_width: int = 2048) -> None:
        self.feature_width = feature_width
        self.calls: list[int] = []

    def __call__(self, images: list) -> list[dict]:
        self.calls.append(len(images))
        results = []
        for image in images:
            width, height = image.size
            value = float(np.asarray(image).mean()) / 255.0
            results.append(
                {
                    "boxes": np.array([[0, 0, width / 2, height / 2], [width / 4, height / 4, width, height]]),
                    "labels": ["cat", "red car"],
                    "scores": np.array([0.9, 0.4]),
                    "features": np.full((2, self.feature_width), value, dtype=np.float32),
                }
            )
        return results


def make_fake_detector(feature_width: int = 2048) -> FakeDetector:
    """Factory the CLI imports through `--detector test_data_cli:make_fake_detector`."""
    return FakeDetector(feature_width)


def write_images(folder, count=3):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        shade = 40 * (index + 1)
        Image.new("RGB", (64 + 16 * index, 48), (shade, shade, shade)).save(folder / f"photo{index}.png")
    captions = [{"image_id": f"photo{i}", "id": i, "caption": f"a grey photo number {i}"} for i in range(count)]
    (folder.parent / "captions.json").write_text(json.dumps(captions))
    return folder.parent / "captions.json"


def test_detect_writes_regions_with_box_dims(tmp_path):
    write_images(tmp_path / "images")
    detector = FakeDetector()
    builder = ImageRegionsBuilder(tmp_path / "images", detector=detector, batch_size=2)
    summary = build_dataset(builder, tmp_path / "regions", progress=False)
    assert summary.rows == {"train": 3} and detector.calls == [2, 1]
    rows = list(load_dataset(str(tmp_path / "regions"), split="train"))
    assert [r["image_id"] for r in rows] == ["photo0", "photo1", "photo2"]
    row = rows[1]
    boxes = np.array([[0, 0, 40, 24], [20, 12, 80, 48]], dtype=np.float32)
    assert (row["image_width"], row["image_height"]) == (80, 48) and row["tags"] == ["cat", "red car"]
    features = np.asarray(row["img_feats"])
    assert features.shape == (2, 2054)
    np.testing.assert_allclose(features[:, :2048], 80 / 255, atol=1e-3)
    np.testing.assert_allclose(features[:, 2048:], box_geometry(boxes, 80, 48), atol=1e-3)
    np.testing.assert_allclose(np.asarray(row["boxes"]), boxes)


def test_raw_images_to_caption_dataset(tmp_path):
    captions = write_images(tmp_path / "images")
    build_dataset(
        ImageRegionsBuilder(tmp_path / "images", detector=FakeDetector()), tmp_path / "regions", progress=False
    )
    builder = CaptionBuilder(ParquetRegionSource(tmp_path / "regions"), [(captions, "train")])
    build_dataset(builder, tmp_path / "caption", progress=False)
    rows = list(load_dataset(str(tmp_path / "caption"), split="train"))
    assert [(r["image_id"], r["caption"]) for r in rows] == [
        (f"photo{i}", f"a grey photo number {i}") for i in range(3)
    ]
    np.testing.assert_allclose(np.asarray(rows[2]["img_feats"])[:, 0], 120 / 255, atol=1e-3)


def test_unreadable_image_is_named_and_skippable(tmp_path):
    write_images(tmp_path / "images")
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    builder = ImageRegionsBuilder(tmp_path / "images", detector=FakeDetector())
    with pytest.raises(BadRowError, match=r"broken\.png, id 'broken': cannot read the image"):
        build_dataset(builder, tmp_path / "strict", progress=False)
    summary = build_dataset(builder, tmp_path / "lenient", skip_bad_rows=True, progress=False)
    assert summary.rows == {"train": 3} and summary.bad_rows == {"image": 1}


def test_detector_output_mismatch_is_an_error(tmp_path):
    write_images(tmp_path / "images", count=1)

    def bad(images):
        return [{"boxes": np.zeros((2, 4)), "labels": ["a"], "scores": [1.0, 1.0], "features": np.zeros((2, 2048))}]

    with pytest.raises(BadRowError, match="2 boxes, 2 features, 2 scores, 1 tags"):
        build_dataset(ImageRegionsBuilder(tmp_path / "images", detector=bad), tmp_path / "o", progress=False)


def test_cli_build_vqa_and_errors(tmp_path, capsys):
    world = coco_world(tmp_path / "src")
    questions, annotations = write_vqa(world.root)
    (world.root / "vocab.txt").write_text("2\nyes\nno\ndog\n")
    for lineidx in world.root.glob("*.lineidx"):
        lineidx.unlink()
    assert main(["index", str(world.root / "train.feature.tsv"), str(world.root / "train.label.tsv")]) == 0
    assert (world.root / "train.label.lineidx").is_file()
    capsys.readouterr()
    argv = [
        "build",
        "vqa",
        "--features",
        str(world.root / "train.feature.tsv"),
        "--labels",
        str(world.root / "train.label.tsv"),
        "--annotations",
        f"train={questions},{annotations}",
        "--answer-vocab",
        str(world.root / "vocab.txt"),
        "--out",
        str(tmp_path / "vqa"),
        "--no-progress",
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == {"train": 3} and report["bad_rows"] == {}
    assert load_dataset(str(tmp_path / "vqa"), split="train")[0]["labels"] == pytest.approx([1.0, 0.3, 0.6, 0.0])
    # Corrupt a feature row: exit code 2 and the reason names file, line and id; --skip-bad-rows counts it.
    path = world.root / "train.feature.tsv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-5]
    path.write_text("\n".join(lines) + "\n")
    assert main(["index", str(path)]) == 0
    capsys.readouterr()
    assert main([*argv[:-3], "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "train.feature.tsv, line 3, id '103'" in capsys.readouterr().err
    assert main([*argv[:-3], "--out", str(tmp_path / "skip"), "--no-progress", "--skip-bad-rows"]) == 0
    assert json.loads(capsys.readouterr().out)["bad_rows"] == {"base64": 1}


def test_cli_raw_images_caption_resumes(tmp_path, capsys):
    captions = write_images(tmp_path / "images")
    argv = [
        "build",
        "caption",
        "--images",
        str(tmp_path / "images"),
        "--detector",
        "test_data_cli:make_fake_detector",
        "--annotations",
        f"train={captions}",
        "--out",
        str(tmp_path / "caption"),
        "--rows-per-shard",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == {"train": 3}
    assert main(argv) == 0  # a rerun resumes: nothing to detect or write again
    assert json.loads(capsys.readouterr().out)["shards_resumed"] == 2


def test_python_dash_m_entry_point(tmp_path):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "oscar_hf.data", "build", "vqa", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 2 and "build vqa needs --annotations" in result.stderr
