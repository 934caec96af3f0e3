"""Speed and memory benchmarks of Oscar against peers and against the machine's GEMM rate.

    python benchmarks/run.py --suite cpu            # full CPU suite (about 15-20 min on 2 cores)
    python benchmarks/run.py --suite cpu --quick    # tiny sizes, a smoke test (< 1 min): not results
    python benchmarks/run.py --suite cpu --only padding,decoding   # some CPU sections only
    python benchmarks/run.py --suite gpu            # CUDA device, bf16 (< 8 min on an H100/H200)

Prints a table and writes `<out>/results_<suite>.json` and `<out>/results_<suite>.md` (and
`scaling.png` for the CPU suite). The exit status is 1 when a correctness check inside a benchmark
failed (e.g. cached and recomputed captions differ) or a section crashed; missed speed targets are
reported, not failed. Method (interleaving, paired ratios, FLOP formula): see `bench_lib.py`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however the script is started

from bench_lib import fmt, md_table  # noqa: E402  (needs the path above)


SCHEMA_VERSION = 1
DEFAULT_OUT = Path(__file__).resolve().parent / "out"

# Targets from the benchmarks issue: (key, description, threshold).
CPU_TARGETS = (
    ("kv_cache_speedup", "KV-cache decoding vs full recomputation (identical captions), x", 4.0),
    ("sdpa_vs_visualbert_fp32", "ours SDPA vs VisualBERT eager trunk, CPU fp32, x", 1.3),
    ("sdpa_fraction_of_gemm_fp32", "ours SDPA trunk GFLOP/s / measured GEMM GFLOP/s, fp32", 0.5),
    (
        "decoding_fraction_of_gemm_fp32",
        "cached caption decoding, useful GFLOP/s / GEMM GFLOP/s of the same run, fp32 (same captions)",
        0.6,
    ),
    (
        "skip_padding_vs_visualbert_fp32",
        "ours with skip_padding vs VisualBERT, CPU fp32, padded batch with longest text row 96 of 128, x",
        1.3,
    ),
)


# ----------------------------------------------------------------------------------------------
# Targets, failures, tables
# ----------------------------------------------------------------------------------------------


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def cpu_targets(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """Measured value and verdict of each target (None when the section did not run)."""
    identical = _get(sections, "decoding", "identical_captions")
    values = {
        "kv_cache_speedup": _get(sections, "decoding", "speedup_cache_vs_full") if identical else None,
        "sdpa_vs_visualbert_fp32": _get(sections, "trunk", "dtypes", "fp32", "speedup_sdpa_vs_visualbert"),
        "decoding_fraction_of_gemm_fp32": _get(sections, "decoding", "rates", "fp32", "fraction_of_gemm")
        if identical
        else None,
        "sdpa_fraction_of_gemm_fp32": _get(
            sections, "trunk", "dtypes", "fp32", "variants", "ours_sdpa", "fraction_of_gemm"
        ),
        "skip_padding_vs_visualbert_fp32": next(
            (
                p["speedup_skip_vs_visualbert"]
                for p in _get(sections, "padding", "points") or []
                if p["max_real_text"] == 96
            ),
            None,
        ),
    }
    return [
        {
            "key": key,
            "description": text,
            "threshold": threshold,
            "value": values[key],
            "met": None if values[key] is None else bool(values[key] >= threshold),
        }
        for key, text, threshold in CPU_TARGETS
    ]


def failures(sections: dict[str, Any]) -> list[str]:
    """Correctness checks and crashed sections (timing targets are not failures)."""
    problems = [
        f"{name}: {value['status']}"
        for name, value in sections.items()
        if isinstance(value, dict) and str(value.get("status", "")).startswith("failed") and name != "data"
    ]
    for path in (("decoding",), ("gpu_decoding",)):
        identical = _get(sections, *path, "identical_captions")
        if identical is False:
            problems.append(f"{path[0]}: cached and recomputed captions differ")
    return problems


def trunk_table(trunk: dict[str, Any], names: list[str]) -> str:
    rows = []
    for dtype, data in trunk["dtypes"].items():
        best = data["variants"][names[0]]["examples_per_s"]
        for name in names:
            v = data["variants"].get(name)
            if v is None:
                continue
            rows.append(
                [dtype, name, v["median_s"] * 1000, v["examples_per_s"], v["gflops"], v["fraction_of_gemm"],
                 v["examples_per_s"] / best]
            )  # fmt: skip
        rows.append([dtype, f"GEMM {data['gemm_n']}^3", None, None, data["gemm_gflops"], 1.0, None])
    return md_table(
        ["dtype", "variant", "ms/batch", "examples/s", "GFLOP/s", "of GEMM", f"throughput vs {names[0]}"], rows
    )


def render_cpu(sections: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    """The markdown tables of the CPU suite."""
    out: list[str] = []
    trunk = sections.get("trunk", {})
    if "dtypes" in trunk:
        out.append(
            f"### Trunk forward (batch {trunk['batch']}, {trunk['text_len']} text + {trunk['regions']} regions, "
            f"{trunk['gflop_per_example']:.2f} GFLOP/example, median of {trunk['reps']} interleaved reps)\n"
        )
        out.append(trunk_table(trunk, ["ours_sdpa", "ours_eager", "visualbert_eager"]))
        rows = [
            [dtype, d["speedup_sdpa_vs_visualbert"], d["speedup_sdpa_vs_eager"], d["speedup_eager_vs_visualbert"],
             d["sdpa_eager_max_abs_diff"]]
            for dtype, d in trunk["dtypes"].items()
        ]  # fmt: skip
        out.append("\nPaired speed-ups (median of per-rep time ratios):\n")
        out.append(
            md_table(
                ["dtype", "SDPA vs VisualBERT", "SDPA vs eager", "eager vs VisualBERT", "max abs SDPA-eager diff"],
                rows,
            )
        )
    pad = sections.get("padding", {})
    if "points" in pad:
        out.append(
            f"\n### Padded batches (batch {pad['batch']}, text padded to {pad['text_len']} + {pad['regions']} regions, "
            f"fp32; `skip_padding` as the pooled heads run it; median of {pad['reps']} interleaved reps)\n"
        )
        rows = [
            [p["max_real_text"], p["mean_real_text"], p["packed_length"], p["examples_per_s"]["ours_sdpa_skip_padding"],
             p["examples_per_s"]["ours_sdpa_dense"], p["examples_per_s"]["visualbert_eager"],
             p["speedup_skip_vs_visualbert"], p["speedup_skip_vs_dense"], f"{p['pooled_max_abs_diff_skip_vs_dense']:.1e}"]
            for p in pad["points"]
        ]  # fmt: skip
        out.append(
            md_table(
                [
                    "longest text row",
                    "mean text row",
                    "packed length",
                    "skip ex/s",
                    "dense ex/s",
                    "VisualBERT ex/s",
                    "skip vs VisualBERT",
                    "skip vs dense",
                    "pooled max abs diff",
                ],
                rows,
            )
        )
    dec = sections.get("decoding", {})
    if "variants" in dec:
        out.append(
            f"\n### Caption decoding (beam {dec['num_beams']}, max_length {dec['max_length']}, batch {dec['batch']}, "
            f"{dec['tags']} tags + {dec['regions']} regions; decoded length {dec['decoded_length']})\n"
        )
        rows = [[n, v["median_s"], v["tokens_per_s"]] for n, v in dec["variants"].items()]
        out.append(md_table(["variant", "s/batch", "caption tokens/s"], rows))
        out.append(
            f"\nKV-cache speed-up: **{dec['speedup_cache_vs_full']:.2f}x**; identical captions: "
            f"{fmt(dec['identical_captions'])}"
        )
        rates = dec.get("rates", {})
        if "fp32" in rates:
            out.append(
                f"\nCached decoding against the GEMM rate of the same run (useful FLOPs; native bf16: "
                f"{fmt(rates['native_bf16'])}; bf16 captions equal fp32: {fmt(rates['bf16_same_captions_as_fp32'])}):\n"
            )
            rows = [
                [d, r["images"], r["median_s"], r["tokens_per_s"], r["gflops"], r["gemm_n"], r["gemm_gflops"],
                 r["fraction_of_gemm"]]
                for d, r in ((d, rates[d]) for d in ("fp32", "bf16") if d in rates)
            ]  # fmt: skip
            out.append(
                md_table(
                    [
                        "dtype",
                        "images",
                        "s/batch",
                        "caption tokens/s",
                        "useful GFLOP/s",
                        "GEMM n",
                        "GEMM GFLOP/s",
                        "share of GEMM",
                    ],
                    rows,
                )  # fmt: skip
            )
    tr = sections.get("training", {})
    if "variants" in tr:
        out.append(
            f"\n### Pre-training step (batch {tr['batch']}, {tr['text_len']} text + {tr['regions']} regions, "
            f"fp32, {tr['optimizer']}, {tr['useful_gflop_per_step']:.0f} useful GFLOP/step)\n"
        )
        rows = [
            [n, v["median_s"], v["examples_per_s"], v["useful_gflops"], v["memory"]["steady_state_peak_rss_mb"],
 v["memory"]["rss_before_step_mb"]]
            for n, v in tr["variants"].items()
        ]  # fmt: skip
        out.append(
            md_table(
                ["variant", "s/step", "examples/s", "useful GFLOP/s", "peak RSS MiB (step)", "RSS before step MiB"],
                rows,
            )
        )
        out.append(
            f"\nCheckpointing slow-down: {tr['slowdown_checkpointing']:.2f}x; memory saved: {fmt(tr['memory_saving_mb'], 0)} MiB"
        )
        if "speedup_sparse_prediction" in tr:
            out.append(
                f"\nSparse vocabulary logits (labelled positions only) vs dense: "
                f"{tr['speedup_sparse_prediction']:.2f}x faster steps"
            )
    data = sections.get("data", {})
    if data:
        out.append(f"\n### Data (Parquet vs TSV+base64)\n\n{data.get('status', '-')}")
    if data.get("status") == "ok":
        # The data script prints its own table; keep it as it is.
        out.append(f"\n`{data['command']}`\n\n" + data["stdout_tail"].split("\nwrote ")[0].strip())
    sc = sections.get("scaling", {})
    if "sweeps" in sc:
        out.append(f"\n### Scaling (trunk forward, fp32, SDPA; {sc['isolation']}; plot: {sc['plot']})\n")
        rows = [
            [name, p["batch"], p["text_len"], p["regions"], p["median_s"] * 1000, p["examples_per_s"], p["gflops"],
             p["activation_mb"], p["peak_rss_mb"]]
            for name, points in sc["sweeps"].items()
            for p in points
        ]  # fmt: skip
        out.append(
            md_table(
                ["sweep", "batch", "text", "regions", "ms", "examples/s", "GFLOP/s", "activation MiB", "peak RSS MiB"],
                rows,
            )
        )
    for name, value in sections.items():
        if isinstance(value, dict) and str(value.get("status", "")).startswith("failed"):
            out.append(f"\n**{name} {value['status']}**")
    out.append("\n### Targets\n")
    out.append(
        md_table(
            ["target", "threshold", "measured", "met"],
            [[t["description"], t["threshold"], t["value"], t["met"]] for t in targets],
        )
    )
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


def child_main(task: str, spec_json: str) -> None:
    """Runs one child-process task (see `bench_lib.run_child`)."""
    from bench_lib import emit_child_result
    from cpu_suite import CHILD_TASKS

    emit_child_result(CHILD_TASKS[task](json.loads(spec_json)))


# Said on the console, in the JSON report and at the top of the Markdown report of every --quick run.
QUICK_NOTE = (
    "QUICK RUN: tiny sizes that only exercise every code path. These numbers are not results: do not quote, "
    "compare or commit them; run without --quick for measurements (benchmarks/RESULTS.md)."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes: a smoke test of every code path (its numbers are not results)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: benchmarks/out)")
    parser.add_argument(
        "--device", default="cuda", help="gpu suite only: device to run on ('cpu' exercises the code without a GPU)"
    )
    parser.add_argument("--no-compile", action="store_true", help="gpu suite only: skip the torch.compile variant")
    parser.add_argument(
        "--only",
        help="cpu suite only: comma-separated sections to run (trunk, padding, decoding, training, data, scaling)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.spec)
        return 0
    if args.only and args.suite != "cpu":
        parser.error("--only selects sections of the cpu suite")
    only = tuple(args.only.split(",")) if args.only else None

    import torch  # after argument parsing, so `--help` is instant
    from bench_lib import environment

    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "suite": args.suite,
        "quick": args.quick,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/run.py "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "environment": environment(),
    }
    if args.quick:
        report["note"] = QUICK_NOTE
        print(QUICK_NOTE, flush=True)
    if args.suite == "cpu":
        from cpu_suite import run_cpu_suite

        torch.manual_seed(0)
        try:
            sections = run_cpu_suite(args.quick, args.out, log=lambda m: print(m, flush=True), only=only)
        except ValueError as err:
            parser.error(str(err))
        report["results"] = sections
        report["targets"] = cpu_targets(sections)
        text = render_cpu(sections, report["targets"])
    else:
        from gpu_suite import render_gpu, run_gpu_suite

        sections = run_gpu_suite(args.quick, args.device, not args.no_compile, log=lambda m: print(m, flush=True))
        report["results"] = sections
        report["targets"] = sections.get("targets", [])
        text = render_gpu(sections)
    if args.quick:
        text = f"> **{QUICK_NOTE}**\n\n{text}\n\n> **{QUICK_NOTE}**"
    report["failures"] = failures(sections)
    report["total_seconds"] = time.perf_counter() - start
    json_path = args.out / f"results_{args.suite}.json"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    (args.out / f"results_{args.suite}.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nwrote {json_path} ({report['total_seconds']:.0f} s)")
    for problem in report["failures"]:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
