"""NIfTI / NRRD / MetaImage volumes as training series (training.volumes, SimpleITK)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import DATA, MR_DIR
from training.data import evenly_spaced, load_series
from training.volumes import VolumeError, read_volume

NIFTI_DIR = DATA / "mr_siemens_tcga_lgg_fg6692_t1_nifti"
NIFTI = next(NIFTI_DIR.glob("*.nii.gz"))


def _raw_nifti1(path: Path) -> tuple[np.ndarray, tuple[float, ...], tuple[float, float]]:
    """The voxels (x fastest), pixdim and scl_slope / scl_inter read from the NIfTI-1 header
    by hand, independently of SimpleITK."""
    raw = gzip.decompress(path.read_bytes())
    dims = np.frombuffer(raw, "<i2", 8, 40)
    datatype = int(np.frombuffer(raw, "<i2", 1, 70)[0])
    pixdim = tuple(float(v) for v in np.frombuffer(raw, "<f4", 8, 76))
    offset = int(np.frombuffer(raw, "<f4", 1, 108)[0])
    slope, inter = (float(v) for v in np.frombuffer(raw, "<f4", 2, 112))
    assert datatype == 4  # int16, as its SOURCE.md says
    shape = tuple(int(d) for d in dims[1:1 + int(dims[0])])
    data = np.frombuffer(raw, "<i2", int(np.prod(shape)), offset).reshape(shape[::-1])
    return data, pixdim, (slope, inter)


def test_nifti_reads_real_intensities_and_spacing():
    """TCGA-LGG T1 (256 x 224 x 26, 0.898 x 0.898 x 5.5 mm): slices across the 5.5 mm axis,
    values equal to the file's int16 voxels times its scale (identity here)."""
    slices, spacing = read_volume(NIFTI)
    voxels, pixdim, (slope, inter) = _raw_nifti1(NIFTI)
    assert slices.shape == (26, 224, 256) == voxels.shape
    assert spacing == pytest.approx(pixdim[1], abs=1e-4) == pytest.approx(0.8984, abs=1e-3)
    scale = slope if slope not in (0.0,) else 1.0
    np.testing.assert_array_equal(slices, voxels.astype(np.float32) * scale + inter)
    assert slices.min() == 0 and slices.max() == 1838


def test_nifti_folder_is_one_patient_with_the_configs_modality(tmp_path: Path):
    case = tmp_path / "TCGA-FG-6692"
    case.mkdir()
    shutil.copy(NIFTI, case / "t1.nii.gz")
    shutil.copy(NIFTI, case / "t1c.nii.gz")
    series = load_series([tmp_path], ["MR"])
    assert [s.series_uid for s in series] == ["volume:t1.nii.gz", "volume:t1c.nii.gz"]
    assert {s.patient_id for s in series} == {"TCGA-FG-6692"}
    assert all(s.modality == "MR" and s.slices.shape == (26, 224, 256) for s in series)
    with pytest.raises(VolumeError, match="exactly one modality"):
        load_series([tmp_path], ["MR", "CT"])
    with pytest.raises(VolumeError, match="exactly one modality"):
        load_series([tmp_path])


def test_nrrd_and_metaimage_round_trip_a_dicom_series(tmp_path: Path):
    """A DICOM series written as NRRD and as MetaImage by SimpleITK reads back with the same
    values and spacing as the DICOM loader gives (the slice axis is the largest spacing)."""
    [dicom] = load_series([MR_DIR])
    volume = sitk.GetImageFromArray(dicom.slices)  # (z, y, x)
    spacing = float(dicom.pixel_spacing or 1.0)
    volume.SetSpacing((spacing, spacing, 4.4))
    for name in ("vol.nrrd", "vol.mha"):
        sitk.WriteImage(volume, str(tmp_path / name))
        slices, read_spacing = read_volume(tmp_path / name)
        np.testing.assert_array_equal(slices, dicom.slices)
        assert read_spacing == pytest.approx(spacing)
    # isotropic-ish with the thick axis elsewhere: slices are taken across that axis
    volume.SetSpacing((5.0, spacing, spacing))
    sitk.WriteImage(volume, str(tmp_path / "sag.nrrd"))
    slices, _ = read_volume(tmp_path / "sag.nrrd")
    assert slices.shape == (dicom.slices.shape[2], dicom.slices.shape[0], dicom.slices.shape[1])


def test_a_4d_volume_or_a_broken_file_is_skipped_with_its_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    sitk.WriteImage(sitk.Image([8, 40, 40, 3], sitk.sitkInt16), str(tmp_path / "fmri.nii.gz"))
    (tmp_path / "broken.nii").write_bytes(b"not a nifti file at all")
    with caplog.at_level("INFO"):
        assert load_series([tmp_path], ["MR"]) == []
    assert "expected one 3D grayscale volume" in caplog.text
    assert "broken.nii" in caplog.text and "cannot read it" in caplog.text


def test_evenly_spaced_keeps_first_and_last_and_is_reproducible():
    [series] = load_series([MR_DIR])
    cut = evenly_spaced(series, 6)
    assert len(cut.slices) == 6
    np.testing.assert_array_equal(cut.slices[0], series.slices[0])
    np.testing.assert_array_equal(cut.slices[-1], series.slices[-1])
    np.testing.assert_array_equal(evenly_spaced(series, 6).slices, cut.slices)
    assert evenly_spaced(series, 100) is series
