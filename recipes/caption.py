"""Image captioning: the cross-entropy stage (masked caption tokens) and the SCST CIDEr-D stage.

    accelerate launch recipes/caption.py --config recipes/configs/coco_caption_base.yaml \\
        --train_data data/coco_caption --eval_data data/coco_caption --output_dir outputs/coco_caption_base
    accelerate launch recipes/caption.py --config recipes/configs/coco_caption_base_scst.yaml \\
        --train_data data/coco_caption --eval_data data/coco_caption --output_dir outputs/coco_caption_scst

Data: `python -m oscar_hf.data build caption` (training rows per caption, evaluation rows per image
with all `references`). Evaluation decodes with beam search (the original search by default) and
scores with the COCO caption metrics (official scorers when Java is present).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import GenerationConfig

from oscar_hf import OscarForImageCaptioning
from oscar_hf.metrics import coco_caption_scores
from oscar_hf.processors import OscarCaptioningCollator
from oscar_hf.training import (
    ResumableCollator,
    eval_dataloader,
    export,
    load_model,
    load_split,
    make_accelerator,
    parse_recipe_args,
    train,
    train_dataloader,
)
from oscar_hf.training.finetuning import FinetuneArguments, build_processor, final_metrics
from oscar_hf.training.scst import CiderReward, caption_log_probs, scst_loss


@dataclass
class CaptionArguments(FinetuneArguments):
    max_seq_length: int | None = 70  # caption slot + tags
    max_caption_length: int = 40
    max_img_seq_length: int | None = 50
    mask_probability: float = 0.15
    max_masked_tokens: int = 3
    num_beams: int = 5
    max_gen_length: int = 20  # counts [CLS], as the original
    original_decoding: bool = True
    metric_backend: Literal["auto", "official", "python"] = "auto"
    scst: bool = False
    scst_num_samples: int = 5
    scst_baseline: Literal["greedy", "sample"] = "greedy"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_caption_length >= self.max_seq_length:
            raise ValueError(
                f"max_caption_length={self.max_caption_length} leaves no room for tags in max_seq_length="
                f"{self.max_seq_length}."
            )
        if self.scst and self.scst_num_samples < 2 and self.scst_baseline == "sample":
            raise ValueError("scst_baseline='sample' averages the other samples: use scst_num_samples >= 2.")


class PromptCollator:
    """Image rows -> generation prompts (+ row index, to look the references up after gathering)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, rows) -> dict:
        prompt = self.processor.caption_prompt(
            [r["tags"] for r in rows], region_features=[r["img_feats"] for r in rows]
        )
        return {**prompt, "row_index": torch.tensor([int(r["row_index"]) for r in rows])}


def with_row_index(dataset):
    return dataset.add_column("row_index", list(range(len(dataset))))


def generate(model, batch: dict, args: CaptionArguments, **overrides) -> torch.Tensor:
    """Caption ids (rows, max_gen_length), padded, from a prompt batch."""
    prompt = {k: v for k, v in batch.items() if k != "row_index"}
    kwargs = (
        dict(max_length=args.max_gen_length, num_beams=args.num_beams, original_decoding=args.original_decoding)
        | overrides
    )
    sequences = model.generate(**prompt, **kwargs)
    pad = model.config.pad_token_id
    return torch.nn.functional.pad(sequences, (0, args.max_gen_length - sequences.shape[1]), value=pad)


def make_evaluate(accelerator, eval_loader, eval_set, processor, args: CaptionArguments):
    @torch.no_grad()
    def evaluate(model) -> dict[str, float]:
        unwrapped = accelerator.unwrap_model(model)
        predictions, indices = [], []
        for batch in eval_loader:
            sequences = generate(unwrapped, batch, args)
            predictions.append(accelerator.gather_for_metrics(sequences))
            indices.append(accelerator.gather_for_metrics(batch["row_index"]))
        captions = processor.batch_decode(torch.cat(predictions), skip_special_tokens=True)
        references = [list(eval_set[int(i)]["references"]) for i in torch.cat(indices)]
        return coco_caption_scores(captions, references, backend=args.metric_backend)

    return evaluate


def cross_entropy_loss(model, batch, step: int) -> torch.Tensor:
    return model(**batch, global_step=step).loss


def make_scst_loss(accelerator, processor, train_set, args: CaptionArguments, reward: CiderReward):
    """REINFORCE with CIDEr-D rewards and a greedy (or leave-one-out sample) baseline."""

    def compute_loss(model, batch, step: int) -> torch.Tensor:
        unwrapped = accelerator.unwrap_model(model)
        n = args.scst_num_samples
        references = [list(train_set[int(i)]["references"]) for i in batch["row_index"]]
        unwrapped.eval()  # sampling and the baseline without dropout, as at test time
        with torch.no_grad():
            sampling = dict(num_beams=1, original_decoding=False)
            samples = generate(unwrapped, batch, args, do_sample=True, top_k=0, num_return_sequences=n, **sampling)
            greedy = generate(unwrapped, batch, args, **sampling) if args.scst_baseline == "greedy" else None
        unwrapped.train()
        repeated = [refs for refs in references for _ in range(n)]
        rewards = reward(processor.batch_decode(samples, skip_special_tokens=True), repeated)
        if greedy is not None:
            baselines = reward(processor.batch_decode(greedy, skip_special_tokens=True), references)
            baselines = baselines.repeat_interleave(n)
        else:
            per_image = rewards.view(-1, n)
            baselines = ((per_image.sum(1, keepdim=True) - per_image) / (n - 1)).view(-1)

        def rep(x):
            return x.repeat_interleave(n, dim=0)

        log_probs, counted = caption_log_probs(
            model,
            samples,
            rep(batch["img_feats"]),
            rep(batch["tag_input_ids"]),
            img_attention_mask=rep(batch["img_attention_mask"]),
            tag_attention_mask=rep(batch["tag_attention_mask"]),
            config=unwrapped.config,
        )
        device = log_probs.device
        return scst_loss(log_probs, counted, rewards.to(device), baselines.to(device))

    return compute_loss


def main(argv: list[str] | None = None):
    args = parse_recipe_args(CaptionArguments, argv)
    if args.train_data is None:
        raise ValueError("--train_data is required: a dataset built with `python -m oscar_hf.data build caption`.")
    accelerator = make_accelerator(args, "oscar-caption-scst" if args.scst else "oscar-caption")
    tag_length = args.max_seq_length - args.max_caption_length
    processor = build_processor(args, max_caption_length=args.max_caption_length, max_tag_length=tag_length)
    config = {
        "max_caption_length": args.max_caption_length,
        "max_tag_length": tag_length,
        "max_img_seq_length": args.max_img_seq_length,
        **args.config_dict(),
    }
    model = load_model(OscarForImageCaptioning, args.model_name_or_path, **config)
    if model.config.freeze_embedding:
        # VinVL freezes the word embeddings (and with them a tied decoder).
        model.bert.embeddings.word_embeddings.weight.requires_grad_(False)

    train_set = load_split(args.train_data, args.train_split, args.max_train_samples)
    checkpoint_objects = []
    if args.scst:
        train_set = with_row_index(train_set)
        train_loader = train_dataloader(train_set, args, PromptCollator(processor))
        reward = CiderReward.from_references([list(r) for r in train_set["references"]])
        compute_loss = make_scst_loss(accelerator, processor, train_set, args, reward)
    else:
        generator = torch.Generator().manual_seed(args.seed)
        collator = ResumableCollator(
            OscarCaptioningCollator(processor, args.mask_probability, args.max_masked_tokens, generator=generator),
            generator,
        )
        train_loader = train_dataloader(train_set, args, collator)
        checkpoint_objects.append(collator)
        compute_loss = cross_entropy_loss

    evaluate = None
    if args.eval_data:
        eval_set = with_row_index(load_split(args.eval_data, args.eval_split, args.max_eval_samples))
        eval_loader = eval_dataloader(eval_set, args, PromptCollator(processor))
        evaluate = make_evaluate(accelerator, accelerator.prepare(eval_loader), eval_set, processor, args)

    model, result = train(
        args,
        accelerator,
        model,
        train_loader,
        compute_loss,
        evaluate=evaluate,
        checkpoint_objects=checkpoint_objects,
        processor=processor,
        task="captioning",
    )
    # The exported folder decodes the way it was evaluated.
    unwrapped = accelerator.unwrap_model(model)
    config = unwrapped.config
    unwrapped.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=args.max_gen_length,
        num_beams=args.num_beams,
        original_decoding=args.original_decoding,
    )
    final = export(
        accelerator, model, args, "captioning", processor=processor, results=final_metrics(result), dataset_id="coco"
    )
    accelerator.end_training()
    return final, result


if __name__ == "__main__":
    main()
