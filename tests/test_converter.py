"""The original-checkpoint converter: key layouts, strictness, the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from oscar_hf.convert_original_checkpoint import (
    CheckpointLayoutError,
    convert_checkpoint,
    load_original_state_dict,
    rename_original_keys,
)


def copy_case(fixture_dir, name, tmp_path, edit=None):
    """Writes a copy of a fixture checkpoint, optionally edited, into tmp_path/name."""
    src = fixture_dir / name
    out = tmp_path / name
    out.mkdir()
    state_dict = torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
    if edit is not None:
        state_dict = edit(state_dict)
    torch.save(state_dict, out / "pytorch_model.bin")
    (out / "config.json").write_text((src / "config.json").read_text())
    (out / "vocab.txt").write_text((fixture_dir / "vocab.txt").read_text())
    return out


def classification_logits(model, fixture_dir, name):
    inputs = load_file(fixture_dir / name / "inputs.safetensors")
    inputs.pop("labels", None)
    with torch.no_grad():
        return model.eval()(**inputs).logits


def test_gamma_beta_layernorm_names(fixture_dir, tmp_path):
    def to_gamma_beta(sd):
        return {
            (k[: -len(".weight")] + ".gamma" if "LayerNorm" in k and k.endswith(".weight") else k)
            if not ("LayerNorm" in k and k.endswith(".bias"))
            else k[: -len(".bias")] + ".beta": v
            for k, v in sd.items()
        }

    name = "seqcls_mlp_ce"
    old = copy_case(fixture_dir, name, tmp_path, to_gamma_beta)
    assert any(k.endswith(".gamma") for k in load_original_state_dict(old))
    reference = convert_checkpoint(fixture_dir / name, None, "classification")
    converted = convert_checkpoint(old, None, "classification")
    torch.testing.assert_close(
        classification_logits(converted, fixture_dir, name), classification_logits(reference, fixture_dir, name)
    )


def test_v1_caption_head_layout(fixture_dir, tmp_path):
    """v1 (May 2020) captioning checkpoints: top-level transform.* and decoder.weight, no bias."""

    def to_v1(sd):
        out = {}
        for key, value in sd.items():
            if key == "cls.predictions.bias":
                continue
            out[key.replace("cls.predictions.", "")] = value
        return out

    name = "caption_train"
    v1 = copy_case(fixture_dir, name, tmp_path, to_v1)
    renamed = rename_original_keys(load_original_state_dict(v1))
    assert "cls.predictions.decoder.weight" in renamed and "transform.dense.weight" not in renamed
    assert torch.equal(renamed["cls.predictions.bias"], torch.zeros_like(renamed["cls.predictions.bias"]))
    model = convert_checkpoint(v1, None, "captioning")
    reference = convert_checkpoint(fixture_dir / name, None, "captioning")
    with torch.no_grad():
        reference.cls.predictions.bias.zero_()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)


def test_missing_head_is_an_error_unless_new_head(fixture_dir, tmp_path):
    name = "seqcls_linear_bce"
    headless = copy_case(
        fixture_dir, name, tmp_path, lambda sd: {k: v for k, v in sd.items() if "classifier" not in k}
    )
    with pytest.raises(CheckpointLayoutError, match=r"missing head keys: \['classifier.bias', 'classifier.weight'\]"):
        convert_checkpoint(headless, None, "classification")
    model = convert_checkpoint(headless, None, "classification", new_head=True, num_labels=7)
    assert model.classifier.out_features == 7


def test_unexpected_and_wrong_task_keys(fixture_dir, tmp_path):
    name = "seqcls_linear_bce"
    extra = copy_case(
        fixture_dir, name, tmp_path, lambda sd: {**sd, "bert.encoder.layer.9.output.dense.weight": torch.zeros(1)}
    )
    with pytest.raises(CheckpointLayoutError, match="unexpected keys"):
        convert_checkpoint(extra, None, "classification")
    with pytest.raises(CheckpointLayoutError, match="Pick the --task"):
        convert_checkpoint(fixture_dir / "pretrain_contrast3", None, "classification")


def test_base_task_drops_heads_and_keeps_the_trunk(fixture_dir):
    base = convert_checkpoint(fixture_dir / "pretrain_contrast3", None, "base")
    full = convert_checkpoint(fixture_dir / "pretrain_contrast3", None, "pretraining")
    for key, value in base.state_dict().items():
        torch.testing.assert_close(full.bert.state_dict()[key], value)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        convert_checkpoint(tmp_path, None, "classification")


def test_command_line_writes_a_loadable_folder(fixture_dir, tmp_path):
    out = tmp_path / "converted"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "oscar_hf.convert_original_checkpoint",
            str(fixture_dir / "caption_decode"),
            str(out),
            "--task",
            "captioning",
            "--vocab",
            str(fixture_dir / "vocab.txt"),
            "--max-caption-length",
            "12",
            "--max-tag-length",
            "10",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "modeling_oscar.py",
        "configuration_oscar.py",
    } <= names
    assert "tokenizer.json" in names or "vocab.txt" in names
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert config.max_caption_length == 12 and config.use_img_layernorm
    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True)
    assert getattr(model.generation_config, "original_decoding", False)
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("[MASK]") == 103
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert processor.max_caption_length == 12 and processor.max_tag_length == 10
    prompt = processor.caption_prompt(["dog couch"], region_features=[torch.rand(2, 2054)])
    assert prompt["tag_input_ids"].shape == (1, 10)
