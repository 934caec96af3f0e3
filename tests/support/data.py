"""Small files in the exact original Oscar/VinVL formats, shared by the data tests (no tests here)."""

from __future__ import annotations

import json
import random
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


VQA_VOCAB = ["2", "yes", "no", "dog", "isn't", "3", "cat"]


def write_corpus(root, rng):
    """An Oscar+ corpus: coco (single file), googlecc (chunk 0) and gqa QA rows with QA_fileB.tsv."""
    truth = {}
    layout = {"coco": ("", ["11", "12"]), "googlecc": ("0", ["5_a"]), "gqa": ("", ["n9"])}
    for dataset, (chunk, ids) in layout.items():
        images = [make_image(rng, image_id, 2) for image_id in ids]
        folder = root / "features" / dataset / chunk
        paths = write_regions(folder, images)
        paths["features"].rename(folder / "features.tsv")
        paths["labels"].rename(folder / "predictions_gt.tsv")
        for name in ("features.tsv", "predictions_gt.tsv"):
            from oscar_hf.data import write_lineidx

            write_lineidx(folder / name)
        truth.update({f"{dataset}_{chunk + '_' if chunk else ''}{im.key}": im for im in images})
    write_tsv(root / "features" / "gqa" / "QA_fileB.tsv", ['77\t{"labels": ["yes"]}'])
    corpus = [
        "coco_11\tcoco_11\tA man riding a horse.",
        "coco_12\tcoco_12\tA bowl of fruit.",
        "googlecc_0_5_a\tgooglecc_0_5_a\tSunset over the sea.",
        "gqa_n9\tgqa_qa_n9_77\tIs the sky blue?",
    ]
    write_tsv(root / "corpus.tsv", corpus)
    yaml_text = (
        "corpus: coco_googlecc_gqa\ncorpus_file: corpus.tsv\n"
        "image_label_path:\n  coco: features/coco\n  googlecc: features/googlecc\n  gqa: features/gqa\n"
        "image_feature_path:\n  coco: features/coco\n  googlecc: features/googlecc\n  gqa: features/gqa\n"
    )
    (root / "corpus.yaml").write_text(yaml_text)
    return truth


def random_caption_sets(seed: int, count: int) -> list[tuple[list[str], list[list[str]]]]:
    """Deterministic (predictions, references) sets with shared words, so n-grams overlap."""
    rng = random.Random(seed)
    words = [
        "a",
        "an",
        "the",
        "man",
        "woman",
        "dog",
        "cat",
        "two",
        "three",
        "red",
        "blue",
        "big",
        "small",
        "is",
        "are",
        "on",
        "in",
        "of",
        "with",
        "near",
        "sitting",
        "running",
        "grass",
        "table",
        "street",
        "beach",
        "horse",
        "bike",
        "plate",
        "pizza",
        "sofa",
        "water",
        "tree",
        "people",
        "child",
        "ball",
        "kite",
        "sky",
    ]
    marks = [",", ".", "!", "?", ";", "'s", "-"]

    def sentence() -> str:
        tokens = [rng.choice(words) for _ in range(rng.randint(2, 12))]
        if rng.random() < 0.4:
            tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(marks))
        text = " ".join(tokens).replace(" 's", "'s").replace(" -", "-")
        return text.capitalize() if rng.random() < 0.5 else text

    sets = []
    for _ in range(count):
        n_images = rng.randint(1, 12)
        refs = [[sentence() for _ in range(rng.randint(1, 6))] for _ in range(n_images)]
        preds = [rng.choice(r) if rng.random() < 0.15 else sentence() for r in refs]
        sets.append((preds, refs))
    return sets
