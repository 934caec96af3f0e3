"""Every builder end to end on small files in the original formats: rows, joins, values, Parquet I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import load_dataset
from datasets.distributed import split_dataset_by_node
from support.data import (
    FEATURE_DIM,
    VQA_ANSWERS,
    VQA_VOCAB,
    coco_world,
    make_image,
    write_corpus,
    write_regions,
    write_vqa,
)

from oscar_hf.data import (
    BadRowError,
    CaptionBuilder,
    GQABuilder,
    NLVR2Builder,
    PretrainCorpusBuilder,
    RetrievalBuilder,
    TsvRegionSource,
    VQABuilder,
    build_dataset,
    read_corpus_yaml,
)
from oscar_hf.data.original_format import label_row, write_tsv


@pytest.fixture
def world(tmp_path):
    return coco_world(tmp_path / "src")


@pytest.fixture
def regions(world):
    return TsvRegionSource(world.root / "train.feature.tsv", labels=world.root / "train.label.tsv")


def load(out, split):
    return load_dataset("parquet", data_files={split: str(out / "data" / f"{split}-*.parquet")})[split]


def check_regions(row, truth, prefix=""):
    """Features equal the source float32 values rounded to float16; boxes, size and tags joined."""
    features = np.asarray(row[f"{prefix}img_feats"], dtype=np.float32)
    assert row[f"{prefix}image_id"] == truth.key
    np.testing.assert_array_equal(features, truth.features.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(features, truth.features, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np.asarray(row[f"{prefix}boxes"]), truth.boxes, rtol=1e-3, atol=0.05)
    assert (row[f"{prefix}image_width"], row[f"{prefix}image_height"]) == (truth.width, truth.height)
    assert row[f"{prefix}tags"] == truth.tags
    assert row[f"{prefix}tag_scores"] == pytest.approx(truth.scores, abs=1e-6)


def test_caption_builder_karpathy(world, regions, tmp_path):
    out = tmp_path / "caption"
    summary = build_dataset(CaptionBuilder(regions, [world.root / "dataset_coco.json"]), out, progress=False)
    # train = train + restval images (2 captions each, one row per caption); val/test one row per image.
    assert summary.rows == {"train": 4, "val": 1, "test": 3}
    train, test = load(out, "train"), load(out, "test")
    assert train["image_id"][:] == ["101", "101", "102", "102"]
    assert train["caption_id"][:] == [1010, 1011, 1020, 1021]
    assert train[1]["caption"] == "A caption 1 of image 101."
    assert test["caption_id"][:] == [-1, -1, -1]
    assert test[2]["references"] == ["A caption 0 of image 106.", "A caption 1 of image 106."]
    for row in list(train) + list(test):
        check_regions(row, world.images[row["image_id"]])
    assert train.features["img_feats"].shape == (None, FEATURE_DIM)
    assert train.features["img_feats"].dtype == "float16"


def test_caption_builder_coco_json_sizes_and_vinvl_json_features(tmp_path):
    """VinVL caption files: JSON-cell features, list-form labels without sizes; sizes from the COCO JSON."""
    rng = np.random.default_rng(5)
    images = [make_image(rng, key, 3) for key in ("7", "8")]
    paths = write_regions(tmp_path, images, layout="json", sizes_in="none")
    captions = {
        "images": [{"id": int(im.key), "width": im.width, "height": im.height} for im in images],
        "annotations": [{"image_id": int(im.key), "id": i, "caption": f"c{i}"} for i, im in enumerate(images * 2)],
    }
    (tmp_path / "captions_val.json").write_text(json.dumps(captions))
    builder = CaptionBuilder(TsvRegionSource(**paths), [(tmp_path / "captions_val.json", "val")], rows="caption")
    build_dataset(builder, tmp_path / "out", progress=False)
    rows = list(load(tmp_path / "out", "val"))
    assert [r["caption"] for r in rows] == ["c0", "c2", "c1", "c3"]  # grouped by image, file order
    for row in rows:
        check_regions(row, images[int(row["image_id"]) - 7])


def test_retrieval_builder_1k_and_5k_protocols(world, regions, tmp_path):
    out = tmp_path / "retrieval"
    build_dataset(RetrievalBuilder(regions, world.root / "dataset_coco.json", fold_size=2), out, progress=False)
    test_5k, test_1k = load(out, "test_5k"), load(out, "test_1k")
    assert test_5k["image_id"][:] == ["104", "105", "106"] and test_5k["fold_1k"][:] == [0, 0, 1]
    assert test_1k["image_id"][:] == ["104", "105"] and test_1k["fold_1k"][:] == [0, 0]
    assert load(out, "train")["image_id"][:] == ["101", "102"] and load(out, "train")["fold_1k"][:] == [-1, -1]
    assert test_5k[0]["captions"] == ["A caption 0 of image 104.", "A caption 1 of image 104."]
    assert test_5k[0]["caption_ids"] == [1040, 1041]
    check_regions(test_5k[1], world.images["105"])
    assert sorted(load_dataset(str(out))) == ["test_1k", "test_5k", "train", "val"]  # split names from file names
    # The original 1K key list overrides the default fold 0.
    (tmp_path / "keys.tsv").write_text("106\n104\n")
    keyed = RetrievalBuilder(regions, world.root / "dataset_coco.json", test_1k_keys=tmp_path / "keys.tsv")
    build_dataset(keyed, tmp_path / "keyed", progress=False)
    assert load(tmp_path / "keyed", "test_1k")["image_id"][:] == ["106", "104"]


def test_vqa_builder_soft_scores(world, regions, tmp_path):
    questions, annotations = write_vqa(world.root)
    builder = VQABuilder(regions, {"train": (questions, annotations)}, answer_vocab=VQA_VOCAB)
    build_dataset(builder, tmp_path / "vqa", progress=False)
    rows = {row["question_id"]: row for row in load(tmp_path / "vqa", "train")}
    assert sorted(rows) == [1, 2, 3]
    # Hand-checked: q1 "two"/"2"/"Two." -> "2" x5, "yes" x1, "no" x2, "3"/"three" -> "3" x2.
    # Oscar's targets: 0.3 / 0.6 / 0.9 / 1 for 1 / 2 / 3 / >= 4 annotators.
    expected = {
        1: {"2": 1.0, "yes": 0.3, "no": 0.6, "3": 0.6},
        2: {"dog": 1.0, "cat": 0.3},  # "a dog", "the dog" -> "dog" (x8); "dogs" is not in the vocabulary
        3: {"isn't": 0.6, "no": 1.0},  # "isnt" -> "isn't"
    }
    for qid, scores in expected.items():
        row = rows[qid]
        assert [VQA_VOCAB[i] for i in row["answer_labels"]] == sorted(scores, key=VQA_VOCAB.index)
        assert row["answer_scores"] == pytest.approx([scores[VQA_VOCAB[i]] for i in row["answer_labels"]])
        dense = np.zeros(len(VQA_VOCAB), dtype=np.float32)
        dense[row["answer_labels"]] = row["answer_scores"]
        np.testing.assert_allclose(row["labels"], dense)
        assert row["answers"] == VQA_ANSWERS[qid][1]
        check_regions(row, world.images[str(VQA_ANSWERS[qid][0])])


def test_vqa_vocabulary_from_annotations(world, regions):
    questions, annotations = write_vqa(world.root)
    builder = VQABuilder(regions, {"train": (questions, annotations)}, answer_min_count=1)
    assert builder.answer_vocab == ["2", "dog", "isn't"]  # normalised multiple_choice_answer


def test_id_without_features_names_the_annotation(world, regions, tmp_path):
    answers = {**VQA_ANSWERS, 4: (999, ["yes"] * 10)}
    questions, annotations = write_vqa(world.root, answers)
    builder = VQABuilder(regions, {"train": (questions, annotations)}, answer_vocab=VQA_VOCAB)
    with pytest.raises(BadRowError, match=r"train_questions\.json, questions\[3\], id '999': .*no row in the feature"):
        build_dataset(builder, tmp_path / "strict", progress=False)
    with pytest.raises(BadRowError, match=r"questions\[3\], id '999'"):  # also from a worker process
        build_dataset(builder, tmp_path / "strict_mp", units_per_shard=1, num_proc=2, progress=False)
    summary = build_dataset(builder, tmp_path / "lenient", skip_bad_rows=True, progress=False)
    assert summary.rows == {"train": 3} and summary.bad_rows == {"missing_features": 1}
    assert "id '999'" in summary.bad_examples[0]
    recorded = json.loads((tmp_path / "lenient" / ".build" / "summary-node0.json").read_text())
    assert recorded["bad_rows"] == {"missing_features": 1}


def test_skip_bad_rows_counts_corrupt_feature_rows(world, tmp_path):
    path = world.root / "train.feature.tsv"
    lines = path.read_text().splitlines()
    key, count, blob = lines[0].split("\t")
    lines[0] = f"{key}\t{count}\t{blob[:-2]}"
    write_tsv(path, lines)
    builder = RetrievalBuilder(TsvRegionSource(path), world.root / "dataset_coco.json")
    with pytest.raises(BadRowError, match=r"line 1, id '101'"):
        build_dataset(builder, tmp_path / "strict", progress=False)
    summary = build_dataset(builder, tmp_path / "lenient", units_per_shard=1, skip_bad_rows=True, progress=False)
    assert summary.bad_rows == {"base64": 1} and summary.rows["train"] == 1
    # The shard whose only image was bad still exists (empty), so the split stays complete and resumable.
    assert load(tmp_path / "lenient", "train")["image_id"][:] == ["102"]
    assert (tmp_path / "lenient" / "data" / "train-00000-of-00002.parquet").is_file()


def test_gqa_builder(tmp_path):
    rng = np.random.default_rng(7)
    images = [make_image(rng, key, 2) for key in ("n1", "n2")]
    source = TsvRegionSource(**write_regions(tmp_path, images))
    questions = {
        "q1": {"imageId": "n1", "question": "What is it?", "answer": "dog", "fullAnswer": "It is a dog."},
        "q2": {"imageId": "n2", "question": "Color?", "answer": "red", "fullAnswer": "Red."},
        "q3": {"imageId": "n1", "question": "Which?", "answer": "left", "fullAnswer": "Left."},
    }
    (tmp_path / "val.json").write_text(json.dumps(questions))
    builder = GQABuilder(source, {"val": tmp_path / "val.json"}, answer_vocab=["red", "dog"])
    build_dataset(builder, tmp_path / "gqa", progress=False)
    rows = list(load(tmp_path / "gqa", "val"))
    assert [(r["question_id"], r["labels"]) for r in rows] == [("q1", 1), ("q2", 0), ("q3", -100)]
    assert rows[0]["full_answer"] == "It is a dog."
    check_regions(rows[1], images[1])


def test_nlvr2_builder_pairs_two_images(tmp_path):
    rng = np.random.default_rng(8)
    keys = ["dev-1-0-img0", "dev-1-0-img1", "dev-2-3-img0", "dev-2-3-img1"]
    images = {key: make_image(rng, key, 2) for key in keys}
    source = TsvRegionSource(**write_regions(tmp_path, list(images.values())))
    lines = [
        {"identifier": "dev-1-0-0", "sentence": "Two dogs.", "label": "True"},
        {"identifier": "dev-1-0-1", "sentence": "No dog.", "label": "False"},
        {"identifier": "dev-2-3-0", "sentence": "A cat.", "label": "True"},
    ]
    (tmp_path / "dev.json").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    build_dataset(NLVR2Builder(source, {"dev": tmp_path / "dev.json"}), tmp_path / "nlvr2", progress=False)
    rows = list(load(tmp_path / "nlvr2", "dev"))
    assert [r["labels"] for r in rows] == [1, 0, 1]
    check_regions(rows[2], images["dev-2-3-img0"], "left_")
    check_regions(rows[2], images["dev-2-3-img1"], "right_")
    (tmp_path / "bad.json").write_text(json.dumps(lines[0]) + "\n{not json\n")
    with pytest.raises(BadRowError, match=r"bad\.json, line 2: malformed JSON"):
        build_dataset(NLVR2Builder(source, {"dev": tmp_path / "bad.json"}), tmp_path / "bad", progress=False)


def test_pretrain_corpus_builder_and_streaming(tmp_path):
    truth = write_corpus(tmp_path / "src", np.random.default_rng(9))
    builder = PretrainCorpusBuilder(read_corpus_yaml(tmp_path / "src" / "corpus.yaml"))
    summary = build_dataset(builder, tmp_path / "pt", units_per_shard=2, num_proc=2, progress=False)
    assert summary.rows == {"train": 4}
    assert sorted(p.name for p in (tmp_path / "pt" / "data").glob("*.parquet")) == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    rows = list(load(tmp_path / "pt", "train"))
    assert [r["source"] for r in rows] == ["coco", "coco", "googlecc", "gqa"]
    assert [r["is_qa"] for r in rows] == [False, False, False, True]
    assert rows[3]["text_a"] == "Is the sky blue?" and rows[3]["text_b"] == "yes"
    assert rows[0]["text_b"] == " ".join(truth["coco_11"].tags) and rows[3]["tags"] == truth["gqa_n9"].tags
    for row in rows:
        check_regions(row, truth[row["image_key"]])
    # Loadable by folder (README configs), streamed and split across 2 nodes without overlap.
    streamed = load_dataset(str(tmp_path / "pt"), split="train", streaming=True)
    assert streamed.n_shards == 2
    seen = [[r["image_key"] for r in split_dataset_by_node(streamed, rank, 2)] for rank in range(2)]
    assert sorted(seen[0] + seen[1]) == sorted(truth) and not set(seen[0]) & set(seen[1])


def test_corpus_row_without_features(tmp_path):
    write_corpus(tmp_path / "src", np.random.default_rng(9))
    with open(tmp_path / "src" / "corpus.tsv", "a") as handle:
        handle.write("coco_13\tcoco_13\tMissing image.\n")
    from oscar_hf.data import write_lineidx

    write_lineidx(tmp_path / "src" / "corpus.tsv")
    builder = PretrainCorpusBuilder(read_corpus_yaml(tmp_path / "src" / "corpus.yaml"))
    with pytest.raises(BadRowError, match=r"corpus\.tsv, line 5, id 'coco_13': no row '13'"):
        build_dataset(builder, tmp_path / "pt", progress=False)


class FailOnce(CaptionBuilder):
    """A caption builder that dies on image 105 (a stand-in for a killed run); describes itself as CaptionBuilder."""

    def unit_rows(self, unit):
        if unit[0].image_id == "105":
            raise RuntimeError("interrupted")
        yield from super().unit_rows(unit)


def test_resume_and_plan_mismatch(world, regions, tmp_path):
    out = tmp_path / "cap"
    builder = CaptionBuilder(regions, [world.root / "dataset_coco.json"], rows="image")
    failing = FailOnce(regions, [world.root / "dataset_coco.json"], rows="image")
    with pytest.raises(RuntimeError, match="interrupted"):  # as if the run had died in its 5th shard
        build_dataset(failing, out, units_per_shard=1, progress=False)
    assert not out.exists()  # the finished shards wait in the hidden sibling, not in OUT
    second = build_dataset(builder, out, units_per_shard=1, progress=False)
    assert (second.shards_written, second.shards_resumed) == (2, 4)
    assert second.rows == {"train": 2, "val": 1, "test": 3}
    assert build_dataset(builder, out, units_per_shard=1, progress=False).shards_resumed == 6  # complete
    assert load(out, "test")["image_id"][:] == ["104", "105", "106"]
    with pytest.raises(ValueError, match="other inputs or options.*--overwrite"):
        build_dataset(builder, out, units_per_shard=2, progress=False)
    assert load_dataset(str(out))["train"].num_rows == 2
    per_caption = CaptionBuilder(regions, [world.root / "dataset_coco.json"], rows="caption")
    third = build_dataset(per_caption, out, units_per_shard=2, overwrite=True, progress=False)
    assert third.shards_written == 4
    assert load_dataset(str(out))["train"].num_rows == 4  # the rebuilt folder, not a stale cache


def test_multi_process_build_matches_single_process(world, regions, tmp_path):
    builder = CaptionBuilder(regions, [world.root / "dataset_coco.json"])
    build_dataset(builder, tmp_path / "one", units_per_shard=1, progress=False)
    build_dataset(builder, tmp_path / "two", units_per_shard=1, num_proc=2, progress=False)
    for split in ("train", "val", "test"):
        assert load(tmp_path / "one", split).to_dict() == load(tmp_path / "two", split).to_dict()


def test_nodes_build_disjoint_shards(world, regions, tmp_path):
    builder = CaptionBuilder(regions, [world.root / "dataset_coco.json"], rows="image")
    a = build_dataset(builder, tmp_path / "shared", units_per_shard=1, node_rank=0, num_nodes=2, progress=False)
    b = build_dataset(builder, tmp_path / "shared", units_per_shard=1, node_rank=1, num_nodes=2, progress=False)
    assert a.shards_written + b.shards_written == 6 and not b.shards_resumed
    assert load_dataset(str(tmp_path / "shared"))["test"].num_rows == 3


def test_malformed_annotation_json(world, regions, tmp_path):
    (tmp_path / "broken.json").write_text('{"images": [\n  {"split": "train",\n')
    with pytest.raises(BadRowError, match=r"broken\.json, line 3: malformed JSON"):
        build_dataset(CaptionBuilder(regions, [tmp_path / "broken.json"]), tmp_path / "o", progress=False)


def test_labels_with_other_box_counts_than_features(tmp_path):
    """VinVL label files may list other boxes than the feature file: tags come from labels, boxes from features."""
    image = make_image(np.random.default_rng(4), "k", 3)
    paths = write_regions(tmp_path, [image])
    write_tsv(paths["labels"], [label_row("k", ["sky"], image.boxes[:1], [0.9], (image.width, image.height))])
    record = TsvRegionSource(**paths).get("k")
    assert record.tags == ["sky"] and record.features.shape == (3, FEATURE_DIM) and record.boxes.shape == (3, 4)


def test_image_key_template(world, regions):
    builder = CaptionBuilder(regions, [world.root / "dataset_coco.json"], image_key_template="COCO_val2014_{id:012d}")
    assert builder.image_key("42") == "COCO_val2014_000000000042"  # Karpathy ids are strings
    assert builder.image_key(42) == "COCO_val2014_000000000042"
    with pytest.raises(ValueError, match="cannot format id 'abc'"):
        builder.image_key("abc")
