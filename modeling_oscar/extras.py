"""Optional dependencies, grouped as the package's pip extras, with errors that say which extra to install.

The core (`oscar_hf`: model, processor, export) needs only torch and transformers. The rest comes in
extras (setup.py `extras_require`): `data` (datasets, pyarrow), `train` (accelerate, pyyaml),
`metrics` (evaluate, pycocoevalcap), `detect` (timm, torchvision). A part of the package that needs
an extra calls `require_extra` where it starts, so a missing library is reported as the extra to
install, not as a bare `ModuleNotFoundError` from deep inside a third-party import.

Example:
    >>> from oscar_hf.extras import require_extra
    >>> require_extra("json", extra="data", needed_by="this example").__name__
    'json'
"""

from __future__ import annotations

import importlib
from types import ModuleType


def missing_extra_message(module: str, extra: str, needed_by: str, error: BaseException | None = None) -> str:
    """The one wording of a missing optional dependency: what needs it, what is missing, the command."""
    detail = f" ({error})" if error is not None else ""
    return (
        f"`{module}` is not installed{detail}, and {needed_by} cannot work without it. Install the {extra!r} extra: "
        f'pip install "oscar-hf[{extra}]"  (from a checkout: pip install -e ".[{extra}]").'
    )


def require_extra(module: str, *, extra: str, needed_by: str) -> ModuleType:
    """Imports `module` or raises an ImportError naming the pip extra that provides it.

    Args:
        module: the import name (e.g. "datasets", "pycocoevalcap.bleu.bleu").
        extra: the extra of setup.py that installs it ("data", "train", "metrics", "detect").
        needed_by: what the user was doing, for the message (e.g. "`import oscar_hf.data`").
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(missing_extra_message(module, extra, needed_by, error), name=module) from error


__all__ = ["missing_extra_message", "require_extra"]
