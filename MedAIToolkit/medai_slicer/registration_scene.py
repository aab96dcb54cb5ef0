"""The registration in 3D: the CT (volume rendering, segment surfaces) under the registration transform, the
fluoroscopy frame as a textured plane on its detector plane, the X-ray source as a point, the central ray
and the edges of the beam. Real MRML nodes, shown by Slicer's own displayable managers (desktop 3D view,
offscreen ``OffscreenThreeDView``, web viewer alike). Every function creates NEW nodes; inputs only gain
display nodes.

Geometry: the frame node lies on the detector plane of the C-arm at its initial placement (its
"MedAI.detector_ras_to_carm" attribute, set by ``add_detector_node``); the source is at (0, 0, -SID) and the
detector centre at (0, 0, SDD - SID) in that C-arm frame (docs/pose_convention.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from medai.drr import CArmGeometry
from medai.errors import MedAIInputError
from medai.registration.overlay import to_grey

from .nodes import ijk_to_ras_of, node_to_volume, volume_to_node
from .registration_nodes import _numbers, frame_geometry

CT_RENDERING_PRESETS = {
    # (HU, opacity) control points and (HU, r, g, b) colours
    "bone": ([(-1000, 0.0), (120, 0.0), (220, 0.25), (600, 0.7), (3000, 0.8)],
             [(-1000, 0.0, 0.0, 0.0), (150, 0.75, 0.55, 0.4), (400, 0.95, 0.9, 0.8), (3000, 1.0, 1.0, 1.0)]),
    "body": ([(-1000, 0.0), (-350, 0.0), (-250, 0.08), (100, 0.12), (300, 0.6), (3000, 0.8)],
             [(-1000, 0.0, 0.0, 0.0), (-250, 0.8, 0.6, 0.5), (100, 0.85, 0.5, 0.4), (400, 1.0, 0.95, 0.85),
              (3000, 1.0, 1.0, 1.0)]),
}
"""Transfer functions for CT volume rendering: "bone" (skeleton only), "body" (translucent skin, bone)."""

FRAME_COLOR, SOURCE_COLOR, RAY_COLOR, BEAM_COLOR = (1, 1, 1), (1.0, 0.85, 0.1), (1.0, 0.2, 0.15), (0.4, 0.7, 1.0)


def show_volume_rendering(ct_node, preset: str = "bone", max_voxels: int = 4_000_000):
    """Volume-render a CT node with a MedAI transfer function; returns the volume rendering display node.

    CTs above ``max_voxels`` are rendered from a NEW downsampled copy ("<CT> (3D)", hidden from editors,
    following the CT's transform) so software OpenGL stays interactive; the CT node itself is untouched.
    """
    if preset not in CT_RENDERING_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; one of {sorted(CT_RENDERING_PRESETS)}")
    node = _rendering_proxy(ct_node, max_voxels)
    logic = slicer.modules.volumerendering.logic()
    display = logic.GetFirstVolumeRenderingDisplayNode(node) or logic.CreateDefaultVolumeRenderingNodes(node)
    if display is None:
        raise RuntimeError(f"volume rendering could not be set up for '{node.GetName()}'")
    opacity_points, colour_points = CT_RENDERING_PRESETS[preset]
    prop = display.GetVolumePropertyNode().GetVolumeProperty()
    opacity, colours = vtk.vtkPiecewiseFunction(), vtk.vtkColorTransferFunction()
    for hu, value in opacity_points:
        opacity.AddPoint(hu, value)
    for hu, r, g, b in colour_points:
        colours.AddRGBPoint(hu, r, g, b)
    prop.SetScalarOpacity(opacity)
    prop.SetColor(colours)
    prop.ShadeOn()
    prop.SetInterpolationTypeToLinear()
    display.SetVisibility(1)
    return display


def _rendering_proxy(ct_node, max_voxels: int):
    image = ct_node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise MedAIInputError(f"volume node '{ct_node.GetName()}' has no image data")
    voxels = image.GetNumberOfPoints()
    if voxels <= max_voxels:
        return ct_node
    existing = ct_node.GetNodeReference("MedAI.renderingProxy")
    if existing is not None:
        return existing
    factor = int(np.ceil((voxels / max_voxels) ** (1 / 3)))
    volume = node_to_volume(ct_node)
    k, j, i = (s // factor * factor for s in volume.array.shape)
    blocks = volume.array[:k, :j, :i].astype(np.float32).reshape(k // factor, factor, j // factor, factor,
                                                                 i // factor, factor)
    small = blocks.mean(axis=(1, 3, 5)).astype(np.int16)
    scale = np.diag([factor, factor, factor, 1.0])
    scale[:3, 3] = (factor - 1) / 2.0  # new voxel centre = centre of its block
    from medai.geometry import Geometry
    from medai.io import Volume

    proxy = volume_to_node(ct_node.GetScene(), Volume(small, Geometry.from_ijk_to_ras(ijk_to_ras_of(ct_node) @ scale)),
                           f"{ct_node.GetName()} (3D)")
    proxy.SetHideFromEditors(True)
    proxy.SetAndObserveTransformNodeID(ct_node.GetTransformNodeID())
    ct_node.SetNodeReferenceID("MedAI.renderingProxy", proxy.GetID())
    return proxy


def follow_transform(ct_node, transform_node) -> None:
    """Put the CT (and its rendering proxy, if any) under ``transform_node`` (None: no transform)."""
    transform_id = transform_node.GetID() if transform_node is not None else None
    ct_node.SetAndObserveTransformNodeID(transform_id)
    proxy = ct_node.GetNodeReference("MedAI.renderingProxy")
    if proxy is not None:
        proxy.SetAndObserveTransformNodeID(transform_id)


def detector_placement(frame_node) -> tuple[CArmGeometry, np.ndarray]:
    """(C-arm geometry, RAS -> C-arm matrix of the placement) of a frame/DRR node lying on its detector plane."""
    carm, missing = frame_geometry(frame_node)
    values = _numbers(frame_node.GetAttribute("MedAI.detector_ras_to_carm"))
    if carm is None or len(values) != 16:
        raise MedAIInputError(f"'{frame_node.GetName()}' is not a frame on a detector plane (made by register or "
                              f"Generate DRR){': missing ' + ', '.join(missing) if missing else ''}")
    return carm, np.array(values).reshape(4, 4)


def _to_ras(matrix_carm_to_ras: np.ndarray, points_carm) -> np.ndarray:
    points = np.atleast_2d(np.asarray(points_carm, dtype=float))
    return (matrix_carm_to_ras[:3, :3] @ points.T).T + matrix_carm_to_ras[:3, 3]


def _model_node(scene, polydata, name: str, colour, opacity: float = 1.0, line_width: float = 1.0):
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", scene.GenerateUniqueName(name))
    node.SetAndObservePolyData(polydata)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetColor(*colour)
    display.SetOpacity(opacity)
    display.SetLineWidth(line_width)
    display.SetBackfaceCulling(False)
    display.SetVisibility2D(False)
    return node


def body_mask(image: np.ndarray) -> np.ndarray:
    """Pixels of a frame/DRR (bright = attenuating) where the beam crossed the body: above 10% of the way from
    the darkest pixel (air) to the 99th percentile, so the lungs count as body."""
    image = np.nan_to_num(np.asarray(image, dtype=np.float32))
    low, high = float(image.min()), float(np.percentile(image, 99))
    return image > low + 0.1 * (high - low) if high > low else np.zeros(image.shape, bool)


def frame_texture(image: np.ndarray) -> vtk.vtkImageData:
    """(H, W) frame -> RGB uchar texture windowed on the body (air black), row 0 at texture t = 0."""
    grey = (to_grey(image, body_mask(image), low=0.5, high=99.8) * 255).astype(np.uint8)
    rgb = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    texture = vtk.vtkImageData()
    texture.SetDimensions(grey.shape[1], grey.shape[0], 1)
    texture.GetPointData().SetScalars(numpy_support.numpy_to_vtk(rgb.reshape(-1, 3), deep=True))
    return texture


def add_frame_plane(frame_node, name: str | None = None, opacity: float = 1.0):
    """NEW model node: a rectangle covering the frame node's pixels in RAS, textured with the frame."""
    image = slicer.util.arrayFromVolume(frame_node)
    if image.ndim != 3 or image.shape[0] != 1:
        raise MedAIInputError(f"'{frame_node.GetName()}' is not a one-slice frame (shape {image.shape})")
    height, width = image.shape[1:]
    ijk_to_ras = ijk_to_ras_of(frame_node)
    corners = _to_ras(ijk_to_ras, [(-0.5, -0.5, 0), (width - 0.5, -0.5, 0), (-0.5, height - 0.5, 0)])
    plane = vtk.vtkPlaneSource()
    plane.SetOrigin(*corners[0])
    plane.SetPoint1(*corners[1])  # along columns (i): texture s
    plane.SetPoint2(*corners[2])  # along rows (j): texture t
    plane.Update()
    scene = frame_node.GetScene()
    node = _model_node(scene, plane.GetOutput(), name or f"{frame_node.GetName()} plane", FRAME_COLOR, opacity)
    producer = vtk.vtkTrivialProducer()
    producer.SetOutput(frame_texture(image[0]))
    _TEXTURES[node.GetID()] = producer  # the display node holds only the VTK connection
    display = node.GetDisplayNode()
    display.SetTextureImageDataConnection(producer.GetOutputPort())
    display.SetScalarVisibility(False)
    display.SetAmbient(1.0)
    display.SetDiffuse(0.0)
    display.SetSpecular(0.0)
    node.SetNodeReferenceID("MedAI.frame", frame_node.GetID())
    return node


_TEXTURES: dict = {}
"""Texture producers by model node ID (the display node holds only the VTK connection)."""


def add_beam(frame_node, name: str = "C-arm") -> dict:
    """NEW model nodes for the C-arm at the frame's placement: "<name> source" (sphere), "<name> central ray"
    (source -> detector centre) and "<name> beam" (source -> the four detector corners)."""
    carm, ras_to_carm = detector_placement(frame_node)
    carm_to_ras = np.linalg.inv(ras_to_carm)
    source = _to_ras(carm_to_ras, carm.source_carm())[0]
    corners_carm = carm.detector_ijk_to_carm() @ np.array(
        [[-0.5, -0.5, 0, 1], [carm.width - 0.5, -0.5, 0, 1], [carm.width - 0.5, carm.height - 0.5, 0, 1],
         [-0.5, carm.height - 0.5, 0, 1]]).T
    corners = _to_ras(carm_to_ras, corners_carm[:3].T)
    centre = _to_ras(carm_to_ras, [(0.0, 0.0, carm.sdd_mm - carm.sid_mm)])[0]
    scene = frame_node.GetScene()
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*source)
    sphere.SetRadius(max(6.0, 0.012 * carm.sdd_mm))
    sphere.SetThetaResolution(24)
    sphere.SetPhiResolution(16)
    sphere.Update()
    ray = vtk.vtkLineSource()
    ray.SetPoint1(*source)
    ray.SetPoint2(*centre)
    ray.Update()
    edges = vtk.vtkAppendPolyData()
    for corner in corners:
        line = vtk.vtkLineSource()
        line.SetPoint1(*source)
        line.SetPoint2(*corner)
        line.Update()
        edges.AddInputData(line.GetOutput())
    edges.Update()
    return {"source": _model_node(scene, sphere.GetOutput(), f"{name} source", SOURCE_COLOR),
            "central_ray": _model_node(scene, ray.GetOutput(), f"{name} central ray", RAY_COLOR, line_width=3.0),
            "beam": _model_node(scene, edges.GetOutput(), f"{name} beam", BEAM_COLOR, opacity=0.6, line_width=1.0)}


def beams_eye_camera(frame_node) -> dict:
    """Camera at the X-ray source looking down the central ray, framing the detector: what the C-arm sees.
    Returns look_through() arguments and the window ``size`` (W, H) with the detector's aspect ratio."""
    carm, ras_to_carm = detector_placement(frame_node)
    carm_to_ras = np.linalg.inv(ras_to_carm)
    source = _to_ras(carm_to_ras, carm.source_carm())[0]
    centre = _to_ras(carm_to_ras, [(0.0, 0.0, carm.sdd_mm - carm.sid_mm)])[0]
    up = carm_to_ras[:3, :3] @ np.array([0.0, -1.0, 0.0])  # rows increase downwards in the image
    half_height_mm = carm.height * carm.row_spacing_mm / 2
    angle = float(np.degrees(2 * np.arctan(half_height_mm / carm.sdd_mm)))
    return {"position": source, "focal_point": centre, "view_up": up, "view_angle_deg": angle,
            "aspect": (carm.width * carm.col_spacing_mm) / (carm.height * carm.row_spacing_mm)}


def oblique_camera(frame_node, azimuth_deg: float = 35.0, elevation_deg: float = 15.0) -> dict:
    """Camera on the source side of the detector, ``azimuth_deg`` off the central ray: the CT in front of the
    frame plane with the beam converging to the source. Returns look_through() arguments."""
    carm, ras_to_carm = detector_placement(frame_node)
    carm_to_ras = np.linalg.inv(ras_to_carm)
    detector_centre = np.array([0.0, 0.0, carm.sdd_mm - carm.sid_mm])
    focal_carm = 0.3 * detector_centre  # between isocentre and detector, nearer the patient
    a, e = np.radians(azimuth_deg), np.radians(elevation_deg)
    direction = np.array([np.sin(a) * np.cos(e), -np.sin(e), -np.cos(a) * np.cos(e)])  # towards the source side
    size = np.hypot(carm.height * carm.row_spacing_mm, carm.width * carm.col_spacing_mm)
    distance = 0.75 * size / (2 * np.tan(np.radians(15.0)))
    position = _to_ras(carm_to_ras, [focal_carm + distance * direction])[0]
    return {"position": position, "focal_point": _to_ras(carm_to_ras, [focal_carm])[0],
            "view_up": carm_to_ras[:3, :3] @ np.array([0.0, -1.0, 0.0]), "view_angle_deg": 30.0}


@dataclass
class FusionScene:
    """Nodes of the 3D fusion view; ``hide``/``show`` toggle groups (e.g. to render the CT alone)."""

    ct_node: object
    volume_rendering: object  # vtkMRMLVolumeRenderingDisplayNode
    frame_plane: object  # vtkMRMLModelNode
    source: object
    central_ray: object
    beam: object
    segmentation: object = None

    def parts(self) -> dict:
        return {"ct": [self.volume_rendering], "frame": [self.frame_plane.GetDisplayNode()],
                "beam": [m.GetDisplayNode() for m in (self.source, self.central_ray, self.beam)],
                "segments": [self.segmentation.GetDisplayNode()] if self.segmentation is not None else []}

    def only(self, *groups: str) -> None:
        """Show just these groups ("ct", "frame", "beam", "segments")."""
        for group, displays in self.parts().items():
            for display in displays:
                display.SetVisibility(group in groups)

    def show_all(self) -> None:
        self.only(*self.parts())


def build_fusion_scene(ct_node, frame_node, transform_node=None, segmentation_node=None, preset: str = "bone",
                       name: str | None = None) -> FusionScene:
    """The 3D fusion view: CT volume rendering (and ``segmentation_node``'s surfaces) under ``transform_node``
    (a registration result; None leaves the CT where it is), the frame plane, source, central ray and beam.
    ``frame_node``: a frame on its detector plane (``RegistrationOutcome.frameNode`` or a Generate DRR node)."""
    detector_placement(frame_node)  # clear error before anything is created
    if transform_node is not None:
        follow_transform(ct_node, transform_node)
    volume_rendering = show_volume_rendering(ct_node, preset)
    if segmentation_node is not None:
        segmentation_node.SetAndObserveTransformNodeID(ct_node.GetTransformNodeID())
        segmentation_node.CreateClosedSurfaceRepresentation()
        display = segmentation_node.GetDisplayNode()
        display.SetVisibility(1)
        display.SetVisibility3D(True)
        display.SetOpacity3D(1.0)
    plane = add_frame_plane(frame_node)
    beam = add_beam(frame_node, name or "C-arm")
    return FusionScene(ct_node, volume_rendering, plane, beam["source"], beam["central_ray"], beam["beam"],
                       segmentation_node)


def add_overlay_node(frame_node, drr_node, kind: str = "checkerboard", name: str | None = None):
    """NEW RGB vector volume on the frame's grid: the DRR over the frame as ``kind`` (medai.registration.overlay:
    blend, checkerboard, edges), windowed inside the frame's body outline."""
    from medai.registration.overlay import overlay

    frame = slicer.util.arrayFromVolume(frame_node)
    drr = slicer.util.arrayFromVolume(drr_node)
    if frame.shape != drr.shape or frame.ndim != 3 or frame.shape[0] != 1:
        raise MedAIInputError(f"'{frame_node.GetName()}' {frame.shape} and '{drr_node.GetName()}' {drr.shape} must "
                              f"be one-slice volumes on the same grid")
    rgb = overlay(frame[0], drr[0], kind, mask=body_mask(frame[0]))
    scene = frame_node.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode",
                                   scene.GenerateUniqueName(name or f"{drr_node.GetName()} {kind}"))
    matrix = vtk.vtkMatrix4x4()
    frame_node.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    image = vtk.vtkImageData()
    image.SetDimensions(rgb.shape[1], rgb.shape[0], 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(
        np.ascontiguousarray(rgb).reshape(-1, 3), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    node.SetAndObserveImageData(image)
    node.CreateDefaultDisplayNodes()
    node.SetAttribute("MedAI.overlay", kind)
    node.SetNodeReferenceID("MedAI.frame", frame_node.GetID())
    node.SetNodeReferenceID("MedAI.DRR", drr_node.GetID())
    return node


FUSION_LAYOUT_ID = 57201
FUSION_LAYOUT_XML = """
<layout type="horizontal" split="true">
  <item splitSize="600"><view class="vtkMRMLViewNode" singletontag="1"><property name="viewlabel" action="default">1</property></view></item>
  <item splitSize="400">
    <layout type="vertical" split="true">
      <item><view class="vtkMRMLSliceNode" singletontag="Red"><property name="orientation" action="default">Axial</property>
        <property name="viewlabel" action="default">R</property><property name="viewcolor" action="default">#F34A33</property></view></item>
      <item><view class="vtkMRMLSliceNode" singletontag="Yellow"><property name="orientation" action="default">Sagittal</property>
        <property name="viewlabel" action="default">Y</property><property name="viewcolor" action="default">#EDD54C</property></view></item>
    </layout>
  </item>
</layout>
"""
"""MedAIRegistration's desktop layout: the 3D fusion view, the frame with the DRR blended (Red), an overlay (Yellow)."""
