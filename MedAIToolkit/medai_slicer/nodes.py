"""Engine records <-> MRML nodes (volumes, labelmaps, segmentations, transforms).

Works in the Slicer application and on a bare ``slicer.vtkMRMLScene`` from the slicer-core wheel: it uses
only MRML classes and static module-logic methods, never ``slicer.app``. Every function creates NEW nodes;
none modifies a node it is given.
"""
from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from medai.errors import MedAIInputError
from medai.geometry import Geometry
from medai.io import Volume

_SEG_LOGIC = slicer.vtkSlicerSegmentationsModuleLogic


def _vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def _numpy_matrix(vmatrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[vmatrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras_of(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return _numpy_matrix(m)


def _image_data(array: np.ndarray) -> vtk.vtkImageData:
    array = np.ascontiguousarray(array)
    image = vtk.vtkImageData()
    k, j, i = array.shape
    image.SetDimensions(i, j, k)
    vtk_array = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    image.GetPointData().SetScalars(vtk_array)
    return image


def volume_to_node(scene, volume: Volume, name: str, node_class: str = "vtkMRMLScalarVolumeNode"):
    """Create a NEW volume node (scalar or labelmap) holding a copy of ``volume`` at its physical place."""
    node = scene.AddNewNodeByClass(node_class, scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(_vtk_matrix(volume.geometry.ijk_to_ras()))
    node.SetAndObserveImageData(_image_data(volume.array))
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None and node_class == "vtkMRMLScalarVolumeNode":
        display.AutoWindowLevelOn()
    for key in ("modality", "series_description", "series_uid"):
        if volume.meta.get(key):
            node.SetAttribute(f"MedAI.{key}", str(volume.meta[key]))
    return node


def node_to_volume(node) -> Volume:
    """Copy of a volume node's voxels and geometry (parent transforms are NOT applied)."""
    image = node.GetImageData() if node is not None else None
    if image is None or image.GetNumberOfPoints() == 0:
        raise MedAIInputError(f"volume node '{node.GetName() if node else None}' has no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise MedAIInputError(f"volume node '{node.GetName()}' has {image.GetNumberOfScalarComponents()} components; a scalar volume is needed")
    i, j, k = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i).copy()
    meta = {"name": node.GetName(), "modality": node.GetAttribute("MedAI.modality") or ""}
    return Volume(array, Geometry.from_ijk_to_ras(ijk_to_ras_of(node)), meta)


def _oriented_image(array: np.ndarray, geometry: Geometry):
    image = slicer.vtkOrientedImageData()
    image.ShallowCopy(_image_data(array))
    image.SetImageToWorldMatrix(_vtk_matrix(geometry.ijk_to_ras()))
    return image


def labelmap_to_segmentation(scene, labelmap: Volume, labels: dict[int, tuple[str, tuple[float, float, float]]],
                             name: str, reference_node=None):
    """Create a NEW segmentation node with one named, coloured segment per label value.

    ``labels`` maps a label value to ``(segment name, (r, g, b) in 0-1)``; values absent from the map are
    ignored, absent values give empty segments. Segment ids are the segment names; each segment keeps its
    value in the ``MedAI.LabelValue`` tag. The segmentation's geometry is the labelmap's.
    """
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    seg_node.CreateDefaultDisplayNodes()
    if reference_node is not None:
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    segmentation = seg_node.GetSegmentation()
    segmentation.SetSourceRepresentationName(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    for value, (segment_name, color) in labels.items():
        segment = slicer.vtkSegment()
        segment.SetName(segment_name)
        segment.SetColor(*[float(c) for c in color])
        segment.SetTag("MedAI.LabelValue", str(int(value)))
        mask = (labelmap.array == value).astype(np.uint8)
        segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(),
                                  _oriented_image(mask, labelmap.geometry))
        segmentation.AddSegment(segment, segment_name)
    return seg_node


def segment_to_array(scene, seg_node, segment_name: str, geometry: Geometry, shape_kji) -> np.ndarray:
    """Binary uint8 mask ``[k, j, i]`` of one segment, resampled on ``geometry`` (exact when grids match)."""
    segmentation = seg_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(segment_name)
    if not segment_id:
        raise MedAIInputError(f"segmentation '{seg_node.GetName()}' has no segment named '{segment_name}'")
    reference = volume_to_node(scene, Volume(np.zeros(shape_kji, np.uint8), geometry), "MedAI temp reference")
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "MedAI temp export")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not _SEG_LOGIC.ExportSegmentsToLabelmapNode(seg_node, ids, labelmap, reference):
            raise MedAIInputError(f"segment '{segment_name}' could not be exported")
        exported = node_to_volume(labelmap)
    finally:
        scene.RemoveNode(reference)
        scene.RemoveNode(labelmap)
    if exported.array.shape != tuple(shape_kji) or not exported.geometry.allclose(geometry, 1e-3):
        raise MedAIInputError("exported segment does not lie on the requested grid")
    return (exported.array > 0).astype(np.uint8)


def segmentation_to_labelmap(scene, seg_node, geometry: Geometry, shape_kji) -> np.ndarray:
    """uint8/uint16 label array on ``geometry``: each segment painted with its ``MedAI.LabelValue`` tag
    (or its 1-based index when untagged); later segments win where segments overlap."""
    segmentation = seg_node.GetSegmentation()
    n = segmentation.GetNumberOfSegments()
    out = np.zeros(shape_kji, dtype=np.uint16 if n > 255 else np.uint8)
    for index in range(n):
        segment = segmentation.GetNthSegment(index)
        tag = vtk.mutable("")
        value = int(str(tag)) if segment.GetTag("MedAI.LabelValue", tag) else index + 1
        mask = segment_to_array(scene, seg_node, segment.GetName(), geometry, shape_kji)
        out[mask > 0] = value
    return out


def matrix_to_transform_node(scene, matrix_ras: np.ndarray, name: str):
    """NEW linear transform node holding a 4x4 RAS matrix (ToParent)."""
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", scene.GenerateUniqueName(name))
    node.SetMatrixTransformToParent(_vtk_matrix(np.asarray(matrix_ras, dtype=np.float64)))
    return node


def transform_node_to_matrix(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetMatrixTransformToParent(m)
    return _numpy_matrix(m)
