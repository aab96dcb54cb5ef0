"""Registration as MRML nodes: a frame node's C-arm geometry and nominal view, and the NEW result nodes
(registration transform, frame and DRR on the detector plane, trajectory table).

Frame geometry is read from, in order: the "MedAI.carm" attribute (JSON of ``CArmGeometry.to_dict()``, set by
Generate DRR and ``add_frame_node``), then DICOM XA/RF attributes, each as "MedAI.<engine meta key>" or
"DICOM.<keyword>" (e.g. "MedAI.distance_source_to_detector_mm" or "DICOM.DistanceSourceToDetector").
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import vtk

from medai.drr import CArmGeometry, Pose, pose_from_positioner
from medai.geometry import Geometry
from medai.io import Volume

from .loading import xray_to_volume
from .nodes import matrix_to_transform_node, volume_to_node

CARM_ATTRIBUTE = "MedAI.carm"
DICOM_KEYWORDS = {
    "distance_source_to_detector_mm": "DistanceSourceToDetector",
    "distance_source_to_patient_mm": "DistanceSourceToPatient",
    "imager_pixel_spacing_mm": "ImagerPixelSpacing",
    "positioner_primary_angle_deg": "PositionerPrimaryAngle",
    "positioner_secondary_angle_deg": "PositionerSecondaryAngle",
    "pixel_intensity_relationship": "PixelIntensityRelationship",
    "pixel_intensity_relationship_sign": "PixelIntensityRelationshipSign",
}
"""Engine meta keys (``medai.io.read_xray``) and the DICOM keywords they come from."""
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def format_numbers(values) -> str:
    return " ".join(f"{float(v):.10g}" for v in np.asarray(values, dtype=np.float64).ravel())


def frame_attribute(node, key: str) -> str | None:
    """Raw value of a frame attribute: "MedAI.<key>", else "DICOM.<keyword>"; None when absent or empty."""
    for name in (f"MedAI.{key}", f"DICOM.{DICOM_KEYWORDS.get(key, key)}"):
        value = node.GetAttribute(name)
        if value not in (None, "", "None"):
            return value
    return None


def _numbers(text: str | None) -> list[float]:
    return [float(v) for v in _NUMBER.findall(text)] if text else []


def _frame_shape(node) -> tuple[int, int]:
    image = node.GetImageData()
    if image is None:
        return 0, 0
    i, j, _ = image.GetDimensions()
    return j, i


def set_frame_geometry(node, carm: CArmGeometry) -> None:
    node.SetAttribute(CARM_ATTRIBUTE, json.dumps(carm.to_dict()))


def frame_geometry(node) -> tuple[CArmGeometry | None, list[str]]:
    """(C-arm geometry of a one-slice frame node, names of what is missing when it cannot be built)."""
    stored = node.GetAttribute(CARM_ATTRIBUTE)
    if stored:
        return CArmGeometry(**json.loads(stored)), []
    sdd = _numbers(frame_attribute(node, "distance_source_to_detector_mm"))
    sid = _numbers(frame_attribute(node, "distance_source_to_patient_mm"))
    spacing = _numbers(frame_attribute(node, "imager_pixel_spacing_mm"))
    if not spacing and node.GetAttribute("MedAI.pixelSpacingKnown") == "True":
        col_mm, row_mm, _ = node.GetSpacing()
        spacing = [row_mm, col_mm]
    missing = [name for name, value in (("source-detector distance (DistanceSourceToDetector)", sdd),
                                        ("source-isocentre distance (DistanceSourceToPatient)", sid),
                                        ("detector pixel spacing (ImagerPixelSpacing)", spacing)) if not value]
    if missing:
        return None, missing
    row_mm, col_mm = (spacing[0], spacing[0]) if len(spacing) == 1 else spacing[:2]
    height, width = _frame_shape(node)
    return CArmGeometry(sdd[0], sid[0], height, width, row_mm, col_mm), []


def positioner_pose(node) -> Pose | None:
    """Nominal view from the frame's PositionerPrimary/SecondaryAngle attributes; None when it has neither."""
    primary = _numbers(frame_attribute(node, "positioner_primary_angle_deg"))
    secondary = _numbers(frame_attribute(node, "positioner_secondary_angle_deg"))
    if not primary and not secondary:
        return None
    return pose_from_positioner(primary[0] if primary else None, secondary[0] if secondary else None)


def frame_meta(node) -> dict:
    """Intensity tags the engine's ``to_attenuation`` follows (pixel intensity relationship and its sign)."""
    meta = {}
    relationship = frame_attribute(node, "pixel_intensity_relationship")
    sign = _numbers(frame_attribute(node, "pixel_intensity_relationship_sign"))
    if relationship:
        meta["pixel_intensity_relationship"] = relationship
    if sign:
        meta["pixel_intensity_relationship_sign"] = int(sign[0])
    return meta


def add_frame_node(scene, frame, name: str, source_path: str | None = None):
    """NEW one-slice volume node for an engine ``Frame`` (image bright = attenuating), in the coronal plane like
    a radiograph, carrying its C-arm geometry ("MedAI.carm") and positioner angles."""
    carm = frame.carm
    volume = xray_to_volume(frame.image, (carm.row_spacing_mm, carm.col_spacing_mm), {"modality": frame.meta.get("modality")})
    node = volume_to_node(scene, volume, name)
    node.SetAttribute("MedAI.kind", "fluoroscopy")
    set_frame_geometry(node, carm)
    for key in ("positioner_primary_angle_deg", "positioner_secondary_angle_deg"):
        if frame.meta.get(key) is not None:
            node.SetAttribute(f"MedAI.{key}", f"{float(frame.meta[key]):g}")
    if source_path:
        node.SetAttribute("MedAI.sourcePath", os.path.abspath(source_path))
    return node


def add_detector_node(scene, image: np.ndarray, carm: CArmGeometry, ras_to_carm: np.ndarray, name: str):
    """NEW one-slice volume on the detector plane of a C-arm placed by ``ras_to_carm``:
    IJKToRAS = inverse(ras_to_carm) @ detector_ijk_to_carm (recorded in "MedAI.detector_ras_to_carm")."""
    ijk_to_ras = np.linalg.inv(ras_to_carm) @ carm.detector_ijk_to_carm()
    image = np.asarray(image).reshape(carm.height, carm.width)
    node = volume_to_node(scene, Volume(image[np.newaxis], Geometry.from_ijk_to_ras(ijk_to_ras)), name)
    set_frame_geometry(node, carm)
    node.SetAttribute("MedAI.detector_ras_to_carm", format_numbers(ras_to_carm))
    return node


def add_trajectory_table(scene, trajectory: list, name: str):
    """NEW table node: one row per agent step (step, action, similarity, stage: "agent" for the checked steps,
    "depth" for the depth stage's moves along the beam)."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    steps, similarities = vtk.vtkIntArray(), vtk.vtkDoubleArray()
    actions, stages = vtk.vtkStringArray(), vtk.vtkStringArray()
    for array, column in ((steps, "step"), (actions, "action"), (similarities, "similarity"), (stages, "stage")):
        array.SetName(column)
    for row in trajectory:
        steps.InsertNextValue(int(row["step"]))
        actions.InsertNextValue(str(row["action"]))
        similarities.InsertNextValue(float(row["similarity"]))
        stages.InsertNextValue(str(row.get("stage", "agent")))
    for array in (steps, actions, similarities, stages):
        table.AddColumn(array)
    return table


def add_registration_transform(scene, init_matrix: np.ndarray, result, name: str):
    """NEW linear transform ``inverse(M_init) @ M_result``: a CT placed under it moves from the initial to the
    registered pose relative to a C-arm at its initial placement. Attributes record the result."""
    transform = np.linalg.inv(init_matrix) @ result.matrix
    node = matrix_to_transform_node(scene, transform, name)
    summary = {k: v for k, v in result.to_dict().items() if k != "trajectory"}
    node.SetAttribute("MedAI.ras_to_carm", format_numbers(result.matrix))
    node.SetAttribute("MedAI.init_ras_to_carm", format_numbers(init_matrix))
    node.SetAttribute("MedAI.confidence", f"{result.confidence:.6g}")
    if result.uncertainty_mm is not None:
        node.SetAttribute("MedAI.uncertainty_mm", f"{result.uncertainty_mm:.6g}")
    node.SetAttribute("MedAI.pose", format_numbers(result.pose.as_array()))
    node.SetAttribute("MedAI.registration", json.dumps(summary))
    return node


def stored_ras_to_carm(node) -> np.ndarray | None:
    """The RAS -> C-arm matrix recorded in a node's "MedAI.ras_to_carm" attribute, if any."""
    values = _numbers(node.GetAttribute("MedAI.ras_to_carm"))
    return np.array(values).reshape(4, 4) if len(values) == 16 else None
