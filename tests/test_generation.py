"""Generation of OscarForImageCaptioning through transformers' loop: what its generation mixin checks.

The transformers sdist ships no `GenerationTesterMixin`, so these tests cover its ground for the
captioning model: every search with dict outputs, cache on and off, left padding, static cache,
compiled decoding, the refused assisted / prompt-lookup modes, batch of one against the batch.
"""

from __future__ import annotations

import pytest
import torch
from support import tiny_config

from oscar_hf import OscarForImageCaptioning


MAX_LENGTH = 7


def caption_model() -> OscarForImageCaptioning:
    torch.manual_seed(0)
    return OscarForImageCaptioning(tiny_config(max_caption_length=10)).eval()


def decode_inputs(batch: int = 3) -> dict:
    g = torch.Generator().manual_seed(3)
    tags = torch.randint(5, 99, (batch, 4), generator=g)
    tags[0, -1] = 0  # a padded tag slot
    regions = torch.ones(batch, 5, dtype=torch.long)
    regions[-1, -2:] = 0
    return {
        "input_ids": torch.ones(batch, 1, dtype=torch.long),  # [CLS]
        "tag_input_ids": tags,
        "img_feats": torch.randn(batch, 5, 14, generator=g),
        "img_attention_mask": regions,
    }


SEARCHES = {
    "greedy": {},
    "sample": {"do_sample": True, "top_k": 5},
    "beam": {"num_beams": 3},
    "beam_sample": {"num_beams": 3, "do_sample": True, "top_k": 5},
}


def generate(model, inputs: dict, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    if "max_new_tokens" not in kwargs:
        kwargs["max_length"] = MAX_LENGTH
    with torch.no_grad():
        return model.generate(**inputs, **kwargs)


@pytest.mark.parametrize("search", list(SEARCHES))
def test_dict_outputs_carry_scores_logits_attentions_hidden_states(search):
    model = caption_model()
    out = generate(
        model,
        decode_inputs(),
        **SEARCHES[search],
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
        output_attentions=True,
        output_hidden_states=True,
    )
    steps = out.sequences.shape[1] - 1
    assert len(out.scores) == len(out.logits) == steps
    rows = out.sequences.shape[0]
    assert out.scores[0].shape == (rows * SEARCHES[search].get("num_beams", 1), model.config.vocab_size)
    assert len(out.attentions) == len(out.hidden_states) == steps
    layers = model.config.num_hidden_layers
    assert all(len(step) == layers for step in out.attentions)
    assert all(len(step) == layers + 1 for step in out.hidden_states)
    assert all(a is not None for step in out.attentions for a in step)
    if search.startswith("beam"):
        assert out.sequences_scores.shape == (rows,)


@pytest.mark.parametrize("search", list(SEARCHES))
def test_cached_equals_uncached(search):
    model = caption_model()
    cached = generate(model, decode_inputs(), **SEARCHES[search], use_cache=True)
    full = generate(model, decode_inputs(), **SEARCHES[search], use_cache=False)
    assert torch.equal(cached, full)


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_left_padded_prompts_give_the_same_captions(search):
    model = caption_model()
    inputs = decode_inputs(batch=2)
    prompts = torch.tensor([[1, 17, 23], [1, 40, 0]])
    lengths = [3, 2]
    single = []
    for row, length in enumerate(lengths):
        one = {k: v[row : row + 1] for k, v in inputs.items() if k != "input_ids"}
        prompt = prompts[row : row + 1, :length]
        single.append(generate(model, {**one, "input_ids": prompt}, **SEARCHES[search], max_new_tokens=4))
    padded = torch.tensor([[1, 17, 23], [0, 1, 40]])  # the second prompt left-padded
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    others = {k: v for k, v in inputs.items() if k != "input_ids"}
    batched = generate(
        model,
        {**others, "input_ids": padded, "attention_mask": mask},
        **SEARCHES[search],
        pad_token_id=0,
        max_new_tokens=4,
    )
    for row, length in enumerate(lengths):
        pad = 3 - length
        expected = single[row][0]
        got = batched[row, pad : pad + expected.shape[0]]
        assert torch.equal(got, expected), (row, got, expected)


@pytest.mark.parametrize("search", ["sample", "beam"])
def test_num_return_sequences(search):
    model = caption_model()
    out = generate(model, decode_inputs(batch=2), **SEARCHES[search], num_return_sequences=3)
    assert out.shape[0] == 6


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_batch_of_one_equals_batched(search):
    model = caption_model()
    inputs = decode_inputs()
    batched = generate(model, inputs, **SEARCHES[search])
    for row in range(3):
        one = generate(model, {k: v[row : row + 1] for k, v in inputs.items()}, **SEARCHES[search])
        assert torch.equal(one[0], batched[row, : one.shape[1]])


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_static_cache_equals_dynamic_cache(search):
    model = caption_model()
    dynamic = generate(model, decode_inputs(), **SEARCHES[search])
    static = generate(model, decode_inputs(), **SEARCHES[search], cache_implementation="static")
    assert torch.equal(static, dynamic)


@pytest.mark.slow
def test_compiled_generation_equals_eager():
    model = caption_model()
    eager = generate(model, decode_inputs(), cache_implementation="static")
    torch._dynamo.reset()
    model.forward = torch.compile(model.forward, fullgraph=False)
    compiled = generate(model, decode_inputs(), cache_implementation="static")
    assert torch.equal(compiled, eager)


@pytest.mark.parametrize(
    "kwargs",
    [{"prompt_lookup_num_tokens": 2}, {"assistant_model": "itself"}],
    ids=["prompt_lookup", "assisted"],
)
def test_assisted_and_prompt_lookup_decoding_are_refused_clearly(kwargs):
    model = caption_model()
    if kwargs.get("assistant_model") == "itself":
        kwargs = {"assistant_model": model}
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{name} is not supported.*\\[MASK\\] slot"):
        generate(model, decode_inputs(), **kwargs)
