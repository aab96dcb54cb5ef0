"""Scripted modules on the real MRML scene: embedded Tests run unchanged, Widget names exist in .ui files,
parameter nodes persist in the scene, Logic is console-callable and never modifies its inputs."""
import ast
import os
import sys
import importlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import slicer

REPO = Path(__file__).resolve().parents[1]
MODULES = ["MedAIRegistration", "MedAISegmentation", "MedAIDiagnosis"]


@pytest.mark.parametrize("name", MODULES)
def test_embedded_module_test_runs_unchanged(scene, name):
    module = importlib.import_module(name)
    test = getattr(module, f"{name}Test")()
    test.runTest()


@pytest.mark.parametrize("name", MODULES)
def test_module_layout_is_a_slicer_scripted_module(name):
    folder = REPO / "MedAIToolkit" / name
    for rel in (f"{name}.py", "CMakeLists.txt", f"Resources/UI/{name}.ui", f"Resources/Icons/{name}.png"):
        assert (folder / rel).is_file(), rel
    cmake = (folder / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in cmake
    assert f"add_subdirectory(MedAIToolkit/{name})" in (REPO / "CMakeLists.txt").read_text()
    classes = {node.name for node in ast.parse((folder / f"{name}.py").read_text()).body if isinstance(node, ast.ClassDef)}
    assert {name, f"{name}ParameterNode", f"{name}Widget", f"{name}Logic", f"{name}Test"} <= classes


@pytest.mark.parametrize("name", MODULES)
def test_widget_names_used_in_code_exist_in_ui(name):
    folder = REPO / "MedAIToolkit" / name
    ui_names = {w.get("name") for w in ET.parse(folder / f"Resources/UI/{name}.ui").iter("widget")}
    source = (folder / f"{name}.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert used, "the Widget uses no widget from its .ui"
    assert used <= ui_names, f"missing in .ui: {sorted(used - ui_names)}"


@pytest.mark.parametrize("name", MODULES)
def test_ui_parameter_names_match_parameter_node(name):
    folder = REPO / "MedAIToolkit" / name
    tree = ET.parse(folder / f"Resources/UI/{name}.ui")
    bound = {p.find("string").text for p in tree.iter("property") if p.get("name") == "SlicerParameterName"}
    module = importlib.import_module(name)
    params = set(getattr(module, f"{name}ParameterNode").__annotations__)
    assert bound and bound <= params, f"ui binds {sorted(bound - params)} not in the parameter node"


def test_parameter_node_is_stored_in_the_scene(scene):
    from MedAIRegistration import MedAIRegistrationLogic

    logic = MedAIRegistrationLogic()
    params = logic.getParameterNode()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    params.ctVolume = volume
    params.dicomFolder = "/data/ct"
    again = MedAIRegistrationLogic().getParameterNode()  # same singleton node, re-read from the scene
    assert again.ctVolume.GetID() == volume.GetID()
    assert again.dicomFolder == "/data/ct"
    assert scene.GetNodesByClass("vtkMRMLScriptedModuleNode").GetNumberOfItems() == 1


def test_registration_logic_loads_real_dicom_ct(scene, data_dir):
    from conftest import tree_digest
    from MedAIRegistration import MedAIRegistrationLogic

    folder = data_dir / "ct_dicom/3Dircadb1.17/PATIENT_DICOM"
    before = tree_digest(folder)
    node = MedAIRegistrationLogic().loadCT(str(folder))
    assert node.GetImageData().GetDimensions() == (512, 512, 119)
    assert slicer.util.arrayFromVolume(node).min() == -1024
    assert tree_digest(folder) == before


def test_segmentation_logic_imports_real_dicom_mask_series(scene, data_dir):
    from MedAISegmentation import MedAISegmentationLogic

    logic = MedAISegmentationLogic()
    ct = logic.loadVolume(str(data_dir / "ct_dicom/3Dircadb1.17/PATIENT_DICOM"))
    ct_before = slicer.util.arrayFromVolume(ct).copy()
    seg = logic.importLabelmap(str(data_dir / "ct_dicom/3Dircadb1.17/MASKS_DICOM/liver"),
                               {255: ("liver", (0.86, 0.55, 0.45))}, referenceVolume=ct)
    segment = seg.GetSegmentation().GetSegment("liver")
    assert segment is not None and segment.GetName() == "liver"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), ct_before)
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "liver", ct)
    assert int(mask.sum()) == 2_106_497


def test_diagnosis_logic_loads_real_xray_on_coronal_plane(scene, data_dir):
    from MedAIDiagnosis import MedAIDiagnosisLogic

    node = MedAIDiagnosisLogic().loadXRay(str(data_dir / "chest_xray/kermany_224/NORMAL/IM-0448-0001.jpeg"))
    assert node.GetImageData().GetDimensions() == (224, 224, 1)
    from medai_slicer import ijk_to_ras_of

    ras = ijk_to_ras_of(node)[:3, :3]
    np.testing.assert_allclose(ras[:, 0], (-1, 0, 0))  # columns run to patient left (-R)
    np.testing.assert_allclose(ras[:, 1], (0, 0, -1))  # rows run inferior


def test_logic_error_is_clear_and_scene_unchanged(scene, tmp_path):
    from medai.errors import MedAIInputError
    from MedAIRegistration import MedAIRegistrationLogic

    n_before = scene.GetNumberOfNodes()
    with pytest.raises(MedAIInputError, match="no DICOM files"):
        MedAIRegistrationLogic().loadCT(str(tmp_path))
    assert scene.GetNumberOfNodes() == n_before


def test_engine_never_imports_slicer_or_qt():
    engine = REPO / "MedAIToolkit" / "medai"
    offenders = []
    for path in engine.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names
                          if n.split(".")[0] in ("slicer", "qt", "ctk") and path.name != "demo.py"]
    assert not offenders, offenders


@pytest.mark.parametrize("name", ["MedAIRegistration", "MedAIDiagnosis"])
def test_sample_data_registration_points_at_bundled_files(name, monkeypatch):
    """Sample Data entries (registered at Slicer start-up) name an existing bundled file and thumbnail."""
    import importlib
    import types

    calls = []
    fake = types.ModuleType("SampleData")
    fake.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: calls.append(kw))
    monkeypatch.setitem(sys.modules, "SampleData", fake)
    importlib.import_module(name).registerSampleData()
    (entry,) = calls
    assert entry["category"] == "MedAIToolkit" and entry["loadFileType"] == "VolumeFile"
    assert os.path.isfile(entry["uris"].removeprefix("file://")) and os.path.isfile(entry["thumbnailFileName"])
