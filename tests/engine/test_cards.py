"""Model cards (dicomnode.engine.cards): parsing, weights checks, the shipped zoo and its
numbers, end to end runs of every shipped model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from dicomnode.cli import main
from dicomnode.engine import load as load_model
from dicomnode.engine.cards import ZOO_ENV, load_card
from dicomnode.engine.degradations import kspace_truncate
from dicomnode.errors import ModelError
from dicomnode.nets import build_network
from tests.conftest import DATA, MR_DIR, dciodvfy_errors
from tests.model_factory import TINY_DNCNN, TINY_RLFN, replace_weights, write_model

SR_PARAMS = {**TINY_RLFN, "scale": 2}


def test_a_tampered_weights_file_is_refused(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny-sr", "rlfn", SR_PARAMS)
    weights = folder / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"has sha256 [0-9a-f]{64}, the card says .* re-export"):
        load_model("tiny-sr", tmp_path, device="cpu")


def test_a_missing_weights_file_is_refused(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny-sr", "rlfn", SR_PARAMS)
    (folder / "weights.safetensors").unlink()
    with pytest.raises(ModelError, match=r"'tiny-sr': weights file .*weights.safetensors is "
                                         "missing"):
        load_model("tiny-sr", tmp_path, device="cpu")


def test_learned_cards_need_their_normalisation(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "m", "rlfn", SR_PARAMS)
    card = folder / "model.toml"
    text = card.read_text(encoding="utf-8")
    card.write_text(text.replace('method = "percentile"', ""), encoding="utf-8")
    with pytest.raises(ModelError, match=r"cannot run model 'm': normalisation\.method: required "
                                         "for a learned model"):
        load_model("m", tmp_path, device="cpu")
    card.write_text(text.replace("low = 0.5", ""), encoding="utf-8")
    with pytest.raises(ModelError, match=r"invalid card: normalisation\.low: required for method "
                                         "'percentile'"):
        load_card("m", tmp_path)


def test_card_precisions_are_checked(tmp_path: Path) -> None:
    write_model(tmp_path, "m", "rlfn", SR_PARAMS, inference={"precisions": ["fp32", "int8"]})
    with pytest.raises(ModelError, match=r"inference.precisions: expected a list of fp32, fp16, "
                                         "bf16"):
        load_card("m", tmp_path)
    write_model(tmp_path, "ok", "rlfn", SR_PARAMS, inference={"precisions": ["bf16", "fp32"]})
    assert load_card("ok", tmp_path).precisions == ("bf16", "fp32")
    write_model(tmp_path, "default", "rlfn", SR_PARAMS)
    assert load_card("default", tmp_path).precisions == ("fp32",)


def test_the_shipped_zoo_loads() -> None:
    """Every card in models/ passes the node's checks (weights, guards, normalisation)."""
    from dicomnode.engine.cards import list_cards

    cards, problems = list_cards()
    assert problems == []
    assert {"ct-denoise", "mr-denoise", "mr-sr-x2", "xr-denoise"} <= {card.name for card in cards}
    for card in cards:
        load_model(card.name, device="cpu")


def test_every_shipped_learned_model_passes_its_own_evaluation() -> None:
    """A card records that its model beats every baseline, and every region where it is worse
    than the best baseline has been reviewed: ``[review] waived_regions`` lists exactly those
    regions, with a reason (no unreviewed failure, no waiver left over from older weights).

    The numbers come from ``dicomnode-train evaluate --update-card`` (or export); this keeps a
    model whose evaluation failed, or that was never evaluated region by region, out of the zoo.
    """
    from dicomnode.engine.cards import list_cards

    cards, _problems = list_cards()
    learned = [card for card in cards if card.learned]
    assert len(learned) >= 4
    for card in learned:
        assert card.metrics.get("beats_all_baselines") is True, card.name
        assert isinstance(card.metrics.get("regions_ok"), bool), card.name
        worse = {entry.split(":")[0] for level in card.metrics.values()
                 if isinstance(level, dict) for entry in level.get("worse_regions", [])}
        assert card.metrics["regions_ok"] == (not worse), card.name
        assert set(card.review.get("waived_regions", [])) == worse, card.name


def test_cross_scanner_numbers_are_reported_as_measured() -> None:
    """Where a shipped card carries ``[cross_scanner_metrics]`` (SPEC section 10: series from
    scanner models absent from its training data), they come from the same evaluation: every
    level has the model and its baselines, the recorded gain is their difference, and "beats"
    says what the numbers say (no card may claim a win its numbers do not show)."""
    from dicomnode.engine.cards import list_cards

    cards, _problems = list_cards()
    crossed = [card for card in cards if card.learned and card.cross_scanner_metrics]
    assert {"ct-denoise", "mr-denoise"} <= {card.name for card in crossed}
    for card in crossed:
        table = card.cross_scanner_metrics
        assert "cross-scanner" in table["source"] and table["slices"] >= 1, card.name
        levels = {k: v for k, v in table.items() if isinstance(v, dict) and "model" in v}
        assert levels, card.name
        claimed = True
        for level in levels.values():
            for baseline, gain in level["gain_psnr_db"].items():
                assert gain == pytest.approx(
                    level["model"]["psnr"] - level[baseline]["psnr"], abs=2e-3), card.name
                wins = (level["model"]["psnr"] > level[baseline]["psnr"]
                        and level["model"]["ssim"] > level[baseline]["ssim"])
                assert level["beats"][baseline] == wins, (card.name, baseline)
                claimed = claimed and wins
        assert table["beats_all_baselines"] == claimed, card.name


def test_a_review_needs_a_reason(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny", "dncnn", TINY_DNCNN)
    card = folder / "model.toml"
    text = card.read_text()
    card.write_text(text + '\n[review]\nwaived_regions = ["background_top"]\nreason = ""\n')
    with pytest.raises(ModelError, match="review"):
        load_card("tiny", tmp_path)
    card.write_text(text + '\n[review]\nwaived_regions = ["background_top"]\n'
                           'reason = "air at the edge of the reconstruction circle"\n')
    assert load_card("tiny", tmp_path).review["waived_regions"] == ["background_top"]


# --- end to end through the command line ----------------------------------------------------


def test_a_tiny_learned_model_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    sources = {}
    for path in sorted(MR_DIR.glob("*.dcm"))[15:19]:
        shutil.copy(path, folder)
        sources[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    zoo = tmp_path / "zoo"
    model = write_model(zoo, "tiny-mr-sr", "rlfn", {**SR_PARAMS, "in_channels": 3})
    # Zero weights: the network adds nothing, so the guarded output is the input's own k-space
    # and kspace_truncate(output) == input up to rounding wherever nothing was clipped at 0.
    replace_weights(model, {k: torch.zeros_like(v) for k, v in
                            build_network("rlfn", {**SR_PARAMS, "in_channels": 3})
                            .state_dict().items()})
    monkeypatch.setenv(ZOO_ENV, str(zoo))
    out = tmp_path / "out"
    assert main(["enhance", str(folder), str(out), "--model", "tiny-mr-sr", "--device", "cpu",
                 "--batch-size", "3", "--no-progress"]) == 0
    assert "1 series, 4 image(s) derived, 0 refused" in capsys.readouterr().out
    derived = sorted(out.rglob("*.dcm"))
    assert len(derived) == 4
    for path in derived:
        ds = pydicom.dcmread(path)
        source = pydicom.dcmread(sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID])
        assert (ds.Rows, ds.Columns) == (2 * source.Rows, 2 * source.Columns)
        assert [float(v) for v in ds.PixelSpacing] == [float(v) / 2 for v in source.PixelSpacing]
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SeriesDescription == f"{source.SeriesDescription} [dicomnode tiny-mr-sr]"
        assert ds.DerivationDescription == (
            "Super-resolution x2 (dicomnode tiny-mr-sr 0.0.1); AI-processed; guards: "
            "consistency, compare with source series")
        restored = kspace_truncate(ds.pixel_array.astype(np.float64), 2)
        assert np.median(np.abs(restored - source.pixel_array)) <= 1.0
    assert not dciodvfy_errors(derived[0]) - dciodvfy_errors(
        sources[pydicom.dcmread(derived[0]).SourceImageSequence[0].ReferencedSOPInstanceUID])


@pytest.mark.slow
@pytest.mark.parametrize("name, source", [
    ("mr-sr-x2", "mr_siemens_prisma_t1_fl2d_sag_35sl"),
    ("mr-denoise", "mr_siemens_prisma_t1_fl2d_sag_35sl"),
    ("xr-denoise", "cr_tibia_fuji_wg04_RG3"),
    ("ct-denoise", "ct_ge_hispeed_head_tilt_6sl"),
])
def test_each_shipped_model_enhances_its_dev_data(name: str, source: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped weights through `dicomnode enhance`: derived, labelled, dciodvfy-clean."""
    data = DATA / source
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted(data.glob("*.dcm"))[15:17] or sorted(data.glob("*.dcm")):
        shutil.copy(path, folder)
    out = tmp_path / "out"
    assert main(["enhance", str(folder), str(out), "--model", name, "--device", "cpu",
                 "--no-progress"]) == 0
    derived = sorted(out.rglob("*.dcm"))
    assert derived and len(derived) == len(list(folder.glob("*.dcm")))
    card = load_card(name)
    for path in derived:
        ds = pydicom.dcmread(path)
        original = next(p for p in folder.glob("*.dcm") if str(pydicom.dcmread(
            p, stop_before_pixels=True).SOPInstanceUID) ==
            ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
        source_ds = pydicom.dcmread(original)
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert f"dicomnode {name} {card.version}" in ds.DerivationDescription
        assert (ds.Rows, ds.Columns) == (card.scale * source_ds.Rows,
                                         card.scale * source_ds.Columns)
        if "PixelPaddingValue" in source_ds:  # the CT's -1500 outside its field of view
            padding = source_ds.pixel_array == source_ds.PixelPaddingValue
            assert padding.any()
            assert np.all(ds.pixel_array[padding] == source_ds.PixelPaddingValue)
        assert not dciodvfy_errors(path) - dciodvfy_errors(original)
