"""Helpers of the CLI tests (a module, not a conftest.py: a second conftest would shadow `from conftest import`)."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

from mm_sbert.cli.main import main

_SCRATCH = tempfile.mkdtemp(prefix="mm_sbert_cli_tests_")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)


@functools.cache
def tiny_model_dir() -> str:
    """A tiny joint model (random BERT, 2x2 colour grid) saved to a folder, as the CLI's --model takes it."""
    from conftest import build_views

    bi_encoder, _ = build_views("bert")
    path = os.path.join(_SCRATCH, "tiny_model")
    bi_encoder.save(path)
    return path


@functools.cache
def scene_folder() -> str:
    """Eight synthetic scenes as PNG files in images/ plus captions.csv (columns caption, image, label)."""
    from mm_sbert.demo import SyntheticScenes

    folder = os.path.join(_SCRATCH, "scenes")
    SyntheticScenes(8, captions_per_image=2, seed=0).save_caption_file(folder)
    return folder


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``mm-sbert argv`` in-process; returns (exit code, stdout, stderr)."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exc:  # argparse's own exits (--help, bad choices)
        code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err
