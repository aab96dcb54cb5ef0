"""`medai batch`: killed midway and rerun -> exactly one output per input and an intact results CSV; a corrupt
input among good ones is recorded and the rest done; register over a manifest; nothing overwritten unasked."""
import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from medai.cli import main

REPO = Path(__file__).resolve().parents[1]


def rows_of(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def batch_command(*args) -> list[str]:
    return [sys.executable, "-m", "medai.cli", "batch", *map(str, args), "--quiet", "--threads", "1"]


@pytest.fixture
def em_slices(data_dir, tmp_path):
    folder = tmp_path / "em"
    folder.mkdir()
    for source in sorted((data_dir / "em_membranes" / "test").glob("*.png"))[:10]:
        shutil.copy(source, folder / source.name)
    return folder


def test_killed_batch_resumes_to_one_output_per_input(em_slices, tmp_path):
    """SIGKILL a `batch segment` once a few rows are written; the rerun skips what was done, finishes the rest,
    and leaves exactly one output per input, one `done` row per input, no partial file, inputs unchanged."""
    out, results = tmp_path / "seg", tmp_path / "results.csv"
    inputs = sorted(em_slices.glob("*.png"))
    before = {p.name: p.read_bytes() for p in inputs}
    env = {**os.environ, "PYTHONPATH": str(REPO / "MedAIToolkit")}
    command = batch_command("segment", em_slices, "--task", "em-membranes", "--out", out, "--csv", results)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 4:  # header + 3 rows
            break
        time.sleep(0.02)
    assert process.poll() is None, "the batch ended before it could be killed: " + process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = rows_of(results)
    assert 3 <= len(first) < len(inputs)

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(first)} already done (skipped)" in rerun.stdout
    rows = rows_of(results)
    done = Counter(row["path"] for row in rows if row["status"] == "done")
    assert done == Counter({str(p): 1 for p in inputs})
    outputs = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert outputs == sorted(f"{p.stem}_seg.png" for p in inputs)
    assert not list(out.glob(".partial-*"))
    for row in rows:
        from PIL import Image

        labels = np.array(Image.open(row["outputs"]))
        assert labels.shape == (512, 512) and set(np.unique(labels)) <= {0, 255}
        assert 0.5 < float(row["cell_interior_fraction"]) < 0.95
    assert {p.name: p.read_bytes() for p in inputs} == before


def test_corrupt_input_is_recorded_and_the_rest_done(data_dir, tmp_path, capsys):
    folder = tmp_path / "xrays"
    folder.mkdir()
    sources = sorted((data_dir / "chest_xray" / "kermany_224" / "NORMAL").glob("*.jpeg"))[:5]
    for source in sources[:4]:
        shutil.copy(source, folder / source.name)
    (folder / "truncated.jpeg").write_bytes(sources[4].read_bytes()[:2000])
    results = tmp_path / "results.csv"
    status = main(["batch", "diagnose", str(folder), "--task", "pneumonia", "--csv", str(results), "--out",
                   str(tmp_path / "heat"), "--quiet"])
    assert status == 2
    rows = {Path(row["path"]).name: row for row in rows_of(results)}
    assert rows["truncated.jpeg"]["status"] == "failed"
    assert "truncated.jpeg" in rows["truncated.jpeg"]["error"]
    assert "truncated.jpeg" in capsys.readouterr().err
    good = [row for name, row in rows.items() if name != "truncated.jpeg"]
    assert len(good) == 4 and all(row["status"] == "done" and row["prediction"] in ("NORMAL", "PNEUMONIA")
                                  for row in good)
    assert all(abs(float(r["p_NORMAL"]) + float(r["p_PNEUMONIA"]) - 1) < 1e-3 for r in good)
    assert len(list((tmp_path / "heat").glob("*_heatmap.png"))) == 4


def test_existing_output_is_not_overwritten_unless_asked(em_slices, tmp_path):
    out = tmp_path / "seg"
    out.mkdir()
    first = sorted(em_slices.glob("*.png"))[0]
    for other in sorted(em_slices.glob("*.png"))[2:]:
        other.unlink()
    precious = out / f"{first.stem}_seg.png"
    precious.write_bytes(b"the user's own file")
    args = ["batch", "segment", str(em_slices), "--task", "em-membranes", "--out", str(out), "--quiet"]
    assert main(args + ["--csv", str(tmp_path / "a.csv")]) == 2
    assert precious.read_bytes() == b"the user's own file"
    failed = [row for row in rows_of(tmp_path / "a.csv") if row["status"] == "failed"]
    assert len(failed) == 1 and "already exists" in failed[0]["error"]
    assert main(args + ["--csv", str(tmp_path / "b.csv"), "--overwrite"]) == 0
    assert precious.read_bytes()[:4] == b"\x89PNG"


def test_inputs_whose_outputs_would_collide(data_dir, tmp_path):
    """p.jpeg and p.png would both give p_heatmap.png: the second is recorded as failed, the first's output kept;
    a volume named with dots keeps them in its output name."""
    from medai.segmentation.batch import study_name

    folder = tmp_path / "xrays"
    folder.mkdir()
    source = sorted((data_dir / "chest_xray" / "kermany_224" / "NORMAL").glob("*.jpeg"))[0]
    shutil.copy(source, folder / "p.jpeg")
    from PIL import Image

    Image.open(source).save(folder / "p.png")
    args = ["batch", "diagnose", str(folder), "--task", "pneumonia", "--out", str(tmp_path / "heat"), "--quiet"]
    assert main(args + ["--csv", str(tmp_path / "r.csv")]) == 2
    rows = {Path(row["path"]).name: row for row in rows_of(tmp_path / "r.csv")}
    assert rows["p.jpeg"]["status"] == "done" and rows["p.png"]["status"] == "failed"
    assert "already the output of" in rows["p.png"]["error"] and str(folder / "p.jpeg") in rows["p.png"]["error"]
    assert main(args + ["--csv", str(tmp_path / "r.csv")]) == 2  # a rerun does not let the second one in
    assert [p.name for p in (tmp_path / "heat").glob("*.png")] == ["p_heatmap.png"]
    assert study_name("case.17_3mm.nrrd") == "case.17_3mm" and study_name("ct.nii.gz") == "ct"
    assert study_name(tmp_path / "DICOM.dir") == "DICOM.dir"


def test_batch_register_over_a_manifest(tmp_path):
    """Two frames of the sample CT at known poses and one missing frame: two results within 2 mm, one failure."""
    import json

    truths = {"lao.npy": (6.0, -5.0, 4.0, 2.0, -2.0, -25.0), "ap.npy": (-5.0, 6.0, -4.0, -2.0, 3.0, 4.0)}
    ct_path, manifest, ct = render_frames(tmp_path, truths)
    with open(manifest, "a") as f:
        f.write(f"{ct_path},missing.npy,0,0,0,0,0,0,3.0,1020,750\n")
    results = tmp_path / "results.csv"
    status = main(["batch", "register", "--manifest", str(manifest), "--csv", str(results), "--out",
                   str(tmp_path / "out"), "--quiet"])
    assert status == 2
    rows = {Path(row["path"]).name: row for row in rows_of(results)}
    assert rows["missing.npy"]["status"] == "failed" and "no such file" in rows["missing.npy"]["error"]
    for name, truth in truths.items():
        assert rows[name]["status"] == "done", rows[name]["error"]
        result = json.loads(Path(rows[name]["outputs"]).read_text())
        assert registration_error_mm(ct, result["matrix"], truth) < 2.0


def render_frames(tmp_path, truths: dict, init_offset=(12, -9, 8, 3, -3, 4)) -> tuple:
    """DRRs of the sample CT at ``truths`` poses saved as .npy frames, and a register manifest whose initial
    poses are off by ``init_offset``; returns (CT path, manifest path, CT volume)."""
    from medai.drr import CArmGeometry, Pose, prepare_ct, render
    from medai.io import read_volume
    from medai.samples import sample_path

    ct_path = str(sample_path("ct_abdomen"))
    ct = read_volume(ct_path)
    carm = CArmGeometry(1020.0, 750.0, 128, 128, 3.0, 3.0)
    prepared = prepare_ct(ct)
    with torch.inference_mode():
        for name, truth in truths.items():
            np.save(tmp_path / name, render(prepared, carm, Pose.from_array(truth))[0].numpy())
    manifest = tmp_path / "manifest.csv"
    lines = ["ct,frame,tx,ty,tz,rx,ry,rz,pixel_spacing,sdd,sid"]
    for name, truth in truths.items():
        init = np.array(truth) + np.array(init_offset)
        lines.append(f"{ct_path},{name},{','.join(f'{v:g}' for v in init)},3.0,1020,750")
    manifest.write_text("\n".join(lines) + "\n")
    return ct_path, manifest, ct


def registration_error_mm(ct, matrix, truth) -> float:
    from medai.drr import Pose
    from medai.registration.pipeline import mtre_of

    centre = ct.geometry.centre_ras(ct.array.shape)
    body = np.argwhere(ct.array > -300)[::500]
    points = (np.c_[body[:, ::-1], np.ones(len(body))] @ ct.geometry.ijk_to_ras().T)[:, :3]
    return mtre_of(np.array(matrix), Pose.from_array(truth).matrix(centre), points)


def test_console_batch_example_runs_headless(data_dir, tmp_path):
    """docs/console_batch.py (the Slicer-console example) on slicer-core: as a script, X-rays classified with one
    bad file reported while the loop goes on; exec()'d as in Slicer's console (no argparse run), the sample CT's
    liver segmented and written, and two DRR frames registered to it from a manifest with the module Logic."""
    import json

    from medai.samples import sample_path

    xrays = tmp_path / "cxr"
    xrays.mkdir()
    for source in sorted((data_dir / "chest_xray" / "kermany_224" / "PNEUMONIA_BACTERIAL").glob("*.jpeg"))[:2]:
        shutil.copy(source, xrays / source.name)
    (xrays / "not_an_xray.png").write_bytes(b"not a png")
    cts = tmp_path / "ct"
    cts.mkdir()
    shutil.copy(sample_path("ct_abdomen"), cts / "study1.nrrd")
    truths = {"lao.npy": (6.0, -5.0, 4.0, 2.0, -2.0, -25.0), "ap.npy": (-5.0, 6.0, -4.0, -2.0, 3.0, 4.0)}
    _, manifest, ct = render_frames(tmp_path, truths)
    env = {**os.environ, "PYTHONPATH": ""}
    script = str(REPO / "docs" / "console_batch.py")
    run = subprocess.run([sys.executable, script, "diagnose", str(xrays), "--task", "pneumonia", "--csv",
                          str(tmp_path / "cxr.csv")], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2, run.stderr  # the bad file
    rows = {Path(r["path"]).name: r for r in rows_of(tmp_path / "cxr.csv")}
    assert rows["not_an_xray.png"]["error"]
    assert sum(r["prediction"] == "PNEUMONIA" for r in rows.values()) >= 1

    console = (f"import sys; sys.argv = ['Slicer']\n"  # as in Slicer: the script must not parse this argv
               f"exec(open({script!r}).read())\n"
               f"segment_folder({str(cts)!r}, task='ct-liver', out_folder={str(tmp_path / 'liver')!r}, "
               f"csv_path={str(tmp_path / 'ct.csv')!r})\n"
               f"register_manifest({str(manifest)!r}, out_folder={str(tmp_path / 'reg')!r}, "
               f"csv_path={str(tmp_path / 'reg.csv')!r})\n"
               f"print('nodes left:', slicer.mrmlScene.GetNumberOfNodesByClass('vtkMRMLScalarVolumeNode'))\n")
    run = subprocess.run([sys.executable, "-c", console], capture_output=True, text=True, env=env, timeout=300,
                         cwd=REPO / "docs")
    assert run.returncode == 0, run.stderr
    assert "nodes left: 0" in run.stdout  # every study's nodes removed once its numbers were saved
    row = rows_of(tmp_path / "ct.csv")[0]
    assert 1400 < float(row["liver_ml"]) < 2600
    assert (tmp_path / "liver" / "study1_ct-liver.nii.gz").exists()
    rows = {Path(r["path"]).name: r for r in rows_of(tmp_path / "reg.csv")}
    for name, truth in truths.items():
        assert not rows[name]["error"] and 0 <= float(rows[name]["confidence"]) <= 1
        result = json.loads((tmp_path / "reg" / f"{Path(name).stem}_registration.json").read_text())
        assert registration_error_mm(ct, result["matrix"], truth) < 2.0
