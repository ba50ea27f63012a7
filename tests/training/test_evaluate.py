"""``dicomnode-train evaluate`` runs a model through the node's engine: same pixels as enhance."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.cli import main as node_main
from dicomnode.pixels import modality_values, pixel_format, stored_values
from dicomnode.series import scan
from tests.conftest import DATA, MR_DIR
from training.data import load_series
from training.evaluate import load_model


def test_evaluate_and_enhance_give_the_same_pixels(tmp_path: Path) -> None:
    """One real MR series (5 slices: percentile statistics from all of them) through
    `dicomnode enhance` and through evaluate's path (``load_model(...).predict``): the derived
    files hold exactly the stored values of evaluate's output."""
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted(MR_DIR.glob("*.dcm"))[15:20]:
        shutil.copy(path, folder)
    out = tmp_path / "out"
    assert node_main(["enhance", str(folder), str(out), "--model", "mr-sr-x2", "--device",
                      "cpu", "--no-progress"]) == 0
    derived = {str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID): ds
               for ds in map(pydicom.dcmread, out.rglob("*.dcm"))}

    (series,) = scan(folder).series
    sources = [image.read() for image in series.images]
    (data,) = load_series([folder])
    node_inputs = np.stack([modality_values(ds, pixel_format(ds)) for ds in sources])
    assert np.array_equal(node_inputs, data.slices)  # both sides read the same values
    evaluated = load_model("mr-sr-x2").predict(data.slices)

    assert len(derived) == len(sources) == len(evaluated) == 5
    for source, output in zip(sources, evaluated, strict=True):
        pixels = derived[str(source.SOPInstanceUID)].pixel_array
        expected = stored_values(output, pixel_format(source))
        assert pixels.shape == (2 * source.Rows, 2 * source.Columns)
        assert np.array_equal(pixels, expected)


def _cards_validated_on_test_data() -> list[str]:
    """Shipped learned models whose card's ``[metrics]`` series all have a copy in tests/data."""
    from dicomnode.engine.cards import default_zoo_dir, list_cards

    names = []
    cards, _problems = list_cards(default_zoo_dir())
    for card in cards:
        folders = card.metrics.get("validation_data", []) if card.learned else []
        if folders and all((DATA / Path(f).name).is_dir() for f in folders):
            names.append(card.name)
    return names


@pytest.mark.slow
@pytest.mark.parametrize("name", _cards_validated_on_test_data())
def test_evaluate_reproduces_the_cards_metrics(name: str) -> None:
    """A card's [metrics] are what the node's engine gives today on the same series (an engine
    change that moves them fails here; mr-denoise's once drifted by 0.2-0.7 dB unnoticed)."""
    from dicomnode.engine.cards import load_card
    from training.data import evenly_spaced
    from training.evaluate import evaluate

    card = load_card(name)
    folders = [DATA / Path(f).name for f in card.metrics["validation_data"]]
    series = load_series(folders, card.modalities if len(card.modalities) == 1 else None)
    if card.metrics.get("max_slices"):
        series = [evenly_spaced(s, int(card.metrics["max_slices"])) for s in series]
    result = evaluate(load_model(name), series)
    levels = [k for k in card.metrics if isinstance(card.metrics[k], dict) and "model" in
              card.metrics[k]]
    assert levels
    for key in levels:
        level = key.rsplit("_", 1)[1]
        measured = result["levels"][str(float(level))]["mean"]["model"]
        stored = card.metrics[key]["model"]
        assert abs(measured["psnr"] - stored["psnr"]) < 0.005, (name, key, measured, stored)
        assert abs(measured["ssim"] - stored["ssim"]) < 0.0005, (name, key, measured, stored)


def test_panels_show_monochrome1_as_a_viewer_does(tmp_path: Path):
    """A MONOCHROME1 radiograph's high values display dark: its panel is drawn inverted, so a
    mostly high-valued image comes out mostly dark, and bright without the inversion."""
    import matplotlib.image

    from training.evaluate import write_panel

    image = np.ones((1, 64, 64))
    image[0, :, :6] = np.linspace(0.0, 1.0, 64)[:, None]  # a narrow ramp sets the window
    brightness = {}
    for inverted in (False, True):
        path = tmp_path / f"{inverted}.png"
        write_panel(path, image, image, "nl_means", image, image, inverted=inverted)
        pixels = matplotlib.image.imread(path)[..., :3]
        brightness[inverted] = float(pixels.mean())
    assert brightness[False] - brightness[True] > 0.2


def test_panel_crop_finds_the_structure_and_stays_inside_the_slice():
    """The crop of a panel sits where the reference has structure (an edge near the top right
    corner of an otherwise flat slice), clipped to the slice; a small slice is shown whole."""
    from training.evaluate import panel_crop

    image = np.full((256, 256), 500.0)
    image[20:60, 200:240] = 1000.0  # the only structure: a square near the top right corner
    rows, cols = panel_crop(image)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (128, 128)
    assert rows.start <= 20 and rows.stop >= 60 and cols.start <= 200 and cols.stop >= 240
    assert cols.stop <= 256
    small = np.ones((64, 96))
    assert panel_crop(small) == (slice(0, 64), slice(0, 96))
