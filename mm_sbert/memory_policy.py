"""Keep memory that tensors free for the next tensors instead of handing it back to the OS (glibc's malloc).

PyTorch allocates CPU tensors with ``malloc``. glibc serves a block above its mmap threshold from a fresh mapping
and returns free memory at the top of its heap to the OS once more than its trim threshold lies there, so inference
that allocates a few MB of activations per layer, freshly for each query, pays page faults and the zeroing of new
pages for most of them on every call, a kernel-side cost that grows with the batch. :func:`retain_freed_memory`
raises both thresholds once per process, so those blocks come from the heap and stay there; what it costs is the
free memory the heap keeps (at most ``retained_bytes`` at its top).

A process-wide setting, so it is applied where mm_sbert owns the process or is asked to: the ``mm-sbert`` command
line, and :class:`~mm_sbert.CooperativeRetriever` (``retain_freed_memory=True``, its default). It is left alone where
the user already chose (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or a ``glibc.malloc`` tunable in
``GLIBC_TUNABLES``) and where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import threading

from mm_sbert.errors import InvalidInputError

logger = logging.getLogger(__name__)

__all__ = ["LARGEST_HEAP_BLOCK_BYTES", "RETAINED_BYTES", "retain_freed_memory"]

# glibc refuses an mmap threshold above half its heap size (32 MiB on 64-bit systems).
LARGEST_HEAP_BLOCK_BYTES = 32 * 2**20
RETAINED_BYTES = 256 * 2**20

# mallopt takes a C int
_LARGEST_INT = 2**31 - 1
# mallopt's parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_ENVIRONMENT_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_lock = threading.Lock()
_applied: tuple[int, int] | None = None


def _user_chose() -> str | None:
    """The environment variable through which the user already set glibc's thresholds, if any."""
    for name in _ENVIRONMENT_SETTINGS:
        if name in os.environ:
            return name
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.mmap_threshold" in tunables or "glibc.malloc.trim_threshold" in tunables:
        return "GLIBC_TUNABLES"
    return None


def _glibc_mallopt():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def retain_freed_memory(
    retained_bytes: int = RETAINED_BYTES, largest_heap_block_bytes: int = LARGEST_HEAP_BLOCK_BYTES
) -> bool:
    """Let glibc's malloc keep freed memory for reuse: blocks up to ``largest_heap_block_bytes`` come from the heap
    (not from a mapping of their own), and up to ``retained_bytes`` of free memory stays at the heap's top.

    Idempotent; the first successful call wins (a later call with other values changes nothing and says so in the
    log).

    Args:
        retained_bytes: free memory the heap may keep at its top before giving it back (glibc's trim threshold;
            below 2 GiB).
        largest_heap_block_bytes: the largest block served from the heap (glibc's mmap threshold; at most 32 MiB).

    Returns:
        Whether the thresholds are (now or already) set by this function: ``False`` where the C library is not glibc,
        or the user set them through the environment.

    Raises:
        InvalidInputError: a size that is not an integer in range.
    """
    global _applied
    for name, value, largest in (
        ("retained_bytes", retained_bytes, _LARGEST_INT),
        ("largest_heap_block_bytes", largest_heap_block_bytes, LARGEST_HEAP_BLOCK_BYTES),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= largest:
            raise InvalidInputError(f"{name} must be an integer between 0 and {largest} (bytes), got {value!r}")
    with _lock:
        if _applied is not None:
            if _applied != (retained_bytes, largest_heap_block_bytes):
                logger.info("glibc's malloc thresholds were already set to %s; leaving them", _applied)
            return True
        chosen = _user_chose()
        if chosen is not None:
            logger.info("Leaving glibc's malloc thresholds as %s sets them", chosen)
            return False
        mallopt = _glibc_mallopt()
        if mallopt is None:
            return False
        # mallopt returns 1 on success; the mmap threshold first, since setting it also fixes the trim threshold.
        if not (mallopt(_M_MMAP_THRESHOLD, largest_heap_block_bytes) and mallopt(_M_TRIM_THRESHOLD, retained_bytes)):
            logger.info("glibc's mallopt refused the thresholds; memory is handed back as before")
            return False
        _applied = (retained_bytes, largest_heap_block_bytes)
        return True
