"""SCST pieces: one-pass caption scoring equals step-by-step decoding, rewards, the loss."""

from __future__ import annotations

import torch
from support import tiny_config

from oscar_hf import OscarForImageCaptioning
from oscar_hf.training.scst import CiderReward, caption_log_probs, scst_loss


def test_one_pass_log_probs_equal_the_decoder_step_scores():
    torch.manual_seed(0)
    model = OscarForImageCaptioning(tiny_config()).eval()
    tags = torch.randint(5, 99, (3, 5))
    tags[1, 3:] = 0
    img = torch.randn(3, 4, 14)
    img_mask = torch.ones(3, 4, dtype=torch.long)
    img_mask[2, 2:] = 0
    out = model.generate(
        input_ids=torch.ones(3, 1, dtype=torch.long),
        tag_input_ids=tags,
        img_feats=img,
        img_attention_mask=img_mask,
        max_length=10,
        do_sample=True,
        top_k=0,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    log_probs, counted = caption_log_probs(model, out.sequences, img, tags, img_attention_mask=img_mask)
    steps = torch.stack([s.log_softmax(-1) for s in out.scores], 1)
    expected = steps.gather(-1, out.sequences[:, 1:, None]).squeeze(-1) * counted
    torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=0)
    assert log_probs.requires_grad


def test_counted_stops_after_the_first_sep():
    model = OscarForImageCaptioning(tiny_config()).eval()
    sequences = torch.tensor([[1, 7, 2, 0, 0], [1, 7, 8, 9, 2]])
    _, counted = caption_log_probs(model, sequences, torch.randn(2, 3, 14), torch.tensor([[5, 2], [6, 2]]))
    assert counted.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_cider_reward_prefers_the_reference_and_loss_follows_the_advantage():
    reward = CiderReward.from_references([["a dog on a couch", "a brown dog"], ["a red car on a street"]] * 3)
    scores = reward(["a dog on a couch.", "a cat"], [["a dog on a couch", "a brown dog"], ["a red car on a street"]])
    assert scores[0] > 1.0 and scores[1] == 0.0
    log_probs = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]], requires_grad=True)
    loss = scst_loss(log_probs, torch.ones(2, 2), rewards=torch.tensor([1.0, 0.0]), baselines=torch.tensor([0.5, 0.5]))
    loss.backward()
    # Above-baseline samples get their log-probability pushed up, below-baseline ones down.
    assert (log_probs.grad[0] < 0).all() and (log_probs.grad[1] > 0).all()
