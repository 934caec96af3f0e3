"""Shared fixtures: tiny configs and the location of the original-implementation fixtures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_ROOT = Path(__file__).resolve().parent / "fixtures"
DEFAULT_FIXTURES = FIXTURES_ROOT / "oscar_original"


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


def parity_fixture_dir() -> Path:
    """Folder of the original-implementation fixtures (`OSCAR_PARITY_FIXTURES` overrides)."""
    return Path(os.environ.get("OSCAR_PARITY_FIXTURES", DEFAULT_FIXTURES))


def parity_cases() -> dict:
    manifest = parity_fixture_dir() / "manifest.json"
    if not manifest.is_file():
        return {}
    return json.loads(manifest.read_text())["cases"]


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    path = parity_fixture_dir()
    if not (path / "manifest.json").is_file():
        pytest.skip(f"original-implementation fixtures not found at {path} (set OSCAR_PARITY_FIXTURES)")
    return path


def tiny_config(**overrides):
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


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0
