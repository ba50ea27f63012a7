"""Enhance one series: decode a few slices at a time, run the model, derive, hand on.

The offline ``dicomnode enhance`` command and the node's worker share this path, so a series
gives the same derived objects whichever way it arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from dicomnode.derive import (
    Derivation,
    DerivedMultiFrame,
    derive_difference,
    derive_image,
    produced_by_dicomnode,
)
from dicomnode.engine import Enhancer
from dicomnode.engine.cards import ModelCard
from dicomnode.engine.classical import bicubic_upscale
from dicomnode.engine.volume import SAMPLE_SLICES, sample_indices
from dicomnode.errors import DeriveError, InputRejected
from dicomnode.logs import event
from dicomnode.multiframe import Frame, MultiFrame, is_enhanced, read_multiframe
from dicomnode.padding import (
    fill_padding,
    fills_padding,
    keep_padding,
    padding_mask,
    padding_range,
)
from dicomnode.pixels import PixelFormat, modality_values, pixel_format, stored_values
from dicomnode.series import Series, SourceImage

log = logging.getLogger(__name__)

Sink = Callable[[Dataset], Path]


@dataclass
class SeriesOutcome:
    """What became of one series: derived files written and images refused, with reasons."""

    series_instance_uid: str
    written: list[Path] = field(default_factory=list)
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    skipped_reason: str | None = None
    differences: int = 0
    """How many of ``written`` are difference instances (rule output "difference")."""

    @property
    def ok(self) -> bool:
        return self.skipped_reason is None and bool(self.written)


def derivation_for(card: ModelCard, rule_name: str, suffix: str,
                   created: datetime | None = None) -> Derivation:
    """The labels a card's output carries: task, model, version and guards in plain words."""
    what = f"Super-resolution x{card.scale}" if card.task == "super-resolution" else "Denoising"
    kind = "AI-processed" if card.learned else "classical algorithm"
    guards = card.active_guards
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


@dataclass
class _Slice:
    """One decoded source image; ``values`` are modality values with "bright = high"."""

    image: SourceImage
    ds: Dataset
    fmt: PixelFormat
    values: np.ndarray
    network: np.ndarray
    """What the network is shown: ``values`` with declared padding filled (fill_padding)."""
    padded_stored: np.ndarray | None
    """The source's stored values where it declares padding (to put it back), else None."""
    frame: Frame | None = None
    """For a frame of an Enhanced object: which one (``ds`` then holds that frame alone)."""


@dataclass
class _Window:
    """A chunk of consecutive same-size slices, plus the neighbours the enhancer needs."""

    centre: list[_Slice]
    stack: np.ndarray  # (context + len(centre) + context, H, W)


def enhance_series(
    series: Series,
    enhancer: Enhancer,
    derivation: Derivation,
    sink: Sink,
    batch_size: int = 8,
    on_image: Callable[[], None] | None = None,
    difference: bool = False,
) -> SeriesOutcome:
    """Derive every usable image of ``series``; a bad image is refused, the rest go on.

    Slices are decoded once each, in series order, and at most ``batch_size`` (plus the
    enhancer's ``context`` neighbours on each side) are in memory at a time. An enhancer that
    ``needs_sample`` first gets a few evenly spaced slices of the series (series statistics
    such as percentiles), then the chunks. An Enhanced MR/CT object goes the same way frame by
    frame, stack by stack, and becomes one derived object of its SOP Class (or is refused
    whole). With ``difference``, each single-frame derived image is followed by its difference
    instance (derived minus source, SPEC section 10); Enhanced objects get none (logged).
    """
    outcome = SeriesOutcome(series.series_instance_uid)
    reason = _series_refusal(series, enhancer.card)
    if reason is not None:
        outcome.skipped_reason = reason
        event(log, "series_skipped", series_uid=series.series_instance_uid, reason=reason)
        return outcome
    context = enhancer.context
    run = enhancer.for_series(series_sample(series) if enhancer.needs_sample else [])
    single = [image for image in series.images if not is_enhanced(image.sop_class_uid)]
    for window in _windows(_decoded(single, outcome, on_image), batch_size, context):
        for item, result in zip(window.centre, _infer(run, window, enhancer), strict=True):
            try:
                stored = _stored(item, result, derivation.scale)
                derived = derive_image(item.ds, stored, item.fmt, derivation)
                outcome.written.append(sink(derived))  # a sink may refuse with DeriveError
                if difference:
                    values = difference_values(item, stored, derivation.scale)
                    outcome.written.append(sink(derive_difference(derived, item.ds, values,
                                                                  derivation)))
                    outcome.differences += 1
            except DeriveError as exc:
                outcome.rejected.append((item.image.path, str(exc)))
                event(log, "derive_failed", logging.WARNING,
                      sop_uid=item.image.sop_instance_uid, reason=str(exc))
            _tick(on_image)
    for image in series.images:
        if is_enhanced(image.sop_class_uid):
            if difference:
                event(log, "difference_skipped", sop_uid=image.sop_instance_uid,
                      reason="difference series are written for single-frame images only; "
                      "this Enhanced multi-frame object gets its enhanced object alone")
            _enhance_object(image, run, enhancer, derivation, sink, outcome, batch_size, context)
            _tick(on_image)
    event(log, "series_enhanced", series_uid=series.series_instance_uid,
          model=enhancer.card.name, written=len(outcome.written),
          differences=outcome.differences, rejected=len(outcome.rejected))
    return outcome


def _enhance_object(image: SourceImage, run: Callable[[np.ndarray], np.ndarray],
                    enhancer: Enhancer, derivation: Derivation, sink: Sink,
                    outcome: SeriesOutcome, batch_size: int, context: int) -> None:
    """One Enhanced object through the model, a window of frames at a time, into one derived
    object; a frame that cannot be read or derived refuses the whole object, with its reason.
    """
    try:
        source = read_multiframe(image.path)
        reason = _content_refusal(source, enhancer.card)
        if reason is not None:
            raise InputRejected(reason)
        derived = DerivedMultiFrame(source, derivation)
        for stack in source.stacks():
            frames = (_load_frame(image, source, frame) for frame in stack)
            for window in _windows(frames, batch_size, context):
                for item, result in zip(window.centre, _infer(run, window, enhancer),
                                        strict=True):
                    assert item.frame is not None
                    derived.put(item.frame, _stored(item, result, derivation.scale))
        outcome.written.append(sink(derived.dataset()))  # a sink may refuse with DeriveError
    except (InputRejected, DeriveError) as exc:
        outcome.rejected.append((image.path, str(exc)))
        event(log, "image_rejected", logging.WARNING, sop_uid=image.sop_instance_uid,
              reason=str(exc))
        return
    event(log, "object_enhanced", sop_uid=image.sop_instance_uid,
          frames=source.number_of_frames)


def _content_refusal(source: MultiFrame, card: ModelCard) -> str | None:
    """A CT model works in Hounsfield units: frames that say they hold another quantity (a
    perfusion map's Rescale Type) are not its input."""
    if card.normalisation_spec.method != "hu":
        return None
    other = sorted({f.rescale_type for f in source.frames if f.rescale_type not in ("", "HU")})
    if not other:
        return None
    image_type = "\\".join(str(v) for v in source.header.get("ImageType", []) or [])
    return (f"the frames hold {', '.join(repr(t) for t in other)} values, not Hounsfield "
            f"units (Rescale Type of the Pixel Value Transformation; Image Type "
            f"{image_type or 'missing'}): model {card.name!r} works on CT in HU; route this "
            "series to no rule, or to a model for its values")


def _infer(run: Callable[[np.ndarray], np.ndarray], window: _Window,
           enhancer: Enhancer) -> np.ndarray:
    output = np.asarray(run(window.stack), dtype=np.float64)
    if len(output) != len(window.centre):
        raise DeriveError(f"model {enhancer.card.name!r} returned {len(output)} slice(s) "
                          f"for {len(window.centre)}")
    return output


def _stored(item: _Slice, result: np.ndarray, scale: int) -> np.ndarray:
    """A model's output back to the source's stored values, declared padding put back."""
    # MONOCHROME1 was negated when decoded: negate back before storing.
    values = -result if item.fmt.inverted else result
    stored = stored_values(values, item.fmt)
    if item.padded_stored is not None:
        stored = keep_padding(item.ds, item.padded_stored, stored, scale)
    return stored


def difference_values(item: _Slice, stored: np.ndarray, scale: int) -> np.ndarray:
    """Derived minus source in modality values on the derived grid: the source resampled as
    the bicubic baseline does for super-resolution; zero where the source declares padding."""
    derived = stored.astype(np.float64) * item.fmt.slope + item.fmt.intercept
    source = -item.values if item.fmt.inverted else item.values
    if scale > 1:
        source = bicubic_upscale(source, scale)
    difference = derived - np.asarray(source, dtype=np.float64)
    if item.padded_stored is not None:
        mask = padding_mask(item.ds, item.padded_stored)
        if mask is not None:
            if scale > 1:
                mask = np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)
            difference[mask] = 0.0
    return difference


def series_sample(series: Series, count: int = SAMPLE_SLICES) -> list[np.ndarray]:
    """Up to ``count`` evenly spaced slices of ``series`` ("bright = high" modality values).

    The cheap first pass for series statistics; an Enhanced object counts as its frames (read
    once per object, whatever the number of picks in it). An image that cannot be decoded is
    left out here and refused, with its reason, when the series is processed.
    """
    sizes = [image.frames if is_enhanced(image.sop_class_uid) else 1 for image in series.images]
    total = sum(sizes)
    if not total:
        return []
    picks = sample_indices(total, count)  # as training's evaluation (engine.volume)
    starts = np.cumsum([0, *sizes])
    wanted: dict[int, list[int]] = {}
    for pick in picks:
        at = int(np.searchsorted(starts, pick, side="right")) - 1
        wanted.setdefault(at, []).append(int(pick - starts[at]))
    sample = []
    for at, ordinals in wanted.items():
        image = series.images[at]
        try:
            if not is_enhanced(image.sop_class_uid):
                sample.append(_load(image).network)
                continue
            source = read_multiframe(image.path)
            for ordinal in ordinals:
                if ordinal < source.number_of_frames:
                    sample.append(_load_frame(image, source, source.frames[ordinal]).network)
        except InputRejected:
            continue
    return sample


def _decoded(images: list[SourceImage], outcome: SeriesOutcome,
             on_image: Callable[[], None] | None) -> Iterator[_Slice]:
    """The usable slices in series order; refused ones are recorded (and ticked) on the way."""
    for image in images:
        try:
            yield _load(image)
        except InputRejected as exc:
            outcome.rejected.append((image.path, str(exc)))
            event(log, "image_rejected", logging.WARNING, sop_uid=image.sop_instance_uid,
                  reason=str(exc))
            _tick(on_image)


def _windows(slices: Iterable[_Slice], size: int, context: int) -> Iterator[_Window]:
    """Chunks of up to ``size`` consecutive same-size slices, each with ``context`` neighbours.

    A slice's neighbours are the adjacent usable slices of the same size; at the ends of the
    series (or of a run of one size) the end slice is repeated. One chunk's lookahead slices
    are the next chunk's first ones, so every slice is decoded once.
    """
    before: list[_Slice] = []  # the last `context` slices already emitted, same run
    pending: list[_Slice] = []
    shape: tuple[int, ...] | None = None
    for item in slices:
        if shape is not None and item.values.shape != shape:
            yield from _drain(before, pending, size, context)
            before, pending = [], []
        shape = item.values.shape
        pending.append(item)
        if len(pending) == size + context:
            yield _window(before, pending[:size], pending[size:], context)
            before = _last(before + pending[:size], context)
            pending = pending[size:]
    yield from _drain(before, pending, size, context)


def _drain(before: list[_Slice], pending: list[_Slice], size: int,
           context: int) -> Iterator[_Window]:
    while pending:
        centre, rest = pending[:size], pending[size:]
        yield _window(before, centre, rest[:context], context)
        before = _last(before + centre, context)
        pending = rest


def _window(before: list[_Slice], centre: list[_Slice], after: list[_Slice],
            context: int) -> _Window:
    left = _last(before, context)
    right = after[:context]
    arrays = [s.network for s in (*left, *centre, *right)]
    arrays = [arrays[0]] * (context - len(left)) + arrays + [arrays[-1]] * (context - len(right))
    return _Window(centre, np.stack(arrays))


def _last(items: list[_Slice], count: int) -> list[_Slice]:
    """The last ``count`` items; none for 0 (where ``items[-0:]`` would give them all)."""
    return items[-count:] if count else []


def _series_refusal(series: Series, card: ModelCard) -> str | None:
    header = series.header
    if produced_by_dicomnode(header):
        return "series was produced by dicomnode: stored, not processed again"
    modality = str(header.get("Modality", "") or "").upper()
    if not card.accepts_modality(modality):
        return (f"model {card.name!r} is for modalities {', '.join(card.modalities)}; "
                f"series Modality is {modality or 'missing'!r}")
    return None


def _load(image: SourceImage) -> _Slice:
    try:
        ds = image.read()
        for _ in ds.iterall():  # pydicom converts values lazily: meet malformed ones here
            pass
    except Exception as exc:  # a file damaged after the header scan, or a malformed value
        raise InputRejected(f"cannot read {image.path.name}: {type(exc).__name__}: {exc}") from exc
    return _decode(image, ds)


def _load_frame(image: SourceImage, source: MultiFrame, frame: Frame) -> _Slice:
    """One frame of an Enhanced object, checked and decoded as a single image would be."""
    try:
        return _decode(image, source.frame_dataset(frame), frame)
    except InputRejected as exc:
        raise InputRejected(f"frame {frame.number}: {exc}") from None


def _decode(image: SourceImage, ds: Dataset, frame: Frame | None = None) -> _Slice:
    fmt = pixel_format(ds)
    modality = modality_values(ds, fmt)
    # MONOCHROME1 is shown inverted: negate so models always see "bright = high".
    values = -modality if fmt.inverted else modality
    padded = stored_values(modality, fmt) if padding_range(ds) is not None else None
    fill = padded is not None and fills_padding(str(ds.get("Modality", "") or ""))
    mask = padding_mask(ds, padded) if fill else None
    network = values if mask is None else fill_padding(values, mask)
    return _Slice(image, ds, fmt, values, network, padded, frame)


def _tick(callback: Callable[[], None] | None) -> None:
    if callback is not None:
        callback()
