"""Prediction files in the formats the evaluation servers take, with checks against those formats.

| task | server | file |
| --- | --- | --- |
| VQA v2 test-dev / test-std | EvalAI (VQA challenge) | JSON `[{"question_id": int, "answer": str}, ...]`, one entry per question of the questions file |
| GQA test-dev balanced (and the challenge submission) | the GQA `eval.py` / EvalAI | JSON `[{"questionId": str, "prediction": str}, ...]` |
| NLVR2 test-P (and dev) | `nlvr2/eval/metrics.py` of lil-lab/nlvr | CSV lines `identifier,True` / `identifier,False`, one per example |
| NoCaps val / test | EvalAI challenge 355 | JSON `[{"image_id": int, "caption": str}, ...]`, nocaps image ids (not Open Images ids), every image once |

Each `write_*` checks its entries with the matching `check_*` before writing, so a file that would
be rejected (missing or duplicate ids, wrong types) fails here with the id and the fix instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def _covers(kind: str, ids: Sequence[Any], expected: Iterable[Any] | None) -> None:
    """Every id once; with `expected`, exactly the expected ids."""
    seen: set = set()
    duplicates = [i for i in ids if i in seen or seen.add(i)]
    if duplicates:
        raise ValueError(f"{kind}: id {duplicates[0]!r} appears more than once; the server takes one entry per id.")
    if expected is None:
        return
    expected = set(expected)
    missing, extra = expected - seen, seen - expected
    if missing:
        raise ValueError(
            f"{kind}: {len(missing)} of {len(expected)} ids have no prediction (e.g. {sorted(missing, key=str)[0]!r}); "
            "predict the whole split (no --max_eval_samples) before submitting."
        )
    if extra:
        raise ValueError(
            f"{kind}: {len(extra)} ids are not in the split (e.g. {sorted(extra, key=str)[0]!r}); "
            "check that the predictions and the questions/images file are the same split."
        )


def _write_json(entries: list[dict], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# VQA v2
# ----------------------------------------------------------------------------------------------


def vqa_question_ids(questions_file: str | os.PathLike) -> list[int]:
    """Question ids of an official VQA questions JSON (`{"questions": [{"question_id", ...}]}`)."""
    data = json.loads(Path(questions_file).read_text(encoding="utf-8"))
    if "questions" not in data:
        raise ValueError(f"{questions_file} has no 'questions'; expected an official VQA questions JSON.")
    return [int(q["question_id"]) for q in data["questions"]]


def check_vqa_results(entries: Sequence[Mapping], question_ids: Iterable[int] | None = None) -> None:
    """VQA result format: a list of {"question_id": int, "answer": str}, each question once."""
    if not isinstance(entries, list):
        raise ValueError(f"VQA results must be a JSON list, got {type(entries).__name__}.")
    for i, entry in enumerate(entries):
        if set(entry) != {"question_id", "answer"}:
            raise ValueError(f"VQA results[{i}] has keys {sorted(entry)}; expected exactly question_id and answer.")
        if not isinstance(entry["question_id"], int) or isinstance(entry["question_id"], bool):
            raise ValueError(f"VQA results[{i}]: question_id {entry['question_id']!r} must be an int.")
        if not isinstance(entry["answer"], str):
            raise ValueError(f"VQA results[{i}]: answer {entry['answer']!r} must be a string.")
    _covers("VQA results", [e["question_id"] for e in entries], question_ids)


def write_vqa_results(
    question_ids: Sequence[int],
    answers: Sequence[str],
    path: str | os.PathLike,
    expected_question_ids: Iterable[int] | None = None,
) -> Path:
    """Writes the VQA v2 result file (`vqa_OpenEnded_mscoco_test-dev2015_<name>_results.json`)."""
    entries = [{"question_id": int(q), "answer": str(a)} for q, a in zip(question_ids, answers, strict=True)]
    check_vqa_results(entries, expected_question_ids)
    return _write_json(entries, path)


# ----------------------------------------------------------------------------------------------
# GQA
# ----------------------------------------------------------------------------------------------


def gqa_question_ids(questions_file: str | os.PathLike) -> list[str]:
    """Question ids of a GQA questions JSON (a dict keyed by question id, e.g. testdev_balanced_questions.json)."""
    data = json.loads(Path(questions_file).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{questions_file} is not a dict keyed by question id; expected a GQA questions JSON.")
    return [str(k) for k in data]


def check_gqa_predictions(entries: Sequence[Mapping], question_ids: Iterable[str] | None = None) -> None:
    """GQA prediction format: a list of {"questionId": str, "prediction": str}."""
    if not isinstance(entries, list):
        raise ValueError(f"GQA predictions must be a JSON list, got {type(entries).__name__}.")
    for i, entry in enumerate(entries):
        if set(entry) != {"questionId", "prediction"}:
            raise ValueError(
                f"GQA predictions[{i}] has keys {sorted(entry)}; expected exactly questionId and prediction."
            )
        if not isinstance(entry["questionId"], str) or not isinstance(entry["prediction"], str):
            raise ValueError(f"GQA predictions[{i}]: questionId and prediction must both be strings, got {entry!r}.")
    _covers(
        "GQA predictions", [e["questionId"] for e in entries], None if question_ids is None else map(str, question_ids)
    )


def write_gqa_predictions(
    question_ids: Sequence[Any],
    answers: Sequence[str],
    path: str | os.PathLike,
    expected_question_ids: Iterable[str] | None = None,
) -> Path:
    """Writes GQA predictions (`testdev_balanced_predictions.json`, the format of GQA's eval.py)."""
    entries = [{"questionId": str(q), "prediction": str(a)} for q, a in zip(question_ids, answers, strict=True)]
    check_gqa_predictions(entries, expected_question_ids)
    return _write_json(entries, path)


# ----------------------------------------------------------------------------------------------
# NLVR2
# ----------------------------------------------------------------------------------------------


def nlvr2_identifiers(jsonl_file: str | os.PathLike) -> list[str]:
    """Example identifiers of an NLVR2 JSON-lines file (test1.json, dev.json)."""
    lines = Path(jsonl_file).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["identifier"] for line in lines if line.strip()]


def _nlvr2_label(prediction: Any) -> str:
    if isinstance(prediction, str):
        if prediction.lower() not in ("true", "false"):
            raise ValueError(f"NLVR2 prediction {prediction!r} must be True or False.")
        return prediction.capitalize()
    return "True" if int(prediction) == 1 else "False"


def check_nlvr2_predictions(text: str, identifiers: Iterable[str] | None = None) -> None:
    """NLVR2 CSV: `identifier,True|False` per line."""
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.strip().split(",")
        if len(parts) != 2 or parts[1] not in ("True", "False") or not parts[0]:
            raise ValueError(
                f"NLVR2 predictions line {number}: {line!r}; expected 'identifier,True' or 'identifier,False'."
            )
        ids.append(parts[0])
    _covers("NLVR2 predictions", ids, identifiers)


def write_nlvr2_predictions(
    identifiers: Sequence[str],
    predictions: Sequence[Any],
    path: str | os.PathLike,
    expected_identifiers: Iterable[str] | None = None,
) -> Path:
    """Writes NLVR2 predictions (1/True = the sentence is true of the image pair)."""
    text = "".join(f"{i},{_nlvr2_label(p)}\n" for i, p in zip(identifiers, predictions, strict=True))
    check_nlvr2_predictions(text, expected_identifiers)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# NoCaps
# ----------------------------------------------------------------------------------------------


def nocaps_image_ids(image_info: str | os.PathLike | Mapping) -> dict[str, int]:
    """Open Images id -> nocaps image id, from `nocaps_{val,test}_image_info.json` (or the val captions JSON)."""
    data = image_info if isinstance(image_info, Mapping) else json.loads(Path(image_info).read_text(encoding="utf-8"))
    if "images" not in data:
        raise ValueError("the nocaps image info has no 'images'; expected nocaps_{val,test}_image_info.json.")
    return {str(image["open_images_id"]): int(image["id"]) for image in data["images"]}


def check_nocaps_submission(entries: Sequence[Mapping], image_ids: Iterable[int] | None = None) -> None:
    """NoCaps EvalAI format: a list of {"image_id": int (nocaps id), "caption": str}, every image once."""
    if not isinstance(entries, list):
        raise ValueError(f"NoCaps submission must be a JSON list, got {type(entries).__name__}.")
    for i, entry in enumerate(entries):
        if set(entry) != {"image_id", "caption"}:
            raise ValueError(
                f"NoCaps submission[{i}] has keys {sorted(entry)}; expected exactly image_id and caption."
            )
        if not isinstance(entry["image_id"], int) or isinstance(entry["image_id"], bool):
            raise ValueError(f"NoCaps submission[{i}]: image_id {entry['image_id']!r} must be the int nocaps id.")
        if not isinstance(entry["caption"], str):
            raise ValueError(f"NoCaps submission[{i}]: caption {entry['caption']!r} must be a string.")
    _covers("NoCaps submission", [e["image_id"] for e in entries], image_ids)


def write_nocaps_submission(
    image_keys: Sequence[Any],
    captions: Sequence[str],
    path: str | os.PathLike,
    image_info: str | os.PathLike | Mapping | None = None,
) -> Path:
    """Writes the NoCaps submission JSON.

    `image_keys` are nocaps ids, or Open Images ids (what Oscar's feature files use) when
    `image_info` maps them; with `image_info` every image of the split must have a caption.
    """
    expected = None
    if image_info is not None:
        mapping = nocaps_image_ids(image_info)
        expected = set(mapping.values())
        unknown = [k for k in image_keys if str(k) not in mapping and not _is_nocaps_id(k, expected)]
        if unknown:
            raise ValueError(
                f"image key {unknown[0]!r} is neither an Open Images id nor a nocaps id of the image info; "
                "pass the image info JSON of the same split."
            )
        image_keys = [mapping[str(k)] if str(k) in mapping else int(k) for k in image_keys]
    entries = [{"image_id": int(k), "caption": str(c)} for k, c in zip(image_keys, captions, strict=True)]
    check_nocaps_submission(entries, expected)
    return _write_json(entries, path)


def _is_nocaps_id(key: Any, ids: set[int]) -> bool:
    try:
        return int(key) in ids
    except (TypeError, ValueError):
        return False


__all__ = [
    "check_gqa_predictions",
    "check_nlvr2_predictions",
    "check_nocaps_submission",
    "check_vqa_results",
    "gqa_question_ids",
    "nlvr2_identifiers",
    "nocaps_image_ids",
    "vqa_question_ids",
    "write_gqa_predictions",
    "write_nlvr2_predictions",
    "write_nocaps_submission",
    "write_vqa_results",
]
