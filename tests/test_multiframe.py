"""Enhanced MR/CT: read as a stack of frames, derived in their own IOD (SPEC section 5, 10).

The real Siemens XA30 Enhanced MR of tests/data is the main subject; Enhanced CT and Legacy
Converted Enhanced CT are built from the real CT slices (tests/multiframe_factory.py, highdicom).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomnode.derive import derived_uid
from dicomnode.engine import load as load_model
from dicomnode.enhance import SeriesOutcome, derivation_for, enhance_series
from dicomnode.errors import InputRejected
from dicomnode.files import write_dataset
from dicomnode.multiframe import read_multiframe
from dicomnode.series import scan
from tests.conftest import CT_TILT_DIR, DATA, ENHANCED_MR_DIR, dciodvfy_errors
from tests.multiframe_factory import enhanced_ct

XA30 = next(ENHANCED_MR_DIR.glob("*.dcm"))
PERFUSION_DIR = DATA / "ct_nema_enhanced_ct_CT0012_2fr"


def _enhance(folder: Path, model: str, out: Path) -> tuple[list[SeriesOutcome], list[Path]]:
    enhancer = load_model(model)
    derivation = derivation_for(enhancer.card, "test", " [dicomnode test]")
    written: list[Path] = []

    def sink(ds: Dataset) -> Path:
        path = write_dataset(ds, out / f"{ds.SOPInstanceUID}.dcm")
        written.append(path)
        return path

    outcomes = [enhance_series(s, enhancer, derivation, sink) for s in scan(folder).series]
    return outcomes, written


def _saved(ds: Dataset, folder: Path, name: str = "source.dcm") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / name, enforce_file_format=True)
    return folder / name


def _normal(item: Dataset, shared: Dataset) -> np.ndarray:
    orientation = (item.get("PlaneOrientationSequence") or shared.PlaneOrientationSequence)[0]
    iop = np.asarray(orientation.ImageOrientationPatient, dtype=float)
    return np.cross(iop[:3], iop[3:])


# -- reading ------------------------------------------------------------------------------------

def test_xa30_frames_are_ordered_along_the_normal_and_read_one_at_a_time():
    source = read_multiframe(XA30)
    assert source.number_of_frames == 96 and source.pixels.data is None  # left in the file
    assert source.frames[0].spacing == (2.0, 2.0)  # only in the per-frame groups
    ds = pydicom.dcmread(XA30)
    normal = _normal(ds.PerFrameFunctionalGroupsSequence[0], ds.SharedFunctionalGroupsSequence[0])
    along = [float(np.dot(normal, f.position)) for f in source.frames]
    assert np.all(np.diff(along) > 0)
    volume = source.volume()
    stored = ds.pixel_array
    for k, frame in enumerate(source.frames[::17]):
        assert np.array_equal(volume[17 * k], stored[frame.index])


def test_enhanced_ct_stored_out_of_order_is_read_in_space_order_in_hu(tmp_path: Path):
    slices = sorted(CT_TILT_DIR.glob("*.dcm"))
    path = _saved(enhanced_ct(slices, 12, shuffle=True), tmp_path)
    source = read_multiframe(path)
    ds = pydicom.dcmread(path)
    in_stack = [ds.PerFrameFunctionalGroupsSequence[f.index].FrameContentSequence[0]
                .InStackPositionNumber for f in source.frames]
    assert in_stack == list(range(1, 13))  # shuffled in Pixel Data, ordered when read
    hu = [pydicom.dcmread(p) for p in slices]
    hu.sort(key=lambda s: float(s.ImagePositionPatient[2]))
    first = hu[0].pixel_array * float(hu[0].RescaleSlope) + float(hu[0].RescaleIntercept)
    assert np.array_equal(source.modality_values(source.frames[0]), first)
    assert np.array_equal(source.modality_values(source.frames[6]), first)  # repeated slices


def test_geometry_in_the_shared_groups_reads_the_same(tmp_path: Path):
    ds = pydicom.dcmread(XA30)
    shared = ds.SharedFunctionalGroupsSequence[0]
    for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence",
                    "PixelValueTransformationSequence"):
        setattr(shared, keyword, copy.deepcopy(getattr(ds.PerFrameFunctionalGroupsSequence[0],
                                                       keyword)))
        for item in ds.PerFrameFunctionalGroupsSequence:
            delattr(item, keyword)
    moved = read_multiframe(_saved(ds, tmp_path))
    original = read_multiframe(XA30)
    assert [f.index for f in moved.frames] == [f.index for f in original.frames]
    assert [f.spacing for f in moved.frames] == [f.spacing for f in original.frames]


def test_legacy_converted_enhanced_ct_is_read(tmp_path: Path):
    import highdicom as hd

    slices = [pydicom.dcmread(p) for p in sorted(CT_TILT_DIR.glob("*.dcm"))]
    legacy = hd.legacy.LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
        instance_number=1)
    source = read_multiframe(_saved(legacy, tmp_path))
    assert source.number_of_frames == 6 and source.frames[0].rescale_type == "HU"
    assert source.sop_class_name == "Legacy Converted Enhanced CT Image Storage"


def _xa30_with(change) -> Dataset:
    ds = pydicom.dcmread(XA30)
    change(ds)
    return ds


@pytest.mark.parametrize(("change", "message"), [
    (lambda ds: setattr(ds.PerFrameFunctionalGroupsSequence[40].PlaneOrientationSequence[0],
                        "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]),
     "frames 1 and 41 have different ImageOrientationPatient"),
    (lambda ds: setattr(ds.PerFrameFunctionalGroupsSequence[7].PixelMeasuresSequence[0],
                        "PixelSpacing", [1, 1]),
     "frames 1 and 8 have different PixelSpacing"),
    (lambda ds: setattr(ds, "NumberOfFrames", 500),
     "NumberOfFrames is 500 but PerFrameFunctionalGroupsSequence has 96 item(s)"),
    (lambda ds: (setattr(ds, "NumberOfFrames", 95),
                 ds.PerFrameFunctionalGroupsSequence.pop()),
     "NumberOfFrames is smaller than the data"),
    (lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2]),
     "NumberOfFrames is larger than the data, or the file is truncated"),
    (lambda ds: delattr(ds.PerFrameFunctionalGroupsSequence[3], "PlanePositionSequence"),
     "frame 4 has no ImagePositionPatient in its per-frame or shared functional groups"),
    (lambda ds: delattr(ds, "PerFrameFunctionalGroupsSequence"),
     "PerFrameFunctionalGroupsSequence (5200,9230) is missing"),
], ids=["mixed-orientation", "mixed-spacing", "frames-more", "frames-fewer", "data-short",
        "no-plane-position", "no-per-frame-groups"])
def test_objects_that_are_not_one_stack_are_refused_with_the_reason(tmp_path, change, message):
    from pydicom import config

    previous = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE  # the point is a bad header
    try:
        path = _saved(_xa30_with(change), tmp_path)
    finally:
        config.settings.writing_validation_mode = previous
    with pytest.raises(InputRejected, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_multiframe(path)
    outcomes, written = _enhance(tmp_path, "bicubic-x2", tmp_path / "out")
    assert written == []  # refused whole, never half an object
    assert message.split(" (")[0] in outcomes[0].rejected[0][1]


# -- deriving -----------------------------------------------------------------------------------

def _ipp(item: Dataset) -> np.ndarray:
    return np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)


def _check_derived(derived_path: Path, source_path: Path, model: str, scale: int,
                   rule: str = "test") -> Dataset:
    """What SPEC section 5 asks of every derived Enhanced object, checked against its source."""
    src, out = pydicom.dcmread(source_path), pydicom.dcmread(derived_path)
    assert out.SOPClassUID == src.SOPClassUID and out.NumberOfFrames == src.NumberOfFrames
    assert (out.Rows, out.Columns) == (src.Rows * scale, src.Columns * scale)
    assert out.ImageType[0] == "DERIVED" and list(out.ImageType[2:]) == list(src.ImageType[2:])
    assert out.StudyInstanceUID == src.StudyInstanceUID
    assert out.FrameOfReferenceUID == src.FrameOfReferenceUID
    card = load_model(model).card
    derivation = derivation_for(card, rule, "")
    assert out.SOPInstanceUID == derived_uid(src.SOPInstanceUID, derivation)
    assert out.SeriesInstanceUID == derived_uid(src.SeriesInstanceUID, derivation)
    assert out.SeriesNumber == src.SeriesNumber + 1000
    assert out.ContributingEquipmentSequence[-1].Manufacturer == "dicomnode"
    assert out.DimensionIndexSequence == src.DimensionIndexSequence
    assert not any(e.tag.is_private for e in out.iterall())
    shared_src = src.SharedFunctionalGroupsSequence[0]
    shared_out = out.SharedFunctionalGroupsSequence[0]
    code = "113085" if scale > 1 else "113087"
    preserved = "NO" if scale > 1 else "YES"
    for k, (s, d) in enumerate(zip(src.PerFrameFunctionalGroupsSequence,
                                   out.PerFrameFunctionalGroupsSequence, strict=True)):
        assert d.FrameContentSequence == s.FrameContentSequence  # kept, dimension values too
        derivation_item = d.DerivationImageSequence[0]
        reference = derivation_item.SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert reference.ReferencedFrameNumber == k + 1
        assert reference.SpatialLocationsPreserved == preserved
        assert derivation_item.DerivationCodeSequence[0].CodeValue == code
        assert model in derivation_item.DerivationDescription
        measures = (s.get("PixelMeasuresSequence") or shared_src.PixelMeasuresSequence)[0]
        new_measures = (d.get("PixelMeasuresSequence") or shared_out.PixelMeasuresSequence)[0]
        dr, dc = (float(v) for v in measures.PixelSpacing)
        assert [float(v) for v in new_measures.PixelSpacing] == pytest.approx(
            [dr / scale, dc / scale])
        assert new_measures.SliceThickness == measures.SliceThickness
        orientation = (s.get("PlaneOrientationSequence")
                       or shared_src.PlaneOrientationSequence)[0].ImageOrientationPatient
        x, y = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
        shrink = 1 - 1 / scale  # SPEC: IPP' = IPP - X*(dc/2)*(1-1/f) - Y*(dr/2)*(1-1/f)
        expected = _ipp(s) - x * (dc / 2) * shrink - y * (dr / 2) * shrink
        assert _ipp(d) == pytest.approx(expected, abs=1e-4)
    assert not dciodvfy_errors(derived_path) - dciodvfy_errors(source_path)
    return out


def test_xa30_super_resolution_keeps_its_iod_frames_and_geometry(tmp_path: Path):
    outcomes, written = _enhance(ENHANCED_MR_DIR, "bicubic-x2", tmp_path)
    assert outcomes[0].rejected == [] and len(written) == 1
    out = _check_derived(written[0], XA30, "bicubic-x2", 2)
    # derived frame k is source frame k, enlarged (2x2 means of bicubic come back close)
    source, derived = pydicom.dcmread(XA30).pixel_array, out.pixel_array.astype(float)
    for k in (0, 40, 95):
        means = derived[k].reshape(128, 2, 128, 2).mean(axis=(1, 3))
        assert np.corrcoef(means.ravel(), source[k].ravel())[0, 1] > 0.99


def test_xa30_denoised_keeps_spacing_and_positions_and_reprocessing_gives_the_same_uids(
        tmp_path: Path):
    _, first = _enhance(ENHANCED_MR_DIR, "nlm-denoise", tmp_path / "a")
    _, second = _enhance(ENHANCED_MR_DIR, "nlm-denoise", tmp_path / "b")
    out = _check_derived(first[0], XA30, "nlm-denoise", 1)
    assert first[0].name == second[0].name  # deterministic UIDs: a resend replaces
    assert out.pixel_array.shape == (96, 128, 128)


def test_enhanced_ct_through_ct_denoise_and_two_objects_in_one_series(tmp_path: Path):
    """Two Enhanced CT objects of one series (one per stack) give two derived objects of one
    derived series; the CT's -1500 padding comes back exactly."""
    slices = sorted(CT_TILT_DIR.glob("*.dcm"))
    folder = tmp_path / "in"
    a = enhanced_ct(slices[:3], 3, name="a")
    b = enhanced_ct(slices[3:], 3, shuffle=True, name="b")
    b.SeriesInstanceUID, b.InstanceNumber = a.SeriesInstanceUID, 2
    paths = [_saved(a, folder, "a.dcm"), _saved(b, folder, "b.dcm")]
    outcomes, written = _enhance(folder, "ct-denoise", tmp_path / "out")
    assert len(outcomes) == 1 and outcomes[0].rejected == [] and len(written) == 2
    for path in written:
        out = pydicom.dcmread(path)
        source_uid = (out.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
                      .SourceImageSequence[0].ReferencedSOPInstanceUID)
        source_path = next(p for p in paths if pydicom.dcmread(p).SOPInstanceUID == source_uid)
        _check_derived(path, source_path, "ct-denoise", 1)
        source = pydicom.dcmread(source_path).pixel_array
        assert np.array_equal(out.pixel_array[source == -1500], source[source == -1500])
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in written}) == 1


def test_perfusion_map_is_refused_by_a_hu_model_with_its_reason(tmp_path: Path):
    """The NEMA Enhanced CT is a cerebral blood flow map (Rescale Type US): no CT denoiser
    should touch it."""
    outcomes, written = _enhance(PERFUSION_DIR, "ct-denoise", tmp_path)
    assert written == []
    (path, reason), = outcomes[0].rejected
    assert path.name.startswith("CT0012")
    assert "'US' values, not Hounsfield units" in reason and "PERFUSION" in reason


@pytest.mark.slow
def test_enhance_command_with_the_mr_models(tmp_path: Path):
    """``dicomnode enhance`` on the XA30 object with the default MR rule's model and the MR
    denoiser: one derived Enhanced MR each, valid, geometry as SPEC says."""
    from dicomnode.cli import main

    for model, scale in (("mr-sr-x2", 2), ("mr-denoise", 1)):
        out = tmp_path / model
        assert main(["enhance", str(ENHANCED_MR_DIR), str(out), "--model", model,
                     "--no-progress"]) == 0
        (derived,) = out.rglob("*.dcm")
        _check_derived(derived, XA30, model, scale, rule="enhance")

