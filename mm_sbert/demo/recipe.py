"""The demo's training recipe: all-MiniLM-L6-v2 + a colour featurizer, fine-tuned jointly on generated scenes.

``mm-sbert demo`` (:func:`~mm_sbert.demo.run_demo`) and ``benchmarks/demo_ablation.py`` build and train their
models here. The settings depart from the paper's recipe to learn within CPU minutes; :data:`NOTES` says where and
why.
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mm_sbert.image_features import ImageFeaturizer
    from mm_sbert.models import MMSentenceTransformer

DEFAULTS = {
    "train_images": 1000,
    "eval_images": 200,
    "warmup_steps": 60,
    "steps": 360,
    "batch_size": 16,
    "layers": 2,
    "eval_captions": 1,
    "family_size": 4,
}
QUICK = {
    "train_images": 24,
    "eval_images": 12,
    "warmup_steps": 1,
    "steps": 2,
    "batch_size": 8,
    "layers": 1,
    "eval_captions": 1,
    "family_size": 4,
}
# What tells the scenes of a family apart (SyntheticScenes' families, `mm-sbert demo --families`): one detail. With
# "binding" (the same words, another binding) neither view of this recipe left within-family chance in 120 rounds.
FAMILIES = "details"
# How the demo departs from the paper's recipe to learn within CPU minutes (printed with the results, see NOTES).
TRAINING = {
    "learning_rate": 3e-4,
    "new_layer_learning_rate": 3e-3,
    "cross_encoder_steps_per_round": 1,
    "family_batches": ("cross_encoder",),
    "listwise": True,
    "negatives_per_positive": 3,
}
MODULE_KWARGS = {"head_input": "text_image_match", "head_pooler": True, "fusion_layer": 1}
# Printed with every run: where the demo departs from the paper's recipe (§4.1) and why.
NOTES = (
    "How this demo differs from the paper's recipe, to learn on 2 CPU cores within minutes:",
    "- model: all-MiniLM-L6-v2 (text only) cut to its first layers (paper: OSCAR / M3P, 12 layers, pretrained on"
    " image-text pairs); images: {regions} (paper: 36 Faster R-CNN regions);",
    "- bi-encoder loss: in-batch InfoNCE (paper: triplet loss with the hardest in-batch negative, which from a"
    " cold start collapses within a few hundred steps);",
    "- cross-encoder loss: softmax over the positive pair and {negatives_per_positive} in-batch negatives"
    " (CrossEncoderListwiseLoss; paper: BCE with one random negative), in batches of whole scene families"
    " (GroupedBatchSampler), so the negatives are often look-alikes;",
    "- the cross-encoder head matches the mean text state with the mean region state ([t; r; t*r; |t-r|],"
    " head_input='text_image_match'; paper: [CLS]): MiniLM's [CLS] state was never trained, and from a text-only"
    " start a [CLS] or mean head stays far below the bi-encoder within this budget;",
    "- late fusion: the first layer reads the caption and the regions apart, only the second attends across both"
    " (fusion_layer=1; paper: single-stream from the first layer), so the caption is read as MiniLM was trained"
    " to read it before it is compared with the regions;",
    "- a bi-encoder-only warm-up before the joint rounds (paper: none): the cross-encoder stays at chance from a"
    " text-only start unless the region embeddings are first aligned with the words;",
    "- learning rate {learning_rate:g} for MiniLM's weights and {new_layer_learning_rate:g} for the new layers"
    " (paper: 5e-5 everywhere), batch {batch_size} (paper: 128), {warmup_steps} warm-up steps + {steps} joint"
    " rounds (paper: 30k rounds).",
)
# --regions: what one image region is. The grid is the default: the cross-encoder is closest to the bi-encoder there
# (docs/quickstart.md, "More training, object regions").
# "outlines" adds each cell's shape, which the binding families need (benchmarks/results/demo_binding.md); "tagged"
# also gives each image OSCAR-style words ("red circle" per object, ShapeTagger), read beside the caption.
REGIONS = {
    "grid": "a 3x3 colour grid",
    "outlines": "a 3x3 colour grid with each cell's 7x7 outline",
    "tagged": "a 3x3 colour grid with each cell's 7x7 outline, and a tag per object ('red circle')",
    "objects": "one region per object (ColorBlobFeaturizer)",
}


def regions_featurizer(regions: str, image_size: int = 64) -> ImageFeaturizer | None:
    """The featurizer for a ``--regions`` choice (``REGIONS``) on scenes of ``image_size`` pixels; ``None`` means
    :func:`build_demo_model`'s grid."""
    from mm_sbert.demo.synthetic_scenes import COLORS
    from mm_sbert.image_features import ColorBlobFeaturizer, ColorGridFeaturizer

    if regions in ("outlines", "tagged"):
        tag_colors = COLORS if regions == "tagged" else None
        return ColorGridFeaturizer(grid_size=3, resize_to=image_size, mask_size=7, tag_colors=tag_colors)
    return ColorBlobFeaturizer() if regions == "objects" else None


def build_demo_model(
    image_size: int, layers: int = 6, featurizer: ImageFeaturizer | None = None, **module_kwargs
) -> MMSentenceTransformer:
    """all-MiniLM-L6-v2 (its first ``layers`` layers) + ``featurizer`` (default: a 3x3 colour grid); a featurizer
    that tags its images makes a model that reads the tags (``add_od_labels``)."""
    from mm_sbert.image_features import ColorGridFeaturizer
    from mm_sbert.training import DEFAULT_BACKBONE, new_model

    if featurizer is None:
        featurizer = ColorGridFeaturizer(grid_size=3, resize_to=image_size)
    if getattr(featurizer, "tag_colors", None):
        module_kwargs.setdefault("add_od_labels", True)
    if "fusion_layer" in module_kwargs and layers >= 1:
        # A single layer cannot be split into reading and fusing: it then attends across both from the start.
        module_kwargs["fusion_layer"] = min(module_kwargs["fusion_layer"], layers - 1)
    return new_model(
        DEFAULT_BACKBONE,
        featurizer,
        layers=layers,
        device="cpu",
        max_seq_length=48,
        # Colour statistics are small numbers; LayerNorm puts the projected regions on the text embeddings' scale.
        use_img_layernorm=True,
        **module_kwargs,
    )


def fine_tune(
    model,
    train,
    steps: int,
    batch_size: int,
    seed: int,
    warmup_steps: int = 0,
    learning_rate: float = 2e-4,
    new_layer_learning_rate: float = 2e-3,
    cross_encoder_steps_per_round: int = 1,
    family_batches: Sequence[str] = (),
    hard_negatives: int | bool = False,
    negatives_per_positive: int = 1,
    listwise: bool = False,
    similarity_start: bool = False,
    cross_modal_bias: float | None = -4.0,
    show_progress_bar: bool = True,
) -> list[tuple[int, str, float]]:
    """Joint fine-tuning with the package's :class:`~mm_sbert.training.JointTrainer`; returns its objective history.

    Rounds of one bi-encoder step (in-batch InfoNCE, the host's ``MultipleNegativesRankingLoss``) and
    ``cross_encoder_steps_per_round`` cross-encoder steps on the shared weights, after ``warmup_steps``
    bi-encoder-only steps. The cross-encoder loss is :class:`~mm_sbert.losses.CrossEncoderBCELoss` with
    ``negatives_per_positive`` negatives per positive, or with ``listwise``
    :class:`~mm_sbert.losses.CrossEncoderListwiseLoss` with that many negatives per list; negatives are random or,
    with ``hard_negatives`` (``True``, or how many of them), mined by the bi-encoder in the batch. With
    ``similarity_start`` the joint rounds begin with
    :meth:`~mm_sbert.modules.MultimodalTransformer.start_cross_encoder` (``cross_modal_bias``): the cross-encoder
    starts out ranking by the warmed-up bi-encoder's similarity and learns what attending across the pair adds. In
    the joint rounds the objectives named in ``family_batches``
    get batches of whole scene families (:class:`~mm_sbert.training.GroupedBatchSampler`), the others random
    batches; the warm-up always draws random batches (look-alikes from a cold start stall the bi-encoder). The layers
    that are new on top of MiniLM (region projection, its LayerNorm, score head) learn at
    ``new_layer_learning_rate``. Nothing is written to disk: the trainer's output folder is a temporary one.
    """
    import torch

    from mm_sbert.training import GroupedBatchSampler, TrainingRecipe

    dataset = train.to_dataset()
    history: list[tuple[int, str, float]] = []
    families = train.families
    grouped = functools.partial(GroupedBatchSampler, groups=[families[i] for i in train.caption_image_ids])
    phases = [("bi-encoder warm-up", warmup_steps, False), ("joint", steps, True)]
    for phase, phase_steps, joint in phases:
        if phase_steps < 1:
            continue
        if show_progress_bar:
            print(f"      {phase}: {phase_steps} {'rounds' if joint else 'steps'}")
        if joint and similarity_start:
            model[0].start_cross_encoder(cross_modal_bias=cross_modal_bias)
        recipe = TrainingRecipe(
            "joint" if joint else "bi_encoder",
            steps=phase_steps * (1 + cross_encoder_steps_per_round if joint else 1),
            batch_size=batch_size,
            learning_rate=learning_rate,
            # The host's per-pattern learning rates (weight decay 0.05 on weights, none on biases and LayerNorms).
            new_layer_learning_rate=new_layer_learning_rate,
            bi_encoder_loss="infonce",
            infonce_directions=("query_to_doc",),
            cross_encoder_loss="listwise" if listwise else "bce",
            negatives=negatives_per_positive,
            hard_negatives=hard_negatives,
            steps_ratio=(1, cross_encoder_steps_per_round),
            seed=seed,
            logging_steps=max(1, phase_steps // 4),
        )
        # The card data describes the previous phase's single dataset; this phase's trainer has its own datasets (the
        # host would warn that the counts differ, then drop the stale entry).
        model.model_card_data.train_datasets = []
        with tempfile.TemporaryDirectory(prefix="mm_sbert_demo_") as scratch:
            # The demo's settings where they differ from the recipe's defaults: its results were measured with them.
            args = recipe.training_args(
                scratch,
                disable_tqdm=not show_progress_bar,
                dataloader_drop_last=False,
                data_seed=None,
                # Pinned memory only helps copies to an accelerator; without one torch warns on every epoch.
                dataloader_pin_memory=torch.cuda.is_available(),
            )
            trainer = recipe.trainer(
                model,
                dataset,
                scratch,
                args=args,
                batch_samplers=dict.fromkeys(family_batches, grouped) if joint else None,
            )
            trainer.train()
        offset = history[-1][0] + 1 if history else 0
        history += [(offset + step, objective, loss) for step, objective, loss in trainer.objective_history]
    model.eval()
    return history


def cross_encoder_chance_loss(listwise: bool = False, negatives_per_positive: int = 1, **_: object) -> float:
    """The cross-encoder loss of a model that cannot tell pairs apart: ln(1 + negatives) listwise, ln 2 for BCE."""
    return math.log(1 + negatives_per_positive) if listwise else math.log(2)
