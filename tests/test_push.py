"""The Hub push: private repo, gate set before the upload, the whole folder, no token anywhere.

Only the network is replaced: a recording stand-in for ``HfApi`` receives the calls."""

import logging
from pathlib import Path

import pytest

from coprov2.dataset.push import push_dataset

FAKE_TOKEN = "hf_FAKEtoken1234567890abcdef"


class RecordingHfApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def update_repo_settings(self, repo_id, **kwargs):
        self.calls.append(("update_repo_settings", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        self.calls.append(("upload_folder", repo_id, {**kwargs, "files": files}))


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "data" / "hate").mkdir(parents=True)
    (tmp_path / "data" / "hate" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    (tmp_path / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# card\n")
    return tmp_path


def test_push_creates_private_gated_repo_then_uploads_the_folder(folder, monkeypatch, caplog, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    api = RecordingHfApi()
    with caplog.at_level(logging.DEBUG):
        push_dataset(folder, "me/coprov2", gated="auto", api=api)
    assert [call[:2] for call in api.calls] == [
        ("create_repo", "me/coprov2"),
        ("update_repo_settings", "me/coprov2"),
        ("upload_folder", "me/coprov2"),
    ]
    assert api.calls[0][2] == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert api.calls[1][2] == {"repo_type": "dataset", "gated": "auto"}
    assert api.calls[2][2]["files"] == ["README.md", "data/hate/train-00000-of-00001.parquet"]
    output = caplog.text + "".join(capsys.readouterr())
    assert FAKE_TOKEN not in output
    assert all(FAKE_TOKEN.encode() not in p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_public_only_when_asked(folder):
    api = RecordingHfApi()
    push_dataset(folder, "me/coprov2", public=True, api=api, echo=lambda _: None)
    assert api.calls[0][2]["private"] is False
    assert api.calls[1][2]["gated"] == "manual"


def test_dry_run_prints_the_calls_and_files_and_sends_nothing(folder, capsys):
    api = RecordingHfApi()
    plan = push_dataset(folder, "me/coprov2", dry_run=True, api=api)
    out = capsys.readouterr().out
    assert api.calls == []
    assert "would call HfApi.create_repo(repo_id='me/coprov2', repo_type='dataset', private=True" in out
    assert "would upload data/hate/train-00000-of-00001.parquet (4 bytes)" in out
    assert [step["call"] for step in plan] == ["create_repo", "update_repo_settings", "upload_folder"]


def test_bad_inputs(folder, tmp_path_factory):
    with pytest.raises(ValueError, match="hub_gated must be one of manual, auto, got 'yes'"):
        push_dataset(folder, "me/x", gated="yes", api=RecordingHfApi())
    with pytest.raises(FileNotFoundError, match=r"has no README\.md"):
        push_dataset(tmp_path_factory.mktemp("empty"), "me/x", api=RecordingHfApi())
