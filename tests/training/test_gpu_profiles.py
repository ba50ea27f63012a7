"""The GPU profiles (``training/configs/*-gpu.toml``) run, here on the CPU, from packed data.

They cannot be timed here (no GPU), but everything else of theirs is checked: the config
parses, the shipped model it starts from matches its architecture, it trains from packs
(CT: with the noise prefilled by worker processes) and its run exports.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.conftest import CT_TILT_DIR, DATA, ENHANCED_MR_DIR, MR_DIR
from training.config import REPO_ROOT, load_config
from training.data import evenly_spaced, load_series
from training.export import export
from training.pack import pack
from training.train import train

PROFILES = sorted((REPO_ROOT / "training" / "configs").glob("*-gpu.toml"))


def test_every_shipped_model_that_training_improves_has_a_profile() -> None:
    assert {p.name for p in PROFILES} == {"ct-denoise-gpu.toml", "mr-denoise-gpu.toml",
                                          "mr-sr-x2-gpu.toml"}


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_profile_trains_from_packs_and_exports(profile: Path, tmp_path: Path) -> None:
    config = load_config(profile)
    assert config.train["device"] == "auto"  # the GPU where there is one
    assert all(str(f).startswith(str(REPO_ROOT / "gpu_data")) for f in
               config.folders("train") + config.folders("val"))
    ct = config.modalities == ("CT",)
    source, other = ((CT_TILT_DIR, DATA / "ct_nema_enhanced_ct_CT0012_2fr") if ct
                     else (MR_DIR, ENHANCED_MR_DIR))  # validation: another patient
    count = 1 if ct else 2  # a CT slice's noise simulation costs ~10 s
    series = [evenly_spaced(s, count) for s in load_series([source], config.modalities)]
    val = [evenly_spaced(s, 1) for s in load_series([other], config.modalities)]
    pack(series, val, tmp_path / "packed", max_mib=50, about={})
    val_folder = tmp_path / "packed" / "val" / other.name
    assert val_folder.is_dir()
    small = dataclasses.replace(
        config,
        data={**config.data, "train": [str(tmp_path / "packed" / "train")],
              "val": [str(val_folder)], "batch_size": 2, "val_max_slices": 1,
              "patch_size": min(int(config.data["patch_size"]), 64)},
        train={**config.train, "iterations": 2, "time_limit_minutes": 0.0,
               "device": "cpu", "out_dir": str(tmp_path / "run"), "val_every": 100000,
               "checkpoint_every": 2,
               "prefill_workers": min(2, int(config.train["prefill_workers"]))},
        schedule={**config.schedule, "follow_time_limit": False},
    )
    run = train(small, progress=False)
    if config.train["prefill_workers"]:
        assert len(list((run / "cache").glob("ct_noise_*.npy"))) == 2  # 1 slice x realisations
    folder = export(run, config.name, tmp_path / "models", None, config.version)
    assert (folder / "model.toml").is_file()
