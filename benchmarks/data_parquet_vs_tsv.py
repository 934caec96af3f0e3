"""Reading Oscar examples: built Parquet datasets vs parsing the original TSV + base64 rows.

One run writes a synthetic set in the original format (3-column feature TSV with `.lineidx` and a
`{image_h, image_w, objects}` label TSV), builds the Parquet dataset from it with the project's
builder, then times both readers producing the same thing per example: float32 region features
(R, 2054), boxes and tags.

* TSV: `TsvRegionSource.get(key)`: seek through `.lineidx`, base64-decode, `np.frombuffer`, parse
  the label JSON (what the original data loaders do per example, plus the format checks).
* Parquet: `load_dataset("parquet")` with the numpy format, `dataset[i]` (memory-mapped Arrow).

Both are timed interleaved in one process (TSV, Parquet, TSV, ... with the order swapped every
repetition) and compared as the median of the per-repetition ratios, so a busy machine slows both
alike. Run:

    python benchmarks/data_parquet_vs_tsv.py --images 1000 --regions 50 --json results/data.json

Prints a markdown table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from datasets import load_dataset

from oscar_hf.data import CaptionBuilder, TsvRegionSource, build_dataset
from oscar_hf.data.original_format import feature_row, label_row, write_tsv
from oscar_hf.data.regions import box_geometry


TAGS = ["man", "dog", "table", "car", "tree", "window", "shirt", "sky"]


def write_original(root: Path, images: int, regions: int, seed: int = 0) -> list[str]:
    """Synthetic feature/label TSVs and a caption JSON in the original formats; returns the keys."""
    rng = np.random.default_rng(seed)
    keys = [str(100000 + i) for i in range(images)]
    feature_lines, label_lines, captions = [], [], []
    for number, key in enumerate(keys):
        width, height = 640, 480
        x1, y1 = rng.uniform(0, 300, regions), rng.uniform(0, 200, regions)
        boxes = np.stack([x1, y1, x1 + rng.uniform(10, 300, regions), y1 + rng.uniform(10, 250, regions)], 1)
        pooled = rng.gamma(1.0, 1.0, size=(regions, 2048)).astype(np.float32)
        features = np.concatenate([pooled, box_geometry(boxes, width, height)], axis=1)
        tags = [TAGS[i] for i in rng.integers(0, len(TAGS), regions)]
        feature_lines.append(feature_row(key, features))
        label_lines.append(label_row(key, tags, boxes, rng.uniform(0.2, 1, regions).tolist(), (width, height)))
        captions.append({"image_id": key, "id": number, "caption": f"synthetic caption {number}"})
    write_tsv(root / "bench.feature.tsv", feature_lines)
    write_tsv(root / "bench.label.tsv", label_lines)
    (root / "captions.json").write_text(json.dumps(captions))
    return keys


def tsv_reader(source: TsvRegionSource, keys: list[str]) -> Callable[[list[int]], float]:
    def run(order: list[int]) -> float:
        checksum = 0.0
        for index in order:
            record = source.get(keys[index])
            checksum += float(record.features[0, 0]) + len(record.tags) + float(record.boxes[0, 0])
        return checksum

    return run


def parquet_reader(dataset) -> Callable[[list[int]], float]:
    def run(order: list[int]) -> float:
        checksum = 0.0
        for index in order:
            row = dataset[index]
            features = np.asarray(row["img_feats"], dtype=np.float32)
            checksum += float(features[0, 0]) + len(row["tags"]) + float(row["boxes"][0, 0])
        return checksum

    return run


def timed(fn: Callable[[list[int]], float], order: list[int]) -> float:
    start = time.perf_counter()
    fn(order)
    return time.perf_counter() - start


def measure(readers: dict[str, Callable], order: list[int], repeats: int) -> dict[str, list[float]]:
    """Seconds per pass for each reader, interleaved, order of readers swapped every repetition."""
    names = list(readers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up: page cache, lazy indexes
        readers[name](order[: min(len(order), 50)])
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            times[name].append(timed(readers[name], order))
    return times


def folder_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for path in paths for p in ([path] if path.is_file() else path.rglob("*.parquet")))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--regions", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("data_parquet_vs_tsv.json"))
    parser.add_argument("--workdir", type=Path, help="keep the generated files here (default: a temp folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        keys = write_original(root, args.images, args.regions)
        source = TsvRegionSource(root / "bench.feature.tsv", labels=root / "bench.label.tsv")
        start = time.perf_counter()
        builder = CaptionBuilder(source, [(root / "captions.json", "train")], rows="image")
        build_dataset(builder, root / "parquet", units_per_shard=500, overwrite=True, progress=False)
        build_seconds = time.perf_counter() - start
        dataset = load_dataset("parquet", data_files=str(root / "parquet" / "data" / "*.parquet"), split="train")
        dataset = dataset.with_format("numpy")
        source = TsvRegionSource(root / "bench.feature.tsv", labels=root / "bench.label.tsv")  # cold reader
        readers = {"tsv+base64": tsv_reader(source, keys), "parquet": parquet_reader(dataset)}
        sequential = list(range(args.images))
        shuffled = list(np.random.default_rng(1).permutation(args.images))
        results = {}
        for name, order in (("sequential", sequential), ("random", shuffled)):
            times = measure(readers, order, args.repeats)
            ratios = [t / p for t, p in zip(times["tsv+base64"], times["parquet"])]
            results[name] = {
                "tsv_examples_per_s": args.images / statistics.median(times["tsv+base64"]),
                "parquet_examples_per_s": args.images / statistics.median(times["parquet"]),
                "parquet_speedup_median": statistics.median(ratios),
                "parquet_speedup_per_repeat": ratios,
            }
        sizes = {
            "tsv_bytes": folder_bytes([root / "bench.feature.tsv", root / "bench.label.tsv"]),
            "parquet_bytes": folder_bytes([root / "parquet" / "data"]),
        }
    report = {
        "images": args.images,
        "regions": args.regions,
        "repeats": args.repeats,
        "build_seconds": build_seconds,
        "access": results,
        **sizes,
        "python": sys.version.split()[0],
        "machine": platform.platform(),
    }
    print_table(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")
    return report


def print_table(report: dict) -> None:
    print(f"{report['images']} images x {report['regions']} regions x 2054 dims; build {report['build_seconds']:.1f}s")
    print("| access | TSV+base64 ex/s | Parquet ex/s | Parquet speed-up (median of paired ratios) |")
    print("| --- | ---: | ---: | ---: |")
    for name, row in report["access"].items():
        print(
            f"| {name} | {row['tsv_examples_per_s']:.0f} | {row['parquet_examples_per_s']:.0f} "
            f"| {row['parquet_speedup_median']:.2f}x |"
        )
    ratio = report["tsv_bytes"] / report["parquet_bytes"]
    print(
        f"\non disk: TSV {report['tsv_bytes'] / 2**20:.1f} MiB, Parquet {report['parquet_bytes'] / 2**20:.1f} MiB "
        f"({ratio:.2f}x smaller)"
    )


if __name__ == "__main__":
    main()
