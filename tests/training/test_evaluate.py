"""``dicomnode-train evaluate`` runs a model through the node's engine: same pixels as enhance."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom

from dicomnode.cli import main as node_main
from dicomnode.pixels import modality_values, pixel_format, stored_values
from dicomnode.series import scan
from tests.conftest import MR_DIR
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
