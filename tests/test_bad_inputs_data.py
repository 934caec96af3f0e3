"""Bad inputs to the data readers, builders and `python -m oscar_hf.data`: one clear error each.

The command line ends every bad input with one `error:` line naming the file, the record and the
key, exit status 2 and no traceback.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from support.data import coco_world, write_vqa

from oscar_hf.data import (
    BadRowError,
    CaptionBuilder,
    NLVR2Builder,
    TsvFile,
    TsvRegionSource,
    VQABuilder,
    build_dataset,
    load_vocabulary,
    read_corpus_yaml,
    read_gqa,
    read_karpathy,
    read_nlvr2,
    read_vqa,
)
from oscar_hf.data.cli import main
from oscar_hf.data.original_format import write_tsv


def raises(error: type, *fragments: str):
    pattern = "".join(f"(?=.*{re.escape(fragment)})" for fragment in fragments)
    return pytest.raises(error, match=re.compile(pattern, re.S))


@pytest.fixture
def world(tmp_path):
    return coco_world(tmp_path / "src")


def karpathy(tmp_path, sentence: dict, image: dict | None = None) -> str:
    entry = {"split": "train", "filename": "COCO_1.jpg", "cocoid": 101, "sentences": [sentence]}
    entry.update(image or {})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": [entry]}))
    return path


# ---------------------------------------------------------------------------------------------- readers


def test_karpathy_sentence_without_raw(tmp_path):
    path = karpathy(tmp_path, {"tokens": ["a"], "sentid": 1})
    with raises(BadRowError, str(path), "images[0].sentences[0]", "'raw'", "id '101'"):
        read_karpathy(path)


@pytest.mark.parametrize(
    "image, fragments",
    [
        ({"sentences": "a caption"}, ("images[0].sentences is str", "expected a list")),
        ({"sentences": ["a caption"]}, ("images[0].sentences[0] is str", "keys ['raw']")),
    ],
)
def test_karpathy_sentences_of_the_wrong_type(tmp_path, image, fragments):
    path = karpathy(tmp_path, {"raw": "x"}, image)
    with raises(BadRowError, str(path), *fragments):
        read_karpathy(path)


def test_karpathy_image_without_split(tmp_path):
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"images": [{"filename": "a.jpg", "sentences": []}]}))
    with raises(BadRowError, "images[0] lacks ['split']", "expected keys"):
        read_karpathy(path)


def test_vqa_answer_without_answer(world, tmp_path):
    questions, annotations = write_vqa(world.root)
    data = json.loads(annotations.read_text())
    del data["annotations"][1]["answers"][4]["answer"]
    annotations.write_text(json.dumps(data))
    with raises(BadRowError, str(annotations), "annotations[1].answers[4]", "'answer'", "id '2'"):
        read_vqa(questions, annotations)


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (lambda d: d["annotations"][0].update(answers="yes"), ("annotations[0].answers is str", "a list")),
        (lambda d: d["annotations"][0].pop("question_id"), ("annotations[0] lacks ['question_id']",)),
        (lambda d: d["annotations"].__setitem__(0, "yes"), ("annotations[0] is str", "expected an object")),
        (lambda d: d.pop("annotations"), ('needs "annotations"',)),
    ],
)
def test_vqa_annotation_structure(world, edit, fragments):
    questions, annotations = write_vqa(world.root)
    data = json.loads(annotations.read_text())
    edit(data)
    annotations.write_text(json.dumps(data))
    with raises(BadRowError, str(annotations), *fragments):
        read_vqa(questions, annotations)


def test_vqa_question_without_image_id(world):
    questions, annotations = write_vqa(world.root)
    data = json.loads(questions.read_text())
    del data["questions"][2]["image_id"]
    questions.write_text(json.dumps(data))
    with raises(BadRowError, str(questions), "questions[2] lacks ['image_id']"):
        read_vqa(questions, annotations)


def test_gqa_entry_that_is_not_an_object(tmp_path):
    path = tmp_path / "gqa.json"
    path.write_text(json.dumps({"q1": "What?"}))
    with raises(BadRowError, str(path), "question q1 is str", "imageId"):
        read_gqa(path)


@pytest.mark.parametrize(
    "line, fragments",
    [
        ('{"identifier": "dev-1-0-0", "sentence": "x", "label": "maybe"}', ('label must be "True" or "False"',)),
        ('{"sentence": "x", "label": "True"}', ('needs "identifier" and "sentence"',)),
        ("[1, 2]", ('needs "identifier" and "sentence"',)),
        ("{oops", ("malformed JSON line",)),
    ],
)
def test_nlvr2_lines(tmp_path, line, fragments):
    path = tmp_path / "dev.json"
    path.write_text(line + "\n")
    with raises(BadRowError, str(path), "line 1", *fragments):
        read_nlvr2(path)


def test_corpus_yaml_without_key(tmp_path):
    path = tmp_path / "corpus.yaml"
    path.write_text("corpus_file: corpus.tsv\nimage_feature_path: {coco: f}\n")
    with raises(BadRowError, str(path), "lacks 'image_label_path'"):
        read_corpus_yaml(path)


@pytest.mark.parametrize(
    "name, content, fragments",
    [
        ("vocab.json", '{"yes": 0, "no": 2}', ("answer ids must be 0..1 without gaps",)),
        ("vocab.json", "[1, 2]", ("expected a list of answers",)),
        ("vocab.json", "[", ("malformed JSON",)),
    ],
)
def test_answer_vocabulary_files(tmp_path, name, content, fragments):
    (tmp_path / name).write_text(content)
    with raises(ValueError, str(tmp_path / name), *fragments):
        load_vocabulary(tmp_path / name)


def test_answer_vocabulary_pickle_with_code_is_refused(tmp_path):
    import pickle

    (tmp_path / "vocab.pkl").write_bytes(pickle.dumps([np.float32(1)]))
    with raises(pickle.UnpicklingError, "may only hold lists, dicts and strings", "numpy"):
        load_vocabulary(tmp_path / "vocab.pkl")


# ------------------------------------------------------------------------------------------- TSV readers


@pytest.mark.parametrize(
    "index, fragments",
    [
        ("0\n5x\n", ("line 2", "expected one decimal byte offset")),
        ("0\n999999\n", ("offset 999999", "past the end")),
        ("0\n0\n", ("not increasing",)),
    ],
)
def test_lineidx_that_does_not_belong(tmp_path, index, fragments):
    path = write_tsv(tmp_path / "f.tsv", ["a\t1", "b\t2"])
    path.with_suffix(".lineidx").write_text(index)
    with raises(BadRowError, "f.lineidx", "regenerate", *fragments):
        len(TsvFile(path))


@pytest.mark.parametrize(
    "mapping, fragments",
    [({"a": 5}, ("'a': 5", "row indices in [0, 2)")), ({"a": "0"}, ("'a': '0'",)), ([0, 1], ("[0, 1]",))],
)
def test_key_index_values(tmp_path, mapping, fragments):
    path = write_tsv(tmp_path / "f.tsv", ["a\t1", "b\t2"])
    (tmp_path / "imageid2idx.json").write_text(json.dumps(mapping))
    with raises(BadRowError, "imageid2idx.json", "expected {image_id: row index}", *fragments):
        TsvFile(path, key_index=tmp_path / "imageid2idx.json").get("a")


def test_key_index_pointing_at_another_row(tmp_path):
    path = write_tsv(tmp_path / "f.tsv", ["a\t1", "b\t2"])
    (tmp_path / "imageid2idx.json").write_text(json.dumps({"a": 1, "b": 0}))
    with raises(BadRowError, "maps 'a' to this row but the row's key is 'b'"):
        TsvFile(path, key_index=tmp_path / "imageid2idx.json").get("a")


def test_duplicate_keys_and_non_utf8(tmp_path):
    path = write_tsv(tmp_path / "f.tsv", ["a\t1", "a\t2"])
    with raises(BadRowError, "f.tsv, line 2, id 'a'", "unique keys"):
        TsvFile(path).get("a")
    path.write_bytes(b"\xff\xfe\t1\n")
    with raises(BadRowError, "f.tsv, line 1", "not UTF-8"):
        TsvFile(path, lineidx=tmp_path / "none.lineidx").get("x")


@pytest.mark.parametrize(
    "row, fragments",
    [
        ("k\tthree\tAAAA", ("num_boxes column is 'three'", "not an integer")),
        ("k\t-1\t", ("num_boxes is -1",)),
        ("k\t0\tAAAA", ("num_boxes is 0 but 3 feature bytes follow",)),
        ("k\t1\t!!!", ("not valid base64",)),
        ("k\t1\tAAAA", ("3 feature bytes do not fit num_boxes=1",)),
        ("k\t1\tAAAA\tx", ("3 columns [id, num_boxes, base64] or 2 [id, json]", "has 4")),
        ("k\t{nope", ("malformed JSON cell",)),
        ('k\t{"features": "AAAA"}', ("needs an integer 'num_boxes'",)),
    ],
)
def test_feature_rows(tmp_path, row, fragments):
    path = write_tsv(tmp_path / "f.tsv", [row])
    with raises(BadRowError, "f.tsv, line 1, id 'k'", *fragments):
        TsvRegionSource(path).get("k")


def test_tsv_file_missing(tmp_path):
    with raises(FileNotFoundError, str(tmp_path / "nope.tsv"), "check the path"):
        TsvRegionSource(tmp_path / "nope.tsv")


# --------------------------------------------------------------------------------------------- builders


def test_builder_rows_argument(world):
    with raises(ValueError, "rows must be 'auto', 'caption' or 'image'", "'images'"):
        CaptionBuilder(TsvRegionSource(world.root / "train.feature.tsv"), [], rows="images")


def test_build_options(world, tmp_path):
    builder = CaptionBuilder(TsvRegionSource(world.root / "train.feature.tsv"), [world.root / "dataset_coco.json"])
    with raises(ValueError, "rows per shard must be >= 1", "0"):
        build_dataset(builder, tmp_path / "o", units_per_shard=0, progress=False)
    with raises(ValueError, "node_rank must be in [0, 2)", "2"):
        build_dataset(builder, tmp_path / "o", node_rank=2, num_nodes=2, progress=False)


def test_image_key_template_that_cannot_format(world, tmp_path):
    regions = TsvRegionSource(world.root / "train.feature.tsv")
    builder = NLVR2Builder(regions, {"dev": tmp_path / "dev.json"}, image_key_template="{name}")
    with raises(ValueError, "--image-key-template '{name}'", "cannot format id", "{id}"):
        builder.image_key("dev-1-0-img0")


def test_empty_vqa_vocabulary(world):
    questions, _ = write_vqa(world.root)
    with raises(ValueError, "VQA answer vocabulary is empty", "--answer-vocab"):
        VQABuilder(TsvRegionSource(world.root / "train.feature.tsv"), {"test": (questions, None)})


# ---------------------------------------------------------------------------------------- command line


def run_cli(capsys, argv) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def caption_argv(world, annotations, out):
    return ["build", "caption", "--features", world.root / "train.feature.tsv", "--annotations", annotations,
            "--out", out, "--no-progress"]  # fmt: skip


def test_cli_karpathy_sentence_without_raw(world, tmp_path, capsys):
    data = json.loads((world.root / "dataset_coco.json").read_text())
    del data["images"][3]["sentences"][1]["raw"]
    (tmp_path / "k.json").write_text(json.dumps(data))
    line = run_cli(capsys, caption_argv(world, tmp_path / "k.json", tmp_path / "out"))
    assert str(tmp_path / "k.json") in line and "images[3].sentences[1]" in line and "'raw'" in line
    assert not (tmp_path / "out").exists()


def test_cli_vqa_answer_without_answer(world, tmp_path, capsys):
    questions, annotations = write_vqa(world.root)
    data = json.loads(annotations.read_text())
    del data["annotations"][2]["answers"][0]["answer"]
    annotations.write_text(json.dumps(data))
    argv = ["build", "vqa", "--features", world.root / "train.feature.tsv",
            "--annotations", f"train={questions},{annotations}", "--out", tmp_path / "vqa", "--no-progress"]  # fmt: skip
    line = run_cli(capsys, argv)
    assert str(annotations) in line and "annotations[2].answers[0]" in line and "'answer'" in line


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--annotations", "dev=nope.json"], "does not exist"),
        (["--annotations", "train"], "SPLIT=PATH"),
    ],
)
def test_cli_other_bad_arguments(world, tmp_path, capsys, extra, fragment):
    argv = ["build", "nlvr2", "--features", world.root / "train.feature.tsv", "--out", tmp_path / "o",
            "--no-progress", *extra]  # fmt: skip
    assert fragment in run_cli(capsys, argv)


def test_cli_unreadable_input_is_one_line(world, tmp_path, capsys):
    (tmp_path / "dir.json").mkdir()
    line = run_cli(capsys, caption_argv(world, tmp_path / "dir.json", tmp_path / "out"))
    assert "dir.json" in line


def test_cli_out_that_holds_an_input(world, capsys):
    line = run_cli(capsys, caption_argv(world, world.root / "dataset_coco.json", world.root))
    assert "contains the build input" in line and "Fix:" in line
