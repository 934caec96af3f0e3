"""Bad inputs to the metrics: each is an exception naming the value and the expectation, never a silent 0 %.

Also the VQA soft-target rule (Oscar's 0.3 / 0.6 / 0.9 / 1) against the original's numbers.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from oscar_hf.data import soft_score
from oscar_hf.metrics import (
    nlvr2_accuracy,
    nlvr2_label,
    retrieval_recall,
    soft_score_for_count,
    vqa_accuracy,
    vqa_answer_accuracy,
    vqa_soft_score,
)


def raises(error: type, *fragments: str):
    """pytest.raises matching every fragment (each escaped), in any order."""
    pattern = "".join(f"(?=.*{re.escape(fragment)})" for fragment in fragments)
    return pytest.raises(error, match=re.compile(pattern, re.S))


# --------------------------------------------------------------------------------------- VQA targets

# bottom-up-attention's compute_softscore (the preprocessing behind Oscar's VQA files) scores an
# answer given by 0, 1, 2, 3, >= 4 of the 10 annotators as 0, 0.3, 0.6, 0.9, 1.
ORIGINAL_TARGETS = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9, 4: 1.0, 5: 1.0, 10: 1.0}


@pytest.mark.parametrize("count, target", sorted(ORIGINAL_TARGETS.items()))
def test_one_soft_target_rule_for_builders_and_metric(count, target):
    assert soft_score_for_count(count) == target
    assert soft_score(count) == target  # the builders' targets
    answers = ["yes"] * count + ["no"] * (10 - count)
    assert vqa_soft_score("yes", answers) == target  # the metric's soft score


@pytest.mark.parametrize(
    "matches, official",
    # Official accuracy: mean over the 10 leave-one-out subsets of min(1, matches / 3).
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_official_accuracy_stays_ten_choose_nine(matches, official):
    answers = ["yes"] * matches + ["no"] * (10 - matches)
    expected = np.mean([min(1.0, (matches - (i < matches)) / 3) for i in range(10)])
    assert vqa_answer_accuracy("yes", answers) == pytest.approx(expected) == pytest.approx(official)


def test_soft_target_and_accuracy_differ_for_five_annotators_of_nine():
    # With 9 annotator answers, 3 matches: soft target 0.9, official (9 choose 8) = (6 * 1 + 3 * 2/3) / 9.
    answers = ["yes"] * 3 + ["no"] * 6
    assert vqa_soft_score("yes", answers) == 0.9
    assert vqa_answer_accuracy("yes", answers) == pytest.approx(8 / 9)


@pytest.mark.parametrize("count", [-1, 1.5, "3", None, True])
def test_soft_score_for_count_rejects_non_counts(count):
    with raises(ValueError, f"count={count!r}", "int >= 0"):
        soft_score_for_count(count)


# ------------------------------------------------------------------------------------------- VQA metric


@pytest.mark.parametrize(
    "prediction, answers, fragments",
    [
        (None, ["yes"] * 10, ("prediction=None", "predicted answer string")),
        (3, ["3"] * 10, ("prediction=3", "answer vocabulary")),
        ("yes", ["yes", None, "no"], ("answers[1]=None", "answer string")),
        ("yes", "yes", ("answers='yes'", "list of annotator answers")),
        ("yes", [], ("answers=[]", "list of annotator answers")),
        ("yes", None, ("answers=None", "list of annotator answers")),
    ],
)
def test_vqa_answer_accuracy_bad_inputs(prediction, answers, fragments):
    with raises(ValueError, *fragments):
        vqa_answer_accuracy(prediction, answers)
    with raises(ValueError, *fragments):
        vqa_soft_score(prediction, answers)


def test_vqa_accuracy_names_the_question_of_a_none_entry():
    with raises(ValueError, "question 1", "prediction=None"):
        vqa_accuracy(["yes", None], [["yes"] * 10, ["no"] * 10])
    with raises(ValueError, "question 0", "answers[2]=None"):
        vqa_accuracy(["yes"], [["yes", "yes", None]])


def test_vqa_accuracy_length_mismatch_and_empty():
    with raises(ValueError, "2 predictions but 1 answer lists"):
        vqa_accuracy(["a", "b"], [["a"] * 10])
    with raises(ValueError, "No predictions"):
        vqa_accuracy([], [])


# ----------------------------------------------------------------------------------------------- NLVR2


def test_nlvr2_file_spellings_against_model_predictions_are_not_zero_percent():
    """The NLVR2 files say "True"/"False"; models predict 0/1. Before: 0 % accuracy, silently."""
    result = nlvr2_accuracy([1, 0, 1, 0], ["True", "False", "true", "True"])
    assert result["accuracy"] == 0.75
    assert nlvr2_accuracy([True, False], [1, 0])["accuracy"] == 1.0
    assert nlvr2_accuracy(np.array([1, 0]), np.array([1, 1]))["accuracy"] == 0.5


@pytest.mark.parametrize("bad", [None, "yes", 2, -1, 0.5, "", [1]])
def test_nlvr2_label_rejects_other_values(bad):
    with raises(ValueError, f"is {bad!r}", "expected an NLVR2 label"):
        nlvr2_label(bad)


def test_nlvr2_accuracy_names_the_bad_entry():
    with raises(ValueError, "predictions[1] is None", "NLVR2 label"):
        nlvr2_accuracy([1, None], [1, 0])
    with raises(ValueError, "references[0] is 'maybe'", "NLVR2 label"):
        nlvr2_accuracy([1], ["maybe"])


# ------------------------------------------------------------------------------------------- retrieval


def test_ragged_score_rows_name_the_row():
    with raises(ValueError, "scores[0] has 5", "scores[1] has 4", "[num_images, num_texts]"):
        retrieval_recall([[0.1] * 5, [0.2] * 4], captions_per_image=5)


def test_none_score_names_the_cell():
    with raises(ValueError, "scores[1][2] is None", "expected a number"):
        retrieval_recall([[0.1] * 5, [0.2, 0.1, None, 0.3, 0.4]], captions_per_image=5, ks=(1,))


def test_score_row_that_is_not_a_row():
    with raises(ValueError, "scores[1] is float", "row of match scores"):
        retrieval_recall([[0.1] * 5, 0.3], captions_per_image=5)


def test_nan_scores_and_wrong_shape():
    with raises(ValueError, "NaN or infinite", "finite match scores"):
        retrieval_recall(np.full((2, 10), np.nan), captions_per_image=5)
    with raises(ValueError, "10 texts for 3 images", "captions_per_image"):
        retrieval_recall(np.zeros((3, 10)), captions_per_image=5)
