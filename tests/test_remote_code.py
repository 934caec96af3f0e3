"""Exported folders load as remote code, with our package not importable and the Hub offline.

Each converted fixture checkpoint is exported, then loaded in a fresh interpreter through
`AutoConfig` / `AutoModel` / the task's Auto class with `trust_remote_code=True`, on the installed
transformers 5.x and on transformers 4.57 (with its huggingface_hub < 1.0) from a separate target
directory. The logits (and decoded captions) must equal those of the in-process model.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from support import TF457_TARGET, run_isolated

from oscar_hf.convert_original_checkpoint import convert_checkpoint


pytestmark = [pytest.mark.remote_code, pytest.mark.slow]

# Where .ci/run installs transformers 4.57 (+ huggingface_hub 0.36, tokenizers 0.22) with --target.

CASES = {
    # case: (task, Auto class of the task, how to call it)
    "seqcls_mlp_ce": ("classification", "AutoModelForSequenceClassification", "forward"),
    "seqcls_retrieval_linear_ce": ("retrieval", "AutoModelForSequenceClassification", "forward"),
    "nlvr2_pair_mlp": ("nlvr2", "AutoModelForSequenceClassification", "forward"),
    "pretrain_contrast3": ("pretraining", "AutoModelForPreTraining", "forward"),
    "caption_decode": ("captioning", "AutoModelForImageTextToText", "generate"),
}

LOADER = textwrap.dedent(
    """

    import torch, transformers
    from safetensors.torch import load_file
    job = json.loads(sys.argv[1])
    results = {"transformers": transformers.__version__}
    for case in job["cases"]:
        folder, data = case["folder"], case["data"]
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
        base = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        model = getattr(transformers, case["auto"]).from_pretrained(folder, trust_remote_code=True).eval()
        inputs = load_file(data + "/inputs.safetensors")
        expected = load_file(data + "/expected.safetensors")
        with torch.no_grad():
            if case["call"] == "generate":
                tensors = {k: v for k, v in inputs.items()}
                out = {
                    "original": model.generate(**tensors, max_length=10, num_beams=3, original_decoding=True),
                    "standard": model.generate(**tensors, max_length=10, num_beams=3, original_decoding=False),
                }
                same = {k: bool(torch.equal(out[k], expected[k])) for k in out}
            else:
                out = model(**inputs)
                logits = out.logits if hasattr(out, "logits") and out.logits is not None else out.prediction_logits
                same = {"logits": float((logits - expected["logits"]).abs().max())}
            trunk_kwargs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids", "img_feats")}
            if case["call"] == "forward" and inputs["input_ids"].dim() == 2:
                hidden = base(**trunk_kwargs).last_hidden_state
                same["trunk"] = float((hidden - expected["trunk"]).abs().max())
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        same["tokenizer"] = tokenizer("a dog", "couch")["input_ids"] == [101, 1037, 3899, 102, 6411, 102]
        results[case["name"]] = {"class": type(model).__name__, "config": type(config).__name__, **same}
    print("RESULT " + json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def exported(fixture_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    jobs = []
    for name, (task, auto, call) in CASES.items():
        folder, data = root / name, root / f"{name}_data"
        data.mkdir()
        overrides = {}
        if task == "captioning":
            overrides = dict(max_caption_length=12, max_tag_length=10)
        model = convert_checkpoint(
            fixture_dir / name, folder, task, vocab=fixture_dir / "vocab.txt", **overrides
        ).eval()
        inputs = load_file(fixture_dir / name / "inputs.safetensors")
        with torch.no_grad():
            if call == "generate":
                gen_inputs = {
                    "tag_input_ids": inputs["input_ids"][:, 12:],
                    "img_feats": inputs["img_feats"],
                    "img_attention_mask": inputs["attention_mask"][:, 12, 22:],
                    "input_ids": torch.full((inputs["img_feats"].shape[0], 1), 101),
                }
                expected = {
                    "original": model.generate(**gen_inputs, max_length=10, num_beams=3, original_decoding=True),
                    "standard": model.generate(**gen_inputs, max_length=10, num_beams=3, original_decoding=False),
                }
                inputs = gen_inputs
            else:
                inputs = {
                    k: v
                    for k, v in inputs.items()
                    if k in ("input_ids", "attention_mask", "token_type_ids", "img_feats")
                }
                out = model(**inputs)
                logits = out.logits if getattr(out, "logits", None) is not None else out.prediction_logits
                expected = {"logits": logits}
                if inputs["input_ids"].dim() == 2:
                    expected["trunk"] = model.bert(**inputs).last_hidden_state
        save_file({k: v.contiguous() for k, v in inputs.items()}, data / "inputs.safetensors")
        save_file({k: v.contiguous() for k, v in expected.items()}, data / "expected.safetensors")
        jobs.append({"name": name, "folder": str(folder), "data": str(data), "auto": auto, "call": call})
    return root, jobs


def run_loader(jobs: list[dict], modules_cache: Path, extra_path: Path | None = None) -> dict:
    return run_isolated(
        LOADER, json.dumps({"cases": jobs}), workdir=modules_cache.parent, extra_path=extra_path,
        env={"HF_MODULES_CACHE": str(modules_cache)},
    )  # fmt: skip


def check(results: dict, jobs: list[dict]) -> None:
    for job in jobs:
        got = results[job["name"]]
        assert got["config"] == "OscarConfig"
        for key, value in got.items():
            if key in ("class", "config"):
                continue
            if isinstance(value, bool):
                assert value, (job["name"], key)
            else:
                assert value < 1e-5, (job["name"], key, value)


def test_remote_code_on_installed_transformers(exported, tmp_path):
    root, jobs = exported
    results = run_loader(jobs, tmp_path / "modules")
    assert results["transformers"].startswith(("5.", "4."))
    check(results, jobs)
    assert results["nlvr2_pair_mlp"]["class"] == "OscarForNLVR2"
    assert results["caption_decode"]["class"] == "OscarForImageCaptioning"


@pytest.mark.skipif(
    not (TF457_TARGET / "transformers").is_dir(),
    reason=f"transformers 4.57 target dir missing at {TF457_TARGET} (.ci/run installs it; set OSCAR_TF457_TARGET)",
)
def test_remote_code_on_transformers_4_57(exported, tmp_path):
    root, jobs = exported
    results = run_loader(jobs, tmp_path / "modules", extra_path=TF457_TARGET)
    assert results["transformers"].startswith("4.57"), results["transformers"]
    check(results, jobs)
