"""Image captioning: the cross-entropy stage (masked caption tokens) and the SCST CIDEr-D stage.

    accelerate launch recipes/caption.py --config recipes/configs/coco_caption_base.yaml \\
        --train_data data/coco_caption --eval_data data/coco_caption --output_dir outputs/coco_caption_base
    accelerate launch recipes/caption.py --config recipes/configs/coco_caption_base_scst.yaml \\
        --train_data data/coco_caption --eval_data data/coco_caption --output_dir outputs/coco_caption_scst

Data: `python -m oscar_hf.data build caption` (training rows per caption, evaluation rows per image
with all `references`). Evaluation decodes with beam search (the original search by default) and
scores with the COCO caption metrics (official scorers when Java is present).

NoCaps (`--use_cbs`, data from `oscar_hf.data.nocaps.NocapsBuilder`): constrained beam search as
the original ran it, up to three constraints per image from its stored detector boxes (class
hierarchy, constraint-token and token-form files as in the original's NoCaps yaml), the caption
taken from a state satisfying `--min_constraints_to_satisfy` of them. `--predict` captions a split
without training and writes the predictions: NoCaps' submission JSON (nocaps ids; `--nocaps_image_info`
checks that every image is there) plus, with `--nocaps_annotations` (the public val captions), the
scores by domain (in / near / out / entire).

    python recipes/caption.py --predict --use_cbs --min_constraints_to_satisfy 2 \
        --model_name_or_path outputs/coco_caption_base/final --eval_data data/nocaps --eval_split val \
        --cbs_hierarchy class_hierarchy.json --cbs_constraint_tokens constraint2tokens.tsv \
        --cbs_token_forms tokenforms.tsv --nocaps_annotations nocaps_val_4500_captions.json --output_dir out
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import GenerationConfig

from oscar_hf import OscarForImageCaptioning
from oscar_hf.cbs_oscar import constrained_beam_search
from oscar_hf.data.nocaps import detections_of
from oscar_hf.metrics import coco_caption_scores
from oscar_hf.metrics.nocaps import nocaps_scores
from oscar_hf.metrics.submissions import write_nocaps_submission
from oscar_hf.processors import OscarCaptioningCollator
from oscar_hf.processors.cbs_constraints import ConstraintFilter, FSMBuilder
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
    freeze_embedding: bool = False  # VinVL: freeze the word embeddings (and with them a tied decoder)
    original_decoding: bool = True
    metric_backend: Literal["auto", "official", "python"] = "auto"
    scst: bool = False
    scst_num_samples: int = 5
    scst_baseline: Literal["greedy", "sample"] = "greedy"
    use_cbs: bool = field(default=False, metadata={"help": "constrained beam search (NoCaps) from the detector boxes"})
    min_constraints_to_satisfy: int = 2
    cbs_hierarchy: str | None = field(default=None, metadata={"help": "class hierarchy JSON (cbs_hierarchy)"})
    cbs_constraint_tokens: str | None = field(
        default=None, metadata={"help": "word -> WordPieces TSV (cbs_constraint)"}
    )
    cbs_token_forms: str | None = field(default=None, metadata={"help": "token -> forms TSV (cbs_tokenforms)"})
    cbs_max_given_constraints: int = 3
    cbs_max_words_per_constraint: int = 4
    cbs_use_cache: bool = field(
        default=False, metadata={"help": "CBS with the key/value cache instead of re-encoding (same beams, faster)"}
    )
    predict: bool = field(default=False, metadata={"help": "no training: caption --eval_split and write predictions"})
    nocaps_image_info: str | None = field(default=None, metadata={"help": "nocaps image info JSON (submission ids)"})
    nocaps_annotations: str | None = field(default=None, metadata={"help": "nocaps val captions JSON (local scores)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.use_cbs:
            missing = [
                f"--{name}"
                for name in ("cbs_hierarchy", "cbs_constraint_tokens", "cbs_token_forms")
                if not getattr(self, name)
            ]
            if missing:
                raise ValueError(f"--use_cbs needs {', '.join(missing)} (the files of the original's NoCaps yaml).")
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


class ConstrainedDecoding:
    """NoCaps CBS for a prompt batch: each row's constraints come from its stored detector boxes."""

    def __init__(self, args: CaptionArguments, processor, rows):
        if "cbs_classes" not in rows.column_names:
            raise ValueError(
                "--use_cbs needs rows with detector boxes (cbs_boxes/cbs_classes/cbs_scores); build the split with "
                "oscar_hf.data.nocaps.NocapsBuilder."
            )
        self.rows = rows.select_columns(["cbs_boxes", "cbs_classes", "cbs_scores"])
        self.choose = ConstraintFilter(args.cbs_hierarchy, max_given_constraints=args.cbs_max_given_constraints)
        self.builder = FSMBuilder(
            processor.tokenizer,
            args.cbs_constraint_tokens,
            args.cbs_token_forms,
            max_given_constraints=args.cbs_max_given_constraints,
            max_words_per_constraint=args.cbs_max_words_per_constraint,
        )
        self.args = args

    def __call__(self, model, batch: dict) -> torch.Tensor:
        """Caption ids (rows, max_gen_length) without [CLS], [SEP]-padded."""
        fsms = [self.builder.build(self.choose(detections_of(self.rows[int(i)]))) for i in batch["row_index"]]
        out = constrained_beam_search(
            model,
            fsm=fsms,
            img_feats=batch["img_feats"],
            img_attention_mask=batch.get("img_attention_mask"),
            tag_input_ids=batch.get("tag_input_ids"),
            tag_attention_mask=batch.get("tag_attention_mask"),
            input_ids=batch["input_ids"],
            min_constraints_to_satisfy=self.args.min_constraints_to_satisfy,
            num_beams=self.args.num_beams,
            max_length=self.args.max_gen_length,
            use_cache=self.args.cbs_use_cache,
        )
        return out.sequences


def caption_rows(
    accelerator, model, loader, processor, args: CaptionArguments, decode=None
) -> tuple[list[int], list[str]]:
    """Row indices and decoded captions of every row of `loader`, gathered from all processes."""
    unwrapped = accelerator.unwrap_model(model)
    predictions, indices = [], []
    for batch in eval_progress(accelerator, loader, desc="caption"):
        sequences = decode(unwrapped, batch) if decode is not None else generate(unwrapped, batch, args)
        predictions.append(accelerator.gather_for_metrics(sequences))
        indices.append(accelerator.gather_for_metrics(batch["row_index"]))
    captions = processor.batch_decode(torch.cat(predictions), skip_special_tokens=True)
    return torch.cat(indices).tolist(), captions


def make_evaluate(accelerator, eval_loader, eval_set, processor, args: CaptionArguments):
    decode = ConstrainedDecoding(args, processor, eval_set) if args.use_cbs else None

    @torch.no_grad()
    def evaluate(model) -> dict[str, float]:
        indices, captions = caption_rows(accelerator, model, eval_loader, processor, args, decode)
        references = [list(eval_set[int(i)]["references"]) for i in indices]
        return coco_caption_scores(captions, references, backend=args.metric_backend)

    return evaluate


def make_cross_entropy_loss(drop_worst_after: int):
    """The masked-token loss; drop-worst (config.drop_worst_ratio) starts after `drop_worst_after` steps."""

    def cross_entropy_loss(model, batch, step: int) -> torch.Tensor:
        return model(**batch, drop_worst_ratio=0.0 if step < drop_worst_after else None).loss

    return cross_entropy_loss


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


@torch.no_grad()
def predict(args: CaptionArguments, accelerator, model, processor) -> tuple[Path, dict[str, float]]:
    """Captions every row of `--eval_split`; writes the predictions file and, when references exist, scores.

    NoCaps rows (`nocaps_id`) give the NoCaps submission JSON, other rows COCO-style
    `[{"image_id", "caption"}]`.
    """
    rows = with_row_index(load_split(args.eval_data, args.eval_split, args.max_eval_samples))
    loader = accelerator.prepare(eval_dataloader(rows, args, PromptCollator(processor)))
    model = model.to(accelerator.device).eval()  # each process captions its shard
    decode = ConstrainedDecoding(args, processor, rows) if args.use_cbs else None
    indices, captions = caption_rows(accelerator, model, loader, processor, args, decode)
    suffix = f".cbs{args.min_constraints_to_satisfy}" if args.use_cbs else ""
    out = Path(args.output_dir)
    metrics: dict[str, float] = {}
    if "nocaps_id" in rows.column_names:
        keys = rows.select_columns(["nocaps_id"])[indices]["nocaps_id"]
        path = out / f"nocaps_{args.eval_split}_predictions{suffix}.json"
        if accelerator.is_main_process:
            write_nocaps_submission(keys, captions, path, image_info=args.nocaps_image_info)
        if args.nocaps_annotations:
            metrics = nocaps_scores(dict(zip(keys, captions)), args.nocaps_annotations, backend=args.metric_backend)
    else:
        keys = rows.select_columns(["image_id"])[indices]["image_id"]
        path = out / f"{args.eval_split}_predictions{suffix}.json"
        if accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps([{"image_id": k, "caption": c} for k, c in zip(keys, captions)]))
        references = [list(r) for r in rows.select_columns(["references"])[indices]["references"]]
        if all(references):
            metrics = coco_caption_scores(captions, references, backend=args.metric_backend)
    if metrics and accelerator.is_main_process:
        path.with_name(path.stem + ".metrics.json").write_text(json.dumps(metrics, indent=1))
    accelerator.wait_for_everyone()
    return path, metrics


def predict_main(args: CaptionArguments) -> tuple[Path, dict[str, float]]:
    """`--predict`: a captioning folder, no training."""
    if args.model_name_or_path is None or args.eval_data is None:
        raise ValueError(
            "--predict needs --model_name_or_path (a captioning folder) and --eval_data (a built caption or NoCaps "
            "dataset holding --eval_split)."
        )
    accelerator = make_accelerator(args, "oscar-caption-predict")
    tag_length = args.max_seq_length - args.max_caption_length
    processor = build_processor(args, max_caption_length=args.max_caption_length, max_tag_length=tag_length)
    model = load_model(OscarForImageCaptioning, args.model_name_or_path, **args.config_dict())
    result = predict(args, accelerator, model, processor)
    accelerator.end_training()
    return result


def main(argv: list[str] | None = None):
    args = parse_recipe_args(CaptionArguments, argv)
    if args.predict:
        return predict_main(args)
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
    # A training option, not a model field (older YAML files set it among the config overrides).
    freeze_embedding = args.freeze_embedding or bool(config.pop("freeze_embedding", False))
    model = load_model(OscarForImageCaptioning, args.model_name_or_path, **config)
    if freeze_embedding:
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
        compute_loss = make_cross_entropy_loss(model.config.drop_worst_after)

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
        accelerator,
        model,
        args,
        "captioning",
        processor=processor,
        results=final_metrics(result),
        dataset_id="coco",
        dataset_split=args.eval_split,
        train_result=result,
    )
    accelerator.end_training()
    return final, result


if __name__ == "__main__":
    main()
