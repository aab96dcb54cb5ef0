"""Offscreen 3D views: Slicer's own 3D displayable managers (volume rendering, models, segmentations,
transforms) on an offscreen VTK window, captured to numpy / PNG. No Slicer application or Qt needed.

Software OpenGL (EGL / OSMesa through VTK) is what headless machines have: depth peeling is switched off
(with it, translucent segments and volume rendering silently vanish there), multisampling too.

    view = OffscreenThreeDView(slicer.mrmlScene, size=(800, 600))
    view.look_from("anterior")                  # or view.look_through(camera position, focal point, up, angle)
    view.save("out.png")
"""
from __future__ import annotations

import os
import time

import numpy as np

if not os.environ.get("DISPLAY") and "VTK_DEFAULT_OPENGL_WINDOW" not in os.environ:
    os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"  # headless: EGL (OSMesa also works)

import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

THREE_D_MANAGERS = (
    "vtkMRMLCameraDisplayableManager",
    "vtkMRMLViewDisplayableManager",
    "vtkMRMLModelDisplayableManager",
    "vtkMRMLSegmentationsDisplayableManager3D",
    "vtkMRMLVolumeRenderingDisplayableManager",
    "vtkMRMLLinearTransformsDisplayableManager",
)
"""The 3D displayable managers the desktop 3D view uses for what MedAIToolkit shows."""

VOLUME_QUALITY = {"adaptive": 0, "normal": 1, "maximum": 2}
"""vtkMRMLViewNode volume rendering quality (Adaptive, Normal, Maximum)."""

DIRECTIONS_RAS = {
    "anterior": ((0, 1, 0), (0, 0, 1)), "posterior": ((0, -1, 0), (0, 0, 1)),
    "left": ((-1, 0, 0), (0, 0, 1)), "right": ((1, 0, 0), (0, 0, 1)),
    "superior": ((0, 0, 1), (0, 1, 0)), "inferior": ((0, 0, -1), (0, 1, 0)),
}
"""Camera placement: (direction from the focal point to the camera, view up), RAS."""


def _display_manager_factory(app_logic):
    factory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(app_logic)
    for manager in THREE_D_MANAGERS:
        if not factory.IsDisplayableManagerRegistered(manager):
            factory.RegisterDisplayableManager(manager)
    return factory


class OffscreenThreeDView:
    """A Slicer 3D view (its own vtkMRMLViewNode) rendered offscreen; ``capture()`` -> (H, W, 3) uint8 RGB."""

    def __init__(self, scene, size: tuple[int, int] = (800, 600), name: str = "MedAIOffscreen",
                 background=(0.08, 0.09, 0.12), app_logic=None, volume_quality: str = "normal",
                 expected_fps: float = 5.0):
        """``volume_quality``: "normal" (full sampling: pictures), "adaptive" (sampling lowered to reach
        ``expected_fps``: interaction; ~5x faster on software OpenGL) or "maximum"."""
        self.scene = scene
        app_logic = app_logic or slicer.app.applicationLogic()
        self.render_window = vtk.vtkRenderWindow()
        self.render_window.SetOffScreenRendering(1)
        self.render_window.SetMultiSamples(0)
        self.render_window.SetSize(*size)
        self.renderer = vtk.vtkRenderer()
        self.renderer.SetUseDepthPeeling(False)
        self.renderer.SetUseDepthPeelingForVolumes(False)
        self.render_window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.render_window)
        self.interactor.Initialize()
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(_display_manager_factory(app_logic), self.renderer)
        self.view_node = scene.AddNewNodeByClass("vtkMRMLViewNode", scene.GenerateUniqueName(name))
        self.view_node.SetLayoutName(self.view_node.GetName())
        self.view_node.SetBoxVisible(0)
        self.view_node.SetAxisLabelsVisible(0)
        self.view_node.SetOrientationMarkerType(0)
        self.view_node.SetBackgroundColor(*background)
        self.view_node.SetBackgroundColor2(*background)
        self.view_node.SetVolumeRenderingQuality(VOLUME_QUALITY[volume_quality])
        self.view_node.SetExpectedFPS(expected_fps)
        self.managers.SetMRMLDisplayableNode(self.view_node)
        self.last_render_seconds = None

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.render_window.GetSize())

    @property
    def camera(self) -> vtk.vtkCamera:
        return self.renderer.GetActiveCamera()

    def look_from(self, direction: str = "anterior", zoom: float = 1.0, bounds=None) -> None:
        """Place the camera on a patient direction (anterior, left, superior, ...) framing everything shown, or
        the RAS ``bounds`` (xmin, xmax, ymin, ymax, zmin, zmax) given, e.g. a node's ``GetRASBounds``."""
        towards, up = DIRECTIONS_RAS[direction]
        self.render()  # let the displayable managers create their actors before framing them
        if bounds is None:
            bounds = [0.0] * 6
            self.renderer.ComputeVisiblePropBounds(bounds)
        bounds = [float(b) for b in bounds]
        centre = np.array([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])
        camera = self.camera
        camera.SetFocalPoint(*centre)
        camera.SetPosition(*(centre + 1000.0 * np.asarray(towards, dtype=float)))
        camera.SetViewUp(*up)
        self.renderer.ResetCamera(bounds)
        camera.Zoom(zoom)
        self.renderer.ResetCameraClippingRange()

    def look_through(self, position, focal_point, view_up, view_angle_deg: float) -> None:
        """A perspective camera at ``position`` (RAS mm) looking at ``focal_point``; vertical field ``view_angle_deg``."""
        camera = self.camera
        camera.SetPosition(*np.asarray(position, dtype=float))
        camera.SetFocalPoint(*np.asarray(focal_point, dtype=float))
        camera.SetViewUp(*np.asarray(view_up, dtype=float))
        camera.SetViewAngle(float(view_angle_deg))
        camera.SetParallelProjection(False)
        self.render()
        self.renderer.ResetCameraClippingRange()

    def render(self) -> float:
        start = time.perf_counter()
        self.render_window.Render()
        self.last_render_seconds = time.perf_counter() - start
        return self.last_render_seconds

    def capture(self) -> np.ndarray:
        """Render and return the view as (H, W, 3) uint8 RGB, row 0 at the top."""
        self.renderer.ResetCameraClippingRange()
        self.render()
        grabber = vtk.vtkWindowToImageFilter()
        grabber.SetInput(self.render_window)
        grabber.SetInputBufferTypeToRGB()
        grabber.ReadFrontBufferOff()
        grabber.Update()
        image = grabber.GetOutput()
        width, height, _ = image.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
        return np.ascontiguousarray(pixels[::-1, :, :3])

    def save(self, path: str) -> np.ndarray:
        """Capture to a PNG file; returns the pixels."""
        from PIL import Image

        pixels = self.capture()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        Image.fromarray(pixels).save(path)
        return pixels

    def close(self) -> None:
        self.managers.SetMRMLDisplayableNode(None)
        self.render_window.Finalize()
        if self.scene.IsNodePresent(self.view_node):
            self.scene.RemoveNode(self.view_node)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
