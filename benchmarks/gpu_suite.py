"""The GPU suite, for one H100/H200-class device: bf16 trunk forward (SDPA, eager, SDPA with a
compiled encoder, VisualBERT) against the measured bf16 GEMM rate; caption decoding with and
without the cache; a short bf16 pre-training run (loss must fall) and checkpointing on/off with
peak memory (`torch.cuda.max_memory_allocated`).

Sized to finish in under 8 minutes (torch.compile takes most of it); a deadline check skips the
remaining sections rather than overrun. Without CUDA it returns a "skipped" status; `--device cpu`
runs the same code on CPU at `--quick` sizes, to check it without a GPU.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from bench_lib import (
    BASE,
    TINY,
    ModelSize,
    caption_inputs,
    fmt,
    gemm_callable,
    gemm_flops,
    interleaved,
    md_table,
    median,
    oscar_config,
    paired_ratio,
    pretraining_step_flops,
    synchronize,
    trunk_forward_flops,
    trunk_inputs,
    visualbert_inputs,
    visualbert_model,
)
from cpu_suite import set_checkpointing


@dataclass
class GpuPlan:
    """Sizes of one GPU run; `quick()` for exercising the code (also on CPU)."""

    size: ModelSize = BASE
    gemm_n: int = 8192
    trunk_batches: tuple[int, ...] = (32, 256)
    trunk_text: int = 128
    trunk_regions: int = 50
    trunk_reps: int = 7
    # Calls per timed sample: one base forward at batch 32 is a few ms, so single calls would mostly
    # measure the synchronisation.
    trunk_inner: int = 10
    # `skip_padding` variant: the same padded batch with its longest real text row at this length.
    trunk_padded_max_real: int = 64
    decode_batch: int = 8
    decode_beams: int = 5
    decode_max_length: int = 20
    decode_tags: int = 15
    decode_regions: int = 50
    decode_reps: int = 3
    train_batch: int = 32
    train_text: int = 35
    train_regions: int = 50
    train_steps: int = 50
    train_lr: float = 3e-4
    ckpt_reps: int = 3
    ckpt_inner: int = 5
    deadline_s: float = 420.0

    @classmethod
    def quick(cls) -> GpuPlan:
        return cls(
            size=TINY,
            gemm_n=256,
            trunk_batches=(2,),
            trunk_text=16,
            trunk_regions=10,
            trunk_reps=2,
            trunk_inner=2,
            trunk_padded_max_real=8,
            decode_batch=2,
            decode_beams=2,
            decode_max_length=6,
            decode_tags=4,
            decode_regions=5,
            decode_reps=1,
            train_batch=4,
            train_text=12,
            train_regions=5,
            train_steps=30,
            train_lr=1e-3,
            ckpt_reps=1,
            ckpt_inner=2,
            deadline_s=120.0,
        )


def _repeat(fn: Callable[[], Any], times: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(times):
            fn()

    return run


def _peak_mb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


# ----------------------------------------------------------------------------------------------
# Trunk
# ----------------------------------------------------------------------------------------------


def gpu_trunk(plan: GpuPlan, device: str, compile_trunk: bool) -> dict[str, Any]:
    """bf16 forward throughput of each variant at each batch size, with the bf16 GEMM interleaved."""
    from oscar_hf import OscarModel

    size, dtype = plan.size, torch.bfloat16
    torch.manual_seed(0)
    ours = OscarModel(oscar_config(size, max_regions=plan.trunk_regions)).eval().to(device, dtype)
    peer = visualbert_model(size).eval().to(device, dtype)
    compiled = None
    compile_note = "disabled (--no-compile)"
    if compile_trunk:
        # Only the encoder is compiled: `OscarModel.forward` validates its inputs with a host-side
        # check (a graph break), while the encoder is pure tensor code that compiles into one graph.
        compiled = copy.deepcopy(ours)
        compiled.config._attn_implementation = "sdpa"
        compiled.encoder.compile(dynamic=False)
        compile_note = "encoder compiled (torch.compile, dynamic=False, default mode)"
    flops = trunk_forward_flops(size, plan.trunk_text, plan.trunk_regions)
    gemm = gemm_callable(plan.gemm_n, dtype, device)
    result: dict[str, Any] = {
        "dtype": "bf16",
        "text_len": plan.trunk_text,
        "regions": plan.trunk_regions,
        "gflop_per_example": flops / 1e9,
        "compile": compile_note,
        "batches": {},
    }
    for batch in plan.trunk_batches:
        inputs = trunk_inputs(batch, plan.trunk_text, plan.trunk_regions, size, dtype, device)
        peer_inputs = visualbert_inputs(inputs)

        def run_ours(impl: str, inputs: dict[str, torch.Tensor] = inputs) -> None:
            ours.config._attn_implementation = impl
            with torch.inference_mode():
                ours(**inputs)

        def run_peer(peer_inputs: dict[str, torch.Tensor] = peer_inputs) -> None:
            with torch.inference_mode():
                peer(**peer_inputs)

        padded = trunk_inputs(
            batch, plan.trunk_text, plan.trunk_regions, size, dtype, device, max_real_text=plan.trunk_padded_max_real
        )

        def run_skip(padded: dict[str, torch.Tensor] = padded) -> None:
            # As the pooled heads run it. VisualBERT's time does not depend on the mask, so its
            # dense run above is also its time on this batch.
            ours.config._attn_implementation = "sdpa"
            with torch.inference_mode():
                ours(**padded, skip_padding=True)

        variants = {
            "gemm": _repeat(gemm, plan.trunk_inner),
            "ours_sdpa": _repeat(lambda run=run_ours: run("sdpa"), plan.trunk_inner),
            f"ours_sdpa_skip_padding_longest_{plan.trunk_padded_max_real}": _repeat(run_skip, plan.trunk_inner),
            "ours_eager": _repeat(lambda run=run_ours: run("eager"), plan.trunk_inner),
            "visualbert_eager": _repeat(run_peer, plan.trunk_inner),
        }
        compile_s = None
        if compiled is not None:

            def run_compiled(inputs: dict[str, torch.Tensor] = inputs) -> None:
                with torch.inference_mode():
                    compiled(**inputs)

            start = time.perf_counter()
            run_compiled()  # compilation happens here, outside the timed loop
            synchronize(device)
            compile_s = time.perf_counter() - start
            variants["ours_sdpa_compiled"] = _repeat(run_compiled, plan.trunk_inner)
        times = interleaved(variants, reps=plan.trunk_reps, warmup=1, device=device)
        gemm_rates = [plan.trunk_inner * gemm_flops(plan.gemm_n) / t / 1e9 for t in times["gemm"]]
        work = plan.trunk_inner * batch * flops
        rows = {}
        for name in variants:
            if name == "gemm":
                continue
            rates = [work / t / 1e9 for t in times[name]]
            rows[name] = {
                "ms_per_batch": median(times[name]) / plan.trunk_inner * 1000,
                "examples_per_s": plan.trunk_inner * batch / median(times[name]),
                "gflops": median(rates),
                "fraction_of_gemm": median([r / g for r, g in zip(rates, gemm_rates)]),
                "speedup_vs_visualbert": paired_ratio(times["visualbert_eager"], times[name]),
            }
        result["batches"][str(batch)] = {
            "gemm_gflops": median(gemm_rates),
            "compile_seconds": compile_s,
            "variants": rows,
        }
    ours.config._attn_implementation = "sdpa"
    return result


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


def gpu_decoding(plan: GpuPlan, device: str) -> dict[str, Any]:
    """Cache vs recomputation in fp32 with TF32 off, so identical captions can be required."""
    from oscar_hf import OscarForImageCaptioning

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.manual_seed(0)
        config = oscar_config(plan.size, max_regions=plan.decode_regions)
        model = OscarForImageCaptioning(config).eval().to(device)
        inputs = caption_inputs(
            plan.decode_batch, plan.decode_tags, plan.decode_regions, plan.size, config.bos_token_id, device
        )
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

        times = interleaved(
            {"kv_cache": lambda: decode(True), "full_recompute": lambda: decode(False)},
            reps=plan.decode_reps,
            warmup=1,
            device=device,
        )
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    tokens = plan.decode_batch * (outputs["cache"].shape[1] - 1)
    return {
        "dtype": "fp32 (TF32 off)",
        "batch": plan.decode_batch,
        "num_beams": plan.decode_beams,
        "max_length": plan.decode_max_length,
        "decoded_length": int(outputs["cache"].shape[1]),
        "identical_captions": torch.equal(outputs["cache"], outputs["full"]),
        "variants": {n: {"median_s": median(t), "tokens_per_s": tokens / median(t)} for n, t in times.items()},
        "speedup_cache_vs_full": paired_ratio(times["full_recompute"], times["kv_cache"]),
    }


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def _learnable_batches(plan: GpuPlan, config: Any, device: str, count: int = 4) -> list[dict[str, torch.Tensor]]:
    """Masked-token batches with Zipf-distributed words: the loss can fall from ln(vocab) towards
    the unigram entropy within a few dozen steps, which shows the bf16 loop learns."""
    batches = []
    vocab = plan.size.vocab
    ranks = torch.arange(1, vocab - 999 if vocab > 2000 else vocab - 4, dtype=torch.float)
    zipf = 1.0 / ranks
    first = 1000 if vocab > 2000 else 4
    for seed in range(count):
        g = torch.Generator().manual_seed(seed)
        words = torch.multinomial(zipf, plan.train_batch * plan.train_text, replacement=True, generator=g)
        words = (words + first).view(plan.train_batch, plan.train_text)
        masked = torch.rand(plan.train_batch, plan.train_text, generator=g) < 0.15
        masked[:, 1] = True
        batches.append(
            {
                "input_ids": torch.where(masked, config.mask_token_id, words).to(device),
                "token_type_ids": (torch.arange(plan.train_text) >= plan.train_text // 2)
                .long()
                .expand(plan.train_batch, -1)
                .to(device),
                "attention_mask": torch.ones(plan.train_batch, plan.train_text, dtype=torch.long, device=device),
                "img_attention_mask": torch.ones(
                    plan.train_batch, plan.train_regions, dtype=torch.long, device=device
                ),
                "img_feats": torch.randn(
                    plan.train_batch, plan.train_regions, plan.size.img_feature_dim, generator=g
                ).to(device),
                "labels": torch.where(masked, words, -100).to(device),
                "contrastive_labels": torch.zeros(plan.train_batch, dtype=torch.long).to(device),
            }
        )
    return batches


def gpu_training(plan: GpuPlan, device: str) -> dict[str, Any]:
    """A short bf16-autocast run (fp32 master weights, AdamW), then checkpointing on/off."""
    from oscar_hf import OscarForPreTraining

    torch.manual_seed(0)
    config = oscar_config(plan.size, max_regions=plan.train_regions)
    model = OscarForPreTraining(config).train().to(device)
    fused = {"fused": True} if device.startswith("cuda") else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.train_lr, weight_decay=0.01, **fused)
    warmup = 5
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    batches = _learnable_batches(plan, config, device)
    autocast_device = "cuda" if device.startswith("cuda") else "cpu"

    def step(i: int) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(autocast_device, dtype=torch.bfloat16):
            loss = model(**batches[i % len(batches)]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        return loss.detach()

    losses: list[torch.Tensor] = []
    timed_from = min(5, plan.train_steps - 1)  # the first steps include allocator and kernel warm-up
    start = 0.0
    for i in range(plan.train_steps):
        if i == timed_from:
            synchronize(device)
            start = time.perf_counter()
        losses.append(step(i))
    synchronize(device)
    seconds = time.perf_counter() - start
    values = [float(v) for v in losses]  # one host transfer per step only after the loop
    head, tail = values[:5], values[-5:]
    timed_steps = plan.train_steps - timed_from
    useful = plan.train_batch * pretraining_step_flops(plan.size, plan.train_text, plan.train_regions)
    run = {
        "steps": plan.train_steps,
        "batch": plan.train_batch,
        "precision": "bf16 autocast, fp32 master weights, fused AdamW" if fused else "bf16 autocast, AdamW",
        "lr": plan.train_lr,
        "loss_first5_mean": sum(head) / len(head),
        "loss_last5_mean": sum(tail) / len(tail),
        "loss_decreased": sum(tail) / len(tail) < sum(head) / len(head) and all(math.isfinite(v) for v in values),
        "losses": values,
        "steps_per_s": timed_steps / seconds,
        "examples_per_s": timed_steps * plan.train_batch / seconds,
        "useful_tflops": timed_steps * useful / seconds / 1e12,
    }

    # Checkpointing on/off: blocks of steps interleaved, peak memory reset before each block.
    peaks: dict[str, float | None] = {"no_checkpointing": None, "gradient_checkpointing": None}
    counter = [0]

    def block(checkpointing: bool) -> Callable[[], None]:
        name = "gradient_checkpointing" if checkpointing else "no_checkpointing"

        def run_block() -> None:
            set_checkpointing(model, checkpointing)
            _reset_peak(device)
            for _ in range(plan.ckpt_inner):
                step(counter[0])
                counter[0] += 1
            synchronize(device)
            peak = _peak_mb(device)
            if peak is not None:
                peaks[name] = max(peaks[name] or 0.0, peak)

        return run_block

    times = interleaved(
        {"no_checkpointing": block(False), "gradient_checkpointing": block(True)},
        reps=plan.ckpt_reps,
        warmup=1,
        device=device,
    )
    set_checkpointing(model, False)
    checkpointing = {
        name: {
            "steps_per_s": plan.ckpt_inner / median(t),
            "examples_per_s": plan.ckpt_inner * plan.train_batch / median(t),
            "peak_allocated_mb": peaks[name],
        }
        for name, t in times.items()
    }
    checkpointing["slowdown"] = paired_ratio(times["gradient_checkpointing"], times["no_checkpointing"])
    return {"run": run, "checkpointing": checkpointing}


def gpu_gemm_only(plan: GpuPlan, device: str) -> dict[str, Any]:
    """bf16 and fp32 (TF32 off) GEMM rates, for reference next to the trunk numbers."""
    out = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            fn = _repeat(gemm_callable(plan.gemm_n, dtype, device), 10)
            t = interleaved({"gemm": fn}, reps=5, warmup=1, device=device)["gemm"]
            out[name] = {"n": plan.gemm_n, "gflops": median([10 * gemm_flops(plan.gemm_n) / s / 1e9 for s in t])}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


# ----------------------------------------------------------------------------------------------
# The suite
# ----------------------------------------------------------------------------------------------


def run_gpu_suite(quick: bool, device: str, compile_trunk: bool, log: Any = print) -> dict[str, Any]:
    """All GPU sections; returns {"status": "skipped: ..."} when the device does not exist."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        message = (
            "skipped: no CUDA device (torch.cuda.is_available() is False). Run `--suite cpu` here, or "
            "`--suite gpu --device cpu --quick --no-compile` to exercise this suite's code without a GPU."
        )
        log(message)
        return {"status": message, "targets": []}
    plan = GpuPlan.quick() if quick else GpuPlan()
    began = time.perf_counter()
    sections: dict[str, Any] = {"plan": asdict(plan), "device": device}
    if device.startswith("cuda"):
        sections["device_name"] = torch.cuda.get_device_name(device)
    steps = (
        ("gemm", lambda: gpu_gemm_only(plan, device)),
        ("decoding", lambda: gpu_decoding(plan, device)),
        ("training", lambda: gpu_training(plan, device)),
        ("trunk", lambda: gpu_trunk(plan, device, compile_trunk)),  # last: compilation is the slow part
    )
    for name, fn in steps:
        elapsed = time.perf_counter() - began
        if elapsed > plan.deadline_s:
            sections[name] = {"status": f"skipped: deadline ({elapsed:.0f} s > {plan.deadline_s:.0f} s)"}
            continue
        log(f"[gpu] {name} ...")
        start = time.perf_counter()
        try:
            sections[name] = fn()
        except Exception as err:  # keep the numbers of the other sections
            sections[name] = {"status": f"failed: {err!r}"}
        sections[name]["section_seconds"] = time.perf_counter() - start
        log(f"[gpu] {name} done in {sections[name]['section_seconds']:.1f} s")
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    sections["targets"] = _gpu_targets(sections)
    return sections


def _gpu_targets(sections: dict[str, Any]) -> list[dict[str, Any]]:
    dec = sections.get("decoding", {})
    run = sections.get("training", {}).get("run", {})
    value = dec.get("speedup_cache_vs_full") if dec.get("identical_captions") else None
    return [
        {
            "key": "kv_cache_speedup",
            "description": "KV-cache decoding vs full recomputation (identical captions), x",
            "threshold": 4.0,
            "value": value,
            "met": None if value is None else value >= 4.0,
        },
        {
            "key": "bf16_training_loss_decreases",
            "description": "mean loss of the last 5 steps below the first 5",
            "threshold": None,
            "value": run.get("loss_last5_mean"),
            "met": run.get("loss_decreased"),
        },
    ]


def render_gpu(sections: dict[str, Any]) -> str:
    """Markdown tables of the GPU suite."""
    if "plan" not in sections:
        return sections.get("status", "gpu suite did not run")
    out = [f"## GPU suite on {sections.get('device_name', sections['device'])}\n"]
    gemm = sections.get("gemm", {})
    if "bf16" in gemm:
        out.append(
            f"GEMM {gemm['bf16']['n']}^3: bf16 {gemm['bf16']['gflops'] / 1000:.1f} TFLOP/s, "
            f"fp32 (TF32 off) {gemm['fp32']['gflops'] / 1000:.1f} TFLOP/s\n"
        )
    trunk = sections.get("trunk", {})
    if "batches" in trunk:
        out.append(
            f"### Trunk forward, bf16, {trunk['text_len']} text + {trunk['regions']} regions ({trunk['compile']})\n"
        )
        rows = [
            [batch, name, v["ms_per_batch"], v["examples_per_s"], v["gflops"] / 1000, v["fraction_of_gemm"],
             v["speedup_vs_visualbert"]]
            for batch, data in trunk["batches"].items()
            for name, v in data["variants"].items()
        ]  # fmt: skip
        out.append(
            md_table(["batch", "variant", "ms/batch", "examples/s", "TFLOP/s", "of GEMM", "vs VisualBERT"], rows)
        )
        out.append(
            "\n`ours_sdpa_skip_padding_longest_N` runs a padded batch whose longest real text row has N tokens, "
            "as the pooled heads do; its TFLOP/s count the dense work it skipped, so only its time compares."
        )
    dec = sections.get("decoding", {})
    if "variants" in dec:
        out.append(f"\n### Caption decoding ({dec['dtype']}, beam {dec['num_beams']}, batch {dec['batch']})\n")
        out.append(
            md_table(
                ["variant", "s/batch", "tokens/s"],
                [[n, v["median_s"], v["tokens_per_s"]] for n, v in dec["variants"].items()],
            )
        )
        out.append(
            f"\nKV-cache speed-up {dec['speedup_cache_vs_full']:.2f}x; identical captions: {fmt(dec['identical_captions'])}"
        )
    tr = sections.get("training", {})
    if "run" in tr:
        run = tr["run"]
        out.append(
            f"\n### Pre-training, {run['precision']}, batch {run['batch']}, {run['steps']} steps\n\n"
            f"loss {run['loss_first5_mean']:.3f} (first 5) -> {run['loss_last5_mean']:.3f} (last 5), decreased: "
            f"{fmt(run['loss_decreased'])}; {run['examples_per_s']:.0f} examples/s, {run['useful_tflops']:.1f} useful TFLOP/s\n"
        )
        ck = tr["checkpointing"]
        rows = [
            [n, ck[n]["examples_per_s"], ck[n]["peak_allocated_mb"]]
            for n in ("no_checkpointing", "gradient_checkpointing")
        ]
        out.append(md_table(["variant", "examples/s", "peak allocated MiB"], rows))
        out.append(f"\nCheckpointing slow-down {ck['slowdown']:.2f}x")
    for name, value in sections.items():
        if isinstance(value, dict) and str(value.get("status", "")).startswith(("failed", "skipped")):
            out.append(f"\n**{name} {value['status']}**")
    return "\n".join(out)
