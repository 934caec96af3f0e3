"""Writes the bundled sample of the walk-through (`examples/sample/`); run once, the output is committed.

- `photos/`: four photos from scikit-image, at most 256 pixels a side;
- `captions.json`: two hand-written captions per photo, in the Karpathy split format;
- `detector/`: a tiny random YOLOS detector over the COCO labels (32-d region features), so that
  the walk-through detects offline in seconds. Its boxes and tags are random: it shows the steps,
  not detection quality.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image
from skimage import data
from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

from oscar_hf.processors.tag_vocab import load_tag_vocabulary


CAPTIONS = {
    "astronaut": ["a woman in a space suit in front of a flag", "an astronaut smiling at the camera"],
    "chelsea": ["a cat looking at the camera", "a close up of a tabby cat"],
    "coffee": ["a cup of coffee on a saucer", "a cup of coffee with a spoon on a table"],
    "rocket": ["a rocket on a launch pad", "a space rocket standing on a launch pad"],
}


def write_photos(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in CAPTIONS:
        photo = Image.fromarray(getattr(data, name)()).convert("RGB")
        photo.thumbnail((256, 256))
        photo.save(folder / f"{name}.jpg", quality=85)


def write_captions(path: Path) -> None:
    """Every photo in both splits: the walk-through trains and evaluates on the same four photos."""
    images = [
        {
            "filename": f"{name}.jpg",
            "split": split,
            "sentences": [{"raw": caption, "sentid": 10 * i + j} for j, caption in enumerate(captions)],
        }
        for split in ("train", "val")
        for i, (name, captions) in enumerate(CAPTIONS.items())
    ]
    path.write_text(json.dumps({"dataset": "sample", "images": images}, indent=1), encoding="utf-8")


def write_detector(folder: Path) -> None:
    torch.manual_seed(0)
    config = YolosConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=[64, 64],
        patch_size=16,
        num_detection_tokens=10,
        num_labels=80,
        id2label=dict(load_tag_vocabulary("coco")),
    )
    YolosForObjectDetection(config).save_pretrained(folder)
    YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "sample")
    write_photos(root / "photos")
    write_captions(root / "captions.json")
    write_detector(root / "detector")
    print(f"wrote {root}")
