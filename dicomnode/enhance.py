"""Enhance one series: decode a few slices at a time, run the model, derive, hand on.

The offline ``dicomnode enhance`` command and the node's worker share this path, so a series
gives the same derived objects whichever way it arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from dicomnode.derive import Derivation, derive_image, produced_by_dicomnode
from dicomnode.errors import DeriveError, InputRejected
from dicomnode.logs import event
from dicomnode.pixels import PixelFormat, modality_values, pixel_format, stored_values
from dicomnode.series import Series, SourceImage
from dicomnode.zoo import Enhancer, ModelCard

log = logging.getLogger(__name__)

Sink = Callable[[Dataset], Path]


@dataclass
class SeriesOutcome:
    """What became of one series: derived files written and images refused, with reasons."""

    series_instance_uid: str
    written: list[Path] = field(default_factory=list)
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    skipped_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.skipped_reason is None and bool(self.written)


def derivation_for(card: ModelCard, rule_name: str, suffix: str,
                   created: datetime | None = None) -> Derivation:
    """The labels a card's output carries: task, model, version and guards in plain words."""
    what = f"Super-resolution x{card.scale}" if card.task == "super-resolution" else "Denoising"
    kind = "AI-processed" if card.learned else "classical algorithm"
    guards = [name for name, on in sorted(card.guards.items()) if on]
    guard_text = f"; guards: {', '.join(guards)}" if guards else ""
    description = (
        f"{what} (dicomnode {card.name} {card.version}); {kind}{guard_text}, "
        "compare with source series"
    )
    return Derivation(
        rule_name=rule_name, model_name=card.name, model_version=card.version,
        task=card.task, scale=card.scale, description=description,
        series_description_suffix=suffix, created=created or datetime.now().astimezone(),
    )


def enhance_series(
    series: Series,
    enhancer: Enhancer,
    derivation: Derivation,
    sink: Sink,
    batch_size: int = 8,
    on_image: Callable[[], None] | None = None,
) -> SeriesOutcome:
    """Derive every usable image of ``series``; a bad image is refused, the rest go on."""
    outcome = SeriesOutcome(series.series_instance_uid)
    reason = _series_refusal(series, enhancer.card)
    if reason is not None:
        outcome.skipped_reason = reason
        event(log, "series_skipped", series_uid=series.series_instance_uid, reason=reason)
        return outcome
    for start in range(0, len(series.images), batch_size):
        chunk = series.images[start:start + batch_size]
        loaded = []
        for image in chunk:
            try:
                loaded.append(_load(image))
            except InputRejected as exc:
                outcome.rejected.append((image.path, str(exc)))
                event(log, "image_rejected", logging.WARNING, sop_uid=image.sop_instance_uid,
                      reason=str(exc))
                _tick(on_image)
        for group in _same_shape_groups(loaded):
            stack = np.stack([values for _, _, _, values in group])
            inverted = np.asarray([fmt.inverted for _, _, fmt, _ in group])[:, None, None]
            # MONOCHROME1 is shown inverted: negate so models always see "bright = high".
            stack = np.where(inverted, -stack, stack)
            output = np.asarray(enhancer(stack), dtype=np.float64)
            output = np.where(inverted, -output, output)
            for (image, ds, fmt, _), result in zip(group, output, strict=True):
                try:
                    derived = derive_image(ds, stored_values(result, fmt), fmt, derivation)
                    outcome.written.append(sink(derived))
                except DeriveError as exc:
                    outcome.rejected.append((image.path, str(exc)))
                    event(log, "derive_failed", logging.WARNING,
                          sop_uid=image.sop_instance_uid, reason=str(exc))
                _tick(on_image)
    event(log, "series_enhanced", series_uid=series.series_instance_uid,
          model=enhancer.card.name, written=len(outcome.written),
          rejected=len(outcome.rejected))
    return outcome


def _series_refusal(series: Series, card: ModelCard) -> str | None:
    header = series.header
    if produced_by_dicomnode(header):
        return "series was produced by dicomnode: stored, not processed again"
    modality = str(header.get("Modality", "") or "").upper()
    if not card.accepts_modality(modality):
        return (f"model {card.name!r} is for modalities {', '.join(card.modalities)}; "
                f"series Modality is {modality or 'missing'!r}")
    return None


def _load(image: SourceImage) -> tuple[SourceImage, Dataset, PixelFormat, np.ndarray]:
    try:
        ds = image.read()
        for _ in ds.iterall():  # pydicom converts values lazily: meet malformed ones here
            pass
    except Exception as exc:  # a file damaged after the header scan, or a malformed value
        raise InputRejected(f"cannot read {image.path.name}: {type(exc).__name__}: {exc}") from exc
    fmt = pixel_format(ds)
    return image, ds, fmt, modality_values(ds, fmt)


def _same_shape_groups(loaded: list) -> list[list]:
    groups: dict[tuple[int, ...], list] = {}
    for item in loaded:
        groups.setdefault(item[3].shape, []).append(item)
    return list(groups.values())


def _tick(callback: Callable[[], None] | None) -> None:
    if callback is not None:
        callback()
