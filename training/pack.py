"""``dicomnode-train pack CONFIG OUT``: a training config's data in a few MiB, numpy only.

A GPU machine lent for minutes receives only the checkout and what is carried with it
(64 MiB in all here), and has numpy but neither SimpleITK nor the DICOM folders. So the
series a config trains and validates on are written once, here, as ``*.dnpack.npz`` files:
the slices exactly as training reads them (modality values after rescale, the training
``slice_step`` already applied) plus what training needs beside the pixels (patient, series,
spacing, padding). Lossless: integer-valued slices are stored as int16 differences along the
row, LZMA-compressed (~194 KiB for a 512x512 CT slice against 512 KiB raw); other slices as
LZMA float32. ``load_series`` reads a folder of packs like a DICOM folder.
"""

from __future__ import annotations

import json
import lzma
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

PACK_SUFFIX = ".dnpack.npz"
PACK_FORMAT = 1
MIB = 1024 * 1024


class PackError(ValueError):
    """A pack that cannot be written within its size limit, or a file that is not a pack."""


class PackableSeries(Protocol):
    """What a pack keeps of ``training.data.SeriesData`` (which reads packs: no import here)."""

    patient_id: str
    series_uid: str
    modality: str
    folder: Path
    slices: np.ndarray
    pixel_spacing: float | None
    photometric: str
    description: str
    padding: tuple[float, float] | None


def _encode(slices: np.ndarray) -> tuple[bytes, str]:
    """LZMA bytes of the slices and how they were coded ("int16-rowdiff" or "float32")."""
    integral = bool(np.all(np.isfinite(slices))) and bool(np.all(slices == np.round(slices)))
    if integral and slices.min() >= -32768 and slices.max() <= 32767:
        values = slices.astype(np.int32)
        diff = np.diff(values, axis=-1, prepend=0)
        if diff.min() >= -32768 and diff.max() <= 32767:
            return lzma.compress(diff.astype("<i2").tobytes(), preset=6), "int16-rowdiff"
    return lzma.compress(slices.astype("<f4").tobytes(), preset=6), "float32"


def _decode(blob: bytes, coding: str, shape: tuple[int, ...]) -> np.ndarray:
    raw = lzma.decompress(blob)
    if coding == "int16-rowdiff":
        diff = np.frombuffer(raw, dtype="<i2").reshape(shape).astype(np.int32)
        return np.cumsum(diff, axis=-1).astype(np.float32)
    if coding == "float32":
        return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
    raise PackError(f"unknown slice coding {coding!r}: written by a newer dicomnode?")


def write_series(series: PackableSeries, path: Path) -> int:
    """One series as a pack file; returns its size in bytes."""
    blob, coding = _encode(np.asarray(series.slices, dtype=np.float32))
    meta: dict[str, Any] = {
        "format": PACK_FORMAT, "patient_id": series.patient_id, "series_uid": series.series_uid,
        "modality": series.modality, "pixel_spacing": series.pixel_spacing,
        "photometric": series.photometric, "description": series.description,
        "padding": list(series.padding) if series.padding is not None else None,
        "shape": list(series.slices.shape), "coding": coding, "source": str(series.folder),
    }
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
             slices=np.frombuffer(blob, dtype=np.uint8))
    tmp.replace(path)
    return path.stat().st_size


def read_pack(path: Path) -> tuple[dict[str, Any], np.ndarray]:
    """A pack file's description and its slices (float32), identical to what was packed."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            blob = npz["slices"].tobytes()
    except (OSError, ValueError, KeyError) as exc:
        raise PackError(f"{path}: not a readable dicomnode pack ({exc})") from exc
    if meta.get("format") != PACK_FORMAT:
        raise PackError(f"{path}: pack format {meta.get('format')!r}, this dicomnode reads "
                        f"{PACK_FORMAT}")
    return meta, _decode(blob, meta["coding"], tuple(meta["shape"]))


def pack_files(folder: Path) -> list[Path]:
    """The pack files directly in ``folder`` (sorted: the same order on every machine)."""
    return sorted(p for p in folder.glob(f"*{PACK_SUFFIX}") if p.is_file())


def pack(train: Sequence[PackableSeries], val: Sequence[PackableSeries], out: Path, *,
         max_mib: float, about: dict[str, Any]) -> dict[str, Any]:
    """Write ``out/train`` and ``out/val`` packs and ``out/PACK.json``; returns the summary.

    The caller picks the slices (training's ``slice_step``, evenly spaced validation slices).
    Raises :class:`PackError` (leaving what was written, for
    a look) when the packs exceed ``max_mib``: raise ``slice_step`` or lower the slice count.
    """
    summary: dict[str, Any] = {**about, "format": PACK_FORMAT, "max_mib": max_mib,
                               "train": [], "val": []}
    total = 0
    for part, series_list in (("train", train), ("val", val)):
        for stale in (out / part).glob(f"**/*{PACK_SUFFIX}"):
            stale.unlink()
        for number, series in enumerate(series_list):
            # validation keeps one folder per source folder: each is evaluated on its own
            # (cross-scanner and in-distribution numbers are separate tables)
            folder = out / part / (Path(series.folder).name if part == "val" else "")
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{number:03d}{PACK_SUFFIX}"
            size = write_series(series, path)
            total += size
            summary[part].append({"file": str(path.relative_to(out)),
                                  "modality": series.modality, "slices": len(series.slices),
                                  "shape": list(series.slices.shape[1:]),
                                  "source": str(series.folder), "bytes": size})
    summary["mib"] = round(total / MIB, 2)
    (out / "PACK.json").write_text(json.dumps(summary, indent=2) + "\n")
    if total > max_mib * MIB:
        raise PackError(f"packed data is {total / MIB:.1f} MiB, over the {max_mib:g} MiB "
                        "limit: raise [data] slice_step or pass --val-slices lower")
    return summary
