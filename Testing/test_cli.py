"""The `medai` command: JSON info on real files, clear errors with exit status 2, the demo."""
import json
import subprocess
import sys

import pytest

from medai.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "medai.cli", *args], capture_output=True, text=True, timeout=300)


def test_info_dicom_series_json(data_dir):
    result = run_cli("info", str(data_dir / "ct_dicom/3Dircadb1.17/PATIENT_DICOM"))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["kind"] == "volume" and info["modality"] == "CT"
    assert info["shape"] == [512, 512, 119]
    assert info["spacing_mm"] == pytest.approx([0.743, 0.743, 1.6], abs=1e-6)
    assert info["value_range"] == [-1024.0, 1023.0]


def test_info_xray_json(data_dir, capsys):
    assert main(["info", "--compact", str(data_dir / "chest_xray/kermany_224/NORMAL/IM-0448-0001.jpeg")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "xray" and info["shape"] == [224, 224]


def test_info_bad_input_is_one_clear_line(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not nifti")
    result = run_cli("info", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("medai info: error:") and "broken.nii.gz" in result.stderr


def test_demo_runs_without_shared_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAI_SHARED_DATA", str(tmp_path / "absent"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 1400 < summary["liver_volume_ml"] < 2600  # adult liver volume from the bundled 3 mm mask
    for rel in summary["outputs"].values():
        assert (out / rel).stat().st_size > 1000
    assert "MedAIAbdomenCT_liver.seg.nrrd" in (out / summary["outputs"]["scene"]).read_text()
    registration = summary["registration"]  # a fluoroscopy-like frame of the sample CT, registered via the Logic
    assert registration["mtre_mm"] < 2.0 < 10.0 < registration["mtre_initial_mm"]
    assert registration["silhouette_iou"]["after"] > registration["silhouette_iou"]["before"] + 0.05
    assert {"fusion_3d", "registration_overlays", "segmentation_3d"} <= set(summary["outputs"])
