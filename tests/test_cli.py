"""The `oscar-hf` command: every sub-command's help (with an example), a real run and one bad input each.

The photo commands run on tiny exported folders (random weights, a random YOLOS detector in
`detector/`) over scikit-image photos, so they check plumbing and formats, not caption quality.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from support import FIXTURES_ROOT, isolated_env
from support.folders import ANSWERS, export_tiny_folders, sample_photos, tiny_detector

from oscar_hf.processors.cli import main


COMMANDS = ("caption", "vqa", "match", "convert", "convert-detector", "detect", "build")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return export_tiny_folders(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return sample_photos(tmp_path_factory.mktemp("photos"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- help ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and "usage:" in out
    assert f"oscar-hf {command}" in out.split("example:")[-1] or "python -m oscar_hf" in out.split("example:")[-1]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(command in out for command in COMMANDS) and "examples:" in out
    assert main([]) == 2  # no command: the help, and a usage error code


def test_console_script_and_module_entry_points(tmp_path):
    """`oscar-hf` (console_scripts) and `python -m oscar_hf` are the same command."""
    script = shutil.which("oscar-hf", path=str(__import__("pathlib").Path(sys.executable).parent))
    if script is None:
        pytest.skip("the oscar-hf console script is not installed (pip install -e . creates it)")
    env = isolated_env(tmp_path)
    for argv in ([script, "caption", "--help"], [sys.executable, "-m", "oscar_hf", "vqa", "--help"]):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "example:" in done.stdout


# -- caption ---------------------------------------------------------------------------------------


def test_caption_text_json_and_visualisation(folders, photos, tmp_path, capsys):
    model = folders["oscar-captioning"]
    code, out, _ = run(capsys, "caption", photos[0], "--model", model, "--max-length", 6)
    assert code == 0 and out.startswith(f"{photos[0]}: ")
    caption = out.strip().split(": ", 1)[1]
    target = tmp_path / "drawn.png"
    code, out, _ = run(
        capsys, "caption", *photos[:2], "--model", model, "--max-length", 6, "--output", "json",
        "--save-visualization", target,
    )  # fmt: skip
    assert code == 0
    results = json.loads(out)
    assert [r["image"] for r in results] == [str(p) for p in photos[:2]]
    assert results[0]["caption"] == caption  # the same photo, the same caption in both formats
    assert 3 <= len(results[0]["regions"]) <= 8  # the tiny detector keeps 3..8 boxes
    assert set(results[0]["regions"][0]) == {"tag", "score", "box"}
    for result, photo in zip(results, photos):
        drawn = Image.open(result["visualization"])
        width, height = Image.open(photo).size
        assert drawn.width == width and drawn.height > height  # the caption band below the photo
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"drawn-{p.stem}.png" for p in photos[:2])


def test_caption_bad_inputs(folders, photos, tmp_path, capsys):
    code, _, err = run(capsys, "caption", tmp_path / "missing.jpg", "--model", folders["oscar-captioning"])
    assert code == 2 and "IMAGE" in err and "missing.jpg" in err
    code, _, err = run(capsys, "caption", photos[0], "--model", folders["oscar-vqa"])
    assert code == 2 and "oscar-vqa" in err and "caption" in err
    code, _, err = run(capsys, "caption", photos[0], "--model", tmp_path / "no-model")
    assert code == 2 and "--model" in err


# -- vqa / match -----------------------------------------------------------------------------------


def test_vqa(folders, photos, tmp_path, capsys):
    code, out, _ = run(
        capsys, "vqa", photos[2], "--question", "what animal is this?", "--model", folders["oscar-vqa"],
        "--top-k", 3, "--output", "json", "--save-visualization", tmp_path / "vqa.png",
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    assert len(result["answers"]) == 3 and all(a["answer"] in ANSWERS for a in result["answers"])
    assert (tmp_path / "vqa.png").is_file()
    code, out, _ = run(capsys, "vqa", photos[2], "--question", "is it red?", "--model", folders["oscar-vqa"])
    assert code == 0 and len(out.strip().splitlines()) == 5


def test_vqa_bad_input(folders, photos, capsys):
    code, _, err = run(capsys, "vqa", photos[2], "--question", "  ", "--model", folders["oscar-vqa"])
    assert code == 2 and "--question" in err


def test_match(folders, photos, capsys):
    texts = ["a cat lying down", "a cup of coffee"]
    code, out, _ = run(
        capsys, "match", photos[2], "--texts", *texts, "--model", folders["oscar-retrieval"], "--output", "json"
    )
    assert code == 0
    ranking = json.loads(out)["ranking"]
    assert sorted(r["text"] for r in ranking) == sorted(texts)
    assert ranking[0]["score"] >= ranking[1]["score"]


def test_match_bad_input(folders, photos, capsys):
    code, _, err = run(capsys, "match", photos[2], "--texts", " ", "--model", folders["oscar-retrieval"])
    assert code == 2 and "--texts" in err


# -- delegated commands ----------------------------------------------------------------------------


def test_convert_with_detector(tmp_path, capsys):
    detector = tiny_detector()
    detector.model.save_pretrained(tmp_path / "detector")
    detector.image_processor.save_pretrained(tmp_path / "detector")
    source = FIXTURES_ROOT / "oscar_original" / "caption_decode"
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(source, checkpoint)
    shutil.copyfile(FIXTURES_ROOT / "oscar_original" / "vocab.txt", checkpoint / "vocab.txt")
    out = tmp_path / "converted"
    code, stdout, _ = run(
        capsys, "convert", checkpoint, out, "--task", "captioning", "--detector", tmp_path / "detector"
    )
    assert code == 0 and "Wrote" in stdout
    assert (out / "detector" / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert json.loads((out / "processor_config.json").read_text())["detector_name_or_path"] == "detector"


def test_convert_bad_input(tmp_path, capsys):
    code, _, err = run(capsys, "convert", tmp_path / "nothing", tmp_path / "out", "--task", "captioning")
    assert code == 2 and "pytorch_model.bin" in err
    assert not (tmp_path / "out").exists()  # nothing half-made


def test_convert_detector_bad_input(tmp_path, capsys):
    code, _, err = run(capsys, "convert-detector", tmp_path / "vinvl_vg_x152c4.pth", tmp_path / "out")
    assert code == 2 and "vinvl_vg_x152c4.pth" in err


def test_convert_detector(tmp_path, capsys):
    fixtures = FIXTURES_ROOT / "vinvl_detector"
    checkpoints = sorted(fixtures.glob("**/*.pth"))
    if not checkpoints:
        pytest.skip(f"no original detector checkpoint (*.pth) among the fixtures in {fixtures}")
    code, out, _ = run(capsys, "convert-detector", checkpoints[0], tmp_path / "detector")
    assert code == 0 and (tmp_path / "detector" / "config.json").is_file()


def test_detect_and_build_with_a_builtin_adapter(folders, photos, tmp_path, capsys):
    kwargs = json.dumps({"name_or_path": str(folders["oscar-captioning"] / "detector"), "min_boxes": 2})
    code, out, err = run(
        capsys, "detect", "--images", photos[0].parent, "--detector", "transformers", "--detector-kwargs", kwargs,
        "--feature-dim", 38, "--out", tmp_path / "regions", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out[out.index("{") :])["out"] == str(tmp_path / "regions")
    karpathy = {
        "images": [
            {"filename": p.name, "split": "train", "sentences": [{"raw": f"photo {p.stem}", "sentid": i}]}
            for i, p in enumerate(photos)
        ]
    }
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    code, out, err = run(
        capsys, "build", "caption", "--regions", tmp_path / "regions", "--annotations", tmp_path / "dataset_coco.json",
        "--feature-dim", 38, "--out", tmp_path / "caption", "--no-progress",
    )  # fmt: skip
    assert code == 0, err


def test_detect_bad_input(tmp_path, capsys):
    code, _, err = run(
        capsys, "detect", "--images", tmp_path / "no-photos", "--detector", "transformers", "--out", tmp_path / "r"
    )
    assert code == 2 and "no-photos" in err


def test_build_bad_input(tmp_path, capsys):
    code, _, err = run(capsys, "build", "vqa", "--features", tmp_path / "f.tsv", "--out", tmp_path / "vqa")
    assert code == 2 and "--annotations" in err


def test_loading_a_processor_is_quiet(folders, tmp_path):
    """No deprecation or false 'torchvision backend is not available' warning on a processor load.

    In a fresh interpreter: transformers warns once per process, so an earlier load here would hide it.
    """
    script = (
        "import sys\nfrom transformers import AutoProcessor\nfrom oscar_hf.processors import OscarProcessor\n"
        "OscarProcessor.from_pretrained(sys.argv[1])\nAutoProcessor.from_pretrained(sys.argv[2])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(folders["oscar-vqa"]), str(folders["oscar-captioning"])],
        capture_output=True, text=True, env=isolated_env(tmp_path), timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deprecated" not in done.stderr and "backend is not available" not in done.stderr, done.stderr
