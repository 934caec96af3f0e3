"""The training library the recipes share (installed as `oscar_hf.training`).

- `loop`: arguments (`RecipeArguments`), model initialisation, the Accelerate loop with exact
  resume, the final export (re-exported here);
- `finetuning`: task fine-tuning helpers (processor set-up, text lengths, label vocabularies,
  retrieval re-ranking);
- `scst`: self-critical sequence training for captioning (CIDEr-D reward);
- `hub`: model cards and Hub publishing.
"""

# The folder is installed as `oscar_hf.training`; imported under its folder name (e.g. from the repository root) it
# would load a second, different copy of every class.
if __name__ != "oscar_hf.training":
    raise ImportError(
        f"{__name__} is the source folder of `oscar_hf.training`: `import oscar_hf.training` instead (pip install -e .)."
    )

from oscar_hf.extras import require_extra


# The recipes train with Accelerate, which comes with the `train` extra.
require_extra("accelerate", extra="train", needed_by="`oscar_hf.training` (the training recipes)")

from .loop import (  # noqa: E402
    LengthGroupedSampler,
    RecipeArguments,
    ResumableCollator,
    TrainResult,
    eval_dataloader,
    eval_progress,
    export,
    latest_checkpoint,
    load_model,
    load_processor,
    load_split,
    make_accelerator,
    optimizer_groups,
    parse_recipe_args,
    resolve_pretrained,
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
    "save_resolved_args",
    "train",
    "train_dataloader",
]
