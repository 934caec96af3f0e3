"""NLVR2 accuracy and consistency (all sentences of one example right)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np


logger = logging.getLogger(__name__)


# NLVR2
# ----------------------------------------------------------------------------------------------


def nlvr2_sentence_id(identifier: str) -> str:
    """The sentence an NLVR2 example belongs to: `split-set-pair-sentence` without the pair index.

    Example:
        >>> from oscar_hf.metrics import nlvr2_sentence_id
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
        >>> from oscar_hf.metrics import nlvr2_accuracy
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
