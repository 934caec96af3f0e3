"""`OscarDecodingCache`: the in-place key/value cache of caption decoding.

Each step writes `w_t` and the transient `[MASK]` key into storage with room to grow (no
concatenation), and beam re-ordering moves only the caption slots. The captions must not change:
the same as with transformers' `DynamicCache` and as without a cache, for every search.
"""

from __future__ import annotations

import pytest
import torch
from support import tiny_config
from transformers.cache_utils import DynamicCache

from oscar_hf import OscarForImageCaptioning
from oscar_hf.modeling_oscar import _CACHE_NAME, OscarDecodingCache


def caption_model() -> OscarForImageCaptioning:
    torch.manual_seed(0)
    return OscarForImageCaptioning(tiny_config(max_caption_length=12)).eval()


def decode_inputs(batch: int = 3) -> dict:
    g = torch.Generator().manual_seed(5)
    regions = torch.ones(batch, 5, dtype=torch.long)
    regions[-1, -2:] = 0
    return {
        "input_ids": torch.ones(batch, 1, dtype=torch.long),
        "tag_input_ids": torch.randint(5, 99, (batch, 4), generator=g),
        "img_feats": torch.randn(batch, 5, 14, generator=g),
        "img_attention_mask": regions,
    }


@pytest.mark.parametrize("original", [False, True])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_captions_equal_dynamic_cache_and_no_cache(original, num_beams):
    model = caption_model()
    kwargs = dict(num_beams=num_beams, max_length=9, original_decoding=original)
    with torch.no_grad():
        ours = model.generate(**decode_inputs(), **kwargs)
        uncached = model.generate(**decode_inputs(), use_cache=False, **kwargs)
    assert torch.equal(ours, uncached)
    if not original:  # an explicit DynamicCache takes the concatenating path
        with torch.no_grad():
            dynamic = model.generate(**decode_inputs(), **{_CACHE_NAME: DynamicCache()}, **kwargs)
        assert torch.equal(ours, dynamic)


def test_generate_uses_the_in_place_cache_by_default():
    model = caption_model()
    with torch.no_grad():
        out = model.generate(**decode_inputs(), num_beams=2, max_length=6, return_dict_in_generate=True)
    assert isinstance(getattr(out, "past_key_values", None) or getattr(out, "cache", None), OscarDecodingCache)


def test_steps_write_in_place_and_the_mask_slot_is_reused():
    model = caption_model()
    inputs = decode_inputs(batch=2)
    cache = OscarDecodingCache()
    ids = inputs.pop("input_ids")
    kwargs = {**inputs, "cache": cache, "use_cache": True}
    storage, lengths = [], []
    with torch.no_grad():
        for _ in range(4):
            step = model.prepare_inputs_for_generation(ids, **kwargs)
            logits = model(**step).logits[:, -1]
            layer = cache.layers[0]
            storage.append(layer._keys.data_ptr())
            lengths.append(layer.get_seq_length())
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert len(set(storage)) == 1  # no reallocation, no concatenation after the prefill
    context = 4 + 5
    assert lengths == [context + 1, context + 2, context + 3, context + 4]  # [MASK] is never kept
    assert cache.shared_length == context


def test_reorder_beams_equals_a_full_reorder_within_groups():
    model = caption_model()
    inputs = {k: v.repeat_interleave(3, dim=0) for k, v in decode_inputs(batch=2).items()}
    ids = inputs.pop("input_ids")
    caches = OscarDecodingCache(), OscarDecodingCache()
    with torch.no_grad():
        for cache in caches:
            step_ids = ids
            for _ in range(3):
                step = model.prepare_inputs_for_generation(step_ids, **inputs, cache=cache, use_cache=True)
                next_ids = model(**step).logits[:, -1].argmax(-1, keepdim=True)
                step_ids = torch.cat([step_ids, next_ids], dim=1)
    beams = torch.tensor([2, 2, 0, 4, 3, 3])  # rows stay within their image's three beams
    caches[0].reorder_beams(beams)
    caches[1].reorder_cache(beams)
    for fast, full in zip(caches[0].layers, caches[1].layers):
        torch.testing.assert_close(fast.keys, full.keys, rtol=0, atol=0)
        torch.testing.assert_close(fast.values, full.values, rtol=0, atol=0)
