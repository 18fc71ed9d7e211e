from __future__ import annotations

import os

import pytest

from mm_sbert.cli.main import main


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny joint model (random BERT, 2x2 colour grid) saved to a folder, as the CLI's --model takes it."""
    from conftest import build_views

    bi_encoder, _ = build_views("bert")
    path = str(tmp_path_factory.mktemp("tiny_model") / "model")
    bi_encoder.save(path)
    return path


@pytest.fixture(scope="session")
def scene_folder(tmp_path_factory) -> str:
    """Eight synthetic scenes as PNG files plus captions.csv (columns caption, image, label)."""
    from mm_sbert.cli.common import write_synthetic_set

    folder = str(tmp_path_factory.mktemp("scenes"))
    write_synthetic_set(folder, 8, captions_per_image=2, seed=0)
    return folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``mm-sbert argv`` in-process; returns (exit code, stdout, stderr)."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exc:  # argparse's own exits (--help, bad choices)
        code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def cli(capsys):
    return lambda *argv: run_cli(capsys, *argv)


def scene_images(folder: str) -> str:
    return os.path.join(folder, "images")
