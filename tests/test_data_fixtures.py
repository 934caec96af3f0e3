"""Small files in the exact original Oscar/VinVL formats, shared by the data tests (no tests here)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from oscar_hf.data.original_format import feature_row, label_row, size_row, write_tsv
from oscar_hf.data.regions import box_geometry


FEATURE_DIM = 2054
VOCAB = ["cat", "dog", "table", "red car", "person"]


@dataclass
class ImageTruth:
    key: str
    width: int
    height: int
    features: np.ndarray  # float32 (N, 2054) as written to the TSV
    boxes: np.ndarray
    tags: list[str]
    scores: list[float]


@dataclass
class World:
    root: Path
    images: dict[str, ImageTruth] = field(default_factory=dict)


def make_image(rng: np.random.Generator, key: str, num_boxes: int) -> ImageTruth:
    width, height = int(rng.integers(200, 640)), int(rng.integers(200, 480))
    x1 = rng.uniform(0, width / 2, num_boxes)
    y1 = rng.uniform(0, height / 2, num_boxes)
    x2 = x1 + rng.uniform(5, width / 2, num_boxes)
    y2 = y1 + rng.uniform(5, height / 2, num_boxes)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    pooled = rng.gamma(1.0, 1.5, size=(num_boxes, FEATURE_DIM - 6)).astype(np.float32)
    features = np.concatenate([pooled, box_geometry(boxes, width, height)], axis=1)
    tags = [VOCAB[i] for i in rng.integers(0, len(VOCAB), num_boxes)]
    scores = [round(float(s), 3) for s in rng.uniform(0.2, 1.0, num_boxes)]
    return ImageTruth(key, width, height, features, boxes, tags, scores)


def write_regions(
    root: Path, images: list[ImageTruth], stem: str = "train", layout: str = "columns", sizes_in: str = "labels"
) -> dict[str, Path]:
    """`<stem>.feature.tsv`, `<stem>.label.tsv` (+ `<stem>.hw.tsv` when sizes_in == "hw")."""
    paths = {
        "features": write_tsv(
            root / f"{stem}.feature.tsv", [feature_row(im.key, im.features, layout) for im in images]
        ),
        "labels": write_tsv(
            root / f"{stem}.label.tsv",
            [
                label_row(
                    im.key, im.tags, im.boxes, im.scores, (im.width, im.height) if sizes_in == "labels" else None
                )
                for im in images
            ],
        ),
    }
    if sizes_in == "hw":
        paths["image_sizes"] = write_tsv(
            root / f"{stem}.hw.tsv", [size_row(im.key, im.width, im.height) for im in images]
        )
    return paths


def coco_world(root: Path, seed: int = 0) -> World:
    """Six COCO-like images (ids 101..106) with Karpathy splits, features, labels and sizes."""
    rng = np.random.default_rng(seed)
    world = World(root)
    for number, image_id in enumerate(range(101, 107)):
        world.images[str(image_id)] = make_image(rng, str(image_id), num_boxes=2 + number % 3)
    write_regions(root, list(world.images.values()))
    splits = {"101": "train", "102": "restval", "103": "val", "104": "test", "105": "test", "106": "test"}
    karpathy = {
        "dataset": "coco",
        "images": [
            {
                "filepath": "val2014",
                "filename": f"COCO_val2014_{int(key):012d}.jpg",
                "cocoid": int(key),
                "imgid": position,
                "split": split,
                "sentences": [
                    {"raw": f"A caption {c} of image {key}.", "sentid": int(key) * 10 + c, "tokens": []}
                    for c in range(2)
                ],
            }
            for position, (key, split) in enumerate(splits.items())
        ],
    }
    (root / "dataset_coco.json").write_text(json.dumps(karpathy))
    return world


VQA_ANSWERS = {
    # question_id: (image_id, the 10 annotator answers)
    1: (101, ["two", "2", "Two.", "2", "two", "yes", "no", "no", "3", "three"]),
    2: (101, ["a dog", "dog", "the dog", "dogs", "dog", "dog", "cat", "dog", "dog", "dog"]),
    3: (103, ["isnt", "isn't", "no", "no", "no", "no", "no", "no", "no", "no"]),
}


def write_vqa(root: Path, answers: dict = VQA_ANSWERS, name: str = "train") -> tuple[Path, Path]:
    questions = {
        "data_subtype": f"{name}2014",
        "questions": [
            {"image_id": image_id, "question": f"Question {qid}?", "question_id": qid}
            for qid, (image_id, _) in answers.items()
        ],
    }
    annotations = {
        "annotations": [
            {
                "question_id": qid,
                "image_id": image_id,
                "question_type": "how many",
                "answer_type": "number",
                "multiple_choice_answer": given[0],
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(given)
                ],
            }
            for qid, (image_id, given) in answers.items()
        ]
    }
    q_path, a_path = root / f"{name}_questions.json", root / f"{name}_annotations.json"
    q_path.write_text(json.dumps(questions))
    a_path.write_text(json.dumps(annotations))
    return q_path, a_path
