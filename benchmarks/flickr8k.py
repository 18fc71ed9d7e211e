"""The paper's retrieval tables (1, 5, 8) and learning curves on Flickr8k dev, through the library's own evaluator.

Models come from the user's commands (``benchmarks/flickr8k_train.sh``: ``mm-sbert featurize`` into a feature
store, then ``mm-sbert train be|ce|joint --features STORE``); this script only evaluates them, and every number
comes from :class:`~mm_sbert.evaluation.ImageTextRetrievalEvaluator` (BE, Coop = BE top-k reranked by the
cross-encoder, full CE), which reranks through :class:`~mm_sbert.retrieval.CooperativeRetriever`'s path. It keeps
no recall or rerank code of its own.

Protocol: the standard Flickr8k 1k-image split (``dev``): image retrieval (t2i) with all 5,000 caption queries,
text retrieval (i2t) with all 1,000 image queries (a hit is any of the image's 5 captions).

- ``tables``: Table 1 (BE, Sep+Coop, Joint+BE, Joint+Coop, full protocol), full cross-encoding (CE, Joint+CE) on
  a pool of ``--ce-pool`` dev images with all their captions, Table 5 (``--distractors`` train images and one caption
  each added to the search space), Table 8 (Coop with k in ``--top-k``);
- ``curve``: R@1 / R@10 of BE (full protocol), Coop and pool CE for every checkpoint of a run, and a plot;
- ``onnx``: Coop with the ``--ce`` model in eager PyTorch (float32 and bfloat16), exported to ONNX Runtime float32 and
  with int8 weights, on ``--onnx-images`` seeded dev images (all their captions as queries): whether the faster
  backends keep recall;
- ``embeddings``: the ``--be`` model's embeddings of every train + dev image and caption, and of the dev captions as
  queries, as ``.npy`` files in ``--output-dir`` (real vectors for ``benchmarks/retrieval_latency.py --embeddings``);
- ``render``: rebuild ``benchmarks/results/flickr8k.md`` from the JSON files.

Example (CPU, after benchmarks/flickr8k_train.sh store|be|ce|joint):
    python benchmarks/flickr8k.py tables --be runs/flickr8k/be/final --ce runs/flickr8k/ce/final \
        --joint runs/flickr8k/joint/final --features runs/flickr8k/features_mobilenet_grid3
    python benchmarks/flickr8k.py curve --run runs/flickr8k/be --features runs/flickr8k/features_mobilenet_grid3
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
# Run from a checkout: import this checkout's mm_sbert, not an installed copy.
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
ANALYSIS_MARKER = "<!-- analysis -->"
DIRECTIONS = ("t2i", "i2t")

from mm_sbert.evaluation.image_text_retrieval_evaluator import RECALL_AT as RECALLS  # noqa: E402 (after sys.path)


def default_data_dir() -> Path:
    candidates = [os.environ.get("MM_SBERT_SHARED_DATA"), REPO.parent / "shared" / "data", "/work/shared/data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "flickr8k" / "dev" / "captions.jsonl").is_file():
            return Path(candidate) / "flickr8k"
    return REPO.parent / "shared" / "data" / "flickr8k"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["tables", "curve", "onnx", "embeddings", "render"])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--features", type=Path, help="the feature store the models were trained from")
    parser.add_argument("--be", help="bi-encoder model folder (curve: the fixed retriever of a cross-encoder run)")
    parser.add_argument(
        "--ce",
        action="append",
        help="separately trained cross-encoder folder (Sep+Coop); given more than once, the cross-encoders rerank as "
        "one CrossEncoderEnsemble (their mean logit)",
    )
    parser.add_argument(
        "--ce-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="tables: the --ce models' weights (bfloat16: the reranker the latency benchmark times)",
    )
    parser.add_argument("--joint", help="joint model folder (Joint+BE, Joint+Coop)")
    parser.add_argument("--run", help="curve: a run folder with checkpoint-N subfolders")
    parser.add_argument(
        "--step-offset", type=int, default=0, help="curve: steps the run's start model had (e.g. the BE's)"
    )
    parser.add_argument("--label", default=None, help="curve: the run's name in results (default: its folder name)")
    parser.add_argument("--dev-images", type=int, default=1000, help="dev images used (1000: the full protocol)")
    parser.add_argument("--k", type=int, default=20, help="Coop candidates (the paper's 20)")
    parser.add_argument("--top-k", default="5,10,20", help="Table 8's k values")
    parser.add_argument("--ce-pool", type=int, default=100, help="dev images (x5 captions) fully cross-encoded")
    parser.add_argument("--distractors", type=int, default=1000, help="train images (1 caption each) added (Table 5)")
    parser.add_argument("--onnx-images", type=int, default=200, help="onnx: dev images (x5 caption queries)")
    parser.add_argument("--checkpoints", default=None, help="curve: only these checkpoint steps, e.g. 100,200")
    parser.add_argument("--curve-queries", type=int, default=1000, help="curve: caption queries for Coop (seeded)")
    parser.add_argument("--score", default="ce", help="Coop score mode: ce, combination, combination_normalized")
    parser.add_argument("--lam", type=float, default=0.5, help="Coop combination weight of the BE score")
    parser.add_argument(
        "--combination-lams",
        default="0.25,0.5,0.75",
        help="tables: the BE-score weights of the score-combination ablation (cross-encoded pairs are reused)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128, help="encode / cross-encode batch size")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--name", default="en", help="results file suffix: results/flickr8k_<name>.json")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--output-dir", type=Path, help="embeddings: where the .npy files go")
    args = parser.parse_args(argv)
    args.top_k = sorted({int(k) for k in args.top_k.split(",")} | {args.k})
    args.combination_lams = sorted({float(lam) for lam in args.combination_lams.split(",")})
    if not all(0 <= lam <= 1 for lam in args.combination_lams):
        parser.error(f"--combination-lams takes weights in [0, 1], got {args.combination_lams}")
    return args


# ---------------------------------------------------------------------------------------------------- data


def read_split(folder: Path) -> list[dict[str, Any]]:
    """One row per image of a ``captions.jsonl`` (read by the library's one caption reader, as ``mm-sbert train``
    and ``evaluate`` read it): the image path, its store id (file name, no extension) and its English captions."""
    from mm_sbert.data import ImageCaptionCorpus

    # The images are read from the feature store: their files need not be there.
    corpus = ImageCaptionCorpus.from_file(folder / "captions.jsonl", check_images=False)
    captions: dict[int, list[str]] = {image_id: [] for image_id in corpus.image_ids}
    for caption, image_id in zip(corpus.captions, corpus.caption_image_ids):
        captions[image_id].append(caption)
    return [
        {"image": image, "id": Path(image).stem, "en": captions[image_id]}
        for image, image_id in zip(corpus.images, corpus.image_ids)
    ]


def protocol(rows: list[dict[str, Any]], store: Any) -> tuple[list[Any], list[str], list[int]]:
    """``(images, captions, caption_image_ids)`` of the 1k protocol: every English caption is a query."""
    images = store.get_many(row["id"] for row in rows)
    captions, owners = [], []
    for index, row in enumerate(rows):
        captions += row["en"]
        owners += [index] * len(row["en"])
    return images, captions, owners


def distractor_set(store: Any, data_dir: Path, count: int, seed: int) -> tuple[list[Any], list[str]]:
    """``count`` seeded train images and their first caption each (Table 5's extra search space)."""
    rows = read_split(data_dir / "train")
    chosen = random.Random(seed).sample(rows, min(count, len(rows)))
    return store.get_many(row["id"] for row in chosen), [row["en"][0] for row in chosen]


# ---------------------------------------------------------------------------------------------------- models


def load_bi_encoder(path: str, device: str):
    from mm_sbert import MMSentenceTransformer

    model = MMSentenceTransformer(path, device=device)
    model.eval()
    return model


def load_cross_encoder(path: str, device: str, dtype: Any = None):
    from mm_sbert import MMCrossEncoder

    model = MMCrossEncoder(path, device=device, model_kwargs={"dtype": dtype} if dtype is not None else None)
    model.eval()
    return model


def evaluator(images, captions, owners, args, **kwargs):
    from mm_sbert import ImageTextRetrievalEvaluator

    options = dict(
        top_k=args.k,
        batch_size=args.batch_size,
        ce_batch_size=args.batch_size,
        score=args.score,
        lam=args.lam,
        show_progress_bar=False,
        write_csv=False,
        ce_max_pairs=10**8,
    )
    return ImageTextRetrievalEvaluator(images, captions, owners, **(options | kwargs))


def row(metrics: dict[str, float], mode: str, label: str, **extra: Any) -> dict[str, Any]:
    """One table row: R@M in % for both directions, from the evaluator's ``{mode}_{dir}_r@{M}`` metrics."""
    values = {f"{d}_r@{m}": round(100 * metrics[f"{mode}_{d}_r@{m}"], 1) for d in DIRECTIONS for m in RECALLS}
    values["seconds"] = round(metrics[f"{mode}_seconds"], 1)
    return {"mode": label, **values, **extra}


# ---------------------------------------------------------------------------------------------------- parts


def run_tables(args: argparse.Namespace) -> dict[str, Any]:
    """Table 1, 5, 8, the score-combination ablation and pool CE, every number from the evaluator.

    One :class:`~mm_sbert.retrieval.PairScoreCache` per cross-encoder is shared by that model's evaluators (all k,
    score modes, the distractor setting): each (caption, image) pair is cross-encoded once, and each row's
    ``seconds`` still counts the cross-encoder time of its own pairs."""
    from mm_sbert import FeatureStore
    from mm_sbert.retrieval import CrossEncoderEnsemble, PairScoreCache

    store = FeatureStore(args.features)
    dev_rows = read_split(args.data_dir / "dev")[: args.dev_images]
    images, captions, owners = protocol(dev_rows, store)
    queries = {"t2i_queries": len(captions), "i2t_queries": len(set(owners))}
    tables: dict[str, list[dict[str, Any]]] = {name: [] for name in ("table1", "ce_pool", "table5", "table8", "score")}
    extra_images, extra_captions = (
        distractor_set(store, args.data_dir, args.distractors, args.seed) if args.distractors else ([], [])
    )
    distracted = dict(distractor_images=extra_images, distractor_captions=extra_captions)

    def timed(label: str, call):
        start = time.perf_counter()
        result = call()
        print(f"  {label}: {time.perf_counter() - start:.0f} s", flush=True)
        return result

    setups = []  # (Coop label, BE label, bi-encoder, cross-encoder or None for the joint model's own head)
    if args.be:
        bi_encoder = load_bi_encoder(args.be, args.device)
        metrics = timed("BE", lambda: evaluator(images, captions, owners, args, modes=("be",))(bi_encoder))
        tables["table1"].append(row(metrics, "be", "BE", **queries))
        if args.ce:
            dtype = torch.bfloat16 if args.ce_dtype == "bfloat16" else None
            members = [load_cross_encoder(folder, args.device, dtype=dtype) for folder in args.ce]
            reranker = members[0] if len(members) == 1 else CrossEncoderEnsemble(members)
            setups.append(("Sep+Coop", "BE", bi_encoder, reranker))
    if args.joint:
        joint = load_bi_encoder(args.joint, args.device)
        metrics = timed("Joint+BE", lambda: evaluator(images, captions, owners, args, modes=("be",))(joint))
        tables["table1"].append(row(metrics, "be", "Joint+BE", **queries))
        setups.append(("Joint+Coop", "Joint+BE", joint, None))

    for coop_label, be_label, bi_encoder, cross_encoder in setups:
        cache = PairScoreCache()
        shared = dict(cross_encoder=cross_encoder, modes=("coop",), pair_score_cache=cache)
        by_k = timed(
            f"{coop_label} k={args.top_k}",
            lambda: evaluator(images, captions, owners, args, **shared).evaluate_top_k(bi_encoder, args.top_k),  # noqa: B023
        )
        for k, metrics in by_k.items():
            tables["table8"].append(row(metrics, "coop", coop_label, k=k, **queries))
            if k == args.k:
                tables["table1"].append(row(metrics, "coop", coop_label, k=k, **queries))
        for score, lam in itertools.product(("combination", "combination_normalized"), args.combination_lams):
            scored = evaluator(images, captions, owners, args, score=score, lam=lam, **shared)(bi_encoder)
            tables["score"].append(row(scored, "coop", coop_label, k=args.k, score=score, lam=lam, **queries))
        if args.distractors:
            both = dict(cross_encoder=cross_encoder, modes=("be", "coop"), pair_score_cache=cache)
            metrics = timed(
                f"Table 5 {coop_label}",
                lambda: evaluator(images, captions, owners, args, **both, **distracted)(bi_encoder),  # noqa: B023
            )
            tables["table5"].append(row(metrics, "be", be_label, **queries))
            tables["table5"].append(row(metrics, "coop", coop_label, k=args.k, **queries))

    # Full cross-encoding on a pool: every caption of the pool's images against every pool image.
    pool = sorted(random.Random(args.seed).sample(range(len(dev_rows)), min(args.ce_pool, len(dev_rows))))
    pool_images, pool_captions, pool_owners = protocol([dev_rows[i] for i in pool], store)
    pool_queries = {"t2i_queries": len(pool_captions), "i2t_queries": len(pool)}
    for _, be_label, bi_encoder, cross_encoder in setups if pool else []:
        ce_label = "CE" if cross_encoder is not None else "Joint+CE"
        pool_evaluator = evaluator(
            pool_images, pool_captions, pool_owners, args, cross_encoder=cross_encoder, modes=("be", "ce")
        )
        metrics = timed(f"pool {ce_label}", lambda: pool_evaluator(bi_encoder))  # noqa: B023 (called at once)
        tables["ce_pool"].append(row(metrics, "be", be_label, pairs=0, **pool_queries))
        tables["ce_pool"].append(row(metrics, "ce", ce_label, pairs=len(pool_captions) * len(pool), **pool_queries))
    # One cross-encoder is recorded as its folder (as before ensembles); an ensemble as the list of its members.
    single = args.ce is not None and len(args.ce) == 1
    models = {"be": args.be, "ce": args.ce[0] if single else args.ce, "joint": args.joint}
    runs = {"be": args.be, "joint": args.joint}
    runs |= {"ce": args.ce[0]} if single else {f"ce_{i}": folder for i, folder in enumerate(args.ce or [], 1)}
    return {
        "part": "tables",
        "models": models,
        "featurizer": store.featurizer_config,
        "training": {name: training_summary(path) for name, path in runs.items() if path},
        "sizes": {
            "dev_images": len(images),
            "dev_captions": len(captions),
            "ce_pool_images": len(pool),
            "ce_pool_captions": len(pool_captions),
            "distractor_images": len(extra_images),
            "distractor_captions": len(extra_captions),
        },
        "tables": tables,
    }


def write_embeddings(args: argparse.Namespace) -> None:
    """``collection.npy`` (train + dev images, then train + dev captions) and ``queries.npy`` (dev captions)."""
    import numpy as np

    from mm_sbert import FeatureStore

    store = FeatureStore(args.features)
    rows = read_split(args.data_dir / "train") + read_split(args.data_dir / "dev")
    model = load_bi_encoder(args.be, args.device)
    options = dict(batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=True)
    images = model.encode(store.get_many(row["id"] for row in rows), **options)
    captions = model.encode([caption for row in rows for caption in row["en"]], **options)
    dev_captions = sum(len(row["en"]) for row in read_split(args.data_dir / "dev"))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    np.save(args.output_dir / "collection.npy", np.concatenate([images, captions]).astype(np.float32))
    np.save(args.output_dir / "queries.npy", captions[-dev_captions:].astype(np.float32))
    print(f"wrote {len(images) + len(captions)} collection and {dev_captions} query embeddings to {args.output_dir}")


def run_onnx(args: argparse.Namespace) -> dict[str, Any]:
    """Coop (k = ``--k``) reranked by the ``--ce`` model in eager PyTorch (float32, bfloat16), ONNX float32 and ONNX
    int8 weights, same queries."""
    import tempfile

    from mm_sbert import FeatureStore
    from mm_sbert.export import with_onnx_scorer

    store = FeatureStore(args.features)
    dev_rows = read_split(args.data_dir / "dev")
    subset = sorted(random.Random(args.seed).sample(range(len(dev_rows)), min(args.onnx_images, len(dev_rows))))
    images, captions, owners = protocol([dev_rows[i] for i in subset], store)
    if not args.ce or len(args.ce) != 1:
        raise SystemExit("onnx compares backends of one cross-encoder: give --ce once")
    (ce_folder,) = args.ce
    bi_encoder, cross_encoder = load_bi_encoder(args.be, args.device), load_cross_encoder(ce_folder, args.device)
    queries = {"t2i_queries": len(captions), "i2t_queries": len(images)}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        fp32, int8 = cross_encoder.export_onnx(folder, quantize=True)
        backends = {
            "eager PyTorch": cross_encoder,
            "eager PyTorch bfloat16": load_cross_encoder(ce_folder, args.device, dtype=torch.bfloat16),
            "ONNX Runtime fp32": with_onnx_scorer(cross_encoder, fp32),
            "ONNX Runtime int8 weights": with_onnx_scorer(cross_encoder, int8),
        }
        for label, reranker in backends.items():
            metrics = evaluator(images, captions, owners, args, cross_encoder=reranker, modes=("coop",))(bi_encoder)
            rows.append(row(metrics, "coop", f"Coop k={args.k}, {label}", **queries))
            print(f"  {label}: {rows[-1]}", flush=True)
    return {"part": "onnx", "rows": rows, "sizes": {"dev_images": len(images), "dev_captions": len(captions)}}


def render_onnx(result: dict[str, Any]) -> str:
    columns = ["mode", *RECALL_COLUMNS, "t2i_queries", "i2t_queries", "seconds"]
    return (
        f"Command: `{result['command']}`  \nCommit: {result['commit']}  \nMachine: {result['machine']}\n\n"
        + markdown_table(result["rows"], columns)
    )


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in run.iterdir() if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return sorted(found)


def run_curve(args: argparse.Namespace) -> dict[str, Any]:
    """Every checkpoint of ``--run``: BE on the full protocol, Coop on seeded caption queries (+ their images as
    text-retrieval queries), full CE on the pool. A cross-encoder run (``--be`` names its fixed retriever) reranks
    with each checkpoint; a joint run with each checkpoint's own head; a bi-encoder run has no Coop / CE."""
    from mm_sbert import FeatureStore

    store = FeatureStore(args.features)
    dev_rows = read_split(args.data_dir / "dev")[: args.dev_images]
    images, captions, owners = protocol(dev_rows, store)
    retriever = load_bi_encoder(args.be, args.device) if args.be else None
    # Coop on a seeded subset of caption queries keeps a curve point affordable; BE always runs on all queries.
    subset = sorted(random.Random(args.seed).sample(range(len(captions)), min(args.curve_queries, len(captions))))
    pool = sorted(random.Random(args.seed).sample(range(len(dev_rows)), min(args.ce_pool, len(dev_rows))))
    pool_images, pool_captions, pool_owners = protocol([dev_rows[i] for i in pool], store)
    fixed_be = None
    points = []
    wanted = None if args.checkpoints is None else {int(step) for step in args.checkpoints.split(",")}
    for step, folder in checkpoints(Path(args.run)):
        if wanted is not None and step not in wanted:
            continue
        start = time.perf_counter()
        point: dict[str, Any] = {"step": step}
        checkpoint = load_bi_encoder(str(folder), args.device)
        bi_encoder = retriever or checkpoint
        cross_encoder = checkpoint.to_cross_encoder() if retriever is not None else None
        if fixed_be is None or retriever is None:
            metrics = evaluator(images, captions, owners, args, modes=("be",))(bi_encoder)
            fixed_be = {f"be_{d}_r@{m}": metrics[f"be_{d}_r@{m}"] for d in DIRECTIONS for m in RECALLS}
        point |= fixed_be
        if retriever is not None or trained_head(folder):
            subset_captions = [captions[i] for i in subset]
            coop = evaluator(
                images,
                subset_captions,
                [owners[i] for i in subset],
                args,
                cross_encoder=cross_encoder,
                modes=("be", "coop"),
            )(bi_encoder)
            point |= {
                f"{mode}_{d}_r@{m}@subset": coop[f"{mode}_{d}_r@{m}"]
                for mode in ("be", "coop")
                for d in DIRECTIONS
                for m in RECALLS
            }
            if pool:  # --ce-pool 0 skips full cross-encoding, as in `tables`
                pool_metrics = evaluator(
                    pool_images, pool_captions, pool_owners, args, cross_encoder=cross_encoder, modes=("ce",)
                )(bi_encoder)
                point |= {f"ce_{d}_r@{m}@pool": pool_metrics[f"ce_{d}_r@{m}"] for d in DIRECTIONS for m in RECALLS}
        point["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(point), flush=True)
        points.append(point)
    return {
        "part": "curve",
        "run": args.run,
        "label": args.label or Path(args.run).name,
        "retriever": args.be,
        "step_offset": args.step_offset,
        "sizes": {
            "be_t2i_queries": len(captions),
            "be_i2t_queries": len(dev_rows),
            "coop_t2i_queries": len(subset),
            "coop_i2t_queries": len({owners[i] for i in subset}),
            "ce_pool_images": len(pool),
            "ce_pool_captions": len(pool_captions),
        },
        "training": training_summary(args.run),
        "points": points,
    }


def trained_head(folder: Path) -> bool:
    """Whether a checkpoint's trainer state logs cross-encoder steps (its score head is trained)."""
    state = folder / "trainer_state.json"
    history = json.loads(state.read_text(encoding="utf-8")).get("log_history", []) if state.is_file() else []
    return any("cross_encoder_loss" in entry for entry in history)


def training_summary(path: str | Path) -> dict[str, Any]:
    """Steps, seconds, steps/s and losses from the trainer state next to a model folder (run/final or checkpoint)."""
    path = Path(path)
    run = path.parent if path.name == "final" or path.name.startswith("checkpoint-") else path
    found = checkpoints(run) if run.is_dir() else []
    if not found:
        return {}
    state = json.loads((found[-1][1] / "trainer_state.json").read_text(encoding="utf-8"))
    history = state.get("log_history", [])
    losses = [entry for entry in history if "loss" in entry]
    summary = {"global_step": state.get("global_step"), "max_steps": state.get("max_steps")}
    summary["train_batch_size"] = state.get("train_batch_size")
    runtime = next((entry for entry in history if "train_runtime" in entry), None)
    if runtime:
        summary |= {k: runtime[k] for k in ("train_runtime", "train_steps_per_second") if k in runtime}
    if losses:
        keys = [k for k in ("loss", "bi_encoder_loss", "cross_encoder_loss") if k in losses[0] or k in losses[-1]]
        summary["first_loss"] = {k: losses[0].get(k) for k in keys}
        summary["last_loss"] = {k: losses[-1].get(k) for k in keys}
    return summary


# ---------------------------------------------------------------------------------------------------- output


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {gpu}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"load average at the end {load}"
    )


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout
        return sha.strip() + (" (with uncommitted changes)" if dirty.strip() else "")
    except OSError:
        return "unknown"


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return header + "".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |\n" for r in rows)


RECALL_COLUMNS = [f"{d}_r@{m}" for d in DIRECTIONS for m in RECALLS]


def mark_degenerate(score_rows: list[dict[str, Any]], table1: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``score_rows`` with a ``note`` on each ``combination`` row whose recalls all lie within 0.1 point of the
    retriever's own (the table-1 row ``X+BE`` for ``X+Coop``, else ``BE``): there the cross-encoder's probabilities
    were saturated (logits far from 0, sigmoid ~1 for every candidate), so the combination ranked like the
    bi-encoder and says nothing about the reranker."""
    marked = []
    for score_row in score_rows:
        note = ""
        if score_row.get("score") == "combination":
            label = str(score_row["mode"]).replace("Coop", "BE")
            modes = {r["mode"]: r for r in table1}
            retriever = modes.get(label, modes.get("BE"))
            if retriever is not None:
                gaps = [abs(score_row[column] - retriever[column]) for column in RECALL_COLUMNS]
                if max(gaps) < 0.05:
                    note = f"degenerate: = {retriever['mode']}"
                elif max(gaps) <= 0.1 + 1e-9:
                    note = f"degenerate: {retriever['mode']} +-0.1"
        marked.append({**score_row, "note": note})
    return marked


def render_tables(result: dict[str, Any]) -> str:
    """The run's header and each of its tables that has rows (a run without a cross-encoder has only table 1)."""
    sizes = ", ".join(f"{k} = {v}" for k, v in result["sizes"].items())
    training = "\n".join(f"- {name}: `{json.dumps(summary)}`" for name, summary in result["training"].items())
    tables = result["tables"]
    columns = ["mode", "k", *RECALL_COLUMNS, "t2i_queries", "i2t_queries", "seconds"]
    sections = [
        (
            "Table 1 analogue: Flickr8k dev 1k, full protocol (t2i = image retrieval, i2t = text retrieval, %)\n\n",
            tables["table1"],
            columns,
        ),
        (
            "Full cross-encoding on a pool (every caption of the pool's images x every pool image)\n\n",
            tables["ce_pool"],
            ["mode", *RECALL_COLUMNS, "t2i_queries", "i2t_queries", "pairs", "seconds"],
        ),
        (
            "Table 5 analogue: train images (one caption each) added to the search space as distractors\n\n",
            tables["table5"],
            columns,
        ),
        ("Table 8 analogue: Coop top-k (full protocol)\n\n", tables["table8"], columns),
        (
            "Score combination (Coop k = 20, full protocol): `lam * cos_BE + (1 - lam) * sigmoid(CE)`, and with "
            "both scores min-max normalised per query\n\n"
            "A `combination` row marked degenerate ranks like the bi-encoder (every recall within 0.1 point of its "
            "row in table 1): the cross-encoder's logits sit far from 0 (10-12 for a similarity-started head; a "
            "listwise loss does not pin the offset), so sigmoid(CE) is ~1 for every candidate and only cos_BE orders "
            "them. Those rows measure nothing about the reranker; `ce` (the logit) and `combination_normalized` do."
            "\n\n",
            mark_degenerate(tables.get("score", []), tables["table1"]),
            ["mode", "score", "lam", *columns[1:], "note"],
        ),
    ]
    out = [
        f"Command: `{result['command']}`  \nCommit: {result['commit']}  \nMachine: {result['machine']}  \n"
        f"Run: {result['finished']} ({result['total_seconds']:.0f} s in all)  \nSizes: {sizes}\n\n"
        f"Training (from each run's trainer state):\n{training}\n"
    ]
    for heading, rows, table_columns in sections:
        if rows:
            out += [f"\n### {heading}", markdown_table(rows, table_columns)]
    return "".join(out)


def render_curve(result: dict[str, Any]) -> str:
    sizes = ", ".join(f"{k} = {v}" for k, v in result["sizes"].items())
    points = result["points"]
    columns = ["step", "be_t2i_r@1", "be_t2i_r@10", "be_i2t_r@1", "be_i2t_r@10"]
    if any("coop_t2i_r@1@subset" in p for p in points):
        columns += ["be_t2i_r@1@subset", "coop_t2i_r@1@subset", "be_i2t_r@1@subset", "coop_i2t_r@1@subset"]
        columns += ["ce_t2i_r@1@pool", "ce_t2i_r@10@pool", "ce_i2t_r@1@pool", "ce_i2t_r@10@pool"]
    shown = [
        {k: (round(100 * v, 1) if isinstance(v, float) and k != "seconds" else v) for k, v in p.items()}
        for p in points
    ]
    return (
        f"Command: `{result['command']}`  \nCommit: {result['commit']}  \nMachine: {result['machine']}  \n"
        f"Sizes: {sizes}  \nTraining: `{json.dumps(result['training'])}`\n\n"
        + markdown_table(shown, columns + ["seconds"])
    )


def plot_curves(curves: list[dict[str, Any]], path: Path) -> None:
    """One row per run: what its training steps did to retrieval.

    A bi-encoder run shows its full-protocol R@1 / R@10 per direction. A cross-encoder or joint run shows, per
    direction, Coop minus the bi-encoder on the same queries (in points: above zero, reranking beats retrieval), and
    in a third panel the full cross-encoding of its small pool.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(curves), 3, figsize=(15, 2.6 * len(curves) + 1.2), squeeze=False)
    names = {"t2i": "image retrieval (t2i)", "i2t": "text retrieval (i2t)"}
    for row, curve in zip(axes, curves):
        steps = [curve.get("step_offset", 0) + p["step"] for p in curve["points"]]

        def series(key: str, points: list[dict] = curve["points"]) -> list[float | None]:
            return [None if p.get(key) is None else 100 * p[key] for p in points]

        if not any("coop_t2i_r@1@subset" in p for p in curve["points"]):
            for axis, direction in zip(row, DIRECTIONS):
                for m, marker in ((1, "o"), (10, "s")):
                    axis.plot(steps, series(f"be_{direction}_r@{m}"), "-", marker=marker, color="tab:blue",
                              label=f"BE R@{m}")  # fmt: skip
                axis.set_title(f"{curve['label']}: BE {names[direction]}, full protocol", fontsize=9)
                axis.set_ylabel("recall (%)")
                axis.legend(fontsize=7)
            row[2].axis("off")
        else:
            for axis, direction in zip(row, DIRECTIONS):
                for m, style in ((1, "-o"), (10, "--s")):
                    coop, be = series(f"coop_{direction}_r@{m}@subset"), series(f"be_{direction}_r@{m}@subset")
                    gap = [None if c is None or b is None else c - b for c, b in zip(coop, be)]
                    axis.plot(steps, gap, style, color="tab:red", markersize=4, label=f"Coop - BE, R@{m}")
                axis.axhline(0.0, color="grey", linewidth=1)
                axis.set_title(f"{curve['label']}: {names[direction]}, Coop (k = 20) - BE", fontsize=9)
                axis.set_ylabel("points")
                axis.legend(fontsize=7)
            for direction, color in zip(DIRECTIONS, ("tab:purple", "tab:green")):
                for m, style in ((1, "-o"), (10, "--s")):
                    row[2].plot(steps, series(f"ce_{direction}_r@{m}@pool"), style, color=color, markersize=4,
                                label=f"{direction} R@{m}")  # fmt: skip
            row[2].set_title(f"{curve['label']}: full cross-encoding of the pool", fontsize=9)
            row[2].set_ylabel("recall (%)")
            row[2].legend(fontsize=7)
        for axis in row:
            axis.grid(alpha=0.3)
    for axis in axes[-1]:
        axis.set_xlabel("training step (CE / joint runs count from their BE's last step)")
    figure.suptitle(
        "Flickr8k dev (MiniLM-L6 + MobileNetV2 3x3 grid, 2-core CPU): recall against training steps. Coop and BE on "
        "the same seeded caption queries and their images; the pool is small (easier than the 1k protocol)",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.985))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def grid_name(result: dict[str, Any]) -> str:
    """The image features a tables result was evaluated on (files without the record: the MobileNetV2 store)."""
    featurizer = result.get("featurizer") or {"type": "MobileNetV2GridFeaturizer", "config": {"grid_size": 3}}
    config = featurizer.get("config", {})
    network = "MobileNetV2"
    if featurizer["type"] == "EfficientNetLiteGridFeaturizer":
        network = "EfficientNet-Lite" + str(config.get("weights", "lite?")).split("lite")[-1][:1]
    grid = config.get("grid_size")
    tags = f" + {config['num_tags']} tags" if config.get("num_tags") else ""
    return f"{network} {grid}x{grid} grid{tags}" if grid else f"{network} grid{tags}"


def render(output: Path) -> str:
    parts = []
    # One tables file per evaluation run (e.g. flickr8k_en_sep.json and flickr8k_en_joint.json, run side by side).
    for path in sorted(RESULTS.glob("flickr8k_en*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("part") == "tables":
            title = f"## Tables from `{path.name}` (all-MiniLM-L6-v2 + {grid_name(result)})"
            parts.append(f"{title}\n\n" + render_tables(result))
    for path in sorted(RESULTS.glob("flickr8k_onnx*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        title = f"## The cross-encoder exported: Coop with eager PyTorch vs ONNX Runtime (`{path.name}`)"
        parts.append(f"{title}\n\n" + render_onnx(result))
    curves = []
    for path in sorted(RESULTS.glob("flickr8k_curve_*.json")):
        curve = json.loads(path.read_text(encoding="utf-8"))
        curves.append(curve)
        parts.append(f"## Learning curve: {curve['label']}\n\n" + render_curve(curve))
    if curves:
        plot_curves(curves, RESULTS / "flickr8k_curves.png")
        parts.append("![learning curves](flickr8k_curves.png)\n")
    head = (
        "# Flickr8k: the paper's tables in shape, offline on CPU\n\n"
        "Generated by `benchmarks/flickr8k.py` (tables and run details); do not edit the numbers by hand. "
        "Every recall comes from `ImageTextRetrievalEvaluator`. Image features: ImageNet MobileNetV2 7x7 map "
        "average-pooled to 3x3 + the whole image (10 regions x 1280 + OSCAR box geometry), not Faster R-CNN "
        "regions. Raw numbers: `flickr8k_en.json`, `flickr8k_curve_*.json`.\n\n"
    )
    analysis = ""
    if output.is_file():
        text = output.read_text(encoding="utf-8")
        if ANALYSIS_MARKER in text:
            analysis = text[text.index(ANALYSIS_MARKER) :]
    return head + "\n".join(parts) + "\n" + (analysis or ANALYSIS_MARKER + "\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    output = RESULTS / "flickr8k.md"
    if args.part != "render":
        if not (args.data_dir / "dev" / "captions.jsonl").is_file():
            sys.exit(
                f"No Flickr8k data at {args.data_dir} (expected train/ and dev/ with captions.jsonl); see --data-dir"
            )
        if args.features is None:
            sys.exit("--features STORE is required: the feature store the models were trained from")
        if args.part == "embeddings":
            if args.be is None or args.output_dir is None:
                sys.exit("embeddings needs --be MODEL and --output-dir DIR")
            write_embeddings(args)
            return
        start = time.perf_counter()
        result = {"tables": run_tables, "curve": run_curve, "onnx": run_onnx}[args.part](args)
        result |= {
            "command": "python "
            + " ".join([os.path.relpath(__file__, REPO), *(argv if argv is not None else sys.argv[1:])]),
            "commit": commit(),
            "machine": machine(),
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "total_seconds": time.perf_counter() - start,
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        print({"tables": render_tables, "curve": render_curve, "onnx": render_onnx}[args.part](result))
        if args.no_write:
            return
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = {
            "tables": f"flickr8k_{args.name}.json",
            "curve": f"flickr8k_curve_{result.get('label')}.json",
            "onnx": f"flickr8k_onnx_{args.name}.json",
        }[args.part]
        (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    output.write_text(render(output), encoding="utf-8")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
