"""Whether a torch device name is one this torch build can use, checked before any data or model is loaded."""

from __future__ import annotations

from mm_sbert.errors import InvalidInputError


def check_device(name: str) -> str:
    """``name`` (``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``) when this torch build has that device.

    Raises:
        InvalidInputError: another name, or a device this build or machine lacks (e.g. ``"cuda"`` on a CPU-only
            build), with what to use instead.
    """
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (not index.isdigit() or kind != "cuda")):
        raise InvalidInputError(f"expected cpu, cuda, cuda:N or mps, got {name!r}")
    if kind == "cpu":
        return name
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(f"{name!r}: this torch build sees no CUDA device (use cpu)")
        if index and int(index) >= torch.cuda.device_count():
            raise InvalidInputError(f"{name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif not torch.backends.mps.is_available():
        raise InvalidInputError(f"{name!r}: this torch build has no MPS device (use cpu)")
    return name
