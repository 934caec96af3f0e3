"""Session set-up: offline hub settings and the fixture-folder fixture; helpers live in `support`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import parity_fixture_dir  # noqa: E402


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    path = parity_fixture_dir()
    if not (path / "manifest.json").is_file():
        pytest.skip(f"original-implementation fixtures not found at {path} (set OSCAR_PARITY_FIXTURES)")
    return path


@pytest.fixture
def seed():
    import torch

    torch.manual_seed(0)
    return 0
