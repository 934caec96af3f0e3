"""VQA answer normalisation, answer vocabularies and soft scores.

The normalisation follows the rules of the official VQA evaluation (punctuation handling, number
words to digits, articles dropped, common contractions restored) so that answer strings from the
annotations map onto the vocabulary the way Oscar's preprocessed files did. Soft scores are Oscar's
training targets, 0.3 / 0.6 / 0.9 / 1 for 1 / 2 / 3 / >= 4 of the (normally 10) annotators; the rule
lives in `oscar_hf.metrics.vqa.soft_score_for_count`.
"""

from __future__ import annotations

import json
import pickle
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from oscar_hf.metrics.vqa import soft_score_for_count


_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    out = text
    for mark in _PUNCTUATION:
        # A mark next to a space (or a comma inside a number) is dropped; elsewhere it splits words.
        if (mark + " " in text or " " + mark in text) or re.search(_COMMA_STRIP, text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digits_and_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """Normalise an answer string with the official VQA evaluation rules."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_and_articles(_process_punctuation(text)).replace(",", "")


def soft_score(count: int) -> float:
    """VQA soft target for an answer given by `count` annotators: 0, 0.3, 0.6, 0.9, 1 (Oscar's targets)."""
    return soft_score_for_count(count)


def answer_counts(answers: Iterable[str]) -> Counter:
    """How many annotators gave each normalised answer."""
    return Counter(normalize_answer(answer) for answer in answers)


def build_vocabulary(answers: Iterable[str], min_count: int = 1) -> list[str]:
    """Answers seen at least `min_count` times, most frequent first, ties alphabetical (deterministic)."""
    counts = Counter(answers)
    kept = [answer for answer, count in counts.items() if count >= min_count]
    return sorted(kept, key=lambda answer: (-counts[answer], answer))


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Reads pickles of plain lists/dicts/strings only; any class or function reference is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(
            f"answer vocabulary pickles may only hold lists, dicts and strings; it references {module}.{name}."
        )


def load_vocabulary(path: str | Path) -> list[str]:
    """Answer list (index = label id) from a .txt (one per line), .json (list or {answer: id}) or .pkl.

    `.pkl` covers the original `trainval_label2ans.pkl` / `ans2label.pkl`; it is read with an
    unpickler that refuses every class or function reference, so it cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"answer vocabulary {path} does not exist. Fix: pass an existing --answer-vocab.")
    if path.suffix == ".txt":
        return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".pkl":
        with open(path, "rb") as handle:
            value = _NoGlobalsUnpickler(handle).load()
    else:
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {error.lineno}: malformed JSON ({error.msg}).") from None
    return _vocabulary_from_value(value, path)


def _vocabulary_from_value(value, path: Path) -> list[str]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, dict) and all(isinstance(v, int) for v in value.values()):
        ordered = sorted(value.items(), key=lambda item: item[1])
        if [index for _, index in ordered] != list(range(len(ordered))):
            raise ValueError(f"{path}: answer ids must be 0..{len(ordered) - 1} without gaps. Fix the mapping.")
        return [answer for answer, _ in ordered]
    raise ValueError(f"{path}: expected a list of answers or an {{answer: id}} mapping. Fix the vocabulary file.")
