"""Writers of the original Oscar/VinVL file formats (feature, label and size TSVs with `.lineidx`).

Used to export regions back to the original layout, by the tests (which write small files in the
exact original formats) and by the benchmark.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .tsv import write_lineidx


def encode_features(features: np.ndarray, dtype: str = "float32") -> str:
    """Base64 of the row-major float bytes, as the original feature files store them."""
    return base64.b64encode(np.ascontiguousarray(features, dtype=dtype).tobytes()).decode("ascii")


def feature_row(image_key: str, features: np.ndarray, layout: str = "columns", dtype: str = "float32") -> str:
    """One feature-TSV line: `columns` = [key, num_boxes, base64]; `json` = [key, {num_boxes, features}]."""
    blob = encode_features(features, dtype)
    if layout == "columns":
        return f"{image_key}\t{len(features)}\t{blob}"
    if layout == "json":
        return f"{image_key}\t{json.dumps({'num_boxes': len(features), 'features': blob})}"
    raise ValueError(f"layout must be 'columns' or 'json', got {layout!r}.")


def label_row(
    image_key: str,
    tags: list[str],
    boxes: np.ndarray,
    scores: list[float] | None = None,
    image_size: tuple[int, int] | None = None,
) -> str:
    """One label-TSV line; with `image_size` (width, height) the `{image_h, image_w, objects}` form."""
    scores = scores if scores is not None else [1.0] * len(tags)
    objects = [
        {"class": tag, "conf": float(score), "rect": [float(v) for v in box]}
        for tag, score, box in zip(tags, scores, np.asarray(boxes).reshape(-1, 4))
    ]
    cell = objects if image_size is None else {"image_w": image_size[0], "image_h": image_size[1], "objects": objects}
    return f"{image_key}\t{json.dumps(cell)}"


def size_row(image_key: str, width: int, height: int) -> str:
    """One VinVL `hw.tsv` line."""
    return f"{image_key}\t{json.dumps([{'height': height, 'width': width}])}"


def write_tsv(path: str | Path, lines: Iterable[str], lineidx: bool = True) -> Path:
    """Write TSV lines (each without its newline) and, by default, the `.lineidx` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line + "\n")
    if lineidx:
        write_lineidx(path)
    return path
