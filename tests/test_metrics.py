"""Metrics: VQA rules, retrieval recall, NLVR2, CIDEr-D frequencies, pure-Python scorers, module loading.

Nothing here needs Java; the official caption pipeline is checked in test_metrics_coco_caption.py.
"""

from __future__ import annotations

import doctest
import os

import numpy as np
import pytest
from support.data import random_caption_sets

from oscar_hf import metrics as evaluation
from oscar_hf.metrics import (
    CiderD,
    CiderDocumentFrequencies,
    bleu_score,
    coco_caption_scores,
    java_status,
    load_metric,
    metric_path,
    nlvr2_accuracy,
    normalize_vqa_answer,
    retrieval_recall,
    rouge_l_score,
    simple_tokenize,
    vqa_accuracy,
    vqa_answer_accuracy,
    vqa_soft_score,
)


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

JAVA = java_status()


# ------------------------------------------------------------------------------------------------
# VQA: hand-worked cases from the official evaluation's rules
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prediction, answers, expected",
    [
        # 3 of 10 say "2": leaving out one of them leaves 2 matches (2/3), leaving out another leaves 3 (1).
        ("2", ["2"] * 3 + ["3"] * 7, (3 * (2 / 3) + 7 * 1) / 10),
        # Annotators disagree, so "two" is normalised to "2".
        ("two", ["2"] * 3 + ["3"] * 7, (3 * (2 / 3) + 7 * 1) / 10),
        # All ten agree: no normalisation at all, "2" never equals "two" (official quirk) ...
        ("2", ["two"] * 10, 0.0),
        # ... but matching ignores case.
        ("Two", ["two"] * 10, 1.0),
        # 4 matches: every leave-one-out subset still has >= 3.
        ("yes", ["yes"] * 4 + ["no"] * 6, 1.0),
        # A single match: 0 when that annotator is left out, 1/3 otherwise.
        ("cat", ["cat"] + ["dog"] * 9, 9 * (1 / 3) / 10),
        ("cat", ["dog"] * 10, 0.0),
        # Articles are dropped on both sides.
        ("the dog", ["a dog"] * 5 + ["dog"] * 5, 1.0),
        # "/" between words becomes a space.
        ("black/white", ["black white"] * 4 + ["red"] * 6, 1.0),
        # "1,000"-style numbers: every listed mark is deleted, commas included.
        ("1,000", ["1000"] * 3 + ["many"] * 7, 0.9),
        # A final period goes, a decimal point stays.
        ("yes.", ["yes"] * 3 + ["no"] * 7, 0.9),
        ("3.5", ["3.5"] * 3 + ["35"] * 7, 0.9),
        # Contractions are restored, number words become digits ("none" is 0).
        ("dont", ["don't"] * 3 + ["no"] * 7, 0.9),
        ("none", ["0"] * 3 + ["1"] * 7, 0.9),
        # Whitespace is stripped; case is folded when annotators disagree.
        ("  Yes\n", ["yes"] * 3 + ["no"] * 7, 0.9),
    ],
)
def test_vqa_accuracy_hand_worked(prediction, answers, expected):
    assert vqa_answer_accuracy(prediction, answers) == pytest.approx(expected, abs=1e-12)


def test_vqa_normalisation_rules():
    assert normalize_vqa_answer("  Two dogs!") == "2 dogs"
    assert normalize_vqa_answer("The black/white cat.") == "black white cat"
    assert normalize_vqa_answer("red , blue") == "red blue"  # a mark next to a space is deleted
    assert normalize_vqa_answer("isnt") == "isn't"
    assert normalize_vqa_answer("somebody'd") == "somebodyd"  # the official table's own typo
    # The official code passes re.UNICODE (32) as `count`: at most 32 periods are removed.
    assert normalize_vqa_answer("." * 40) == "." * 8


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_soft_score_table(matches, expected):
    answers = ["yes"] * matches + ["no"] * (10 - matches)
    assert vqa_soft_score("yes", answers) == expected


def test_vqa_accuracy_mean_and_bad_input():
    result = vqa_accuracy(["2", "no"], [["2"] * 3 + ["3"] * 7, ["yes"] * 9 + ["no"]])
    assert result["accuracy"] == pytest.approx((0.9 + 0.3) / 2)
    assert result["soft_score"] == pytest.approx((0.9 + 0.3) / 2)
    with pytest.raises(ValueError, match="2 predictions but 1 answer lists"):
        vqa_accuracy(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="annotator answers"):
        vqa_answer_accuracy("a", [])
    with pytest.raises(ValueError, match="annotator answers"):
        vqa_answer_accuracy("a", "a")


# ------------------------------------------------------------------------------------------------
# Retrieval: hand-built score matrices
# ------------------------------------------------------------------------------------------------


def test_retrieval_perfect():
    scores = np.repeat(np.eye(4), 5, axis=1) + 0.01 * np.random.default_rng(0).random((4, 20))
    result = retrieval_recall(scores)
    assert all(result[f"{d}_R@{k}"] == 1.0 for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert result["rsum"] == 6.0


def test_retrieval_worst():
    # 12 images, 1 caption each, every correct pair scores lowest: i2t and t2i ranks are 11.
    scores = 1.0 - np.eye(12)
    result = retrieval_recall(scores, captions_per_image=1)
    assert result == {
        "i2t_R@1": 0.0,
        "i2t_R@5": 0.0,
        "i2t_R@10": 0.0,
        "t2i_R@1": 0.0,
        "t2i_R@5": 0.0,
        "t2i_R@10": 0.0,
        "rsum": 0.0,
    }
    # With 10 images the rank is 9, inside the top 10.
    assert retrieval_recall(1.0 - np.eye(10), captions_per_image=1)["i2t_R@10"] == 1.0


def test_retrieval_ties():
    scores = np.zeros((3, 6))  # 3 images x 2 captions, everything tied
    pessimistic = retrieval_recall(scores, captions_per_image=2, ks=(1, 3, 5))
    # i2t: the 4 wrong captions rank first (rank 4); t2i: the 2 wrong images rank first (rank 2).
    assert pessimistic == {
        "i2t_R@1": 0.0,
        "i2t_R@3": 0.0,
        "i2t_R@5": 1.0,
        "t2i_R@1": 0.0,
        "t2i_R@3": 1.0,
        "t2i_R@5": 1.0,
        "rsum": 3.0,
    }
    optimistic = retrieval_recall(scores, captions_per_image=2, ks=(1,), ties="optimistic")
    assert optimistic["i2t_R@1"] == optimistic["t2i_R@1"] == 1.0
    # A tie between the two correct captions never matters; a tie with one wrong caption does.
    # Texts 0, 1 belong to image 0 and texts 2, 3 to image 1.
    scores = np.array([[0.5, 0.5, 0.5, 0.1], [0.5, 0.2, 0.9, 0.9]])
    result = retrieval_recall(scores, captions_per_image=2, ks=(1, 2))
    # i2t: image 0's best correct score 0.5 ties wrong text 2 -> rank 1; image 1 -> rank 0.
    assert result["i2t_R@1"] == 0.5 and result["i2t_R@2"] == 1.0
    # t2i: text 0 scores 0.5 with both images -> rank 1; texts 1, 2, 3 -> rank 0.
    assert result["t2i_R@1"] == 0.75 and result["t2i_R@2"] == 1.0
    assert retrieval_recall(scores, captions_per_image=2, ks=(1,), ties="optimistic")["rsum"] == 2.0


def test_retrieval_hand_computed_ranks():
    # 3 images, 1 caption each. Row = image, column = text.
    scores = np.array(
        [
            [0.9, 0.8, 0.1],  # image 0: its text ranks 0
            [0.7, 0.6, 0.5],  # image 1: text 1 below text 0 -> rank 1
            [0.3, 0.2, 0.1],  # image 2: text 2 below both -> rank 2
        ]
    )
    i2t, t2i = evaluation.retrieval_ranks(scores, [0, 1, 2])
    assert i2t.tolist() == [0, 1, 2]
    # text 0: image0 0.9 best -> 0; text 1: image0 0.8 > 0.6 -> 1; text 2: image1 0.5 > 0.1, image0 0.1 ties -> 2
    assert t2i.tolist() == [0, 1, 2]
    result = retrieval_recall(scores, captions_per_image=1, ks=(1, 2))
    assert result["i2t_R@1"] == pytest.approx(1 / 3) and result["i2t_R@2"] == pytest.approx(2 / 3)


def test_retrieval_folds_ignore_cross_fold_scores():
    # 10 images x 5 captions in two folds of 5 images. Fold 0 is perfect, fold 1 is worst inside the fold;
    # cross-fold blocks score highest of all, which only the full (num_folds=1) evaluation sees.
    gt = np.repeat(np.eye(10), 5, axis=1)
    scores = np.full((10, 50), 5.0)
    scores[:5, :25] = gt[:5, :25]
    scores[5:, 25:] = 1.0 - gt[5:, 25:]
    folds = retrieval_recall(scores, num_folds=2, ks=(1,))
    assert folds["i2t_R@1"] == 0.5 and folds["t2i_R@1"] == 0.5
    full = retrieval_recall(scores, num_folds=1, ks=(1,))
    assert full["i2t_R@1"] == 0.0 and full["t2i_R@1"] == 0.0


def test_retrieval_torch_and_text_to_image():
    torch = pytest.importorskip("torch")
    scores = torch.tensor([[0.1, 0.9, 0.8], [0.7, 0.2, 0.1]])
    result = retrieval_recall(scores, text_to_image=[1, 0, 0], ks=(1,))
    assert result["i2t_R@1"] == 1.0 and result["t2i_R@1"] == 1.0


@pytest.mark.parametrize(
    "scores, kwargs, message",
    [
        (np.zeros(5), {}, r"shape \(5,\); expected a non-empty \[num_images, num_texts\]"),
        (np.zeros((2, 9)), {}, "9 texts for 2 images, expected num_images \\* captions_per_image = 10"),
        (np.full((2, 10), np.nan), {}, "NaN"),
        (np.zeros((3, 15)), {"num_folds": 2}, "num_folds=2 must be a positive integer dividing the 3 images"),
        (np.zeros((2, 2)), {"text_to_image": [0, 2]}, "outside"),
        (np.zeros((2, 2)), {"text_to_image": [0, 0]}, r"images \[1\] have no matching text"),
        (np.zeros((2, 10)), {"ks": (0,)}, "positive cut-offs"),
    ],
)
def test_retrieval_bad_input(scores, kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_recall(scores, **kwargs)


# ------------------------------------------------------------------------------------------------
# NLVR2
# ------------------------------------------------------------------------------------------------


def test_nlvr2_accuracy_and_consistency():
    ids = ["dev-1-0-0", "dev-1-1-0", "dev-1-2-0", "dev-2-0-1", "dev-2-1-1", "dev-1-0-1"]
    result = nlvr2_accuracy([1, 0, 1, 1, 1, 0], [1, 0, 1, 0, 1, 0], identifiers=ids)
    # Sentences: dev-1-0 all right, dev-2-1 one wrong, dev-1-1 right.
    assert result == {"accuracy": pytest.approx(5 / 6), "consistency": pytest.approx(2 / 3)}
    assert nlvr2_accuracy([1, 1], [1, 0]) == {"accuracy": 0.5}
    assert nlvr2_accuracy([1, 1], [1, 1], groups=["s", "s"])["consistency"] == 1.0
    with pytest.raises(ValueError, match="does not look like 'split-set-pair-sentence'"):
        nlvr2_accuracy([1], [1], identifiers=["dev-1"])
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        nlvr2_accuracy([1, 1], [1])


# ------------------------------------------------------------------------------------------------
# Pure-Python scorers == pycocoevalcap's on the same tokens (no Java involved)
# ------------------------------------------------------------------------------------------------


def test_python_scorers_equal_pycocoevalcap_on_same_tokens():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    sets = random_caption_sets(seed=1, count=60)
    sets.append((["", "a dog"], [["a dog runs"], ["", "a dog"]]))  # empty prediction, empty reference
    worst = 0.0
    for preds, refs in sets:
        preds = [simple_tokenize(p) for p in preds]
        refs = [[simple_tokenize(r) for r in rs] for rs in refs]
        gts = dict(enumerate(refs))
        res = {i: [p] for i, p in enumerate(preds)}
        expected = Bleu(4).compute_score(gts, res, verbose=0)[0]
        expected += [Rouge().compute_score(gts, res)[0], Cider().compute_score(gts, res)[0]]
        got = bleu_score(preds, refs) + [rouge_l_score(preds, refs), CiderD().compute_score(preds, refs)[0]]
        worst = max(worst, max(abs(a - b) for a, b in zip(got, expected)))
    assert worst <= 1e-12


def test_python_backend_scores():
    preds = ["a dog runs on the grass", "A cat, on a sofa."]
    refs = [["a dog running on grass", "a brown dog runs"], ["a cat sleeping on a couch"]]
    scores = coco_caption_scores(preds, refs, backend="python")
    assert set(scores) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    tokenized = [simple_tokenize(p) for p in preds]
    assert tokenized == ["a dog runs on the grass", "a cat on a sofa"]
    assert scores["Bleu_1"] == pytest.approx(bleu_score(tokenized, refs)[0])


def test_simple_tokenize_rules():
    assert simple_tokenize("A man's T-shirt, (red).") == "a man 's t-shirt -lrb- red -rrb-"
    assert simple_tokenize("It doesn't cost 1,000 dollars!") == "it does n't cost 1,000 dollars"
    assert simple_tokenize("two\nlines\rhere") == "two lines here"
    assert simple_tokenize("...") == ""


def test_no_java_auto_falls_back_and_official_explains(monkeypatch):
    monkeypatch.setenv("PATH", "")  # no `java` anywhere
    status = java_status()
    assert not status.official_available and "no `java` executable on PATH" in status.problem
    with pytest.warns(UserWarning, match="fall back to the pure-Python scorers: no `java`"):
        scores = coco_caption_scores(["a dog"], [["a dog runs"]])
    assert "METEOR" not in scores and "Bleu_4" in scores
    with pytest.raises(RuntimeError, match="backend='official' cannot run: no `java` executable on PATH"):
        coco_caption_scores(["a dog"], [["a dog runs"]], backend="official")
    with pytest.raises(RuntimeError, match="The official PTB tokenizer cannot run"):
        evaluation.ptb_tokenize(["a dog"])


def test_spice_is_never_downloaded(monkeypatch):
    pytest.importorskip("pycocoevalcap")
    import pycocoevalcap.spice.get_stanford_models as downloader

    def refuse(*args, **kwargs):
        raise AssertionError("SPICE models download attempted")

    monkeypatch.setattr(downloader, "urlretrieve", refuse)
    monkeypatch.setattr(evaluation, "spice_models_available", lambda: False)
    backend = "official" if JAVA.official_available else "python"
    scores = coco_caption_scores(["a dog", "a cat"], [["a dog runs"], ["a cat"]], backend=backend)
    assert "SPICE" not in scores
    with pytest.raises(RuntimeError, match="stanford-corenlp-3.6.0" if JAVA.official_available else "SPICE needs"):
        coco_caption_scores(["a dog"], [["a dog runs"]], backend=backend, spice=True)


@pytest.mark.parametrize(
    "preds, refs, message",
    [
        (["a", "b"], [["a"]], "Got 2 predictions but 1 reference lists"),
        ([], [], "No predictions"),
        (["a"], [[]], r"references\[0\] is empty"),
        (["a"], ["a dog"], r"references\[0\] is str, expected a list of reference captions"),
        ([None], [["a"]], r"predictions\[0\] is NoneType, expected str"),
        (["a"], [[3]], r"references\[0\]\[0\] is int, expected str"),
    ],
)
def test_coco_caption_bad_input(preds, refs, message):
    with pytest.raises(ValueError, match=message):
        coco_caption_scores(preds, refs, backend="python")


def test_coco_caption_bad_backend():
    with pytest.raises(ValueError, match="backend='java'; expected 'auto', 'official' or 'python'"):
        coco_caption_scores(["a"], [["a"]], backend="java")


# ------------------------------------------------------------------------------------------------
# CIDEr-D document frequencies (SCST)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_cider_document_frequencies_round_trip(tmp_path, suffix):
    preds, refs = random_caption_sets(seed=2, count=1)[0]
    preds = [simple_tokenize(p) for p in preds] + ["a dog"]
    refs = [[simple_tokenize(r) for r in rs] for rs in refs] + [["a dog on the grass"]]
    df = CiderDocumentFrequencies.from_references(refs, tokenizer=None)
    loaded = CiderDocumentFrequencies.load(df.save(tmp_path / f"df{suffix}"))
    assert loaded.counts == df.counts and loaded.num_documents == len(refs)
    # Frequencies of the evaluated references themselves reproduce the corpus-mode (COCO) CIDEr-D exactly.
    corpus_score, corpus_per_image = CiderD().compute_score(preds, refs)
    score, per_image = CiderD(loaded).compute_score(preds, refs)
    assert score == corpus_score and np.array_equal(per_image, corpus_per_image)


def test_cider_training_frequencies_score_single_image(tmp_path):
    train = [["a dog runs on the grass", "a brown dog"], ["a cat on a sofa"], ["two people on a beach"]]
    df = CiderDocumentFrequencies.from_references(train, tokenizer="python")
    path = df.save(tmp_path / "coco_train_df.json")
    # One image: corpus-mode CIDEr-D is 0 by construction (log 1 - log 1), training frequencies are not.
    assert CiderD().compute_score(["a dog runs"], [["a dog runs"]])[0] == 0.0
    assert CiderD(df).compute_score(["a dog runs"], [["a dog runs"]])[0] > 0.0
    scores = coco_caption_scores(["a dog runs"], [["a dog runs"]], backend="python", cider_document_frequencies=path)
    assert scores["CIDEr"] == pytest.approx(CiderD(df).compute_score(["a dog runs"], [["a dog runs"]])[0])


def test_cider_document_frequencies_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CiderDocumentFrequencies.load(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"format": "something"}')
    with pytest.raises(ValueError, match="is not a CIDEr document-frequency file"):
        CiderDocumentFrequencies.load(tmp_path / "other.json")
    with pytest.raises(ValueError, match=r"references\[1\] is empty"):
        CiderDocumentFrequencies.from_references([["a"], []], tokenizer=None)


# ------------------------------------------------------------------------------------------------
# evaluate modules: offline loading by path
# ------------------------------------------------------------------------------------------------


def test_modules_load_offline_by_path_and_helper():
    import evaluate

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_EVALUATE_OFFLINE"] == "1"
    for name in ("coco_caption", "vqa_accuracy", "retrieval_recall", "nlvr2_accuracy"):
        folder = metric_path(name)
        assert (folder / f"{name}.py").is_file() and (folder / "README.md").is_file()
    vqa = load_metric("vqa_accuracy")
    assert vqa.compute(predictions=["two"], references=[["2"] * 3 + ["3"] * 7]) == {
        "accuracy": pytest.approx(0.9),
        "soft_score": 0.0,
    }
    retrieval = evaluate.load(str(metric_path("retrieval_recall")))
    result = retrieval.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], captions_per_image=1, ks=[1])
    assert result == {"i2t_R@1": 1.0, "t2i_R@1": 1.0, "rsum": 2.0}
    assert retrieval.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], text_to_image=[1, 0], ks=[1])["rsum"] == 2.0
    nlvr2 = load_metric("nlvr2_accuracy")
    assert nlvr2.compute(predictions=[1, 0], references=[1, 1], identifiers=["dev-1-0-0", "dev-1-1-0"]) == {
        "accuracy": 0.5,
        "consistency": 0.0,
    }
    captions = load_metric("coco_caption")
    scores = captions.compute(predictions=["a dog runs"], references=[["a dog runs fast"]], backend="python")
    assert set(scores) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    with pytest.raises(ValueError, match="Unknown metric 'bleu'"):
        metric_path("bleu")


@pytest.mark.parametrize(
    ("predictions", "references"),
    [
        ([1, 0, 1, 1], ["True", "False", "False", "True"]),  # model output vs the NLVR2 files' spelling
        (["True", "False", "True", "True"], [1, 0, 0, 1]),
        (["True", "false", "True", "True"], ["True", "False", "False", "true"]),
        ([True, False, True, True], [1, 0, 0, 1]),
    ],
    ids=["int-vs-str", "str-vs-int", "str-vs-str", "bool-vs-int"],
)
def test_nlvr2_module_reads_labels_spelled_as_in_the_files(predictions, references, monkeypatch):
    import evaluate
    from support import REPO_ROOT

    monkeypatch.chdir(REPO_ROOT)  # the relative path users load the module by from a checkout
    nlvr2 = evaluate.load("./metrics/nlvr2_accuracy")
    identifiers = ["dev-1-0-0", "dev-1-1-0", "dev-2-0-1", "dev-2-1-1"]
    result = nlvr2.compute(predictions=predictions, references=references, identifiers=identifiers)
    assert result == {"accuracy": 0.75, "consistency": 0.5}
    with pytest.raises(ValueError, match="expected an NLVR2 label"):
        nlvr2.compute(predictions=[1, 0], references=["yes", "no"])


def test_module_docstring_examples():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    needs_java = {"ptb_tokenize"}
    for test in finder.find(evaluation):
        if not JAVA.official_available and test.name.rsplit(".", 1)[-1] in needs_java:
            continue
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed; run with -s to see them"
