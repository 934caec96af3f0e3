"""Command line: `python -m oscar_hf.data {build,detect,index,push} ...` (examples in docs/data.md)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .annotations import read_corpus_yaml
from .answers import load_vocabulary
from .builders import CaptionBuilder, GQABuilder, NLVR2Builder, PretrainCorpusBuilder, RetrievalBuilder, VQABuilder
from .errors import BadRowError
from .raw_images import ImageRegionsBuilder
from .regions import ParquetRegionSource, RegionSource, TsvRegionSource
from .tsv import write_lineidx
from .writer import BuildSummary, build_dataset


TASKS = ("caption", "retrieval", "vqa", "gqa", "nlvr2", "pretrain", "nocaps")


def _add_writer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (Parquet shards under data/)")
    parser.add_argument("--feature-dim", type=int, default=2054, help="region vector width (2048 + 6 box dims)")
    parser.add_argument("--rows-per-shard", type=int, default=1000, help="input units (images/questions) per shard")
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes, one shard each at a time")
    parser.add_argument("--skip-bad-rows", action="store_true", help="log, count and skip bad rows instead of failing")
    parser.add_argument("--overwrite", action="store_true", help="rebuild from scratch instead of resuming")
    parser.add_argument("--node-rank", type=int, default=0, help="this machine's rank when several build one corpus")
    parser.add_argument("--num-nodes", type=int, default=1, help="machines building disjoint shards of --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_detector_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, help="raw image folder (runs --detector instead of reading features)")
    parser.add_argument(
        "--detector",
        help="a detector folder (a converted VinVL detector or an AutoModelForObjectDetection checkpoint), a built-in "
        "adapter name, or a factory 'package.module:callable' returning a batched detector",
    )
    parser.add_argument("--detector-kwargs", default="{}", help="JSON keyword arguments for the detector factory")
    parser.add_argument("--batch-size", type=int, default=8, help="images per detector call")
    parser.add_argument("--image-id", choices=("stem", "coco"), default="stem", help="image id from the file name")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m oscar_hf.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build a task dataset as Parquet shards")
    build.add_argument("task", choices=TASKS)
    build.add_argument("--features", nargs="+", type=Path, help="feature TSVs (with .lineidx)")
    build.add_argument("--labels", nargs="+", type=Path, help="label TSVs (tags)")
    build.add_argument("--image-sizes", nargs="+", type=Path, help="VinVL hw.tsv files (image sizes)")
    build.add_argument("--feature-key-index", type=Path, help="imageid2idx.json of a single feature TSV")
    build.add_argument("--regions", type=Path, help="a regions dataset built by `detect` (instead of --features)")
    build.add_argument(
        "--annotations",
        nargs="+",
        default=[],
        help="task annotations; SPLIT=PATH entries (VQA: SPLIT=QUESTIONS[,ANNOTATIONS]); a Karpathy file alone",
    )
    build.add_argument("--corpus", type=Path, help="pretrain: the corpus YAML")
    build.add_argument("--no-key-index", action="store_true", help="pretrain: scan keys instead of imageid2idx.json")
    build.add_argument("--answer-vocab", type=Path, help="vqa/gqa: answer list (.txt/.json/.pkl), index = label id")
    build.add_argument("--answer-min-count", type=int, default=9, help="vqa: min count when building the vocabulary")
    build.add_argument("--caption-rows", choices=("auto", "caption", "image"), default="auto")
    build.add_argument("--test-1k-keys", type=Path, help="retrieval: the original 1K test image keys")
    build.add_argument(
        "--cbs-boxes",
        type=Path,
        help="nocaps: detector boxes (Oscar's val.cbsbox.tsv or nocaps' oi_detector_boxes.json)",
    )
    build.add_argument("--image-key-template", default="{id}", help="feature-file key of an annotation image id")
    _add_writer_options(build)
    _add_detector_options(build)

    detect = commands.add_parser(
        "detect",
        help="run a detector over an image folder into a regions dataset (several processes under accelerate launch)",
    )
    _add_writer_options(detect)
    _add_detector_options(detect)
    detect.add_argument(
        "--original-files",
        action="store_true",
        help="also write OUT/original/predictions.tsv (base64 features) and Oscar's features.tsv/labels.tsv + .lineidx",
    )

    index = commands.add_parser("index", help="write the .lineidx of TSV files")
    index.add_argument("tsv", nargs="+", type=Path)

    push = commands.add_parser("push", help="upload a built folder to a Hub dataset repo")
    push.add_argument("folder", type=Path)
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    return parser


def _split_entries(entries: Sequence[str], task: str) -> dict[str, str]:
    parsed = {}
    for entry in entries:
        split, sep, path = entry.partition("=")
        if not sep or not split or not path:
            raise ValueError(f"{task}: --annotations entries look like SPLIT=PATH, got {entry!r}.")
        parsed[split] = path
    return parsed


def _writer_kwargs(args: argparse.Namespace) -> dict:
    return {
        "units_per_shard": args.rows_per_shard,
        "num_proc": args.num_proc,
        "skip_bad_rows": args.skip_bad_rows,
        "overwrite": args.overwrite,
        "node_rank": args.node_rank,
        "num_nodes": args.num_nodes,
        "progress": not args.no_progress,
    }


def _image_regions_builder(args: argparse.Namespace) -> ImageRegionsBuilder:
    if args.detector is None:
        raise ValueError("--images needs --detector 'package.module:factory'.")
    return ImageRegionsBuilder(
        args.images,
        detector_spec=args.detector,
        detector_kwargs=json.loads(args.detector_kwargs),
        batch_size=args.batch_size,
        feature_dim=args.feature_dim,
        image_id=args.image_id,
    )


def _detect(args: argparse.Namespace) -> None:
    """`detect`: the regions dataset; under `accelerate launch` the main process reports for all."""
    from .detect import detect_regions, process_group

    if args.images is None or args.detector is None:
        raise ValueError("detect needs --images DIR and --detector (a detector folder or 'package.module:factory').")
    summary = detect_regions(
        args.images,
        args.detector,
        args.out,
        detector_kwargs=json.loads(args.detector_kwargs),
        feature_dim=args.feature_dim,
        batch_size=args.batch_size,
        image_id=args.image_id,
        rows_per_shard=args.rows_per_shard,
        num_proc=args.num_proc,
        skip_bad_rows=args.skip_bad_rows,
        overwrite=args.overwrite,
        original_files=args.original_files,
        progress=not args.no_progress,
        node_rank=args.node_rank,
        num_nodes=args.num_nodes,
    )
    if process_group().is_main:
        _report(summary)


def _region_source(args: argparse.Namespace) -> RegionSource:
    if args.images is not None:
        # A sibling, not a subfolder: --out holds only what its own build lists in its manifest.
        regions_out = args.out.parent / f"{args.out.name}-regions"
        build_dataset(_image_regions_builder(args), regions_out, **_writer_kwargs(args))
        return ParquetRegionSource(regions_out)
    if args.regions is not None:
        return ParquetRegionSource(args.regions)
    if not args.features:
        raise ValueError(f"build {args.task}: pass --features (TSV), --regions (built) or --images + --detector.")
    return TsvRegionSource(
        args.features,
        labels=args.labels,
        image_sizes=args.image_sizes,
        feature_dim=args.feature_dim,
        feature_key_index=args.feature_key_index,
    )


def make_builder(args: argparse.Namespace):
    """The task builder the parsed `build` arguments describe."""
    if args.task == "pretrain":
        if args.corpus is None:
            raise ValueError("build pretrain needs --corpus CORPUS.yaml.")
        return PretrainCorpusBuilder(read_corpus_yaml(args.corpus), args.feature_dim, not args.no_key_index)
    if not args.annotations:
        raise ValueError(f"build {args.task} needs --annotations.")
    common = {"feature_dim": args.feature_dim, "image_key_template": args.image_key_template}
    regions = _region_source(args)
    vocab = load_vocabulary(args.answer_vocab) if args.answer_vocab else None
    if args.task == "caption":
        files = [(path, split) if sep else (path, None) for split, sep, path in _partitions(args.annotations)]
        return CaptionBuilder(regions, files, rows=args.caption_rows, **common)
    if args.task == "retrieval":
        return RetrievalBuilder(regions, args.annotations[0], test_1k_keys=args.test_1k_keys, **common)
    splits = _split_entries(args.annotations, args.task)
    if args.task == "nocaps":
        from .nocaps import NocapsBuilder

        if len(splits) != 1:
            raise ValueError("build nocaps takes one SPLIT=IMAGE_INFO.json entry (val or test) per build.")
        ((split, image_info),) = splits.items()
        return NocapsBuilder(regions, image_info, boxes=args.cbs_boxes, split=split, **common)
    if args.task == "vqa":
        pairs = {split: tuple((value.split(",") + [None])[:2]) for split, value in splits.items()}
        return VQABuilder(regions, pairs, answer_vocab=vocab, answer_min_count=args.answer_min_count, **common)
    if args.task == "gqa":
        return GQABuilder(regions, splits, answer_vocab=vocab, **common)
    return NLVR2Builder(regions, splits, **common)


def _partitions(entries: Sequence[str]) -> list[tuple[str, str, str]]:
    out = []
    for entry in entries:
        split, sep, path = entry.partition("=")
        out.append((split, sep, path) if sep else ("", "", entry))
    return out


def _report(summary: BuildSummary) -> None:
    print(json.dumps({"out": str(summary.out), **summary.to_json()}, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for bad input, with the reason on stderr)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "index":
            for path in args.tsv:
                print(write_lineidx(path))
        elif args.command == "push":
            from oscar_hf.training.hub import push_folder

            print(push_folder(args.folder, args.repo_id, repo_type="dataset", private=args.private))
        elif args.command == "detect":
            _detect(args)
        else:
            _report(build_dataset(make_builder(args), args.out, **_writer_kwargs(args)))
    except (BadRowError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # unreadable input, full disk: the reason without a traceback
        print(f"error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    return 0
