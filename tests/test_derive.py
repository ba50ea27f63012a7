"""The derived-series contract of SPEC section 5, row by row, with write-and-read-back."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnode.derive import (
    UID_NAMESPACE,
    Derivation,
    derive_image,
    derived_uid,
    produced_by_dicomnode,
)
from dicomnode.engine.classical import bicubic_upscale
from dicomnode.errors import DeriveError
from dicomnode.pixels import modality_values, pixel_format, stored_values
from tests.conftest import CODEC_DIR, CT_TILT_DIR, MR_DIR, read_back

CREATED = datetime(2026, 11, 25, 9, 30, 15, 123456, tzinfo=UTC)


def _derivation(task: str = "super-resolution", scale: int = 2, rule: str = "mr-sr") -> Derivation:
    return Derivation(
        rule_name=rule, model_name="bicubic-x2" if scale > 1 else "nlm-denoise",
        model_version="1.0.0", task=task, scale=scale,
        description=f"Test x{scale} (dicomnode test 1.0.0); compare with source series",
        series_description_suffix=" [dicomnode SRx2]", created=CREATED,
    )


def _derive(source: Dataset, derivation: Derivation) -> Dataset:
    fmt = pixel_format(source)
    values = modality_values(source, fmt)
    if derivation.scale > 1:
        values = bicubic_upscale(values, derivation.scale)
    return derive_image(source, stored_values(values, fmt), fmt, derivation)


@pytest.fixture(scope="module")
def mr_source() -> Dataset:
    return pydicom.dcmread(sorted(MR_DIR.glob("*.dcm"))[10])


@pytest.fixture(scope="module")
def sr(mr_source: Dataset) -> Dataset:
    return read_back(_derive(mr_source, _derivation()))


@pytest.fixture(scope="module")
def denoised() -> tuple[Dataset, Dataset]:
    source = pydicom.dcmread(sorted(CT_TILT_DIR.glob("*.dcm"))[2])
    return source, read_back(_derive(source, _derivation("denoise", 1, "ct-dn")))


def test_patient_study_frame_and_equipment_copied(mr_source: Dataset, sr: Dataset):
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID",
                    "StudyDate", "StudyID", "AccessionNumber", "FrameOfReferenceUID",
                    "Manufacturer", "ManufacturerModelName", "DeviceSerialNumber",
                    "SOPClassUID", "Modality"):
        assert sr.get(keyword) == mr_source.get(keyword), keyword


def test_uids_new_and_deterministic(mr_source: Dataset, sr: Dataset):
    key = f"{mr_source.SOPInstanceUID}|mr-sr|bicubic-x2|1.0.0"
    assert sr.SOPInstanceUID == f"2.25.{uuid.uuid5(UID_NAMESPACE, key).int}"
    series_key = f"{mr_source.SeriesInstanceUID}|mr-sr|bicubic-x2|1.0.0"
    assert sr.SeriesInstanceUID == f"2.25.{uuid.uuid5(UID_NAMESPACE, series_key).int}"
    assert sr.SOPInstanceUID != mr_source.SOPInstanceUID
    assert sr.file_meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID
    other_rule = _derivation(rule="other")
    assert derived_uid(mr_source.SOPInstanceUID, other_rule) != sr.SOPInstanceUID
    assert len(sr.SOPInstanceUID) <= 64


def test_image_type_derived_secondary_later_values_kept(mr_source: Dataset, sr: Dataset):
    assert list(sr.ImageType) == ["DERIVED", "SECONDARY", *list(mr_source.ImageType)[2:]]


def test_derivation_description_and_code(sr: Dataset, denoised):
    assert "dicomnode test 1.0.0" in sr.DerivationDescription
    (code,) = sr.DerivationCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113085", "DCM")
    assert code.CodeMeaning == "Spatial resampling"
    (code,) = denoised[1].DerivationCodeSequence
    assert (code.CodeValue, code.CodeMeaning) == ("113087", "Smoothing")


def test_source_image_sequence(mr_source: Dataset, sr: Dataset, denoised):
    (item,) = sr.SourceImageSequence
    assert item.ReferencedSOPClassUID == mr_source.SOPClassUID
    assert item.ReferencedSOPInstanceUID == mr_source.SOPInstanceUID
    (purpose,) = item.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")
    assert item.SpatialLocationsPreserved == "NO"
    assert denoised[1].SourceImageSequence[0].SpatialLocationsPreserved == "YES"


def test_referenced_series(mr_source: Dataset, sr: Dataset):
    (item,) = sr.ReferencedSeriesSequence
    assert item.SeriesInstanceUID == mr_source.SeriesInstanceUID
    assert item.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == mr_source.SOPInstanceUID


def test_contributing_equipment(sr: Dataset):
    (item,) = sr.ContributingEquipmentSequence
    assert item.Manufacturer == "dicomnode"
    assert "bicubic-x2 1.0.0" in item.SoftwareVersions
    assert item.ContributionDateTime.startswith("20261125093015")
    assert item.ContributionDescription == sr.DerivationDescription
    (purpose,) = item.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")
    assert produced_by_dicomnode(sr)


def test_earlier_contributing_equipment_is_kept(mr_source: Dataset):
    source = copy.deepcopy(mr_source)
    earlier = Dataset()
    earlier.Manufacturer = "OtherVendor"
    source.ContributingEquipmentSequence = Sequence([earlier])
    assert not produced_by_dicomnode(source)
    derived = _derive(source, _derivation())
    assert [i.Manufacturer for i in derived.ContributingEquipmentSequence] == [
        "OtherVendor", "dicomnode"]


def test_series_number_and_description(mr_source: Dataset, sr: Dataset):
    assert sr.SeriesNumber == mr_source.SeriesNumber + 1000
    assert sr.SeriesDescription == f"{mr_source.SeriesDescription} [dicomnode SRx2]"
    source = copy.deepcopy(mr_source)
    source.SeriesNumber = 2**31 - 100  # +1000 would leave the IS range
    source.SeriesDescription = "x" * 64
    derived = _derive(source, _derivation())
    assert derived.SeriesNumber <= 2**31 - 1
    assert len(derived.SeriesDescription) == 64
    assert derived.SeriesDescription.endswith(" [dicomnode SRx2]")


def test_creation_dates_and_times(sr: Dataset):
    for prefix in ("Series", "Content", "InstanceCreation"):
        assert sr[f"{prefix}Date"].value == "20261125"
        assert sr[f"{prefix}Time"].value.startswith("093015")


def test_kept_geometry_attributes(mr_source: Dataset, sr: Dataset):
    for keyword in ("InstanceNumber", "ImageOrientationPatient", "SliceLocation",
                    "SliceThickness"):
        assert sr.get(keyword) == mr_source.get(keyword), keyword


def _centre(ds: Dataset) -> np.ndarray:
    """The physical position of the image centre, computed from the header alone."""
    o = np.asarray(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    return (np.asarray(ds.ImagePositionPatient, float) + o[:3] * dc * (ds.Columns - 1) / 2
            + o[3:] * dr * (ds.Rows - 1) / 2)


def test_super_resolution_geometry_covers_the_same_extent(mr_source: Dataset, sr: Dataset):
    assert (sr.Rows, sr.Columns) == (mr_source.Rows * 2, mr_source.Columns * 2)
    assert [float(v) for v in sr.PixelSpacing] == pytest.approx(
        [float(v) / 2 for v in mr_source.PixelSpacing])
    np.testing.assert_allclose(_centre(sr), _centre(mr_source), atol=1e-4)
    o = np.asarray(mr_source.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in mr_source.PixelSpacing)
    expected = (np.asarray(mr_source.ImagePositionPatient, float)
                - o[:3] * dc / 4 - o[3:] * dr / 4)  # (1 - 1/f)/2 = 1/4 for f = 2
    np.testing.assert_allclose(np.asarray(sr.ImagePositionPatient, float), expected, atol=1e-4)


def test_denoise_keeps_geometry(denoised):
    source, derived = denoised
    for keyword in ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient"):
        assert derived.get(keyword) == source.get(keyword), keyword


def test_pixel_module_kept(mr_source: Dataset, sr: Dataset, denoised):
    for source, derived in ((mr_source, sr), denoised):
        for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                        "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept",
                        "WindowCenter", "WindowWidth", "SamplesPerPixel"):
            assert derived.get(keyword) == source.get(keyword), keyword
        assert derived.pixel_array.shape == (derived.Rows, derived.Columns)
    _ct_source, ct_derived = denoised
    assert ct_derived.pixel_array.dtype == np.int16
    assert ct_derived.pixel_array.min() >= -1500


def test_values_clipped_to_stored_range(mr_source: Dataset):
    fmt = pixel_format(mr_source)
    wild = np.full((mr_source.Rows * 2, mr_source.Columns * 2), 1e7)
    wild[0, 0] = -1e7
    derived = read_back(derive_image(mr_source, stored_values(wild, fmt), fmt, _derivation()))
    assert derived.pixel_array.max() == 4095 and derived.pixel_array.min() == 0


def test_lossy_source_stays_marked_lossy():
    source = pydicom.dcmread(CODEC_DIR / "MR2_J2KI.dcm")
    derived = read_back(_derive(source, _derivation("denoise", 1)))
    assert derived.LossyImageCompression == "01"
    assert "ISO_15444_1" in str(derived.LossyImageCompressionMethod)
    assert derived.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_overlays_icons_curves_and_private_tags_dropped(mr_source: Dataset):
    source = copy.deepcopy(mr_source)
    source.add_new(0x60000010, "US", 256)  # overlay rows
    source.add_new(0x60003000, "OW", b"\x00" * 8)  # overlay data
    source.add_new(0x50000005, "US", 1)  # curve dimensions
    icon = Dataset()
    icon.Rows = 1
    source.IconImageSequence = Sequence([icon])
    block = source.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "secret")
    before = copy.deepcopy(source)
    derived = _derive(source, _derivation())
    assert source == before  # the original is never modified
    tags = {element.tag for element in derived}
    assert not any(t.group in (0x6000, 0x5000) for t in tags)
    assert not any(t.is_private for t in tags)
    assert "IconImageSequence" not in derived
    assert "SmallestImagePixelValue" not in derived


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("shape", "pixel array has shape"),
        ("dtype", "pixel array dtype is float64"),
        ("range", "outside BitsStored 12 range"),
        ("study", "source StudyInstanceUID is missing"),
    ],
)
def test_inputs_are_checked_first(mr_source: Dataset, change: str, message: str):
    source = copy.deepcopy(mr_source)
    fmt = pixel_format(source)
    pixels = np.zeros((source.Rows * 2, source.Columns * 2), np.uint16)
    if change == "shape":
        pixels = pixels[:10]
    elif change == "dtype":
        pixels = pixels.astype(np.float64)
    elif change == "range":
        pixels[0, 0] = 5000
    else:
        del source.StudyInstanceUID
    with pytest.raises(DeriveError, match=message):
        derive_image(source, pixels, fmt, _derivation())


@pytest.mark.parametrize(
    ("task", "scale", "message"),
    [("sharpen", 1, "task is 'sharpen'"), ("super-resolution", 0, "scale is 0"),
     ("denoise", 2, "scale is 2 for a denoising model")],
)
def test_derivation_is_validated(task: str, scale: int, message: str):
    with pytest.raises(DeriveError, match=message):
        _derivation(task, scale)


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("SOPInstanceUID", "../../../../tmp/x", "source SOPInstanceUID '../../../../tmp/x' is not"),
        ("SeriesInstanceUID", "1.2." + "3" * 70, "source SeriesInstanceUID '1.2.333"),
        ("SOPInstanceUID", "1.2.3\x004", "is not a UID"),
        ("PixelSpacing", ["0", "0"], "PixelSpacing is .*expected two positive numbers"),
        ("PixelSpacing", "0.5", "PixelSpacing is .*expected two positive numbers"),
        ("ImagePositionPatient", ["1", "nan", "2"], "ImagePositionPatient is .*3 finite"),
        ("ImageOrientationPatient", [1, 0, 0, 0, 1], "ImageOrientationPatient is .*6 finite"),
    ],
)
def test_hostile_identity_and_geometry_are_refused(mr_source: Dataset, keyword: str, value,
                                                  message: str):
    """Hostile values would make the derived object reference garbage or move it wrongly."""
    from pydicom import config

    source = copy.deepcopy(mr_source)
    previous = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        setattr(source, keyword, value)
    finally:
        config.settings.writing_validation_mode = previous
    fmt = pixel_format(mr_source)
    pixels = np.zeros((source.Rows * 2, source.Columns * 2), np.uint16)
    with pytest.raises(DeriveError, match=message):
        derive_image(source, pixels, fmt, _derivation())


def test_a_uid_stored_with_another_vr_is_refused(mr_source: Dataset):
    source = copy.deepcopy(mr_source)
    source["SeriesInstanceUID"].VR = "OB"
    source["SeriesInstanceUID"].value = b"\x01\x02"
    pixels = np.zeros((source.Rows * 2, source.Columns * 2), np.uint16)
    with pytest.raises(DeriveError, match="source SeriesInstanceUID has VR OB, expected UI"):
        derive_image(source, pixels, pixel_format(mr_source), _derivation())


def test_empty_geometry_counts_as_absent(mr_source: Dataset):
    """Found by bench/fuzz.py: an empty ImageOrientationPatient crashed the IPP arithmetic."""
    source = copy.deepcopy(mr_source)
    source.ImageOrientationPatient = ""
    fmt = pixel_format(source)
    pixels = np.zeros((source.Rows * 2, source.Columns * 2), np.uint16)
    derived = derive_image(source, pixels, fmt, _derivation())
    assert derived.ImagePositionPatient == source.ImagePositionPatient  # nothing to move by
    assert derived.PixelSpacing == [v / 2 for v in source.PixelSpacing]
