"""One regression test per defect that transformers' common tests found (issue 13), written as a user
would hit it."""

from __future__ import annotations

import pytest
import torch
from support import tiny_config
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer

import oscar_hf.modeling_oscar as modeling
from oscar_hf import (
    OscarConfig,
    OscarForImageCaptioning,
    OscarForPreTraining,
    OscarForSequenceClassification,
)


def caption_model(**overrides) -> OscarForImageCaptioning:
    torch.manual_seed(0)
    return OscarForImageCaptioning(tiny_config(max_caption_length=10, **overrides)).eval()


def decode_inputs(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(5)
    return {
        "input_ids": torch.ones(batch, 1, dtype=torch.long),
        "tag_input_ids": torch.randint(5, 99, (batch, 3), generator=g),
        "img_feats": torch.randn(batch, 4, 14, generator=g),
    }


def text_inputs(batch: int = 2, length: int = 6) -> dict:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, 99, (batch, length), generator=g)
    ids[:, 0] = 1
    return {"input_ids": ids, "img_feats": torch.randn(batch, 4, 14, generator=g)}


def test_1_caption_forward_shorter_than_the_caption_slot_still_sees_the_image():
    model = caption_model()
    inputs = text_inputs(length=6)  # shorter than max_caption_length=10
    with torch.no_grad():
        logits = model(**inputs, attention_mask=torch.ones(2, 6, dtype=torch.long)).logits
        other = model(**{**inputs, "img_feats": inputs["img_feats"] + 1}, attention_mask=torch.ones(2, 6)).logits
    assert not torch.allclose(logits, other)


@pytest.mark.parametrize("with_regions", [True, False])
def test_1_caption_tokens_never_see_later_ones_without_a_mask(with_regions):
    model = caption_model()
    inputs = text_inputs(length=6)
    if not with_regions:
        del inputs["img_feats"]
    changed = inputs["input_ids"].clone()
    changed[:, 4] = 50
    with torch.no_grad():
        before = model(**inputs).logits
        after = model(**{**inputs, "input_ids": changed}).logits
    torch.testing.assert_close(before[:, :4], after[:, :4])


def test_2_left_padded_prompts_give_the_same_captions():
    model = caption_model()
    inputs = decode_inputs()
    alone = model.generate(**{k: v[1:] for k, v in inputs.items()}, max_new_tokens=4)
    padded = torch.tensor([[1, 17], [0, 1]])
    batched = model.generate(
        **{**inputs, "input_ids": padded},
        attention_mask=torch.tensor([[1, 1], [0, 1]]),
        max_new_tokens=4,
        pad_token_id=0,
    )
    assert torch.equal(batched[1, 1 : 1 + alone.shape[1]], alone[0])


def test_3_generate_returns_the_attentions_and_hidden_states_asked_for():
    model = caption_model()
    out = model.generate(
        **decode_inputs(),
        max_new_tokens=3,
        return_dict_in_generate=True,
        output_attentions=True,
        output_hidden_states=True,
    )
    assert out.attentions is not None and out.hidden_states is not None
    assert all(a is not None for step in out.attentions for a in step)
    assert all(h is not None for step in out.hidden_states for h in step)


@pytest.mark.parametrize("model_class", [OscarForPreTraining, OscarForImageCaptioning])
def test_4_resize_token_embeddings_keeps_the_vocabulary_head_usable(model_class):
    model = model_class(tiny_config()).eval()
    bias_before = model.cls.predictions.bias.detach().clone()
    model.resize_token_embeddings(120)
    with torch.no_grad():
        out = model(**text_inputs())
    logits = out.prediction_logits if model_class is OscarForPreTraining else out.logits
    assert logits.shape[-1] == 120
    assert torch.equal(model.cls.predictions.bias[:99], bias_before)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_5_gradient_checkpointing_options_reach_the_layers():
    model = OscarForSequenceClassification(tiny_config()).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = list(model.bert.encoder.layer)
    assert all(isinstance(layer, GradientCheckpointingLayer) and layer.gradient_checkpointing for layer in layers)
    assert layers[0]._gradient_checkpointing_func.keywords["use_reentrant"] is False
    model(**text_inputs(), labels=torch.tensor([0, 1])).loss.backward()


def test_6_set_attn_implementation_eager_runs_the_eager_kernel(monkeypatch):
    calls = []
    eager = modeling.eager_attention_forward

    def counting(*args, **kwargs):
        calls.append(1)
        return eager(*args, **kwargs)

    monkeypatch.setattr(modeling, "eager_attention_forward", counting)
    model = OscarForSequenceClassification(tiny_config()).eval()
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        sdpa = model(**text_inputs()).logits
    assert not calls
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager_logits = model(**text_inputs()).logits
    assert len(calls) == model.config.num_hidden_layers
    torch.testing.assert_close(eager_logits, sdpa, atol=1e-5, rtol=1e-5)


def test_7_problem_type_regression_and_multi_label_train():
    torch.manual_seed(0)
    model = OscarForSequenceClassification(tiny_config(num_labels=1, problem_type="regression"))
    loss = model(**text_inputs(), labels=torch.tensor([0.5, 2.0])).loss
    loss.backward()
    assert loss > 0 and model.classifier.weight.grad.abs().sum() > 0
    model = OscarForSequenceClassification(tiny_config(num_labels=3, problem_type="multi_label_classification"))
    multi_hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    model.eval()
    out = model(**text_inputs(), labels=multi_hot)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, multi_hot)
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_8_static_cache_generation_works(num_beams):
    model = caption_model()
    dynamic = model.generate(**decode_inputs(), max_new_tokens=5, num_beams=num_beams)
    static = model.generate(**decode_inputs(), max_new_tokens=5, num_beams=num_beams, cache_implementation="static")
    assert torch.equal(static, dynamic)


def test_9_use_cache_is_a_config_field_and_a_forward_argument():
    assert OscarConfig(use_cache=False).use_cache is False
    assert OscarConfig.from_dict(OscarConfig(use_cache=False).to_dict()).use_cache is False
    model = caption_model()
    with torch.no_grad():
        out = model(**text_inputs(), use_cache=True)
    cache = out.cache if "cache" in out else out.past_key_values
    assert isinstance(cache, Cache) and cache.get_seq_length() == 6 + 4


def test_9_a_misspelt_argument_is_an_error_not_a_text_only_run():
    model = caption_model()
    inputs = text_inputs()
    with pytest.raises(TypeError, match="image_feats"):
        model(input_ids=inputs["input_ids"], image_feats=inputs["img_feats"])


@pytest.mark.parametrize("kwargs", [{"prompt_lookup_num_tokens": 2}, {"assistant_model": None}])
def test_10_assisted_and_prompt_lookup_decoding_refuse_clearly(kwargs):
    model = caption_model()
    if "assistant_model" in kwargs:
        kwargs = {"assistant_model": caption_model()}
    with pytest.raises(ValueError, match=r"not supported.*\[MASK\] slot"):
        model.generate(**decode_inputs(), max_new_tokens=3, **kwargs)
