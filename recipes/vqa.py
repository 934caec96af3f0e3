"""VQA v2 (and GQA with `--task gqa`) fine-tuning: `[CLS] question [SEP] tags [SEP]` + regions -> answer.

    accelerate launch recipes/vqa.py --config recipes/configs/vqa_base.yaml \\
        --train_data data/vqa --eval_data data/vqa --eval_split val \\
        --answer_vocab trainval_label2ans.pkl --output_dir outputs/vqa_base
    python recipes/vqa.py --config recipes/configs/gqa_base.yaml --train_data data/gqa \\
        --eval_data data/gqa --eval_split testdev --answer_vocab gqa_answers.txt --output_dir outputs/gqa

Data: built by `python -m oscar_hf.data build vqa|gqa`. VQA trains the 3129-way head with BCE
against the dense soft scores (`labels`, min(1, count/3)); GQA with cross entropy over the
answer ids (1853 answers; questions whose answer is outside the vocabulary are left out of
training and count as wrong in evaluation). Lengths default to the original's: 128 text / 50
regions (VQA), 165 / 45 (GQA).

`--answer_vocab` is the list the dataset was built with (index = label id); with a fine-tuned
Oscar folder as `--model_name_or_path` its `id2label` is used instead. The export's
`config.id2label` is that vocabulary.

Evaluation: `vqa_score` is Oscar's number (the soft score of the argmax answer), `accuracy` the
official VQA accuracy on the 10 annotator answers (`oscar_hf.metrics.vqa_accuracy`); GQA
reports `accuracy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from oscar_hf import OscarForSequenceClassification
from oscar_hf.metrics import vqa_accuracy
from oscar_hf.processors.collators import IndexedRows, OscarClassificationCollator, model_inputs
from oscar_hf.training import (
    eval_dataloader,
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
    label_vocabulary,
    text_lengths,
)


# Original lengths and losses per task (run_vqa.py / run_gqa.py and MODEL_ZOO.md).
TASK_DEFAULTS = {
    "vqa": {"max_seq_length": 128, "max_img_seq_length": 50, "loss_types": ("bce", "kl")},
    "gqa": {"max_seq_length": 165, "max_img_seq_length": 45, "loss_types": ("ce",)},
}


@dataclass
class VQAArguments(FinetuneArguments):
    task: Literal["vqa", "gqa"] = field(default="vqa", metadata={"help": "vqa (soft-score BCE) or gqa (CE)"})
    answer_vocab: str | None = field(
        default=None, metadata={"help": "answer list the dataset was built with (.txt/.json/.pkl)"}
    )
    group_by_length: bool = field(
        default=False,
        metadata={
            "help": "batch questions+tags of similar length together; the head skips padding, so steps get cheaper"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        defaults = TASK_DEFAULTS[self.task]
        self.max_seq_length = self.max_seq_length or defaults["max_seq_length"]
        self.max_img_seq_length = self.max_img_seq_length or defaults["max_img_seq_length"]


def model_config(args: VQAArguments, answers: list[str]) -> dict:
    """OscarConfig overrides: the answer vocabulary as labels, the task's loss, the region count."""
    overrides = args.config_dict()
    loss_types = TASK_DEFAULTS[args.task]["loss_types"]
    loss_type = overrides.setdefault("loss_type", loss_types[0])
    if loss_type not in loss_types:
        raise ValueError(f"loss_type={loss_type!r} does not fit --task {args.task}; use one of {loss_types}.")
    if overrides.get("num_labels", len(answers)) != len(answers):
        raise ValueError(
            f"config_overrides num_labels={overrides['num_labels']} but the answer vocabulary has {len(answers)} "
            "answers; drop num_labels or pass the vocabulary the dataset was built with."
        )
    overrides.pop("num_labels", None)  # id2label sets it
    overrides["id2label"] = dict(enumerate(answers))
    overrides["label2id"] = {answer: i for i, answer in enumerate(answers)}
    overrides["max_img_seq_length"] = args.max_img_seq_length
    return overrides


def get_dataloaders(args: VQAArguments, processor, accelerator) -> tuple[DataLoader, DataLoader | None]:
    """Training loader (shuffled; GQA drops unanswerable questions) and evaluation loader."""
    collator = OscarClassificationCollator(processor, max_seq_length=args.max_seq_length)
    with accelerator.main_process_first():
        train_set = load_split(args.train_data, args.train_split, args.max_train_samples)
        if args.task == "gqa":
            # -100 marks answers outside the vocabulary: nothing to learn from them.
            train_set = train_set.filter(
                lambda labels: np.asarray(labels) != -100, input_columns="labels", batched=True
            )
    if len(train_set) == 0:
        raise ValueError(f"{args.train_data} ({args.train_split}) has no usable training rows.")
    lengths = None
    if args.group_by_length:
        with accelerator.main_process_first():
            lengths = text_lengths(train_set, processor.tokenizer, collator.text_key, collator.tags_key)
    train_loader = train_dataloader(train_set, args, collator, lengths=lengths)
    eval_loader = None
    if args.eval_data:
        with accelerator.main_process_first():
            eval_set = load_split(args.eval_data, args.eval_split, args.max_eval_samples)
        eval_loader = eval_dataloader(IndexedRows(eval_set), args, collator)
    return train_loader, eval_loader


def compute_loss(model, batch, step: int) -> torch.Tensor:
    return model(**model_inputs(batch)).loss


def make_evaluate(args: VQAArguments, accelerator, eval_loader, answers: list[str]):
    """Gathers (row, argmax answer, its soft score) from every process and scores them."""
    dataset = eval_loader.dataset.dataset  # the rows behind IndexedRows, for the raw answers

    @torch.no_grad()
    def evaluate(model) -> dict[str, float]:
        rows, predictions, hits = [], [], []
        for batch in eval_loader:
            logits = model(**model_inputs({k: v for k, v in batch.items() if k != "labels"})).logits
            predicted = logits.argmax(-1)
            if args.task == "vqa":  # Oscar's VQA score: the target score of the predicted answer
                hit = batch["labels"].gather(1, predicted[:, None]).squeeze(1)
            else:
                hit = (predicted == batch["labels"]).float()
            row, predicted, hit = accelerator.gather_for_metrics((batch["row_index"], predicted, hit))
            rows.append(row.cpu())
            predictions.append(predicted.cpu())
            hits.append(hit.float().cpu())
        hits = torch.cat(hits)
        if args.task == "gqa":
            return {"accuracy": hits.mean().item()}
        metrics = {"vqa_score": hits.mean().item()}
        # The official accuracy needs the 10 raw answers (absent on test-dev/test-std rows).
        references = dataset.select_columns(["answers"])[torch.cat(rows).tolist()]["answers"]
        answered = [(answers[p], list(r)) for p, r in zip(torch.cat(predictions).tolist(), references) if len(r)]
        if answered:
            metrics.update(vqa_accuracy([p for p, _ in answered], [r for _, r in answered]))
        return metrics

    return evaluate


def main(argv: list[str] | None = None):
    args = parse_recipe_args(VQAArguments, argv)
    if args.train_data is None:
        raise ValueError(
            f"--train_data is required: a dataset built with `python -m oscar_hf.data build {args.task}`."
        )
    answers = label_vocabulary(args.answer_vocab, args.model_name_or_path)
    if answers is None:
        raise ValueError(
            "No answer vocabulary: pass --answer_vocab (the list the dataset was built with, e.g. "
            "trainval_label2ans.pkl), or a fine-tuned Oscar folder whose config has id2label."
        )
    accelerator = make_accelerator(args, f"oscar-{args.task}")
    processor = build_processor(args)
    model = load_model(OscarForSequenceClassification, args.model_name_or_path, **model_config(args, answers))
    check_text_length(model.config, args.max_seq_length)
    train_loader, eval_loader = get_dataloaders(args, processor, accelerator)
    if args.task == "vqa" and len(train_loader.dataset[0]["labels"]) != len(answers):
        raise ValueError(
            f"The dataset's labels have {len(train_loader.dataset[0]['labels'])} answers, --answer_vocab "
            f"{len(answers)}; pass the vocabulary the dataset was built with."
        )
    evaluate = make_evaluate(args, accelerator, accelerator.prepare(eval_loader), answers) if eval_loader else None
    model, result = train(
        args, accelerator, model, train_loader, compute_loss, evaluate=evaluate, processor=processor, task=args.task
    )
    results = final_metrics(result)
    final = export(
        accelerator,
        model,
        args,
        args.task,
        processor=processor,
        results=results,
        dataset_name=f"{args.task} {args.eval_split}",
    )
    accelerator.end_training()
    return final, result


if __name__ == "__main__":
    main()
