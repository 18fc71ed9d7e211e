"""A training run's output folder: written by one run at a time, never a folder of the user's, and resumable from
the last checkpoint that was completely written (a ``kill -9`` during a save leaves a half-written one behind)."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mm_sbert.storage import check_output_path, exclusive_output, mark_owned_folder, register_legacy_folder_kind

logger = logging.getLogger(__name__)

TRAINING_OUTPUT_KIND = "training-output"
# What a run writes into its output folder: the host trainer's checkpoints (and its logs), and the final model.
TRAINING_OUTPUT_PATTERNS = ("checkpoint-*", "final", "runs")
# Where a run saves models inside its folder (the ownership rule lets a model be saved only there).
TRAINING_OUTPUT_CHILDREN = {"checkpoint-*": "model", "final": "model"}
# The host trainer writes this file last when it saves a checkpoint (after the model, optimizer, scheduler and RNG
# states), so a checkpoint whose trainer state is readable is complete.
TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

PathLike = str | os.PathLike


def _is_legacy_training_output(folder: Path) -> bool:
    """A run folder written before the owner mark: only checkpoints (each holding the host trainer's files) and the
    final model, with at least one checkpoint."""
    names = os.listdir(folder)
    checkpoints = [name for name in names if _CHECKPOINT.match(name) and (folder / name).is_dir()]
    if not checkpoints or any(name not in checkpoints and name not in ("final", "runs") for name in names):
        return False
    markers = ("training_args.bin", TRAINER_STATE_NAME, "modules.json")
    return all(any((folder / name / marker).is_file() for marker in markers) for name in checkpoints)


register_legacy_folder_kind(TRAINING_OUTPUT_KIND, _is_legacy_training_output)


@contextmanager
def training_output(output_dir: PathLike, inputs: Iterable[PathLike | None] = ()) -> Iterator[Path]:
    """Claim ``output_dir`` for a training run for the ``with`` block.

    Refused before any work (:class:`~mm_sbert.errors.UnsafeOutputError`): a non-empty folder mm_sbert did not
    write, a folder of another kind, one of ``inputs`` (data file, starting model, feature store) or a folder holding
    one. While the block runs, a second run into the same folder is refused
    (:class:`~mm_sbert.errors.OutputInUseError`, naming this process).
    """
    existing = [path for path in inputs if path is not None and os.path.exists(path)]
    target = check_output_path(output_dir, TRAINING_OUTPUT_KIND, folder=True, inputs=existing, what="--output-dir")
    with exclusive_output(target, what="The training output"):
        target.mkdir(parents=True, exist_ok=True)
        mark_owned_folder(
            target, TRAINING_OUTPUT_KIND, patterns=TRAINING_OUTPUT_PATTERNS, children=TRAINING_OUTPUT_CHILDREN
        )
        yield target


def is_complete_checkpoint(checkpoint: PathLike) -> bool:
    """Whether the host trainer finished writing ``checkpoint``: its trainer state (written last) is a JSON object
    with an integer ``global_step``."""
    try:
        state = json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and isinstance(state.get("global_step"), int)


def last_complete_checkpoint(output_dir: PathLike) -> str | None:
    """The newest checkpoint of ``output_dir`` that was completely written (``None`` when there is none).

    Newer checkpoints that were not (the run was killed while saving them) are skipped with a warning, so
    ``resume_from_checkpoint`` continues from the last good state instead of failing on a half-written one.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    checkpoints = sorted(
        (int(match.group(1)), folder / name)
        for name in os.listdir(folder)
        if (match := _CHECKPOINT.match(name)) and (folder / name).is_dir()
    )
    skipped = []
    for _, checkpoint in reversed(checkpoints):
        if is_complete_checkpoint(checkpoint):
            if skipped:
                logger.warning(
                    "Skipping the incompletely written checkpoint(s) %s (the run was stopped while saving); "
                    "resuming from %s",
                    ", ".join(skipped),
                    checkpoint.name,
                )
            return str(checkpoint)
        skipped.append(checkpoint.name)
    if skipped:
        logger.warning("No completely written checkpoint in %s (%s incomplete); starting over", folder, skipped)
    return None
