"""Bad inputs to the original-checkpoint converter: errors that name the file, the value and the fix."""

from __future__ import annotations

import argparse
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import torch

from oscar_hf.convert_original_checkpoint import (
    CheckpointLayoutError,
    check_output_folder,
    convert_checkpoint,
    load_original_state_dict,
    read_training_args,
)


def raises(error: type, *fragments: str):
    pattern = "".join(f"(?=.*{re.escape(fragment)})" for fragment in fragments)
    return pytest.raises(error, match=re.compile(pattern, re.S))


@pytest.fixture
def source(fixture_dir, tmp_path):
    """A copy of a small original checkpoint folder."""
    folder = tmp_path / "original"
    shutil.copytree(fixture_dir / "seqcls_linear_bce", folder)
    shutil.copyfile(fixture_dir / "vocab.txt", folder / "vocab.txt")
    return folder


@pytest.mark.parametrize(
    "content",
    [b"hello, not a checkpoint", b"", b"PK\x03\x04 truncated zip", b"\x80\x02}q\x00"],
    ids=["text", "empty", "truncated-zip", "truncated-pickle"],
)
def test_a_file_that_is_not_a_torch_file_is_named(tmp_path, content):
    (tmp_path / "pytorch_model.bin").write_bytes(content)
    with raises(ValueError, str(tmp_path / "pytorch_model.bin"), "torch file", "torch.save"):
        load_original_state_dict(tmp_path)


def test_a_truncated_real_checkpoint_is_named(source, tmp_path):
    data = (source / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with raises(ValueError, str(tmp_path / "pytorch_model.bin"), "re-download"):
        load_original_state_dict(tmp_path)


@pytest.mark.parametrize(
    "payload, global_name",
    [
        ({"w": torch.zeros(2), "parser": argparse.ArgumentParser}, "argparse.ArgumentParser"),
        ({"w": torch.zeros(2), "path": pathlib.PurePosixPath("x")}, "pathlib.PurePosixPath"),
    ],
)
def test_weights_only_refusal_names_the_file_and_global_without_the_unsafe_advice(tmp_path, payload, global_name):
    torch.save(payload, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError) as caught:
        load_original_state_dict(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "pytorch_model.bin") in message and global_name in message
    assert "holding only tensors" in message and "Fix:" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message


def test_a_pickled_model_object_is_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "pytorch_model.bin")
    with raises(CheckpointLayoutError, "holds a list", "state dict of tensors"):
        load_original_state_dict(tmp_path)
    torch.save({"w": torch.zeros(2), "step": 3}, tmp_path / "pytorch_model.bin")
    with raises(CheckpointLayoutError, "'step' is int", "state dict of tensors"):
        load_original_state_dict(tmp_path)


def test_training_args_that_are_not_a_namespace(tmp_path):
    torch.save({"max_seq_a_length": 20}, tmp_path / "training_args.bin")
    with raises(ValueError, "holds a dict", "argparse.Namespace"):
        read_training_args(tmp_path)
    (tmp_path / "training_args.bin").write_bytes(b"garbage")
    with raises(ValueError, "training_args.bin", "torch file"):
        read_training_args(tmp_path)


@pytest.mark.parametrize("where", ["same", "inside", "nested"])
def test_out_equal_to_or_inside_src_is_refused(source, where):
    out = {"same": source, "inside": source / "converted", "nested": source / "a" / "b"}[where]
    with raises(ValueError, str(source), "never writes into the original checkpoint", "Fix"):
        check_output_folder(source, out, overwrite=True)


def test_non_empty_out_needs_overwrite(source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with raises(ValueError, str(out), "is not empty", "--overwrite"):
        convert_checkpoint(source, out, "classification")
    (tmp_path / "file").write_text("x")
    with raises(ValueError, "is a file", "folder"):
        check_output_folder(source, tmp_path / "file", overwrite=True)


def test_command_line_error_is_one_line_without_traceback(source, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "oscar_hf.convert_original_checkpoint", str(source), str(source), "--task", "vqa"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "never writes into the original checkpoint" in result.stderr
