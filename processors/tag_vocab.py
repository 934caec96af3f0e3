"""Object-tag vocabularies: detector class ids -> the class names Oscar reads as tags.

Shipped: COCO's 80 detection classes (`"coco"`, contiguous ids 0..79 in the usual order).
The Visual Genome 1600-class list (bottom-up attention, Oscar), the VinVL 1594-class list and the
Open Images lists are not shipped; `load_tag_vocabulary` reads them from the files their projects
publish:

- bottom-up attention `objects_vocab.txt`: one class per line, synonyms after commas
  (`"kite,kites"` -> `"kite"`, as the bottom-up demo does); ids 1..N, 0 is the background;
- VinVL `VG-SGG-dicts-vgoi6-clipped.json` (or any scene_graph_benchmark label map): its
  `idx_to_label` (or the inverse of `label_to_idx`), ids as in the file;
- Open Images `class-descriptions-boxable.csv` (`/m/011k07,Tortoise`, no header) or
  `oidv6-class-descriptions.csv` (`LabelName,DisplayName` header): display names, ids 0..N-1 in
  file order;
- any other `.txt`: one class name per line, ids 0..N-1.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path


VOCABULARY_DIR = Path(__file__).resolve().parent / "tag_vocabularies"
BUILTIN = {"coco": "coco80.txt", "coco80": "coco80.txt"}


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_tag_vocabulary(path_or_name: str | Path) -> dict[int, str]:
    """`{class id: tag}` from a built-in name (`"coco"`) or one of the label-map files above.

    Example:
        >>> vocabulary = load_tag_vocabulary("coco")
        >>> len(vocabulary), vocabulary[0], vocabulary[79]
        (80, 'person', 'toothbrush')
    """
    name = str(path_or_name)
    if name.lower() in BUILTIN:
        return dict(enumerate(_read_lines(VOCABULARY_DIR / BUILTIN[name.lower()])))
    path = Path(path_or_name)
    if not path.is_file():
        raise FileNotFoundError(
            f"No tag vocabulary {name!r}: built-in names are {sorted(BUILTIN)}; otherwise pass the path of a label "
            "map (objects_vocab.txt, VG-SGG-dicts-*.json, class-descriptions*.csv)."
        )
    if path.suffix == ".json":
        return _from_json(path)
    if path.suffix == ".csv":
        return _from_csv(path)
    lines = _read_lines(path)
    if path.name.startswith("objects_vocab"):
        # bottom-up attention: class i+1 is line i (0 = background); keep the first synonym.
        return {i + 1: line.split(",")[0].strip().lower() for i, line in enumerate(lines)}
    return dict(enumerate(lines))


def _from_json(path: Path) -> dict[int, str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if "idx_to_label" in data:
        return {int(k): str(v) for k, v in data["idx_to_label"].items()}
    if "label_to_idx" in data:
        return {int(v): str(k) for k, v in data["label_to_idx"].items()}
    if "id2label" in data:  # a transformers config.json
        return {int(k): str(v) for k, v in data["id2label"].items()}
    raise ValueError(f"{path} has none of idx_to_label, label_to_idx or id2label; found keys {sorted(data)[:10]}.")


def _from_csv(path: Path) -> dict[int, str]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if rows and [c.strip() for c in rows[0][:2]] == ["LabelName", "DisplayName"]:
        rows = rows[1:]
    if any(len(row) < 2 for row in rows):
        raise ValueError(f"{path}: expected 'label id,display name' rows (Open Images class descriptions).")
    return {i: row[1].strip() for i, row in enumerate(rows)}


def tags_from_ids(label_ids: list[int], vocabulary: dict[int, str]) -> list[str]:
    """Class ids -> tags (duplicates kept, as the original); unknown ids are an error."""
    missing = sorted({int(i) for i in label_ids} - set(vocabulary))
    if missing:
        raise ValueError(f"Class ids {missing[:5]} are not in the tag vocabulary ({len(vocabulary)} classes).")
    return [vocabulary[int(i)] for i in label_ids]


__all__ = ["load_tag_vocabulary", "tags_from_ids"]
