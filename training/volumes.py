"""NIfTI and NRRD volumes as training series (SimpleITK), beside DICOM folders.

Many public training sets (IXI, BraTS, TCIA conversions made with dcm2niix) come as NIfTI or
NRRD. SimpleITK reads both with their real intensities (NIfTI's scl_slope / scl_inter applied)
and spacing. These formats carry no patient, modality or series headers, so:

- the folder holding a volume is its patient: every volume in it goes to the same side of a
  split (a TCGA or BraTS case folder holds one subject's sequences); the patient id is that
  folder's name;
- the modality is the one the training config asks for (``modalities``), which must then be a
  single one: a volume cannot say whether it is MR or CT;
- slices are taken across the axis with the largest spacing (the acquisition's slice axis for a
  2D multi-slice scan; the last axis for an isotropic 3D one), in-plane spacing is their mean.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File names SimpleITK reads as volumes here (NIfTI-1/2, NRRD, MetaImage)."""


class VolumeError(ValueError):
    """A volume that cannot be used as training slices (the message says why)."""


def is_volume_file(path: Path) -> bool:
    """True for a file whose name ends in one of :data:`VOLUME_SUFFIXES`."""
    name = path.name.lower()
    return path.is_file() and any(name.endswith(s) for s in VOLUME_SUFFIXES)


def volume_files(folder: Path) -> list[Path]:
    """Volume files under ``folder`` (any depth), sorted, so a run sees them in one order."""
    return sorted(p for p in folder.rglob("*") if is_volume_file(p))


def volume_modality(modalities: Sequence[str] | None, path: Path) -> str:
    """The modality to give a headerless volume: the config's, if it names exactly one."""
    wanted = sorted({m.upper() for m in modalities or ()})
    if len(wanted) != 1:
        raise VolumeError(
            f"{path}: NIfTI/NRRD volumes carry no modality; the training config must name "
            f"exactly one modality to use them (modalities = {wanted or 'not set'})"
        )
    return wanted[0]


def read_volume(path: Path) -> tuple[np.ndarray, float]:
    """(slices, in-plane spacing in mm): (N, H, W) float32 real intensities of a 3D volume.

    Slices run across the axis with the largest spacing (ties: the last axis, as stored).
    A 4D volume (time series, several echoes) or a 2D image is refused: which frames would be
    slices is not knowable from the file.
    """
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as exc:
        raise VolumeError(f"{path}: SimpleITK cannot read it ({str(exc).strip().splitlines()[-1]})"
                          ) from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{path}: a {image.GetDimension()}D image with "
                          f"{image.GetNumberOfComponentsPerPixel()} component(s); expected one "
                          "3D grayscale volume")
    array = sitk.GetArrayFromImage(image)  # (z, y, x): numpy axis 0 is SimpleITK's last axis
    spacing_xyz = image.GetSpacing()
    spacing_zyx = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
    axis = max(range(3), key=lambda a: (spacing_zyx[a], a == 0))
    slices = np.moveaxis(array, axis, 0)
    in_plane = [s for a, s in enumerate(spacing_zyx) if a != axis]
    return np.ascontiguousarray(slices, dtype=np.float32), float(np.mean(in_plane))
