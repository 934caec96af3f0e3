"""Readers for the annotation files the tasks use, turned into plain example dicts per split.

Every example carries `_where` (file and entry) so that a later join failure (an id without
features) can name the annotation that asked for it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

from .answers import answer_counts, build_vocabulary, normalize_answer, soft_score
from .errors import BadRowError


def read_json(path: str | Path):
    """Parse a JSON file; a syntax error names the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist. Fix: check the --annotations path.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BadRowError(
            "json",
            path,
            error.lineno,
            None,
            f"malformed JSON ({error.msg} at column {error.colno}).",
            "re-download or re-export the annotation file.",
        ) from None


def _need(entry: dict, keys: tuple[str, ...], path: Path, where: str, row_id=None) -> None:
    if not isinstance(entry, dict):
        raise BadRowError(
            "annotation",
            path,
            None,
            None if row_id is None else str(row_id),
            f"{where} is {type(entry).__name__} {str(entry)[:60]!r}; expected an object with keys {list(keys)}.",
            "check that the file is the annotation format the builder expects.",
        )
    missing = [key for key in keys if key not in entry]
    if missing:
        raise BadRowError(
            "annotation",
            path,
            None,
            None if row_id is None else str(row_id),
            f"{where} lacks {missing}; expected keys {list(keys)}.",
            "check that the file is the annotation format the builder expects.",
        )


def _list_field(entry: dict, key: str, path: Path, where: str) -> list:
    value = entry[key]
    if not isinstance(value, list):
        raise BadRowError(
            "annotation",
            path,
            None,
            None,
            f"{where}.{key} is {type(value).__name__} {str(value)[:60]!r}; expected a list.",
            "check that the file is the annotation format the builder expects.",
        )
    return value


# ---------------------------------------------------------------------------------------------
# Captions: Karpathy dataset_{coco,flickr30k}.json, COCO captions_*.json, VinVL [{image_id, caption}]
# ---------------------------------------------------------------------------------------------

KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


@dataclass
class CaptionImage:
    """One image with its captions, as read from any caption format."""

    image_id: str
    captions: list[str]
    caption_ids: list[int]
    width: int | None = None
    height: int | None = None
    where: str = ""


def _karpathy_image_id(entry: dict) -> str:
    # COCO entries carry the COCO id the feature files use; Flickr30k ones only the file name.
    if "cocoid" in entry:
        return str(entry["cocoid"])
    return Path(entry["filename"]).stem


def read_karpathy(path: str | Path) -> dict[str, list[CaptionImage]]:
    """Karpathy split file: `{"images": [{split, filename, cocoid?, sentences: [{raw, sentid}]}]}`.

    `restval` joins `train` (the usual 113,287-image COCO training set).
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or "images" not in data:
        raise BadRowError("annotation", path, None, None, 'Karpathy split file needs an "images" list.', "")
    splits: dict[str, list[CaptionImage]] = defaultdict(list)
    for number, entry in enumerate(data["images"]):
        where = f"images[{number}]"
        _need(entry, ("split", "filename", "sentences"), path, where)
        split = KARPATHY_SPLITS.get(entry["split"], entry["split"])
        sentences = _list_field(entry, "sentences", path, where)
        for position, sentence in enumerate(sentences):
            _need(sentence, ("raw",), path, f"{where}.sentences[{position}]", row_id=_karpathy_image_id(entry))
        captions = [str(sentence["raw"]).strip() for sentence in sentences]
        ids = [int(sentence.get("sentid", -1)) for sentence in sentences]
        splits[split].append(CaptionImage(_karpathy_image_id(entry), captions, ids, where=f"{path}, {where}"))
    return dict(splits)


def read_coco_captions(path: str | Path) -> list[CaptionImage]:
    """COCO `captions_*.json` (`images` with sizes + `annotations`) or VinVL `[{image_id, caption, id}]`."""
    path = Path(path)
    data = read_json(path)
    sizes: dict[str, tuple[int, int]] = {}
    if isinstance(data, dict):
        for entry in data.get("images", []):
            if "width" in entry and "height" in entry:
                sizes[str(entry["id"])] = (int(entry["width"]), int(entry["height"]))
        data = data.get("annotations")
    if not isinstance(data, list):
        raise BadRowError("annotation", path, None, None, 'expected a list of captions or an "annotations" list.', "")
    images: dict[str, CaptionImage] = {}
    for number, entry in enumerate(data):
        _need(entry, ("image_id", "caption"), path, f"entry {number}")
        image_id = str(entry["image_id"])
        if image_id not in images:
            width, height = sizes.get(image_id, (None, None))
            images[image_id] = CaptionImage(image_id, [], [], width, height, where=f"{path}, entry {number}")
        images[image_id].captions.append(str(entry["caption"]).strip())
        images[image_id].caption_ids.append(int(entry.get("id", number)))
    return list(images.values())


def read_captions(path: str | Path, split: str | None = None) -> dict[str, list[CaptionImage]]:
    """Any caption file; Karpathy files give their own splits, others go to `split` (default train)."""
    data_head = Path(path).read_text(encoding="utf-8")[:2000] if Path(path).is_file() else ""
    if '"sentences"' in data_head or '"dataset"' in data_head:
        splits = read_karpathy(path)
        return {split: splits[split]} if split is not None and split in splits else splits
    return {split or "train": read_coco_captions(path)}


# ---------------------------------------------------------------------------------------------
# VQA v2
# ---------------------------------------------------------------------------------------------


def read_vqa(questions_path: str | Path, annotations_path: str | Path | None) -> list[dict]:
    """Join VQA v2 questions with their annotations by question_id (test splits have none)."""
    questions_path = Path(questions_path)
    questions = read_json(questions_path)
    if not isinstance(questions, dict) or "questions" not in questions:
        raise BadRowError("annotation", questions_path, None, None, 'VQA questions file needs "questions".', "")
    answers: dict[int, dict] = {}
    if annotations_path is not None:
        annotations_path = Path(annotations_path)
        data = read_json(annotations_path)
        if not isinstance(data, dict) or "annotations" not in data:
            raise BadRowError(
                "annotation", annotations_path, None, None, 'VQA annotation file needs "annotations".', ""
            )
        for number, entry in enumerate(data["annotations"]):
            where = f"annotations[{number}]"
            _need(entry, ("question_id", "answers"), annotations_path, where)
            for position, answer in enumerate(_list_field(entry, "answers", annotations_path, where)):
                _need(answer, ("answer",), annotations_path, f"{where}.answers[{position}]", entry["question_id"])
            answers[int(entry["question_id"])] = entry
    examples = []
    for number, entry in enumerate(questions["questions"]):
        _need(entry, ("question_id", "image_id", "question"), questions_path, f"questions[{number}]")
        annotation = answers.pop(int(entry["question_id"]), {})
        examples.append(
            {
                "question_id": int(entry["question_id"]),
                "question": entry["question"],
                "image_id": entry["image_id"],
                "answers": [a["answer"] for a in annotation.get("answers", [])],
                "multiple_choice_answer": annotation.get("multiple_choice_answer", ""),
                "question_type": annotation.get("question_type", ""),
                "answer_type": annotation.get("answer_type", ""),
                "_where": f"{questions_path}, questions[{number}]",
            }
        )
    if answers:
        orphan = next(iter(answers))
        raise BadRowError(
            "join",
            annotations_path,
            None,
            str(orphan),
            f"{len(answers)} annotations have no question in {questions_path.name} (first question_id {orphan}).",
            "pair the questions and annotations files of the same split.",
        )
    return examples


def vqa_vocabulary(examples: list[dict], min_count: int = 9) -> list[str]:
    """Answer vocabulary from normalised `multiple_choice_answer`s seen at least `min_count` times.

    With VQA v2 train2014 + val2014 and `min_count=9` this is the 3129-answer set Oscar uses.
    """
    return build_vocabulary(
        (normalize_answer(ex["multiple_choice_answer"]) for ex in examples if ex["multiple_choice_answer"]), min_count
    )


def vqa_targets(answers: list[str], label_of: dict[str, int]) -> tuple[list[int], list[float]]:
    """(label ids, soft scores) of the in-vocabulary answers, ordered by label id."""
    pairs = sorted(
        (label_of[answer], soft_score(count)) for answer, count in answer_counts(answers).items() if answer in label_of
    )
    return [label for label, _ in pairs], [score for _, score in pairs]


# ---------------------------------------------------------------------------------------------
# GQA
# ---------------------------------------------------------------------------------------------


def read_gqa(path: str | Path) -> list[dict]:
    """GQA questions `{question_id: {imageId, question, answer?, fullAnswer?}}`."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise BadRowError("annotation", path, None, None, "GQA questions file must map question ids to entries.", "")
    examples = []
    for question_id, entry in data.items():
        _need(entry, ("imageId", "question"), path, f"question {question_id}", question_id)
        examples.append(
            {
                "question_id": str(question_id),
                "question": entry["question"],
                "image_id": entry["imageId"],
                "answer": entry.get("answer", ""),
                "full_answer": entry.get("fullAnswer", ""),
                "_where": f"{path}, question {question_id}",
            }
        )
    return examples


def gqa_vocabulary(examples: list[dict]) -> list[str]:
    """Every answer in the given GQA files (1853 for Oscar's train/val/test-dev set), most frequent first."""
    return build_vocabulary(ex["answer"] for ex in examples if ex["answer"])


# ---------------------------------------------------------------------------------------------
# NLVR2
# ---------------------------------------------------------------------------------------------


def nlvr2_image_ids(identifier: str) -> tuple[str, str]:
    """`dev-850-0-0` -> (`dev-850-0-img0`, `dev-850-0-img1`): the pair's left and right image keys."""
    prefix = identifier.rsplit("-", 1)[0]
    return f"{prefix}-img0", f"{prefix}-img1"


def read_nlvr2(path: str | Path) -> list[dict]:
    """NLVR2 jsonl: one `{identifier, sentence, label: "True"/"False"}` per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NLVR2 file {path} does not exist. Fix: check the --annotations path.")
    examples = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise BadRowError("json", path, line_number, None, f"malformed JSON line ({error.msg}).", "") from None
            if not isinstance(entry, dict) or "identifier" not in entry or "sentence" not in entry:
                raise BadRowError(
                    "annotation", path, line_number, None, 'each line needs "identifier" and "sentence".', ""
                )
            examples.append(_nlvr2_example(entry, path, line_number))
    return examples


def _nlvr2_example(entry: dict, path: Path, line_number: int) -> dict:
    label = str(entry.get("label", "")).lower()
    if label not in ("true", "false", ""):
        raise BadRowError(
            "annotation",
            path,
            line_number,
            entry["identifier"],
            f'label must be "True" or "False", got {label!r}.',
            "",
        )
    left, right = nlvr2_image_ids(entry["identifier"])
    return {
        "identifier": entry["identifier"],
        "sentence": entry["sentence"],
        "labels": {"true": 1, "false": 0}.get(label, -100),
        "left_image_id": left,
        "right_image_id": right,
        "_where": f"{path}, line {line_number}",
    }


# ---------------------------------------------------------------------------------------------
# Pre-training corpus (Oscar+ YAML + corpus TSV)
# ---------------------------------------------------------------------------------------------


@dataclass
class CorpusSpec:
    """The parts of an Oscar+ corpus YAML the builder needs, with paths resolved."""

    yaml_path: Path
    corpus_file: Path
    label_dirs: dict[str, Path]
    feature_dirs: dict[str, Path]


def read_corpus_yaml(path: str | Path) -> CorpusSpec:
    """Corpus YAML keys `corpus_file`, `image_label_path` and `image_feature_path` ({dataset: dir}).

    Relative paths are taken relative to the YAML's folder, as the original data layout expects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus YAML {path} does not exist. Fix: check the --corpus path.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise BadRowError("yaml", path, line, None, f"malformed YAML ({error}).", "") from None
    for key in ("corpus_file", "image_label_path", "image_feature_path"):
        if key not in (data or {}):
            raise BadRowError("annotation", path, None, None, f"corpus YAML lacks {key!r}.", "add the key.")

    def resolve(value: str) -> Path:
        candidate = Path(value)
        return candidate if candidate.is_absolute() else path.parent / candidate

    return CorpusSpec(
        yaml_path=path,
        corpus_file=resolve(data["corpus_file"]),
        label_dirs={name: resolve(folder) for name, folder in data["image_label_path"].items()},
        feature_dirs={name: resolve(folder) for name, folder in data["image_feature_path"].items()},
    )
