"""Pieces the task recipes (pre-training, captioning, VQA/GQA, NLVR2, retrieval) share on top of
`oscar_hf.training`.

- `FinetuneArguments`: the fields every task recipe adds (tokenizer, text and region lengths);
- `build_processor`: the `OscarProcessor` of a run (from the model folder or a tokenizer folder);
- `label_vocabulary`: an answer list from a file or from a fine-tuned model's `id2label`;
- retrieval evaluation with re-ranking: `tag_overlap_scores` (the built-in cheap first stage),
  `top_k_mask` and `rerank_recall`.

Example:
    >>> from oscar_hf.training.finetuning import tag_overlap_scores
    >>> tag_overlap_scores([["dog", "couch"], ["red car"]], ["A dog on a couch.", "A red car."]).round(2).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .loop import RecipeArguments, load_processor, resolve_pretrained


@dataclass
class FinetuneArguments(RecipeArguments):
    """`RecipeArguments` + what every task recipe reads: tokenizer and lengths (recipes set the defaults).

    `--model_name_or_path none` overrides a YAML's checkpoint with a random initialisation.
    """

    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "folder with the tokenizer (vocab.txt); defaults to model_name_or_path"}
    )
    max_seq_length: int | None = field(default=None, metadata={"help": "text tokens (question/caption + tags)"})
    max_img_seq_length: int | None = field(default=None, metadata={"help": "regions per image"})

    def __post_init__(self) -> None:
        super().__post_init__()
        # A YAML sets a released checkpoint; `--model_name_or_path none` (or "") starts from random weights.
        if self.model_name_or_path is not None and self.model_name_or_path.strip().lower() in ("", "none"):
            self.model_name_or_path = None
        for name in ("max_seq_length", "max_img_seq_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value}; expected a positive length.")


def build_processor(args: FinetuneArguments, **processor_kwargs: Any):
    """The run's `OscarProcessor`: the one saved in the model folder, else one around its tokenizer.

    The processor carries the task lengths (plus `processor_kwargs`, e.g. the caption layout), so
    the exported folder preprocesses like training did.
    """
    source = args.tokenizer_name_or_path or args.model_name_or_path
    if source is None:
        raise ValueError(
            "No tokenizer: pass --tokenizer_name_or_path (a folder with bert-base-uncased's vocab.txt) when "
            "--model_name_or_path is not given (random initialisation)."
        )
    # A missing checkpoint is reported as such (by the argument that named it), not as a missing tokenizer.
    argument = "--tokenizer_name_or_path" if args.tokenizer_name_or_path else "--model_name_or_path"
    processor = load_processor(
        str(resolve_pretrained(source, argument)),
        max_img_seq_length=args.max_img_seq_length,
        max_seq_length=args.max_seq_length,
        **processor_kwargs,
    )
    img_feature_dim = args.config_dict().get("img_feature_dim")
    if img_feature_dim is not None:
        # The regions must be as wide as the model reads them (a detector's width + the 6 box values).
        processor.image_processor.region_feature_dim = int(img_feature_dim) - 6
    return processor


def text_lengths(dataset: Any, tokenizer: Any, text_key: str, tags_key: str | None = None) -> list[int]:
    """Word pieces of each row's text plus its tags (no special tokens), for `--group_by_length`.

    Runs as a `datasets` map (progress bar, cached next to the dataset, so a second run is instant).
    """
    from oscar_hf.processors.collators import _tags  # the collators' tag joining, so lengths match

    if text_key not in dataset.column_names:
        raise ValueError(f"Cannot measure text lengths: no column {text_key!r} (columns: {dataset.column_names}).")
    # Like the collators, a dataset without the tags column is read as tag-less.
    columns = [text_key] + ([tags_key] if tags_key and tags_key in dataset.column_names else [])

    def measure(texts: list[str], tags: list[Any] | None = None) -> dict[str, list[int]]:
        if tags is not None:
            texts = [f"{text} {_tags(row_tags)}" for text, row_tags in zip(texts, tags)]
        encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return {"text_length": [len(ids) for ids in encoded]}

    measured = dataset.map(
        measure,
        batched=True,
        batch_size=10_000,
        input_columns=columns,
        remove_columns=dataset.column_names,
        desc="Measuring text lengths",
    )
    return measured["text_length"]


def check_text_length(config: Any, max_seq_length: int) -> None:
    """Fails before training when the text layout is longer than the model's position table."""
    if max_seq_length > config.max_position_embeddings:
        raise ValueError(
            f"max_seq_length={max_seq_length} exceeds the model's max_position_embeddings="
            f"{config.max_position_embeddings}; lower --max_seq_length or use a model with more positions."
        )


def label_vocabulary(path: str | None, model_name_or_path: str | None) -> list[str] | None:
    """Answer list (index = label id) from `path` (.txt / .json / original .pkl), else from the
    `id2label` of a fine-tuned Oscar folder; None when neither has one."""
    if path is not None:
        from oscar_hf.data import load_vocabulary

        return load_vocabulary(path)
    if model_name_or_path is None:
        return None
    config_file = Path(model_name_or_path) / "config.json"
    if not config_file.is_file():
        return None
    import json

    id2label = json.loads(config_file.read_text(encoding="utf-8")).get("id2label") or {}
    labels = [id2label[k] for k in sorted(id2label, key=int)]
    # transformers fills LABEL_0, LABEL_1, ... when no vocabulary was set: that is not one.
    if not labels or all(re.fullmatch(r"LABEL_\d+", label) for label in labels):
        return None
    return labels


def final_metrics(result: Any) -> dict[str, float] | None:
    """The metrics of the exported weights (model card, all_results.json): the last evaluation,
    which `train` runs after the last step. The best checkpoint (`output_dir/best`, chosen by
    `metric_for_best`) may score higher, but the final folder holds the last weights."""
    evals = [h for h in result.history if any(k.startswith("eval/") for k in h)]
    if not evals:
        return None
    return {k.removeprefix("eval/"): float(v) for k, v in evals[-1].items() if k.startswith("eval/")}


# -------------------------------------------------------------------------------- retrieval


_WORD = re.compile(r"[a-z0-9]+")


def tag_overlap_scores(image_tags: Sequence[Sequence[str]], captions: Sequence[str]) -> np.ndarray:
    """The built-in first stage of re-ranking: cosine of image-tag and caption word sets.

    Each image is the set of words in its detected tags, each caption the set of its words that
    occur in some tag (other words cannot match). Scores are cosines of those binary bags, a
    (num_images, num_captions) float32 matrix; no model is run, so it costs a sparse product.
    """
    words: dict[str, int] = {}
    image_sets = []
    for tags in image_tags:
        tokens = {w for tag in tags for w in _WORD.findall(str(tag).lower())}
        image_sets.append([words.setdefault(w, len(words)) for w in tokens])
    images = np.zeros((len(image_sets), max(len(words), 1)), dtype=np.float32)
    for row, ids in enumerate(image_sets):
        images[row, ids] = 1.0
    texts = np.zeros((len(captions), images.shape[1]), dtype=np.float32)
    for row, caption in enumerate(captions):
        ids = [words[w] for w in set(_WORD.findall(caption.lower())) if w in words]
        texts[row, ids] = 1.0
    norms = np.linalg.norm(images, axis=1, keepdims=True) * np.linalg.norm(texts, axis=1)[None, :]
    return (images @ texts.T) / np.maximum(norms, 1e-6)


def top_k_mask(scores: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Boolean mask of the k best entries along `axis` (per image: axis=1; per caption: axis=0)."""
    k = min(int(k), scores.shape[axis])
    # Stable sort on the negated scores: ties keep index order, so the candidate set is deterministic.
    order = np.argsort(-scores, axis=axis, kind="stable")
    top = np.take(order, np.arange(k), axis=axis)
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=axis)
    return mask


def rerank_recall(
    first_stage: np.ndarray,
    cross_scores: np.ndarray,
    i2t_candidates: np.ndarray,
    t2i_candidates: np.ndarray,
    text_to_image: Any,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@K after re-ranking: candidates ordered by the cross-encoder, ahead of the others.

    For image-to-text, each image's candidate captions (`i2t_candidates`, from `top_k_mask(...,
    axis=1)`) are ranked by `cross_scores` (p(match) in [0, 1]); every other caption follows in
    first-stage order. Text-to-image likewise with `t2i_candidates`. Entries of `cross_scores`
    outside the candidates are ignored (they need not be computed).
    """
    from oscar_hf.metrics import retrieval_recall

    # Map first-stage scores into [0, 1) by rank so candidates (>= 1) always come first.
    def combined(candidates: np.ndarray, axis: int) -> np.ndarray:
        ranks = np.argsort(np.argsort(-first_stage, axis=axis, kind="stable"), axis=axis, kind="stable")
        below = 1.0 - (ranks + 1.0) / (first_stage.shape[axis] + 1.0)
        return np.where(candidates, 1.0 + cross_scores, below)

    mapping = np.asarray(text_to_image)
    i2t = retrieval_recall(combined(i2t_candidates, 1), text_to_image=mapping, ks=ks)
    t2i = retrieval_recall(combined(t2i_candidates, 0), text_to_image=mapping, ks=ks)
    results = {k: v for k, v in i2t.items() if k.startswith("i2t")}
    results.update({k: v for k, v in t2i.items() if k.startswith("t2i")})
    results["rsum"] = float(sum(results.values()))
    return results


__all__ = [
    "FinetuneArguments",
    "build_processor",
    "check_text_length",
    "final_metrics",
    "label_vocabulary",
    "rerank_recall",
    "tag_overlap_scores",
    "text_lengths",
    "top_k_mask",
]
