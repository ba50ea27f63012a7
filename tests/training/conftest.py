"""Small DICOM data sets for the training tests, made from the real MR slices in tests/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import MR_DIR


def write_patients(root: Path, patients: int = 3, slices: int = 4, size: int = 64) -> Path:
    """``patients`` folders, each one series of ``slices`` real MR slices cropped to ``size``.

    PatientID and UIDs are new and deterministic, so the split is by patient; the pixels are
    real anatomy (centre crops of the Siemens brain MR).
    """
    files = sorted(MR_DIR.glob("*.dcm"))
    for p in range(patients):
        folder = root / f"patient{p}"
        folder.mkdir(parents=True, exist_ok=True)
        series_uid = generate_uid(entropy_srcs=[f"train-test-series-{p}"])
        for i, path in enumerate(files[12 + 3 * p : 12 + 3 * p + slices]):
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
            top = (pixels.shape[0] - size) // 2
            crop = np.ascontiguousarray(pixels[top : top + size, top : top + size])
            ds.PixelData = crop.tobytes()
            ds.Rows = ds.Columns = size
            ds.PatientID = f"TEST{p}"
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"train-test-{p}-{i}"])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = i + 1
            ds.save_as(folder / f"{i:02d}.dcm", enforce_file_format=True)
    return root


@pytest.fixture(scope="session")
def mr_patients(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_patients(tmp_path_factory.mktemp("mr_patients"))
