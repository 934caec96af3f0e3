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


_LABEL_SPELLINGS = {"true": 1, "false": 0, "1": 1, "0": 0}


def nlvr2_label(value: Any, name: str = "label") -> int:
    """An NLVR2 label or prediction as 1 (true) / 0 (false).

    The NLVR2 files spell labels "True"/"False" while models predict 0/1; comparing them unnormalised
    scores 0 %, so every spelling is mapped here and anything else is an error.

    Example:
        >>> from oscar_hf.metrics.nlvr2 import nlvr2_label
        >>> nlvr2_label("True"), nlvr2_label(False), nlvr2_label(1)
        (1, 0, 1)
    """
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch scalars
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _LABEL_SPELLINGS:
        return _LABEL_SPELLINGS[value.strip().lower()]
    raise ValueError(f'{name} is {value!r}; expected an NLVR2 label: 1/0, True/False or the files\' "True"/"False".')


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
    if len(predictions) == 0:
        raise ValueError("No predictions to score; pass at least one example.")
    predictions = [nlvr2_label(p, f"predictions[{i}]") for i, p in enumerate(predictions)]
    references = [nlvr2_label(r, f"references[{i}]") for i, r in enumerate(references)]
    correct = [p == r for p, r in zip(predictions, references)]
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
