"""Configuration of Oscar / Oscar+ (VinVL).

Oscar (Li et al., ECCV 2020, arXiv 2004.06165) is BERT plus a linear projection of detector region
features; Oscar+ (VinVL, Zhang et al., CVPR 2021) keeps the architecture and changes the data and
the contrastive objective. Every field the original code bolted onto `BertConfig` is declared here
with its default, so modules read `config.x` and never guess.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from transformers import PretrainedConfig
from transformers.activations import ACT2FN


CLASSIFIER_TYPES = ("linear", "mlp")
LOSS_TYPES = ("ce", "bce", "kl", "mse")
CAPTION_LOSS_TYPES = ("masked", "shifted")
# Loss names used by the original scripts, mapped onto ours.
# What to do about a size field below its minimum, where there is more to say than the minimum.
_SIZE_HINTS = {
    "img_feature_dim": "2054 = 2048 pooled RoI features + 6 box values; use the width of your region vectors.",
    "max_img_seq_length": "The number of region slots (50 in Oscar, VinVL); at least one region is needed.",
    "max_caption_length": "The caption slot holds [CLS] and at least [SEP] or [MASK] (original: 40).",
    "num_labels": "Set it to the number of answers / classes (VQA: 3129, GQA: 1853, NLVR2 and retrieval: 2).",
    "num_hidden_layers": "BERT-base has 12 layers; a model needs at least one.",
}
_ORIGINAL_LOSS_ALIASES = {"xe": "ce", "sfmx": "ce", "ce": "ce", "bce": "bce", "kl": "kl", "mse": "mse"}


class OscarConfig(PretrainedConfig):
    r"""Configuration for every Oscar model class.

    The BERT fields keep BERT's names and defaults (bert-base-uncased), so a plain BERT checkpoint
    initialises the trunk. The Oscar fields follow the original `config.json` keys.

    Args:
        vocab_size: WordPiece vocabulary size (30522 for bert-base-uncased).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act,
        hidden_dropout_prob, attention_probs_dropout_prob, max_position_embeddings, type_vocab_size,
        initializer_range, layer_norm_eps, pad_token_id: as in `BertConfig`.
        img_feature_dim: width of one region vector. 2054 = 2048 pooled RoI feature + 6 box values
            `[x1/W, y1/H, x2/W, y2/H, w/W, h/H]`; the box is the only spatial signal regions get.
        img_feature_type: which detector produced the features (metadata only, e.g. "faster_r-cnn").
        use_img_layernorm: apply a LayerNorm after the region projection (all VinVL checkpoints).
        img_layer_norm_eps: epsilon of that LayerNorm.
        max_img_seq_length: number of region slots the processor pads/truncates to.
        classifier: head of the classification models, "linear" or "mlp" (Linear-ReLU-Linear).
        cls_hidden_scale: width multiplier of the MLP head's hidden layer.
        classifier_dropout: dropout before the classifier; `None` uses `hidden_dropout_prob`.
        loss_type: classification loss. "ce" (GQA, retrieval, NLVR2), "bce" (VQA soft scores,
            BCE-with-logits averaged then multiplied by `num_labels`, as the original), "kl" (KL to
            the soft-score distribution) or "mse" (regression, `num_labels == 1`).
        num_choice: number of (text, image) pairs a NLVR2 example holds.
        pair_classifier_layernorm: put a LayerNorm between the ReLU and the last Linear of the
            NLVR2 pair MLP (the original does this whenever `use_img_layernorm` is on).
        num_contrast_classes: 2 (Oscar: matched / polluted) or 3 (Oscar+: matched, tags/answer
            polluted, caption/question polluted).
        max_caption_length: width of the caption slot in captioning (`max_seq_a_length`, 40); the
            object tags start at this position id, both in training and in decoding.
        max_tag_length: number of tag tokens (with their `[SEP]`) after the caption slot (30).
        caption_loss: "masked" (the original: predict masked caption tokens under the causal
            caption mask) or "shifted" (next-token prediction over the caption slot).
        label_smoothing: label smoothing of the caption loss, spread as eps/(V-1) off target.
        drop_worst_ratio: fraction of the highest per-token caption losses dropped ...
        drop_worst_after: ... once this many training steps have run (VinVL: 0.2 after 20000); the
            caption recipe counts the steps and passes `drop_worst_ratio=0` to the model before.
        mask_token_id, bos_token_id, eos_token_id: `[MASK]`, `[CLS]`, `[SEP]`. Caption decoding
            starts from `[CLS]`, reads the prediction at a trailing `[MASK]` and stops at `[SEP]`.
        tie_word_embeddings: tie the MLM/caption decoder to the word embeddings.
        use_cache: let captioning forwards without labels (and `generate`) keep a key/value cache.
        skip_padding: let the heads that read only the pooled `[CLS]` output (classification,
            retrieval, NLVR2) drop the masked positions of a 2-D attention mask before the encoder,
            packing each row to the longest row of the batch. Masked keys get exactly zero
            attention weight, so the logits are unchanged; VQA inputs are mostly padding, so
            this skips much of the work. Set `False` for fixed shapes (e.g. CUDA graphs).
    """

    model_type = "oscar"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        img_feature_dim: int = 2054,
        img_feature_type: str = "faster_r-cnn",
        use_img_layernorm: bool = False,
        img_layer_norm_eps: float = 1e-12,
        max_img_seq_length: int = 50,
        classifier: Literal["linear", "mlp"] = "linear",
        cls_hidden_scale: int = 2,
        classifier_dropout: float | None = None,
        loss_type: Literal["ce", "bce", "kl", "mse"] = "ce",
        num_choice: int = 2,
        pair_classifier_layernorm: bool = False,
        num_contrast_classes: int = 3,
        max_caption_length: int = 40,
        max_tag_length: int = 30,
        caption_loss: Literal["masked", "shifted"] = "masked",
        label_smoothing: float = 0.0,
        drop_worst_ratio: float = 0.0,
        drop_worst_after: int = 0,
        mask_token_id: int = 103,
        bos_token_id: int = 101,
        eos_token_id: int = 102,
        tie_word_embeddings: bool = True,
        skip_padding: bool = True,
        use_cache: bool = True,
        **kwargs: Any,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.img_feature_dim = img_feature_dim
        self.img_feature_type = img_feature_type
        self.use_img_layernorm = bool(use_img_layernorm)
        self.img_layer_norm_eps = img_layer_norm_eps
        self.max_img_seq_length = max_img_seq_length
        self.classifier = classifier
        self.cls_hidden_scale = cls_hidden_scale
        self.classifier_dropout = classifier_dropout
        self.loss_type = loss_type
        self.num_choice = num_choice
        self.pair_classifier_layernorm = bool(pair_classifier_layernorm)
        self.num_contrast_classes = num_contrast_classes
        self.max_caption_length = max_caption_length
        self.max_tag_length = max_tag_length
        self.caption_loss = caption_loss
        self.label_smoothing = label_smoothing
        self.drop_worst_ratio = drop_worst_ratio
        self.drop_worst_after = drop_worst_after
        self.mask_token_id = mask_token_id
        self.skip_padding = bool(skip_padding)
        self.use_cache = bool(use_cache)
        # Set explicitly: transformers 5 gives custom configs no default and would leave the
        # decoder untied.
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self._validate()

    def validate(self) -> None:
        """Checks every field a model is built from; raises `ValueError` naming the field.

        `__init__` runs it, so `OscarConfig(...)`, `from_dict` and `from_pretrained` refuse a config
        that cannot make a model. transformers 5 also calls `validate()` before `save_pretrained`
        writes, which catches fields changed after construction (its own checks run first).
        """
        parent_validate = getattr(super(), "validate", None)  # transformers 5 (`@strict` configs)
        if parent_validate is not None:
            parent_validate()
        self._validate()

    def _validate(self) -> None:
        def fail(field: str, value: Any, expected: str, fix: str = "") -> None:
            raise ValueError(
                f"OscarConfig.{field}={value!r} is invalid: expected {expected}.{' ' + fix if fix else ''}"
            )

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        # Sizes of the modules: a zero or negative size builds no layer (or a layer torch refuses).
        for field, minimum in (
            ("vocab_size", 1),
            ("hidden_size", 1),
            ("num_hidden_layers", 1),
            ("num_attention_heads", 1),
            ("intermediate_size", 1),
            ("max_position_embeddings", 1),
            ("type_vocab_size", 1),
            ("img_feature_dim", 1),
            ("max_img_seq_length", 1),
            ("max_caption_length", 2),
            ("max_tag_length", 0),
            ("cls_hidden_scale", 1),
            ("num_choice", 1),
            ("num_labels", 1),
            ("drop_worst_after", 0),
        ):
            value = getattr(self, field)
            if not is_int(value) or value < minimum:
                fail(field, value, f"an integer >= {minimum}", _SIZE_HINTS.get(field, ""))
        if self.hidden_size % self.num_attention_heads != 0:
            fail(
                "hidden_size",
                self.hidden_size,
                f"a multiple of num_attention_heads={self.num_attention_heads}",
                "Each head takes hidden_size / num_attention_heads dims (BERT-base: 768 / 12).",
            )
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, field)
            if value is None and field == "classifier_dropout":
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                fail(field, value, "a probability in [0, 1)" + (" or None" if field == "classifier_dropout" else ""))
        for field in ("layer_norm_eps", "img_layer_norm_eps"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                fail(field, value, "a positive epsilon (BERT: 1e-12)")
        if not isinstance(self.initializer_range, (int, float)) or not self.initializer_range >= 0:
            fail("initializer_range", self.initializer_range, "a non-negative standard deviation (BERT: 0.02)")
        if isinstance(self.hidden_act, str) and self.hidden_act not in ACT2FN:
            fail("hidden_act", self.hidden_act, f"one of transformers' activations, e.g. {sorted(ACT2FN)[:6]}")
        if self.classifier not in CLASSIFIER_TYPES:
            fail("classifier", self.classifier, f"one of {CLASSIFIER_TYPES}")
        if self.loss_type not in LOSS_TYPES:
            fail("loss_type", self.loss_type, f"one of {LOSS_TYPES} (original 'xe'/'sfmx' mean 'ce')")
        if self.caption_loss not in CAPTION_LOSS_TYPES:
            fail("caption_loss", self.caption_loss, f"one of {CAPTION_LOSS_TYPES}")
        if self.num_contrast_classes not in (2, 3):
            fail("num_contrast_classes", self.num_contrast_classes, "2 (Oscar) or 3 (Oscar+)")
        if not isinstance(self.label_smoothing, (int, float)) or not 0.0 <= self.label_smoothing < 1.0:
            fail("label_smoothing", self.label_smoothing, "a value in [0, 1)")
        if not isinstance(self.drop_worst_ratio, (int, float)) or not 0.0 <= self.drop_worst_ratio < 1.0:
            fail("drop_worst_ratio", self.drop_worst_ratio, "a value in [0, 1)")
        if self.max_caption_length + self.max_tag_length > self.max_position_embeddings:
            fail(
                "max_caption_length",
                self.max_caption_length,
                f"max_caption_length + max_tag_length <= max_position_embeddings={self.max_position_embeddings}",
                f"The tags take positions {self.max_caption_length}.."
                f"{self.max_caption_length + self.max_tag_length - 1}; lower one of them or raise "
                "max_position_embeddings.",
            )
        # Special token ids are checked where they are used (the word embeddings, generate()): like
        # transformers, a config may name ids outside its vocabulary until a model is built from it.

    @classmethod
    def from_original(cls, path: str | os.PathLike, **overrides: Any) -> OscarConfig:
        """Read the `config.json` of an original Oscar / VinVL checkpoint.

        Those files say `"model_type": "bert"` and carry the Oscar fields next to BERT's, so
        `AutoConfig` would load them as a plain `BertConfig` and lose the Oscar part.

        Args:
            path: the checkpoint folder or its `config.json`.
            overrides: fields to set on top of what the file says (e.g. `max_caption_length`).

        Example:
            >>> config = OscarConfig.from_original("checkpoint-29-66420")  # doctest: +SKIP
        """
        path = os.fspath(path)
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"No config.json at {file!r}: pass an original Oscar checkpoint folder.")
        with open(file, encoding="utf-8") as handle:
            raw = json.load(handle)
        known = {
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "hidden_act",
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "max_position_embeddings",
            "type_vocab_size",
            "initializer_range",
            "layer_norm_eps",
            "img_feature_dim",
            "img_feature_type",
            "img_layer_norm_eps",
            "classifier",
            "cls_hidden_scale",
            "num_choice",
            "num_contrast_classes",
            "label_smoothing",
            "drop_worst_ratio",
            "drop_worst_after",
            "num_labels",
        }
        kwargs: dict[str, Any] = {key: raw[key] for key in known if key in raw}
        if str(raw.get("img_feature_type", "")).startswith("dis_code"):
            raise ValueError(
                f"img_feature_type={raw['img_feature_type']!r} (VQ-VAE discrete codes) is not supported: "
                "no released Oscar checkpoint uses it."
            )
        # Absent means off: most Oscar v1 checkpoints predate the region LayerNorm.
        kwargs["use_img_layernorm"] = bool(raw.get("use_img_layernorm", False))
        # The original NLVR2 pair MLP inserts a LayerNorm exactly when use_img_layernorm is on.
        kwargs["pair_classifier_layernorm"] = kwargs["use_img_layernorm"]
        if "loss_type" in raw:
            loss = str(raw["loss_type"]).lower()
            if loss not in _ORIGINAL_LOSS_ALIASES:
                raise ValueError(
                    f"Unknown original loss_type {loss!r}: expected one of {sorted(_ORIGINAL_LOSS_ALIASES)}"
                )
            kwargs["loss_type"] = _ORIGINAL_LOSS_ALIASES[loss]
        if "tie_weights" in raw:
            kwargs["tie_word_embeddings"] = bool(raw["tie_weights"])
        kwargs.update(overrides)
        return cls(**kwargs)


__all__ = ["OscarConfig"]
