"""Key-by-key mapping of an original checkpoint onto ``MultimodalTransformer``, shared by every converter."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from mm_sbert.modules.multimodal_transformer import MultimodalTransformer

# Names the weights file of an original checkpoint may have inside its folder, in order of preference.
WEIGHT_FILE_NAMES = ("pytorch_model.bin", "model.safetensors", "m3p_under_weights.pth", "model.pth", "model.pt")


class CheckpointMismatchError(ValueError):
    """An original checkpoint does not fit the model it is converted into; nothing was loaded."""


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
    """

    source_format: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    initialized: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"Converted a {self.source_format} checkpoint: {len(self.loaded)} tensors loaded"]
        if self.ignored:
            lines.append(f"  ignored by design ({len(self.ignored)}): {_preview(self.ignored)}")
        if self.unexpected:
            lines.append(f"  unexpected, dropped ({len(self.unexpected)}): {_preview(self.unexpected)}")
        if self.initialized:
            lines.append(f"  not in the checkpoint, freshly initialised: {_preview(self.initialized)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_format": self.source_format,
            "loaded": self.loaded,
            "ignored": self.ignored,
            "unexpected": self.unexpected,
            "initialized": self.initialized,
            "notes": self.notes,
        }


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

    Accepts ``{"model": state_dict}`` / ``{"state_dict": ...}`` wrappers (M3P saves the former) and strips a
    ``module.`` prefix left by ``DataParallel``. The pickle is read with ``weights_only=True`` (tensors and plain
    containers only); ``trust_pickle=True`` lifts that for checkpoints that also pickled Python objects (training
    arguments ...): only for files from a source you trust, since unpickling can run code.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state_dict: Any = load_file(path)
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
        except Exception as exc:  # noqa: BLE001 - any unpickling problem means the same thing to the user
            hint = "" if trust_pickle else "; if it pickles Python objects and you trust its source, pass trust_pickle"
            raise CheckpointMismatchError(
                f"Could not read {path} as a PyTorch state dict of tensors ({type(exc).__name__}: {exc}){hint}"
            ) from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict, dict) and isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointMismatchError(f"{path} does not hold a flat state dict of tensors")
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def find_weights_file(folder: str, names: tuple[str, ...] = WEIGHT_FILE_NAMES) -> str:
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"No checkpoint weights in {folder}; looked for {', '.join(names)}")


def read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No config file at {path}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def normalise_layer_norm_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TF-converted BERT checkpoints call LayerNorm parameters ``gamma`` / ``beta``."""
    renamed = {}
    for key, value in state_dict.items():
        if "LayerNorm" in key:
            key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
        renamed[key] = value
    return renamed


def two_way_head_to_logit(weight: torch.Tensor, bias: torch.Tensor, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a 2-class softmax head into one logit: ``softmax(l)[1] = sigmoid(l1 - l0)``, exactly."""
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
    return (weight[1] - weight[0]).unsqueeze(0), (bias[1] - bias[0]).unsqueeze(0)


def add_classifier_head(
    mapped: dict[str, torch.Tensor],
    source_of: dict[str, str],
    report: ConversionReport,
    head_state_dict: dict[str, torch.Tensor] | None = None,
    head_source: str = "classifier",
) -> None:
    """Merge a separately stored ``classifier`` into ``mapped`` and turn a 2-way head into the one-logit head."""
    if head_state_dict is not None:
        if "classifier.weight" in mapped:
            raise CheckpointMismatchError(
                "The checkpoint already holds a classifier and a separate head was given; pass only one"
            )
        for key in ("weight", "bias"):
            if f"classifier.{key}" not in head_state_dict:
                raise CheckpointMismatchError(f"The head {head_source} has no classifier.{key}")
            mapped[f"classifier.{key}"] = head_state_dict[f"classifier.{key}"]
            source_of[f"classifier.{key}"] = f"{head_source}:classifier.{key}"
        extra = sorted(set(head_state_dict) - {"classifier.weight", "classifier.bias"})
        report.unexpected.extend(f"{head_source}:{key}" for key in extra)
    if "classifier.weight" in mapped and "classifier.bias" in mapped:
        labels = mapped["classifier.weight"].shape[0]
        mapped["classifier.weight"], mapped["classifier.bias"] = two_way_head_to_logit(
            mapped["classifier.weight"], mapped["classifier.bias"], source_of["classifier.weight"]
        )
        if labels == 2:
            report.notes.append(
                "2-way softmax head converted exactly into one logit (w1 - w0, b1 - b0): "
                "sigmoid(score) = softmax(logits)[1]"
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
