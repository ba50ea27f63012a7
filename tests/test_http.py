"""[http] keys (token_file off loopback, show_phi) and the thumbnail renderer's pieces."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from dicomnode.config import check_files, is_loopback, parse_config
from dicomnode.errors import ConfigError
from dicomnode.status_page import is_phi
from dicomnode.thumbnails import encode_png, window


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("192.0.2.10", False), ("node.example.org", False)])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_off_loopback_needs_a_token_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"http": {"host": "0.0.0.0"}})
    assert info.value.problems[0].startswith("http.token_file: required when http.host is not")
    config = parse_config({"http": {"host": "0.0.0.0", "token_file": "t", "show_phi": True}})
    assert config.http.token_file == Path("t") and config.http.show_phi
    assert not parse_config({}).http.show_phi  # names stay hidden by default


def test_token_file_must_be_private(tmp_path: Path) -> None:
    token = tmp_path / "token"
    config = parse_config({"http": {"token_file": str(token)}})
    assert check_files(config) == [f"http.token_file: file {token} does not exist"]
    token.write_text("x\n")
    token.chmod(0o640)
    assert check_files(config) == []


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


def test_patient_attributes_count_as_phi() -> None:
    assert is_phi("PatientName") and is_phi("OtherPatientIDsSequence")
    assert is_phi("AccessionNumber") and not is_phi("Modality")


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
