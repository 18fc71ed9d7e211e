"""What the bi-encoder and cross-encoder views share: the allow-list, the requirements key, joint folders."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, RootModel
from sentence_transformers.util import load_file_path

from mm_sbert.errors import InvalidFileError
from mm_sbert.modules.multimodal_transformer import MultimodalTransformer
from mm_sbert.storage import (
    StrictSchema,
    check_output_path,
    read_json_schema,
    register_folder_children,
    register_legacy_folder_kind,
)
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


# The kind of folder a saved model is, for the ownership rule (mm_sbert.storage.ownership).
MODEL_FOLDER_KIND = "model"


class _ModuleEntry(StrictSchema):
    idx: int = Field(ge=0)
    name: str
    path: str
    type: str


class _ModuleListFile(RootModel[list[_ModuleEntry]]):
    """``modules.json``: a list of module entries."""

    model_config = ConfigDict(strict=True)


class _SentenceTransformersConfig(StrictSchema):
    """The keys of ``config_sentence_transformers.json`` the host reads, with the types it expects."""

    prompts: dict[str, str] = {}
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None
    model_type: str | None = None
    # the host writes e.g. {"sentence_transformers": "6.3.0", "transformers": ...}
    version: dict[str, str] | None = Field(default=None, alias="__version__")


def read_modules_json(model_name_or_path: str, **hub_kwargs: Any) -> list[dict[str, Any]] | None:
    """The module list of a saved model (``None`` when it has no ``modules.json``), checked: a list of entries with
    ``idx`` (integer), ``name``, ``path`` and ``type`` (strings). Also checks ``config_sentence_transformers.json``
    when present. A damaged file is an :class:`~mm_sbert.errors.InvalidFileError` naming the file and the field."""
    path = load_file_path(model_name_or_path, "modules.json", **hub_kwargs)
    if path is None:
        return None
    checked = read_json_schema(path, _ModuleListFile, "modules.json file")
    for number, entry in enumerate(checked.root):
        # The host would load a module from wherever the path points (another model, any folder on the disk).
        outside = os.path.isabs(entry.path) or ".." in Path(entry.path.replace("\\", "/")).parts
        if outside or (os.path.isdir(model_name_or_path) and _escapes(model_name_or_path, entry.path)):
            raise InvalidFileError(
                f"The modules.json file '{path}' is invalid: field '{number}.path' names {entry.path!r}, which is "
                "outside the model folder; a module path is relative and stays inside it"
            )
    config_path = load_file_path(model_name_or_path, "config_sentence_transformers.json", **hub_kwargs)
    if config_path is not None:
        read_json_schema(config_path, _SentenceTransformersConfig, "sentence-transformers config")
    return [entry.model_dump() for entry in checked.root]


def _escapes(folder: str, relative: str) -> bool:
    """Whether ``folder/relative`` resolves (symbolic links followed) outside ``folder``."""
    root = Path(folder).resolve()
    target = (root / relative).resolve()
    return target != root and root not in target.parents


def is_multimodal_folder(model_name_or_path: str, **hub_kwargs: Any) -> bool:
    """True when the saved model's first module is a MultimodalTransformer (a BE, CE or joint folder)."""
    modules = read_modules_json(model_name_or_path, **hub_kwargs)
    return bool(modules) and modules[0]["type"] in MM_SBERT_MODULE_CLASSES


def _is_saved_model_folder(folder: Path) -> bool:
    """A model folder mm_sbert saved: both sentence-transformers files, and ``modules.json`` naming mm_sbert's module
    first (a folder that merely holds a ``modules.json`` is not one)."""
    if not (folder / "config_sentence_transformers.json").is_file():
        return False
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    return isinstance(modules, list) and bool(modules) and modules[0].get("type") in MM_SBERT_MODULE_CLASSES


register_legacy_folder_kind(MODEL_FOLDER_KIND, _is_saved_model_folder)
# MMCrossEncoder.export_onnx writes <model folder>/onnx/, where MMCrossEncoder(folder, backend="onnx") looks.
register_folder_children(MODEL_FOLDER_KIND, {"onnx": "onnx-export"})


def hub_kwargs_from(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: kwargs[key] for key in ("token", "cache_folder", "revision", "local_files_only") if key in kwargs}


def new_multimodal_transformer(model_name_or_path: str, **kwargs: Any) -> MultimodalTransformer:
    """An OSCAR-shaped MultimodalTransformer (2048-d regions, new image projection and head) on a plain checkpoint."""
    return MultimodalTransformer(
        model_name_or_path,
        cache_dir=kwargs.get("cache_folder"),
        model_kwargs=kwargs.get("model_kwargs"),
        processor_kwargs=kwargs.get("processor_kwargs"),
        config_kwargs=kwargs.get("config_kwargs"),
    )


class MultimodalLoadingMixin:
    """What both views add to the host's loading and saving; put it before the host class in the bases.

    - This package's own module classes load without ``trust_remote_code`` (anything else still needs it).
    - The saved config carries ``requirements``, so a user without mm_sbert gets an install hint.
    - Every folder of ours (bi-encoder, cross-encoder, joint) holds the same module, so it loads as either view
      without the host's "converting model type" path.
    """

    model_type: str

    def _load_modules(self, model_name_or_path: str, **kwargs: Any):
        modules = read_modules_json(model_name_or_path, **hub_kwargs_from(kwargs))
        if modules is not None and not is_multimodal_folder(model_name_or_path, **hub_kwargs_from(kwargs)):
            # The host would load it as it is (a text model reading image paths as text) or, for another model
            # type, rebuild it with a new, untrained head.
            first = modules[0]["type"] if modules else "no module"
            raise InvalidFileError(
                f"{model_name_or_path!r} is not an mm_sbert model: it is a sentence-transformers folder whose first "
                f"module is {first}, not mm_sbert's MultimodalTransformer, so it cannot read images. Load it with "
                "sentence_transformers.SentenceTransformer / CrossEncoder to use it on text, or start an image-text "
                f"model from its transformer with MMSentenceTransformer.from_backbone({model_name_or_path!r}) (and "
                ".to_cross_encoder() for the cross-encoder view, whose score head is then new and untrained)."
            )
        return super()._load_modules(model_name_or_path, **kwargs)

    def save(self, path: str, *args: Any, **kwargs: Any) -> None:
        """The host's ``save`` (and ``save_pretrained``, which calls it), after the ownership rule
        (:func:`~mm_sbert.storage.check_output_path`): a new or empty folder, or a model folder mm_sbert saved; a
        user's non-empty folder, a folder of another kind (an index, a feature store) or a path inside one is
        refused before anything is written."""
        if path is not None:
            check_output_path(path, MODEL_FOLDER_KIND, folder=True, what="The model folder")
        super().save(path, *args, **kwargs)

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
