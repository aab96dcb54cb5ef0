"""Batch processing from 3D Slicer's Python console with the MedAI module Logic (the same calls as the buttons).

In Slicer (Python console)::

    exec(open("/path/to/MedAIToolkit/docs/console_batch.py").read())
    rows = diagnose_folder("/data/cxr", task="pneumonia", csv_path="/data/cxr_results.csv")
    rows = segment_folder("/data/ct", task="ct-liver", out_folder="/data/liver_segmentations")
    rows = register_manifest("/data/cases.csv", out_folder="/data/registrations", csv_path="/data/reg_results.csv")

Headless, without Slicer (slicer-core and the module Logic through medai_slicer.standalone)::

    python docs/console_batch.py diagnose /data/cxr --task pneumonia --csv results.csv
    python docs/console_batch.py segment /data/ct --task ct-liver --out liver/ --csv results.csv
    python docs/console_batch.py register cases.csv --out registrations/ --csv results.csv

``register_manifest`` reads a CSV with columns ct, frame, tx ty tz rx ry rz (initial pose; empty: the frame's
DICOM C-arm angles) and optional pixel_spacing, sdd, sid (the same manifest as ``medai batch register``).

Each study's nodes are removed from the scene once its numbers are saved, so memory stays flat over a cohort; a
study that fails is reported and the loop goes on. For resumable cohorts from a shell, use `medai batch`.
"""
import csv
import logging
import os
import sys

try:
    from medai_slicer import standalone
except ImportError:  # run from a checkout: the repository's MedAIToolkit folder holds it
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "MedAIToolkit"))
    from medai_slicer import standalone

standalone.install()  # headless: stand-ins for what slicer-core lacks; does nothing inside Slicer
import slicer  # noqa: E402


def moduleLogic(name):
    """The module's Logic: the running application's in Slicer, a new one on slicer-core otherwise."""
    if standalone.inside_slicer():
        return slicer.util.getModuleLogic(name)
    if getattr(slicer, "mrmlScene", None) is None:
        standalone.new_scene()
    return standalone.module_logic(name)


def _files(folder, suffixes):
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(suffixes))


def _write_csv(rows, csv_path):
    if csv_path and rows:
        fields = sorted({k for row in rows for k in row}, key=lambda k: (k != "path", k != "error", k))
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


def diagnose_folder(folder, task="pneumonia", csv_path=None):
    """Classify every X-ray (.png/.jpg/.jpeg/.dcm) in ``folder``; one row per file (prediction, p_<CLASS>,
    caution: the model card's caution for that prediction, '' when none)."""
    logic = moduleLogic("MedAIDiagnosis")
    rows = []
    for path in _files(folder, (".png", ".jpg", ".jpeg", ".dcm")):
        row, created = {"path": path, "error": ""}, []
        try:
            xray = logic.loadXRay(path)
            created.append(xray)
            result = logic.classify(xray, task, heatmap=False)
            created += [result.table, result.reportNode]
            row["prediction"] = result.prediction
            row.update({f"p_{c}": round(p, 4) for c, p in result.probabilities.items()})
            row["caution"] = result.caution
        except Exception as exc:  # report and go on with the next study
            row["error"] = str(exc)
            logging.error(f"{path}: {exc}")
        for node in created:
            if node is not None:
                slicer.mrmlScene.RemoveNode(node)
        rows.append(row)
    _write_csv(rows, csv_path)
    return rows


def segment_folder(folder, task="ct-liver", out_folder=None, csv_path=None):
    """Segment every volume (DICOM series folder, .nii/.nii.gz/.nrrd) in ``folder``; one row per study with each
    segment's volume in ml; with ``out_folder``, each label map is written there as <study>_<task>.nii.gz."""
    import numpy as np
    from medai.io import Volume, write_volume
    from medai_slicer import node_to_volume, segment_to_array, segmentation_to_labelmap

    logic = moduleLogic("MedAISegmentation")
    studies = [os.path.join(folder, n) for n in sorted(os.listdir(folder))
               if n.lower().endswith((".nii", ".nii.gz", ".nrrd")) or os.path.isdir(os.path.join(folder, n))]
    if out_folder:
        os.makedirs(out_folder, exist_ok=True)
    rows = []
    for path in studies:
        row, created = {"path": path, "error": ""}, []
        try:
            volume = logic.loadVolume(path)
            created.append(volume)
            segmentation = logic.segment(volume, task)
            created.append(segmentation)
            image = node_to_volume(volume)
            voxel_ml = float(np.prod(image.geometry.spacing_mm)) / 1000
            segments = segmentation.GetSegmentation()
            for index in range(segments.GetNumberOfSegments()):
                name = segments.GetNthSegment(index).GetName()
                mask = segment_to_array(slicer.mrmlScene, segmentation, name, image.geometry, image.array.shape)
                row[f"{name.replace(' ', '_')}_ml"] = round(float((mask > 0).sum()) * voxel_ml, 1)
            if out_folder:
                labels = segmentation_to_labelmap(slicer.mrmlScene, segmentation, image.geometry, image.array.shape)
                study = os.path.basename(path.rstrip(os.sep))
                for suffix in (".nii.gz", ".nii", ".nrrd"):
                    study = study[: -len(suffix)] if study.lower().endswith(suffix) else study
                write_volume(Volume(labels, image.geometry), os.path.join(out_folder, f"{study}_{task}.nii.gz"))
        except Exception as exc:  # report and go on with the next study
            row["error"] = str(exc)
            logging.error(f"{path}: {exc}")
        for node in created:
            slicer.mrmlScene.RemoveNode(node)
        rows.append(row)
    _write_csv(rows, csv_path)
    return rows


def register_manifest(manifest_csv, out_folder=None, csv_path=None, refine=True):
    """Register each manifest row's frame to its CT with the MedAIRegistration Logic; one row per frame (pose
    tx..rz, confidence, similarity); with ``out_folder``, each result's RAS -> C-arm matrix is written there as
    <frame>_registration.json. Consecutive rows with the same CT reuse its node (the CT is prepared once). The
    manifest is read as ``medai batch register`` reads it (relative paths from the manifest's folder)."""
    import json

    from medai.batch import POSE_COLUMNS, items_from, register_row

    logic = moduleLogic("MedAIRegistration")
    if out_folder:
        os.makedirs(out_folder, exist_ok=True)
    rows, ct_path, ct_node = [], None, None
    for item in items_from(manifest=manifest_csv, kind="register"):
        row, created = {"path": item.path, "error": ""}, []
        try:
            if item.fields["ct"] != ct_path:
                if ct_node is not None:
                    slicer.mrmlScene.RemoveNode(ct_node)
                ct_path, ct_node = None, None
                ct_node = logic.loadCT(item.fields["ct"])
                ct_path = item.fields["ct"]
            case = register_row(item)
            frame = logic.loadFrame(item.path, pixelSpacingMm=case["pixel_spacing"], sddMm=case["sdd_mm"],
                                    sidMm=case["sid_mm"], invert=case["invert"])
            created.append(frame)
            outcome = logic.register(ct_node, frame, case["init"], refine=refine, show=False)
            created += [outcome.transformNode, outcome.frameNode, outcome.drrNode, outcome.tableNode]
            result = outcome.result
            row.update({k: round(float(v), 3) for k, v in zip(POSE_COLUMNS, result.pose.as_array())})
            row.update(confidence=round(outcome.confidence, 4), similarity=round(result.similarity, 4),
                       ct=ct_path)
            if out_folder:
                name = os.path.splitext(os.path.basename(item.path))[0]
                with open(os.path.join(out_folder, f"{name}_registration.json"), "w") as f:
                    json.dump({"ct": ct_path, "frame": item.path, **result.to_dict()}, f, indent=2)
        except Exception as exc:  # report and go on with the next case
            row["error"] = str(exc)
            logging.error(f"{item.path}: {exc}")
        if ct_node is not None:
            ct_node.SetAndObserveTransformNodeID(None)  # the CT back where it was for the next frame
        for node in created:
            if node is not None:
                slicer.mrmlScene.RemoveNode(node)
        rows.append(row)
    if ct_node is not None:
        slicer.mrmlScene.RemoveNode(ct_node)
    _write_csv(rows, csv_path)
    return rows


# Run as a script (python docs/console_batch.py ...), not when exec()'d into Slicer's console, whose namespace is
# also __main__ but has no __file__ of this script.
if __name__ == "__main__" and not standalone.inside_slicer() and globals().get("__file__"):
    import argparse

    parser = argparse.ArgumentParser(description="MedAI module Logic over a folder of studies (headless)")
    parser.add_argument("kind", choices=["diagnose", "segment", "register"])
    parser.add_argument("folder", help="folder of studies (register: the manifest CSV)")
    parser.add_argument("--task", help="diagnose / segment task")
    parser.add_argument("--csv")
    parser.add_argument("--out", help="segment: folder for the label maps; register: for the result JSON files")
    args = parser.parse_args()
    if args.kind != "register" and not args.task:
        parser.error(f"{args.kind} needs --task")
    if args.kind == "register":
        results = register_manifest(args.folder, args.out, args.csv)
    elif args.kind == "diagnose":
        results = diagnose_folder(args.folder, args.task, args.csv)
    else:
        results = segment_folder(args.folder, args.task, args.out, args.csv)
    failed = [r for r in results if r["error"]]
    print(f"{len(results) - len(failed)} of {len(results)} studies done" + (f"; failed: {failed}" if failed else ""))
    sys.exit(2 if failed else 0)
