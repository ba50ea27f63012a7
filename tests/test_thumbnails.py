"""The status page's thumbnails (dicomnode.thumbnails): PNG encoding, window, which pair."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from dicomnode.thumbnails import encode_png, window


def test_png_round_trip() -> None:
    image = (np.arange(12 * 7, dtype=np.uint16) * 3 % 256).astype(np.uint8).reshape(12, 7)
    with Image.open(io.BytesIO(encode_png(image))) as decoded:
        assert decoded.mode == "L" and decoded.size == (7, 12)
        assert np.array_equal(np.asarray(decoded), image)


def test_window_from_header_else_percentiles() -> None:
    ds = Dataset()
    ds.WindowCenter, ds.WindowWidth = [40, 400], [80, 2000]
    assert window(ds, np.zeros((4, 4))) == (0.0, 80.0)
    values = np.arange(101, dtype=np.float32)
    assert window(Dataset(), values) == (1.0, 99.0)


def test_the_after_thumbnail_is_never_a_difference_object(tmp_path: Path) -> None:
    """Difference objects share InstanceNumber with their enhanced twins; the status page's
    "after" must be the enhanced image."""
    import pydicom

    from dicomnode.cli import main
    from dicomnode.thumbnails import middle_pair
    from tests.conftest import CT_TILT_DIR

    out = tmp_path / "out"
    assert main(["enhance", str(CT_TILT_DIR), str(out), "--model", "nlm-denoise", "--difference",
                 "--no-progress"]) == 0
    derived = sorted(out.rglob("*.dcm"))
    kinds = {tuple(pydicom.dcmread(p, stop_before_pixels=True).ImageType) for p in derived}
    assert any("DIFFERENCE" in k for k in kinds)  # both kinds were written
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
               for p in CT_TILT_DIR.glob("*.dcm")}
    pair = middle_pair(derived, sources)
    assert "DIFFERENCE" not in pydicom.dcmread(pair.derived, stop_before_pixels=True).ImageType
