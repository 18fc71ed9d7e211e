"""The demo's training recipes: all-MiniLM-L6-v2 + a colour featurizer, fine-tuned on generated scenes into a
bi-encoder and a separate cross-encoder started from it (:func:`train_separate`: the demo), or into one joint model
(:func:`fine_tune`: the earlier demo, kept for the ablation rows measured with it).

``mm-sbert demo`` (:func:`~mm_sbert.demo.run_demo`) and ``benchmarks/demo_ablation.py`` build and train their
models here. The settings depart from the paper's recipe to learn within CPU minutes; :data:`NOTES` says where and
why.
"""

from __future__ import annotations

import copy
import functools
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mm_sbert.image_features import ImageFeaturizer
    from mm_sbert.models import MMSentenceTransformer

DEFAULTS = {
    "train_images": 1000,
    "eval_images": 200,
    "bi_encoder_steps": 420,
    "cross_encoder_steps": 300,
    "batch_size": 16,
    "layers": 2,
    "eval_captions": 1,
    "family_size": 4,
}
QUICK = {
    "train_images": 24,
    "eval_images": 12,
    "bi_encoder_steps": 3,
    "cross_encoder_steps": 2,
    "batch_size": 8,
    "layers": 1,
    "eval_captions": 1,
    "family_size": 4,
}
# What tells the scenes of a family apart (SyntheticScenes' families, `mm-sbert demo --families`): with "binding" every
# scene of a family shows the same colours, shapes and places and only which belongs to which object differs, the case
# a single pooled vector blurs and reading the pair together resolves (benchmarks/results/demo_binding.md).
FAMILIES = "binding"
# --regions: what one image region is, and the image's words. "placed" is the default: the scenes' objects named with
# their places ("red circle left", ShapeTagger) beside the grid, so caption and image can be matched word by word.
REGIONS = {
    "grid": "a 3x3 colour grid",
    "outlines": "a 3x3 colour grid with each cell's 7x7 outline",
    "tagged": "a 3x3 colour grid with each cell's 7x7 outline, and a tag per object ('red circle')",
    "placed": "a 3x3 colour grid with each cell's 7x7 outline, and a tag per object and its place ('red circle left')",
    "objects": "one region per object (ColorBlobFeaturizer)",
}
DEFAULT_REGIONS = "placed"
_NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
# The demo's bi-encoder: the first layer reads the caption and the image apart, the second attends across a pair
# (late fusion), so the cross-encoder started from it reads both sides as the bi-encoder learned to; no dropout (it
# held both views back by about 6 points of mean recall in this budget).
MODULE_KWARGS = {"fusion_layer": 1, "config_kwargs": _NO_DROPOUT}
# The cross-encoder: started from the trained bi-encoder with a new score head that compares each caption word with
# what it aligns with in the image (head_input="token_match"), trained on lists of look-alikes (whole scene families).
CROSS_ENCODER_HEAD = "token_match"
TRAINING = {
    "learning_rate": 3e-4,
    "new_layer_learning_rate": 3e-3,
    "cross_encoder_learning_rate": 1e-4,
    "cross_encoder_head_learning_rate": 1e-3,
    "negatives_per_positive": 3,
}
# The joint recipe of the earlier demo (one model, bi-encoder and cross-encoder steps on shared weights), which
# benchmarks/demo_ablation.py's rows were measured with (benchmarks/results/demo_binding.md); fine_tune() runs it.
JOINT_SIZES = {"warmup_steps": 60, "steps": 360}
JOINT_MODULE_KWARGS = {"head_input": "text_image_match", "head_pooler": True, "fusion_layer": 1}
JOINT_TRAINING = {
    "learning_rate": 3e-4,
    "new_layer_learning_rate": 3e-3,
    "cross_encoder_steps_per_round": 1,
    "family_batches": ("cross_encoder",),
    "listwise": True,
    "negatives_per_positive": 3,
}
# Printed with every run: where the demo departs from the paper's recipe (§4.1) and why.
NOTES = (
    "How this demo differs from the paper's recipe, to learn on 2 CPU cores within minutes:",
    "- model: all-MiniLM-L6-v2 (text only) cut to its first layers (paper: OSCAR / M3P, 12 layers, pretrained on"
    " image-text pairs); images: {regions} (paper: 36 Faster R-CNN regions and, in OSCAR, the detector's labels);",
    "- the cross-encoder starts from the trained bi-encoder (paper: both from OSCAR): its weights are the only ones"
    " here that have seen images and text together;",
    "- bi-encoder loss: in-batch InfoNCE (paper: triplet loss with the hardest in-batch negative, which from a"
    " cold start collapses within a few hundred steps);",
    "- cross-encoder loss: softmax over the positive pair and {negatives_per_positive} in-batch negatives"
    " (CrossEncoderListwiseLoss; paper: BCE with one random negative), in batches of whole scene families"
    " (GroupedBatchSampler), so the negatives are often look-alikes;",
    "- the cross-encoder head compares each caption word with the image positions it aligns with and pools the"
    " comparisons by mean and max (head_input='token_match', ESIM-style; paper: [CLS]): MiniLM's [CLS] state was"
    " never trained, and a head over pooled states ranks like the bi-encoder it starts from;",
    "- late fusion: the first layer reads the caption and the image apart, only the second attends across both"
    " (fusion_layer=1; paper: single-stream from the first layer); no dropout;",
    "- learning rates {learning_rate:g} (bi-encoder) / {cross_encoder_learning_rate:g} (cross-encoder) for the"
    " transformer and {new_layer_learning_rate:g} / {cross_encoder_head_learning_rate:g} for the new layers (paper:"
    " 2e-5 / 5e-5), batch {batch_size} (paper: 128), {bi_encoder_steps} bi-encoder + {cross_encoder_steps}"
    " cross-encoder steps (paper: 30k+).",
)


def regions_featurizer(regions: str, image_size: int = 64) -> ImageFeaturizer | None:
    """The featurizer for a ``--regions`` choice (``REGIONS``) on scenes of ``image_size`` pixels; ``None`` means
    :func:`build_demo_model`'s grid."""
    from mm_sbert.demo.synthetic_scenes import COLORS
    from mm_sbert.image_features import ColorBlobFeaturizer, ColorGridFeaturizer

    if regions in ("outlines", "tagged", "placed"):
        tag_colors = COLORS if regions in ("tagged", "placed") else None
        return ColorGridFeaturizer(
            grid_size=3, resize_to=image_size, mask_size=7, tag_colors=tag_colors, tag_places=regions == "placed"
        )
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
    from mm_sbert.training import TrainingRecipe

    history: list[tuple[int, str, float]] = []
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
        offset = history[-1][0] + 1 if history else 0
        samplers = dict.fromkeys(family_batches, _family_batches(train)) if joint else None
        history += [
            (offset + step, *entry) for step, *entry in _train(model, recipe, train, samplers, show_progress_bar)
        ]
    model.eval()
    return history


def train_bi_encoder(
    model,
    train,
    steps: int,
    batch_size: int,
    seed: int,
    learning_rate: float,
    new_layer_learning_rate: float,
    show_progress_bar: bool = True,
) -> list[tuple[int, str, float]]:
    """Train ``model``'s bi-encoder view alone: in-batch InfoNCE (the host's ``MultipleNegativesRankingLoss``, caption
    to image) on random batches, the layers new on top of MiniLM at ``new_layer_learning_rate``. Returns the
    objective history ``(step, "bi_encoder", loss)``."""
    from mm_sbert.training import TrainingRecipe

    recipe = TrainingRecipe(
        "bi_encoder",
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        new_layer_learning_rate=new_layer_learning_rate,
        bi_encoder_loss="infonce",
        infonce_directions=("query_to_doc",),
        seed=seed,
        logging_steps=max(1, steps // 4),
    )
    return _train(model, recipe, train, None, show_progress_bar)


def cross_encoder_from(bi_encoder, head_input: str = CROSS_ENCODER_HEAD):
    """A copy of a trained bi-encoder whose score head is a new one reading ``head_input``: the start of a separate
    cross-encoder (the bi-encoder itself is left as it is)."""
    model = copy.deepcopy(bi_encoder)
    model[0].reset_score_head(head_input, head_pooler=False)
    return model


def train_cross_encoder(
    model,
    train,
    steps: int,
    batch_size: int,
    seed: int,
    learning_rate: float,
    head_learning_rate: float,
    negatives_per_positive: int = 3,
    show_progress_bar: bool = True,
) -> list[tuple[int, str, float]]:
    """Train ``model``'s cross-encoder view alone (:class:`~mm_sbert.losses.CrossEncoderListwiseLoss` with
    ``negatives_per_positive`` in-batch negatives per list) on batches of whole scene families, so most lists hold
    look-alikes; the score head learns at ``head_learning_rate``, every other weight at ``learning_rate``. Returns the
    objective history ``(step, "cross_encoder", loss)``."""
    from mm_sbert.training import TrainingRecipe

    recipe = TrainingRecipe(
        "cross_encoder",
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        new_layer_learning_rate=head_learning_rate,
        new_layers=("classifier",),
        cross_encoder_loss="listwise",
        negatives=negatives_per_positive,
        seed=seed,
        logging_steps=max(1, steps // 4),
    )
    return _train(model, recipe, train, {"cross_encoder": _family_batches(train)}, show_progress_bar)


def train_separate(
    model,
    train,
    bi_encoder_steps: int,
    cross_encoder_steps: int,
    batch_size: int,
    seed: int,
    head_input: str = CROSS_ENCODER_HEAD,
    training: Mapping[str, float] = TRAINING,
    show_progress_bar: bool = True,
    on_stage: Callable[[str], None] | None = None,
) -> tuple[MMSentenceTransformer, list[tuple[int, str, float]]]:
    """The demo's separate recipe: ``model``'s bi-encoder view trained alone (:func:`train_bi_encoder`), then a
    cross-encoder started from it with a new ``head_input`` head (:func:`cross_encoder_from`,
    :func:`train_cross_encoder`), each at ``training``'s learning rates (keys as :data:`TRAINING`).

    ``on_stage`` is called with ``"bi_encoder"`` and then ``"cross_encoder"`` as each stage starts. Returns the
    cross-encoder model (``model`` stays the bi-encoder) and the objective history of both stages.
    """
    if on_stage is not None:
        on_stage("bi_encoder")
    history = train_bi_encoder(
        model,
        train,
        bi_encoder_steps,
        batch_size,
        seed,
        learning_rate=training["learning_rate"],
        new_layer_learning_rate=training["new_layer_learning_rate"],
        show_progress_bar=show_progress_bar,
    )
    if on_stage is not None:
        on_stage("cross_encoder")
    cross_encoder = cross_encoder_from(model, head_input)
    history += train_cross_encoder(
        cross_encoder,
        train,
        cross_encoder_steps,
        batch_size,
        seed,
        learning_rate=training["cross_encoder_learning_rate"],
        head_learning_rate=training["cross_encoder_head_learning_rate"],
        negatives_per_positive=training["negatives_per_positive"],
        show_progress_bar=show_progress_bar,
    )
    return cross_encoder, history


def _family_batches(train):
    """A batch sampler factory for :class:`~mm_sbert.training.JointTrainer`: batches of whole scene families."""
    from mm_sbert.training import GroupedBatchSampler

    return functools.partial(GroupedBatchSampler, groups=[train.families[i] for i in train.caption_image_ids])


def _train(model, recipe, train, batch_samplers, show_progress_bar: bool) -> list[tuple[int, str, float]]:
    """Run ``recipe`` on ``model`` with the demo's trainer settings in a temporary output folder (nothing is kept on
    disk), leaving the model in eval mode; returns the trainer's objective history."""
    import torch

    # The card data describes an earlier run's single dataset; this trainer has its own datasets (the host would warn
    # that the counts differ, then drop the stale entry).
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
        trainer = recipe.trainer(model, train.to_dataset(), scratch, args=args, batch_samplers=batch_samplers)
        trainer.train()
    model.eval()
    return list(trainer.objective_history)


def cross_encoder_chance_loss(listwise: bool = False, negatives_per_positive: int = 1, **_: object) -> float:
    """The cross-encoder loss of a model that cannot tell pairs apart: ln(1 + negatives) listwise, ln 2 for BCE."""
    return math.log(1 + negatives_per_positive) if listwise else math.log(2)
