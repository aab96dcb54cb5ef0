"""MedAIToolkit engine: image I/O, geometry, DRR rendering, registration, segmentation, diagnosis.

Pure Python (numpy / torch / MONAI / SimpleITK / pydicom); it never imports ``slicer`` or ``qt``.
"""
from .errors import MedAIInputError, MedAIModelError
from .geometry import LPS_TO_RAS, Geometry

__version__ = "0.1.0"
__all__ = ["Geometry", "LPS_TO_RAS", "MedAIInputError", "MedAIModelError", "__version__"]
