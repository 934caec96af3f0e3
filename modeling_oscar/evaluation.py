"""Evaluation metrics for Oscar / VinVL tasks, identical to the official scorers.

This module holds the logic behind the `evaluate` modules shipped in the repository's `metrics/`
folder, importable on its own so recipes (SCST rewards, validation loops) can use it without going
through `evaluate`:

- image captioning: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (and SPICE when its Stanford models are
  present) computed by `pycocoevalcap` after the official Stanford PTB tokenisation; a pure-Python
  fallback (BLEU / ROUGE-L / CIDEr-D only) when Java is missing;
- CIDEr-D document frequencies computed from a training corpus, saved and loaded (SCST);
- VQA accuracy with the official answer normalisation, plus the soft score Oscar trains against;
- image-text retrieval recall (R@1/5/10, COCO 1K folds and 5K);
- NLVR2 accuracy and consistency;
- `load_metric(name)`, which finds the `evaluate` module folder of this package.

Nothing here downloads anything: SPICE is only run when its models are already on disk.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np


logger = logging.getLogger(__name__)

__all__ = [
    "CAPTION_METRIC_NAMES",
    "CiderD",
    "CiderDocumentFrequencies",
    "JavaStatus",
    "bleu_score",
    "coco_caption_scores",
    "java_status",
    "load_metric",
    "metric_path",
    "nlvr2_accuracy",
    "nlvr2_sentence_id",
    "normalize_vqa_answer",
    "ptb_tokenize",
    "retrieval_ranks",
    "retrieval_recall",
    "rouge_l_score",
    "simple_tokenize",
    "spice_models_available",
    "vqa_accuracy",
    "vqa_answer_accuracy",
    "vqa_soft_score",
]

#: Keys reported by `coco_caption_scores`, named as `pycocoevalcap.eval.COCOEvalCap` names them.
CAPTION_METRIC_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")

METRIC_NAMES = ("coco_caption", "vqa_accuracy", "retrieval_recall", "nlvr2_accuracy")


# ----------------------------------------------------------------------------------------------
# Locating the evaluate modules
# ----------------------------------------------------------------------------------------------


def metric_path(name: str) -> Path:
    """Folder of the `evaluate` module `name` shipped with this package.

    A source checkout (editable install) keeps the modules in `<repo>/metrics/<name>/`; a regular
    install puts them under `<prefix>/share/oscar-hf/metrics/<name>/` (setup.py `data_files`).

    Example:
        >>> from oscar_hf.evaluation import metric_path
        >>> metric_path("vqa_accuracy").name
        'vqa_accuracy'
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; expected one of {', '.join(METRIC_NAMES)}.")
    here = Path(__file__).resolve().parent
    candidates = []
    # Source checkout: this file is <repo>/modeling_oscar/evaluation.py next to <repo>/setup.py.
    if (here.parent / "setup.py").is_file():
        candidates.append(here.parent / "metrics")
    prefixes = [sys.prefix, sys.exec_prefix, getattr(site, "USER_BASE", None), sys.base_prefix]
    candidates += [Path(p) / "share" / "oscar-hf" / "metrics" for p in prefixes if p]
    for root in candidates:
        if (root / name / f"{name}.py").is_file():
            return root / name
    searched = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"The evaluate module {name!r} was not found (searched {searched}). Reinstall the package "
        "(`pip install oscar-hf[metrics]`) or load it from a checkout with `evaluate.load('./metrics/{name}')`."
    )


def load_metric(name: str, **kwargs: Any):
    """`evaluate.load` one of this package's metric modules by its installed path, offline.

    Example:
        >>> from oscar_hf.evaluation import load_metric
        >>> vqa = load_metric("vqa_accuracy")
        >>> vqa.compute(predictions=["two"], references=[["2"] * 3 + ["3"] * 7])["accuracy"]
        0.9
    """
    import evaluate

    # An absolute path never falls through to the Hub, so this works with HF_EVALUATE_OFFLINE=1.
    return evaluate.load(str(metric_path(name)), **kwargs)


# ----------------------------------------------------------------------------------------------
# Java, pycocoevalcap and SPICE detection
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JavaStatus:
    """What the official caption scorers need and whether this machine has it.

    `pycocoevalcap` starts `java` from `PATH` (it ignores `JAVA_HOME`), so that is what is checked.
    """

    java: str | None
    java_version: str | None
    pycocoevalcap: str | None
    spice_models: bool
    problem: str | None = None

    @property
    def official_available(self) -> bool:
        """True when PTB tokenisation, BLEU, METEOR, ROUGE-L and CIDEr-D can run the official way."""
        return self.problem is None


def _pycocoevalcap_dir() -> Path | None:
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def _java_version(java: str) -> str | None:
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    first = (result.stderr or result.stdout).strip().splitlines()
    return first[0] if first else "unknown"


def spice_models_available() -> bool:
    """Whether SPICE's Stanford CoreNLP 3.6.0 jars are installed next to `pycocoevalcap`'s SPICE.

    `pycocoevalcap.spice.Spice()` downloads them (about 400 MB) when missing; this package never
    constructs `Spice()` unless this returns True, so nothing is ever downloaded.
    """
    root = _pycocoevalcap_dir()
    if root is None:
        return False
    lib = root / "spice" / "lib"
    return (lib / "stanford-corenlp-3.6.0.jar").is_file() and (lib / "stanford-corenlp-3.6.0-models.jar").is_file()


SPICE_MISSING = (
    "SPICE needs the Stanford CoreNLP 3.6.0 jars (stanford-corenlp-3.6.0.jar and "
    "stanford-corenlp-3.6.0-models.jar) in pycocoevalcap/spice/lib/. They are not installed and this "
    "package never downloads them. On a machine with network run "
    "`python -c 'from pycocoevalcap.spice.get_stanford_models import get_stanford_models as g; g()'` "
    "(or copy the two jars from stanford-corenlp-full-2015-12-09.zip there), or pass spice=False."
)


def java_status() -> JavaStatus:
    """Detect Java, `pycocoevalcap` and the SPICE models.

    Example:
        >>> from oscar_hf.evaluation import java_status
        >>> status = java_status()
        >>> isinstance(status.official_available, bool)
        True
    """
    java = shutil.which("java")
    version = _java_version(java) if java else None
    root = _pycocoevalcap_dir()
    problem = None
    if root is None:
        problem = "pycocoevalcap is not installed (`pip install pycocoevalcap`, or `pip install oscar-hf[metrics]`)"
    elif java is None:
        problem = (
            "no `java` executable on PATH: the official PTB tokenizer, METEOR and SPICE are Java programs "
            "(install a JRE >= 8, e.g. `apt-get install default-jre-headless`, and put `java` on PATH)"
        )
    elif version is None:
        problem = f"`{java} -version` failed, so Java cannot run the official PTB tokenizer, METEOR or SPICE"
    return JavaStatus(
        java=java,
        java_version=version,
        pycocoevalcap=str(root) if root else None,
        spice_models=spice_models_available(),
        problem=problem,
    )


# ----------------------------------------------------------------------------------------------
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
        >>> from oscar_hf.evaluation import ptb_tokenize
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
        >>> from oscar_hf.evaluation import simple_tokenize
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
        >>> from oscar_hf.evaluation import bleu_score
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
        >>> from oscar_hf.evaluation import rouge_l_score
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
        >>> from oscar_hf.evaluation import CiderDocumentFrequencies
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
        >>> from oscar_hf.evaluation import CiderD
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
        >>> from oscar_hf.evaluation import coco_caption_scores
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
        >>> from oscar_hf.evaluation import normalize_vqa_answer
        >>> normalize_vqa_answer("  Two dogs!"), normalize_vqa_answer("The black/white cat."), normalize_vqa_answer("dont")
        ('2 dogs', 'black white cat', "don't")
    """
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _vqa_digits_articles(_vqa_punctuation(answer))


def vqa_answer_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction: mean over the leave-one-annotator-out subsets of min(1, matches / 3).

    As in the official evaluation, answers are normalised only when the annotators disagree (when all
    ten gave the same string, the raw prediction must equal it), and matching ignores case.

    Example:
        >>> from oscar_hf.evaluation import vqa_answer_accuracy
        >>> vqa_answer_accuracy("yes", ["yes"] * 2 + ["no"] * 8)
        0.6
    """
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError(
            f"answers={answers!r}; expected the list of annotator answers for the question (10 in VQA v2)."
        )
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


def vqa_soft_score(prediction: str, answers: Sequence[str]) -> float:
    """The soft target Oscar trains and evaluates VQA with: 0, 0.3, 0.6, 0.9 or 1 for 0, 1, 2, 3, >=4 annotators.

    These are the scores stored with each question in the Oscar / bottom-up-attention VQA files
    (counting annotators who gave exactly the answer string); Oscar reports the mean score of the
    argmax answer. Unlike the official accuracy there is no leave-one-out, so 3 matches give 0.9.

    Example:
        >>> from oscar_hf.evaluation import vqa_soft_score
        >>> vqa_soft_score("yes", ["yes"] * 3 + ["no"] * 7), vqa_soft_score("yes", ["yes"] * 4 + ["no"] * 6)
        (0.9, 1.0)
    """
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError(f"answers={answers!r}; expected the list of annotator answers for the question.")
    count = sum(1 for a in answers if a.strip() == prediction.strip())
    return (0.0, 0.3, 0.6, 0.9)[count] if count < 4 else 1.0


def vqa_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean official VQA accuracy and mean Oscar soft score over questions.

    Example:
        >>> from oscar_hf.evaluation import vqa_accuracy
        >>> vqa_accuracy(["2", "no"], [["two"] * 10, ["yes"] * 9 + ["no"]])
        {'accuracy': 0.15, 'soft_score': 0.15}
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} answer lists; pass one list of annotator answers per question."
        )
    if not predictions:
        raise ValueError("No predictions to score; pass at least one question.")
    accuracy = [vqa_answer_accuracy(p, r) for p, r in zip(predictions, references)]
    soft = [vqa_soft_score(p, r) for p, r in zip(predictions, references)]
    return {"accuracy": float(np.mean(accuracy)), "soft_score": float(np.mean(soft))}


# ----------------------------------------------------------------------------------------------
# Retrieval
# ----------------------------------------------------------------------------------------------


def _as_score_matrix(scores: Any) -> np.ndarray:
    if hasattr(scores, "detach"):  # torch.Tensor without importing torch
        scores = scores.detach().float().cpu().numpy()
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(
            f"scores has shape {matrix.shape}; expected a non-empty [num_images, num_texts] matrix "
            "(scores[i, j] = match score of image i and text j)."
        )
    if not np.isfinite(matrix).all():
        raise ValueError("scores holds NaN or infinite values; expected finite match scores.")
    return matrix


def _text_to_image(num_images: int, num_texts: int, captions_per_image: int, text_to_image: Any) -> np.ndarray:
    if text_to_image is None:
        if captions_per_image < 1 or num_texts != num_images * captions_per_image:
            raise ValueError(
                f"scores has {num_texts} texts for {num_images} images, expected num_images * captions_per_image = "
                f"{num_images * captions_per_image}; pass captions_per_image (texts ordered image by image) or text_to_image."
            )
        return np.repeat(np.arange(num_images), captions_per_image)
    mapping = np.asarray(text_to_image)
    if mapping.shape != (num_texts,) or not np.issubdtype(mapping.dtype, np.integer):
        raise ValueError(f"text_to_image has shape {mapping.shape}; expected {num_texts} integer image indices.")
    if mapping.min() < 0 or mapping.max() >= num_images:
        raise ValueError(f"text_to_image holds indices outside [0, {num_images}); expected image row indices.")
    missing = np.setdiff1d(np.arange(num_images), mapping)
    if missing.size:
        raise ValueError(f"images {missing[:10].tolist()} have no matching text; every image needs one (drop them).")
    return mapping


def retrieval_ranks(
    scores: Any,
    text_to_image: Any,
    ties: str = "pessimistic",
    chunk_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of the first correct text per image (i2t) and of the correct image per text (t2i).

    `ties="pessimistic"` places a correct item after every wrong item with the same score (a
    constant score matrix gets the worst ranks); "optimistic" places it before them.

    Example:
        >>> import numpy as np
        >>> from oscar_hf.evaluation import retrieval_ranks
        >>> i2t, t2i = retrieval_ranks(np.eye(2), [0, 1])
        >>> i2t.tolist(), t2i.tolist()
        ([0, 0], [0, 0])
    """
    if ties not in ("pessimistic", "optimistic"):
        raise ValueError(f"ties={ties!r}; expected 'pessimistic' or 'optimistic'.")
    matrix = _as_score_matrix(scores)
    num_images, num_texts = matrix.shape
    mapping = np.asarray(text_to_image)
    beats = np.greater_equal if ties == "pessimistic" else np.greater
    i2t = np.empty(num_images, dtype=np.int64)
    t2i = np.zeros(num_texts, dtype=np.int64)
    gt_text_scores = matrix[mapping, np.arange(num_texts)]
    # Row chunks keep a 5K x 25K evaluation within a few hundred MB.
    for start in range(0, num_images, chunk_size):
        rows = matrix[start : start + chunk_size]
        image_ids = np.arange(start, start + rows.shape[0])
        is_gt = mapping[None, :] == image_ids[:, None]
        best_gt = np.where(is_gt, rows, -np.inf).max(axis=1)
        i2t[start : start + rows.shape[0]] = (beats(rows, best_gt[:, None]) & ~is_gt).sum(axis=1)
        t2i += (beats(rows, gt_text_scores[None, :]) & ~is_gt).sum(axis=0)
    return i2t, t2i


def retrieval_recall(
    scores: Any,
    *,
    captions_per_image: int = 5,
    text_to_image: Any = None,
    num_folds: int = 1,
    ks: Sequence[int] = (1, 5, 10),
    ties: str = "pessimistic",
) -> dict[str, float]:
    """Image-to-text and text-to-image Recall@K from an image x text score matrix.

    COCO convention: texts are ordered image by image, `captions_per_image` each (text j belongs to
    image j // 5). COCO 5K: the full 5000 x 25000 matrix, `num_folds=1`. COCO 1K: the same matrix with
    `num_folds=5` (five consecutive blocks of 1000 images and their 5000 captions, recalls averaged).
    Recalls are fractions in [0, 1]; `rsum` is the sum of all of them.

    Example:
        >>> import numpy as np
        >>> from oscar_hf.evaluation import retrieval_recall
        >>> scores = np.repeat(np.eye(3), 5, axis=1)  # every image scores its own 5 captions highest
        >>> retrieval_recall(scores, ks=(1,))
        {'i2t_R@1': 1.0, 't2i_R@1': 1.0, 'rsum': 2.0}
    """
    matrix = _as_score_matrix(scores)
    num_images, num_texts = matrix.shape
    mapping = _text_to_image(num_images, num_texts, captions_per_image, text_to_image)
    if not isinstance(num_folds, int) or num_folds < 1 or num_images % num_folds:
        raise ValueError(
            f"num_folds={num_folds!r} must be a positive integer dividing the {num_images} images (COCO 1K: 5 folds of 5000)."
        )
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks={ks!r}; expected positive cut-offs such as (1, 5, 10).")
    fold_size = num_images // num_folds
    per_fold = []
    for fold in range(num_folds):
        lo, hi = fold * fold_size, (fold + 1) * fold_size
        texts = np.flatnonzero((mapping >= lo) & (mapping < hi))
        i2t, t2i = retrieval_ranks(matrix[lo:hi][:, texts], mapping[texts] - lo, ties=ties)
        per_fold.append(
            {
                **{f"i2t_R@{k}": float(np.mean(i2t < k)) for k in ks},
                **{f"t2i_R@{k}": float(np.mean(t2i < k)) for k in ks},
            }
        )
    results = {key: float(np.mean([fold[key] for fold in per_fold])) for key in per_fold[0]}
    results["rsum"] = float(sum(results.values()))
    return results


# ----------------------------------------------------------------------------------------------
# NLVR2
# ----------------------------------------------------------------------------------------------


def nlvr2_sentence_id(identifier: str) -> str:
    """The sentence an NLVR2 example belongs to: `split-set-pair-sentence` without the pair index.

    Example:
        >>> from oscar_hf.evaluation import nlvr2_sentence_id
        >>> nlvr2_sentence_id("dev-850-2-0")
        'dev-850-0'
    """
    parts = identifier.split("-")
    if len(parts) != 4:
        raise ValueError(
            f"NLVR2 identifier {identifier!r} does not look like 'split-set-pair-sentence' (e.g. 'dev-850-2-0'); "
            "pass sentence groups explicitly with groups=."
        )
    return "-".join(parts[:2] + parts[3:])


def nlvr2_accuracy(
    predictions: Sequence[Any],
    references: Sequence[Any],
    identifiers: Sequence[str] | None = None,
    groups: Sequence[Any] | None = None,
) -> dict[str, float]:
    """NLVR2 accuracy and, given example identifiers (or groups), consistency.

    Consistency is the fraction of unique sentences whose every image pair is predicted correctly.

    Example:
        >>> from oscar_hf.evaluation import nlvr2_accuracy
        >>> nlvr2_accuracy([1, 0, 1, 1], [1, 0, 0, 1], identifiers=["dev-1-0-0", "dev-1-1-0", "dev-2-0-1", "dev-2-1-1"])
        {'accuracy': 0.75, 'consistency': 0.5}
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} labels; pass one label per prediction."
        )
    if not predictions:
        raise ValueError("No predictions to score; pass at least one example.")
    correct = [bool(p == r) for p, r in zip(predictions, references)]
    results = {"accuracy": float(np.mean(correct))}
    if identifiers is not None and groups is not None:
        raise ValueError("Pass identifiers or groups, not both.")
    if identifiers is not None:
        groups = [nlvr2_sentence_id(i) for i in identifiers]
    if groups is not None:
        if len(groups) != len(predictions):
            raise ValueError(
                f"{len(groups)} identifiers/groups for {len(predictions)} predictions; pass one per example."
            )
        by_sentence: dict[Any, bool] = {}
        for group, ok in zip(groups, correct):
            by_sentence[group] = by_sentence.get(group, True) and ok
        results["consistency"] = float(np.mean(list(by_sentence.values())))
    return results
