"""Chest X-ray diagnosis on real data: patient-level splits, training, shipped models vs their cards,
bit-depth/photometric invariance, heat maps, the `medai diagnose` batch command, the Slicer Logic, bad input."""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer

from medai.diagnosis.data import records, split_of
from medai.diagnosis.inference import Classifier
from medai.diagnosis.registry import TASKS
from medai.errors import MedAIInputError, MedAIModelError
from medai.io import read_xray
from medai.io.dicom_write import write_xray_dicom
from medai.models import read_card

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
KERMANY_NORMAL = "chest_xray/kermany_224/NORMAL/IM-0448-0001.jpeg"
KERMANY_PNEUMONIA = "chest_xray/kermany_224/PNEUMONIA_BACTERIAL/person1136_bacteria_3078.jpeg"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_splits_are_by_patient_and_hold_every_class(data_dir, task):
    recs = records(TASKS[task])
    split_by_group = {}
    for rec in recs:
        assert split_by_group.setdefault(rec.group, split_of(rec.group)) == split_of(rec.group)
    for split in ("train", "val", "test", "external"):
        labels = {r.label for r in recs if split_of(r.group) == split}
        assert labels == set(TASKS[task].classes), (split, labels)
    # Kermany children with several images exist, and none of them crosses splits
    multi = [g for g in split_by_group if sum(r.group == g for r in recs) > 1]
    assert len(multi) > 100


def test_external_split_holds_whole_sub_sources(data_dir):
    """The external split is built like a test on unseen sources: the last block of COVID-19 Radiography file
    numbers (its sub-sources), later Kermany patient numbers, whole ieee8023 patients; none of it trains."""
    import re

    recs = records(TASKS["covid"])
    number = lambda r: int(re.search(r"-(\d+)\.", r.path).group(1))  # noqa: E731
    covid = [r for r in recs if r.source == "covid19_radiography_224" and r.label == "COVID"]
    external = [number(r) for r in covid if split_of(r.group) == "external"]
    inside = [number(r) for r in covid if split_of(r.group) != "external"]
    assert len(external) > 300 and min(external) > max(inside)  # one contiguous block of the latest numbers
    persons = [int(r.group.split("/person")[1]) for r in recs if "/person" in r.group]
    ext_persons = {p for r, p in zip([r for r in recs if "/person" in r.group], persons) if split_of(r.group) == "external"}
    assert ext_persons and min(ext_persons) > max(set(persons) - ext_persons)
    ieee = {}
    for r in recs:
        if r.source == "ieee8023_covid_subset_512":
            ieee.setdefault(r.group, set()).add(split_of(r.group))
    assert all(len(s) == 1 for s in ieee.values())
    share = sum(s == {"external"} for s in ieee.values()) / len(ieee)
    assert 0.2 < share < 0.4, share
    for task in TASKS.values():  # training never sees the external split
        train = {r.group for r in records(task, "train")}
        assert not train & {r.group for r in records(task, "external")}


def test_same_patient_same_split_in_both_tasks(data_dir):
    pneumonia = {r.group: split_of(r.group) for r in records(TASKS["pneumonia"])}
    covid = {r.group: split_of(r.group) for r in records(TASKS["covid"])}
    shared = set(pneumonia) & set(covid)
    assert len(shared) > 400 and all(pneumonia[g] == covid[g] for g in shared)


def test_a_few_real_training_steps_reduce_the_loss(data_dir, tmp_path):
    from train_diagnosis import train

    best = train("pneumonia", str(tmp_path), {"epochs": 4, "steps_per_epoch": 8, "batch_size": 16, "lr": 2e-3,
                                              "seed": 3, "min_epochs": 99, "limit_images": 160}, progress=False)
    losses = best["train_losses"]
    assert len(losses) == 4 and losses[-1] < 0.85 * losses[0], losses
    assert (tmp_path / "best.pt").exists() and (tmp_path / "metrics.csv").read_text().count("\n") == 1 + 4


@pytest.mark.parametrize("network", ["compact", "resnet10", "resnet18", "densenet121"])
def test_every_offered_architecture_learns_from_real_xrays(data_dir, tmp_path, network):
    """A few real steps (CLAHE inputs, 64 px to stay quick) lower the loss of each network the training script
    offers; the checkpoint records its input size and intensity mode."""
    import torch
    from train_diagnosis import train

    best = train("pneumonia", str(tmp_path), {"network": network, "epochs": 4, "steps_per_epoch": 8,
                                              "batch_size": 16, "lr": 2e-3, "seed": 3, "min_epochs": 99,
                                              "limit_images": 64, "image_size": 64, "intensity": "clahe"},
                 progress=False)
    losses = best["train_losses"]
    assert losses[-1] < 0.9 * losses[0], losses
    ckpt = torch.load(tmp_path / "best.pt", weights_only=False)
    assert ckpt["network"]["name"] == network and ckpt["image_size"] == 64 and ckpt["intensity"] == "clahe"


def test_augmentation_is_fixed_by_its_seed():
    """Same seed, same augmented images (a seeded run can be reproduced); another seed, other images."""
    import torch
    from train_diagnosis import Augmentation

    image = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(0))
    first, again, other = Augmentation(64, 5), Augmentation(64, 5), Augmentation(64, 6)
    a = [first(image) for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, [again(image) for _ in range(4)]))
    assert not all(torch.equal(x, y) for x, y in zip(a, [other(image) for _ in range(4)]))


def test_lung_regions_are_the_drawn_boxes_or_the_lung_prior(data_dir):
    from medai.diagnosis.data import lung_box_masks, lung_regions

    train = records(TASKS["covid"], "train")
    boxed = [r for r in train if r.lung_boxes][:3]
    unboxed = [r for r in train if not r.lung_boxes][:3]
    regions, has_boxes = lung_regions(boxed + unboxed, 128, train)
    assert has_boxes.tolist() == [True] * 3 + [False] * 3
    np.testing.assert_allclose(regions[:3], lung_box_masks(boxed, 128))
    prior = regions[3, 0].numpy()
    assert np.array_equal(prior, regions[5, 0].numpy())
    # the prior is two lung fields: high in the middle of each half, low at the borders and the midline
    assert prior[64, 32] > 0.9 and prior[64, 96] > 0.9
    assert prior[64, 64] < 0.5 and prior[2, 64] < 0.3 and prior[125, 32] < 0.3 and prior[64, 1] < 0.3


def test_lung_attention_training_moves_the_evidence_into_the_lungs(data_dir, tmp_path):
    import csv as csv_module

    from train_diagnosis import train

    train("pneumonia", str(tmp_path), {"epochs": 4, "steps_per_epoch": 8, "batch_size": 16, "lr": 2e-3, "seed": 3,
                                       "min_epochs": 99, "limit_images": 160, "lung_attention": 1.0}, progress=False)
    rows = list(csv_module.DictReader(open(tmp_path / "metrics.csv")))
    outside = [float(r["train_energy_outside_lungs"]) for r in rows]
    assert len(rows) == 4 and outside[-1] < 0.8 * outside[0], outside
    assert 0.0 <= float(rows[-1]["val_heatmap_mass_in_lungs"]) <= 1.0


def test_training_resumes_from_last_checkpoint(data_dir, tmp_path):
    from train_diagnosis import train

    cfg = {"epochs": 2, "steps_per_epoch": 2, "batch_size": 8, "limit_images": 48, "min_epochs": 99, "seed": 4}
    first = train("pneumonia", str(tmp_path), {**cfg, "stop_after_epochs": 1}, progress=False)
    resumed = train("pneumonia", str(tmp_path), cfg, resume=True, progress=False)
    assert len(first["train_losses"]) == 1 and len(resumed["train_losses"]) == 1  # only epoch 2 was run again
    assert (tmp_path / "metrics.csv").read_text().strip().count("\n") == 2  # one row per epoch, none repeated


def test_ddp_training_with_gloo_and_two_processes(data_dir, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("epochs: 1\nsteps_per_epoch: 2\nbatch_size: 4\nthreads: 1\nlimit_images: 64\nlung_attention: 1.0\n")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         str(REPO / "training" / "train_diagnosis.py"), "--task", "pneumonia", "--config", str(config),
         "--out", str(tmp_path / "run"), "--quiet"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[3] != ""  # rank 0 validated and logged the epoch


def test_a_comparison_run_is_added_to_the_card_without_touching_the_weights(tmp_path):
    import json
    import shutil

    from train_diagnosis import add_to_card

    models = tmp_path / "models"
    models.mkdir()
    for name in ("pneumonia.json", "pneumonia.pt"):
        shutil.copy(REPO / "Resources" / "Models" / name, models / name)
    run, doc = tmp_path / "runs" / "pneumonia-budget-tiny", tmp_path / "README.md"
    with pytest.raises(MedAIInputError, match="eval.json"):
        add_to_card("pneumonia", [str(run)], folder=models, doc=doc)
    (run / "eval").mkdir(parents=True)  # what train_diagnosis.py --evaluate leaves in a run
    per_class = {"NORMAL": {"sensitivity": 0.75}, "PNEUMONIA": {"sensitivity": 0.9}}
    (run / "eval" / "eval.json").write_text(json.dumps({
        "network": {"name": "resnet10"}, "validation": {"accuracy": 0.8}, "tta_validation_nll": {"off": 0.4},
        "accuracy": 0.81, "auc_macro": 0.9, "external": {"accuracy": 0.79, "auc_macro": 0.88, "per_class": per_class},
        "parameters": 123}))
    (run / "train_summary.json").write_text(json.dumps({"best": {"val_loss": 0.5, "train_losses": [1.0, 0.7]},
                                                        "config": {}, "seconds": 60.0}))
    before = json.loads((models / "pneumonia.json").read_text())
    card = add_to_card("pneumonia", [str(run)], folder=models, doc=doc)
    row = card["comparison"]["pneumonia-budget-tiny"]
    assert (row["network"], row["external_min_sensitivity"], row["epochs_run"]) == ("resnet10", 0.75, 2)
    assert card["comparison"] == {**before["comparison"], "pneumonia-budget-tiny": row}
    assert {**card, "comparison": None} == {**before, "comparison": None}  # weights, checksum, numbers unchanged
    assert json.loads((models / "pneumonia.json").read_text()) == card
    assert "| pneumonia-budget-tiny | resnet10 |" in doc.read_text()


def test_a_new_export_keeps_the_replaced_cards_rows_and_the_replaced_model():
    """Exporting a new model must not lose the comparison the shipped card holds (rows of runs whose folders are
    gone) nor the model it replaces, which joins the table with its card's own numbers."""
    import json

    from train_diagnosis import carried_comparison

    shipped = json.loads((REPO / "Resources" / "Models" / "covid.json").read_text())
    run_name = shipped["command"].split("--out ")[-1].split()[0].rsplit("/", 1)[-1]
    rows = carried_comparison(shipped, "runs/covid-next")
    assert set(shipped["comparison"]) < set(rows)
    replaced = rows[f"{run_name} (shipped before)"]
    assert replaced["external_accuracy"] == shipped["external_test"]["accuracy"]
    external = shipped["external_test"]["per_class"].values()
    assert replaced["external_min_sensitivity"] == min(m["sensitivity"] for m in external)
    assert replaced["val_nll_calibrated"] == min(shipped["tta_validation_nll"].values())
    assert set(replaced) == set(next(iter(shipped["comparison"].values())))  # the same columns as the other rows
    again = carried_comparison(shipped, f"runs/{run_name}")  # re-exporting the shipped run: no row of itself
    assert not any(name.startswith(run_name + " ") or name == run_name for name in again)
    assert carried_comparison(None, "runs/covid-next") == {}


def test_the_age_adversary_learns_to_read_age_while_the_network_learns_to_hide_it():
    """The adversary's own loss trains only the adversary; the confusion loss trains only the features, and is
    smallest where the adversary cannot tell children from adults (probability 1/2)."""
    import torch
    from train_diagnosis import AgeAdversary

    torch.manual_seed(0)
    adversary = AgeAdversary(8, 3)
    features = torch.randn(6, 8, 4, 4, requires_grad=True)
    labels, is_adult = torch.tensor([0, 1, 2, 1, 2, 0]), torch.tensor([1.0, 0, 1, 1, 0, 1])
    own, confusion = adversary.losses(features, labels, is_adult)
    own.backward(retain_graph=True)
    assert features.grad is None and adversary.score.weight.grad.abs().sum() > 0
    adversary.zero_grad()
    confusion.backward()
    assert adversary.score.weight.grad is None or adversary.score.weight.grad.abs().sum() == 0
    assert features.grad.abs().sum() > 0
    with torch.no_grad():
        adversary.score.weight.zero_()
        adversary.score.bias.zero_()
    assert adversary.losses(features, labels, is_adult)[1].item() == pytest.approx(np.log(2))


def test_calibration_weighs_every_class_the_same_unless_told_otherwise():
    """Uninformative logits on a 3:1 validation set: fitted to the set's likelihood the bias learns its class mix
    (log 3 between the classes); class-balanced, it learns none, so the argmax does not favour the frequent class."""
    from medai.diagnosis.metrics import fit_calibration

    rng = np.random.default_rng(0)
    truth = np.r_[np.zeros(300, int), np.ones(100, int)]
    logits = rng.normal(0, 0.01, (400, 2))
    _, plain = fit_calibration(logits, truth, class_balanced=False)
    _, balanced = fit_calibration(logits, truth)
    assert plain[0] - plain[1] == pytest.approx(np.log(3), abs=0.05)
    assert abs(balanced[0] - balanced[1]) < 0.05
    # logits three times too confident (true log-odds s, logits 3 s): both fits find the temperature
    s_true = rng.normal(0, 2, 4000)
    labels = (rng.uniform(size=4000) < 1 / (1 + np.exp(s_true))).astype(int)  # P(class 0) = sigmoid(s)
    overconfident = np.c_[1.5 * s_true, -1.5 * s_true]
    for balanced_fit in (False, True):
        temperature, _ = fit_calibration(overconfident, labels, class_balanced=balanced_fit)
        assert temperature == pytest.approx(3.0, rel=0.1)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_shipped_model_reproduces_its_card(data_dir, task):
    from medai.diagnosis.evaluation import evaluate_split

    card = read_card(task)
    classifier = Classifier(task)
    for split, key in (("test", "held_out_test"), ("external", "external_test")):
        report = evaluate_split(classifier, split)
        assert report["n"] == card[key]["n"]
        assert abs(report["accuracy"] - card[key]["accuracy"]) <= 0.01
        assert abs(report["auc_macro"] - card[key]["auc_macro"]) <= 0.01
        assert abs(report["ece"] - card[key]["ece"]) <= 0.01


def test_8bit_png_16bit_dicom_and_monochrome1_give_the_same_answer(data_dir, tmp_path):
    image = read_xray(str(data_dir / KERMANY_PNEUMONIA)).array
    stored16 = (image.astype(np.float64) * 257).astype(np.uint16)  # same picture, 16-bit range
    write_xray_dicom(tmp_path / "dx16.dcm", stored16, (0.14, 0.14), "DX", bits=16)
    write_xray_dicom(tmp_path / "cr_mono1.dcm", 65535 - stored16, (0.14, 0.14), "CR", photometric="MONOCHROME1", bits=16)
    classifier = Classifier("pneumonia")
    arrays = [image] + [read_xray(str(tmp_path / n)).array for n in ("dx16.dcm", "cr_mono1.dcm")]
    probabilities = classifier.probabilities(arrays)
    np.testing.assert_allclose(probabilities[1:], probabilities[[0, 0]], atol=2e-3)
    inverted = classifier.probabilities([image.max() - image])[0]  # a MONOCHROME1 read WITHOUT inversion
    assert abs(inverted[1] - probabilities[0][1]) > 1e-3  # ... would change the answer: the inversion matters


def test_heatmap_is_on_the_image_grid_and_mostly_in_the_lungs(data_dir):
    from medai.diagnosis.data import lung_mask
    from medai.diagnosis.inference import heat_mass_inside

    boxed = [r for r in records(TASKS["covid"], "test") if r.lung_boxes][:4]
    classifier = Classifier("covid")
    for rec in boxed:
        image = read_xray(str(data_dir / "chest_xray" / rec.path)).array
        heat = classifier.heatmap(image)
        assert heat.shape == image.shape and heat.dtype == np.float32
        assert 0.0 <= heat.min() and heat.max() == pytest.approx(1.0, abs=1e-3)
        assert 0.0 <= heat_mass_inside(heat, lung_mask(rec, heat.shape)) <= 1.0


def test_heatmap_is_high_where_the_class_evidence_is(data_dir):
    """The MONAI Grad-CAM shown to the user equals the network's own class-contrast map (not its inverse:
    MONAI's default post-processing flips maps), and on held-out boxed X-rays it holds more of its mass in the
    lungs than a flat map would."""
    import torch
    import torch.nn.functional as F

    from medai.diagnosis.data import load_images, lung_box_masks
    from medai.diagnosis.networks import contrast_maps, heat_maps

    boxed = [r for r in records(TASKS["covid"], "test") if r.lung_boxes][:8]
    classifier = Classifier("covid")
    images = load_images(boxed, 128, progress=False, intensity=classifier.intensity)
    boxes = lung_box_masks(boxed, 128)
    with torch.no_grad():
        logits, features = classifier.model(images, return_features=True)
        shown_by_network = heat_maps(contrast_maps(classifier.model.head.weight, features), 128)
    inside, flat = [], []
    for i, rec in enumerate(boxed):
        heat = classifier.heatmap(read_xray(str(data_dir / "chest_xray" / rec.path)).array)
        shown = F.interpolate(torch.from_numpy(heat)[None, None], size=(128, 128), mode="area")[0, 0]
        own = shown_by_network[i, int(logits[i].argmax())]
        assert np.corrcoef(shown.flatten(), own.flatten())[0, 1] > 0.9
        inside.append(float((shown * boxes[i, 0]).sum() / shown.sum()))
        flat.append(float(boxes[i, 0].mean()))
    assert np.mean(inside) > np.mean(flat) + 0.05


def test_cli_diagnose_batch_csv_heatmaps_and_errors_per_file(data_dir, tmp_path):
    folder = tmp_path / "inputs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a_normal.jpeg").write_bytes((data_dir / KERMANY_NORMAL).read_bytes())
    (folder / "sub" / "b_pneumonia.jpeg").write_bytes((data_dir / KERMANY_PNEUMONIA).read_bytes())
    (folder / "c_truncated.jpeg").write_bytes((data_dir / KERMANY_NORMAL).read_bytes()[:300])
    from PIL import Image

    photo = np.zeros((64, 64, 3), np.uint8)
    photo[..., 0] = 200  # a red photograph
    Image.fromarray(photo).save(folder / "d_photo.png")
    ct_slice = data_dir / "ct_dicom/3Dircadb1.17/PATIENT_DICOM/image_0"
    out_csv, heat_dir = tmp_path / "out" / "results.csv", tmp_path / "heat"
    result = subprocess.run([sys.executable, "-m", "medai.cli", "diagnose", "--task", "pneumonia", str(folder),
                             str(ct_slice), "--csv", str(out_csv), "--heatmaps", str(heat_dir)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2  # some files failed ...
    rows = list(csv.DictReader(open(out_csv)))
    assert list(rows[0]) == ["path", "prediction", "p_NORMAL", "p_PNEUMONIA", "caution", "warning", "error"]
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(rows) == 5
    for name in ("a_normal.jpeg", "b_pneumonia.jpeg"):  # ... the others are still done
        row = by_name[name]
        assert row["error"] == "" and row["prediction"] in ("NORMAL", "PNEUMONIA")
        assert float(row["p_NORMAL"]) + float(row["p_PNEUMONIA"]) == pytest.approx(1.0, abs=2e-4)
        assert (heat_dir / f"{Path(name).stem}_heatmap.png").exists()
    assert "could not be read" in by_name["c_truncated.jpeg"]["error"]
    assert "colour image" in by_name["d_photo.png"]["error"]
    assert "CT image was given where an X-ray" in by_name["image_0"]["error"]
    assert result.stderr.count("medai diagnose: error:") == 3


def test_cli_unknown_task_and_missing_model(tmp_path, monkeypatch):
    result = subprocess.run([sys.executable, "-m", "medai.cli", "diagnose", "--task", "fracture", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown diagnosis task 'fracture'" in result.stderr
    with pytest.raises(MedAIModelError, match="no model card for task 'covid'"):
        Classifier("covid", models_folder=str(tmp_path))


def test_corrupted_model_file_is_refused(tmp_path):
    import shutil

    from medai.models import models_dir

    for name in ("pneumonia.pt", "pneumonia.json"):
        shutil.copy(models_dir() / name, tmp_path / name)
    data = bytearray((tmp_path / "pneumonia.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "pneumonia.pt").write_bytes(bytes(data))
    with pytest.raises(MedAIModelError, match="corrupted or was replaced"):
        Classifier("pneumonia", models_folder=str(tmp_path))


def test_logic_refuses_a_ct_volume_and_leaves_the_scene_alone(data_dir, scene):
    from MedAIDiagnosis import MedAIDiagnosisLogic
    from medai_slicer import load_volume_node

    ct = load_volume_node(scene, str(data_dir / "ct_dicom/3Dircadb1.17/PATIENT_DICOM"))
    before = slicer.util.arrayFromVolume(ct).copy()
    n_nodes = scene.GetNumberOfNodes()
    with pytest.raises(MedAIInputError, match=r"one 2D image; got an array of shape \(119, 512, 512\)"):
        MedAIDiagnosisLogic().classify(ct, "pneumonia")
    assert scene.GetNumberOfNodes() == n_nodes
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), before)


def test_logic_heatmap_volume_shares_the_xray_geometry(data_dir, scene):
    from MedAIDiagnosis import MedAIDiagnosisLogic
    from medai_slicer import ijk_to_ras_of

    logic = MedAIDiagnosisLogic()
    xray = logic.loadXRay(str(data_dir / "chest_xray/ieee8023_covid_subset_512/COVID/"
                          "article_river_1a00a3c07ea311eab70491c6fb93d336-figure-2.jpg"))
    result = logic.classify(xray, "covid")
    np.testing.assert_allclose(ijk_to_ras_of(result.heatmap), ijk_to_ras_of(xray))
    assert result.table.GetNumberOfRows() == 3
    assert result.table.GetTable().GetColumnByName("class").GetValue(0) == "COVID"
    assert result.reportNode.GetText() == result.report
    # the card's caution for a COVID reading (adult other pneumonia is not recognised) is in the report under it
    assert result.prediction == "COVID"  # an adult COVID X-ray (ieee8023)
    assert "Caution: on adults this model does not tell COVID from other pneumonia" in result.report
    assert result.caution and result.caution in result.report
    logic.showHeatmap(xray, result.heatmap)  # no slice views here: must not fail


def test_the_batch_csv_carries_the_cards_caution_for_a_covid_reading(data_dir, tmp_path):
    """The caution the Slicer report prints under a COVID reading is in the CSV row too, and only there."""
    from medai.diagnosis.batch import diagnose_files

    covid = data_dir / "chest_xray/ieee8023_covid_subset_512/COVID/article_river_1a00a3c07ea311eab70491c6fb93d336-figure-2.jpg"
    classifier = Classifier("covid")
    rows = diagnose_files(classifier, [str(covid), str(data_dir / KERMANY_NORMAL)], csv_path=str(tmp_path / "r.csv"))
    by_name = {Path(r["path"]).name: r for r in rows}
    adult_covid, child_normal = by_name[covid.name], by_name[Path(KERMANY_NORMAL).name]
    assert adult_covid["prediction"] == "COVID" and child_normal["prediction"] == "NORMAL"
    assert adult_covid["caution"] == classifier.caution("COVID")
    assert "on adults this model does not tell COVID from other pneumonia" in adult_covid["caution"]
    assert child_normal["caution"] == ""
    written = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [r["caution"] for r in written] == [r["caution"] for r in rows]


def test_a_card_cautions_a_prediction_only_where_a_subgroup_is_read_badly():
    from train_diagnosis import _cautions

    key = "OTHER_PNEUMONIA | adult (ieee8023_covid_subset_512)"
    assert "2 of 19" in _cautions({key: {"n": 19, "sensitivity": 2 / 19}})["COVID"]
    assert _cautions({key: {"n": 19, "sensitivity": 0.9}}) == {} == _cautions(None)


def test_reproduce_command_chains_the_shipped_init(tmp_path):
    """A run initialised from a shipped model names the command that makes that model first (its card's)."""
    import json

    from train_diagnosis import reproduce_command

    shipped = tmp_path / "models" / "pneumonia.pt"
    shipped.parent.mkdir()
    shipped.write_bytes(b"")
    shipped.with_suffix(".json").write_text(json.dumps({"command": "python make_pneumonia --export"}))
    run = tmp_path / "covid-run"
    run.mkdir()
    (run / "train_summary.json").write_text(json.dumps({
        "config": {"network": "compact", "epochs": 24, "seed": 0, "balance": "class_and_age", "lung_attention": 1.0},
        "best": {"init": str(shipped)}}))
    command = reproduce_command("covid", str(run))
    assert command.startswith("python make_pneumonia --export && python training/train_diagnosis.py --task covid")
    assert f"--init {shipped}" in command and "--epochs 24" in command and command.endswith("--export")
    (run / "train_summary.json").write_text(json.dumps({"config": {"epochs": 3, "seed": 1}, "best": {}}))
    assert reproduce_command("covid", str(run)).startswith("python training/train_diagnosis.py --task covid")
