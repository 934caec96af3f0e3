"""Auto-class registration and export of folders that load with `trust_remote_code=True`.

Two audiences:
- people who `pip install` this package get the classes registered with the local Auto classes;
- everyone else loads an exported folder, which carries `configuration_oscar.py` and
  `modeling_oscar.py` as flat remote-code files next to `config.json` and an `auto_map` naming them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    PreTrainedModel,
)

from .configuration_oscar import OscarConfig
from .modeling_oscar import (
    OscarForImageCaptioning,
    OscarForPreTraining,
    OscarForSequenceClassification,
    OscarModel,
)


PACKAGE_DIR = Path(__file__).resolve().parent
# The files a Hub folder needs for the model; they import each other only as `from .x import y`.
REMOTE_CODE_FILES = ("configuration_oscar.py", "modeling_oscar.py")

# Task head -> the Auto class that loads it from an exported folder.
TASK_AUTO_CLASS = {
    "OscarModel": "AutoModel",
    "OscarForPreTraining": "AutoModelForPreTraining",
    "OscarForImageCaptioning": "AutoModelForImageTextToText",
    "OscarForSequenceClassification": "AutoModelForSequenceClassification",
    "OscarForImageTextRetrieval": "AutoModelForSequenceClassification",
    "OscarForNLVR2": "AutoModelForSequenceClassification",
}
# Every export can be loaded as the bare trunk and its configuration.
AUTO_MAP = {"AutoConfig": "configuration_oscar.OscarConfig", "AutoModel": "modeling_oscar.OscarModel"}


def auto_map_for(model_class_name: str) -> dict[str, str]:
    """`auto_map` of a folder exported from `model_class_name`."""
    if model_class_name not in TASK_AUTO_CLASS:
        raise ValueError(f"Unknown Oscar class {model_class_name!r}; expected one of {sorted(TASK_AUTO_CLASS)}.")
    auto_map = dict(AUTO_MAP)
    auto_map[TASK_AUTO_CLASS[model_class_name]] = f"modeling_oscar.{model_class_name}"
    if model_class_name == "OscarForSequenceClassification":
        auto_map["AutoModelForVisualQuestionAnswering"] = "modeling_oscar.OscarForSequenceClassification"
    return auto_map


def register_auto_classes() -> None:
    """Registers the Oscar classes with the local Auto classes (idempotent).

    `AutoModelForSequenceClassification` is left to each exported folder's `auto_map`, since three
    heads (VQA/GQA, retrieval, NLVR2) share it and their weights differ.
    """
    try:
        AutoConfig.register("oscar", OscarConfig)
    except ValueError:  # already registered
        return
    AutoModel.register(OscarConfig, OscarModel)
    AutoModelForPreTraining.register(OscarConfig, OscarForPreTraining)
    AutoModelForImageTextToText.register(OscarConfig, OscarForImageCaptioning)
    AutoModelForVisualQuestionAnswering.register(OscarConfig, OscarForSequenceClassification)


def copy_remote_code(out_dir: str | os.PathLike, extra_files: tuple[str | os.PathLike, ...] = ()) -> list[str]:
    """Copies the flat remote-code files (and `extra_files`) into `out_dir`; returns their names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for source in [PACKAGE_DIR / name for name in REMOTE_CODE_FILES] + [Path(p) for p in extra_files]:
        shutil.copyfile(source, out / source.name)
        copied.append(source.name)
    return copied


def export_pretrained(
    model: PreTrainedModel, out_dir: str | os.PathLike, processor=None, safe_serialization: bool = True
) -> Path:
    """Saves `model` (and `processor`) so the folder loads with `trust_remote_code=True`.

    Example:
        >>> from oscar_hf import OscarConfig, OscarModel
        >>> from oscar_hf.registration import export_pretrained
        >>> model = OscarModel(OscarConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2))
        >>> export_pretrained(model, "oscar-tiny")  # doctest: +SKIP
    """
    name = type(model).__name__
    if name not in TASK_AUTO_CLASS:
        raise ValueError(f"export_pretrained expects an Oscar model, got {name}.")
    model.config.auto_map = auto_map_for(name)
    model.config.architectures = [name]
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=safe_serialization)
    copy_remote_code(out)
    if processor is not None:
        processor.save_pretrained(out)
    return out


__all__ = [
    "AUTO_MAP",
    "REMOTE_CODE_FILES",
    "TASK_AUTO_CLASS",
    "auto_map_for",
    "copy_remote_code",
    "export_pretrained",
    "register_auto_classes",
]
