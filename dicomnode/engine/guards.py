"""Safety guards applied after a network (SPEC section 6): the output may not contradict the input.

- ``consistency`` (super-resolution): project the output so that the card's degradation applied
  to it gives back the input. ``kspace`` (MR): the output's central k-space is replaced by the
  input's; ``block_mean`` (CT, radiographs): the up-sampled residual of the block means is added.
  The network can only add detail that the acquisition could not have measured.
- ``intensity`` (denoising): the output is clipped to each input slice's range, then where its
  low-pass (Gaussian, sigma 4 pixels) strays from the input's by more than the contract allows
  (0.5 % of the series' range), the excess is taken out, so HU and signal levels (MR's noise
  floor too) are kept and only noise-scale detail changes. Within the bound the network's
  low-pass stands: the input's low-pass still holds the low-frequency part of its noise (CT's is
  large), and copying it back would put that noise back.

Guards are on by default for learned models (a card turns one off with ``[guards] name = false``)
and are named in the derived DerivationDescription. They use
:mod:`dicomnode.engine.degradations`, the code training degrades with, so the guard enforces
exactly what the model was trained to undo.
All functions work on modality values, on the last two axes, one slice at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

# _centre is the crop kspace_truncate uses: sharing it keeps guard and degradation identical.
from dicomnode.engine.degradations import _centre, block_mean
from dicomnode.logs import event

log = logging.getLogger(__name__)

# guard name -> the task it belongs to
GUARDS = {"consistency": "super-resolution", "intensity": "denoise"}
SR_DEGRADATIONS = ("kspace", "block_mean")
LOW_PASS_SIGMA = 4.0
# The intensity guard takes out the part of the low-pass difference beyond this fraction of the
# input's range, repeating until none is left; the contract allows 0.5 % of the series' range (a
# chunk's range is at most the series'), and the margin below it absorbs what the Gaussian of a
# correction spreads. Each step costs one Gaussian filter of the chunk; outputs that only remove
# noise need none, outputs that shift levels two to four.
INTENSITY_TOLERANCE = 4e-3
INTENSITY_CONTRACT = 5e-3
INTENSITY_MAX_STEPS = 16
# Share of a low-resolution slice's spectral energy outside its central half below which the
# consistency guard takes out all of a network's new detail, and above which it keeps all.
INTERPOLATED_BAND = (5e-4, 2e-3)


def default_guards(task: str) -> tuple[str, ...]:
    """The guards a learned model of ``task`` gets unless its card turns them off."""
    return tuple(name for name, for_task in GUARDS.items() if for_task == task)


def active_guards(task: str, settings: Mapping[str, bool], learned: bool) -> tuple[str, ...]:
    """Guards that run: a learned model's defaults unless set false, plus any set true."""
    names = set(default_guards(task)) if learned else set()
    names |= {name for name, on in settings.items() if on}
    names -= {name for name, on in settings.items() if not on}
    return tuple(sorted(names))


def setting_problems(task: str, settings: Mapping[str, Any]) -> list[str]:
    """Problems with a card's ``[guards]`` table, each with its key path."""
    problems = []
    for name, on in settings.items():
        if name not in GUARDS:
            problems.append(f"guards.{name}: unknown guard; known: {', '.join(GUARDS)}")
        elif GUARDS[name] != task and on:
            problems.append(f"guards.{name}: applies to {GUARDS[name]} models, this card's task "
                            f"is {task}")
    return problems


def degradation_name(degradation: Mapping[str, Any]) -> str | None:
    """A card's ``[degradation] name``, or ``kind`` as ``dicomnode-train export`` writes it."""
    name = degradation.get("name", degradation.get("kind"))
    return name if isinstance(name, str) else None


def requirement_problems(active: tuple[str, ...], degradation: Mapping[str, Any]) -> list[str]:
    """What the active guards need from the card: the consistency guard, a degradation name."""
    name = degradation_name(degradation)
    if "consistency" in active and name not in SR_DEGRADATIONS:
        return [
            f"degradation.name: the consistency guard needs one of {', '.join(SR_DEGRADATIONS)} "
            f"(the degradation the model was trained to undo), got {name!r}; or set [guards] "
            "consistency = false"
        ]
    return []


def apply_guards(names: tuple[str, ...], output: np.ndarray, source: np.ndarray, scale: int,
                 degradation: str | None = None,
                 value_range: float | None = None) -> np.ndarray:
    """``output`` (N, H*scale, W*scale) after every guard in ``names``; ``source`` is (N, H, W).

    ``value_range``: the series' range the intensity guard's tolerance is a share of (SPEC
    section 7); without it, the range of ``source``, which is the series only when ``source``
    holds all of it.
    """
    result = np.asarray(output, dtype=np.float64)
    if "consistency" in names:
        if degradation == "kspace":
            result = kspace_consistency(result, source, scale)
        elif degradation == "block_mean":
            result = block_mean_consistency(result, source, scale)
        else:
            raise ValueError(f"consistency guard: unknown degradation {degradation!r}")
    if "intensity" in names:
        result = preserve_intensity(result, source, value_range=value_range)
    return result


def _check_sizes(output: np.ndarray, source: np.ndarray, factor: int) -> None:
    expected = (*source.shape[:-2], source.shape[-2] * factor, source.shape[-1] * factor)
    if output.shape != expected:
        raise ValueError(f"output has shape {output.shape}, expected {expected} for a source of "
                         f"{source.shape} at x{factor}")


def block_mean_consistency(output: np.ndarray, source: np.ndarray, factor: int) -> np.ndarray:
    """``output`` plus the upsampled residual of its block means: block_mean(result) == source."""
    _check_sizes(output, source, factor)
    residual = np.asarray(source, dtype=np.float64) - block_mean(output, factor)
    return output + np.repeat(np.repeat(residual, factor, axis=-2), factor, axis=-1)


def kspace_consistency(output: np.ndarray, source: np.ndarray, factor: int) -> np.ndarray:
    """``output`` with its central k-space replaced by the source's: kspace_truncate(result) is
    the source (for non-negative sources such as MR magnitude images).

    The network's detail outside the centre is scaled by :func:`detail_weight` of the source
    slice, so a series the scanner already interpolated gets none.

    The result stays real: where the central block is not symmetric about the centre of k-space
    (even sizes include one Nyquist row/column), the mirrored coefficients outside it are set to
    the conjugates, so the spectrum stays Hermitian.
    """
    _check_sizes(output, source, factor)
    if factor == 1:
        return np.asarray(source, dtype=np.float64).copy()
    flat_out = np.asarray(output, dtype=np.float64).reshape(-1, *output.shape[-2:])
    flat_src = np.asarray(source, dtype=np.float64).reshape(-1, *source.shape[-2:])
    slices = [_replace_centre(high, low, factor)
              for high, low in zip(flat_out, flat_src, strict=True)]
    return np.stack(slices).reshape(output.shape)


def detail_weight(low: np.ndarray) -> float:
    """How much of a network's new detail a super-resolved slice keeps: 0 to 1.

    A series the scanner already interpolated (acquired at half the matrix, zero-filled to the
    stored one) has nothing in the outer half of its own spectrum; its true finer image has
    nothing beyond either, so any detail a network adds there is made up. The weight fades
    from 1 to 0 as the share of the slice's spectral energy (DC left out) outside its central
    half falls from ``INTERPOLATED_BAND[1]`` to ``INTERPOLATED_BAND[0]``: native MR slices
    measured 1.3e-3 to 3e-2, the same slices interpolated at most 5.8e-4 (docs/DESIGN.md).
    """
    return _detail_weight(np.fft.fftshift(np.fft.fft2(low)))


def _detail_weight(centred_spectrum: np.ndarray) -> float:
    """:func:`detail_weight` from the slice's centred spectrum (the guard has it already)."""
    spectrum = np.abs(centred_spectrum) ** 2
    n, m = spectrum.shape
    spectrum[n // 2, m // 2] = 0.0
    total = float(spectrum.sum())
    if total <= 0.0:
        return 0.0  # a constant slice: there is no detail to add
    outer = np.ones(spectrum.shape, dtype=bool)
    outer[n // 2 - n // 4 + 1 : n // 2 + n // 4, m // 2 - m // 4 + 1 : m // 2 + m // 4] = False
    share = float(spectrum[outer].sum()) / total
    low_end, high_end = INTERPOLATED_BAND
    return float(np.clip((share - low_end) / (high_end - low_end), 0.0, 1.0))


def _replace_centre(high: np.ndarray, low: np.ndarray, factor: int) -> np.ndarray:
    height, width = high.shape
    rows, cols = _centre(height, low.shape[0]), _centre(width, low.shape[1])
    spectrum = np.fft.fftshift(np.fft.fft2(high))
    inside = np.zeros(spectrum.shape, dtype=bool)
    inside[rows, cols] = True
    low_spectrum = np.fft.fftshift(np.fft.fft2(low))
    spectrum[~inside] *= _detail_weight(low_spectrum)
    spectrum[rows, cols] = low_spectrum * (factor * factor)
    # Frequency k sits at index c + k (c = n // 2); its mirror -k at (2c - index) mod n.
    mirror_rows = (2 * (height // 2) - np.arange(height)) % height
    mirror_cols = (2 * (width // 2) - np.arange(width)) % width
    mirrored = spectrum[np.ix_(mirror_rows, mirror_cols)].conj()
    mirror_inside = inside[np.ix_(mirror_rows, mirror_cols)]
    fix = mirror_inside & ~inside
    spectrum[fix] = mirrored[fix]
    return np.fft.ifft2(np.fft.ifftshift(spectrum)).real


def low_pass(image: np.ndarray, sigma: float = LOW_PASS_SIGMA) -> np.ndarray:
    """Gaussian low-pass of each slice (last two axes), edges mirrored."""
    from scipy.ndimage import gaussian_filter

    image = np.asarray(image, dtype=np.float64)
    sigmas = (0.0,) * (image.ndim - 2) + (sigma, sigma)
    return gaussian_filter(image, sigma=sigmas, mode="reflect")


def preserve_intensity(output: np.ndarray, source: np.ndarray, sigma: float = LOW_PASS_SIGMA,
                       tolerance: float = INTENSITY_TOLERANCE,
                       max_steps: int = INTENSITY_MAX_STEPS,
                       value_range: float | None = None) -> np.ndarray:
    """``output`` with its low-pass brought within ``tolerance`` x range of the source's.

    The range is the series' (``value_range``, from the node's sample of the series), so a
    slice's result does not depend on which slices share its chunk; without it, ``source``'s.

    Each step adds the part of G(source) - G(output) beyond the bound (zero where the output is
    already within it), the smallest change that meets the bound if G kept it unchanged; G
    spreads it a little, so the step is repeated (at most ``max_steps`` times). Strong
    artefacts at a scale of a few sigma converge slowly; if the contract's 0.5 % is still not
    met, a warning names the deviation (the model should be retrained or the card's guard
    reviewed; the result is still much closer than the network's output).
    """
    source = np.asarray(source, dtype=np.float64)
    if output.shape != source.shape:
        raise ValueError(f"output has shape {output.shape}, source {source.shape}: the intensity "
                         "guard is for denoising (same size)")
    target = low_pass(source, sigma)
    value_range = max(float(np.ptp(source)) if value_range is None else float(value_range),
                      np.finfo(np.float64).tiny)
    limit = tolerance * value_range
    # A value outside the input slice's own range is no noise removed but an outlier made up
    # (a hot pixel): kept, its low-pass needs far more than max_steps (one of 30 x the range
    # left 2 % of the range after 16); clipped, it is within the bound in a step or two.
    low = source.min(axis=(-2, -1), keepdims=True)
    high = source.max(axis=(-2, -1), keepdims=True)
    result = np.clip(np.asarray(output, dtype=np.float64), low, high)
    for step in range(max_steps + 1):
        difference = target - low_pass(result, sigma)
        deviation = float(np.abs(difference).max())
        if deviation <= limit or step == max_steps:
            break
        result += difference - np.clip(difference, -limit, limit)
    if deviation > INTENSITY_CONTRACT * value_range:
        event(log, "intensity_guard_residual", logging.WARNING, steps=max_steps,
              low_pass_deviation=f"{deviation:.4g}",
              contract=f"{INTENSITY_CONTRACT * value_range:.4g}")
    return result
