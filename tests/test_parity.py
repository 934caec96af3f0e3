"""Numerical parity with the original Oscar implementation (microsoft/Oscar @ 266075f).

Every case of the fixture manifest is converted from its original `pytorch_model.bin`, run on the
exact inputs the original was fed, and compared with what the original returned: losses and logits
to 1e-5, decoded sequences token for token, in eager and SDPA attention.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from support import parity_cases

from oscar_hf.convert_original_checkpoint import convert_checkpoint


pytestmark = pytest.mark.parity

ATOL = 1e-5
TASK_OF_CLASS = {
    "ImageBertForMultipleChoice": "nlvr2",
    "BertImgForPreTraining": "pretraining",
    "BertForImageCaptioning": "captioning",
}
CASES = parity_cases()


def task_for(name: str, info: dict) -> str:
    if info["original_class"] == "ImageBertForSequenceClassification":
        # Retrieval checkpoints are 2-way classifiers; the case name says which head it is.
        return "retrieval" if "retrieval" in name else "classification"
    return TASK_OF_CLASS[info["original_class"]]


def load_case(fixture_dir, name: str, attn: str):
    info = CASES[name]
    overrides = {}
    if "layout" in info:
        layout = info["layout"]
        overrides = dict(
            max_caption_length=layout["max_seq_a_length"],
            max_tag_length=layout["max_seq_length"] - layout["max_seq_a_length"],
        )
    case_dir = fixture_dir / name
    model = convert_checkpoint(case_dir, None, task_for(name, info), **overrides).eval()
    model.config._attn_implementation = attn
    return model, info, load_file(case_dir / "inputs.safetensors"), load_file(case_dir / "outputs.safetensors")


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.float().reshape(expected.shape), expected.float(), atol=ATOL, rtol=0)


def forward_cases(kind: str) -> list[str]:
    return [name for name, info in CASES.items() if info["call"].startswith("forward") and kind in name]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", forward_cases("seqcls") + forward_cases("nlvr2"))
def test_classification_heads(fixture_dir, name, attn):
    model, _, inputs, expected = load_case(fixture_dir, name, attn)
    assert model.config.skip_padding
    lengths = []
    hook = model.bert.encoder.register_forward_pre_hook(lambda _, args: lengths.append(args[0].shape[1]))
    with torch.no_grad():
        out = model(**inputs)
    hook.remove()
    # The fixture rows are padded (31 slots, at most 27 used), so the packed encoder path is the
    # one compared with the original here.
    assert lengths[0] < inputs["attention_mask"].shape[-1]
    close(out.logits, expected["logits"])
    close(out.loss, expected["loss"])
    model.config.skip_padding = False
    with torch.no_grad():
        full = model(**inputs)
    close(full.logits, expected["logits"])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", forward_cases("pretrain"))
def test_pretraining_heads(fixture_dir, name, attn):
    model, _, inputs, expected = load_case(fixture_dir, name, attn)
    labels = inputs["masked_lm_labels"]  # -1 = no target, spans text + regions
    with torch.no_grad():
        out = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            token_type_ids=inputs["token_type_ids"],
            img_feats=inputs["img_feats"],
            labels=labels,
            contrastive_labels=inputs["next_sentence_label"],
        )
    close(out.loss, expected["loss"])
    close(out.masked_lm_loss, expected["masked_lm_loss"])
    close(out.contrastive_logits, expected["seq_relationship_score"])
    close(out.prediction_logits[labels != -1], expected["prediction_scores_at_masked"])
    close(out.prediction_logits[..., :512], expected["prediction_scores_first_512"])
    with torch.no_grad():
        sparse = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            token_type_ids=inputs["token_type_ids"],
            img_feats=inputs["img_feats"],
            labels=labels,
            contrastive_labels=inputs["next_sentence_label"],
            sparse_prediction=True,
        )
    assert sparse.prediction_logits.shape == (int((labels != -1).sum()), model.config.vocab_size)
    close(sparse.prediction_logits, expected["prediction_scores_at_masked"])
    close(sparse.masked_lm_loss, expected["masked_lm_loss"])
    close(sparse.loss, expected["loss"])


def labels_from_masked(inputs: dict) -> torch.Tensor:
    """The original passes targets as (masked_pos, masked_ids padded with 0); ours are -100 labels."""
    labels = torch.full_like(inputs["input_ids"], -100)
    for row, (positions, ids) in enumerate(zip(inputs["masked_pos"].bool(), inputs["masked_ids"])):
        where = positions.nonzero().squeeze(1)
        labels[row, where] = ids[ids != 0][: len(where)]
    return labels


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", forward_cases("caption"))
def test_caption_training_loss(fixture_dir, name, attn):
    model, _, inputs, expected = load_case(fixture_dir, name, attn)
    with torch.no_grad():
        out = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            token_type_ids=inputs["token_type_ids"],
            img_feats=inputs["img_feats"],
            labels=labels_from_masked(inputs),
        )
    close(out.loss, expected["loss"])
    close(out.logits, expected["logits"])


def decode_inputs(info: dict, inputs: dict) -> dict:
    """Turns the original decode layout into our generate() inputs.

    The original takes `od_label_ids = input_ids[:, max_length:]` and numbers it from
    `od_labels_start_posid`. With max_length (10) shorter than the caption slot (12), the two
    leftover slot tokens ([MASK], [SEP]) lead that block: nobody attends to them (their columns are
    zero in every other row), but they shift the tag positions by two. We pass the tags with exactly
    those positions.
    """
    layout, gen = info["layout"], info["generate_kwargs"]
    slot, total = layout["max_seq_a_length"], layout["max_seq_length"]
    mask = inputs["attention_mask"]
    tag_row = mask[:, slot]  # what the first tag attends to: tags and valid regions
    num_regions = inputs["img_feats"].shape[1]
    tags = inputs["input_ids"][:, slot:total]
    start = gen["od_labels_start_posid"] + (slot - gen["max_length"])
    return dict(
        input_ids=torch.full((tags.shape[0], 1), gen["bos_token_id"]),
        tag_input_ids=tags,
        tag_attention_mask=tag_row[:, slot:total],
        tag_position_ids=(start + torch.arange(tags.shape[1])).expand(tags.shape[0], -1),
        img_feats=inputs["img_feats"],
        img_attention_mask=tag_row[:, total : total + num_regions],
        max_length=gen["max_length"],
    )


DECODE_CASES = [name for name, info in CASES.items() if info["call"] == "generate"]


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv_cache", "recompute"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("name", DECODE_CASES)
def test_caption_decoding_matches_original(fixture_dir, name, num_beams, attn, use_cache):
    model, info, inputs, expected = load_case(fixture_dir, name, attn)
    assert num_beams in info["generate_kwargs"]["num_beams"]
    out = model.generate(
        **decode_inputs(info, inputs),
        num_beams=num_beams,
        original_decoding=True,
        use_cache=use_cache,
        return_dict_in_generate=True,
    )
    reference = expected[f"sequences_beam{num_beams}"].squeeze(1)
    assert torch.equal(out.sequences, reference), (out.sequences, reference)
    close(out.sequences_scores, expected[f"logprobs_beam{num_beams}"].squeeze(1))


@pytest.mark.parametrize("name", DECODE_CASES)
def test_standard_generate_kv_cache_equals_recompute_on_fixture_weights(fixture_dir, name):
    """transformers' own greedy and beam search, with and without our cache, on the converted weights."""
    model, info, inputs, _ = load_case(fixture_dir, name, "sdpa")
    kwargs = decode_inputs(info, inputs)
    for num_beams in (1, 3):
        cached = model.generate(**kwargs, num_beams=num_beams, use_cache=True, original_decoding=False)
        full = model.generate(**kwargs, num_beams=num_beams, use_cache=False, original_decoding=False)
        assert torch.equal(cached, full)
