"""The shipped diagnosis models on a labelled folder of one's own (``bench_diagnosis.py --images``), as an independent
evaluator or a hospital would measure them: the product's own reading path, refusals reported, not counted."""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medai.diagnosis.batch import diagnose_files
from medai.diagnosis.evaluation import evaluate_folder
from medai.diagnosis.inference import Classifier
from medai.errors import MedAIInputError
from medai.samples import sample_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_diagnosis  # noqa: E402


@pytest.fixture
def labelled_folder(tmp_path) -> Path:
    """The bundled X-rays by label (data-set names, lower case), a colour photograph among the normals, a folder of
    an unknown class."""
    from skimage import data

    samples = Path(sample_path("ct_abdomen")).parent
    layout = {"normal": ["xray_kermany_normal_IM-0448-0001.jpeg", "xray_kermany_normal_2.jpeg"],
              "pneumonia_bacterial": ["xray_kermany_bacteria_person1136_3078.jpeg"],
              "PNEUMONIA_VIRAL": ["xray_kermany_virus_2.jpeg"], "COVID": ["xray_ieee8023_covid_d9d6ca9a.jpg"],
              "LUNG_OPACITY": ["xray_kermany_normal_2.jpeg"]}
    for folder, files in layout.items():
        (tmp_path / folder).mkdir()
        for name in files:
            shutil.copy(samples / name, tmp_path / folder / name)
    Image.fromarray(data.astronaut()).save(tmp_path / "normal" / "photo.png")
    return tmp_path


def test_folder_metrics_match_the_products_own_readings(labelled_folder):
    classifier = Classifier("pneumonia")
    report = evaluate_folder(classifier, labelled_folder)
    assert report["n"] == 4 and report["per_class"]["NORMAL"]["n"] == 2 and report["per_class"]["PNEUMONIA"]["n"] == 2
    assert [Path(p).name for p, _ in report["refused"]] == ["photo.png"] and "colour" in report["refused"][0][1]
    assert set(report["skipped_folders"]) == {"COVID", "LUNG_OPACITY"}  # not classes of this task
    # the same images through `medai diagnose`'s path, one by one: the same predictions, so the same accuracy
    rows = {Path(r["path"]).name: r for r in diagnose_files(classifier, [labelled_folder / "normal",
                                                                         labelled_folder / "pneumonia_bacterial",
                                                                         labelled_folder / "PNEUMONIA_VIRAL"])}
    assert rows["photo.png"]["error"]
    for case in report["predictions"]:
        assert rows[Path(case["path"]).name]["prediction"] == case["prediction"]
    hits = np.mean([case["prediction"] == case["truth"] for case in report["predictions"]])
    assert report["accuracy"] == pytest.approx(hits)

    covid = evaluate_folder(Classifier("covid"), labelled_folder)  # the pneumonia folders map to OTHER_PNEUMONIA
    assert covid["n"] == 5 and covid["per_class"]["OTHER_PNEUMONIA"]["n"] == 2 and covid["skipped_folders"] == ["LUNG_OPACITY"]


def test_folder_without_a_class_is_a_clear_error(tmp_path):
    (tmp_path / "scans").mkdir()
    with pytest.raises(MedAIInputError, match="no readable X-ray in a class subfolder"):
        evaluate_folder(Classifier("covid"), tmp_path)


def test_bench_prints_the_folders_numbers(labelled_folder, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_diagnosis.main(["--images", str(labelled_folder), "--tasks", "covid", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "your images: images 5" in printed and "refused 1" in printed and "targets:" in printed
    assert out.exists()
