"""File I/O: DICOM series and volume files -> :class:`Volume`; X-ray files -> :class:`XRayImage`."""
from .dicom import is_dicom_file, list_series, read_dicom_series
from .dicom_write import write_xray_dicom
from .volume import (
    Volume, check_hounsfield, check_image_values, has_volume_suffix, read_volume, resample_like, resample_to_slice_grid,
    resample_volume, write_volume,
)
from .xray import XRayImage, read_xray
from .info import describe

__all__ = [
    "Volume", "XRayImage", "check_hounsfield", "check_image_values", "describe", "has_volume_suffix",
    "is_dicom_file",
    "list_series", "read_dicom_series", "read_volume", "resample_like", "resample_to_slice_grid", "resample_volume", "read_xray", "write_volume", "write_xray_dicom",
]
