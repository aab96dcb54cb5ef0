"""MRML side of MedAIToolkit: engine records <-> Slicer nodes. Imports ``slicer`` (slicer-core or the app)."""
from .loading import XRAY_DIRECTION_LPS, load_volume_node, load_xray_node, xray_to_volume
from .nodes import (
    ijk_to_ras_of, labelmap_to_segmentation, matrix_to_transform_node, node_to_volume, segment_to_array,
    segmentation_to_labelmap, transform_node_to_matrix, volume_to_node,
)

__all__ = [
    "XRAY_DIRECTION_LPS", "load_volume_node", "load_xray_node", "xray_to_volume",
    "ijk_to_ras_of", "labelmap_to_segmentation", "matrix_to_transform_node", "node_to_volume",
    "segment_to_array", "segmentation_to_labelmap", "transform_node_to_matrix", "volume_to_node",
]
