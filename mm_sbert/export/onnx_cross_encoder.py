"""The cross-encoder's scoring forward exported to ONNX Runtime, optionally with int8 weights.

This package sits below :mod:`mm_sbert.modules`: ``MultimodalTransformer.load(..., backend="onnx")`` loads its
:class:`OnnxScorer` from here, and nothing here imports the modules, models or retrieval packages (the module is
duck-typed: ``preprocess``, ``classifier``, ``region_feature_dim``, ``onnx_scorer``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from mm_sbert.errors import InvalidInputError
from mm_sbert.image_features.image_loading import is_text
from mm_sbert.image_features.region_features import RegionFeatures
from mm_sbert.storage import check_output_path, lies_inside, mark_owned_folder
from mm_sbert.thread_policy import get_thread_policy

if TYPE_CHECKING:
    from mm_sbert.modules.multimodal_transformer import MultimodalTransformer

# The host's layout for exported backends: an onnx/ subfolder of the model folder.
ONNX_FOLDER = "onnx"
# What export_cross_encoder_onnx writes, for the ownership rule (mm_sbert.storage.ownership).
ONNX_EXPORT_KIND = "onnx-export"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model_qint8.onnx"
TEXT_INPUTS = ("input_ids", "text_mask", "token_type_ids", "tag_mask")
REGION_INPUTS = ("region_features", "region_mask")

logger = logging.getLogger(__name__)


class _ScoringForward(nn.Module):
    """``MultimodalTransformer.forward`` on the preprocessed tensors, returning only the logits ``[B]``."""

    def __init__(self, module: MultimodalTransformer, input_names: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.input_names = list(input_names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.module(dict(zip(self.input_names, tensors)))["scores"].reshape(-1)


def _module_of(cross_encoder: Any) -> MultimodalTransformer:
    module = cross_encoder if hasattr(cross_encoder, "region_feature_dim") else cross_encoder[0]
    if not hasattr(module, "region_feature_dim") or getattr(module, "classifier", None) is None:
        raise TypeError(
            f"Expected an MMCrossEncoder (or a MultimodalTransformer with a score head), got {type(cross_encoder)}"
        )
    return module


def export_cross_encoder_onnx(cross_encoder: Any, output_folder: str, quantize: bool = False) -> list[str]:
    """Export the cross-encoder's scoring forward to ``output_folder/onnx/model.onnx``.

    The graph takes the tensors ``MultimodalTransformer.preprocess`` makes (``input_ids``, ``text_mask``,
    ``token_type_ids`` where the backbone has them, ``region_features``, ``region_mask``) with dynamic batch, text
    and region widths, and returns the logits ``scores`` ``[B]``. Tokenising and featurizing stay in Python.

    Args:
        cross_encoder: an :class:`~mm_sbert.MMCrossEncoder` (or its ``MultimodalTransformer``).
        output_folder: usually the model's own folder; the files go into its ``onnx/`` subfolder.
        quantize: also write ``onnx/model_qint8.onnx``, with int8 weights (see :func:`quantize_weights_int8`).

    Returns:
        The paths written.

    Raises:
        ImportError: the ``onnx`` package is missing (``torch.onnx.export`` and the quantiser need it).
    """
    try:
        import onnx  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "Exporting to ONNX needs the `onnx` package besides onnxruntime: pip install onnx onnxruntime"
        ) from error
    module = _module_of(cross_encoder)
    folder = os.path.join(output_folder, ONNX_FOLDER)
    # The ownership rule (mm_sbert.storage): a new or empty folder, or an ONNX folder this function wrote.
    check_output_path(folder, ONNX_EXPORT_KIND, folder=True, what="The ONNX export folder")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ONNX_FILE)

    # An example with padding on both sides, so the traced attention mask is the general (padded) path.
    generator = torch.Generator().manual_seed(0)
    regions = [
        RegionFeatures(torch.rand(count, module.region_feature_dim, generator=generator), _boxes(count))
        for count in (3, 2)
    ]
    if module.add_od_labels:
        # A model that reads tags takes their mask too (the tags count with the image); one row without any.
        regions[0].tags = ["red circle", "dog"]
    example = module.preprocess([("a caption", regions[0]), ("a somewhat longer example caption", regions[1])])
    input_names = [name for name in (*TEXT_INPUTS, *REGION_INPUTS) if name in example]
    widths = {"input_ids": "text", "text_mask": "text", "token_type_ids": "text", "tag_mask": "text"}
    dynamic_axes = {name: {0: "batch", 1: widths.get(name, "regions")} for name in input_names}
    dynamic_axes["scores"] = {0: "batch"}
    wrapper = _ScoringForward(module, input_names)
    training = module.training
    module.eval()
    # A module loaded with backend="onnx" would answer from its old export; trace the PyTorch forward.
    scorer, module.onnx_scorer = module.onnx_scorer, None
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                tuple(example[name] for name in input_names),
                path,
                input_names=input_names,
                output_names=["scores"],
                dynamic_axes=dynamic_axes,
                opset_version=17,
                dynamo=False,
            )
    finally:
        module.train(training)
        module.onnx_scorer = scorer
    written = [path]
    if quantize:
        int8_path = os.path.join(folder, ONNX_INT8_FILE)
        quantize_weights_int8(path, int8_path)
        written.append(int8_path)
    mark_owned_folder(folder, ONNX_EXPORT_KIND)
    return written


def quantize_weights_int8(onnx_path: str, output_path: str) -> None:
    """Int8 weights, one scale per output channel, for every MatMul with a weight (ONNX Runtime's dynamic
    quantisation); the attention products of two activations (query x key, probabilities x value) stay float32.

    Quantising those too, with one scale per tensor, cost a trained Flickr8k cross-encoder 3-6 points of Coop R@1;
    this recipe moves it by about one point either way, at about the same speed
    (benchmarks/results/retrieval_latency.md). Eager bfloat16 is closer to float32 where the CPU supports it.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(onnx_path, load_external_data=False).graph
    weights = {initializer.name for initializer in graph.initializer}
    with_weights = [
        node.name for node in graph.node if node.op_type == "MatMul" and any(name in weights for name in node.input)
    ]
    quantize_dynamic(
        onnx_path,
        output_path,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=with_weights,
        per_channel=True,
    )


def _boxes(count: int) -> torch.Tensor:
    starts = torch.linspace(0.0, 0.5, count)
    return torch.stack([starts, starts, starts + 0.5, starts + 0.5], dim=1)


class OnnxScorer:
    """An ONNX Runtime session over an exported scoring graph: preprocessed features in, logits ``[B]`` out.

    ``MMCrossEncoder(..., backend="onnx")`` scores through it (``model[0].onnx_scorer``).

    Args:
        onnx_path: the file written by :func:`export_cross_encoder_onnx`.
        threads: intra-op threads (default: the free cores, see :class:`~mm_sbert.ThreadPolicy`).
        provider: the ONNX Runtime execution provider.
    """

    def __init__(self, onnx_path: str, threads: int | None = None, provider: str = "CPUExecutionProvider") -> None:
        import onnxruntime as ort

        if not os.path.isfile(onnx_path):
            raise FileNotFoundError(
                f"No ONNX model at {onnx_path!r}; write one with export_cross_encoder_onnx(cross_encoder, folder)"
            )
        self.onnx_path = onnx_path
        options = ort.SessionOptions()
        # Fixed for the session's life: the free cores when it is created (mm_sbert.ThreadPolicy).
        options.intra_op_num_threads = get_thread_policy().threads_for("rerank", threads=threads)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_path, options, providers=[provider])
        self.input_names = [node.name for node in self.session.get_inputs()]

    def __repr__(self) -> str:
        return f"OnnxScorer(onnx_path={self.onnx_path!r}, inputs={self.input_names})"

    def __call__(self, features: dict[str, Any]) -> torch.Tensor:
        if "tag_mask" in self.input_names and "tag_mask" not in features:
            features = {**features, "tag_mask": torch.zeros_like(features["text_mask"])}  # no image has tags
        missing = [name for name in self.input_names if name not in features]
        if missing:
            raise ValueError(f"The features lack {missing}, which the exported model {self.onnx_path!r} takes")
        feeds = {name: np.ascontiguousarray(features[name].detach().cpu().numpy()) for name in self.input_names}
        (scores,) = self.session.run(["scores"], feeds)
        return torch.from_numpy(scores).float()


ONNX_FILES = {f"{ONNX_FOLDER}/{ONNX_FILE}": False, f"{ONNX_FOLDER}/{ONNX_INT8_FILE}": True}


def ensure_onnx_export(
    module: MultimodalTransformer,
    folder: str,
    file_name: str = f"{ONNX_FOLDER}/{ONNX_FILE}",
    export: bool | None = None,
) -> str:
    """The path of ``file_name`` inside the model folder ``folder``, exported there first when it is missing (or
    ``export=True``), as the host does for ``backend="onnx"``: ``onnx/model.onnx`` in float32,
    ``onnx/model_qint8.onnx`` with int8 weights."""
    if module.classifier is None:
        raise ValueError(
            "backend='onnx' runs the cross-encoder's score head in ONNX Runtime, but this model has no score head "
            "(a bi-encoder); load it with backend='torch'"
        )
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(folder, file_name))
    if not lies_inside(path, root):
        raise ValueError(f"The ONNX file_name {file_name!r} points outside the model folder {folder!r}")
    relative = os.path.relpath(path, root).replace(os.sep, "/")
    if export or (export is None and not os.path.isfile(path)):
        if relative not in ONNX_FILES:
            raise FileNotFoundError(
                f"No ONNX model at {path!r}, and only {sorted(ONNX_FILES)} can be exported on load; pass one of those "
                "as file_name, or export it yourself"
            )
        logger.info("Exporting the cross-encoder to %s", path)
        export_cross_encoder_onnx(module, folder, quantize=ONNX_FILES[relative])
    return path


def load_onnx_scorer(
    module: MultimodalTransformer,
    folder: str,
    file_name: str = f"{ONNX_FOLDER}/{ONNX_FILE}",
    provider: str = "CPUExecutionProvider",
    export: bool | None = None,
) -> OnnxScorer:
    """The scorer of ``MultimodalTransformer.load(..., backend="onnx")``, from the host's ``model_kwargs``
    (``file_name``, ``provider``, ``export``); see :func:`ensure_onnx_export`."""
    return _checked_scorer(
        module, OnnxScorer(ensure_onnx_export(module, folder, file_name, export), provider=provider)
    )


def _checked_scorer(module: MultimodalTransformer, scorer: OnnxScorer) -> OnnxScorer:
    """``scorer``, after checking it reads what ``module`` reads: an export of a model that reads tags, made before
    the tags' mask was an input, would count the tags as caption and score differently from the model."""
    if module.add_od_labels and module.tells_modalities_apart and "tag_mask" not in scorer.input_names:
        raise InvalidInputError(
            f"The ONNX export {scorer.onnx_path!r} does not take the tags' mask, which this model reads (it was "
            "exported before tags were an input); export it again: export_cross_encoder_onnx(model, folder), or "
            "load with model_kwargs={'export': True}"
        )
    return scorer


def with_onnx_scorer(cross_encoder: Any, onnx_path: str, threads: int | None = None) -> Any:
    """A copy of ``cross_encoder`` whose pair scores come from the exported file ``onnx_path``, as
    ``MMCrossEncoder(folder, backend="onnx")`` loads it (for a model object, or an export outside its folder).

    Args:
        cross_encoder: an :class:`~mm_sbert.MMCrossEncoder`; it is not changed.
        onnx_path: a file written by :func:`export_cross_encoder_onnx`.
        threads: ONNX Runtime intra-op threads (default: the free cores, see :class:`~mm_sbert.ThreadPolicy`).
    """
    import copy

    _module_of(cross_encoder)
    fast = copy.deepcopy(cross_encoder).eval()
    fast[0].onnx_scorer = _checked_scorer(fast[0], OnnxScorer(onnx_path, threads=threads))
    return fast


def onnx_module(cross_encoder: Any) -> Any | None:
    """The ``MultimodalTransformer`` of a cross-encoder loaded with ``backend="onnx"`` (its ``onnx_scorer`` set),
    else ``None``: reranking then scores each query's candidates in one ONNX batch (:func:`score_candidates`)."""
    try:
        module = cross_encoder[0]
    except (TypeError, IndexError, KeyError):
        return None
    return module if getattr(module, "onnx_scorer", None) is not None and not module.training else None


def score_candidates(module: Any, query: Any, candidates: Sequence[Any]) -> torch.Tensor:
    """Logits ``[k]`` of the pairs (query, candidate) from ``module.onnx_scorer`` in one batch, the query
    preprocessed once (a caption with images, or an image with captions)."""
    return module.onnx_scorer(query_candidate_features(module, query, candidates)).reshape(-1)


def query_candidate_features(
    module: MultimodalTransformer, query: Any, candidates: Sequence[Any]
) -> dict[str, torch.Tensor]:
    """The preprocessed tensors of the k pairs (query, candidate), equal to ``module.preprocess`` of the pairs.

    The query is tokenised (or featurized) once and the candidates in one call; the pairs are joined as training
    joins them (:meth:`~mm_sbert.modules.MultimodalTransformer.join_pair_features`, an image's tags included).
    """
    if len(candidates) == 0:
        raise ValueError("score_candidates() got no candidates")
    query_kind = "text" if is_text(query) else "image"
    if {"text" if is_text(candidate) else "image" for candidate in candidates} != {"image", "text"} - {query_kind}:
        raise ValueError(
            f"The query and its candidates are all {query_kind}s; pass a caption with images or an image with captions"
        )
    query_features = module.preprocess([query])
    candidate_features = module.preprocess(list(candidates))
    k = len(candidates)
    same, each = torch.zeros(k, dtype=torch.long), torch.arange(k)
    if query_kind == "text":
        features = module.join_pair_features(query_features, candidate_features, same, each)
    else:
        features = module.join_pair_features(candidate_features, query_features, each, same)
    features["is_pair"] = torch.ones(k, dtype=torch.bool)
    return features
