"""Every file mm_sbert reads is checked against a schema (pydantic) before a value is used, with the file and the
field named in the error: a wrong type (``"normalized": "no"``), a missing key or a value out of range is refused,
never coerced and never left to fail later as a raw ``KeyError`` / ``AttributeError``."""

from __future__ import annotations

import os
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from mm_sbert.errors import InvalidFileError
from mm_sbert.storage.checked_folder import read_json_file

PathLike = str | os.PathLike
Schema = TypeVar("Schema", bound=BaseModel)


class StrictSchema(BaseModel):
    """Base of the package's file schemas: no coercion (``"1"`` is not 1, ``"no"`` is not a boolean); keys a newer
    minor version may add are kept, not refused (the format version says what a reader must understand)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=False)


def describe_validation_error(exc: ValidationError) -> str:
    """``field 'a.0.b': <reason> (got <value>)`` for the first problem pydantic found, plus how many more."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"]) or "(the whole file)"
    got = repr(first.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"field '{field}': {first['msg']} (got {got}){more}"


def validate_data(
    schema: type[Schema], data: Any, path: PathLike, what: str, error: type[Exception] = InvalidFileError
) -> Schema:
    """``schema`` validated from ``data`` (read from ``path``), or ``error`` naming the file and the field."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise error(f"The {what} '{path}' is invalid: {describe_validation_error(exc)}") from None


def read_json_schema(
    path: PathLike, schema: type[Schema], what: str, error: type[Exception] = InvalidFileError
) -> Schema:
    """Read the JSON file ``path`` and validate it against ``schema``; errors name ``what``, the file, the field."""
    try:
        data = read_json_file(path, what)
    except InvalidFileError as exc:  # StorageError: re-raised as the caller's error type, same message
        if isinstance(exc, error):
            raise
        raise error(str(exc)) from None
    return validate_data(schema, data, path, what, error)
