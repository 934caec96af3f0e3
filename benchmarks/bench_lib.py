"""Shared pieces of the benchmark suites: sizes, inputs, FLOP counts, timing, memory, child processes.

Timing rule: competing variants are measured interleaved in one process (variant A, B, C, then A,
B, C again, with the order rotated every repetition), and comparisons are reported as the median of
the per-repetition ratios. Interleaving makes a slow period caused by other work on the machine hit
every variant alike, so ratios stay meaningful when absolute times are noisy.

FLOP counting (multiply-add = 2 FLOPs), for one example of `T` text tokens and `R` regions,
`L = T + R`, hidden `H`, intermediate `I`, `N` layers, region vector width `D`:

    region projection   2 * R * D * H
    per layer, per token: Q, K, V, output projections 4 * 2 * H * H, feed-forward 2 * 2 * H * I,
                          attention scores Q K^T 2 * L * H and weighted values A V 2 * L * H
    pooler              2 * H * H (the `[CLS]` row only)

    forward = 2*R*D*H + N * L * (8*H^2 + 4*H*I + 4*L*H) + 2*H^2

Embedding look-ups, LayerNorm, softmax, GELU and the residual adds are O(L*H) and left out, so the
achieved rate is slightly understated. A training step counts 3x the forward (backward = 2x),
plus the vocabulary head `2 * H * (H + V)` per scored position; gradient checkpointing re-runs the
forward, but the recomputation is not counted as useful work.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CHILD_MARKER = "BENCH_CHILD_JSON:"

# ----------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSize:
    """Transformer size shared by our model and the peer (VisualBERT) so both do the same work."""

    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    img_feature_dim: int = 2054


BASE = ModelSize("base", hidden=768, layers=12, heads=12, intermediate=3072, vocab=30522)
# `--quick`: small enough that the whole CPU suite is a smoke test, big enough to use every code path.
TINY = ModelSize("tiny", hidden=64, layers=2, heads=4, intermediate=256, vocab=1000)


def oscar_config(size: ModelSize, max_regions: int = 50, **overrides: Any):
    """An `OscarConfig` of the given size (random weights: speed does not depend on their values)."""
    from oscar_hf import OscarConfig

    values = dict(
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        intermediate_size=size.intermediate,
        img_feature_dim=size.img_feature_dim,
        max_img_seq_length=max_regions,
    )
    values.update(overrides)
    return OscarConfig(**values)


def visualbert_model(size: ModelSize) -> torch.nn.Module:
    """transformers' `VisualBertModel` at the same size; its region projection has the same input
    width (2054) so the two trunks count the same FLOPs."""
    from transformers import VisualBertConfig, VisualBertModel

    config = VisualBertConfig(
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        intermediate_size=size.intermediate,
        visual_embedding_dim=size.img_feature_dim,
    )
    return VisualBertModel(config)


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def _first_word_id(size: ModelSize) -> int:
    """Lowest id drawn for random words: above BERT's special and unused tokens at real vocab size."""
    return 1000 if size.vocab > 2000 else 5


def trunk_inputs(
    batch: int,
    text_len: int,
    regions: int,
    size: ModelSize,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    max_real_text: int | None = None,
) -> dict[str, torch.Tensor]:
    """VQA-like inputs: `[CLS] question [SEP] tags [SEP]` padded to `text_len`, then `regions` regions.

    Real text lengths are drawn uniformly from [max_real_text // 2, max_real_text] (default
    [text_len // 4, text_len]), and the first row gets exactly `max_real_text` tokens, so the
    longest row of the batch is known. Dense kernels compute padded positions anyway; only
    `skip_padding` makes speed depend on the lengths (through the longest row).
    """
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(_first_word_id(size), size.vocab, (batch, text_len), generator=g)
    if max_real_text is None:
        lengths = torch.randint(max(2, text_len // 4), text_len + 1, (batch,), generator=g)
    else:
        lengths = torch.randint(max(2, max_real_text // 2), max_real_text + 1, (batch,), generator=g)
        lengths[0] = max_real_text
    attention_mask = (torch.arange(text_len)[None, :] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask
    token_type_ids = (torch.arange(text_len)[None, :] >= text_len // 2).long().expand(batch, -1).contiguous()
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "token_type_ids": token_type_ids.to(device),
        "img_feats": torch.randn(batch, regions, size.img_feature_dim, generator=g).to(device, dtype),
        "img_attention_mask": torch.ones(batch, regions, dtype=torch.long, device=device),
    }


def visualbert_inputs(oscar_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same batch in VisualBERT's argument names."""
    return {
        "input_ids": oscar_inputs["input_ids"],
        "attention_mask": oscar_inputs["attention_mask"],
        "token_type_ids": oscar_inputs["token_type_ids"],
        "visual_embeds": oscar_inputs["img_feats"],
        "visual_attention_mask": oscar_inputs["img_attention_mask"],
    }


def pretraining_inputs(
    batch: int, text_len: int, regions: int, size: ModelSize, device: str = "cpu", seed: int = 0
) -> dict[str, torch.Tensor]:
    """Pre-training layout: text + tags (`text_len`, 15% of positions labelled), regions, contrastive labels."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(_first_word_id(size), size.vocab, (batch, text_len), generator=g)
    labels = torch.where(
        torch.rand(batch, text_len, generator=g) < 0.15,
        torch.randint(5, size.vocab, (batch, text_len), generator=g),
        -100,
    )
    labels[:, 1] = input_ids[:, 1]  # at least one target per row
    return {
        "input_ids": input_ids.to(device),
        "token_type_ids": (torch.arange(text_len)[None, :] >= text_len // 2).long().expand(batch, -1).to(device),
        "attention_mask": torch.ones(batch, text_len, dtype=torch.long, device=device),
        "img_attention_mask": torch.ones(batch, regions, dtype=torch.long, device=device),
        "img_feats": torch.randn(batch, regions, size.img_feature_dim, generator=g).to(device),
        "labels": labels.to(device),
        "contrastive_labels": torch.randint(0, 2, (batch,), generator=g).to(device),
    }


def caption_inputs(
    batch: int, tags: int, regions: int, size: ModelSize, bos_token_id: int, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """`[CLS]` prompts, `tags` tag tokens and `regions` regions per image."""
    g = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.full((batch, 1), bos_token_id, dtype=torch.long, device=device),
        "tag_input_ids": torch.randint(_first_word_id(size), size.vocab, (batch, tags), generator=g).to(device),
        "img_feats": torch.randn(batch, regions, size.img_feature_dim, generator=g).to(device),
        "img_attention_mask": torch.ones(batch, regions, dtype=torch.long, device=device),
    }


# ----------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------


def trunk_forward_flops(size: ModelSize, text_len: int, regions: int) -> float:
    """FLOPs of one example through the trunk (module docstring has the formula)."""
    h, i, n = size.hidden, size.intermediate, size.layers
    length = text_len + regions
    per_token_layer = 8 * h * h + 4 * h * i + 4 * length * h
    return 2.0 * regions * size.img_feature_dim * h + n * length * per_token_layer + 2.0 * h * h


def pretraining_step_flops(size: ModelSize, text_len: int, regions: int, scored: float | None = None) -> float:
    """Useful FLOPs of one training example: 3x (trunk forward + vocabulary head over the `scored`
    positions; by default every position, as `OscarForPreTraining` scores region rows too)."""
    scored = text_len + regions if scored is None else scored
    head = scored * 2.0 * size.hidden * (size.hidden + size.vocab)
    return 3.0 * (trunk_forward_flops(size, text_len, regions) + head)


def caption_decoding_flops(size: ModelSize, batch: int, beams: int, tags: int, regions: int, steps: int) -> float:
    """Useful FLOPs of cached caption decoding: tags, regions, `[CLS]` and `[MASK]` encoded once per
    image, then two tokens (`[w_t, [MASK]]`) per beam per later step, the vocabulary projection at
    `[MASK]` only. `steps` counts the decoded tokens after `[CLS]`."""
    h, i, n = size.hidden, size.intermediate, size.layers
    dense = 8 * h * h + 4 * h * i  # q, k, v, output and the two MLP products, per token and layer
    head = 2.0 * h * (h + size.vocab)  # transform + vocabulary at one [MASK]
    prefill_len = tags + regions + 2
    flops = batch * (2.0 * regions * size.img_feature_dim * h + n * prefill_len * (dense + 4 * prefill_len * h) + head)
    for step in range(1, steps):
        keys = tags + regions + 1 + step + 1  # context, caption so far, [MASK]
        flops += batch * beams * (n * 2 * (dense + 4 * keys * h) + head)
    return flops


def gemm_flops(n: int) -> float:
    """FLOPs of an n x n by n x n matrix product."""
    return 2.0 * n**3


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    """Waits for queued device work so wall-clock time covers it (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: str = "cpu") -> float:
    """Wall-clock seconds of one call, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(
    variants: dict[str, Callable[[], Any]], reps: int, warmup: int = 1, device: str = "cpu"
) -> dict[str, list[float]]:
    """Times every variant `reps` times, interleaved, the order rotated each repetition.

    Rotating removes a systematic advantage of running first (warm caches, boosted clocks).
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_call(variants[name], device))
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over repetitions of numerator[i] / denominator[i] (same repetition, adjacent in time)."""
    return median([a / b for a, b in zip(numerator, denominator)])


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); without it oneDNN emulates bf16
    at a small fraction of the fp32 rate, and bf16 runs are cut down to stay short."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gemm_callable(n: int, dtype: torch.dtype, device: str = "cpu") -> Callable[[], Any]:
    """One n x n x n matrix product, the machine's reference compute rate."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    return lambda: torch.mm(a, b, out=out)


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------


def _rss_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _vm_hwm_bytes() -> int | None:
    """The kernel's resident-memory high-water mark of this process (Linux), in bytes."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_vm_hwm() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _vm_hwm_bytes() is not None


class PeakRSS:
    """Peak resident memory of this process inside a `with` block.

    On Linux the kernel's high-water mark is reset on entry and read on exit, which is exact. Elsewhere
    the RSS is sampled every few ms in a thread (psutil; benchmarks/requirements.txt), which can miss
    a spike shorter than the interval. `ru_maxrss` is not used: the kernel carries it over from the
    parent across fork/exec, so a child started by a big parent reports the parent's size.
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.baseline_mb: float | None = None
        self.peak_mb: float | None = None
        self.method = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None:
                self.peak_mb = max(self.peak_mb or 0.0, rss / 2**20)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        rss = _rss_bytes()
        if _reset_vm_hwm():
            self.method = "VmHWM"
            self.baseline_mb = (rss if rss is not None else _vm_hwm_bytes()) / 2**20
        elif rss is not None:
            self.method = "sampled"
            self.baseline_mb = self.peak_mb = rss / 2**20
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method == "VmHWM":
            self.peak_mb = _vm_hwm_bytes() / 2**20
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.peak_mb = max(self.peak_mb or 0.0, (_rss_bytes() or 0) / 2**20)


# ----------------------------------------------------------------------------------------------
# Child processes (one configuration per process, so peak memory is that configuration's own)
# ----------------------------------------------------------------------------------------------


def run_child(task: str, spec: dict[str, Any], timeout_s: float = 1200) -> dict[str, Any]:
    """Runs `run.py --child task` in a fresh interpreter and returns the JSON it prints."""
    cmd = [sys.executable, str(BENCH_DIR / "run.py"), "--child", task, "--spec", json.dumps(spec)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=REPO_ROOT)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_MARKER):
            return json.loads(line[len(CHILD_MARKER) :])
    raise RuntimeError(
        f"benchmark child {task!r} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )


def emit_child_result(result: dict[str, Any]) -> None:
    """The child's side of `run_child`: one marked JSON line on stdout."""
    print(CHILD_MARKER + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------
# Environment facts for the report
# ----------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """Versions and machine facts written next to every result."""
    import platform

    import transformers

    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_bf16": cpu_has_native_bf16(),
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        wanted = ("Model name", "CPU(s)", "Thread(s) per core", "L2 cache", "L3 cache")
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in wanted:
                facts[f"lscpu_{key.strip()}"] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if torch.cuda.is_available():
        facts["cuda_device"] = torch.cuda.get_device_name(0)
        facts["cuda"] = torch.version.cuda
    return facts


# ----------------------------------------------------------------------------------------------
# Markdown tables
# ----------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: floats rounded, booleans as yes/NO, missing as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
