"""Constrained beam search (CBS) for Oscar captioning, as the original ran it on NoCaps.

Up to three object classes from an Open Images detector become constraints. A finite-state machine
(FSM) over WordPiece ids tracks which constraints a caption has produced: main state `s` (below
`2 ** max_given_constraints`) has satisfied constraint `i` exactly when bit `i` of `s` is set, and
states after the main ones are the sub-states of multi-token constraints ("teddy bear",
"surf ##board"). The search keeps `num_beams` beams per FSM state; the final caption is the best beam
of a state that satisfies at least `min_constraints_to_satisfy` of the image's constraints.
(Anderson et al., "Guided Open Vocabulary Image Captioning with Constrained Beam Search", 2017;
nocaps-org/updown-baseline; microsoft/Oscar `oscar/utils/cbs.py` at 266075f.)

The FSM is kept sparse (`ConstraintFSM`): a transition `from -> to` is allowed for a small set of
"constraint" token ids (`token_transitions`) and, as one flag, for every other token of the
vocabulary (`other_transitions`). That is exactly the original's dense `(32, 32, vocab)` uint8 tensor
(31 MB per image) in a few kilobytes; `ConstraintFSM.to_dense` rebuilds it.

What the original does, kept because it defines its outputs:
- by default one forward per step over the (image, state, beam) rows with the full caption so far
  (the original re-encoded; `use_cache=True` uses the model's key/value cache instead, the same beams
  up to float rounding);
- during the search beams are ranked by summed log-prob; a token a transition does not allow gets
  -1e20 (not -inf), and a finished beam (last token `[SEP]`) can only add `[SEP]` at log-prob 0;
- a state no real beam can reach still holds "dead" beams scoring about -1e20;
- the final pick looks at beam 0 of each valid state and scores it sum / (non-`[SEP]` tokens + 1),
  the +1 also for captions that never produced `[SEP]` (`length_penalty` is not used);
- when no valid state was reached (`max_length` too short for the constraints), the dead beam of
  the best valid state is returned anyway (score about -1e20 / length, `valid_beam_found` False);
- the returned ids carry no leading `[CLS]` and are padded with `[SEP]` to `max_length`; the last
  position is always `[SEP]`; the search never stops early (the original's own stop test never
  fires while dead beams exist, which is always).

What differs, on purpose:
- the original's first step uses image 0's log-probs for every image of a batch (it slices the
  first `batch_size` rows, which all belong to image 0); here each image uses its own, so a batch
  decodes exactly like its images one by one;
- rows are only computed where they matter: states past the last used sub-state are dropped, and the
  forward skips dead and finished rows (their log-probs cannot change any live beam);
- ties between exactly equal scores (only dead beams have them) are broken by the lowest index,
  where torch's `topk` leaves the order unspecified: live beams, scores and the selected caption
  are unaffected, dead beams' filler tokens may differ from the original's.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache
from transformers.utils import ModelOutput

from .modeling_oscar import seq2seq_attention_mask


# Log-prob the original gives a token that a transition does not allow (later steps).
MASKED_LOGPROB = -1e20
# A beam scoring at or below this never reached its state ("dead").
DEAD_SCORE = -1e19


# ----------------------------------------------------------------------------------------------
# The sparse finite-state machine
# ----------------------------------------------------------------------------------------------


@dataclass
class ConstraintFSM:
    """The constraint FSM of one image, sparse over the vocabulary.

    `fsm[from, to, v]` of the original's dense tensor is `token_transitions[from, to, k]` when
    `v == token_ids[k]` and `other_transitions[from, to]` for every other token `v`.

    Attributes:
        token_ids: (K,) the vocabulary ids that some transition treats differently from the rest.
        token_transitions: (S, S, K) bool.
        other_transitions: (S, S) bool.
        num_constraints: constraints encoded (bits 0 .. num_constraints - 1 of the main states).
        num_main_states: `2 ** max_given_constraints`; states from here on are sub-states.
    """

    token_ids: torch.LongTensor
    token_transitions: torch.BoolTensor
    other_transitions: torch.BoolTensor
    num_constraints: int
    num_main_states: int = 8

    def __post_init__(self) -> None:
        num_states = self.other_transitions.shape[0]
        if self.other_transitions.shape != (num_states, num_states):
            raise ValueError(f"other_transitions has shape {tuple(self.other_transitions.shape)}; expected (S, S).")
        expected = (num_states, num_states, self.token_ids.shape[0])
        if tuple(self.token_transitions.shape) != expected:
            raise ValueError(
                f"token_transitions has shape {tuple(self.token_transitions.shape)}; expected {expected} "
                "(states, states, len(token_ids))."
            )
        if self.num_constraints < 0 or 2**self.num_constraints > self.num_main_states:
            raise ValueError(
                f"num_constraints={self.num_constraints} does not fit num_main_states={self.num_main_states} "
                "(main states are 2 ** max_given_constraints)."
            )

    @property
    def num_states(self) -> int:
        return self.other_transitions.shape[0]

    @property
    def num_used_states(self) -> int:
        """Main states plus the sub-states that have transitions; later states are never reached."""
        touched = self.other_transitions.any(dim=0) | self.other_transitions.any(dim=1)
        touched = touched | self.token_transitions.any(dim=(0, 2)) | self.token_transitions.any(dim=(1, 2))
        used = touched.nonzero()
        last = int(used.max()) + 1 if used.numel() else 0
        return max(self.num_main_states, last)

    @property
    def nbytes(self) -> int:
        return sum(
            t.element_size() * t.numel() for t in (self.token_ids, self.token_transitions, self.other_transitions)
        )

    def to_dense(self, vocab_size: int) -> torch.Tensor:
        """The original's dense (S, S, vocab_size) uint8 FSM."""
        dense = self.other_transitions[..., None].expand(-1, -1, vocab_size).to(torch.uint8).clone()
        dense[..., self.token_ids] = self.token_transitions.to(torch.uint8)
        return dense

    @classmethod
    def from_dense(cls, dense: torch.Tensor, num_constraints: int, num_main_states: int = 8) -> ConstraintFSM:
        """Sparse form of a dense (S, S, vocab) FSM: the columns that differ from the most common one."""
        if dense.dim() != 3 or dense.shape[0] != dense.shape[1]:
            raise ValueError(f"dense FSM has shape {tuple(dense.shape)}; expected (states, states, vocab).")
        dense = dense.bool()
        flat = dense.flatten(0, 1)  # (S * S, vocab)
        # The "other" pattern is the one of the highest column that differs from no more than half;
        # any column works as long as token_ids lists every column that is not equal to it.
        other = flat[:, _majority_column(flat)]
        token_ids = (flat != other[:, None]).any(dim=0).nonzero().squeeze(1)
        return cls(
            token_ids=token_ids,
            token_transitions=dense[..., token_ids],
            other_transitions=other.view(dense.shape[0], dense.shape[1]),
            num_constraints=num_constraints,
            num_main_states=num_main_states,
        )


def _majority_column(flat: torch.Tensor) -> int:
    """Index of a column of `flat` equal to the column pattern most tokens share (the "other" tokens)."""
    patterns, inverse, counts = torch.unique(flat.t(), dim=0, return_inverse=True, return_counts=True)
    common = int(counts.argmax())
    return int((inverse == common).nonzero()[0])


@dataclass
class _BatchFSM:
    """FSMs of a batch over one shared id set (the union), trimmed to the states any image uses."""

    token_ids: torch.LongTensor  # (K,)
    token_transitions: torch.BoolTensor  # (B, S, S, K)
    other_transitions: torch.BoolTensor  # (B, S, S)
    num_constraints: torch.LongTensor  # (B,)


def _batch_fsms(fsms: Sequence[ConstraintFSM], device: torch.device) -> _BatchFSM:
    num_states = max(f.num_used_states for f in fsms)
    token_ids = torch.unique(torch.cat([f.token_ids.cpu() for f in fsms]))  # sorted
    token_rows, other_rows = [], []
    for fsm in fsms:
        if fsm.num_states < num_states:
            raise ValueError(f"an FSM has {fsm.num_states} states, fewer than the {num_states} another one uses.")
        other = fsm.other_transitions[:num_states, :num_states].cpu()
        # Columns of ids this image does not list follow its "other" pattern.
        tokens = other[..., None].expand(-1, -1, len(token_ids)).clone()
        where = torch.searchsorted(token_ids, fsm.token_ids.cpu())
        tokens[..., where] = fsm.token_transitions[:num_states, :num_states].cpu()
        token_rows.append(tokens)
        other_rows.append(other)
    return _BatchFSM(
        token_ids=token_ids.to(device),
        token_transitions=torch.stack(token_rows).to(device),
        other_transitions=torch.stack(other_rows).to(device),
        num_constraints=torch.tensor([f.num_constraints for f in fsms], device=device),
    )


def _as_fsm_list(
    fsm: ConstraintFSM | Sequence[ConstraintFSM] | torch.Tensor, num_constraints, batch: int
) -> list[ConstraintFSM]:
    """Accepts one FSM per image, a list of them, or the original's dense (B, S, S, vocab) tensor."""
    if isinstance(fsm, ConstraintFSM):
        fsm = [fsm]
    if isinstance(fsm, torch.Tensor):
        if fsm.dim() != 4:
            raise ValueError(f"a dense fsm must be (batch, states, states, vocab); got shape {tuple(fsm.shape)}.")
        if num_constraints is None:
            raise ValueError("num_constraints is required with a dense fsm tensor (it does not record it).")
        counts = [int(n) for n in torch.as_tensor(num_constraints).view(-1)]
        fsm = [ConstraintFSM.from_dense(dense, n) for dense, n in zip(fsm, counts)]
    fsms = list(fsm)
    if len(fsms) != batch:
        raise ValueError(f"got {len(fsms)} FSMs for {batch} images; pass one ConstraintFSM per image.")
    if num_constraints is not None:
        counts = [int(n) for n in torch.as_tensor(num_constraints).view(-1)]
        if counts != [f.num_constraints for f in fsms]:
            raise ValueError(
                f"num_constraints={counts} disagrees with the FSMs, built for {[f.num_constraints for f in fsms]}; "
                "leave num_constraints=None to use the FSMs' own counts."
            )
    return fsms


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


@dataclass
class ConstrainedBeamSearchOutput(ModelOutput):
    """Result of `constrained_beam_search`.

    Attributes:
        sequences: (batch, max_length) generated ids without `[CLS]`, `[SEP]`-padded.
        sequences_scores: (batch,) summed log-prob / (non-`[SEP]` tokens + 1); about -1e20 / length
            where `valid_beam_found` is False.
        selected_state: (batch,) the FSM state the caption was taken from.
        valid_beam_found: (batch,) bool; False when no beam reached a state with enough constraints.
        state_sequences: (batch, states, num_beams, max_length) every state's beams (states trimmed
            to the ones the batch uses).
        state_scores: (batch, states, num_beams) their summed log-probs.
    """

    sequences: torch.LongTensor | None = None
    sequences_scores: torch.FloatTensor | None = None
    selected_state: torch.LongTensor | None = None
    valid_beam_found: torch.BoolTensor | None = None
    state_sequences: torch.LongTensor | None = None
    state_scores: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------
# One decoding step of the captioning model
# ----------------------------------------------------------------------------------------------


@dataclass
class _Context:
    """What every row of an image sees besides its caption: tags and regions, one entry per image."""

    tag_ids: torch.LongTensor  # (B, T)
    tag_mask: torch.Tensor  # (B, T)
    tag_positions: torch.LongTensor  # (B, T)
    img_feats: torch.FloatTensor  # (B, N, D)
    img_mask: torch.Tensor  # (B, N)


def _step_log_probs(model, captions: torch.LongTensor, images: torch.LongTensor, context: _Context) -> torch.Tensor:
    """Log-probs of the next token for each row: `[CLS] w1..wt [MASK] tags regions`, read at `[MASK]`.

    The full caption is re-encoded every step through the model's public forward (the original's
    "recompute" decoding; no cache to re-order across beams and states).
    """
    rows, length = captions.shape
    device = captions.device
    config = model.config
    mask_tokens = captions.new_full((rows, 1), config.mask_token_id)
    tag_ids = context.tag_ids[images]
    input_ids = torch.cat([captions, mask_tokens, tag_ids], dim=1)  # (rows, t + 1 + T)
    token_type_ids = torch.cat(
        [torch.zeros(rows, length + 1, dtype=torch.long, device=device), torch.ones_like(tag_ids)], dim=1
    )
    caption_positions = torch.arange(length + 1, device=device).expand(rows, -1)
    position_ids = torch.cat([caption_positions, context.tag_positions[images]], dim=1)
    text_mask = torch.cat([torch.ones(rows, length + 1, dtype=torch.long, device=device), context.tag_mask[images]], 1)
    attention_mask = seq2seq_attention_mask(text_mask, context.img_mask[images], length + 1)
    kwargs = {}
    if _forward_takes(model, "logits_position"):
        kwargs["logits_position"] = length  # only the [MASK] slot goes through the vocabulary head
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        position_ids=position_ids,
        img_feats=context.img_feats[images],
        return_dict=True,
        **kwargs,
    )
    logits = out.logits[:, 0] if "logits_position" in kwargs else out.logits[:, length]
    return F.log_softmax(logits.float(), dim=-1)  # (rows, vocab)


def _forward_takes(model, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def _build_context(
    model,
    img_feats: torch.FloatTensor,
    img_attention_mask: torch.Tensor | None,
    tag_input_ids: torch.LongTensor | None,
    tag_attention_mask: torch.Tensor | None,
    tag_position_ids: torch.LongTensor | None,
) -> _Context:
    batch, num_regions = img_feats.shape[:2]
    device = img_feats.device
    config = model.config
    if tag_input_ids is None:
        tag_input_ids = torch.zeros(batch, 0, dtype=torch.long, device=device)
    if tag_attention_mask is None:
        tag_attention_mask = (tag_input_ids != config.pad_token_id).long()
    if tag_position_ids is None:
        tag_position_ids = (torch.arange(tag_input_ids.shape[1], device=device) + config.max_caption_length).expand(
            batch, -1
        )
    if img_attention_mask is None:
        img_attention_mask = torch.ones(batch, num_regions, dtype=torch.long, device=device)
    for name, value in (
        ("tag_input_ids", tag_input_ids),
        ("tag_attention_mask", tag_attention_mask),
        ("tag_position_ids", tag_position_ids),
        ("img_attention_mask", img_attention_mask),
    ):
        if value.shape[0] != batch:
            raise ValueError(f"{name} has {value.shape[0]} rows for {batch} images in img_feats; give one per image.")
    return _Context(
        tag_ids=tag_input_ids,
        tag_mask=tag_attention_mask.long(),
        tag_positions=tag_position_ids.long(),
        img_feats=img_feats,
        img_mask=img_attention_mask.long(),
    )


class _RecomputeSteps:
    """Every step re-encodes each live row's whole caption (the original's decoding)."""

    def __init__(self, model, context: _Context, row_image: torch.LongTensor):
        self.model, self.context, self.row_image = model, context, row_image

    def first(self, start: torch.LongTensor) -> torch.Tensor:
        return _step_log_probs(self.model, start, torch.arange(start.shape[0], device=start.device), self.context)

    def next(self, captions: torch.LongTensor, live: torch.BoolTensor) -> torch.Tensor | None:
        if not live.any():
            return None
        return _step_log_probs(self.model, captions[live], self.row_image[live], self.context)

    def reorder(self, source: torch.LongTensor) -> None:
        pass


class _CachedSteps:
    """The captioning model's key/value cache: tags, regions and `[CLS]` encoded once per image, then
    each step encodes only `[w_t, [MASK]]` for every row; the cache follows the back-pointers."""

    def __init__(self, model, context: _Context, row_image: torch.LongTensor):
        self.model, self.row_image = model, row_image
        self.cache = DynamicCache()
        self.context = {
            "img_feats": context.img_feats,
            "img_attention_mask": context.img_mask,
            "tag_input_ids": context.tag_ids,
            "tag_attention_mask": context.tag_mask,
            "tag_position_ids": context.tag_positions,
        }

    def _log_probs(self, captions: torch.LongTensor, context: dict) -> torch.Tensor:
        step = self.model.prepare_inputs_for_generation(
            captions, attention_mask=torch.ones_like(captions), use_cache=True, cache=self.cache, **context
        )
        logits = self.model(**step, return_dict=True).logits[:, -1]
        return F.log_softmax(logits.float(), dim=-1)

    def first(self, start: torch.LongTensor) -> torch.Tensor:
        log_probs = self._log_probs(start, self.context)
        self.cache.reorder_cache(self.row_image)  # one copy of each image's cache per (state, beam) row
        self.context = {name: value[self.row_image] for name, value in self.context.items()}
        return log_probs

    def next(self, captions: torch.LongTensor, live: torch.BoolTensor) -> torch.Tensor:
        # Every row advances so the cache stays aligned; only the live rows' log-probs are used.
        return self._log_probs(captions, self.context)[live]

    def reorder(self, source: torch.LongTensor) -> None:
        self.cache.reorder_cache(source)


# ----------------------------------------------------------------------------------------------
# Candidate tokens per (row, target state)
# ----------------------------------------------------------------------------------------------


class _Candidates:
    """Top-`k` tokens of each row under each transition, without a dense (S, S, vocab) mask.

    For row r in state j and target i, the allowed tokens are the ids in `token_ids` whose bit is set
    plus, when `other[j, i]`, every other id. So the top-k of the masked row is found among: the
    row's top-k over the "other" ids (when they are allowed) or the k lowest "other" ids (which is
    what a fully masked row returns, ties broken by the lowest id), and the K listed ids.
    """

    def __init__(self, fsm: _BatchFSM, vocab_size: int, k: int, eos_token_id: int):
        self.fsm = fsm
        self.k = k
        self.eos = eos_token_id
        token_ids = fsm.token_ids.tolist()
        listed = set(token_ids)
        lowest = [v for v in range(vocab_size) if v not in listed][: k + 1]
        device = fsm.token_ids.device
        self.lowest_ids = torch.tensor(lowest[:k], device=device)  # (k,)
        # A finished row allows only [SEP] (log-prob 0, everything else -inf): its top-k over the
        # "other" ids is [SEP] then the lowest ids.
        finished = ([eos_token_id] if eos_token_id not in listed else []) + [v for v in lowest if v != eos_token_id]
        self.finished_ids = torch.tensor(finished[:k], device=device)
        self.finished_values = torch.where(self.finished_ids == eos_token_id, 0.0, float("-inf"))
        self.listed_is_eos = fsm.token_ids == eos_token_id  # (K,)

    def row_summaries(
        self, log_probs: torch.Tensor | None, live: torch.BoolTensor, finished: torch.BoolTensor
    ) -> tuple[torch.Tensor, torch.LongTensor, torch.Tensor]:
        """Per row: top-k over the "other" ids (values, ids) and the values at the listed ids.

        `log_probs` (live.sum(), vocab) holds the model's log-probs of the live, unfinished rows;
        finished rows follow the after-`[SEP]` rule and dead ones get 0 (any finite value: a dead
        beam's -1e20 absorbs it).
        """
        rows = live.shape[0]
        device = live.device
        k, num_listed = self.k, self.fsm.token_ids.shape[0]
        top_values = torch.zeros(rows, k, device=device)
        top_ids = self.lowest_ids.expand(rows, -1).clone()
        listed_values = torch.zeros(rows, num_listed, device=device)
        if log_probs is not None and log_probs.shape[0]:
            others = log_probs.clone()
            others[:, self.fsm.token_ids] = float("-inf")
            values, ids = others.topk(k, dim=-1)
            top_values[live], top_ids[live] = values, ids
            listed_values[live] = log_probs[:, self.fsm.token_ids]
        top_values[finished] = self.finished_values
        top_ids[finished] = self.finished_ids
        listed_values[finished] = torch.where(self.listed_is_eos, 0.0, float("-inf"))
        return top_values, top_ids, listed_values

    def select(
        self,
        top_values: torch.Tensor,
        top_ids: torch.LongTensor,
        listed_values: torch.Tensor,
        images: torch.LongTensor,
        states: torch.LongTensor,
        fill: float,
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        """The k best tokens of every row for every target state: (rows, S, k) values and ids.

        Disallowed tokens count as `fill`; ties go to the lowest id.
        """
        other = self.fsm.other_transitions[images, states]  # (rows, S): other ids allowed j -> i
        listed = self.fsm.token_transitions[images, states]  # (rows, S, K)
        rows, num_states = other.shape
        base_values = torch.where(other[..., None], top_values[:, None, :], fill)  # (rows, S, k)
        base_ids = torch.where(other[..., None], top_ids[:, None, :], self.lowest_ids)
        listed_vals = torch.where(listed, listed_values[:, None, :], fill)  # (rows, S, K)
        listed_ids = self.fsm.token_ids.expand(rows, num_states, -1)
        pool_ids = torch.cat([base_ids, listed_ids], dim=-1)
        pool_values = torch.cat([base_values, listed_vals], dim=-1)
        by_id = pool_ids.argsort(dim=-1)
        pool_ids, pool_values = pool_ids.gather(-1, by_id), pool_values.gather(-1, by_id)
        best_values, order = pool_values.sort(dim=-1, descending=True, stable=True)
        return best_values[..., : self.k], pool_ids.gather(-1, order[..., : self.k])


# ----------------------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def constrained_beam_search(
    model,
    *,
    img_feats: torch.FloatTensor,
    fsm: ConstraintFSM | Sequence[ConstraintFSM] | torch.Tensor,
    num_constraints: torch.Tensor | Sequence[int] | None = None,
    min_constraints_to_satisfy: int = 2,
    num_beams: int = 5,
    max_length: int = 20,
    input_ids: torch.LongTensor | None = None,
    img_attention_mask: torch.Tensor | None = None,
    tag_input_ids: torch.LongTensor | None = None,
    tag_attention_mask: torch.Tensor | None = None,
    tag_position_ids: torch.LongTensor | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    use_cache: bool = False,
) -> ConstrainedBeamSearchOutput:
    """Captions `img_feats` with the original Oscar/NoCaps constrained beam search.

    Args:
        model: an `OscarForImageCaptioning` (anything with its forward and config).
        img_feats: (batch, regions, img_feature_dim) region features.
        fsm: one `ConstraintFSM` per image (see `oscar_hf.processors.cbs_constraints`), or the
            original's dense (batch, states, states, vocab) tensor with `num_constraints`.
        num_constraints: constraints per image; defaults to the FSMs' own counts.
        min_constraints_to_satisfy: the final caption comes from a state satisfying at least
            min(this, num_constraints) constraints (the original's default and NoCaps setting: 2).
        num_beams: beams per FSM state (NoCaps: 5).
        max_length: length of the returned ids; `max_length - 1` tokens are generated.
        input_ids: (batch, 1) the start token; defaults to `[CLS]` (`bos_token_id`).
        img_attention_mask, tag_input_ids, tag_attention_mask, tag_position_ids: as for
            `OscarForImageCaptioning.generate`.
        use_cache: decode with the model's key/value cache (every row advances each step, about
            as many rows as the recomputation but two query tokens each) instead of re-encoding the
            caption (the original's way, the default); the same beams up to float rounding.

    Returns:
        `ConstrainedBeamSearchOutput`; `sequences` are (batch, max_length) ids without `[CLS]`.
    """
    config = model.config
    bos = config.bos_token_id if bos_token_id is None else bos_token_id
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    if isinstance(eos, (list, tuple)):
        if len(eos) != 1:
            raise ValueError(f"eos_token_id={eos}: constrained beam search supports one end token; pass an int.")
        eos = eos[0]
    if img_feats is None or img_feats.dim() != 3:
        raise ValueError("img_feats must be a (batch, regions, img_feature_dim) tensor.")
    if num_beams < 1 or max_length < 2:
        raise ValueError(f"num_beams={num_beams}, max_length={max_length}: need num_beams >= 1 and max_length >= 2.")
    if min_constraints_to_satisfy < 0:
        raise ValueError(f"min_constraints_to_satisfy={min_constraints_to_satisfy} must be >= 0.")
    batch, device = img_feats.shape[0], img_feats.device
    if input_ids is None:
        input_ids = torch.full((batch, 1), bos, dtype=torch.long, device=device)
    if input_ids.shape != (batch, 1):
        raise ValueError(
            f"input_ids has shape {tuple(input_ids.shape)}; constrained beam search starts from one token per "
            f"image, shape ({batch}, 1) (the [CLS] token)."
        )
    if tag_position_ids is None and max_length > config.max_caption_length:
        raise ValueError(
            f"max_length={max_length} exceeds the caption slot (config.max_caption_length={config.max_caption_length}): "
            "the caption would run into the tags' positions; lower max_length or pass tag_position_ids."
        )
    fsms = _as_fsm_list(fsm, num_constraints, batch)
    batch_fsm = _batch_fsms(fsms, device)
    context = _build_context(model, img_feats, img_attention_mask, tag_input_ids, tag_attention_mask, tag_position_ids)

    state_sequences, state_scores = _search(
        model, input_ids, context, batch_fsm, num_beams, max_length, eos, use_cache=use_cache
    )
    sequences, scores, selected = _select_best_beam(
        state_sequences, state_scores, batch_fsm.num_constraints, min_constraints_to_satisfy, eos
    )
    best_raw = state_scores[torch.arange(batch, device=device), selected, 0]
    return ConstrainedBeamSearchOutput(
        sequences=sequences,
        sequences_scores=scores,
        selected_state=selected,
        valid_beam_found=best_raw > DEAD_SCORE,
        state_sequences=state_sequences,
        state_scores=state_scores,
    )


def _search(
    model,
    start: torch.LongTensor,
    context: _Context,
    fsm: _BatchFSM,
    num_beams: int,
    max_length: int,
    eos: int,
    use_cache: bool = False,
) -> tuple[torch.LongTensor, torch.Tensor]:
    """Beams of every state: (B, S, W, max_length) ids without the start token and (B, S, W) scores."""
    batch, num_states = fsm.other_transitions.shape[:2]
    beams = num_beams
    device = start.device
    vocab_size = model.config.vocab_size
    candidates = _Candidates(fsm, vocab_size, beams, eos)
    rows = batch * num_states * beams
    row_image = torch.arange(batch, device=device).repeat_interleave(num_states * beams)  # (R,)
    row_state = torch.arange(num_states, device=device).repeat_interleave(beams).repeat(batch)  # (R,)
    steps = (_CachedSteps if use_cache else _RecomputeSteps)(model, context, row_image)

    # Step 1: each image's own log-probs (the original used image 0's for all), masked by the
    # transitions out of state 0 (disallowed: -inf); each state takes its top `beams` tokens.
    images = torch.arange(batch, device=device)
    log_probs = steps.first(start)  # (B, vocab)
    every = torch.ones(batch, dtype=torch.bool, device=device)
    summaries = candidates.row_summaries(log_probs, every, ~every)
    scores, tokens = candidates.select(*summaries, images, torch.zeros_like(images), fill=float("-inf"))
    # scores, tokens: (B, S, W); rows are ordered (image, state, beam).
    captions = torch.cat([start[row_image], tokens.reshape(rows, 1)], dim=1)  # (R, 2)
    scores = scores.reshape(rows)

    for _ in range(max_length - 2):
        last = captions[:, -1]
        finished = last == eos
        live = (scores > DEAD_SCORE) & ~finished
        step_log_probs = steps.next(captions, live)
        summaries = candidates.row_summaries(step_log_probs, live, finished)
        values, tokens = candidates.select(*summaries, row_image, row_state, fill=MASKED_LOGPROB)  # (R, S, W)
        summed = values + scores[:, None, None]
        # (B, S_from, W, S_to, W_k) -> (B, S_to, S_from * W * W_k): candidates of each target state,
        # flattened (source state, beam, k) as the original; ties go to the lowest index.
        summed = summed.view(batch, num_states, beams, num_states, beams).permute(0, 3, 1, 2, 4)
        tokens = tokens.view(batch, num_states, beams, num_states, beams).permute(0, 3, 1, 2, 4)
        summed, tokens = summed.reshape(batch, num_states, -1), tokens.reshape(batch, num_states, -1)
        best, flat = summed.sort(dim=-1, descending=True, stable=True)
        best, flat = best[..., :beams], flat[..., :beams]  # (B, S_to, W)
        source = images[:, None, None] * (num_states * beams) + flat // beams  # row of (image, state, beam)
        next_tokens = tokens.gather(-1, flat)
        source = source.reshape(rows)
        steps.reorder(source)
        captions = torch.cat([captions[source], next_tokens.reshape(rows, 1)], dim=1)
        scores = best.reshape(rows)

    sequences = F.pad(captions[:, 1:], (0, 1), value=eos)  # [SEP] in the last slot, as the original
    return sequences.view(batch, num_states, beams, max_length), scores.view(batch, num_states, beams)


def _select_best_beam(
    state_sequences: torch.LongTensor,
    state_scores: torch.Tensor,
    num_constraints: torch.LongTensor,
    min_constraints_to_satisfy: int,
    eos: int,
) -> tuple[torch.LongTensor, torch.Tensor, torch.LongTensor]:
    """Best beam 0 over the states satisfying min(n, min_constraints_to_satisfy) constraints.

    Score = summed log-prob / (non-`[SEP]` tokens + 1), the original's fixed length normalisation.
    Without a reachable valid state this still returns the best valid state's dead beam.
    """
    batch = state_sequences.shape[0]
    sequences, scores, selected = [], [], []
    for b in range(batch):
        given = int(num_constraints[b])
        need = min(given, min_constraints_to_satisfy)
        valid = [s for s in range(2**given) if bin(s).count("1") >= need]
        valid = torch.tensor(valid, device=state_sequences.device)
        first_beams = state_sequences[b, valid, 0]  # (V, max_length)
        lengths = (first_beams != eos).sum(dim=1) + 1
        normalised = state_scores[b, valid, 0] / lengths
        pick = int(normalised.argmax())
        sequences.append(first_beams[pick])
        scores.append(normalised[pick])
        selected.append(valid[pick])
    return torch.stack(sequences), torch.stack(scores), torch.stack(selected)


def satisfied_constraints(state: int, num_constraints: int) -> list[bool]:
    """Which constraints main state `state` has satisfied (bit i = constraint i)."""
    return [bool(state >> i & 1) for i in range(num_constraints)]


__all__ = [
    "ConstrainedBeamSearchOutput",
    "ConstraintFSM",
    "constrained_beam_search",
    "satisfied_constraints",
]
