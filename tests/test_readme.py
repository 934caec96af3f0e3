"""The README's code runs: the offline Python blocks as written, the pipeline and command-line blocks with
their placeholder ids and photo names replaced by tiny exported folders and sample photos, and every
command line it shows names a real command. Links and images it (and docs/) shows exist.

(docs/pipelines.md's blocks run in tests/test_pipelines.py, docs/data.md's commands in the data CLI tests.)
"""

from __future__ import annotations

import re
import shlex

import pytest
import torch
from support import REPO_ROOT
from support.folders import export_tiny_folders, sample_photos

from oscar_hf.processors.cli import main


PLACEHOLDERS = {
    "org/oscar-base-coco-captioning": "oscar-captioning",
    "org/oscar-base-vqa": "oscar-vqa",
    "org/oscar-base-coco-retrieval": "oscar-retrieval",
    "oscar-base-coco-captioning": "oscar-captioning",
    "oscar-base-vqa": "oscar-vqa",
    "oscar-base-coco-retrieval": "oscar-retrieval",
}


def readme() -> str:
    return (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def blocks(section: str, language: str) -> list[str]:
    text = readme()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(rf"```{language}\n(.*?)```", text[start : end if end != -1 else None], flags=re.S)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return export_tiny_folders(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return sample_photos(tmp_path_factory.mktemp("photos"))


def replace_placeholders(text: str, folders: dict, photos: list, tmp_path) -> str:
    for placeholder, task in PLACEHOLDERS.items():  # longest ("org/...") first
        text = text.replace(placeholder, str(folders[task]))
    return (
        text.replace("other.jpg", str(photos[1]))
        .replace("photo.jpg", str(photos[2]))
        .replace("captioned.png", str(tmp_path / "captioned.png"))
        .replace("max_length=20", "max_length=8")  # the tiny folders' caption slot is 12 tokens
    )


def test_quickstart_runs():
    found = blocks("Quickstart", "python")
    assert found
    torch.manual_seed(0)
    for block in found:
        exec(compile(block, "README.md", "exec"), {})


def test_pipelines_block_runs_on_exported_folders(folders, photos, tmp_path):
    (block,) = blocks("Pipelines", "python")
    assert "org/" in block  # the placeholders are there, and marked as such
    exec(compile(replace_placeholders(block, folders, photos, tmp_path), "README.md", "exec"), {})


def test_command_line_block(folders, photos, tmp_path, capsys):
    """The photo commands run as shown (on tiny folders); the others name a sub-command that exists."""
    (block,) = blocks("Command line", "bash")
    lines = [line.split("  #")[0] for line in block.strip().splitlines()]
    assert {shlex.split(line)[1] for line in lines} == {
        "caption",
        "vqa",
        "match",
        "convert",
        "convert-detector",
        "detect",
        "build",
    }
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "oscar-hf"
        if argv[1] in ("caption", "vqa", "match"):
            argv = shlex.split(replace_placeholders(line, folders, photos, tmp_path))
            assert main(argv[1:]) == 0, capsys.readouterr().err
        else:
            with pytest.raises(SystemExit) as done:
                main([argv[1], "--help"])
            assert done.value.code == 0
    assert (tmp_path / "captioned-other.png").is_file() or any(tmp_path.glob("captioned-*.png"))


def test_every_shown_command_exists():
    """Each `python -m MODULE` in the README is an importable module; each `oscar-hf X` a sub-command."""
    import importlib.util

    text = readme()
    for module in sorted(set(re.findall(r"python -m (oscar_hf[\w.]*)", text))):
        assert importlib.util.find_spec(module) is not None, module
    commands = {"caption", "vqa", "match", "convert", "convert-detector", "detect", "build"}
    assert set(re.findall(r"oscar-hf ([a-z-]+)", text)) <= commands


def test_links_and_images_exist():
    for document in [
        REPO_ROOT / "README.md",
        *sorted((REPO_ROOT / "docs").glob("*.md")),
        REPO_ROOT / "demo" / "README.md",
    ]:
        text = document.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path = (document.parent / target).resolve()
            assert path.exists(), f"{document.name} links {target}"
            if path.suffix == ".png":
                assert path.stat().st_size < 300_000, f"{target} is over 300 KB"
