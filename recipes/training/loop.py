"""What every training recipe shares: arguments, model initialisation, the Accelerate loop, export.

The recipes in `recipes/` stay thin (data loaders, loss, evaluation, main); the pieces that would
otherwise be copied five times live here and are tested once:

- `RecipeArguments`: dataclass arguments, read from a YAML file (`--config`) then overridden on the
  command line, saved next to the checkpoints;
- `load_model`: a model from our folders, a converted or still-original Oscar checkpoint, or a
  plain BERT folder (trunk from BERT, regions and heads new);
- `train`: the loop (accumulation, clipping, AdamW without decay on bias/LayerNorm, linear warmup,
  `save_state` every N steps, exact resume including data order and collator randomness,
  evaluation with best-checkpoint selection, progress bars and trackers), logging like
  transformers' `run_*_no_trainer.py` examples: a summary of the run, then `train_log.jsonl` with
  a record every `logging_steps` and one per evaluation;
- `export`: safetensors + config + processor + remote code + a filled model card, optionally pushed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import HfArgumentParser, PreTrainedModel, get_linear_schedule_with_warmup

from oscar_hf.configuration_oscar import OscarConfig
from oscar_hf.registration import export_folder

from .hub import build_model_card, describe_training, push_folder, significant


logger = logging.getLogger(__name__)


@dataclass
class RecipeArguments:
    """Arguments shared by every recipe. Task recipes subclass this and add their own."""

    output_dir: str = field(default="outputs/run", metadata={"help": "checkpoints, logs and the final export"})
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "our folder, an original Oscar checkpoint folder, or a plain BERT folder; None = random"},
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "JSON object of OscarConfig fields, e.g. '{\"hidden_dropout_prob\": 0.3}'"}
    )
    train_data: str | None = field(default=None, metadata={"help": "Parquet file/folder/glob of the training set"})
    eval_data: str | None = field(default=None, metadata={"help": "Parquet file/folder/glob of the evaluation set"})
    max_train_samples: int | None = field(default=None, metadata={"help": "truncate the training set (debugging)"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "truncate the evaluation set"})
    train_split: str = field(default="train", metadata={"help": "split of train_data to train on"})
    eval_split: str = field(default="val", metadata={"help": "split of eval_data to evaluate on (val, test, ...)"})
    learning_rate: float = 5e-5
    weight_decay: float = 0.05
    adam_epsilon: float = 1e-8
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    num_train_epochs: int = 1
    max_train_steps: int | None = field(default=None, metadata={"help": "overrides num_train_epochs"})
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    seed: int = 88
    checkpointing_steps: int | None = field(default=None, metadata={"help": "save_state every N optimizer steps"})
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "keep at most this many states"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "a state folder, or 'latest'"})
    eval_steps: int | None = field(default=None, metadata={"help": "evaluate every N steps (and at the end)"})
    eval_before_training: bool = field(default=False, metadata={"help": "also evaluate the initial model"})
    metric_for_best: str | None = field(default=None, metadata={"help": "metric that selects the best checkpoint"})
    greater_is_better: bool = True
    logging_steps: int = 10
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard, wandb, all or none"})
    dataloader_num_workers: int = 0
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False
    hub_token: str | None = None

    def __post_init__(self) -> None:
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps={self.gradient_accumulation_steps} must be >= 1.")
        if self.logging_steps < 1:
            raise ValueError(
                f"logging_steps={self.logging_steps}; expected a positive number of optimizer steps between "
                "train_log.jsonl records (1 = every step)."
            )
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (e.g. 'your-name/oscar-base-vqa').")
        if self.resume_from_checkpoint not in (None, "latest") and not Path(self.resume_from_checkpoint).is_dir():
            raise FileNotFoundError(
                f"resume_from_checkpoint={self.resume_from_checkpoint!r} is not a folder; pass a "
                "checkpoints/step_N folder or 'latest'."
            )

    def config_dict(self) -> dict[str, Any]:
        if not self.config_overrides:
            return {}
        try:
            overrides = json.loads(self.config_overrides)
        except json.JSONDecodeError as error:
            raise ValueError(f"config_overrides is not valid JSON: {self.config_overrides!r}") from error
        if not isinstance(overrides, dict):
            raise ValueError(f"config_overrides must be a JSON object, got {self.config_overrides!r}.")
        return overrides


def parse_recipe_args(arg_class: type, argv: list[str] | None = None):
    """Parses `--config file.yaml` (defaults) then the other command-line flags (overrides)."""
    import yaml

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(arg_class)
    if "--config" in argv:
        index = argv.index("--config")
        config_file = Path(argv[index + 1])
        del argv[index : index + 2]
        if not config_file.is_file():
            raise FileNotFoundError(f"--config {str(config_file)!r} does not exist.")
        values = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        known = {f.name for f in arg_class.__dataclass_fields__.values()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{config_file}: unknown keys {unknown}; valid keys are the {arg_class.__name__} fields.")
        if isinstance(values.get("config_overrides"), dict):
            values["config_overrides"] = json.dumps(values["config_overrides"])
        parser.set_defaults(**values)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args


def save_resolved_args(args, output_dir: str | os.PathLike) -> None:
    """Writes the arguments actually used as YAML and JSON next to the checkpoints."""
    import yaml

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    values = {k: v for k, v in asdict(args).items() if k != "hub_token"}
    (out / "args.json").write_text(json.dumps(values, indent=2), encoding="utf-8")
    (out / "args.yaml").write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")


def load_split(path: str, split: str = "train", max_samples: int | None = None):
    """A split of a dataset built by `oscar_hf.data` (a folder of `data/<split>-*.parquet`), a Parquet
    file or glob, or a Hub dataset id; rows come back with NumPy region features."""
    from datasets import load_dataset

    local = Path(path)
    if local.suffix == ".parquet" or any(ch in path for ch in "*?["):
        dataset = load_dataset("parquet", data_files={split: path}, split=split)
    elif local.is_dir() and not (local / "data").is_dir() and list(local.glob("*.parquet")):
        dataset = load_dataset("parquet", data_files={split: str(local / "*.parquet")}, split=split)
    else:
        dataset = load_dataset(path, split=split)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset.with_format("numpy", columns=None, output_all_columns=True)


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """A random order in which each run of `batch_size` indices holds examples of similar length.

    The grouping is transformers' (`get_length_grouped_indices`: shuffle, sort mega-batches of 50
    batches by length, longest batch first). The order is drawn from `seed + epoch`, and the
    training loop calls `set_epoch`, so a resumed run draws the same order as an uninterrupted one.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths = [int(n) for n in lengths]
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def train_dataloader(
    dataset, args: RecipeArguments, collate_fn: Callable, lengths: Sequence[int] | None = None
) -> torch.utils.data.DataLoader:
    """Shuffled training loader whose shuffling owns its generator.

    Without its own generator a DataLoader draws its base seed from the global RNG each time an
    iterator starts, and a resumed run (which starts one more iterator) would then see different
    dropout masks than the uninterrupted run. With `lengths` (one per row), batches are grouped
    by length (`LengthGroupedSampler`), so heads that skip padding do less work.
    """
    if lengths is not None and len(lengths) != len(dataset):
        raise ValueError(f"lengths has {len(lengths)} entries but the dataset has {len(dataset)} rows.")
    sampler = None if lengths is None else LengthGroupedSampler(lengths, args.per_device_train_batch_size, args.seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.per_device_train_batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed) if sampler is None else None,
    )


def eval_dataloader(dataset, args: RecipeArguments, collate_fn: Callable) -> torch.utils.data.DataLoader:
    """Evaluation loader in dataset order (pass it through `accelerator.prepare` to shard it)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.per_device_eval_batch_size,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
    )


_CHECKPOINT_HINT = (
    "pass a folder holding config.json (a folder exported by oscar-hf, an original Oscar / VinVL checkpoint "
    "folder or a BERT folder), a Hub repository id, or `none` for a random initialisation. The released weights "
    "are turned into such a folder with `oscar-hf convert` (README, 'Get the weights')."
)


def _looks_like_repo_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def resolve_pretrained(name_or_path: str | os.PathLike, argument: str = "--model_name_or_path") -> Path:
    """The local folder of a pre-trained checkpoint: `name_or_path` itself when it is a folder, else the Hub
    snapshot of that repository id (from the local cache when offline, `HF_HUB_OFFLINE=1`).

    A name that is neither is reported as a missing checkpoint, naming `argument` and the fix, before the
    recipe writes anything (`make_accelerator` checks the run's checkpoints first).
    """
    name = str(name_or_path)
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise FileNotFoundError(f"{argument}={name!r} is a file, not a checkpoint folder; {_CHECKPOINT_HINT}")
    if not _looks_like_repo_id(name):
        raise FileNotFoundError(
            f"Pre-trained checkpoint not found: {argument}={name!r} is not a folder (nor a Hub repository id); "
            f"{_CHECKPOINT_HINT}"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name))
    except OSError as error:  # offline without a cached copy, unknown or gated repository, no connection
        raise FileNotFoundError(
            f"Pre-trained checkpoint not found: {argument}={name!r} is neither a folder nor a model the Hub or the "
            f"local cache has ({type(error).__name__}); {_CHECKPOINT_HINT}"
        ) from error


def check_pretrained_arguments(args: RecipeArguments) -> None:
    """Resolves the run's checkpoint and tokenizer arguments, so a missing one fails before any output exists."""
    for argument in ("model_name_or_path", "tokenizer_name_or_path"):
        value = getattr(args, argument, None)
        if value is not None:
            resolve_pretrained(value, f"--{argument}")


def load_processor(name_or_path: str, max_img_seq_length: int | None = None, **processor_kwargs):
    """The `OscarProcessor` saved in `name_or_path`, or one built around the tokenizer found there
    (an original checkpoint's vocab.txt, a BERT folder). Keyword arguments override the lengths."""
    from transformers import AutoTokenizer, BertTokenizerFast

    from oscar_hf.processors import OscarProcessor, OscarRegionFeatureProcessor

    folder = resolve_pretrained(name_or_path, "tokenizer_name_or_path")
    name_or_path = str(folder)
    if (folder / "processor_config.json").is_file() or (folder / "preprocessor_config.json").is_file():
        processor = OscarProcessor.from_pretrained(name_or_path)
        for key, value in processor_kwargs.items():
            setattr(processor, key, value)
    else:
        has_config = (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()
        # Original checkpoints carry only vocab.txt (bert-base-uncased WordPiece).
        tokenizer_class = AutoTokenizer if has_config or not (folder / "vocab.txt").is_file() else BertTokenizerFast
        tokenizer = tokenizer_class.from_pretrained(name_or_path)
        processor = OscarProcessor(OscarRegionFeatureProcessor(), tokenizer, **processor_kwargs)
    if max_img_seq_length is not None:
        processor.image_processor.max_img_seq_length = max_img_seq_length
    return processor


# ------------------------------------------------------------------------------------------ models


def _read_config(folder: Path) -> dict:
    file = folder / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"No config.json in {str(folder)!r}: pass a model folder.")
    return json.loads(file.read_text(encoding="utf-8"))


def load_model(model_class: type[PreTrainedModel], name_or_path: str | None, **config_overrides) -> PreTrainedModel:
    """Builds `model_class` from one of the folders users hold.

    - `None`: random weights from `OscarConfig(**config_overrides)`;
    - a folder of ours (`model_type: "oscar"`): `from_pretrained`;
    - an original Oscar/VinVL checkpoint (`model_type: "bert"` with `img_feature_dim`): converted in
      memory, the task head kept when present, else started fresh;
    - a plain BERT folder (e.g. bert-base-uncased): the trunk from BERT, regions and heads new.
    """
    if name_or_path is None:
        return model_class(OscarConfig(**config_overrides))
    folder = resolve_pretrained(name_or_path)
    raw = _read_config(folder)
    if raw.get("model_type") == "oscar":
        return model_class.from_pretrained(folder, **config_overrides)
    if "img_feature_dim" in raw and (folder / "pytorch_model.bin").is_file():
        from oscar_hf.convert_original_checkpoint import convert_checkpoint
        from oscar_hf.registration import task_for_model

        task = task_for_model(model_class.__name__)
        return convert_checkpoint(folder, None, task, new_head=True, **config_overrides)
    if raw.get("model_type") == "bert":
        bert_fields = {
            k: raw[k] for k in OscarConfig().to_dict() if k in raw and k not in ("architectures", "model_type")
        }
        config = OscarConfig(**{**bert_fields, **config_overrides})
        return model_class.from_pretrained(folder, config=config)
    raise ValueError(
        f"{str(folder)!r} has model_type {raw.get('model_type')!r}; expected an Oscar folder, an original Oscar "
        "checkpoint or a BERT folder."
    )


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and LayerNorm weights (as BERT and the original)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ResumableCollator:
    """Wraps a collator that draws from `generator` (masking, pollution) so that its randomness
    resumes exactly.

    The data loader collates ahead of the training step (Accelerate prefetches one batch), so the
    generator's live state is already past the last batch the model saw when a checkpoint is taken.
    Each batch therefore carries the generator state right after it was collated; the loop hands the
    consumed batch back with `mark_consumed`, and checkpoints store that state.
    Use it with `dataloader_num_workers=0`: worker processes would each copy the generator.
    """

    STATE_KEY = "_collator_rng_state"

    def __init__(self, collate_fn: Callable, generator: torch.Generator):
        self.collate_fn = collate_fn
        self.generator = generator
        self._consumed_state = generator.get_state()

    def __call__(self, examples):
        batch = self.collate_fn(examples)
        batch[self.STATE_KEY] = self.generator.get_state()
        return batch

    def mark_consumed(self, batch) -> None:
        state = batch.pop(self.STATE_KEY, None)
        if state is not None:
            self._consumed_state = state.detach().cpu()

    def state_dict(self) -> dict:
        return {"state": self._consumed_state}

    def load_state_dict(self, state: dict) -> None:
        self._consumed_state = state["state"]
        self.generator.set_state(state["state"])


# ------------------------------------------------------------------------------------------ loop


def configure_logging(accelerator) -> None:
    """Logging as in transformers' examples: this library's INFO lines (the run summary, evaluations) on the
    main process, and the libraries' own chatter reduced to errors on the other processes."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        level=logging.WARNING,
    )
    logging.getLogger("oscar_hf.training").setLevel(logging.INFO)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()


def _drop_tied_aliases(models: list[torch.nn.Module], weights: list[dict], output_dir: str) -> None:
    """`save_state` pre-hook: keep one name per tied tensor (the caption head's decoder is the word embedding).

    safetensors cannot store two names of one storage, so Accelerate drops the aliases itself and warns at
    every save that the reload might miss them. They are not missed: the model re-ties them, and Accelerate
    loads states with `safetensors.torch.load_model`, which accepts a missing alias of a loaded tensor. Dropping
    them here, as `save_pretrained` does, keeps each state file the same without the warning.
    """
    for state_dict in weights:
        seen: set[tuple] = set()
        for name in list(state_dict):
            tensor = state_dict[name]
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            # The same memory seen as the same tensor; overlapping views are left to Accelerate (and its warning).
            alias = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
            if alias in seen:
                del state_dict[name]
            seen.add(alias)


def make_accelerator(args: RecipeArguments, project_name: str):
    """An `Accelerator` with a seedable sampler (same data order on resume), trackers, seeding and logging.

    The run's checkpoint and tokenizer are looked up first: a missing one stops the run before its output
    folder is created.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    check_pretrained_arguments(args)
    log_with = None if args.report_to in ("none", "", None) else args.report_to
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=log_with,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    configure_logging(accelerator)
    accelerator.register_save_state_pre_hook(_drop_tied_aliases)
    set_seed(args.seed)
    if log_with is not None:
        config = {k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"}
        accelerator.init_trackers(project_name, config=config)
    if accelerator.is_main_process:
        save_resolved_args(args, args.output_dir)
    return accelerator


@dataclass
class TrainResult:
    global_step: int
    last_loss: float | None
    best_metrics: dict[str, float] | None
    best_dir: Path | None
    history: list[dict]  # the records of train_log.jsonl (losses every logging_steps, evaluations)
    epochs: int | None = None  # epochs the run spanned (the last one possibly partial)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The `checkpoints/step_N` folder with the largest N, or None.

    Only complete states carry that name: `_save_state` writes `.step_N.partial` and renames it when
    every process has finished writing, so a run killed inside `save_state` is never resumed from.
    """
    folder = Path(output_dir) / "checkpoints"
    steps = [(int(m.group(1)), p) for p in folder.glob("step_*") if (m := re.fullmatch(r"step_(\d+)", p.name))]
    return max(steps)[1] if steps else None


def _resume_step(accelerator, args: RecipeArguments) -> int:
    if not args.resume_from_checkpoint:
        return 0
    path = (
        latest_checkpoint(args.output_dir)
        if args.resume_from_checkpoint == "latest"
        else Path(args.resume_from_checkpoint)
    )
    if path is None:
        accelerator.print(f"No checkpoint under {args.output_dir}/checkpoints; starting from scratch.")
        return 0
    accelerator.print(f"Resuming from {path}")
    accelerator.load_state(str(path))
    return int(path.name.split("_")[-1])


def _save_state(accelerator, args: RecipeArguments, step: int) -> None:
    """Write the training state to `.step_N.partial`, then rename it to `step_N` (atomic on one filesystem)."""
    folder = Path(args.output_dir) / "checkpoints"
    partial, final = folder / f".step_{step}.partial", folder / f"step_{step}"
    if accelerator.is_main_process:
        for leftover in folder.glob(".step_*.partial"):  # from a run killed while saving
            shutil.rmtree(leftover, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)  # a rerun reaching a step it had saved before
        os.replace(partial, final)
        if args.checkpoints_total_limit:
            states = [p for p in folder.glob("step_*") if re.fullmatch(r"step_\d+", p.name)]
            for old in sorted(states, key=lambda p: int(p.name.split("_")[-1]))[: -args.checkpoints_total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def eval_progress(accelerator, loader: Iterable, desc: str = "eval") -> Iterable:
    """`loader` with a progress bar on the main process, for the recipes' evaluation loops."""
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False)


def run_summary(args: RecipeArguments, accelerator, dataloader, max_steps: int, epochs: int) -> str:
    """The start-of-run summary of transformers' `run_*_no_trainer.py` examples, for the prepared loader."""
    try:
        num_examples: int | str = len(dataloader.dataset)
    except (AttributeError, TypeError):  # an iterable (streamed) dataset has no length
        num_examples = "unknown (streamed)"
    total_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    lines = [
        "***** Running training *****",
        f"  Num examples = {num_examples}",
        f"  Num epochs = {epochs}",
        f"  Instantaneous batch size per device = {args.per_device_train_batch_size}",
        f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch}",
        f"  Gradient accumulation steps = {args.gradient_accumulation_steps}",
        f"  Total optimization steps = {max_steps}",
        f"  Devices = {accelerator.device.type}, {accelerator.num_processes} process"
        f"{'es' if accelerator.num_processes > 1 else ''} (distributed: {accelerator.distributed_type.value.lower()})",
        f"  Mixed precision = {accelerator.mixed_precision}",
    ]
    return "\n".join(lines)


def _log_main(accelerator, message: str) -> None:
    """An INFO line of the run, written once (by the main process)."""
    if accelerator.is_main_process:
        logger.info(message)


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {name: significant(value) for name, value in metrics.items()}


def train(
    args: RecipeArguments,
    accelerator,
    model: PreTrainedModel,
    train_dataloader: Iterable,
    compute_loss: Callable[[torch.nn.Module, dict, int], torch.Tensor],
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    checkpoint_objects: Iterable[Any] = (),
    processor: Any = None,
    task: str | None = None,
) -> tuple[torch.nn.Module, TrainResult]:
    """Runs the optimisation loop; returns the prepared model and what happened.

    Logs a summary of the run, then writes `output_dir/train_log.jsonl`: every `logging_steps` optimizer
    steps (and at the last) a record `{"step", "epoch", "loss", "learning_rate"}` with the mean loss since
    the previous record, and after each evaluation `{"step", "epoch", "eval/<metric>": value}`. The values
    there are exact; the log lines round metrics to 4 significant digits.

    Args:
        compute_loss: `(model, batch, global_step) -> loss` on one batch.
        evaluate: `(model) -> metrics`, run every `eval_steps` and at the end (all processes call it;
            use `accelerator.gather_for_metrics` inside, and `eval_progress` for a progress bar).
        checkpoint_objects: extra stateful objects (`state_dict`/`load_state_dict`), e.g. a
            `ResumableCollator`, saved and restored with the checkpoints.
        processor / task: written into `best/` with the model, so it loads (and runs as a pipeline)
            like `final/`.
    """
    from tqdm.auto import tqdm

    checkpoint_objects = list(checkpoint_objects)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(
        optimizer_groups(model, args.weight_decay), lr=args.learning_rate, eps=args.adam_epsilon
    )
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
    # Lengths after prepare: each process sees its shard of the data.
    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    epochs = math.ceil(max_steps / steps_per_epoch)
    # optimizer.step() comes before scheduler.step() below. The prepared scheduler steps once per
    # process at every optimizer step, so its lengths are counted in process-steps.
    scheduler = get_linear_schedule_with_warmup(
        optimizer, args.warmup_steps * accelerator.num_processes, max_steps * accelerator.num_processes
    )
    scheduler = accelerator.prepare(scheduler)
    for obj in checkpoint_objects:
        accelerator.register_for_checkpointing(obj)

    _log_main(accelerator, run_summary(args, accelerator, train_dataloader, max_steps, epochs))
    step = _resume_step(accelerator, args)
    if step:
        _log_main(accelerator, f"  Continuing from optimization step {step}")
    batches_done = step * args.gradient_accumulation_steps
    start_epoch, skip_batches = divmod(batches_done, len(train_dataloader))
    progress = tqdm(total=max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    history: list[dict] = []
    best_metrics, best_dir, last_loss = None, None, None
    window_losses: list[float] = []  # losses since the last log record
    log_file = Path(args.output_dir) / "train_log.jsonl"

    def write_log(record: dict) -> None:
        history.append(record)
        if accelerator.is_main_process:
            with log_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def run_eval() -> None:
        nonlocal best_metrics, best_dir
        if evaluate is None:
            return
        _log_main(accelerator, f"***** Evaluating at step {step} *****")
        model.eval()
        metrics = evaluate(model)
        model.train()
        write_log(
            {"step": step, "epoch": round(step / steps_per_epoch, 4), **{f"eval/{k}": v for k, v in metrics.items()}}
        )
        accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        _log_main(accelerator, f"step {step}: " + ", ".join(f"{k} = {v}" for k, v in _rounded(metrics).items()))
        key = args.metric_for_best
        if key is None or key not in metrics:
            return
        better = best_metrics is None or (
            metrics[key] > best_metrics[key] if args.greater_is_better else metrics[key] < best_metrics[key]
        )
        if better:
            best_metrics = dict(metrics)
            best_dir = Path(args.output_dir) / "best"
            accelerator.wait_for_everyone()
            export_folder(model, best_dir, task=task, processor=processor, accelerator=accelerator)

    if args.eval_before_training and step == 0:
        run_eval()
    model.train()
    for epoch in range(start_epoch, epochs):
        if hasattr(train_dataloader, "set_epoch"):
            train_dataloader.set_epoch(epoch)
        batches = train_dataloader
        if epoch == start_epoch and skip_batches:
            batches = accelerator.skip_first_batches(train_dataloader, skip_batches)
        for batch in batches:
            for obj in checkpoint_objects:
                if hasattr(obj, "mark_consumed"):
                    obj.mark_consumed(batch)
            with accelerator.accumulate(model):
                loss = compute_loss(model, batch, step)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            last_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
            window_losses.append(last_loss)
            if step % args.logging_steps == 0 or step == max_steps:
                record = {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 4),
                    "loss": sum(window_losses) / len(window_losses),
                    "learning_rate": scheduler.get_last_lr()[0],
                }
                window_losses.clear()
                write_log(record)
                accelerator.log(
                    {"train/loss": record["loss"], "train/learning_rate": record["learning_rate"]}, step=step
                )
                progress.set_postfix(loss=f"{record['loss']:.4g}")
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                _save_state(accelerator, args, step)
            if args.eval_steps and step % args.eval_steps == 0 and step != max_steps:
                run_eval()
            if step >= max_steps:
                break
        if step >= max_steps:
            break
    progress.close()
    run_eval()
    return model, TrainResult(step, last_loss, best_metrics, best_dir, history, epochs=epochs)


# ---------------------------------------------------------------------------------------- export


def export(
    accelerator,
    model: torch.nn.Module,
    args: RecipeArguments,
    task: str,
    processor=None,
    results: dict[str, float] | None = None,
    dataset_id: str | None = None,
    dataset_name: str | None = None,
    dataset_split: str | None = None,
    train_result: TrainResult | None = None,
) -> Path:
    """Final export: model + processor + code + model card in `output_dir/final`; pushed if asked.

    Args:
        results: the metrics of the exported weights, for the card and `all_results.json`.
        dataset_id / dataset_name: the data, named on the card.
        dataset_split: the split `results` were measured on, named in the card's `model-index`
            (default: `args.eval_split`, the split the recipes evaluate).
        train_result: what `train` returned; its step count goes into the card's description.
    """
    out = Path(args.output_dir) / "final"
    card = None
    if accelerator.is_main_process:
        config = accelerator.unwrap_model(model).config
        repo_id = args.hub_model_id or f"local/{Path(args.output_dir).name}"
        split = dataset_split or args.eval_split
        total_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        description = describe_training(
            task,
            base_model=args.model_name_or_path,
            dataset=dataset_id,  # the recipes' dataset_name names the evaluated set
            train_split=args.train_split,
            steps=train_result.global_step if train_result is not None else None,
            epochs=train_result.epochs if train_result is not None else None,
            total_batch_size=total_batch,
            eval_split=split if results else None,
        )
        card = build_model_card(
            repo_id,
            task,
            results=results,
            dataset_id=dataset_id,
            dataset_name=dataset_name,
            dataset_split=split,
            description=description,
            base_model=args.model_name_or_path,
            training={
                "learning_rate": args.learning_rate,
                "per_device_train_batch_size": args.per_device_train_batch_size,
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "num_processes": accelerator.num_processes,
                "max_train_steps": args.max_train_steps,
                "num_train_epochs": args.num_train_epochs,
                "weight_decay": args.weight_decay,
                "warmup_steps": args.warmup_steps,
                "mixed_precision": args.mixed_precision,
            },
            img_feature_dim=config.img_feature_dim,
            max_img_seq_length=config.max_img_seq_length,
            has_pipeline=processor is not None,
        )
    export_folder(model, out, task=task, processor=processor, card=card, accelerator=accelerator)
    if accelerator.is_main_process:
        (out / "all_results.json").write_text(json.dumps(results or {}, indent=2), encoding="utf-8")
        if args.push_to_hub:
            url = push_folder(out, args.hub_model_id, token=args.hub_token, private=args.hub_private)
            accelerator.print(f"Pushed to {url}")
    accelerator.wait_for_everyone()
    return out


__all__ = [
    "LengthGroupedSampler",
    "ResumableCollator",
    "RecipeArguments",
    "TrainResult",
    "check_pretrained_arguments",
    "configure_logging",
    "eval_dataloader",
    "eval_progress",
    "export",
    "latest_checkpoint",
    "load_model",
    "load_processor",
    "load_split",
    "make_accelerator",
    "optimizer_groups",
    "parse_recipe_args",
    "resolve_pretrained",
    "run_summary",
    "save_resolved_args",
    "train",
    "train_dataloader",
]
