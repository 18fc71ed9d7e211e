"""One place that turns a few named settings into a model's losses, training arguments and trainer."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
from torch import nn

from mm_sbert.backbones.offline_backbones import DEFAULT_BACKBONE
from mm_sbert.training.grouped_batch_sampler import GroupedBatchSampler, image_neighbour_groups
from mm_sbert.training.joint_trainer import CROSS_ENCODER, JointTrainer
from mm_sbert.training.training_args import PAPER_HYPERPARAMETERS, Regime, paper_training_args

BiEncoderLossName = Literal["triplet", "infonce"]
CrossEncoderLossName = Literal["bce", "listwise"]
# The layers that are new on top of a text checkpoint: the image projection, its LayerNorm, the score head.
NEW_LAYERS = ("img_embedding", "img_layer_norm", "classifier", "cross_modal_attention_bias")

# `mm-sbert train`'s regime names, and its options (the vocabulary of the published recipes) -> recipe fields.
REGIME_NAMES: dict[str, Regime] = {"be": "bi_encoder", "ce": "cross_encoder", "joint": "joint"}
OPTION_FIELDS = {
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "new_lr": "new_layer_learning_rate",
    "be_loss": "bi_encoder_loss",
    "margin": "margin",
    "ce_loss": "cross_encoder_loss",
    "ce_negatives": "negatives",
    "hard_negatives": "hard_negatives",
    "neighbour_groups": "neighbour_group_size",
    "steps_ratio": "steps_ratio",
    "seed": "seed",
    "save_steps": "save_steps",
}


@dataclass
class TrainingRecipe:
    """The settings of one training run: which objectives, which losses, how long, how fast.

    :meth:`losses`, :meth:`training_args` and :meth:`trainer` build the run from them, so ``mm-sbert train``, the
    demo, the training examples and the benchmarks train the same way from the same names.

    Args:
        regime: ``"bi_encoder"``, ``"cross_encoder"`` or ``"joint"`` (both objectives alternating on shared weights).
        steps: optimizer steps (joint: both objectives' steps count).
        batch_size: (caption, image) pairs per step.
        learning_rate: learning rate of the pretrained weights; ``None``: the paper's for the regime.
        new_layer_learning_rate: learning rate of the untrained layers named in ``new_layers`` (through the host's
            ``learning_rate_mapping``); ``None``: the same as ``learning_rate``.
        new_layers: the :class:`~mm_sbert.modules.MultimodalTransformer` layers that start untrained: on a text
            checkpoint the image projection, its LayerNorm and the score head; continuing from a trained
            bi-encoder, only ``("classifier",)``.
        bi_encoder_loss: ``"triplet"`` (the paper's hardest-negative triplet loss,
            :class:`~mm_sbert.losses.HardNegativeTripletLoss`) or ``"infonce"`` (in-batch softmax in both directions,
            the host's ``MultipleNegativesRankingLoss``).
        margin: the triplet loss's margin.
        hardest_negative: the triplet loss on the hardest negative in the batch (the paper's, VSE++); ``False`` sums
            over all negatives (VSE).
        infonce_directions: the directions of ``"infonce"`` (the host's ``MultipleNegativesRankingLoss``): both by
            default; ``("query_to_doc",)`` ranks only images for a caption, as the demo does.
        infonce_partition_mode: the host's ``partition_mode`` of ``"infonce"``: ``"joint"`` (one softmax over all
            directions' candidates) or ``"per_direction"`` (one softmax per direction).
        cross_encoder_loss: ``"bce"`` (the paper's, :class:`~mm_sbert.losses.CrossEncoderBCELoss`) or ``"listwise"``
            (:class:`~mm_sbert.losses.CrossEncoderListwiseLoss`).
        negatives: cross-encoder negatives per positive; ``None``: 1 for ``bce``, 3 for ``listwise``.
        hard_negatives: mine the cross-encoder's negatives with the bi-encoder view in the same batch (as ALBEF's
            image-text matching does) instead of drawing them at random.
        neighbour_group_size: cross-encoder batches made of groups of this many look-alike images, each image with
            its nearest neighbours by the model's bi-encoder view at the start of training
            (:func:`~mm_sbert.training.image_neighbour_groups` into a :class:`~mm_sbert.training.GroupedBatchSampler`),
            so its in-batch (and mined) negatives are as hard as the candidates it reranks; ``None``: random batches.
        steps_ratio: joint training's bi-encoder : cross-encoder steps per round.
        seed: random seed of the run.
        save_steps: checkpoint every this many steps (``None``: only at the end).
        logging_steps: log the losses every this many steps (``None``: about 20 times per run).
        max_grad_norm: gradient clipping (the reference code's 1.0).

    Example:
        >>> recipe = TrainingRecipe("bi_encoder", steps=1_000, batch_size=128, bi_encoder_loss="infonce")
        >>> recipe.trainer(model, corpus.to_dataset(), "runs/be").train()
    """

    regime: Regime = "joint"
    steps: int = 1_000
    batch_size: int = 32
    learning_rate: float | None = None
    new_layer_learning_rate: float | None = None
    new_layers: tuple[str, ...] = NEW_LAYERS
    bi_encoder_loss: BiEncoderLossName = "triplet"
    margin: float = 0.1
    hardest_negative: bool = True
    infonce_directions: tuple[str, ...] = ("query_to_doc", "doc_to_query")
    infonce_partition_mode: Literal["joint", "per_direction"] = "joint"
    cross_encoder_loss: CrossEncoderLossName = "bce"
    negatives: int | None = None
    hard_negatives: bool = False
    neighbour_group_size: int | None = None
    steps_ratio: tuple[int, int] = field(default=(1, 1))
    seed: int = 0
    save_steps: int | None = None
    logging_steps: int | None = None
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.regime not in PAPER_HYPERPARAMETERS:
            raise ValueError(f"regime must be one of {sorted(PAPER_HYPERPARAMETERS)}, got {self.regime!r}")
        if self.bi_encoder_loss not in ("triplet", "infonce"):
            raise ValueError(f"bi_encoder_loss must be 'triplet' or 'infonce', got {self.bi_encoder_loss!r}")
        if self.infonce_partition_mode not in ("joint", "per_direction"):
            raise ValueError(
                f"infonce_partition_mode must be 'joint' or 'per_direction', got {self.infonce_partition_mode!r}"
            )
        if self.cross_encoder_loss not in ("bce", "listwise"):
            raise ValueError(f"cross_encoder_loss must be 'bce' or 'listwise', got {self.cross_encoder_loss!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (in-batch negatives need two pairs), got {self.batch_size}")
        if self.negatives is not None and self.negatives < 1:
            raise ValueError(f"negatives must be >= 1, got {self.negatives}")
        for name in ("learning_rate", "new_layer_learning_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.neighbour_group_size is not None and self.neighbour_group_size < 2:
            raise ValueError(f"neighbour_group_size must be >= 2, got {self.neighbour_group_size}")
        if self.save_steps is not None and self.save_steps < 1:
            raise ValueError(f"save_steps must be >= 1, got {self.save_steps}")
        self.steps_ratio = tuple(self.steps_ratio)
        self.new_layers = tuple(self.new_layers)
        self.infonce_directions = tuple(self.infonce_directions)
        unknown = set(self.new_layers) - set(NEW_LAYERS)
        if unknown or not self.new_layers:
            raise ValueError(f"new_layers must be a non-empty subset of {NEW_LAYERS}, got {self.new_layers}")

    @classmethod
    def from_options(cls, regime: str, options: Mapping[str, Any]) -> TrainingRecipe:
        """The recipe of ``mm-sbert train``'s options: ``regime`` ``"be"``, ``"ce"`` or ``"joint"`` (or a full regime
        name) and the options by their argparse names (``lr``, ``new_lr``, ``be_loss``, ``ce_loss``,
        ``ce_negatives``, ``neighbour_groups``..., the vocabulary of :data:`~mm_sbert.training.published_recipes.
        PUBLISHED_RECIPES`); options that are missing or ``None`` keep the field's default, other keys are ignored."""
        fields = {
            option: field_name for option, field_name in OPTION_FIELDS.items() if options.get(option) is not None
        }
        return cls(
            regime=REGIME_NAMES.get(regime, regime), **{name: options[option] for option, name in fields.items()}
        )

    @property
    def trains_bi_encoder(self) -> bool:
        return self.regime in ("bi_encoder", "joint")

    @property
    def trains_cross_encoder(self) -> bool:
        return self.regime in ("cross_encoder", "joint")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def losses(self, model: Any) -> tuple[nn.Module | None, nn.Module | None]:
        """``(bi_encoder_loss, cross_encoder_loss)`` for ``model``, ``None`` for an objective the regime skips."""
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        from mm_sbert.losses import CrossEncoderBCELoss, CrossEncoderListwiseLoss, HardNegativeTripletLoss

        bi_encoder_loss = cross_encoder_loss = None
        if self.trains_bi_encoder:
            if self.bi_encoder_loss == "triplet":
                bi_encoder_loss = HardNegativeTripletLoss(model, margin=self.margin, hardest=self.hardest_negative)
            else:
                bi_encoder_loss = MultipleNegativesRankingLoss(
                    model, directions=self.infonce_directions, partition_mode=self.infonce_partition_mode
                )
        if self.trains_cross_encoder:
            if self.cross_encoder_loss == "listwise":
                cross_encoder_loss = CrossEncoderListwiseLoss(
                    model, negatives=self.negatives or 3, hard_negatives=self.hard_negatives
                )
            else:
                cross_encoder_loss = CrossEncoderBCELoss(
                    model, negatives_per_positive=self.negatives or 1, hard_negatives=self.hard_negatives
                )
        return bi_encoder_loss, cross_encoder_loss

    def training_args(self, output_dir: str, **overrides: Any) -> SentenceTransformerTrainingArguments:
        """The paper's arguments for the regime (:func:`~mm_sbert.training.paper_training_args`) with this recipe's
        steps, batch, learning rates, seed and checkpointing; ``overrides`` win."""
        learning_rate = self.learning_rate or PAPER_HYPERPARAMETERS[self.regime]["learning_rate"]
        kwargs: dict[str, Any] = {
            "max_steps": self.steps,
            "per_device_train_batch_size": self.batch_size,
            "learning_rate": learning_rate,
            "seed": self.seed,
            "data_seed": self.seed,
            "max_grad_norm": self.max_grad_norm,
            "save_strategy": "steps" if self.save_steps else "no",
            "save_steps": self.save_steps or self.steps,
            "logging_steps": self.logging_steps or max(1, self.steps // 20),
            # Every row of a batch must keep its partner: a ragged last batch would also unbalance joint rounds.
            "dataloader_drop_last": True,
            "report_to": [],
        }
        if self.new_layer_learning_rate is not None and self.new_layer_learning_rate != learning_rate:
            # A regex over parameter names, e.g. "0.img_embedding.weight"; only the untrained layers.
            pattern = r"(^|\.)(" + "|".join(self.new_layers) + r")(\.|$)"
            kwargs["learning_rate_mapping"] = {pattern: self.new_layer_learning_rate}
        kwargs.update(overrides)
        return paper_training_args(output_dir, self.regime, **kwargs)

    def trainer(self, model: Any, train_dataset: Any, output_dir: str, **trainer_kwargs: Any) -> JointTrainer:
        """A :class:`~mm_sbert.training.JointTrainer` for ``model`` on ``train_dataset`` (columns caption, image,
        label); ``trainer_kwargs`` go to it (``args`` replaces :meth:`training_args`; ``evaluator``, ``callbacks``,
        ``batch_samplers``)."""
        bi_encoder_loss, cross_encoder_loss = self.losses(model)
        args = trainer_kwargs.pop("args", None) or self.training_args(output_dir)
        if self.neighbour_group_size is not None and self.trains_cross_encoder:
            batch_samplers = dict(trainer_kwargs.pop("batch_samplers", None) or {})
            if CROSS_ENCODER in batch_samplers:
                raise ValueError(
                    "Pass either neighbour_group_size or a cross_encoder entry in batch_samplers, not both"
                )
            groups = image_neighbour_groups(model, train_dataset, self.neighbour_group_size, seed=self.seed)
            batch_samplers[CROSS_ENCODER] = functools.partial(GroupedBatchSampler, groups=groups)
            trainer_kwargs["batch_samplers"] = batch_samplers
        return JointTrainer(
            model,
            train_dataset,
            bi_encoder_loss=bi_encoder_loss,
            cross_encoder_loss=cross_encoder_loss,
            steps_ratio=self.steps_ratio,
            args=args,
            **trainer_kwargs,
        )


def is_saved_model(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` is a saved mm_sbert model folder (its first module a MultimodalTransformer), as
    opposed to a text backbone to start a new model from."""
    from mm_sbert.models.loading import is_multimodal_folder

    path = os.fspath(name_or_path)
    return os.path.isfile(os.path.join(path, "modules.json")) and is_multimodal_folder(path)


def new_model(
    backbone: str | os.PathLike = DEFAULT_BACKBONE,
    featurizer: Any | None = None,
    layers: int | None = None,
    device: str | None = None,
    **module_kwargs: Any,
) -> Any:
    """A new joint model (bi-encoder view) on a text checkpoint: its transformer, ``featurizer`` for the images, a
    fresh image projection and score head. The one way to make a new model: ``mm-sbert train``, the demo, the
    training examples and the benchmarks call it. Its ``trained_views`` record starts empty.

    Args:
        backbone: a BERT / XLM-R / MiniLM checkpoint folder or hub id, or an offline name of
            :data:`~mm_sbert.backbones.OFFLINE_BACKBONES` (default: ``"all-MiniLM-L6-v2"``, no download).
        featurizer: the :class:`~mm_sbert.image_features.ImageFeaturizer` new images go through (default: a 3x3
            :class:`~mm_sbert.image_features.ColorGridFeaturizer`).
        layers: keep only the first ``layers`` transformer layers (a proportionally cheaper model; the paper's
            "halved" model of its Figure 4 keeps half of them).
        device: where the model goes.
        module_kwargs: :class:`~mm_sbert.modules.MultimodalTransformer` options (``head_input``, ``fusion_layer``,
            ``use_img_layernorm``, ``max_regions``, ...).

    Raises:
        ValueError: ``backbone`` is a saved mm_sbert model (load it instead), or ``layers`` / an option is out of
            range.
    """
    from mm_sbert.backbones import resolve_backbone
    from mm_sbert.image_features import ColorGridFeaturizer
    from mm_sbert.models import MMSentenceTransformer

    if is_saved_model(backbone):
        raise ValueError(f"{os.fspath(backbone)!r} is a saved mm_sbert model: load it with MMSentenceTransformer")
    path = resolve_backbone(backbone)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(
            f"{path!r} is neither an mm_sbert model folder nor a transformers checkpoint (no config.json)"
        )
    if featurizer is None:
        featurizer = ColorGridFeaturizer(grid_size=3)
    model = MMSentenceTransformer.from_backbone(
        path, featurizer=featurizer, region_feature_dim=featurizer.feature_dim, device=device, **module_kwargs
    )
    module = model[0]
    module.trained_views = []
    if layers is not None:
        module.keep_first_layers(layers)
    return model


def load_or_new_model(
    name_or_path: str | os.PathLike, device: str | None = None, **new_model_kwargs: Any
) -> tuple[Any, bool]:
    """``(model, is_saved)``: a saved mm_sbert model folder loaded as it is (to continue training), else
    :func:`new_model` on the backbone ``name_or_path`` with ``new_model_kwargs``."""
    from mm_sbert.models import MMSentenceTransformer

    if is_saved_model(name_or_path):
        return MMSentenceTransformer(os.fspath(name_or_path), device=device), True
    return new_model(name_or_path, device=device, **new_model_kwargs), False
