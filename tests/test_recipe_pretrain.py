"""recipes/pretrain.py end to end on a corpus in the original formats; exact resume."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file
from support import REPO_ROOT
from support.recipes import run_export_in_fresh_process, tiny_overrides, tokenizer_folder, write_pretrain_corpus


sys.path.insert(0, str(REPO_ROOT / "recipes"))
import pretrain  # noqa: E402


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    return write_pretrain_corpus(root), tokenizer_folder(root)


def run(corpus, out, *extra):
    data, tokenizer = corpus
    return pretrain.main(
        [
            "--train_data", str(data),
            "--tokenizer_name_or_path", str(tokenizer),
            "--config_overrides", tiny_overrides(num_contrast_classes=3, use_img_layernorm=True),
            "--output_dir", str(out),
            "--per_device_train_batch_size", "4",
            "--max_img_seq_length", "10",
            "--report_to", "none",
            "--seed", "3",
            *extra,
        ]
    )  # fmt: skip


def test_pretrain_runs_evaluates_exports_and_loads_as_remote_code(corpus, tmp_path):
    final, result = run(
        corpus, tmp_path / "run", "--max_train_steps", "3", "--eval_data", str(corpus[0]), "--eval_split", "train"
    )
    assert result.global_step == 3 and result.last_loss is not None
    evals = [h for h in result.history if "eval/contrastive_accuracy" in h]
    assert evals and 0.0 <= evals[-1]["eval/contrastive_accuracy"] <= 1.0
    assert (tmp_path / "run" / "args.yaml").is_file()
    assert {"model.safetensors", "processor_config.json", "modeling_oscar.py", "README.md"} <= {
        p.name for p in final.iterdir()
    }
    from oscar_hf import OscarForPreTraining
    from oscar_hf.training import load_processor

    model = OscarForPreTraining.from_pretrained(final).eval()
    processor = load_processor(str(final))
    inputs = dict(processor("a dog on a couch", tags="dog couch", region_features=[torch.rand(3, 2054)]))
    with torch.no_grad():
        expected = model(**inputs).prediction_logits
    got = run_export_in_fresh_process(final, "AutoModelForPreTraining", inputs, tmp_path)
    assert got["processor"] == "OscarProcessor"
    torch.testing.assert_close(got["logits"], expected, atol=1e-5, rtol=0)


def test_resume_from_checkpoint_ends_with_identical_weights(corpus, tmp_path):
    """A run restarted from its step-3 state (optimizer, scheduler, RNGs, data position and the
    collator's masking generator restored) ends with the same weights as an uninterrupted run."""
    common = ["--max_train_steps", "6", "--warmup_steps", "2", "--checkpointing_steps", "3"]
    full, _ = run(corpus, tmp_path / "full", *common)
    interrupted = tmp_path / "interrupted"
    run(corpus, interrupted, *common)
    # Throw away everything after the step-3 state, as if the process had been killed there.
    import shutil

    shutil.rmtree(interrupted / "checkpoints" / "step_6")
    shutil.rmtree(interrupted / "final")
    resumed, result = run(corpus, interrupted, *common, "--resume_from_checkpoint", "latest")
    assert result.global_step == 6
    expected = load_file(full / "model.safetensors")
    got = load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("config", ["oscar_base", "oscar_plus_base", "oscar_plus_large"])
def test_pretraining_configs_parse(config):
    args = pretrain.parse_recipe_args(
        pretrain.PretrainArguments, ["--config", str(REPO_ROOT / "recipes" / "configs" / f"{config}.yaml")]
    )
    assert (args.max_seq_length, args.max_img_seq_length) == (35, 50)
    assert args.config_dict()["num_contrast_classes"] == (2 if config == "oscar_base" else 3)
