"""Folders of files described by a manifest: checksums, atomic writes, format versions and paths kept inside.

The embedding index and the feature store both persist as "a folder + ``manifest.json``": the manifest names the
format and its version and records, for every file, its size, its SHA-256 and a cheap checksum. This module is the one
implementation of that contract, so both check the same things and raise the same errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mm_sbert.errors import StorageError, UnsafePathError, UnsupportedFormatError

# The cheap checksum reads this much from each end of a file: two MiB per file, whatever its size.
QUICK_SPAN = 1024**2

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------------- checksums


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: PathLike, block_size: int = 16 * 1024**2) -> str:
    """Hex SHA-256 of a file's content, read in blocks (the package's one file checksum)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def _quick_digest(size: int, head: bytes, tail: bytes) -> str:
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    digest.update(head)
    digest.update(tail)
    return digest.hexdigest()


def quick_checksum_bytes(data: bytes) -> str:
    """:func:`quick_checksum` of in-memory file content (what the file will hold once written)."""
    if len(data) <= 2 * QUICK_SPAN:
        return _quick_digest(len(data), data, b"")
    return _quick_digest(len(data), data[:QUICK_SPAN], data[-QUICK_SPAN:])


def quick_checksum(path: PathLike) -> str:
    """SHA-256 of the size, the first MiB and the last MiB of a file: every byte of files up to 2 MiB, the header
    and the end of bigger ones, read in milliseconds whatever the size."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size <= 2 * QUICK_SPAN:
            return _quick_digest(size, f.read(), b"")
        head = f.read(QUICK_SPAN)
        f.seek(size - QUICK_SPAN)
        return _quick_digest(size, head, f.read(QUICK_SPAN))


def file_record(path: PathLike) -> dict[str, Any]:
    """The manifest entry of a written file: ``{"bytes", "sha256", "quick_sha256"}``."""
    return {"bytes": os.path.getsize(path), "sha256": sha256_file(path), "quick_sha256": quick_checksum(path)}


def bytes_record(data: bytes) -> dict[str, Any]:
    """The manifest entry of a file that will hold ``data``."""
    return {"bytes": len(data), "sha256": sha256_bytes(data), "quick_sha256": quick_checksum_bytes(data)}


def verify_file(folder: PathLike, name: str, record: Mapping[str, Any], full: bool = False) -> Path:
    """Check that the file ``name`` of ``folder`` is inside it, exists and matches its manifest ``record``.

    Always checked: the path stays inside the folder, the size, and the cheap checksum (:func:`quick_checksum`: all
    bytes of files up to 2 MiB, the first and last MiB of bigger ones). ``full=True`` also checks the SHA-256 of the
    whole file. Records written before the cheap checksum existed (format version 1) get the full SHA-256 for files
    up to 2 MiB (it costs the same) and the size check only for bigger ones.

    Returns:
        The file's resolved path.

    Raises:
        UnsafePathError: ``name`` points outside ``folder``.
        StorageError: the file is missing, has another size or does not match a checksum.
    """
    path = resolve_inside(folder, name, what="file")
    if not path.is_file():
        raise StorageError(f"'{folder}' is missing {name}, listed in its manifest; rebuild it")
    size = path.stat().st_size
    if size != record.get("bytes"):
        raise StorageError(
            f"'{path}' has {size} bytes but the manifest says {record.get('bytes')}: the file is truncated or was "
            "changed after it was written; rebuild it"
        )
    if full or ("quick_sha256" not in record and size <= 2 * QUICK_SPAN):
        if sha256_file(path) != record.get("sha256"):
            raise StorageError(
                f"'{path}' does not match its sha256 checksum in the manifest: it was changed or corrupted after it "
                "was written; rebuild it"
            )
    elif "quick_sha256" in record and quick_checksum(path) != record["quick_sha256"]:
        raise StorageError(
            f"'{path}' does not match its checksum in the manifest (size + first/last MiB): it was changed or "
            "corrupted after it was written; rebuild it"
        )
    return path


# ---------------------------------------------------------------------------------------------- paths


def lies_inside(path: PathLike, folder: PathLike) -> bool:
    """Whether ``path`` is ``folder`` or inside it once symbolic links on both sides are followed (where a read of
    ``path`` really lands)."""
    root = os.path.realpath(folder)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def resolve_inside(folder: PathLike, name: Any, what: str = "file") -> Path:
    """``folder / name`` resolved (symbolic links followed), or :class:`UnsafePathError` when it is not inside
    ``folder``: an absolute name, ``..`` components or a link that leads out of the folder are refused, so a
    manifest or index edited by someone else never makes mm_sbert read or write another file of the machine."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafePathError(f"The {what} name {name!r} in '{folder}' is not a valid relative file name")
    root = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(root, name))
    if os.path.isabs(name) or target == root or not lies_inside(target, root):
        raise UnsafePathError(
            f"The {what} {name!r} named in '{folder}' lies outside that folder; mm_sbert only reads files inside "
            "the folder it was given (was the manifest edited?)"
        )
    return Path(target)


def resolve_stored_path(stored: str, recorded_root: PathLike | None, root: PathLike, what: str = "file") -> Path:
    """A path stored in an index (e.g. an image path), resolved inside the folder ``root`` the user chose.

    ``stored`` is taken relative to ``recorded_root`` (the folder it was recorded against; absolute stored paths
    outside it are refused) and joined to ``root``, so a collection moved elsewhere is found with ``root`` = its
    new place.

    Raises:
        UnsafePathError: the path leads outside ``root`` (or, absolute, outside ``recorded_root``).
    """
    if not isinstance(stored, str):
        raise UnsafePathError(f"The stored {what} {stored!r} is not a path")
    relative = stored
    if os.path.isabs(stored):
        base = os.path.realpath(recorded_root) if recorded_root is not None else os.path.realpath(root)
        relative = os.path.relpath(os.path.realpath(stored), base)
        if relative == os.pardir or relative.startswith(os.pardir + os.sep):
            raise UnsafePathError(
                f"The stored {what} '{stored}' lies outside '{base}', the folder the collection was recorded in; "
                "refusing to read it (was the index edited?)"
            )
    return resolve_inside(root, relative, what=what)


# ---------------------------------------------------------------------------------------------- writing


def fsync_file(path: PathLike) -> None:
    """Flush a written file to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: PathLike) -> None:
    """Make renames inside ``path`` durable; platforms that cannot open a folder skip it."""
    try:
        fsync_file(path)
    except OSError:
        pass


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder + fsync + rename: a crash at any moment
    leaves either the old file or the new one under ``path``, never a half-written one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_json(path: PathLike, data: Any, indent: int | None = None) -> None:
    """:func:`atomic_write_bytes` of ``data`` as UTF-8 JSON."""
    atomic_write_bytes(path, json.dumps(data, indent=indent).encode("utf-8"))


# ---------------------------------------------------------------------------------------------- manifests


def read_json_file(path: PathLike, what: str) -> Any:
    """Parse a JSON file, or raise :class:`StorageError` naming ``what`` it is when it is empty or not JSON."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise StorageError(f"Cannot read the {what} '{path}': {exc}") from exc
    except UnicodeDecodeError as exc:
        raise StorageError(f"The {what} '{path}' is not UTF-8 text ({exc}); it is corrupt") from exc
    if not text.strip():
        raise StorageError(f"The {what} '{path}' is empty: it was not completely written (interrupted?)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StorageError(f"The {what} '{path}' is not valid JSON ({exc}); it is corrupt") from exc


def read_manifest(path: PathLike, format_name: str, supported_versions: range | tuple[int, ...]) -> dict[str, Any]:
    """Read a manifest and check its format name and version.

    Raises:
        StorageError: missing, empty or invalid JSON, not an object, or not a ``format_name`` manifest.
        UnsupportedFormatError: a format version outside ``supported_versions`` (written by a newer mm_sbert).
    """
    path = Path(path)
    if not path.is_file():
        raise StorageError(
            f"'{path.parent}' has no {path.name}: it was not completely written or is not a folder "
            f"written by mm_sbert ({format_name})"
        )
    manifest = read_json_file(path, f"{format_name} manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        raise StorageError(f"'{path}' is not a {format_name} manifest")
    version = manifest.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in supported_versions:
        newest = max(supported_versions)
        raise UnsupportedFormatError(
            f"'{path}' declares {format_name} format version {version!r}; this mm_sbert reads versions "
            f"{min(supported_versions)}..{newest}. Upgrade mm_sbert (newer versions are written by newer releases) "
            "or rebuild the folder"
        )
    return manifest
