"""``dicomnode-train train CONFIG.toml``: patch training with checkpoints, resume and DDP.

Reproducible by construction: the batch of iteration i is drawn from a generator seeded with
(seed, i, rank), and torch's own generator is reseeded the same way, so a run resumed from a
checkpoint takes exactly the steps an uninterrupted run would have taken. Weights are written as
safetensors; optimiser state with ``torch.save`` of plain tensors, read back with
``weights_only=True`` (nothing is unpickled). Multi-GPU and multi-node through ``torchrun``
(DDP, NCCL on CUDA, gloo on CPU); only rank 0 validates, writes and prints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from dicomnode.engine.volume import sample_indices
from dicomnode.nets import build_network
from training import losses
from training.checkpoint import (
    CURVES,
    DISCRIMINATOR,
    EVAL,
    HISTORY,
    OPTIMIZER,
    Setup,
    atomic_write,
    initial_weights,
    make_setup,
    read_checkpoint,
    save_checkpoint,
)
from training.config import TrainConfig, resolve
from training.data import (
    SeriesData,
    check_disjoint,
    inverted,
    load_series,
    split_by_patient,
    stable_seed,
)
from training.evaluate import network_model, node_inputs, restore_padding
from training.metrics import average, series_metrics
from training.prefill import prefill_ct_noise
from training.tasks import padding_edge_weights

log = logging.getLogger(__name__)



def load_data(config: TrainConfig) -> tuple[list[SeriesData], list[SeriesData]]:
    """Train and validation series, patient-disjoint (explicit val folders are checked too)."""
    data = config.data
    train = load_series(config.folders("train"), config.modalities)
    if not train:
        raise ValueError(f"no {'/'.join(config.modalities)} series found in data.train "
                         f"({', '.join(map(str, config.folders('train')))})")
    if data["val"]:
        val = load_series(config.folders("val"), config.modalities)
        check_disjoint(train, val)
    else:
        train, val = split_by_patient(train, float(data["val_fraction"]), config.seed,
                                      data["val_patients"])
    step = int(data["slice_step"])
    if step > 1:  # training only: validation keeps every slice
        train = [replace(s, slices=s.slices[::step], _percentiles={}) for s in train]
    if data["invert"]:  # training only: validation stays what the node will meet
        train = train + [inverted(s) for s in train]
    return train, val


# --- learning-rate schedule -------------------------------------------------------------------

def lr_factor(schedule: dict[str, Any], iteration: int, total: int,
              time_fraction: float | None = None) -> float:
    """Multiplier of the base learning rate at ``iteration`` (linear warm-up, then the schedule).

    ``time_fraction`` (elapsed / time limit, with ``follow_time_limit``): the cosine's progress
    is the larger of the iteration's and the clock's, so a run that its time limit stops early
    (a slower or busier machine) still ends annealed.
    """
    warmup = int(schedule["warmup"])
    if warmup and iteration < warmup:
        return (iteration + 1) / warmup
    name = schedule["name"]
    if name == "constant":
        return 1.0
    if name == "step":
        return float(schedule["gamma"]) ** ((iteration - warmup) // int(schedule["step_size"]))
    progress = (iteration - warmup) / max(1, total - warmup)
    if time_fraction is not None:
        progress = max(progress, time_fraction)
    floor = float(schedule["min_lr_ratio"])
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def autocast(device: torch.device, amp: str) -> torch.autocast | nullcontext[None]:
    """bf16/fp16 autocast on ``device`` for a training step, or nothing for ``amp = "none"``."""
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# --- batches ------------------------------------------------------------------------------------

class BatchSampler:
    """Random degraded patches, normalised as the node will normalise the input series."""

    def __init__(self, setup: Setup, series: list[SeriesData]) -> None:
        self.setup = setup
        self.series = series
        self.whole = bool(setup.config.data["whole_slices"])
        counts = np.array([len(s.slices) for s in series], dtype=float)
        self.weights = counts / counts.sum()
        self._stats: dict[tuple[str, float], tuple[float, float]] = {}

    def input_params(self, series: SeriesData, level: float) -> tuple[float, float]:
        """(offset, span) of the degraded series at (the grid level nearest) ``level``: the
        card's normalisation from the slices the node samples (``engine.volume``)."""
        norm, task = self.setup.norm, self.setup.task
        if not norm.needs_series:
            fixed = norm.for_series([])
            return fixed.low, fixed.high - fixed.low
        key = (series.key, task.stats_level(level))
        if key not in self._stats:
            picks = sample_indices(len(series.slices))
            subset = SeriesData(series.patient_id, series.series_uid, series.modality,
                                series.folder, series.slices[picks], series.pixel_spacing,
                                series.photometric)
            subset._percentiles.update({99: series.percentile(99), 0: series.percentile(0),
                                        100: series.percentile(100)})
            rng = np.random.default_rng(stable_seed("stats", series.key, key[1]))
            normaliser = norm.for_series(list(task.degrade_series(subset, key[1], rng)))
            self._stats[key] = (normaliser.low, normaliser.high - normaliser.low)
        return self._stats[key]

    def batch(self, rng: np.random.Generator, size: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(inputs, targets, per-pixel loss weights or None when the loss is unweighted)."""
        cfg = self.setup.config.data
        edge = float(self.setup.config.loss["padding_edge"])
        xs, ys, ws = [], [], []
        weights = self.weights
        for _ in range(size):
            series = self.series[int(rng.choice(len(self.series), p=weights))]
            if self.whole and not xs:  # whole slices stack only with their own size: the
                # first pick decides the batch's size, the rest come from series of that size
                same = np.array([s.slices.shape[1:] == series.slices.shape[1:]
                                 for s in self.series])
                weights = np.where(same, self.weights, 0.0) / self.weights[same].sum()
            level = self.setup.task.sample_level(rng)
            low = series.percentile(1)
            threshold = low + 0.1 * (series.percentile(99) - low)
            for _attempt in range(5):
                index = int(rng.integers(len(series.slices)))
                x, y = self.setup.task.train_pair(series, index, level, rng,
                                                  int(cfg["patch_size"]), self.setup.channels,
                                                  int(cfg["context"]), bool(cfg["whole_slices"]))
                if (y > threshold).mean() >= float(cfg["min_foreground"]):
                    break
            if edge > 0:
                ws.append(padding_edge_weights(
                    y, int(self.setup.config.loss["padding_edge_px"]), edge))
            offset, span = self.input_params(series, level)
            xs.append((x - offset) / span)
            ys.append((y - offset) / span)
        return (torch.from_numpy(np.stack(xs).astype(np.float32)),
                torch.from_numpy(np.stack(ys).astype(np.float32)),
                torch.from_numpy(np.stack(ws)) if ws else None)


# --- validation ---------------------------------------------------------------------------------

class Validator:
    """Model vs baselines on a fixed, seeded subset of validation slices at every eval level."""

    def __init__(self, setup: Setup, series: list[SeriesData]) -> None:
        self.setup = setup
        self.cases: list[tuple[float, np.ndarray, np.ndarray, np.ndarray | None,
                               dict[str, dict[str, float]]]] = []
        limit = int(setup.config.data["val_max_slices"])
        for s in series:
            n = len(s.slices)
            picks = np.linspace(0, n - 1, min(n, limit)).round().astype(int)
            sub = SeriesData(s.patient_id, s.series_uid, s.modality, s.folder, s.slices[picks],
                             s.pixel_spacing, s.photometric, padding=s.padding)
            sub._percentiles.update({q: s.percentile(q) for q in (0, 1, 99, 100)})
            for level in setup.task.eval_levels:
                rng = np.random.default_rng(stable_seed("val", s.key, level))
                inputs = setup.task.degrade_series(sub, level, rng)
                ref = setup.task.reference(sub)
                inputs, mask = node_inputs(inputs, ref, sub.padding, sub.modality,
                                           setup.task.scale)
                base = series_metrics(ref, {name: restore_padding(out, ref, mask) for name, out
                                            in setup.task.baselines(inputs).items()})
                self.cases.append((level, inputs, ref, mask, base))

    def __call__(self, model: nn.Module, device: torch.device, amp: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for level in self.setup.task.eval_levels:
            per_series = []
            for lv, inputs, ref, mask, base in self.cases:
                if lv != level:
                    continue
                pred = restore_padding(network_model(self.setup, model).predict(
                    inputs, device=str(device), amp=amp), ref, mask)
                per_series.append({**base, **series_metrics(ref, {"model": pred})})
            if per_series:
                out[str(level)] = average(per_series)
        return out


def _time_fraction(began: float, limit: float, world: int, device: torch.device) -> float:
    """Elapsed share of the time limit, rank 0's clock for every rank (one LR for all)."""
    fraction = (time.monotonic() - began) / limit
    if world > 1:
        import torch.distributed as dist

        value = torch.tensor([fraction], dtype=torch.float64, device=device)
        dist.broadcast(value, 0)
        fraction = float(value.item())
    return fraction


# --- the loop -----------------------------------------------------------------------------------

@contextmanager
def _threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device(f"cuda:{local}")
        return torch.device("cpu")
    return torch.device(name)


def _dist_setup(device: torch.device) -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            init_method=os.environ.get("DICOMNODE_DIST_INIT", "env://"),
            rank=int(os.environ["RANK"]), world_size=world)
    return dist.get_rank(), world


def train(config: TrainConfig, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> Path:
    """Run (or continue) training; returns the run folder. ``stop_after`` ends early (tests)."""
    with _threads(int(config.train["threads"])):
        return _train(config, resume, progress, stop_after)


def _train(config: TrainConfig, resume: bool, progress: bool, stop_after: int | None) -> Path:
    tc = config.train
    device = _device(str(tc["device"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rank, world = _dist_setup(device)
    out = config.out_dir
    setup = make_setup(config)
    train_series, val_series = load_data(config)
    if rank == 0:
        log.info("train series=%d slices=%d, validation series=%d slices=%d, processes=%d",
                 len(train_series), sum(len(s.slices) for s in train_series), len(val_series),
                 sum(len(s.slices) for s in val_series), world)
    if int(tc["prefill_workers"]) > 0 and rank == 0:
        prefill_ct_noise(setup.task, train_series, int(tc["prefill_workers"]))
    sampler = BatchSampler(setup, train_series)
    validator = Validator(setup, val_series) if rank == 0 and val_series else None

    torch.manual_seed(config.seed)
    generator = setup.build_generator().to(device)
    discriminator = None
    if config.discriminator is not None:
        dparams = {k: v for k, v in config.discriminator.items() if k != "name"}
        if config.discriminator["name"] == "patchgan":
            dparams.setdefault("in_channels", setup.channels + 1)  # condition + image
        discriminator = build_network(config.discriminator["name"], dparams).to(device)
    if tc["channels_last"]:
        generator = generator.to(memory_format=torch.channels_last)
        if discriminator is not None:
            discriminator = discriminator.to(memory_format=torch.channels_last)

    opt_cls = torch.optim.AdamW if config.optimizer["name"] == "adamw" else torch.optim.Adam
    betas = tuple(config.optimizer["betas"])
    wd = float(config.optimizer["weight_decay"])
    lr, d_lr = float(config.optimizer["lr"]), float(config.optimizer["d_lr"])
    opt_g = opt_cls(generator.parameters(), lr=lr, betas=betas, weight_decay=wd)
    opt_d = (opt_cls(discriminator.parameters(), lr=d_lr, betas=betas, weight_decay=wd)
             if discriminator is not None else None)

    start = 0
    history: dict[str, Any] = {"iteration": [], "loss": [], "lr": [], "val": [],
                               "seconds": 0.0}
    if tc["init_from"] and not resume:  # fine-tuning: weights only, a fresh optimiser
        weights, described = initial_weights(str(tc["init_from"]), config, setup)
        generator.load_state_dict(weights)
        history["initialised_from"] = described
        if rank == 0:
            log.info("generator initialised from %s", described)
    if resume:
        weights, meta = read_checkpoint(out)
        generator.load_state_dict(weights)
        if discriminator is not None:
            discriminator.load_state_dict(load_file(str(out / DISCRIMINATOR)))
        state = torch.load(out / OPTIMIZER, weights_only=True, map_location=device)
        opt_g.load_state_dict(state["generator"])
        if opt_d is not None and state["discriminator"]:
            opt_d.load_state_dict(state["discriminator"])
        start = int(meta["iteration"])
        history = json.loads((out / HISTORY).read_text())
        if rank == 0:
            log.info("resumed from %s at iteration %d", out, start)

    history["world_size"] = world  # processes (all nodes) whose gradients each step averaged
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        generator = DDP(generator, device_ids=ids)
        if discriminator is not None:
            discriminator = DDP(discriminator, device_ids=ids)

    perceptual = None
    if float(config.loss["perceptual"]) > 0:
        perceptual = losses.PerceptualLoss(resolve(config.loss["perceptual_weights"]),
                                           int(config.loss["perceptual_layer"])).to(device)

    total = int(tc["iterations"])
    end = total if stop_after is None else min(total, stop_after)
    amp = str(tc["amp"])
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc=config.name, unit="it", dynamic_ncols=True)
    began = time.monotonic() - float(history.get("seconds", 0.0))
    limit = float(tc["time_limit_minutes"]) * 60
    iteration = start
    generator.train()
    while iteration < end:
        rng = np.random.default_rng([config.seed, iteration, rank])
        torch.manual_seed(stable_seed("torch", config.seed, iteration, rank))
        x, y, weights = sampler.batch(rng, int(config.data["batch_size"]))
        x, y = x.to(device), y.to(device)
        weights = None if weights is None else weights.to(device)
        if tc["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        factor = lr_factor(config.schedule, iteration, total,
                           _time_fraction(began, limit, world, device)
                           if config.schedule["follow_time_limit"] and limit > 0 else None)
        for group in opt_g.param_groups:
            group["lr"] = lr * factor
        loss, parts = _generator_step(config, setup, generator, discriminator, perceptual,
                                      opt_g, x, y, device, amp, iteration, weights)
        if discriminator is not None and opt_d is not None and iteration >= int(tc["d_start"]):
            for group in opt_d.param_groups:
                group["lr"] = d_lr * factor
            parts["d"] = _discriminator_step(config, setup, generator, discriminator, opt_d,
                                             x, y, device, amp)
        iteration += 1
        if rank == 0:
            if iteration % int(tc["log_every"]) == 0 or iteration == end:
                history["iteration"].append(iteration)
                history["loss"].append(loss)
                history["lr"].append(lr * factor)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()})
        stop = limit > 0 and time.monotonic() - began > limit
        if world > 1:
            import torch.distributed as dist

            flag = torch.tensor([1.0 if stop else 0.0], device=device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        last = iteration == end or stop
        if rank == 0 and validator is not None and (
            iteration % int(tc["val_every"]) == 0 or last
        ):
            scores = validator(_inner(generator), device, amp)
            history["val"].append({"iteration": iteration, "levels": scores})
            log.info("iteration %d validation %s", iteration, json.dumps(scores))
        if rank == 0 and (iteration % int(tc["checkpoint_every"]) == 0 or last):
            history["seconds"] = time.monotonic() - began
            save_checkpoint(out, setup, iteration, generator, discriminator, opt_g, opt_d,
                            history)
            plot_curves(history, out / CURVES)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        if stop:
            if rank == 0:
                log.info("time limit of %.1f min reached at iteration %d",
                         limit / 60, iteration)
            break
    if bar is not None:
        bar.close()
    if rank == 0 and val_series:
        final_evaluation(setup, _inner(generator), val_series, out, device, amp, progress)
    return out


def final_evaluation(setup: Setup, generator: nn.Module, val_series: list[SeriesData],
                     out: Path, device: torch.device, amp: str, progress: bool) -> None:
    """The full SPEC section 8 evaluation on the validation split, for the card."""
    from training.evaluate import evaluate, summary_lines

    model = network_model(setup, generator)
    result = evaluate(model, val_series, out / "panels", device=str(device), amp=amp,
                      progress=progress)
    result["validation_data"] = sorted({str(s.folder) for s in val_series})
    atomic_write(out / EVAL, lambda p: p.write_text(json.dumps(result, indent=1)))
    for line in summary_lines(result):
        log.info("%s", line)


def _inner(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def _condition(setup: Setup, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The input brought to the output size, for a conditional (pix2pix) discriminator."""
    if setup.scale == 1:
        return x
    return F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False)


def _d_input(setup: Setup, config: TrainConfig, x: torch.Tensor, image: torch.Tensor
             ) -> torch.Tensor:
    if config.discriminator is not None and config.discriminator["name"] == "patchgan":
        return torch.cat([_condition(setup, x, image.shape[-2:]), image.float()], dim=1)
    return image


def _generator_step(config: TrainConfig, setup: Setup, generator: nn.Module,
                    discriminator: nn.Module | None, perceptual: nn.Module | None,
                    opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                    device: torch.device, amp: str, iteration: int,
                    weights: torch.Tensor | None = None) -> tuple[float, dict[str, float]]:
    """One generator update; ``weights`` (per target pixel) weight the L1 and MSE terms."""
    w = config.loss
    opt.zero_grad(set_to_none=True)
    with autocast(device, amp):
        pred = generator(x)
    pred = pred.float()
    rim = int(config.data["context"]) * setup.scale
    if rim:  # the input's context rim: seen by the network, left out of the loss
        pred, y = pred[..., rim:-rim, rim:-rim], y[..., rim:-rim, rim:-rim]
        if weights is not None:
            weights = weights[..., rim:-rim, rim:-rim]
    parts: dict[str, torch.Tensor] = {}
    if w["l1"]:
        error = (pred - y).abs()
        parts["l1"] = float(w["l1"]) * (error if weights is None else weights * error).mean()
    if w["mse"]:
        error = (pred - y) ** 2
        parts["mse"] = float(w["mse"]) * (error if weights is None else weights * error).mean()
    if w["ssim"]:
        parts["ssim"] = float(w["ssim"]) * (1 - losses.ssim_torch(pred, y))
    if perceptual is not None:
        parts["perceptual"] = float(w["perceptual"]) * perceptual(pred, y)
    if (discriminator is not None and float(w["adversarial"]) > 0
            and iteration >= int(config.train["d_start"])):
        for p in discriminator.parameters():
            p.requires_grad_(False)
        critic = _inner(discriminator)  # no DDP hooks: the critic is frozen in this step
        with autocast(device, amp):
            fake = critic(_d_input(setup, config, x, pred))
            real = critic(_d_input(setup, config, x, y)).detach()
        parts["adv"] = float(w["adversarial"]) * losses.adversarial_g(
            real, fake, str(w["adversarial_type"]))
        for p in discriminator.parameters():
            p.requires_grad_(True)
    total = sum(parts.values(), torch.zeros((), device=pred.device))
    total.backward()
    if float(config.train["grad_clip"]) > 0:
        nn.utils.clip_grad_norm_(generator.parameters(), float(config.train["grad_clip"]))
    opt.step()
    return float(total.detach()), {k: float(v.detach()) for k, v in parts.items()}


def _discriminator_step(config: TrainConfig, setup: Setup, generator: nn.Module,
                        discriminator: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                        y: torch.Tensor, device: torch.device, amp: str) -> float:
    opt.zero_grad(set_to_none=True)
    with torch.no_grad(), autocast(device, amp):
        fake = generator(x).float()
    with autocast(device, amp):
        real_logits = discriminator(_d_input(setup, config, x, y))
        fake_logits = discriminator(_d_input(setup, config, x, fake))
    loss = losses.adversarial_d(real_logits, fake_logits, str(config.loss["adversarial_type"]))
    loss.backward()
    opt.step()
    return float(loss.detach())


# --- curves -------------------------------------------------------------------------------------

def plot_curves(history: dict[str, Any], path: Path) -> None:
    """Training loss and validation PSNR/SSIM (model and baselines) against iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(history["iteration"], history["loss"])
    axes[0].set_yscale("log")
    axes[0].set_title("training loss")
    axes[0].set_xlabel("iteration")
    for ax, metric in zip(axes[1:], ("psnr", "ssim"), strict=True):
        for entry_level in sorted({lv for v in history["val"] for lv in v["levels"]}):
            its = [v["iteration"] for v in history["val"] if entry_level in v["levels"]]
            vals = [v["levels"][entry_level] for v in history["val"]
                    if entry_level in v["levels"]]
            if not vals:
                continue
            ax.plot(its, [v["model"][metric] for v in vals], marker="o",
                    label=f"model @ {entry_level}")
            for name in vals[-1]:
                if name != "model":
                    ax.axhline(vals[-1][name][metric], linestyle="--", linewidth=0.8,
                               color="grey")
                    ax.annotate(f"{name} @ {entry_level}", (its[0], vals[-1][name][metric]),
                                fontsize=7, color="grey")
        ax.set_title(f"validation {metric.upper()} (dashed: baselines)")
        ax.set_xlabel("iteration")
        if history["val"]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: fig.savefig(p, dpi=80, format="png"))
    plt.close(fig)
