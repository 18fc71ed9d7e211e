"""What the subcommands share: user-facing errors, argument types, model loading, reading caption files."""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Exit codes a shell script can branch on, with what they mean (`mm-sbert --help` and docs/cli.md list them).
EXIT_CODES = {
    0: "success",
    1: "unexpected failure (one line; `--debug` shows the traceback)",
    2: "bad arguments, or a missing / invalid input file or folder (the message names it)",
    3: "an optional package the command needs is missing (the message says what to install)",
    130: "interrupted (Ctrl-C)",
}
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_MISSING_COMPONENT, EXIT_INTERRUPTED = EXIT_CODES


class CLIError(Exception):
    """A problem the user can fix (bad argument, missing file...): printed as one line, no traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def input_errors(*error_types: type[BaseException]) -> Iterator[None]:
    """Turn ``error_types`` (and any :class:`~mm_sbert.errors.MMSbertError`) into a :class:`CLIError` (exit 2)."""
    from mm_sbert.errors import MMSbertError

    try:
        yield
    except (MMSbertError, *error_types) as exc:
        raise CLIError(str(exc), EXIT_USAGE) from exc


def checked_number(kind: type, condition: str = "", accept: Callable[[Any], bool] | None = None) -> Callable:
    """argparse type: a finite ``kind`` (int or float) for which ``accept`` holds (``condition`` says it in words)."""
    noun = "an integer" if kind is int else "a number" if condition else "a finite number"
    expected = f"{noun} {condition}".rstrip()

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if accept is not None and not accept(value):
            raise argparse.ArgumentTypeError(f"must be {condition}, got {text}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``."""
    return checked_number(int, f">= {minimum}", lambda value: value >= minimum)


# A number is checked where it is parsed: a bad one exits 2 naming the option, not later (or never) with exit 1.
positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
positive_float = checked_number(float, "> 0", lambda value: value > 0)  # a learning rate, a scale
non_negative_float = checked_number(float, ">= 0", lambda value: value >= 0)  # a margin
finite_float = checked_number(float)  # a bias
unit_interval = checked_number(float, "in [0, 1]", lambda value: 0.0 <= value <= 1.0)  # also refuses nan


def torch_device(text: str) -> str:
    """argparse type: a device this torch build has (:func:`~mm_sbert.models.devices.check_device`)."""
    from mm_sbert.models.devices import check_device

    try:
        return check_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_score_arguments(parser: argparse.ArgumentParser, candidates: str) -> None:
    """``--score`` and ``--lam`` (see :func:`~mm_sbert.retrieval.combine_scores`) over ``candidates``."""
    from mm_sbert.retrieval.score_combination import SCORE_MODES

    # fmt: off
    parser.add_argument("--score", choices=[mode for mode in SCORE_MODES if mode != "be"], default="ce",
        help="the reranked order: the cross-encoder logit (default, the paper's), or lam * BE cosine + (1 - lam) * "
        f"CE probability, raw or min-max normalised among {candidates}")
    parser.add_argument("--lam", type=unit_interval, default=0.5,
        help="the bi-encoder weight of the --score combinations, in [0, 1] (default: 0.5)")
    # fmt: on


def require_package(package: str, extra: str, what: str) -> None:
    """Fail with exit code 3 and the install command when the optional third-party ``package`` is not installed."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise CLIError(
            f"{what} needs the optional package `{package}`, which is not installed: pip install 'mm-sbert[{extra}]'",
            EXIT_MISSING_COMPONENT,
        )


def existing_path(path: str, what: str, folder: bool = False) -> Path:
    """``path`` as a Path, or a CLIError naming the argument when it does not exist (or is not a ``folder``)."""
    resolved = Path(path).expanduser()
    if not resolved.exists() or (folder and not resolved.is_dir()):
        raise CLIError(f"{what} '{path}' {'is not a folder' if resolved.exists() else 'does not exist'}")
    return resolved


def load_model(path: str, device: str | None = None):
    """Load a saved mm_sbert model folder as its bi-encoder view (the cross-encoder is ``.to_cross_encoder()``)."""
    from mm_sbert.models import MMSentenceTransformer

    folder = existing_path(path, "Model folder", folder=True)
    if not (folder / "modules.json").is_file():
        raise CLIError(
            f"'{path}' is not a saved mm_sbert model (no modules.json); train one with `mm-sbert train` or "
            "`mm-sbert demo`, or convert a checkpoint with `mm-sbert convert`"
        )
    return MMSentenceTransformer(str(folder), device=device or "cpu")


def add_data_arguments(parser: argparse.ArgumentParser, synthetic_help: str) -> None:
    """``--data`` (:meth:`~mm_sbert.data.ImageCaptionCorpus.from_file`) or ``--synthetic N``, and ``--caption-key``."""
    # fmt: off
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data",
        help="caption file (CSV / TSV / JSON lines, a COCO or Karpathy JSON, or a folder holding captions.jsonl; "
        "formats: docs/cli.md)")
    data.add_argument("--synthetic", type=int_at_least(2), metavar="N", help=synthetic_help)
    parser.add_argument("--caption-key", default="en",
        help="with one-image-a-line JSON lines: the key of the caption list (default: en)")
    # fmt: on


def read_caption_data(args: argparse.Namespace, scratch: str, captions_per_image: int):
    """The :class:`~mm_sbert.data.ImageCaptionCorpus` of ``--data`` (every image checked to exist: call it before
    loading any model), or of a ``--synthetic N`` set written into ``scratch`` first (seeded by ``args.seed``)."""
    from mm_sbert.data import ImageCaptionCorpus
    from mm_sbert.demo import SyntheticScenes

    if args.synthetic is None:
        data = existing_path(args.data, "Caption file")
    else:
        data = SyntheticScenes(args.synthetic, captions_per_image, seed=args.seed).save_caption_file(scratch)
    return ImageCaptionCorpus.from_file(data, caption_key=getattr(args, "caption_key", "en"))
