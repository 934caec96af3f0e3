"""Constrained beam search parity with the original Oscar NoCaps decoding (microsoft/Oscar @ 266075f).

Every case of the CBS fixture manifest (folder from `OSCAR_CBS_FIXTURES`, default the shipped copy)
is converted from its original checkpoint and decoded with the fixture's own FSM and inputs. Each
image decoded alone must equal the original's batch-of-1 result (`*_single_*`) token for token,
scores to 1e-5, with the original's re-encoding of the caption and with the key/value cache. The
original's batched first step used image 0's log-probs for every image; ours does not, so image 0
also matches the original's batched output and a batch equals its images one by one.
"""

from __future__ import annotations

import functools

import pytest
import torch
from safetensors.torch import load_file
from support import fixture_folder, manifest_cases

from oscar_hf.cbs_oscar import DEAD_SCORE, ConstraintFSM, constrained_beam_search
from oscar_hf.convert_original_checkpoint import convert_checkpoint
from oscar_hf.processors.cbs_constraints import contains_constraint


pytestmark = pytest.mark.parity

ATOL = 1e-5
FOLDER = fixture_folder("OSCAR_CBS_FIXTURES", "oscar_cbs")
CASES = manifest_cases(FOLDER)
if not CASES:
    pytest.skip(
        f"no CBS fixture manifest in {FOLDER} (set OSCAR_CBS_FIXTURES to a fixture folder)", allow_module_level=True
    )

RUNS = [(name, m) for name, info in CASES.items() for m in info["min_constraints_to_satisfy"]]
SINGLE_RUNS = [
    (name, m) for name, m in RUNS if f"sequences_single_min{m}" in CASES[name]["output_names"]
]  # fmt: skip


@functools.cache
def load_case(name: str):
    info = CASES[name]
    layout = info["layout"]
    case_dir = FOLDER / name
    model = convert_checkpoint(
        case_dir,
        None,
        "captioning",
        max_caption_length=layout["max_seq_a_length"],
        max_tag_length=layout["max_seq_length"] - layout["max_seq_a_length"],
    ).eval()
    return model, load_file(case_dir / "inputs.safetensors"), load_file(case_dir / "outputs.safetensors")


def decode_inputs(info: dict, inputs: dict) -> dict:
    """The original's decode layout as `constrained_beam_search` inputs.

    The original reads the tags as `input_ids[:, max_length:]` and numbers them from
    max(od_labels_start_posid, max_length) (it raises the start to avoid the caption positions).
    Key masks come from the first tag row of the 3-D mask: tags and regions it may attend to.
    """
    layout, gen = info["layout"], info["generate_kwargs"]
    slot, total, max_length = layout["max_seq_a_length"], layout["max_seq_length"], gen["max_length"]
    key_row = inputs["attention_mask"][:, slot]
    tags = inputs["input_ids"][:, max_length:total]
    start = max(gen["od_labels_start_posid"], max_length)
    num_regions = inputs["img_feats"].shape[1]
    return dict(
        tag_input_ids=tags,
        tag_attention_mask=key_row[:, max_length:total],
        tag_position_ids=(start + torch.arange(tags.shape[1])).expand(tags.shape[0], -1),
        img_feats=inputs["img_feats"],
        img_attention_mask=key_row[:, total : total + num_regions],
        max_length=max_length,
        num_beams=gen["num_beams"],
        bos_token_id=gen["bos_token_id"],
        eos_token_id=gen["eos_token_ids"][0],
    )


def fixture_fsms(inputs: dict) -> list[ConstraintFSM]:
    return [
        ConstraintFSM(
            token_ids=inputs["fsm_token_ids"],
            token_transitions=inputs["fsm_token_transitions"][b].bool(),
            other_transitions=inputs["fsm_other_transitions"][b].bool(),
            num_constraints=int(inputs["num_constraints"][b]),
        )
        for b in range(inputs["num_constraints"].shape[0])
    ]


def image(kwargs: dict, b: int) -> dict:
    return {key: value[b : b + 1] if torch.is_tensor(value) else value for key, value in kwargs.items()}


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.float().reshape(expected.shape), expected.float(), atol=ATOL, rtol=0)


@functools.cache
def decoded(name: str, m: int, b: int | None, use_cache: bool = False):
    """Our result for case `name`, min constraints `m`, image `b` alone (None: the whole batch)."""
    model, inputs, _ = load_case(name)
    kwargs = decode_inputs(CASES[name], inputs)
    fsms = fixture_fsms(inputs)
    if b is not None:
        kwargs, fsms = image(kwargs, b), [fsms[b]]
    return constrained_beam_search(model, fsm=fsms, min_constraints_to_satisfy=m, use_cache=use_cache, **kwargs)


DECODING = pytest.mark.parametrize("use_cache", [False, True], ids=["recompute", "kv_cache"])


@DECODING
@pytest.mark.parametrize("name,m", SINGLE_RUNS)
def test_each_image_alone_matches_original_batch_of_one(name, m, use_cache):
    _, inputs, expected = load_case(name)
    for b in range(inputs["img_feats"].shape[0]):
        out = decoded(name, m, b, use_cache)
        reference = expected[f"sequences_single_min{m}"][b]  # (1, max_length)
        assert torch.equal(out.sequences, reference), (b, out.sequences, reference)
        close(out.sequences_scores, expected[f"scores_single_min{m}"][b])


@pytest.mark.parametrize("name,m", RUNS)
def test_first_image_matches_original_batch(name, m):
    """Image 0 is the one the original's batched first step got right: every output field matches."""
    _, _, expected = load_case(name)
    out = decoded(name, m, 0)
    info = CASES[name]
    assert torch.equal(out.sequences[0], expected[f"sequences_min{m}"][0, 0])
    close(out.sequences_scores[0], expected[f"scores_min{m}"][0, 0])
    assert int(out.selected_state[0]) == int(expected[f"selected_state_min{m}"][0])
    assert bool(out.valid_beam_found[0]) == bool(expected[f"valid_beam_found_min{m}"][0])
    given = len(info["examples"][0]["constraints"])
    bits = [int(out.selected_state[0]) >> i & 1 for i in range(given)]
    assert bits == expected[f"constraints_satisfied_min{m}"][0, :given].tolist()
    caption = out.sequences[0].tolist()
    present = [int(contains_constraint(caption, forms)) for forms in info["examples"][0]["constraint_token_form_ids"]]
    assert present == expected[f"constraints_present_min{m}"][0, :given].tolist()


@DECODING
@pytest.mark.parametrize("name,m", RUNS)
def test_batched_equals_one_by_one(name, m, use_cache):
    batched = decoded(name, m, None, use_cache)
    for b in range(batched.sequences.shape[0]):
        alone = decoded(name, m, b, use_cache)
        assert torch.equal(batched.sequences[b], alone.sequences[0])
        close(batched.sequences_scores[b], alone.sequences_scores[0])
        assert int(batched.selected_state[b]) == int(alone.selected_state[0])


@pytest.mark.parametrize("name", list(CASES))
def test_live_state_beams_match_original(name):
    """Image 0's per-state beams: the same states reached, the same live beams, their summed scores.

    Dead beams (never-reached states) hold tie-break tokens that torch's topk orders arbitrarily;
    only their being dead is compared.
    """
    _, _, expected = load_case(name)
    out = decoded(name, CASES[name]["min_constraints_to_satisfy"][0], 0)
    ours_scores, ours_beams = out.state_scores[0], out.state_sequences[0]  # (S, W), (S, W, L)
    num_states = ours_scores.shape[0]
    ref_scores, ref_beams = expected["state_scores"][0], expected["state_beams"][0]
    assert (ref_scores[num_states:] <= DEAD_SCORE).all(), "a state we dropped was reached by the original"
    live = ref_scores[:num_states] > DEAD_SCORE
    assert torch.equal(ours_scores > DEAD_SCORE, live)
    assert torch.equal(ours_beams[live], ref_beams[:num_states][live])
    close(ours_scores[live], ref_scores[:num_states][live])


def test_dead_beam_when_no_valid_state_is_reachable():
    runs = [(name, m) for name, m in SINGLE_RUNS if CASES[name]["examples"][0]["constraints"]]
    dead = [(name, m) for name, m in runs if not bool(load_case(name)[2][f"valid_beam_found_min{m}"][0])]
    if not dead:
        pytest.skip("this fixture set has no case whose required constraints are unreachable")
    for name, m in dead:
        out = decoded(name, m, 0)
        assert not bool(out.valid_beam_found[0])
        length = int((out.sequences[0] != CASES[name]["generate_kwargs"]["eos_token_ids"][0]).sum()) + 1
        torch.testing.assert_close(out.sequences_scores[0], torch.tensor(-1e20) / length)


def test_dense_fsm_tensor_is_accepted():
    """The original dataset's dense (B, 32, 32, vocab) FSM plus num_constraints decodes the same."""
    name = next(iter(CASES))
    model, inputs, _ = load_case(name)
    vocab = model.config.vocab_size
    dense = torch.stack([fsm.to_dense(vocab) for fsm in fixture_fsms(inputs)])
    m = CASES[name]["min_constraints_to_satisfy"][0]
    out = constrained_beam_search(
        model,
        fsm=dense,
        num_constraints=inputs["num_constraints"],
        min_constraints_to_satisfy=m,
        **decode_inputs(CASES[name], inputs),
    )
    reference = decoded(name, m, None)
    assert torch.equal(out.sequences, reference.sequences)
    close(out.sequences_scores, reference.sequences_scores)


def test_bad_arguments_name_the_fix():
    name = next(iter(CASES))
    model, inputs, _ = load_case(name)
    kwargs = decode_inputs(CASES[name], inputs)
    fsms = fixture_fsms(inputs)
    with pytest.raises(ValueError, match="one ConstraintFSM per image"):
        constrained_beam_search(model, fsm=fsms[:1], **kwargs)
    with pytest.raises(ValueError, match="num_constraints"):
        constrained_beam_search(model, fsm=fsms, num_constraints=[0, 0], **kwargs)
    with pytest.raises(ValueError, match="one token per image"):
        constrained_beam_search(model, fsm=fsms, input_ids=torch.ones(2, 3, dtype=torch.long), **kwargs)


def test_generate_use_cbs_runs_the_constrained_search():
    name = next(iter(CASES))
    model, inputs, _ = load_case(name)
    kwargs = decode_inputs(CASES[name], inputs)
    m = CASES[name]["min_constraints_to_satisfy"][0]
    expected = decoded(name, m, None)
    model.generation_config.bos_token_id = kwargs.pop("bos_token_id")
    model.generation_config.eos_token_id = kwargs.pop("eos_token_id")
    got = model.generate(use_cbs=True, fsm=fixture_fsms(inputs), min_constraints_to_satisfy=m, **kwargs)
    assert torch.equal(got, expected.sequences)
    with pytest.raises(ValueError, match="needs fsm="):
        model.generate(use_cbs=True, **kwargs)
    with pytest.raises(ValueError, match="does not take"):
        model.generate(use_cbs=True, fsm=fixture_fsms(inputs), do_sample=True, **kwargs)
