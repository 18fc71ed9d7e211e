"""The reranker of a search: a saved model's cross-encoder view on one of the backends ``mm-sbert search
--ce-backend`` names, refused when its score head was never trained."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from mm_sbert.errors import IncompatibleModelError, InvalidInputError

# Where the cross-encoder reranks: eager float32 (the reference), eager bfloat16, ONNX Runtime float32 or int8.
CE_BACKENDS = ("torch", "bf16", "onnx", "onnx-int8")
ONNX_FILES = {"onnx": "onnx/model.onnx", "onnx-int8": "onnx/model_qint8.onnx"}


def onnx_export_path(folder: str | os.PathLike, backend: str) -> str | None:
    """The ONNX file that :func:`load_cross_encoder` will export into ``folder`` for ``backend`` (``None`` when the
    backend is eager or the file is there already)."""
    if backend not in ONNX_FILES:
        return None
    path = os.path.join(os.fspath(folder), ONNX_FILES[backend])
    return None if os.path.isfile(path) else path


def load_cross_encoder(folder: str | os.PathLike, backend: str = "torch", device: str = "cpu") -> Any:
    """The :class:`~mm_sbert.MMCrossEncoder` of the saved model ``folder`` on ``backend`` (one of
    :data:`CE_BACKENDS`): ``"bf16"`` loads the weights in bfloat16 (fast on CPUs with bfloat16 units, slow
    elsewhere); ``"onnx"`` / ``"onnx-int8"`` run it in ONNX Runtime, exporting it into ``folder/onnx/`` the first
    time (:func:`onnx_export_path`).

    Raises:
        ValueError: an unknown backend.
    """
    from mm_sbert.models import MMCrossEncoder

    folder = os.fspath(folder)
    if backend == "torch":
        return MMCrossEncoder(folder, device=device)
    if backend == "bf16":
        import torch

        return MMCrossEncoder(folder, device=device, model_kwargs={"dtype": torch.bfloat16})
    if backend not in ONNX_FILES:
        raise InvalidInputError(f"backend must be one of {CE_BACKENDS}, got {backend!r}")
    return MMCrossEncoder(folder, device=device, backend="onnx", model_kwargs={"file_name": ONNX_FILES[backend]})


def check_can_rerank(reranker: Any, what: str, separate: bool = False) -> bool:
    """Whether ``reranker`` reranks a search: ``False`` for a bi-encoder's own model without a score head (it only
    retrieves), ``True`` for a trained (or unrecorded) score head.

    Args:
        reranker: either view of an mm_sbert model.
        what: how the message names it.
        separate: it is a separately given cross-encoder (then a missing head is refused too).

    Raises:
        IncompatibleModelError: its score head was never trained (or it is ``separate`` and has none); the message
            says how to search anyway.
    """
    from mm_sbert.models import check_view_trained
    from mm_sbert.models.views import has_score_head

    if not separate and not has_score_head(reranker):
        return False
    try:
        check_view_trained(reranker, "cross_encoder", what)
    except IncompatibleModelError as error:
        raise IncompatibleModelError(f"{error}; search with --no-rerank, or rerank with --cross-encoder CE") from error
    return True


def load_reranker(
    model: Any,
    model_folder: str | os.PathLike,
    cross_encoder: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    backend: str = "torch",
) -> Any:
    """The reranker of a search whose bi-encoder is ``model`` (the saved model at ``model_folder``): the separately
    trained ``cross_encoder`` folder (several folders: their :class:`~mm_sbert.retrieval.CrossEncoderEnsemble`),
    else ``model``'s own score head, on ``backend`` (:func:`load_cross_encoder`).

    Returns:
        The cross-encoder, or ``None`` where ``model`` itself reranks (its own head in eager float32, which
        :class:`~mm_sbert.retrieval.CooperativeRetriever` uses as it is) or only retrieves (it has no score head).

    Raises:
        IncompatibleModelError: a score head was never trained (:func:`check_can_rerank`), or an ensemble's
            members featurize images differently.
    """
    if isinstance(cross_encoder, list | tuple):
        if len(cross_encoder) > 1:
            from mm_sbert.retrieval.cross_encoder_ensemble import CrossEncoderEnsemble

            members = [load_reranker(model, model_folder, folder, backend) for folder in cross_encoder]
            return CrossEncoderEnsemble(members, names=[f"--cross-encoder {folder}" for folder in cross_encoder])
        cross_encoder = cross_encoder[0] if cross_encoder else None
    separate = cross_encoder is not None
    reranker = None
    if separate or backend != "torch":
        reranker = load_cross_encoder(cross_encoder if separate else model_folder, backend)
    what = f"--cross-encoder {cross_encoder}" if separate else f"the index's model {os.fspath(model_folder)}"
    check_can_rerank(model if reranker is None else reranker, what, separate=separate)
    return reranker
