"""NoCaps (val / test) in the Parquet caption layout, with the detections CBS turns into constraints.

Inputs, as users hold them:

| input | file |
| --- | --- |
| image info | `nocaps_{val,test}_image_info.json` (COCO-style `images`: `id`, `open_images_id`, `file_name`, `height`, `width`), or the val captions JSON `nocaps_val_4500_captions.json`, which also has `domain` per image and `annotations` (the ~10 references) |
| detector boxes | Oscar's `val.cbsbox.tsv` (Open Images id -> `[{rect, class, conf}]`) or nocaps' `nocaps_{val,test}_oi_detector_boxes.json` (COCO-style, nocaps ids, `bbox` as x1 y1 x2 y2) |
| region features and tags | any `RegionSource` (Oscar's `val.feature.tsv` + `val.label.tsv`), keyed by Open Images id (`image_key_template` formats `{id}` with it) |

One row per image: the caption columns (`caption_id` -1, `references` from the val captions JSON,
empty on test) plus `nocaps_id`, `open_images_id`, `domain` and the raw detections `cbs_boxes`,
`cbs_classes`, `cbs_scores` (the constraint filter and FSM are applied at decoding time,
`oscar_hf.processors.cbs_constraints`, so their files can change without a rebuild). An image
missing from the boxes file gets no detections, hence no constraints, as in the original.

    builder = NocapsBuilder(TsvRegionSource("val.feature.tsv", labels="val.label.tsv"),
                            "nocaps_val_4500_captions.json", boxes="val.cbsbox.tsv")
    build_dataset(builder, "data/nocaps")
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from datasets import Array2D, Features, List, Value

from oscar_hf.processors.cbs_constraints import DetectorBoxes, read_boxes_json, read_boxes_tsv

from . import schema
from .builders import _RegionTask
from .regions import RegionSource


def nocaps_schema(feature_dim: int = 2054) -> Features:
    """The caption layout plus the NoCaps ids, domain and the CBS detector boxes."""
    return Features(
        {
            **schema.caption_schema(feature_dim),
            "nocaps_id": Value("int64"),
            "open_images_id": Value("string"),
            "domain": Value("string"),
            "cbs_boxes": Array2D(shape=(None, 4), dtype="float32"),
            "cbs_classes": List(Value("string")),
            "cbs_scores": List(Value("float32")),
        }
    )


class NocapsBuilder(_RegionTask):
    """NoCaps images joined with their regions, tags, references (val) and CBS detections.

    Args:
        regions: region features and tags keyed by Open Images id.
        image_info: the image info JSON or the val captions JSON (path).
        boxes: the detector boxes (Oscar's TSV or nocaps' JSON); None gives every image no boxes.
        split: the split name written ("val" or "test").
    """

    name = "nocaps"

    def __init__(
        self,
        regions: RegionSource,
        image_info: str | Path,
        boxes: str | Path | None = None,
        split: str = "val",
        feature_dim: int = 2054,
        image_key_template: str = "{id}",
    ) -> None:
        super().__init__(regions, feature_dim, image_key_template)
        self.image_info = Path(image_info)
        if not self.image_info.is_file():
            raise FileNotFoundError(
                f"NoCaps image info {str(self.image_info)!r} does not exist; pass nocaps_{split}_image_info.json "
                "or nocaps_val_4500_captions.json."
            )
        self.boxes_path = Path(boxes) if boxes is not None else None
        self.split = split

    def features(self) -> Features:
        return nocaps_schema(self.feature_dim)

    def describe(self) -> dict:
        boxes = str(self.boxes_path) if self.boxes_path else None
        return {**self._common(), "image_info": str(self.image_info), "boxes": boxes, "split": self.split}

    def plan(self) -> dict[str, list]:
        data = json.loads(self.image_info.read_text(encoding="utf-8"))
        if "images" not in data:
            raise ValueError(f"{self.image_info} has no 'images'; expected a nocaps image info or captions JSON.")
        references: dict[int, list[str]] = {}
        for caption in data.get("annotations", []):
            references.setdefault(int(caption["image_id"]), []).append(caption["caption"])
        boxes = self._read_boxes()
        units = []
        for number, image in enumerate(data["images"]):
            missing = {"id", "open_images_id"} - set(image)
            if missing:
                raise ValueError(f"{self.image_info}: images[{number}] lacks {sorted(missing)}.")
            nocaps_id, open_images_id = int(image["id"]), str(image["open_images_id"])
            # Oscar's TSV is keyed by Open Images id, nocaps' JSON by nocaps id.
            detections = boxes.get(open_images_id, boxes.get(nocaps_id, DetectorBoxes.empty()))
            units.append(
                {
                    "nocaps_id": nocaps_id,
                    "open_images_id": open_images_id,
                    "domain": image.get("domain", ""),
                    "width": image.get("width"),
                    "height": image.get("height"),
                    "references": references.get(nocaps_id, []),
                    "detections": detections,
                    "where": f"{self.image_info}, images[{number}]",
                }
            )
        return {self.split: units}

    def _read_boxes(self) -> dict:
        if self.boxes_path is None:
            return {}
        if self.boxes_path.suffix == ".json":
            return read_boxes_json(self.boxes_path)
        return read_boxes_tsv(self.boxes_path)

    def unit_rows(self, unit: dict) -> Iterator[dict]:
        record = self.lookup(unit["open_images_id"], unit["where"], (unit["width"], unit["height"]))
        detections: DetectorBoxes = unit["detections"]
        references = unit["references"]
        yield {
            **record.as_columns(),
            "caption_id": -1,
            "caption": references[0] if references else "",
            "references": references,
            "nocaps_id": unit["nocaps_id"],
            "open_images_id": unit["open_images_id"],
            "domain": unit["domain"],
            "cbs_boxes": np.asarray(detections.boxes, dtype=np.float32).reshape(-1, 4),
            "cbs_classes": list(detections.class_names),
            "cbs_scores": [float(s) for s in detections.scores],
        }


def detections_of(row: dict) -> DetectorBoxes:
    """The CBS detections stored in a built NoCaps row."""
    return DetectorBoxes(
        boxes=np.asarray(row["cbs_boxes"], dtype=np.float64).reshape(-1, 4),
        class_names=[str(name).lower() for name in row["cbs_classes"]],
        scores=np.asarray(row["cbs_scores"], dtype=np.float64),
    )


__all__ = ["NocapsBuilder", "detections_of", "nocaps_schema"]
