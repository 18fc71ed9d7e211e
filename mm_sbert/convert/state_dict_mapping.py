"""Key-by-key mapping of an original checkpoint onto ``MultimodalTransformer``, shared by every converter."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from mm_sbert.errors import CheckpointMismatchError
from mm_sbert.modules.multimodal_transformer import MultimodalTransformer

# Names the weights file of an original checkpoint may have inside its folder, in order of preference.
WEIGHT_FILE_NAMES = ("pytorch_model.bin", "model.safetensors", "m3p_under_weights.pth", "model.pth", "model.pt")

# What a converted 2-way softmax head scores (see ``two_way_head_to_logit``).
HEAD_SCORES = ("softmax", "class1-logit")


@dataclass
class ConversionReport:
    """What a conversion did with every key of the original checkpoint.

    Attributes:
        source_format: ``"oscar"``, ``"m3p"`` or ``"mmt-retrieval"``.
        loaded: target keys (``MultimodalTransformer`` names) filled from the checkpoint.
        ignored: source keys dropped by design (pretraining heads, unused buffers).
        unexpected: source keys no rule knows; a conversion refuses them unless ``allow_unexpected``.
        initialized: target keys the checkpoint does not hold, left freshly initialised (only the CE head may be).
        notes: numerical conversions applied on the way (2-way head to one logit, folded image projections ...).
        score: what the converted cross-encoder's score is and why (also written into the model card).
    """

    source_format: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    initialized: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    score: str = ""

    def summary(self) -> str:
        lines = [f"Converted a {self.source_format} checkpoint: {len(self.loaded)} tensors loaded"]
        if self.ignored:
            lines.append(f"  ignored by design ({len(self.ignored)}): {_preview_groups(self.ignored)}")
        if self.unexpected:
            lines.append(f"  unexpected, dropped ({len(self.unexpected)}): {_preview(self.unexpected)}")
        if self.initialized:
            lines.append(f"  not in the checkpoint, freshly initialised: {_preview(self.initialized)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        if self.score:
            lines.append(f"  cross-encoder score: {self.score}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_format": self.source_format,
            "loaded": self.loaded,
            "ignored": self.ignored,
            "unexpected": self.unexpected,
            "initialized": self.initialized,
            "notes": self.notes,
            "score": self.score,
        }


def _preview_groups(keys: list[str], limit: int = 12) -> str:
    """A few keys by name, or, when there are more, every top-level group with its count (``cls.* (7)``)."""
    if len(keys) <= limit:
        return _preview(keys, limit)
    groups: dict[str, int] = {}
    for key in keys:
        group = key.split(".", 1)[0] + ".*" if "." in key else key
        groups[group] = groups.get(group, 0) + 1
    return ", ".join(f"{group} ({count})" for group, count in groups.items())


def _preview(keys: list[str], limit: int = 12) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


@dataclass
class KeyMapper:
    """Renames source keys by regular expressions.

    Args:
        rules: ``(pattern, replacement)`` pairs; the first pattern that fully matches a key renames it
            (``re.fullmatch`` + ``Match.expand``, so ``\\1`` refers to groups).
        ignore: patterns of source keys dropped by design; checked before the rules.
    """

    rules: list[tuple[str, str]]
    ignore: list[str] = field(default_factory=list)

    def map(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str], list, list]:
        """Returns ``(mapped, source_of_target, ignored, unexpected)``."""
        compiled = [(re.compile(pattern), replacement) for pattern, replacement in self.rules]
        ignore = [re.compile(pattern) for pattern in self.ignore]
        mapped: dict[str, torch.Tensor] = {}
        source_of: dict[str, str] = {}
        ignored: list[str] = []
        unexpected: list[str] = []
        for key, tensor in state_dict.items():
            if any(p.fullmatch(key) for p in ignore):
                ignored.append(key)
                continue
            target = None
            for pattern, replacement in compiled:
                match = pattern.fullmatch(key)
                if match:
                    target = match.expand(replacement)
                    break
            if target is None:
                unexpected.append(key)
                continue
            if target in mapped:
                raise CheckpointMismatchError(
                    f"The checkpoint keys {source_of[target]!r} and {key!r} both map to {target!r}; "
                    "the checkpoint holds the same weight twice"
                )
            mapped[target] = tensor
            source_of[target] = key
        return mapped, source_of, sorted(ignored), sorted(unexpected)


def read_state_dict(path: str, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read an original checkpoint file (``torch.save`` pickle or safetensors) into a flat state dict.

    See :func:`read_checkpoint`, which also returns what the file holds besides the weights.
    """
    return read_checkpoint(path, trust_pickle)[0]


def read_checkpoint(path: str, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an original checkpoint file into ``(flat state dict, the wrapper's other entries)``.

    Accepts ``{"model": state_dict}`` / ``{"state_dict": ...}`` wrappers (M3P's trainer saves ``{epoch, n_total_iter,
    best_metrics, best_stopping_criterion, model, params}``; the other entries come back as the second value) and
    strips a ``module.`` prefix left by ``DataParallel`` / ``DistributedDataParallel``. The pickle is read with
    ``weights_only=True`` (tensors, plain containers and numpy scalars, which M3P's metrics are);
    ``trust_pickle=True`` lifts that for checkpoints that also pickled other Python objects: only for files from a
    source you trust, since unpickling can run code.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path}")
    extras: dict[str, Any] = {}
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state_dict: Any = load_file(path)
    else:
        try:
            with torch.serialization.safe_globals(_numpy_scalar_globals()):
                state_dict = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
        except Exception as exc:  # noqa: BLE001 - any unpickling problem means the same thing to the user
            hint = "" if trust_pickle else "; if it pickles Python objects and you trust its source, pass trust_pickle"
            raise CheckpointMismatchError(
                f"Could not read {path} as a PyTorch state dict of tensors ({type(exc).__name__}: {exc}){hint}"
            ) from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict, dict) and isinstance(state_dict.get(wrapper), dict):
            extras = {key: value for key, value in state_dict.items() if key != wrapper}
            state_dict = state_dict[wrapper]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointMismatchError(f"{path} does not hold a flat state dict of tensors")
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    return dict(state_dict), extras


def _numpy_scalar_globals() -> list:
    """numpy scalars and dtypes (in training checkpoints' metrics) rebuild from bytes without running code."""
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    # A file pickled under numpy 1.x names numpy.core; under 2.x numpy._core.
    return [
        np.dtype,
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        *(type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")),
    ]


def find_weights_file(folder: str, names: tuple[str, ...] = WEIGHT_FILE_NAMES) -> str:
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"No checkpoint weights in {folder}; looked for {', '.join(names)}")


def read_json(path: str) -> dict[str, Any]:
    """A config file that must hold one JSON object; anything else is a ``ValueError`` naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No config file at {path}")
    with open(path, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"The config file {path} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(
            f'The config file {path} must hold a JSON object ({{"key": value, ...}}), '
            f"got a JSON {_JSON_TYPES.get(type(config), type(config).__name__)}"
        )
    return config


_JSON_TYPES = {list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def normalise_layer_norm_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TF-converted BERT checkpoints call LayerNorm parameters ``gamma`` / ``beta``."""
    renamed = {}
    for key, value in state_dict.items():
        if "LayerNorm" in key:
            key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
        renamed[key] = value
    return renamed


def two_way_head_to_logit(
    weight: torch.Tensor, bias: torch.Tensor, key: str, head_score: str = "softmax"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a 2-class softmax head into one logit.

    ``head_score="softmax"``: ``(w1 - w0, b1 - b0)``, so ``sigmoid(score) = softmax(logits)[1]`` exactly.
    ``head_score="class1-logit"``: ``(w1, b1)``, the raw class-1 logit, so pairs rank as ``logits[:, 1]`` ranks them.
    A one-logit head is returned as is.
    """
    if head_score not in HEAD_SCORES:
        raise ValueError(f"head_score must be one of {HEAD_SCORES}, got {head_score!r}")
    if weight.ndim != 2 or bias.ndim != 1 or weight.shape[0] != bias.shape[0]:
        raise CheckpointMismatchError(
            f"{key}: expected a Linear head (weight [labels, hidden], bias [labels]), got weight "
            f"{tuple(weight.shape)} and bias {tuple(bias.shape)}"
        )
    if weight.shape[0] == 1:
        return weight, bias
    if weight.shape[0] != 2:
        raise CheckpointMismatchError(
            f"{key}: a {weight.shape[0]}-way classifier cannot become a relevance score; only 1-logit and 2-way "
            "(no match / match) retrieval heads convert"
        )
    if head_score == "class1-logit":
        return weight[1:2].clone(), bias[1:2].clone()
    return (weight[1] - weight[0]).unsqueeze(0), (bias[1] - bias[0]).unsqueeze(0)


_HEAD_KEYS = ("classifier.weight", "classifier.bias")
FRESH_HEAD_SCORE = (
    "none yet: the cross-encoder head is freshly initialised, so its scores mean nothing until the model is trained "
    "as a cross-encoder"
)


def add_classifier_head(
    mapped: dict[str, torch.Tensor],
    source_of: dict[str, str],
    report: ConversionReport,
    head_state_dict: dict[str, torch.Tensor] | None = None,
    head_source: str = "classifier",
    head_score: str = "softmax",
    fresh_head: bool = False,
) -> None:
    """Merge a separately stored ``classifier`` into ``mapped`` and turn a 2-way head into the one-logit head.

    ``head_score`` chooses what a 2-way head becomes (see :func:`two_way_head_to_logit`); ``fresh_head`` drops any
    head the checkpoint holds (reported as ignored), so the cross-encoder head starts random. Sets ``report.score``.
    """
    if head_score not in HEAD_SCORES:
        raise ValueError(f"head_score must be one of {HEAD_SCORES}, got {head_score!r}")
    if fresh_head:
        dropped = [source_of.pop(key) for key in _HEAD_KEYS if mapped.pop(key, None) is not None]
        dropped += [f"{head_source}:{key}" for key in sorted(head_state_dict or {})]
        report.ignored.extend(dropped)
        if dropped:
            report.notes.append(
                "fresh_head: the checkpoint's cross-encoder head was dropped; a random one replaces it"
            )
        report.score = FRESH_HEAD_SCORE
        return
    if head_state_dict is not None:
        if "classifier.weight" in mapped:
            raise CheckpointMismatchError(
                "The checkpoint already holds a classifier and a separate head was given; pass only one"
            )
        for key in _HEAD_KEYS:
            if key not in head_state_dict:
                raise CheckpointMismatchError(f"The head {head_source} has no {key}")
            mapped[key] = head_state_dict[key]
            source_of[key] = f"{head_source}:{key}"
        extra = sorted(set(head_state_dict) - set(_HEAD_KEYS))
        report.unexpected.extend(f"{head_source}:{key}" for key in extra)
    if not all(key in mapped for key in _HEAD_KEYS):
        report.score = FRESH_HEAD_SCORE
        return
    labels = mapped["classifier.weight"].shape[0]
    mapped["classifier.weight"], mapped["classifier.bias"] = two_way_head_to_logit(
        mapped["classifier.weight"], mapped["classifier.bias"], source_of["classifier.weight"], head_score
    )
    if labels != 2:
        report.score = "sigmoid of the checkpoint's one-logit head (higher = better match)"
        if head_score != "softmax":
            report.notes.append(f"head_score={head_score!r} changes nothing: the checkpoint's head has one logit")
    elif head_score == "softmax":
        report.notes.append(
            "2-way softmax head converted exactly into one logit (w1 - w0, b1 - b0): "
            "sigmoid(score) = softmax(logits)[1]"
        )
        report.score = (
            "softmax(logits)[1] of the original 2-way head (converted as w1 - w0, b1 - b0), its match probability, as "
            "OSCAR's run_retrieval.py and MMT-Retrieval's combination score modes use it; MMT-Retrieval's 'ce' "
            "scoring and retrieval script rank by the raw logits[:, 1], which can order pairs differently: convert "
            "with head_score='class1-logit' (--head-score class1-logit) to reproduce that ranking"
        )
    else:
        report.notes.append(
            "2-way softmax head reduced to its class-1 row (w1, b1): the score is the raw logits[:, 1]"
        )
        report.score = (
            "sigmoid(logits[:, 1]) of the original 2-way head (converted as w1, b1): pairs rank exactly as "
            "MMT-Retrieval's evaluators ('ce' score mode) and retrieval script rank them; it is not the softmax "
            "match probability, so combinations with the bi-encoder score weigh it differently from MMT-Retrieval's "
            "combination modes (convert with head_score='softmax' for those)"
        )


def load_mapped_weights(
    module: MultimodalTransformer,
    mapped: dict[str, torch.Tensor],
    report: ConversionReport,
    source_of: dict[str, str] | None = None,
    allow_unexpected: bool = False,
) -> None:
    """Check ``mapped`` against ``module`` and load it, or raise without touching the module.

    Refuses (``CheckpointMismatchError``) wrong shapes, missing weights other than the cross-encoder head, and, unless
    ``allow_unexpected``, source keys no rule knows. A missing head stays freshly initialised and is reported.
    """
    source_of = source_of or {}
    expected = module.state_dict()
    optional = {"classifier.weight", "classifier.bias"}
    missing = sorted(set(expected) - set(mapped))
    required_missing = [key for key in missing if key not in optional]
    not_in_model = sorted(set(mapped) - set(expected))
    wrong_shape = [
        f"{source_of.get(key, key)} -> {key}: checkpoint {tuple(mapped[key].shape)}, "
        f"model {tuple(expected[key].shape)}"
        for key in sorted(set(mapped) & set(expected))
        if mapped[key].shape != expected[key].shape
    ]
    problems = []
    if wrong_shape:
        problems.append(f"shapes that do not fit ({len(wrong_shape)}):\n    " + "\n    ".join(wrong_shape))
    if required_missing:
        problems.append(f"missing weights ({len(required_missing)}): {_preview(required_missing, 20)}")
    if not_in_model:
        problems.append(
            f"mapped keys this model has no place for: {_preview([source_of.get(k, k) for k in not_in_model], 20)}"
        )
    if report.unexpected and not allow_unexpected:
        problems.append(
            f"unexpected keys ({len(report.unexpected)}) no rule knows: {_preview(report.unexpected, 20)} "
            "(pass allow_unexpected=True / --allow-unexpected to drop them)"
        )
    if problems:
        raise CheckpointMismatchError(
            f"Refusing to convert this {report.source_format} checkpoint; nothing was loaded:\n  "
            + "\n  ".join(problems)
        )
    with torch.no_grad():
        for key, tensor in mapped.items():
            expected[key].copy_(tensor.to(expected[key].dtype))
    report.loaded = sorted(mapped)
    report.initialized = [key for key in missing if key in optional]
