"""NoCaps end to end: original-format files -> NoCaps Parquet -> `recipes/caption.py --use_cbs --predict`.

The test writes a tiny NoCaps val split the way users hold it (Oscar's feature and label TSVs keyed
by Open Images id, the `val.cbsbox.tsv` detector boxes, the class hierarchy / constraint-token /
token-form files, nocaps' image info and val captions JSONs), builds it with `NocapsBuilder`, and
captions it with constrained beam search from a saved tiny model. The submission must be in the
format the NoCaps server takes (every nocaps id once), the local scores must come per domain, and
every caption must contain min(2, n) of its image's constraint words.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
from support import REPO_ROOT
from support.data import make_image, write_regions
from support.recipes import TINY_MODEL, tiny_overrides, tokenizer_folder, write_caption_data

from oscar_hf import OscarConfig, OscarForImageCaptioning
from oscar_hf.data import TsvRegionSource, build_dataset
from oscar_hf.data.nocaps import NocapsBuilder
from oscar_hf.metrics.submissions import check_nocaps_submission
from oscar_hf.training import load_split


sys.path.insert(0, str(REPO_ROOT / "recipes"))
import caption  # noqa: E402


OPEN_IMAGES = ["0013ea2087020901", "00a2f4d2f5e7b1c3", "0b3f2c9d7e6a5f41", "ffe0a1b2c3d4e5f6"]
DOMAINS = ["in-domain", "near-domain", "out-domain", "out-domain"]
DETECTIONS = {  # Open Images id -> (class, score); the last image is not in the boxes file
    OPEN_IMAGES[0]: [("Dog", 0.9), ("Cat", 0.8)],
    OPEN_IMAGES[1]: [("Person", 0.99), ("Table", 0.9), ("Dog", 0.7)],  # Person is blacklisted
    OPEN_IMAGES[2]: [("Cat", 0.9), ("Cat", 0.0)],  # score 0 is padding
}
CONSTRAINT_WORDS = {"dog": r"\bdog", "cat": r"\bcat", "table": r"\btable"}  # forms: dog, dogs; table, tables


@pytest.fixture(scope="module")
def nocaps(tmp_path_factory):
    root = tmp_path_factory.mktemp("nocaps")
    src = root / "src"
    rng = np.random.default_rng(0)
    images = [make_image(rng, key, num_boxes=3) for key in OPEN_IMAGES]
    paths = write_regions(src, images, stem="val")
    box_lines = [
        key
        + "\t"
        + json.dumps([{"rect": [0, 0, 50 + i, 60], "class": c, "conf": s} for i, (c, s) in enumerate(boxes)])
        for key, boxes in DETECTIONS.items()
    ]
    (src / "val.cbsbox.tsv").write_text("\n".join(box_lines) + "\n")
    hierarchy = {
        "LabelName": "Entity",
        "Subcategory": [
            {"LabelName": "Animal", "Subcategory": [{"LabelName": "Dog"}, {"LabelName": "Cat"}]},
            {"LabelName": "Furniture", "Subcategory": [{"LabelName": "Table"}]},
        ],
    }
    (src / "class_hierarchy.json").write_text(json.dumps(hierarchy))
    (src / "constraint2tokens.tsv").write_text("dog\tdog\ncat\tcat\ntable\ttable\n")
    (src / "tokenforms.tsv").write_text("dog\tdog,dogs\ntable\ttable,tables\n")
    info = [
        {"id": i, "open_images_id": key, "file_name": f"{key}.jpg", "height": im.height, "width": im.width}
        for i, (key, im) in enumerate(zip(OPEN_IMAGES, images))
    ]
    (src / "nocaps_val_image_info.json").write_text(json.dumps({"images": info}))
    captions = {
        "images": [{**entry, "domain": domain} for entry, domain in zip(info, DOMAINS)],
        "annotations": [
            {"image_id": i, "id": 10 * i + c, "caption": text}
            for i in range(len(OPEN_IMAGES))
            for c, text in enumerate(["a dog and a cat on a table", "an animal next to a table"])
        ],
    }
    (src / "nocaps_val_4500_captions.json").write_text(json.dumps(captions))
    regions = TsvRegionSource(paths["features"], labels=paths["labels"])
    builder = NocapsBuilder(regions, src / "nocaps_val_4500_captions.json", boxes=src / "val.cbsbox.tsv")
    build_dataset(builder, root / "data", progress=False)
    model = root / "model"
    config = OscarConfig(vocab_size=30522, **TINY_MODEL, max_caption_length=40, max_tag_length=30)
    OscarForImageCaptioning(config).save_pretrained(model)
    return {"root": root, "src": src, "data": root / "data", "model": model, "tokenizer": tokenizer_folder(root)}


def test_builder_writes_the_caption_layout_with_detections(nocaps):
    rows = load_split(str(nocaps["data"]), "val")
    assert len(rows) == 4
    assert list(rows["nocaps_id"]) == [0, 1, 2, 3] and list(rows["open_images_id"]) == OPEN_IMAGES
    assert list(rows["domain"]) == DOMAINS
    assert list(rows[0]["cbs_classes"]) == ["dog", "cat"] and np.asarray(rows[0]["cbs_boxes"]).shape == (2, 4)
    assert list(rows[3]["cbs_classes"]) == []  # not in the boxes file: no constraints
    assert list(rows[0]["references"]) == ["a dog and a cat on a table", "an animal next to a table"]
    assert rows[0]["caption_id"] == -1 and np.asarray(rows[0]["img_feats"]).shape == (3, 2054)


def run_predict(nocaps, out, *extra):
    src = nocaps["src"]
    return caption.main(
        [
            "--predict", "--model_name_or_path", str(nocaps["model"]), "--tokenizer_name_or_path", str(nocaps["tokenizer"]),
            "--eval_data", str(nocaps["data"]), "--eval_split", "val", "--output_dir", str(out),
            "--cbs_hierarchy", str(src / "class_hierarchy.json"), "--cbs_constraint_tokens", str(src / "constraint2tokens.tsv"),
            "--cbs_token_forms", str(src / "tokenforms.tsv"), "--nocaps_image_info", str(src / "nocaps_val_image_info.json"),
            "--nocaps_annotations", str(src / "nocaps_val_4500_captions.json"), "--metric_backend", "python",
            "--num_beams", "2", "--max_gen_length", "8", "--max_img_seq_length", "4",
            "--per_device_eval_batch_size", "3", "--report_to", "none", *extra,
        ]
    )  # fmt: skip


@pytest.mark.slow
def test_caption_recipe_with_cbs_writes_submission_and_domain_scores(nocaps, tmp_path):
    path, metrics = run_predict(nocaps, tmp_path / "cbs", "--use_cbs", "--min_constraints_to_satisfy", "2")
    assert path.name == "nocaps_val_predictions.cbs2.json"
    entries = json.loads(path.read_text())
    check_nocaps_submission(entries, [0, 1, 2, 3])  # the server's format, every image once
    for domain in ("in-domain_", "near-domain_", "out-domain_", ""):
        assert {f"{domain}CIDEr", f"{domain}Bleu_4", f"{domain}ROUGE_L"} <= set(metrics)
    assert json.loads(path.with_name(path.stem + ".metrics.json").read_text()) == pytest.approx(metrics)

    # CBS: each caption holds min(2, n) of its constraints (dog, cat | table, dog | cat | none).
    by_id = {e["image_id"]: e["caption"] for e in entries}
    wanted = {0: ["dog", "cat"], 1: ["table", "dog"], 2: ["cat"], 3: []}
    for image_id, words in wanted.items():
        found = [w for w in words if re.search(CONSTRAINT_WORDS[w], by_id[image_id])]
        assert len(found) >= min(2, len(words)), (image_id, by_id[image_id], words)

    # With the key/value cache: the same captions.
    cached_path, _ = run_predict(nocaps, tmp_path / "cached", "--use_cbs", "--cbs_use_cache")
    assert json.loads(cached_path.read_text()) == entries

    # Plain beam search on the same split: the same files, without the .cbs suffix.
    plain_path, plain_metrics = run_predict(nocaps, tmp_path / "plain")
    assert plain_path.name == "nocaps_val_predictions.json"
    check_nocaps_submission(json.loads(plain_path.read_text()), [0, 1, 2, 3])
    assert "out-domain_CIDEr" in plain_metrics


def test_use_cbs_needs_the_constraint_files(tmp_path):
    with pytest.raises(ValueError, match="--cbs_hierarchy"):
        caption.main(["--predict", "--use_cbs", "--output_dir", str(tmp_path), "--report_to", "none"])


def test_builder_without_references_for_test_split(tmp_path):
    rng = np.random.default_rng(1)
    image = make_image(rng, OPEN_IMAGES[0], num_boxes=2)
    paths = write_regions(tmp_path, [image], stem="test")
    info = {"images": [{"id": 7, "open_images_id": OPEN_IMAGES[0], "height": image.height, "width": image.width}]}
    (tmp_path / "nocaps_test_image_info.json").write_text(json.dumps(info))
    boxes = {
        "categories": [{"id": 0, "name": "__background__"}, {"id": 1, "name": "Dog"}],
        "images": [{"id": 7}],
        "annotations": [{"image_id": 7, "category_id": 1, "bbox": [1, 2, 30, 40], "score": 0.8}],
    }
    (tmp_path / "nocaps_test_oi_detector_boxes.json").write_text(json.dumps(boxes))
    regions = TsvRegionSource(paths["features"], labels=paths["labels"])
    builder = NocapsBuilder(
        regions, tmp_path / "nocaps_test_image_info.json", boxes=tmp_path / "nocaps_test_oi_detector_boxes.json",
        split="test",
    )  # fmt: skip
    build_dataset(builder, tmp_path / "data", progress=False)
    row = load_split(str(tmp_path / "data"), "test")[0]
    assert row["nocaps_id"] == 7 and list(row["references"]) == [] and list(row["cbs_classes"]) == ["dog"]
    with pytest.raises(FileNotFoundError, match="image info"):
        NocapsBuilder(regions, tmp_path / "missing.json")


def test_data_cli_builds_nocaps(nocaps, tmp_path):
    from oscar_hf.data.cli import main as data_cli

    src = nocaps["src"]
    code = data_cli(
        [
            "build", "nocaps", "--features", str(src / "val.feature.tsv"), "--labels", str(src / "val.label.tsv"),
            "--annotations", f"val={src / 'nocaps_val_4500_captions.json'}", "--cbs-boxes", str(src / "val.cbsbox.tsv"),
            "--out", str(tmp_path / "cli"), "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    built = load_split(str(tmp_path / "cli"), "val")
    expected = load_split(str(nocaps["data"]), "val")
    assert list(built["open_images_id"]) == list(expected["open_images_id"])
    assert [list(c) for c in built["cbs_classes"]] == [list(c) for c in expected["cbs_classes"]]


@pytest.mark.slow
def test_cbs_benchmark_runs_in_quick_mode(tmp_path, capsys):
    """The benchmark script runs (quick sizes only check it; numbers are claimed in benchmarks/RESULTS.md)."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import cbs_decoding

    report = cbs_decoding.main(["--quick", "--device", "cpu", "--reps", "1", "--json", str(tmp_path / "cbs.json")])
    assert report["quick"] and "QUICK sizes" in capsys.readouterr().out
    assert set(report["variants"]) == {"cbs (recompute)", "cbs (kv cache)", "beam (recompute)", "beam (kv cache)"}
    assert (
        report["fsm_memory"]["sparse_bytes_per_image"] < report["fsm_memory"]["original_dense_bytes_per_image"] / 1000
    )
    assert json.loads((tmp_path / "cbs.json").read_text())["sizes"]["images"] == 2


@pytest.mark.slow
def test_training_evaluates_on_nocaps_with_cbs(nocaps, tmp_path, monkeypatch):
    """COCO-style training rows, NoCaps evaluation rows: the validation loop decodes with CBS."""
    train = write_caption_data(tmp_path / "coco")
    src = nocaps["src"]
    calls = []
    search = caption.constrained_beam_search

    def counting(model, **kwargs):
        calls.append(len(kwargs["fsm"]))
        return search(model, **kwargs)

    monkeypatch.setattr(caption, "constrained_beam_search", counting)
    _, result = caption.main(
        [
            "--train_data", str(train), "--eval_data", str(nocaps["data"]), "--eval_split", "val",
            "--tokenizer_name_or_path", str(nocaps["tokenizer"]), "--config_overrides", tiny_overrides(),
            "--output_dir", str(tmp_path / "run"), "--max_train_steps", "1", "--per_device_train_batch_size", "2",
            "--per_device_eval_batch_size", "2", "--max_img_seq_length", "4", "--num_beams", "2", "--max_gen_length", "8",
            "--metric_backend", "python", "--report_to", "none", "--use_cbs", "--min_constraints_to_satisfy", "1",
            "--cbs_hierarchy", str(src / "class_hierarchy.json"), "--cbs_constraint_tokens", str(src / "constraint2tokens.tsv"),
            "--cbs_token_forms", str(src / "tokenforms.tsv"),
        ]
    )  # fmt: skip
    assert {"eval/CIDEr", "eval/Bleu_4"} <= set(result.history[-1])
    assert sum(calls) == 4  # every NoCaps image went through constrained beam search


@pytest.mark.slow
def test_caption_predict_on_a_coco_split(nocaps, tmp_path):
    """--predict without NoCaps columns: COCO-style [{"image_id", "caption"}] and the COCO metrics."""
    data = write_caption_data(tmp_path / "coco")
    path, metrics = caption.main(
        [
            "--predict", "--model_name_or_path", str(nocaps["model"]), "--tokenizer_name_or_path", str(nocaps["tokenizer"]),
            "--eval_data", str(data), "--eval_split", "val", "--output_dir", str(tmp_path / "out"),
            "--metric_backend", "python", "--num_beams", "2", "--max_gen_length", "8", "--max_img_seq_length", "4",
            "--report_to", "none",
        ]
    )  # fmt: skip
    entries = json.loads(path.read_text())
    assert path.name == "val_predictions.json" and sorted(e["image_id"] for e in entries) == ["204", "205"]
    assert all(isinstance(e["caption"], str) for e in entries) and "CIDEr" in metrics
