"""`coco_caption` equals pycocoevalcap called directly, on 50+ caption sets (needs Java).

The reference side runs what `pycocoevalcap.eval.COCOEvalCap.evaluate` runs, set by set: two
PTBTokenizer calls, then Bleu(4), Meteor, Rouge and Cider on the tokenised dicts, with its own
METEOR process. The metric side goes through `evaluate` and the module in `metrics/coco_caption`.
"""

from __future__ import annotations

import os
import time

import pytest
from support.data import random_caption_sets

from oscar_hf.metrics import (
    CiderDocumentFrequencies,
    java_status,
    load_metric,
    ptb_tokenize,
    simple_tokenize,
)


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

STATUS = java_status()
pytestmark = pytest.mark.skipif(
    not STATUS.official_available,
    reason=f"official COCO caption pipeline unavailable: {STATUS.problem}",
)

EDGE_CASES = {
    "empty prediction": (
        ["", "a dog runs on the grass"],
        [["a man riding a horse", "a person on a horse"], ["a dog running on grass", "a brown dog runs"]],
    ),
    "empty prediction last": (
        ["a cat on a sofa", ""],
        [["a cat sleeping on a couch"], ["two people on a beach", "people walking"]],
    ),
    "punctuation": (
        [
            "A man, riding a horse... on the beach!!!",
            '"Quoted" (red) t-shirt; -- yes?',
            "...",
            "A man's dog; isn't it?",
        ],
        [
            ["A man rides a horse on the beach.", "Someone on a horse, at the beach!"],
            ['A red t-shirt - "quoted"', "(red) shirt"],
            ["a dog.", "a dog!"],
            ["The man's dog isn't small.", "a dog"],
        ],
    ),
    "unicode": (
        ["Un café crème sur la table", "naïve 日本語 text", "A man — smiling “happily”", "ÉCOLE with emoji 😀"],
        [
            ["Un café sur une table", "café crème"],
            ["日本語 text", "naïve text here"],
            ["a man smiling happily", "a smiling man"],
            ["école building", "a school with 😀 sign"],
        ],
    ),
    "one image": (["a dog runs"], [["a dog runs", "a dog is running"]]),
    "identical to a reference": (
        ["a dog is running on the grass", "a cat on a sofa"],
        [["a dog is running on the grass", "a dog outside"], ["a cat on a sofa"]],
    ),
    "whitespace and case": (
        ["  A   DOG\tRUNS  ", "a dog\nruns on\nthe grass"],
        [["a dog runs", "The dog runs."], ["A dog runs on the grass", "a dog"]],
    ),
    "numbers and contractions": (
        ["1,000 birds cannot fly 3.5 feet", "the man's dog doesn't run", "mr. smith pays $5 & more"],
        [["a thousand birds", "1,000 birds fly"], ["a man's dog does not run"], ["mr. smith pays five dollars"]],
    ),
    "repeated words and long prediction": (
        ["dog dog dog dog dog", " ".join(["a big red bus driving down the street"] * 5)],
        [["a dog", "two dogs playing"], ["a red bus on the street", "a big bus drives down a city street"]],
    ),
    "varying reference counts": (
        ["a plate of food", "a man", "a kite in the sky"],
        [
            ["a plate with food"],
            ["a man standing", "a man", "a person", "a guy", "someone standing", "a man outside", "a tall man"],
            ["a kite flying in the blue sky", "kite"],
        ],
    ),
    "reference that tokenises to nothing": (
        ["a dog", "a cat"],
        [["...", "a dog sitting"], ["a cat", "a cat on a mat"]],
    ),
}


def caption_sets() -> list[tuple[str, list[str], list[list[str]]]]:
    sets = [(name, preds, refs) for name, (preds, refs) in EDGE_CASES.items()]
    sets += [(f"random {i}", preds, refs) for i, (preds, refs) in enumerate(random_caption_sets(seed=7, count=42))]
    return sets


@pytest.fixture(scope="module")
def official_meteor():
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def pycocoevalcap_direct(predictions, references, meteor) -> dict[str, float]:
    """What COCOEvalCap.evaluate computes (minus SPICE), with COCO-style image ids."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ids = [391895 + 17 * i for i in range(len(predictions))]
    gts = {i: [{"image_id": i, "caption": c} for c in refs] for i, refs in zip(ids, references)}
    res = {i: [{"image_id": i, "caption": p}] for i, p in zip(ids, predictions)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    scores = dict(zip(["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"], Bleu(4).compute_score(gts, res, verbose=0)[0]))
    scores["METEOR"] = meteor.compute_score(gts, res)[0]
    scores["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    scores["CIDEr"] = Cider().compute_score(gts, res)[0]
    return scores


@pytest.mark.slow
def test_coco_caption_equals_pycocoevalcap(official_meteor):
    metric = load_metric("coco_caption")
    sets = caption_sets()
    assert len(sets) >= 50
    worst, worst_at = 0.0, None
    start = time.perf_counter()
    for name, preds, refs in sets:
        expected = pycocoevalcap_direct(preds, refs, official_meteor)
        got = metric.compute(predictions=preds, references=refs, backend="official", spice=False)
        assert set(got) == set(expected), name
        for key, value in expected.items():
            diff = abs(got[key] - float(value))
            if diff > worst:
                worst, worst_at = diff, (name, key)
            assert diff <= 1e-9, f"{name}: {key} {got[key]!r} != pycocoevalcap {value!r}"
    print(
        f"\n{len(sets)} caption sets, max |coco_caption - pycocoevalcap| = {worst:.3g} at {worst_at}, "
        f"{time.perf_counter() - start:.1f} s"
    )
    # The single-image set gets CIDEr-D 0 in both (idf from one image is log 1 - log 1).
    one = dict(EDGE_CASES)["one image"]
    assert metric.compute(predictions=one[0], references=one[1], spice=False)["CIDEr"] == 0.0


def test_ptb_tokenize_matches_pycocoevalcap_tokenizer():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = [c for preds, refs in EDGE_CASES.values() for c in preds + [r for rs in refs for r in rs]]
    expected = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    assert ptb_tokenize(captions) == [expected[i][0] for i in range(len(captions))]


def test_ptb_tokenize_keeps_alignment_on_line_breaks():
    # pycocoevalcap would turn "\r" / U+2028 into extra lines and shift every later caption.
    assert ptb_tokenize(["a dog\rruns", "a cat\u2028sleeps", "last one."]) == [
        "a dog runs",
        "a cat sleeps",
        "last one",
    ]


def test_simple_tokenize_agrees_with_ptb_on_plain_captions():
    plain = [c for _, preds, refs in caption_sets()[len(EDGE_CASES) :] for c in preds + [r for rs in refs for r in rs]]
    assert len(plain) > 500
    assert [simple_tokenize(c) for c in plain] == ptb_tokenize(plain)


def test_training_document_frequencies_with_official_backend(tmp_path):
    preds, refs = EDGE_CASES["punctuation"]
    metric = load_metric("coco_caption")
    official = metric.compute(predictions=preds, references=refs, spice=False)
    # Frequencies from the evaluated references themselves (PTB-tokenised) give the official CIDEr-D.
    path = CiderDocumentFrequencies.from_references(refs, tokenizer="ptb").save(tmp_path / "df.json.gz")
    with_df = metric.compute(predictions=preds, references=refs, spice=False, cider_document_frequencies=str(path))
    assert with_df["CIDEr"] == pytest.approx(official["CIDEr"], abs=1e-12)
    assert {k: v for k, v in with_df.items() if k != "CIDEr"} == {k: v for k, v in official.items() if k != "CIDEr"}
