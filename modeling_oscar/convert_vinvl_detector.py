"""Convert the released VinVL detector (`vinvl_vg_x152c4.pth`) into a transformers folder.

    python -m oscar_hf.convert_vinvl_detector vinvl_vg_x152c4.pth --labelmap VG-SGG-dicts-vgoi6-clipped.json OUT

The checkpoint is read with `torch.load(weights_only=True)` (no code runs). It may be maskrcnn_benchmark's
`{"model": state_dict, ...}` or a flat state dict, with or without the `module.` prefix of a DDP save. The
`attribute.feature_extractor.*` tensors are the box head's res5 saved a second time: they are checked to be
equal to `roi_heads.box.feature_extractor.*` and dropped. Every other key must match the native model
exactly (a missing, unexpected or mis-shaped key is an error naming it); widths, depths and class counts
are read from the tensor shapes, so reduced test checkpoints convert too.

The label map (`VG-SGG-dicts-vgoi6-clipped.json`) gives the class names (`idx_to_label` / `label_to_idx`,
1-based, 0 = background) and attribute names (`idx_to_attribute` / `attribute_to_idx`, 0 = no attribute);
their counts must match the checkpoint's.

OUT receives `model.safetensors`, `config.json`, `preprocessor_config.json` and the flat remote code
(`configuration_vinvl.py`, `modeling_vinvl.py`, `image_processing_vinvl.py`), so that
`AutoModel.from_pretrained(OUT, trust_remote_code=True)` works without this package. The folder is written
next to OUT under a temporary name and renamed when complete; a non-empty OUT needs `--overwrite`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from oscar_hf.processors.configuration_vinvl import VinVLDetectorConfig
from oscar_hf.processors.image_processing_vinvl import VinVLImageProcessor
from oscar_hf.processors.modeling_vinvl import VinVLDetector


DUPLICATE_PREFIX = "attribute.feature_extractor."
SHARED_PREFIX = "roi_heads.box.feature_extractor."


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


def load_original_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an original checkpoint, `module.` stripped. Accepts `{"model": sd}` or a flat `sd`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist; pass the path of vinvl_vg_x152c4.pth.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a plain tensor checkpoint"
        raise ValueError(
            f"checkpoint '{path}' cannot be read with torch.load(weights_only=True) ({error}); expected a "
            "maskrcnn_benchmark checkpoint holding plain tensors."
        ) from error
    if isinstance(loaded, Mapping) and "model" in loaded and isinstance(loaded["model"], Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping) or not loaded:
        raise ValueError(
            f"checkpoint '{path}' holds {type(loaded).__name__}; expected a state dict or {{'model': state dict}}."
        )
    state_dict = {}
    for key, value in loaded.items():
        if not torch.is_tensor(value):
            raise ValueError(
                f"checkpoint key '{key}' holds {type(value).__name__}, not a tensor; expected a state dict."
            )
        state_dict[key[len("module.") :] if key.startswith("module.") else key] = value
    return state_dict


def read_label_map(path: str | Path) -> tuple[dict[int, str], list[str]]:
    """`(id2label, attribute_names)` from a VinVL label map; index 0 is background / no attribute."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label map '{path}' does not exist; pass VG-SGG-dicts-vgoi6-clipped.json.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"label map '{path}' is not JSON ({error}); pass VG-SGG-dicts-vgoi6-clipped.json.") from error

    def names(kind: str, background: str) -> list[str]:
        index_to_name = data.get(f"idx_to_{kind}")
        name_to_index = data.get(f"{kind}_to_idx")
        if index_to_name is None and name_to_index is None:
            raise ValueError(
                f"label map '{path}' has neither idx_to_{kind} nor {kind}_to_idx; expected VinVL's label map."
            )
        table = (
            {int(i): str(n) for i, n in index_to_name.items()}
            if index_to_name is not None
            else {int(i): str(n) for n, i in name_to_index.items()}
        )
        table.pop(0, None)
        if sorted(table) != list(range(1, len(table) + 1)):
            raise ValueError(
                f"label map '{path}': the {kind} ids are not 1..{len(table)} (0 is reserved for {background})."
            )
        return [background] + [table[i] for i in range(1, len(table) + 1)]

    classes = names("label", "__background__")
    attributes = (
        names("attribute", "__no_attribute__") if ("idx_to_attribute" in data or "attribute_to_idx" in data) else None
    )
    if attributes is None:
        raise ValueError(f"label map '{path}' has no attribute_to_idx / idx_to_attribute; expected VinVL's label map.")
    return dict(enumerate(classes)), attributes


# ------------------------------------------------------------------------------------------------
# Shapes -> config, and the key-for-key check
# ------------------------------------------------------------------------------------------------


def _shape(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"checkpoint is missing key '{key}'; it is not a VinVL C4 detector checkpoint.")
    return tuple(state_dict[key].shape)


def _count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.conv1\.weight$")
    indices = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def config_from_state_dict(state_dict: Mapping[str, torch.Tensor], **overrides: Any) -> VinVLDetectorConfig:
    """A config whose widths, depths and counts are read from the checkpoint's tensor shapes."""
    stem = _shape(state_dict, "backbone.body.stem.conv1.weight")[0]
    bottleneck, per_group = _shape(state_dict, "backbone.body.layer1.0.conv2.weight")[:2]
    res2_out = _shape(state_dict, "backbone.body.layer1.0.conv3.weight")[0]
    num_groups = bottleneck // per_group
    stages = [_count_blocks(state_dict, f"backbone.body.layer{i}.") for i in (1, 2, 3)]
    head_blocks = _count_blocks(state_dict, "roi_heads.box.feature_extractor.head.layer4.")
    num_anchors = _shape(state_dict, "rpn.head.cls_logits.weight")[0]
    values: dict[str, Any] = dict(
        stage_block_counts=stages,
        head_block_count=head_blocks,
        num_groups=num_groups,
        width_per_group=per_group,
        stem_out_channels=stem,
        res2_out_channels=res2_out,
        backbone_out_channels=_shape(state_dict, "rpn.head.conv.weight")[0],
        num_classes=_shape(state_dict, "roi_heads.box.predictor.cls_score.weight")[0],
        num_attributes=_shape(state_dict, "attribute.predictor.attr_score.weight")[0],
        class_embedding_dim=_shape(state_dict, "attribute.predictor.cls_embedding.weight")[1],
        attribute_embedding_dim=_shape(state_dict, "attribute.predictor.fc_attr.weight")[0],
    )
    values.update(overrides)
    config = VinVLDetectorConfig(**values)
    expected_anchors = len(config.anchor_sizes) * len(config.anchor_aspect_ratios)
    if num_anchors != expected_anchors:
        raise ValueError(
            f"rpn.head.cls_logits.weight has {num_anchors} anchors per cell but the anchor sizes x ratios give "
            f"{expected_anchors}; pass matching anchor_sizes / anchor_aspect_ratios."
        )
    return config


def drop_duplicated_attribute_extractor(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checks that every `attribute.feature_extractor.*` tensor equals its box-head twin, then drops them."""
    kept = {}
    for key, value in state_dict.items():
        if not key.startswith(DUPLICATE_PREFIX):
            kept[key] = value
            continue
        twin = SHARED_PREFIX + key[len(DUPLICATE_PREFIX) :]
        if twin not in state_dict:
            raise ValueError(
                f"checkpoint key '{key}' has no twin '{twin}'; the attribute head must share the box head's res5."
            )
        if state_dict[twin].shape != value.shape or not torch.equal(state_dict[twin], value):
            raise ValueError(
                f"checkpoint key '{key}' differs from '{twin}'; the native detector shares one res5 head between the "
                "box and attribute heads (SHARE_BOX_FEATURE_EXTRACTOR True) and cannot hold two."
            )
    return kept


def check_state_dict(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Raises on the first missing, unexpected or mis-shaped key (named), comparing with the native model."""
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    missing = [key for key in expected if key not in state_dict]
    if missing:
        raise ValueError(
            f"checkpoint is missing key '{missing[0]}' ({len(missing)} missing in all); it is not a complete VinVL "
            "detector checkpoint."
        )
    unexpected = [key for key in state_dict if key not in expected]
    if unexpected:
        raise ValueError(
            f"checkpoint has unexpected key '{unexpected[0]}' ({len(unexpected)} in all); the native detector has no "
            "such tensor (a different architecture, or a training-only head?)."
        )
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != shape:
            raise ValueError(
                f"checkpoint key '{key}' has shape {tuple(state_dict[key].shape)}, expected {shape} from the other "
                "tensors' widths; the checkpoint is inconsistent."
            )


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], **config_overrides: Any
) -> tuple[VinVLDetectorConfig, dict[str, torch.Tensor]]:
    """Original tensors -> `(config, native state dict)`, checked key for key."""
    state_dict = drop_duplicated_attribute_extractor(state_dict)
    config = config_from_state_dict(state_dict, **config_overrides)
    with torch.device("meta"):
        reference = VinVLDetector(config)
    check_state_dict(state_dict, reference)
    return config, {key: value.to(torch.float32).contiguous() for key, value in state_dict.items()}


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def convert(
    checkpoint: str | Path,
    output_dir: str | Path,
    labelmap: str | Path | None = None,
    overwrite: bool = False,
    **config_overrides: Any,
) -> Path:
    """Converts `checkpoint` (+ label map) into a self-contained folder at `output_dir`; returns it."""
    checkpoint, output_dir = Path(checkpoint).resolve(), Path(output_dir).resolve()
    if output_dir == checkpoint.parent or checkpoint.is_relative_to(output_dir):
        raise ValueError(
            f"output folder '{output_dir}' holds the checkpoint '{checkpoint}'; write the converted model elsewhere."
        )
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise ValueError(f"output folder '{output_dir}' exists and is not empty; pass --overwrite to replace it.")

    state_dict = load_original_state_dict(checkpoint)
    if labelmap is not None:
        id2label, attribute_names = read_label_map(labelmap)
        counts = {
            "classes": (len(id2label), _shape(state_dict, "roi_heads.box.predictor.cls_score.weight")[0]),
            "attributes": (len(attribute_names), _shape(state_dict, "attribute.predictor.attr_score.weight")[0]),
        }
        for kind, (from_map, from_checkpoint) in counts.items():
            if from_map != from_checkpoint:
                raise ValueError(
                    f"label map '{labelmap}' has {from_map - 1} {kind} (+1 for index 0) but the checkpoint '{checkpoint}' "
                    f"has {from_checkpoint}; pass the label map the checkpoint was trained with."
                )
        config_overrides = {"id2label": id2label, "attribute_names": attribute_names, **config_overrides}
    config, native = convert_state_dict(state_dict, **config_overrides)

    model = VinVLDetector(config)
    model.load_state_dict(native, strict=True)
    model.eval()
    processor = VinVLImageProcessor(
        min_size=config.min_size_test,
        max_size=config.max_size_test,
        pixel_mean=config.pixel_mean,
        pixel_std=config.pixel_std,
    )
    # Writes auto_map and copies the flat remote-code files next to the weights.
    config.register_for_auto_class()
    model.register_for_auto_class("AutoModel")
    processor.register_for_auto_class("AutoImageProcessor")

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        if output_dir.exists():
            shutil.rmtree(output_dir) if output_dir.is_dir() else output_dir.unlink()
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="the original detector checkpoint, e.g. vinvl_vg_x152c4.pth")
    parser.add_argument("output_dir", help="folder to write (model.safetensors, config.json, remote code)")
    parser.add_argument("--labelmap", help="VG-SGG-dicts-vgoi6-clipped.json: class and attribute names")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument(
        "--nms-implementation", choices=("legacy", "torchvision"), default="legacy",
        help="legacy: the release that made the published features (default); torchvision: the repository head",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.labelmap is None:
        print("warning: no --labelmap; class and attribute names will be placeholders (class_1, attribute_1, ...).")
    out = convert(
        args.checkpoint, args.output_dir, labelmap=args.labelmap, overwrite=args.overwrite,
        nms_implementation=args.nms_implementation,
    )  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
