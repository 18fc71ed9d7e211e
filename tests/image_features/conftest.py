from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
# A checkout sits next to shared/ (/work/main), a worktree one level deeper (/work/wt/<name>).
SHARED_DATA_CANDIDATES = [ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data"]


@pytest.fixture(autouse=True)
def single_thread():
    """CNN tests run on one thread: on a shared, oversubscribed CPU two threads made them up to 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    """Overrides the top-level fixture so worktrees one level deeper than the main checkout find the data too."""
    for candidate in SHARED_DATA_CANDIDATES:
        if candidate.is_dir():
            return candidate
    pytest.skip(f"shared data not found at any of {[str(c) for c in SHARED_DATA_CANDIDATES]}")


@pytest.fixture
def coco_images(shared_data: Path) -> list[Path]:
    images = sorted((shared_data / "coco-mini-train" / "images").glob("*.jpg"))
    if not images:
        pytest.skip("coco-mini-train/images is empty")
    return images


def make_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A small synthetic photo: smooth gradient background plus a coloured rectangle, different per seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    base = rng.uniform(0, 255, size=3)
    pixels = np.stack([(base[c] + 60 * np.sin((x + 3 * c) / (5 + seed % 7)) + y) % 256 for c in range(3)], -1)
    x1, y1 = rng.integers(0, width // 2), rng.integers(0, height // 2)
    pixels[y1 : y1 + height // 3, x1 : x1 + width // 3] = rng.uniform(0, 255, size=3)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


@pytest.fixture
def image_folder(tmp_path: Path) -> list[Path]:
    """Six generated PNG / JPEG files."""
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for seed in range(6):
        path = folder / f"img{seed}.{'png' if seed % 2 else 'jpg'}"
        make_image(seed, (48 + 8 * seed, 40)).save(path)
        paths.append(path)
    return paths
