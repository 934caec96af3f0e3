"""transformers' own test mixins, taken from the source distribution of the installed version.

`sdist_test_modules("test_modeling_common.py", ...)` fetches the transformers sdist that matches the
installed version (`pip download --no-binary :all: --no-deps transformers==<installed>`) into
`.cache/transformers-sdist/<version>/` (never into the repository), extracts the requested files of
its `tests/` folder into the package `transformers_sdist_tests` there, and imports them. The sdist
ships the `tests/test_*_common.py` mixins but not the modules they import from the transformers
repository (`tests/generation`, `tests/exporters`, `tests/utils`, the top-level `utils/`); stand-ins
for those are written next to them. Without the package index the calling test module is skipped,
saying so.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
import transformers

from . import REPO_ROOT


VERSION = transformers.__version__
CACHE = REPO_ROOT / ".cache" / "transformers-sdist"
PACKAGE = "transformers_sdist_tests"  # import name of the extracted tests folder

# Relative to the package folder (the sdist's `tests/`).
PACKAGE_STAND_INS = {
    "__init__.py": "",
    "generation/__init__.py": "",
    "generation/test_utils.py": (
        '"""Stand-in: the sdist does not ship the generation tests."""\n\n\nclass GenerationTesterMixin:\n    pass\n'
    ),
    "exporters/__init__.py": "",
    "exporters/test_export.py": (
        '"""Stand-in: the sdist does not ship the export tests."""\n\n\nclass ExportTesterMixin:\n    pass\n'
    ),
    "utils/__init__.py": "",
    # The common keyword arguments ConfigTester checks round-trip through every config.
    "utils/test_configuration_utils.py": (
        '"""Stand-in: the sdist does not ship tests/utils."""\n\n'
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "output_attentions": True,\n'
        '    "dtype": "float16",\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "architectures": ["BertModel"],\n'
        '    "id2label": {0: "label"},\n'
        '    "label2id": {"label": "0"},\n'
        '    "problem_type": "regression",\n'
        "}\n"
    ),
}
# Relative to the folder above the package (the repository root of transformers): the processing
# mixins put its `utils/` on `sys.path` and import the CI helper that maps Hub URLs to files the CI
# downloaded beforehand. Offline there are none, so URLs stay URLs; the tests that would download
# them are overridden where they apply to Oscar.
ROOT_STAND_INS = {
    "utils/fetch_hub_objects_for_ci.py": (
        '"""Stand-in: the sdist does not ship utils/ (no pre-fetched Hub files here)."""\n\n\n'
        "def url_to_local_path(url, return_url_if_not_found=True):\n"
        "    return url\n"
    ),
}


def _write(path: Path, data: bytes) -> None:
    """Writes atomically: test modules of other sessions may read the same cache at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "wb") as stream:
        stream.write(data)
    os.replace(temporary, path)


def _download_sdist(root: Path) -> Path:
    sdist = root / f"transformers-{VERSION}.tar.gz"
    if sdist.is_file():
        return sdist
    root.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--quiet"]
            + [f"transformers=={VERSION}", "-d", str(root)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(
            f"cannot fetch the transformers {VERSION} sdist for its test mixins: {error}", allow_module_level=True
        )
    if result.returncode != 0 or not sdist.is_file():
        pytest.skip(
            f"the package index cannot be reached for the transformers {VERSION} sdist (its test mixins): "
            f"{result.stderr.strip()[-300:]}",
            allow_module_level=True,
        )
    return sdist


def fetch_sdist_tests(*names: str) -> Path:
    """Extracts `tests/<name>` of the installed transformers' sdist for each name; returns the folder to import from.

    The folder holds the package `transformers_sdist_tests` (the sdist's `tests/`) and the stand-ins.
    Skips the calling test module when the sdist cannot be fetched.
    """
    root = CACHE / VERSION
    package = root / PACKAGE
    missing = [name for name in names if not (package / name).is_file()]
    if missing:
        sdist = _download_sdist(root)
        with tarfile.open(sdist) as archive:
            for name in missing:
                try:
                    member = archive.extractfile(f"transformers-{VERSION}/tests/{name}")
                except KeyError:
                    member = None
                if member is None:
                    pytest.skip(
                        f"the transformers {VERSION} sdist has no tests/{name} (the mixins moved or were renamed)",
                        allow_module_level=True,
                    )
                _write(package / name, member.read())
    for stand_ins, folder in ((PACKAGE_STAND_INS, package), (ROOT_STAND_INS, root)):
        for name, text in stand_ins.items():
            if not (folder / name).is_file():
                _write(folder / name, text.encode())
    return root


def sdist_test_modules(*names: str) -> list[ModuleType]:
    """Imports `tests/<name>` of the installed transformers' sdist for each name (see the module doc)."""
    pytest.importorskip("parameterized", reason="transformers' test mixins need `parameterized` (the test extra)")
    root = fetch_sdist_tests(*names)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return [importlib.import_module(f"{PACKAGE}.{Path(name).stem}") for name in names]
