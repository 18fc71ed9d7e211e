from __future__ import annotations

import os
from types import SimpleNamespace

from cli_helpers import run_cli, tiny_model_dir


class FakeHfApi:
    """Records what push_to_hub asks of the Hub, and what the uploaded folder holds at upload time."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, repo_type=None, exist_ok=False):
        FakeHfApi.calls.append(("create_repo", repo_id, private, exist_ok))
        return SimpleNamespace(repo_id=repo_id)

    def create_branch(self, repo_id, branch, exist_ok=True):
        FakeHfApi.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, repo_id, folder_path, commit_message=None, revision=None, **kwargs):
        files = sorted(os.listdir(folder_path))
        readme = open(os.path.join(folder_path, "README.md"), encoding="utf-8").read()
        FakeHfApi.calls.append(("upload_folder", repo_id, files, commit_message, revision, readme))
        return SimpleNamespace(commit_url=f"https://hub.example/{repo_id}/commit/1")


def test_push_uploads_the_saved_model_with_its_card(capsys, monkeypatch):
    import sentence_transformers.base.model as host_model

    FakeHfApi.calls = []
    monkeypatch.setattr(host_model, "HfApi", FakeHfApi)
    code, out, err = run_cli(
        capsys, "push", tiny_model_dir(), "someone/tiny-mm", "--private", "--commit-message", "hello"
    )
    assert code == 0, err
    assert FakeHfApi.calls[0] == ("create_repo", "someone/tiny-mm", True, False)
    name, repo, files, message, revision, readme = FakeHfApi.calls[-1]
    assert (name, repo, message, revision) == ("upload_folder", "someone/tiny-mm", "hello", None)
    assert {"modules.json", "model.safetensors", "README.md", "config_sentence_transformers.json"} <= set(files)
    assert 'MMSentenceTransformer("someone/tiny-mm")' in readme
    assert "https://hub.example/someone/tiny-mm/commit/1" in out and 'MMCrossEncoder("someone/tiny-mm")' in out


def test_push_rejects_a_bad_repo_id(capsys):
    code, _, err = run_cli(capsys, "push", tiny_model_dir(), "no-slash")
    assert code == 2 and "repo_id must look like 'user-or-org/name'" in err
