from __future__ import annotations

import pytest
import torch

from mm_sbert.errors import InvalidInputError
from mm_sbert.models.devices import check_device
from mm_sbert.models.hub import is_unreachable


def test_check_device():
    assert check_device("cpu") == "cpu"
    for bad in ("gpu", "cuda:x", "mps:1", "cpu:0"):
        with pytest.raises(InvalidInputError, match="expected cpu, cuda, cuda:N or mps"):
            check_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="sees no CUDA device"):
            check_device("cuda")


def test_is_unreachable_follows_the_cause_chain():
    class TransportError(Exception):
        pass

    try:
        try:
            raise TransportError("no route")
        except TransportError as inner:
            raise RuntimeError("push failed") from inner
    except RuntimeError as outer:
        assert is_unreachable(outer)
    assert is_unreachable(TimeoutError()) and not is_unreachable(PermissionError("403")) and not is_unreachable(None)
