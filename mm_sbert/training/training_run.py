"""One whole training run, as ``mm-sbert train`` does it: decide once whether to continue a saved model or start a
new one on a text backbone, read the data (through a feature store if given), build the model, check it against
the store, train with a :class:`~mm_sbert.training.TrainingRecipe` and save the final model.

The refusals name the settings by their ``mm-sbert train`` option names (``--similarity-start``, ``--tags``...),
since this function is that command."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mm_sbert.backbones.offline_backbones import DEFAULT_BACKBONE
from mm_sbert.errors import InvalidInputError
from mm_sbert.training.training_recipe import TrainingRecipe, is_saved_model, new_model

# What a saved model's training may create anew: its image projection is trained, only the score head (and the
# cross-modal bias of a similarity start) may be new.
SAVED_MODEL_NEW_LAYERS = ("classifier", "cross_modal_attention_bias")


@dataclass
class TrainingResult:
    """What :func:`train_model` did.

    Attributes:
        model: the trained model (bi-encoder view).
        path: the folder the final model was saved to (``<output_dir>/final``).
        pairs: the (caption, image) training rows.
        steps: the optimizer steps the trainer took (a resumed run counts its checkpoint's).
        continued: whether a saved model was continued (else a new one was built on a text backbone).
    """

    model: Any
    path: str
    pairs: int
    steps: int
    continued: bool


def torch_cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check); elsewhere bf16 autocast is emulated and slower."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def new_model_featurizer(name: str | None = None, grid_size: int | None = None, store: Any | None = None) -> Any:
    """The featurizer of a new model: the built-in ``name`` (``"color-grid"``, ``"mobilenet-grid"``,
    ``"color-blob"``, see :func:`~mm_sbert.image_features.featurizer_names.featurizer_from_name`) with
    ``grid_size``; without a name, the one that built ``store`` (so the model later featurizes new photos into the
    same regions), else a 3 x 3 colour grid.

    Raises:
        InvalidInputError: ``grid_size`` without a grid featurizer's name, or out of its range.
    """
    from mm_sbert.data.store_image_resolver import featurizer_from_store
    from mm_sbert.image_features.featurizer_names import featurizer_from_name

    if grid_size is not None and name not in ("color-grid", "mobilenet-grid"):
        raise InvalidInputError("--grid-size goes with --featurizer color-grid or mobilenet-grid")
    if name is None and store is not None:
        return featurizer_from_store(store)
    try:
        return featurizer_from_name(name or "color-grid", grid_size)
    except ValueError as error:
        raise InvalidInputError(str(error)) from error


def train_model(
    corpus: Any,
    output_dir: str | os.PathLike,
    recipe: TrainingRecipe,
    model: str | os.PathLike = DEFAULT_BACKBONE,
    *,
    store: Any | None = None,
    image_part: tuple[int, int] | None = None,
    featurizer: Any | None = None,
    grid_size: int | None = None,
    head_input: str | None = None,
    fusion_layer: int = 0,
    img_layernorm: bool = False,
    layers: int | None = None,
    tags: bool | None = None,
    similarity_start: bool = False,
    cross_modal_bias: float = -4.0,
    bf16: bool = False,
    device: str = "cpu",
    resume: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> TrainingResult:
    """Train a model on ``corpus`` with ``recipe`` and save it to ``<output_dir>/final``.

    ``output_dir`` is claimed first (:func:`~mm_sbert.training.training_output.training_output`: never a folder of
    the user's, nor an input, one run at a time), and every setting and the data are checked before a model loads.
    The process's random generators are seeded with ``recipe.seed`` before any layer is drawn (a new model's image
    projection and head, a replaced head), so one command and seed train the same model on the same threads.

    Args:
        corpus: the :class:`~mm_sbert.data.ImageCaptionCorpus` to train on.
        output_dir: where checkpoints and the final model go.
        recipe: the objectives, losses and schedule. Continuing a saved model, only its score head (and bias) count
            as new layers.
        model: a saved mm_sbert model folder to continue (it keeps its featurizer and layers), or a text backbone
            (folder, hub id or offline name) to build a new model on with :func:`~mm_sbert.training.new_model`.
        store: a :class:`~mm_sbert.image_features.FeatureStore` (or its folder): the training images' regions are
            read from it (matched by file name) instead of featurizing them; a new model takes its featurizer.
        image_part: ``(part, parts)``: train on that part of the images only (:meth:`ImageCaptionCorpus.image_part`).
        featurizer: a new model's featurizer: an :class:`~mm_sbert.image_features.ImageFeaturizer` or a name for
            :func:`new_model_featurizer` (default: the store's, else a 3 x 3 colour grid).
        grid_size: cells per side of a new model's grid featurizer.
        head_input: a new model's score head input (default ``"first_token"``); for a saved model, a new random head
            of this kind replaces its own.
        fusion_layer / img_layernorm / layers: a new model's late fusion, image LayerNorm and depth.
        tags: read the images' tags beside the caption (``True`` needs a tagging featurizer); ``None`` keeps the
            model's setting.
        similarity_start: from a saved bi-encoder (``cross_encoder`` / ``joint`` only): a new score head that starts
            as its cosine, with a learned cross-modal attention bias starting at ``cross_modal_bias``.
        bf16: bfloat16 autocast (refused on a CPU without native bfloat16).
        device: where the model trains.
        resume: continue from the newest completely written checkpoint in ``output_dir``.
        inputs: the caller's other input paths (data file...), which ``output_dir`` may not be or hold.

    Raises:
        InvalidInputError: settings that do not go together, a model that cannot be built, too little data.
        StorageError: a store that lacks a training image or was built by another featurizer than the model's.
        UnsafeOutputError / OutputInUseError: see :func:`~mm_sbert.training.training_output.training_output`.
    """
    from transformers import set_seed

    from mm_sbert.data.store_image_resolver import StoreImageResolver
    from mm_sbert.image_features import FeatureStore
    from mm_sbert.models import MMSentenceTransformer
    from mm_sbert.models.loading import MODEL_FOLDER_KIND
    from mm_sbert.storage import mark_owned_folder
    from mm_sbert.training.training_output import last_complete_checkpoint, training_output

    name = os.fspath(model)
    # Decided once: a saved mm_sbert model to continue, or a text backbone to start a new model from.
    saved = os.path.isdir(name) and is_saved_model(name)
    store_path = None if store is None or isinstance(store, FeatureStore) else os.fspath(store)
    with training_output(output_dir, inputs=[*inputs, name, store_path]):
        _check_settings(recipe, saved, head_input, similarity_start)
        # The trainer seeds only when it is made, after the new layers below were drawn.
        set_seed(recipe.seed)
        if saved:
            recipe.new_layers = SAVED_MODEL_NEW_LAYERS
        if store_path is not None:
            store = FeatureStore(store_path)
        if image_part is not None:
            try:
                corpus = corpus.image_part(*image_part)
            except ValueError as error:
                raise InvalidInputError(f"--image-part {image_part[0]}/{image_part[1]}: {error}") from error
        dataset = corpus.to_dataset()
        if store is not None:
            StoreImageResolver(store).apply(dataset)
        if saved:
            trained = MMSentenceTransformer(name, device=device)
        else:
            if featurizer is None or isinstance(featurizer, str):
                featurizer = new_model_featurizer(featurizer, grid_size, store)
            try:
                trained = new_model(
                    name,
                    featurizer,
                    layers=layers,
                    device=device,
                    head_input=head_input or "first_token",
                    fusion_layer=fusion_layer,
                    use_img_layernorm=img_layernorm,
                )
            except (ValueError, ImportError) as error:
                raise InvalidInputError(f"--model {name}: {error}") from error
        module = trained[0]
        if saved and head_input is not None and not similarity_start:
            module.reset_score_head(head_input)
        if tags is not None:
            if tags and not getattr(module.featurizer, "num_tags", 0):
                raise InvalidInputError(
                    "--tags on needs a model whose featurizer tags images: train on a store written by "
                    "`mm-sbert featurize --featurizer mobilenet-grid --tags K` (a new model takes its featurizer)"
                )
            module.add_od_labels = tags
        if similarity_start:
            module.start_cross_encoder(cross_modal_bias=cross_modal_bias)
        if store is not None:
            store.check_featurizer(module.featurizer)
        if bf16 and device == "cpu" and not torch_cpu_has_bf16():
            raise InvalidInputError(
                "--bf16: this CPU has no native bfloat16 support (AMX / AVX512-BF16); leave it out"
            )
        training_args = recipe.training_args(os.fspath(output_dir), use_cpu=device == "cpu", bf16=bf16)
        try:
            trainer = recipe.trainer(trained, dataset, os.fspath(output_dir), args=training_args)
        except ValueError as error:
            raise InvalidInputError(str(error)) from error
        # The newest checkpoint written completely: a save killed half-way is skipped, not fatal.
        trainer.train(resume_from_checkpoint=last_complete_checkpoint(output_dir) if resume else None)
    final = os.path.join(os.fspath(output_dir), "final")
    trained.save(final)
    mark_owned_folder(final, MODEL_FOLDER_KIND)
    return TrainingResult(trained, final, len(dataset), trainer.state.global_step, saved)


def _check_settings(recipe: TrainingRecipe, saved: bool, head_input: str | None, similarity_start: bool) -> None:
    groups = recipe.neighbour_group_size
    if groups is not None:
        if recipe.regime == "bi_encoder":
            raise InvalidInputError(
                "--neighbour-groups shapes the cross-encoder's batches: use it with `ce` or `joint`"
            )
        if groups > recipe.batch_size:
            raise InvalidInputError(
                f"--neighbour-groups must be between 2 and --batch-size ({recipe.batch_size}), got {groups}"
            )
        if not saved:
            raise InvalidInputError(
                "--neighbour-groups groups images by a trained bi-encoder: give --model a saved model"
            )
    if similarity_start:
        if not saved or recipe.regime == "bi_encoder":
            raise InvalidInputError(
                "--similarity-start needs `ce` or `joint` and --model a saved (trained) bi-encoder"
            )
        if head_input is not None:
            raise InvalidInputError(
                "--similarity-start chooses the head itself (cosine_match); leave out --head-input"
            )
