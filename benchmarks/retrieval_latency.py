"""Retrieval latency on a quiet and a busy machine (issues 17, 31): search precisions, cross-encoders, Coop end to end.

One run measures, for each collection size:

- **Bi-encoder search** of one query (query encoding excluded), through the API users call,
  ``EmbeddingIndex(x, precision=...).search(q, 20, threads=...)``: exact float32, int8 / binary codes + float32
  rescoring, FAISS HNSW / IVF (rescored), optionally Milvus (milvus-lite); beside each its recall@20 against exact
  search over ``--num-queries`` queries.
- **Coop k = 20 end to end** over the largest collection through ``CooperativeRetriever.search``: encode the query,
  binary search + rescoring, rerank the 20 with eager float32, eager bfloat16 and ONNX Runtime int8 weights; with
  ``--coop-ensemble N``, also an ensemble of N bfloat16 cross-encoders (``CrossEncoderEnsemble``) reranking the top
  5, 10 and 20 (``--coop-ensemble-ks``), beside one cross-encoder at the same k.
- Each of those **quiet and busy**: the benchmark starts ``--competing-processes`` CPU-bound processes (one core
  each) for the busy column and pauses them (SIGSTOP) for the quiet one, alternating in ``--condition-blocks``
  blocks per cell; each with the library's thread policy (``threads=None``) and
  with every core (``threads=<cores>``, the old default), with the busy / quiet ratio of the policy.
- **Cross-encoder** cost per (caption, 49-region image) pair at ``--threads`` (quiet): eager PyTorch float32 and
  bfloat16, ONNX Runtime float32 and int8 weights, for all-MiniLM-L6-v2 (and a BERT-base-size model with random
  weights with ``--ce-models minilm bert-base``), with each backend's deviation from eager float32.

The report states the machine (CPU model, cores, AMX or not), the load average before and after and the run time.
Collections are random vectors unless ``--embeddings`` gives real ones: latency does not depend on the values,
recall does, so recall on random vectors is only a worst case. The 49 regions are random 1280-d features (the width
of the MobileNetV2 7x7 grid featurizer).

Usage (the issue-31 run, about 10 min at 1M; HNSW's build is most of it):
    python benchmarks/retrieval_latency.py --sizes 1000000 --output benchmarks/results/retrieval_latency_busy.md
    # a quick check at small size:
    python benchmarks/retrieval_latency.py --sizes 20000 --repeats 3 --ce-repeats 2 --num-queries 20
    # Coop with the published Flickr8k models' architecture (late fusion: the query's side runs its first layers once):
    python benchmarks/retrieval_latency.py --sizes 1000000 --precisions binary --ce-models --coop-architecture flickr8k
    # real embeddings (recall that means something):
    python benchmarks/retrieval_latency.py --embeddings images.npy --query-embeddings captions.npy --no-coop
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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

from mm_sbert import MMCrossEncoder, MMSentenceTransformer, MultimodalTransformer  # noqa: E402
from mm_sbert.memory_policy import retain_freed_memory  # noqa: E402
from mm_sbert.retrieval import CooperativeRetriever, CrossEncoderEnsemble, EmbeddingIndex, MilvusIndex  # noqa: E402
from mm_sbert.retrieval.cooperative_retriever import cross_encoder_logits, rerank  # noqa: E402
from mm_sbert.thread_policy import available_cores, get_thread_policy  # noqa: E402

QUERY = "A man riding a wave on top of a surfboard."
CAPTIONS = [
    QUERY,
    "Two dogs play with a red ball on the grass.",
    "A woman in a blue coat walks past a yellow taxi.",
    "A plate of pasta with tomatoes and basil.",
    "Children jump into a lake from a wooden pier.",
]
TOP_K = 20
# Eager in bfloat16: fast where the CPU has bfloat16 matrix units (AMX, AVX512-BF16), slow where it has none.
EAGER_BF16 = "eager PyTorch bfloat16"
# The whole joint model in bfloat16: query encoding and reranking.
BOTH_BF16 = "eager PyTorch bfloat16, query encoded in bfloat16 too"
# The same with late fusion's unfused layers run on the joined rows (MultimodalTransformer.unfused_blocks_apart off).
BOTH_BF16_JOINED = BOTH_BF16 + ", unfused layers on the joined rows"
APPROXIMATE = ["int8", "binary", "hnsw", "ivf"]
CONDITIONS = ("quiet", "busy")


# ---------------------------------------------------------------------------------------------------- helpers


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass


def timings(function: Callable[[int], object], repeats: int) -> list[float]:
    """Seconds of ``function(i)`` for i = 0..repeats-1, after one warm-up call."""
    function(repeats)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        function(i)
        times.append(time.perf_counter() - start)
    return times


def timed(function: Callable[[int], object], repeats: int) -> float:
    """Median seconds of ``function(i)`` for i = 0..repeats-1, after one warm-up call."""
    return statistics.median(timings(function, repeats))


def ms(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.0f} s"


def size_label(size: int) -> str:
    if size >= 1_000_000 and size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    return f"{size // 1000}k" if size >= 1000 and size % 1000 == 0 else str(size)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min) / {five:.1f} (5 min)"


def recall_at_k(rows: torch.Tensor, exact_rows: torch.Tensor) -> float:
    hits = [len(set(a) & set(b)) / len(b) for a, b in zip(rows.tolist(), exact_rows.tolist())]
    return float(np.mean(hits))


def minilm_module(architecture: str = "mean-head") -> MultimodalTransformer:
    """all-MiniLM-L6-v2 with random image layers: single-stream with a mean-pooled head (``"mean-head"``), or the
    architecture of the published Flickr8k models (``"flickr8k"``: its recipe's head, late fusion and image
    LayerNorm, ``mm_sbert.training.published_recipes``)."""
    from mm_sbert.backbones import all_minilm_l6_v2_path
    from mm_sbert.training.published_recipes import PUBLISHED_RECIPES

    options = {"head_input": "mean"}
    if architecture == "flickr8k":
        recipe = PUBLISHED_RECIPES["flickr8k"]["be"]
        options = {
            "head_input": recipe["head_input"],
            "fusion_layer": recipe["fusion_layer"],
            "use_img_layernorm": recipe["img_layernorm"],
        }
    torch.manual_seed(0)
    return MultimodalTransformer(
        all_minilm_l6_v2_path(), region_feature_dim=REGION_DIM, max_regions=GRID * GRID, **options
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


def condition_blocks(blocks: int, repeats: int) -> tuple[int, int]:
    """``(blocks, timings per block)`` of a cell of ``repeats`` timings: at most one block per timing, and every block
    the same size (so a cell may hold a few more than ``repeats``)."""
    blocks = max(1, min(blocks, repeats))
    return blocks, -(-repeats // blocks)


def measure_conditions(args, search: Callable[[int, int | None], object], repeats: int) -> dict:
    """Median seconds of ``search(i, threads)`` quiet and under the competing load, each with the library's thread
    policy (``threads=None``) and with every core (``threads=cores``, what the package did before the policy).

    The conditions alternate in ``--condition-blocks`` blocks (the competing load paused and resumed between them),
    so a drift of the machine's speed during the measurement (other tenants of a VM) reaches both alike; each cell is
    the median over all its blocks."""
    cores = available_cores()
    blocks, per_block = condition_blocks(args.condition_blocks, repeats)
    samples: dict[str, list[float]] = {
        f"{condition}, {mode}": [] for condition in CONDITIONS for mode in ("policy", "all cores")
    }
    with CompetingLoad(args.competing_processes) as load:
        for _ in range(blocks):
            for condition in CONDITIONS:
                if condition == "busy":
                    load.resume()
                else:
                    load.pause()
                for mode, threads in (("policy", None), ("all cores", cores)):
                    samples[f"{condition}, {mode}"] += timings(lambda i, t=threads: search(i, t), per_block)
    return {cell: statistics.median(seconds) for cell, seconds in samples.items()}


def condition_columns() -> list[str]:
    return ["quiet, policy", "busy, policy", "busy / quiet", "quiet, all cores", "busy, all cores"]


def condition_cells(row: dict) -> list[str]:
    ratio = row["busy, policy"] / row["quiet, policy"]
    return [
        ms(row["quiet, policy"]),
        ms(row["busy, policy"]),
        f"{ratio:.2f}x",
        ms(row["quiet, all cores"]),
        ms(row["busy, all cores"]),
    ]


def bi_encoder_section(
    args, corpus: np.ndarray, queries: np.ndarray, label: str, notes: list[str], data: dict
) -> list[str]:
    """Markdown rows for one collection: every search precision through ``EmbeddingIndex(x, precision=...)``, quiet
    and busy, with recall@20 against exact search."""
    size = len(corpus)
    query_tensor = torch.from_numpy(queries)
    results: dict[str, dict] = {}

    def measure(name: str, index, build: float | None, recall: float | None) -> None:
        row = measure_conditions(
            args,
            lambda i, threads: index.search(query_tensor[i % len(query_tensor)][None], TOP_K, threads=threads),
            args.repeats,
        )
        results[name] = {"build_seconds": build, "recall": recall, "seconds": row}
        print(f"  {size_label(size)} {name}: " + ", ".join(f"{k} {ms(v)}" for k, v in row.items()), flush=True)

    start = time.perf_counter()
    index = EmbeddingIndex(corpus)
    exact_build = time.perf_counter() - start
    exact_rows = index.search(query_tensor, TOP_K)[1]
    measure("exact float32", index, exact_build, 1.0)
    del index
    for precision in args.precisions:
        start = time.perf_counter()
        index = EmbeddingIndex(
            corpus, precision=precision, search_options={"rescore_multiplier": args.rescore_multiplier}
        )
        build = time.perf_counter() - start
        rows = index.search(query_tensor, TOP_K)[1]
        search = index.vector_search
        name = f"{precision} + float32 rescoring (x{args.rescore_multiplier})"
        if precision in ("hnsw", "ivf"):
            name = f"{precision}: {search.factory}, {search.search_parameters}, rescored (x{args.rescore_multiplier})"
        measure(name, index, build, recall_at_k(rows, exact_rows))
        del index, search
    if args.milvus:
        folder = tempfile.mkdtemp(prefix="mm_sbert_bench_milvus_")
        try:
            start = time.perf_counter()
            milvus = MilvusIndex.from_index(EmbeddingIndex(corpus), os.path.join(folder, "milvus.db"))
            build = time.perf_counter() - start
            rows = milvus.search(query_tensor, TOP_K)[1]
            row = measure_conditions(
                args, lambda i, threads: milvus.search(query_tensor[i % len(query_tensor)][None], TOP_K), args.repeats
            )
            results["Milvus (milvus-lite, AUTOINDEX; its own threads)"] = {
                "build_seconds": build,
                "recall": recall_at_k(rows, exact_rows),
                "seconds": row,
            }
            milvus.close()
        except Exception as error:  # report, do not lose the rest of the run
            notes.append(f"Milvus at {label}: {type(error).__name__}: {error}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    data.setdefault("search", {})[str(size)] = {"label": label, "dim": corpus.shape[1], "methods": results}
    lines = [
        f"### {size_label(size)} x {corpus.shape[1]} ({label})",
        "",
        "| method | build | " + " | ".join(condition_columns()) + f" | recall@{TOP_K} vs exact |",
        "|---|---|" + "---|" * len(condition_columns()) + "---|",
    ]
    for name, row in results.items():
        build = "" if row["build_seconds"] is None else ms(row["build_seconds"])
        recall = "" if row["recall"] is None else f"{row['recall']:.3f}"
        lines.append(f"| {name} | {build} | " + " | ".join(condition_cells(row["seconds"])) + f" | {recall} |")
    lines += ["", f"Load average after this collection: {load()}.", ""]
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


def coop_section(args, corpus: np.ndarray, best: dict, data: dict) -> list[str]:
    """Coop k = 20 end to end with MiniLM through ``CooperativeRetriever.search``: query encoding + binary search
    (rescored) + rerank of the 20, quiet and busy, for each reranker."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    from mm_sbert.export import with_onnx_scorer

    # The cross-encoder table's MiniLM (and its ONNX exports) where it has that architecture.
    info = best.get("minilm") if args.coop_architecture == "mean-head" else None
    module = info["_module"] if info else minilm_module(args.coop_architecture)
    if corpus.shape[1] != module.get_embedding_dimension():
        return [f"Coop skipped: the collection is {corpus.shape[1]}-d, MiniLM embeds in 384-d.", ""]

    def bi_encoder_of(module: MultimodalTransformer) -> MMSentenceTransformer:
        return MMSentenceTransformer(modules=[module, Pooling(module.get_embedding_dimension(), "mean")], device="cpu")

    bi_encoder = bi_encoder_of(module)
    cross_encoder = MMCrossEncoder(modules=[module], device="cpu")
    images = region_images(TOP_K, grid=args.coop_grid)
    index = EmbeddingIndex(corpus, metadata={"modality": "image"}, precision="binary")
    rerankers: list[tuple[str, object]] = [("eager PyTorch", cross_encoder)]
    # A joint model cast to bfloat16 (model.to(torch.bfloat16)): the query's encoding runs the packed layers too.
    bf16_module = copy.deepcopy(module).to(torch.bfloat16)
    if EAGER_BF16 in args.coop_rerankers:
        rerankers.append((EAGER_BF16, MMCrossEncoder(modules=[bf16_module], device="cpu")))
        rerankers.append((BOTH_BF16, MMCrossEncoder(modules=[bf16_module], device="cpu")))
        if module.fusion_layer:
            joined_module = copy.deepcopy(bf16_module)
            joined_module.unfused_blocks_apart = False
            rerankers.append((BOTH_BF16_JOINED, MMCrossEncoder(modules=[joined_module], device="cpu")))
    for backend in ("ONNX Runtime fp32", "ONNX Runtime int8 weights"):
        if info and backend in info and backend in args.coop_rerankers:
            rerankers.append((backend, info[backend][1]))
    retriever = CooperativeRetriever(
        bi_encoder, cross_encoder, top_k=TOP_K, retain_freed_memory=args.retain_freed_memory
    ).use_index(index, items=lambda r: images[r % TOP_K])
    results = {}
    results["BE only: encode + binary search + rescoring"] = measure_conditions(
        args,
        lambda i, threads: retriever.search(CAPTIONS[i % len(CAPTIONS)], rerank=False, threads=threads),
        args.repeats,
    )
    bf16_bi_encoder = bi_encoder_of(bf16_module)
    for backend, reranker in rerankers:
        sessions: dict = {}

        def coop(i: int, threads: int | None, reranker=reranker, sessions=sessions, backend=backend) -> object:
            if isinstance(reranker, str):
                # An ONNX Runtime session fixes its threads when it is made: one per thread setting and load.
                key = (threads, get_thread_policy().threads_for("rerank", threads=threads))
                if key not in sessions:
                    sessions[key] = with_onnx_scorer(cross_encoder, reranker, threads=threads)
                retriever.cross_encoder = sessions[key]
            else:
                retriever.cross_encoder = reranker
            retriever.bi_encoder = bf16_bi_encoder if backend in (BOTH_BF16, BOTH_BF16_JOINED) else bi_encoder
            return retriever.search(CAPTIONS[i % len(CAPTIONS)], threads=threads)

        results[f"Coop k={TOP_K}, rerank {backend}"] = measure_conditions(args, coop, args.ce_repeats)
        print(
            f"  Coop {backend}: "
            + ", ".join(f"{k} {ms(v)}" for k, v in results[f"Coop k={TOP_K}, rerank {backend}"].items()),
            flush=True,
        )
    if args.coop_ensemble:
        results |= ensemble_rows(args, retriever, bf16_bi_encoder, bf16_module)
    data["coop"] = {"collection": len(corpus), "pipelines": results}
    lines = [
        "| pipeline | " + " | ".join(condition_columns()) + " |",
        "|---|" + "---|" * len(condition_columns()),
    ]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(condition_cells(row)) + " |")
    lines.append("")
    if module.fusion_layer and EAGER_BF16 in args.coop_rerankers:
        lines += rerank_direction_lines(args, bf16_module, joined_module, images, data)
    return lines


def ensemble_rows(args, retriever: CooperativeRetriever, bi_encoder, module: MultimodalTransformer) -> dict:
    """Coop through ``CooperativeRetriever.search(query, top_k=k)`` reranking with a ``CrossEncoderEnsemble`` of
    ``--coop-ensemble`` bfloat16 cross-encoders (each member its own copy of the module: its own packed weights;
    latency does not depend on the weights' values), at each k of ``--coop-ensemble-ks``, beside one cross-encoder
    at the same k."""
    members = [MMCrossEncoder(modules=[copy.deepcopy(module)], device="cpu") for _ in range(args.coop_ensemble)]
    rerankers = {
        "one bfloat16 cross-encoder": members[0],
        f"an ensemble of {args.coop_ensemble} bfloat16 cross-encoders": CrossEncoderEnsemble(members),
    }
    retriever.bi_encoder = bi_encoder
    rows = {}
    for k in args.coop_ensemble_ks:
        for name, reranker in rerankers.items():
            if k == TOP_K and reranker is members[0]:
                continue  # the BOTH_BF16 row above

            def coop(i: int, threads: int | None, reranker=reranker, k=k) -> object:
                retriever.cross_encoder = reranker
                return retriever.search(CAPTIONS[i % len(CAPTIONS)], top_k=k, threads=threads)

            label = f"Coop k={k}, rerank {name} (query encoded in bfloat16 too)"
            rows[label] = measure_conditions(args, coop, args.ce_repeats)
            print(f"  {label}: " + ", ".join(f"{c} {ms(v)}" for c, v in rows[label].items()), flush=True)
    return rows


# Operators that compute the linear layers' products: the backbone's own (addmm / mm / linear, as the flop counter
# and the profiler name them) and the packed bfloat16 layers' oneDNN op.
LINEAR_OPS = ("_linear_pointwise", "addmm", "mm", "linear")


def rerank_gflop(module: MultimodalTransformer, queries: list, candidates: list, rows: list) -> dict:
    """GFLOP of one ``rerank`` call, split into the linear layers' matrix products and attention, counted by
    ``torch.utils.flop_counter`` on a copy of ``module`` running the backbone's own layers (the packed bfloat16
    layers compute the same products through oneDNN ops the counter does not know)."""
    from torch.utils.flop_counter import FlopCounterMode

    counted = copy.deepcopy(module)
    counted.fast_inference = False
    with FlopCounterMode(display=False) as counter:
        rerank(MMCrossEncoder(modules=[counted], device="cpu"), queries, candidates, rows)
    by_op = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    linear = sum(flops for op, flops in by_op.items() if op.split(".")[-1] in LINEAR_OPS)
    return {"linear": linear / 1e9, "attention": (counter.get_total_flops() - linear) / 1e9}


def rerank_time_shares(cross_encoder: MMCrossEncoder, queries: list, candidates: list, rows: list) -> dict:
    """Where one ``rerank`` call's time goes, from ``torch.profiler`` over 5 calls: the shares of the wall time
    spent in the linear layers' products and in attention (its products and softmax; each op's time on the calling
    thread, its intra-op threads included)."""
    from torch.profiler import ProfilerActivity, profile

    rerank(cross_encoder, queries, candidates, rows)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        for _ in range(5):
            rerank(cross_encoder, queries, candidates, rows)
        wall = (time.perf_counter() - started) * 1e6  # the profiler's unit: microseconds
    shares = {"linear": 0.0, "attention": 0.0}
    for event in profiler.key_averages():
        name = event.key.split("::")[-1]
        part = "linear" if name in LINEAR_OPS else None
        # The packed layers' attention is two batched products around a softmax (fast_inference.attention).
        part = "attention" if "scaled_dot_product" in name or name in ("bmm", "_softmax") else part
        if part:
            shares[part] += event.self_cpu_time_total / wall
    return shares


def bf16_gemm_gflops(rows: int, width: int, out: int, repeats: int = 50) -> float:
    """This CPU's bfloat16 rate (GFLOP/s) on one ``[rows, width] x [width, out]`` product through the packed oneDNN
    linear that :class:`mm_sbert.modules.fast_inference.PackedEncoder` calls: the ceiling a layer of that shape
    can reach."""
    x = torch.randn(rows, width).to(torch.bfloat16)
    weight = torch.ops.mkldnn._reorder_linear_weight(torch.randn(out, width).to(torch.bfloat16), None)
    bias = torch.zeros(out, dtype=torch.bfloat16)
    seconds = timed(lambda i: torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "none"), repeats)
    return 2 * rows * width * out / seconds / 1e9


def rerank_direction_lines(
    args, split_module: MultimodalTransformer, joined_module: MultimodalTransformer, images: list, data: dict
) -> list[str]:
    """The rerank step alone (``rerank`` of one query's 20 candidates, bfloat16, quiet, every core) in both
    directions, late fusion's unfused layers run apart (the query's side once) and on the joined rows."""
    set_threads(available_cores())
    captions = [f"{CAPTIONS[j % len(CAPTIONS)][:-1]}, seen from place {j}." for j in range(TOP_K)]
    directions = {
        f"a caption query, its {TOP_K} candidate images (image retrieval)": ([QUERY], images),
        f"an image query, its {TOP_K} candidate captions (text retrieval)": ([images[0]], captions),
    }
    rerankers = {
        "apart": MMCrossEncoder(modules=[split_module], device="cpu"),
        "joined": MMCrossEncoder(modules=[joined_module], device="cpu"),
    }
    rows = [list(range(TOP_K))]
    lines = [
        f"Rerank step alone (`rerank` of one query's {TOP_K} candidates, bfloat16, quiet, {available_cores()} "
        f"threads; median of {args.ce_repeats}): the unfused layers on each side apart vs on the joined rows.",
        "",
        "| query | unfused layers apart | joined | joined / apart | GFLOP apart: linear + attention | GFLOP/s apart "
        "| time apart in linear / attention |",
        "|---|---|---|---|---|---|---|",
    ]
    data["rerank_directions"] = {}
    for direction, (queries, candidates) in directions.items():
        seconds = {
            name: timed(lambda i, ce=ce, q=queries, c=candidates: rerank(ce, q, c, rows), args.ce_repeats)
            for name, ce in rerankers.items()
        }
        gflop = rerank_gflop(split_module, queries, candidates, rows)
        shares = rerank_time_shares(rerankers["apart"], queries, candidates, rows)
        data["rerank_directions"][direction] = {**seconds, "gflop": gflop, "time_shares": shares}
        total = gflop["linear"] + gflop["attention"]
        lines.append(
            f"| {direction} | {ms(seconds['apart'])} | {ms(seconds['joined'])} | "
            f"{seconds['joined'] / seconds['apart']:.2f}x | {gflop['linear']:.1f} + {gflop['attention']:.2f} | "
            f"{total / seconds['apart']:.0f} | {shares['linear']:.0%} / {shares['attention']:.0%} |"
        )
        print(f"  rerank, {direction}: " + ", ".join(f"{k} {ms(v)}" for k, v in seconds.items()), flush=True)
    # The widest product of a rerank: the intermediate layer over every row of the 20 (query caption, image) pairs.
    width = split_module.backbone.config.hidden_size
    intermediate = split_module.backbone.config.intermediate_size
    pair_rows = TOP_K * (args.coop_grid**2 + len(split_module.tokenizer(QUERY)["input_ids"]))
    gemm = bf16_gemm_gflops(pair_rows, width, intermediate)
    data["bf16_gemm_gflops"] = {"shape": [pair_rows, width, intermediate], "gflops": gemm}
    lines += [
        "",
        f"This CPU's bfloat16 matrix-product rate at the rerank's widest shape ([{pair_rows}, {width}] x [{width}, "
        f"{intermediate}], the packed oneDNN linear the layers call): {gemm:.0f} GFLOP/s. GFLOP counted by "
        "`torch.utils.flop_counter` on the backbone's own layers (the same products).",
    ]
    return [*lines, ""]


# ---------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000], help="collection sizes")
    parser.add_argument("--dim", type=int, default=384, help="dimension of random collections (MiniLM: 384)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts of the CE table")
    parser.add_argument("--repeats", type=int, default=20, help="timed single-query searches per cell (median)")
    parser.add_argument("--ce-repeats", type=int, default=5, help="timed k=20 reranks per cell (median)")
    parser.add_argument("--num-queries", type=int, default=100, help="queries for recall@20")
    parser.add_argument("--precisions", nargs="+", default=["int8", "binary", "hnsw"], choices=APPROXIMATE)
    parser.add_argument("--rescore-multiplier", type=int, default=10, help="candidates per hit before rescoring")
    parser.add_argument("--milvus", action="store_true", help="add the Milvus row (milvus-lite; slow to build)")
    parser.add_argument("--ce-models", nargs="*", default=["minilm"], choices=["minilm", "bert-base"])
    parser.add_argument("--no-coop", dest="coop", action="store_false", help="skip Coop end to end")
    parser.add_argument(
        "--coop-rerankers",
        nargs="+",
        default=[EAGER_BF16, "ONNX Runtime int8 weights"],
        choices=[EAGER_BF16, "ONNX Runtime fp32", "ONNX Runtime int8 weights"],
        help="rerankers timed in Coop besides eager float32",
    )
    parser.add_argument(
        "--competing-processes", type=int, default=1, help="CPU-bound processes started for the busy column"
    )
    parser.add_argument(
        "--condition-blocks",
        type=int,
        default=4,
        help="quiet and busy alternate in this many blocks per cell (the competing load paused in between)",
    )
    parser.add_argument(
        "--coop-grid", type=int, default=GRID, help="regions per side of Coop's images (7: 49 regions; 3: 9)"
    )
    parser.add_argument(
        "--coop-architecture",
        choices=["mean-head", "flickr8k"],
        default="mean-head",
        help="Coop's MiniLM: single-stream with a mean head, or the published Flickr8k models' (late fusion from "
        "layer 3, text-image-match head; eager rerankers only)",
    )
    parser.add_argument(
        "--coop-ensemble",
        type=int,
        default=0,
        help="also time Coop reranking with an ensemble of this many bfloat16 cross-encoders (mm_sbert."
        "CrossEncoderEnsemble: one cross-encoding per member), at each k of --coop-ensemble-ks",
    )
    parser.add_argument(
        "--coop-ensemble-ks", type=int, nargs="+", default=[5, 10, TOP_K], help="k values of the ensemble rows"
    )
    parser.add_argument(
        "--no-retain-freed-memory",
        dest="retain_freed_memory",
        action="store_false",
        help="leave glibc's malloc thresholds as they are (by default the run sets them up front, as the command line "
        "and CooperativeRetriever do: mm_sbert.memory_policy.retain_freed_memory)",
    )
    parser.add_argument("--embeddings", help="real collection embeddings (.npy [N, D]); sizes then subsample it")
    parser.add_argument("--query-embeddings", help="real query embeddings (.npy [Q, D]) for recall")
    parser.add_argument("--output", help="write the markdown report here, and its data as JSON beside it")
    args = parser.parse_args()
    if not args.repeats >= 1 or not args.ce_repeats >= 1 or not args.condition_blocks >= 1:
        parser.error("--repeats, --ce-repeats and --condition-blocks must be >= 1")
    if args.coop_ensemble and (args.coop_ensemble < 2 or EAGER_BF16 not in args.coop_rerankers or not args.coop):
        parser.error(f"--coop-ensemble needs 2 or more members, Coop on and {EAGER_BF16!r} in --coop-rerankers")
    start_load = load_average()
    started = time.time()
    notes: list[str] = []
    info = machine()
    # Up front, so every row runs under one allocator setting (the retriever would apply it only from Coop on).
    retained = retain_freed_memory() if args.retain_freed_memory else False
    data: dict = {
        "command": shlex.join(sys.argv),
        "machine": info,
        "load_average_start": start_load,
        "freed_memory_retained": retained,
    }

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
        search_lines += bi_encoder_section(args, corpus, queries, label, notes, data)
        largest = corpus

    ce_lines, best = cross_encoder_section(args, notes) if args.ce_models else ([], {})
    coop_lines = coop_section(args, largest, best, data) if args.coop and largest is not None else []
    if best.get("minilm"):
        shutil.rmtree(best["minilm"]["_folder"], ignore_errors=True)
    data["load_average_end"] = load_average()
    data["minutes"] = round((time.time() - started) / 60, 1)
    data["notes"] = notes

    lines = [
        "# Retrieval latency on a quiet and a busy machine: search precisions, cross-encoders, Coop end to end",
        "",
        f"Command: `python {shlex.join(sys.argv)}`",
        "",
        f"Machine: {machine_line(info)}. Load average (1 / 5 / 15 min) at the start {start_load}, at the end "
        f"{data['load_average_end']}; the run took {data['minutes']} min. Latencies of the quiet / busy tables are "
        "medians of "
        f"{math.prod(condition_blocks(args.condition_blocks, args.repeats))} single-query searches / "
        f"{math.prod(condition_blocks(args.condition_blocks, args.ce_repeats))} Coop searches per cell after a "
        f"warm-up per block; recall@{TOP_K} is against exact "
        f"search over {len(queries)} queries. Freed memory "
        + (
            "retained (mm_sbert.memory_policy.retain_freed_memory, the default)"
            if retained
            else "handed back as glibc does by default (--no-retain-freed-memory, or not glibc)"
        )
        + ".",
        "",
        f"Columns: **quiet** = the benchmark's competing process(es) stopped; **busy** = {args.competing_processes} "
        "process(es) spinning on one core each, started by the benchmark; the two alternate in "
        f"{args.condition_blocks} blocks per cell, so a drift of the machine's speed reaches both; **policy** = the "
        "library's default "
        "threads (mm_sbert.ThreadPolicy: the free cores); **all cores** = "
        f"threads={available_cores()} passed explicitly (what the package did before the policy). "
        "busy / quiet is for the policy (target <= 1.5).",
        "",
        f"## Bi-encoder search of one query (query encoding excluded), top-{TOP_K}",
        "",
        *search_lines,
    ]
    if ce_lines:
        lines += [
            f"## Cross-encoder: {TOP_K} (caption, 49-region image) pairs of one query in one batch (quiet)",
            "",
            *ce_lines,
            "",
        ]
    if coop_lines:
        collection = f"{size_label(len(largest))} images of {args.coop_grid**2} regions"
        architecture = {
            "mean-head": "MiniLM, single-stream, mean head",
            "flickr8k": "MiniLM, the published Flickr8k architecture: late fusion from layer 3, text-image-match head",
        }[args.coop_architecture]
        lines += [f"## Coop k = {TOP_K} end to end over {collection} ({architecture})", "", *coop_lines]
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    write_report(args.output, "\n".join(lines), data)


if __name__ == "__main__":
    main()
