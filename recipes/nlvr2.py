"""NLVR2 fine-tuning: the sentence is encoded with each image of the pair, the two pooled outputs
are concatenated and classified true/false (the original `run_nlvr.py --use_pair`).

    accelerate launch recipes/nlvr2.py --config recipes/configs/nlvr2_base.yaml \\
        --train_data data/nlvr2 --eval_data data/nlvr2 --eval_split dev --output_dir outputs/nlvr2_base
    python recipes/nlvr2.py --config recipes/configs/nlvr2_base.yaml ...   # one process

Data: built by `python -m oscar_hf.data build nlvr2` (`sentence`, `labels`, `left_*` / `right_*`
regions). Lengths default to the original's 55 text tokens and 40 regions per image. Tags are not
read unless `--use_tags` is given: the released NLVR2 commands did not pass `--use_label_seq`.
Evaluation reports `accuracy` and `consistency` (all pairs of a sentence right), computed by
`oscar_hf.metrics.nlvr2_accuracy`.

Test-P (`--predict`, no training): a fine-tuned folder predicts every example of `--predict_split`
and the recipe writes `identifier,True|False` lines, the CSV that NLVR2's `eval/metrics.py` reads
(`--examples_file`, the split's JSON lines, also checks that every example is predicted).

    python recipes/nlvr2.py --predict --model_name_or_path outputs/nlvr2_base/final --eval_data data/nlvr2 \
        --predict_split test1 --examples_file test1.json --output_dir out
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from oscar_hf import OscarForNLVR2
from oscar_hf.metrics import nlvr2_accuracy
from oscar_hf.metrics.submissions import nlvr2_identifiers, write_nlvr2_predictions
from oscar_hf.processors.collators import IndexedRows, OscarNLVR2Collator, model_inputs
from oscar_hf.training import (
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
from oscar_hf.training.finetuning import FinetuneArguments, build_processor, check_text_length, final_metrics


@dataclass
class NLVR2Arguments(FinetuneArguments):
    use_tags: bool = field(default=False, metadata={"help": "read each image's tags after the sentence"})
    eval_split: str = "dev"
    predict: bool = field(
        default=False, metadata={"help": "no training: write the predictions CSV of --predict_split"}
    )
    predict_split: str | None = field(
        default=None, metadata={"help": "split of --eval_data to predict (test1 = test-P)"}
    )
    predictions_file: str | None = field(default=None, metadata={"help": "where to write it (default: in output_dir)"})
    examples_file: str | None = field(
        default=None, metadata={"help": "the split's NLVR2 JSON lines, to check every example is predicted"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.max_seq_length = self.max_seq_length or 55
        self.max_img_seq_length = self.max_img_seq_length or 40


def get_dataloaders(args: NLVR2Arguments, processor, accelerator) -> tuple[DataLoader, DataLoader | None]:
    collator = OscarNLVR2Collator(processor, use_tags=args.use_tags, max_seq_length=args.max_seq_length)
    with accelerator.main_process_first():
        train_set = load_split(args.train_data, args.train_split, args.max_train_samples)
    train_loader = train_dataloader(train_set, args, collator)
    eval_loader = None
    if args.eval_data:
        with accelerator.main_process_first():
            eval_set = load_split(args.eval_data, args.eval_split, args.max_eval_samples)
        eval_loader = eval_dataloader(IndexedRows(eval_set), args, collator)
    return train_loader, eval_loader


def compute_loss(model, batch, step: int) -> torch.Tensor:
    return model(**model_inputs(batch)).loss


def make_evaluate(accelerator, eval_loader):
    """Accuracy, and consistency from the example identifiers (`split-set-pair-sentence`)."""
    identifiers = eval_loader.dataset.dataset.select_columns(["identifier"])  # rows behind IndexedRows

    @torch.no_grad()
    def evaluate(model) -> dict[str, float]:
        rows, predictions, labels = [], [], []
        for batch in eval_progress(accelerator, eval_loader):
            predicted = model(**model_inputs({k: v for k, v in batch.items() if k != "labels"})).logits.argmax(-1)
            row, predicted, label = accelerator.gather_for_metrics((batch["row_index"], predicted, batch["labels"]))
            rows += row.tolist()
            predictions += predicted.tolist()
            labels += label.tolist()
        ids = [str(i) for i in identifiers[rows]["identifier"]]
        return nlvr2_accuracy(predictions, labels, identifiers=ids)

    return evaluate


@torch.no_grad()
def predict(args: NLVR2Arguments, accelerator, model, processor):
    """Predicts every example of the prediction split and writes the NLVR2 CSV (main process)."""
    split = args.predict_split or args.eval_split
    with accelerator.main_process_first():
        rows = load_split(args.eval_data, split, args.max_eval_samples)
    collator = OscarNLVR2Collator(processor, use_tags=args.use_tags, max_seq_length=args.max_seq_length)
    loader = accelerator.prepare(eval_dataloader(IndexedRows(rows), args, collator))
    model = model.to(accelerator.device).eval()  # each process scores its shard; no DDP wrapper needed
    indices, predictions = [], []
    for batch in eval_progress(accelerator, loader, desc="predict"):
        predicted = model(**model_inputs({k: v for k, v in batch.items() if k != "labels"})).logits.argmax(-1)
        row, predicted = accelerator.gather_for_metrics((batch["row_index"], predicted))
        indices += row.tolist()
        predictions += predicted.tolist()
    identifiers = [str(i) for i in rows.select_columns(["identifier"])[indices]["identifier"]]
    expected = nlvr2_identifiers(args.examples_file) if args.examples_file else None
    path = args.predictions_file or f"{args.output_dir}/{split}_predictions.csv"
    if accelerator.is_main_process:
        write_nlvr2_predictions(identifiers, predictions, path, expected)
    accelerator.wait_for_everyone()
    return path


def predict_main(args: NLVR2Arguments):
    """`--predict`: a fine-tuned folder, no training; returns the written CSV."""
    if args.model_name_or_path is None or args.eval_data is None:
        raise ValueError(
            "--predict needs --model_name_or_path (a fine-tuned Oscar NLVR2 folder) and --eval_data (the dataset "
            "holding --predict_split, e.g. test1)."
        )
    accelerator = make_accelerator(args, "oscar-nlvr2-predict")
    processor = build_processor(args)
    model = load_model(OscarForNLVR2, args.model_name_or_path, max_img_seq_length=args.max_img_seq_length)
    check_text_length(model.config, args.max_seq_length)
    path = predict(args, accelerator, model, processor)
    accelerator.end_training()
    return path


def main(argv: list[str] | None = None):
    args = parse_recipe_args(NLVR2Arguments, argv)
    if args.predict:
        return predict_main(args)
    if args.train_data is None:
        raise ValueError("--train_data is required: a dataset built with `python -m oscar_hf.data build nlvr2`.")
    accelerator = make_accelerator(args, "oscar-nlvr2")
    processor = build_processor(args)
    overrides = {"num_labels": 2, "max_img_seq_length": args.max_img_seq_length, **args.config_dict()}
    model = load_model(OscarForNLVR2, args.model_name_or_path, **overrides)
    check_text_length(model.config, args.max_seq_length)
    train_loader, eval_loader = get_dataloaders(args, processor, accelerator)
    evaluate = make_evaluate(accelerator, accelerator.prepare(eval_loader)) if eval_loader else None
    model, result = train(
        args, accelerator, model, train_loader, compute_loss, evaluate=evaluate, processor=processor, task="nlvr2"
    )
    results = final_metrics(result)
    final = export(
        accelerator,
        model,
        args,
        "nlvr2",
        processor=processor,
        results=results,
        dataset_name=f"NLVR2 {args.eval_split}",
        dataset_split=args.eval_split,
        train_result=result,
    )
    accelerator.end_training()
    return final, result


if __name__ == "__main__":
    main()
