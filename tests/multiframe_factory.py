"""Enhanced CT objects built from the real CT slices of tests/data, for tests and bench/.

No scanner sample of Enhanced CT with an anatomical image is redistributable here (the NEMA one
is a perfusion map), so this builds one: the real slices' stored pixels repeated as frames
along the slice normal, geometry and rescale in functional groups as PS3.3 A.38 lays them out.
The CT acquisition macros (exposure, geometry, reconstruction ...) are left out: dciodvfy
reports them missing in the source, and the derived object is judged against its source.
``shuffle`` stores the frames out of spatial order, as nothing in the standard forbids.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
UID_ROOT = "1.2.826.0.1.3680043.10.6.17"
_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "AccessionNumber", "StudyID",
    "Manufacturer", "ManufacturerModelName", "InstitutionName", "FrameOfReferenceUID",
    "PositionReferenceIndicator", "PatientPosition", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "Rows", "Columns", "PixelPaddingValue", "KVP", "SoftwareVersions",
    "DeviceSerialNumber",
)


def enhanced_ct(slice_paths: Sequence[Path], frames: int, shuffle: bool = False,
                name: str = "ct") -> Dataset:
    """An Enhanced CT Image of ``frames`` 512x512 frames from ``slice_paths`` (repeated)."""
    slices = [pydicom.dcmread(p) for p in slice_paths]
    first = slices[0]
    orientation = [float(v) for v in first.ImageOrientationPatient]
    normal = np.cross(orientation[:3], orientation[3:])
    slices.sort(key=lambda s: float(np.dot(normal, [float(v) for v in s.ImagePositionPatient])))
    positions = np.array([[float(v) for v in s.ImagePositionPatient] for s in slices])
    step = (positions[-1] - positions[0]) / max(len(slices) - 1, 1)
    order = np.arange(frames)
    if shuffle:
        order = np.random.default_rng(17).permutation(frames)

    ds = Dataset()
    for keyword in _COPIED:
        if keyword in first:
            ds[keyword] = first[keyword]
    ds.SOPClassUID = ENHANCED_CT
    ds.SOPInstanceUID = f"{UID_ROOT}.2.{frames}.{int(shuffle)}.{zlib.crc32(name.encode())}"
    ds.SeriesInstanceUID = f"{UID_ROOT}.1.{frames}.{int(shuffle)}.{zlib.crc32(name.encode())}"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = "CT", 17, 1, 1
    ds.SeriesDescription = f"enhanced {name} {frames} frames"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    date = str(first.get("StudyDate", "") or "20000101")
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = date, "120000", f"{date}120000"
    ds.AcquisitionDuration, ds.AcquisitionContextSequence = 1.0, DicomSequence([])
    for keyword in ("PatientBirthDate", "PatientSex"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.DeviceSerialNumber = str(first.get("DeviceSerialNumber", "") or "unknown")
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.PixelPresentation, ds.VolumetricProperties = "MONOCHROME", "VOLUME"
    ds.VolumeBasedCalculationTechnique, ds.ContentQualification = "NONE", "PRODUCT"
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    ds.PresentationLUTShape = "IDENTITY"
    organisation = f"{UID_ROOT}.3.{frames}"
    ds.DimensionOrganizationSequence = DicomSequence([_item(DimensionOrganizationUID=organisation)])
    ds.DimensionIndexSequence = DicomSequence([
        _item(DimensionOrganizationUID=organisation, DimensionIndexPointer=0x00209056,
              FunctionalGroupPointer=0x00209111),
        _item(DimensionOrganizationUID=organisation, DimensionIndexPointer=0x00209057,
              FunctionalGroupPointer=0x00209111),
    ])
    frame_type = _item(FrameType=list(ds.ImageType), PixelPresentation="MONOCHROME",
                       VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE")
    shared = _item(
        PixelMeasuresSequence=DicomSequence([_item(
            PixelSpacing=list(first.PixelSpacing), SliceThickness=first.SliceThickness)]),
        PlaneOrientationSequence=DicomSequence([_item(
            ImageOrientationPatient=list(first.ImageOrientationPatient))]),
        PixelValueTransformationSequence=DicomSequence([_item(
            RescaleIntercept=first.get("RescaleIntercept", 0),
            RescaleSlope=first.get("RescaleSlope", 1), RescaleType="HU")]),
        CTImageFrameTypeSequence=DicomSequence([frame_type]),
        FrameVOILUTSequence=DicomSequence([_item(WindowCenter=40, WindowWidth=400)]),
        FrameAnatomySequence=DicomSequence([_item(
            AnatomicRegionSequence=DicomSequence([_item(
                CodeValue="69536005", CodingSchemeDesignator="SCT", CodeMeaning="Head")]),
            FrameLaterality="U")]),
    )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for stored_at in range(frames):
        k = int(order[stored_at])  # the frame stored here lies k steps along the normal
        position = positions[0] + k * step
        per_frame.append(_item(
            FrameContentSequence=DicomSequence([_item(
                StackID="1", InStackPositionNumber=k + 1, DimensionIndexValues=[1, k + 1],
                FrameAcquisitionNumber=1, FrameAcquisitionDateTime=f"{date}120000",
                FrameReferenceDateTime=f"{date}120000", FrameAcquisitionDuration=1.0)]),
            PlanePositionSequence=DicomSequence([_item(
                ImagePositionPatient=[round(float(v), 4) for v in position])]),
        ))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    stored = [s.pixel_array.astype(s.pixel_array.dtype.newbyteorder("<")) for s in slices]
    ds.PixelData = b"".join(stored[int(order[i]) % len(stored)].tobytes()
                            for i in range(frames))
    ds["PixelData"].VR = "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item
