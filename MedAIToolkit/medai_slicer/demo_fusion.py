"""``medai demo``'s registration stage on a real MRML scene: the MedAIRegistration Logic registers a
fluoroscopy-like frame of the sample CT; the fusion is rendered offscreen before and after, with the 2D overlays
and the liver segmentation in 3D. Writes PNGs under ``<out>/registration/`` and returns the numbers."""
from __future__ import annotations

import os
import time

import numpy as np
import slicer
import torch

LIVER = {1: ("liver", (0.86, 0.55, 0.45))}
MODEL_LIVER = {1: ("liver (ct-liver model)", (0.86, 0.55, 0.45))}


def run_fusion_demo(ct, liver, predicted_liver, out_dir: str) -> dict:
    """``ct``, ``liver``: medai Volumes (sample CT and its liver mask); ``predicted_liver``: the ct-liver model's
    label array on the CT grid, or None. Returns the stage summary (numbers, figure paths relative to out_dir)."""
    from medai import demo
    from medai.drr import CArmGeometry, Pose, prepare_ct, render_matrix
    from medai.io import Volume
    from medai.registration.overlay import overlay, to_grey
    from medai.registration.pipeline import mtre_of

    from . import labelmap_to_segmentation, volume_to_node
    from . import standalone
    from .fusion_pictures import render_before_after, render_segmentation_3d, save_png, silhouette_iou
    from .registration_scene import body_mask

    folder = os.path.join(out_dir, "registration")
    os.makedirs(folder, exist_ok=True)
    standalone.install()
    scene = standalone.new_scene()
    logic = standalone.module_logic("MedAIRegistration")
    summary: dict = {"figures": {}}

    ct_node = volume_to_node(scene, ct, "MedAIAbdomenCT")
    shown = Volume(predicted_liver, ct.geometry) if predicted_liver is not None else liver
    segmentation = labelmap_to_segmentation(scene, shown, MODEL_LIVER if predicted_liver is not None else LIVER,
                                            "MedAIAbdomenCT liver", ct_node)
    start = time.perf_counter()
    picture = render_segmentation_3d(segmentation, ct_node, direction="anterior", preset="bone")
    summary["segmentation_3d_seconds"] = round(time.perf_counter() - start, 2)
    summary["figures"]["segmentation_3d"] = os.path.relpath(save_png(picture, os.path.join(folder, "segmentation_3d.png")), out_dir)

    carm = CArmGeometry(**demo.DEMO_FRAME_CARM)
    frame_path = os.path.join(folder, "frame.npy")
    np.save(frame_path, demo.demo_frame(ct))
    frame_node = logic.loadFrame(frame_path, "demo frame", pixelSpacingMm=carm.row_spacing_mm, sddMm=carm.sdd_mm,
                                 sidMm=carm.sid_mm)
    outcome = logic.register(ct_node, frame_node, demo.DEMO_INITIAL)
    result = outcome.result
    centre = ct.geometry.centre_ras(ct.array.shape)
    truth = Pose.from_array(demo.DEMO_TRUTH).matrix(centre)
    liver_points = _points_ras(liver)
    summary.update({
        "frame": os.path.relpath(frame_path, out_dir), "truth_pose": list(demo.DEMO_TRUTH),
        "initial_pose": list(demo.DEMO_INITIAL), "pose": [round(v, 3) for v in result.pose.as_array().tolist()],
        "mtre_initial_mm": round(mtre_of(Pose.from_array(demo.DEMO_INITIAL).matrix(centre), truth, liver_points), 2),
        "mtre_agent_mm": round(mtre_of(result.agent_matrix, truth, liver_points), 2),
        "mtre_mm": round(mtre_of(result.matrix, truth, liver_points), 2), "mtre_points": "liver voxels",
        "seconds": round(result.seconds, 2), "steps": result.steps, "confidence": round(outcome.confidence, 3),
        "summary": outcome.summary})

    fusion = logic.showFusion3D(ct_node, outcome.frameNode, outcome.transformNode, segmentation, preset="bone")
    summary["silhouette_iou"] = {k: round(v, 3) for k, v in
                                 silhouette_iou_with(fusion, outcome.transformNode, silhouette_iou).items()}
    fusion.only("ct", "frame", "beam", "segments")
    start = time.perf_counter()
    views = render_before_after(fusion, outcome.transformNode)
    summary["render_seconds_median"] = round(float(np.median(views["seconds"])), 3)
    summary["render_seconds_total"] = round(time.perf_counter() - start, 2)
    path = os.path.join(folder, "fusion_3d.png")
    _figure_fusion(views, summary, path)
    summary["figures"]["fusion_3d"] = os.path.relpath(path, out_dir)

    frame = np.asarray(slicer.util.arrayFromVolume(outcome.frameNode)[0], dtype=np.float32)
    with torch.inference_mode():
        drr_initial = render_matrix(prepare_ct(ct), carm, Pose.from_array(demo.DEMO_INITIAL).matrix(centre)).numpy()
    drr_after = np.asarray(slicer.util.arrayFromVolume(outcome.drrNode)[0], dtype=np.float32)
    mask = body_mask(frame)
    grey = (to_grey(frame, mask) * 255).astype(np.uint8)
    panels = [("fluoroscopy frame", np.repeat(grey[..., None], 3, axis=2)),
              (f"DRR over frame, initial pose ({summary['mtre_initial_mm']:.0f} mm)", overlay(frame, drr_initial, "blend", mask)),
              (f"checkerboard, registered ({summary['mtre_mm']:.1f} mm)", overlay(frame, drr_after, "checkerboard", mask)),
              ("DRR edges on frame, registered", overlay(frame, drr_after, "edges", mask))]
    path = os.path.join(folder, "overlays.png")
    _figure_panels(panels, path, "2D views of the registration (DRR of the CT at the pose vs the frame)")
    summary["figures"]["registration_overlays"] = os.path.relpath(path, out_dir)
    for kind in ("checkerboard", "edges"):
        logic.addOverlay(outcome.frameNode, outcome.drrNode, kind)

    from .scene_io import save_scene

    summary["scene"] = os.path.relpath(save_scene(scene, os.path.join(folder, "scene"), "MedAIRegistrationDemo"), out_dir)
    return summary


def silhouette_iou_with(fusion, transform_node, measure) -> dict:
    """The silhouette IoU with the volume rendering switched to the "body" preset (skin outline), then back."""
    from .registration_scene import show_volume_rendering

    show_volume_rendering(fusion.ct_node, "body")
    try:
        return measure(fusion, transform_node)
    finally:
        show_volume_rendering(fusion.ct_node, "bone")


def _points_ras(mask_volume, max_points: int = 4000) -> np.ndarray:
    kji = np.argwhere(mask_volume.array > 0)[:: max(1, int(np.count_nonzero(mask_volume.array) // max_points))]
    ijk = np.c_[kji[:, ::-1], np.ones(len(kji))]
    return (ijk @ mask_volume.geometry.ijk_to_ras().T)[:, :3]


def _figure_fusion(views: dict, summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9.6), gridspec_kw={"height_ratios": [1, 1]})
    titles = {"oblique_before": f"initial pose (liver mTRE {summary['mtre_initial_mm']:.1f} mm)",
              "oblique_after": f"registered: agent + refinement ({summary['mtre_mm']:.2f} mm, {summary['seconds']:.1f} s)",
              "beams_eye_before": f"from the X-ray source, initial (body IoU {summary['silhouette_iou']['before']:.2f})",
              "beams_eye_after": f"from the X-ray source, registered (body IoU {summary['silhouette_iou']['after']:.2f})"}
    for ax, key in zip(axes.ravel(), ("oblique_before", "oblique_after", "beams_eye_before", "beams_eye_after")):
        ax.imshow(views[key])
        ax.set_title(titles[key], fontsize=11)
        ax.set_axis_off()
    fig.suptitle("MedAIRegistration in the 3D view: CT (bone volume rendering, liver surface) under the registration "
                 "transform,\nthe fluoroscopy frame on its detector plane, X-ray source and beam "
                 "(Slicer displayable managers, offscreen)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _figure_panels(panels: list, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.0))
    for ax, (name, rgb) in zip(axes, panels):
        ax.imshow(rgb)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
