"""Oscar / Oscar+ pre-training: masked tokens over text+tags and the 2/3-way contrastive loss.

    accelerate launch recipes/pretrain.py --config recipes/configs/oscar_plus_base.yaml \\
        --train_data data/pretrain --output_dir outputs/oscar_plus_base
    python recipes/pretrain.py --config recipes/configs/oscar_plus_base.yaml ...   # one process

`train_data` is a corpus built by `python -m oscar_hf.data build pretrain` (columns `text_a`,
`text_b`, `img_feats`, `image_id`, ...). Polluted pairs and masked tokens are drawn by the
collator from a seeded generator that is saved with every checkpoint, so a resumed run sees the
same batches it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from oscar_hf import OscarForPreTraining
from oscar_hf.processors import OscarPretrainingCollator
from oscar_hf.training import (
    ResumableCollator,
    eval_dataloader,
    eval_progress,
    export,
    load_model,
    load_split,
    make_accelerator,
    parse_recipe_args,
    train,
    train_dataloader,
)
from oscar_hf.training.finetuning import FinetuneArguments, build_processor, final_metrics


@dataclass
class PretrainArguments(FinetuneArguments):
    max_seq_length: int | None = 35
    max_img_seq_length: int | None = 50
    mlm_probability: float = 0.15
    texta_false_prob: float = 0.25  # Oscar+: 25% of pairs get a polluted caption/question (label 2)
    mask_polluted_text_b: bool = True
    # Vocabulary logits at the labelled positions only: the same loss, without scoring every
    # text and region row (see benchmarks/RESULTS.md).
    sparse_prediction: bool = True


def get_dataloaders(args: PretrainArguments, processor, num_classes: int, generator: torch.Generator):
    collator = ResumableCollator(
        OscarPretrainingCollator(
            processor,
            num_contrast_classes=num_classes,
            text_a_pollution_probability=args.texta_false_prob if num_classes == 3 else 0.0,
            mlm_probability=args.mlm_probability,
            mask_polluted_text_b=args.mask_polluted_text_b,
            generator=generator,
            max_seq_length=args.max_seq_length,
        ),
        generator,
    )
    train_set = load_split(args.train_data, args.train_split, args.max_train_samples)
    train_loader = train_dataloader(train_set, args, collator)
    eval_loader = None
    if args.eval_data:
        eval_set = load_split(args.eval_data, args.eval_split, args.max_eval_samples)
        # A separate generator: evaluation must not move the training randomness.
        eval_collator = OscarPretrainingCollator(
            processor,
            num_contrast_classes=num_classes,
            text_a_pollution_probability=collator.collate_fn.text_a_pollution_probability,
            generator=torch.Generator().manual_seed(args.seed + 1),
            max_seq_length=args.max_seq_length,
        )
        eval_loader = eval_dataloader(eval_set, args, eval_collator)
    return train_loader, eval_loader


def make_compute_loss(sparse_prediction: bool):
    def compute_loss(model, batch, step: int) -> torch.Tensor:
        return model(**batch, sparse_prediction=sparse_prediction).loss

    return compute_loss


def make_evaluate(accelerator, eval_loader, sparse_prediction: bool = False):
    """Mean masked-token loss and contrastive accuracy over the evaluation corpus."""

    @torch.no_grad()
    def evaluate(model) -> dict[str, float]:
        mlm, contrastive, correct = [], [], []
        for batch in eval_progress(accelerator, eval_loader):
            out = model(**batch, sparse_prediction=sparse_prediction)
            mlm.append(accelerator.gather_for_metrics(out.masked_lm_loss.detach()[None]))
            contrastive.append(accelerator.gather_for_metrics(out.contrastive_loss.detach()[None]))
            hits = out.contrastive_logits.argmax(-1) == batch["contrastive_labels"]
            correct.append(accelerator.gather_for_metrics(hits))
        hits = torch.cat(correct)
        return {
            "masked_lm_loss": torch.cat(mlm).mean().item(),
            "contrastive_loss": torch.cat(contrastive).mean().item(),
            "contrastive_accuracy": hits.float().mean().item(),
        }

    return evaluate


def main(argv: list[str] | None = None):
    args = parse_recipe_args(PretrainArguments, argv)
    if args.train_data is None:
        raise ValueError("--train_data is required: a corpus built with `python -m oscar_hf.data build pretrain`.")
    accelerator = make_accelerator(args, "oscar-pretrain")
    processor = build_processor(args)
    config = {"max_img_seq_length": args.max_img_seq_length, **args.config_dict()}
    model = load_model(OscarForPreTraining, args.model_name_or_path, **config)
    generator = torch.Generator().manual_seed(args.seed)
    train_loader, eval_loader = get_dataloaders(args, processor, model.config.num_contrast_classes, generator)
    collator = train_loader.collate_fn
    evaluate = None
    if eval_loader is not None:
        evaluate = make_evaluate(accelerator, accelerator.prepare(eval_loader), args.sparse_prediction)
    model, result = train(
        args,
        accelerator,
        model,
        train_loader,
        make_compute_loss(args.sparse_prediction),
        evaluate=evaluate,
        checkpoint_objects=[collator],
        processor=processor,
        task="pretraining",
    )
    final = export(
        accelerator,
        model,
        args,
        "pretraining",
        processor=processor,
        results=final_metrics(result),
        dataset_split=args.eval_split,
        train_result=result,
    )
    accelerator.end_training()
    return final, result


if __name__ == "__main__":
    main()
