"""Offscreen 3D rendering of the registration with Slicer's own displayable managers, checked on content:
the frame plane lies on the detector plane, the CT's projected silhouette matches the frame's body outline
after registration (not before), segments show in their colour where the anatomy is.

Heavier than unit tests (a registration and a dozen renders, ~1 min): marked ``rendering``, run in CI.
"""
import numpy as np
import pytest

pytestmark = pytest.mark.rendering

import slicer  # noqa: E402

from medai.drr import CArmGeometry  # noqa: E402
from medai.io import read_volume  # noqa: E402
from medai.samples import sample_path  # noqa: E402
from medai_slicer import labelmap_to_segmentation, volume_to_node  # noqa: E402
from medai_slicer import standalone  # noqa: E402
from medai_slicer.registration_scene import (  # noqa: E402
    beams_eye_camera, body_mask, follow_transform, oblique_camera, show_volume_rendering,
)
from medai_slicer.rendering import OffscreenThreeDView  # noqa: E402

LIVER_RGB = (0.86, 0.55, 0.45)
# A wide field (576 mm at the detector) so that the body outline, not the field edge, bounds the frame's mask.
CARM = CArmGeometry(1100.0, 750.0, 160, 160, 3.6, 3.6)
TRUTH = (5.0, -8.0, 10.0, 4.0, -3.0, -30.0)  # LAO-ish oblique view, unknown to the registration
INITIAL = (25.0, -12.0, 0.0, 0.0, 0.0, -22.0)  # nominal view: 20 mm, 10 mm, 8 deg off


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def fused():
    """Sample CT + liver segmentation, a frame rendered at TRUTH, registered from INITIAL, the fusion scene."""
    scene = standalone.new_scene()
    logic = standalone.module_logic("MedAIRegistration")
    ct_node = volume_to_node(scene, read_volume(sample_path("ct_abdomen")), "CT")
    segmentation = labelmap_to_segmentation(scene, read_volume(sample_path("ct_abdomen_liver")),
                                            {1: ("liver", LIVER_RGB)}, "CT liver", ct_node)
    frame = logic.generateDRR(ct_node, TRUTH, CARM, "frame")
    outcome = logic.register(ct_node, frame, INITIAL, carm=CARM)
    fusion = logic.showFusion3D(ct_node, outcome.frameNode, outcome.transformNode, segmentation, preset="body")
    beam = beams_eye_camera(outcome.frameNode)
    bev = OffscreenThreeDView(scene, (CARM.width, CARM.height), name="beam's eye")
    bev.look_through(beam["position"], beam["focal_point"], beam["view_up"], beam["view_angle_deg"])
    yield {"scene": scene, "logic": logic, "ct": ct_node, "segmentation": segmentation, "outcome": outcome,
           "fusion": fusion, "bev": bev, "frame_pixels": slicer.util.arrayFromVolume(outcome.frameNode)[0].copy()}
    bev.close()


def test_registration_converged(fused):
    """Precondition of the picture tests: the registration found the pose (else IoU checks would mislead)."""
    assert fused["outcome"].confidence > 0.5, fused["outcome"].summary


def test_frame_plane_lies_on_the_detector_plane(fused):
    """Geometrically (every vertex of the textured plane at z = SDD - SID in the C-arm frame) and visually: seen
    from the X-ray source, the rendered plane reproduces the frame's pixels, not a flipped copy."""
    fusion, outcome = fused["fusion"], fused["outcome"]
    ras_to_carm = np.array([float(v) for v in outcome.frameNode.GetAttribute("MedAI.detector_ras_to_carm").split()])
    points = slicer.util.arrayFromModelPoints(fusion.frame_plane)
    carm_points = (ras_to_carm.reshape(4, 4) @ np.c_[points, np.ones(len(points))].T).T
    np.testing.assert_allclose(carm_points[:, 2], CARM.sdd_mm - CARM.sid_mm, atol=1e-3)

    fusion.only("frame")
    try:
        rendered = fused["bev"].capture().astype(np.float64).mean(axis=2)
    finally:
        fusion.show_all()
    frame = fused["frame_pixels"]
    correlation = np.corrcoef(rendered.ravel(), frame.ravel())[0, 1]
    flipped = np.corrcoef(rendered.ravel(), frame[:, ::-1].ravel())[0, 1]
    upside_down = np.corrcoef(rendered.ravel(), frame[::-1].ravel())[0, 1]
    assert correlation > 0.98, correlation
    assert max(flipped, upside_down) < correlation - 0.05, (correlation, flipped, upside_down)


def test_ct_silhouette_matches_the_frame_after_registration(fused):
    """Seen from the source, the volume-rendered CT covers the frame's body outline (IoU) far better under the
    registration transform than at the initial pose."""
    fusion, bev, ct_node = fused["fusion"], fused["bev"], fused["ct"]
    background = np.array(bev.view_node.GetBackgroundColor()) * 255
    frame_body = body_mask(fused["frame_pixels"])

    def silhouette():
        pixels = bev.capture().astype(np.float64)
        return np.abs(pixels - background).sum(axis=2) > 30

    fusion.only("ct")
    try:
        after = silhouette()
        follow_transform(ct_node, None)
        before = silhouette()
    finally:
        follow_transform(ct_node, fused["outcome"].transformNode)
        fusion.show_all()
    assert 0.2 < frame_body.mean() < 0.9, "the frame's body outline must not fill the field"
    iou_after, iou_before = iou(after, frame_body), iou(before, frame_body)
    assert iou_after > 0.9, (iou_after, iou_before)
    assert iou_after > iou_before + 0.08, (iou_after, iou_before)


def _liver_coloured(pixels: np.ndarray) -> np.ndarray:
    """Pixels of the liver's hue (shaded): reddish-brown, clearly warmer than grey."""
    r, g, b = (pixels[..., c].astype(int) for c in range(3))
    return (r > 60) & (r - b > 40) & (r > g) & (g > b)


def test_segmentation_3d_view_shows_the_liver_on_the_patient_right(fused):
    """Segment surfaces alone, seen from anterior: liver-coloured pixels, and on the viewer's left (the patient's
    right). Seen from posterior they move to the other side: orientation, not luck."""
    fused["fusion"].only("segments")
    view = OffscreenThreeDView(fused["scene"], (400, 400), name="segments")
    ct_bounds = [0.0] * 6
    fused["ct"].GetRASBounds(ct_bounds)  # frame the whole CT, so the liver's side of the body shows
    try:
        view.look_from("anterior", bounds=ct_bounds)
        anterior = view.capture()
        view.look_from("posterior", bounds=ct_bounds)
        posterior = view.capture()
    finally:
        view.close()
        fused["fusion"].show_all()
    liver_anterior, liver_posterior = _liver_coloured(anterior), _liver_coloured(posterior)
    assert liver_anterior.mean() > 0.02, liver_anterior.mean()
    columns = np.arange(anterior.shape[1])
    assert (columns * liver_anterior.sum(axis=0)).sum() / liver_anterior.sum() < 0.45 * anterior.shape[1]
    assert (columns * liver_posterior.sum(axis=0)).sum() / liver_posterior.sum() > 0.55 * posterior.shape[1]


def test_fusion_view_is_not_blank_and_shows_every_part(fused):
    """The oblique fusion picture: CT, frame plane, beam (the source's yellow, the central ray's red) all drawn."""
    camera = oblique_camera(fused["outcome"].frameNode)
    view = OffscreenThreeDView(fused["scene"], (480, 360), name="fusion")
    try:
        view.look_through(camera["position"], camera["focal_point"], camera["view_up"], camera["view_angle_deg"])
        everything = view.capture().astype(int)
        fused["fusion"].only("frame", "ct")
        without_beam = view.capture().astype(int)
    finally:
        view.close()
        fused["fusion"].show_all()
    background = np.array(view.view_node.GetBackgroundColor()) * 255
    drawn = np.abs(everything - background).sum(axis=2) > 30
    assert 0.1 < drawn.mean() < 0.95, drawn.mean()
    assert everything.std() > 20
    red = (everything[..., 0] > 150) & (everything[..., 1] < 110) & (everything[..., 2] < 110)
    red_without = (without_beam[..., 0] > 150) & (without_beam[..., 1] < 110) & (without_beam[..., 2] < 110)
    assert red.sum() > red_without.sum() + 20, (red.sum(), red_without.sum())


def test_overlay_nodes_on_the_frame_grid(fused):
    """Checkerboard and edge overlays are NEW RGB volumes on the frame's grid; edges are green where the DRR has
    anatomy and inside the body outline only."""
    logic, outcome = fused["logic"], fused["outcome"]
    before = fused["scene"].GetNumberOfNodesByClass("vtkMRMLVectorVolumeNode")
    checker = logic.addOverlay(outcome.frameNode, outcome.drrNode, "checkerboard")
    edges = logic.addOverlay(outcome.frameNode, outcome.drrNode, "edges")
    assert fused["scene"].GetNumberOfNodesByClass("vtkMRMLVectorVolumeNode") == before + 2
    for node in (checker, edges):
        assert slicer.util.arrayFromVolume(node).shape == (1, CARM.height, CARM.width, 3)
        a, b = vtk_matrix(node), vtk_matrix(outcome.frameNode)
        np.testing.assert_allclose(a, b)
    rgb = slicer.util.arrayFromVolume(edges)[0].astype(int)
    green = (rgb[..., 1] > 200) & (rgb[..., 0] < 80)
    assert green.mean() > 0.01
    assert (green & body_mask(fused["frame_pixels"])).sum() >= 0.95 * green.sum()
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(outcome.frameNode)[0], fused["frame_pixels"])
    with pytest.raises(ValueError, match="unknown overlay"):
        logic.addOverlay(outcome.frameNode, outcome.drrNode, "sepia")


def vtk_matrix(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_volume_rendering_of_a_large_ct_uses_a_downsampled_proxy(fused):
    """Above the voxel budget the CT is rendered from a NEW hidden downsampled copy at the same physical place."""
    ct_node = fused["ct"]
    voxels = ct_node.GetImageData().GetNumberOfPoints()
    display = show_volume_rendering(ct_node, "bone", max_voxels=voxels // 4)
    proxy = ct_node.GetNodeReference("MedAI.renderingProxy")
    assert proxy is not None and display.GetVolumeNode() is proxy
    assert proxy.GetImageData().GetNumberOfPoints() <= voxels // 4
    bounds_ct, bounds_proxy = [0.0] * 6, [0.0] * 6
    ct_node.GetRASBounds(bounds_ct)
    proxy.GetRASBounds(bounds_proxy)
    np.testing.assert_allclose(bounds_proxy, bounds_ct, atol=2 * max(ct_node.GetSpacing()) + 1)
    assert proxy.GetTransformNodeID() == ct_node.GetTransformNodeID()


def test_fusion_layout_has_the_3d_view_and_two_slice_views():
    """The desktop layout MedAIRegistration sets on entering: one 3D view, the Red (frame + DRR) and Yellow
    (overlay) slice views; valid XML that Slicer's layout node accepts."""
    import xml.etree.ElementTree as ET

    from medai_slicer.registration_scene import FUSION_LAYOUT_ID, FUSION_LAYOUT_XML

    views = ET.fromstring(FUSION_LAYOUT_XML).iter("view")
    tags = sorted((v.get("class"), v.get("singletontag")) for v in views)
    assert tags == [("vtkMRMLSliceNode", "Red"), ("vtkMRMLSliceNode", "Yellow"), ("vtkMRMLViewNode", "1")]
    layout = slicer.vtkMRMLLayoutNode()
    layout.AddLayoutDescription(FUSION_LAYOUT_ID, FUSION_LAYOUT_XML)
    assert layout.IsLayoutDescription(FUSION_LAYOUT_ID)
    layout.SetViewArrangement(FUSION_LAYOUT_ID)
    assert layout.GetViewArrangement() == FUSION_LAYOUT_ID
