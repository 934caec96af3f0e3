"""Model cards and Hub publishing for exported Oscar folders.

`build_model_card` fills the repository's `model_card.md` template (task, datasets, metrics as a
`model-index`, usage, limitations, citation), with a description of the run from
`describe_training`; `push_folder` creates the repository and uploads an exported folder through
`huggingface_hub.HfApi`. Numbers on cards and in logs are rounded by `significant`.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from oscar_hf.registration import get_task


def _template_path() -> Path:
    """`model_card.md`: packaged next to this file in a wheel, at the repository root in a checkout."""
    here = Path(__file__).resolve().parent
    packaged = here / "model_card.md"
    return packaged if packaged.is_file() else here.parents[1] / "model_card.md"


TEMPLATE_PATH = _template_path()

_PIPELINE_CALLS = {
    "oscar-captioning": "pipe({image})",
    "oscar-vqa": 'pipe({image}, question="what is on the table?")',
    "oscar-retrieval": 'pipe(images=[{image}], texts=["a dog on a couch", "a plate of food"])',
}


def usage_snippet(
    repo_id: str, task: str, *, has_pipeline: bool = True, has_detector: bool = False, region_feature_dim: int = 2048
) -> str:
    """A runnable example for the card: the pipeline when the folder has one, else the Auto class.

    A folder without a detector cannot read a photo: its snippet passes precomputed regions (random
    values that only show the call, said so in the snippet).
    """
    entry = get_task(task)
    if entry.pipeline is None or not has_pipeline:
        return (
            f"from transformers import {entry.auto_class}\n\n"
            f'model = {entry.auto_class}.from_pretrained("{repo_id}", trust_remote_code=True)'
        )
    head = "from transformers import pipeline\n\n"
    load = f'pipe = pipeline("{entry.pipeline}", model="{repo_id}", trust_remote_code=True)\n'
    call = _PIPELINE_CALLS[entry.pipeline]
    if has_detector:
        return head + load + f"print({call.format(image=repr('photo.jpg'))})"
    return (
        "import numpy as np\n"
        + head
        + load
        + "# This folder carries no detector: pass the regions of the detector the model was trained on\n"
        + "# (features, pixel boxes, image size, tags). Random values here only show the call.\n"
        + "regions = {\n"
        + f'    "features": np.random.rand(10, {region_feature_dim}).astype("float32"),\n'
        + '    "boxes": np.array([[0, 0, 64, 48]] * 10, dtype="float32"),\n'
        + '    "image_size": (480, 640),\n'
        + '    "tags": ["dog"] * 10,\n'
        + "}\n"
        + f"print({call.format(image='regions')})"
    )


def significant(value: float, digits: int = 4) -> float:
    """`value` rounded to `digits` significant digits (0.123456 -> 0.1235, 1234567.0 -> 1235000.0).

    Example:
        >>> significant(0.123456), significant(1.118033988512313e-16), significant(92.0)
        (0.1235, 1.118e-16, 92.0)
    """
    return float(f"{float(value):.{digits}g}")


def describe_training(
    task: str,
    *,
    base_model: str | None = None,
    dataset: str | None = None,
    train_split: str = "train",
    steps: int | None = None,
    epochs: int | None = None,
    total_batch_size: int | None = None,
    eval_split: str | None = None,
) -> str:
    """The card's opening paragraph: which task, from which checkpoint, on which data, for how long.

    Example:
        >>> describe_training("vqa", base_model="org/oscar-base", dataset="vqa_v2", steps=1000, eval_split="val")
        'This model was fine-tuned from `org/oscar-base` for **Visual Question Answering** on the train split of vqa_v2 for 1000 optimization steps. The results below were measured on the val split.'
    """
    entry = get_task(task)
    verb = "pre-trained" if task == "pretraining" else "fine-tuned"
    start = f"{verb} from `{base_model}`" if base_model else "trained from a random initialisation"
    data = f" on the {train_split} split of {dataset or 'its training data'}"
    length = ""
    if steps is not None:
        details = [f"{epochs} epoch{'s' if epochs != 1 else ''}" if epochs else None]
        details.append(f"total batch size {total_batch_size}" if total_batch_size else None)
        shown = ", ".join(d for d in details if d)
        length = f" for {steps} optimization step{'s' if steps != 1 else ''}" + (f" ({shown})" if shown else "")
    evaluated = (
        f" The results below were measured on the {eval_split} split."
        if eval_split
        else " No evaluation was run for this export."
    )
    return f"This model was {start} for **{entry.display_name}**{data}{length}.{evaluated}"


def _results_table(results: dict[str, float], dataset_name: str) -> str:
    if not results:
        return "No evaluation was run for this export."
    rows = "\n".join(f"| {dataset_name} | {name} | {significant(value):g} |" for name, value in results.items())
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
    has_pipeline: bool = True,
    has_detector: bool = False,
) -> ModelCard:
    """Fills `model_card.md` for an exported folder.

    Args:
        repo_id: where the folder is (or will be) published, used in the usage snippet.
        task: a key of `oscar_hf.registration.TASKS` ("captioning", "vqa", "gqa", "retrieval", "nlvr2", ...).
        results: metric name -> value (e.g. {"CIDEr": 1.23}); written to the card and `model-index`.
        dataset_id / dataset_name / dataset_split: what the results were measured on (the split goes into the
            `model-index`; recipes pass the split they evaluated).
        base_model: the checkpoint training started from.
        training: resolved training arguments worth showing (lr, batch, epochs ...).

    Example:
        >>> card = build_model_card("org/oscar-tiny-vqa", "vqa", results={"accuracy": 0.5})
        >>> "model-index" in str(card)
        True
    """
    entry = get_task(task)
    template = Path(template_path) if template_path is not None else TEMPLATE_PATH
    if not template.is_file():
        raise FileNotFoundError(f"Model card template not found at {str(template)!r}; pass template_path.")
    pipeline_tag, task_name, task_type = entry.pipeline_tag, entry.display_name, entry.index_type
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
            metric_value=significant(value),
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
        usage_snippet=usage_snippet(
            repo_id,
            task,
            has_pipeline=has_pipeline,
            has_detector=has_detector,
            region_feature_dim=img_feature_dim - 6,
        ),
        feature_source=feature_source,
        base_model_text=base_model or "random initialisation",
        datasets_text=dataset_id or "not recorded",
        training_text=", ".join(f"{k}={v}" for k, v in training.items()) or "not recorded",
        results_table=_results_table(results, dataset_name),
    )


# What each kind of folder must hold before it is pushed, and what of it is uploaded.
_PUSH_RULES = {
    "model": (
        "config.json",
        "export the model before pushing it",
        None,
        ["checkpoints/*", "step_*", "epoch_*", "runs/*", "*.tmp"],
    ),
    "dataset": ("README.md", "build the dataset before pushing it", ["README.md", "data/*.parquet"], None),
}


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    repo_type: str = "model",
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Creates `repo_id` (if needed) and uploads an exported model or built dataset folder; returns the commit URL.

    Models are uploaded without training checkpoints; datasets as their card and Parquet shards.
    """
    if repo_type not in _PUSH_RULES:
        raise ValueError(f"repo_type={repo_type!r}; expected one of {sorted(_PUSH_RULES)}.")
    required, fix, allow, ignore = _PUSH_RULES[repo_type]
    folder = Path(folder)
    if not (folder / required).is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {required}: {fix}.")
    api = api or HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type).repo_id
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type=repo_type,
        folder_path=str(folder),
        commit_message=commit_message or f"Upload Oscar {repo_type}",
        allow_patterns=allow,
        ignore_patterns=ignore,
    )
    return str(getattr(commit, "commit_url", commit))


__all__ = ["build_model_card", "describe_training", "push_folder", "significant", "usage_snippet"]
