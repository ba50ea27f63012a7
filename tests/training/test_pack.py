"""Packed training data (``training.pack``) and the CT noise prefill (``training.prefill``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CT_TILT_DIR, MR_DIR
from training.cli import main as train_cli
from training.data import load_series
from training.pack import PackError, pack, read_pack
from training.prefill import prefill_ct_noise
from training.tasks import Task


def _same(a, b) -> None:
    for name in ("patient_id", "series_uid", "modality", "pixel_spacing", "photometric",
                 "description", "padding"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.slices.dtype == b.slices.dtype == np.float32
    np.testing.assert_array_equal(a.slices, b.slices)


def test_packed_series_read_back_exactly_as_from_dicom(tmp_path: Path) -> None:
    """CT (integer HU with padding) and MR: the pack is lossless, metadata included."""
    ct = load_series([CT_TILT_DIR], ["CT"])
    mr = load_series([MR_DIR], ["MR"])
    assert ct and mr and ct[0].padding is not None
    summary = pack(ct, mr, tmp_path / "packed", max_mib=50, about={"name": "t"})
    assert [e["file"] for e in summary["train"]] == ["train/000.dnpack.npz"]
    assert summary["val"][0]["file"].startswith(f"val/{MR_DIR.name}/")
    # integer CT: row differences compress far below raw float32
    raw_bytes = ct[0].slices.size * 4
    assert summary["train"][0]["bytes"] < raw_bytes / 2
    (back_ct,) = load_series([tmp_path / "packed" / "train"], ["CT"])
    (back_mr,) = load_series([tmp_path / "packed" / "val" / MR_DIR.name], ["MR"])
    _same(back_ct, ct[0])
    _same(back_mr, mr[0])
    assert json.loads((tmp_path / "packed" / "PACK.json").read_text())["name"] == "t"


def test_non_integer_values_are_packed_as_float(tmp_path: Path) -> None:
    (mr,) = load_series([MR_DIR], ["MR"])
    scaled = replace(mr, slices=(mr.slices[:2] * 0.37).astype(np.float32), _percentiles={})
    pack([scaled], [], tmp_path, max_mib=50, about={})
    meta, slices = read_pack(tmp_path / "train" / "000.dnpack.npz")
    assert meta["coding"] == "float32"
    np.testing.assert_array_equal(slices, scaled.slices)


def test_pack_over_its_limit_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    ct = load_series([CT_TILT_DIR], ["CT"])
    with pytest.raises(PackError, match="slice_step"):
        pack(ct, [], tmp_path, max_mib=0.01, about={})


def test_a_corrupt_pack_is_skipped_with_its_reason(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "000.dnpack.npz").write_bytes(b"not a pack")
    caplog.set_level("INFO")
    assert load_series([tmp_path]) == []
    assert "not a readable dicomnode pack" in caplog.text


def test_pack_command_packs_a_config(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'''
name = "t"
version = "0.0.1"
modalities = ["CT"]
[data]
train = ["{CT_TILT_DIR}"]
val = ["{MR_DIR}"]
licences = ["test"]
[degradation]
kind = "ct_low_dose"
[architecture]
name = "dncnn"
''')
    out = tmp_path / "packed"
    # the MR validation folder has no CT: the pack has no validation series
    assert train_cli(["pack", str(config), str(out), "--slice-step", "2"]) == 0
    summary = json.loads((out / "PACK.json").read_text())
    assert summary["slice_step"] == 2 and summary["licences"] == ["test"]
    (series,) = load_series([out / "train"])
    (original,) = load_series([CT_TILT_DIR], ["CT"])
    np.testing.assert_array_equal(series.slices, original.slices[::2])
    assert train_cli(["pack", str(config), str(out), "--max-mib", "0.01"]) == 1


def test_prefilled_ct_noise_is_what_training_would_simulate(tmp_path: Path) -> None:
    """Two processes fill the cache; the lazy path then reads exactly what it would compute."""
    (ct,) = load_series([CT_TILT_DIR], ["CT"])
    small = replace(ct, slices=ct.slices[:3, 192:320, 192:320].copy(), _percentiles={})
    table = {"kind": "ct_low_dose", "train_doses": [0.1, 0.5], "realisations": 2, "mix": True}
    task = Task.from_config(table, cache_dir=tmp_path / "cache")
    assert task.ct_noise_keys() == [(task.mix_reference_dose, 0), (task.mix_reference_dose, 1)]
    assert prefill_ct_noise(task, [small], workers=2) == 6
    assert len(list((tmp_path / "cache").glob("ct_noise_*.npy"))) == 6
    assert all(task.ct_noise_cached(small, i, d, r) for i in range(3)
               for d, r in task.ct_noise_keys())
    lazy = Task.from_config(table, cache_dir=None)  # no cache: simulates now
    for index in range(3):
        for dose, realisation in task.ct_noise_keys():
            np.testing.assert_array_equal(task.ct_noise(small, index, dose, realisation),
                                          lazy.ct_noise(small, index, dose, realisation))
    # the two realisations differ (independent seeds), and a second prefill finds all cached
    assert not np.array_equal(task.ct_noise(small, 0, *task.ct_noise_keys()[0]),
                              task.ct_noise(small, 0, *task.ct_noise_keys()[1]))
    assert prefill_ct_noise(task, [small], workers=2) == 6
