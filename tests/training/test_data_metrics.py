"""Data loading, the patient-wise split, patches, tasks and the SPEC section 8 metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dicomnode.engine.degradations import kspace_truncate, zero_filled
from dicomnode.engine.normalise import NormalisationSpec
from tests.conftest import ENHANCED_MR_DIR, MR_DIR
from training.data import (
    SeriesData,
    inverted,
    load_series,
    random_crop,
    random_flip_rotate,
    split_by_patient,
)
from training.metrics import average, beats, foreground, psnr, series_metrics, ssim
from training.tasks import Task, TaskError, normalisation_card, read_normalisation


def test_enhanced_multi_frame_loads_as_slices_in_stack_order():
    """An Enhanced MR object (Siemens XA30: 96 frames, PixelSpacing only per frame) is one
    series of 96 slices, ordered along the stack's normal whatever the Pixel Data order."""
    import pydicom

    path = next(ENHANCED_MR_DIR.glob("*.dcm"))
    [series] = load_series([ENHANCED_MR_DIR])
    assert series.modality == "MR" and series.slices.shape == (96, 128, 128)
    assert series.pixel_spacing == pytest.approx(2.0, abs=1e-3)  # from the per-frame groups
    assert series.patient_id and series.photometric == "MONOCHROME2"
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.astype(np.float32)  # no rescale in this object: stored = modality
    first = ds.PerFrameFunctionalGroupsSequence[0]  # this export keeps even these per frame
    assert first.PixelValueTransformationSequence[0].RescaleSlope == 1
    assert first.PixelValueTransformationSequence[0].RescaleIntercept == 0
    normal = np.cross(*np.reshape(first.PlaneOrientationSequence[0].ImageOrientationPatient,
                                  (2, 3)))
    positions = [float(np.dot(normal, item.PlanePositionSequence[0].ImagePositionPatient))
                 for item in ds.PerFrameFunctionalGroupsSequence]
    order = np.argsort(positions)
    loaded_positions = sorted(positions)
    assert np.all(np.diff(loaded_positions) > 0)
    # every slice is one stored frame, and consecutive slices are neighbours in space
    matches = [int(np.flatnonzero([np.array_equal(s, f) for f in frames])[0])
               for s in series.slices]
    assert sorted(matches) == list(range(96))
    assert matches == list(order) or matches == list(order[::-1])


def test_multi_frame_that_is_no_regular_stack_is_skipped_with_its_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    import pydicom

    ds = pydicom.dcmread(next(ENHANCED_MR_DIR.glob("*.dcm")))
    frames = ds.PerFrameFunctionalGroupsSequence
    frames[5].PlanePositionSequence[0].ImagePositionPatient = list(
        frames[6].PlanePositionSequence[0].ImagePositionPatient)  # two frames in one place
    ds.save_as(tmp_path / "two_at_one_place.dcm")
    with caplog.at_level("INFO", logger="training.data"):
        assert load_series([tmp_path]) == []
    assert "not one regular stack" in caplog.text


def test_series_load_as_modality_values_grouped_by_patient(mr_patients: Path):
    series = load_series([mr_patients])
    assert sorted(s.patient_id for s in series) == ["TEST0", "TEST1", "TEST2"]
    assert all(s.slices.shape == (4, 64, 64) and s.slices.dtype == np.float32 for s in series)
    assert all(s.modality == "MR" and s.pixel_spacing == pytest.approx(1.015625) for s in series)
    assert load_series([mr_patients], modalities=["CT"]) == []


def test_split_puts_no_patient_on_both_sides(mr_patients: Path):
    series = load_series([mr_patients])
    for seed in range(5):
        train, val = split_by_patient(series, 0.34, seed)
        assert {s.patient_id for s in train}.isdisjoint({s.patient_id for s in val})
        assert len(val) == 1 and len(train) == 2
    # The choice depends on the seed, not on the order the folders were read in.
    a = split_by_patient(series, 0.34, 1)[1]
    b = split_by_patient(list(reversed(series)), 0.34, 1)[1]
    assert [s.patient_id for s in a] == [s.patient_id for s in b]
    train, val = split_by_patient(series, 0.5, 0, val_patients=["TEST2"])
    assert [s.patient_id for s in val] == ["TEST2"]
    with pytest.raises(ValueError, match="not in the data"):
        split_by_patient(series, 0.5, 0, val_patients=["NOBODY"])


def test_crops_and_flips_are_seeded_and_aligned():
    stack = np.arange(2 * 20 * 30, dtype=float).reshape(2, 20, 30)
    a, corner = random_crop(stack, 8, np.random.default_rng(0), multiple=4)
    b, _ = random_crop(stack, 8, np.random.default_rng(0), multiple=4)
    np.testing.assert_array_equal(a, b)
    assert corner[0] % 4 == 0 and corner[1] % 4 == 0 and a.shape == (2, 8, 8)
    small, _ = random_crop(np.ones((1, 5, 5)), 8, np.random.default_rng(0))
    assert small.shape == (1, 8, 8)
    x, y = random_flip_rotate([stack, stack * 2], np.random.default_rng(3))
    np.testing.assert_array_equal(x * 2, y)


def test_rician_pairs_and_super_resolution_pairs(mr_patients: Path):
    series = load_series([mr_patients])[0]
    task = Task.from_config({"kind": "rician", "fraction": [0.03, 0.03]})
    x, y = task.train_pair(series, 1, 0.03, np.random.default_rng(0), 32, channels=3)
    assert x.shape == (3, 32, 32) and y.shape == (1, 32, 32)
    sr = Task.from_config({"kind": "kspace", "scale": 2})
    low, high = sr.train_pair(series, 0, 2.0, np.random.default_rng(0), 32)
    assert low.shape == (1, 16, 16) and high.shape == (1, 32, 32)
    full = sr.degrade_series(series, 2.0, np.random.default_rng(0))
    np.testing.assert_allclose(full, kspace_truncate(series.slices.astype(float), 2))
    assert set(sr.baselines(full)) == {"zero_filled", "bicubic"}
    np.testing.assert_allclose(sr.baselines(full)["zero_filled"], zero_filled(full, 2))
    assert set(task.baselines(series.slices[:1])) == {"nl_means"}
    with pytest.raises(TaskError, match=r"degradation\.kind"):
        Task.from_config({"kind": "blur"})
    with pytest.raises(TaskError, match=r"degradation\.scale"):
        Task.from_config({"kind": "kspace", "scale": 5})
    back = Task.from_card(task.card())
    assert back.kind == "rician" and back.eval_levels == (0.03, 0.07)


@pytest.mark.parametrize("context", [0, 8])
def test_kspace_pairs_are_on_the_whole_slice_grid(context: int):
    """Flips and crops come before the truncation: an even-size centred k-space window is not
    symmetric, so flipping a truncated pair would move its sampling grid by one pixel, and a
    network trained on it would learn a shift. The zero-filled input must sit on the target."""
    series = load_series([MR_DIR])[0]
    task = Task.from_config({"kind": "kspace", "scale": 2})
    rng = np.random.default_rng(7)
    errors: dict[tuple[int, int], list[float]] = {(0, 0): [], (1, 0): [], (0, 1): [],
                                                  (-1, 0): [], (0, -1): []}
    rim = 2 * context + 4
    for _ in range(12):
        x, y = task.train_pair(series, int(rng.integers(10, 25)), 2.0, rng, 64, 1, context)
        assert x.shape[-1] * 2 == y.shape[-1] == 64 + 4 * context
        base = zero_filled(x, 2)
        for shift, found in errors.items():
            moved = np.roll(base, shift, axis=(1, 2))
            found.append(float(np.mean((moved - y)[:, rim:-rim, rim:-rim] ** 2)))
    aligned = np.mean(errors.pop((0, 0)))
    assert all(aligned < 0.5 * np.mean(e) for e in errors.values())


def test_whole_slice_kspace_pairs_are_what_the_node_gives_the_network():
    series = load_series([MR_DIR])[0]
    task = Task.from_config({"kind": "kspace", "scale": 2})
    x, y = task.train_pair(series, 12, 2.0, np.random.default_rng(1), 64, whole=True)
    assert x.shape == (1, 128, 128) and y.shape == (1, 256, 256)
    np.testing.assert_allclose(x, kspace_truncate(y, 2))  # the whole slice's own k-space
    turned = {task.train_pair(series, 12, 2.0, np.random.default_rng(k), 64,
                              whole=True)[1].tobytes() for k in range(12)}
    assert len(turned) > 1  # flipped and turned, not always the same view
    with pytest.raises(TaskError, match="whole_slices"):
        Task.from_config({"kind": "block_mean", "scale": 2}).train_pair(
            series, 0, 2.0, np.random.default_rng(0), 32, whole=True)


def test_an_inverted_radiograph_gets_its_noise_in_the_same_places():
    """data.invert: MONOCHROME1 <-> MONOCHROME2 with the values inverted is the same exposure,
    so the same random draws give exactly the inverted noisy image: a blank (read-noise-only)
    border stays read-noise-only, now at the other end of the range."""
    ramp = np.tile(np.linspace(100.0, 1023.0, 48), (48, 1))
    ramp[:, :8] = 0.0  # a reader's blank border: no signal in MONOCHROME1
    series = SeriesData("P1", "1.2.3", "CR", Path("."), ramp[None].astype(np.float32),
                        photometric="MONOCHROME1")
    flipped = inverted(series)
    assert flipped.photometric == "MONOCHROME2" and flipped.patient_id == "P1"
    assert flipped.key != series.key
    np.testing.assert_allclose(flipped.slices, 1023.0 - series.slices)
    task = Task.from_config({"kind": "poisson_gaussian", "photons": [300.0, 300.0],
                             "read_noise": 0.002})
    noisy = task.degrade_series(series, 300.0, np.random.default_rng(5))
    noisy_flipped = task.degrade_series(flipped, 300.0, np.random.default_rng(5))
    np.testing.assert_allclose(noisy_flipped, 1023.0 - noisy, atol=1e-6)
    border = noisy[..., :8] - series.slices[..., :8]
    assert 0.5 < border.std() < 4.0  # read noise only: 0.002 of the range
    with pytest.raises(ValueError, match="RGB"):
        inverted(SeriesData("P1", "1.2.3", "CR", Path("."), ramp[None], photometric="RGB"))


def test_normalisation_is_the_cards_schema():
    series = np.linspace(0, 1000, 4 * 10 * 10).reshape(4, 10, 10)
    spec = read_normalisation({"method": "percentile", "low": 0, "high": 100})
    assert spec == NormalisationSpec("percentile", 0.0, 100.0)
    normaliser = spec.for_series(list(series))  # the input series' own percentiles
    assert (normaliser.low, normaliser.high) == (0.0, 1000.0)
    # tables written before the card's schema read as the same spec
    assert read_normalisation({"method": "linear", "scale": 1000}) == NormalisationSpec(
        "hu", 0.0, 1000.0)
    assert read_normalisation({"method": "percentile", "low_percentile": 1,
                               "high_percentile": 99}) == NormalisationSpec("percentile", 1, 99)
    assert normalisation_card(read_normalisation({"method": "hu", "low": -1024,
                                                  "high": 3071}))["high"] == 3071
    with pytest.raises(TaskError, match=r"normalisation\.bogus"):
        read_normalisation({"bogus": 1})
    with pytest.raises(TaskError, match=r"normalisation\.clip"):
        read_normalisation({"method": "hu", "low": 0, "high": 1, "clip": True})


def test_metrics_match_scikit_image(mr_patients: Path):
    ref = load_series([mr_patients])[0].slices.astype(np.float64)
    noisy = ref + np.random.default_rng(0).normal(0, 20, ref.shape)
    span = ref.max() - ref.min()
    assert psnr(ref, noisy) == pytest.approx(peak_signal_noise_ratio(ref, noisy, data_range=span))
    expected = np.mean([structural_similarity(r, n, data_range=span, gaussian_weights=True,
                                              sigma=1.5, use_sample_covariance=False)
                        for r, n in zip(ref, noisy, strict=True)])
    assert ssim(ref, noisy) == pytest.approx(expected)
    assert psnr(ref, ref) == float("inf")
    scores = series_metrics(ref, {"a": noisy, "b": ref + 1})
    mean = average([scores, scores])
    assert mean["a"]["psnr"] == pytest.approx(scores["a"]["psnr"])
    assert beats(mean["b"], mean["a"]) and not beats(mean["a"], mean["b"])
    assert not beats({"psnr": 40, "ssim": 0.5}, {"psnr": 30, "ssim": 0.6})  # both must be higher
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(ref, ref[:1])
    # Foreground PSNR ignores the background: an output wrong only in the air is perfect there.
    mask = foreground(ref)
    assert 0.2 < mask.mean() < 1.0
    wrong_air = np.where(mask, ref, ref + 200)
    scores = series_metrics(ref, {"x": wrong_air})["x"]
    assert scores["psnr_foreground"] == float("inf") and scores["psnr"] < 40


def test_mixed_ct_noise_has_the_simulated_spread_and_is_fresh_each_pair():
    """Mixing two cached realisations and rescaling by dose must match a direct simulation."""
    from tests.conftest import CT_TILT_DIR

    series = load_series([CT_TILT_DIR])[0]
    square = series.slices[:1, :, :min(series.slices.shape[1:])].astype(np.float64)
    series = type(series)(series.patient_id, series.series_uid, "CT", series.folder,
                          square.astype(np.float32), series.pixel_spacing)
    task = Task.from_config({"kind": "ct_low_dose", "train_doses": [0.05, 0.5],
                             "realisations": 3, "mix": True})
    assert task.mix_reference_dose == pytest.approx(np.sqrt(0.05 * 0.5))
    doses = [task.sample_level(np.random.default_rng(s)) for s in range(50)]
    assert 0.05 <= min(doses) < 0.1 and 0.3 < max(doses) <= 0.5  # continuous, whole range
    direct = task.degrade_series(series, 0.1, np.random.default_rng(7))[0] - square[0]
    mixed = [task._ct_train_noise(series, 0, 0.1, np.random.default_rng(s)) for s in (1, 2)]
    inside = square[0] > -500
    for noise in mixed:
        assert noise[inside].std() == pytest.approx(direct[inside].std(), rel=0.08)
    assert not np.allclose(mixed[0], mixed[1])  # a fresh combination for each pair
    x, y = task.train_pair(series, 0, 0.1, np.random.default_rng(3), 48)
    assert x.shape == y.shape == (1, 48, 48) and not np.allclose(x, y)
    assert Task.from_card(task.card()).mix  # the card says how it was trained
    with pytest.raises(TaskError, match=r"degradation\.realisations"):
        Task.from_config({"kind": "ct_low_dose", "realisations": 1})


def test_random_padding_moves_only_the_padding():
    from training.tasks import PADDING_RANGE_HU, _random_padding

    image = np.full((2, 8, 8), -2048.0)
    image[:, 2:6, 2:6] = 40.0
    image[1, 3, 3] = -1000.0  # air inside the circle is not padding
    out = _random_padding(image, np.random.default_rng(0))
    assert np.array_equal(out[:, 2:6, 2:6], image[:, 2:6, 2:6])
    pad = out[0, 0, 0]
    assert PADDING_RANGE_HU[0] <= pad <= PADDING_RANGE_HU[1] and pad != -2048.0
    assert np.all(out[image == -2048.0] == pad)
    unpadded = np.full((1, 20, 20), 10.0)
    unpadded[0, 0, 0] = -1500.0  # one dark pixel is not a padding region
    assert np.array_equal(_random_padding(unpadded, np.random.default_rng(0)), unpadded)


def test_padding_edge_weights_mark_only_the_ring_next_to_the_padding():
    from training.tasks import padding_edge_weights

    target = np.full((1, 40, 40), -2000.0)
    yy, xx = np.mgrid[0:40, 0:40]
    inside = (yy - 19.5) ** 2 + (xx - 19.5) ** 2 < 15.0**2
    target[0][inside] = -1000.0 + 30.0 * np.sin(xx[inside])  # air with structure, not flat
    weights = padding_edge_weights(target, 2, 9.0)
    assert weights.shape == target.shape and weights.dtype == np.float32
    ring = weights[0] == 10.0
    assert ring.any() and np.all(inside[ring])  # only image pixels, never the padding itself
    assert np.all(weights[0][~inside] == 1.0)
    assert weights[0, 20, 20] == 1.0  # the centre is far from the padding
    # every ring pixel is within 2 px of a padding pixel
    from scipy import ndimage
    assert ndimage.distance_transform_edt(inside)[ring].max() <= 2.0
    no_padding = np.full((1, 16, 16), 20.0)
    assert np.all(padding_edge_weights(no_padding, 2, 9.0) == 1.0)
