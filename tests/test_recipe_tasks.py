"""recipes/vqa.py (VQA and GQA), nlvr2.py and retrieval.py end to end on tiny data.

Each test writes files in the original formats (feature TSV + label TSV, VQA questions and
annotations, GQA questions, NLVR2 jsonl, a Karpathy split file), builds the Parquet datasets with
the data builders, trains a tiny model for 2-3 steps through the recipe's `main`, evaluates with
the metric functions and checks that the exported folder loads with `trust_remote_code=True` in a
process where `oscar_hf` cannot be imported and gives the same logits.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import REPO_ROOT, run_isolated
from support.data import make_image, write_regions, write_vqa
from support.recipes import run_export_in_fresh_process, tiny_overrides, tokenizer_folder

from oscar_hf.data import GQABuilder, NLVR2Builder, RetrievalBuilder, TsvRegionSource, VQABuilder, build_dataset


sys.path.insert(0, str(REPO_ROOT / "recipes"))
import nlvr2  # noqa: E402
import retrieval  # noqa: E402
import vqa  # noqa: E402


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


@pytest.mark.slow
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

    # The card's usage snippet runs as written (repository id -> the folder), where oscar_hf is blocked.
    card = (final / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    repo_id = re.search(r'model="([^"]+)"', snippet).group(1)
    snippet = snippet.replace(f'"{repo_id}"', repr(str(final))).replace("print(", "answers = (")
    answers = run_isolated(
        snippet + '\nprint("RESULT " + json.dumps(answers, default=float))\n', workdir=tmp_path / "card"
    )
    assert answers and set(answers[0]) == {"answer", "score"} and answers[0]["answer"] in VQA_VOCAB


@pytest.mark.slow
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
            "--output_dir", str(tmp_path / "run"), "--max_train_steps", "2", "--group_by_length", *COMMON,
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


@pytest.mark.slow
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


# -------------------------------------------------------------------------------------- retrieval


@pytest.fixture(scope="module")
def retrieval_data(tmp_path_factory):
    """Karpathy split file: 4 train images and 3 val images, 2 captions each, built to Parquet."""
    root = tmp_path_factory.mktemp("retrieval")
    splits = {str(100 + i): "train" if i < 4 else "val" for i in range(7)}
    source = regions(root / "src", list(splits), seed=4)
    things = ["dog", "cat", "table", "red car", "person", "dog", "cat"]
    karpathy = {
        "dataset": "coco",
        "images": [
            {
                "cocoid": int(key), "filename": f"{key}.jpg", "split": split,
                "sentences": [{"raw": f"A {things[i]} seen {c}.", "sentid": int(key) * 10 + c} for c in range(2)],
            }
            for i, (key, split) in enumerate(splits.items())
        ],
    }  # fmt: skip
    (root / "src" / "dataset_coco.json").write_text(json.dumps(karpathy))
    build_dataset(RetrievalBuilder(source, root / "src" / "dataset_coco.json"), root / "data", progress=False)
    return root / "data", tokenizer_folder(root)


def run_retrieval(retrieval_data, out, *extra):
    data, tokenizer = retrieval_data
    return retrieval.main(
        [
            "--config", str(REPO_ROOT / "recipes" / "configs" / "retrieval_base.yaml"), "--model_name_or_path", "none",
            "--tokenizer_name_or_path", str(tokenizer), "--config_overrides", tiny_overrides(num_labels=2),
            "--train_data", str(data), "--eval_data", str(data), "--output_dir", str(out),
            "--max_train_steps", "3", "--seed", "5", *COMMON, *extra,
        ]
    )  # fmt: skip


@pytest.mark.slow
def test_retrieval_full_scoring_trains_evaluates_and_exports(retrieval_data, tmp_path):
    final, result = run_retrieval(retrieval_data, tmp_path / "full", "--eval_mode", "full")
    assert result.global_step == 3  # 8 positive pairs, 2 per batch (+2 negatives)
    metrics = result.history[-1]
    assert {"eval/i2t_R@1", "eval/t2i_R@10", "eval/rsum"} <= set(metrics)
    assert metrics["eval/i2t_R@5"] == metrics["eval/t2i_R@5"] == 1.0  # 3 images, 6 captions: R@5 of i2t trivially 1
    assert json.loads((final / "all_results.json").read_text())["rsum"] == pytest.approx(metrics["eval/rsum"])

    from oscar_hf import OscarForImageTextRetrieval
    from oscar_hf.training import load_processor

    processor = load_processor(str(final))
    inputs = dict(processor(["a dog on a couch"], tags=[["dog"]], region_features=[np.random.rand(3, 2054)]))
    check_export(final, OscarForImageTextRetrieval, inputs, tmp_path)

    # Re-ranking with k >= the candidate count scores every pair: same numbers as full scoring
    # (same seed, same model); with k = 1 only the first stage's best candidates are re-scored.
    _, reranked = run_retrieval(retrieval_data, tmp_path / "rerank", "--eval_mode", "rerank", "--rerank_top_k", "6")
    for key, value in metrics.items():
        assert reranked.history[-1][key] == pytest.approx(value), key


def test_retrieval_negatives_swap_the_caption_or_the_image(retrieval_data):
    from oscar_hf.processors.collators import OscarRetrievalTrainCollator
    from oscar_hf.training import load_processor, load_split

    data, tokenizer = retrieval_data
    images = load_split(str(data), "train")
    processor = load_processor(str(tokenizer), max_img_seq_length=4, max_seq_length=24)
    pairs = [(0, 0), (1, 1), (2, 0)]
    positives = processor([images[r]["captions"][c] for r, c in pairs], tags=[list(images[r]["tags"]) for r, _ in pairs],
                          region_features=[images[r]["img_feats"] for r, _ in pairs])  # fmt: skip
    for probability, same_text, same_regions in ((1.0, False, True), (0.0, True, False)):
        collator = OscarRetrievalTrainCollator(processor, images, torch.Generator().manual_seed(0), probability, 24)
        batch = collator(pairs)
        assert batch["labels"].tolist() == [1, 1, 1, 0, 0, 0]
        torch.testing.assert_close(batch["img_feats"][:3], positives["img_feats"])

        def caption(ids, types):  # the text_a segment ([CLS] caption [SEP]): token type 0, not padding
            return ids[(types == 0) & (ids != 0)].tolist()

        for i in range(3):
            negative = caption(batch["input_ids"][3 + i], batch["token_type_ids"][3 + i])
            positive = caption(positives["input_ids"][i], positives["token_type_ids"][i])
            assert (negative == positive) == same_text
            assert bool((batch["img_feats"][3 + i] == positives["img_feats"][i]).all()) == same_regions
    with pytest.raises(ValueError, match="at least 2 images"):
        OscarRetrievalTrainCollator(processor, images.select([0]))


def test_rerank_orders_only_the_first_stage_candidates():
    from oscar_hf.training.finetuning import rerank_recall, tag_overlap_scores, top_k_mask

    first_stage = np.array([[0.1, 0.9], [0.9, 0.1]])  # a first stage that prefers the wrong captions
    cross = np.eye(2)  # a cross-encoder that knows better
    owner = np.array([0, 1])
    top1 = rerank_recall(first_stage, cross, top_k_mask(first_stage, 1, 1), top_k_mask(first_stage, 1, 0), owner)
    assert top1["i2t_R@1"] == top1["t2i_R@1"] == 0.0  # the right pair was never a candidate
    top2 = rerank_recall(first_stage, cross, top_k_mask(first_stage, 2, 1), top_k_mask(first_stage, 2, 0), owner)
    assert top2["i2t_R@1"] == top2["t2i_R@1"] == 1.0 and top2["rsum"] == 6.0
    scores = tag_overlap_scores([["dog", "couch"], ["red car"]], ["A dog on a couch.", "A red car.", "Nothing."])
    np.testing.assert_allclose(scores, [[1, 0, 0], [0, 1, 0]], atol=1e-6)


@pytest.mark.parametrize(
    "recipe, config",
    [
        ("vqa", "vqa_base"), ("vqa", "vqa_large"), ("vqa", "gqa_base"), ("nlvr2", "nlvr2_base"),
        ("nlvr2", "nlvr2_large"), ("retrieval", "retrieval_base"), ("retrieval", "retrieval_large"),
    ],
)  # fmt: skip
def test_paper_configs_parse_into_the_recipe_arguments(recipe, config):
    module = {"vqa": vqa, "nlvr2": nlvr2, "retrieval": retrieval}[recipe]
    arg_class = next(v for k, v in vars(module).items() if k.endswith("Arguments") and k != "FinetuneArguments")
    args = module.parse_recipe_args(arg_class, ["--config", str(REPO_ROOT / "recipes" / "configs" / f"{config}.yaml")])
    assert args.max_seq_length == {"vqa": 128, "gqa": 165, "nlvr2": 55, "retrieval": 70}[config.split("_")[0]]
    assert args.config_dict()["num_labels"] in (2, 1853, 3129)
