from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_process_ddp_joint_training_keeps_ranks_identical(tmp_path):
    """torchrun, 2 CPU processes, gloo: the host trainer wraps the model in DDP; the head is synced like the rest."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        str(WORKER), str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    assert ranks[0]["wrapped"] == "DistributedDataParallel"
    # Both objectives ran on both ranks, alternating, on different shards of the data ...
    for rank in ranks:
        assert [objective for _, objective, _ in rank["history"]] == ["bi_encoder", "cross_encoder"] * 2
    assert [loss for *_, loss in ranks[0]["history"]] != [loss for *_, loss in ranks[1]["history"]]
    # ... and still end with bit-identical weights, which moved away from the start, the head included.
    final0, final1 = ranks[0]["final"], ranks[1]["final"]
    for key in final0:
        assert torch.equal(final0[key], final1[key]), key
    head = "0.classifier.weight"
    assert not torch.equal(final0[head], ranks[0]["initial"][head])
    assert not torch.equal(final0["0.img_embedding.weight"], ranks[0]["initial"]["0.img_embedding.weight"])
