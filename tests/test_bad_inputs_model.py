"""Bad inputs to the model side: configs, ids and labels out of range, degenerate batches, generate().

Each case asserts the exception type and that the message names the value and what was expected.
The silent cases (a NaN loss, a pooled region, all-padding captions) and the ones torch used to
report from deep inside (`index out of range in self`, a CUDA device-side assert) each have a test
that fails on the code before these checks.
"""

from __future__ import annotations

import json
import re
import textwrap

import pytest
import torch
from support import REPO_ROOT, TF457_TARGET, run_isolated, tiny_config

from oscar_hf import (
    OscarConfig,
    OscarForImageCaptioning,
    OscarForImageTextRetrieval,
    OscarForNLVR2,
    OscarForPreTraining,
    OscarForSequenceClassification,
    OscarModel,
)
from oscar_hf.modeling_oscar import ValueCheck, caption_loss, check_values


def raises(error: type, *fragments: str):
    pattern = "".join(f"(?=.*{re.escape(fragment)})" for fragment in fragments)
    return pytest.raises(error, match=re.compile(pattern, re.S))


def inputs(config, batch: int = 2, text_len: int = 6, regions: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(5, config.vocab_size, (batch, text_len), generator=g),
        "attention_mask": torch.ones(batch, text_len, dtype=torch.long),
        "img_feats": torch.randn(batch, regions, config.img_feature_dim, generator=g),
    }


def pair_inputs(config, batch: int = 2) -> dict:
    single = inputs(config, batch=batch * config.num_choice)
    return {k: v.reshape(batch, config.num_choice, *v.shape[1:]) for k, v in single.items()}


def decode_inputs(config, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.full((batch, 1), config.bos_token_id, dtype=torch.long),
        "tag_input_ids": torch.randint(5, config.vocab_size, (batch, 3), generator=g),
        "img_feats": torch.randn(batch, 4, config.img_feature_dim, generator=g),
    }


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("vocab_size", 0, "an integer >= 1"),
        ("hidden_size", 0, "an integer >= 1"),
        ("hidden_size", -32, "an integer >= 1"),
        ("hidden_size", 32.0, "an integer >= 1"),
        ("hidden_size", 30, "a multiple of num_attention_heads=4"),
        ("num_attention_heads", 0, "an integer >= 1"),
        ("num_hidden_layers", 0, "an integer >= 1"),
        ("num_hidden_layers", -1, "an integer >= 1"),
        ("intermediate_size", 0, "an integer >= 1"),
        ("max_position_embeddings", 0, "an integer >= 1"),
        ("type_vocab_size", 0, "an integer >= 1"),
        ("img_feature_dim", 0, "2054 = 2048"),
        ("img_feature_dim", -2054, "an integer >= 1"),
        ("max_img_seq_length", 0, "an integer >= 1"),
        ("max_caption_length", 0, "an integer >= 2"),
        ("max_tag_length", -1, "an integer >= 0"),
        ("num_labels", 0, "an integer >= 1"),
        ("num_choice", 0, "an integer >= 1"),
        ("cls_hidden_scale", 0, "an integer >= 1"),
        ("drop_worst_after", -5, "an integer >= 0"),
        ("hidden_dropout_prob", 1.5, "a probability in [0, 1)"),
        ("attention_probs_dropout_prob", -0.1, "a probability in [0, 1)"),
        ("classifier_dropout", 1.0, "a probability in [0, 1) or None"),
        ("layer_norm_eps", 0.0, "a positive epsilon"),
        ("img_layer_norm_eps", -1e-12, "a positive epsilon"),
        ("initializer_range", -0.02, "a non-negative standard deviation"),
        ("hidden_act", "gelux", "one of transformers' activations"),
        ("classifier", "deep", "one of ('linear', 'mlp')"),
        ("loss_type", "xe", "one of ('ce', 'bce', 'kl', 'mse')"),
        ("caption_loss", "causal", "one of ('masked', 'shifted')"),
        ("num_contrast_classes", 4, "2 (Oscar) or 3 (Oscar+)"),
        ("label_smoothing", 1.0, "a value in [0, 1)"),
        ("drop_worst_ratio", -0.2, "a value in [0, 1)"),
        ("max_caption_length", 60, "max_caption_length + max_tag_length <= max_position_embeddings=64"),
    ],
)
def test_config_refuses_values_that_cannot_make_a_model(field, value, expected):
    with raises(ValueError, f"OscarConfig.{field}={value!r}", expected):
        tiny_config(**{field: value})


def test_config_defaults_and_round_trips_still_work(tmp_path):
    config = OscarConfig()
    assert OscarConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    tiny = tiny_config(num_labels=5)
    tiny.save_pretrained(tmp_path)
    assert OscarConfig.from_pretrained(tmp_path).to_dict() == tiny.to_dict()
    assert OscarConfig.from_pretrained(tmp_path, num_labels=2).num_labels == 2


def test_config_refuses_a_bad_saved_value_on_load(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    file = tmp_path / "config.json"
    raw = json.loads(file.read_text())
    raw["num_hidden_layers"] = 0
    file.write_text(json.dumps(raw))
    with raises(ValueError, "OscarConfig.num_hidden_layers=0", "an integer >= 1"):
        OscarConfig.from_pretrained(tmp_path)
    with raises(ValueError, "OscarConfig.num_attention_heads=0"):
        OscarConfig.from_dict({**tiny_config().to_dict(), "num_attention_heads": 0})


def test_config_validate_catches_fields_changed_after_construction(tmp_path):
    config = tiny_config()
    config.hidden_size = 33
    with raises(ValueError, "OscarConfig.hidden_size=33", "a multiple of num_attention_heads=4"):
        config.validate()


def test_special_token_outside_the_vocabulary_is_named_when_the_model_is_built():
    # Like transformers, the config itself may carry such an id (configs are edited in steps).
    config = tiny_config(pad_token_id=120)
    with raises(ValueError, "config.pad_token_id=120", "[0, vocab_size=99)"):
        OscarModel(config)


@pytest.mark.slow
@pytest.mark.skipif(
    not (TF457_TARGET / "transformers").is_dir(),
    reason=f"transformers 4.57 target dir missing at {TF457_TARGET} (make compat-4.57 installs it)",
)
def test_config_validation_on_transformers_4_57(tmp_path):
    script = textwrap.dedent(
        """
        import json, sys, tempfile
        sys.path.insert(0, sys.argv[1])
        import transformers
        from configuration_oscar import OscarConfig
        config = OscarConfig()
        same = OscarConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
        folder = tempfile.mkdtemp()
        OscarConfig(num_labels=4).save_pretrained(folder)
        loaded = OscarConfig.from_pretrained(folder).num_labels
        errors = []
        for field, value in (("num_hidden_layers", 0), ("hidden_size", 30), ("num_labels", 0)):
            try:
                OscarConfig(**{field: value})
            except ValueError as error:
                errors.append(str(error))
        print("RESULT " + json.dumps({"version": transformers.__version__, "same": same, "loaded": loaded,
                                      "errors": errors}))
        """
    )
    result = run_isolated(
        script, str(REPO_ROOT / "modeling_oscar"), workdir=tmp_path, block_package=True, extra_path=TF457_TARGET
    )
    assert result["version"].startswith("4.57")
    assert result["same"] and result["loaded"] == 4
    assert [e.split(" is invalid")[0] for e in result["errors"]] == [
        "OscarConfig.num_hidden_layers=0",
        "OscarConfig.hidden_size=30",
        "OscarConfig.num_labels=0",
    ]


# ------------------------------------------------------------------------------ ids out of range


@pytest.fixture(scope="module")
def config():
    return tiny_config()


@pytest.fixture(scope="module")
def classifier(config):
    torch.manual_seed(0)
    return OscarForSequenceClassification(config).eval()


@pytest.mark.parametrize(
    ("name", "value", "position", "expected"),
    [
        ("input_ids", 99, (1, 4), "ids in [0, vocab_size=99)"),
        ("input_ids", 12345, (0, 0), "ids in [0, vocab_size=99)"),
        ("input_ids", -3, (0, 2), "ids in [0, vocab_size=99)"),
        ("token_type_ids", 2, (1, 3), "ids in [0, type_vocab_size=2)"),
        ("token_type_ids", -1, (0, 5), "ids in [0, type_vocab_size=2)"),
        ("position_ids", 64, (0, 1), "ids in [0, max_position_embeddings=64)"),
    ],
)
def test_ids_out_of_range_name_the_tensor_value_and_range(classifier, config, name, value, position, expected):
    batch = inputs(config)
    if name != "input_ids":
        batch[name] = (
            torch.zeros_like(batch["input_ids"]) if name == "token_type_ids" else torch.arange(6).repeat(2, 1)
        )
    batch[name][position] = value
    with raises(ValueError, f"{name} holds {value} at index {position}", expected):
        classifier(**batch)


def test_the_check_runs_before_anything_is_embedded(config):
    model = OscarModel(config).eval()
    embedded = []
    model.embeddings.register_forward_pre_hook(lambda *args: embedded.append(True))
    batch = inputs(config)
    batch["input_ids"][0, 1] = config.vocab_size
    with raises(ValueError, "input_ids holds 99"):
        model(**batch)
    assert not embedded


def test_nan_region_features_name_the_index(config):
    batch = inputs(config)
    batch["img_feats"][1, 2, 5] = float("inf")
    with raises(ValueError, "img_feats holds inf at index (1, 2, 5)", "finite values (no NaN or inf)"):
        OscarModel(config)(**batch)


# ---------------------------------------------------------------------------- labels out of range


@pytest.mark.parametrize("label", [3, 7, -1, -101])
def test_class_labels_outside_num_labels(classifier, config, label):
    with raises(ValueError, f"labels holds {label} at index (1,)", "class indices in [0, num_labels=3)", "-100"):
        classifier(**inputs(config), labels=torch.tensor([0, label]))


def test_ignored_class_label_is_accepted(classifier, config):
    out = classifier(**inputs(config), labels=torch.tensor([-100, 2]))
    assert torch.isfinite(out.loss)


def test_retrieval_and_nlvr2_labels(config):
    pair = tiny_config(num_labels=2)
    with raises(ValueError, "labels holds 2 at index (0,)", "class indices in [0, num_labels=2)"):
        OscarForImageTextRetrieval(pair)(**inputs(pair), labels=torch.tensor([2, 1]))
    with raises(ValueError, "labels holds 5 at index (1,)", "class indices in [0, num_labels=2)"):
        OscarForNLVR2(pair)(**pair_inputs(pair), labels=torch.tensor([1, 5]))


@pytest.mark.parametrize("score", [1.5, -0.25, float("nan")])
def test_soft_scores_outside_zero_one(score):
    config = tiny_config(loss_type="bce")
    labels = torch.zeros(2, 3)
    labels[1, 2] = score
    with raises(ValueError, f"labels holds {score!r} at index (1, 2)", "soft scores in [0, 1]", "0.3/0.6/0.9/1"):
        OscarForSequenceClassification(config)(**inputs(config), labels=labels)


def test_multi_label_targets_outside_zero_one():
    config = tiny_config(problem_type="multi_label_classification")
    with raises(ValueError, "labels holds 2.0 at index (0, 0)", "soft scores in [0, 1]"):
        OscarForSequenceClassification(config)(**inputs(config), labels=torch.tensor([[2.0, 0, 0], [0, 1, 0]]))


def test_pretraining_labels(config):
    model = OscarForPreTraining(config)
    labels = torch.full((2, 6), -100)
    labels[0, 3] = 99
    with raises(ValueError, "labels holds 99 at index (0, 3)", "token ids in [0, vocab_size=99)"):
        model(**inputs(config), labels=labels)
    with raises(ValueError, "contrastive_labels holds 3 at index (1,)", "[0, num_contrast_classes=3)"):
        model(**inputs(config), contrastive_labels=torch.tensor([0, 3]))


def test_caption_targets_outside_the_vocabulary(config):
    labels = torch.full((2, 6), -100)
    labels[1, 2] = 150
    with raises(ValueError, "labels holds 150 at index (1, 2)", "token ids in [0, vocab_size=99)"):
        OscarForImageCaptioning(config)(**inputs(config), labels=labels)


def test_original_minus_one_in_caption_labels_says_use_minus_100(config):
    labels = torch.full((2, 6), -1)
    labels[0, 1] = 7
    with raises(ValueError, "labels holds -1 at index (0, 0)", "or -100 (no target)", "original code's -1"):
        OscarForImageCaptioning(config)(**inputs(config), labels=labels)


def test_checks_are_skipped_while_compiling(config, monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    check_values([ValueCheck("input_ids", torch.tensor([500]), 0, 98, "ids in [0, vocab_size=99)")])


def test_one_host_sync_for_every_check(monkeypatch):
    calls = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: calls.append(1) or original(self))
    check_values(
        [
            ValueCheck("input_ids", torch.randint(0, 99, (4, 8)), 0, 98, "ids"),
            ValueCheck("labels", torch.full((4,), -100), 0, 2, "classes", ignore_index=-100),
            ValueCheck("img_feats", torch.randn(4, 3, 14), -float("inf"), float("inf"), "finite"),
        ]
    )
    assert len(calls) == 1


# ------------------------------------------------------------------------------- degenerate batches


@pytest.mark.parametrize("model_class", [OscarModel, OscarForSequenceClassification, OscarForImageCaptioning])
def test_empty_batch(config, model_class):
    with raises(ValueError, "input_ids has shape (0, 6): an empty batch", "at least one example"):
        model_class(config)(**inputs(config, batch=0))


def test_empty_nlvr2_batch():
    config = tiny_config(num_labels=2)
    with raises(ValueError, "an empty batch"):
        OscarForNLVR2(config)(**pair_inputs(config, batch=0))


@pytest.mark.parametrize("model_class", [OscarModel, OscarForSequenceClassification, OscarForPreTraining])
def test_zero_length_text_with_regions_is_not_pooled_as_cls(config, model_class):
    # Before: position 0 was the first region, and the pooled output came from it.
    with raises(ValueError, "input_ids has shape (2, 0): zero text tokens", "[CLS]"):
        model_class(config)(**inputs(config, text_len=0))


@pytest.mark.parametrize("model_class", [OscarForSequenceClassification, OscarForPreTraining, OscarForNLVR2])
def test_masked_cls_row_is_refused_by_the_pooling_heads(model_class):
    config = tiny_config(num_labels=2)
    batch = inputs(config, batch=4) if model_class is not OscarForNLVR2 else None
    if batch is None:
        batch = pair_inputs(config)
        batch["attention_mask"][1, 0, :2] = 0  # left padding: the row's [CLS] slot is padding
    else:
        batch["attention_mask"][2, :2] = 0
    with raises(ValueError, "attention_mask[:, 0] (the [CLS] position", "holds 0 at index (2,)", "nonzero"):
        model_class(config)(**batch)


def test_fully_masked_text_is_refused(classifier, config):
    batch = inputs(config)
    batch["attention_mask"][0] = 0  # no text at all: only regions would be left to pool
    with raises(ValueError, "attention_mask[:, 0]", "holds 0 at index (0,)"):
        classifier(**batch)


def _assert_zero_on_the_graph(loss: torch.Tensor, model: torch.nn.Module) -> None:
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_all_ignored_class_labels_give_zero_loss_not_nan(config):
    model = OscarForSequenceClassification(config)
    out = model(**inputs(config), labels=torch.tensor([-100, -100]))
    _assert_zero_on_the_graph(out.loss, model)


@pytest.mark.parametrize("sparse", [False, True])
def test_all_ignored_masked_token_labels_give_zero_loss_not_nan(config, sparse):
    model = OscarForPreTraining(config)
    out = model(**inputs(config), labels=torch.full((2, 6), -100), sparse_prediction=sparse)
    _assert_zero_on_the_graph(out.masked_lm_loss, model)


def test_all_ignored_caption_labels_give_zero_loss_not_nan(config):
    model = OscarForImageCaptioning(config)
    out = model(**inputs(config), labels=torch.full((2, 6), -100))
    _assert_zero_on_the_graph(out.loss, model)


def test_drop_worst_keeps_at_least_one_target():
    # One target and drop_worst_ratio 0.5: the original averaged zero kept losses (NaN).
    loss = caption_loss(torch.randn(1, 10), torch.tensor([4]), label_smoothing=0.1, drop_worst_ratio=0.5)
    assert torch.isfinite(loss) and loss > 0


def test_partly_ignored_labels_keep_the_mean(config):
    logits, labels = torch.randn(4, 3), torch.tensor([0, -100, 2, 1])
    from oscar_hf.modeling_oscar import _cross_entropy

    torch.testing.assert_close(_cross_entropy(logits, labels), torch.nn.functional.cross_entropy(logits, labels))


# -------------------------------------------------------------------------------------- generate


@pytest.fixture(scope="module")
def captioner(config):
    torch.manual_seed(0)
    return OscarForImageCaptioning(config).eval()


@pytest.mark.parametrize("original", [True, False])
@pytest.mark.parametrize("num_beams", [0, -2])
def test_generate_num_beams_below_one(captioner, config, original, num_beams):
    with raises(ValueError, f"num_beams={num_beams}", "an integer >= 1"):
        captioner.generate(**decode_inputs(config), num_beams=num_beams, max_length=6, original_decoding=original)


@pytest.mark.parametrize("max_length", [1, 3])
def test_original_decoding_without_room_after_the_prompt(captioner, config, max_length):
    # Before: the beam search returned all-padding rows (greedy failed inside torch.stack).
    batch = decode_inputs(config)
    batch["input_ids"] = torch.tensor([[1, 20, 21], [1, 22, 23]])
    with raises(ValueError, f"max_length={max_length}", "holds 3 tokens", "max_length > 3"):
        captioner.generate(**batch, num_beams=2, max_length=max_length, original_decoding=True)


@pytest.mark.parametrize("original", [True, False])
def test_generate_tag_mask_without_tag_ids(captioner, config, original):
    batch = decode_inputs(config)
    batch["tag_attention_mask"] = torch.ones_like(batch.pop("tag_input_ids"))
    with raises(ValueError, "tag_attention_mask of shape (2, 3)", "without tag_input_ids"):
        captioner.generate(**batch, max_length=6, original_decoding=original)


@pytest.mark.parametrize("original", [True, False])
@pytest.mark.parametrize(
    ("name", "rows"), [("tag_input_ids", 3), ("img_feats", 1), ("input_ids", 4), ("img_attention_mask", 3)]
)
def test_generate_batch_sizes_that_disagree(captioner, config, original, name, rows):
    batch = decode_inputs(config)
    if name == "img_attention_mask":
        batch[name] = torch.ones(rows, batch["img_feats"].shape[1], dtype=torch.long)
    else:
        batch[name] = batch[name][:1].expand(rows, *batch[name].shape[1:]).contiguous()
    with raises(ValueError, "disagree on the batch size", f"{name}: {rows}", "one row per image"):
        captioner.generate(**batch, num_beams=2, max_length=6, original_decoding=original)


@pytest.mark.parametrize("original", [True, False])
def test_generate_empty_batch(captioner, config, original):
    with raises(ValueError, "empty batch", "at least one image"):
        captioner.generate(**decode_inputs(config, batch=0), max_length=6, original_decoding=original)


def test_generate_mask_token_outside_the_vocabulary():
    config = tiny_config(mask_token_id=500)
    with raises(ValueError, "config.mask_token_id=500", "[0, vocab_size=99)"):
        OscarForImageCaptioning(config).generate(**decode_inputs(config), max_length=6)


def test_generate_tag_ids_outside_the_vocabulary(captioner, config):
    batch = decode_inputs(config)
    batch["tag_input_ids"][1, 0] = 1000
    with raises(ValueError, "input_ids holds 1000", "[0, vocab_size=99)"):
        captioner.generate(**batch, max_length=6, original_decoding=True)
