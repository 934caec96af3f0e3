"""Explicit `datasets.Features` of every task, so built Parquet shards agree column for column."""

from __future__ import annotations

from datasets import Array2D, Features, List, Value


def region_features(feature_dim: int = 2054, prefix: str = "") -> dict:
    """Columns of one image's regions: float16 region vectors, xyxy pixel boxes, size, tags.

    `img_feats` carries the model's argument name (and the collators' key) so rows feed them as they are.
    """
    return {
        f"{prefix}image_id": Value("string"),
        f"{prefix}img_feats": Array2D(shape=(None, feature_dim), dtype="float16"),
        f"{prefix}boxes": Array2D(shape=(None, 4), dtype="float32"),
        f"{prefix}image_width": Value("int32"),
        f"{prefix}image_height": Value("int32"),
        f"{prefix}tags": List(Value("string")),
        f"{prefix}tag_scores": List(Value("float32")),
    }


def regions_schema(feature_dim: int = 2054) -> Features:
    """Regions only: what the raw-images path writes, usable as `--regions` by every builder."""
    return Features({**region_features(feature_dim), "file_name": Value("string")})


def caption_schema(feature_dim: int = 2054) -> Features:
    """Captioning: one row per caption (`caption_id` >= 0) or per image (`caption_id` -1)."""
    return Features(
        {
            **region_features(feature_dim),
            "caption_id": Value("int64"),
            "caption": Value("string"),
            "references": List(Value("string")),
        }
    )


def retrieval_schema(feature_dim: int = 2054) -> Features:
    """Retrieval: one row per image with its captions; `fold_1k` is the 1K-test fold (-1 elsewhere)."""
    return Features(
        {
            **region_features(feature_dim),
            "captions": List(Value("string")),
            "caption_ids": List(Value("int64")),
            "fold_1k": Value("int32"),
        }
    )


def vqa_schema(feature_dim: int = 2054, num_labels: int = 3129) -> Features:
    """VQA v2: sparse answer ids + soft scores, and the dense `labels` vector the BCE head takes."""
    return Features(
        {
            **region_features(feature_dim),
            "question_id": Value("int64"),
            "question": Value("string"),
            "answers": List(Value("string")),
            "multiple_choice_answer": Value("string"),
            "question_type": Value("string"),
            "answer_type": Value("string"),
            "answer_labels": List(Value("int32")),
            "answer_scores": List(Value("float32")),
            "labels": List(Value("float32"), length=num_labels),
        }
    )


def gqa_schema(feature_dim: int = 2054) -> Features:
    """GQA: `labels` is the answer id (-100 when the answer is unknown or outside the vocabulary)."""
    return Features(
        {
            **region_features(feature_dim),
            "question_id": Value("string"),
            "question": Value("string"),
            "answer": Value("string"),
            "full_answer": Value("string"),
            "labels": Value("int32"),
        }
    )


def nlvr2_schema(feature_dim: int = 2054) -> Features:
    """NLVR2: a sentence, a True(1)/False(0) label and the regions of the left and right images."""
    return Features(
        {
            "identifier": Value("string"),
            "sentence": Value("string"),
            "labels": Value("int32"),
            **region_features(feature_dim, "left_"),
            **region_features(feature_dim, "right_"),
        }
    )


def pretrain_schema(feature_dim: int = 2054) -> Features:
    """Pre-training triples: text_a (caption/question), text_b (tag string, or the answer for QA rows), regions."""
    return Features(
        {
            **region_features(feature_dim),
            "source": Value("string"),
            "image_key": Value("string"),
            "label_key": Value("string"),
            "text_a": Value("string"),
            "text_b": Value("string"),
            "is_qa": Value("bool"),
        }
    )
