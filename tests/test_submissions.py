"""Test-server prediction files and the COCO 1K retrieval protocol.

The recipes' `--predict` modes (VQA v2 test-dev, GQA test-dev balanced, NLVR2 test-P) run a saved
tiny model over data the tests write in the original formats, and the files they write are checked
against the formats the servers document (and against the official questions / examples files:
every id once). The 1K protocol (mean over five folds of the 5K test set) is compared with five
folds ranked by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from support import REPO_ROOT
from support.data import make_image, write_regions, write_vqa
from support.recipes import TINY_MODEL, tiny_overrides, tokenizer_folder

from oscar_hf import OscarConfig, OscarForNLVR2, OscarForSequenceClassification
from oscar_hf.data import GQABuilder, NLVR2Builder, RetrievalBuilder, TsvRegionSource, VQABuilder, build_dataset
from oscar_hf.metrics import retrieval_recall, retrieval_recall_by_fold
from oscar_hf.metrics.submissions import (
    check_gqa_predictions,
    check_nlvr2_predictions,
    check_nocaps_submission,
    check_vqa_results,
    write_nocaps_submission,
    write_vqa_results,
)


sys.path.insert(0, str(REPO_ROOT / "recipes"))
import nlvr2  # noqa: E402
import retrieval  # noqa: E402
import vqa  # noqa: E402


COMMON = ["--report_to", "none", "--per_device_eval_batch_size", "2"]


def regions(root: Path, keys: list[str], seed: int) -> TsvRegionSource:
    rng = np.random.default_rng(seed)
    images = [make_image(rng, key, num_boxes=2 + i % 2) for i, key in enumerate(keys)]
    return TsvRegionSource(**write_regions(root, images))


def saved_model(model_class, folder: Path, **config) -> Path:
    """A tiny "fine-tuned" folder: what --predict loads."""
    model_class(OscarConfig(vocab_size=30522, **{**TINY_MODEL, **config})).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------- VQA v2


@pytest.mark.slow
def test_vqa_predict_writes_the_test_dev_result_file(tmp_path):
    src = tmp_path / "src"
    source = regions(src, ["101", "103"], seed=1)
    train_q, train_a = write_vqa(src)
    # test-dev has questions only (no annotations file).
    test_questions = [
        {"image_id": image, "question": f"Q{qid}?", "question_id": qid}
        for qid, image in ((7, 101), (8, 103), (9, 101))
    ]
    test_q = src / "v2_OpenEnded_mscoco_test-dev2015_questions.json"
    test_q.write_text(json.dumps({"data_subtype": "test-dev2015", "questions": test_questions}))
    answers = ["2", "yes", "no", "dog"]
    data = tmp_path / "vqa"
    splits = {"train": (train_q, train_a), "testdev": (test_q, None)}
    build_dataset(VQABuilder(source, splits, answer_vocab=answers), data, progress=False)
    model = saved_model(OscarForSequenceClassification, tmp_path / "model", id2label=dict(enumerate(answers)))
    path = vqa.main(
        [
            "--predict", "--model_name_or_path", str(model), "--tokenizer_name_or_path", str(tokenizer_folder(tmp_path)),
            "--eval_data", str(data), "--predict_split", "testdev", "--questions_file", str(test_q),
            "--output_dir", str(tmp_path / "out"), "--max_img_seq_length", "4", *COMMON,
        ]
    )  # fmt: skip
    assert Path(path).name == "vqa_OpenEnded_mscoco_testdev_oscar_results.json"
    results = json.loads(Path(path).read_text())
    check_vqa_results(results, [7, 8, 9])
    assert sorted(r["question_id"] for r in results) == [7, 8, 9] and {r["answer"] for r in results} <= set(answers)


def test_vqa_result_checks():
    good = [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "2"}]
    check_vqa_results(good, [1, 2])
    with pytest.raises(ValueError, match="no prediction"):
        check_vqa_results(good[:1], [1, 2])
    with pytest.raises(ValueError, match="more than once"):
        check_vqa_results(good + good[:1])
    with pytest.raises(ValueError, match="must be an int"):
        check_vqa_results([{"question_id": "1", "answer": "yes"}])
    with pytest.raises(ValueError, match="exactly question_id and answer"):
        check_vqa_results([{"question_id": 1, "answer": "yes", "score": 1.0}])
    with pytest.raises(ValueError, match="not in the split"):
        write_vqa_results([1, 2, 3], ["a", "b", "c"], "unused.json", expected_question_ids=[1, 2])


# -------------------------------------------------------------------------------------------- GQA


@pytest.mark.slow
def test_gqa_predict_writes_test_dev_balanced_predictions(tmp_path):
    src = tmp_path / "src"
    source = regions(src, ["n1", "n2"], seed=2)
    train = {"q1": {"imageId": "n1", "question": "What is it?", "answer": "dog", "fullAnswer": "A dog."}}
    testdev = {
        "201": {"imageId": "n1", "question": "Which color?", "answer": "red", "fullAnswer": "Red."},
        "202": {"imageId": "n2", "question": "Is it a dog?", "answer": "no", "fullAnswer": "No."},
    }
    (src / "train.json").write_text(json.dumps(train))
    (src / "testdev_balanced_questions.json").write_text(json.dumps(testdev))
    answers = ["red", "dog", "no"]
    data = tmp_path / "gqa"
    splits = {"train": src / "train.json", "testdev": src / "testdev_balanced_questions.json"}
    build_dataset(GQABuilder(source, splits, answer_vocab=answers), data, progress=False)
    model = saved_model(
        OscarForSequenceClassification, tmp_path / "model", id2label=dict(enumerate(answers)), loss_type="ce",
        max_position_embeddings=168,
    )  # fmt: skip
    path = vqa.main(
        [
            "--task", "gqa", "--predict", "--model_name_or_path", str(model),
            "--tokenizer_name_or_path", str(tokenizer_folder(tmp_path)), "--eval_data", str(data),
            "--predict_split", "testdev", "--questions_file", str(src / "testdev_balanced_questions.json"),
            "--output_dir", str(tmp_path / "out"), *COMMON,
        ]
    )  # fmt: skip
    predictions = json.loads(Path(path).read_text())
    check_gqa_predictions(predictions, ["201", "202"])
    assert {p["prediction"] for p in predictions} <= set(answers)


def test_gqa_prediction_checks():
    check_gqa_predictions([{"questionId": "5", "prediction": "no"}], ["5"])
    with pytest.raises(ValueError, match="both be strings"):
        check_gqa_predictions([{"questionId": 5, "prediction": "no"}])
    with pytest.raises(ValueError, match="no prediction"):
        check_gqa_predictions([{"questionId": "5", "prediction": "no"}], ["5", "6"])


# ------------------------------------------------------------------------------------------ NLVR2


@pytest.mark.slow
def test_nlvr2_predict_writes_test_p_csv(tmp_path):
    src = tmp_path / "src"
    keys = [f"{split}-{pair}-img{i}" for split in ("train", "test1") for pair in ("1-0", "1-1") for i in (0, 1)]
    source = regions(src, keys, seed=3)
    for split in ("train", "test1"):
        lines = [
            {"identifier": f"{split}-1-0-0", "sentence": "Two dogs are on a couch.", "label": "True"},
            {"identifier": f"{split}-1-1-0", "sentence": "Two dogs are on a couch.", "label": "False"},
        ]
        (src / f"{split}.json").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    data = tmp_path / "nlvr2"
    build_dataset(
        NLVR2Builder(source, {"train": src / "train.json", "test1": src / "test1.json"}), data, progress=False
    )
    model = saved_model(OscarForNLVR2, tmp_path / "model", num_labels=2, num_choice=2, loss_type="ce")
    path = nlvr2.main(
        [
            "--predict", "--model_name_or_path", str(model), "--tokenizer_name_or_path", str(tokenizer_folder(tmp_path)),
            "--eval_data", str(data), "--predict_split", "test1", "--examples_file", str(src / "test1.json"),
            "--output_dir", str(tmp_path / "out"), *COMMON,
        ]
    )  # fmt: skip
    text = Path(path).read_text()
    check_nlvr2_predictions(text, ["test1-1-0-0", "test1-1-1-0"])
    # What lil-lab/nlvr's eval/metrics.py does with it: split on ",", compare lower-cased to "true"/"false".
    parsed = dict(line.strip().split(",") for line in text.splitlines() if line)
    assert set(parsed) == {"test1-1-0-0", "test1-1-1-0"} and {v.lower() for v in parsed.values()} <= {"true", "false"}


def test_nlvr2_prediction_checks():
    check_nlvr2_predictions("dev-1-0-0,True\ndev-1-1-0,False\n", ["dev-1-0-0", "dev-1-1-0"])
    with pytest.raises(ValueError, match="expected 'identifier,True'"):
        check_nlvr2_predictions("dev-1-0-0,1\n")


# ----------------------------------------------------------------------------------------- NoCaps


def test_nocaps_submission_maps_open_images_ids(tmp_path):
    info = {
        "images": [
            {"id": 0, "open_images_id": "0013ea2087020901", "file_name": "a.jpg", "height": 10, "width": 10},
            {"id": 1, "open_images_id": "0002ab0af02e4a77", "file_name": "b.jpg", "height": 10, "width": 10},
        ]
    }
    path = write_nocaps_submission(["0002ab0af02e4a77", "0013ea2087020901"], ["a b", "c d"], tmp_path / "s.json", info)
    entries = json.loads(path.read_text())
    assert entries == [{"image_id": 1, "caption": "a b"}, {"image_id": 0, "caption": "c d"}]
    check_nocaps_submission(entries, [0, 1])
    with pytest.raises(ValueError, match="no prediction"):
        write_nocaps_submission(["0002ab0af02e4a77"], ["a b"], tmp_path / "t.json", info)
    with pytest.raises(ValueError, match="neither an Open Images id"):
        write_nocaps_submission(["ffff", "0013ea2087020901"], ["a", "b"], tmp_path / "u.json", info)


# ------------------------------------------------------------------------------- COCO 1K protocol


def hand_recall(scores: np.ndarray, owner: np.ndarray, images: list[int], k: int) -> tuple[float, float]:
    """R@k both ways inside one fold, by explicit ranking (a correct item after equal-scored wrong ones)."""
    texts = [t for t in range(len(owner)) if owner[t] in images]
    i2t_hits = 0
    for i in images:
        best = max(scores[i, t] for t in texts if owner[t] == i)
        rank = sum(scores[i, t] >= best for t in texts if owner[t] != i)
        i2t_hits += rank < k
    t2i_hits = 0
    for t in texts:
        own = scores[owner[t], t]
        rank = sum(scores[i, t] >= own for i in images if i != owner[t])
        t2i_hits += rank < k
    return i2t_hits / len(images), t2i_hits / len(texts)


def test_1k_recall_is_the_mean_of_five_hand_ranked_folds():
    rng = np.random.default_rng(0)
    num_images, per_image = 15, 5
    owner = np.repeat(np.arange(num_images), per_image)
    scores = rng.normal(size=(num_images, num_images * per_image))
    scores[owner, np.arange(len(owner))] += 1.5  # some signal, far from perfect
    scores = np.round(scores, 1)  # ties too
    folds = np.arange(num_images) // 3  # five folds of three images, in test order like test_5k
    expected = {}
    for k in (1, 5, 10):
        per_fold = [hand_recall(scores, owner, list(np.flatnonzero(folds == f)), k) for f in range(5)]
        expected[f"i2t_R@{k}"] = np.mean([i2t for i2t, _ in per_fold])
        expected[f"t2i_R@{k}"] = np.mean([t2i for _, t2i in per_fold])
    by_fold = retrieval_recall_by_fold(scores, folds=folds, captions_per_image=per_image)
    for key, value in expected.items():
        assert by_fold[key] == pytest.approx(value), key
    assert by_fold["rsum"] == pytest.approx(sum(expected.values()))
    # Consecutive folds: the same as the 5K matrix cut into five blocks.
    assert by_fold == pytest.approx(retrieval_recall(scores, num_folds=5))
    # The retrieval recipe reports it as 1k_* next to the full split's (5K) numbers.
    reported = retrieval.full_recall(scores, owner, folds)
    assert reported["i2t_R@1"] == pytest.approx(retrieval_recall(scores)["i2t_R@1"])
    assert {f"1k_{key}": value for key, value in by_fold.items()} == pytest.approx(
        {key: value for key, value in reported.items() if key.startswith("1k_")}
    )
    assert retrieval.full_recall(scores, owner, None).keys() == retrieval_recall(scores).keys()


@pytest.mark.slow
def test_retrieval_recipe_reports_1k_folds_next_to_5k(tmp_path):
    """test_5k with five folds (fold_size 2 here): the recipe's 1k_* equal the fold mean of its own matrix."""
    src = tmp_path / "src"
    keys = [str(200 + i) for i in range(12)]
    source = regions(src, keys, seed=6)
    things = ["dog", "cat", "table", "red car", "person", "dog"]
    karpathy = {
        "dataset": "coco",
        "images": [
            {
                "cocoid": int(key), "filename": f"{key}.jpg", "split": "train" if i < 2 else "test",
                "sentences": [{"raw": f"A {things[i % 6]} seen {c}.", "sentid": int(key) * 10 + c} for c in range(2)],
            }
            for i, key in enumerate(keys)
        ],
    }  # fmt: skip
    (src / "dataset_coco.json").write_text(json.dumps(karpathy))
    data = tmp_path / "data"
    build_dataset(RetrievalBuilder(source, src / "dataset_coco.json", fold_size=2), data, progress=False)
    scored = {}
    original = retrieval.full_recall

    def spy(matrix, text_to_image, folds):
        scored.update(matrix=matrix, text_to_image=text_to_image, folds=folds)
        return original(matrix, text_to_image, folds)

    retrieval.full_recall = spy
    try:
        final, result = retrieval.main(
            [
                "--config", str(REPO_ROOT / "recipes" / "configs" / "retrieval_base.yaml"), "--model_name_or_path", "none",
                "--tokenizer_name_or_path", str(tokenizer_folder(tmp_path)), "--config_overrides", tiny_overrides(num_labels=2),
                "--train_data", str(data), "--eval_data", str(data), "--eval_split", "test_5k", "--eval_mode", "full",
                "--output_dir", str(tmp_path / "run"), "--max_train_steps", "1", "--per_device_train_batch_size", "2",
                *COMMON,
            ]
        )  # fmt: skip
    finally:
        retrieval.full_recall = original
    metrics = result.history[-1]
    assert list(scored["folds"]) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    by_fold = retrieval_recall_by_fold(scored["matrix"], folds=scored["folds"], text_to_image=scored["text_to_image"])
    for key, value in by_fold.items():
        assert metrics[f"eval/1k_{key}"] == pytest.approx(value), key
    assert metrics["eval/i2t_R@1"] == pytest.approx(
        retrieval_recall(scored["matrix"], text_to_image=scored["text_to_image"])["i2t_R@1"]
    )
    card = (final / "README.md").read_text()
    assert "1k_i2t_R@1" in card and "mean of the five 1K folds" in card
