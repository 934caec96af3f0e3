"""Self-critical sequence training (SCST) for Oscar captioning.

SCST (Rennie et al., 2017) samples captions, rewards them with CIDEr-D against the references, and
subtracts a baseline (the greedy caption's reward, or the mean of the other samples):
loss = -mean(logprob_mean(sample) * (reward - baseline)), as the original Oscar recipe.

The log-probabilities need gradients. Oscar predicts token t at a `[MASK]` placed after w<t, so a
naive scorer runs one forward per token. `caption_log_probs` scores all tokens in ONE forward: the
caption tokens w0..w_{T-1} and T `[MASK]` slots are laid side by side, `[MASK]` number t sits at
position t and sees w<t, itself, the tags and the regions; the caption tokens see each other
causally and never a `[MASK]`. Every hidden state is then exactly the one the step-by-step decoder
computes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from oscar_hf.metrics import CiderD, CiderDocumentFrequencies, simple_tokenize


def _scoring_mask(caption_valid: torch.Tensor, context_valid: torch.Tensor) -> torch.Tensor:
    """(batch, L, L) 0/1 mask over [caption (T) | masks (T) | tags (K_t) ... regions] for L = 2T + K."""
    batch, steps = caption_valid.shape
    num_context = context_valid.shape[1]
    device = caption_valid.device
    idx = torch.arange(steps, device=device)
    caption_valid, context_valid = caption_valid.bool(), context_valid.bool()
    causal = idx[None, :] <= idx[:, None]  # caption i sees caption j <= i
    before = idx[None, :] < idx[:, None] + 1  # mask slot t (predicting w_{t+1}) sees caption j <= t
    eye = torch.eye(steps, dtype=torch.bool, device=device)
    total = 2 * steps + num_context
    mask = torch.zeros(batch, total, total, dtype=torch.bool, device=device)
    cap, msk, ctx = slice(0, steps), slice(steps, 2 * steps), slice(2 * steps, total)
    mask[:, cap, cap] = causal & caption_valid[:, None, :]
    mask[:, msk, cap] = before & caption_valid[:, None, :]
    mask[:, msk, msk] = eye
    mask[:, cap, ctx] = context_valid[:, None, :]
    mask[:, msk, ctx] = context_valid[:, None, :]
    mask[:, ctx, ctx] = context_valid[:, None, :] & context_valid[:, :, None]
    return mask.long()


def caption_log_probs(
    model,
    sequences: torch.LongTensor,
    img_feats: torch.Tensor,
    tag_input_ids: torch.LongTensor,
    img_attention_mask: torch.Tensor | None = None,
    tag_attention_mask: torch.Tensor | None = None,
    config=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-probabilities of generated captions, with gradients, in one forward pass.

    Args:
        sequences: (batch, L) from `generate`: `[CLS]`, the caption, then `[SEP]` and padding.
        img_feats, tag_input_ids, img_attention_mask, tag_attention_mask: the prompt of each row.
        config: the model's config, when `model` is a wrapper without one (DDP, FSDP).

    Returns:
        (log_probs, counted): both (batch, L - 1); `log_probs[:, t]` is log p(sequences[:, t + 1]),
        `counted` is 1 up to and including the first `[SEP]` (what the original averages over).
    """
    config = config if config is not None else model.config
    batch, length = sequences.shape
    steps = length - 1
    device = sequences.device
    targets = sequences[:, 1:]
    is_eos = targets == config.eos_token_id
    # Count tokens up to and including the first [SEP]; everything after it is padding.
    after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    counted = (~after_eos).long()
    caption_valid = torch.cat([torch.ones(batch, 1, dtype=torch.long, device=device), counted[:, :-1]], dim=1)
    if tag_attention_mask is None:
        tag_attention_mask = (tag_input_ids != config.pad_token_id).long()
    if img_attention_mask is None:
        img_attention_mask = torch.ones(img_feats.shape[:2], dtype=torch.long, device=device)
    context_valid = torch.cat([tag_attention_mask.long(), img_attention_mask.long()], dim=1)

    caption = sequences[:, :steps]
    masks = torch.full_like(caption, config.mask_token_id)
    num_tags = tag_input_ids.shape[1]
    positions = torch.arange(steps, device=device)
    position_ids = torch.cat(
        [positions, positions + 1, torch.arange(num_tags, device=device) + config.max_caption_length]
    ).expand(batch, -1)
    token_type_ids = torch.cat(
        [torch.zeros(batch, 2 * steps, dtype=torch.long, device=device), torch.ones_like(tag_input_ids)], dim=1
    )
    out = model(
        input_ids=torch.cat([caption, masks, tag_input_ids], dim=1),
        token_type_ids=token_type_ids,
        position_ids=position_ids,
        attention_mask=_scoring_mask(caption_valid, context_valid),
        img_feats=img_feats,
    )
    logits = out.logits[:, steps : 2 * steps].float()  # (batch, steps, vocab) at the [MASK] slots
    log_probs = F.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return log_probs * counted, counted


def scst_loss(
    log_probs: torch.Tensor, counted: torch.Tensor, rewards: torch.Tensor, baselines: torch.Tensor
) -> torch.Tensor:
    """-mean(mean token logprob * (reward - baseline)), the original's REINFORCE objective."""
    mean_log_prob = log_probs.sum(dim=1) / counted.sum(dim=1).clamp(min=1)
    return -(mean_log_prob * (rewards - baselines).to(mean_log_prob.dtype)).mean()


class CiderReward:
    """CIDEr-D of captions against their references, with training-corpus document frequencies.

    Captions and references go through `simple_tokenize` (lower case, punctuation removed, as the
    PTB tokenisation of the official scorer without needing Java), so rewards are cheap per step.
    """

    def __init__(self, document_frequencies: CiderDocumentFrequencies):
        self.scorer = CiderD(document_frequencies)

    @classmethod
    def from_references(cls, references: Sequence[Sequence[str]]) -> CiderReward:
        return cls(CiderDocumentFrequencies.from_references(references, tokenizer="python"))

    def __call__(self, captions: Sequence[str], references: Sequence[Sequence[str]]) -> torch.Tensor:
        if len(captions) != len(references):
            raise ValueError(f"{len(captions)} captions but {len(references)} reference sets.")
        tokenized_refs = [[simple_tokenize(r) for r in refs] for refs in references]
        _, scores = self.scorer.compute_score([simple_tokenize(c) for c in captions], tokenized_refs)
        return torch.as_tensor(scores, dtype=torch.float32)


__all__ = ["CiderReward", "caption_log_probs", "scst_loss"]
