"""Region extraction at scale: a detector over an image folder, into the Parquet `regions` dataset.

    python -m oscar_hf.data detect --detector vinvl-detector --images photos/ --out photos-regions
    accelerate launch -m oscar_hf.data detect --detector vinvl-detector --images photos/ --out photos-regions

Every process of an `accelerate launch` (or `torchrun`) job takes its share of the shards (shard `i`
goes to process `i % num_processes`), runs its own copy of the detector on its own device, and writes
its Parquet shards into the shared work folder `.OUT.oscar-partial/`; once every process is done, the
main process moves the complete build into `OUT`. The shards and their order do not depend on the
number of processes, so one process and many write the same dataset. A killed run, started again
with the same arguments, keeps the shards already written and runs only the others.

With `original_files`, `OUT/original/` also gets the original files, in float32 as the detector gave
them: `predictions.tsv` (scene_graph_benchmark's `test_sg_net.py` output, base64 features and
attributes), `features.tsv` (Oscar's `[key, num_boxes, base64(float32[num_boxes x 2054])]`) and
`labels.tsv` (`{image_h, image_w, objects}`), each with its `.lineidx`.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .original_format import write_tsv
from .raw_images import ORIGINAL_FILES, ImageRegionsBuilder
from .writer import BuildSummary, build_dataset, partial_folder


logger = logging.getLogger("oscar_hf.data")

# Per-shard pieces of the original files, inside the work folder until they are merged.
ORIGINAL_PIECES = Path(".build") / "original-pieces"


@dataclass
class ProcessGroup:
    """This process's place in the job: rank, size, device and a barrier (a no-op for one process)."""

    rank: int = 0
    size: int = 1
    device: str | None = None
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def process_group() -> ProcessGroup:
    """The job this process belongs to, from Accelerate's `PartialState` (one process without it)."""
    try:
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env
    except ImportError:  # accelerate is the `train` extra; one process needs none
        return ProcessGroup()
    import torch

    # `accelerate launch --cpu` sets ACCELERATE_USE_CPU (gloo); without a GPU there is nothing else to use.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    if state.num_processes == 1:
        return ProcessGroup(device=None if state.device.type == "cpu" else str(state.device))
    device = None if state.device.type == "cpu" else str(state.device)
    return ProcessGroup(state.process_index, state.num_processes, device, state)


def merge_original_files(work: Path) -> None:
    """Concatenates the per-shard pieces into `work/original/*.tsv` (+ `.lineidx`), in image order."""
    pieces = work / ORIGINAL_PIECES
    for name in ORIGINAL_FILES:
        parts = sorted(pieces.glob(f"*.{name}"))

        def lines(parts: list[Path] = parts) -> Any:
            for part in parts:
                yield from part.read_text(encoding="utf-8").splitlines()

        write_tsv(work / "original" / name, lines())
    shutil.rmtree(pieces, ignore_errors=True)


def detect_regions(
    images: str | Path,
    detector: str,
    out: str | Path,
    *,
    detector_kwargs: dict | None = None,
    feature_dim: int = 2054,
    batch_size: int = 8,
    image_id: str = "stem",
    rows_per_shard: int = 100,
    num_proc: int = 1,
    skip_bad_rows: bool = False,
    overwrite: bool = False,
    original_files: bool = False,
    progress: bool = True,
    node_rank: int = 0,
    num_nodes: int = 1,
) -> BuildSummary:
    """Runs `detector` over every image under `images` and writes the `regions` dataset to `out`.

    Args:
        images: the image folder (searched recursively; ids from the file names, see `image_id`).
        detector: a detector folder (a converted VinVL detector: `python -m oscar_hf.convert_vinvl_detector`,
            or an `AutoModelForObjectDetection` checkpoint), a built-in adapter name or
            `package.module:factory`, with `detector_kwargs`.
        feature_dim: region vector width stored (the detector's feature width + 6; 2054 for VinVL).
        rows_per_shard: images per Parquet shard, the unit of resuming and of sharing out work.
        original_files: also write `out/original/{predictions,features,labels}.tsv` (see the module doc).
        node_rank, num_nodes: machines that each run their own job on disjoint shards of a shared `out`
            (see `build_dataset`); within a job, the processes share out the node's work.

    Returns:
        The build summary: on the main process it counts every process's shards.
    """
    group = process_group()
    if num_nodes > 1 and group.size > 1:
        raise ValueError(
            f"num_nodes={num_nodes} with {group.size} launched processes; use one or the other: accelerate "
            "launch across machines (--num_machines) or independent runs with --node-rank/--num-nodes."
        )
    if num_nodes > 1:
        group = ProcessGroup(node_rank, num_nodes, group.device)
    out = Path(out)
    builder = ImageRegionsBuilder(
        images,
        detector_spec=detector,
        detector_kwargs=detector_kwargs,
        batch_size=batch_size,
        feature_dim=feature_dim,
        image_id=image_id,
        device=group.device,
        original_dir=partial_folder(out) / ORIGINAL_PIECES if original_files else None,
    )
    builder.detector  # noqa: B018 - loaded now, so a bad detector fails before anything is written
    start = time.perf_counter()
    summary = build_dataset(
        builder,
        out,
        units_per_shard=rows_per_shard,
        num_proc=num_proc,
        skip_bad_rows=skip_bad_rows,
        overwrite=overwrite,
        node_rank=group.rank,
        num_nodes=group.size,
        progress=progress and group.is_main,
        barrier=group.barrier if group.size > 1 else None,
        before_finish=merge_original_files if original_files else None,
    )
    elapsed = time.perf_counter() - start
    ran = builder.images_detected
    logger.info(
        "detect: process %d/%d ran the detector on %d images in %.1f s (%.2f images/s)",
        group.rank,
        group.size,
        ran,
        elapsed,
        ran / elapsed if elapsed > 0 else 0.0,
    )
    if group.is_main:
        total = sum(summary.rows.values())
        logger.info(
            "detect: %s holds %d images (%d shards written now, %d kept from an earlier run)",
            out,
            total,
            summary.shards_written,
            summary.shards_resumed,
        )
    return summary


__all__ = ["ORIGINAL_PIECES", "ProcessGroup", "detect_regions", "merge_original_files", "process_group"]
