"""Finding, grouping and ordering series in any folder layout."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom

from dicomnode.series import SourceImage, order_slices, scan
from tests.conftest import CT_TILT_DIR, MR_DIR, TS_DIR


def _scatter(files: list[Path], root: Path, seed: int = 7) -> None:
    """Copy files into a random nested layout with meaningless names."""
    rng = random.Random(seed)
    for i, path in enumerate(rng.sample(files, len(files))):
        folder = root / f"d{rng.randint(0, 3)}" / f"e{rng.randint(0, 2)}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / f"img{i:04d}")


def _positions(images: list[SourceImage]) -> list[float]:
    result = []
    for im in images:
        o = np.asarray(im.orientation)
        result.append(float(np.dot(np.cross(o[:3], o[3:]), im.position)))
    return result


def test_groups_two_series_from_a_scattered_layout(tmp_path: Path):
    _scatter(sorted(MR_DIR.glob("*.dcm")) + sorted(CT_TILT_DIR.glob("*.dcm")), tmp_path)
    (tmp_path / "notes.txt").write_text("not DICOM")
    result = scan(tmp_path)
    sizes = sorted(len(s) for s in result.series)
    assert sizes == [6, 35]
    assert [s.path.name for s in result.skipped] == ["notes.txt"]
    assert "not a DICOM" in result.skipped[0].reason


def test_slices_ordered_along_the_normal(tmp_path: Path):
    _scatter(sorted(MR_DIR.glob("*.dcm")), tmp_path)
    (series,) = scan(tmp_path).series
    positions = _positions(series.images)
    assert positions == sorted(positions)
    assert len(set(np.round(np.diff(positions), 3))) == 1  # 4.8 mm, uniform here


def test_tilted_ct_with_uneven_spacing_keeps_its_order(tmp_path: Path):
    _scatter(sorted(CT_TILT_DIR.glob("*.dcm")), tmp_path, seed=3)
    (series,) = scan(tmp_path).series
    numbers = [im.instance_number for im in series.images]
    assert numbers == sorted(numbers) == [12, 13, 14, 15, 16, 17]
    gaps = np.round(np.diff(_positions(series.images)), 2)
    assert list(gaps) == [4.0, 4.0, 1.08, 7.0, 7.0]  # never assumed uniform
    tilt = pydicom.dcmread(series.images[0].path, stop_before_pixels=True).GantryDetectorTilt
    assert float(tilt) != 0


def test_instance_number_is_the_fallback_without_geometry():
    images = [
        SourceImage(Path(f"{n}"), f"1.2.{n}", "1.2", n, None, None) for n in (3, 1, 2)
    ]
    assert [im.instance_number for im in order_slices(images)] == [1, 2, 3]


def test_all_nine_syntax_files_form_one_series():
    result = scan(TS_DIR)
    assert len(result.series) == 1 and len(result.series[0]) == 9
    assert [s.path.name for s in result.skipped] == ["SOURCE.md"]
