"""Before/after: the same CPU benchmark sections of two git revisions, in one run, alternating.

    python benchmarks/compare_revisions.py --base REV [--head HEAD] [--only decoding,padding] [--reps 1]
        [--out benchmarks/results/compare.json]

Each revision is exported with `git archive` and installed (no dependencies) into its own folder, so both
are measured as installed packages, each with its own `benchmarks/` code. Then each repetition runs the
base's and the head's `benchmarks/run.py --suite cpu --only SECTIONS` one after the other, the order
swapped every repetition, so that a slow period of the machine does not favour one side. Reported per
revision: KV-cache decoding (s/batch, tokens/s, speed-up over full recomputation, identical captions) and
skip_padding (s/batch and the speed-ups at each padding point), and head / base ratios of the times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


REPO_ROOT = Path(__file__).resolve().parents[1]


def export_and_install(revision: str, folder: Path) -> tuple[Path, Path, str]:
    """`git archive` of `revision` into folder/src, installed into folder/site. Returns (src, site, commit)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if commit.returncode != 0:
        raise SystemExit(f"--base/--head {revision!r} is not a commit of this repository: {commit.stderr.strip()}")
    commit_id = commit.stdout.strip()
    src, site = folder / "src", folder / "site"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit_id], cwd=REPO_ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(src)],
        check=True,
    )  # fmt: skip
    return src, site, commit_id


def run_sections(src: Path, site: Path, sections: str, out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import oscar_hf; print(oscar_hf.__file__)"],
        env=env, cwd=out.parent, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not where.startswith(str(site)):
        raise SystemExit(f"oscar_hf imported from {where}, not from the installed revision in {site}")
    command = [sys.executable, str(src / "benchmarks" / "run.py"), "--suite", "cpu", "--only", sections]
    subprocess.run([*command, "--out", str(out)], env=env, cwd=out.parent, check=True)
    return json.loads((out / "results_cpu.json").read_text())["results"]


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    decoding = results.get("decoding")
    if decoding:
        summary["decoding"] = {
            "kv_cache_s_per_batch": decoding["variants"]["kv_cache"]["median_s"],
            "kv_cache_tokens_per_s": decoding["variants"]["kv_cache"]["tokens_per_s"],
            "full_recompute_s_per_batch": decoding["variants"]["full_recompute"]["median_s"],
            "speedup_cache_vs_full": decoding["speedup_cache_vs_full"],
            "identical_captions": decoding["identical_captions"],
        }
    padding = results.get("padding")
    if padding:
        summary["padding"] = {
            str(point["max_real_text"]): {
                "skip_padding_s_per_batch": point["median_s"]["ours_sdpa_skip_padding"],
                "speedup_skip_vs_dense": point["speedup_skip_vs_dense"],
                "speedup_skip_vs_visualbert": point["speedup_skip_vs_visualbert"],
            }
            for point in padding["points"]
        }
    return summary


def ratios(base: list[dict[str, Any]], head: list[dict[str, Any]]) -> dict[str, Any]:
    """head / base time of the same repetition, median over repetitions (< 1: the head is faster)."""

    def median_ratio(get) -> float:
        return statistics.median(get(h) / get(b) for b, h in zip(base, head))

    out: dict[str, Any] = {}
    if "decoding" in base[0]:
        out["kv_cache_time_head_over_base"] = median_ratio(lambda s: s["decoding"]["kv_cache_s_per_batch"])
    if "padding" in base[0]:
        out["skip_padding_time_head_over_base"] = {
            point: median_ratio(lambda s, p=point: s["padding"][p]["skip_padding_s_per_batch"])
            for point in base[0]["padding"]
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the 'before' revision (a commit, tag or branch)")
    parser.add_argument("--head", default="HEAD", help="the 'after' revision (default HEAD: committed code only)")
    parser.add_argument("--only", default="decoding,padding", help="CPU sections to run (run.py --only)")
    parser.add_argument("--reps", type=int, default=1, help="repetitions, the order swapped each time")
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        sides = {
            name: export_and_install(rev, Path(tmp) / name) for name, rev in (("base", args.base), ("head", args.head))
        }
        runs: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
        for rep in range(args.reps):
            for name in ("base", "head") if rep % 2 == 0 else ("head", "base"):
                src, site, _ = sides[name]
                print(f"repetition {rep + 1}/{args.reps}: {name}", flush=True)
                runs[name].append(summarise(run_sections(src, site, args.only, Path(tmp) / f"{name}-{rep}")))
    report = {
        "base": {"revision": args.base, "commit": sides["base"][2], "runs": runs["base"]},
        "head": {"revision": args.head, "commit": sides["head"][2], "runs": runs["head"]},
        "sections": args.only,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "ratios": ratios(runs["base"], runs["head"]),
    }
    print(json.dumps(report, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
