"""recipes/caption.py: cross-entropy stage, evaluation with COCO metrics, SCST stage, export."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file
from support import REPO_ROOT
from support.recipes import run_export_in_fresh_process, tiny_overrides, tokenizer_folder, write_caption_data


sys.path.insert(0, str(REPO_ROOT / "recipes"))
import caption  # noqa: E402


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("caption")
    return write_caption_data(root), tokenizer_folder(root)


def common(data, out):
    dataset, tokenizer = data
    return [
        "--train_data", str(dataset),
        "--eval_data", str(dataset),
        "--tokenizer_name_or_path", str(tokenizer),
        "--config_overrides", tiny_overrides(label_smoothing=0.1),
        "--output_dir", str(out),
        "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "2",
        "--max_img_seq_length", "10",
        "--max_seq_length", "30",
        "--max_caption_length", "16",
        "--num_beams", "2",
        "--max_gen_length", "8",
        "--metric_backend", "python",
        "--metric_for_best", "CIDEr",
        "--report_to", "none",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def cross_entropy_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("xe")
    return caption.main([*common(data, out), "--max_train_steps", "3", "--checkpointing_steps", "2"])


def test_cross_entropy_stage_trains_evaluates_and_exports(cross_entropy_run, tmp_path):
    final, result = cross_entropy_run
    assert result.global_step == 3
    metrics = result.history[-1]
    assert {"eval/CIDEr", "eval/Bleu_4", "eval/ROUGE_L"} <= set(metrics)
    assert result.best_dir is not None and (result.best_dir / "model.safetensors").is_file()
    card = (final / "README.md").read_text()
    assert "model-index" in card and "CIDEr" in card
    from oscar_hf import OscarForImageCaptioning
    from oscar_hf.training import load_processor

    model = OscarForImageCaptioning.from_pretrained(final).eval()
    assert model.generation_config.num_beams == 2 and model.generation_config.original_decoding
    processor = load_processor(str(final))
    inputs = dict(
        processor.captioning(["a dog on a couch"], tags=["dog couch"], region_features=[torch.rand(3, 2054)])
    )
    with torch.no_grad():
        expected = model(**inputs).logits
    got = run_export_in_fresh_process(final, "AutoModelForImageTextToText", inputs, tmp_path)
    torch.testing.assert_close(got["logits"], expected, atol=1e-5, rtol=0)


def test_scst_stage_updates_the_model_with_cider_advantages(cross_entropy_run, data, tmp_path, monkeypatch):
    start, _ = cross_entropy_run
    # A random tiny model earns CIDEr 0 on every sample; give the samples varied rewards instead so
    # the policy gradient is not zero (the real CIDEr-D reward is tested in test_scst.py).
    monkeypatch.setattr(
        caption.CiderReward,
        "__call__",
        lambda self, captions, refs: torch.tensor([len(c) % 7 for c in captions], dtype=torch.float),
    )
    final, result = caption.main(
        [*common(data, tmp_path / "scst"), "--model_name_or_path", str(start), "--scst", "--scst_num_samples", "3",
         "--max_train_steps", "2", "--learning_rate", "1e-3"]
    )  # fmt: skip
    assert result.global_step == 2
    assert any(h.get("loss", 0.0) != 0.0 for h in result.history)
    before, after = load_file(start / "model.safetensors"), load_file(final / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "config",
    ["coco_caption_base", "coco_caption_base_scst", "coco_caption_large", "coco_caption_large_scst",
     "vinvl_caption_base", "vinvl_caption_large"],
)  # fmt: skip
def test_caption_configs_parse(config):
    args = caption.parse_recipe_args(
        caption.CaptionArguments, ["--config", str(REPO_ROOT / "recipes" / "configs" / f"{config}.yaml")]
    )
    assert (args.max_seq_length, args.max_img_seq_length, args.max_gen_length, args.num_beams) == (70, 50, 20, 5)
    assert args.scst == config.endswith("scst")
