"""Several cross-encoders that rerank as one: each pair's score is the mean of their logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from mm_sbert.errors import IncompatibleModelError, InvalidInputError


class CrossEncoderEnsemble:
    """Cross-encoders whose logits are averaged, used wherever one cross-encoder reranks: :func:`rerank`,
    :class:`CooperativeRetriever`, the evaluator, ``mm-sbert evaluate / search --cross-encoder A --cross-encoder B``.

    Two cross-encoders trained on different data (e.g. the two halves of a cross-fitted pair, each trained on the
    images the other's bi-encoder never saw) make different mistakes; their mean logit ranks the bi-encoder's top-k
    better than either alone, at the cost of one cross-encoding per member (rerank fewer candidates with more
    members: three over the top 5 cross-encode fewer pairs than one over the top 20). :func:`rerank` scores each
    member on its own fast path (eager or ONNX, the query prepared once) and averages; :meth:`predict` does the same
    through the members' ``predict``, so both give the same logits.

    Args:
        cross_encoders: two or more cross-encoders (anything with the host's ``CrossEncoder.predict``). Members that
            are mm_sbert models must read images the same way (one featurizer), so one set of candidate regions
            serves them all.
        names: how messages name the members (e.g. their folders); default ``cross_encoders[i]``.

    Raises:
        InvalidInputError: fewer than two members, or a member without ``predict``.
        IncompatibleModelError: members that featurize images differently.

    Example:
        >>> ensemble = CrossEncoderEnsemble([MMCrossEncoder("ce_half1"), MMCrossEncoder("ce_half2")])
        >>> retriever = CooperativeRetriever(bi_encoder, ensemble, top_k=20)
    """

    def __init__(self, cross_encoders: Sequence[Any], names: Sequence[str] | None = None) -> None:
        from mm_sbert.models import same_featurizer
        from mm_sbert.models.views import multimodal_module

        if isinstance(cross_encoders, str | bytes) or not isinstance(cross_encoders, Sequence):
            raise InvalidInputError(
                f"cross_encoders must be a list of cross-encoders, got {type(cross_encoders).__name__}"
            )
        members = list(cross_encoders)
        if len(members) < 2:
            raise InvalidInputError(
                f"An ensemble needs at least two cross-encoders, got {len(members)}; rerank with the model itself"
            )
        for position, member in enumerate(members):
            if isinstance(member, CrossEncoderEnsemble):
                raise InvalidInputError(f"cross_encoders[{position}] is a CrossEncoderEnsemble; list its members")
            check_cross_encoder(member, f"cross_encoders[{position}]")
        names = [f"cross_encoders[{position}]" for position in range(len(members))] if names is None else names
        if len(names) != len(members):
            raise InvalidInputError(f"Got {len(names)} names for {len(members)} cross-encoders")
        readers = [(name, m) for name, m in zip(names, members) if multimodal_module(m) is not None]
        for name, member in readers[1:]:
            if not same_featurizer(readers[0][1], member):
                raise IncompatibleModelError(
                    f"{name} featurizes images differently from {readers[0][0]}; the members of an ensemble must "
                    "read one set of candidate regions (train them on one feature store)"
                )
        self.cross_encoders = members

    def __len__(self) -> int:
        return len(self.cross_encoders)

    def __repr__(self) -> str:
        return f"CrossEncoderEnsemble({len(self)} cross-encoders)"

    @property
    def activation_fn(self) -> Callable:
        """What :meth:`predict` applies to the mean logit by default: the first member's activation."""
        return self.cross_encoders[0].activation_fn

    def predict(
        self,
        inputs: Any,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Callable | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        **kwargs: Any,
    ) -> Any:
        """The members' mean logit of each ``(caption, image)`` pair, then ``activation_fn`` (default: the first
        member's), returned as the host's ``CrossEncoder.predict`` returns it (one pair: one score)."""
        first = self.cross_encoders[0]
        singular = first.is_singular_input(inputs) if hasattr(first, "is_singular_input") else False
        pairs = [inputs] if singular else list(inputs)
        logits = [
            torch.as_tensor(
                member.predict(
                    pairs,
                    batch_size=batch_size,
                    show_progress_bar=show_progress_bar,
                    activation_fn=torch.nn.Identity(),
                    convert_to_tensor=True,
                    **kwargs,
                )
            )
            .detach()
            .float()
            .cpu()
            .reshape(-1)
            for member in self.cross_encoders
        ]
        scores = mean_logits(logits)
        scores = (activation_fn or self.activation_fn)(scores)
        if not convert_to_tensor:
            scores = scores.numpy() if convert_to_numpy else list(scores)
        return scores[0] if singular else scores


def check_cross_encoder(cross_encoder: Any, what: str = "cross_encoder") -> None:
    """Refuse what cannot rerank: anything but a :class:`CrossEncoderEnsemble` or an object with ``predict``.

    Raises:
        InvalidInputError: naming ``what`` and its type (for a list: how to rerank with several).
    """
    if isinstance(cross_encoder, CrossEncoderEnsemble) or callable(getattr(cross_encoder, "predict", None)):
        return
    hint = (
        "; to rerank with several, pass CrossEncoderEnsemble([...])" if isinstance(cross_encoder, list | tuple) else ""
    )
    raise InvalidInputError(f"{what} is a {type(cross_encoder).__name__}, not a cross-encoder with predict(){hint}")


def ensemble_members(cross_encoder: Any) -> list[Any]:
    """The cross-encoders behind ``cross_encoder``: an ensemble's members, else ``[cross_encoder]``."""
    return list(cross_encoder.cross_encoders) if isinstance(cross_encoder, CrossEncoderEnsemble) else [cross_encoder]


def mean_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The members' logits ``[n]`` each, averaged in member order (rerank and predict average alike)."""
    return torch.stack(list(logits)).mean(dim=0)
