from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mm_sbert.errors import MMSbertError, OutputInUseError
from mm_sbert.storage import exclusive_output, lock_path

HOLDER = """
import sys, time
from mm_sbert.storage import exclusive_output
with exclusive_output(sys.argv[1], what="store"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _start_holder(output: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(output)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_second_writer_in_another_process_is_refused_with_its_pid(tmp_path: Path) -> None:
    output = tmp_path / "store"
    holder = _start_holder(output)
    try:
        with pytest.raises(OutputInUseError, match=rf"store '.*store' is in use by process {holder.pid}") as info:
            with exclusive_output(output, what="store"):
                pytest.fail("a second writer got the lock")
        assert isinstance(info.value, MMSbertError)
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_free_after_kill_9(tmp_path: Path) -> None:
    output = tmp_path / "store"
    holder = _start_holder(output)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock_path(output).exists()  # the stale file stays; the kernel released the lock itself
    deadline = time.monotonic() + 10
    while True:
        try:
            with exclusive_output(output) as path:
                assert path.read_text() == str(os.getpid())
            break
        except OutputInUseError:  # pragma: no cover - the kernel releases it when the process is reaped
            if time.monotonic() > deadline:
                raise


def test_lock_is_released_after_the_block_and_after_an_error(tmp_path: Path) -> None:
    output = tmp_path / "index"
    with pytest.raises(KeyError):
        with exclusive_output(output):
            raise KeyError("boom")
    with exclusive_output(output):
        pass
    assert lock_path(output) == tmp_path / ".index.lock"
    assert not output.exists()  # the lock never creates the output itself
