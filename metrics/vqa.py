"""VQA accuracy with the official answer normalisation, and the soft score Oscar trains against."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np


logger = logging.getLogger(__name__)


# VQA
# ----------------------------------------------------------------------------------------------

# The official VQA evaluation's tables (vqaEval.py of the VQA API), including its quirks.
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = ("a", "an", "the")
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# The official pattern: "(?!<=\d)" is a (mistyped) lookahead, so only "not followed by a digit" acts.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The official code passes re.UNICODE (= 32) where `count` goes, so at most 32 periods are removed.
_PERIOD_MAX_REMOVALS = int(re.UNICODE)


def _vqa_punctuation(text: str) -> str:
    out = text
    digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _PUNCT:
        # Remove a mark that touches a space (or any mark when "1,000"-style numbers occur); otherwise
        # it separates words ("black/white" -> "black white").
        if p + " " in text or " " + p in text or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_REMOVALS)


def _vqa_digits_articles(text: str) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(answer: str) -> str:
    """The official VQA answer normalisation: whitespace, punctuation, number words, articles, contractions.

    Example:
        >>> from oscar_hf.metrics import normalize_vqa_answer
        >>> normalize_vqa_answer("  Two dogs!"), normalize_vqa_answer("The black/white cat."), normalize_vqa_answer("dont")
        ('2 dogs', 'black white cat', "don't")
    """
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _vqa_digits_articles(_vqa_punctuation(answer))


def _check_answer_strings(prediction: Any, answers: Sequence[Any]) -> None:
    """A prediction and annotator answers are strings; None or numbers would silently never match."""
    if isinstance(answers, str) or not isinstance(answers, Sequence) or len(answers) == 0:
        raise ValueError(
            f"answers={answers!r}; expected the list of annotator answers for the question (10 in VQA v2)."
        )
    if not isinstance(prediction, str):
        raise ValueError(
            f"prediction={prediction!r} is {type(prediction).__name__}; expected the predicted answer string "
            "(map label ids to strings with the answer vocabulary first)."
        )
    for i, answer in enumerate(answers):
        if not isinstance(answer, str):
            raise ValueError(f"answers[{i}]={answer!r} is {type(answer).__name__}; expected an answer string.")


def vqa_answer_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction: mean over the leave-one-annotator-out subsets of min(1, matches / 3).

    As in the official evaluation, answers are normalised only when the annotators disagree (when all
    ten gave the same string, the raw prediction must equal it), and matching ignores case.

    Example:
        >>> from oscar_hf.metrics import vqa_answer_accuracy
        >>> vqa_answer_accuracy("yes", ["yes"] * 2 + ["no"] * 8)
        0.6
    """
    _check_answer_strings(prediction, answers)
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    pred = prediction.replace("\n", " ").replace("\t", " ").strip()
    if len(set(gts)) > 1:
        gts = [normalize_vqa_answer(a) for a in gts]
        pred = normalize_vqa_answer(pred)
    pred = pred.lower()
    gts = [a.lower() for a in gts]
    accuracies = []
    for left_out in range(len(gts)):
        matches = sum(1 for i, a in enumerate(gts) if i != left_out and a == pred)
        accuracies.append(min(1.0, matches / 3.0))
    return sum(accuracies) / len(accuracies)


# The training target of an answer given by 0, 1, 2, 3 or >= 4 annotators (bottom-up-attention's
# compute_softscore, whose preprocessed files Oscar trains and evaluates with). It is NOT
# min(1, count / 3): that is the per-subset term of the official accuracy below.
_SOFT_SCORES = (0.0, 0.3, 0.6, 0.9)


def soft_score_for_count(count: int) -> float:
    """Oscar's VQA soft target for an answer given by `count` annotators: 0, 0.3, 0.6, 0.9, then 1 from 4 on.

    The one implementation of the rule: the dataset builders, the collators and `vqa_soft_score` use it.

    Example:
        >>> from oscar_hf.metrics import soft_score_for_count
        >>> [soft_score_for_count(n) for n in range(6)]
        [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count={count!r}; expected how many annotators gave the answer, an int >= 0.")
    return _SOFT_SCORES[count] if count < len(_SOFT_SCORES) else 1.0


def vqa_soft_score(prediction: str, answers: Sequence[str]) -> float:
    """The soft target Oscar trains and evaluates VQA with: 0, 0.3, 0.6, 0.9 or 1 for 0, 1, 2, 3, >=4 annotators.

    These are the scores stored with each question in the Oscar / bottom-up-attention VQA files
    (counting annotators who gave exactly the answer string); Oscar reports the mean score of the
    argmax answer. Unlike the official accuracy there is no leave-one-out, so 3 matches give 0.9.

    Example:
        >>> from oscar_hf.metrics import vqa_soft_score
        >>> vqa_soft_score("yes", ["yes"] * 3 + ["no"] * 7), vqa_soft_score("yes", ["yes"] * 4 + ["no"] * 6)
        (0.9, 1.0)
    """
    _check_answer_strings(prediction, answers)
    count = sum(1 for a in answers if a.strip() == prediction.strip())
    return soft_score_for_count(count)


def vqa_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean official VQA accuracy and mean Oscar soft score over questions.

    Example:
        >>> from oscar_hf.metrics import vqa_accuracy
        >>> vqa_accuracy(["2", "no"], [["two"] * 10, ["yes"] * 9 + ["no"]])
        {'accuracy': 0.15, 'soft_score': 0.15}
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} answer lists; pass one list of annotator answers per question."
        )
    if not predictions:
        raise ValueError("No predictions to score; pass at least one question.")
    accuracy, soft = [], []
    for i, (prediction, answers) in enumerate(zip(predictions, references)):
        try:
            accuracy.append(vqa_answer_accuracy(prediction, answers))
        except ValueError as error:
            raise ValueError(f"question {i}: {error}") from None
        soft.append(vqa_soft_score(prediction, answers))
    return {"accuracy": float(np.mean(accuracy)), "soft_score": float(np.mean(soft))}


# ----------------------------------------------------------------------------------------------
