"""Which paths mm_sbert may write: a new path, or one it wrote itself, of the same kind, and never an input.

Every writer of the package (index, feature store, model, training output, metrics file, HTML page...) asks
:func:`check_output_path` before doing any work. The rule is one rule, so whole families of accidents are impossible:

- a path that does not exist may be created (its parent folders too);
- an existing **folder** may be replaced only when it is empty, or when mm_sbert marked it as its own folder of the
  same kind (:func:`mark_owned_folder`, or a kind's own recognizer for folders written before the mark existed) and it
  holds nothing the mark does not list, so a user's file dropped into it is never deleted;
- an existing **file** may be replaced only when its first bytes carry mm_sbert's mark of the same kind
  (:func:`output_marker`);
- a path that is one of the command's inputs, lies inside one, or holds one is refused (the data, the model, the
  store, the images and the index the command reads are never outputs);
- a path inside a folder mm_sbert owns as something else (a file inside a model folder, an index inside a store) is
  refused, and a folder that merely has a name the package also uses is not thereby "owned"; the one exception is a
  direct child the owning folder's mark names as an output of that very kind (a training run's ``checkpoint-*`` and
  ``final`` models, the demo's ``model`` and ``index``): what a folder's writer declared it creates there. The
  nearest owned folder above a path decides: an owned folder that was itself written as a declared child (the
  demo's ``index``) may hold its own declared children (the index's ``embeddings``), as it would anywhere else.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from mm_sbert.errors import UnsafeOutputError

OWNER_FILE = ".mm_sbert_owner.json"
WRITTEN_BY = "mm_sbert"
# A file output carries ``mm_sbert_output=<kind>`` within its first bytes (a JSON field, an HTML comment...).
FILE_MARK_PREFIX = "mm_sbert_output="
FILE_MARK_SPAN = 4096

PathLike = str | os.PathLike

# Recognizers for folders written before the owner mark existed: kind -> (folder -> bool). Registered by the module
# that owns the format (e.g. the index registers "embedding-index" with a check of its manifest), so this module does
# not import them.
_LEGACY_RECOGNIZERS: dict[str, Callable[[Path], bool]] = {}
# Children every folder of a kind may hold (register_folder_children), besides what one folder's mark declares.
_KIND_CHILDREN: dict[str, dict[str, str]] = {}


def register_legacy_folder_kind(kind: str, recognizer: Callable[[Path], bool]) -> None:
    """Let folders of ``kind`` written before the owner mark existed count as owned when ``recognizer`` says so.

    The recognizer must be strict (a manifest naming the exact format), never a mere file or folder name.
    """
    _LEGACY_RECOGNIZERS[kind] = recognizer


def register_folder_children(kind: str, children: Mapping[str, str]) -> None:
    """Let every folder of ``kind`` (marked or recognised) hold outputs of the given kinds at the given direct child
    patterns, as a mark's ``children`` do for one folder: e.g. a model folder's ``onnx`` export."""
    _KIND_CHILDREN.setdefault(kind, {}).update(children)


def output_marker(kind: str) -> str:
    """The mark a file output of ``kind`` carries in its first 4 KiB, e.g. inside a JSON field or HTML comment."""
    return f"{FILE_MARK_PREFIX}{kind}"


def mark_owned_folder(
    folder: PathLike, kind: str, patterns: Sequence[str] = (), children: Mapping[str, str] | None = None
) -> None:
    """Record that ``folder`` is mm_sbert's folder of ``kind`` and list its current entries as mm_sbert's.

    Call it last, once every file of the folder is written (the listing is what a later replacement may delete). A
    folder that grows over several runs (a feature store's shards, a training run's checkpoints) is marked when its
    writer starts, with ``patterns`` (``fnmatch`` patterns such as ``"shard-*"``) naming the entries its writer
    creates, so what an interrupted run left there is still recognised as mm_sbert's, and anything else is not.

    ``children`` maps ``fnmatch`` patterns of direct children to the kind of output that may be written there (e.g.
    ``{"checkpoint-*": "model"}``): the only paths inside an owned folder that :func:`check_output_path` accepts.
    """
    folder = Path(folder)
    entries = sorted(name for name in os.listdir(folder) if name != OWNER_FILE and not name.startswith(OWNER_FILE))
    payload = {
        "written_by": WRITTEN_BY,
        "kind": kind,
        "entries": entries,
        "patterns": list(patterns),
        "children": dict(children or {}),
    }
    tmp = folder / f"{OWNER_FILE}.tmp"
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(tmp, folder / OWNER_FILE)


def owned_folder_kind(folder: PathLike) -> str | None:
    """The kind mm_sbert marked ``folder`` with (or a legacy recognizer finds), else ``None``."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    mark = _read_owner_file(folder)
    if mark is not None:
        return mark["kind"]
    for kind, recognizer in _LEGACY_RECOGNIZERS.items():
        try:
            if recognizer(folder):
                return kind
        except Exception:  # a recognizer reading a foreign folder must not decide by crashing
            continue
    return None


def owned_file_kind(path: PathLike) -> str | None:
    """The kind of mm_sbert's mark in the first 4 KiB of the file ``path``, else ``None``."""
    try:
        with open(path, "rb") as f:
            head = f.read(FILE_MARK_SPAN).decode("utf-8", errors="replace")
    except OSError:
        return None
    start = head.find(FILE_MARK_PREFIX)
    if start < 0:
        return None
    rest = head[start + len(FILE_MARK_PREFIX) :]
    kind = ""
    for char in rest:
        if not (char.isalnum() or char in "-_."):
            break
        kind += char
    return kind or None


def check_output_path(
    path: PathLike,
    kind: str,
    *,
    folder: bool,
    inputs: Iterable[PathLike | None] = (),
    what: str = "output",
) -> Path:
    """Refuse, before any work, to write ``path`` unless the ownership rule (module docstring) allows it.

    Args:
        path: The file or folder about to be written.
        kind: What will be written there (``"embedding-index"``, ``"feature-store"``, ``"metrics"``...).
        folder: Whether the output is a folder (``True``) or a single file (``False``).
        inputs: Paths the same command reads (data files, model / store / index folders, images); ``None`` entries are
            ignored.
        what: How to name the path in errors (e.g. ``"--output"``).

    Returns:
        The absolute path.

    Raises:
        UnsafeOutputError: When writing ``path`` could destroy something mm_sbert did not write there.
    """
    target = Path(os.path.abspath(os.fspath(path)))
    resolved = _resolve(target)

    for given in inputs:
        if given is None:
            continue
        source = _resolve(Path(os.path.abspath(os.fspath(given))))
        if resolved == source or source in resolved.parents:
            raise UnsafeOutputError(
                f"{what} {str(target)!r} is (or lies inside) {str(source)!r}, an input of the same command; "
                "write the output somewhere else"
            )
        if resolved in source.parents:
            raise UnsafeOutputError(
                f"{what} {str(target)!r} holds {str(source)!r}, an input of the same command; "
                "write the output somewhere else"
            )

    for ancestor in resolved.parents:
        ancestor_kind = owned_folder_kind(ancestor)
        if ancestor_kind is None:
            continue
        # The nearest owned folder decides; it was itself checked against the folders above it when it was written.
        if not (ancestor == resolved.parent and _declared_child(ancestor, resolved, kind)):
            raise UnsafeOutputError(
                f"{what} {str(target)!r} lies inside {str(ancestor)!r}, mm_sbert's {ancestor_kind} folder; "
                "write the output somewhere else"
            )
        break

    if not os.path.lexists(target):
        return target
    if target.is_symlink():
        raise UnsafeOutputError(f"{what} {str(target)!r} is a symbolic link; name a new path or a real one")

    if folder:
        if not target.is_dir():
            raise UnsafeOutputError(f"{what} {str(target)!r} is a file, not a folder; name a new folder")
        entries = set(os.listdir(target))
        if not entries:
            return target
        found = owned_folder_kind(target)
        if found is None:
            raise UnsafeOutputError(
                f"{what} {str(target)!r} is a folder mm_sbert did not write and it is not empty "
                f"({_sample(entries)}); name a new or empty folder"
            )
        if found != kind:
            raise UnsafeOutputError(
                f"{what} {str(target)!r} is mm_sbert's {found} folder, not a {kind}; name a new or empty folder"
            )
        mark = _read_owner_file(target)
        if mark is not None:
            foreign = {
                name
                for name in entries - set(mark["entries"])
                if not name.startswith(OWNER_FILE)
                if not any(fnmatch.fnmatchcase(name, pattern) for pattern in mark["patterns"])
            }
            if foreign:
                raise UnsafeOutputError(
                    f"{what} {str(target)!r} holds files mm_sbert did not write ({_sample(foreign)}); "
                    "move them out or name another folder"
                )
        return target

    if target.is_dir():
        raise UnsafeOutputError(f"{what} {str(target)!r} is a folder, not a file; name a new file")
    found = owned_file_kind(target)
    if found != kind:
        described = "a file mm_sbert did not write" if found is None else f"mm_sbert's {found} file, not a {kind}"
        raise UnsafeOutputError(f"{what} {str(target)!r} is {described}; name a new file")
    return target


def _declared_child(folder: Path, child: Path, kind: str) -> bool:
    """Whether the mark of ``folder``, or its kind (:func:`register_folder_children`), names ``child`` (a direct
    child) as a place for an output of ``kind``."""
    mark = _read_owner_file(folder)
    declared = dict(_KIND_CHILDREN.get(owned_folder_kind(folder) or "", {}))
    declared.update(mark["children"] if mark is not None else {})
    return any(
        fnmatch.fnmatchcase(child.name, pattern) and child_kind == kind for pattern, child_kind in declared.items()
    )


def _read_owner_file(folder: Path) -> dict | None:
    try:
        payload = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(payload, dict)
        or payload.get("written_by") != WRITTEN_BY
        or not isinstance(payload.get("kind"), str)
        or not isinstance(payload.get("entries"), list)
        or not all(isinstance(name, str) for name in payload["entries"])
        or not isinstance(payload.setdefault("patterns", []), list)
        or not all(isinstance(pattern, str) for pattern in payload["patterns"])
        or not isinstance(payload.setdefault("children", {}), dict)
        or not all(isinstance(key, str) and isinstance(value, str) for key, value in payload["children"].items())
    ):
        return None
    return payload


def _resolve(path: Path) -> Path:
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop: compare the path as given
        return path


def _sample(names: Iterable[str], limit: int = 3) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
