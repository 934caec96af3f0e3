"""Image captioning metrics identical to the official COCO caption scorers.

BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (and SPICE when its Stanford models are present) computed by
`pycocoevalcap` after the official Stanford PTB tokenisation; a pure-Python fallback (BLEU / ROUGE-L /
CIDEr-D only, same arithmetic) when Java is missing; CIDEr-D document frequencies computed from a
training corpus, saved and loaded (SCST).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import SPICE_MISSING, java_status


logger = logging.getLogger(__name__)

#: Keys reported by `coco_caption_scores`, named as `pycocoevalcap.eval.COCOEvalCap` names them.
CAPTION_METRIC_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")


# Tokenisation
# ----------------------------------------------------------------------------------------------

# Tokens that pycocoevalcap's PTBTokenizer drops after tokenising. "-LRB-" etc. are listed in upper
# case but the tokenizer runs with -lowerCase, so brackets survive as "-lrb-": kept that way on purpose.
PTB_PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
# Every character Java's PTB lexer (and Python) treats as a line break. pycocoevalcap only replaces
# "\n", so a caption holding "\r" or U+2028 shifts every later caption onto the wrong image there.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _strip_ptb_punctuation(line: str) -> str:
    # Same rule as pycocoevalcap: split the tokenizer's output line on single spaces, drop the listed tokens.
    return " ".join(w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATIONS)


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """Tokenise captions with the Stanford PTB tokenizer exactly as `pycocoevalcap` does, in one Java call.

    Lower-cases, splits with `edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`
    (the CoreNLP 3.4.1 jar shipped in `pycocoevalcap`) and removes the same punctuation tokens.
    Unlike `pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer` it writes its temporary file to the
    system temp folder (not into site-packages) and also turns "\\r", U+2028 and other line breaks
    into spaces, where pycocoevalcap would misalign captions and images.

    Example:
        >>> from oscar_hf.metrics import ptb_tokenize
        >>> ptb_tokenize(["A man's T-shirt, (red).", "Two dogs cannot swim!"])
        ["a man 's t-shirt -lrb- red -rrb-", 'two dogs can not swim']
    """
    captions = list(captions)
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise ValueError(f"captions[{i}] is {type(caption).__name__}, expected str; convert it first.")
    if not captions:
        return []
    status = java_status()
    if not status.official_available:
        raise RuntimeError(f"The official PTB tokenizer cannot run: {status.problem}.")
    jar = Path(status.pycocoevalcap) / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    text = "\n".join(_LINE_BREAKS.sub(" ", c) for c in captions)
    with tempfile.TemporaryDirectory(prefix="oscar_ptb_") as tmp:
        path = Path(tmp) / "captions.txt"
        path.write_bytes(text.encode("utf-8"))
        cmd = [status.java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
        result = subprocess.run([*cmd, str(path)], capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"The PTB tokenizer failed (exit {result.returncode}): {result.stderr.decode(errors='replace')[-2000:]}"
        )
    lines = result.stdout.decode("utf-8").split("\n")
    # One output line per input line; anything beyond is the trailing newline.
    if len(lines) < len(captions) or any(extra.strip() for extra in lines[len(captions) :]):
        raise RuntimeError(
            f"The PTB tokenizer returned {len(lines)} lines for {len(captions)} captions; refusing to guess the alignment."
        )
    return [_strip_ptb_punctuation(line) for line in lines[: len(captions)]]


_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CLITICS = re.compile(r"(?i)(\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(
    r"n't|'(?:s|re|ve|ll|d|m)\b"  # clitics split off above
    r"|\d+(?:[.,]\d+)+"  # 1,000 and 3.5 stay one token
    r"|\w+(?:[-']\w+)*"  # words, hyphenated words (t-shirt)
    r"|\.\.\.|--|``|''"
    r"|\S",
    re.UNICODE,
)


def simple_tokenize(caption: str) -> str:
    """Pure-Python stand-in for the PTB tokenizer, for machines without Java.

    Agrees with the official tokenisation on lower-cased words, hyphenated words, numbers with
    separators, the clitics "'s", "n't", "'re", "'ve", "'ll", "'d", "'m", brackets (kept as
    "-lrb-" ... like the official pipeline) and the punctuation it drops. It differs on, e.g.,
    "cannot" (PTB: "can not"), abbreviations with a period ("mr."), "$5" (PTB: "$ 5"), unicode
    quotes and dashes, and characters PTB cannot tokenise (emoji are dropped there, kept here).

    Example:
        >>> from oscar_hf.metrics import simple_tokenize
        >>> simple_tokenize("A man's T-shirt, (red).")
        "a man 's t-shirt -lrb- red -rrb-"
    """
    text = _LINE_BREAKS.sub(" ", caption).lower()
    text = _CLITICS.sub(r"\1 \2", text)
    tokens = [_BRACKETS.get(t, t) for t in _TOKEN.findall(text)]
    return " ".join(t for t in tokens if t not in PTB_PUNCTUATIONS)


# ----------------------------------------------------------------------------------------------
# Pure-Python BLEU, ROUGE-L and CIDEr-D on tokenised text (same arithmetic as pycocoevalcap)
# ----------------------------------------------------------------------------------------------


def _ngrams(words: Sequence[str], n: int) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def bleu_score(predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n of tokenised captions, as `pycocoevalcap.bleu.Bleu` computes it.

    Clipped n-gram counts are pooled over the corpus; the brevity penalty uses, per caption, the
    reference length closest to the prediction (the shorter one on ties); 1e-15 / 1e-9 smoothing
    constants keep empty captions finite.

    Example:
        >>> from oscar_hf.metrics import bleu_score
        >>> [round(b, 4) for b in bleu_score(["a cat sits"], [["a cat sits", "a dog"]], n=2)]
        [1.0, 1.0]
    """
    small, tiny = 1e-9, 1e-15
    guess, correct = [0] * n, [0] * n
    total_test = total_ref = 0
    for prediction, refs in zip(predictions, references):
        words = prediction.split()
        max_counts: dict = {}
        ref_lens = []
        for ref in refs:
            ref_words = ref.split()
            ref_lens.append(len(ref_words))
            for gram, count in _ngrams(ref_words, n).items():
                max_counts[gram] = max(max_counts.get(gram, 0), count)
        test_len = len(words)
        total_test += test_len
        total_ref += min((abs(length - test_len), length) for length in ref_lens)[1]
        for k in range(n):
            guess[k] += max(0, test_len - k)
        for gram, count in _ngrams(words, n).items():
            correct[len(gram) - 1] += min(max_counts.get(gram, 0), count)
    scores, product = [], 1.0
    for k in range(n):
        product *= float(correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (total_test + tiny) / (total_ref + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_score(predictions: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> float:
    """Mean ROUGE-L F-measure (beta 1.2, best precision and best recall over references), as pycocoevalcap.

    Tokens come from splitting on single spaces, so an empty caption is one empty token there too.

    Example:
        >>> from oscar_hf.metrics import rouge_l_score
        >>> round(rouge_l_score(["a cat"], [["a black cat"]]), 4)
        0.7722
    """
    scores = []
    for prediction, refs in zip(predictions, references):
        candidate = prediction.split(" ")
        precision, recall = [], []
        for ref in refs:
            ref_tokens = ref.split(" ")
            lcs = _lcs_length(ref_tokens, candidate)
            precision.append(lcs / float(len(candidate)))
            recall.append(lcs / float(len(ref_tokens)))
        p, r = max(precision), max(recall)
        scores.append(((1 + beta**2) * p * r) / float(r + beta**2 * p) if p != 0 and r != 0 else 0.0)
    return float(np.mean(np.array(scores)))


@dataclass
class CiderDocumentFrequencies:
    """N-gram document frequencies for CIDEr-D: in how many images' reference sets each n-gram occurs.

    `pycocoevalcap` computes them from the references being scored; SCST (and CIDEr-D on a handful of
    images) needs them from the training corpus instead. Build with `from_references`, keep with
    `save` / `load` (JSON, gzipped when the name ends in `.gz`).

    Example:
        >>> from oscar_hf.metrics import CiderDocumentFrequencies
        >>> df = CiderDocumentFrequencies.from_references([["a dog runs", "a dog"], ["a cat"]], tokenizer=None)
        >>> df.num_documents, df.counts[("a",)], df.counts[("dog",)]
        (2, 2.0, 1.0)
    """

    counts: dict[tuple[str, ...], float]
    num_documents: int
    n: int = 4
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_references(
        cls,
        references: Iterable[Sequence[str]],
        n: int = 4,
        tokenizer: str | None = "ptb",
    ) -> CiderDocumentFrequencies:
        """Count document frequencies over `references` (one list of captions per image).

        `tokenizer`: "ptb" (official, needs Java), "python" (`simple_tokenize`) or None when the
        captions are already tokenised (space-separated, lower-cased, punctuation removed).
        """
        references = list(references)
        _check_references(references, "references")
        references = [list(refs) for refs in references]
        if tokenizer is not None:
            references = _tokenize_nested(references, tokenizer)
        counts: dict[tuple[str, ...], float] = defaultdict(float)
        for refs in references:
            for gram in {g for ref in refs for g in _ngrams(ref.split(), n)}:
                counts[gram] += 1
        return cls(counts=dict(counts), num_documents=len(references), n=n, metadata={"tokenizer": tokenizer})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the frequencies as JSON (gzip when `path` ends in `.gz`)."""
        path = Path(path)
        payload = {
            "format": "oscar_hf.cider_document_frequencies",
            "version": 1,
            "n": self.n,
            "num_documents": self.num_documents,
            "metadata": self.metadata,
            # n-grams are stored space-joined: tokens never contain spaces after tokenisation.
            "document_frequency": {" ".join(g): c for g, c in sorted(self.counts.items())},
        }
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CiderDocumentFrequencies:
        """Read frequencies written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"CIDEr document-frequency file {path} does not exist; create it with `save`.")
        raw = path.read_bytes()
        payload = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        if payload.get("format") != "oscar_hf.cider_document_frequencies":
            raise ValueError(
                f"{path} is not a CIDEr document-frequency file (format={payload.get('format')!r}); "
                "expected one written by CiderDocumentFrequencies.save."
            )
        counts = {tuple(k.split(" ")): float(v) for k, v in payload["document_frequency"].items()}
        return cls(
            counts=counts,
            num_documents=int(payload["num_documents"]),
            n=int(payload["n"]),
            metadata=payload["metadata"],
        )


class CiderD:
    """CIDEr-D (`pycocoevalcap.cider.Cider`: clipped tf-idf cosine, Gaussian length penalty, sigma 6, x10).

    Without `document_frequencies` the frequencies come from the scored references themselves (the
    COCO evaluation; a single image then scores 0 because every idf is log(1) - log(df) = 0). With
    them (e.g. from the training captions) scores are per-caption rewards for SCST. The "length"
    in the penalty counts bigrams, not words, exactly as the official scorer does.

    Example:
        >>> from oscar_hf.metrics import CiderD
        >>> score, per_image = CiderD().compute_score(["a dog runs", "a cat"], [["a dog runs"], ["a black cat"]])
        >>> round(score, 4), per_image.shape
        (4.6217, (2,))
    """

    def __init__(self, document_frequencies: CiderDocumentFrequencies | None = None, n: int = 4, sigma: float = 6.0):
        if document_frequencies is not None and document_frequencies.n < n:
            raise ValueError(f"document_frequencies count {document_frequencies.n}-grams, CIDEr-D needs n={n}.")
        self.document_frequencies = document_frequencies
        self.n = n
        self.sigma = sigma

    def _vector(self, counts: Counter, df: Mapping, log_docs: float):
        vec = [{} for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            value = float(tf) * (log_docs - np.log(max(1.0, df.get(gram, 0.0))))
            vec[k][gram] = value
            norm[k] += pow(value, 2)
            if k == 1:  # the official "length" is the number of bigrams
                length += tf
        return vec, [np.sqrt(x) for x in norm], length

    def compute_score(
        self, predictions: Sequence[str], references: Sequence[Sequence[str]]
    ) -> tuple[float, np.ndarray]:
        """Mean and per-image CIDEr-D of tokenised `predictions` against tokenised `references`."""
        if len(predictions) != len(references):
            raise ValueError(
                f"{len(predictions)} predictions but {len(references)} reference lists; pass one list per prediction."
            )
        _check_references(references, "references")
        ref_counts = [[_ngrams(r.split(), self.n) for r in refs] for refs in references]
        if self.document_frequencies is None:
            df: dict = defaultdict(float)
            for refs in ref_counts:
                for gram in {g for counts in refs for g in counts}:
                    df[gram] += 1
            log_docs = np.log(float(len(references)))
        else:
            df = self.document_frequencies.counts
            log_docs = np.log(float(self.document_frequencies.num_documents))
        penalty_denominator = 2 * self.sigma**2
        scores = []
        for prediction, refs in zip(predictions, ref_counts):
            vec, norm, length = self._vector(_ngrams(prediction.split(), self.n), df, log_docs)
            total = np.zeros(self.n)
            for counts in refs:
                vec_ref, norm_ref, length_ref = self._vector(counts, df, log_docs)
                delta = float(length - length_ref)
                values = np.zeros(self.n)
                for k in range(self.n):
                    for gram, value in vec[k].items():
                        ref_value = vec_ref[k].get(gram, 0.0)
                        values[k] += min(value, ref_value) * ref_value  # clipping: CIDEr-D's anti-gaming rule
                    if norm[k] != 0 and norm_ref[k] != 0:
                        values[k] /= norm[k] * norm_ref[k]
                    values[k] *= np.e ** (-(delta**2) / penalty_denominator)
                total += values
            scores.append(np.mean(total) / len(refs) * 10.0)
        per_image = np.array(scores)
        return float(np.mean(per_image)), per_image


# ----------------------------------------------------------------------------------------------
# COCO caption metrics
# ----------------------------------------------------------------------------------------------


def _check_references(references: Sequence[Sequence[str]], name: str) -> None:
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise ValueError(
                f"{name}[{i}] is {type(refs).__name__}, expected a list of reference captions; wrap a single one as [caption]."
            )
        if len(refs) == 0:
            raise ValueError(
                f"{name}[{i}] is empty; every image needs at least one reference caption (drop the image)."
            )
        for j, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise ValueError(f"{name}[{i}][{j}] is {type(ref).__name__}, expected str.")


def _tokenize_nested(references: Sequence[Sequence[str]], tokenizer: str) -> list[list[str]]:
    flat = [r for refs in references for r in refs]
    if tokenizer == "ptb":
        flat = ptb_tokenize(flat)
    elif tokenizer == "python":
        flat = [simple_tokenize(r) for r in flat]
    else:
        raise ValueError(f"tokenizer={tokenizer!r}; expected 'ptb', 'python' or None.")
    out, start = [], 0
    for refs in references:
        out.append(flat[start : start + len(refs)])
        start += len(refs)
    return out


_METEOR = None


def _meteor():
    # METEOR 1.5 loads its paraphrase table for ~8 s at start-up; one process serves the whole session.
    global _METEOR
    if _METEOR is None or _METEOR.meteor_p.poll() is not None:
        from pycocoevalcap.meteor.meteor import Meteor

        _METEOR = Meteor()
    return _METEOR


def coco_caption_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    backend: str = "auto",
    spice: bool | None = None,
    cider_document_frequencies: CiderDocumentFrequencies | str | os.PathLike | None = None,
) -> dict[str, float]:
    """COCO caption metrics: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and (optionally) SPICE.

    Args:
        predictions: one generated caption per image.
        references: the reference captions of each image (at least one each).
        backend: "official" (PTB tokenizer + pycocoevalcap scorers; needs Java and pycocoevalcap),
            "python" (`simple_tokenize` + this module's BLEU / ROUGE-L / CIDEr-D; no METEOR / SPICE)
            or "auto" (official when available, otherwise python with a warning saying what is missing).
        spice: None runs SPICE only when its models are installed; True requires them; False skips it.
        cider_document_frequencies: CIDEr-D frequencies (or a file from `CiderDocumentFrequencies.save`)
            to use instead of the evaluated references' own, e.g. training-corpus frequencies.

    Returns:
        `{"Bleu_1", ..., "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"}` as fractions (CIDEr x10 scale),
        the same numbers `pycocoevalcap.eval.COCOEvalCap` reports; backends leave out what they cannot compute.

    Example:
        >>> from oscar_hf.metrics import coco_caption_scores
        >>> scores = coco_caption_scores(
        ...     ["a dog runs on the grass", "a cat on a sofa"],
        ...     [["a dog running on grass", "a brown dog runs"], ["a cat sleeping on a couch"]],
        ...     backend="python",
        ... )
        >>> sorted(scores)
        ['Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'CIDEr', 'ROUGE_L']
    """
    predictions = list(predictions)
    references = list(references)
    _check_references(references, "references")
    references = [list(refs) for refs in references]
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} predictions but {len(references)} reference lists; pass one reference list per prediction."
        )
    if not predictions:
        raise ValueError("No predictions to score; pass at least one (prediction, references) pair.")
    for i, prediction in enumerate(predictions):
        if not isinstance(prediction, str):
            raise ValueError(f"predictions[{i}] is {type(prediction).__name__}, expected str.")
    if backend not in ("auto", "official", "python"):
        raise ValueError(f"backend={backend!r}; expected 'auto', 'official' or 'python'.")
    if isinstance(cider_document_frequencies, (str, os.PathLike)):
        cider_document_frequencies = CiderDocumentFrequencies.load(cider_document_frequencies)

    status = java_status()
    if backend == "auto":
        backend = "official" if status.official_available else "python"
        if backend == "python":
            warnings.warn(
                f"COCO caption metrics fall back to the pure-Python scorers: {status.problem}. BLEU, ROUGE-L and "
                "CIDEr-D use an approximate PTB tokenisation and METEOR/SPICE are not reported, so the numbers are "
                "not comparable to published ones.",
                stacklevel=2,
            )
    elif backend == "official" and not status.official_available:
        raise RuntimeError(f"backend='official' cannot run: {status.problem}.")
    if spice and (backend != "official" or not status.spice_models):
        raise RuntimeError(
            SPICE_MISSING if backend == "official" else f"SPICE needs the official backend: {status.problem}."
        )
    run_spice = backend == "official" and status.spice_models and spice is not False
    if cider_document_frequencies is not None:
        counted_with = cider_document_frequencies.metadata.get("tokenizer")
        expected = "ptb" if backend == "official" else "python"
        if counted_with not in (None, expected):
            # n-grams counted on other tokens silently lose their idf; say so instead of skewing CIDEr-D.
            warnings.warn(
                f"CIDEr-D document frequencies were counted on {counted_with!r} tokens but the {backend!r} backend "
                f"tokenises with {expected!r}; rebuild them with tokenizer={expected!r}.",
                stacklevel=2,
            )

    if backend == "python":
        preds_tok = [simple_tokenize(p) for p in predictions]
        refs_tok = _tokenize_nested(references, "python")
        bleus = bleu_score(preds_tok, refs_tok)
        results = {f"Bleu_{k + 1}": float(b) for k, b in enumerate(bleus)}
        results["ROUGE_L"] = rouge_l_score(preds_tok, refs_tok)
        results["CIDEr"] = CiderD(cider_document_frequencies).compute_score(preds_tok, refs_tok)[0]
        return results

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    # One Java call for predictions and references: the tokenizer works line by line, so this gives
    # the same tokens as pycocoevalcap's two calls at half the JVM start-ups.
    flat = ptb_tokenize(predictions + [r for refs in references for r in refs])
    res = {i: [flat[i]] for i in range(len(predictions))}
    gts, start = {}, len(predictions)
    for i, refs in enumerate(references):
        gts[i] = flat[start : start + len(refs)]
        start += len(refs)

    bleus, _ = Bleu(4).compute_score(gts, res, verbose=0)
    results = {f"Bleu_{k + 1}": float(b) for k, b in enumerate(bleus)}
    results["METEOR"] = float(_meteor().compute_score(gts, res)[0])
    results["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    if cider_document_frequencies is None:
        results["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    else:
        results["CIDEr"] = CiderD(cider_document_frequencies).compute_score(
            [res[i][0] for i in res], [gts[i] for i in res]
        )[0]
    if run_spice:
        from pycocoevalcap.spice.spice import Spice

        results["SPICE"] = float(Spice().compute_score(gts, res)[0])
    return results


# ----------------------------------------------------------------------------------------------
