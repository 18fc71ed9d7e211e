"""The options of a :class:`~mm_sbert.MultimodalTransformer` that are not the backbone's: one checked dataclass."""

from __future__ import annotations

import contextlib
import json
import os
import types
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from numbers import Integral, Real
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import numpy as np

from mm_sbert.errors import InvalidFileError, InvalidInputError, MissingFileError, MMSbertError
from mm_sbert.image_features.region_features import BoxFormat

# The files a saved backbone folder needs before transformers reads it (the tokenizer's own files vary by type).
BACKBONE_REQUIRED_FILES = ("config.json", "tokenizer_config.json")

RegionOrder = Literal["text_first", "regions_first"]
EmbeddingMode = Literal["separate", "joint"]
ImageOnlyText = Literal["cls_sep", "cls"]
HeadInput = Literal["first_token", "mean", "text_image_match", "cosine_match", "token_match"]
TrainedView = Literal["bi_encoder", "cross_encoder"]


@dataclass
class MultimodalTransformerConfig:
    """What ``mm_transformer_config.json`` holds; every value is checked against its annotation on creation.

    The arguments are those of :class:`~mm_sbert.MultimodalTransformer`, which documents them. A ``min`` in a
    field's metadata is its smallest valid value.

    Raises:
        InvalidInputError: (a ``ValueError``) a value has the wrong type (``"false"`` for a boolean, ``"fifty"`` for
            a number), is not one of the allowed choices, or is below its minimum. The message names the key.
        InvalidFileError: (a ``ValueError``) the same, read from a file (``source``): the message names the file.
    """

    region_feature_dim: int = field(default=2048, metadata={"min": 1})
    box_format: BoxFormat = "oscar"
    use_img_layernorm: bool = False
    img_layer_norm_eps: float = field(default=1e-12, metadata={"min_exclusive": 0.0})
    region_order: RegionOrder = "text_first"
    embedding_mode: EmbeddingMode = "separate"
    image_only_text: ImageOnlyText = "cls_sep"
    head_input: HeadInput = "first_token"
    head_pooler: bool = True
    fusion_layer: int = field(default=0, metadata={"min": 0})
    pair_layers: int = field(default=0, metadata={"min": 0})
    # [CLS] and [SEP] alone take two tokens.
    max_seq_length: int = field(default=70, metadata={"min": 2})
    max_regions: int = field(default=50, metadata={"min": 1})
    score_head: bool = True
    cross_modal_bias: float | None = None
    # The views whose objective has trained this module; None: not recorded (a folder saved before the record).
    trained_views: list[TrainedView] | None = None
    add_od_labels: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str | None = None) -> None:
        where = f" in {source}" if source else ""
        error = InvalidFileError if source else InvalidInputError
        hints = get_type_hints(type(self))
        for item in fields(self):
            value, hint = getattr(self, item.name), hints[item.name]
            if get_origin(hint) in (Union, types.UnionType):
                # An optional option: None, or a value of the one other type.
                if value is None:
                    continue
                hint = next(arg for arg in get_args(hint) if arg is not type(None))
            if get_origin(hint) is list:
                choices = get_args(get_args(hint)[0])
                if not isinstance(value, (list, tuple)) or any(entry not in choices for entry in value):
                    raise error(f"{item.name} must be a list of {choices}{where}, got {value!r}")
                setattr(self, item.name, sorted(set(value)))
                continue
            if get_origin(hint) is Literal:
                if value not in get_args(hint):
                    raise error(f"{item.name} must be one of {get_args(hint)}{where}, got {value!r}")
                continue
            if hint is bool:
                ok, expected = isinstance(value, (bool, np.bool_)), "true or false (a boolean, not a string)"
            elif hint is int:
                ok, expected = isinstance(value, Integral) and not isinstance(value, bool), "an integer"
            else:
                ok, expected = isinstance(value, Real) and not isinstance(value, bool), "a number"
            if not ok:
                raise error(f"{item.name} must be {expected}{where}, got {value!r} ({type(value).__name__})")
            # numpy scalars become plain Python values, so the config stays JSON-serialisable.
            value = hint(value)
            setattr(self, item.name, value)
            if "min" in item.metadata and value < item.metadata["min"]:
                raise error(f"{item.name} must be at least {item.metadata['min']}{where}, got {value!r}")
            if "min_exclusive" in item.metadata and value <= item.metadata["min_exclusive"]:
                raise error(f"{item.name} must be greater than {item.metadata['min_exclusive']}{where}, got {value!r}")

    @classmethod
    def keys(cls) -> list[str]:
        return [item.name for item in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> MultimodalTransformerConfig:
        """Read a saved config; keys it lacks (written before an option existed) keep their defaults."""
        if not isinstance(values, dict):
            raise InvalidFileError(f"{source} must hold a JSON object of options, got {type(values).__name__}")
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise InvalidFileError(f"{source} has unknown keys {unknown}; was it written by a newer mm_sbert?")
        config = cls.__new__(cls)
        for item in fields(cls):
            default = item.default_factory() if item.default_factory is not MISSING else item.default
            setattr(config, item.name, values.get(item.name, default))
        config.validate(source)
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_module_config(path: str) -> dict[str, Any]:
    """The JSON object of a saved module's config file, or a package error naming the file: missing
    (:class:`~mm_sbert.errors.MissingFileError`), unreadable, not JSON or not an object
    (:class:`~mm_sbert.errors.InvalidFileError`). :meth:`MultimodalTransformerConfig.from_dict` checks its values.
    """
    if not os.path.isfile(path):
        raise MissingFileError(
            f"{os.path.dirname(path)!r} has no {os.path.basename(path)}; it was not saved by mm_sbert's "
            "MultimodalTransformer. To start from a plain BERT / XLM-R checkpoint use "
            "MultimodalTransformer(model_name_or_path) instead."
        )
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidFileError(f"{path} is not valid JSON ({exc}); re-save or re-download the model") from None
    except OSError as exc:
        raise InvalidFileError(f"{path} cannot be read ({exc.strerror})") from None
    if not isinstance(saved, dict):
        raise InvalidFileError(f"{path} must hold a JSON object, got {type(saved).__name__}")
    return saved


def check_backbone_folder(path: str) -> None:
    """Refuse a saved backbone folder without its config or tokenizer config (transformers would otherwise look for
    them on the Hub, or fail naming no file)."""
    missing = [name for name in BACKBONE_REQUIRED_FILES if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise MissingFileError(
            f"No complete backbone at {path} ({', '.join(missing)} missing); the saved model folder is incomplete: "
            "re-save or re-download the model"
        )


@contextlib.contextmanager
def backbone_file_errors(path: str) -> Iterator[None]:
    """Turn what transformers raises on a damaged config or tokenizer file (invalid JSON, a wrong type, a missing
    key) into an :class:`~mm_sbert.errors.InvalidFileError` naming the folder."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises on reading a file (its own strict-config
        # errors derive from no built-in error) means the same: the file is damaged
        if isinstance(exc, (MMSbertError, MemoryError)):
            raise
        raise InvalidFileError(
            f"The backbone at {path} cannot be loaded: one of its files is damaged ({type(exc).__name__}: {exc}); "
            "re-save or re-download the model"
        ) from exc
