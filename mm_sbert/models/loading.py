"""What the bi-encoder and cross-encoder views share: the allow-list, the requirements key, joint folders."""

from __future__ import annotations

import json
from typing import Any

from sentence_transformers.util import load_file_path

from mm_sbert.modules.multimodal_transformer import MultimodalTransformer
from mm_sbert.version import __version__

# Only this package's own classes load without trust_remote_code; anything else in modules.json still needs it.
MM_SBERT_MODULE_CLASSES: dict[str, type] = {
    f"{MultimodalTransformer.__module__}.{MultimodalTransformer.__name__}": MultimodalTransformer,
}

REQUIREMENTS = {
    "mm_sbert": {
        "specifier": f">={__version__}",
        "reason": "This model's input module is mm_sbert.MultimodalTransformer: pip install mm_sbert",
    }
}


def read_modules_json(model_name_or_path: str, **hub_kwargs: Any) -> list[dict[str, Any]] | None:
    path = load_file_path(model_name_or_path, "modules.json", **hub_kwargs)
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def is_multimodal_folder(model_name_or_path: str, **hub_kwargs: Any) -> bool:
    """True when the saved model's first module is a MultimodalTransformer (a BE, CE or joint folder)."""
    modules = read_modules_json(model_name_or_path, **hub_kwargs)
    return bool(modules) and modules[0]["type"] in MM_SBERT_MODULE_CLASSES


def hub_kwargs_from(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: kwargs[key] for key in ("token", "cache_folder", "revision", "local_files_only") if key in kwargs}


class MultimodalLoadingMixin:
    """What both views add to the host's loading and saving; put it before the host class in the bases.

    - This package's own module classes load without ``trust_remote_code`` (anything else still needs it).
    - The saved config carries ``requirements``, so a user without mm_sbert gets an install hint.
    - Every folder of ours (bi-encoder, cross-encoder, joint) holds the same module, so it loads as either view
      without the host's "converting model type" path.
    """

    model_type: str

    def _get_model_config(self) -> dict[str, Any]:
        return super()._get_model_config() | {"requirements": REQUIREMENTS}

    def _load_module_class_from_ref(self, class_ref: str, *args: Any, **kwargs: Any) -> type:
        if class_ref in MM_SBERT_MODULE_CLASSES:
            return MM_SBERT_MODULE_CLASSES[class_ref]
        return super()._load_module_class_from_ref(class_ref, *args, **kwargs)

    def _get_model_type(self, model_name_or_path: str, **kwargs: Any) -> str:
        if is_multimodal_folder(model_name_or_path, **hub_kwargs_from(kwargs)):
            return self.model_type
        return super()._get_model_type(model_name_or_path, **kwargs)
