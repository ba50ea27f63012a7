"""Training (resume, GAN losses, DDP), evaluation and export, on a few real slices."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dicomnode.engine.cards import load_card, verify_weights
from dicomnode.errors import ConfigError
from training import cli
from training.checkpoint import CHECKPOINT, EVAL, HISTORY, ZOO_PREFIX, make_setup
from training.config import load_config, parse_config
from training.export import dumps_toml, export
from training.train import lr_factor, train


def _config(data: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "tiny-denoise", "modalities": ["MR"], "seed": 5,
        "description": "test model",
        "data": {"train": [str(data)], "val_patients": ["TEST2"], "patch_size": 32,
                 "batch_size": 2, "val_max_slices": 2, "licences": ["BSD-2-Clause (test)"]},
        "degradation": {"kind": "rician", "fraction": [0.02, 0.08], "eval": [0.05]},
        "normalisation": {"method": "percentile"},
        "architecture": {"name": "dncnn", "depth": 3, "num_features": 8},
        "loss": {"l1": 1.0, "ssim": 0.1},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "schedule": {"name": "cosine", "warmup": 1},
        "train": {"iterations": 4, "val_every": 2, "checkpoint_every": 2, "log_every": 1,
                  "out_dir": str(out)},
    }
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_run(mr_patients: Path, tmp_path: Path):
    whole = train(parse_config(_config(mr_patients, tmp_path / "a")), progress=False)
    part = train(parse_config(_config(mr_patients, tmp_path / "b")), progress=False,
                 stop_after=2)
    assert json.loads((part / HISTORY).read_text())["iteration"] == [1, 2]
    train(parse_config(_config(mr_patients, tmp_path / "b")), resume=True, progress=False)
    a = json.loads((whole / HISTORY).read_text())
    b = json.loads((part / HISTORY).read_text())
    assert b["iteration"] == [1, 2, 3, 4]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)  # same next-step losses
    wa, wb = load_file(str(whole / CHECKPOINT)), load_file(str(part / CHECKPOINT))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert (whole / "curves.png").read_bytes()[:4] == b"\x89PNG"
    result = json.loads((whole / EVAL).read_text())
    assert set(result["levels"]["0.05"]["mean"]) == {"model", "nl_means", "input"}
    assert result["series"] == 1  # only TEST2, the validation patient
    assert list((whole / "panels").glob("*.png"))


def test_export_round_trip_and_evaluate_reproduces_the_card(mr_patients: Path, tmp_path: Path,
                                                            capsys, monkeypatch):
    run = train(parse_config(_config(mr_patients, tmp_path / "run")), progress=False)
    models = tmp_path / "models"
    assert cli.main(["export", str(run), "--name", "tiny-denoise", "--models-dir",
                     str(models)]) == 0
    card = load_card("tiny-denoise", models)
    assert card.learned and card.task == "denoise" and card.scale == 1
    assert card.modalities == ("MR",) and card.architecture == "dncnn"
    assert card.parameters == {"depth": 3, "num_features": 8}
    assert verify_weights(card).name == "weights.safetensors"
    assert card.guards == {"intensity": True}
    assert card.normalisation["method"] == "percentile"
    assert card.degradation["kind"] == "rician"
    assert card.training["licences"] == ["BSD-2-Clause (test)"]
    level = card.metrics["sigma_fraction_0.05"]
    assert set(level) >= {"model", "nl_means", "beats", "gain_psnr_db", "worse_regions"}
    assert isinstance(card.metrics["regions_ok"], bool)
    assert card.metrics["regions_ok"] == (level["worse_regions"] == [])
    rms = level["region_rms"]  # the model against the best baseline, region by region
    assert rms["regions"][:3] == ["image", "tissue", "background"]
    assert len(rms["model"]) == len(rms["nl_means"]) == len(rms["regions"]) == 7

    out = tmp_path / "eval.json"
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", "tiny-denoise", "--models-dir", str(models),
                     "--data", str(mr_patients / "patient2"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    mean = result["levels"]["0.05"]["mean"]
    assert set(mean) == {"model", "nl_means", "input"}
    assert mean["model"]["psnr"] == pytest.approx(level["model"]["psnr"], abs=1e-3)
    assert mean["nl_means"]["ssim"] == pytest.approx(level["nl_means"]["ssim"], abs=1e-4)
    block = result["levels"]["0.05"]
    assert block["best_baseline"] == "nl_means"
    assert block["region_rms"]["image"]["model"] == pytest.approx(rms["model"][0], abs=1e-3)
    assert set(block["per_series"][0]["region_rms"]) == set(rms["regions"])
    assert list((tmp_path / "eval_panels").glob("*.png"))
    assert "nl_means" in capsys.readouterr().out
    # A checkpoint evaluates the same way, without a card.
    assert cli.main(["evaluate", "--model", str(run), "--data", str(mr_patients / "patient2"),
                     "--panels", str(tmp_path / "p2")]) == 0
    # --update-card rewrites [metrics] only: same weights, same sha256, numbers of this run.
    sha = card.weights_sha256
    assert cli.main(["evaluate", "--model", "tiny-denoise", "--models-dir", str(models),
                     "--data", str(mr_patients / "patient2"), "--json", str(out),
                     "--update-card"]) == 0
    updated = load_card("tiny-denoise", models)
    assert updated.weights_sha256 == sha and updated.parameters == card.parameters
    assert updated.metrics["sigma_fraction_0.05"]["model"]["psnr"] == pytest.approx(
        json.loads(out.read_text())["levels"]["0.05"]["mean"]["model"]["psnr"], abs=1e-3)
    empty = tmp_path / "cwd"
    empty.mkdir()
    monkeypatch.chdir(empty)  # panels default to ./eval_panels: refused before evaluating
    assert cli.main(["evaluate", "--model", str(run), "--data", str(mr_patients / "patient2"),
                     "--update-card"]) == 1
    assert list(empty.iterdir()) == []
    # --no-guards scores the network alone, says so, and is never written to a card.
    assert json.loads(out.read_text())["guards"] == ["intensity"]
    bare = tmp_path / "bare.json"
    assert cli.main(["evaluate", "--model", "tiny-denoise", "--models-dir", str(models),
                     "--data", str(mr_patients / "patient2"), "--json", str(bare),
                     "--no-guards"]) == 0
    assert json.loads(bare.read_text())["guards"] == []
    assert "guards: none" in capsys.readouterr().out
    before = (models / "tiny-denoise" / "model.toml").read_text()
    assert cli.main(["evaluate", "--model", "tiny-denoise", "--models-dir", str(models),
                     "--data", str(mr_patients / "patient2"), "--no-guards",
                     "--update-card"]) == 1
    assert (models / "tiny-denoise" / "model.toml").read_text() == before
    # A changed weights file is refused.
    weights = models / "tiny-denoise" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    assert cli.main(["evaluate", "--model", "tiny-denoise", "--models-dir", str(models),
                     "--data", str(mr_patients)]) == 1


@pytest.mark.parametrize("family", ["srgan", "pix2pix"])
def test_gan_families_take_a_step(mr_patients: Path, tmp_path: Path, family: str):
    if family == "srgan":
        extra = {"architecture": {"name": "srresnet", "num_blocks": 1, "num_features": 8},
                 "discriminator": {"name": "srgan_discriminator", "base_channels": 4,
                                   "hidden": 16},
                 "loss": {"adversarial": 0.01, "adversarial_type": "relativistic"}}
    else:
        extra = {"architecture": {"name": "unet_pix2pix", "num_downs": 3, "base_channels": 4,
                                  "final_activation": "none"},
                 "discriminator": {"name": "patchgan", "base_channels": 4, "n_layers": 1},
                 "loss": {"adversarial": 0.01, "adversarial_type": "bce"}}
    raw = _config(mr_patients, tmp_path / family, **extra)
    raw["architecture"] = extra["architecture"]
    raw["degradation"] = {"kind": "block_mean" if family == "pix2pix" else "kspace", "scale": 2}
    raw["train"]["iterations"] = 2
    raw["data"]["val_max_slices"] = 1
    run = train(parse_config(raw), progress=False)
    assert (run / "discriminator.safetensors").is_file()
    history = json.loads((run / HISTORY).read_text())
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    result = json.loads((run / EVAL).read_text())
    level = next(iter(result["levels"].values()))
    expected = {"model", "bicubic"} | ({"zero_filled"} if family == "srgan" else set())
    assert set(level["mean"]) == expected


def test_perceptual_loss_only_from_a_local_file(mr_patients: Path, tmp_path: Path):
    weights = tmp_path / "vgg.safetensors"
    gen = torch.Generator().manual_seed(0)
    save_file({"features.0.weight": torch.randn(64, 3, 3, 3, generator=gen) * 0.1,
               "features.0.bias": torch.zeros(64),
               "features.2.weight": torch.randn(64, 64, 3, 3, generator=gen) * 0.01,
               "features.2.bias": torch.zeros(64)}, str(weights))
    raw = _config(mr_patients, tmp_path / "p", loss={"perceptual": 0.1,
                                                      "perceptual_weights": str(weights),
                                                      "perceptual_layer": 2})
    raw["train"]["iterations"] = 1
    raw["data"]["val_patients"] = []
    raw["data"]["val_fraction"] = 0.0
    run = train(parse_config(raw), progress=False)
    assert json.loads((run / HISTORY).read_text())["iteration"] == [1]
    raw["loss"]["perceptual_weights"] = str(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="local safetensors"):
        train(parse_config(raw), progress=False)


def test_config_errors_name_their_keys(tmp_path: Path):
    raw = _config(tmp_path, tmp_path / "x")
    raw["optimizer"]["name"] = "sgd"
    raw["data"]["slices"] = 2
    raw["loss"]["adversarial"] = 1.0
    raw["bogus"] = 1
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    text = str(info.value)
    for fragment in ("optimizer.name", "data.slices", "[discriminator]", "bogus: unknown key"):
        assert fragment in text
    raw = _config(tmp_path, tmp_path / "x")
    raw["data"].update(whole_slices=True, context=4)
    with pytest.raises(ConfigError, match="whole_slices"):
        parse_config(raw)
    raw = _config(tmp_path, tmp_path / "x")  # rician: inverting an MR is not the same exposure
    raw["data"]["invert"] = True
    with pytest.raises(ConfigError, match="invert = true applies to radiograph noise"):
        parse_config(raw)
    raw = _config(tmp_path, tmp_path / "x")  # the padding ring is a CT notion
    raw["loss"]["padding_edge"] = 5.0
    with pytest.raises(ConfigError, match="padding_edge > 0 applies to CT"):
        parse_config(raw)
    raw["loss"].update(padding_edge=-1.0, padding_edge_px=0)
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert "loss.padding_edge = -1.0" in str(info.value)
    assert "loss.padding_edge_px = 0" in str(info.value)
    path = tmp_path / "bad.toml"
    path.write_text("name = 'x'\n[train]\nspeed = 3\n")
    assert cli.main(["train", str(path)]) == 1


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "training" / "configs")
                                        .glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_config_parses(path: Path):
    """A config in training/configs is a recipe someone will run: it must at least be valid, and
    a fine-tuning stage must start from the run folder another config writes, or from a model
    shipped in ``models/`` whose network its architecture builds."""
    config = load_config(path)
    assert config.data["train"] and config.train["out_dir"]
    init = config.train.get("init_from")
    if init and init.startswith(ZOO_PREFIX):
        card = load_card(init[len(ZOO_PREFIX):], Path(__file__).parents[2] / "models")
        assert card.architecture == config.architecture["name"], path.name
        assert dict(card.parameters) == make_setup(config).architecture_params(), path.name
    elif init:
        others = {load_config(p).train["out_dir"] for p in path.parent.glob("*.toml") if p != path}
        assert init in others, f"{path.name}: init_from {init!r} is no other config's out_dir"


def test_schedules():
    cosine = {"name": "cosine", "warmup": 10, "min_lr_ratio": 0.0, "step_size": 1, "gamma": 1}
    assert lr_factor(cosine, 0, 100) == pytest.approx(0.1)
    assert lr_factor(cosine, 10, 100) == pytest.approx(1.0)
    assert lr_factor(cosine, 100, 100) == pytest.approx(0.0)
    step = {"name": "step", "warmup": 0, "step_size": 10, "gamma": 0.5, "min_lr_ratio": 0}
    assert lr_factor(step, 25, 100) == pytest.approx(0.25)
    # follow_time_limit: the clock's share of the limit drives the cosine when it is ahead.
    assert lr_factor(cosine, 55, 100, time_fraction=1.0) == pytest.approx(0.0)
    assert lr_factor(cosine, 10, 100, time_fraction=0.5) == pytest.approx(0.5)
    assert lr_factor(cosine, 55, 100, time_fraction=0.1) == pytest.approx(0.5)  # iterations ahead


def test_a_time_limited_run_can_end_annealed(mr_patients: Path, tmp_path: Path):
    """schedule.follow_time_limit: a run stopped by its time limit long before its iteration
    count still ends near the cosine's floor; without it, it stops near the peak."""
    ends = {}
    for follow in (True, False):
        raw = _config(mr_patients, tmp_path / f"run{follow}",
                      train={"iterations": 100000, "val_every": 100000, "log_every": 1,
                             "time_limit_minutes": 0.05})
        raw["schedule"] = {"name": "cosine", "min_lr_ratio": 0.0, "follow_time_limit": follow}
        run = train(parse_config(raw), progress=False)
        history = json.loads((run / HISTORY).read_text())
        assert history["iteration"][-1] < 100000
        ends[follow] = history["lr"][-1] / raw["optimizer"]["lr"]
    assert ends[True] < 0.1 and ends[False] > 0.99
    raw["schedule"] = {"name": "step", "follow_time_limit": True}
    with pytest.raises(ConfigError, match="follow_time_limit"):
        parse_config(raw)


def test_toml_writer_round_trips():
    import tomllib

    data = {"a": 1, "b": "x\"y", "c": [1.5, 2], "t": {"k": True, "n": {"0.5": {"p": 1.0}}}}
    assert tomllib.loads(dumps_toml(data)) == data
    long = {"m": {"short": {"psnr": 1.0}, "rms": {"regions": ["background_top"] * 8,
                                                 "model": [1.25] * 8}}}
    text = dumps_toml(long)
    assert tomllib.loads(text) == long
    assert "short = { psnr = 1.0 }" in text and "[m.rms]" in text  # too long to stay inline
    assert max(len(line) for line in text.splitlines()) < 200


def _ddp_worker(rank: int, world: int, raw: dict[str, Any], store: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "DICOMNODE_DIST_INIT": f"file://{store}"})
    torch.set_num_threads(1)
    train(parse_config(raw), progress=False)
    import torch.distributed as dist

    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_with_gloo(mr_patients: Path, tmp_path: Path):
    raw = _config(mr_patients, tmp_path / "ddp")
    raw["train"]["iterations"] = 2
    torch.multiprocessing.spawn(_ddp_worker, args=(2, raw, str(tmp_path / "store")), nprocs=2,
                                join=True)
    history = json.loads((tmp_path / "ddp" / HISTORY).read_text())
    assert history["iteration"] == [1, 2]
    assert (tmp_path / "ddp" / CHECKPOINT).is_file()


def test_init_from_starts_from_another_runs_weights(mr_patients: Path, tmp_path: Path):
    raw = _config(mr_patients, tmp_path / "src")
    raw["train"]["iterations"] = 1
    raw["data"]["val_patients"], raw["data"]["val_fraction"] = [], 0.0
    source = train(parse_config(raw), progress=False)
    raw["train"].update(out_dir=str(tmp_path / "tuned"), init_from=str(source))
    raw["optimizer"]["lr"] = 0.0  # no step: the weights must be the source's
    tuned = train(parse_config(raw), progress=False)
    a, b = load_file(str(source / CHECKPOINT)), load_file(str(tuned / CHECKPOINT))
    assert all(torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))


def test_init_from_a_zoo_model(mr_patients: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch):
    """init_from = "zoo:NAME": a site fine-tunes a shipped model without its run folder; the
    card's sha256 is checked, and a config that builds another network is refused by name."""
    from tests.model_factory import write_model

    zoo = tmp_path / "zoo"
    params = {"depth": 3, "num_features": 8}
    write_model(zoo, "site-denoise", "dncnn", params, task="denoise", scale=1, seed=7)
    monkeypatch.setenv("DICOMNODE_MODELS", str(zoo))
    raw = _config(mr_patients, tmp_path / "tuned")
    raw["train"].update(iterations=1, init_from="zoo:site-denoise")
    raw["data"]["val_patients"], raw["data"]["val_fraction"] = [], 0.0
    raw["optimizer"]["lr"] = 0.0  # no step: the weights must be the zoo model's
    tuned = train(parse_config(raw), progress=False)
    shipped = load_file(str(zoo / "site-denoise" / "weights.safetensors"))
    after = load_file(str(tuned / CHECKPOINT))
    # learned parameters unchanged (batch-norm running statistics move in a step even at lr 0)
    assert all(torch.equal(shipped[k], after[k]) for k in shipped if k.endswith("weight"))
    # zoo:NAME moves on when a new version ships: the exported card names the one it started from
    sha = load_card("site-denoise", zoo).weights_sha256
    card = load_card("site-denoise-tuned", export(tuned, "site-denoise-tuned", tmp_path / "out")
                     .parent)
    assert card.training["fine_tuned_from"] == f"zoo:site-denoise 0.0.1 (weights sha256 {sha})"
    raw["architecture"] = {"name": "dncnn", "depth": 4, "num_features": 8}
    with pytest.raises(ConfigError, match=r"zoo:site-denoise.*copy the card's"):
        train(parse_config(raw), progress=False)


def test_cli_minutes_cuts_a_run_short(mr_patients: Path, tmp_path: Path):
    """`train --minutes` overrides the config's time limit: a long config stops early."""
    raw = _config(mr_patients, tmp_path / "short", train={"iterations": 100000,
                                                          "val_every": 100000})
    path = tmp_path / "long.toml"
    path.write_text(dumps_toml(raw))
    assert cli.main(["train", str(path), "--no-progress", "--minutes", "0.02"]) == 0
    history = json.loads((tmp_path / "short" / HISTORY).read_text())
    assert 0 < history["iteration"][-1] < 100000
    assert cli.main(["train", str(path), "--minutes", "0"]) == 1


def test_context_rim_is_input_only(mr_patients: Path, tmp_path: Path):
    """data.context: k-space inputs keep real pixels around the patch; target has the same rim
    (cropped off before the loss); other degradations and GAN configs refuse it."""
    from training.data import load_series
    from training.tasks import Task, TaskError

    series = load_series([mr_patients], ("MR",))[0]
    task = Task.from_config({"kind": "kspace", "scale": 2})
    rng = np.random.default_rng(0)
    x, y = task.train_pair(series, 0, 2.0, rng, 32, 1, 0)
    assert x.shape == (1, 16, 16) and y.shape == (1, 32, 32)
    x, y = task.train_pair(series, 0, 2.0, rng, 32, 1, 4)
    assert x.shape == (1, 24, 24) and y.shape == (1, 48, 48)
    with pytest.raises(TaskError, match="context"):
        Task.from_config({"kind": "rician", "fraction": [0.01, 0.02]}).train_pair(
            series, 0, 0.01, rng, 32, 1, 4)
    raw = _config(mr_patients, tmp_path / "x")
    raw["data"]["context"] = -1
    with pytest.raises(ConfigError, match=r"data\.context"):
        parse_config(raw)
    sr = _config(mr_patients, tmp_path / "sr",
                 train={"iterations": 2, "val_every": 2, "checkpoint_every": 2})
    sr["data"]["context"] = 4
    sr["degradation"] = {"kind": "kspace", "scale": 2}
    sr["architecture"] = {"name": "rlfn", "scale": 2, "num_features": 8, "num_blocks": 1,
                          "esa_channels": 4, "base": "zero_filled"}
    run = train(parse_config(sr), progress=False)
    assert json.loads((run / HISTORY).read_text())["iteration"][-1] == 2


def test_padding_edge_weights_reach_the_pixel_loss(tmp_path: Path):
    """loss.padding_edge: CT batches carry per-pixel weights, and the L1 term is their mean of
    weighted errors (the weights change the loss, the unweighted path is unchanged)."""
    from tests.conftest import CT_TILT_DIR
    from training.data import load_series
    from training.train import BatchSampler, _generator_step

    raw = _config(CT_TILT_DIR, tmp_path / "ct", modalities=["CT"])
    raw["degradation"] = {"kind": "ct_low_dose", "train_doses": [0.1, 0.5], "eval": [0.25],
                          "realisations": 2, "mix": True}
    raw["normalisation"] = {"method": "linear", "offset": 0.0, "scale": 1000.0}
    raw["data"].update(patch_size=512, batch_size=1, min_foreground=0.0)  # the whole slice
    raw["loss"] = {"l1": 1.0, "padding_edge": 4.0, "padding_edge_px": 2}
    config = parse_config(raw)
    setup = make_setup(config)
    series = load_series([CT_TILT_DIR], ("CT",))
    series[0].slices = series[0].slices[:1]
    _x, y, weights = BatchSampler(setup, series).batch(np.random.default_rng(1), 1)
    assert weights is not None and weights.shape == y.shape == (1, 1, 512, 512)
    assert set(np.unique(weights.numpy())) == {1.0, 5.0}
    assert 0.0 < float((weights == 5.0).float().mean()) < 0.02  # a thin ring

    generator = setup.build_generator()
    opt = torch.optim.SGD(generator.parameters(), lr=0.0)  # the loss is taken before the step
    x = torch.randn(1, 1, 16, 16)
    target = torch.randn(1, 1, 16, 16)
    w = torch.ones_like(target)
    w[..., :4, :] = 5.0
    with torch.no_grad():
        error = (generator(x) - target).abs()
    cpu = torch.device("cpu")
    weighted, _ = _generator_step(config, setup, generator, None, None, opt, x, target, cpu,
                                  "none", 0, w)
    plain, _ = _generator_step(config, setup, generator, None, None, opt, x, target, cpu,
                               "none", 0)
    assert weighted == pytest.approx(float((w * error).mean()), rel=1e-5)
    assert plain == pytest.approx(float(error.mean()), rel=1e-5)


def test_whole_slices_of_two_sizes_batch_by_size(tmp_path: Path):
    """data.whole_slices with subjects of different matrix sizes (256x256 2D T1 and the 128x128
    Enhanced MR): every batch is one size, and both sizes are drawn."""
    from tests.conftest import ENHANCED_MR_DIR, MR_DIR
    from training.data import SeriesData, load_series
    from training.train import BatchSampler

    raw = _config(MR_DIR, tmp_path / "sr")
    raw["degradation"] = {"kind": "kspace", "scale": 2}
    raw["data"].update(whole_slices=True, batch_size=3, min_foreground=0.0)
    setup = make_setup(parse_config(raw))
    series = load_series([MR_DIR, ENHANCED_MR_DIR], ("MR",))
    assert {s.slices.shape[1:] for s in series} == {(256, 256), (128, 128)}
    sampler = BatchSampler(setup, series)
    sizes = set()
    for seed in range(12):
        x, y, weights = sampler.batch(np.random.default_rng(seed), 3)
        assert x.shape[0] == y.shape[0] == 3 and weights is None
        sizes.add(tuple(y.shape[-2:]))
    assert sizes == {(256, 256), (128, 128)}
    # an oblong matrix (a 320x260 axial slice) is flipped and half-turned, never quarter-turned,
    # so its batches keep its shape
    ramp = np.arange(2 * 64 * 96, dtype=np.float32).reshape(2, 64, 96) % 97 + 100.0
    oblong = SeriesData("P", "1.2.3", "MR", tmp_path, ramp)
    sampler = BatchSampler(setup, [oblong])
    for seed in range(8):
        x, y, _ = sampler.batch(np.random.default_rng(seed), 2)
        assert tuple(y.shape[-2:]) == (64, 96) and tuple(x.shape[-2:]) == (32, 48)


def test_flip_rotate_turns_oblong_arrays_by_half_turns_only():
    """Quarter-turns for squares; an oblong array keeps its shape and is one of its four
    flips/half-turns; the same generator draws give the same square result as before."""
    from training.data import random_flip_rotate
    square = np.arange(16.0).reshape(4, 4)
    oblong = np.arange(12.0).reshape(3, 4)
    symmetries = [oblong, oblong[::-1], oblong[:, ::-1], oblong[::-1, ::-1]]
    turned = set()
    for seed in range(32):
        out_square, out_oblong = random_flip_rotate([square, oblong], np.random.default_rng(seed))
        assert out_oblong.shape == (3, 4)
        assert any(np.array_equal(out_oblong, s) for s in symmetries)
        turned.add(out_square.tobytes())
    assert len(turned) == 8  # all eight symmetries of the square occur


def test_cross_scanner_numbers_go_to_their_own_card_table(mr_patients: Path, tmp_path: Path):
    """`evaluate --cross-scanner --update-card` writes [cross_scanner_metrics] beside the
    in-distribution [metrics], which stay as they were; --max-slices is recorded and reproduces."""
    run = train(parse_config(_config(mr_patients, tmp_path / "run")), progress=False)
    models = tmp_path / "models"
    assert cli.main(["export", str(run), "--name", "tiny-denoise", "--models-dir",
                     str(models)]) == 0
    before = load_card("tiny-denoise", models)
    assert before.cross_scanner_metrics == {}
    out = tmp_path / "cross.json"
    args = ["evaluate", "--model", "tiny-denoise", "--models-dir", str(models), "--data",
            str(mr_patients / "patient2"), "--max-slices", "2", "--json", str(out)]
    assert cli.main([*args, "--cross-scanner", "--update-card"]) == 0
    card = load_card("tiny-denoise", models)
    assert card.metrics == before.metrics and card.weights_sha256 == before.weights_sha256
    cross = card.cross_scanner_metrics
    assert cross["max_slices"] == 2 and cross["slices"] == 2
    assert "cross-scanner" in cross["source"]
    psnr = json.loads(out.read_text())["levels"]["0.05"]["mean"]["model"]["psnr"]
    assert cross["sigma_fraction_0.05"]["model"]["psnr"] == pytest.approx(psnr, abs=1e-3)
    assert cli.main(args) == 0  # the same slices again: the card's number comes back
    again = json.loads(out.read_text())["levels"]["0.05"]["mean"]["model"]["psnr"]
    assert again == pytest.approx(cross["sigma_fraction_0.05"]["model"]["psnr"], abs=1e-3)
    assert cli.main([*args[:-2], "--max-slices", "0"]) == 1
