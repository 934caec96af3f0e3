"""Where the `evaluate` modules live, and which official scorers (Java, pycocoevalcap, SPICE) can run here.

Nothing here downloads anything: SPICE is only run when its models are already on disk.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from oscar_hf.extras import missing_extra_message, require_extra


logger = logging.getLogger(__name__)


METRIC_NAMES = ("coco_caption", "vqa_accuracy", "retrieval_recall", "nlvr2_accuracy")


# ----------------------------------------------------------------------------------------------
# Locating the evaluate modules
# ----------------------------------------------------------------------------------------------


def metric_path(name: str) -> Path:
    """Folder of the `evaluate` module `name` shipped with this package (`metrics/<name>/`).

    The module folders sit next to this file in a checkout and in an installed wheel alike (they
    are package data of `oscar_hf.metrics`), so `evaluate.load(str(metric_path(name)))` works offline.

    Example:
        >>> from oscar_hf.metrics import metric_path
        >>> metric_path("vqa_accuracy").name
        'vqa_accuracy'
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; expected one of {', '.join(METRIC_NAMES)}.")
    folder = Path(__file__).resolve().parent / name
    if not (folder / f"{name}.py").is_file():
        raise FileNotFoundError(
            f"The evaluate module {name!r} is missing from {str(folder.parent)!r}; reinstall the package "
            "(`pip install oscar-hf[metrics]`) or load it from a checkout with `evaluate.load('./metrics/{name}')`."
        )
    return folder


def load_metric(name: str, **kwargs: Any):
    """`evaluate.load` one of this package's metric modules by its installed path, offline.

    Example:
        >>> from oscar_hf.metrics import load_metric
        >>> vqa = load_metric("vqa_accuracy")
        >>> vqa.compute(predictions=["two"], references=[["2"] * 3 + ["3"] * 7])["accuracy"]
        0.9
    """
    evaluate = require_extra("evaluate", extra="metrics", needed_by="`oscar_hf.metrics.load_metric`")
    # An absolute path never falls through to the Hub, so this works with HF_EVALUATE_OFFLINE=1.
    return evaluate.load(str(metric_path(name)), **kwargs)


# ----------------------------------------------------------------------------------------------
# Java, pycocoevalcap and SPICE detection
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JavaStatus:
    """What the official caption scorers need and whether this machine has it.

    `pycocoevalcap` starts `java` from `PATH` (it ignores `JAVA_HOME`), so that is what is checked.
    """

    java: str | None
    java_version: str | None
    pycocoevalcap: str | None
    spice_models: bool
    problem: str | None = None

    @property
    def official_available(self) -> bool:
        """True when PTB tokenisation, BLEU, METEOR, ROUGE-L and CIDEr-D can run the official way."""
        return self.problem is None


def _pycocoevalcap_dir() -> Path | None:
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def _java_version(java: str) -> str | None:
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    first = (result.stderr or result.stdout).strip().splitlines()
    return first[0] if first else "unknown"


def spice_models_available() -> bool:
    """Whether SPICE's Stanford CoreNLP 3.6.0 jars are installed next to `pycocoevalcap`'s SPICE.

    `pycocoevalcap.spice.Spice()` downloads them (about 400 MB) when missing; this package never
    constructs `Spice()` unless this returns True, so nothing is ever downloaded.
    """
    root = _pycocoevalcap_dir()
    if root is None:
        return False
    lib = root / "spice" / "lib"
    return (lib / "stanford-corenlp-3.6.0.jar").is_file() and (lib / "stanford-corenlp-3.6.0-models.jar").is_file()


SPICE_MISSING = (
    "SPICE needs the Stanford CoreNLP 3.6.0 jars (stanford-corenlp-3.6.0.jar and "
    "stanford-corenlp-3.6.0-models.jar) in pycocoevalcap/spice/lib/. They are not installed and this "
    "package never downloads them. On a machine with network run "
    "`python -c 'from pycocoevalcap.spice.get_stanford_models import get_stanford_models as g; g()'` "
    "(or copy the two jars from stanford-corenlp-full-2015-12-09.zip there), or pass spice=False."
)


def java_status() -> JavaStatus:
    """Detect Java, `pycocoevalcap` and the SPICE models.

    Example:
        >>> from oscar_hf.metrics import java_status
        >>> status = java_status()
        >>> isinstance(status.official_available, bool)
        True
    """
    java = shutil.which("java")
    version = _java_version(java) if java else None
    root = _pycocoevalcap_dir()
    problem = None
    if root is None:
        problem = missing_extra_message("pycocoevalcap", "metrics", "the official COCO caption scorers").rstrip(".")
    elif java is None:
        problem = (
            "no `java` executable on PATH: the official PTB tokenizer, METEOR and SPICE are Java programs "
            "(install a JRE >= 8, e.g. `apt-get install default-jre-headless`, and put `java` on PATH)"
        )
    elif version is None:
        problem = f"`{java} -version` failed, so Java cannot run the official PTB tokenizer, METEOR or SPICE"
    return JavaStatus(
        java=java,
        java_version=version,
        pycocoevalcap=str(root) if root else None,
        spice_models=spice_models_available(),
        problem=problem,
    )


# ----------------------------------------------------------------------------------------------
