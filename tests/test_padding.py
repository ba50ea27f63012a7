"""Pixel padding stays exactly padding in a derived image (dicomnode.padding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicomnode.errors import DeriveError
from dicomnode.padding import (
    fill_padding,
    fills_padding,
    keep_padding,
    padding_mask,
    padding_range,
)
from tests.conftest import CT_TILT_DIR, read_back


def _source(**attributes: object) -> Dataset:
    ds = Dataset()
    ds.PixelRepresentation = 1
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_padding_range_reads_value_limit_and_raw_bytes():
    assert padding_range(_source()) is None
    assert padding_range(_source(PixelPaddingValue=-1500)) == (-1500, -1500)
    # the limit may be on either side of the value (PS3.3 C.7.5.1.1.2)
    assert padding_range(_source(PixelPaddingValue=-1000, PixelPaddingRangeLimit=-2000)) == (
        -2000, -1000)
    raw = _source()
    raw.add_new(0x00280120, "OB", (-1500).to_bytes(2, "little", signed=True))  # VR unresolved
    assert padding_range(raw) == (-1500, -1500)


def test_denoised_padding_is_put_back_exactly():
    source = np.full((6, 6), -1500, dtype=np.int16)
    source[1:5, 1:5] = 40
    output = source + np.int16(3)  # a network that nudged every pixel
    kept = keep_padding(_source(PixelPaddingValue=-1500), source, output, 1)
    assert np.array_equal(kept[source == -1500], source[source == -1500])
    assert np.array_equal(kept[source != -1500], output[source != -1500])
    untouched = keep_padding(_source(), source, output, 1)  # no padding declared
    assert untouched is output


def test_super_resolved_padding_blocks_are_padding():
    source = np.array([[-3024, 10], [20, -3024]], dtype=np.int16)
    output = np.arange(16, dtype=np.int16).reshape(4, 4)
    kept = keep_padding(_source(PixelPaddingValue=-3024), source, output, 2)
    assert np.array_equal(kept[:2, :2], np.full((2, 2), -3024))
    assert np.array_equal(kept[2:, 2:], np.full((2, 2), -3024))
    assert np.array_equal(kept[:2, 2:], output[:2, 2:]) and np.array_equal(kept[2:, :2],
                                                                           output[2:, :2])
    with pytest.raises(DeriveError, match="expected"):
        keep_padding(_source(PixelPaddingValue=-3024), source, output[:3], 2)


def test_fill_padding_mirrors_the_image_across_the_padding_edge():
    """A padding pixel takes the value of the image point mirrored across the nearest image
    pixel: no step is left for a network to treat as an edge."""
    rows = np.arange(12, dtype=np.float64)[:, None] * np.ones((1, 5))
    values = rows * 10.0 + np.arange(5)  # every pixel unique
    mask = np.zeros(values.shape, dtype=bool)
    mask[8:] = True  # the bottom four rows are padding
    values[mask] = -1500.0
    filled = fill_padding(values, mask)
    assert np.array_equal(filled[~mask], values[~mask])  # the image itself is untouched
    for row in range(8, 12):  # row 8 mirrors row 6 across row 7, row 11 mirrors row 3
        assert np.array_equal(filled[row], values[14 - row])
    assert not np.any(filled == -1500.0)
    # where the mirror point is padding or off the slice, the nearest image pixel's value
    thin = np.zeros((4, 4), dtype=bool)
    thin[:, 1:] = True
    filled = fill_padding(np.where(thin, -1500.0, 7.0), thin)
    assert np.all(filled == 7.0)
    assert np.array_equal(fill_padding(values, np.ones_like(mask)), values)  # all padding


def test_fill_leaves_padding_valued_pixels_inside_the_body_alone():
    """Air clipped to a declared -1024 inside the body (lung, bowel gas) is anatomy: only the
    padding that reaches the slice's border (outside the reconstruction circle) is filled."""
    values = np.full((20, 20), 40.0)
    values[:, :3] = -1024.0  # outside the circle, touching the border
    values[9:12, 9:12] = -1024.0  # an air pocket inside the body
    mask = values == -1024.0
    filled = fill_padding(values, mask)
    assert np.all(filled[9:12, 9:12] == -1024.0)
    assert np.all(filled[:, :3] == 40.0)
    pocket_only = np.zeros_like(mask)
    pocket_only[9:12, 9:12] = True
    assert np.array_equal(fill_padding(values, pocket_only), values)


def test_padding_mask_only_for_declared_padding_that_is_present():
    stored = np.array([[-1500, 3], [4, -1500]], dtype=np.int16)
    assert padding_mask(_source(), stored) is None
    assert padding_mask(_source(PixelPaddingValue=-3024), stored) is None
    mask = padding_mask(_source(PixelPaddingValue=-1500), stored)
    assert mask is not None and mask.tolist() == [[True, False], [False, True]]


class _Seen:
    """An identity enhancer (the whole ``Enhancer`` protocol) that keeps what it was shown."""

    context = 0
    needs_sample = False

    def __init__(self, card) -> None:  # type: ignore[no-untyped-def]
        self.card = card
        self.stacks: list[np.ndarray] = []

    def for_series(self, sample):  # type: ignore[no-untyped-def]
        return self

    def __call__(self, stack: np.ndarray) -> np.ndarray:
        self.stacks.append(stack.copy())
        return stack


def test_the_network_sees_no_padding_and_the_output_keeps_it_exactly(tmp_path):
    """The node fills a CT's declared padding (-1500 outside the reconstruction circle) before
    the network and puts it back exactly after."""
    import pydicom

    from dicomnode.engine.cards import load_card
    from dicomnode.enhance import derivation_for, enhance_series
    from dicomnode.series import scan

    card = load_card("nlm-denoise")
    seen = _Seen(card)
    (series,) = scan(CT_TILT_DIR).series
    written: list = []
    enhance_series(series, seen, derivation_for(card, "t", " [t]"),
                   lambda ds: written.append(read_back(ds)) or Path(ds.SOPInstanceUID),
                   batch_size=8)
    shown = np.concatenate(seen.stacks)
    assert len(shown) == len(written) == 6
    assert shown.min() > -1100.0  # air at most: no -1500 step anywhere
    for ds in written:
        source = pydicom.dcmread(next(p for p in series.images if p.sop_instance_uid ==
                                      ds.SourceImageSequence[0].ReferencedSOPInstanceUID).path)
        padding = source.pixel_array == source.PixelPaddingValue
        assert padding.mean() > 0.1
        assert np.array_equal(ds.pixel_array[padding], source.pixel_array[padding])
        assert np.array_equal(ds.pixel_array[~padding], source.pixel_array[~padding])


def test_only_a_ct_padding_is_filled():
    """A CT's padding is outside the reconstruction circle; an MR may declare its dark
    background as padding, where mirroring the head into it would mislead the network."""
    assert fills_padding("CT")
    assert not fills_padding("MR")
    assert not fills_padding("")
