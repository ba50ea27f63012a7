"""dicomnode: a DICOM processing node that enhances images and returns derived series."""

from __future__ import annotations

import logging

__version__ = "0.1.0"

MANUFACTURER = "dicomnode"
# Our own UID root for the implementation (a UUID-derived 2.25 UID, ISO/IEC 9834-8), fixed
# once so that peers and logs can recognise this software across versions.
IMPLEMENTATION_CLASS_UID = "2.25.4001310241037794682220289252957269846"
IMPLEMENTATION_VERSION_NAME = f"DICOMNODE_{__version__}"[:16]

logging.getLogger(__name__).addHandler(logging.NullHandler())
