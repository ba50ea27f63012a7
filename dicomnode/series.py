"""Find DICOM files in any folder layout, group them into series and order their slices.

Headers only: pixels are decoded later, a few slices at a time, so that a 1000-slice series
never sits in memory whole.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

log = logging.getLogger(__name__)

# Orientations that differ by less than this (direction cosines) count as the same stack.
ORIENTATION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SourceImage:
    """One source instance: where it lies and what places it in its series."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    frames: int = 1
    """NumberOfFrames as the header says (1 when absent or unreadable); checked when read."""

    def read(self) -> Dataset:
        """The whole dataset, pixels included (read on demand, never cached)."""
        return pydicom.dcmread(self.path)


@dataclass
class Series:
    """Instances sharing a SeriesInstanceUID, ordered along the slice normal."""

    series_instance_uid: str
    header: Dataset
    images: list[SourceImage] = field(default_factory=list)

    @property
    def attributes(self) -> Dataset:
        """The first instance's header: what rules match against."""
        return self.header

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass
class ScanResult:
    series: list[Series]
    skipped: list[SkippedFile]


def scan(root: str | Path) -> ScanResult:
    """Every DICOM image under ``root`` grouped by series; other files listed as skipped."""
    return scan_files(_walk(Path(root)))


def scan_files(paths: Iterable[Path]) -> ScanResult:
    """Group the given files into ordered series (the worker knows its files already)."""
    by_uid: dict[str, Series] = {}
    skipped: list[SkippedFile] = []
    for path in paths:
        header, reason = _read_header(path)
        if header is None:
            skipped.append(SkippedFile(path, reason))
            log.info("skipped file=%s reason=%s", path, reason)
            continue
        uid = str(header.SeriesInstanceUID)
        series = by_uid.get(uid)
        if series is None:
            series = by_uid[uid] = Series(uid, header)
        series.images.append(_source_image(path, header))
    for series in by_uid.values():
        series.images = order_slices(series.images)
    return ScanResult(list(by_uid.values()), skipped)


def order_slices(images: Iterable[SourceImage]) -> list[SourceImage]:
    """Order by position along the slice normal; InstanceNumber where geometry is missing.

    Spacing is never assumed uniform: only the order matters (gantry tilt and variable
    spacing keep a valid order along the normal of the tilted planes).
    """
    images = list(images)
    orientations = [im.orientation for im in images]
    if images and all(o is not None for o in orientations) and all(
        im.position is not None for im in images
    ):
        first = np.asarray(orientations[0], dtype=float)
        if all(np.allclose(first, o, atol=ORIENTATION_TOLERANCE) for o in orientations):
            normal = np.cross(first[:3], first[3:])
            return sorted(
                images,
                key=lambda im: (float(np.dot(normal, im.position)), _instance_key(im)),
            )
    return sorted(images, key=_instance_key)


def _instance_key(im: SourceImage) -> tuple[int, str]:
    number = im.instance_number if im.instance_number is not None else 2**31
    return (number, im.sop_instance_uid)


def _walk(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(directory) / name


def _read_header(path: Path) -> tuple[Dataset | None, str]:
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        for _ in header.iterall():  # values convert lazily: meet a malformed one here
            pass
    except InvalidDicomError:
        return None, "not a DICOM Part 10 file (no DICM preamble)"
    except Exception as exc:  # pydicom raises many types for damaged files
        return None, f"unreadable DICOM header: {type(exc).__name__}: {exc}"
    for keyword in ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not str(header.get(keyword, "") or "").strip():
            return None, f"{keyword} is missing: cannot place the file in a series"
    if "DirectoryRecordSequence" in header:
        return None, "DICOMDIR index file, not an image"
    return header, ""


def _source_image(path: Path, header: Dataset) -> SourceImage:
    return SourceImage(
        path=path,
        sop_instance_uid=str(header.SOPInstanceUID),
        sop_class_uid=str(header.SOPClassUID),
        instance_number=_int_or_none(header.get("InstanceNumber")),
        orientation=_floats(header.get("ImageOrientationPatient"), 6),
        position=_floats(header.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        frames=max(_int_or_none(header.get("NumberOfFrames")) or 1, 1),
    )


def _int_or_none(value: object) -> int | None:
    try:
        return int(value) if value not in (None, "") else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(np.isfinite(numbers)):
        return None
    return numbers
