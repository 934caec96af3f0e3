"""What the test modules share: fixture locations, tiny configs, the package blocker, isolated runs.

Test modules import from here (and from `data_samples` for files in the original data formats),
never from each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES_ROOT = REPO_ROOT / "tests" / "fixtures"
# transformers 4.57 + huggingface_hub 0.36 in a side directory (`make compat-4.57`).
TF457_TARGET = Path(os.environ.get("OSCAR_TF457_TARGET", REPO_ROOT / ".cache" / "tf457"))


# Prepended to scripts that load exported folders in a fresh interpreter: makes `import oscar_hf`
# fail (and checks that it does), so the folder must work as remote code alone.
BLOCK_PACKAGE = """
import importlib.abc, json, sys
class BlockPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "oscar_hf" or name.startswith("oscar_hf."):
            raise ImportError(f"{name} is blocked: remote code must not need the package")
sys.meta_path.insert(0, BlockPackage())
try:
    import oscar_hf  # noqa: F401
    raise SystemExit("oscar_hf is importable; the test would prove nothing")
except ImportError:
    pass
"""


def fixture_folder(env_var: str, default: str) -> Path:
    """A fixture set: `$env_var` when set (another set of the same format), else the shipped copy."""
    return Path(os.environ.get(env_var, FIXTURES_ROOT / default))


def parity_fixture_dir() -> Path:
    """Folder of the original-implementation fixtures (`OSCAR_PARITY_FIXTURES` overrides)."""
    return fixture_folder("OSCAR_PARITY_FIXTURES", "oscar_original")


def manifest_cases(folder: Path) -> dict:
    """The `cases` of a fixture folder's manifest, or `{}` when the folder has none."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return {}
    return json.loads(manifest.read_text())["cases"]


def parity_cases() -> dict:
    return manifest_cases(parity_fixture_dir())


def tiny_config(**overrides: Any):
    from oscar_hf import OscarConfig

    values = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        img_feature_dim=14,
        max_position_embeddings=64,
        max_caption_length=12,
        max_tag_length=8,
        max_img_seq_length=10,
        num_labels=3,
        mask_token_id=3,
        bos_token_id=1,
        eos_token_id=2,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    values.update(overrides)
    return OscarConfig(**values)


def isolated_env(workdir: Path, extra_path: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment of a fresh interpreter: offline, its own modules cache, no inherited PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_MODULES_CACHE=str(workdir / "modules"),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
    )
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    env.update(extra)
    return env


def run_isolated(
    script: str,
    *args: str,
    workdir: Path,
    block_package: bool = True,
    extra_path: Path | None = None,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> Any:
    """Runs `script` in a fresh interpreter (oscar_hf blocked by default) and returns its result.

    The script reports by printing one line `RESULT <json>`; that JSON is returned. A non-zero exit
    fails the test with the end of both streams.
    """
    import pytest

    workdir.mkdir(parents=True, exist_ok=True)
    source = (BLOCK_PACKAGE if block_package else "") + script
    result = subprocess.run(
        [sys.executable, "-c", source, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**isolated_env(workdir, extra_path), **(env or {})},
        cwd=workdir,
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(f"isolated run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        pytest.fail(f"isolated run printed no RESULT line:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])
