"""Build a derived image from its source: a pure constructor that checks its inputs first.

The derived instance keeps the patient, study, frame of reference and equipment of its source,
gets new deterministic UIDs, is labelled DERIVED\\SECONDARY with a human-readable
DerivationDescription and coded derivation, references its source image and series, and
names this node in the Contributing Equipment Sequence (SPEC section 5).
"""

from __future__ import annotations

import copy
import io
import re
import uuid
from collections.abc import Sequence as Sequence_
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.tag import BaseTag
from pydicom.valuerep import DS

from dicomnode import MANUFACTURER, __version__
from dicomnode.errors import DeriveError
from dicomnode.multiframe import Frame, MultiFrame
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
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
# The MR Pulse Sequence module: dciodvfy (PS3.3 C.8.13.4) forbids it unless Image Type value 1
# is ORIGINAL or MIXED; a derived image describes no acquisition of its own.
_MR_PULSE_SEQUENCE_KEYWORDS = (
    "PulseSequenceName", "MRAcquisitionType", "EchoPulseSequence", "MultipleSpinEcho",
    "MultiPlanarExcitation", "PhaseContrast", "VelocityEncodingAcquisitionSequence",
    "TimeOfFlightContrast", "ArterialSpinLabelingContrast", "SteadyStatePulseSequence",
    "EchoPlanarPulseSequence", "SaturationRecovery", "SpectrallySelectedSuppression",
    "OversamplingPhase", "GeometryOfKSpaceTraversal", "RectilinearPhaseEncodeReordering",
    "SegmentedKSpaceTraversal", "CoverageOfKSpace", "NumberOfKSpaceTrajectories",
)
# Native Pixel Data has a 32-bit length (0xFFFFFFFF means undefined).
MAX_PIXEL_DATA_BYTES = 2**32 - 2


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

    _label_derived(ds, source, derivation)
    ds.DerivationDescription = derivation.description
    ds.DerivationCodeSequence = Sequence([_derivation_code(derivation.task)])
    ds.SourceImageSequence = Sequence([_source_image_item(source, derivation.task)])

    if f > 1:
        _scale_geometry(ds, source, f)
    _set_pixels(ds, stored, fmt)
    _keep_lossy(ds, source)
    return ds


def _label_derived(ds: Dataset, source: Dataset, derivation: Derivation) -> None:
    """What single-frame and multi-frame derived objects share (SPEC section 5): new UIDs,
    DERIVED\\SECONDARY, the source series referenced, this node as Contributing Equipment,
    series number and description, creation times."""
    ds.SOPInstanceUID = derived_uid(source.SOPInstanceUID, derivation)
    ds.SeriesInstanceUID = derived_uid(source.SeriesInstanceUID, derivation)
    ds.ImageType = _derived_image_type(source.get("ImageType"))
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


def _keep_lossy(ds: Dataset, source: Dataset) -> None:
    """Lossy once, lossy forever: the derived object says so when its source was."""
    method = lossy_method(source)
    if method is not None:
        ds.LossyImageCompression = "01"
        if method and "LossyImageCompressionMethod" not in ds:
            ds.LossyImageCompressionMethod = method


def _check_inputs(
    source: Dataset, stored: np.ndarray, fmt: PixelFormat, derivation: Derivation
) -> None:
    _check_source_uids(source)
    f = derivation.scale
    expected = (int(source.Rows) * f, int(source.Columns) * f)
    if stored.ndim != 2 or stored.shape != expected:
        raise DeriveError(
            f"pixel array has shape {stored.shape}, expected {expected} "
            f"(source Rows x Columns {source.Rows} x {source.Columns}, scale {f})"
        )
    _check_stored(stored, fmt)
    if f > 1:
        _check_geometry(source, f)


def _check_stored(stored: np.ndarray, fmt: PixelFormat) -> None:
    if stored.dtype != fmt.stored_dtype:
        raise DeriveError(
            f"pixel array dtype is {stored.dtype}, expected {fmt.stored_dtype} "
            f"for BitsAllocated {fmt.bits_allocated} and PixelRepresentation {int(fmt.signed)}"
        )
    low, high = fmt.stored_range
    if stored.size and (stored.min() < low or stored.max() > high):
        raise DeriveError(
            f"pixel values span {stored.min()}..{stored.max()}, outside BitsStored "
            f"{fmt.bits_stored} range {low}..{high}"
        )


def _check_source_uids(source: Dataset) -> None:
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


def _source_image_item(source: Dataset, task: str, frame: int | None = None) -> Dataset:
    purpose = codes.DCM.SourceImageForImageProcessingOperation
    item = _sop_reference(source)
    if frame is not None:
        item.ReferencedFrameNumber = frame
    item.PurposeOfReferenceCodeSequence = Sequence(
        [hd.sr.CodedConcept(purpose.value, purpose.scheme_designator, purpose.meaning)]
    )
    item.SpatialLocationsPreserved = "YES" if task == "denoise" else "NO"
    return item


def _sop_reference(source: Dataset) -> Dataset:
    """ReferencedSOPClassUID + ReferencedSOPInstanceUID of ``source``: the core of every
    reference item (Source Image, Referenced Series, Source Image Evidence)."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _referenced_series_item(source: Dataset) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = source.SeriesInstanceUID
    item.ReferencedInstanceSequence = Sequence([_sop_reference(source)])
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
    return _offset_series_number(value, SERIES_NUMBER_OFFSET)


def _offset_series_number(value: object, offset: int) -> int:
    """Source number + ``offset``, kept within IS range (the source's number when it would not
    fit; ``offset`` itself when the source has none)."""
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return offset
    return number + offset if number + offset <= MAX_IS else number


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
    moved = moved_position(position, orientation, spacing, f)
    ds.ImagePositionPatient = [DS(float(v), auto_format=True) for v in moved]


def moved_position(position: Sequence_[float], orientation: Sequence_[float],
                   spacing: Sequence_[float], f: int) -> np.ndarray:
    """SPEC section 5: IPP' = IPP - X*(dc/2)*(1-1/f) - Y*(dr/2)*(1-1/f), so that the x``f``
    image covers the same physical extent (its first pixel centre moves toward the corner)."""
    row_spacing, column_spacing = spacing
    x = np.asarray(orientation[:3], dtype=float)  # along a row (columns increase)
    y = np.asarray(orientation[3:], dtype=float)  # along a column (rows increase)
    shrink = 1.0 - 1.0 / f
    return (np.asarray(position, dtype=float)
            - x * (column_spacing / 2) * shrink
            - y * (row_spacing / 2) * shrink)


def _set_pixels(ds: Dataset, stored: np.ndarray, fmt: PixelFormat) -> None:
    data = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<"), copy=False)
    raw = data.tobytes()
    if len(raw) % 2:
        raw += b"\x00"
    ds.PixelData = raw
    ds["PixelData"].VR = "OW" if fmt.bits_allocated > 8 else "OB"


# -- Enhanced multi-frame objects (SPEC section 5's multi-frame clause) ------------------------

class DerivedMultiFrame:
    """The derived Enhanced object of one source: same SOP Class, same frames, new pixels.

    Built like ``derive_image``: the source is checked and every attribute but the pixels is
    set up front; the frames are then put in one at a time (in any order) into one
    preallocated buffer, the only full copy of the pixels the derivation holds. Each derived
    frame keeps its source frame's functional groups (Frame Content, Dimension Index Values,
    rescale) and references it in its Derivation Image Sequence; super-resolution divides
    Pixel Measures' spacing by the scale and moves each Plane Position by SPEC's formula.
    """

    def __init__(self, source: MultiFrame, derivation: Derivation) -> None:
        _check_source_uids(source.header)
        f = derivation.scale
        self.source, self.derivation = source, derivation
        self.rows, self.columns = source.fmt.rows * f, source.fmt.columns * f
        count = source.number_of_frames
        dtype = source.fmt.stored_dtype.newbyteorder("<")
        size = count * self.rows * self.columns * dtype.itemsize
        if size > MAX_PIXEL_DATA_BYTES:
            raise DeriveError(
                f"the derived Pixel Data would hold {size} bytes ({count} frames of "
                f"{self.rows} x {self.columns}): more than one DICOM object can hold (4 GiB)")
        self.header = _multiframe_header(source, derivation)  # checks before allocating
        # A file-like value is written by pydicom in chunks, not copied into bytes first.
        self._file = io.BytesIO()
        self._file.seek(size + size % 2 - 1)  # an odd length is padded to even
        self._file.write(b"\x00")
        self._view = self._file.getbuffer()
        self._frames = np.frombuffer(self._view, dtype=dtype, count=count * self.rows
                                     * self.columns).reshape(count, self.rows, self.columns)
        self._done = np.zeros(count, dtype=bool)

    def put(self, frame: Frame, stored: np.ndarray) -> None:
        """Frame ``frame``'s derived stored values (Rows*f x Columns*f, the source's dtype)."""
        if stored.shape != (self.rows, self.columns):
            raise DeriveError(f"frame {frame.number}: pixel array has shape {stored.shape}, "
                              f"expected {(self.rows, self.columns)} (scale "
                              f"{self.derivation.scale})")
        _check_stored(stored, self.source.frame_format(frame))
        self._frames[frame.index] = stored
        self._done[frame.index] = True

    def dataset(self) -> Dataset:
        """The derived object; every frame must have been put (an object is derived whole)."""
        missing = np.flatnonzero(~self._done) + 1
        if missing.size:
            shown = ", ".join(str(n) for n in missing[:5])
            raise DeriveError(f"{missing.size} frame(s) of {len(self._done)} were not derived "
                              f"(frame {shown}{' ...' if missing.size > 5 else ''}): an "
                              "Enhanced object is derived whole or not at all")
        del self._frames  # no writable view may outlive the hand-over
        self._view.release()
        self._file.seek(0)
        ds = self.header
        ds.PixelData = self._file
        ds["PixelData"].VR = "OW" if self.source.fmt.bits_allocated > 8 else "OB"
        return ds


def _multiframe_header(source: MultiFrame, derivation: Derivation) -> Dataset:
    header, f = source.header, derivation.scale
    ds = _copy_kept_attributes(header)
    ds.remove_private_tags()  # inside the functional groups too (SPEC: private tags dropped)
    _label_derived(ds, header, derivation)
    ds.ImageType = _enhanced_image_type(header.get("ImageType"))
    if str(header.SOPClassUID) == ENHANCED_MR:
        for keyword in _MR_PULSE_SEQUENCE_KEYWORDS:  # describe an acquisition: ORIGINAL only
            if keyword in ds:
                delattr(ds, keyword)
    ds.SourceImageEvidenceSequence = Sequence([_evidence_item(header)])
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else None
    if shared_item is not None:
        _derived_frame_type(shared_item)
    by_index = {frame.index: frame for frame in source.frames}
    for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        frame = by_index[index]
        item.DerivationImageSequence = Sequence([_derivation_image_item(header, derivation,
                                                                        frame.number)])
        _derived_frame_type(item)
        if f > 1:
            _scale_frame_groups(item, frame, f)
    if f > 1:
        ds.Rows, ds.Columns = int(header.Rows) * f, int(header.Columns) * f
        if shared_item is not None:
            _scale_frame_groups(shared_item, source.frames[0], f)
    _keep_lossy(ds, header)
    return ds


def _derivation_image_item(source: Dataset, derivation: Derivation, number: int) -> Dataset:
    """Derivation Image Functional Group: what was done, and from which source frame."""
    item = Dataset()
    item.DerivationDescription = derivation.description
    item.DerivationCodeSequence = Sequence([_derivation_code(derivation.task)])
    item.SourceImageSequence = Sequence([_source_image_item(source, derivation.task, number)])
    return item


def _evidence_item(source: Dataset) -> Dataset:
    """Source Image Evidence: every instance the Derivation Image Sequences reference."""
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence([_sop_reference(source)])
    item = Dataset()
    item.StudyInstanceUID = source.StudyInstanceUID
    item.ReferencedSeriesSequence = Sequence([series])
    return item


def _derived_frame_type(groups: Dataset) -> None:
    """Frame Type in the MR/CT Image Frame Type groups: DERIVED\\SECONDARY, as Image Type."""
    for element in groups:
        if element.VR != "SQ":
            continue
        for item in element.value:
            if "FrameType" in item:
                item.FrameType = _enhanced_image_type(item.FrameType)


def _enhanced_image_type(value: object) -> list[str]:
    """DERIVED, value 2 kept: Enhanced IODs enumerate PRIMARY only for value 2 (PS3.3
    C.8.16.1), so SPEC's SECONDARY would make the object invalid; values 3-4 kept."""
    values = _derived_image_type(value)
    source = [str(v) for v in value] if isinstance(value, list | tuple | MultiValue) else (
        [str(value)] if value else [])
    values[1] = source[1] if len(source) > 1 and source[1] else "PRIMARY"
    return values


def _scale_frame_groups(groups: Dataset, frame: Frame, f: int) -> None:
    """Pixel Measures' spacing / f, Plane Position moved (highdicom's functional groups)."""
    measures = groups.get("PixelMeasuresSequence")
    if measures:
        old = measures[0]
        new = hd.PixelMeasuresSequence(
            pixel_spacing=[v / f for v in frame.spacing],
            slice_thickness=old.get("SliceThickness"),
            spacing_between_slices=old.get("SpacingBetweenSlices"))
        groups.PixelMeasuresSequence = new
    if groups.get("PlanePositionSequence"):
        moved = moved_position(frame.position, frame.orientation, frame.spacing, f)
        groups.PlanePositionSequence = hd.PlanePositionSequence(
            hd.CoordinateSystemNames.PATIENT, [float(v) for v in moved])


# -- Difference series (SPEC section 10) --------------------------------------------------------

DIFFERENCE_SERIES_NUMBER_OFFSET = 2000
DIFFERENCE_SUFFIX = " DIFF"
# Attributes of the derived object that describe its own values, not the difference's.
_DIFFERENCE_DROPPED = (
    "PixelPaddingValue", "PixelPaddingRangeLimit", "VOILUTSequence", "ModalityLUTSequence",
    "WindowCenterWidthExplanation", "PixelIntensityRelationship",
    "PixelIntensityRelationshipSign", "PresentationLUTShape", "LargestImagePixelValue",
    "SmallestImagePixelValue",
)
_INT16 = 32767


def difference_uid(source_uid: str, derivation: Derivation) -> str:
    """As ``derived_uid`` with ``difference`` added to the UUIDv5 name: its own series, as
    deterministic as the enhanced one and never equal to it."""
    key = "|".join((str(source_uid), derivation.rule_name, derivation.model_name,
                    derivation.model_version, "difference"))
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, key).int}"


def difference_slope(difference: np.ndarray, source_slope: float) -> float:
    """The source's rescale step, or a coarser one when the difference would not fit 16 signed
    bits: the difference is never clipped, at most rounded to half a step."""
    step = abs(float(source_slope)) or 1.0
    peak = float(np.max(np.abs(difference))) if difference.size else 0.0
    if peak / step <= _INT16:
        return step
    return float(f"{peak / _INT16 * 1.0001:.6g}")  # DS holds 16 characters


def derive_difference(derived: Dataset, source: Dataset, difference: np.ndarray,
                      derivation: Derivation) -> Dataset:
    """The difference instance: ``difference`` (derived minus source, modality values on the
    derived grid) as signed 16-bit values, labelled as its own derived series of ``derived``'s
    source with the same references, codes, equipment and frame of reference."""
    shape = (int(derived.Rows), int(derived.Columns))
    if difference.shape != shape:
        raise DeriveError(f"difference has shape {difference.shape}, expected {shape} "
                          "(the derived grid)")
    if not np.all(np.isfinite(difference)):
        raise DeriveError("difference holds non-finite values: the model output was not numbers")
    ds = copy.deepcopy(derived)
    for keyword in _DIFFERENCE_DROPPED:
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPInstanceUID = difference_uid(source.SOPInstanceUID, derivation)
    ds.SeriesInstanceUID = difference_uid(source.SeriesInstanceUID, derivation)
    ds.ImageType = ["DERIVED", "SECONDARY", "DIFFERENCE"]
    ds.SeriesNumber = _offset_series_number(source.get("SeriesNumber"),
                                            DIFFERENCE_SERIES_NUMBER_OFFSET)
    ds.SeriesDescription = _series_description(
        source.get("SeriesDescription"), derivation.series_description_suffix + DIFFERENCE_SUFFIX)
    ds.DerivationDescription = (
        f"Difference: derived minus source image ({derivation.description.split(';')[0]})"
        f"{'; source resampled by bicubic interpolation' if derivation.scale > 1 else ''}; "
        "positive where the model raised the value")[:1024]
    slope = difference_slope(difference, float(source.get("RescaleSlope", 1) or 1))
    stored = np.clip(np.rint(difference / slope), -_INT16 - 1, _INT16).astype(np.int16)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept = DS(0)
    ds.RescaleSlope = DS(slope, auto_format=True)
    if "RescaleType" not in ds and str(ds.get("Modality", "")).upper() != "CT":
        ds.RescaleType = "US"  # the Modality LUT macro asks for it beside a rescale (CR)
    spread = float(np.percentile(np.abs(difference), 99)) if difference.size else 0.0
    ds.WindowCenter = DS(0)
    ds.WindowWidth = DS(max(2.0 * spread, 2.0 * slope), auto_format=True)
    ds.WindowCenterWidthExplanation = "DIFFERENCE"
    fmt = PixelFormat(shape[0], shape[1], 16, 16, True, slope, 0.0, "MONOCHROME2")
    _set_pixels(ds, stored, fmt)
    return ds
