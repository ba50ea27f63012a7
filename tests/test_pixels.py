"""Decoding every transfer syntax of SPEC section 4 and the checks that come before it."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    JPEGLSNearLossless,
    RLELossless,
)

from dicomnode.errors import InputRejected
from dicomnode.pixels import (
    MAX_PIXELS_PER_FRAME,
    lossy_method,
    modality_values,
    pixel_format,
    stored_values,
)
from tests.conftest import CODEC_DIR, CR_J2K, CT_TILT_DIR, MR_DIR, TS_DIR

NINE_SYNTAXES = {
    "1.dcm": "1.2.840.10008.1.2.1",  # Explicit VR LE
    "2.dcm": "1.2.840.10008.1.2",  # Implicit VR LE
    "3.dcm": "1.2.840.10008.1.2.2",  # Explicit VR BE
    "4.dcm": "1.2.840.10008.1.2.5",  # RLE Lossless
    "5.dcm": "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "6.dcm": "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1, other encoder
    "7.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "8.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless, other encoder
    "9.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
}


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return modality_values(pydicom.dcmread(TS_DIR / "1.dcm"))


@pytest.mark.parametrize("name", sorted(NINE_SYNTAXES))
def test_nine_transfer_syntaxes_decode_to_identical_pixels(name: str, reference: np.ndarray):
    ds = pydicom.dcmread(TS_DIR / name)
    assert ds.file_meta.TransferSyntaxUID == NINE_SYNTAXES[name]
    values = modality_values(ds)
    assert values.shape == (384, 384)
    np.testing.assert_array_equal(values, reference)


def _mr_slice() -> pydicom.Dataset:
    return pydicom.dcmread(sorted(MR_DIR.glob("*.dcm"))[17])


def test_deflated_roundtrip(tmp_path: Path):
    ds = _mr_slice()
    expected = modality_values(ds)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    again = pydicom.dcmread(tmp_path / "deflated.dcm")
    assert again.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    np.testing.assert_array_equal(modality_values(again), expected)


@pytest.mark.parametrize(
    ("syntax", "options", "tolerance"),
    [
        (RLELossless, {}, 0),
        (JPEGLSNearLossless, {"jls_error": 3}, 3),
        (JPEG2000, {"j2k_cr": [20]}, None),
    ],
    ids=["rle", "jpeg-ls-near-lossless", "jpeg2000-lossy"],
)
def test_encoded_syntaxes_decode(tmp_path: Path, syntax, options, tolerance):
    ds = _mr_slice()
    expected = modality_values(ds)
    ds.compress(syntax, generate_instance_uid=False, **options)
    ds.save_as(tmp_path / "c.dcm", enforce_file_format=True)
    again = pydicom.dcmread(tmp_path / "c.dcm")
    values = modality_values(again)
    assert values.shape == expected.shape
    error = np.abs(values - expected)
    if tolerance is not None:
        assert error.max() <= tolerance
    else:  # lossy J2K: close, not equal
        assert 0 < error.mean() < 0.05 * (expected.max() - expected.min())
    if syntax != RLELossless:
        assert lossy_method(again) in ("ISO_14495_1", "ISO_15444_1")


@pytest.mark.skipif(shutil.which("dcmcjpeg") is None, reason="DCMTK dcmcjpeg not installed")
def test_jpeg_baseline_from_dcmtk(tmp_path: Path):
    ds = _mr_slice()
    eight_bit = np.clip(ds.pixel_array // 8, 0, 255).astype(np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = eight_bit.tobytes()
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "in.dcm", enforce_file_format=True)
    subprocess.run(["dcmcjpeg", "+eb", str(tmp_path / "in.dcm"), str(tmp_path / "out.dcm")],
                   check=True, capture_output=True)
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    values = modality_values(out)
    assert np.abs(values - eight_bit).mean() < 2.0
    assert lossy_method(out) == "ISO_10918_1"


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "MR2_J2KI.dcm", "RG1_J2KI.dcm"])
def test_codec_singles_decode(name: str):
    ds = pydicom.dcmread(CODEC_DIR / name)
    fmt = pixel_format(ds)
    values = modality_values(ds, fmt)
    assert values.shape == (fmt.rows, fmt.columns)
    assert np.isfinite(values).all() and values.std() > 0


def test_monochrome1_radiograph_is_marked_inverted():
    ds = pydicom.dcmread(CR_J2K)
    fmt = pixel_format(ds)
    assert fmt.photometric == "MONOCHROME1" and fmt.inverted
    values = modality_values(ds, fmt)
    assert values.shape == (1760, 1760)
    low, high = fmt.stored_range
    assert low <= values.min() and values.max() <= high == 2**10 - 1


def test_ct_signed_hu_round_trip():
    ds = pydicom.dcmread(sorted(CT_TILT_DIR.glob("*.dcm"))[0])
    fmt = pixel_format(ds)
    assert fmt.signed and fmt.stored_dtype == np.int16
    values = modality_values(ds, fmt)
    assert values.min() == -1500  # outside the field of view
    np.testing.assert_array_equal(stored_values(values, fmt), ds.pixel_array)


def test_stored_values_rescale_rounds_and_clips():
    ds = _mr_slice()
    ds.RescaleSlope, ds.RescaleIntercept = 2.0, -100.0
    fmt = pixel_format(ds)
    assert fmt.modality_range == (-100.0, 2 * 4095 - 100.0)
    stored = stored_values(np.array([-1e9, -100.0, 0.9, 1e9]), fmt)
    np.testing.assert_array_equal(stored, [0, 0, 50, 4095])
    assert stored.dtype == np.uint16


def _broken(**changes) -> pydicom.Dataset:
    ds = copy.deepcopy(_mr_slice())
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"PixelData": None}, "no Pixel Data"),
        ({"Rows": 65535, "Columns": 65535}, "Rows x Columns is 65535 x 65535"),
        ({"Rows": 0}, "needs both >= 1"),
        ({"BitsStored": 17}, "BitsStored is 17"),
        ({"BitsAllocated": 12}, "BitsAllocated is 12"),
        ({"PhotometricInterpretation": "RGB", "SamplesPerPixel": 3}, "'RGB'"),
        ({"NumberOfFrames": 4}, "NumberOfFrames is 4"),
        ({"Rows": 512}, "the file is truncated"),
        ({"BitsStored": None}, "BitsStored is missing"),
    ],
)
def test_pixel_format_refuses_with_the_attribute_named(changes, message):
    with pytest.raises(InputRejected, match=message.replace("(", r"\(")):
        pixel_format(_broken(**changes))


def test_absurd_size_is_refused_before_decoding():
    ds = _broken(Rows=65535, Columns=65535)
    assert MAX_PIXELS_PER_FRAME < 65535 * 65535
    with pytest.raises(InputRejected):
        modality_values(ds)


def test_rgb_jpeg_tile_is_refused():
    with pytest.raises(InputRejected, match="grayscale"):
        pixel_format(pydicom.dcmread(CODEC_DIR / "SC_jpeg_no_color_transform.dcm"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"SamplesPerPixel": 0}, "SamplesPerPixel 0"),
        ({"NumberOfFrames": 0}, "NumberOfFrames is 0"),
        ({"PixelRepresentation": 2}, "PixelRepresentation is 2"),
        ({"RescaleSlope": 0, "RescaleIntercept": 0}, "RescaleSlope is 0"),
        ({"RescaleSlope": float("nan"), "RescaleIntercept": 0}, "RescaleSlope is nan"),
        ({"RescaleSlope": 1, "RescaleIntercept": 1e300}, "beyond what float32 holds"),
        ({"PixelData": b""}, r"Pixel Data \(7FE0,0010\) is empty"),  # found by bench/fuzz.py
    ],
)
def test_zero_and_absurd_values_are_refused_not_defaulted(changes, message):
    """0 used to be read as 'absent' (``x or 1``): a slope of 0 became 1, 0 frames became 1."""
    with pytest.raises(InputRejected, match=message):
        pixel_format(_broken(**changes))


def test_values_of_the_wrong_type_are_refused():
    ds = _broken()
    ds["Rows"].VR, ds["Rows"].value = "LO", "abc"
    with pytest.raises(InputRejected, match="Rows is 'abc': expected one integer"):
        pixel_format(ds)


def test_pixel_data_longer_than_one_frame_is_refused():
    ds = _broken()
    ds.PixelData = ds.PixelData * 2
    with pytest.raises(InputRejected, match="more than one frame's worth"):
        pixel_format(ds)


def test_unknown_or_missing_transfer_syntax_is_refused():
    ds = _broken()
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"
    with pytest.raises(InputRejected, match=r"'1\.2\.3\.4\.5\.6' is not a known transfer syntax"):
        pixel_format(ds)
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(InputRejected, match="no Transfer Syntax UID"):
        pixel_format(ds)


def _with_frame_header(name: str, marker: bytes, offset: int, fmt: str, values: tuple):
    import struct

    ds = pydicom.dcmread(TS_DIR / name)
    pixels = bytearray(ds.PixelData)
    struct.pack_into(fmt, pixels, pixels.find(marker) + offset, *values)
    ds.PixelData = bytes(pixels)
    return ds


@pytest.mark.parametrize(
    ("name", "marker", "offset", "fmt", "values", "message"),
    [
        ("5.dcm", b"\xff\xc3", 5, ">HH", (65535, 65535), "JPEG codestream is 65535 x 65535"),
        ("7.dcm", b"\xff\xf7", 5, ">HH", (65535, 65535), "JPEG-LS codestream is 65535"),
        ("9.dcm", b"\xff\x51", 6, ">II", (50000, 50000), "JPEG 2000 codestream is 50000"),
        ("9.dcm", b"\xff\x51", 38, ">H", (16384,), "with 16384 component"),
    ],
    ids=["jpeg-lossless", "jpeg-ls", "jpeg2000", "jpeg2000-components"],
)
def test_codestream_contradicting_the_header_is_refused_before_decoding(
        name, marker, offset, fmt, values, message):
    """libjpeg sized its buffers from a 65535 x 65535 SOF: gigabytes before failing."""
    ds = _with_frame_header(name, marker, offset, fmt, values)
    with pytest.raises(InputRejected, match=message):
        pixel_format(ds)


def test_a_decoder_panic_is_a_refusal_not_a_dead_worker():
    """RLE with fewer Rows than encoded: pylibjpeg-rle panics; pyo3 raises PanicException, a
    BaseException that went through every ``except Exception`` and ended the worker thread."""
    ds = pydicom.dcmread(TS_DIR / "4.dcm")
    ds.Rows = 200
    with pytest.raises(InputRejected, match="decoder panicked"):
        modality_values(ds, pixel_format(ds))


def test_a_real_enhanced_mr_is_refused_with_its_reason():
    """The node does not process multi-frame objects yet (training reads them frame by frame):
    a Siemens XA30 Enhanced MR gets a reason naming the frames, not a crash or a wrong image."""
    from tests.conftest import ENHANCED_MR_DIR

    ds = pydicom.dcmread(next(ENHANCED_MR_DIR.glob("*.dcm")))
    with pytest.raises(InputRejected, match="NumberOfFrames is 96: multi-frame"):
        pixel_format(ds)
