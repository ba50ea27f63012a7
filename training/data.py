"""Training data from DICOM folders: series of slices in modality values, split by patient.

Any folder layout works (``dicomnode.series.scan``). Slices are modality values (HU for CT,
stored values after rescale otherwise), so training, evaluation and the node see the same
numbers. The split is by patient first, then series, because slices of one patient on both
sides of a split make validation numbers meaningless.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom

from dicomnode.errors import InputRejected
from dicomnode.padding import padding_range
from dicomnode.pixels import modality_values, pixel_format
from dicomnode.series import scan
from training.pack import PackError, pack_files, read_pack
from training.volumes import VolumeError, is_volume_file, read_volume, volume_files, volume_modality

log = logging.getLogger(__name__)


@dataclass
class SeriesData:
    """One series of one patient, decoded: ``slices`` is (N, H, W) float32 modality values."""

    patient_id: str
    series_uid: str
    modality: str
    folder: Path
    slices: np.ndarray
    pixel_spacing: float | None = None
    photometric: str = "MONOCHROME2"
    description: str = ""
    padding: tuple[float, float] | None = None
    """Modality values the source declares as padding (Pixel Padding Value and Range Limit):
    outside a CT's reconstruction circle, not image; the node restores them exactly."""
    _percentiles: dict[float, float] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        """Unique and stable: WG04 radiographs share one SeriesInstanceUID across patients."""
        return f"{self.patient_id}/{self.series_uid}"

    def percentile(self, q: float) -> float:
        """A percentile of the whole (clean) series, cached."""
        if q not in self._percentiles:
            self._percentiles[q] = float(np.percentile(self.slices, q))
        return self._percentiles[q]

    def neighbours(self, index: int, count: int) -> np.ndarray:
        """Slices index - count//2 .. index + count//2 (edges repeated): the 2.5D input stack."""
        n = len(self.slices)
        picks = [min(max(index + k, 0), n - 1) for k in range(-(count // 2), count // 2 + 1)]
        return self.slices[picks]


def load_series(
    folders: Iterable[str | Path], modalities: Sequence[str] | None = None, min_size: int = 32
) -> list[SeriesData]:
    """Every decodable grayscale series under ``folders``, grouped by (patient, series, size).

    Files that cannot be decoded are skipped with a log line, never silently mixed in.
    ``modalities`` (e.g. ``["MR"]``) keeps only those; images smaller than ``min_size`` are left
    out (icons, localiser thumbnails). NIfTI / NRRD / MetaImage volumes in the folders become
    one series each (``training.volumes``: the folder holding a volume is its patient, the
    config's single modality is theirs). ``*.dnpack.npz`` files (``training.pack``: a
    config's data packed for a machine without the DICOM folders) are series as packed.
    """
    wanted = {m.upper() for m in modalities} if modalities else None
    result: list[SeriesData] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            raise FileNotFoundError(f"data folder {folder} does not exist")
        result.extend(_volume_series(folder, modalities, min_size))
        result.extend(_packed_series(folder, wanted))
        for series in scan(folder).series:
            modality = str(series.header.get("Modality", "") or "").upper()
            if wanted is not None and modality not in wanted:
                continue
            groups: dict[tuple[str, tuple[int, int]], list[np.ndarray]] = {}
            meta: dict[tuple[str, tuple[int, int]],
                       tuple[float | None, str, str, tuple[float, float] | None]] = {}
            for image in series.images:
                try:
                    ds = pydicom.dcmread(image.path)
                    if _frame_count(ds) > 1:
                        frames, spacing, photometric, padding = _multi_frame(ds)
                    else:
                        fmt = pixel_format(ds)
                        frames = modality_values(ds, fmt).astype(np.float32)[None]
                        spacing, photometric = _spacing(ds), fmt.photometric
                        padding = _padding(ds, fmt.slope, fmt.intercept)
                except (InputRejected, OSError, ValueError) as exc:
                    log.info("skipped file=%s reason=%s", image.path, exc)
                    continue
                if min(frames.shape[1:]) < min_size:
                    continue
                patient = str(ds.get("PatientID", "") or "").strip() or series.series_instance_uid
                key = (patient, frames.shape[1:])
                groups.setdefault(key, []).extend(frames)
                meta.setdefault(key, (spacing, photometric,
                                      str(ds.get("SeriesDescription", "") or ""), padding))
            for (patient, _shape), stack in groups.items():
                spacing, photometric, description, padding = meta[(patient, _shape)]
                result.append(SeriesData(
                    patient_id=patient, series_uid=series.series_instance_uid,
                    modality=modality, folder=folder, slices=np.stack(stack),
                    pixel_spacing=spacing, photometric=photometric, description=description,
                    padding=padding,
                ))
    return result


def evenly_spaced(series: SeriesData, count: int) -> SeriesData:
    """The series cut to at most ``count`` slices, evenly spaced over it (first and last kept).

    Evaluation cost grows with slices (a CT low-dose simulation is ~10 s a slice); neighbouring
    slices of a thin-slice series add little to a mean, and the same ``count`` always picks the
    same slices, so the numbers reproduce.
    """
    n = len(series.slices)
    if count >= n:
        return series
    picks = np.unique(np.round(np.linspace(0, n - 1, count)).astype(int))
    return replace(series, slices=series.slices[picks], _percentiles={})


def _volume_series(folder: Path, modalities: Sequence[str] | None, min_size: int
                   ) -> list[SeriesData]:
    """The NIfTI / NRRD volumes under ``folder`` as series (none: an empty list)."""
    files = volume_files(folder) if folder.is_dir() else (
        [folder] if is_volume_file(folder) else [])
    result = []
    for path in files:
        modality = volume_modality(modalities, path)
        try:
            slices, spacing = read_volume(path)
        except VolumeError as exc:
            log.info("skipped file=%s reason=%s", path, exc)
            continue
        if min(slices.shape[1:]) < min_size:
            continue
        patient = path.parent.name  # one case folder per subject (BraTS, IXI, dcm2niix)
        result.append(SeriesData(
            patient_id=patient, series_uid=f"volume:{path.name}", modality=modality,
            folder=folder, slices=slices, pixel_spacing=spacing,
            description=path.name.split(".")[0],
        ))
    return result


def _packed_series(folder: Path, wanted: set[str] | None) -> list[SeriesData]:
    """The packed series directly in ``folder`` (none: an empty list)."""
    result = []
    for path in pack_files(folder) if folder.is_dir() else []:
        try:
            meta, slices = read_pack(path)
        except PackError as exc:
            log.info("skipped file=%s reason=%s", path, exc)
            continue
        if wanted is not None and meta["modality"] not in wanted:
            continue
        padding = meta["padding"]
        result.append(SeriesData(
            patient_id=meta["patient_id"], series_uid=meta["series_uid"],
            modality=meta["modality"], folder=folder, slices=slices,
            pixel_spacing=meta["pixel_spacing"], photometric=meta["photometric"],
            description=meta["description"],
            padding=(float(padding[0]), float(padding[1])) if padding is not None else None,
        ))
    return result


def _frame_count(ds: pydicom.Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def _multi_frame(ds: pydicom.Dataset
                 ) -> tuple[np.ndarray, float | None, str, tuple[float, float] | None]:
    """Frames of an Enhanced (multi-frame) image as slices in modality values, in volume order.

    The node's reader (``dicomnode.multiframe``) does it, so training and the node see the same
    frames in the same order: spacing, position and rescale from the functional groups (per
    frame or shared; a Siemens XA export has its PixelSpacing only per frame), frames sorted
    along the stack's normal, which plain Pixel Data order does not promise.
    Raises ValueError for frames that do not form one stack it can decode (mixed orientations,
    two frames in one place, missing positions), which ``load_series`` then skips with its reason.
    """
    from dicomnode.multiframe import read_multiframe

    try:
        image = read_multiframe(ds)
        volume = image.volume()
    except InputRejected as exc:
        raise ValueError(f"multi-frame image is not one regular stack of frames it can decode "
                         f"({exc})") from exc
    first = image.frames[0]
    spacing = float(np.mean(first.spacing))
    # Padding: Pixel Padding Value is a top-level attribute; modality values need the rescale,
    # which Enhanced objects keep in the Pixel Value Transformation functional group.
    return (volume, spacing, image.fmt.photometric,
            _padding(ds, first.slope, first.intercept))


def inverted(series: SeriesData) -> SeriesData:
    """The series with its grey scale inverted and its photometric interpretation swapped.

    Radiographs come both ways (MONOCHROME1: bright = little exposure; MONOCHROME2: the
    reverse). Read-noise-only regions (collimation, a reader's blank border) sit at one end of
    the range in one and at the other end in the other; a network trained on one sees them
    only at that end. Inverting the stored values and the interpretation together describes the
    same exposure, so the noise model (``rand_poisson_gaussian``) puts the noise in the same
    places. The copy keeps the patient (splits stay by patient) and marks its series UID.
    """
    swap = {"MONOCHROME1": "MONOCHROME2", "MONOCHROME2": "MONOCHROME1"}
    if series.photometric not in swap:
        raise ValueError(f"series {series.series_uid}: cannot invert {series.photometric} "
                         "(grayscale radiographs only)")
    low, high = float(series.slices.min()), float(series.slices.max())
    return SeriesData(
        patient_id=series.patient_id, series_uid=series.series_uid + "/inverted",
        modality=series.modality, folder=series.folder,
        slices=((low + high) - series.slices).astype(np.float32),
        pixel_spacing=series.pixel_spacing, photometric=swap[series.photometric],
        description=series.description,
        padding=None if series.padding is None else (
            (low + high) - series.padding[1], (low + high) - series.padding[0]),
    )


def _padding(ds: pydicom.Dataset, slope: float, intercept: float
             ) -> tuple[float, float] | None:
    """The declared padding range in modality values, or None."""
    bounds = padding_range(ds)
    if bounds is None:
        return None
    ends = sorted(v * slope + intercept for v in bounds)
    return ends[0], ends[1]


def _spacing(ds: pydicom.Dataset) -> float | None:
    """Mean in-plane spacing in mm (PixelSpacing, else ImagerPixelSpacing); None if unusable."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            numbers = [float(v) for v in value] if value is not None else []
        except (TypeError, ValueError):
            continue
        if len(numbers) == 2 and all(v > 0 for v in numbers):
            return float(np.mean(numbers))
    return None


def split_by_patient(
    series: Sequence[SeriesData],
    val_fraction: float,
    seed: int,
    val_patients: Sequence[str] = (),
) -> tuple[list[SeriesData], list[SeriesData]]:
    """Train and validation series with no patient on both sides.

    ``val_patients`` names validation patients explicitly; otherwise a seeded shuffle of the
    patients (sorted first, so the result does not depend on folder order) puts
    ``val_fraction`` of them, at least one, in validation when there are two or more.
    """
    patients = sorted({s.patient_id for s in series})
    if val_patients:
        unknown = sorted(set(val_patients) - set(patients))
        if unknown:
            raise ValueError(f"validation patients {unknown} are not in the data "
                             f"(patients found: {patients})")
        chosen = set(val_patients)
    elif len(patients) < 2 or val_fraction <= 0:
        chosen = set()
    else:
        order = np.random.default_rng(seed).permutation(len(patients))
        count = min(len(patients) - 1, max(1, round(val_fraction * len(patients))))
        chosen = {patients[i] for i in order[:count]}
    train = [s for s in series if s.patient_id not in chosen]
    val = [s for s in series if s.patient_id in chosen]
    check_disjoint(train, val)
    return train, val


def check_disjoint(train: Sequence[SeriesData], val: Sequence[SeriesData]) -> None:
    """Raise ValueError if a patient is on both sides."""
    shared = {s.patient_id for s in train} & {s.patient_id for s in val}
    if shared:
        raise ValueError(
            f"patients {sorted(shared)} are in both the training and the validation data: "
            "validation must be patient-disjoint"
        )


def stable_seed(*parts: object) -> int:
    """A 32-bit seed from strings and numbers, stable across runs and Python versions."""
    return zlib.crc32("|".join(map(str, parts)).encode())


def random_crop(
    stack: np.ndarray, size: int, rng: np.random.Generator, multiple: int = 1
) -> tuple[np.ndarray, tuple[int, int]]:
    """A ``size`` x ``size`` crop of the last two axes at a random corner (a multiple of
    ``multiple``, so low-resolution pixel grids stay aligned); pads by reflection if smaller."""
    h, w = stack.shape[-2:]
    if h < size or w < size:
        pad = [(0, 0)] * (stack.ndim - 2) + [(0, max(0, size - h)), (0, max(0, size - w))]
        stack = np.pad(stack, pad, mode="reflect")
        h, w = stack.shape[-2:]
    top = int(rng.integers(0, (h - size) // multiple + 1)) * multiple
    left = int(rng.integers(0, (w - size) // multiple + 1)) * multiple
    return stack[..., top : top + size, left : left + size], (top, left)


def random_flip_rotate(arrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip and quarter-turn applied to every array (last two axes).

    An oblong array only gets half-turns (its shape is kept, so whole slices of one matrix still
    stack into one batch); the random draws are the same either way."""
    k = int(rng.integers(0, 4))
    flip = bool(rng.integers(0, 2))
    out = []
    for a in arrays:
        turns = k if a.shape[-2] == a.shape[-1] else k & 2
        a = np.rot90(a, turns, axes=(-2, -1))
        if flip:
            a = a[..., ::-1]
        out.append(np.ascontiguousarray(a))
    return out
