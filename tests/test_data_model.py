"""Built datasets feed the processor, the collators and a model forward as they are (no glue code)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import load_dataset
from support import tiny_config
from support.data import VOCAB, VQA_VOCAB, coco_world, make_image, write_corpus, write_regions, write_vqa

from oscar_hf.data import (
    CaptionBuilder,
    NLVR2Builder,
    PretrainCorpusBuilder,
    TsvRegionSource,
    VQABuilder,
    build_dataset,
    read_corpus_yaml,
)


processors = pytest.importorskip("oscar_hf.processors", reason="the processor package is not importable yet")
oscar = pytest.importorskip("oscar_hf")

WORDS = "question a caption of image is the sky blue man riding horse bowl fruit sunset over sea two dogs no cat"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("tok")
    tag_words = {word for tag in VOCAB for word in tag.split()}
    vocab = SPECIAL + sorted(set(WORDS.split()) | tag_words | {str(n) for n in range(200)} | {"?", "."})
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True)
    regions = processors.OscarRegionFeatureProcessor(max_img_seq_length=10)
    return processors.OscarProcessor(regions, tokenizer, max_seq_length=32, max_caption_length=12, max_tag_length=8)


def model_config(processor, **overrides):
    return tiny_config(
        vocab_size=len(processor.tokenizer),
        img_feature_dim=2054,
        mask_token_id=processor.tokenizer.mask_token_id,
        bos_token_id=processor.tokenizer.cls_token_id,
        eos_token_id=processor.tokenizer.sep_token_id,
        pad_token_id=processor.tokenizer.pad_token_id,
        **overrides,
    )


@pytest.fixture
def world(tmp_path):
    return coco_world(tmp_path / "src")


@pytest.fixture
def regions(world):
    return TsvRegionSource(world.root / "train.feature.tsv", labels=world.root / "train.label.tsv")


def test_vqa_rows_through_processor_and_model(world, regions, processor, tmp_path):
    questions, annotations = write_vqa(world.root)
    builder = VQABuilder(regions, {"train": (questions, annotations)}, answer_vocab=VQA_VOCAB)
    build_dataset(builder, tmp_path / "vqa", progress=False)
    batch = load_dataset(str(tmp_path / "vqa"), split="train")[:3]
    inputs = processor(
        batch["question"], tags=batch["tags"], region_features=batch["img_feats"], labels=batch["labels"]
    )
    assert inputs["img_feats"].shape == (3, 10, 2054) and inputs["labels"].shape == (3, len(VQA_VOCAB))
    model = oscar.OscarForSequenceClassification(model_config(processor, num_labels=len(VQA_VOCAB), loss_type="bce"))
    out = model(**inputs)
    assert out.logits.shape == (3, len(VQA_VOCAB)) and torch.isfinite(out.loss)


def test_caption_rows_through_collator_and_model(world, regions, processor, tmp_path):
    build_dataset(CaptionBuilder(regions, [world.root / "dataset_coco.json"]), tmp_path / "cap", progress=False)
    rows = list(load_dataset(str(tmp_path / "cap"), split="train"))
    collator = processors.OscarCaptioningCollator(processor, generator=torch.Generator().manual_seed(0))
    batch = collator(rows)
    model = oscar.OscarForImageCaptioning(model_config(processor))
    out = model(**batch)
    assert torch.isfinite(out.loss)


def test_pretrain_rows_through_collator_and_model(processor, tmp_path):
    write_corpus(tmp_path / "src", np.random.default_rng(9))
    builder = PretrainCorpusBuilder(read_corpus_yaml(tmp_path / "src" / "corpus.yaml"))
    build_dataset(builder, tmp_path / "pt", progress=False)
    rows = list(load_dataset(str(tmp_path / "pt"), split="train"))
    collator = processors.OscarPretrainingCollator(processor, generator=torch.Generator().manual_seed(0))
    batch = collator(rows)
    model = oscar.OscarForPreTraining(model_config(processor, num_contrast_classes=3))
    out = model(**batch)
    assert torch.isfinite(out.loss)


def test_nlvr2_rows_through_processor_and_model(processor, tmp_path):
    rng = np.random.default_rng(8)
    images = [make_image(rng, key, 2) for key in ("dev-1-0-img0", "dev-1-0-img1")]
    source = TsvRegionSource(**write_regions(tmp_path, images))
    (tmp_path / "dev.json").write_text('{"identifier": "dev-1-0-0", "sentence": "two dogs", "label": "True"}\n')
    build_dataset(NLVR2Builder(source, {"dev": tmp_path / "dev.json"}), tmp_path / "nlvr2", progress=False)
    batch = load_dataset(str(tmp_path / "nlvr2"), split="dev")[:1]
    inputs = processor.nlvr2(
        batch["sentence"],
        tags=list(zip(batch["left_tags"], batch["right_tags"])),
        region_features=list(zip(batch["left_img_feats"], batch["right_img_feats"])),
        labels=batch["labels"],
    )
    model = oscar.OscarForNLVR2(model_config(processor, num_labels=2, classifier="mlp"))
    out = model(**inputs)
    assert out.logits.shape == (1, 2) and torch.isfinite(out.loss)
