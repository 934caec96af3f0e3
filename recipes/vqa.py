"""VQA v2 (and GQA with `--task gqa`) fine-tuning: `[CLS] question [SEP] tags [SEP]` + regions -> answer.

    accelerate launch recipes/vqa.py --config recipes/configs/vqa_base.yaml \\
        --train_data data/vqa --eval_data data/vqa --eval_split val \\
        --answer_vocab trainval_label2ans.pkl --output_dir outputs/vqa_base
    python recipes/vqa.py --config recipes/configs/gqa_base.yaml --train_data data/gqa \\
        --eval_data data/gqa --eval_split testdev --answer_vocab gqa_answers.txt --output_dir outputs/gqa

Data: built by `python -m oscar_hf.data build vqa|gqa`. VQA trains the 3129-way head with BCE
against the dense soft scores (`labels`, 0.3/0.6/0.9/1 for 1/2/3/>=4 annotators); GQA with cross entropy over the
answer ids (1853 answers; questions whose answer is outside the vocabulary are left out of
training and count as wrong in evaluation). Lengths default to the original's: 128 text / 50
regions (VQA), 165 / 45 (GQA).

`--answer_vocab` is the list the dataset was built with (index = label id); with a fine-tuned
Oscar folder as `--model_name_or_path` its `id2label` is used instead. The export's
`config.id2label` is that vocabulary.

Evaluation: `vqa_score` is Oscar's number (the soft score of the argmax answer), `accuracy` the
official VQA accuracy on the 10 annotator answers (`oscar_hf.metrics.vqa_accuracy`); GQA
reports `accuracy`.

Test servers (`--predict`, no training): a fine-tuned folder answers every question of
`--predict_split` of `--eval_data` and the recipe writes the file the server takes, checked
against that format (`oscar_hf.metrics.submissions`): VQA v2 test-dev / test-std
`[{"question_id": int, "answer": str}]`, GQA test-dev balanced `[{"questionId": str, "prediction": str}]`.
`--questions_file` (the official questions JSON) also checks that every question is answered.

    python recipes/vqa.py --predict --model_name_or_path outputs/vqa_base/final --eval_data data/vqa \
        --predict_split test2015 --questions_file v2_OpenEnded_mscoco_test2015_questions.json --output_dir out
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from oscar_hf import OscarForSequenceClassification
from oscar_hf.metrics import vqa_accuracy
from oscar_hf.metrics.submissions import gqa_question_ids, vqa_question_ids, write_gqa_predictions, write_vqa_results
from oscar_hf.processors.collators import IndexedRows, OscarClassificationCollator, model_inputs
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
    predict: bool = field(
        default=False, metadata={"help": "no training: write the test server's prediction file for --predict_split"}
    )
    predict_split: str | None = field(
        default=None, metadata={"help": "split of --eval_data to predict (test2015, testdev)"}
    )
    predictions_file: str | None = field(default=None, metadata={"help": "where to write it (default: in output_dir)"})
    questions_file: str | None = field(
        default=None,
        metadata={"help": "the official questions JSON of that split, to check every question is answered"},
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
        for batch in eval_progress(accelerator, eval_loader):
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


@torch.no_grad()
def predict(args: VQAArguments, accelerator, model, processor, answers: list[str]):
    """Answers every question of the prediction split and writes the server's file (main process)."""
    split = args.predict_split or args.eval_split
    with accelerator.main_process_first():
        rows = load_split(args.eval_data, split, args.max_eval_samples)
    collator = OscarClassificationCollator(processor, max_seq_length=args.max_seq_length)
    loader = accelerator.prepare(eval_dataloader(IndexedRows(rows), args, collator))
    model = model.to(accelerator.device).eval()  # each process scores its shard; no DDP wrapper needed
    indices, predictions = [], []
    for batch in eval_progress(accelerator, loader, desc="predict"):
        predicted = model(**model_inputs({k: v for k, v in batch.items() if k != "labels"})).logits.argmax(-1)
        row, predicted = accelerator.gather_for_metrics((batch["row_index"], predicted))
        indices += row.tolist()
        predictions += predicted.tolist()
    question_ids = rows.select_columns(["question_id"])[indices]["question_id"]
    predicted_answers = [answers[p] for p in predictions]
    if args.task == "vqa":
        name = f"vqa_OpenEnded_mscoco_{split}_oscar_results.json"
        expected = vqa_question_ids(args.questions_file) if args.questions_file else None
        writer = write_vqa_results
    else:
        name = f"{split}_predictions.json"
        expected = gqa_question_ids(args.questions_file) if args.questions_file else None
        writer = write_gqa_predictions
    path = args.predictions_file or f"{args.output_dir}/{name}"
    if accelerator.is_main_process:
        writer(question_ids, predicted_answers, path, expected)
    accelerator.wait_for_everyone()
    return path


def main(argv: list[str] | None = None):
    args = parse_recipe_args(VQAArguments, argv)
    if args.predict:
        return predict_main(args)
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
        dataset_split=args.eval_split,
        train_result=result,
    )
    accelerator.end_training()
    return final, result


def predict_main(args: VQAArguments):
    """`--predict`: a fine-tuned folder, no training; returns the written prediction file."""
    if args.model_name_or_path is None or args.eval_data is None:
        raise ValueError(
            "--predict needs --model_name_or_path (a fine-tuned Oscar folder) and --eval_data (the dataset holding "
            "--predict_split, e.g. test2015 or testdev)."
        )
    answers = label_vocabulary(args.answer_vocab, args.model_name_or_path)
    if answers is None:
        raise ValueError("No answer vocabulary: pass --answer_vocab or a fine-tuned folder whose config has id2label.")
    accelerator = make_accelerator(args, f"oscar-{args.task}-predict")
    processor = build_processor(args)
    model = load_model(OscarForSequenceClassification, args.model_name_or_path, **model_config(args, answers))
    check_text_length(model.config, args.max_seq_length)
    path = predict(args, accelerator, model, processor, answers)
    accelerator.end_training()
    return path


if __name__ == "__main__":
    main()
