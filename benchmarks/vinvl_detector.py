"""Speed and memory of the native VinVL detector against the original's way of computing, side by side.

    python benchmarks/vinvl_detector.py [--quick] [--threads 2] [--out results.json]

Full-size detector (ResNeXt-152 C4, 1595 classes, 525 attributes; random weights, seeded), one 600 x 1000
image (the extraction recipe: NMS filter 1, proposals as boxes), CPU threads as given. Every variant runs in
its own process so that its peak RSS is its own:

- `original fp32`: what the original computes (`OriginalComputeDetector` below): contiguous NCHW
  convolutions each followed by a separate frozen-BN step, res5 on all 300 proposals at once and again
  on the kept boxes for the attribute head, one Python-level NMS call per class in the post-processing;
- `ours fp32`: the default path (BN folded into the convolutions, channels-last, res5 in chunks of 32
  RoIs, res5 output of the proposals reused, all classes' NMS at once);
- `ours bf16`: the same under `torch.autocast("cpu", dtype=torch.bfloat16)`;
- `ours fp32 batched`: two images in one zero-padded batch vs one by one (seconds per image).

Reported: seconds per image, the per-stage split (backbone, RPN, res5 box head on proposals,
post-processing, attribute head), peak RSS, the fast path's ratio against the original, whether the fp32
outputs are identical (labels, boxes, features), and what bf16 changes (box IoU and label agreement against
fp32, feature differences). Each variant also measures, in its own process, the machine's matrix-product
rate (2048^3, its dtype) and counts the forward's FLOPs (`torch.utils.flop_counter`, almost all of them
convolutions): `compute floor` = FLOPs / that rate, the time a forward would take if every FLOP ran at
the matrix-product rate, and `share of GEMM rate` = floor / measured time. `--quick` uses the reduced test sizes (about a minute, mostly process start-up): its numbers are a
smoke test, not results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch


REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = ("backbone", "rpn", "res5 box head (proposals)", "post-processing", "attribute head")
QUICK_SIZES = dict(
    num_groups=4, width_per_group=4, stem_out_channels=8, res2_out_channels=16, backbone_out_channels=64,
    num_classes=51, num_attributes=21, class_embedding_dim=16, attribute_embedding_dim=32,
)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# The baseline: the original's way of computing, same numbers
# ------------------------------------------------------------------------------------------------


def original_compute_detector():
    from oscar_hf.processors.modeling_vinvl import VinVLDetector, nms

    class OriginalComputeDetector(VinVLDetector):
        """Computes as the original does: one NMS call per class (a Python loop), NCHW convolutions and
        (set in the config) res5 recomputed for the attribute head. Benchmark only."""

        def _class_nms_mask(self, boxes, probs, threshold, shared_boxes, candidates=None):
            mask = torch.zeros_like(probs, dtype=torch.bool)
            for j in range(1, probs.shape[1]):
                rows = torch.arange(len(probs)) if candidates is None else candidates[:, j].nonzero().squeeze(1)
                if len(rows):
                    keep = nms(boxes[rows, j], probs[rows, j], threshold, self.config.nms_implementation)
                    mask[rows[keep], j] = True
            return mask

    return OriginalComputeDetector


def build_model(variant: str, quick: bool):
    from oscar_hf.processors.configuration_vinvl import VinVLDetectorConfig
    from oscar_hf.processors.modeling_vinvl import VinVLBottleneck, VinVLDetector

    original = variant.startswith("original")
    config = VinVLDetectorConfig(
        **(QUICK_SIZES if quick else {}),
        **({"min_size_test": 160, "max_size_test": 256} if quick else {}),
        channels_last=not original,
        reuse_proposal_features=not original,
        fold_batchnorm=not original,
        roi_head_chunk_size=0 if original else 32,
    )
    torch.manual_seed(0)
    model = (original_compute_detector() if original else VinVLDetector)(config).eval()
    with torch.no_grad():
        # Keep random activations bounded through 52 residual blocks, and the stem sized for 0-255 input.
        model.backbone.body.stem.conv1.weight.div_(64)
        for module in model.modules():
            if isinstance(module, VinVLBottleneck):
                module.bn3.weight.fill_(0.2)
        model.roi_heads.box.predictor.cls_score.weight.mul_(30)
    return model


def test_images(quick: bool, count: int):
    import numpy as np

    height, width = (160, 256) if quick else (600, 1000)
    rng = np.random.default_rng(0)
    # Smooth random images (a photo-like spectrum matters little for timing, but keeps the RPN honest).
    images = []
    for i in range(count):
        low = rng.integers(0, 256, (height // 20 + 1, width // 20 + 1, 3)).astype(np.uint8)
        from PIL import Image

        image = Image.fromarray(low).resize((width - 40 * i, height), Image.BILINEAR)
        images.append(np.asarray(image))
    return images


def test_inputs(config, quick: bool, count: int) -> dict:
    """`count` test images through the detector's image processor; more than one image is one padded batch."""
    from oscar_hf.processors.image_processing_vinvl import VinVLImageProcessor

    processor = VinVLImageProcessor(min_size=config.min_size_test, max_size=config.max_size_test)
    return processor(test_images(quick, count), pad_batch=count > 1)


# ------------------------------------------------------------------------------------------------
# One variant (runs in its own process)
# ------------------------------------------------------------------------------------------------


class StageTimer:
    """Wraps model methods so that each top-level call adds its wall time to a stage."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.active = None

    def wrap(self, owner, name: str, stage: str) -> None:
        method = getattr(owner, name)

        def timed(*args, **kwargs):
            if self.active is not None:
                return method(*args, **kwargs)
            self.active, start = stage, time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start
                self.active = None

        setattr(owner, name, timed)


def run_variant(variant: str, quick: bool, repeats: int, dump: Path) -> dict:
    model = build_model(variant, quick)
    per_image = 2 if variant.endswith("batched") else 1
    features = test_inputs(model.config, quick, per_image)
    timer = StageTimer()
    timer.wrap(model, "extract_c4", "backbone")
    timer.wrap(model.rpn, "forward", "rpn")
    timer.wrap(model.rpn, "select_proposals", "rpn")
    timer.wrap(model, "pool_regions", "res5 box head (proposals)")
    timer.wrap(model, "classify_regions", "post-processing")
    timer.wrap(model, "select_detections", "post-processing")
    timer.wrap(model, "_attribute_features", "attribute head")
    timer.wrap(model, "predict_attributes", "attribute head")
    context = torch.autocast("cpu", dtype=torch.bfloat16) if "bf16" in variant else nullcontext()

    def once():
        with context, torch.inference_mode():
            return model(**features)

    once()  # warm-up (oneDNN primitive creation, allocator)
    timer.seconds = dict.fromkeys(STAGES, 0.0)
    start = time.perf_counter()
    for _ in range(repeats):
        output = once()
    total = (time.perf_counter() - start) / repeats
    stages = {k: v / repeats / per_image for k, v in timer.seconds.items()}  # before the untimed forward below
    bf16 = "bf16" in variant
    # Autocast does not change what is computed: bf16 takes the FLOP count of the fp32 run (one forward less).
    flops, gemm_rate = (
        None if bf16 else forward_flops(once),
        gemm_rate_flops(torch.bfloat16 if bf16 else torch.float32),
    )
    result = {
        "variant": variant,
        "images_per_forward": per_image,
        "seconds_per_image": total / per_image,
        "stages_seconds_per_image": stages,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "flops_per_image": None if flops is None else flops / per_image,
        "gemm_gflops_per_second": gemm_rate / 1e9,
        "detections": [len(b) for b in output.boxes],
    }
    torch.save(
        {
            "boxes": output.boxes,
            "labels": output.labels,
            "features": [f.float() for f in output.region_features],
            "attribute_labels": output.attribute_labels,
        },
        dump,
    )
    return result


def forward_flops(forward) -> float:
    """FLOPs of one (untimed) forward, as `torch.utils.flop_counter` counts them (convolutions, matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        forward()
    return float(counter.get_total_flops())


def gemm_rate_flops(dtype: torch.dtype, reps: int = 5) -> float:
    """The machine's matrix-product rate now, in this process: median of `reps` n^3 products."""
    from bench_lib import gemm_callable, gemm_flops, interleaved, median

    # 2048^3 saturates fp32; CPUs without native bf16 run bf16 products at well under 1 GFLOP/s, where
    # 2048^3 would take a minute per product, so bf16 uses 512^3.
    n = 2048 if dtype == torch.float32 else 512
    seconds = median(interleaved({"gemm": gemm_callable(n, dtype)}, reps=reps)["gemm"])
    return gemm_flops(n) / seconds


def run_paired(quick: bool, repeats: int) -> dict:
    """The headline ratio: the original's computation and ours in ONE process, timed interleaved (the
    order rotated each repetition), so that both see the same machine state; paired per repetition."""
    from bench_lib import interleaved, median, paired_ratio

    models = {variant: build_model(variant, quick) for variant in ("original fp32", "ours fp32")}
    features = test_inputs(models["ours fp32"].config, quick, 1)

    def forward(variant: str):
        with torch.inference_mode():
            return models[variant](**features)

    times = interleaved({v: (lambda v=v: forward(v)) for v in models}, reps=repeats, warmup=1)
    gemm_rates = [gemm_rate_flops(torch.float32, reps=3) for _ in range(2)]
    return {
        "seconds_per_image": {v: median(t) for v, t in times.items()},
        "times_s": times,
        "speedup_ours_vs_original": paired_ratio(times["original fp32"], times["ours fp32"]),
        "gemm_gflops_per_second": [r / 1e9 for r in gemm_rates],
    }


# ------------------------------------------------------------------------------------------------
# Comparisons
# ------------------------------------------------------------------------------------------------


def compare_identical(reference: dict, other: dict) -> dict:
    same_labels = all(torch.equal(a, b) for a, b in zip(reference["labels"], other["labels"]))
    same_counts = [len(a) for a in reference["labels"]] == [len(b) for b in other["labels"]]
    report = {"same_counts": same_counts, "same_labels_and_order": same_counts and same_labels}
    if same_counts:
        report["max_abs_box_diff"] = max(
            (a - b).abs().max().item() for a, b in zip(reference["boxes"], other["boxes"])
        )
        report["max_abs_feature_diff"] = max(
            (a - b).abs().max().item() for a, b in zip(reference["features"], other["features"])
        )
        report["same_attribute_labels"] = all(
            torch.equal(a, b) for a, b in zip(reference["attribute_labels"], other["attribute_labels"])
        )
    return report


def compare_bf16(fp32: dict, bf16: dict) -> dict:
    """Matches each bf16 box to the fp32 box of highest IoU; reports IoU, label agreement, feature error."""
    from torchvision.ops import box_iou

    ious, agree, feature_diff, feature_rel = [], [], [], []
    for boxes32, labels32, feats32, boxes16, labels16, feats16 in zip(
        fp32["boxes"], fp32["labels"], fp32["features"], bf16["boxes"], bf16["labels"], bf16["features"]
    ):
        iou = box_iou(boxes16, boxes32)
        # Zero-area boxes (random weights make some) have IoU 0/0: count them as matching when equal.
        undefined = iou.isnan()
        iou[undefined] = (boxes16[:, None] == boxes32[None]).all(-1)[undefined].float()
        best_iou, best = iou.max(1)
        ious.append(best_iou)
        agree.append((labels16 == labels32[best]).float())
        close = best_iou > 0.99
        diff = (feats16[close] - feats32[best[close]]).abs()
        feature_diff.append(diff.max().item() if diff.numel() else float("nan"))
        feature_rel.append((diff.norm() / feats32[best[close]].norm()).item() if diff.numel() else float("nan"))
    ious, agree = torch.cat(ious), torch.cat(agree)
    return {
        "detections_fp32": [len(b) for b in fp32["boxes"]],
        "detections_bf16": [len(b) for b in bf16["boxes"]],
        "mean_best_iou_vs_fp32": ious.mean().item(),
        "share_boxes_iou_above_0.99": (ious > 0.99).float().mean().item(),
        "label_agreement_at_best_match": agree.mean().item(),
        "max_abs_feature_diff_matched": max(feature_diff),
        "relative_feature_error_matched": max(feature_rel),
    }


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------

VARIANTS = ("original fp32", "ours fp32", "ours bf16", "ours fp32 batched")


def _share_of_gemm(row: dict) -> float | None:
    """Useful FLOPs per second as a share of the GEMM rate measured in the same process."""
    if row.get("flops_per_image") is None:
        return None
    return row["flops_per_image"] / row["seconds_per_image"] / (row["gemm_gflops_per_second"] * 1e9)


def to_markdown(results: dict) -> str:
    def fmt(value, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    lines = [
        "# VinVL detector on CPU: native vs the original's computation",
        "",
        f"{'QUICK SIZES: a smoke test, not results. ' if results['quick'] else ''}"
        f"{results['setting']}. Machine: {results['machine']}; load average at start {results['load_average']}.",
        "",
    ]
    paired = results.get("paired")
    if paired:
        seconds = paired["seconds_per_image"]
        lines += [
            f"**Headline, one process, interleaved ({len(paired['times_s']['ours fp32'])} repetitions):** "
            f"original computation {seconds['original fp32']:.2f} s/image, ours {seconds['ours fp32']:.2f} s/image, "
            f"**{paired['speedup_ours_vs_original']:.2f}x** (paired median). GEMM rate in that process: "
            + ", ".join(f"{r:.1f}" for r in paired["gemm_gflops_per_second"])
            + " GFLOP/s.",
            "",
        ]
    lines += [
        "Each variant in its own process (its own peak RSS; the machine's speed can differ between processes, "
        "which the GEMM rate column shows):",
        "",
        "| variant | s / image | " + " | ".join(STAGES) + " | peak RSS (MB) | GFLOP / image | GEMM rate (GFLOP/s) "
        "| compute floor (s) | share of GEMM rate |",
        "| --- | --- | " + " | ".join("---" for _ in STAGES) + " | --- | --- | --- | --- | --- |",
    ]
    for name, row in results["variants"].items():
        stages = " | ".join(f"{row['stages_seconds_per_image'][s]:.2f}" for s in STAGES)
        flops = row.get("flops_per_image")
        floor = None if flops is None else flops / (row["gemm_gflops_per_second"] * 1e9)
        lines.append(
            f"| {name} | {row['seconds_per_image']:.2f} | {stages} | {row['peak_rss_mb']:.0f} | "
            f"{fmt(None if flops is None else flops / 1e9, '.0f')} | {row['gemm_gflops_per_second']:.1f} | "
            f"{fmt(floor, '.2f')} | {fmt(_share_of_gemm(row), '.0%')} |"
        )
    lines += [
        "",
        "compute floor = the forward's FLOPs / the GEMM rate: the time if every FLOP ran as fast as a large "
        "matrix product. bf16 rows take no FLOP count (autocast computes the same FLOPs as fp32).",
        "",
        "fp32 outputs, ours vs original (None: not both run): `" + json.dumps(results["fp32_identical"]) + "`",
        "",
        "bf16 vs fp32 (ours): `" + json.dumps(results["bf16_effect"]) + "`",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes; finishes in seconds (not results)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="JSON results (a .md table is written beside it)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="subset to run")
    parser.add_argument(
        "--paired-repeats", type=int, default=3, help="interleaved repetitions of the headline ratio (0: skip it)"
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--paired", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dump", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.variant:  # child process: one variant
        print("RESULT " + json.dumps(run_variant(args.variant, args.quick, args.repeats, args.dump)))
        return
    if args.paired:  # child process: the headline ratio
        print("RESULT " + json.dumps(run_paired(args.quick, args.paired_repeats)))
        return

    results = {
        "quick": args.quick,
        "setting": (
            "reduced test sizes, one 160 x 256 image"
            if args.quick
            else "full-size X152-C4 (random weights), one 600 x 1000 image, extraction recipe (NMS filter 1)"
        )
        + f", {args.threads} threads, {args.repeats} timed run(s) after one warm-up",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "variants": {},
    }
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    common = ["--threads", str(args.threads), "--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])

    def child(*flags: str) -> dict:
        command = [sys.executable, __file__, *flags, *common, "--paired-repeats", str(args.paired_repeats)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(flags)} failed:\n{done.stderr[-4000:]}")
        return json.loads([line for line in done.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])

    if args.paired_repeats:
        results["paired"] = child("--paired")
        print(
            "paired (one process): " + json.dumps(results["paired"]["seconds_per_image"]) + f", ours "
            f"{results['paired']['speedup_ours_vs_original']:.2f}x",
            flush=True,
        )
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            dump = Path(tmp) / f"{variant.replace(' ', '_')}.pt"
            row = child("--variant", variant, "--dump", str(dump))
            results["variants"][variant] = row
            print(
                f"{variant:20s} {row['seconds_per_image']:.2f} s/image  peak RSS {row['peak_rss_mb']:.0f} MB",
                flush=True,
            )
            if args.out is not None:  # partial results survive an interrupted run
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1) + "\n")
        dumps = {v: torch.load(Path(tmp) / f"{v.replace(' ', '_')}.pt", weights_only=True) for v in args.variants}
    results["fp32_identical"] = results["bf16_effect"] = results["speedup_vs_original_fp32"] = None
    if {"original fp32", "ours fp32"} <= dumps.keys():
        results["fp32_identical"] = compare_identical(dumps["original fp32"], dumps["ours fp32"])
    if {"ours fp32", "ours bf16"} <= dumps.keys():
        results["bf16_effect"] = compare_bf16(dumps["ours fp32"], dumps["ours bf16"])
    if "original fp32" in results["variants"]:
        base = results["variants"]["original fp32"]["seconds_per_image"]
        results["speedup_vs_original_fp32"] = {
            name: base / row["seconds_per_image"] for name, row in results["variants"].items()
        }
    if args.quick:
        print("quick sizes: a smoke test of the benchmark, not results")
    print(json.dumps({k: results[k] for k in ("fp32_identical", "bf16_effect", "speedup_vs_original_fp32")}, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(to_markdown(results))


if __name__ == "__main__":
    main()
