from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from mm_sbert import EmbeddingIndex, ThreadPolicy
from mm_sbert.retrieval import vector_search
from mm_sbert.thread_policy import (
    get_thread_policy,
    other_runnable_load,
    set_thread_policy,
    thread_limit,
    using_thread_policy,
)


@pytest.fixture
def restore_policy():
    previous, torch_threads, faiss_threads = get_thread_policy(), torch.get_num_threads(), faiss.omp_get_max_threads()
    yield
    set_thread_policy(previous)
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


@pytest.mark.parametrize(
    ("cores", "load", "stage", "expected"),
    [
        (2, 0.0, "encode", 2),  # quiet: every core
        (2, 1.0, "encode", 1),  # one competing process on two cores: one thread, not two
        (2, 3.0, "train", 1),  # overloaded: still one
        (8, 2.4, "rerank", 6),  # rounded load
        (2, 0.0, "search", 2),  # quiet: one query's exact scan splits its rows over both cores
        (2, 1.0, "search", 1),  # busy: no thread that would wait for a descheduled partner
        (4, 1.0, "search", 3),
    ],
)
def test_decisions_from_cores_and_load(cores, load, stage, expected):
    assert ThreadPolicy(cores=cores, other_load=load).threads_for(stage) == expected


def test_override_wins_over_the_machine():
    assert ThreadPolicy(threads=3, cores=2, other_load=2.0).threads_for("search") == 3
    assert ThreadPolicy(cores=2, other_load=0.0).threads_for("encode", threads=1) == 1
    # a call's threads= beats the policy's own
    assert ThreadPolicy(threads=2).threads_for("encode", threads=1) == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        ThreadPolicy(threads=bad)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        ThreadPolicy().threads_for("encode", threads=bad)


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="stage must be one of"):
        ThreadPolicy().threads_for("nonsense")


def test_a_spinning_competitor_counts_as_load_and_a_passing_task_does_not(monkeypatch):
    import subprocess
    import sys
    import time

    from mm_sbert import thread_policy

    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        # Seen in most measurements (a measurement can still miss it when our own threads change state mid-read).
        seen = []
        for _ in range(5):
            seen.append(other_runnable_load() >= 1.0)
            time.sleep(0.05)
        assert sum(seen) >= 3, seen
    finally:
        competitor.kill()
        competitor.wait()
    # The median of the reads: one read that catches a passing task (or misses a competitor) does not decide.
    reads = iter([1, 0, 0])
    monkeypatch.setattr(thread_policy, "_other_runnable_now", lambda: next(reads))
    assert other_runnable_load() == 0.0
    reads = iter([1, 0, 1])
    assert other_runnable_load() == 1.0
    reads = iter([2, 1, 1, 0, 1])
    assert other_runnable_load(samples=5) == 1.0


def test_limit_reaches_torch_and_faiss_and_restores_them(restore_policy):
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    with ThreadPolicy(cores=2, other_load=1.0).limit("encode") as count:
        assert count == 1
        assert torch.get_num_threads() == 1
        assert faiss.omp_get_max_threads() == 1
    assert torch.get_num_threads() == 2
    assert faiss.omp_get_max_threads() == 2


def test_limit_reaches_blas(restore_policy):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with thread_limit("encode", threads=1):
        blas = [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
    assert blas and set(blas) == {1}


def test_index_search_runs_at_the_policy_threads(restore_policy, monkeypatch):
    seen = []
    original = vector_search.VectorSearch.candidates

    def recording(self, queries, count, *args):
        seen.append((torch.get_num_threads(), faiss.omp_get_max_threads()))
        return original(self, queries, count, *args)

    monkeypatch.setattr(vector_search.VectorSearch, "candidates", recording)
    rng = np.random.default_rng(0)
    index = EmbeddingIndex(rng.standard_normal((300, 16)).astype(np.float32), precision="binary")
    queries = rng.standard_normal((4, 16)).astype(np.float32)
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)

    set_thread_policy(ThreadPolicy(cores=2, other_load=0.0))
    one = index.search(queries[:1], 5)
    assert seen[-1] == (2, 2)  # quiet: both cores, for one query too
    set_thread_policy(ThreadPolicy(cores=2, other_load=1.0))
    index.search(queries, 5)
    assert seen[-1] == (1, 1)  # busy machine: one
    explicit = index.search(queries[:1], 5, threads=2)
    assert seen[-1] == (2, 2)  # the override wins
    assert torch.equal(one[1], explicit[1])
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (1, 1)  # restored after each search


def test_one_int8_query_scans_with_two_threads_per_core(restore_policy, monkeypatch):
    import usearch.index

    seen = []
    original = usearch.index.search

    def recording(*args, threads=0, **kwargs):
        seen.append(threads)
        return original(*args, threads=threads, **kwargs)

    monkeypatch.setattr(usearch.index, "search", recording)
    rng = np.random.default_rng(0)
    index = EmbeddingIndex(rng.standard_normal((300, 16)).astype(np.float32), precision="int8")
    queries = rng.standard_normal((4, 16)).astype(np.float32)
    set_thread_policy(ThreadPolicy(cores=2, other_load=0.0))
    quiet = index.search(queries[:1], 5)
    set_thread_policy(ThreadPolicy(cores=2, other_load=1.0))
    busy = index.search(queries[:1], 5)
    index.search(queries[:1], 5, threads=1)
    index.search(queries, 5)
    # one query: row blocks over two threads per core, quiet or busy; an explicit count and a batch: as the policy
    assert seen == [4, 4, 1, 1]
    assert ThreadPolicy(threads=3, cores=2).block_scan_threads() == 3
    assert ThreadPolicy(cores=1).block_scan_threads() == 1
    assert torch.equal(quiet[1], busy[1])


def test_set_thread_policy_takes_a_count():
    previous = get_thread_policy()
    try:
        assert set_thread_policy(3).threads_for("search") == 3
        assert set_thread_policy(None).threads is None
    finally:
        set_thread_policy(previous)


def test_using_thread_policy_restores_the_previous_policy_and_threads(restore_policy):
    outer = set_thread_policy(ThreadPolicy(cores=2, other_load=0.0))
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    with using_thread_policy(3, "train") as count:
        assert count == 3 and get_thread_policy().threads == 3
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (3, 3)
    assert get_thread_policy() is outer
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (1, 1)
    with pytest.raises(KeyError), using_thread_policy(2, "encode"):
        raise KeyError("a failing command")
    assert get_thread_policy() is outer and torch.get_num_threads() == 1
