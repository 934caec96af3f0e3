"""The CPU suite: trunk forward vs VisualBERT and the GEMM rate, caption decoding with and without
the key/value cache, training steps with and without gradient checkpointing, data loading, scaling.

Every section returns a JSON-ready dict; `run.py` prints the tables and writes the files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from bench_lib import (
    BASE,
    BENCH_DIR,
    TINY,
    ModelSize,
    PeakRSS,
    caption_decoding_flops,
    caption_inputs,
    cpu_has_native_bf16,
    gemm_callable,
    gemm_flops,
    interleaved,
    median,
    oscar_config,
    paired_ratio,
    pretraining_inputs,
    pretraining_step_flops,
    run_child,
    time_call,
    trunk_forward_flops,
    trunk_inputs,
    visualbert_inputs,
    visualbert_model,
)


@dataclass
class CpuPlan:
    """Sizes and repetitions of one CPU run; `quick()` is the smoke-test variant."""

    size: ModelSize = BASE
    gemm_n: int = 4096
    trunk_batch: int = 32
    trunk_text: int = 128
    trunk_regions: int = 50
    trunk_reps: int = 3
    # Padding section: same layout, the longest real text row of the batch at each of these lengths.
    padding_max_real_points: list[int] = field(default_factory=lambda: [32, 64, 96, 128])
    padding_reps: int = 3
    decode_batch: int = 8
    decode_beams: int = 5
    decode_max_length: int = 20
    decode_tags: int = 15
    decode_regions: int = 50
    decode_reps: int = 2
    train_batch: int = 32
    train_text: int = 35
    train_regions: int = 50
    train_reps: int = 3
    scaling_batch: int = 8
    scaling_text: int = 128
    scaling_regions: int = 50
    scaling_region_points: list[int] = field(default_factory=lambda: [10, 30, 50, 100])
    scaling_text_points: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    scaling_batch_points: list[int] = field(default_factory=lambda: [1, 4, 8, 16])
    scaling_reps: int = 3
    # One process per scaling point isolates its memory; quick runs share one process to stay fast.
    scaling_isolated: bool = True

    @classmethod
    def quick(cls) -> CpuPlan:
        return cls(
            size=TINY,
            gemm_n=256,
            trunk_batch=2,
            trunk_text=16,
            trunk_regions=10,
            trunk_reps=2,
            padding_max_real_points=[8, 16],
            padding_reps=1,
            decode_batch=2,
            decode_beams=2,
            decode_max_length=6,
            decode_tags=4,
            decode_regions=5,
            decode_reps=1,
            train_batch=2,
            train_text=12,
            train_regions=5,
            train_reps=1,
            scaling_batch=2,
            scaling_text=16,
            scaling_regions=10,
            scaling_region_points=[5, 10],
            scaling_text_points=[8, 16],
            scaling_batch_points=[1, 2],
            scaling_reps=1,
            scaling_isolated=False,
        )


def _size_from(spec: dict[str, Any]) -> ModelSize:
    return ModelSize(**spec["size"])


# ----------------------------------------------------------------------------------------------
# Trunk forward: ours (SDPA, eager) vs VisualBERT, and the GEMM rate, interleaved
# ----------------------------------------------------------------------------------------------


def bench_trunk(plan: CpuPlan) -> dict[str, Any]:
    """Forward throughput at VQA layout, fp32 and bf16, with the GEMM reference in the same loop."""
    from oscar_hf import OscarModel

    size = plan.size
    flops_per_example = trunk_forward_flops(size, plan.trunk_text, plan.trunk_regions)
    torch.manual_seed(0)
    ours = OscarModel(oscar_config(size, max_regions=plan.trunk_regions)).eval()
    peer = visualbert_model(size).eval()
    results: dict[str, Any] = {
        "batch": plan.trunk_batch,
        "text_len": plan.trunk_text,
        "regions": plan.trunk_regions,
        "gflop_per_example": flops_per_example / 1e9,
        "reps": plan.trunk_reps,
        "dtypes": {},
    }
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ours.to(dtype)
        peer.to(dtype)
        inputs = trunk_inputs(plan.trunk_batch, plan.trunk_text, plan.trunk_regions, size, dtype)
        peer_inputs = visualbert_inputs(inputs)

        def run_ours(impl: str, inputs: dict[str, torch.Tensor] = inputs) -> torch.Tensor:
            # Same module, same weights: only the attention kernel differs between the two variants.
            ours.config._attn_implementation = impl
            with torch.inference_mode():
                return ours(**inputs).last_hidden_state

        def run_peer(peer_inputs: dict[str, torch.Tensor] = peer_inputs) -> torch.Tensor:
            with torch.inference_mode():
                return peer(**peer_inputs).last_hidden_state

        # The two kernels of ours must agree before their speed is compared.
        max_diff = (run_ours("sdpa").float() - run_ours("eager").float()).abs().max().item()
        gemm = gemm_callable(plan.gemm_n, dtype)
        times = interleaved(
            {
                "gemm": gemm,
                "ours_sdpa": lambda: run_ours("sdpa"),
                "ours_eager": lambda: run_ours("eager"),
                "visualbert_eager": run_peer,
            },
            reps=plan.trunk_reps,
            warmup=1,
        )
        ours.config._attn_implementation = "sdpa"
        gemm_rates = [gemm_flops(plan.gemm_n) / t / 1e9 for t in times["gemm"]]
        work = plan.trunk_batch * flops_per_example
        variants = {}
        for name in ("ours_sdpa", "ours_eager", "visualbert_eager"):
            rates = [work / t / 1e9 for t in times[name]]
            variants[name] = {
                "times_s": times[name],
                "median_s": median(times[name]),
                "examples_per_s": plan.trunk_batch / median(times[name]),
                "gflops": median(rates),
                # Per repetition: model rate over the GEMM rate measured right next to it.
                "fraction_of_gemm": median([r / g for r, g in zip(rates, gemm_rates)]),
            }
        results["dtypes"][dtype_name] = {
            "gemm_n": plan.gemm_n,
            "gemm_gflops": median(gemm_rates),
            "gemm_gflops_reps": gemm_rates,
            "variants": variants,
            "speedup_sdpa_vs_visualbert": paired_ratio(times["visualbert_eager"], times["ours_sdpa"]),
            "speedup_sdpa_vs_eager": paired_ratio(times["ours_eager"], times["ours_sdpa"]),
            "speedup_eager_vs_visualbert": paired_ratio(times["visualbert_eager"], times["ours_eager"]),
            "sdpa_eager_max_abs_diff": max_diff,
        }
    return results


# ----------------------------------------------------------------------------------------------
# Padded VQA batches: skipping masked positions vs computing them
# ----------------------------------------------------------------------------------------------


def bench_padding(plan: CpuPlan) -> dict[str, Any]:
    """fp32 trunk forward on padded batches (text padded to `trunk_text`, all regions real), as the
    classification, retrieval and NLVR2 heads run it (`skip_padding`), vs the dense trunk and
    VisualBERT on the same batch. The packed length is the longest real row, so it is swept."""
    from oscar_hf import OscarModel

    size = plan.size
    torch.manual_seed(0)
    ours = OscarModel(oscar_config(size, max_regions=plan.trunk_regions)).eval()
    peer = visualbert_model(size).eval()
    dense_flops = trunk_forward_flops(size, plan.trunk_text, plan.trunk_regions)  # per example
    points = []
    for max_real in plan.padding_max_real_points:
        inputs = trunk_inputs(plan.trunk_batch, plan.trunk_text, plan.trunk_regions, size, max_real_text=max_real)
        peer_inputs = visualbert_inputs(inputs)

        def run_ours(skip: bool, inputs: dict[str, torch.Tensor] = inputs) -> torch.Tensor:
            with torch.inference_mode():
                return ours(**inputs, skip_padding=skip).pooler_output

        def run_peer(peer_inputs: dict[str, torch.Tensor] = peer_inputs) -> torch.Tensor:
            with torch.inference_mode():
                return peer(**peer_inputs).pooler_output

        max_diff = (run_ours(True) - run_ours(False)).abs().max().item()
        times = interleaved(
            {
                "ours_sdpa_skip_padding": lambda: run_ours(True),
                "ours_sdpa_dense": lambda: run_ours(False),
                "visualbert_eager": run_peer,
            },
            reps=plan.padding_reps,
            warmup=1,
        )
        real_text = int(inputs["attention_mask"].sum())
        points.append(
            {
                "max_real_text": max_real,
                "mean_real_text": real_text / plan.trunk_batch,
                "packed_length": max_real + plan.trunk_regions,
                "dense_length": plan.trunk_text + plan.trunk_regions,
                "median_s": {name: median(t) for name, t in times.items()},
                "examples_per_s": {name: plan.trunk_batch / median(t) for name, t in times.items()},
                # Useful work: the packed sequence's FLOPs; the dense variants compute the padding too.
                "packed_gflop_per_example": trunk_forward_flops(size, max_real, plan.trunk_regions) / 1e9,
                "dense_gflop_per_example": dense_flops / 1e9,
                "speedup_skip_vs_visualbert": paired_ratio(times["visualbert_eager"], times["ours_sdpa_skip_padding"]),
                "speedup_skip_vs_dense": paired_ratio(times["ours_sdpa_dense"], times["ours_sdpa_skip_padding"]),
                "pooled_max_abs_diff_skip_vs_dense": max_diff,
            }
        )
    return {
        "batch": plan.trunk_batch,
        "text_len": plan.trunk_text,
        "regions": plan.trunk_regions,
        "reps": plan.padding_reps,
        "points": points,
    }


# ----------------------------------------------------------------------------------------------
# Caption decoding: key/value cache vs full recomputation
# ----------------------------------------------------------------------------------------------


def bench_decoding(plan: CpuPlan) -> dict[str, Any]:
    """Beam search with and without the cache; the captions must be identical."""
    from oscar_hf import OscarForImageCaptioning

    size = plan.size
    torch.manual_seed(0)
    config = oscar_config(size, max_regions=plan.decode_regions)
    model = OscarForImageCaptioning(config).eval()
    inputs = caption_inputs(plan.decode_batch, plan.decode_tags, plan.decode_regions, size, config.bos_token_id)
    common = dict(
        num_beams=plan.decode_beams,
        max_length=plan.decode_max_length,
        do_sample=False,
        pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
        original_decoding=False,
    )
    outputs: dict[str, torch.Tensor] = {}

    def decode(use_cache: bool) -> None:
        outputs["cache" if use_cache else "full"] = model.generate(**inputs, use_cache=use_cache, **common)

    # Warm-up with the cheap cached variant only: a recomputing call costs as much as many cached
    # ones, and its one-off start-up costs are negligible next to its length. Every timed call
    # overwrites the compared captions, so the last ones of each variant are compared.
    decode(True)
    times = interleaved(
        {"kv_cache": lambda: decode(True), "full_recompute": lambda: decode(False)}, reps=plan.decode_reps, warmup=0
    )
    identical = torch.equal(outputs["cache"], outputs["full"])
    caption_tokens = plan.decode_batch * (outputs["cache"].shape[1] - 1)  # tokens after [CLS], per image
    rates = _decoding_rates(plan, model, inputs, common, outputs["cache"])
    return {
        "rates": rates,
        "batch": plan.decode_batch,
        "num_beams": plan.decode_beams,
        "max_length": plan.decode_max_length,
        "tags": plan.decode_tags,
        "regions": plan.decode_regions,
        "decoded_length": int(outputs["cache"].shape[1]),
        "identical_captions": identical,
        "variants": {
            name: {"times_s": t, "median_s": median(t), "tokens_per_s": caption_tokens / median(t)}
            for name, t in times.items()
        },
        "speedup_cache_vs_full": paired_ratio(times["full_recompute"], times["kv_cache"]),
    }


def _decoding_rates(plan: CpuPlan, model, inputs: dict, common: dict, reference: torch.Tensor) -> dict[str, Any]:
    """Cached decoding in fp32 and bf16 against the GEMM rate of the same dtype, interleaved in one
    run; useful FLOPs as `caption_decoding_flops` counts them.

    On a CPU without native bf16 (emulated at about 1% of the fp32 rate) the bf16 variant decodes the
    first image only and its GEMM reference is 1024^3, so that it takes minutes, not an hour; the
    result says so (`bf16.images`, `bf16.gemm_n`)."""
    import copy

    native_bf16 = cpu_has_native_bf16()
    images = {"fp32": plan.decode_batch, "bf16": plan.decode_batch if native_bf16 else 1}
    gemm_n = {"fp32": plan.gemm_n, "bf16": plan.gemm_n if native_bf16 else min(plan.gemm_n, 1024)}
    models = {"fp32": model, "bf16": copy.deepcopy(model).to(torch.bfloat16)}
    captions: dict[str, torch.Tensor] = {}

    def decode(dtype: str) -> None:
        rows = {k: v[: images[dtype]] for k, v in inputs.items()}
        rows["img_feats"] = rows["img_feats"].to(models[dtype].dtype)
        captions[dtype] = models[dtype].generate(**rows, use_cache=True, **common)

    decode("bf16")  # warm-up of the bf16 kernels
    variants = {f"decode_{d}": (lambda d=d: decode(d)) for d in models}
    gemms = {
        f"gemm_{d}": gemm_callable(gemm_n[d], dt) for d, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    times = interleaved({**variants, **gemms}, reps=plan.decode_reps, warmup=1)
    steps = reference.shape[1] - 1
    result: dict[str, Any] = {"native_bf16": native_bf16}
    for d in models:
        useful = caption_decoding_flops(
            plan.size, images[d], plan.decode_beams, plan.decode_tags, plan.decode_regions, steps
        )
        decode_rates = [useful / t / 1e9 for t in times[f"decode_{d}"]]
        gemm_rates = [gemm_flops(gemm_n[d]) / t / 1e9 for t in times[f"gemm_{d}"]]
        result[d] = {
            "images": images[d],
            "gemm_n": gemm_n[d],
            "useful_gflop_per_batch": useful / 1e9,
            "median_s": median(times[f"decode_{d}"]),
            "tokens_per_s": images[d] * steps / median(times[f"decode_{d}"]),
            "gflops": median(decode_rates),
            "gemm_gflops": median(gemm_rates),
            "fraction_of_gemm": median([r / g for r, g in zip(decode_rates, gemm_rates)]),
        }
    result["bf16_same_captions_as_fp32"] = bool(torch.equal(captions["bf16"], reference[: images["bf16"]]))
    return result


# ----------------------------------------------------------------------------------------------
# Training steps: with and without gradient checkpointing, dense and sparse vocabulary logits
# ----------------------------------------------------------------------------------------------


def set_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    """Gradient checkpointing on/off under the name the installed transformers prefers (recent
    releases renamed it `activation_checkpointing_*` and warn on the old name)."""
    prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    getattr(model, f"{prefix}_checkpointing_{'enable' if enabled else 'disable'}")()


def _pretraining_setup(size: ModelSize, batch: int, text: int, regions: int):
    from oscar_hf import OscarForPreTraining

    torch.manual_seed(0)
    model = OscarForPreTraining(oscar_config(size, max_regions=regions)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = pretraining_inputs(batch, text, regions, size)

    def step(checkpointing: bool, sparse_prediction: bool = False) -> float:
        if checkpointing != model.bert.encoder.layer[0].gradient_checkpointing:
            set_checkpointing(model, checkpointing)
        optimizer.zero_grad(set_to_none=True)
        loss = model(**inputs, sparse_prediction=sparse_prediction).loss
        loss.backward()
        optimizer.step()
        return loss.item()

    labelled_per_example = float((inputs["labels"] != -100).sum()) / batch
    return labelled_per_example, step


def child_train_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: peak memory of training steps in one configuration (first step allocates the
    optimizer state, the second is the steady state that is sampled)."""
    _, step = _pretraining_setup(_size_from(spec), spec["batch"], spec["text_len"], spec["regions"])
    step(spec["checkpointing"], spec["sparse_prediction"])
    with PeakRSS() as sampler:
        seconds = time_call(lambda: step(spec["checkpointing"], spec["sparse_prediction"]))
    return {
        "steady_state_peak_rss_mb": sampler.peak_mb,
        "rss_before_step_mb": sampler.baseline_mb,
        "method": sampler.method,
        "step_s": seconds,
    }


def bench_training(plan: CpuPlan) -> dict[str, Any]:
    """Step throughput interleaved in this process; peak memory from one child per configuration."""
    size = plan.size
    labelled, step = _pretraining_setup(size, plan.train_batch, plan.train_text, plan.train_regions)
    losses: list[float] = [step(False)]  # one warm-up step allocates the optimizer state for every variant
    times = interleaved(
        {
            "no_checkpointing": lambda: losses.append(step(False)),
            "gradient_checkpointing": lambda: losses.append(step(True)),
            # The pre-training recipe's default: vocabulary logits at the labelled positions only.
            "sparse_prediction": lambda: losses.append(step(False, sparse_prediction=True)),
        },
        reps=plan.train_reps,
        warmup=0,
    )
    useful = plan.train_batch * pretraining_step_flops(size, plan.train_text, plan.train_regions)
    # The sparse variant does the same trunk work but scores only the labelled positions.
    useful_sparse = plan.train_batch * pretraining_step_flops(size, plan.train_text, plan.train_regions, labelled)
    variants: dict[str, Any] = {}
    configurations = (
        ("no_checkpointing", False, False),
        ("gradient_checkpointing", True, False),
        ("sparse_prediction", False, True),
    )
    for name, checkpointing, sparse in configurations:
        memory = run_child(
            "train_memory",
            {
                "size": asdict(size),
                "batch": plan.train_batch,
                "text_len": plan.train_text,
                "regions": plan.train_regions,
                "checkpointing": checkpointing,
                "sparse_prediction": sparse,
            },
        )
        variants[name] = {
            "times_s": times[name],
            "median_s": median(times[name]),
            "examples_per_s": plan.train_batch / median(times[name]),
            "useful_gflops": (useful_sparse if sparse else useful) / median(times[name]) / 1e9,
            "memory": memory,
        }
    return {
        "batch": plan.train_batch,
        "text_len": plan.train_text,
        "regions": plan.train_regions,
        "optimizer": "AdamW",
        "useful_gflop_per_step": useful / 1e9,
        "useful_gflop_per_step_sparse": useful_sparse / 1e9,
        "labelled_positions_per_example": labelled,
        "variants": variants,
        "slowdown_checkpointing": paired_ratio(times["gradient_checkpointing"], times["no_checkpointing"]),
        "speedup_sparse_prediction": paired_ratio(times["no_checkpointing"], times["sparse_prediction"]),
        "memory_saving_mb": variants["no_checkpointing"]["memory"]["steady_state_peak_rss_mb"]
        - variants["gradient_checkpointing"]["memory"]["steady_state_peak_rss_mb"]
        if variants["no_checkpointing"]["memory"]["steady_state_peak_rss_mb"] is not None
        else None,
        "losses_finite": all(torch.isfinite(torch.tensor(losses)).tolist()),
    }


# ----------------------------------------------------------------------------------------------
# Data: Parquet vs TSV + base64 (the script belongs to the data work; called when present)
# ----------------------------------------------------------------------------------------------


DATA_SCRIPT = BENCH_DIR / "data_parquet_vs_tsv.py"


def bench_data(quick: bool, out_dir: Path, timeout_s: float = 900) -> dict[str, Any]:
    """Runs `data_parquet_vs_tsv.py` in a subprocess if it exists, its JSON going to the output folder.

    A subprocess keeps the dataset library's memory and threads out of the model benchmarks; quick
    mode asks the script for a small synthetic set.
    """
    if not DATA_SCRIPT.is_file():
        return {"status": f"skipped: {DATA_SCRIPT.name} not found"}
    json_path = out_dir / "data_parquet_vs_tsv.json"
    json_path.unlink(missing_ok=True)
    sizes = ["--images", "40", "--regions", "10", "--repeats", "1"] if quick else []
    cmd = [sys.executable, str(DATA_SCRIPT), *sizes, "--json", str(json_path)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=BENCH_DIR.parent)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: timed out after {timeout_s:.0f} s"}
    result: dict[str, Any] = {
        "status": "ok" if proc.returncode == 0 and json_path.is_file() else f"failed: exit {proc.returncode}",
        "command": " ".join(["python", f"benchmarks/{DATA_SCRIPT.name}", *sizes]),
        "seconds": time.perf_counter() - start,
        "stdout_tail": proc.stdout[-3000:],
    }
    if result["status"] == "ok":
        result["result"] = json.loads(json_path.read_text())
    else:
        result["stderr_tail"] = proc.stderr[-1500:]
    return result


# ----------------------------------------------------------------------------------------------
# Scaling: time and memory against regions, text length and batch
# ----------------------------------------------------------------------------------------------


def child_forward_points(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: trunk forward (fp32, SDPA, inference) at each (batch, text_len, regions) point."""
    from oscar_hf import OscarModel

    size = _size_from(spec)
    torch.manual_seed(0)
    model = OscarModel(oscar_config(size, max_regions=spec["max_regions"])).eval()
    points = []
    for batch, text_len, regions in spec["points"]:
        inputs = trunk_inputs(batch, text_len, regions, size)

        def forward(inputs: dict[str, torch.Tensor] = inputs) -> None:
            with torch.inference_mode():
                model(**inputs)

        with PeakRSS() as sampler:
            forward()  # warm-up, inside the window: its peak is the same as the timed calls'
            seconds = median([time_call(forward) for _ in range(spec["reps"])])
        flops = batch * trunk_forward_flops(size, text_len, regions)
        points.append(
            {
                "batch": batch,
                "text_len": text_len,
                "regions": regions,
                "median_s": seconds,
                "examples_per_s": batch / seconds,
                "gflops": flops / seconds / 1e9,
                "peak_rss_mb": sampler.peak_mb,
                "rss_before_mb": sampler.baseline_mb,
                "activation_mb": None if sampler.peak_mb is None else sampler.peak_mb - sampler.baseline_mb,
            }
        )
    return {"points": points, "memory_method": sampler.method}


def bench_scaling(plan: CpuPlan, out_dir: Path) -> dict[str, Any]:
    """Three sweeps around the default point; one child process per point (see `CpuPlan`)."""
    sweeps = {
        "regions": [(plan.scaling_batch, plan.scaling_text, r) for r in plan.scaling_region_points],
        "text_len": [(plan.scaling_batch, t, plan.scaling_regions) for t in plan.scaling_text_points],
        "batch": [(b, plan.scaling_text, plan.scaling_regions) for b in plan.scaling_batch_points],
    }
    max_regions = max(plan.scaling_region_points + [plan.scaling_regions])
    base_spec = {"size": asdict(plan.size), "reps": plan.scaling_reps, "max_regions": max_regions}
    if plan.scaling_isolated:
        measured = {
            name: [run_child("forward_points", {**base_spec, "points": [p]})["points"][0] for p in points]
            for name, points in sweeps.items()
        }
    else:
        order = [(name, p) for name, points in sweeps.items() for p in points]
        flat = run_child("forward_points", {**base_spec, "points": [p for _, p in order]})["points"]
        measured = {name: [] for name in sweeps}
        for (name, _), point in zip(order, flat):
            measured[name].append(point)
    result: dict[str, Any] = {
        "fixed": {"batch": plan.scaling_batch, "text_len": plan.scaling_text, "regions": plan.scaling_regions},
        "isolation": "one process per point" if plan.scaling_isolated else "one shared process (quick mode)",
        "dtype": "fp32",
        "attention": "sdpa",
        "sweeps": measured,
    }
    result["plot"] = _plot_scaling(measured, out_dir / "scaling.png")
    return result


def _plot_scaling(sweeps: dict[str, list[dict[str, Any]]], path: Path) -> str:
    """Time and activation memory per sweep; returns the file name or why there is no plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib not installed (pip install -r benchmarks/requirements.txt)"
    fig, axes = plt.subplots(2, len(sweeps), figsize=(4.2 * len(sweeps), 6.5))
    for col, (name, points) in enumerate(sweeps.items()):
        xs = [p[name] for p in points]
        axes[0, col].plot(xs, [p["median_s"] * 1000 for p in points], marker="o")
        axes[0, col].set_ylabel("forward time (ms)")
        mem = [p["activation_mb"] for p in points]
        if all(m is not None for m in mem):
            axes[1, col].plot(xs, mem, marker="o", color="tab:orange", label="activations (peak - before)")
            axes[1, col].plot(xs, [p["peak_rss_mb"] for p in points], marker=".", color="tab:red", label="peak RSS")
            axes[1, col].legend(fontsize=7)
        axes[1, col].set_ylabel("memory (MiB)")
        for row in range(2):
            axes[row, col].set_xlabel(name)
            axes[row, col].grid(alpha=0.3)
        fixed = ", ".join(f"{k}={points[0][k]}" for k in ("batch", "text_len", "regions") if k != name)
        axes[0, col].set_title(f"vs {name} ({fixed})", fontsize=9)
    fig.suptitle("Oscar trunk forward, fp32, SDPA, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# ----------------------------------------------------------------------------------------------
# The suite
# ----------------------------------------------------------------------------------------------


CHILD_TASKS = {"train_memory": child_train_memory, "forward_points": child_forward_points}


def run_cpu_suite(quick: bool, out_dir: Path, log: Any = print, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The CPU sections in order (all, or those named in `only`); a failing section is recorded
    and the others still run."""
    plan = CpuPlan.quick() if quick else CpuPlan()
    sections: dict[str, Any] = {"plan": asdict(plan)}
    steps = {
        "trunk": lambda: bench_trunk(plan),
        "padding": lambda: bench_padding(plan),
        "decoding": lambda: bench_decoding(plan),
        "training": lambda: bench_training(plan),
        "data": lambda: bench_data(quick, out_dir),
        "scaling": lambda: bench_scaling(plan, out_dir),
    }
    unknown = sorted(set(only or ()) - set(steps))
    if unknown:
        raise ValueError(f"Unknown CPU sections {unknown}; choose from {', '.join(steps)}.")
    for name, fn in steps.items():
        if only is not None and name not in only:
            continue
        start = time.perf_counter()
        log(f"[cpu] {name} ...")
        try:
            sections[name] = fn()
        except Exception as err:  # keep the other sections' numbers
            sections[name] = {"status": f"failed: {err!r}"}
        sections[name]["section_seconds"] = time.perf_counter() - start
        log(f"[cpu] {name} done in {sections[name]['section_seconds']:.1f} s")
    return sections
