"""mm_sbert.memory_policy: freed tensor memory stays in the process (fewer page faults), and only where it should."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from mm_sbert import memory_policy
from mm_sbert.errors import InvalidInputError
from mm_sbert.memory_policy import retain_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# An inference-like allocation pattern: a fresh input per call, then a few MB of activations per layer.
FAULTS_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import torch
    torch.set_num_threads(1)
    if sys.argv[1] == "retain":
        from mm_sbert.memory_policy import retain_freed_memory
        assert retain_freed_memory()
    def step():
        hidden = torch.randn(20, 49, 1286).to(torch.bfloat16)
        for _ in range(6):
            wide = torch.empty(1220, 1536, dtype=torch.bfloat16).fill_(1)
            qkv = torch.empty(1220, 1152, dtype=torch.bfloat16).fill_(1)
            hidden = wide[:, :384].clone() + qkv[:, :384]
        return hidden
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def page_faults(mode: str) -> int:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MALLOC_") and name != "GLIBC_TUNABLES"
    }
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, env=environment, check=True
    )
    return int(done.stdout.strip())


@pytest.fixture
def fake_glibc(monkeypatch):
    """A recording mallopt in place of glibc's, and a process in which nothing was applied yet."""
    calls = []

    def mallopt(parameter: int, value: int) -> int:
        calls.append((parameter, value))
        return 1

    monkeypatch.setattr(memory_policy, "_applied", None)
    monkeypatch.setattr(memory_policy, "_glibc_mallopt", lambda: mallopt)
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    return calls


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_retained_memory_takes_most_page_faults_out_of_repeated_inference():
    untouched, retained = page_faults("untouched"), page_faults("retain")
    # Measured here: ~51,000 faults untouched against ~2,000 (each call's activations mapped afresh before).
    assert retained * 5 < untouched, (retained, untouched)


def test_sets_both_thresholds_once(fake_glibc):
    assert retain_freed_memory() is True
    assert fake_glibc == [(-3, memory_policy.LARGEST_HEAP_BLOCK_BYTES), (-1, memory_policy.RETAINED_BYTES)]
    assert retain_freed_memory(retained_bytes=1 << 20) is True  # already set: the first call wins
    assert len(fake_glibc) == 2


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ("MALLOC_MMAP_THRESHOLD_", "65536"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"),
    ],
)
def test_a_choice_made_in_the_environment_is_left_alone(fake_glibc, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    assert retain_freed_memory() is False
    assert fake_glibc == []


def test_a_refused_threshold_reports_false(fake_glibc, monkeypatch):
    monkeypatch.setattr(memory_policy, "_glibc_mallopt", lambda: lambda parameter, value: 0)
    assert retain_freed_memory() is False
    assert memory_policy._applied is None


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"retained_bytes": -1}, "retained_bytes"),
        ({"retained_bytes": 2**31}, "retained_bytes"),  # mallopt takes a C int
        ({"retained_bytes": 1.5e8}, "retained_bytes"),
        ({"largest_heap_block_bytes": 64 * 2**20}, "largest_heap_block_bytes"),  # glibc's ceiling is 32 MiB
        ({"largest_heap_block_bytes": True}, "largest_heap_block_bytes"),
    ],
)
def test_bad_sizes_are_named(fake_glibc, kwargs, named):
    with pytest.raises(InvalidInputError, match=named):
        retain_freed_memory(**kwargs)
    assert fake_glibc == []


@pytest.mark.parametrize("retain", [True, False])
def test_the_retriever_applies_it_unless_told_not_to(monkeypatch, retain):
    from conftest import build_views

    from mm_sbert.retrieval import CooperativeRetriever

    calls = []
    monkeypatch.setattr(memory_policy, "retain_freed_memory", lambda: calls.append("applied") or True)
    bi_encoder, cross_encoder = build_views()
    CooperativeRetriever(bi_encoder, cross_encoder, retain_freed_memory=retain)
    assert calls == (["applied"] if retain else [])
