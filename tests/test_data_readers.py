"""Readers of the original formats: TSV + .lineidx, feature rows, label rows, answers, corruption errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.data import FEATURE_DIM, coco_world, make_image, write_regions

from oscar_hf.data import BadRowError, TsvFile, TsvRegionSource, normalize_answer, soft_score, write_lineidx
from oscar_hf.data.answers import load_vocabulary
from oscar_hf.data.original_format import feature_row, label_row, write_tsv
from oscar_hf.data.regions import parse_feature_row


@pytest.fixture
def world(tmp_path):
    return coco_world(tmp_path)


def test_lineidx_random_access_and_keys(world):
    tsv = TsvFile(world.root / "train.feature.tsv")
    assert len(tsv) == 6
    assert tsv.read(3)[0] == "104"
    assert tsv.keys == {str(k): i for i, k in enumerate(range(101, 107))}
    columns, index = tsv.get("105")
    assert index == 4 and columns[1] == str(len(world.images["105"].features))
    assert tsv.get("999") is None


def test_without_lineidx_offsets_are_scanned(world):
    (world.root / "train.feature.lineidx").unlink()
    assert TsvFile(world.root / "train.feature.tsv").read(5)[0] == "106"


@pytest.mark.parametrize("layout", ["columns", "json"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_feature_rows_decode_to_source_values(tmp_path, layout, dtype):
    image = make_image(np.random.default_rng(1), "img", 3)
    columns = feature_row("img", image.features, layout, dtype).split("\t")
    row = parse_feature_row(columns, FEATURE_DIM, tmp_path / "f.tsv", 1)
    expected = image.features.astype(dtype).astype(np.float32)
    assert row.has_box_dims and row.features.shape == (3, FEATURE_DIM)
    np.testing.assert_array_equal(row.features, expected)


def test_2048_d_features_get_box_dims_from_labels(tmp_path):
    image = make_image(np.random.default_rng(2), "img", 2)
    paths = {
        "features": write_tsv(tmp_path / "f.tsv", [feature_row("img", image.features[:, :2048])]),
        "labels": write_tsv(
            tmp_path / "l.tsv", [label_row("img", image.tags, image.boxes, image.scores, (image.width, image.height))]
        ),
    }
    record = TsvRegionSource(**paths).get("img")
    np.testing.assert_allclose(record.features, image.features, rtol=1e-6, atol=1e-6)
    # 2048-d features and no labels: the 6 box dims cannot be made up.
    with pytest.raises(BadRowError, match="without the 6 box dims"):
        TsvRegionSource(paths["features"]).get("img")


@pytest.mark.parametrize("sizes_in", ["labels", "hw"])
def test_region_source_joins_features_labels_and_sizes(tmp_path, sizes_in):
    images = [make_image(np.random.default_rng(3), key, 2) for key in ("a", "b")]
    source = TsvRegionSource(**write_regions(tmp_path, images, sizes_in=sizes_in))
    record = source.get("b")
    truth = images[1]
    assert (record.image_width, record.image_height) == (truth.width, truth.height)
    assert record.tags == truth.tags and record.tag_scores == pytest.approx(truth.scores)
    np.testing.assert_allclose(record.boxes, truth.boxes, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(record.features, truth.features)


# --- corruption: every error names file, line and id --------------------------------------------


def _rewrite_line(path, index, new_text):
    lines = path.read_text().splitlines()
    lines[index] = new_text
    path.write_text("\n".join(lines) + "\n")
    write_lineidx(path)


def test_truncated_base64_names_file_line_and_id(world):
    path = world.root / "train.feature.tsv"
    key, count, blob = path.read_text().splitlines()[2].split("\t")
    _rewrite_line(path, 2, f"{key}\t{count}\t{blob[:-3]}")  # not a multiple of 4 any more
    with pytest.raises(BadRowError, match=r"train\.feature\.tsv, line 3, id '103': .*base64") as info:
        TsvRegionSource(path).get("103")
    assert (info.value.kind, info.value.line, info.value.row_id) == ("base64", 3, "103")


def test_truncation_on_a_base64_boundary_is_a_byte_count_error(world):
    path = world.root / "train.feature.tsv"
    key, count, blob = path.read_text().splitlines()[0].split("\t")
    _rewrite_line(path, 0, f"{key}\t{count}\t{blob[:400]}")
    with pytest.raises(BadRowError, match=r"line 1, id '101': 300 feature bytes do not fit num_boxes=2"):
        TsvRegionSource(path).get("101")


def test_wrong_num_boxes(world):
    path = world.root / "train.feature.tsv"
    key, count, blob = path.read_text().splitlines()[1].split("\t")
    _rewrite_line(path, 1, f"{key}\t{int(count) + 1}\t{blob}")
    with pytest.raises(BadRowError, match=r"line 2, id '102'.*num_boxes=4") as info:
        TsvRegionSource(path).get("102")
    assert info.value.kind == "num_boxes"


def test_row_missing_from_lineidx(world):
    lineidx = world.root / "train.feature.lineidx"
    offsets = lineidx.read_text().splitlines()
    del offsets[2]  # row 3 is no longer indexed
    lineidx.write_text("\n".join(offsets) + "\n")
    tsv = TsvFile(world.root / "train.feature.tsv")
    assert tsv.read(0)[0] == "101"
    with pytest.raises(BadRowError, match=r"train\.feature\.tsv, line 2: .*missing from the index"):
        tsv.read(1)


def test_lineidx_pointing_into_a_line(world):
    lineidx = world.root / "train.feature.lineidx"
    offsets = [int(v) for v in lineidx.read_text().split()]
    offsets[1] += 5
    lineidx.write_text("".join(f"{v}\n" for v in offsets))
    with pytest.raises(BadRowError, match=r"train\.feature\.lineidx, line 2: offset .* middle of a line"):
        TsvFile(world.root / "train.feature.tsv").read(1)


def test_malformed_json_cells(tmp_path, world):
    labels = world.root / "train.label.tsv"
    key, cell = labels.read_text().splitlines()[4].split("\t")
    _rewrite_line(labels, 4, f"{key}\t{cell[:-10]}")
    source = TsvRegionSource(world.root / "train.feature.tsv", labels=labels)
    with pytest.raises(BadRowError, match=r"train\.label\.tsv, line 5, id '105': malformed JSON"):
        source.get("105")
    features = write_tsv(tmp_path / "json.feature.tsv", ['k\t{"num_boxes": 1, "features": "AAAA"'])
    with pytest.raises(BadRowError, match=r"json\.feature\.tsv, line 1, id 'k': malformed JSON"):
        TsvRegionSource(features).get("k")


def test_label_objects_need_class_and_rect(tmp_path):
    features = write_tsv(tmp_path / "f.tsv", [feature_row("k", np.zeros((0, FEATURE_DIM), np.float32))])
    labels = write_tsv(tmp_path / "l.tsv", ['k\t[{"class": "dog", "conf": 0.5}]'])
    with pytest.raises(BadRowError, match=r'l\.tsv, line 1, id \'k\': object 0 needs "class" and a 4-number "rect"'):
        TsvRegionSource(features, labels=labels).get("k")


def test_duplicate_keys_are_refused(tmp_path):
    row = feature_row("k", np.zeros((1, FEATURE_DIM), np.float32))
    tsv = TsvFile(write_tsv(tmp_path / "dup.tsv", [row, row]))
    with pytest.raises(BadRowError, match=r"dup\.tsv, line 2, id 'k': key also used by line 1"):
        _ = tsv.keys


def test_float16_overflow_is_an_error(tmp_path):
    features = np.full((1, FEATURE_DIM), 1e6, dtype=np.float32)
    path = write_tsv(tmp_path / "big.tsv", [feature_row("k", features)])
    with pytest.raises(BadRowError, match="float16 range"):
        TsvRegionSource(path).get("k")


def test_bad_row_error_survives_pickling():
    import pickle

    error = BadRowError("base64", "f.tsv", 3, "id7", "broken.", "fix it.")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and (copy.kind, copy.path, copy.line, copy.row_id) == ("base64", "f.tsv", 3, "id7")


# --- answers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two.", "2"),
        ("a dog", "dog"),
        ("The Dog", "dog"),
        ("isnt", "isn't"),
        ("1,000", "1000"),
        ("yes!", "yes"),
        ("hello-world", "hello world"),
        ("left - right", "left right"),
        ("3.5", "3.5"),
        ("none", "0"),
    ],
)
def test_official_answer_normalisation(raw, expected):
    assert normalize_answer(raw) == expected


def test_soft_scores():
    # Oscar's targets (bottom-up-attention's compute_softscore), not min(1, count / 3).
    assert [soft_score(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]


def test_vocabulary_files(tmp_path):
    import pickle

    (tmp_path / "v.txt").write_text("yes\nno\n2\n")
    (tmp_path / "v.json").write_text(json.dumps({"no": 1, "yes": 0}))
    (tmp_path / "v.pkl").write_bytes(pickle.dumps(["yes", "no"]))
    assert load_vocabulary(tmp_path / "v.txt") == ["yes", "no", "2"]
    assert load_vocabulary(tmp_path / "v.json") == ["yes", "no"]
    assert load_vocabulary(tmp_path / "v.pkl") == ["yes", "no"]
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(TsvFile))  # a class reference: refused, never imported
    with pytest.raises(pickle.UnpicklingError, match="only hold lists"):
        load_vocabulary(tmp_path / "evil.pkl")
