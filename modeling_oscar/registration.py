"""The task table, Auto-class registration and the one exporter of folders that load with `trust_remote_code=True`.

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
from dataclasses import dataclass
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
REMOTE_CODE_FILES = ("configuration_oscar.py", "modeling_oscar.py", "cbs_oscar.py")
# Flat files of `oscar_hf.processors` that a folder with a custom pipeline carries as well.
PIPELINE_CODE_FILES = ("processing_oscar.py", "image_processing_oscar.py", "detection_oscar.py", "pipeline_oscar.py")


@dataclass(frozen=True)
class OscarTask:
    """One row of the task table: how a task's folder is built, loaded, run and described."""

    model_class: str  # class in modeling_oscar.py
    auto_class: str  # the built-in Auto class that loads the exported folder
    text_length: int  # default processor text length (the original recipe's max_seq_length)
    display_name: str  # model card title and model-index task name
    index_type: str  # model-index task type
    pipeline_tag: str | None = None  # Hub widget tag
    pipeline: str | None = None  # custom pipeline task (pipeline_oscar.py) a folder of this task carries


# The one task table: the converter, the exporter, the recipes' model cards and the pipelines read it.
TASKS: dict[str, OscarTask] = {
    "base": OscarTask("OscarModel", "AutoModel", 128, "Vision-Language Representation", "feature-extraction"),
    "pretraining": OscarTask(
        "OscarForPreTraining", "AutoModelForPreTraining", 35, "Vision-Language Pre-training", "feature-extraction"
    ),
    "captioning": OscarTask(
        "OscarForImageCaptioning",
        "AutoModelForImageTextToText",
        70,
        "Image Captioning",
        "image-to-text",
        "image-to-text",
        "oscar-captioning",
    ),
    # VQA and GQA share one head class; "classification" is the converter's name for either.
    **{
        task: OscarTask(
            "OscarForSequenceClassification",
            "AutoModelForSequenceClassification",
            128,
            title,
            "visual-question-answering",
            "visual-question-answering",
            "oscar-vqa",
        )
        for task, title in (
            ("classification", "Visual Question Answering"),
            ("vqa", "Visual Question Answering"),
            ("gqa", "Visual Question Answering (GQA)"),
        )
    },
    "retrieval": OscarTask(
        "OscarForImageTextRetrieval",
        "AutoModelForSequenceClassification",
        70,
        "Image-Text Retrieval",
        "image-text-retrieval",
        None,
        "oscar-retrieval",
    ),
    "nlvr2": OscarTask(
        "OscarForNLVR2", "AutoModelForSequenceClassification", 55, "Visual Reasoning (NLVR2)", "visual-reasoning"
    ),
}
# Custom pipeline task -> (class in pipeline_oscar.py, the built-in Auto class its folder is loaded with).
PIPELINES = {
    "oscar-captioning": ("OscarCaptioningPipeline", "AutoModelForImageTextToText"),
    "oscar-vqa": ("OscarVQAPipeline", "AutoModelForVisualQuestionAnswering"),
    "oscar-retrieval": ("OscarRetrievalPipeline", "AutoModelForSequenceClassification"),
}
# Every export can be loaded as the bare trunk and its configuration.
AUTO_MAP = {"AutoConfig": "configuration_oscar.OscarConfig", "AutoModel": "modeling_oscar.OscarModel"}


def get_task(task: str) -> OscarTask:
    """The table row of `task`, with an error listing the known tasks."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not an Oscar task; expected one of {sorted(TASKS)}.")
    return TASKS[task]


def task_for_model(model_class_name: str) -> str:
    """The first task whose head is `model_class_name` (VQA for the shared classification head)."""
    for name, task in TASKS.items():
        if task.model_class == model_class_name:
            return "vqa" if name == "classification" else name
    raise ValueError(
        f"{model_class_name} is not an Oscar class; expected one of {sorted({t.model_class for t in TASKS.values()})}."
    )


def auto_map_for(model_class_name: str) -> dict[str, str]:
    """`auto_map` of a folder exported from `model_class_name`."""
    task = TASKS[task_for_model(model_class_name)]
    auto_map = dict(AUTO_MAP)
    auto_map[task.auto_class] = f"modeling_oscar.{model_class_name}"
    if task.pipeline is not None:
        # The pipeline loads the folder with its own Auto class (VQA: AutoModelForVisualQuestionAnswering).
        auto_map[PIPELINES[task.pipeline][1]] = f"modeling_oscar.{model_class_name}"
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


def custom_pipelines_for(task: str) -> dict[str, dict[str, Any]]:
    """The `config.json` `custom_pipelines` entry of pipeline `task`, as `Pipeline.save_pretrained` writes it."""
    if task not in PIPELINES:
        raise ValueError(f"Unknown pipeline task {task!r}; expected one of {sorted(PIPELINES)}.")
    pipeline_class, auto_class = PIPELINES[task]
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
    for task, (class_name, auto_class) in PIPELINES.items():
        if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is getattr(module, class_name):
            continue
        PIPELINE_REGISTRY.register_pipeline(
            task,
            pipeline_class=getattr(module, class_name),
            pt_model=getattr(transformers, auto_class),
            type="multimodal",
        )


def _save_vinvl_detector(detector: Any, out: Path, safe_serialization: bool) -> None:
    """Saves a `VinVLDetectorAdapter` into `out/detector` with its flat code, as the VinVL converter writes it."""
    model, image_processor = detector.model, detector.image_processor
    # The folder must load where this package is absent: auto_map + the three flat VinVL files.
    model.config.register_for_auto_class()
    model.register_for_auto_class("AutoModel")
    image_processor.register_for_auto_class("AutoImageProcessor")
    model.save_pretrained(out / "detector", safe_serialization=safe_serialization)
    image_processor.save_pretrained(out / "detector")


def _save_detector(detector: Any, out: Path, processor: Any, safe_serialization: bool) -> None:
    """Puts `detector` where the pipeline finds it: saved into `out/detector`, or referenced by path."""
    model_type = getattr(getattr(getattr(detector, "model", None), "config", None), "model_type", None)
    if model_type == "vinvl_detector":
        _save_vinvl_detector(detector, out, safe_serialization)
        config = detector.model.config
        # The processor's selection settings are handed back to the detector at load time: keep them its own.
        processor.detector_name_or_path = "detector"
        processor.detector_score_threshold = float(config.score_threshold)
        processor.detector_min_boxes = int(config.min_detections_per_image)
        processor.detector_max_boxes = int(config.max_detections_per_image)
        processor.detector_nms_threshold = None
    elif hasattr(detector, "model") and hasattr(detector, "image_processor"):
        detector.model.save_pretrained(out / "detector", safe_serialization=safe_serialization)
        detector.image_processor.save_pretrained(out / "detector")
        processor.detector_name_or_path = "detector"
        processor.detector_score_threshold = float(detector.score_threshold)
        processor.detector_min_boxes = int(detector.min_boxes)
        processor.detector_max_boxes = int(detector.max_boxes)
        processor.detector_nms_threshold = detector.nms_threshold
    elif isinstance(detector, (str, os.PathLike)):
        processor.detector_name_or_path = os.fspath(detector)
    else:
        raise ValueError(
            f"detector={type(detector).__name__}; pass a VinVLDetectorAdapter or TransformersDetector (saved into "
            "the folder) or the path / "
            "Hub id of an AutoModelForObjectDetection checkpoint. Other callables are given to pipeline(..., "
            "detector=...) at load time."
        )


def export_folder(
    model: PreTrainedModel,
    out_dir: str | os.PathLike,
    *,
    task: str | None = None,
    processor: Any = None,
    detector: Any = None,
    card: Any = None,
    accelerator: Any = None,
    safe_serialization: bool = True,
) -> Path:
    """The one exporter: writes a folder that loads with `trust_remote_code=True` where this package is absent.

    The folder holds the weights (safetensors), `config.json` with an `auto_map`, the flat model
    code and, when `processor` is given, the processor. When the task has a pipeline
    (`TASKS[task].pipeline`) and a processor is given, it also carries the flat pipeline code and the
    `custom_pipelines` entry, so `pipeline(model=folder, trust_remote_code=True)` runs on
    transformers 4.57 and 5.x. The converter, the recipes (`final/`, `best/`) and
    `export_pipeline_folder` all write through here.

    Args:
        task: a `TASKS` key; inferred from the model class when None.
        processor: an `OscarProcessor`, saved into the folder.
        detector: what the pipeline runs on raw images: a `VinVLDetectorAdapter` or a
            `TransformersDetector` (saved into the folder's `detector/` subfolder, with the VinVL
            detector's flat code), or the path / Hub id of a detector folder (relative paths are
            resolved against the model folder). None keeps the processor's reference; a folder whose
            `detector/` subfolder holds a detector runs it by default.
        card: a `huggingface_hub.ModelCard`, written as the folder's README.md.
        accelerator: an `accelerate.Accelerator` when called from a (distributed) training run: the
            full state dict is gathered first (DeepSpeed ZeRO-3, FSDP) and only the main process writes.

    Example:
        >>> from oscar_hf import OscarConfig, OscarModel
        >>> from oscar_hf.registration import export_folder
        >>> model = OscarModel(OscarConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2))
        >>> export_folder(model, "oscar-tiny")  # doctest: +SKIP
    """
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    name = type(unwrapped).__name__
    task = task or task_for_model(name)
    entry = get_task(task)
    if entry.model_class != name:
        raise ValueError(f"task={task!r} expects an {entry.model_class}, got {name}; pass the task of this head.")
    with_pipeline = entry.pipeline is not None and processor is not None
    if processor is not None and not hasattr(processor, "caption_prompt"):
        raise ValueError(f"processor={type(processor).__name__}; export_folder expects an OscarProcessor.")
    if detector is not None and processor is None:
        raise ValueError("detector= needs processor=: the processor config records where the pipeline finds it.")
    out = Path(out_dir)
    unwrapped.config.auto_map = auto_map_for(name)
    unwrapped.config.architectures = [name]
    if with_pipeline:
        unwrapped.config.custom_pipelines = custom_pipelines_for(entry.pipeline)
    is_main = accelerator is None or accelerator.is_main_process
    if accelerator is not None:
        state_dict = accelerator.get_state_dict(model)
        unwrapped.save_pretrained(
            out,
            is_main_process=is_main,
            save_function=accelerator.save,
            state_dict=state_dict,
            safe_serialization=safe_serialization,
        )
    else:
        unwrapped.save_pretrained(out, safe_serialization=safe_serialization)
    if is_main:
        extra = ()
        if with_pipeline:
            source = Path(importlib.import_module("oscar_hf.processors.pipeline_oscar").__file__).parent
            extra = tuple(source / file for file in PIPELINE_CODE_FILES)
        copy_remote_code(out, extra_files=extra)
        if processor is not None:
            processor = copy.copy(processor)  # the detector reference is written to the copy only
            if detector is not None:
                _save_detector(detector, out, processor, safe_serialization)
            processor.save_pretrained(out)
        if card is not None:
            card.save(out / "README.md")
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return out


def export_pipeline_folder(
    model: PreTrainedModel,
    processor: Any,
    out_dir: str | os.PathLike,
    task: str | None = None,
    detector: Any = None,
    safe_serialization: bool = True,
) -> Path:
    """`export_folder` for a model that must run as a pipeline: errors where the folder would not.

    Args:
        task: a pipeline task ("oscar-captioning", "oscar-vqa", "oscar-retrieval") or a `TASKS` key;
            inferred from the model class when None.

    Example:
        >>> export_pipeline_folder(captioner, processor, "oscar-tiny-captioning", detector=detector)  # doctest: +SKIP
        >>> pipeline(model="oscar-tiny-captioning", trust_remote_code=True)("photo.jpg")  # doctest: +SKIP
    """
    name = type(model).__name__
    if task in PIPELINES:
        expected = [t.model_class for t in TASKS.values() if t.pipeline == task]
        if name not in expected:
            raise ValueError(f"Task {task!r} expects a {' or '.join(sorted(set(expected)))}, got {name}.")
        task = next(key for key, t in TASKS.items() if t.pipeline == task and t.model_class == name)
    task = task or task_for_model(name)
    if get_task(task).pipeline is None:
        raise ValueError(f"{name} has no Oscar pipeline; export it with export_folder instead.")
    if processor is None or not hasattr(processor, "caption_prompt"):
        raise ValueError(f"export_pipeline_folder needs an OscarProcessor, got {type(processor).__name__}.")
    return export_folder(
        model, out_dir, task=task, processor=processor, detector=detector, safe_serialization=safe_serialization
    )


__all__ = [
    "AUTO_MAP",
    "PIPELINES",
    "PIPELINE_CODE_FILES",
    "REMOTE_CODE_FILES",
    "TASKS",
    "OscarTask",
    "auto_map_for",
    "copy_remote_code",
    "custom_pipelines_for",
    "export_folder",
    "export_pipeline_folder",
    "get_task",
    "register_auto_classes",
    "register_pipelines",
    "task_for_model",
]
