"""``medai demo``: the main job on the bundled samples (works without ../shared).

Writes to the output folder: ``summary.json`` (what was read and computed), PNG figures, and a Slicer scene
(``scene/MedAIDemo.mrml``) that opens in 3D Slicer with every result as its own node.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from .io import describe, read_volume, read_xray
from .samples import SAMPLES, sample_path


def _figure_ct(volume, liver, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, m = volume.array.astype(np.float32), liver.array > 0
    k, j, i = (s // 2 for s in a.shape)
    k = int(np.argmax(m.sum(axis=(1, 2))))  # axial slice through the largest liver section
    sx, sy, sz = volume.geometry.spacing_mm
    views = [("axial", a[k], m[k], sy / sx), ("coronal", a[:, j][::-1], m[:, j][::-1], sz / sx),
             ("sagittal", a[:, :, i][::-1], m[:, :, i][::-1], sz / sy)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (title, img, mask, aspect) in zip(axes, views):
        ax.imshow(np.clip(img, -160, 240), cmap="gray", aspect=aspect)
        if mask.any():
            ax.contour(mask, levels=[0.5], colors="orange", linewidths=1.2)
        ax.set_title(f"{title} (liver outlined)")
        ax.set_axis_off()
    fig.suptitle("Bundled sample CT (3D-IRCADb 1.17, 3 mm), window -160..240 HU")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _figure_xrays(images: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(3 * len(images), 3.3))
    for ax, (name, image) in zip(np.atleast_1d(axes), images.items()):
        ax.imshow(image.array, cmap="gray")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


DEMO_CARM = dict(sdd_mm=1200.0, sid_mm=700.0, height=192, width=192, row_spacing_mm=2.8, col_spacing_mm=2.8)
DEMO_POSES = {"AP (zero pose)": (0, 0, 0, 0, 0, 0), "LAO 30": (0, 0, 0, 0, 0, -30), "lateral": (0, 0, 0, 0, 0, 90),
              "CRA 20, shifted": (15, -10, 0, -20, 0, 0)}


def _drr_stage(ct, out_dir: str) -> dict:
    """DRRs of the sample CT at four C-arm poses (figure + timing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .drr import CArmGeometry, Pose, prepare_ct, render, to_display

    carm = CArmGeometry(**DEMO_CARM)
    prepared = prepare_ct(ct)
    render(prepared, carm, Pose())  # warm-up
    start = time.perf_counter()
    images = render(prepared, carm, [Pose.from_array(p) for p in DEMO_POSES.values()])
    seconds = time.perf_counter() - start
    fig, axes = plt.subplots(1, len(DEMO_POSES), figsize=(3.2 * len(DEMO_POSES), 3.6))
    for ax, name, image in zip(axes, DEMO_POSES, images):
        ax.imshow(to_display(image), cmap="gray")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    fig.suptitle(f"DRRs of the sample CT ({carm.height}x{carm.width}, SDD {carm.sdd_mm:.0f} mm), "
                 f"{len(DEMO_POSES)} poses in {seconds:.2f} s")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "drrs.png"), dpi=100)
    plt.close(fig)
    return {"poses": DEMO_POSES, "seconds_for_all": round(seconds, 3),
            "max_line_integral": round(float(images.max()), 3)}


DEMO_FRAME_CARM = dict(sdd_mm=1100.0, sid_mm=750.0, height=192, width=192, row_spacing_mm=3.0, col_spacing_mm=3.0)
DEMO_TRUTH = (5.0, -8.0, 10.0, 4.0, -3.0, -30.0)
"""Pose of the demo's fluoroscopy frame (LAO 30 and off-centre); the registration does not know it."""
DEMO_INITIAL = (20.0, -18.0, -6.0, 0.0, 0.0, -24.0)
"""The nominal view the registration starts from: 15 / 10 / 16 mm and 4 / 3 / 6 deg off."""


def demo_frame(ct, seed: int = 2026) -> np.ndarray:
    """A fluoroscopy-like frame (quantum noise, blur, gamma; bright = attenuating) of ``ct`` at DEMO_TRUTH,
    on a wide detector (576 mm) so the whole body outline shows."""
    from .drr import CArmGeometry, Pose, prepare_ct, render
    from .registration.augment import fluoroscopy_like

    line_integrals = render(prepare_ct(ct), CArmGeometry(**DEMO_FRAME_CARM), Pose.from_array(DEMO_TRUTH))[0]
    image, _ = fluoroscopy_like(line_integrals.numpy(), np.random.default_rng(seed), strength=0.7, collimate=False)
    return image


def _registration_stage(ct, liver, predicted_liver, out_dir: str) -> dict:
    """Register a fluoroscopy-like frame of the sample CT through the MedAIRegistration Logic on a real MRML
    scene; render the fusion before/after, the 2D overlays and the liver segmentation in 3D (offscreen)."""
    from .errors import MedAIModelError
    try:
        from medai_slicer.demo_fusion import run_fusion_demo
    except ImportError as exc:  # slicer-core missing: the engine-only install
        return {"skipped": f"slicer-core not importable ({exc})"}
    try:
        return run_fusion_demo(ct, liver, predicted_liver, out_dir)
    except MedAIModelError as exc:
        return {"skipped": str(exc)}


def _segmentation_stage(out_dir: str) -> dict:
    """The shipped EM membrane model on the bundled (unlabelled) ISBI test slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .errors import MedAIModelError
    from .segmentation.inference import Segmenter

    try:
        segmenter = Segmenter("em-membranes")
    except MedAIModelError as exc:
        return {"skipped": str(exc)}
    image = read_xray(sample_path("em_slice")).array
    start = time.perf_counter()
    classes = segmenter(image)
    seconds = time.perf_counter() - start
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.8))
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("ssTEM slice (ISBI 2012 test, unlabelled)")
    axes[1].imshow(image, cmap="gray")
    axes[1].imshow(np.ma.masked_where(classes != 0, classes + 1), cmap="autumn", alpha=0.55)
    axes[1].set_title(f"em-membranes: membranes in red ({seconds:.2f} s on CPU)")
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "em_segmentation.png"), dpi=100)
    plt.close(fig)
    return {"task": "em-membranes", "seconds": round(seconds, 3), "figure": "em_segmentation.png",
            "membrane_fraction": round(float((classes == 0).mean()), 4),
            "card_held_out_dice": segmenter.card.get("held_out", {}).get("mean")}


DIAGNOSIS_SAMPLES = {"xray_normal_1": "pneumonia", "xray_pneumonia_1": "pneumonia", "xray_covid": "covid"}


def _diagnosis_stage(out_dir: str) -> dict:
    """Shipped chest X-ray classifiers on bundled X-rays: calibrated probabilities, Grad-CAM overlays, a CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .diagnosis.batch import diagnose_files, overlay_rgb
    from .diagnosis.inference import Classifier
    from .errors import MedAIModelError

    results, panels = {}, []
    for name, task in DIAGNOSIS_SAMPLES.items():
        try:
            classifier = Classifier(task)
        except MedAIModelError as exc:
            results[name] = {"skipped": str(exc)}
            continue
        start = time.perf_counter()
        row = diagnose_files(classifier, [sample_path(name)], os.path.join(out_dir, f"diagnosis_{name}.csv"))[0]
        image = read_xray(sample_path(name)).array
        heat = classifier.heatmap(image, classifier.classes.index(row["prediction"]))
        results[name] = {"task": task, "prediction": row["prediction"], "seconds": round(time.perf_counter() - start, 3),
                         **{k: float(v) for k, v in row.items() if k.startswith("p_")},
                         "card_held_out_accuracy": classifier.card["held_out_test"]["accuracy"]}
        panels.append((f"{name} — {task}: {row['prediction']} ({max(float(v) for k, v in row.items() if k.startswith('p_')):.0%})",
                       overlay_rgb(image, heat)))
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.9))
        for ax, (title, rgb) in zip(np.atleast_1d(axes), panels):
            ax.imshow(rgb)
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
        fig.suptitle("Grad-CAM evidence of the predicted class (calibrated probabilities)", fontsize=9)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "diagnosis.png"), dpi=100)
        plt.close(fig)
        results["figure"] = "diagnosis.png"
    return results


def run_demo(out_dir: str, with_scene: bool = True) -> dict:
    """Run every stage available on the bundled samples; returns the summary written to summary.json."""
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    summary: dict = {"samples": {}, "outputs": {}}
    for name in SAMPLES:
        summary["samples"][name] = describe(sample_path(name))

    ct = read_volume(sample_path("ct_abdomen"))
    liver = read_volume(sample_path("ct_abdomen_liver"))
    summary["liver_volume_ml"] = round(float(liver.array.sum()) * float(np.prod(liver.geometry.spacing_mm)) / 1000, 1)
    _figure_ct(ct, liver, os.path.join(out_dir, "ct_overview.png"))
    summary["outputs"]["ct_overview"] = "ct_overview.png"

    xrays = {n: read_xray(sample_path(n)) for n in SAMPLES if n.startswith("xray_")}
    _figure_xrays(xrays, os.path.join(out_dir, "xrays.png"))
    summary["outputs"]["xrays"] = "xrays.png"

    summary["drr"] = _drr_stage(ct, out_dir)
    summary["outputs"]["drrs"] = "drrs.png"

    summary["segmentation"] = _segmentation_stage(out_dir)
    summary["liver_model"], predicted_liver = _liver_stage(ct, liver)
    if summary["segmentation"].get("figure"):
        summary["outputs"]["em_segmentation"] = summary["segmentation"]["figure"]
    summary["registration"] = _registration_stage(ct, liver, predicted_liver, out_dir)
    summary["outputs"].update(summary["registration"].get("figures", {}))
    summary["diagnosis"] = _diagnosis_stage(out_dir)
    if summary["diagnosis"].get("figure"):
        summary["outputs"]["diagnosis"] = summary["diagnosis"]["figure"]

    if with_scene:
        summary["outputs"]["scene"] = _write_scene(ct, liver, out_dir, predicted_liver)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    print(f"medai demo: wrote {', '.join(summary['outputs'].values())} and summary.json to {out_dir} "
          f"in {summary['seconds']} s")
    return summary


def _add_diagnosis_nodes(scene, xray_node) -> None:
    """The covid classifier's probability table, heat-map volume and report next to the X-ray in the scene."""
    from medai_slicer import node_to_volume
    from medai_slicer.diagnosis_nodes import add_heatmap_node, add_probability_table, add_report_node

    from .diagnosis.batch import report_text
    from .diagnosis.inference import Classifier
    from .errors import MedAIModelError

    try:
        classifier = Classifier("covid")
    except MedAIModelError:
        return
    volume = node_to_volume(xray_node)
    image = volume.array[0]
    probabilities = classifier.probabilities([image])[0]
    k = int(np.argmax(probabilities))
    name = xray_node.GetName()
    add_probability_table(scene, classifier.classes, probabilities, f"{name} covid probabilities", classifier.classes[k])
    add_heatmap_node(scene, classifier.heatmap(image, k), volume, f"{name} covid heat map")
    add_report_node(scene, report_text(classifier.classes, probabilities, name, classifier.task.description,
                                       classifier.temperature, classifier.caution(classifier.classes[k])),
                    f"{name} covid report")


def _liver_stage(ct, liver):
    """The shipped ct-liver model on the sample CT (a downsampled copy of its TRAINING patient: a demo, not a test)."""
    from .errors import MedAIModelError
    from .segmentation.inference import Segmenter
    from .segmentation.metrics import dice_iou

    try:
        segmenter = Segmenter("ct-liver")
    except MedAIModelError as exc:
        return {"skipped": str(exc)}, None
    start = time.perf_counter()
    classes = segmenter.segment_volume(ct)
    voxel_ml = float(np.prod(ct.geometry.spacing_mm)) / 1000
    return {"seconds": round(time.perf_counter() - start, 2),
            "liver_ml": round(float(classes.sum()) * voxel_ml, 1),
            "dice_vs_bundled_mask": round(dice_iou(classes, liver.array, 1)[0], 4),
            "note": "the sample CT is the model's training patient; held-out numbers are in Resources/Models/ct-liver.json",
            "card_held_out_dice": segmenter.card["held_out"]["mean"]["liver"]["dice"]}, classes


def _write_scene(ct, liver, out_dir: str, predicted_liver=None) -> str:
    """The results as a real MRML scene (slicer-core): CT volume, liver segmentation, X-ray."""
    import slicer  # the MRML layer; imported here only, the engine stays Slicer-free

    from medai_slicer import labelmap_to_segmentation, load_xray_node, volume_to_node
    from medai_slicer.scene_io import save_scene

    scene = slicer.vtkMRMLScene()
    ct_node = volume_to_node(scene, ct, "MedAIAbdomenCT")
    labelmap_to_segmentation(scene, liver, {1: ("liver", (0.86, 0.55, 0.45))}, "MedAIAbdomenCT liver", ct_node)
    if predicted_liver is not None:
        from .io import Volume

        labelmap_to_segmentation(scene, Volume(predicted_liver, ct.geometry), {1: ("liver (ct-liver model)",
                                 (0.3, 0.8, 0.4))}, "MedAIAbdomenCT ct-liver model", ct_node)
    xray_node = load_xray_node(scene, sample_path("xray_covid"), "MedAIChestXRayCOVID")
    _add_diagnosis_nodes(scene, xray_node)
    from medai_slicer.drr_nodes import add_drr_nodes

    from .drr import CArmGeometry, Pose

    add_drr_nodes(scene, ct, CArmGeometry(**DEMO_CARM), Pose.from_array(DEMO_POSES["LAO 30"]), "MedAIAbdomenCT DRR LAO 30")
    path = save_scene(scene, os.path.join(out_dir, "scene"), "MedAIDemo")
    return os.path.relpath(path, out_dir)

