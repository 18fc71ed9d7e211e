"""Training s/step and featurizing images/s on a quiet and a busy machine, with every core vs the thread policy
(issue 32.1: "with one competing process, s/step and images/s within 1.5x of the quiet figure").

One run measures, each quiet and with ``--competing-processes`` CPU-bound processes the benchmark starts itself:

- **bi-encoder training**: s/step of the MiniLM multimodal model with ``HardNegativeTripletLoss`` at
  ``--be-batch`` (caption, 49-region image) pairs, AdamW (forward, backward, optimizer step);
- **cross-encoder training**: s/step with ``CrossEncoderBCELoss`` (one negative per positive) at ``--ce-batch``;
- **featurizing**: images/s of ``MobileNetV2GridFeaturizer`` over Flickr8k dev JPEGs (``--images``; random
  224x224 images when the data is absent);
- **featurizing into a store** in ``--store-processes`` worker processes (``FeatureStore.build(...,
  processes=N)``, what ``mm-sbert featurize --processes N`` runs), ``--store-images`` JPEG files, the workers' start
  included;

each with **all cores** (``torch.set_num_threads(cores)``, what the package did before) and with the **policy**
(``mm_sbert.ThreadPolicy``, as ``mm-sbert train`` / ``featurize`` apply it: the free cores when the stage starts).
The report names the machine (CPU, cores, AMX), the load average before and after and the run time.

Usage (the issue's sizes, about 10 min on 2 cores):
    python benchmarks/busy_training.py --output benchmarks/results/busy_training.md
    # busy also with more threads than free cores, and what that takes from the competing process:
    python benchmarks/busy_training.py --skip featurize store --busy-threads 3 4
    # a quick check:
    python benchmarks/busy_training.py --be-batch 16 --ce-batch 8 --steps 2 --images 16
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from busy_machine import (  # noqa: E402
    GRID,
    REGION_DIM,
    CompetingLoad,
    load_average,
    machine,
    machine_line,
    region_images,
    write_report,
)

from mm_sbert.thread_policy import available_cores, get_thread_policy  # noqa: E402

# ../shared/data next to the repository; a worktree elsewhere points at it with MM_SBERT_SHARED_DATA (as the tests).
SHARED_DATA = os.environ.get(
    "MM_SBERT_SHARED_DATA", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
)
FLICKR_DEV = os.path.join(SHARED_DATA, "flickr8k", "dev")


def captions(count: int) -> list[str]:
    words = ["dog", "man", "bike", "red", "ball", "grass", "water", "child", "street", "blue", "jumps", "runs"]
    return [" ".join(["A"] + [words[(i * 7 + j * 3) % len(words)] for j in range(8)]) + "." for i in range(count)]


def training_step(kind: str, batch: int):
    """A function doing one optimizer step of ``kind`` ("be" / "ce") on a fresh MiniLM model at ``batch``."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    from mm_sbert import (
        CrossEncoderBCELoss,
        HardNegativeTripletLoss,
        MMCrossEncoder,
        MMSentenceTransformer,
        MultimodalTransformer,
    )
    from mm_sbert.backbones import all_minilm_l6_v2_path

    torch.manual_seed(0)
    module = MultimodalTransformer(
        all_minilm_l6_v2_path(), region_feature_dim=REGION_DIM, head_input="mean", max_regions=GRID * GRID
    )
    if kind == "be":
        model = MMSentenceTransformer(
            modules=[module, Pooling(module.get_embedding_dimension(), "mean")], device="cpu"
        )
        loss = HardNegativeTripletLoss(model, margin=0.1)
    else:
        model = MMCrossEncoder(modules=[module], device="cpu")
        loss = CrossEncoderBCELoss(model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    features = [module.preprocess(captions(batch)), module.preprocess(region_images(batch))]
    labels = torch.arange(batch)

    def step(_: int) -> None:
        optimizer.zero_grad()
        loss(features, labels).backward()
        optimizer.step()

    return step


def image_files(count: int) -> tuple[list[str], str]:
    """``count`` JPEG files to featurize: Flickr8k dev photos, or random 224x224 JPEGs (written to a scratch folder
    removed at exit) where the data is absent; and a line that says which."""
    import atexit
    import tempfile

    from PIL import Image

    folder = os.path.join(FLICKR_DEV, "images")
    if os.path.isdir(folder):
        paths = [os.path.join(folder, name) for name in sorted(os.listdir(folder))[:count]]
        return paths, f"{len(paths)} Flickr8k dev JPEGs"
    scratch = tempfile.mkdtemp(prefix="busy_images_")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    generator = torch.Generator().manual_seed(0)
    paths = []
    for index in range(count):
        pixels = (torch.rand(224, 224, 3, generator=generator) * 255).byte().numpy()
        paths.append(os.path.join(scratch, f"image{index}.jpg"))
        Image.fromarray(pixels).save(paths[-1])
    return paths, f"{count} random 224x224 JPEGs (Flickr8k absent)"


def featurize_call(count: int):
    """The featurizer on ``count`` decoded images (decoding excluded)."""
    from PIL import Image

    from mm_sbert import MobileNetV2GridFeaturizer

    paths, source = image_files(count)
    images = [Image.open(path).convert("RGB") for path in paths]
    featurizer = MobileNetV2GridFeaturizer(show_progress_bar=False)
    return (lambda _: featurizer(images)), source


def store_call(count: int, processes: int):
    """``FeatureStore.build`` of ``count`` JPEG files with MobileNetV2 in ``processes`` worker processes (what
    ``mm-sbert featurize --processes N`` runs): reading, featurizing and writing the shards, the workers' start
    included."""
    import tempfile

    from mm_sbert import MobileNetV2GridFeaturizer
    from mm_sbert.image_features import FeatureStore

    paths, source = image_files(count)
    featurizer = MobileNetV2GridFeaturizer(show_progress_bar=False)

    def call(index: int) -> None:
        with tempfile.TemporaryDirectory(prefix="busy_store_") as scratch:
            store = os.path.join(scratch, "store")
            FeatureStore.build(store, paths, featurizer, show_progress_bar=False, processes=processes)

    return call, source


def timed(function, repeats: int) -> float:
    """Median seconds of ``function(i)`` after one warm-up call."""
    function(-1)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        function(i)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(args, stage: str, function, repeats: int) -> dict:
    """Seconds per call, quiet and busy, with every core and with the policy (decided when the stage starts); busy
    also at each of ``--busy-threads``. Each busy cell records the competing processes' CPU share meanwhile (cores
    they kept)."""
    cores = available_cores()
    row = {}
    for condition in ("quiet", "busy"):
        load = CompetingLoad(args.competing_processes) if condition == "busy" else None
        modes = [("all cores", cores), ("policy", None)]
        if load:
            load.__enter__()
            modes += [(f"{threads} threads", threads) for threads in args.busy_threads]
        try:
            for mode, threads in modes:
                with get_thread_policy().limit(stage, threads=threads) as used:
                    wall, cpu = time.perf_counter(), load.cpu_seconds() if load else 0.0
                    row[f"{condition}, {mode}"] = timed(function, repeats)
                    row[f"{condition}, {mode}, threads"] = used
                    if load:
                        row[f"{condition}, {mode}, competitor cores"] = (load.cpu_seconds() - cpu) / (
                            time.perf_counter() - wall
                        )
        finally:
            if load:
                load.__exit__()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--be-batch", type=int, default=128, help="bi-encoder batch (paper: 128)")
    parser.add_argument("--ce-batch", type=int, default=32, help="cross-encoder positives per batch")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per cell (median), after a warm-up")
    parser.add_argument("--images", type=int, default=64, help="images featurized per timed call")
    parser.add_argument("--featurize-repeats", type=int, default=3)
    parser.add_argument("--store-images", type=int, default=1000, help="images of the feature-store row")
    parser.add_argument("--store-processes", type=int, default=2, help="worker processes of the feature-store row")
    parser.add_argument("--store-repeats", type=int, default=2)
    parser.add_argument("--competing-processes", type=int, default=1)
    parser.add_argument(
        "--busy-threads",
        type=int,
        nargs="*",
        default=[],
        help="busy: also time these explicit thread counts (e.g. more threads than free cores), with the cores the "
        "competing processes keep meanwhile",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["be", "ce", "featurize", "store"])
    parser.add_argument("--output", help="write the markdown report here, and its data as JSON beside it")
    args = parser.parse_args()
    started, start_load, info = time.time(), load_average(), machine()
    data: dict = {"command": shlex.join(sys.argv), "machine": info, "load_average_start": start_load, "rows": {}}
    rows: list[tuple[str, str, dict]] = []  # (name, unit, seconds per call)
    if "be" not in args.skip:
        name = f"train bi-encoder, batch {args.be_batch} (s/step)"
        rows.append((name, "s/step", measure(args, "train", training_step("be", args.be_batch), args.steps)))
    if "ce" not in args.skip:
        name = f"train cross-encoder, batch {args.ce_batch} (s/step)"
        rows.append((name, "s/step", measure(args, "train", training_step("ce", args.ce_batch), args.steps)))
    if "featurize" not in args.skip:
        call, source = featurize_call(args.images)
        seconds = measure(args, "featurize", call, args.featurize_repeats)
        rows.append((f"featurize, MobileNetV2 7x7 grid, {source} (images/s)", f"images/s/{args.images}", seconds))
    if "store" not in args.skip:
        call, source = store_call(args.store_images, args.store_processes)
        seconds = measure(args, "featurize", call, args.store_repeats)
        name = f"featurize into a store, {args.store_processes} processes, {source} (images/s)"
        rows.append((name, f"images/s/{args.store_images}", seconds))
    data["load_average_end"] = load_average()
    data["minutes"] = round((time.time() - started) / 60, 1)

    def cell(seconds: float, unit: str) -> str:
        return f"{seconds:.2f}" if unit == "s/step" else f"{int(unit.rsplit('/', 1)[1]) / seconds:.1f}"

    lines = [
        "# Training and featurizing on a quiet and a busy machine: every core vs the thread policy",
        "",
        f"Command: `python {shlex.join(sys.argv)}`",
        "",
        f"Machine: {machine_line(info)}. Load average (1 / 5 / 15 min) at the start {start_load}, at the end "
        f"{data['load_average_end']}; the run took {data['minutes']} min. Busy = {args.competing_processes} "
        "process(es) spinning on one core each, started by the benchmark. Threads used in brackets.",
        "",
        "| what | quiet, all cores | busy, all cores | busy / quiet | quiet, policy | busy, policy | busy / quiet |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, unit, row in rows:
        data["rows"][name] = row

        cells = [
            f"{cell(row[f'{c}, {m}'], unit)} ({row[f'{c}, {m}, threads']})"
            for c, m in (("quiet", "all cores"), ("busy", "all cores"))
        ]
        cells.append(f"{row['busy, all cores'] / row['quiet, all cores']:.2f}x")
        cells += [
            f"{cell(row[f'{c}, {m}'], unit)} ({row[f'{c}, {m}, threads']})"
            for c, m in (("quiet", "policy"), ("busy", "policy"))
        ]
        cells.append(f"{row['busy, policy'] / row['quiet, policy']:.2f}x")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "busy / quiet: time per step or per image, busy over quiet (target <= 1.5 with the policy).", ""]
    if args.busy_threads:
        lines += [
            "Busy at explicit thread counts: time over the quiet policy's, and the cores the "
            f"{args.competing_processes} competing process(es) kept meanwhile (their CPU seconds over the cell's "
            f"wall time; alone they keep {args.competing_processes}).",
            "",
            "| what | threads | busy | busy / quiet (policy) | competitor's cores |",
            "|---|---|---|---|---|",
        ]
        for name, unit, row in rows:
            for mode in ["all cores", "policy", *[f"{threads} threads" for threads in args.busy_threads]]:
                lines.append(
                    f"| {name} | {row[f'busy, {mode}, threads']} ({mode}) | {cell(row[f'busy, {mode}'], unit)} | "
                    f"{row[f'busy, {mode}'] / row['quiet, policy']:.2f}x | "
                    f"{row[f'busy, {mode}, competitor cores']:.2f} |"
                )
        lines.append("")
    write_report(args.output, "\n".join(lines), data)


if __name__ == "__main__":
    main()
