"""Nothing lost: every input byte-identical after failed, overwritten or refused builds and conversions,
and a failed build leaves nothing that loads as a dataset."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from datasets import load_dataset
from support.data import coco_world

from oscar_hf.convert_original_checkpoint import convert_checkpoint
from oscar_hf.data import CaptionBuilder, TsvRegionSource, build_dataset
from oscar_hf.data.cli import main
from oscar_hf.data.writer import MANIFEST, partial_folder


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def loads_as_dataset(folder: Path) -> bool:
    try:
        load_dataset(str(folder))
    except Exception:  # noqa: BLE001 - any failure means "not a dataset"
        return False
    return True


@pytest.fixture
def project(tmp_path):
    """The layout of the issue: raw files kept in project/data/."""
    coco_world(tmp_path / "project" / "data")
    return tmp_path / "project"


def argv(project: Path, out: Path, *extra: str) -> list[str]:
    data = project / "data"
    return ["build", "caption", "--features", str(data / "train.feature.tsv"), "--labels",
            str(data / "train.label.tsv"), "--annotations", str(data / "dataset_coco.json"), "--out", str(out),
            "--no-progress", *extra]  # fmt: skip


@pytest.mark.parametrize("out", ["project", "project/data", "project/data/train.feature.tsv"])
def test_out_that_equals_or_contains_an_input_is_refused_even_with_overwrite(project, capsys, out):
    before = snapshot(project)
    target = project.parent / out
    assert main(argv(project, target, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "build input" in err and str(target) in err and "Fix:" in err
    assert snapshot(project) == before  # nothing deleted, nothing added


def test_overwrite_removes_only_what_our_build_listed(project, tmp_path, capsys):
    out = tmp_path / "built"
    assert main(argv(project, out)) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert "data/train-00000-of-00001.parquet" in manifest["files"] and MANIFEST in manifest["files"]
    (out / "notes.txt").write_text("my notes")  # a file of the user's, not ours
    (out / "data" / "mine.txt").write_text("also mine")
    inputs = snapshot(project)
    assert main(argv(project, out, "--overwrite", "--caption-rows", "image")) == 0
    assert (out / "notes.txt").read_text() == "my notes" and (out / "data" / "mine.txt").read_text() == "also mine"
    assert load_dataset(str(out / "data"), data_files="train-*.parquet", split="train").num_rows == 2  # image rows
    assert snapshot(project) == inputs
    assert not partial_folder(out).exists()


def test_foreign_folder_is_never_written_or_removed(project, tmp_path, capsys):
    out = tmp_path / "somebody_elses"
    (out / "data").mkdir(parents=True)
    (out / "data" / "precious.parquet").write_bytes(b"not ours")
    before = snapshot(out)
    for extra in ((), ("--overwrite",)):
        assert main(argv(project, out, *extra)) == 2
        assert f"holds no {MANIFEST}" in capsys.readouterr().err
    assert snapshot(out) == before


def test_failed_build_leaves_nothing_that_loads(project, tmp_path, capsys):
    broken = project / "data" / "train.feature.tsv"
    lines = broken.read_text().splitlines()
    lines[4] = lines[4][:-7]  # image 105 (test split) is truncated: the build fails in its last split
    broken.write_text("\n".join(lines) + "\n")
    main(["index", str(broken)])
    inputs = snapshot(project)
    out = tmp_path / "out"
    assert main(argv(project, out, "--rows-per-shard", "1")) == 2
    assert not out.exists() and not loads_as_dataset(out)
    assert not loads_as_dataset(tmp_path)  # the kept progress is hidden from a load of the parent, too
    finished = sorted(p.name for p in (partial_folder(out) / "data").glob("*.parquet"))
    assert finished and len(finished) < 6  # progress kept for a resume, out of sight
    assert snapshot(project) == inputs


def test_failed_overwrite_keeps_the_previous_complete_build(project, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(argv(project, out)) == 0
    previous = snapshot(out)
    broken = project / "data" / "dataset_coco.json"
    data = json.loads(broken.read_text())
    data["images"][2]["sentences"][0].pop("raw")
    broken.write_text(json.dumps(data))
    assert main(argv(project, out, "--overwrite", "--caption-rows", "image")) == 2
    assert snapshot(out) == previous and loads_as_dataset(out)


def test_python_api_refuses_the_same_way(project, tmp_path):
    data = project / "data"
    builder = CaptionBuilder(TsvRegionSource(data / "train.feature.tsv"), [data / "dataset_coco.json"])
    before = snapshot(project)
    with pytest.raises(ValueError, match="contains the build input"):
        build_dataset(builder, project, overwrite=True, progress=False)
    assert snapshot(project) == before


# ------------------------------------------------------------------------------------------- converter


@pytest.fixture
def source(fixture_dir, tmp_path):
    folder = tmp_path / "original"
    shutil.copytree(fixture_dir / "seqcls_linear_bce", folder)
    shutil.copyfile(fixture_dir / "vocab.txt", folder / "vocab.txt")
    return folder


@pytest.mark.parametrize("relative", [".", "converted"])
def test_converter_never_writes_into_src(source, relative):
    before = snapshot(source)
    with pytest.raises(ValueError, match="never writes into the original checkpoint"):
        convert_checkpoint(source, source / relative, "vqa", overwrite=True)
    assert snapshot(source) == before


def test_failed_conversion_leaves_no_out(source, tmp_path):
    before = snapshot(source)
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="missing_vocab.txt"):  # fails after the weights were converted
        convert_checkpoint(source, out, "vqa", vocab=tmp_path / "missing_vocab.txt")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]
    assert snapshot(source) == before


def test_overwrite_conversion_replaces_only_its_files(source, tmp_path):
    before = snapshot(source)
    out = tmp_path / "out"
    convert_checkpoint(source, out, "vqa")
    (out / "notes.txt").write_text("keep me")
    first = snapshot(out)
    with pytest.raises(ValueError, match="is not empty"):
        convert_checkpoint(source, out, "vqa")
    assert snapshot(out) == first
    convert_checkpoint(source, out, "vqa", overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me" and (out / "model.safetensors").is_file()
    assert snapshot(source) == before
