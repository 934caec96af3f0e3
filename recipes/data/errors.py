"""Errors for bad input rows and the policy that decides whether they stop a build.

Every problem found in a source file is raised as a :class:`BadRowError` that names the file, the
line (1-based, as an editor shows it), the id and what was expected. With ``skip_bad_rows`` the
builders log the error, count it by kind and go on; the counts end up in the build summary, so a
row is never dropped silently.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


logger = logging.getLogger("oscar_hf.data")


class BadRowError(ValueError):
    """A source row that cannot be used: names the file, line, id, the expectation and the fix."""

    def __init__(
        self,
        kind: str,
        path: str | Path | None,
        line: int | None,
        row_id: str | None,
        message: str,
        fix: str = "",
    ) -> None:
        self.kind = kind
        self.path = str(path) if path is not None else None
        self.line = line
        self.row_id = row_id
        where = []
        if self.path is not None:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if row_id is not None:
            where.append(f"id {row_id!r}")
        text = f"{', '.join(where)}: {message}" if where else message
        if fix:
            text = f"{text} Fix: {fix}"
        super().__init__(text)

    def __reduce__(self):  # worker processes re-raise in the parent: keep the fields and the exact text
        return (_restore_bad_row, (self.kind, self.path, self.line, self.row_id, str(self)))


def _restore_bad_row(kind: str, path: str | None, line: int | None, row_id: str | None, text: str) -> BadRowError:
    error = BadRowError.__new__(BadRowError)
    ValueError.__init__(error, text)
    error.kind, error.path, error.line, error.row_id = kind, path, line, row_id
    return error


@dataclass
class RowErrorPolicy:
    """Raise on the first bad row (default) or log it, count it by kind and continue."""

    skip_bad_rows: bool = False
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 20

    def handle(self, error: BadRowError) -> None:
        """Re-raise `error`, or record it when skipping is allowed."""
        if not self.skip_bad_rows:
            raise error
        self.counts[error.kind] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(error))
        logger.warning("skipping bad row: %s", error)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, counts: dict[str, int], examples: list[str]) -> None:
        """Add the counts reported by another worker or an earlier (resumed) run."""
        self.counts.update(counts)
        room = self.max_examples - len(self.examples)
        self.examples.extend(examples[: max(room, 0)])
