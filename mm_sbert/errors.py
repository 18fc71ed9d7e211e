"""The package's exceptions: one root, :class:`MMSbertError`, so a caller can catch everything mm_sbert raises on
purpose, and one type per kind of failure, the same wherever it happens (index, feature store, command line)."""

from __future__ import annotations


class MMSbertError(Exception):
    """Root of the errors mm_sbert raises on purpose; the message names the input and what was expected."""


class InvalidFileError(MMSbertError, ValueError):
    """A file mm_sbert reads (a config, ``modules.json``, a data file, a manifest) is not what it must be: not valid
    JSON, a missing or wrongly typed field, values that contradict each other. The message names the file and the
    field."""


class MissingFileError(MMSbertError, FileNotFoundError):
    """A file or folder mm_sbert needs (a saved model's config, its backbone) is not there; the message names it."""


class InvalidInputError(MMSbertError, ValueError):
    """An input given in memory is ambiguous or has no meaning for the model (an image with no regions...); the
    message names the input by its index."""


class InvalidInputTypeError(InvalidInputError, TypeError):
    """An input given in memory has a type with no meaning where it is given (an image id that is ``None`` or a
    float); a ``TypeError`` too, as Python's own checks of types are."""


class ImageLoadError(MMSbertError, ValueError):
    """An image is missing, unreadable, corrupt, too big (a decompression bomb) or holds values with no meaning as
    pixels (NaN). The message names the file or the input."""


class UnknownIdError(MMSbertError, KeyError):
    """An id or image asked for is not in the collection that was asked (a feature store, COCO annotations). A
    ``KeyError``, so mapping-style lookups keep their meaning; its message prints as written, without quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CheckpointMismatchError(MMSbertError, ValueError):
    """An original checkpoint does not fit the model it is converted into; nothing was loaded."""


class StorageError(InvalidFileError, RuntimeError):
    """A folder written by mm_sbert (embedding index, feature store) is missing, incomplete, corrupt or does not fit
    the request.

    It is a ``ValueError`` and a ``RuntimeError`` because the two errors it replaces were (``FeatureStoreError`` and
    ``IndexCorruptedError``), so existing ``except`` clauses keep working.
    """


class UnsupportedFormatError(StorageError):
    """A stored folder declares a format or format version this mm_sbert cannot read (written by a newer one)."""


class UnsafePathError(StorageError):
    """A file name read from a manifest, index or store points outside the folder it belongs to."""


class UnsafeOutputError(MMSbertError, ValueError):
    """An output path would overwrite or delete something mm_sbert did not write there, or one of the command's own
    inputs (see :mod:`mm_sbert.storage.ownership`)."""


class NotEnoughSpaceError(MMSbertError, OSError):
    """The file system lacks the free space a write needs; checked before the write starts (``errno`` ENOSPC)."""


class OutputInUseError(MMSbertError, BlockingIOError):
    """Another process is writing the same store, index or training output (see :mod:`mm_sbert.storage.locking`)."""


class ModelMismatchError(MMSbertError, ValueError):
    """Embeddings were computed with another model than the one asked to search them."""


# The old names, kept so that nothing breaks: they are the storage error itself, so a truncated file raises the very
# same type whether an index or a feature store holds it.
IndexCorruptedError = StorageError
FeatureStoreError = StorageError


class IncompatibleModelError(MMSbertError, ValueError):
    """A model cannot do what it is asked: a view no training objective has trained (e.g. the score head of a
    bi-encoder), or a reranker whose own featurizer cannot read the images or feature store it is given."""
