"""Write 2D X-ray images (e.g. DRRs) as valid DICOM with the projection-geometry tags filled."""
from __future__ import annotations

import datetime

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ..errors import MedAIInputError

SOP_CLASS = {
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image Storage
    "RF": "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image Storage
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
}


def write_xray_dicom(path: str, pixels: np.ndarray, pixel_spacing_mm: tuple[float, float], modality: str = "XA",
                     distance_source_to_detector_mm: float | None = None,
                     distance_source_to_patient_mm: float | None = None,
                     primary_angle_deg: float | None = None, secondary_angle_deg: float | None = None,
                     photometric: str = "MONOCHROME2", bits: int = 16, description: str = "MedAI DRR",
                     extra: dict | None = None) -> None:
    """Write ``pixels`` ``(H, W)`` or ``(F, H, W)`` as an unsigned-integer DICOM image.

    Float input is mapped linearly to the full ``bits`` range; ``RescaleSlope/Intercept`` record the
    mapping so readers recover the original values. ``extra`` adds keyword -> value tags.
    """
    if modality not in SOP_CLASS:
        raise MedAIInputError(f"unsupported modality {modality}; choose one of {sorted(SOP_CLASS)}")
    pixels = np.asarray(pixels)
    if pixels.ndim not in (2, 3) or pixels.size == 0:
        raise MedAIInputError(f"expected a (H, W) or (F, H, W) image, got shape {pixels.shape}")
    if not np.all(np.isfinite(pixels)):
        raise MedAIInputError("image contains NaN or infinite values; nothing written")
    dtype = np.uint16 if bits > 8 else np.uint8
    max_stored = 2**bits - 1
    if np.issubdtype(pixels.dtype, np.floating) or pixels.min() < 0 or pixels.max() > max_stored:
        low, high = float(pixels.min()), float(pixels.max())
        slope = (high - low) / max_stored if high > low else 1.0
        stored = np.round((pixels - low) / slope).astype(dtype)
        intercept = low
    else:
        stored, slope, intercept = pixels.astype(dtype), 1.0, 0.0

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    now = datetime.datetime.now()
    ds.SOPClassUID = SOP_CLASS[modality]
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.PatientName = "Anonymous"
    ds.PatientID = "MEDAI"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.BitsAllocated = 16 if dtype == np.uint16 else 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{slope:.10g}"
    ds.RescaleIntercept = f"{intercept:.10g}"
    ds.ImagerPixelSpacing = [f"{float(pixel_spacing_mm[0]):.10g}", f"{float(pixel_spacing_mm[1]):.10g}"]
    if distance_source_to_detector_mm is not None:
        ds.DistanceSourceToDetector = f"{float(distance_source_to_detector_mm):.10g}"
    if distance_source_to_patient_mm is not None:
        ds.DistanceSourceToPatient = f"{float(distance_source_to_patient_mm):.10g}"
    if primary_angle_deg is not None:
        ds.PositionerPrimaryAngle = f"{float(primary_angle_deg):.10g}"
    if secondary_angle_deg is not None:
        ds.PositionerSecondaryAngle = f"{float(secondary_angle_deg):.10g}"
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
