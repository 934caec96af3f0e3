"""Auto-class registration and export of folders that load with `trust_remote_code=True`.

Two audiences:
- people who `pip install` this package get the classes registered with the local Auto classes;
- everyone else loads an exported folder, which carries `configuration_oscar.py` and
  `modeling_oscar.py` as flat remote-code files next to `config.json` and an `auto_map` naming them.
"""

from __future__ import annotations

import copy
import importlib
import os
import shutil
from pathlib import Path
from typing import Any

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

# Flat files of `oscar_hf.processors` that a folder with a custom pipeline carries as well.
PIPELINE_CODE_FILES = ("processing_oscar.py", "image_processing_oscar.py", "detection_oscar.py", "pipeline_oscar.py")
# Custom pipeline task -> (pipeline class in pipeline_oscar.py, built-in Auto class loading the model, model classes).
PIPELINE_TASKS = {
    "oscar-captioning": ("OscarCaptioningPipeline", "AutoModelForImageTextToText", ("OscarForImageCaptioning",)),
    "oscar-vqa": ("OscarVQAPipeline", "AutoModelForVisualQuestionAnswering", ("OscarForSequenceClassification",)),
    "oscar-retrieval": (
        "OscarRetrievalPipeline",
        "AutoModelForSequenceClassification",
        ("OscarForImageTextRetrieval",),
    ),
}

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


def custom_pipelines_for(task: str) -> dict[str, dict[str, Any]]:
    """The `config.json` `custom_pipelines` entry of `task`, as `Pipeline.save_pretrained` writes it."""
    if task not in PIPELINE_TASKS:
        raise ValueError(f"Unknown pipeline task {task!r}; expected one of {sorted(PIPELINE_TASKS)}.")
    pipeline_class, auto_class, _ = PIPELINE_TASKS[task]
    return {task: {"impl": f"pipeline_oscar.{pipeline_class}", "pt": [auto_class], "tf": [], "type": "multimodal"}}


def register_pipelines() -> None:
    """Registers the three pipeline tasks with `transformers.pipelines.PIPELINE_REGISTRY` (idempotent).

    For pip-installed use without an exported folder, e.g.
    `pipeline("oscar-vqa", model=model, processor=processor, detector=detector)` with objects in
    memory. Exported folders need no registration: their `config.json` names the pipeline code.
    """
    import transformers
    from transformers.pipelines import PIPELINE_REGISTRY

    module = importlib.import_module("oscar_hf.processors.pipeline_oscar")
    for task, (class_name, auto_class, _) in PIPELINE_TASKS.items():
        if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is getattr(module, class_name):
            continue
        PIPELINE_REGISTRY.register_pipeline(
            task,
            pipeline_class=getattr(module, class_name),
            pt_model=getattr(transformers, auto_class),
            type="multimodal",
        )


def export_pipeline_folder(
    model: PreTrainedModel,
    processor: Any,
    out_dir: str | os.PathLike,
    task: str | None = None,
    detector: Any = None,
    safe_serialization: bool = True,
) -> Path:
    """Exports `model` + `processor` as a folder that `pipeline(model=folder, trust_remote_code=True)` runs.

    The folder holds the model files and code (`export_pretrained`), the processor, the flat
    pipeline code (`pipeline_oscar.py`, `detection_oscar.py`, the processing files) and
    `custom_pipelines` in `config.json`, so the pipeline loads where this package is absent, on
    transformers 4.57 and 5.x.

    Args:
        task: "oscar-captioning", "oscar-vqa" or "oscar-retrieval"; inferred from the model class.
        detector: what the pipeline runs on raw images. A `TransformersDetector` is saved into the
            folder's `detector/` subfolder (its thresholds go into the processor config); a string
            is stored as the processor's `detector_name_or_path` (a folder or Hub repository,
            relative paths resolved against the model folder); None keeps the processor's
            reference (none: the pipeline then takes precomputed regions only).

    Example:
        >>> export_pipeline_folder(captioner, processor, "oscar-tiny-captioning", detector=detector)  # doctest: +SKIP
        >>> pipeline(model="oscar-tiny-captioning", trust_remote_code=True)("photo.jpg")  # doctest: +SKIP
    """
    name = type(model).__name__
    if task is None:
        task = next((t for t, (_, _, classes) in PIPELINE_TASKS.items() if name in classes), None)
        if task is None:
            raise ValueError(f"{name} has no Oscar pipeline; export it with export_pretrained instead.")
    entry = custom_pipelines_for(task)
    if name not in PIPELINE_TASKS[task][2]:
        raise ValueError(f"Task {task!r} expects a {' or '.join(PIPELINE_TASKS[task][2])}, got {name}.")
    if processor is None or not hasattr(processor, "caption_prompt"):
        raise ValueError(f"export_pipeline_folder needs an OscarProcessor, got {type(processor).__name__}.")
    out = Path(out_dir)
    processor = copy.copy(processor)  # the detector reference is written to the copy only
    if detector is not None and hasattr(detector, "model") and hasattr(detector, "image_processor"):
        detector.model.save_pretrained(out / "detector", safe_serialization=safe_serialization)
        detector.image_processor.save_pretrained(out / "detector")
        processor.detector_name_or_path = "detector"
        processor.detector_score_threshold = float(detector.score_threshold)
        processor.detector_min_boxes = int(detector.min_boxes)
        processor.detector_max_boxes = int(detector.max_boxes)
        processor.detector_nms_threshold = detector.nms_threshold
    elif isinstance(detector, (str, os.PathLike)):
        processor.detector_name_or_path = os.fspath(detector)
    elif detector is not None:
        raise ValueError(
            f"detector={type(detector).__name__}; pass a TransformersDetector (saved into the folder) or the path / "
            "Hub id of an AutoModelForObjectDetection checkpoint. Other callables are given to pipeline(..., "
            "detector=...) at load time."
        )
    model.config.custom_pipelines = entry
    export_pretrained(model, out, processor=processor, safe_serialization=safe_serialization)
    source = Path(importlib.import_module("oscar_hf.processors.pipeline_oscar").__file__).parent
    copy_remote_code(out, extra_files=tuple(source / file for file in PIPELINE_CODE_FILES))
    return out


__all__ = [
    "AUTO_MAP",
    "PIPELINE_CODE_FILES",
    "PIPELINE_TASKS",
    "REMOTE_CODE_FILES",
    "TASK_AUTO_CLASS",
    "auto_map_for",
    "copy_remote_code",
    "custom_pipelines_for",
    "export_pipeline_folder",
    "export_pretrained",
    "register_auto_classes",
    "register_pipelines",
]
