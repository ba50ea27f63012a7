"""The device, precision and runtime names the engine accepts, as plain constants.

``check-config`` (``dicomnode.config``) validates ``[worker] device``, ``precision`` and
``runtime`` with them, and the engine's device and card code checks the same names; kept in a
module that imports nothing of ours, so the configuration (loaded by the C-STORE path too)
names them without loading the engine, torch or any model code.
"""

from __future__ import annotations

import re

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)\Z")  # \Z: no trailing newline
PRECISIONS = ("fp32", "fp16", "bf16")
"""Number formats a network can run in (a card lists those it was validated in)."""
PRECISION_CHOICES = ("auto", *PRECISIONS)
"""What ``[worker] precision`` and ``--precision`` accept: ``auto`` picks among the card's."""
RUNTIMES = ("torch", "onnxruntime")
"""What computes a network's forward passes: torch, or ONNX Runtime (CPU devices only)."""
RUNTIME_CHOICES = ("auto", *RUNTIMES)
"""What ``[worker] runtime`` and ``--runtime`` accept: ``auto`` measures both at load."""
