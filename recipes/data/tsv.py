"""Random access to the original Oscar/VinVL TSV files through their `.lineidx` byte offsets.

A `.lineidx` file sits next to every TSV (`train.feature.tsv` -> `train.feature.lineidx`) and holds
one decimal byte offset per row. Reading row `i` is one seek. The reader checks the index while it
reads, because a stale or hand-made index otherwise silently skips or splits rows:

* every offset must start a line (the byte before it is a newline);
* after reading row `i` the file position must equal the offset of row `i + 1` (or the end of the
  file for the last row); a difference means a row is missing from the index.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import BadRowError


logger = logging.getLogger("oscar_hf.data")

_KEY_PROBE = 256  # bytes read at a time when only the first column (the key) of a row is needed


def lineidx_path_for(tsv_path: str | Path) -> Path:
    """The `.lineidx` file the original tools write beside `tsv_path` (same stem)."""
    path = Path(tsv_path)
    return path.with_suffix(".lineidx")


def compute_offsets(tsv_path: str | Path) -> list[int]:
    """Byte offset of every line of `tsv_path`, by one sequential scan."""
    offsets = []
    position = 0
    with open(tsv_path, "rb") as handle:
        for line in handle:
            offsets.append(position)
            position += len(line)
    return offsets


def write_lineidx(tsv_path: str | Path, lineidx_path: str | Path | None = None) -> Path:
    """Write the `.lineidx` companion of `tsv_path` (the format the original code reads and writes)."""
    target = Path(lineidx_path) if lineidx_path is not None else lineidx_path_for(tsv_path)
    offsets = compute_offsets(tsv_path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text("".join(f"{offset}\n" for offset in offsets))
    os.replace(tmp, target)
    return target


class TsvFile:
    """Rows of a TSV file, read by index or key through the `.lineidx` offsets.

    Args:
        path: the TSV file.
        lineidx: its offsets file; defaults to the same stem with `.lineidx`. When that file does
            not exist the offsets are computed by scanning the TSV once (and not written, since the
            data folder may be read-only; run `python -m oscar_hf.data index FILE.tsv` to write it).
        key_index: optional JSON `{key: row_index}` (the original `imageid2idx.json`), which spares
            reading the first column of every row to find keys.
    """

    def __init__(
        self, path: str | Path, lineidx: str | Path | None = None, key_index: str | Path | None = None
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"TSV file {self.path} does not exist. Fix: check the path passed to the builder.")
        self.lineidx = Path(lineidx) if lineidx is not None else lineidx_path_for(self.path)
        self.key_index_path = Path(key_index) if key_index is not None else None
        self._offsets: list[int] | None = None
        self._keys: dict[str, int] | None = None
        self._handle = None
        self._size = self.path.stat().st_size

    # Pickling (worker processes) carries the indexes but never an open file handle.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def offsets(self) -> list[int]:
        if self._offsets is None:
            self._offsets = self._load_offsets()
        return self._offsets

    def _load_offsets(self) -> list[int]:
        if not self.lineidx.is_file():
            logger.info("%s has no %s; scanning the TSV for row offsets", self.path, self.lineidx.name)
            return compute_offsets(self.path)
        offsets = []
        with open(self.lineidx, encoding="utf-8") as handle:
            for number, text in enumerate(handle, start=1):
                offsets.append(self._parse_offset(text, number, offsets[-1] if offsets else -1))
        return offsets

    def _parse_offset(self, text: str, number: int, previous: int) -> int:
        try:
            offset = int(text.strip())
        except ValueError:
            raise BadRowError(
                "lineidx",
                self.lineidx,
                number,
                None,
                f"expected one decimal byte offset per line, got {text.strip()[:40]!r}.",
                f"regenerate it with `python -m oscar_hf.data index {self.path.name}`.",
            ) from None
        if offset <= previous or offset >= self._size:
            raise BadRowError(
                "lineidx",
                self.lineidx,
                number,
                None,
                f"offset {offset} is not increasing or lies past the end of {self.path.name} ({self._size} bytes).",
                f"the index does not belong to this TSV; regenerate it with `python -m oscar_hf.data index {self.path.name}`.",
            )
        return offset

    def _file(self):
        if self._handle is None:
            self._handle = open(self.path, "rb")  # noqa: SIM115 - kept open for the reader's lifetime
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _check_line_start(self, index: int, offset: int) -> None:
        if offset == 0:
            return
        handle = self._file()
        handle.seek(offset - 1)
        if handle.read(1) != b"\n":
            raise BadRowError(
                "lineidx",
                self.lineidx,
                index + 1,
                None,
                f"offset {offset} points into the middle of a line of {self.path.name}.",
                f"regenerate the index with `python -m oscar_hf.data index {self.path.name}`.",
            )

    def read(self, index: int) -> list[str]:
        """Columns of row `index` (0-based); errors name the row as line `index + 1`."""
        offsets = self.offsets
        if not 0 <= index < len(offsets):
            raise IndexError(f"{self.path} has {len(offsets)} rows; row {index} does not exist.")
        self._check_line_start(index, offsets[index])
        handle = self._file()
        handle.seek(offsets[index])
        raw = handle.readline()
        end = offsets[index + 1] if index + 1 < len(offsets) else self._size
        if handle.tell() != end:
            raise BadRowError(
                "lineidx",
                self.path,
                index + 1,
                None,
                f"row {index + 1} ends at byte {handle.tell()} but the next .lineidx entry says {end}: "
                "a row is missing from the index (or the TSV changed after indexing).",
                f"regenerate {self.lineidx.name} with `python -m oscar_hf.data index {self.path.name}`.",
            )
        return self._split(raw, index)

    def _split(self, raw: bytes, index: int) -> list[str]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadRowError(
                "encoding", self.path, index + 1, None, f"row is not UTF-8 ({error}).", "re-export the TSV as UTF-8."
            ) from None
        return text.rstrip("\r\n").split("\t")

    def __iter__(self) -> Iterator[list[str]]:
        for index in range(len(self)):
            yield self.read(index)

    def read_key(self, index: int) -> str:
        """First column of row `index`, without reading the (large) rest of the row."""
        handle = self._file()
        handle.seek(self.offsets[index])
        chunk = b""
        while True:
            piece = handle.read(_KEY_PROBE)
            chunk += piece
            cut = min((p for p in (chunk.find(b"\t"), chunk.find(b"\n")) if p >= 0), default=-1)
            if cut >= 0 or not piece:
                return self._decode_key(chunk[:cut] if cut >= 0 else chunk, index)

    def _decode_key(self, raw: bytes, index: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadRowError(
                "encoding", self.path, index + 1, None, f"the key column is not UTF-8 ({error}).", "re-export the TSV."
            ) from None

    @property
    def keys(self) -> dict[str, int]:
        """`{key: row_index}` from the key-index JSON when given, else from the first column of every row."""
        if self._keys is None:
            self._keys = self._load_key_index() if self.key_index_path is not None else self._scan_keys()
        return self._keys

    def _load_key_index(self) -> dict[str, int]:
        try:
            mapping = json.loads(self.key_index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"key index {self.key_index_path} does not exist. Fix: pass the imageid2idx.json that belongs to {self.path}."
            ) from None
        except json.JSONDecodeError as error:
            raise BadRowError(
                "json",
                self.key_index_path,
                error.lineno,
                None,
                f"malformed JSON ({error.msg}).",
                "re-create the file.",
            ) from None
        if not isinstance(mapping, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(self) for v in mapping.values()
        ):
            bad = (
                mapping
                if not isinstance(mapping, dict)
                else next(
                    f"{k!r}: {v!r}" for k, v in mapping.items() if not (isinstance(v, int) and 0 <= v < len(self))
                )
            )
            raise BadRowError(
                "key_index",
                self.key_index_path,
                None,
                None,
                f"expected {{image_id: row index}} with row indices in [0, {len(self)}) of {self.path.name}; "
                f"found {str(bad)[:80]}.",
                "regenerate the key index (imageid2idx.json) or drop it to let the reader scan the keys.",
            )
        return {str(key): value for key, value in mapping.items()}

    def _scan_keys(self) -> dict[str, int]:
        keys: dict[str, int] = {}
        for index in range(len(self)):
            key = self.read_key(index)
            if key in keys:
                raise BadRowError(
                    "duplicate",
                    self.path,
                    index + 1,
                    key,
                    f"key also used by line {keys[key] + 1}; rows must have unique keys.",
                    "remove the duplicate row and regenerate the .lineidx.",
                )
            keys[key] = index
        return keys

    def get(self, key: str) -> tuple[list[str], int] | None:
        """(columns, 0-based row index) of the row whose first column is `key`, or None."""
        index = self.keys.get(key)
        if index is None:
            return None
        columns = self.read(index)
        if columns[0] != key:
            raise BadRowError(
                "key_index",
                self.path,
                index + 1,
                key,
                f"the key index maps {key!r} to this row but the row's key is {columns[0]!r}.",
                "regenerate the key index (imageid2idx.json) or drop it to let the reader scan the keys.",
            )
        return columns, index
