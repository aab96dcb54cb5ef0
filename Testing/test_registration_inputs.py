"""`medai register` end to end and its bad input: every refusal names the problem (exit status 2, no
traceback), inputs are never modified; a full-chest LAO 40 view renders (only the body must lie between source
and detector, not the CT's air corners)."""
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from medai.cli import main
from medai.drr import CArmGeometry, Pose, prepare_ct, render
from medai.io import read_volume
from medai.registration.pipeline import mtre_of
from medai.samples import sample_path

CARM = CArmGeometry(1020.0, 750.0, 128, 128, 3.0, 3.0)
GEOMETRY = ["--pixel-spacing", "3.0", "--sdd", "1020", "--sid", "750"]
TRUTH = (8.0, -6.0, 5.0, 3.0, -2.0, -20.0)
INIT = ["--init", "18", "-12", "-5", "0", "0", "-15"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("register")
    ct_path = str(sample_path("ct_abdomen"))
    ct = read_volume(ct_path)
    with torch.inference_mode():
        frame = render(prepare_ct(ct), CARM, Pose.from_array(TRUTH))[0].numpy()
    frame_path = folder / "frame.npy"
    np.save(frame_path, frame)
    return {"folder": folder, "ct": ct_path, "ct_volume": ct, "frame": str(frame_path)}


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def refuse(capsys, argv, *words):
    """Run the CLI, expect exit status 2 with an error naming every word, and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for word in words:
        assert word.lower() in err.lower(), (word, err)
    return err


def test_register_round_trip_writes_the_documented_result(case, capsys):
    """result.json holds pose, matrix (RAS -> C-arm), agent_pose/agent_matrix, steps, seconds, similarity,
    confidence and trajectory; the registered matrix is within 2 mm of the truth (mTRE over body points)."""
    out = case["folder"] / "result.json"
    before = (digest(case["ct"]), digest(case["frame"]))
    assert main(["register", "--ct", case["ct"], "--frame", case["frame"], *INIT, *GEOMETRY, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("pose", "matrix", "agent_pose", "agent_matrix", "steps", "seconds", "similarity", "confidence",
                "trajectory"):
        assert key in result, key
    assert {"step", "action", "similarity"} <= set(result["trajectory"][0])
    ct = case["ct_volume"]
    centre = ct.geometry.centre_ras(ct.array.shape)
    truth = Pose.from_array(TRUTH).matrix(centre)
    body = np.argwhere(ct.array > -300)[::500]
    points = (np.c_[body[:, ::-1], np.ones(len(body))] @ ct.geometry.ijk_to_ras().T)[:, :3]
    initial = Pose.from_array([float(v) for v in INIT[1:]]).matrix(centre)
    assert mtre_of(initial, truth, points) > 10
    assert mtre_of(np.array(result["matrix"]), truth, points) < 2.0
    assert 0.0 <= result["confidence"] <= 1.0
    assert 0.0 < result["uncertainty_mm"] < 2.0  # the refinement's predicted RMS error over the body
    assert (digest(case["ct"]), digest(case["frame"])) == before  # inputs untouched
    assert result["agent_inference"] == "checked"
    similarities = [row["similarity"] for row in result["trajectory"]]
    assert all(b >= a for a, b in zip(similarities, similarities[1:]))  # every checked step improved the match
    assert similarities[-1] > similarities[0]  # (rounded to 6 decimals in the file)


def test_register_greedy_takes_the_networks_choices_unchecked(case):
    out = case["folder"] / "greedy.json"
    assert main(["register", "--ct", case["ct"], "--frame", case["frame"], *INIT, *GEOMETRY, "--greedy",
                 "--no-refine", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["agent_inference"] == "greedy" and result["refined"] is False
    assert result["pose"] == result["agent_pose"]


def test_frame_without_geometry_and_no_flags(case, capsys):
    refuse(capsys, ["register", "--ct", case["ct"], "--frame", case["frame"], *INIT, "--out",
                    str(case["folder"] / "x.json")], "no C-arm geometry", "--pixel-spacing", "--sdd", "--sid")


def test_ct_and_frame_without_overlap(case, capsys):
    refuse(capsys, ["register", "--ct", case["ct"], "--frame", case["frame"], "--init", "900", "0", "0", "0", "0",
                    "0", *GEOMETRY, "--out", str(case["folder"] / "x.json")], "do not overlap")


def test_nan_pose(case, capsys):
    refuse(capsys, ["register", "--ct", case["ct"], "--frame", case["frame"], "--init", "nan", "0", "0", "0", "0",
                    "0", *GEOMETRY, "--out", str(case["folder"] / "x.json")], "NaN")


def test_colour_photo_is_not_an_x_ray(case, capsys, tmp_path):
    from PIL import Image
    from skimage import data

    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    refuse(capsys, ["register", "--ct", case["ct"], "--frame", str(photo), *INIT, "--pixel-spacing", "1.0", "--sdd",
                    "1020", "--sid", "750", "--out", str(tmp_path / "x.json")], "colour")


def test_3d_volume_is_not_a_frame(case, capsys, tmp_path):
    volume = tmp_path / "volume.npy"
    np.save(volume, np.random.default_rng(0).random((12, 64, 64)).astype(np.float32))
    refuse(capsys, ["register", "--ct", case["ct"], "--frame", str(volume), *INIT, *GEOMETRY, "--out",
                    str(tmp_path / "x.json")], "2D image", "(12, 64, 64)")


def test_blank_frame(case, capsys, tmp_path):
    blank = tmp_path / "blank.npy"
    np.save(blank, np.zeros((128, 128), np.float32))
    refuse(capsys, ["register", "--ct", case["ct"], "--frame", str(blank), *INIT, *GEOMETRY, "--out",
                    str(tmp_path / "x.json")], "blank")


def test_ct_stored_without_its_rescale_intercept(case, capsys, tmp_path):
    """The sample CT written as stored values (+1024: air near 0) would render as a block of water: refused by
    `medai register` and `medai drr`, naming the intercept; the file is left as it was."""
    from medai.io import write_volume

    ct = case["ct_volume"]
    stored = tmp_path / "stored.nii.gz"
    write_volume(type(ct)(ct.array.astype(np.float32) + 1024, ct.geometry), str(stored))
    before = digest(stored)
    refuse(capsys, ["register", "--ct", str(stored), "--frame", case["frame"], *INIT, *GEOMETRY, "--out",
                    str(tmp_path / "x.json")], "Hounsfield", "intercept", "1024")
    refuse(capsys, ["drr", "--ct", str(stored), "--out", str(tmp_path / "drr.png")], "Hounsfield")
    assert digest(stored) == before and not (tmp_path / "x.json").exists()


def test_real_cts_in_hounsfield_units_pass_the_check(case, chest_ct_path, data_dir):
    """Whole and cropped to their centre (no air around the body), the real CTs pass; the same values stored
    without the intercept are refused, cropped or not."""
    from medai.errors import MedAIInputError
    from medai.io import check_hounsfield

    cts = {"sample": case["ct_volume"].array, "chest": read_volume(str(chest_ct_path)).array,
           "ircad": read_volume(str(data_dir / "ct_dicom/3Dircadb1.17/PATIENT_DICOM")).array}
    for name, hu in cts.items():
        for keep in (1.0, 0.3):
            crop = hu[tuple(slice(int(n * (1 - keep) / 2), int(n * (1 + keep) / 2)) for n in hu.shape)]
            check_hounsfield(crop, name)
            with pytest.raises(MedAIInputError, match="Hounsfield"):
                check_hounsfield(crop.astype(np.float32) + 1024, name)


def test_inverted_frame_is_refused_naming_invert_and_registers_with_it(case, capsys, tmp_path):
    """A frame bright where the beam was less attenuated (raw detector values) registered as given ended 225 mm off;
    it is refused, naming --invert, and with --invert it registers."""
    inverted = tmp_path / "inverted.npy"
    frame = np.load(case["frame"])
    np.save(inverted, frame.max() - frame)
    args = ["register", "--ct", case["ct"], "--frame", str(inverted), *INIT, *GEOMETRY, "--no-refine", "--out",
            str(tmp_path / "x.json")]
    refuse(capsys, args, "looks inverted", "--invert")
    assert not (tmp_path / "x.json").exists()
    assert main(args + ["--invert"]) == 0
    result = json.loads((tmp_path / "x.json").read_text())
    ct = case["ct_volume"]
    truth = Pose.from_array(TRUTH).matrix(ct.geometry.centre_ras(ct.array.shape))
    body = np.argwhere(ct.array > -300)[::500]
    points = (np.c_[body[:, ::-1], np.ones(len(body))] @ ct.geometry.ijk_to_ras().T)[:, :3]
    assert mtre_of(np.array(result["agent_matrix"]), truth, points) < 5.0


def test_raw_detector_frame_registers_through_its_log_with_linear(case, capsys, tmp_path):
    """Raw detector values (photon counts, proportional to exp(-line integral)) at a low dose: refused as given, naming
    --linear; with --linear (read through their log) within 2 mm. Merely inverted, the same frame ended 55 mm off
    (`runs/probe_linear2.py`): only the log is linear in the CT's attenuation."""
    line_integrals = np.load(case["frame"])
    counts = np.random.default_rng(0).poisson(4000.0 * np.exp(-line_integrals)).astype(np.float32)
    raw = tmp_path / "raw.npy"
    np.save(raw, counts)
    out = tmp_path / "raw.json"
    args = ["register", "--ct", case["ct"], "--frame", str(raw), *INIT, *GEOMETRY, "--out", str(out)]
    refuse(capsys, args, "looks inverted", "--linear", "--invert")
    refuse(capsys, args + ["--linear", "--invert"], "linear alone")
    assert main(args + ["--linear"]) == 0
    result = json.loads(out.read_text())
    ct = case["ct_volume"]
    truth = Pose.from_array(TRUTH).matrix(ct.geometry.centre_ras(ct.array.shape))
    body = np.argwhere(ct.array > -300)[::500]
    points = (np.c_[body[:, ::-1], np.ones(len(body))] @ ct.geometry.ijk_to_ras().T)[:, :3]
    assert mtre_of(np.array(result["matrix"]), truth, points) < 2.0
    # a log image with negative values is no intensity: refused with --linear (a log image without them is refused
    # as inverted, its log being the wrong way round)
    shifted = tmp_path / "shifted.npy"
    np.save(shifted, line_integrals - 1.0)
    refuse(capsys, ["register", "--ct", case["ct"], "--frame", str(shifted), *INIT, *GEOMETRY, "--linear", "--out",
                    str(out)], "never negative")
    refuse(capsys, ["register", "--ct", case["ct"], "--frame", case["frame"], *INIT, *GEOMETRY, "--linear", "--out",
                    str(out)], "looks inverted")


def test_missing_and_corrupted_agent_file(case, capsys, tmp_path):
    from medai.paths import resources_dir

    args = ["register", "--ct", case["ct"], "--frame", case["frame"], *INIT, *GEOMETRY, "--out",
            str(tmp_path / "x.json")]
    refuse(capsys, args + ["--agent", str(tmp_path / "absent.pt")], "agent file not found", "absent.pt")
    models = resources_dir() / "Models"
    shutil.copy(models / "registration-agent.json", tmp_path / "registration-agent.json")
    weights = bytearray((models / "registration-agent.pt").read_bytes())
    weights[len(weights) // 2] ^= 0xFF  # one flipped byte
    (tmp_path / "registration-agent.pt").write_bytes(bytes(weights))
    refuse(capsys, args + ["--agent", str(tmp_path / "registration-agent.pt")], "corrupted", "SHA-256")
    assert not (tmp_path / "x.json").exists()


def test_full_chest_lao_40_renders(chest_ct_path, tmp_path, capsys):
    """The issue's case: SDD 1020 / SID 750, LAO 40 of the full chest CT (table and air corners cross the
    detector plane, the body does not) renders; a pose that pushes the body through the detector is refused."""
    out = tmp_path / "lao40.npy"
    assert main(["drr", "--ct", str(chest_ct_path), "--out", str(out), "--size", "128", "128", "--pixel-spacing", "3.2",
                 "--sdd", "1020", "--sid", "750", "--pose", "0", "0", "0", "0", "0", "-40"]) == 0
    image = np.load(out)
    assert image.shape == (128, 128) and np.isfinite(image).all() and image.max() > 1.0
    refuse(capsys, ["drr", "--ct", str(chest_ct_path), "--out", str(tmp_path / "bad.npy"), "--size", "128", "128",
                    "--pixel-spacing", "3.2", "--sdd", "1020", "--sid", "750", "--pose", "0", "0", "200", "0", "0",
                    "-40"], "between the X-ray source and the detector")


def test_fine_tuned_agent_records_its_settings_and_registers(case, capsys, tmp_path):
    agent_path = tmp_path / "patient-agent.pt"
    assert main(["train-agent", "--ct", case["ct"], "--out", str(agent_path), "--iterations", "2",
                 "--no-ct-augment", "--lr", "1e-3"]) == 0
    card = json.loads(agent_path.with_suffix(".json").read_text())
    assert card["ct_augment"] is False and card["lr"] == 1e-3 and card["fine_tuned_on"] == case["ct"]
    out = tmp_path / "result.json"
    assert main(["register", "--ct", case["ct"], "--frame", case["frame"], *INIT, *GEOMETRY, "--out", str(out),
                 "--agent", str(agent_path), "--no-refine"]) == 0
    assert json.loads(out.read_text())["agent"] == str(agent_path)
