"""Pixel padding stays exactly padding in a derived image (dicomnode.padding)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicomnode.errors import DeriveError
from dicomnode.padding import keep_padding, padding_range


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
