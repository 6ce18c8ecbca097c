"""The Hub push: private repo, gate set before the upload, the whole folder, no token anywhere.

Only the network is replaced: the real ``HfApi`` talks to a mock transport (tests/mock_hub.py)."""

import logging

import pytest
from huggingface_hub.errors import HfHubHTTPError

from cards.push import push_folder
from tests.mock_hub import install_mock_hub

FAKE_TOKEN = "hf_FAKEtoken1234567890abcdef"


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "data" / "hate").mkdir(parents=True)
    (tmp_path / "data" / "hate" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    (tmp_path / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# card\n")
    return tmp_path


def test_push_creates_private_gated_repo_then_uploads_the_folder(folder, monkeypatch, caplog, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    hub = install_mock_hub(monkeypatch)
    with caplog.at_level(logging.DEBUG):
        push_folder(folder, "me/coprov2", gated="auto")
    paths = [(r.method, r.url.path) for r in hub.requests if r.url.path != "/api/agent-harnesses"]
    assert paths[:2] == [("POST", "/api/repos/create"), ("PUT", "/api/datasets/me/coprov2/settings")]
    assert paths[-1] == ("POST", "/api/datasets/me/coprov2/commit/main")
    assert hub.created == [
        {"name": "coprov2", "organization": "me", "visibility": "private", "type": "dataset"}
    ]
    assert hub.settings == [{"gated": "auto"}]
    assert hub.committed == {
        p: (folder / p).read_bytes() for p in ("README.md", "data/hate/train-00000-of-00001.parquet")
    }
    assert all(r.headers["authorization"] == f"Bearer {FAKE_TOKEN}" for r in hub.requests[1:])
    output = caplog.text + "".join(capsys.readouterr())
    assert FAKE_TOKEN not in output
    assert all(FAKE_TOKEN.encode() not in p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_public_only_when_asked(folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    hub = install_mock_hub(monkeypatch)
    push_folder(folder, "me/coprov2", public=True, echo=lambda _: None)
    assert hub.created[0]["visibility"] == "public"
    assert hub.settings == [{"gated": "manual"}]


def test_hub_error_names_the_repo_and_hides_the_token(folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    hub = install_mock_hub(monkeypatch)
    hub.refuse.add("/api/repos/create")
    with pytest.raises(HfHubHTTPError) as error:
        push_folder(folder, "me/coprov2", echo=lambda _: None)
    assert "403" in str(error.value) and "repos/create" in str(error.value)
    assert FAKE_TOKEN not in str(error.value) and FAKE_TOKEN not in repr(vars(error.value))
    assert not hub.committed


def test_dry_run_prints_the_calls_and_files_and_sends_nothing(folder, monkeypatch, capsys):
    hub = install_mock_hub(monkeypatch)
    plan = push_folder(folder, "me/coprov2", dry_run=True)
    out = capsys.readouterr().out
    assert hub.requests == []
    assert "would call HfApi.create_repo(repo_id='me/coprov2', repo_type='dataset', private=True" in out
    assert "would upload data/hate/train-00000-of-00001.parquet (4 bytes)" in out
    assert [step["call"] for step in plan] == ["create_repo", "update_repo_settings", "upload_folder"]


def test_bad_inputs(folder, tmp_path_factory):
    with pytest.raises(ValueError, match="hub_gated must be one of manual, auto, got 'yes'"):
        push_folder(folder, "me/x", gated="yes")
    with pytest.raises(ValueError, match=r"has no README\.md"):
        push_folder(tmp_path_factory.mktemp("empty"), "me/x")


def test_model_push_is_private_ungated_and_leaves_checkpoints_local(folder, monkeypatch):
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "state.bin").write_bytes(b"x")
    hub = install_mock_hub(monkeypatch)
    push_folder(
        folder, "me/expert", repo_type="model", gated=None, ignore=("checkpoints",), echo=lambda _: None
    )
    assert hub.created == [{"name": "expert", "organization": "me", "visibility": "private", "type": "model"}]
    assert hub.settings == []
    assert set(hub.committed) == {"README.md", "data/hate/train-00000-of-00001.parquet"}


def test_a_pushed_folder_is_named_by_its_repo_from_then_on_and_the_record_stays_local(folder, monkeypatch):
    """Cards and reports name a pushed dataset by the repo it went to (``cards.public.public_name``), not by its
    folder; the record of that (``.hub_repo_id``) is never uploaded."""
    from cards.public import HUB_REPO_FILE, public_name

    hub = install_mock_hub(monkeypatch)
    assert public_name(str(folder)) == folder.name
    push_folder(folder, "me/coprov2")
    push_folder(folder, "me/coprov2")
    assert public_name(str(folder)) == "me/coprov2"
    assert (folder / HUB_REPO_FILE).is_file() and all(path != HUB_REPO_FILE for _, path, _ in hub.uploads)
