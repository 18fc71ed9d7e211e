"""Upload a saved mm_sbert model (bi-encoder, cross-encoder or joint folder) with its model card. The token comes from
--token, HF_TOKEN or `huggingface-cli login`."""

from __future__ import annotations

import argparse

from mm_sbert.cli.common import EXIT_FAILURE, CLIError, load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # fmt: off
    add = parser.add_argument
    add("model", help="saved model folder")
    add("repo_id", help="Hub repository, e.g. your-name/mm-sbert-coco")
    add("--private", action="store_true", help="create the repository as private")
    add("--token", help="Hub token (default: the logged-in user's)")
    add("--commit-message", default="Add mm_sbert model", help="commit message")
    add("--revision", help="branch to push to (default: main)")
    add("--exist-ok", action="store_true", help="do not fail when the repository exists")
    # fmt: on


def run(args: argparse.Namespace) -> int:
    if "/" not in args.repo_id or args.repo_id.count("/") > 1:
        raise CLIError(f"repo_id must look like 'user-or-org/name', got '{args.repo_id}'")
    model = load_model(args.model)
    options = {name: getattr(args, name) for name in ("token", "private", "commit_message", "revision", "exist_ok")}
    try:
        # Re-save rather than upload the folder as is, so the model card's snippet names the real repo id.
        url = model.push_to_hub(args.repo_id, **options, replace_model_card=True)
    except Exception as exc:
        from mm_sbert.models.hub import is_unreachable

        if not is_unreachable(exc):
            raise
        raise CLIError(
            f"could not reach the Hugging Face Hub to push to {args.repo_id} ({type(exc).__name__}: {exc}); "
            "check the network connection (HF_ENDPOINT, proxies, HF_HUB_OFFLINE) and run the command again",
            EXIT_FAILURE,
        ) from exc
    print(f"Pushed {args.model} to {url}")
    print(f'Load it with MMSentenceTransformer("{args.repo_id}") or MMCrossEncoder("{args.repo_id}")')
    return 0
