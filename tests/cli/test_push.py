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


class UnreachableHfApi(FakeHfApi):
    """The Hub client as it fails without a network: httpx's ConnectError wrapped by the client's own."""

    def create_repo(self, repo_id, private=None, repo_type=None, exist_ok=False):
        import httpx2

        try:
            raise httpx2.ConnectError("[Errno -2] Name or service not known")
        except httpx2.ConnectError as exc:
            raise RuntimeError("request to https://huggingface.co/api/repos/create failed") from exc


def test_push_offline_says_the_hub_could_not_be_reached(capsys, monkeypatch):
    import sentence_transformers.base.model as host_model
    from huggingface_hub.errors import OfflineModeIsEnabled

    monkeypatch.setattr(host_model, "HfApi", UnreachableHfApi)
    code, out, err = run_cli(capsys, "push", tiny_model_dir(), "someone/tiny-mm")
    assert code == 1 and out == ""
    # Loading the model may draw transformers' "Loading weights" bar (\r-redrawn) before the one error line.
    lines = [line.split("\r")[-1] for line in err.strip().split("\n")]
    (message,) = [line for line in lines if line.strip() and not line.startswith("Loading weights")]
    assert message.startswith("mm-sbert push: error: could not reach the Hugging Face Hub to push to someone/tiny-mm")
    assert "Traceback" not in err

    class OfflineHfApi(FakeHfApi):
        def create_repo(self, *args, **kwargs):
            raise OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled")

    monkeypatch.setattr(host_model, "HfApi", OfflineHfApi)
    code, _, err = run_cli(capsys, "push", tiny_model_dir(), "someone/tiny-mm")
    assert code == 1 and "could not reach the Hugging Face Hub" in err and "offline mode is enabled" in err


def test_push_of_a_converted_model_keeps_the_score_note_in_its_card(capsys, monkeypatch, tmp_path):
    import sentence_transformers.base.model as host_model
    from original_models import oscar_config, random_oscar_state_dict
    from tiny_models import tiny_bert_tokenizer

    from mm_sbert.convert import OscarConverter

    tokenizer = tiny_bert_tokenizer()
    config = oscar_config(len(tokenizer))
    converted = OscarConverter(head_score="class1-logit").convert_state_dict(
        random_oscar_state_dict(config), config, tokenizer
    )
    converted.save(str(tmp_path / "converted"))
    FakeHfApi.calls = []
    monkeypatch.setattr(host_model, "HfApi", FakeHfApi)
    code, _, err = run_cli(capsys, "push", tmp_path / "converted", "someone/converted")
    assert code == 0, err
    readme = FakeHfApi.calls[-1][-1]
    assert f"**Cross-encoder score** (`MMCrossEncoder.predict`): {converted.report.score}." in readme
    assert 'MMSentenceTransformer("someone/converted")' in readme
