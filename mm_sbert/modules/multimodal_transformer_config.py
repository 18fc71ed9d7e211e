"""The options of a :class:`~mm_sbert.MultimodalTransformer` that are not the backbone's: one checked dataclass."""

from __future__ import annotations

import types
from dataclasses import asdict, dataclass, field, fields
from numbers import Integral, Real
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import numpy as np

from mm_sbert.image_features.region_features import BoxFormat

RegionOrder = Literal["text_first", "regions_first"]
EmbeddingMode = Literal["separate", "joint"]
ImageOnlyText = Literal["cls_sep", "cls"]
HeadInput = Literal["first_token", "mean", "text_image_match", "cosine_match"]


@dataclass
class MultimodalTransformerConfig:
    """What ``mm_transformer_config.json`` holds; every value is checked against its annotation on creation.

    The arguments are those of :class:`~mm_sbert.MultimodalTransformer`, which documents them. A ``min`` in a
    field's metadata is its smallest valid value.

    Raises:
        ValueError: a value has the wrong type (``"false"`` for a boolean, ``"fifty"`` for a number), is not one of
            the allowed choices, or is below its minimum. The message names the key and, with ``source``, the file.
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
    # [CLS] and [SEP] alone take two tokens.
    max_seq_length: int = field(default=70, metadata={"min": 2})
    max_regions: int = field(default=50, metadata={"min": 1})
    score_head: bool = True
    cross_modal_bias: float | None = None
    add_od_labels: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str | None = None) -> None:
        where = f" in {source}" if source else ""
        hints = get_type_hints(type(self))
        for item in fields(self):
            value, hint = getattr(self, item.name), hints[item.name]
            if get_origin(hint) in (Union, types.UnionType):
                # An optional option: None, or a value of the one other type.
                if value is None:
                    continue
                hint = next(arg for arg in get_args(hint) if arg is not type(None))
            if get_origin(hint) is Literal:
                if value not in get_args(hint):
                    raise ValueError(f"{item.name} must be one of {get_args(hint)}{where}, got {value!r}")
                continue
            if hint is bool:
                ok, expected = isinstance(value, (bool, np.bool_)), "true or false (a boolean, not a string)"
            elif hint is int:
                ok, expected = isinstance(value, Integral) and not isinstance(value, bool), "an integer"
            else:
                ok, expected = isinstance(value, Real) and not isinstance(value, bool), "a number"
            if not ok:
                raise ValueError(f"{item.name} must be {expected}{where}, got {value!r} ({type(value).__name__})")
            # numpy scalars become plain Python values, so the config stays JSON-serialisable.
            value = hint(value)
            setattr(self, item.name, value)
            if "min" in item.metadata and value < item.metadata["min"]:
                raise ValueError(f"{item.name} must be at least {item.metadata['min']}{where}, got {value!r}")
            if "min_exclusive" in item.metadata and value <= item.metadata["min_exclusive"]:
                raise ValueError(
                    f"{item.name} must be greater than {item.metadata['min_exclusive']}{where}, got {value!r}"
                )

    @classmethod
    def keys(cls) -> list[str]:
        return [item.name for item in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> MultimodalTransformerConfig:
        """Read a saved config; keys it lacks (written before an option existed) keep their defaults."""
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise ValueError(f"{source} has unknown keys {unknown}; was it written by a newer mm_sbert?")
        config = cls.__new__(cls)
        for item in fields(cls):
            setattr(config, item.name, values.get(item.name, item.default))
        config.validate(source)
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
