"""Common model tests run over every Oscar class on tiny random configs."""

from __future__ import annotations

import pytest
import torch
from support import tiny_config

from oscar_hf import (
    OscarForImageCaptioning,
    OscarForImageTextRetrieval,
    OscarForNLVR2,
    OscarForPreTraining,
    OscarForSequenceClassification,
    OscarModel,
)


BATCH, TEXT, REGIONS = 2, 9, 4


def make_inputs(model_class, config, with_labels: bool = True) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, config.vocab_size, (BATCH, TEXT), generator=g)
    ids[:, 0] = 1
    text_mask = torch.ones(BATCH, TEXT, dtype=torch.long)
    text_mask[1, -2:] = 0
    img_mask = torch.ones(BATCH, REGIONS, dtype=torch.long)
    img_mask[0, -1] = 0
    inputs = dict(
        input_ids=ids,
        token_type_ids=(torch.arange(TEXT) >= TEXT // 2).long().expand(BATCH, -1).clone(),
        attention_mask=text_mask,
        img_feats=torch.randn(BATCH, REGIONS, config.img_feature_dim, generator=g),
        img_attention_mask=img_mask,
    )
    if model_class is OscarForNLVR2:
        inputs = {k: torch.stack([v, v.flip(0)], dim=1) for k, v in inputs.items()}
    if not with_labels:
        return inputs
    if model_class in (OscarForSequenceClassification, OscarForNLVR2, OscarForImageTextRetrieval):
        inputs["labels"] = torch.tensor([1, 0])
    elif model_class is OscarForPreTraining:
        labels = torch.full((BATCH, TEXT), -100)
        labels[:, 2] = ids[:, 2]
        inputs.update(labels=labels, contrastive_labels=torch.tensor([0, 2]))
    elif model_class is OscarForImageCaptioning:
        labels = torch.full((BATCH, TEXT), -100)
        labels[:, 3] = ids[:, 3]
        inputs["labels"] = labels
    return inputs


def config_for(model_class, **overrides):
    if model_class is OscarForImageTextRetrieval:
        overrides.setdefault("num_labels", 2)
    if model_class is OscarForNLVR2:
        overrides.setdefault("num_labels", 2)
    if model_class is OscarForImageCaptioning:
        overrides.setdefault("max_caption_length", 5)
    return tiny_config(**overrides)


ALL_CLASSES = [
    OscarModel,
    OscarForPreTraining,
    OscarForSequenceClassification,
    OscarForImageTextRetrieval,
    OscarForNLVR2,
    OscarForImageCaptioning,
]
HEADS = ALL_CLASSES[1:]


def main_output(model_class, out) -> torch.Tensor:
    if model_class is OscarModel:
        return out.last_hidden_state
    if model_class is OscarForPreTraining:
        return out.prediction_logits
    return out.logits


@pytest.mark.parametrize("model_class", ALL_CLASSES)
def test_save_load_round_trip(model_class, tmp_path):
    config = config_for(model_class)
    model = model_class(config).eval()
    inputs = make_inputs(model_class, config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = model_class.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            main_output(model_class, model(**inputs)), main_output(model_class, reloaded(**inputs))
        )
    if hasattr(model, "cls") and config.tie_word_embeddings:
        assert (
            reloaded.cls.predictions.decoder.weight.data_ptr()
            == reloaded.bert.embeddings.word_embeddings.weight.data_ptr()
        )


@pytest.mark.parametrize("model_class", ALL_CLASSES)
def test_eval_is_deterministic(model_class):
    config = config_for(model_class)
    model = model_class(config).eval()
    inputs = make_inputs(model_class, config)
    with torch.no_grad():
        torch.testing.assert_close(
            main_output(model_class, model(**inputs)), main_output(model_class, model(**inputs)), atol=0, rtol=0
        )


@pytest.mark.parametrize("model_class", HEADS)
def test_every_trainable_parameter_gets_a_gradient(model_class):
    config = config_for(model_class, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = model_class(config).train()
    out = model(**make_inputs(model_class, config))
    out.loss.backward()
    # Pooler feeds no loss in captioning and is unused there (as in the original).
    skip = ("bert.pooler.",) if model_class is OscarForImageCaptioning else ()
    missing = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and not name.startswith(skip) and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not missing, missing


@pytest.mark.parametrize("model_class", HEADS)
def test_gradient_checkpointing_leaves_outputs_unchanged(model_class):
    config = config_for(model_class, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = model_class(config).train()
    inputs = make_inputs(model_class, config)
    plain = model(**inputs)
    plain.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.bert.encoder.layer)
    ckpt = model(**inputs)
    ckpt.loss.backward()
    torch.testing.assert_close(ckpt.loss, plain.loss)
    for name, grad in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model_class", ALL_CLASSES)
def test_output_shapes_and_hidden_state_counts(model_class):
    config = config_for(model_class)
    model = model_class(config).eval()
    inputs = make_inputs(model_class, config, with_labels=False)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
    rows = BATCH * (config.num_choice if model_class is OscarForNLVR2 else 1)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert len(out.attentions) == config.num_hidden_layers
    assert out.hidden_states[-1].shape == (rows, TEXT + REGIONS, config.hidden_size)
    assert out.attentions[0].shape == (rows, config.num_attention_heads, TEXT + REGIONS, TEXT + REGIONS)
    expected = {
        OscarModel: (BATCH, TEXT + REGIONS, config.hidden_size),
        OscarForPreTraining: (BATCH, TEXT + REGIONS, config.vocab_size),
        OscarForSequenceClassification: (BATCH, config.num_labels),
        OscarForImageTextRetrieval: (BATCH, 2),
        OscarForNLVR2: (BATCH, 2),
        OscarForImageCaptioning: (BATCH, TEXT, config.vocab_size),
    }[model_class]
    assert main_output(model_class, out).shape == expected


@pytest.mark.parametrize("model_class", ALL_CLASSES)
def test_sdpa_matches_eager(model_class):
    config = config_for(model_class)
    model = model_class(config).eval()
    inputs = make_inputs(model_class, config, with_labels=False)
    with torch.no_grad():
        model.config._attn_implementation = "eager"
        eager = main_output(model_class, model(**inputs))
        model.config._attn_implementation = "sdpa"
        sdpa = main_output(model_class, model(**inputs))
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_class", HEADS)
def test_batch_of_one_equals_batched(model_class):
    config = config_for(model_class)
    model = model_class(config).eval()
    inputs = make_inputs(model_class, config, with_labels=False)
    with torch.no_grad():
        batched = main_output(model_class, model(**inputs))
        for row in range(BATCH):
            single = main_output(model_class, model(**{k: v[row : row + 1] for k, v in inputs.items()}))
            torch.testing.assert_close(single[0], batched[row], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_masks_stay_finite(dtype):
    """Caption padding rows of the seq2seq mask are fully masked; they must not produce NaN."""
    config = config_for(OscarForImageCaptioning)
    model = OscarForImageCaptioning(config).eval().to(dtype)
    inputs = make_inputs(OscarForImageCaptioning, config, with_labels=False)
    inputs["img_feats"] = inputs["img_feats"].to(dtype)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    assert all(torch.isfinite(h).all() for h in out.hidden_states)


def test_local_auto_registration(tmp_path):
    """`import oscar_hf` registers the classes: no remote code needed for pip users."""
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoModelForPreTraining

    config = config_for(OscarForImageCaptioning)
    OscarForImageCaptioning(config).save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "OscarConfig"
    assert isinstance(AutoModelForImageTextToText.from_pretrained(tmp_path), OscarForImageCaptioning)
    assert isinstance(AutoModel.from_pretrained(tmp_path), OscarModel)
    assert isinstance(AutoModelForPreTraining.from_pretrained(tmp_path), OscarForPreTraining)
