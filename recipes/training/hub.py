"""Model cards and Hub publishing for exported Oscar folders.

`build_model_card` fills the repository's `model_card.md` template (task, datasets, metrics as a
`model-index`, usage, limitations, citation); `push_folder` creates the repository and uploads an
exported folder through `huggingface_hub.HfApi`.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData


TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "model_card.md"

# task -> (Hub pipeline tag, human task name, model-index task type, Auto class, custom pipeline task)
TASKS = {
    "captioning": (
        "image-to-text",
        "Image Captioning",
        "image-to-text",
        "AutoModelForImageTextToText",
        "oscar-captioning",
    ),
    "vqa": (
        "visual-question-answering",
        "Visual Question Answering",
        "visual-question-answering",
        "AutoModelForSequenceClassification",
        "oscar-vqa",
    ),
    "gqa": (
        "visual-question-answering",
        "Visual Question Answering (GQA)",
        "visual-question-answering",
        "AutoModelForSequenceClassification",
        "oscar-vqa",
    ),
    "retrieval": (
        None,
        "Image-Text Retrieval",
        "image-text-retrieval",
        "AutoModelForSequenceClassification",
        "oscar-retrieval",
    ),
    "nlvr2": (None, "Visual Reasoning (NLVR2)", "visual-reasoning", "AutoModelForSequenceClassification", None),
    "pretraining": (
        "feature-extraction",
        "Vision-Language Pre-training",
        "feature-extraction",
        "AutoModelForPreTraining",
        None,
    ),
}


def usage_snippet(repo_id: str, task: str) -> str:
    """A runnable example for the card (the pipeline when the task has one, else the Auto class)."""
    _, _, _, auto_class, pipeline_task = TASKS[task]
    if pipeline_task is not None:
        return (
            "from transformers import pipeline\n\n"
            f'pipe = pipeline("{pipeline_task}", model="{repo_id}", trust_remote_code=True)\n'
            + (
                'print(pipe("photo.jpg"))'
                if task == "captioning"
                else 'print(pipe("photo.jpg", question="what is on the table?"))'
                if task in ("vqa", "gqa")
                else 'print(pipe(images=["photo.jpg"], texts=["a dog on a couch"]))'
            )
        )
    return (
        f"from transformers import {auto_class}\n\n"
        f'model = {auto_class}.from_pretrained("{repo_id}", trust_remote_code=True)'
    )


def _results_table(results: dict[str, float], dataset_name: str) -> str:
    if not results:
        return "No evaluation was run for this export."
    rows = "\n".join(f"| {dataset_name} | {name} | {value:.4g} |" for name, value in results.items())
    return "| dataset | metric | value |\n| --- | --- | --- |\n" + rows


def build_model_card(
    repo_id: str,
    task: str,
    *,
    results: dict[str, float] | None = None,
    dataset_id: str | None = None,
    dataset_name: str | None = None,
    dataset_split: str = "test",
    base_model: str | None = None,
    training: dict | None = None,
    feature_source: str = "VinVL / bottom-up Faster R-CNN region features (2048-d) with 6 box values",
    img_feature_dim: int = 2054,
    max_img_seq_length: int = 50,
    description: str = "",
    template_path: str | os.PathLike | None = None,
) -> ModelCard:
    """Fills `model_card.md` for an exported folder.

    Args:
        repo_id: where the folder is (or will be) published, used in the usage snippet.
        task: one of `TASKS` ("captioning", "vqa", "gqa", "retrieval", "nlvr2", "pretraining").
        results: metric name -> value (e.g. {"CIDEr": 1.23}); written to the card and `model-index`.
        dataset_id / dataset_name / dataset_split: what the results were measured on.
        base_model: the checkpoint training started from.
        training: resolved training arguments worth showing (lr, batch, epochs ...).

    Example:
        >>> card = build_model_card("org/oscar-tiny-vqa", "vqa", results={"accuracy": 0.5})
        >>> "model-index" in str(card)
        True
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {sorted(TASKS)}.")
    template = Path(template_path) if template_path is not None else TEMPLATE_PATH
    if not template.is_file():
        raise FileNotFoundError(f"Model card template not found at {str(template)!r}; pass template_path.")
    pipeline_tag, task_name, task_type, _, _ = TASKS[task]
    results = results or {}
    dataset_name = dataset_name or dataset_id or "evaluation set"
    eval_results = [
        EvalResult(
            task_type=task_type,
            task_name=task_name,
            dataset_type=dataset_id or dataset_name,
            dataset_name=dataset_name,
            dataset_split=dataset_split,
            metric_type=name.lower().replace(" ", "_"),
            metric_name=name,
            metric_value=float(value),
        )
        for name, value in results.items()
    ]
    card_data = ModelCardData(
        language="en",
        license="mit",
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["oscar", "vinvl", "vision-language", "object-tags", "custom_code", task],
        datasets=[dataset_id] if dataset_id else None,
        metrics=sorted({name.lower() for name in results}) or None,
        base_model=base_model,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
    )
    training = training or {}
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=repo_id.split("/")[-1],
        model_description=description,
        task_name=task_name,
        img_feature_dim=img_feature_dim,
        max_img_seq_length=max_img_seq_length,
        usage_snippet=usage_snippet(repo_id, task),
        feature_source=feature_source,
        base_model_text=base_model or "random initialisation",
        datasets_text=dataset_id or "not recorded",
        training_text=", ".join(f"{k}={v}" for k, v in training.items()) or "not recorded",
        results_table=_results_table(results, dataset_name),
    )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload Oscar model",
    api: HfApi | None = None,
) -> str:
    """Creates `repo_id` (if needed) and uploads `folder` without training checkpoints; returns the commit URL."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no config.json: export the model before pushing it.")
    api = api or HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        ignore_patterns=["checkpoints/*", "step_*", "epoch_*", "runs/*", "*.tmp"],
    )
    return str(getattr(commit, "commit_url", commit))


__all__ = ["TASKS", "build_model_card", "push_folder", "usage_snippet"]
