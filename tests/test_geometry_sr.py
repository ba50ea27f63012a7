"""Super-resolution geometry with non-square pixels and a tilted plane (SPEC section 5).

Every file in tests/data has square pixels and most are axis-aligned, so a derived position that
swapped row and column spacing, or a row and a column direction, would go unseen. Here a real
MR series is rewritten in a temporary folder: PixelSpacing 0.8 mm between rows and 1.3 mm
between columns, the image plane turned about two axes, positions along its normal. It goes
through ``dicomnode enhance`` with the learned x2 model and a classical x3 (bicubic: the zoo
has no learned x3), and each derived ImagePositionPatient is checked against the SPEC formula
written out here: IPP' = IPP - X (dc/2)(1 - 1/f) - Y (dr/2)(1 - 1/f), (dr, dc) = PixelSpacing.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pydicom
import pytest

from dicomnode.cli import main
from dicomnode.engine.cards import ZOO_ENV, default_zoo_dir
from tests.conftest import MR_DIR

ROW_SPACING, COLUMN_SPACING = 0.8, 1.3  # PixelSpacing = [between rows, between columns]
SLICE_GAP = 4.0


def _rotation(a: float, b: float) -> list[list[float]]:
    """Rotation about z by ``a`` then about x by ``b`` (radians), as rows of a matrix."""
    ca, sa, cb, sb = math.cos(a), math.sin(a), math.cos(b), math.sin(b)
    rz = [[ca, -sa, 0.0], [sa, ca, 0.0], [0.0, 0.0, 1.0]]
    rx = [[1.0, 0.0, 0.0], [0.0, cb, -sb], [0.0, sb, cb]]
    return [[sum(rx[i][k] * rz[k][j] for k in range(3)) for j in range(3)] for i in range(3)]


def _apply(matrix: list[list[float]], vector: list[float]) -> list[float]:
    return [sum(matrix[i][k] * vector[k] for k in range(3)) for i in range(3)]


def _cross(u: list[float], v: list[float]) -> list[float]:
    return [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]


@pytest.fixture(scope="module")
def tilted_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three MR slices with non-square pixels on a plane turned 20 and 35 degrees."""
    folder = tmp_path_factory.mktemp("tilted")
    turn = _rotation(math.radians(20), math.radians(35))
    row = _apply(turn, [0.0, 1.0, 0.0])  # the source's sagittal plane, turned
    column = _apply(turn, [0.0, 0.0, -1.0])
    normal = _cross(row, column)
    origin = [-12.5, 30.25, 41.0]
    for k, path in enumerate(sorted(MR_DIR.glob("*.dcm"))[15:18]):
        ds = pydicom.dcmread(path)
        ds.PixelSpacing = [ROW_SPACING, COLUMN_SPACING]
        ds.ImageOrientationPatient = [round(v, 8) for v in row + column]
        ds.ImagePositionPatient = [round(o + k * SLICE_GAP * n, 6)
                                   for o, n in zip(origin, normal, strict=True)]
        ds.save_as(folder / path.name)
    return folder


@pytest.fixture
def zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped learned mr-sr-x2 and a classical bicubic x3 card."""
    folder = tmp_path / "zoo"
    shutil.copytree(default_zoo_dir() / "mr-sr-x2", folder / "mr-sr-x2")
    (folder / "bicubic-x3").mkdir()
    card = (default_zoo_dir() / "bicubic-x2" / "model.toml").read_text(encoding="utf-8")
    card = card.replace('name = "bicubic-x2"', 'name = "bicubic-x3"').replace(
        "scale = 2", "scale = 3").replace("x2 (", "x3 (")
    (folder / "bicubic-x3" / "model.toml").write_text(card, encoding="utf-8")
    monkeypatch.setenv(ZOO_ENV, str(folder))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("model, f", [("mr-sr-x2", 2), ("bicubic-x3", 3)])
def test_derived_position_follows_the_spec_formula(model: str, f: int, tilted_series: Path,
                                                   zoo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["enhance", str(tilted_series), str(out), "--model", model, "--device", "cpu",
                 "--no-progress"]) == 0
    sources = {str(ds.SOPInstanceUID): ds for ds in
               (pydicom.dcmread(p, stop_before_pixels=True) for p in tilted_series.iterdir())}
    derived = [pydicom.dcmread(p, stop_before_pixels=True) for p in out.rglob("*.dcm")]
    assert len(derived) == len(sources) == 3
    shrink = 1.0 - 1.0 / f
    for ds in derived:
        source = sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert (ds.Rows, ds.Columns) == (source.Rows * f, source.Columns * f)
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx(
            [ROW_SPACING / f, COLUMN_SPACING / f], abs=1e-9)
        assert [float(v) for v in ds.ImageOrientationPatient] == [
            float(v) for v in source.ImageOrientationPatient]
        x = [float(v) for v in source.ImageOrientationPatient[:3]]  # along a row
        y = [float(v) for v in source.ImageOrientationPatient[3:]]  # along a column
        dr, dc = (float(v) for v in source.PixelSpacing)
        expected = [float(p) - x[i] * (dc / 2) * shrink - y[i] * (dr / 2) * shrink
                    for i, p in enumerate(source.ImagePositionPatient)]
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(expected, abs=1e-4)
        # The first pixel's corner (its centre less half a pixel each way) does not move.
        corner = [float(p) - x[i] * dc / 2 - y[i] * dr / 2
                  for i, p in enumerate(source.ImagePositionPatient)]
        moved = [float(p) - x[i] * dc / (2 * f) - y[i] * dr / (2 * f)
                 for i, p in enumerate(ds.ImagePositionPatient)]
        assert moved == pytest.approx(corner, abs=1e-4)
