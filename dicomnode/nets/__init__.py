"""Network architectures, registered by name so that the node and training build the same nets.

See ``docs/ARCHITECTURES.md`` for the families, their papers, sizes and costs, and
``dicomnode.nets.flops.count_macs`` for counting a network's multiply-accumulates.
"""

from dicomnode.nets.registry import (
    ARCHITECTURES,
    ArchitectureInfo,
    build_network,
    image_border,
    list_architectures,
)

__all__ = [
    "ARCHITECTURES",
    "ArchitectureInfo",
    "build_network",
    "image_border",
    "list_architectures",
]
