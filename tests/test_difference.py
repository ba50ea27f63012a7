"""The difference series of SPEC section 10: values, labels, UIDs, dciodvfy, config option."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomnode.cli import main
from dicomnode.derive import Derivation, derive_difference, derived_uid, difference_uid
from dicomnode.engine import load as load_model
from dicomnode.engine.classical import bicubic_upscale
from dicomnode.enhance import derivation_for, enhance_series
from dicomnode.errors import ConfigError
from dicomnode.pixels import modality_values
from dicomnode.series import scan
from tests.conftest import CR_J2K, CT_TILT_DIR, DATA, MR_DIR, dciodvfy_errors, read_back
from tests.test_config import load, make_config, problems, rule

ENHANCED_CT = DATA / "ct_nema_enhanced_ct_CT0012_2fr"


def _run(tmp_path: Path, source_dir: Path, model: str, count: int, name: str) -> Path:
    """``dicomnode enhance --difference`` over the first ``count`` images of ``source_dir``."""
    src = tmp_path / f"{name}-in"
    src.mkdir()
    for path in sorted(source_dir.glob("*.dcm"))[:count]:
        shutil.copy(path, src / path.name)
    out = tmp_path / f"{name}-out"
    assert main(["enhance", str(src), str(out), "--model", model, "--no-progress",
                 "--difference"]) == 0
    return src


def _split(out: Path) -> tuple[dict[str, Dataset], dict[str, Dataset]]:
    """(enhanced, difference) objects by the SOP Instance UID of their source."""
    enhanced, difference = {}, {}
    for path in sorted(out.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.filename = str(path)
        source_uid = str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
        (difference if "DIFFERENCE" in ds.ImageType else enhanced)[source_uid] = ds
    return enhanced, difference


def _sources(folder: Path) -> dict[str, Dataset]:
    result = {}
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.filename = str(path)
        result[str(ds.SOPInstanceUID)] = ds
    return result


@pytest.mark.parametrize(("source_dir", "model", "count", "scale"),
                         [(MR_DIR, "bicubic-x2", 3, 2), (CT_TILT_DIR, "nlm-denoise", 3, 1),
                          (CR_J2K.parent, "nlm-denoise", 1, 1)],
                         ids=["mr-sr-x2", "ct-denoise", "cr-monochrome1-denoise"])
def test_difference_is_derived_minus_source_labelled_and_valid(
        tmp_path: Path, source_dir: Path, model: str, count: int, scale: int) -> None:
    src = _run(tmp_path, source_dir, model, count, "a")
    sources = _sources(src)
    enhanced, difference = _split(tmp_path / "a-out")
    assert set(enhanced) == set(difference) == set(sources)
    card = load_model(model).card
    derivation = derivation_for(card, "enhance", f" [dicomnode {model}]")
    for uid, diff in difference.items():
        source, derived = sources[uid], enhanced[uid]
        # values: derived minus source (bicubic-resampled for x2), within one rescale step
        expected = modality_values(derived).astype(np.float64)
        base = modality_values(source).astype(np.float64)
        if scale > 1:
            base = bicubic_upscale(base, scale).astype(np.float64)
        expected -= base
        got = modality_values(diff).astype(np.float64)
        step = float(diff.RescaleSlope)
        assert got.shape == expected.shape == (int(source.Rows) * scale,
                                               int(source.Columns) * scale)
        assert np.max(np.abs(got - expected)) <= step * 0.5 + 1e-3
        if scale > 1:  # bicubic-x2 is the same bicubic: only the derived object's rounding
            assert np.abs(expected).max() <= 0.5 + 1e-3  # is left (same resampling, same grid)
        else:  # non-local means changed the image: the sign and size are checked above
            assert np.abs(expected).max() > step
        # labels
        assert list(diff.ImageType) == ["DERIVED", "SECONDARY", "DIFFERENCE"]
        assert "DIFFERENCE" not in derived.ImageType
        assert int(diff.SeriesNumber) == int(source.SeriesNumber) + 2000
        assert diff.SeriesDescription.endswith(f"[dicomnode {model}] DIFF")
        assert (diff.PixelRepresentation, diff.BitsStored, float(diff.RescaleIntercept)) == (
            1, 16, 0.0)
        assert float(diff.WindowCenter) == 0 and float(diff.WindowWidth) > 0
        assert diff.DerivationDescription.startswith("Difference: derived minus source image")
        for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID"):
            assert diff.get(keyword) == source.get(keyword)
        for keyword in ("DerivationCodeSequence", "ReferencedSeriesSequence", "Rows",
                        "PixelSpacing", "ImagePositionPatient"):
            assert diff.get(keyword) == derived.get(keyword), keyword
        assert diff.SourceImageSequence[0].ReferencedSOPInstanceUID == uid
        assert diff.ContributingEquipmentSequence[-1].Manufacturer == "dicomnode"
        # UIDs: deterministic, distinct from the enhanced series'
        assert diff.SOPInstanceUID == difference_uid(uid, derivation)
        assert diff.SeriesInstanceUID == difference_uid(source.SeriesInstanceUID, derivation)
        assert diff.SOPInstanceUID != derived.SOPInstanceUID == derived_uid(uid, derivation)
        assert diff.SeriesInstanceUID != derived.SeriesInstanceUID
        # dciodvfy: no Error its source did not have
        new = dciodvfy_errors(Path(diff.filename)) - dciodvfy_errors(Path(source.filename))
        assert not new, f"{Path(diff.filename).name}: {new}"
    assert len({d.SeriesInstanceUID for d in difference.values()}) == 1
    # a second run gives the same objects (a resend replaces)
    _run(tmp_path, source_dir, model, count, "b")
    again = _split(tmp_path / "b-out")[1]
    for uid, diff in difference.items():
        assert again[uid].SOPInstanceUID == diff.SOPInstanceUID
        assert again[uid].PixelData == diff.PixelData


def test_without_the_option_no_difference_is_written(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(sorted(CT_TILT_DIR.glob("*.dcm"))[0], src)
    out = tmp_path / "out"
    assert main(["enhance", str(src), str(out), "--model", "nlm-denoise", "--no-progress"]) == 0
    written = [pydicom.dcmread(p) for p in out.rglob("*.dcm")]
    assert len(written) == 1 and "DIFFERENCE" not in written[0].ImageType


def test_a_large_difference_gets_a_coarser_slope_instead_of_clipping() -> None:
    source = pydicom.dcmread(sorted(CT_TILT_DIR.glob("*.dcm"))[0])
    derivation = Derivation("r", "m", "1.0.0", "denoise", 1, "Denoising (dicomnode m 1.0.0)",
                            " [x]", datetime(2026, 12, 3, tzinfo=UTC))
    rows, columns = int(source.Rows), int(source.Columns)
    difference = np.linspace(-100000.0, 70000.0, rows * columns).reshape(rows, columns)
    derived = source.copy()
    diff = read_back(derive_difference(derived, source, difference, derivation))
    step = float(diff.RescaleSlope)
    assert step > 1
    got = modality_values(diff).astype(np.float64)
    # half a step of rounding, plus float32 decoding (modality_values) at 1e5
    assert np.max(np.abs(got - difference)) <= step * 0.5 + 0.02
    assert got.min() < -99000 and got.max() > 69000  # the extremes survived, not clipped


def test_an_enhanced_multiframe_object_gets_no_difference(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    series = scan(ENHANCED_CT).series[0]
    enhancer = load_model("nlm-denoise")
    written: list[Dataset] = []

    def sink(ds: Dataset) -> Path:
        written.append(ds)
        return tmp_path / f"{ds.SOPInstanceUID}.dcm"

    derivation = derivation_for(enhancer.card, "r", " [x]")
    with caplog.at_level("INFO"):
        outcome = enhance_series(series, enhancer, derivation, sink, difference=True)
    assert outcome.differences == 0 and len(written) == 1
    assert "DIFFERENCE" not in written[0].ImageType
    assert "difference_skipped" in caplog.text


def test_outputs_option_is_parsed_and_checked(tmp_path: Path) -> None:
    assert load(tmp_path, make_config()).rules[0].outputs == ("enhanced",)
    config = load(tmp_path, make_config(rules=rule(outputs='["enhanced", "difference"]')))
    assert config.rules[0].outputs == ("enhanced", "difference") and config.rules[0].difference
    found = problems(tmp_path, make_config(rules=rule(outputs='["enhanced", "diff"]')))
    assert any("rules[0].outputs: unknown output 'diff'" in p for p in found), found
    found = problems(tmp_path, make_config(rules=rule(outputs='["difference"]')))
    assert any("must include \"enhanced\"" in p for p in found), found
    found = problems(tmp_path, make_config(rules=rule(outputs='"difference"')))
    assert any("rules[0].outputs: expected a list" in p for p in found), found
    with pytest.raises(ConfigError):
        load(tmp_path, make_config(rules=rule(outputs="[]")))
