"""Property-based tests: the TSV/.lineidx readers and the region processor on randomly corrupted input.

Every outcome is either the exact row that was written or a clear error (a `ValueError` naming the
file or the argument), never an exception from inside numpy/pyarrow/torch and never another row.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oscar_hf.data import BadRowError, TsvFile, TsvRegionSource, box_geometry
from oscar_hf.data.original_format import feature_row, write_tsv
from oscar_hf.processors import OscarRegionFeatureProcessor


DIM = 10  # 4 appearance dims + the 6 box values: small rows keep each example fast
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def truth_rows(seed: int, count: int) -> dict[str, np.ndarray]:
    """Rows as detectors write them: appearance values, then the 6 normalised box values."""
    rng = np.random.default_rng(seed)
    rows = {}
    for i in range(count):
        # (n, corner, xy) sorted over the two corners: x1, y1, x2, y2 with x1 <= x2, y1 <= y2.
        boxes = np.sort(rng.uniform(0, 100, size=(int(rng.integers(1, 4)), 2, 2)), axis=1).reshape(-1, 4)
        pooled = rng.normal(size=(len(boxes), DIM - 6)).astype(np.float32)
        rows[f"img{i}"] = np.concatenate([pooled, box_geometry(boxes, 100, 100)], axis=1).astype(np.float32)
    return rows


def lines_of(rows: dict[str, np.ndarray]) -> list[str]:
    return [feature_row(key, features) for key, features in rows.items()]


def corrupt(lines: list[str], kind: str, row: int, where: float) -> list[str]:
    """One corruption of row `row`: the kinds a careless copy, a bad export or a hand edit produce."""
    key, count, blob = lines[row].split("\t")
    cut = int(where * len(blob))
    if kind == "bad_base64":
        blob = blob[:cut] + "*" + blob[cut + 1 :]
    elif kind == "short_blob":
        blob = blob[: max(0, min(cut, len(blob) - 4))]
    elif kind == "wrong_count":
        count = str(int(count) + 1 + int(where * 5))
    elif kind == "text_count":
        count = "three"
    elif kind == "shuffled":
        key, count, blob = count, blob, key
    elif kind == "dropped_column":
        lines = [*lines]
        lines[row] = f"{key}\t{blob}"
        return lines
    elif kind == "extra_column":
        blob = f"{blob}\textra"
    lines = [*lines]
    lines[row] = f"{key}\t{count}\t{blob}"
    return lines


def assert_clear(error: Exception, name: str) -> None:
    assert isinstance(error, ValueError), f"{type(error).__module__}.{type(error).__name__}: {error}"
    assert name in str(error), str(error)
    assert not type(error).__module__.startswith(("numpy", "pyarrow", "torch")), repr(error)


def read_all(path, rows: dict[str, np.ndarray]) -> None:
    """Every key either reads back as exactly its row, is absent (its key column was damaged), or raises clearly."""
    source = TsvRegionSource(path, feature_dim=DIM)
    for key, expected in rows.items():
        try:
            record = source.get(key)
        except Exception as error:  # noqa: BLE001 - the property is about which exceptions come out
            assert_clear(error, path.name)
            continue
        if record is not None:
            assert record.image_id == key
            np.testing.assert_array_equal(record.features, expected)


KINDS = ["bad_base64", "short_blob", "wrong_count", "text_count", "shuffled", "dropped_column", "extra_column"]


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    count=st.integers(1, 5),
    kind=st.sampled_from(KINDS),
    row=st.integers(0, 4),
    where=st.floats(0, 1),
)
def test_corrupted_feature_rows(tmp_path_factory, seed, count, kind, row, where):
    rows = truth_rows(seed, count)
    path = write_tsv(tmp_path_factory.mktemp("tsv") / "f.tsv", corrupt(lines_of(rows), kind, row % count, where))
    read_all(path, rows)


@SETTINGS
@given(seed=st.integers(0, 10_000), count=st.integers(1, 5), where=st.floats(0, 1), stale_index=st.booleans())
def test_truncated_file_with_its_old_lineidx(tmp_path_factory, seed, count, where, stale_index):
    rows = truth_rows(seed, count)
    path = write_tsv(tmp_path_factory.mktemp("tsv") / "f.tsv", lines_of(rows))
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(where * len(data)))])  # a copy that stopped early
    if not stale_index:
        path.with_suffix(".lineidx").unlink()  # the reader scans instead
    try:
        read_all(path, rows)
    except Exception as error:  # noqa: BLE001 - the index itself may be refused up front
        assert_clear(error, path.name)


@SETTINGS
@given(seed=st.integers(0, 10_000), count=st.integers(2, 5), swap=st.integers(0, 3), garbage=st.booleans())
def test_lineidx_that_does_not_belong_to_the_tsv(tmp_path_factory, seed, count, swap, garbage):
    rows = truth_rows(seed, count)
    path = write_tsv(tmp_path_factory.mktemp("tsv") / "f.tsv", lines_of(rows))
    index = path.with_suffix(".lineidx")
    offsets = index.read_text().split()
    if garbage:
        offsets[swap % count] = "12x"
    else:  # rows swapped, an offset moved into a line, or one row missing from the index
        i = swap % (count - 1)
        offsets = [o for position, o in enumerate(offsets) if position != i] if swap == 3 else offsets
        if swap == 0:
            offsets[i], offsets[i + 1] = offsets[i + 1], offsets[i]
        elif swap in (1, 2):
            offsets[i + 1] = str(int(offsets[i + 1]) - swap)
    index.write_text("\n".join(offsets) + "\n")
    try:
        read_all(path, rows)
    except Exception as error:  # noqa: BLE001
        assert_clear(error, "f.")


@SETTINGS
@given(seed=st.integers(0, 10_000), junk=st.binary(min_size=1, max_size=40), position=st.floats(0, 1))
def test_random_bytes_inserted(tmp_path_factory, seed, junk, position):
    rows = truth_rows(seed, 3)
    path = write_tsv(tmp_path_factory.mktemp("tsv") / "f.tsv", lines_of(rows), lineidx=False)
    data = path.read_bytes()
    cut = int(position * len(data))
    path.write_bytes(data[:cut] + junk + data[cut:])
    tsv = TsvFile(path)
    try:
        len(tsv)
        for index in range(len(tsv)):
            tsv.read(index)
    except Exception as error:  # noqa: BLE001
        assert_clear(error, path.name)
    try:
        read_all(path, rows)
    except Exception as error:  # noqa: BLE001
        assert_clear(error, path.name)


def test_a_valid_base64_blob_of_the_wrong_dtype_width_is_refused(tmp_path):
    # 3 rows of 10 float32 = 120 bytes: read as 2 rows it fits neither 10 x float32 nor 4 x float32.
    blob = base64.b64encode(np.zeros((3, DIM), np.float32).tobytes()).decode()
    path = write_tsv(tmp_path / "f.tsv", [f"k\t2\t{blob}"])
    with pytest.raises(BadRowError, match=r"f\.tsv, line 1, id 'k': 120 feature bytes do not fit num_boxes=2"):
        TsvRegionSource(path, feature_dim=DIM).get("k")


# ------------------------------------------------------------------------------------------- processor

PROCESSOR = OscarRegionFeatureProcessor(region_feature_dim=4, max_img_seq_length=3)
NAMES = ("region_features", "boxes", "image_sizes")


@st.composite
def region_batches(draw):
    batch = draw(st.integers(1, 3))
    features, boxes, sizes = [], [], []
    for _ in range(batch):
        count = draw(st.integers(0, 4))
        width = draw(st.sampled_from([4, 10, 4, 7]))
        values = np.asarray(draw(st.lists(st.floats(-2, 2, width=32), min_size=count * width, max_size=count * width)))
        feats = values.reshape(count, width).astype(np.float32)
        if count and draw(st.booleans()) and draw(st.booleans()):
            feats[draw(st.integers(0, count - 1)), 0] = draw(st.sampled_from([np.nan, np.inf]))
        features.append(feats)
        box_count = count if draw(st.integers(0, 4)) else draw(st.integers(0, 4))
        corners = np.sort(np.asarray(draw(st.lists(st.floats(0, 50), min_size=4 * box_count, max_size=4 * box_count))))
        box = (
            corners.reshape(box_count, 2, 2).transpose(0, 2, 1).reshape(box_count, 4)
            if box_count
            else np.zeros((0, 4))
        )
        boxes.append(box if draw(st.integers(0, 5)) else None)
        sizes.append(draw(st.sampled_from([(60, 60), (60, 60), (0, 60), (float("nan"), 60), (60,), None, (-1, 5)])))
    return features, boxes, sizes


@SETTINGS
@given(region_batches())
def test_processor_on_random_regions(batch):
    features, boxes, sizes = batch
    try:
        out = PROCESSOR(features, boxes=boxes, image_sizes=sizes, return_tensors="pt")
    except Exception as error:  # noqa: BLE001
        assert_clear(error, "")
        assert any(f"{name}[" in str(error) for name in NAMES) or "region_features" in str(error), str(error)
        return
    # Accepted: every image's regions are in its rows, in order, and nothing was invented.
    assert out["img_feats"].shape[0] == len(features) and out["img_feats"].shape[-1] == 10
    for index, feats in enumerate(features):
        kept = min(len(feats), 3)
        assert int(out["img_attention_mask"][index].sum()) == kept
        got = out["img_feats"][index, :kept, : feats.shape[1]]
        torch.testing.assert_close(got, torch.as_tensor(feats[:kept]), rtol=0, atol=0)
        assert torch.isfinite(out["img_feats"][index]).all()
