"""What a training run tells its user, as transformers' `run_*_no_trainer.py` examples do.

One tiny captioning run in a subprocess (its console is part of what is tested): the start-of-run
summary, `train_log.jsonl` every `--logging_steps`, the evaluation progress bar and rounded metrics,
no warnings (none per checkpoint save), the model card (split, description, rounded numbers), and a
`best/` folder that loads like `final/`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from support import BLOCK_PACKAGE, REPO_ROOT, isolated_env
from support.recipes import tiny_overrides, tokenizer_folder, write_caption_data


pytestmark = pytest.mark.slow

STEPS, LOGGING_STEPS, BATCH = 5, 2, 2
WARNING_LINE = re.compile(r"warn|removed shared tensor", re.IGNORECASE)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("logs")
    data, tokenizer = write_caption_data(root), tokenizer_folder(root)
    out = root / "run"
    command = [
        sys.executable, str(REPO_ROOT / "recipes" / "caption.py"),
        "--train_data", str(data), "--eval_data", str(data), "--tokenizer_name_or_path", str(tokenizer),
        "--config_overrides", tiny_overrides(), "--output_dir", str(out),
        "--per_device_train_batch_size", str(BATCH), "--per_device_eval_batch_size", "2",
        "--max_img_seq_length", "10", "--max_seq_length", "30", "--max_caption_length", "16",
        "--num_beams", "2", "--max_gen_length", "8", "--metric_backend", "python",
        "--max_train_steps", str(STEPS), "--logging_steps", str(LOGGING_STEPS), "--checkpointing_steps", "1",
        "--metric_for_best", "CIDEr", "--report_to", "none",
    ]  # fmt: skip
    # Python warnings shown as they would be for a user who enables them (-W default).
    env = isolated_env(root, PYTHONWARNINGS="default")
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=root, timeout=600, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr[-4000:]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    # tqdm redraws with carriage returns; split them into lines as a terminal shows them.
    console = (done.stdout + done.stderr).replace("\r", "\n")
    return SimpleNamespace(out=out, log=log, console=console, lines=[ln for ln in console.splitlines() if ln.strip()])


def test_the_run_starts_with_a_summary(run):
    assert run.console.count("***** Running training *****") == 1
    for expected in (
        "Num examples = 8",  # 4 training images x 2 captions
        "Num epochs = 2",  # 4 batches per epoch, 5 steps
        f"Instantaneous batch size per device = {BATCH}",
        f"Total train batch size (w. parallel, distributed & accumulation) = {BATCH}",
        "Gradient accumulation steps = 1",
        f"Total optimization steps = {STEPS}",
        "Devices = cpu, 1 process",
        "Mixed precision = no",
    ):
        assert expected in run.console, expected


def test_the_summary_counts_processes_and_accumulation():
    from oscar_hf.training import RecipeArguments
    from oscar_hf.training.loop import run_summary

    args = RecipeArguments(per_device_train_batch_size=4, gradient_accumulation_steps=3, report_to="none")
    accelerator = SimpleNamespace(
        num_processes=2,
        device=torch.device("cpu"),
        distributed_type=SimpleNamespace(value="MULTI_CPU"),
        mixed_precision="bf16",
    )
    summary = run_summary(args, accelerator, SimpleNamespace(dataset=list(range(96))), max_steps=4, epochs=1)
    assert "Num examples = 96" in summary
    assert "Total train batch size (w. parallel, distributed & accumulation) = 24" in summary
    assert "Devices = cpu, 2 processes (distributed: multi_cpu)" in summary and "Mixed precision = bf16" in summary


def test_the_json_log_has_a_record_every_logging_steps(run):
    losses = [r for r in run.log if "loss" in r]
    assert [r["step"] for r in losses] == [2, 4, 5]  # every logging_steps, and the last step
    assert [r["epoch"] for r in losses] == [0.5, 1.0, 1.25]
    for record in losses:
        assert set(record) == {"step", "epoch", "loss", "learning_rate"}
        assert record["loss"] > 0 and 0 <= record["learning_rate"] <= 5e-5
    assert losses[-1]["learning_rate"] == 0.0  # linear decay to zero at the last step
    (evaluation,) = [r for r in run.log if "eval/CIDEr" in r]
    assert evaluation["step"] == STEPS and {"eval/Bleu_4", "eval/ROUGE_L"} <= set(evaluation)


def test_evaluation_shows_progress_and_logs_rounded_metrics(run):
    # The bar is drawn at its start (its last state is cleared when it closes, leave=False).
    assert any(line.startswith("caption:") and "/1 [" in line for line in run.lines), "no evaluation progress bar"
    assert f"***** Evaluating at step {STEPS} *****" in run.console
    (metrics_line,) = [line for line in run.lines if f"step {STEPS}: Bleu_1 = " in line]
    values = re.findall(r"= ([^,\s]+)", metrics_line)
    assert len(values) == 6  # BLEU-1..4, ROUGE-L, CIDEr
    for value in values:
        digits = re.sub(r"e[-+]\d+$", "", value).replace(".", "").replace("-", "").lstrip("0")
        assert len(digits) <= 4, metrics_line


def test_the_run_prints_no_warnings(run):
    """Quiet logs: no warning at all, in particular none per checkpoint save (5 saves here)."""
    assert len(list((run.out / "checkpoints").glob("step_*"))) == STEPS
    warnings = [line for line in run.lines if WARNING_LINE.search(line)]
    assert warnings == []


def test_the_model_card_names_the_split_describes_the_run_and_rounds(run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(run.out / "final" / "README.md")
    results = card.data.eval_results
    assert results and {r.dataset_split for r in results} == {"val"}  # the split it was evaluated on
    for result in results:
        assert float(f"{result.metric_value:.4g}") == result.metric_value
    text = card.text
    description = text.split("\n\n")[1]
    assert "fine-tuned" not in description and "trained from a random initialisation" in description
    for words in ("**Image Captioning**", "the train split of coco", f"{STEPS} optimization steps", "val split"):
        assert words in description, description
    table = [row for row in text.splitlines() if row.startswith("| coco |")]
    assert len(table) == 6 and all(len(row.split("|")[3].strip()) <= 10 for row in table), table


def test_best_loads_like_final(run):
    """With one evaluation (at the end) the best checkpoint is the final step: same weights, same processor."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    best, final = run.out / "best", run.out / "final"
    loaded = {}
    for folder in (best, final):
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        inputs = processor.captioning(["a dog on a couch"], tags=["dog couch"], region_features=[torch.rand(3, 2054)])
        loaded[folder.name] = (processor, model, dict(inputs))
    (p_best, m_best, inputs), (p_final, m_final, _) = loaded["best"], loaded["final"]
    assert type(p_best).__name__ == type(p_final).__name__ == "OscarProcessor"
    assert p_best.to_dict() == p_final.to_dict()
    assert p_best.tokenizer.get_vocab() == p_final.tokenizer.get_vocab()
    for name, tensor in m_final.state_dict().items():
        torch.testing.assert_close(m_best.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(m_best(**inputs).logits, m_final(**inputs).logits, rtol=0, atol=0)


LOAD_REMOTE_PROCESSOR = """
import sys
from transformers import AutoProcessor
processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
print("RESULT " + json.dumps(type(processor).__name__))
"""


def test_remote_code_processor_load_is_quiet(run, tmp_path):
    """The trust_remote_code path (package not importable) gives no false torchvision-backend warning."""
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_PACKAGE + LOAD_REMOTE_PROCESSOR, str(run.out / "final")],
        capture_output=True, text=True, env=isolated_env(tmp_path), cwd=tmp_path, timeout=300,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'RESULT "OscarProcessor"' in done.stdout
    assert "backend is not available" not in done.stderr and "torchvision" not in done.stderr, done.stderr
    assert not WARNING_LINE.search(done.stderr), done.stderr
