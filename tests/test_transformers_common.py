"""transformers' own `ModelTesterMixin` and `ConfigTester`, applied to every Oscar class.

The mixins come from the transformers source distribution of the installed version, fetched into
`.cache/` (never copied into the repository) by `support.transformers_tests`, which also provides
stand-ins for the `generation/`, `exporters/` and `utils/` test modules the sdist lacks (generation
is covered by `test_generation.py`). Without the package index the module skips, saying so.

Every skip below states why the test cannot apply to Oscar.
"""

from __future__ import annotations

import contextlib
import unittest
import warnings

import pytest
import torch
from support import tiny_config
from support.transformers_tests import sdist_test_modules


pytestmark = pytest.mark.slow

modeling_common, configuration_common = sdist_test_modules("test_modeling_common.py", "test_configuration_common.py")
ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester

from oscar_hf import (  # noqa: E402
    OscarConfig,
    OscarForImageCaptioning,
    OscarForImageTextRetrieval,
    OscarForNLVR2,
    OscarForPreTraining,
    OscarForSequenceClassification,
    OscarModel,
)


class OscarModelTester:
    """Tiny configs and inputs in the layout the mixins expect (text tokens, then regions)."""

    def __init__(self, parent, batch_size: int = 3, seq_length: int = 7, num_regions: int = 4):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length  # text tokens
        self.num_regions = num_regions
        # Hidden states and attentions cover the text and the regions.
        self.encoder_seq_length = seq_length + num_regions
        self.key_length = seq_length + num_regions
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.vocab_size = 99
        self.type_vocab_size = 2
        self.num_labels = 2  # OscarForImageTextRetrieval is 2-way (no match / match)
        self.num_choice = 2
        self.is_training = True

    def get_config(self, **overrides) -> OscarConfig:
        return tiny_config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            max_caption_length=5,
            num_labels=self.num_labels,
            **overrides,
        )

    def prepare_config_and_inputs_for_common(self) -> tuple[OscarConfig, dict]:
        g = torch.Generator().manual_seed(0)
        input_ids = torch.randint(4, self.vocab_size, (self.batch_size, self.seq_length), generator=g)
        input_ids[:, 0] = 1
        attention_mask = torch.ones(self.batch_size, self.seq_length, dtype=torch.long)
        attention_mask[0, -2:] = 0
        token_type_ids = (torch.arange(self.seq_length) >= self.seq_length // 2).long().expand(self.batch_size, -1)
        config = self.get_config()
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids.clone(),
            "img_feats": torch.randn(self.batch_size, self.num_regions, config.img_feature_dim, generator=g),
        }
        return config, inputs


class OscarTransformersCommonTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (
        OscarModel,
        OscarForPreTraining,
        OscarForSequenceClassification,
        OscarForImageTextRetrieval,
        OscarForNLVR2,
        OscarForImageCaptioning,
    )
    test_resize_embeddings = True
    test_resize_position_embeddings = False  # BERT's learned positions; transformers has no resize for them
    # The captioning head reads token states only: the trunk's pooler (which original caption
    # checkpoints carry) gets no gradient there.
    test_all_params_have_gradient = False

    def setUp(self):
        self.model_tester = OscarModelTester(self)
        self.config_tester = ConfigTester(self, config_class=OscarConfig, hidden_size=36)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs_dict.items()}
        batch, length = self.model_tester.batch_size, self.model_tester.seq_length
        if model_class is OscarForNLVR2:  # one (text, image) pair per choice
            inputs = {
                k: v.unsqueeze(1).expand(-1, 2, *v.shape[1:]).contiguous() if torch.is_tensor(v) else v
                for k, v in inputs.items()
            }
        if not return_labels:
            return inputs
        if model_class in (OscarForSequenceClassification, OscarForImageTextRetrieval, OscarForNLVR2):
            inputs["labels"] = torch.zeros(batch, dtype=torch.long)
        elif model_class is OscarForPreTraining:
            inputs["labels"] = torch.zeros(batch, length, dtype=torch.long)
            inputs["contrastive_labels"] = torch.zeros(batch, dtype=torch.long)
        elif model_class is OscarForImageCaptioning:
            inputs["labels"] = torch.zeros(batch, length, dtype=torch.long)
        return inputs

    @contextlib.contextmanager
    def _heads_only(self):
        classes = self.all_model_classes
        self.all_model_classes = tuple(c for c in classes if c is not OscarModel)
        try:
            yield
        finally:
            self.all_model_classes = classes

    def test_training(self):
        # The mixin leaves out the base models of its own MODEL_MAPPING; OscarModel is the trunk and
        # has no loss either (registered Auto classes are not in that built-in table).
        with self._heads_only():
            super().test_training()

    def test_training_gradient_checkpointing(self):
        with self._heads_only():  # as test_training: the trunk has no loss
            super().test_training_gradient_checkpointing()

    def test_training_gradient_checkpointing_use_reentrant_false(self):
        with self._heads_only():  # as test_training: the trunk has no loss
            super().test_training_gradient_checkpointing_use_reentrant_false()

    def test_training_gradient_checkpointing_use_reentrant_true(self):
        with self._heads_only():  # as test_training: the trunk has no loss
            super().test_training_gradient_checkpointing_use_reentrant_true()

    # The sdist ships no GenerationTesterMixin (its generation/ tests are missing), so generation is
    # covered by test_generation.py; the mixin asks testers without it to declare no generative classes.
    all_generative_model_classes = ()

    def test_bc_cache_name_forward(self):
        # The project's pytest configuration ignores FutureWarning; this test reads one.
        with warnings.catch_warnings():
            warnings.simplefilter("always", FutureWarning)
            super().test_bc_cache_name_forward()

    def test_config(self):
        self.config_tester.run_common_tests()


def _without_pooling_heads(name: str):
    """The mixin's test `name`, run on the classes that do not pool `[CLS]`."""

    def test(self):
        classes = self.all_model_classes
        self.all_model_classes = (OscarModel, OscarForImageCaptioning)
        try:
            getattr(super(OscarTransformersCommonTest, self), name)()
        finally:
            self.all_model_classes = classes

    test.__name__ = name
    return test


# Left padding masks position 0, where the pooling heads (classification, retrieval, NLVR2,
# pre-training) read `[CLS]`: they refuse such rows with a ValueError instead of pooling padding.
# The trunk and the captioning head run every left-padding case; right padding runs on all classes.
for _name in [n for n in dir(ModelTesterMixin) if n.startswith("test_eager_matches_sdpa") and "pad_left" in n]:
    setattr(OscarTransformersCommonTest, _name, _without_pooling_heads(_name))
