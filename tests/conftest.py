from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from tiny_models import tiny_bert, tiny_xlmr  # noqa: E402

from mm_sbert import (  # noqa: E402
    ColorGridFeaturizer,
    MMCrossEncoder,
    MMSentenceTransformer,
    MultimodalTransformer,
    RegionFeatures,
)

# ../shared/data next to the repository; a worktree elsewhere points at it with MM_SBERT_SHARED_DATA.
SHARED_DATA = Path(
    os.environ.get("MM_SBERT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))


def build_module(backbone: str = "bert", featurizer: bool = True, seed: int = 0, **kwargs) -> MultimodalTransformer:
    """A tiny MultimodalTransformer; with ``featurizer`` it takes PIL images via ColorGridFeaturizer(grid_size=2)."""
    model, tokenizer = tiny_bert(seed=seed) if backbone == "bert" else tiny_xlmr(seed=seed)
    if featurizer:
        grid = ColorGridFeaturizer(grid_size=2, resize_to=32)
        kwargs.setdefault("region_feature_dim", grid.feature_dim)
        kwargs["featurizer"] = grid
    else:
        kwargs.setdefault("region_feature_dim", 16)
    if backbone == "xlmr":
        kwargs.setdefault("box_format", "m3p")
        kwargs.setdefault("use_img_layernorm", True)
    torch.manual_seed(seed)
    return MultimodalTransformer(backbone=model, tokenizer=tokenizer, **kwargs).eval()


def random_regions(num: int, seed: int = 0, dim: int = 16) -> RegionFeatures:
    """``num`` regions of random ``dim``-d features with random boxes inside the image (deterministic by ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(num, 2, generator=generator) * 0.5
    return RegionFeatures(torch.randn(num, dim, generator=generator), torch.cat([corners, corners + 0.4], dim=1))


def run_module(module: MultimodalTransformer, inputs) -> dict:
    """``module``'s forward on ``inputs`` (captions, images, pairs), without gradients."""
    with torch.no_grad():
        return module(module.preprocess(inputs))


def build_views(backbone: str = "bert", **kwargs) -> tuple[MMSentenceTransformer, MMCrossEncoder]:
    from sentence_transformers.sentence_transformer.modules import Pooling

    module = build_module(backbone, **kwargs)
    bi_encoder = MMSentenceTransformer(
        modules=[module, Pooling(module.get_embedding_dimension(), "mean")], device="cpu"
    )
    return bi_encoder, MMCrossEncoder(modules=[module], device="cpu")


@pytest.fixture(params=["bert", "xlmr"])
def backbone_name(request) -> str:
    return request.param


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
