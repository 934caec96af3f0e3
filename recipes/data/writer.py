"""Sharded, resumable, multi-process writing of a task builder's rows to Parquet.

Layout of an output folder (what `push_to_hub` writes, so it loads the same locally and from the Hub)::

    OUT/README.md                                   dataset card (inputs of the build)
    OUT/data/{split}-{i:05d}-of-{n:05d}.parquet     shards, each written by `Dataset.from_generator`
    OUT/.build/plan.json                            what was planned (checked again when resuming)
    OUT/.build/{split}-{i:05d}.json                 rows and skipped bad rows of a finished shard
    OUT/oscar_build.json                            our manifest: the plan and every file the build wrote

Nothing is lost and nothing half-built looks like a dataset:

- the work happens in a hidden sibling, `.OUT.oscar-partial/`, which `load_dataset(OUT)` never sees;
  it is moved into place only once every shard is written, so a failed or killed build leaves no
  `OUT` (or the previous, complete one) and a rerun resumes from the shards kept in the sibling;
- a shard counts as done when its Parquet file and its state file both exist; shards are written to
  a temporary name and renamed, so an interrupted run leaves no half shard;
- `overwrite` removes only the files listed in an earlier build's `oscar_build.json`; a non-empty
  `OUT` without that manifest is refused, and so is an `OUT` that equals or contains an input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import datasets
from datasets import Dataset, Features
from tqdm.auto import tqdm

from .errors import RowErrorPolicy


logger = logging.getLogger("oscar_hf.data")


class TaskBuilder(Protocol):
    """What the writer needs from a task: a schema, a plan of input units per split, and rows."""

    name: str

    def features(self) -> Features: ...

    def plan(self) -> dict[str, Sequence]: ...

    def rows(self, units: Sequence, policy: RowErrorPolicy) -> Iterator[dict]: ...

    def describe(self) -> dict: ...


@dataclass
class Shard:
    split: str
    index: int
    count: int
    units: Sequence

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}"


@dataclass
class BuildSummary:
    """Rows written per split and bad rows skipped, by kind (also in `OUT/.build/summary.json`)."""

    out: Path
    rows: dict[str, int] = field(default_factory=dict)
    bad_rows: dict[str, int] = field(default_factory=dict)
    bad_examples: list[str] = field(default_factory=list)
    shards_written: int = 0
    shards_resumed: int = 0

    def to_json(self) -> dict:
        return {
            "rows": self.rows,
            "bad_rows": self.bad_rows,
            "bad_examples": self.bad_examples,
            "shards_written": self.shards_written,
            "shards_resumed": self.shards_resumed,
        }


def plan_shards(plan: dict[str, Sequence], units_per_shard: int) -> list[Shard]:
    """Cut each split's units into contiguous shards (slicing a `range` stays lazy)."""
    if units_per_shard < 1:
        raise ValueError(f"rows per shard must be >= 1, got {units_per_shard}.")
    shards = []
    for split, units in plan.items():
        count = max(1, -(-len(units) // units_per_shard)) if len(units) else 0
        for index in range(count):
            shards.append(Shard(split, index, count, units[index * units_per_shard : (index + 1) * units_per_shard]))
    return shards


# The shard generator reads its builder and policy from here: `Dataset.from_generator` hashes its
# gen_kwargs, and hashing a builder that holds TSV indexes of millions of rows would be slow.
_ACTIVE: dict[str, Any] = {}


def _shard_generator(shard_name: str) -> Iterator[dict]:
    yield from _ACTIVE["builder"].rows(_ACTIVE["units"], _ACTIVE["policy"])


def _empty_dataset(features: Features) -> Dataset:
    return Dataset.from_dict({name: [] for name in features}, features=features)


def build_shard(builder: TaskBuilder, shard: Shard, out: Path, skip_bad_rows: bool) -> dict:
    """Write one shard (atomically) and its state file; returns the state."""
    policy = RowErrorPolicy(skip_bad_rows=skip_bad_rows)
    features = builder.features()
    data_dir = out / "data"
    cache = Path(tempfile.mkdtemp(prefix=f".cache-{shard.name}-", dir=out / ".build"))
    _ACTIVE.update(builder=builder, policy=policy, units=shard.units)
    try:
        try:
            dataset = Dataset.from_generator(
                _shard_generator, features=features, gen_kwargs={"shard_name": shard.name}, cache_dir=str(cache)
            )
        except datasets.exceptions.DatasetGenerationError as error:
            # from_generator wraps the generator's exceptions; surface the original (it names file/line/id).
            raise (error.__cause__ or error) from None
        except ValueError as error:
            if "empty" not in str(error).lower() and "no data" not in str(error).lower():
                raise
            dataset = _empty_dataset(features)  # every row of this shard was bad and skipped
        tmp = data_dir / f".{shard.name}.parquet.tmp"
        dataset.to_parquet(str(tmp))
        os.replace(tmp, data_dir / f"{shard.name}.parquet")
    finally:
        _ACTIVE.clear()
        shutil.rmtree(cache, ignore_errors=True)
    state = {"rows": dataset.num_rows, "bad_rows": dict(policy.counts), "bad_examples": policy.examples}
    (out / ".build" / f"{shard.name}.json").write_text(json.dumps(state))
    return state


_WORKER: dict[str, Any] = {}


def _init_worker(builder: TaskBuilder) -> None:
    _WORKER["builder"] = builder
    datasets.disable_progress_bars()


def _run_in_worker(shard: Shard, out: Path, skip_bad_rows: bool) -> tuple[Shard, dict]:
    return shard, build_shard(_WORKER["builder"], shard, out, skip_bad_rows)


def _plan_record(builder: TaskBuilder, shards: list[Shard], units_per_shard: int) -> dict:
    splits = {}
    for shard in shards:
        splits.setdefault(shard.split, {"shards": shard.count, "units": 0})
        splits[shard.split]["units"] += len(shard.units)
    schema = hashlib.sha1(json.dumps(builder.features().to_dict(), sort_keys=True).encode()).hexdigest()
    return {
        "task": builder.name,
        "inputs": builder.describe(),
        "units_per_shard": units_per_shard,
        "splits": splits,
        "schema": schema,
    }


MANIFEST = "oscar_build.json"
_MANIFEST_FORMAT = "oscar_hf.data build"


def partial_folder(out: Path) -> Path:
    """Where a build of `out` works until it is complete: a hidden sibling `load_dataset(out)` never reads."""
    return out.parent / f".{out.name}.oscar-partial"


def read_manifest(out: Path) -> dict | None:
    """The `oscar_build.json` of an earlier build of ours in `out`, or None when `out` holds none."""
    file = out / MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError:
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == _MANIFEST_FORMAT else None


# describe() fields whose strings are options, not paths (a folder named "image" must not count).
_NOT_PATHS = frozenset({"rows", "image_key_template", "type", "detector", "detector_kwargs", "image_id", "task"})


def _input_paths(value: Any) -> list[Path]:
    """Every existing file or folder named anywhere in a builder's `describe()`."""
    if isinstance(value, dict):
        return [path for key, item in value.items() if key not in _NOT_PATHS for path in _input_paths(item)]
    if isinstance(value, (list, tuple)):
        return [path for item in value for path in _input_paths(item)]
    if isinstance(value, (str, os.PathLike)) and str(value):
        try:
            path = Path(value)
            return [path] if path.exists() else []
        except (OSError, ValueError):  # not a path at all (a detector spec, a JSON string)
            return []
    return []


def check_out_is_safe(out: Path, inputs: dict) -> None:
    """Refuse an `out` that equals or contains an input of the build (a rebuild would delete it)."""
    target = out.resolve()
    for path in _input_paths(inputs):
        source = path.resolve()
        if source == target or target in source.parents:
            raise ValueError(
                f"--out {out} {'is' if source == target else 'contains'} the build input {path}; "
                "a build writes and, with --overwrite, replaces files under --out. "
                "Fix: choose an --out folder outside the input files (e.g. a new sibling folder)."
            )


def _check_out_folder(out: Path, record: dict, overwrite: bool) -> dict | None:
    """What `out` holds now: None (new or empty) or the manifest of our earlier build; anything else is refused."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file. Fix: pass a folder path (new, empty, or an earlier build).")
    manifest = read_manifest(out)
    if manifest is None and out.is_dir() and any(out.iterdir()):
        raise ValueError(
            f"--out {out} is not empty and holds no {MANIFEST}, so it is not an earlier build of ours; "
            "nothing in it is written or removed. Fix: choose a new or empty --out folder."
        )
    if manifest is not None and manifest.get("plan") != record and not overwrite:
        raise ValueError(
            f"{out} already holds a build with other inputs or options ({out / MANIFEST}). "
            "Fix: pass --overwrite to rebuild it, or choose another --out."
        )
    return manifest


def _prepare_partial(work: Path, record: dict, overwrite: bool) -> None:
    """Create the work folder or check that the progress it keeps belongs to this plan."""
    plan_file = work / ".build" / "plan.json"
    if work.exists():
        ours = plan_file.is_file() or not any(work.iterdir())
        if not ours:
            raise ValueError(
                f"{work} exists but holds no .build/plan.json of an unfinished build. "
                "Fix: move it away (it is not ours, so it is neither reused nor removed)."
            )
        if overwrite:
            shutil.rmtree(work)  # progress of our own unfinished build: --overwrite starts from scratch
        elif plan_file.is_file() and json.loads(plan_file.read_text()) != record:
            raise ValueError(
                f"{work} holds an unfinished build with other inputs or options ({plan_file}). "
                "Fix: pass --overwrite to rebuild it, or rerun with the options of that build to resume it."
            )
    (work / "data").mkdir(parents=True, exist_ok=True)
    (work / ".build").mkdir(parents=True, exist_ok=True)
    if not plan_file.is_file():
        plan_file.write_text(json.dumps(record, indent=2, sort_keys=True))


def _is_done(out: Path, shard: Shard) -> bool:
    return (out / "data" / f"{shard.name}.parquet").is_file() and (out / ".build" / f"{shard.name}.json").is_file()


def write_dataset_card(out: Path, builder: TaskBuilder, splits: list[str]) -> None:
    """README.md describing the build.

    It deliberately has no `configs:` block: `load_dataset(folder or repo)` infers the splits from the
    `data/{split}-NNNNN-of-NNNNN.parquet` names, and with an explicit `configs:` block datasets 5.2
    caches a local folder under a key that ignores the files, so a rebuilt folder would load stale.
    """
    lines = [
        "---",
        f"pretty_name: Oscar {builder.name}",
        "tags:",
        "- oscar",
        "- vinvl",
        "- region-features",
        "---",
        "",
    ]
    lines += [f"# Oscar {builder.name} dataset", "", "Splits: " + ", ".join(f"`{split}`" for split in splits), ""]
    lines += ["Built by `python -m oscar_hf.data build` from these inputs:", "", "```json"]
    lines += [json.dumps(builder.describe(), indent=2, sort_keys=True, default=str), "```", ""]
    (out / "README.md").write_text("\n".join(lines))


def _finish(work: Path, out: Path, record: dict, previous: dict | None) -> None:
    """Move a complete build into `out`, replacing only the files an earlier build of ours listed."""
    for leftover in [*(work / ".build").glob(".cache-*"), *(work / "data").glob(".*.tmp")]:
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    files = sorted(str(path.relative_to(work)) for path in work.rglob("*") if path.is_file())
    manifest = {"format": _MANIFEST_FORMAT, "plan": record, "files": [*files, MANIFEST]}
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    if previous is None and (not out.exists() or not any(out.iterdir())):
        if out.exists():
            out.rmdir()
        os.replace(work, out)
        return
    for name in (previous or {}).get("files", []):
        old = out / name
        if old.is_file() and out.resolve() in old.resolve().parents:
            old.unlink()
    for name in [*files, MANIFEST]:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work / name, target)
    for folder in sorted((path for path in out.rglob("*") if path.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()  # folders only our old files were in
    shutil.rmtree(work)


def _summary_from_manifest(out: Path, shards: list[Shard]) -> BuildSummary:
    summary = BuildSummary(out=out)
    policy = RowErrorPolicy(skip_bad_rows=True)
    for shard in shards:
        state_file = out / ".build" / f"{shard.name}.json"
        if state_file.is_file():
            _record(summary, policy, shard, json.loads(state_file.read_text()))
            summary.shards_resumed += 1
    summary.bad_rows, summary.bad_examples = dict(policy.counts), policy.examples
    return summary


def build_dataset(
    builder: TaskBuilder,
    out: str | Path,
    units_per_shard: int = 1000,
    num_proc: int = 1,
    skip_bad_rows: bool = False,
    overwrite: bool = False,
    node_rank: int = 0,
    num_nodes: int = 1,
    progress: bool = True,
    barrier: Callable[[], None] | None = None,
    before_finish: Callable[[Path], None] | None = None,
) -> BuildSummary:
    """Build every split of `builder` into Parquet shards under `out`, resuming finished shards.

    The shards are written into `.OUT.oscar-partial/` next to `out` and moved into `out` when every
    shard exists (see the module docstring). `node_rank`/`num_nodes` let several machines build
    disjoint shards of one corpus into a shared folder (shard `i` belongs to node `i % num_nodes`);
    the node that completes the last shard moves the build into place.

    `barrier`: the processes of one job (e.g. `accelerate launch`, with
    `PartialState().wait_for_everyone`), each calling with its own `node_rank`. Node 0 prepares the
    work folder (applying `overwrite`) before the others start, and after every node's shards are
    written it alone moves the build into place; its summary then counts every node's shards.
    `before_finish(work_folder)`: called (on the node that finishes) when every shard is written,
    before the build moves into place; files it writes there become part of the build.
    """
    if not 0 <= node_rank < num_nodes:
        raise ValueError(f"node_rank must be in [0, {num_nodes}), got {node_rank}.")
    out = Path(out)
    check_out_is_safe(out, builder.describe())
    shards = plan_shards(builder.plan(), units_per_shard)
    record = _plan_record(builder, shards, units_per_shard)
    previous = _check_out_folder(out, record, overwrite)
    mine = [shard for position, shard in enumerate(shards) if position % num_nodes == node_rank]
    if previous is not None and previous.get("plan") == record and not overwrite:
        missing = [name for name in previous.get("files", []) if not (out / name).is_file()]
        if missing:
            raise ValueError(
                f"{out} is a finished build that lost {len(missing)} of its files (first {missing[0]!r}). "
                "Fix: pass --overwrite to rebuild it."
            )
        logger.info("%s is already complete: nothing to build", out)
        return _summary_from_manifest(out, mine)
    work = partial_folder(out)
    if barrier is None or node_rank == 0:
        _prepare_partial(work, record, overwrite)
    if barrier is not None:
        barrier()  # the work folder exists (and `overwrite` has cleared it) before any node writes
    summary = BuildSummary(out=out)
    policy = RowErrorPolicy(skip_bad_rows=True)  # only aggregates the shards' counts
    pending = []
    for shard in mine:
        if _is_done(work, shard):
            _record(summary, policy, shard, json.loads((work / ".build" / f"{shard.name}.json").read_text()))
            summary.shards_resumed += 1
        else:
            pending.append(shard)
    if summary.shards_resumed:
        logger.info("resuming %s: %d shards already built in %s", out, summary.shards_resumed, work)
    _run_pending(builder, pending, work, num_proc, skip_bad_rows, progress, summary, policy)
    summary.bad_rows, summary.bad_examples = dict(policy.counts), policy.examples
    (work / ".build" / f"summary-node{node_rank}.json").write_text(json.dumps(summary.to_json(), indent=2))
    if policy.total:
        logger.warning(
            "%s: skipped %d bad rows %s (see .build/summary-*.json)", out, policy.total, dict(policy.counts)
        )
    if barrier is not None:
        barrier()  # every node's shards are written
        if node_rank != 0:
            return summary
        summary = _summary_of_nodes(work, out, num_nodes)
    if all(_is_done(work, shard) for shard in shards):
        if before_finish is not None:
            before_finish(work)
        write_dataset_card(work, builder, sorted({shard.split for shard in shards}))
        _finish(work, out, record, previous)
    else:
        logger.info("%s: this node's shards are done; the build moves into place when the others finish", work)
    return summary


def _summary_of_nodes(work: Path, out: Path, num_nodes: int) -> BuildSummary:
    """The summaries every node of a job wrote (`.build/summary-node{rank}.json`), added up."""
    total = BuildSummary(out=out)
    policy = RowErrorPolicy(skip_bad_rows=True)
    for rank in range(num_nodes):
        node = json.loads((work / ".build" / f"summary-node{rank}.json").read_text())
        for split, rows in node["rows"].items():
            total.rows[split] = total.rows.get(split, 0) + rows
        policy.merge(node["bad_rows"], node["bad_examples"])
        total.shards_written += node["shards_written"]
        total.shards_resumed += node["shards_resumed"]
    total.bad_rows, total.bad_examples = dict(policy.counts), policy.examples
    return total


def _record(summary: BuildSummary, policy: RowErrorPolicy, shard: Shard, state: dict) -> None:
    summary.rows[shard.split] = summary.rows.get(shard.split, 0) + state["rows"]
    policy.merge(state["bad_rows"], state["bad_examples"])


def _run_pending(builder, pending, out, num_proc, skip_bad_rows, progress, summary, policy) -> None:
    total = sum(len(shard.units) for shard in pending)
    bar = tqdm(total=total, unit="ex", desc=f"build {builder.name}", disable=not progress or not pending)
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one bar for the whole build instead of two per shard
    try:
        if num_proc <= 1 or len(pending) <= 1:
            for shard in pending:
                _record(summary, policy, shard, build_shard(builder, shard, out, skip_bad_rows))
                summary.shards_written += 1
                bar.update(len(shard.units))
            return
        with ProcessPoolExecutor(max_workers=num_proc, initializer=_init_worker, initargs=(builder,)) as pool:
            futures = [pool.submit(_run_in_worker, shard, out, skip_bad_rows) for shard in pending]
            for future in as_completed(futures):
                shard, state = future.result()
                _record(summary, policy, shard, state)
                summary.shards_written += 1
                bar.update(len(shard.units))
    finally:
        bar.close()
        if was_enabled:
            datasets.enable_progress_bars()
