"""The `oscar-hf` command: caption, question and match photos with an exported folder; convert and build.

    oscar-hf caption photo.jpg --model oscar-base-coco-captioning
    oscar-hf vqa photo.jpg --question "what is on the table?" --model oscar-base-vqa
    oscar-hf match photo.jpg --texts "a dog on a couch" "a plate of food" --model oscar-base-coco-retrieval
    oscar-hf convert SRC_DIR OUT_DIR --task captioning            # = python -m oscar_hf.convert_original_checkpoint
    oscar-hf convert-detector vinvl_vg_x152c4.pth OUT_DIR         # = python -m oscar_hf.convert_vinvl_detector
    oscar-hf detect --images photos/ --detector transformers ...  # = python -m oscar_hf.data detect
    oscar-hf build caption --features ... --out data/coco_caption # = python -m oscar_hf.data build

The same command is `python -m oscar_hf ...`. The photo commands run the exported folder's own
detector (`detector/`, or `--detector DIR`) and print text, or JSON with `--output json`;
`--save-visualization out.png` draws the regions, their tags and the caption or answer. The model
code comes from this package, so no code from the folder runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


PROG = "oscar-hf"

EXAMPLES = {
    "caption": "oscar-hf caption photo.jpg other.jpg --model oscar-base-coco-captioning --num-beams 5 "
    "--save-visualization captioned.png",
    "vqa": 'oscar-hf vqa photo.jpg --question "what is the cat lying on?" --model oscar-base-vqa --top-k 3',
    "match": 'oscar-hf match photo.jpg --texts "a cat on a couch" "a plate of food" --model oscar-base-coco-retrieval',
    "convert": "oscar-hf convert checkpoint-29-66420 oscar-base-coco-captioning --task captioning "
    "--detector vinvl-detector",
    "convert-detector": "oscar-hf convert-detector vinvl_vg_x152c4.pth vinvl-detector "
    "--labelmap VG-SGG-dicts-vgoi6-clipped.json",
    "detect": "oscar-hf detect --images photos/ --detector transformers "
    '--detector-kwargs \'{"name_or_path": "oscar-base-coco-captioning/detector"}\' --feature-dim 2054 --out regions',
    "build": "oscar-hf build caption --regions regions --annotations dataset_coco.json --out data/caption",
}

# Sub-commands that hand their arguments to an existing module's main: (module, attribute, argv prefix).
DELEGATED = {
    "convert": ("oscar_hf.convert_original_checkpoint", "main", ()),
    "convert-detector": ("oscar_hf.convert_vinvl_detector", "main", ()),
    "detect": ("oscar_hf.data.cli", "main", ("detect",)),
    "build": ("oscar_hf.data.cli", "main", ("build",)),
}
DELEGATED_HELP = {
    "convert": "original Oscar / VinVL checkpoint folder -> model folder (python -m oscar_hf.convert_original_checkpoint)",
    "convert-detector": "original VinVL detector checkpoint -> detector folder (python -m oscar_hf.convert_vinvl_detector)",
    "detect": "run a detector over an image folder into a regions dataset (python -m oscar_hf.data detect)",
    "build": "build a task dataset from the original files (python -m oscar_hf.data build)",
}
# Which pipeline each photo command needs from the model folder.
COMMAND_PIPELINES = {"caption": "oscar-captioning", "vqa": "oscar-vqa", "match": "oscar-retrieval"}


class CommandError(ValueError):
    """Bad command-line input; the message names the argument, the value and the fix."""


# ------------------------------------------------------------------------------------------------
# Loading a folder as a pipeline (also used by the demo app)
# ------------------------------------------------------------------------------------------------


def pipeline_task_of(folder: str | os.PathLike) -> str:
    """The Oscar pipeline task (`oscar-captioning`, `oscar-vqa`, `oscar-retrieval`) an exported folder runs."""
    from oscar_hf.registration import TASKS, task_for_model

    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"--model {os.fspath(folder)!r} has no config.json; pass a folder written by the converter "
            "(oscar-hf convert) or a recipe (output_dir/final)."
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    pipelines = list(config.get("custom_pipelines") or {})
    if pipelines:
        return pipelines[0]
    architectures = config.get("architectures") or []
    task = TASKS[task_for_model(architectures[0])].pipeline if architectures else None
    if task is None:
        raise CommandError(
            f"--model {os.fspath(folder)!r} holds a {architectures or 'model'} without a pipeline; caption, vqa and "
            "match need a captioning, VQA/GQA or retrieval folder."
        )
    return task


def load_pipeline(
    folder: str | os.PathLike,
    expected_task: str | None = None,
    device: str | None = None,
    detector: str | os.PathLike | None = None,
) -> Any:
    """The Oscar pipeline of an exported folder, built from this package's classes (no remote code runs).

    Args:
        folder: a folder written by `export_folder` (converter, recipes' `final/`).
        expected_task: the pipeline task the caller needs; another task is an error naming both.
        device: "cpu", "cuda", "cuda:1", ...; None picks CUDA when available.
        detector: a detector folder that overrides the one the folder names (`detector_name_or_path`).
    """
    import torch
    from transformers import pipeline

    from oscar_hf import modeling_oscar
    from oscar_hf.processors import OscarProcessor
    from oscar_hf.registration import register_pipelines

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"--model {os.fspath(folder)!r} is not a folder; pass an exported model folder (see README, "
            "'Get the weights')."
        )
    task = pipeline_task_of(folder)
    if expected_task is not None and task != expected_task:
        wanted = next(command for command, name in COMMAND_PIPELINES.items() if name == expected_task)
        raise CommandError(
            f"--model {os.fspath(folder)!r} is a {task} folder, but `{wanted}` needs an {expected_task} folder; "
            "pass a folder of that task."
        )
    architecture = json.loads((folder / "config.json").read_text(encoding="utf-8"))["architectures"][0]
    model = getattr(modeling_oscar, architecture).from_pretrained(folder).eval()
    processor = OscarProcessor.from_pretrained(folder)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    register_pipelines()
    return pipeline(task, model=model, processor=processor, detector=detector, device=device)


# ------------------------------------------------------------------------------------------------
# Photo commands
# ------------------------------------------------------------------------------------------------


def _check_images(paths: Sequence[str]) -> list[Path]:
    images = [Path(path) for path in paths]
    for image in images:
        if not image.is_file():
            raise FileNotFoundError(f"IMAGE {os.fspath(image)!r} does not exist; pass the path of a photo file.")
    return images


def _regions_of(pipe: Any, image: Path) -> dict[str, Any]:
    """The detector's regions of one photo (run once, then reused for the model and the drawing)."""
    from oscar_hf.processors.detection_oscar import load_rgb_image

    return pipe.detector([load_rgb_image(str(image))])[0]


def _regions_json(regions: dict[str, Any]) -> list[dict[str, Any]]:
    boxes = regions["boxes"].tolist()
    scores = regions["scores"].tolist() if "scores" in regions else [None] * len(boxes)
    return [
        {"tag": tag, "score": None if score is None else round(float(score), 4), "box": [round(v, 1) for v in box]}
        for tag, score, box in zip(regions.get("tags") or [""] * len(boxes), scores, boxes)
    ]


def _visualization_path(target: Path, image: Path, count: int) -> Path:
    """`target` for one photo; `target` with the photo's name appended for several."""
    return target if count == 1 else target.with_name(f"{target.stem}-{image.stem}{target.suffix or '.png'}")


def save_visualization(image: Path, regions: dict[str, Any], text: str, target: Path) -> Path:
    """Draws the regions, their tags and `text` on the photo and writes it to `target`."""
    from PIL import Image

    from oscar_hf.processors.visualization import draw_regions

    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(image) as photo:
        drawn = draw_regions(photo, regions["boxes"], regions.get("tags"), regions.get("scores"), text=text)
    drawn.save(target)
    return target


def _progress(items: Sequence[Any], enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not enabled or len(items) < 2, file=sys.stderr)


def run_caption(args: argparse.Namespace) -> list[dict[str, Any]]:
    images = _check_images(args.images)
    pipe = load_pipeline(args.model, "oscar-captioning", args.device, args.detector)
    options = {key: value for key, value in (("num_beams", args.num_beams), ("max_length", args.max_length)) if value}
    results = []
    for image in _progress(images, not args.no_progress, "caption"):
        regions = _regions_of(pipe, image)
        caption = pipe(regions, **options)[0]["generated_text"]
        result = {"image": str(image), "caption": caption, "regions": _regions_json(regions)}
        if args.save_visualization:
            target = _visualization_path(Path(args.save_visualization), image, len(images))
            result["visualization"] = str(save_visualization(image, regions, caption, target))
        results.append(result)
    return results


def run_vqa(args: argparse.Namespace) -> dict[str, Any]:
    if not args.question.strip():
        raise CommandError(f"--question {args.question!r} is empty; ask a question, e.g. --question 'what color?'.")
    (image,) = _check_images([args.image])
    pipe = load_pipeline(args.model, "oscar-vqa", args.device, args.detector)
    regions = _regions_of(pipe, image)
    answers = pipe(regions, question=args.question, top_k=args.top_k)
    answers = [{"answer": a["answer"], "score": round(float(a["score"]), 4)} for a in answers]
    result = {"image": str(image), "question": args.question, "answers": answers, "regions": _regions_json(regions)}
    if args.save_visualization:
        text = f"Q: {args.question}  A: {answers[0]['answer']}"
        result["visualization"] = str(save_visualization(image, regions, text, Path(args.save_visualization)))
    return result


def run_match(args: argparse.Namespace) -> dict[str, Any]:
    texts = [text for text in args.texts if text.strip()]
    if not texts:
        raise CommandError(f"--texts {args.texts!r}; pass one or more non-empty candidate captions.")
    (image,) = _check_images([args.image])
    pipe = load_pipeline(args.model, "oscar-retrieval", args.device, args.detector)
    regions = _regions_of(pipe, image)
    ranking = [{"text": r["text"], "score": round(float(r["score"]), 4)} for r in pipe(images=regions, texts=texts)]
    result = {"image": str(image), "ranking": ranking, "regions": _regions_json(regions)}
    if args.save_visualization:
        text = f"best match: {ranking[0]['text']} ({ranking[0]['score']:.2f})"
        result["visualization"] = str(save_visualization(image, regions, text, Path(args.save_visualization)))
    return result


def format_text(command: str, result: Any) -> str:
    """The human-readable form of a photo command's result."""
    if command == "caption":
        return "\n".join(f"{r['image']}: {r['caption']}" for r in result)
    if command == "vqa":
        return "\n".join(f"{a['score']:.4f}  {a['answer']}" for a in result["answers"])
    return "\n".join(f"{r['score']:.4f}  {r['text']}" for r in result["ranking"])


RUNNERS: dict[str, Callable[[argparse.Namespace], Any]] = {"caption": run_caption, "vqa": run_vqa, "match": run_match}


# ------------------------------------------------------------------------------------------------
# Parser and entry point
# ------------------------------------------------------------------------------------------------


def _photo_command(commands: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if name == "caption":
        parser.add_argument("images", nargs="+", metavar="IMAGE", help="photo files")
    else:
        parser.add_argument("image", metavar="IMAGE", help="a photo file")
    parser.add_argument("--model", required=True, help="an exported model folder (converter output, recipe final/)")
    parser.add_argument("--detector", default=None, help="detector folder overriding the one the model folder names")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    parser.add_argument("--output", choices=("text", "json"), default="text", help="text for people, json for scripts")
    parser.add_argument("--save-visualization", metavar="OUT.png", help="draw boxes, tags and the result into a file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Oscar / Oscar+ (VinVL): photos to captions, answers and matches; conversion and datasets.",
        epilog="examples:\n" + "\n".join(f"  {example}" for example in EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    caption = _photo_command(commands, "caption", "caption photos with a captioning folder")
    caption.add_argument("--num-beams", type=int, default=None, help="beam size (default: the folder's)")
    caption.add_argument("--max-length", type=int, default=None, help="caption length in tokens, [CLS] included")
    vqa = _photo_command(commands, "vqa", "answer a question about a photo with a VQA / GQA folder")
    vqa.add_argument("--question", required=True, help="the question")
    vqa.add_argument("--top-k", type=int, default=5, help="answers to show")
    match = _photo_command(commands, "match", "rank candidate captions for a photo with a retrieval folder")
    match.add_argument("--texts", nargs="+", required=True, help="candidate captions")
    for name, help_text in DELEGATED_HELP.items():
        # Listed for `--help`; the arguments are parsed by the delegated module (`oscar-hf NAME --help`).
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def _delegate(command: str, argv: Sequence[str]) -> int:
    """Runs the module main behind `command`; its usage line reads `oscar-hf COMMAND` and its help ends with an example."""
    import importlib

    module_name, attribute, prefix = DELEGATED[command]
    entry = getattr(importlib.import_module(module_name), attribute)
    program = sys.argv[0]
    sys.argv[0] = f"{PROG} {command}"  # argparse names the program after argv[0]
    try:
        return int(entry([*prefix, *argv]) or 0)
    except SystemExit as done:
        if "-h" not in argv and "--help" not in argv:
            return done.code if isinstance(done.code, int) else 2  # the module printed why
        print(f"\nexample:\n  {EXAMPLES[command]}")
        raise
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        sys.argv[0] = program


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `oscar-hf` and `python -m oscar_hf`; returns the exit code (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        result = RUNNERS[args.command](args)
    except (CommandError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.output == "json" else format_text(args.command, result))
    return 0


__all__ = ["build_parser", "load_pipeline", "main", "pipeline_task_of", "save_visualization"]


if __name__ == "__main__":
    sys.exit(main())
