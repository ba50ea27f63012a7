"""The per-region error check: a model worse than its baseline along an image edge is caught."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import CT_TILT_DIR
from training.data import load_series
from training.regions import EDGE_PX, pooled_rms, region_masks, squared_errors, worse_regions


def _phantom() -> np.ndarray:
    """Two slices: a bright disc (tissue) on a dark background with a faint floor."""
    rows, cols = np.mgrid[:96, :96]
    disc = ((rows - 48) ** 2 + (cols - 48) ** 2) < 30**2
    image = np.where(disc, 1000.0, 5.0)
    return np.stack([image, image])


def test_masks_split_tissue_background_and_edge_bands():
    reference = _phantom()
    masks = region_masks(reference)
    assert masks["tissue"][0, 48, 48] and not masks["tissue"][0, 2, 2]
    assert not np.any(masks["tissue"] & masks["background"])
    assert np.all(masks["tissue"] | masks["background"]) and masks["image"].all()
    right = masks["background_right"]
    assert right[:, :, -EDGE_PX:].any() and not right[:, :, :-EDGE_PX].any()
    top = masks["background_top"]
    assert top[:, :EDGE_PX].any() and not top[:, EDGE_PX:].any()
    # An edge band holds background only.
    assert not np.any(masks["background_left"] & masks["tissue"])


def test_stripes_along_one_edge_fail_the_check_where_the_whole_image_would_not():
    reference = _phantom()
    rng = np.random.default_rng(0)
    baseline = reference + rng.normal(0, 4.0, reference.shape)
    model = reference + rng.normal(0, 2.0, reference.shape)
    model[:, :, -6:] += 12.0 * np.sign(np.sin(np.arange(96)))[None, :, None]
    whole_baseline = np.sqrt(np.mean((baseline - reference) ** 2))
    whole_model = np.sqrt(np.mean((model - reference) ** 2))
    assert whole_model < whole_baseline  # better on the whole image ...
    rms = pooled_rms([squared_errors(reference, {"model": model, "base": baseline})])
    worse = worse_regions(rms, "base")
    assert [w["region"] for w in worse] == ["background_right"]  # ... worse at one edge
    assert worse[0]["model_rms"] > worse[0]["baseline_rms"] * 1.1
    assert worse_regions(rms, "base", margin=10.0) == []


def test_a_near_exact_region_fails_only_beyond_a_tenth_of_the_whole_image_error():
    reference = _phantom()
    rng = np.random.default_rng(1)
    baseline = reference + rng.normal(0, 4.0, reference.shape)
    baseline[:, :, :EDGE_PX] = reference[:, :, :EDGE_PX] + 0.1  # a blank border, almost exact
    slightly = baseline.copy()
    slightly[:, :, :EDGE_PX] = reference[:, :, :EDGE_PX] + 0.3  # 3x the baseline, 0.3 of 4
    clearly = baseline.copy()
    clearly[:, :, :EDGE_PX] = reference[:, :, :EDGE_PX] + 1.0
    rms = pooled_rms([squared_errors(reference, {"slightly": slightly, "clearly": clearly,
                                                 "base": baseline})])
    assert worse_regions(rms, "base", model="slightly") == []
    assert [w["region"] for w in worse_regions(rms, "base", model="clearly")] == [
        "background_left"]


def test_rms_is_pooled_over_pixels_of_all_series():
    reference = _phantom()
    small, large = reference + 1.0, reference + 3.0
    one = squared_errors(reference, {"model": small})
    two = squared_errors(reference, {"model": large})
    rms = pooled_rms([one, two])
    assert np.isclose(rms["tissue"]["model"], np.sqrt((1 + 9) / 2))
    assert pooled_rms([]) == {}


def test_an_exact_baseline_makes_any_model_error_worse():
    reference = _phantom()
    rms = pooled_rms([squared_errors(reference, {"model": reference + 1.0, "base": reference})])
    assert rms["image"]["base"] == 0.0
    worse = worse_regions(rms, "base")
    assert {w["region"] for w in worse} == set(region_masks(reference))
    assert all(w["excess"] is None for w in worse)


def test_declared_padding_is_left_out_and_does_not_move_the_tissue_threshold():
    """A CT's padding outside the reconstruction circle (declared -1500) is not image: the node
    restores it exactly. Without it, air is background and the head is tissue."""
    rows, cols = np.mgrid[:96, :96]
    radius = np.hypot(rows - 48, cols - 48)
    ct = np.where(radius < 46, -1000.0, -1500.0)  # air in the circle, padding outside
    ct[radius < 25] = 40.0  # the head
    ct = np.stack([ct, ct])
    masks = region_masks(ct, padding=(-1500.0, -1500.0))
    assert not masks["image"][:, 0, 0].any() and masks["image"][0, 48, 48]
    assert np.array_equal(masks["tissue"], ct == 40.0)
    assert np.array_equal(masks["background"], ct == -1000.0)
    noisy_padding = ct + np.where(ct == -1500.0, 30.0, 0.0)
    rms = pooled_rms([squared_errors(ct, {"model": noisy_padding}, (-1500.0, -1500.0))])
    assert rms["image"]["model"] == 0.0  # an error in the padding only counts nowhere
    assert pooled_rms([squared_errors(ct, {"model": noisy_padding})])["image"]["model"] > 0


def test_the_ct_series_declares_its_padding_in_hounsfield_units():
    series = load_series([CT_TILT_DIR])[0]
    assert series.padding == (-1500.0, -1500.0)
    assert (series.slices == -1500.0).mean() > 0.1


def test_every_method_sees_the_padding_filled_and_gives_it_back_exact():
    """evaluate() shows the model and the baselines the node's view: declared padding filled
    (the degradation's noise there included), then put back exactly (its value in the clean
    series, as the node restores the source's own)."""
    from training.evaluate import node_inputs, restore_padding
    from training.tasks import Task

    [series] = load_series([CT_TILT_DIR])
    series.slices = series.slices[:1]
    assert series.padding == (-1500.0, -1500.0)
    task = Task.from_config({"kind": "ct_low_dose", "eval": [0.25], "realisations": 2})
    inputs = task.degrade_series(series, 0.25, np.random.default_rng(0))
    reference = task.reference(series)
    shown, mask = node_inputs(inputs, reference, series.padding, "CT")
    assert mask is not None and np.array_equal(mask, reference == -1500.0)
    assert np.array_equal(shown[~mask], inputs[~mask])
    assert shown[mask].min() > -1200.0  # the image mirrored in, no -1500 step
    output = restore_padding(shown, reference, mask)
    assert np.all(output[mask] == -1500.0) and np.array_equal(output[~mask], shown[~mask])
    # nothing declared, or a smaller super-resolution input: shown as it is
    assert node_inputs(inputs, reference, None, "CT")[1] is None
    assert node_inputs(inputs, reference, series.padding, "CT", scale=2)[1] is None
    # another modality's declared padding (an MR's background 0) is restored, never filled
    shown, mask = node_inputs(inputs, reference, series.padding, "MR")
    assert shown is inputs and mask is not None


def test_a_baseline_exact_to_rounding_gets_no_percentage():
    """A blank border a baseline reproduces to rounding (1e-13) makes the ratio meaningless:
    the region still fails, with no excess (printed as "baseline exact"), not +1e30 %."""
    rms = {"image": {"model": 5.0, "base": 6.0},
           "background_right": {"model": 256.0, "base": 1e-13}}
    worse = worse_regions(rms, "base")
    assert [w["region"] for w in worse] == ["background_right"]
    assert worse[0]["excess"] is None
    rms["background_right"]["base"] = 100.0
    assert worse_regions(rms, "base")[0]["excess"] == pytest.approx(1.56)
