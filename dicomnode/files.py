"""Atomic, durable file writes: a file is either absent or complete, never half-written."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomnode.errors import DeriveError
from dicomnode.wal import fsync_dir

_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def safe_name(value: str, max_length: int = 64) -> str:
    """A file name from a received value (e.g. a UID) that can never leave its folder.

    Valid UIDs pass unchanged; anything else keeps only [0-9A-Za-z.-], gets an ``x_`` prefix
    (no UID starts with a letter) and a hash of the original, so '../../x' cannot climb out
    and two different hostile values cannot land on the same file.
    """
    value = str(value).strip().rstrip("\x00")
    if value and len(value) <= max_length and _UID_PATTERN.match(value):
        return value
    cleaned = re.sub(r"[^0-9A-Za-z.-]", "_", value)[:40]
    digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"x_{cleaned}_{digest}"


_counter = itertools.count()


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True,
                       tmp_dir: Path | None = None,
                       before_rename: Callable[[], None] | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file, flush, fsync, rename.

    ``tmp_dir`` (same file system) keeps half-written files out of the target folder, so a
    crash leaves them where recovery looks for them. The folder of ``path`` is fsync-ed too,
    so the rename itself survives a power loss. ``before_rename`` runs when the bytes are
    written; if it raises, the temporary file goes and ``path`` is left as it was.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
    # pid + thread + counter: unique without mkstemp's random-name retries.
    tmp_name = os.path.join(
        tmp_dir or folder,
        f".tmp-{os.getpid()}-{threading.get_ident()}-{next(_counter)}.part")
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(folder)


def encode_dataset(ds: Dataset) -> bytes:
    """A DICOM Part 10 file (Explicit VR Little Endian) holding ``ds``.

    A value the encoder refuses (often one copied from a malformed source) is a DeriveError:
    that object cannot be written, the next one may.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=True)
    except Exception as exc:  # pydicom's encoders raise many types for a value they refuse
        raise DeriveError(f"the derived object cannot be encoded: {exc}") from exc
    return buffer.getvalue()


def write_dataset(ds: Dataset, path: Path, fsync: bool = True) -> Path:
    """Encode and write ``ds`` atomically; returns the path."""
    atomic_write_bytes(path, encode_dataset(ds), fsync=fsync)
    return path
