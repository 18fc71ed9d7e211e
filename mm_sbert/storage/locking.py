"""One writer at a time: an exclusive, stale-safe lock per store, index or training output.

The lock is an OS file lock (``filelock``) on a hidden file next to the output, so it is released by the kernel when
its process ends, ``kill -9`` included; a second writer is refused at once with the process that holds the output.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from mm_sbert.errors import OutputInUseError

PathLike = str | os.PathLike


def lock_path(output: PathLike) -> Path:
    """The lock file that guards ``output``: ``.<name>.lock`` beside it (outside it, so replacing it is possible)."""
    output = Path(os.path.abspath(os.fspath(output)))
    return output.parent / f".{output.name}.lock"


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)


@contextmanager
def exclusive_output(output: PathLike, what: str = "output") -> Iterator[Path]:
    """Hold the write lock of ``output`` for the ``with`` block.

    Raises:
        OutputInUseError: Another process (named by its id) is writing ``output``.
    """
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0, on_acquired=_write_pid, preserve_lock_file=True)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = path.read_text().strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise OutputInUseError(
            f"{what} {str(output)!r} is in use by process {holder}; wait for it to finish or write elsewhere"
        ) from None
    try:
        yield path
    finally:
        lock.release()
