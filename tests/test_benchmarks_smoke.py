"""Smoke test of the benchmark runner: `--quick` runs every CPU section at tiny sizes and writes
the JSON report. Timings are never asserted (they are claims for benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_suite_quick_writes_report(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--suite", "cpu", "--quick", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "results_cpu.json").read_text())
    assert report["schema_version"] == 1 and report["suite"] == "cpu" and report["quick"] is True
    # Quick sizes are a smoke test, and every output says so (console, JSON, Markdown).
    assert "not results" in report["note"]
    assert proc.stdout.count("not results") >= 2  # before the sections and after the table
    assert (tmp_path / "results_cpu.md").read_text().startswith("> **QUICK RUN")
    assert report["failures"] == []
    assert {"torch", "transformers", "cpu_count"} <= set(report["environment"])

    results = report["results"]
    for dtype in ("fp32", "bf16"):
        trunk = results["trunk"]["dtypes"][dtype]
        assert trunk["gemm_gflops"] > 0
        assert set(trunk["variants"]) == {"ours_sdpa", "ours_eager", "visualbert_eager"}
        for variant in trunk["variants"].values():
            assert variant["examples_per_s"] > 0 and variant["fraction_of_gemm"] > 0
        assert trunk["speedup_sdpa_vs_visualbert"] > 0

    padding = results["padding"]
    assert [p["max_real_text"] for p in padding["points"]] == [8, 16]
    for point in padding["points"]:
        assert set(point["examples_per_s"]) == {"ours_sdpa_skip_padding", "ours_sdpa_dense", "visualbert_eager"}
        assert point["pooled_max_abs_diff_skip_vs_dense"] < 1e-5
        assert point["speedup_skip_vs_visualbert"] > 0

    decoding = results["decoding"]
    assert decoding["identical_captions"] is True
    assert set(decoding["variants"]) == {"kv_cache", "full_recompute"}
    assert decoding["speedup_cache_vs_full"] > 0
    for dtype in ("fp32", "bf16"):
        rates = decoding["rates"][dtype]
        assert rates["tokens_per_s"] > 0 and rates["gemm_gflops"] > 0 and rates["fraction_of_gemm"] > 0
        assert rates["images"] >= 1

    training = results["training"]
    for variant in ("no_checkpointing", "gradient_checkpointing", "sparse_prediction"):
        assert training["variants"][variant]["examples_per_s"] > 0
        assert training["variants"][variant]["memory"]["steady_state_peak_rss_mb"] > 0
    assert training["losses_finite"] is True

    assert results["data"]["status"] == "ok" or results["data"]["status"].startswith(("skipped", "failed"))

    sweeps = results["scaling"]["sweeps"]
    assert set(sweeps) == {"regions", "text_len", "batch"}
    for name, points in sweeps.items():
        assert len(points) >= 2 and all(p["median_s"] > 0 for p in points)
        assert [p[name] for p in points] == sorted(p[name] for p in points)
    if results["scaling"]["plot"] == "scaling.png":
        assert (tmp_path / "scaling.png").stat().st_size > 0

    assert {t["key"] for t in report["targets"]} == {
        "kv_cache_speedup",
        "sdpa_vs_visualbert_fp32",
        "sdpa_fraction_of_gemm_fp32",
        "decoding_fraction_of_gemm_fp32",
        "skip_padding_vs_visualbert_fp32",
    }
    # The quick plan has no batch with a longest row of 96 tokens: that target is not measured.
    assert next(t for t in report["targets"] if t["key"] == "skip_padding_vs_visualbert_fp32")["value"] is None
    assert (tmp_path / "results_cpu.md").read_text().strip()
