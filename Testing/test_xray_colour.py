"""RGB files: a grey X-ray with coloured annotations or a tint is read as grey with a warning (in the CSV and
the module's report); a colour photograph is refused naming its colour content."""
import csv
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from medai.errors import MedAIInputError
from medai.io import read_xray

IEEE = "chest_xray/ieee8023_covid_subset_512"


@pytest.fixture
def real_xray(data_dir) -> np.ndarray:
    path = sorted((data_dir / IEEE).rglob("*.jp*g"))[3]
    return np.asarray(Image.open(path).convert("L"))


def annotated(grey: np.ndarray, path) -> None:
    """Burn in what viewers export: yellow text, a red marker, a green arrow, a blue scale bar; save as JPEG."""
    rgb = Image.fromarray(np.stack([grey] * 3, -1))
    draw = ImageDraw.Draw(rgb)
    h, w = grey.shape
    draw.text((5, 5), "L  PORTABLE AP", fill=(255, 255, 0))
    draw.text((w - 60, h - 15), "R 12:41", fill=(255, 40, 40))
    draw.line((w * 0.6, h * 0.3, w * 0.5, h * 0.4), fill=(0, 255, 0), width=2)
    draw.rectangle((w - 8, 20, w - 3, 20 + h // 4), fill=(40, 120, 255))
    rgb.save(path, format="JPEG", quality=90)


def test_annotated_xray_is_read_grey_and_flagged(real_xray, tmp_path):
    path = tmp_path / "annotated.jpg"
    annotated(real_xray, path)
    image = read_xray(str(path))
    assert image.array.shape == real_xray.shape
    assert "converted to grey" in image.meta["warning"] and "carry colour" in image.meta["warning"]
    inside = (slice(60, -60), slice(60, -60))  # away from the annotations: the X-ray itself, unchanged
    assert np.abs(image.array[inside] - real_xray[inside].astype(np.float32)).mean() < 3.0


def test_tinted_xray_is_read_with_a_warning(real_xray, tmp_path):
    path = tmp_path / "tinted.png"
    Image.fromarray(np.clip(real_xray[..., None] * np.array([1.0, 0.93, 0.85]), 0, 255).astype(np.uint8)).save(path)
    image = read_xray(str(path))
    assert "tint" in image.meta["warning"]
    assert np.corrcoef(image.array.ravel(), real_xray.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field"])
def test_colour_photographs_are_refused(name, tmp_path):
    from skimage import data

    path = tmp_path / f"{name}.png"
    Image.fromarray(getattr(data, name)()).save(path)
    with pytest.raises(MedAIInputError, match=r"colour image \(\d+\.\d% of pixels carry colour"):
        read_xray(str(path))


def test_diagnose_csv_and_module_report_carry_the_warning(real_xray, tmp_path):
    path = tmp_path / "annotated.jpg"
    annotated(real_xray, path)
    out = tmp_path / "results.csv"
    result = subprocess.run([sys.executable, "-m", "medai.cli", "diagnose", "--task", "covid", str(path), "--csv",
                             str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    row = next(csv.DictReader(open(out)))
    assert row["error"] == "" and row["prediction"] and "converted to grey" in row["warning"]

    from medai_slicer import standalone

    standalone.new_scene()
    logic = standalone.module_logic("MedAIDiagnosis")
    node = logic.loadXRay(str(path))
    assert "converted to grey" in node.GetAttribute("MedAI.warning")
    assert "converted to grey" in logic.classify(node, "covid", heatmap=False).report
