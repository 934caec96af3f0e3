"""The original implementation's tensor layouts, built from ours: the parity tests' adapter.

The package produces what transformers users expect (2-D text mask + `img_attention_mask`, labels
-100 over the text only); the original tensorizers produced one full mask, -1 labels spanning text
and regions, `masked_pos` / `masked_ids` caption targets and a `[MASK]`-filled decode slot. These
helpers turn our outputs into those, so the fixtures can be compared tensor for tensor.
"""

from __future__ import annotations

from typing import Any

import torch


def full_attention_mask(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One (..., Lt + R) mask as the original tensorizers returned, instead of text + region masks."""
    out = dict(batch)
    if "img_attention_mask" in out:
        out["attention_mask"] = torch.cat([out["attention_mask"], out.pop("img_attention_mask")], dim=-1)
    return out


def pretraining_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The original's masked-LM labels: -1 off target, spanning the text and the region slots."""
    labels = batch["labels"]
    regions = batch["img_feats"].shape[1] if "img_feats" in batch else 0
    return torch.cat([labels.masked_fill(labels == -100, -1), labels.new_full((labels.shape[0], regions), -1)], 1)


def caption_targets(
    batch: dict[str, torch.Tensor], max_masked_tokens: int, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """The original's caption training targets: `masked_pos` (batch, Lt) int32, `masked_ids` padded with [PAD]."""
    chosen = batch["labels"] != -100
    masked_ids = torch.full((chosen.shape[0], max_masked_tokens), pad_token_id, dtype=torch.long)
    for row in range(chosen.shape[0]):
        targets = batch["labels"][row][chosen[row]]
        masked_ids[row, : targets.numel()] = targets
    return {"masked_pos": chosen.to(torch.int32), "masked_ids": masked_ids}


def seq2seq_layout(batch: Any, processor: Any) -> dict[str, torch.Tensor]:
    """The captioning layout with the 3-D seq2seq mask the model builds from its 2-D masks (as the
    original tensorizer returned it, without `img_attention_mask`)."""
    from oscar_hf.modeling_oscar import seq2seq_attention_mask

    out = dict(batch)
    img_mask = out.pop("img_attention_mask", out["attention_mask"].new_zeros(out["attention_mask"].shape[0], 0))
    out["attention_mask"] = seq2seq_attention_mask(out["attention_mask"], img_mask, processor.max_caption_length)
    return out


def caption_decode_layout(processor: Any, tags: Any, **region_inputs: Any) -> dict[str, torch.Tensor]:
    """What the original `BertForImageCaptioning.generate` received: `[CLS] [MASK]... [SEP]` in the
    caption slot, tags, the 3-D seq2seq mask, `img_feats` and `masked_pos` (all ones, int32)."""
    batch = len(tags)
    placeholders = " ".join([processor.tokenizer.mask_token] * (processor.max_caption_length - 2))
    out = seq2seq_layout(processor.captioning([placeholders] * batch, tags=tags, **region_inputs), processor)
    out["masked_pos"] = torch.ones_like(out["input_ids"], dtype=torch.int32)
    return out
