"""Pictures of a registration, rendered offscreen by Slicer's own 3D displayable managers: the fusion scene
before / after (from beside the beam and through the X-ray source's eye), the 2D overlays, and a segmentation
3D view. Used by ``medai demo`` (README pictures) and ``benchmarks/bench_rendering.py``.
"""
from __future__ import annotations

import os
import time

import numpy as np
import slicer

from .registration_scene import (
    FusionScene, beams_eye_camera, body_mask, follow_transform, oblique_camera, show_volume_rendering,
)
from .rendering import OffscreenThreeDView


def _look(view: OffscreenThreeDView, camera: dict) -> None:
    view.look_through(camera["position"], camera["focal_point"], camera["view_up"], camera["view_angle_deg"])


def render_before_after(fusion: FusionScene, transform_node, size=(640, 480), beams_eye_size: int = 400) -> dict:
    """Oblique and beam's-eye captures with the CT at the initial pose (no transform) and under ``transform_node``.

    Returns {"oblique_before", "oblique_after", "beams_eye_before", "beams_eye_after"}: (H, W, 3) uint8, plus
    "seconds" per capture. The CT ends under ``transform_node``.
    """
    frame_node = fusion.frame_plane.GetNodeReference("MedAI.frame")
    oblique = OffscreenThreeDView(fusion.ct_node.GetScene(), size, name="MedAI fusion oblique")
    beam = beams_eye_camera(frame_node)
    width = beams_eye_size
    eye = OffscreenThreeDView(fusion.ct_node.GetScene(), (width, int(round(width / beam["aspect"]))),
                              name="MedAI fusion beam's eye")
    pictures, seconds = {}, []
    try:
        _look(oblique, oblique_camera(frame_node))
        _look(eye, beam)
        for state, transform in (("before", None), ("after", transform_node)):
            follow_transform(fusion.ct_node, transform)
            for name, view, groups in (("oblique", oblique, ("ct", "frame", "beam", "segments")),
                                       ("beams_eye", eye, ("ct", "frame"))):
                fusion.only(*groups)
                start = time.perf_counter()
                pictures[f"{name}_{state}"] = view.capture()
                seconds.append(time.perf_counter() - start)
    finally:
        follow_transform(fusion.ct_node, transform_node)
        fusion.show_all()
        oblique.close()
        eye.close()
    pictures["seconds"] = seconds
    return pictures


def silhouette_iou(fusion: FusionScene, transform_node) -> dict:
    """IoU of the CT's volume-rendered silhouette seen from the source with the frame's body outline, at the
    initial pose and under ``transform_node``: how well the 3D scene explains the frame."""
    frame_node = fusion.frame_plane.GetNodeReference("MedAI.frame")
    frame = slicer.util.arrayFromVolume(frame_node)[0]
    beam = beams_eye_camera(frame_node)
    height, width = frame.shape
    view = OffscreenThreeDView(fusion.ct_node.GetScene(), (width, height), name="MedAI silhouette")
    background = np.array(view.view_node.GetBackgroundColor()) * 255
    outline = body_mask(frame)
    result = {}
    try:
        _look(view, beam)
        fusion.only("ct")
        for state, transform in (("before", None), ("after", transform_node)):
            follow_transform(fusion.ct_node, transform)
            drawn = np.abs(view.capture().astype(np.float64) - background).sum(axis=2) > 30
            result[state] = float((drawn & outline).sum() / max((drawn | outline).sum(), 1))
    finally:
        follow_transform(fusion.ct_node, transform_node)
        fusion.show_all()
        view.close()
    return result


def render_segmentation_3d(segmentation_node, ct_node=None, size=(640, 440), direction: str = "anterior",
                           preset: str | None = "bone") -> np.ndarray:
    """The segmentation's surfaces (and the CT volume-rendered with ``preset``) seen from ``direction``."""
    segmentation_node.CreateClosedSurfaceRepresentation()
    display = segmentation_node.GetDisplayNode()
    display.SetVisibility(1)
    display.SetVisibility3D(True)
    if ct_node is not None and preset:
        show_volume_rendering(ct_node, preset)
    bounds = [0.0] * 6
    (ct_node or segmentation_node).GetRASBounds(bounds)
    with OffscreenThreeDView(segmentation_node.GetScene(), size, name="MedAI segmentation 3D") as view:
        view.look_from(direction, zoom=1.9, bounds=bounds)
        return view.capture()


def save_png(pixels: np.ndarray, path: str) -> str:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path
