"""FeatureStore speed: writing, opening and random reads by id, against a folder of one .npz per image.

Synthetic MobileNetV2-grid-shaped features (50 regions x 1280) for N images are written to a temporary folder both
as a store (float32 and float16) and as one ``.npz`` per image (the common "precomputed features" layout, read with
``read_npz_folder``'s per-file loader). Reads are random ids, hot page cache (the files were just written).

    python benchmarks/feature_store.py --images 500
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm_sbert.image_features import FeatureStore, RegionFeatures  # noqa: E402
from mm_sbert.image_features.precomputed import _read_array_file  # noqa: E402


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--regions", type=int, default=50)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)

    rng = np.random.default_rng(0)
    corners = torch.rand(args.regions, 2) * 0.5
    boxes = torch.cat([corners, corners + 0.5], dim=1)
    records = [
        (f"img{i:06d}", RegionFeatures(rng.random((args.regions, args.dim), dtype=np.float32), boxes, (640, 480)))
        for i in range(args.images)
    ]
    ids = [image_id for image_id, _ in records]
    read_ids = [random.Random(0).choice(ids) for _ in range(args.reads)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "npz"
        folder.mkdir()

        def write_npz() -> None:
            for image_id, regions in records:
                np.savez(folder / f"{image_id}.npz", features=regions.features.numpy(), boxes=regions.boxes.numpy())

        write_seconds = timed(write_npz)
        read_seconds = timed(lambda: [_read_array_file(folder / f"{image_id}.npz") for image_id in read_ids])
        rows.append(("folder of .npz (baseline)", write_seconds, float("nan"), read_seconds))

        for dtype in ("float32", "float16"):
            path = Path(tmp) / dtype
            start = time.perf_counter()
            FeatureStore.write(path, records, dtype=dtype, shard_size=256, show_progress_bar=False)
            write_seconds = time.perf_counter() - start
            start = time.perf_counter()
            store = FeatureStore(path)
            open_seconds = time.perf_counter() - start
            start = time.perf_counter()
            for image_id in read_ids:
                store[image_id]
            read_seconds = time.perf_counter() - start
            rows.append((f"FeatureStore {dtype}", write_seconds, open_seconds, read_seconds))

    size_mb = args.images * args.regions * args.dim * 4 / 1e6
    print(
        f"{args.images} images x {args.regions} regions x {args.dim} (float32 {size_mb:.0f} MB), {args.reads} random "
        "reads by id, hot page cache, 1 thread.\n"
    )
    print("| layout | write images/s | open (s) | random reads images/s | reads vs .npz |")
    print("|---|---:|---:|---:|---:|")
    baseline_read = rows[0][3]
    for name, write_seconds, open_seconds, read_seconds in rows:
        open_text = "-" if np.isnan(open_seconds) else f"{open_seconds:.3f}"
        print(
            f"| {name} | {args.images / write_seconds:.0f} | {open_text} | {args.reads / read_seconds:.0f} | "
            f"{baseline_read / read_seconds:.1f}x |"
        )


if __name__ == "__main__":
    main()
