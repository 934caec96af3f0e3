"""Image-text retrieval fine-tuning: a cross-encoder scores (image, caption) pairs as match / no match.

    accelerate launch recipes/retrieval.py --config recipes/configs/retrieval_base.yaml \\
        --train_data data/coco_retrieval --eval_data data/coco_retrieval --eval_split test_1k \\
        --output_dir outputs/retrieval_base
    python recipes/retrieval.py --config recipes/configs/retrieval_base.yaml --eval_mode full ...

Data: built by `python -m oscar_hf.data build retrieval` (one row per image with its `captions`).

Training (as the original `run_retrieval.py`): every (image, caption) pair of the split is a
positive; each one gets a negative drawn from another image, with probability 0.5 one of that
image's captions (paired with the positive's regions and tags), otherwise the positive caption
with that image's regions and tags. A batch of B pairs is 2B rows, 2-way cross entropy. Caption
text is at most 70 tokens with the tags right after it; 50 regions (VinVL features: pass
`--max_img_seq_length 70`).

Evaluation (`--eval_mode`):
- `full`: every image x caption pair of the evaluation split is scored (batched, sharded across
  processes); Recall@1/5/10 both ways and `rsum` from `oscar_hf.metrics.retrieval_recall`.
  COCO 1K is `--eval_split test_1k`, 5K `test_5k` (N x 5N forward passes: plan for it). On
  `test_5k` (`full`) the paper's 1K protocol comes with it: `1k_*` metrics are the mean over the five 1K
  folds (`fold_1k`) of the same score matrix, next to the 5K numbers.
- `rerank`: a first stage picks each image's `rerank_top_k` captions and each caption's
  `rerank_top_k` images; only those pairs go through the model, which orders them ahead of the
  rest (the rest keep first-stage order). The first stage (`--rerank_first_stage`) is `tags`
  (default, no model: cosine between an image's tag words and a caption's words, see
  `oscar_hf.training.finetuning.tag_overlap_scores`) or a `.npy` file holding a (num_images, num_captions)
  score matrix from any cheaper model (e.g. a dual encoder), rows in split order and captions
  image by image. Recall@K with K <= k is then the recall of the re-ranked list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from oscar_hf import OscarForImageTextRetrieval
from oscar_hf.metrics import retrieval_recall, retrieval_recall_by_fold
from oscar_hf.processors.collators import (
    OscarRetrievalPairCollator,
    OscarRetrievalTrainCollator,
    ScoringPairs,
    caption_table,
    model_inputs,
    retrieval_pairs,
)
from oscar_hf.training import (
    ResumableCollator,
    eval_progress,
    export,
    load_model,
    load_split,
    make_accelerator,
    parse_recipe_args,
    train,
    train_dataloader,
)
from oscar_hf.training.finetuning import (
    FinetuneArguments,
    build_processor,
    check_text_length,
    final_metrics,
    rerank_recall,
    tag_overlap_scores,
    top_k_mask,
)


@dataclass
class RetrievalArguments(FinetuneArguments):
    eval_mode: Literal["full", "rerank"] = field(
        default="full", metadata={"help": "full: score every pair; rerank: re-rank a first stage's top k"}
    )
    rerank_top_k: int = field(default=20, metadata={"help": "candidates per image and per caption"})
    rerank_first_stage: str = field(
        default="tags", metadata={"help": "'tags' (tag/caption word overlap) or a .npy (images x captions) matrix"}
    )
    caption_negative_probability: float = field(
        default=0.5, metadata={"help": "share of negatives that swap the caption (the rest swap the image)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.max_seq_length = self.max_seq_length or 70
        self.max_img_seq_length = self.max_img_seq_length or 50
        if self.rerank_top_k < 1:
            raise ValueError(f"rerank_top_k={self.rerank_top_k}; expected a positive number of candidates (20).")
        if self.rerank_first_stage != "tags" and not Path(self.rerank_first_stage).is_file():
            raise ValueError(
                f"rerank_first_stage={self.rerank_first_stage!r} is neither 'tags' nor an existing .npy score "
                "matrix; pass 'tags' or the path of a (num_images, num_captions) matrix."
            )


def first_stage_scores(args: RetrievalArguments, images, captions: list[str]) -> np.ndarray:
    """The cheap scores that choose the re-ranking candidates (see the module doc)."""
    if args.rerank_first_stage == "tags":
        return tag_overlap_scores(images["tags"], captions)
    scores = np.load(args.rerank_first_stage)
    expected = (len(images), len(captions))
    if args.max_eval_samples is not None and scores.ndim == 2:
        # Truncated split: the first images and, as captions come image by image, their captions.
        scores = scores[: expected[0], : expected[1]]
    if scores.shape != expected:
        raise ValueError(
            f"{args.rerank_first_stage} has shape {scores.shape}; expected {expected} (images x captions of "
            f"the {args.eval_split!r} split, captions image by image). Fix: recompute it on this split."
        )
    return scores.astype(np.float32)


class EvalPairs(NamedTuple):
    """The evaluation loader over the pairs to score, and what ranking them needs."""

    loader: DataLoader
    text_to_image: np.ndarray  # image row of each caption
    candidates: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # rerank: first stage, i2t and t2i masks
    folds: np.ndarray | None = None  # 1K fold of each image (test_5k), None without several folds


def get_dataloaders(args: RetrievalArguments, processor, accelerator) -> tuple[DataLoader, EvalPairs | None]:
    """Training pairs (with a resumable negative-sampling collator) and the evaluation pairs."""
    with accelerator.main_process_first():
        train_images = load_split(args.train_data, args.train_split, args.max_train_samples)
    # Negatives come from this generator; ResumableCollator saves its state with each checkpoint.
    generator = torch.Generator().manual_seed(args.seed)
    pairs_collator = OscarRetrievalTrainCollator(
        processor,
        train_images,
        generator=generator,
        caption_negative_probability=args.caption_negative_probability,
        max_seq_length=args.max_seq_length,
    )
    collator = ResumableCollator(pairs_collator, generator)
    train_loader = train_dataloader(retrieval_pairs(train_images), args, collator)
    return train_loader, eval_pairs(args, processor, accelerator) if args.eval_data else None


def eval_pairs(args: RetrievalArguments, processor, accelerator) -> EvalPairs:
    """Every image x caption pair (`full`), or the union of the first stage's top-k (`rerank`)."""
    with accelerator.main_process_first():
        images = load_split(args.eval_data, args.eval_split, args.max_eval_samples)
    captions, owner = caption_table(images)
    candidates = None
    if args.eval_mode == "full":
        pairs = ScoringPairs.grid(len(images), len(captions))
    else:
        scores = first_stage_scores(args, images, captions)
        candidates = (scores, top_k_mask(scores, args.rerank_top_k, 1), top_k_mask(scores, args.rerank_top_k, 0))
        pairs = ScoringPairs(np.argwhere(candidates[1] | candidates[2]))
    loader = DataLoader(
        pairs,
        batch_size=args.per_device_eval_batch_size,
        collate_fn=OscarRetrievalPairCollator(processor, images, captions, max_seq_length=args.max_seq_length),
        num_workers=args.dataloader_num_workers,
    )
    # The 1K protocol ranks within each fold: with full scoring only (re-ranking picked its
    # candidates over the whole split).
    folds = np.asarray(images["fold_1k"]) if args.eval_mode == "full" and "fold_1k" in images.column_names else None
    if folds is not None and len(np.unique(folds[folds >= 0])) < 2:
        folds = None  # a single fold (test_1k) is the split itself
    return EvalPairs(loader, owner, candidates, folds)


def full_recall(matrix: np.ndarray, text_to_image: np.ndarray, folds: np.ndarray | None) -> dict[str, float]:
    """Recall over the whole split, plus the mean over its 1K folds (`1k_*`) when it has several."""
    results = retrieval_recall(matrix, text_to_image=text_to_image)
    if folds is not None:
        by_fold = retrieval_recall_by_fold(matrix, folds=folds, text_to_image=text_to_image)
        results.update({f"1k_{name}": value for name, value in by_fold.items()})
    return results


def compute_loss(model, batch, step: int) -> torch.Tensor:
    return model(**model_inputs(batch)).loss


def make_evaluate(accelerator, eval_loader, text_to_image: np.ndarray, candidates, folds: np.ndarray | None = None):
    """Scores the pairs on every process, gathers them into the image x caption matrix, ranks."""
    num_images, num_texts = int(text_to_image.max()) + 1, len(text_to_image)

    @torch.no_grad()
    def evaluate(model) -> dict[str, float]:
        matrix = np.zeros((num_images, num_texts), dtype=np.float32)
        for batch in eval_progress(accelerator, eval_loader):
            scores = model(**model_inputs(batch)).scores
            pairs, scores = accelerator.gather_for_metrics((batch["pair_index"], scores))
            pairs = pairs.cpu().numpy()
            matrix[pairs[:, 0], pairs[:, 1]] = scores.float().cpu().numpy()
        if candidates is None:
            return full_recall(matrix, text_to_image, folds)
        first_stage, i2t, t2i = candidates
        return rerank_recall(first_stage, matrix, i2t, t2i, text_to_image)

    return evaluate


def main(argv: list[str] | None = None):
    args = parse_recipe_args(RetrievalArguments, argv)
    if args.train_data is None:
        raise ValueError("--train_data is required: a dataset built with `python -m oscar_hf.data build retrieval`.")
    accelerator = make_accelerator(args, "oscar-retrieval")
    processor = build_processor(args)
    overrides = {"num_labels": 2, "max_img_seq_length": args.max_img_seq_length, **args.config_dict()}
    model = load_model(OscarForImageTextRetrieval, args.model_name_or_path, **overrides)
    check_text_length(model.config, args.max_seq_length)
    train_loader, pairs = get_dataloaders(args, processor, accelerator)
    evaluate = None
    if pairs is not None:
        evaluate = make_evaluate(
            accelerator, accelerator.prepare(pairs.loader), pairs.text_to_image, pairs.candidates, pairs.folds
        )
    # The collator's generator (negative sampling) is saved with every checkpoint.
    model, result = train(
        args,
        accelerator,
        model,
        train_loader,
        compute_loss,
        evaluate=evaluate,
        checkpoint_objects=[train_loader.collate_fn],
        processor=processor,
        task="retrieval",
    )
    final = export(
        accelerator,
        model,
        args,
        "retrieval",
        processor=processor,
        results=final_metrics(result),
        dataset_name=f"{args.eval_split} ({args.eval_mode}{'; 1k_*: mean of the five 1K folds' if pairs and pairs.folds is not None else ''})",
        dataset_split=args.eval_split,
        train_result=result,
    )
    accelerator.end_training()
    return final, result


if __name__ == "__main__":
    main()
