from __future__ import annotations

from mm_sbert.storage.checked_folder import (
    QUICK_SPAN,
    atomic_write_bytes,
    atomic_write_json,
    bytes_record,
    file_record,
    fsync_dir,
    fsync_file,
    quick_checksum,
    quick_checksum_bytes,
    read_json_file,
    read_manifest,
    resolve_inside,
    resolve_stored_path,
    sha256_bytes,
    sha256_file,
    verify_file,
)

__all__ = [
    "QUICK_SPAN",
    "atomic_write_bytes",
    "atomic_write_json",
    "bytes_record",
    "file_record",
    "fsync_dir",
    "fsync_file",
    "quick_checksum",
    "quick_checksum_bytes",
    "read_json_file",
    "read_manifest",
    "resolve_inside",
    "resolve_stored_path",
    "sha256_bytes",
    "sha256_file",
    "verify_file",
]
