"""Image-text retrieval recall (R@1/5/10) over a score matrix: COCO 1K folds and 5K."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np


logger = logging.getLogger(__name__)


# Retrieval
# ----------------------------------------------------------------------------------------------


def _as_score_matrix(scores: Any) -> np.ndarray:
    if hasattr(scores, "detach"):  # torch.Tensor without importing torch
        scores = scores.detach().float().cpu().numpy()
    if isinstance(scores, (list, tuple)):
        _check_score_rows(scores)
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(
            f"scores has shape {matrix.shape}; expected a non-empty [num_images, num_texts] matrix "
            "(scores[i, j] = match score of image i and text j)."
        )
    if not np.isfinite(matrix).all():
        raise ValueError("scores holds NaN or infinite values; expected finite match scores.")
    return matrix


def _check_score_rows(scores: Sequence) -> None:
    """Nested lists: every row one score per text, every score a number (numpy's own errors name neither)."""
    widths = set()
    for i, row in enumerate(scores):
        if not isinstance(row, (list, tuple, np.ndarray)):
            raise ValueError(
                f"scores[{i}] is {type(row).__name__} {row!r}; expected a row of match scores, one per text."
            )
        widths.add(len(row))
        for j, value in enumerate(row):
            if value is None or isinstance(value, (str, bytes)):
                raise ValueError(
                    f"scores[{i}][{j}] is {value!r}; expected a number (the match score of image {i}, text {j})."
                )
    if len(widths) > 1:
        first = len(scores[0])
        ragged = next(i for i, row in enumerate(scores) if len(row) != first)
        raise ValueError(
            f"scores rows have different lengths (scores[0] has {first}, scores[{ragged}] has {len(scores[ragged])}); "
            "expected a [num_images, num_texts] matrix: every image scored against every text."
        )


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
        >>> from oscar_hf.metrics import retrieval_ranks
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
        >>> from oscar_hf.metrics import retrieval_recall
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


def retrieval_recall_by_fold(
    scores: Any,
    *,
    folds: Any,
    text_to_image: Any = None,
    captions_per_image: int = 5,
    ks: Sequence[int] = (1, 5, 10),
    ties: str = "pessimistic",
) -> dict[str, float]:
    """Recall@K averaged over image folds: the COCO 1K protocol on the 5K test set.

    `folds[i]` is image i's fold (the Karpathy test order gives five folds of 1000 images, as
    `RetrievalBuilder` writes `fold_1k` on `test_5k`); each fold is ranked among its own images and
    their captions only, and the folds' recalls are averaged (the number the Oscar paper reports as
    1K). Images in negative folds are left out.

    Example:
        >>> import numpy as np
        >>> from oscar_hf.metrics import retrieval_recall_by_fold
        >>> scores = np.repeat(np.eye(4), 5, axis=1)
        >>> retrieval_recall_by_fold(scores, folds=[0, 0, 1, 1], ks=(1,))
        {'i2t_R@1': 1.0, 't2i_R@1': 1.0, 'rsum': 2.0}
    """
    matrix = _as_score_matrix(scores)
    num_images, num_texts = matrix.shape
    mapping = _text_to_image(num_images, num_texts, captions_per_image, text_to_image)
    folds = np.asarray(folds)
    if folds.shape != (num_images,):
        raise ValueError(f"folds has shape {folds.shape}; expected one fold index per image ({num_images}).")
    per_fold = []
    for fold in np.unique(folds[folds >= 0]):
        images = np.flatnonzero(folds == fold)
        local = np.full(num_images, -1)
        local[images] = np.arange(len(images))
        texts = np.flatnonzero(np.isin(mapping, images))
        per_fold.append(
            retrieval_recall(matrix[images][:, texts], text_to_image=local[mapping[texts]], ks=ks, ties=ties)
        )
    if not per_fold:
        raise ValueError("folds holds no fold index >= 0; give each image its fold (0..4 for COCO 1K).")
    keys = [k for k in per_fold[0] if k != "rsum"]
    results = {key: float(np.mean([fold[key] for fold in per_fold])) for key in keys}
    results["rsum"] = float(sum(results.values()))
    return results
