"""Constrained beam search (NoCaps CBS) against plain beam search, on the same model and inputs.

Both decode the same random-weight captioning model over the same images, tags and regions, with
the original's settings (NoCaps: 5 beams, 20 tokens, 3 constraints of which one has two WordPieces),
and both re-encode the full caption every step (the original's decoding; plain beam search is our
`generate(original_decoding=True, use_cache=False)`, plus the cached variant for reference). The
variants are timed interleaved in one process (order rotated every repetition) and compared as the
median of per-repetition ratios. Peak memory is measured per variant in a separate call after
timing: the CUDA allocator's peak, or the process's resident high-water mark on CPU (includes the
model). Tokens/s counts `max_length - 1` generated tokens per image for every variant.

CBS keeps `num_beams` beams for each FSM state (8 main states plus the sub-states of multi-token
constraints), so it runs many more rows per step than plain beam search; the sparse FSM keeps its
per-image memory to a few kilobytes where the original's dense one took 32 * 32 * vocab bytes.

    python benchmarks/cbs_decoding.py                 # BERT-base size, 4 images
    python benchmarks/cbs_decoding.py --size small --images 1 --max_length 12   # a 2-core CPU budget
    python benchmarks/cbs_decoding.py --quick         # tiny sizes: checks the script, not a result
    python benchmarks/cbs_decoding.py --device cuda --json results/cbs_decoding.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lib import PeakRSS, environment, interleaved, md_table, median, paired_ratio  # noqa: E402

from oscar_hf import OscarConfig, OscarForImageCaptioning  # noqa: E402
from oscar_hf.cbs_oscar import constrained_beam_search  # noqa: E402
from oscar_hf.processors.cbs_constraints import FSMBuilder  # noqa: E402


class IdTokenizer:
    """Maps the synthetic constraint tokens `t<id>` to their ids."""

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        return [int(token[1:]) for token in tokens]


SIZES = {
    "quick": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
    "small": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def make_model(size_name: str, device: str) -> OscarForImageCaptioning:
    size = SIZES[size_name]
    config = OscarConfig(
        vocab_size=30522, max_caption_length=40, max_tag_length=30, max_position_embeddings=512, **size
    )
    torch.manual_seed(0)
    return OscarForImageCaptioning(config).eval().to(device)


def make_inputs(images: int, regions: int, tags: int, device: str) -> dict:
    generator = torch.Generator().manual_seed(1)
    tag_ids = torch.randint(1000, 30000, (images, tags), generator=generator)
    tag_ids[:, -1] = 102
    return dict(
        img_feats=torch.randn(images, regions, 2054, generator=generator).to(device),
        tag_input_ids=tag_ids.to(device),
    )


def make_fsms(images: int, device: str) -> list:
    """Three constraints per image, one of two WordPieces, with two forms for the first token."""
    words = {"a": ["t2000"], "b": ["t3000", "t3001"], "c": ["t4000"]}
    forms = {"t2000": ["t2000", "t2001"]}
    builder = FSMBuilder(IdTokenizer(), words, forms)
    return [builder.build(["a", "b", "c"]) for _ in range(images)]


def peak_mb(fn, device: str) -> float | None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with PeakRSS() as peak:
        fn()
    return peak.peak_mb


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and lengths (script check, not results)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=("small", "base"), default="base", help="model size (vocabulary 30522)")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--num_beams", type=int, default=5)
    parser.add_argument("--max_length", type=int, default=None)
    parser.add_argument("--regions", type=int, default=None)
    parser.add_argument("--tags", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    images = args.images or (2 if args.quick else 4)
    max_length = args.max_length or (6 if args.quick else 20)
    regions = args.regions or (5 if args.quick else 50)
    tags = args.tags or (4 if args.quick else 15)
    reps = args.reps or (2 if args.quick else 3)
    device = args.device

    model = make_model("quick" if args.quick else args.size, device)
    inputs = make_inputs(images, regions, tags, device)
    fsms = make_fsms(images, device)
    beams = args.num_beams

    def cbs(use_cache: bool = False):
        def run():
            return constrained_beam_search(
                model,
                fsm=fsms,
                min_constraints_to_satisfy=2,
                num_beams=beams,
                max_length=max_length,
                use_cache=use_cache,
                **inputs,
            )

        return run

    def plain(use_cache: bool):
        def run():
            return model.generate(
                **inputs, max_length=max_length, num_beams=beams, original_decoding=True, use_cache=use_cache
            )

        return run

    variants = {
        "cbs (recompute)": cbs(False),
        "cbs (kv cache)": cbs(True),
        "beam (recompute)": plain(False),
        "beam (kv cache)": plain(True),
    }
    with torch.no_grad():
        times = interleaved(variants, reps=reps, warmup=1, device=device)
        peaks = {name: peak_mb(fn, device) for name, fn in variants.items()}
        found = cbs()().valid_beam_found.float().mean().item()

    tokens = images * (max_length - 1)
    base = "beam (recompute)"
    rows, results = [], {}
    for name in variants:
        seconds = median(times[name])
        results[name] = {
            "median_s": seconds,
            "tokens_per_s": tokens / seconds,
            "time_vs_beam_recompute": paired_ratio(times[name], times[base]),
            "peak_mb": peaks[name],
        }
        rows.append([name, seconds, tokens / seconds, results[name]["time_vs_beam_recompute"], peaks[name]])
    vocab = model.config.vocab_size
    fsm_bytes = {"sparse_bytes_per_image": fsms[0].nbytes, "original_dense_bytes_per_image": 32 * 32 * vocab}
    report = {
        "quick": args.quick,
        "device": device,
        "sizes": dict(images=images, num_beams=beams, max_length=max_length, regions=regions, tags=tags, reps=reps),
        "model": {k: getattr(model.config, k) for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
        "fsm_states_used": fsms[0].num_used_states,
        "valid_beam_found_fraction": found,
        "fsm_memory": fsm_bytes,
        "variants": results,
        "environment": environment(),
    }
    print("QUICK sizes: this checks the script; the numbers are not results.\n\n" if args.quick else "")
    print(md_table(["variant", "median s", "tokens/s", "time / beam (recompute)", "peak MB"], rows))
    print(
        f"\nFSM per image: {fsm_bytes['sparse_bytes_per_image']} B sparse vs "
        f"{fsm_bytes['original_dense_bytes_per_image'] / 2**20:.1f} MiB dense (original); "
        f"{fsms[0].num_used_states} states x {beams} beams per image."
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
