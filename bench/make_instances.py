"""Write N single-frame 512x512 CT instances (one series) for the ingest benchmark.

Copies of the tilted-gantry head CT slices in tests/data with fresh, deterministic UIDs and
distinct positions (2 mm apart), so that every instance is a real image of realistic size
(~0.5 MB) and the series is a plausible stack.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "tests" / "data" / "ct_ge_hispeed_head_tilt_6sl"
ROOT = "1.2.826.0.1.3680043.10.543"  # bench-only UIDs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args(argv)
    sources = [pydicom.dcmread(p) for p in sorted(SOURCE.glob("*.dcm"))]
    args.out.mkdir(parents=True, exist_ok=True)
    series_uid = f"{ROOT}.1.{args.count}"
    for i in range(args.count):
        ds = sources[i % len(sources)]
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = f"{ROOT}.2.{i + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1], round(-300.0 + 2.0 * i, 3)]
        ds.SliceLocation = ds.ImagePositionPatient[2]
        ds.save_as(args.out / f"{i + 1:05d}.dcm", enforce_file_format=True)
    print(f"wrote {args.count} instances to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
