"""Mutations of valid datasets and the properties they must not break.

Shared by the short CI run (``test_fuzz.py``) and the long one (``bench/fuzz.py``).

- ``mutated_file``: byte-level (truncate, flip, insert, delete, rewrite a length field) or
  element-level (an attribute set to an arbitrary value or removed, through pydicom) mutations
  of real files from tests/data.
- ``check_store``: ``Receiver.handle_store`` answers a status from the allowed set, never raises,
  stores byte for byte what it accepted, and the spool invariants hold.
- ``check_reader``: the series reader (``scan_files``, ``pixel_format``, ``modality_values``) and
  the whole enhance path raise nothing but domain errors.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from functools import cache
from pathlib import Path

import pydicom
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from dicomnode.derive import Derivation
from dicomnode.engine import Enhancer
from dicomnode.engine import load as load_model
from dicomnode.enhance import derivation_for, enhance_series
from dicomnode.errors import DicomNodeError, InputRejected
from dicomnode.files import encode_dataset
from dicomnode.pixels import modality_values, pixel_format
from dicomnode.scp import Receiver
from dicomnode.series import scan_files
from dicomnode.spool import Spool
from dicomnode.structure import parse_header, part10_header
from tests.hostile import corpus
from tests.hostile.corpus import Part10, lenient
from tests.hostile.harness import SpoolChecker, status_of, store_event

ALLOWED_STATUSES = {0x0000, 0xA700, 0xA900, 0xC210}

KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames", "PlanarConfiguration",
    "RescaleSlope", "RescaleIntercept", "PixelSpacing", "ImagePositionPatient",
    "ImageOrientationPatient", "SliceThickness", "InstanceNumber", "SeriesNumber",
    "SpecificCharacterSet", "PatientName", "WindowCenter", "ImageType", "SeriesDescription",
    "PixelData", "LossyImageCompression", "ReferencedImageSequence",
)
SPECIAL_NUMBERS = ("0", "-1", "nan", "inf", "-inf", "1e308", "65535", "4294967295", "1.5", "",
                   "abc", "1\\2\\3", " 7 ")


@cache
def seeds() -> tuple[Part10, ...]:
    """Small and real files: a 32 x 32 MR, a full Siemens MR slice, J2K, RLE, Implicit VR."""
    small = corpus.part10(corpus.small_mr("fuzz-small"), "small.dcm")
    full = corpus.base("fuzz-full")
    j2k = corpus.encoded("fuzz-j2k", "9.dcm").files[0]
    rle = corpus.encoded("fuzz-rle", "4.dcm").files[0]
    implicit = corpus.part10(corpus.small_mr("fuzz-implicit"), "implicit.dcm",
                             transfer_syntax=corpus.IMPLICIT_LE)
    return (small, small, full, j2k, rle, implicit)


values = st.one_of(
    st.none(),
    st.sampled_from(SPECIAL_NUMBERS),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=70),
    st.binary(max_size=70),
    st.lists(st.one_of(st.floats(allow_nan=True), st.sampled_from(SPECIAL_NUMBERS)),
             max_size=7),
)


@st.composite
def element_mutation(draw: st.DrawFn) -> Part10:
    """One to three attributes of a seed set to arbitrary values (or removed) via pydicom."""
    seed = draw(st.sampled_from(seeds()))
    with lenient():
        ds = pydicom.dcmread(DicomBytesIO(seed.data))
    changes = draw(st.dictionaries(st.sampled_from(KEYWORDS), values, min_size=1, max_size=3))
    try:
        corpus.set_values(ds, changes)
        return corpus.part10(ds, "element.dcm", transfer_syntax=seed.transfer_syntax,
                             sop_class=seed.sop_class, sop_uid=seed.sop_uid)
    except Exception:  # a value even raw encoding cannot hold: not an input we can make
        return draw(st.nothing())


@st.composite
def byte_mutation(draw: st.DrawFn) -> Part10:
    """One to four byte-level edits, biased towards the header where the structure lives."""
    seed = draw(st.sampled_from(seeds()))
    data = bytearray(seed.data)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        header = min(len(data), seed.dataset_offset + 4096)
        at = draw(st.one_of(st.integers(0, header - 1), st.integers(0, len(data) - 1)))
        kind = draw(st.sampled_from(("truncate", "flip", "insert", "delete", "length")))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip":
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        else:  # a 2- or 4-byte length field somewhere gets an absurd value
            width = draw(st.sampled_from((2, 4)))
            value = draw(st.sampled_from((0, 1, 3, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF,
                                          len(data))))
            data[at:at + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    return replace(seed, data=bytes(data), name="bytes.dcm")


mutated_file = st.one_of(byte_mutation(), element_mutation())


class StoreTarget:
    """One spool for a whole run: invariants must hold across every example, cumulatively."""

    def __init__(self, folder: Path) -> None:
        self.receiver = Receiver(folder, min_free_disk_mb=0)
        self.spool = Spool(folder)  # to ask where an accepted instance must be
        self.checker = SpoolChecker(folder)
        self.folder = folder
        self.statuses: dict[int, int] = {}

    def close(self) -> None:
        """Stop the receiver's write-ahead log checkpoint thread and the spool connection."""
        self.receiver.close()
        self.spool.close()


def check_store(target: StoreTarget, part: Part10, request_uid: str | None = None) -> int:
    """The C-STORE handler's property; returns the status it answered."""
    event = store_event(part)
    if request_uid is not None:
        event.request.AffectedSOPInstanceUID = request_uid
    status = status_of(target.receiver.handle_store(event))  # must not raise
    assert status in ALLOWED_STATUSES, f"status 0x{status:04X}"
    target.statuses[status] = target.statuses.get(status, 0) + 1
    if status == 0x0000:
        # What the node stored: its own Part 10 header, then the dataset as received (a
        # mutated preamble or file meta of the sender's file plays no part).
        received = part10_header(str(event.request.AffectedSOPClassUID or ""),
                                 str(event.request.AffectedSOPInstanceUID or ""),
                                 part.transfer_syntax) + part.dataset
        with lenient():
            header = parse_header(received)
        path = target.spool.instance_path(header.series_uid, header.sop_uid)
        assert path.read_bytes().endswith(part.dataset), "stored dataset differs from received"
    problems = target.checker.problems()
    assert not problems, problems
    return status


@cache
def enhancer() -> Enhancer:
    return load_model("bicubic-x2", device="cpu")


@cache
def derivation() -> Derivation:
    return derivation_for(enhancer().card, "fuzz", " [fuzz]")


def check_reader(part: Part10) -> list[str]:
    """The reader's property; returns what became of each image (for statistics)."""
    results = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / part.name
        path.write_bytes(part.data)
        scanned = scan_files([path])  # must not raise: unreadable files are 'skipped'
        results += ["skipped"] * len(scanned.skipped)
        for series in scanned.series:
            for image in series.images:
                try:
                    ds = image.read()
                except Exception:  # pydicom's own errors; enhance turns them into refusals
                    results.append("unreadable")
                    continue
                try:
                    modality_values(ds, pixel_format(ds))
                    results.append("decoded")
                except InputRejected:
                    results.append("refused")
            # The whole enhance path: reading, checks, model, derivation, encoding.
            try:
                outcome = enhance_series(series, enhancer(), derivation(), _encode_only)
            except DicomNodeError:
                continue
            accounted = len(outcome.written) + len(outcome.rejected)
            assert outcome.skipped_reason is not None or accounted == len(series)
    return results


def _encode_only(ds: Dataset) -> Path:
    """A sink that encodes (where a malformed copied value would fail) but writes nothing."""
    encode_dataset(ds)
    return Path(f"{ds.SOPInstanceUID}.dcm")
