"""Build a derived image from its source: a pure constructor that checks its inputs first.

The derived instance keeps the patient, study, frame of reference and equipment of its source,
gets new deterministic UIDs, is labelled DERIVED\\SECONDARY with a human-readable
DerivationDescription and coded derivation, references its source image and series, and
names this node in the Contributing Equipment Sequence (SPEC section 5).
"""

from __future__ import annotations

import copy
import re
import uuid
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.tag import BaseTag
from pydicom.valuerep import DS

from dicomnode import MANUFACTURER, __version__
from dicomnode.errors import DeriveError
from dicomnode.pixels import PixelFormat, lossy_method

TASKS = ("super-resolution", "denoise")
# Fixed namespace for derived UIDs: changing it would change every UID ever produced.
UID_NAMESPACE = uuid.UUID("04654bc4-48f4-52b9-9f2c-5da020fce523")
MAX_IS = 2**31 - 1
SERIES_NUMBER_OFFSET = 1000

# Attributes that describe the old pixel matrix or certify the old object.
_DROPPED_KEYWORDS = (
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "IconImageSequence",
    "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries", "PixelDataProviderURL", "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths", "DataSetTrailingPadding", "DigitalSignaturesSequence",
    "MACParametersSequence", "EncryptedAttributesSequence", "SourceImageSequence",
    "DerivationCodeSequence", "DerivationDescription", "ReferencedSeriesSequence",
)
_SPACING_KEYWORDS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")
_UID_CHARACTERS = re.compile(r"^[0-9.]{1,64}$")


@dataclass(frozen=True)
class Derivation:
    """What was done to the source: everything that goes into the labels and the UIDs."""

    rule_name: str
    model_name: str
    model_version: str
    task: str
    scale: int
    description: str
    series_description_suffix: str
    created: datetime

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DeriveError(f"task is {self.task!r}: expected one of {', '.join(TASKS)}")
        if not isinstance(self.scale, int) or self.scale < 1:
            raise DeriveError(f"scale is {self.scale!r}: expected an integer >= 1")
        if self.task == "denoise" and self.scale != 1:
            raise DeriveError(f"scale is {self.scale} for a denoising model: expected 1")
        for name in ("rule_name", "model_name", "model_version", "description"):
            if not str(getattr(self, name)).strip():
                raise DeriveError(f"{name} is empty: every derived object names its origin")
        if len(self.description) > 1024:
            raise DeriveError("description is longer than 1024 characters (DerivationDescription)")


def derived_uid(source_uid: str, derivation: Derivation) -> str:
    """``2.25.`` + UUIDv5 over (source UID, rule, model name, model version): re-processing
    the same source with the same model gives the same UID, so a resend replaces."""
    key = "|".join(
        (str(source_uid), derivation.rule_name, derivation.model_name, derivation.model_version)
    )
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, key).int}"


def produced_by_dicomnode(ds: Dataset) -> bool:
    """True when ``ds`` carries this node's Contributing Equipment item (never re-process)."""
    for item in ds.get("ContributingEquipmentSequence", []) or []:
        if str(item.get("Manufacturer", "")).strip() != MANUFACTURER:
            continue
        for purpose in item.get("PurposeOfReferenceCodeSequence", []) or []:
            if str(purpose.get("CodeValue", "")) == codes.DCM.ProcessingEquipment.value:
                return True
    return False


def derive_image(
    source: Dataset, stored: np.ndarray, fmt: PixelFormat, derivation: Derivation
) -> Dataset:
    """The derived instance of ``source`` holding ``stored`` (already in stored values)."""
    _check_inputs(source, stored, fmt, derivation)
    ds = _copy_kept_attributes(source)
    f = derivation.scale

    ds.SOPInstanceUID = derived_uid(source.SOPInstanceUID, derivation)
    ds.SeriesInstanceUID = derived_uid(source.SeriesInstanceUID, derivation)
    ds.ImageType = _derived_image_type(source.get("ImageType"))
    ds.DerivationDescription = derivation.description
    ds.DerivationCodeSequence = Sequence([_derivation_code(derivation.task)])
    ds.SourceImageSequence = Sequence([_source_image_item(source, derivation.task)])
    ds.ReferencedSeriesSequence = Sequence([_referenced_series_item(source)])
    earlier = list(source.get("ContributingEquipmentSequence", []) or [])
    ds.ContributingEquipmentSequence = Sequence([*earlier, _contributing_equipment(derivation)])
    ds.SeriesNumber = _series_number(source.get("SeriesNumber"))
    ds.SeriesDescription = _series_description(
        source.get("SeriesDescription"), derivation.series_description_suffix
    )
    date, time = derivation.created.strftime("%Y%m%d"), derivation.created.strftime("%H%M%S.%f")
    for prefix in ("Series", "Content", "InstanceCreation"):
        setattr(ds, f"{prefix}Date", date)
        setattr(ds, f"{prefix}Time", time)

    if f > 1:
        _scale_geometry(ds, source, f)
    _set_pixels(ds, stored, fmt)
    method = lossy_method(source)
    if method is not None:
        ds.LossyImageCompression = "01"
        if method and "LossyImageCompressionMethod" not in ds:
            ds.LossyImageCompressionMethod = method
    return ds


def _check_inputs(
    source: Dataset, stored: np.ndarray, fmt: PixelFormat, derivation: Derivation
) -> None:
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if not str(source.get(keyword, "") or "").strip():
            raise DeriveError(f"source {keyword} is missing: cannot derive from it")
        if source[keyword].VR != "UI":  # a UID written with another VR cannot be copied
            raise DeriveError(f"source {keyword} has VR {source[keyword].VR}, expected UI")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"):
        # Referenced in new sequences: a path, a NUL or 65+ characters would make the derived
        # object invalid (legacy UIDs with leading zeros are tolerated, as PACS do).
        if not _UID_CHARACTERS.match(str(source[keyword].value)):
            raise DeriveError(f"source {keyword} {str(source[keyword].value)[:80]!r} is not a "
                              "UID (digits and dots, at most 64 characters)")
    f = derivation.scale
    expected = (int(source.Rows) * f, int(source.Columns) * f)
    if stored.ndim != 2 or stored.shape != expected:
        raise DeriveError(
            f"pixel array has shape {stored.shape}, expected {expected} "
            f"(source Rows x Columns {source.Rows} x {source.Columns}, scale {f})"
        )
    if stored.dtype != fmt.stored_dtype:
        raise DeriveError(
            f"pixel array dtype is {stored.dtype}, expected {fmt.stored_dtype} "
            f"for BitsAllocated {fmt.bits_allocated} and PixelRepresentation {int(fmt.signed)}"
        )
    if f > 1:
        _check_geometry(source, f)
    low, high = fmt.stored_range
    if stored.size and (stored.min() < low or stored.max() > high):
        raise DeriveError(
            f"pixel values span {stored.min()}..{stored.max()}, outside BitsStored "
            f"{fmt.bits_stored} range {low}..{high}"
        )


def _check_geometry(source: Dataset, f: int) -> None:
    """Scaling rewrites spacing and position: each present one must be usable numbers."""
    for keyword in _SPACING_KEYWORDS:
        values = _numbers(source, keyword)
        if values is not None and (len(values) != 2 or not all(v > 0 for v in values)):
            raise DeriveError(f"{keyword} is {source.get(keyword)!r}: expected two positive "
                              f"numbers (mm) to scale by {f}")
    for keyword, count in (("ImagePositionPatient", 3), ("ImageOrientationPatient", 6)):
        values = _numbers(source, keyword)
        if values is not None and len(values) != count:
            raise DeriveError(f"{keyword} is {source.get(keyword)!r}: expected {count} finite "
                              f"numbers to move the image position for scale {f}")


def _numbers(source: Dataset, keyword: str) -> list[float] | None:
    """The finite numbers of a DS attribute; None when absent or empty; [] when any is not a
    finite number."""
    value = source.get(keyword)
    if value is None or value == "" or (not isinstance(value, str | bytes | int | float)
                                        and len(value) == 0):
        return None
    try:
        values = [value] if isinstance(value, str | bytes | int | float) else list(value)
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return []
    return numbers if all(np.isfinite(numbers)) else []


def _copy_kept_attributes(source: Dataset) -> Dataset:
    """Everything of the source except private, overlay, curve and old-matrix attributes."""
    dropped = {BaseTag(_tag(k)) for k in _DROPPED_KEYWORDS}
    ds = Dataset()
    for element in source:
        tag = element.tag
        if tag.is_private or tag.element == 0 or tag in dropped:
            continue
        if 0x5000 <= tag.group <= 0x601E and tag.group % 2 == 0 and tag.group & 0xFF00 in (
            0x5000, 0x6000
        ):
            continue  # curves (50xx) and overlays (60xx)
        ds.add(copy.deepcopy(element))
    return ds


def _tag(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return tag


def _derived_image_type(value: object) -> list[str]:
    if value is None or value == "":
        values: list[str] = []
    elif isinstance(value, str):
        values = [value]
    else:
        values = [str(v) for v in value]  # type: ignore[union-attr]
    return ["DERIVED", "SECONDARY", *values[2:]]


def _derivation_code(task: str) -> Dataset:
    code = codes.DCM.SpatialResampling if task == "super-resolution" else codes.DCM.Smoothing
    return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)


def _source_image_item(source: Dataset, task: str) -> Dataset:
    purpose = codes.DCM.SourceImageForImageProcessingOperation
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = Sequence(
        [hd.sr.CodedConcept(purpose.value, purpose.scheme_designator, purpose.meaning)]
    )
    item.SpatialLocationsPreserved = "YES" if task == "denoise" else "NO"
    return item


def _referenced_series_item(source: Dataset) -> Dataset:
    instance = Dataset()
    instance.ReferencedSOPClassUID = source.SOPClassUID
    instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item = Dataset()
    item.SeriesInstanceUID = source.SeriesInstanceUID
    item.ReferencedInstanceSequence = Sequence([instance])
    return item


def _contributing_equipment(derivation: Derivation) -> Dataset:
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=MANUFACTURER,
        software_versions=f"{__version__} {derivation.model_name} {derivation.model_version}",
        contribution_datetime=derivation.created,
        contribution_description=derivation.description[:1024],
    )


def _series_number(value: object) -> int:
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return SERIES_NUMBER_OFFSET
    return number + SERIES_NUMBER_OFFSET if number + SERIES_NUMBER_OFFSET <= MAX_IS else number


def _series_description(value: object, suffix: str) -> str:
    base = str(value or "").strip()
    room = 64 - len(suffix)
    return (base[: max(room, 0)] + suffix).strip()[:64]


def _scale_geometry(ds: Dataset, source: Dataset, f: int) -> None:
    """Rows, Columns and spacing by ``f``; IPP moved so the image covers the same extent.

    The values were checked by ``_check_geometry``; an empty one counts as absent.
    """
    ds.Rows = int(source.Rows) * f
    ds.Columns = int(source.Columns) * f
    for keyword in _SPACING_KEYWORDS:
        spacing = _numbers(source, keyword)
        if spacing:
            setattr(ds, keyword, [DS(v / f, auto_format=True) for v in spacing])
    spacing = _numbers(source, "PixelSpacing")
    orientation = _numbers(source, "ImageOrientationPatient")
    position = _numbers(source, "ImagePositionPatient")
    if not spacing or not orientation or not position:
        return
    row_spacing, column_spacing = spacing
    x = np.asarray(orientation[:3])  # along a row (columns increase)
    y = np.asarray(orientation[3:])  # along a column (rows increase)
    shrink = 1.0 - 1.0 / f
    moved = (
        np.asarray(position)
        - x * (column_spacing / 2) * shrink
        - y * (row_spacing / 2) * shrink
    )
    ds.ImagePositionPatient = [DS(float(v), auto_format=True) for v in moved]


def _set_pixels(ds: Dataset, stored: np.ndarray, fmt: PixelFormat) -> None:
    data = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<"), copy=False)
    raw = data.tobytes()
    if len(raw) % 2:
        raw += b"\x00"
    ds.PixelData = raw
    ds["PixelData"].VR = "OW" if fmt.bits_allocated > 8 else "OB"
