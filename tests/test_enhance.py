"""``dicomnode enhance`` end to end: derived series on disk, dciodvfy-clean, repeatable."""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.cli import main
from dicomnode.pixels import modality_values
from tests.conftest import CR_J2K, CT_TILT_DIR, MR_DIR, dciodvfy_errors


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _derived(out: Path) -> list[Path]:
    return sorted(out.rglob("*.dcm"))


def _sources_by_uid(folder: Path) -> dict[str, Path]:
    result = {}
    for path in folder.glob("*.dcm"):
        result[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    return result


def _assert_dciodvfy_clean(derived: list[Path], sources: dict[str, Path]) -> None:
    for path in derived:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        source = sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        new_errors = dciodvfy_errors(path) - dciodvfy_errors(source)
        assert not new_errors, f"{path.name}: {new_errors}"


@pytest.mark.slow
def test_mr_bicubic_x2_meets_the_contract_and_repeats(tmp_path: Path, capsys):
    before = _digests(MR_DIR)
    out1, out2 = tmp_path / "a", tmp_path / "b"
    assert main(["enhance", str(MR_DIR), str(out1), "--model", "bicubic-x2",
                 "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "1 series, 35 image(s) derived, 0 refused" in summary
    assert main(["enhance", str(MR_DIR), str(out2), "--model", "bicubic-x2",
                 "--no-progress"]) == 0
    first, second = _derived(out1), _derived(out2)
    assert len(first) == 35
    assert [p.relative_to(out1) for p in first] == [p.relative_to(out2) for p in second]
    for a, b in zip(first, second, strict=True):  # same UIDs and pixels, not just file names
        one, two = pydicom.dcmread(a), pydicom.dcmread(b)
        assert (one.SOPInstanceUID, one.SeriesInstanceUID) == (two.SOPInstanceUID,
                                                                two.SeriesInstanceUID)
        assert a.name == f"{one.SOPInstanceUID}.dcm"
        assert one.PixelData == two.PixelData
    assert _digests(MR_DIR) == before  # sources unchanged, byte for byte

    sources = _sources_by_uid(MR_DIR)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in first]
    assert len({h.SeriesInstanceUID for h in headers}) == 1
    assert {h.SourceImageSequence[0].ReferencedSOPInstanceUID for h in headers} == set(sources)
    for h in headers:
        assert (h.Rows, h.Columns) == (512, 512)
        assert h.SeriesDescription == "t1_fl2d_sag [dicomnode bicubic-x2]"
        assert "bicubic-x2 1.0.0" in h.DerivationDescription
    _assert_dciodvfy_clean(first, sources)


@pytest.mark.slow
def test_ct_nlm_denoise_on_tilted_ct(tmp_path: Path, capsys):
    assert main(["enhance", str(CT_TILT_DIR), str(tmp_path), "--model", "nlm-denoise",
                 "--no-progress"]) == 0
    derived = _derived(tmp_path)
    assert len(derived) == 6
    sources = _sources_by_uid(CT_TILT_DIR)
    _assert_dciodvfy_clean(derived, sources)
    for path in derived:
        ds = pydicom.dcmread(path)
        source = pydicom.dcmread(sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID])
        assert ds.ImagePositionPatient == source.ImagePositionPatient
        before, after = modality_values(source), modality_values(ds)
        soft = (before > 0) & (before < 80)  # brain tissue: levels kept
        assert abs(after[soft].mean() - before[soft].mean()) < 2.0
        assert np.any(after != before)  # processed, not copied
        padding = source.pixel_array == source.PixelPaddingValue  # -1500 outside the circle
        assert padding.mean() > 0.1 and ds.PixelPaddingValue == source.PixelPaddingValue
        assert np.array_equal(ds.pixel_array[padding], source.pixel_array[padding])


@pytest.mark.slow
def test_monochrome1_radiograph_keeps_photometric_and_polarity(tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(CR_J2K, folder)
    assert main(["enhance", str(folder), str(tmp_path / "out"), "--model", "bicubic-x2",
                 "--no-progress"]) == 0
    (path,) = _derived(tmp_path / "out")
    derived, source = pydicom.dcmread(path), pydicom.dcmread(CR_J2K)
    assert derived.PhotometricInterpretation == "MONOCHROME1"
    assert (derived.Rows, derived.Columns) == (3520, 3520)
    small = modality_values(derived)[::2, ::2]
    correlation = np.corrcoef(small.ravel(), modality_values(source).ravel())[0, 1]
    assert correlation > 0.99  # same polarity, same content
    assert not (set(dciodvfy_errors(path)) - set(dciodvfy_errors(CR_J2K)))


def _bad_inputs(folder: Path) -> None:
    """Three good MR slices plus one file of each kind of bad input, in one run."""
    good = sorted(MR_DIR.glob("*.dcm"))[15:18]
    for path in good:
        shutil.copy(path, folder)
    template = pydicom.dcmread(good[0])
    (folder / "notes.txt").write_text("not a DICOM file")
    raw = good[1].read_bytes()
    (folder / "truncated.dcm").write_bytes(raw[: len(raw) // 2])

    def variant(name: str, **changes) -> None:
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1.{len(name)}{abs(hash(name)) % 10**8}"
        for keyword, value in changes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(folder / name, enforce_file_format=True)

    variant("nopixels.dcm", PixelData=None)
    variant("absurd.dcm", Rows=65535, Columns=65535)
    variant("rgb.dcm", PhotometricInterpretation="RGB", SamplesPerPixel=3,
            PlanarConfiguration=0, SeriesInstanceUID="1.2.826.0.1.3680043.10.99.1")


def test_bad_inputs_get_clear_messages_and_the_rest_goes_on(tmp_path: Path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    _bad_inputs(folder)
    assert main(["enhance", str(folder), str(tmp_path / "out"), "--model", "nlm-denoise",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "3 image(s) derived, 4 refused" in captured.out
    assert "1 file(s) skipped" in captured.out  # notes.txt; truncated.dcm is refused
    err = captured.err
    assert "notes.txt" in err and "not a DICOM Part 10 file" in err
    assert "truncated.dcm: refused: no Pixel Data (7FE0,0010): not an image, or the file is " \
        "truncated" in err
    assert "nopixels.dcm: refused: no Pixel Data" in err
    assert "absurd.dcm: refused: Rows x Columns is 65535 x 65535" in err
    assert "rgb.dcm: refused: PhotometricInterpretation 'RGB'" in err
    assert "Traceback" not in err
    assert len(_derived(tmp_path / "out")) == 3


def test_nothing_usable_exits_1_with_a_message(tmp_path: Path, capsys):
    (tmp_path / "readme.txt").write_text("hello")
    assert main(["enhance", str(tmp_path), str(tmp_path / "out"), "--model", "nlm-denoise"]) == 1
    assert "no DICOM images found" in capsys.readouterr().err


def test_unknown_model_names_the_available_ones(tmp_path: Path, capsys):
    assert main(["enhance", str(MR_DIR), str(tmp_path), "--model", "nope"]) == 1
    err = capsys.readouterr().err
    assert "model 'nope'" in err and "bicubic-x2" in err and "nlm-denoise" in err


def test_derived_input_is_not_processed_again(tmp_path: Path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(sorted(CT_TILT_DIR.glob("*.dcm"))[0], folder)
    assert main(["enhance", str(folder), str(tmp_path / "once"), "--model", "nlm-denoise",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["enhance", str(tmp_path / "once"), str(tmp_path / "twice"),
                 "--model", "nlm-denoise", "--no-progress"]) == 1
    assert "produced by dicomnode" in capsys.readouterr().err
    assert not (tmp_path / "twice").exists() or not _derived(tmp_path / "twice")


def test_two_files_with_one_sop_instance_uid_derive_once(tmp_path: Path, capsys):
    """Derived UIDs follow from the source's: a second source under the same UID (here in
    another series) would give a second, different object under the same derived UID."""
    folder = tmp_path / "in"
    folder.mkdir()
    first, other = sorted(MR_DIR.glob("*.dcm"))[:2]
    shutil.copy(first, folder / "a.dcm")
    ds = pydicom.dcmread(other)
    ds.SOPInstanceUID = pydicom.dcmread(first, stop_before_pixels=True).SOPInstanceUID
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1.99"
    ds.save_as(folder / "b.dcm")
    assert main(["enhance", str(folder), str(tmp_path / "out"), "--model", "bicubic-x2",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "1 image(s) derived, 1 refused" in captured.out
    assert "b.dcm: refused: another file with SOPInstanceUID" in captured.err
    assert len(_derived(tmp_path / "out")) == 1
