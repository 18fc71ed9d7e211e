"""The cross-encoder's scoring forward exported to ONNX Runtime, optionally with int8 weights."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mm_sbert.image_features.region_features import RegionFeatures
from mm_sbert.modules.multimodal_transformer import MultimodalTransformer
from mm_sbert.thread_policy import get_thread_policy

# The host's layout for exported backends: an onnx/ subfolder of the model folder.
ONNX_FOLDER = "onnx"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model_qint8.onnx"
TEXT_INPUTS = ("input_ids", "text_mask", "token_type_ids")
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
    module = cross_encoder[0] if not isinstance(cross_encoder, MultimodalTransformer) else cross_encoder
    if not isinstance(module, MultimodalTransformer) or module.classifier is None:
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
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ONNX_FILE)

    # An example with padding on both sides, so the traced attention mask is the general (padded) path.
    generator = torch.Generator().manual_seed(0)
    regions = [
        RegionFeatures(torch.rand(count, module.region_feature_dim, generator=generator), _boxes(count))
        for count in (3, 2)
    ]
    example = module.preprocess([("a caption", regions[0]), ("a somewhat longer example caption", regions[1])])
    input_names = [name for name in (*TEXT_INPUTS, *REGION_INPUTS) if name in example]
    widths = {"input_ids": "text", "text_mask": "text", "token_type_ids": "text"}
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

    Both :class:`OnnxCrossEncoder` and ``MMCrossEncoder(..., backend="onnx")`` score through it.

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
    if os.path.commonpath([path, root]) != root:
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
    return OnnxScorer(ensure_onnx_export(module, folder, file_name, export), provider=provider)


class OnnxCrossEncoder:
    """A cross-encoder whose transformer runs in ONNX Runtime; preprocessing stays the eager module's.

    It answers :meth:`predict` like :class:`~mm_sbert.MMCrossEncoder` (so it drops into
    :class:`~mm_sbert.CooperativeRetriever` as ``cross_encoder=``), and :meth:`score_candidates` scores one query
    against its k candidates in one batch, preprocessing the query once and padding only to the longest pair.
    Eager PyTorch stays the reference: the float32 export reproduces its logits to about 1e-5.

    Args:
        cross_encoder: the :class:`~mm_sbert.MMCrossEncoder` (or a model folder to load one from) whose tokenizer
            and featurizer preprocess the inputs.
        onnx_path: the exported file; default ``<model folder>/onnx/model.onnx`` when ``cross_encoder`` is a folder.
        threads: ONNX Runtime intra-op threads (default: the free cores, see :class:`~mm_sbert.ThreadPolicy`).

    Example:
        >>> export_cross_encoder_onnx(cross_encoder, "model-folder", quantize=True)
        >>> fast = OnnxCrossEncoder("model-folder", onnx_path="model-folder/onnx/model_qint8.onnx")
        >>> retriever = CooperativeRetriever(bi_encoder, fast, top_k=20)
    """

    def __init__(self, cross_encoder: Any, onnx_path: str | None = None, threads: int | None = None) -> None:
        if isinstance(cross_encoder, (str, os.PathLike)):
            from mm_sbert.models.mm_cross_encoder import MMCrossEncoder

            folder = str(cross_encoder)
            onnx_path = onnx_path or os.path.join(folder, ONNX_FOLDER, ONNX_FILE)
            cross_encoder = MMCrossEncoder(folder, device="cpu")
        if onnx_path is None:
            raise ValueError("onnx_path is required when cross_encoder is a model object, not a folder")
        self.module = _module_of(cross_encoder)
        self.scorer = OnnxScorer(onnx_path, threads=threads)

    @property
    def onnx_path(self) -> str:
        return self.scorer.onnx_path

    @property
    def session(self) -> Any:
        return self.scorer.session

    @property
    def input_names(self) -> list[str]:
        return self.scorer.input_names

    def __repr__(self) -> str:
        return f"OnnxCrossEncoder(onnx_path={self.onnx_path!r}, inputs={self.input_names})"

    def logits(self, features: dict[str, Any]) -> torch.Tensor:
        """Logits ``[B]`` of preprocessed features (the output of ``MultimodalTransformer.preprocess``)."""
        return self.scorer(features)

    def predict(
        self,
        inputs: Sequence[Any],
        batch_size: int = 32,
        activation_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        convert_to_tensor: bool = False,
        show_progress_bar: bool = False,
        **kwargs: Any,
    ) -> np.ndarray | torch.Tensor:
        """Scores of ``(caption, image)`` pairs, as ``MMCrossEncoder.predict``: sigmoid probabilities by default,
        raw logits with ``activation_fn=torch.nn.Identity()``."""
        if len(inputs) == 0:
            raise ValueError("predict() got an empty list of pairs; pass at least one (caption, image) pair")
        logits = torch.cat(
            [
                self.logits(self.module.preprocess(list(inputs[start : start + batch_size])))
                for start in range(0, len(inputs), batch_size)
            ]
        )
        scores = torch.sigmoid(logits) if activation_fn is None else activation_fn(logits)
        return scores if convert_to_tensor else scores.numpy()

    def score_candidates(self, query: Any, candidates: Sequence[Any]) -> torch.Tensor:
        """Logits ``[k]`` of the pairs (query, candidate) in one batch: the query preprocessed once.

        The query is a caption and the candidates images, or the query an image and the candidates captions.
        """
        return self.logits(query_candidate_features(self.module, query, candidates))


def query_candidate_features(
    module: MultimodalTransformer, query: Any, candidates: Sequence[Any]
) -> dict[str, torch.Tensor]:
    """The preprocessed tensors of the k pairs (query, candidate), equal to ``module.preprocess`` of the pairs.

    The query is tokenised (or featurized) once and its tensors repeated k times; the candidates are preprocessed
    in one call, padded to the longest of them.
    """
    from mm_sbert.retrieval.cooperative_retriever import collection_modality, is_text

    if len(candidates) == 0:
        raise ValueError("score_candidates() got no candidates")
    query_kind = "text" if is_text(query) else "image"
    if collection_modality(candidates, what="candidates") == query_kind:
        raise ValueError(
            f"The query and its candidates are all {query_kind}s; pass a caption with images or an image with captions"
        )
    query_features = module.preprocess([query])
    candidate_features = module.preprocess(list(candidates))
    text, regions = (
        (query_features, candidate_features) if query_kind == "text" else (candidate_features, query_features)
    )
    k = len(candidates)
    features = {}
    for names, source in ((TEXT_INPUTS, text), (REGION_INPUTS, regions)):
        for name in names:
            if name in source:
                tensor = source[name]
                features[name] = tensor.expand(k, *tensor.shape[1:]) if source is query_features else tensor
    features["is_pair"] = torch.ones(k, dtype=torch.bool)
    return features
