"""recipes/vqa.py (VQA and GQA), nlvr2.py and retrieval.py end to end on tiny data.

Each test writes files in the original formats (feature TSV + label TSV, VQA questions and
annotations, GQA questions, NLVR2 jsonl, a Karpathy split file), builds the Parquet datasets with
the data builders, trains a tiny model for 2-3 steps through the recipe's `main`, evaluates with
the metric functions and checks that the exported folder loads with `trust_remote_code=True` in a
process where `oscar_hf` cannot be imported and gives the same logits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from recipe_helpers import run_export_in_fresh_process, tiny_overrides, tokenizer_folder
from test_data_fixtures import make_image, write_regions, write_vqa

from oscar_hf.data import GQABuilder, NLVR2Builder, TsvRegionSource, VQABuilder, build_dataset


sys.path.insert(0, str(REPO_ROOT / "recipes"))
import nlvr2  # noqa: E402
import vqa  # noqa: E402


pytestmark = pytest.mark.slow

COMMON = ["--report_to", "none", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "3"]


def regions(root: Path, keys: list[str], seed: int) -> TsvRegionSource:
    rng = np.random.default_rng(seed)
    images = [make_image(rng, key, num_boxes=2 + i % 2) for i, key in enumerate(keys)]
    return TsvRegionSource(**write_regions(root, images))


def check_export(final: Path, model_class, inputs: dict, tmp_path: Path) -> None:
    """Same logits from the package and from the folder loaded as remote code (package blocked)."""
    model = model_class.from_pretrained(final).eval()
    with torch.no_grad():
        expected = model(**inputs).logits
    got = run_export_in_fresh_process(final, "AutoModelForSequenceClassification", inputs, tmp_path)
    assert got["processor"] == "OscarProcessor"
    torch.testing.assert_close(got["logits"], expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------ VQA / GQA

VQA_VOCAB = ["2", "yes", "no", "dog", "isn't", "3", "cat"]


def test_vqa_trains_evaluates_and_exports_with_answer_vocabulary(tmp_path):
    src = tmp_path / "src"
    source = regions(src, ["101", "103"], seed=1)
    questions, annotations = write_vqa(src)
    (src / "vocab.txt").write_text("\n".join(VQA_VOCAB) + "\n")
    data = tmp_path / "vqa"
    build_dataset(VQABuilder(source, {"train": (questions, annotations), "val": (questions, annotations)},
                             answer_vocab=VQA_VOCAB), data, progress=False)  # fmt: skip
    final, result = vqa.main(
        [
            "--config", str(REPO_ROOT / "recipes" / "configs" / "vqa_base.yaml"),
            "--model_name_or_path", "none",  # YAML points at a released checkpoint; start from random weights
            "--tokenizer_name_or_path", str(tokenizer_folder(tmp_path)),
            "--config_overrides", tiny_overrides(loss_type="bce"),
            "--train_data", str(data), "--eval_data", str(data),
            "--answer_vocab", str(src / "vocab.txt"),
            "--output_dir", str(tmp_path / "run"), "--max_train_steps", "2", "--max_img_seq_length", "4",
            *COMMON,
        ]
    )  # fmt: skip
    assert result.global_step == 2
    metrics = result.history[-1]
    assert {"eval/vqa_score", "eval/accuracy", "eval/soft_score"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("eval/vqa_score", "eval/accuracy"))
    config = json.loads((final / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(VQA_VOCAB))] == VQA_VOCAB
    assert config["label2id"]["dog"] == 3 and config["loss_type"] == "bce"
    processor_config = json.loads((final / "processor_config.json").read_text())
    assert processor_config["max_seq_length"] == 128  # the VQA length travels with the export

    from oscar_hf import OscarForSequenceClassification
    from oscar_hf.training import load_processor

    processor = load_processor(str(final))
    inputs = dict(processor(["how many dogs?"], tags=[["dog", "dog"]], region_features=[np.random.rand(3, 2054)]))
    check_export(final, OscarForSequenceClassification, inputs, tmp_path)


def test_gqa_switch_uses_cross_entropy_and_gqa_lengths(tmp_path):
    src = tmp_path / "src"
    source = regions(src, ["n1", "n2"], seed=2)
    questions = {
        "q1": {"imageId": "n1", "question": "What is it?", "answer": "dog", "fullAnswer": "It is a dog."},
        "q2": {"imageId": "n2", "question": "Which color?", "answer": "red", "fullAnswer": "Red."},
        "q3": {"imageId": "n1", "question": "Which side?", "answer": "left", "fullAnswer": "Left."},  # not in vocab
        "q4": {"imageId": "n2", "question": "Is it a dog?", "answer": "no", "fullAnswer": "No."},
    }
    (src / "q.json").write_text(json.dumps(questions))
    answers = ["red", "dog", "no"]
    (src / "answers.json").write_text(json.dumps(answers))
    data = tmp_path / "gqa"
    build_dataset(GQABuilder(source, {"train": src / "q.json", "val": src / "q.json"}, answer_vocab=answers), data,
                  progress=False)  # fmt: skip
    final, result = vqa.main(
        [
            "--task", "gqa", "--tokenizer_name_or_path", str(tokenizer_folder(tmp_path)),
            "--config_overrides", tiny_overrides(max_position_embeddings=168), "--answer_vocab", str(src / "answers.json"),
            "--train_data", str(data), "--eval_data", str(data),
            "--output_dir", str(tmp_path / "run"), "--max_train_steps", "2", *COMMON,
        ]
    )  # fmt: skip
    # The unanswerable q3 counts as wrong: accuracy is a multiple of 1/4.
    accuracy = result.history[-1]["eval/accuracy"]
    assert accuracy in (0.0, 0.25, 0.5, 0.75)
    config = json.loads((final / "config.json").read_text())
    assert config["loss_type"] == "ce" and len(config["id2label"]) == 3 and config["max_img_seq_length"] == 45
    assert json.loads((final / "processor_config.json").read_text())["max_seq_length"] == 165


def test_vqa_rejects_missing_vocabulary_and_wrong_loss(tmp_path):
    with pytest.raises(ValueError, match="answer vocabulary"):
        vqa.main(["--train_data", str(tmp_path), "--output_dir", str(tmp_path / "run"), "--report_to", "none"])
    args = vqa.parse_recipe_args(vqa.VQAArguments, ["--task", "gqa", "--config_overrides", '{"loss_type": "bce"}'])
    with pytest.raises(ValueError, match="does not fit --task gqa"):
        vqa.model_config(args, ["a", "b"])


# ------------------------------------------------------------------------------------------ NLVR2


def test_nlvr2_trains_evaluates_with_consistency_and_exports(tmp_path):
    src = tmp_path / "src"
    pairs = ("1-0", "1-1", "2-0")  # set-pair: sentence 0 of set 1 is paired with two image pairs
    keys = [f"{split}-{pair}-img{i}" for split in ("train", "dev") for pair in pairs for i in (0, 1)]
    source = regions(src, keys, seed=3)
    for split in ("train", "dev"):
        lines = [
            {"identifier": f"{split}-1-0-0", "sentence": "Two dogs are on a couch.", "label": "True"},
            {"identifier": f"{split}-1-1-0", "sentence": "Two dogs are on a couch.", "label": "False"},
            {"identifier": f"{split}-2-0-1", "sentence": "A red car is parked.", "label": "True"},
        ]
        (src / f"{split}.json").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    data = tmp_path / "nlvr2"
    build_dataset(NLVR2Builder(source, {"train": src / "train.json", "dev": src / "dev.json"}), data, progress=False)
    final, result = nlvr2.main(
        [
            "--config", str(REPO_ROOT / "recipes" / "configs" / "nlvr2_base.yaml"), "--model_name_or_path", "none",
            "--tokenizer_name_or_path", str(tokenizer_folder(tmp_path)),
            "--config_overrides", tiny_overrides(classifier="mlp", cls_hidden_scale=3, num_choice=2, loss_type="ce"),
            "--train_data", str(data), "--eval_data", str(data), "--warmup_steps", "1",
            "--output_dir", str(tmp_path / "run"), "--max_train_steps", "2", *COMMON,
        ]
    )  # fmt: skip
    metrics = result.history[-1]
    # 3 dev examples of 2 sentences: accuracy in thirds, consistency in halves.
    assert round(metrics["eval/accuracy"] * 3, 6) in (0, 1, 2, 3) and metrics["eval/consistency"] in (0.0, 0.5, 1.0)
    assert json.loads((final / "all_results.json").read_text())["accuracy"] == metrics["eval/accuracy"]
    assert json.loads((final / "processor_config.json").read_text())["max_seq_length"] == 55

    from oscar_hf import OscarForNLVR2
    from oscar_hf.training import load_processor

    processor = load_processor(str(final))
    feats = [(np.random.rand(3, 2054), np.random.rand(2, 2054))]
    inputs = dict(processor.nlvr2(["Two dogs."], region_features=feats))
    check_export(final, OscarForNLVR2, inputs, tmp_path)
