"""Smoke test of the built wheel, run from a directory outside the clone with the wheel installed.

converter (fixture checkpoint) -> exported folder -> caption recipe for 2 steps from it -> the
recipe's final folder run as a pipeline in a fresh interpreter. Only the installed wheel provides
`oscar_hf`; the repository is read for the recipe script, the fixtures and the tests' data writers.

    python .ci/wheel_smoke.py REPO WORKDIR
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run(*command: str, cwd: Path) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, check=True, stdin=subprocess.DEVNULL)


def main(repo: Path, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    import oscar_hf

    location = Path(oscar_hf.__file__).resolve()
    if repo.resolve() in location.parents:
        raise SystemExit(f"oscar_hf was imported from the clone ({location}), not from the wheel")
    print(f"oscar_hf from {location}")

    fixture = repo / "tests" / "fixtures" / "oscar_original"
    converted = work / "converted"
    run(
        sys.executable, "-m", "oscar_hf.convert_original_checkpoint", str(fixture / "caption_decode"), str(converted),
        "--task", "captioning", "--vocab", str(fixture / "vocab.txt"), cwd=work,
    )  # fmt: skip

    # Tiny caption data in the original formats, built to Parquet by the installed package.
    sys.path.insert(0, str(repo / "tests"))
    from support.recipes import write_caption_data

    data = write_caption_data(work / "data")
    out = work / "run"
    run(
        sys.executable, str(repo / "recipes" / "caption.py"),
        "--model_name_or_path", str(converted), "--train_data", str(data), "--eval_data", str(data),
        "--output_dir", str(out), "--max_train_steps", "2", "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "2", "--num_beams", "2", "--max_gen_length", "8",
        "--metric_backend", "python", "--report_to", "none", cwd=work,
    )  # fmt: skip
    final = out / "final"
    card = (final / "README.md").read_text(encoding="utf-8")
    if "oscar-captioning" not in card:
        raise SystemExit("the exported card does not show the captioning pipeline")
    dim = json.loads((final / "config.json").read_text())["img_feature_dim"] - 6
    script = f"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "oscar_hf" or name.startswith("oscar_hf."):
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, Block())
import numpy as np
from transformers import pipeline
pipe = pipeline("oscar-captioning", model={str(final)!r}, trust_remote_code=True)
regions = {{"features": np.random.rand(5, {dim}).astype("float32"),
           "boxes": np.array([[0, 0, 32, 24]] * 5, dtype="float32"), "image_size": (48, 64), "tags": ["dog"] * 5}}
print(json.dumps(pipe(regions)))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=work, check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    captions = json.loads(result.stdout.strip().splitlines()[-1])
    if not (isinstance(captions, list) and "generated_text" in captions[0]):
        raise SystemExit(f"unexpected pipeline output: {captions}")
    print(f"wheel smoke passed: {captions}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
