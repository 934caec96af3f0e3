"""Model cards and the Hub push path (network intercepted at the HfApi boundary)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from oscar_hf import OscarConfig, OscarForSequenceClassification
from oscar_hf.registration import export_folder
from oscar_hf.training.hub import build_model_card, push_folder


def test_model_card_has_model_index_and_runnable_usage():
    card = build_model_card(
        "org/oscar-tiny-vqa", "vqa", results={"accuracy": 0.61}, dataset_id="vqa_v2", base_model="bert-base-uncased"
    )
    meta = yaml.safe_load(str(card).split("---")[1])
    assert meta["pipeline_tag"] == "visual-question-answering"
    assert "custom_code" in meta["tags"]
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0] == {"type": "accuracy", "value": 0.61, "name": "accuracy"}
    assert 'pipeline("oscar-vqa", model="org/oscar-tiny-vqa", trust_remote_code=True)' in str(card)


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="task='ocr'"):
        build_model_card("org/x", "ocr")


class RecordingApi:
    """Stands in for HfApi: records the calls instead of sending them."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return SimpleNamespace(commit_url=f"https://hub.invalid/{kwargs['repo_id']}/commit/1")


def test_push_path_with_network_intercepted_at_hfapi(tmp_path):
    model = OscarForSequenceClassification(
        OscarConfig(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, img_feature_dim=8
        )
    )
    folder = export_folder(model, tmp_path / "export")
    build_model_card("org/tiny", "vqa", results={"accuracy": 0.5}).save(folder / "README.md")
    (folder / "checkpoints").mkdir()
    api = RecordingApi()
    url = push_folder(folder, "org/tiny", api=api, private=True)
    assert url.endswith("/commit/1")
    (_, repo_id, create_kwargs), (_, upload) = api.calls
    assert repo_id == "org/tiny" and create_kwargs["private"] and create_kwargs["exist_ok"]
    assert upload["folder_path"] == str(folder) and "checkpoints/*" in upload["ignore_patterns"]
    uploaded = {p.name for p in folder.iterdir() if p.is_file()}
    assert {"config.json", "model.safetensors", "modeling_oscar.py", "configuration_oscar.py", "README.md"} <= uploaded


def test_push_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="export the model before pushing"):
        push_folder(tmp_path, "org/x", api=RecordingApi())


def test_push_dataset_uploads_card_and_shards_only(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "README.md").write_text("---\n---\n")
    api = RecordingApi()
    push_folder(tmp_path, "org/data", repo_type="dataset", api=api)
    (_, _, create_kwargs), (_, upload) = api.calls
    assert create_kwargs["repo_type"] == "dataset" and upload["repo_type"] == "dataset"
    assert upload["allow_patterns"] == ["README.md", "data/*.parquet"]
    with pytest.raises(FileNotFoundError, match="build the dataset before pushing"):
        push_folder(tmp_path / "data", "org/data", repo_type="dataset", api=api)
