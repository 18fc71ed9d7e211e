"""How many CPU threads each stage uses: the cores other processes leave free, or an explicit count.

Every thread pool mm_sbert drives goes through :class:`ThreadPolicy`: torch's intra-op threads (encoding, reranking,
training, featurizing), FAISS's OpenMP threads, the BLAS library numpy uses (via threadpoolctl) and ONNX Runtime's
intra-op threads. "All cores" is the wrong default on a shared machine: with one other CPU-bound process on two
cores, two search threads made one query 7x slower than one thread (retrieval_latency.md), because OpenMP and BLAS
threads wait for each other at every barrier while one of them is descheduled.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Literal

Stage = Literal["search", "encode", "rerank", "train", "featurize", "compute"]
STAGES: tuple[str, ...] = ("search", "encode", "rerank", "train", "featurize", "compute")

__all__ = [
    "STAGES",
    "ThreadPolicy",
    "available_cores",
    "get_thread_policy",
    "other_runnable_load",
    "set_thread_policy",
    "thread_limit",
    "using_thread_policy",
]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _own_running_threads() -> int:
    running = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat", encoding="ascii") as f:
                # The state follows the command name, which is in parentheses and may contain spaces.
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        running += state == "R"
    return max(running, 1)


def _other_runnable_now() -> int:
    """Runnable tasks now (``/proc/loadavg``) minus this process's own running threads; raises OSError / ValueError
    where ``/proc`` does not say."""
    with open("/proc/loadavg", encoding="ascii") as f:
        running = int(f.read().split()[3].split("/")[0])
    return max(running - _own_running_threads(), 0)


def other_runnable_load(samples: int = 3, interval: float = 2e-4) -> float:
    """How many cores other processes keep busy now.

    On Linux the count of runnable tasks (``/proc/loadavg``) minus this process's own running threads (whose pools
    may still spin after the last operation), the median of ``samples`` reads ``interval`` seconds apart: a
    CPU-bound competitor is runnable in every read, a passing daemon or one of our threads caught between the two
    counts of a read in one at most (one such read made an idle machine look busy and halved the threads of a
    query); elsewhere the 1-minute load average, which lags and counts this process too.
    """
    try:
        reads = []
        for sample in range(samples):
            if sample:
                time.sleep(interval)
            reads.append(_other_runnable_now())
        return float(sorted(reads)[len(reads) // 2])
    except (OSError, ValueError, IndexError):
        pass
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


class ThreadPolicy:
    """Threads per stage from the machine's free capacity, or an explicit count.

    - ``threads`` set (``--threads`` on the command line, ``threads=`` in the library): that many, for every stage.
    - Otherwise the free cores, ``cores - round(other load)`` (at least 1), where the other load is what other
      processes run now (:func:`other_runnable_load`, re-read at most every ``refresh_seconds``).

    Args:
        threads: a fixed thread count for every stage (``None``: decide per stage).
        cores: the cores to share (default: :func:`available_cores`).
        other_load: a fixed load of other processes (default: measured); tests pass it to pin decisions.
        refresh_seconds: how long a measured load is reused.

    Example:
        >>> policy = ThreadPolicy(cores=2, other_load=1.0)
        >>> policy.threads_for("encode"), policy.threads_for("search")
        (1, 1)
        >>> with policy.limit("rerank"):  # torch / FAISS / BLAS set for this block, restored after
        ...     scores = cross_encoder.predict(pairs)
    """

    def __init__(
        self,
        threads: int | None = None,
        cores: int | None = None,
        other_load: float | None = None,
        refresh_seconds: float = 1.0,
    ) -> None:
        self.threads = check_threads(threads, "threads")
        self.cores = check_threads(cores, "cores")
        if other_load is not None and not (isinstance(other_load, (int, float)) and other_load >= 0):
            raise ValueError(f"other_load must be a number >= 0, got {other_load!r}")
        self.other_load = other_load
        self.refresh_seconds = float(refresh_seconds)
        self._measured: tuple[float, float] | None = None  # (time, load)

    def __repr__(self) -> str:
        return f"ThreadPolicy(threads={self.threads}, cores={self.cores}, other_load={self.other_load})"

    def load(self) -> float:
        """The other processes' load this policy decides with (fixed, or measured and cached briefly)."""
        if self.other_load is not None:
            return float(self.other_load)
        now = time.monotonic()
        if self._measured is None or now - self._measured[0] > self.refresh_seconds:
            self._measured = (now, other_runnable_load())
        return self._measured[1]

    def free_cores(self) -> int:
        """Cores not kept busy by other processes (at least 1)."""
        cores = self.cores or available_cores()
        return max(1, min(cores, cores - round(self.load())))

    def threads_for(self, stage: Stage = "compute", threads: int | None = None) -> int:
        """The threads for ``stage``; ``threads`` overrides all."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")
        explicit = check_threads(threads, "threads") or self.threads
        if explicit:
            return explicit
        # Every stage takes the free cores, search of one query too: exact search's matrix-vector product splits the
        # rows over its threads (1M x 384: 55 ms on 2 threads, 103 ms on 1, quiet); what hurts is a thread more than
        # the cores left free, which then waits at every barrier for a descheduled partner.
        return self.free_cores()

    def scan_workers(self, threads: int | None = None) -> int:
        """Threads for one query's exact scan handed out in row blocks (``exact_search(workers=...)``), or 1 for the
        plain matrix-vector product split by BLAS.

        On a quiet machine (and with an explicit ``threads``) 1: BLAS splits the product over the free cores, the
        fastest way there. When other processes keep some cores busy, two threads per core, taking row blocks as
        they come free: a thread descheduled by another process then holds nobody up at a barrier, and the scan
        gets the contended core's share that its runnable threads are due. With one spinning process on 2 cores
        this took one 1M x 384 query from 1.9x to about 1.4x its quiet time (benchmarks/results/
        retrieval_latency_busy.md). Only scans do this (see :meth:`block_scan_threads`): their threads never wait
        for each other before the end, where the layers of a model meet at a barrier after every operation.
        """
        if check_threads(threads, "threads") or self.threads:
            return 1
        cores = self.cores or available_cores()
        return self.block_scan_threads() if cores > 1 and self.free_cores() < cores else 1

    def block_scan_threads(self, threads: int | None = None) -> int:
        """Threads for a scan whose threads each take their own row blocks and meet once at the end (the int8
        scan's usearch threads; exact search on a busy machine): ``threads`` (or the policy's fixed count) where
        given, else two per core, busy or not: a descheduled thread then holds nobody up, and usearch's scan was
        faster with two threads per core even on a quiet machine (docs/scale.md)."""
        explicit = check_threads(threads, "threads") or self.threads
        if explicit:
            return explicit
        cores = self.cores or available_cores()
        return 2 * cores if cores > 1 else 1

    @contextlib.contextmanager
    def limit(self, stage: Stage = "compute", threads: int | None = None) -> Iterator[int]:
        """Run a block with torch, FAISS and BLAS at :meth:`threads_for` threads; the previous counts come back
        after it. Yields the thread count."""
        count = self.threads_for(stage, threads)
        with _LOCK:
            previous = _set_pools(count)
        try:
            yield count
        finally:
            with _LOCK:
                _set_pools(None, previous)


def check_threads(value: int | None, name: str) -> int | None:
    """``value`` as a positive int, or ``None``; a clear error for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return value


_LOCK = threading.RLock()
_BLAS: dict[str, object] = {}
_POLICY = ThreadPolicy()


def _blas_controller():
    """A cached threadpoolctl controller over the BLAS libraries loaded so far (None without threadpoolctl)."""
    key = "faiss" in sys.modules  # FAISS brings its own OpenBLAS: rescan once it is loaded
    if _BLAS.get("key") != key:
        try:
            from threadpoolctl import ThreadpoolController

            controller = ThreadpoolController().select(user_api="blas")
        except ImportError:
            controller = None
        _BLAS.update(key=key, controller=controller)
    return _BLAS["controller"]


def _set_pools(count: int | None, previous: dict | None = None) -> dict:
    """Set every pool to ``count`` threads (or back to ``previous``); returns what was there before.

    All counts are read before any is set, and restored in reverse order: FAISS's OpenMP calls may resolve to
    torch's libgomp, so setting one pool can move another's count. Pools already at the wanted count are left
    alone: torch rebuilds its OpenMP team on every change.
    """
    import torch

    faiss = sys.modules.get("faiss")
    controller = _blas_controller()
    libraries = controller.lib_controllers if controller is not None else []
    before: dict = {
        "torch": torch.get_num_threads(),
        "faiss": faiss.omp_get_max_threads() if faiss is not None else None,
        "blas": {library.filepath: library.num_threads for library in libraries},
    }
    if previous is None:
        if count != before["torch"]:
            torch.set_num_threads(count)
        if faiss is not None and count != faiss.omp_get_max_threads():
            faiss.omp_set_num_threads(count)
        for library in libraries:
            if library.num_threads != count:
                library.set_num_threads(count)
        return before
    for library in libraries:
        target = previous["blas"].get(library.filepath)
        if target is not None and library.num_threads != target:
            library.set_num_threads(target)
    if faiss is not None and previous["faiss"] is not None and faiss.omp_get_max_threads() != previous["faiss"]:
        faiss.omp_set_num_threads(previous["faiss"])
    if torch.get_num_threads() != previous["torch"]:
        torch.set_num_threads(previous["torch"])
    return before


def get_thread_policy() -> ThreadPolicy:
    """The process-wide policy the library uses when a call passes no ``threads=``."""
    return _POLICY


def set_thread_policy(policy: ThreadPolicy | int | None) -> ThreadPolicy:
    """Replace the process-wide policy: a :class:`ThreadPolicy`, a fixed thread count, or ``None`` for the
    default (decide from the free cores). Returns the new policy."""
    global _POLICY
    _POLICY = policy if isinstance(policy, ThreadPolicy) else ThreadPolicy(threads=policy)
    return _POLICY


def thread_limit(stage: Stage = "compute", threads: int | None = None):
    """``get_thread_policy().limit(stage, threads)``: a block at the process policy's threads."""
    return _POLICY.limit(stage, threads)


@contextlib.contextmanager
def using_thread_policy(policy: ThreadPolicy | int | None, stage: Stage = "compute") -> Iterator[int]:
    """Run a block under ``policy`` (as :func:`set_thread_policy` takes it) with torch, FAISS and BLAS at its
    ``stage`` threads; the previous policy and thread counts come back after it, so a caller that runs inside another
    program (the command line's ``main()``) leaves that program's settings as they were. Yields the thread count."""
    previous = get_thread_policy()
    try:
        with set_thread_policy(policy).limit(stage) as count:
            yield count
    finally:
        set_thread_policy(previous)
