"""The training library the recipes share (installed as `oscar_hf.training`).

- `loop`: arguments (`RecipeArguments`), model initialisation, the Accelerate loop with exact
  resume, the final export (re-exported here);
- `finetuning`: task fine-tuning helpers (processor set-up, text lengths, label vocabularies,
  retrieval re-ranking);
- `scst`: self-critical sequence training for captioning (CIDEr-D reward);
- `hub`: model cards and Hub publishing.
"""

from .loop import (
    LengthGroupedSampler,
    RecipeArguments,
    ResumableCollator,
    TrainResult,
    eval_dataloader,
    export,
    latest_checkpoint,
    load_model,
    load_processor,
    load_split,
    make_accelerator,
    optimizer_groups,
    parse_recipe_args,
    save_resolved_args,
    train,
    train_dataloader,
)


__all__ = [
    "LengthGroupedSampler",
    "RecipeArguments",
    "ResumableCollator",
    "TrainResult",
    "eval_dataloader",
    "export",
    "latest_checkpoint",
    "load_model",
    "load_processor",
    "load_split",
    "make_accelerator",
    "optimizer_groups",
    "parse_recipe_args",
    "save_resolved_args",
    "train",
    "train_dataloader",
]
