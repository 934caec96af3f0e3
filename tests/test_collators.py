"""Collators: masking rates and pollution frequencies over many samples, reproducibility, errors.

Tolerances are about five standard deviations of the measured frequency at these sample sizes, so
the tests fail on a wrong rate, not on chance.
"""

from __future__ import annotations

import random
import shutil

import pytest
import torch
from support import original, tiny_config
from transformers import BertTokenizerFast

from oscar_hf.processors import (
    OscarCaptioningCollator,
    OscarPretrainingCollator,
    OscarProcessor,
    OscarRegionFeatureProcessor,
)


WORDS = [
    "dog",
    "cat",
    "man",
    "woman",
    "couch",
    "table",
    "tree",
    "car",
    "bus",
    "sky",
    "grass",
    "field",
    "wave",
    "water",
    "pillow",
    "lamp",
    "window",
    "horse",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, fixture_dir):
    folder = tmp_path_factory.mktemp("vocab")
    shutil.copyfile(fixture_dir / "vocab.txt", folder / "vocab.txt")
    return BertTokenizerFast.from_pretrained(folder, do_lower_case=True)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return OscarProcessor(
        OscarRegionFeatureProcessor(max_img_seq_length=5), tokenizer, max_seq_length=35, max_caption_length=20
    )


def make_examples(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "image_id": f"img{i}",
            "text_a": " ".join(rng.choices(WORDS, k=rng.randint(4, 12))),
            "text_b": [rng.choice(WORDS) for _ in range(rng.randint(2, 8))],
            "img_feats": torch.rand(rng.randint(1, 5), 2054),
        }
        for i in range(count)
    ]


def collate_many(collator, examples: list[dict], batch_size: int = 50) -> list:
    return [collator(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]


@pytest.mark.parametrize(("classes", "expected"), [(3, [0.5, 0.25, 0.25]), (2, [0.5, 0.5])])
def test_pollution_label_frequencies(processor, classes, expected):
    examples = make_examples(6000)
    collator = OscarPretrainingCollator(
        processor, num_contrast_classes=classes, generator=torch.Generator().manual_seed(1)
    )
    labels = []
    for start in range(0, len(examples), 100):
        chunk = examples[start : start + 100]
        texts_a, texts_b, chunk_labels = collator.pollute(chunk)
        for example, text_a, text_b, label in zip(chunk, texts_a, texts_b, chunk_labels):
            original_b = " ".join(example["text_b"])
            # The label says exactly which side was replaced (0 matched, 1 text_b, 2 text_a).
            assert (text_a == example["text_a"]) == (label != 2)
            if label == 1:
                assert text_b != original_b or text_b in {" ".join(e["text_b"]) for e in chunk if e is not example}
            else:
                assert text_b == original_b
        labels += chunk_labels
    frequencies = torch.bincount(torch.tensor(labels), minlength=classes).float() / len(labels)
    print(f"pollution frequencies ({classes}-way, n={len(labels)}): {frequencies.tolist()}")
    torch.testing.assert_close(frequencies, torch.tensor(expected), atol=0.035, rtol=0)


def test_pretraining_masking_rates(processor, tokenizer):
    examples = make_examples(3000, seed=2)
    collator = OscarPretrainingCollator(processor, generator=torch.Generator().manual_seed(3))
    candidates = masked = to_mask = unchanged = 0
    for batch in collate_many(collator, examples):
        labels = batch["labels"]
        targets = labels != -100
        assert labels.shape == batch["input_ids"].shape
        # Special tokens and padding are never targets.
        special = torch.isin(labels, torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id, 0]))
        assert not special.any()
        candidates += int(
            (batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], torch.tensor([101, 102]))).sum()
        )
        masked += int(targets.sum())
        to_mask += int((batch["input_ids"][targets] == tokenizer.mask_token_id).sum())
        unchanged += int((batch["input_ids"][targets] == labels[targets]).sum())
    rate, mask_share, keep_share = masked / candidates, to_mask / masked, unchanged / masked
    random_share = 1 - mask_share - keep_share
    print(
        f"MLM: {masked}/{candidates} tokens = {rate:.4f}; [MASK] {mask_share:.3f} random {random_share:.3f} "
        f"unchanged {keep_share:.3f}"
    )
    assert abs(rate - 0.15) < 0.01
    assert abs(mask_share - 0.8) < 0.03 and abs(keep_share - 0.1) < 0.025 and abs(random_share - 0.1) < 0.025


def test_pretraining_batch_shapes_original_labels_and_model(processor):
    from oscar_hf import OscarForPreTraining

    examples = make_examples(4)
    batch = OscarPretrainingCollator(processor, generator=torch.Generator().manual_seed(0))(examples)
    labels = original.pretraining_labels(batch)
    assert labels.shape == (4, 35 + 5) and set(labels[:, 35:].unique().tolist()) == {-1}
    assert batch["contrastive_labels"].dtype == torch.long
    assert set(batch) == {
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "img_feats",
        "img_attention_mask",
        "labels",
        "contrastive_labels",
    }
    config = tiny_config(vocab_size=30522, img_feature_dim=2054, max_img_seq_length=5, num_contrast_classes=3)
    out = OscarForPreTraining(config)(**batch)
    assert out.loss.isfinite()


def test_collators_are_reproducible_from_the_seed(processor):
    examples = make_examples(20)

    def run(seed: int):
        return OscarPretrainingCollator(processor, generator=torch.Generator().manual_seed(seed))(examples)

    first, again, other = run(7), run(7), run(8)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["input_ids"], other["input_ids"])
    captions = OscarCaptioningCollator(processor, generator=torch.Generator().manual_seed(7))
    repeat = OscarCaptioningCollator(processor, generator=torch.Generator().manual_seed(7))
    assert torch.equal(captions(examples)["input_ids"], repeat(examples)["input_ids"])


def test_caption_masking_counts_and_rates(processor, tokenizer):
    examples = make_examples(3000, seed=4)
    collator = OscarCaptioningCollator(processor, generator=torch.Generator().manual_seed(5))
    masked = to_mask = unchanged = sep_targets = 0
    for batch in collate_many(collator, examples):
        labels, slot = batch["labels"], processor.max_caption_length
        targets = labels != -100
        assert not targets[:, 0].any() and not targets[:, slot:].any()  # never [CLS], never the tags
        lengths = batch["attention_mask"][:, :slot].sum(1)
        expected = [min(max(round(0.15 * int(n)), 1), 3) for n in lengths]
        assert targets.sum(1).tolist() == expected
        masked += int(targets.sum())
        to_mask += int((batch["input_ids"][targets] == tokenizer.mask_token_id).sum())
        unchanged += int((batch["input_ids"][targets] == labels[targets]).sum())
        sep_targets += int((labels == tokenizer.sep_token_id).sum())
    mask_share, keep_share = to_mask / masked, unchanged / masked
    print(
        f"caption targets {masked}: [MASK] {mask_share:.3f} unchanged {keep_share:.3f} "
        f"random {1 - mask_share - keep_share:.3f}; [SEP] targets {sep_targets}"
    )
    assert abs(mask_share - 0.8) < 0.035 and abs(keep_share - 0.1) < 0.03
    assert sep_targets > 0  # the closing [SEP] is a candidate, so the model learns to stop


def test_caption_batch_runs_through_the_model(processor):
    from oscar_hf import OscarForImageCaptioning

    batch = OscarCaptioningCollator(processor, generator=torch.Generator().manual_seed(0))(make_examples(3))
    config = tiny_config(
        vocab_size=30522, img_feature_dim=2054, max_img_seq_length=5, max_caption_length=20, max_position_embeddings=64
    )
    assert OscarForImageCaptioning(config)(**batch).loss.isfinite()


def test_collator_errors(processor):
    collator = OscarPretrainingCollator(processor, generator=torch.Generator().manual_seed(0))
    same_image = [dict(e, image_id="one") for e in make_examples(8)]
    with pytest.raises(ValueError, match="no example from another image"):
        for _ in range(10):  # some draws keep the match; a polluting one must fail
            collator(same_image)
    batch = OscarPretrainingCollator(
        processor, negatives=make_examples(5, seed=9), generator=torch.Generator().manual_seed(0)
    )(make_examples(1))
    assert batch["input_ids"].shape == (1, 35)
    with pytest.raises(ValueError, match="num_contrast_classes"):
        OscarPretrainingCollator(processor, num_contrast_classes=4)
    with pytest.raises(ValueError, match="text_a_pollution_probability=0"):
        OscarPretrainingCollator(processor, num_contrast_classes=2, text_a_pollution_probability=0.25)
    with pytest.raises(ValueError, match="none of the keys"):
        collator([{"tags": "dog", "img_feats": torch.rand(1, 2054)}])
    with pytest.raises(ValueError, match="empty list"):
        OscarCaptioningCollator(processor)([])
