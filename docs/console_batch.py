"""Batch processing from 3D Slicer's Python console with the MedAI module Logic (the same calls as the buttons).

In Slicer (Python console)::

    exec(open("/path/to/MedAIToolkit/docs/console_batch.py").read())
    rows = diagnose_folder("/data/cxr", task="pneumonia", csv_path="/data/cxr_results.csv")
    rows = segment_folder("/data/ct", task="ct-liver", out_folder="/data/liver_segmentations")

Headless, without Slicer (slicer-core and the module Logic through medai_slicer.standalone)::

    python docs/console_batch.py diagnose /data/cxr --task pneumonia --csv results.csv
    python docs/console_batch.py segment /data/ct --task ct-liver --out liver/ --csv results.csv

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
    """Classify every X-ray (.png/.jpg/.jpeg/.dcm) in ``folder``; one row per file (prediction, p_<CLASS>)."""
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


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="MedAI module Logic over a folder of studies (headless)")
    parser.add_argument("kind", choices=["diagnose", "segment"])
    parser.add_argument("folder")
    parser.add_argument("--task", required=True)
    parser.add_argument("--csv")
    parser.add_argument("--out", help="segment: folder for the label maps")
    args = parser.parse_args()
    if args.kind == "diagnose":
        results = diagnose_folder(args.folder, args.task, args.csv)
    else:
        results = segment_folder(args.folder, args.task, args.out, args.csv)
    failed = [r for r in results if r["error"]]
    print(f"{len(results) - len(failed)} of {len(results)} studies done" + (f"; failed: {failed}" if failed else ""))
    sys.exit(2 if failed else 0)
