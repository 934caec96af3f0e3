"""Convert an original Oscar / VinVL checkpoint folder into a transformers folder.

    python -m oscar_hf.convert_original_checkpoint SRC_DIR OUT_DIR --task captioning

SRC_DIR is what the original code saved: `pytorch_model.bin` (read with `weights_only=True`),
`config.json` (`model_type: "bert"` plus the Oscar fields) and `vocab.txt`. OUT_DIR gets
`model.safetensors`, `config.json` with an `auto_map`, the tokenizer files, `generation_config.json`
for captioning, and the flat remote code, so it loads with `AutoModel.from_pretrained(OUT_DIR,
trust_remote_code=True)`.

Every tensor of the source is either mapped to exactly one of ours or reported; a checkpoint that
lacks the head of the requested task is an error (the original only logged that at INFO level and
left the head random, which is how the v1 captioning checkpoint produced garbage captions).
"""

from __future__ import annotations

import argparse
import argparse as _argparse
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import BertTokenizerFast, GenerationConfig

from . import modeling_oscar
from .configuration_oscar import OscarConfig
from .registration import TASKS, export_folder, get_task


logger = logging.getLogger(__name__)

HEAD_PREFIXES = ("cls.", "classifier.")


def model_class_for(task: str) -> type:
    """The head class the task table names for `task`."""
    return getattr(modeling_oscar, get_task(task).model_class)


# (pattern, replacement) applied in order to every original key.
_RENAMES = [
    (r"\.gamma$", ".weight"),  # pre-1.0 LayerNorm names
    (r"\.beta$", ".bias"),
    (r"^bert\.img_embedding\.", "bert.region_embeddings.img_embedding."),
    (r"^bert\.LayerNorm\.", "bert.region_embeddings.LayerNorm."),
    # v1 captioning head (May 2020 release): top-level transform/decoder, no output bias.
    (r"^transform\.", "cls.predictions.transform."),
    (r"^decoder\.weight$", "cls.predictions.decoder.weight"),
]


class CheckpointLayoutError(ValueError):
    """The checkpoint does not have the tensors the requested task needs."""


def _weights_only_load(file: Path, what: str):
    """`torch.load(weights_only=True)` whose failures name the file and, for a refused pickle, its global.

    torch's own refusal message ends with the advice to retry with `weights_only=False`, which would
    let the file run code; that advice is left out on purpose.
    """
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: ([\w.]+)", text)
        if found:
            raise ValueError(
                f"{file}: refused to unpickle {what}: it references {found.group(1)}, which weights-only loading "
                f"does not allow (it could run code). Expected {what} holding only tensors and plain values. Fix: "
                "re-save it as `torch.save(model.state_dict(), ...)` on a trusted machine, or export safetensors."
            ) from None
        detail = next((line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line), "")
        raise ValueError(
            f"{file} is not a torch file ({detail or type(error).__name__}); expected {what} written by "
            "`torch.save`. Fix: check the path, or re-download a truncated file."
        ) from None
    except Exception as error:  # noqa: BLE001 - torch raises KeyError, RuntimeError, EOFError... on non-torch bytes
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"{file} is not a readable torch file ({first}); expected {what} written by `torch.save`. "
            "Fix: check the path, or re-download a truncated file."
        ) from None


def load_original_state_dict(src: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads `pytorch_model.bin` with `weights_only=True` (no code runs while unpickling)."""
    path = Path(src)
    file = path / "pytorch_model.bin" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"No pytorch_model.bin at {str(file)!r}: pass the original checkpoint folder.")
    state_dict = _weights_only_load(file, "the checkpoint's state dict")
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        kind = type(state_dict).__name__
        if isinstance(state_dict, dict):
            key, value = next((k, v) for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
            kind = f"dict whose entry {key!r} is {type(value).__name__}"
        raise CheckpointLayoutError(
            f"{file} holds a {kind}, not a state dict of tensors. Fix: pass the pytorch_model.bin the original "
            "code saved with `torch.save(model.state_dict(), ...)`."
        )
    return state_dict


def rename_original_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps original key names onto ours; the output bias of the v1 captioning head becomes zeros."""
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        new = key
        for pattern, replacement in _RENAMES:
            new = re.sub(pattern, replacement, new)
        if new == "cls.predictions.decoder.bias":
            continue  # the same tensor as cls.predictions.bias in checkpoints that carry it
        if new.startswith("module."):
            new = new[len("module.") :]  # saved from DataParallel
        if new in renamed:
            raise CheckpointLayoutError(f"Two original keys map onto {new!r} (second: {key!r}).")
        renamed[new] = tensor
    if "cls.predictions.decoder.weight" in renamed and "cls.predictions.bias" not in renamed:
        renamed["cls.predictions.bias"] = torch.zeros(renamed["cls.predictions.decoder.weight"].shape[0])
    return renamed


def _head_overrides(state_dict: dict[str, torch.Tensor], hidden: int, task: str) -> dict:
    """Reads the head's shape (labels, classifier kind, contrastive classes) from the weights."""
    overrides: dict = {}
    if "cls.seq_relationship.weight" in state_dict:
        overrides["num_contrast_classes"] = state_dict["cls.seq_relationship.weight"].shape[0]
    if "classifier.weight" in state_dict:
        overrides.update(classifier="linear", num_labels=state_dict["classifier.weight"].shape[0])
    elif "classifier.0.weight" in state_dict:
        last = max(int(k.split(".")[1]) for k in state_dict if k.startswith("classifier.") and k.endswith(".weight"))
        inner = state_dict["classifier.0.weight"].shape[0]
        in_features = state_dict["classifier.0.weight"].shape[1]
        overrides.update(
            classifier="mlp",
            num_labels=state_dict[f"classifier.{last}.weight"].shape[0],
            cls_hidden_scale=inner // hidden,
            pair_classifier_layernorm=last == 3,
        )
        if task == "nlvr2":
            overrides["num_choice"] = in_features // hidden
    return overrides


def _decoder_is_tied(state_dict: dict[str, torch.Tensor]) -> bool:
    decoder = state_dict.get("cls.predictions.decoder.weight")
    embeddings = state_dict.get("bert.embeddings.word_embeddings.weight")
    return decoder is not None and embeddings is not None and torch.equal(decoder, embeddings)


def read_training_args(src: str | os.PathLike) -> dict:
    """Reads the caption/retrieval lengths from the original `training_args.bin`.

    The file is a pickled `argparse.Namespace`. It is read with `weights_only=True` and only
    `argparse.Namespace` allowed, so no arbitrary code can run; call this only for files you trust.
    """
    file = Path(src) / "training_args.bin"
    if not file.is_file():
        raise FileNotFoundError(f"No training_args.bin in {str(src)!r}.")
    with torch.serialization.safe_globals([_argparse.Namespace]):
        args = _weights_only_load(file, "the training arguments (an argparse.Namespace)")
    if not isinstance(args, _argparse.Namespace):
        raise ValueError(f"{file} holds a {type(args).__name__}; expected the original argparse.Namespace.")
    values = vars(args)
    fields = {}
    if "max_seq_a_length" in values:
        fields["max_caption_length"] = int(values["max_seq_a_length"])
        if "max_seq_length" in values:
            fields["max_tag_length"] = int(values["max_seq_length"]) - int(values["max_seq_a_length"])
    if "max_img_seq_length" in values:
        fields["max_img_seq_length"] = int(values["max_img_seq_length"])
    return fields


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], config: OscarConfig, task: str, new_head: bool = False
) -> tuple[torch.nn.Module, list[str]]:
    """Builds the task model and loads the renamed weights, checking every key.

    Returns the model and the list of keys left out on purpose (heads of other tasks when
    `task="base"` or `new_head=True`).
    """
    model_class = model_class_for(task)
    model = model_class(config).eval()
    expected = set(model.state_dict())
    if config.tie_word_embeddings and "cls.predictions.decoder.weight" in expected:
        state_dict = {k: v for k, v in state_dict.items() if k != "cls.predictions.decoder.weight"}
        expected.discard("cls.predictions.decoder.weight")
    # The decoder bias is the head's `bias` under a second name (tied, as in BERT).
    expected.discard("cls.predictions.decoder.bias")
    if task == "base":
        state_dict = {k[len("bert.") :]: v for k, v in state_dict.items() if k.startswith("bert.")} | {
            k: v for k, v in state_dict.items() if not k.startswith("bert.")
        }
    given = set(state_dict)
    missing = sorted(expected - given)
    unexpected = sorted(given - expected)
    dropped = [k for k in unexpected if k.startswith(HEAD_PREFIXES) and (task == "base" or new_head)]
    unexpected = [k for k in unexpected if k not in dropped]
    missing_heads = [k for k in missing if k.startswith(HEAD_PREFIXES)]
    missing_trunk = [k for k in missing if not k.startswith(HEAD_PREFIXES)]
    if missing_trunk or unexpected or (missing_heads and not new_head):
        raise CheckpointLayoutError(
            f"Checkpoint does not fit task {task!r} ({model_class.__name__}).\n"
            f"  missing trunk keys: {missing_trunk[:8]}{' ...' if len(missing_trunk) > 8 else ''}\n"
            f"  missing head keys: {missing_heads}\n"
            f"  unexpected keys: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}\n"
            "Pick the --task that matches the checkpoint, or pass --new-head to start a fresh head "
            "(e.g. fine-tuning VQA from a pre-trained checkpoint)."
        )
    if missing_heads:
        logger.warning("Head initialised from scratch (not in the checkpoint): %s", missing_heads)
    for key in expected & given:
        if model.state_dict()[key].shape != state_dict[key].shape:
            raise CheckpointLayoutError(
                f"{key}: checkpoint shape {tuple(state_dict[key].shape)} != model shape "
                f"{tuple(model.state_dict()[key].shape)}; check config.json against the weights."
            )
    model.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False)
    if config.tie_word_embeddings and hasattr(model, "tie_weights"):
        model.tie_weights()
    return model, dropped


def convert_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike | None,
    task: str,
    vocab: str | os.PathLike | None = None,
    new_head: bool = False,
    read_training_args_file: bool = False,
    max_seq_length: int | None = None,
    detector: str | os.PathLike | None = None,
    overwrite: bool = False,
    **config_overrides,
) -> torch.nn.Module:
    """Converts `src` for `task`; writes the folder to `out` when given and returns the model.

    `detector` is a converted detector folder (`python -m oscar_hf.convert_vinvl_detector`): it is
    copied into `out/detector` and the processor names it, so the pipelines run on raw photos.
    """
    get_task(task)
    if out is not None:
        check_output_folder(src, out, overwrite)
    if detector is not None and not (Path(detector) / "config.json").is_file():
        raise FileNotFoundError(
            f"--detector {os.fspath(detector)!r} is not a detector folder (no config.json); convert the VinVL "
            "checkpoint first: python -m oscar_hf.convert_vinvl_detector vinvl_vg_x152c4.pth --labelmap "
            "VG-SGG-dicts-vgoi6-clipped.json DETECTOR_DIR"
        )
    raw = rename_original_keys(load_original_state_dict(src))
    base = OscarConfig.from_original(src)
    overrides = _head_overrides(raw, base.hidden_size, task)
    if "cls.predictions.decoder.weight" in raw:
        overrides["tie_word_embeddings"] = _decoder_is_tied(raw)
    if task == "retrieval":
        overrides["num_labels"] = 2
    if read_training_args_file:
        overrides.update(read_training_args(src))
    overrides.update(config_overrides)
    config = OscarConfig.from_original(src, **overrides)
    model, dropped = convert_state_dict(raw, config, task, new_head=new_head)
    if dropped:
        logger.info("Left out heads of other tasks: %s", dropped)
    if out is None:
        return model

    out = Path(out)
    if task == "captioning":
        # The paper's decoding: beam 5, 20 tokens counting [CLS], the original beam search.
        model.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
            decoder_start_token_id=config.bos_token_id,
            max_length=20,
            num_beams=5,
            original_decoding=True,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory() as scratch:
            tokenizer = _load_tokenizer(Path(src), Path(scratch), vocab)
            processor = _make_processor(tokenizer, config, max_seq_length or get_task(task).text_length)
            if detector is not None:
                # The folder carries its detector; "detector" is resolved against the model folder.
                shutil.copytree(detector, work / "detector")
            export_folder(model, work, task=task, processor=processor, detector="detector" if detector else None)
        _move_into_place(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return model


def check_output_folder(src: str | os.PathLike, out: str | os.PathLike, overwrite: bool) -> None:
    """The converter never writes into SRC, and replaces files of an existing OUT only with `overwrite`."""
    source, target = Path(src).resolve(), Path(out).resolve()
    if target == source or source in target.parents:
        raise ValueError(
            f"OUT {os.fspath(out)!r} is {'the source folder' if target == source else 'inside the source folder'} "
            f"{os.fspath(src)!r}; the converter never writes into the original checkpoint. "
            "Fix: pass a new folder outside SRC as OUT."
        )
    if target.exists() and not target.is_dir():
        raise ValueError(f"OUT {os.fspath(out)!r} is a file. Fix: pass a folder path.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ValueError(
            f"OUT {os.fspath(out)!r} is not empty. Fix: pass a new or empty folder, or --overwrite to replace "
            "the files the converter writes (other files in it are kept)."
        )


def _move_into_place(work: Path, out: Path) -> None:
    """A new OUT is the finished folder renamed; an existing one gets only the files written, each replaced."""
    if not out.exists():
        os.replace(work, out)
        return
    for file in sorted(path for path in work.rglob("*") if path.is_file()):
        target = out / file.relative_to(work)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(file, target)


def _load_tokenizer(src: Path, scratch: Path, vocab: str | os.PathLike | None) -> BertTokenizerFast:
    vocab_file = Path(vocab) if vocab is not None else src / "vocab.txt"
    if not vocab_file.is_file():
        raise FileNotFoundError(
            f"No vocab.txt at {str(vocab_file)!r}; original checkpoints ship one (bert-base-uncased WordPiece). "
            "Pass --vocab PATH."
        )
    special = src / "special_tokens_map.json"
    lower = True
    if special.is_file():
        lower = json.loads(special.read_text(encoding="utf-8")).get("do_lower_case", True)
    # Loading from a folder holding vocab.txt works the same on transformers 4.x and 5.x (the
    # constructors' vocabulary arguments differ between them).
    shutil.copyfile(vocab_file, scratch / "vocab.txt")
    return BertTokenizerFast.from_pretrained(scratch, do_lower_case=lower)


def _make_processor(tokenizer, config: OscarConfig, max_seq_length: int):
    """The `OscarProcessor` matching the converted model (region width, slots, caption layout)."""
    from .processors import OscarProcessor, OscarRegionFeatureProcessor

    image_processor = OscarRegionFeatureProcessor(
        region_feature_dim=config.img_feature_dim - 6, max_img_seq_length=config.max_img_seq_length
    )
    return OscarProcessor(
        image_processor,
        tokenizer,
        max_seq_length=max_seq_length,
        max_caption_length=config.max_caption_length,
        max_tag_length=config.max_tag_length,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example:\n  python -m oscar_hf.convert_original_checkpoint checkpoint-29-66420 oscar-base-coco-captioning "
        "--task captioning --detector vinvl-detector",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="original checkpoint folder (pytorch_model.bin, config.json, vocab.txt)")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--vocab", default=None, help="vocab.txt when the folder has none")
    parser.add_argument("--new-head", action="store_true", help="start the task head from scratch if absent")
    parser.add_argument(
        "--read-training-args",
        action="store_true",
        help="read caption/region lengths from training_args.bin (allow-listed unpickling; trusted files only)",
    )
    parser.add_argument("--max-caption-length", type=int, default=None, help="caption slot width (max_seq_a_length)")
    parser.add_argument("--max-tag-length", type=int, default=None, help="tag tokens after the caption slot")
    parser.add_argument("--max-img-seq-length", type=int, default=None, help="region slots")
    parser.add_argument("--max-seq-length", type=int, default=None, help="processor text length (task default)")
    parser.add_argument(
        "--detector",
        default=None,
        help="a converted detector folder (convert_vinvl_detector output), copied into OUT_DIR/detector",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the files it writes in a non-empty OUT_DIR (others kept)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    overrides = {
        key: value
        for key, value in (
            ("max_caption_length", args.max_caption_length),
            ("max_tag_length", args.max_tag_length),
            ("max_img_seq_length", args.max_img_seq_length),
        )
        if value is not None
    }
    try:
        _convert_from_args(args, overrides)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"Wrote {args.out}")


def _convert_from_args(args: argparse.Namespace, overrides: dict) -> None:
    convert_checkpoint(
        args.src,
        args.out,
        args.task,
        vocab=args.vocab,
        new_head=args.new_head,
        read_training_args_file=args.read_training_args,
        max_seq_length=args.max_seq_length,
        detector=args.detector,
        overwrite=args.overwrite,
        **overrides,
    )


if __name__ == "__main__":
    main()
