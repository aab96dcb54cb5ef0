"""MedAIRegistration Logic.register on the real MRML scene: a DRR of the bundled abdomen CT at a known pose is the
frame; registration from a perturbed pose with an untrained agent makes NEW nodes placed consistently, moves only
the CT's parent transform, and (refinement) lowers the error to the truth."""
import json

import numpy as np
import pytest

import slicer

from medai.drr import CArmGeometry
from medai.errors import MedAIModelError
from medai.samples import sample_path

SDD, SID = 1020.0, 765.0
CARM = CArmGeometry(SDD, SID, 96, 112, 3.0, 2.8)  # not square, unequal spacing: catches row/column mix-ups
TRUTH = (4.0, -3.0, 5.0, 3.0, 0.0, 15.0)


@pytest.fixture(scope="module")
def agent_path(tmp_path_factory):
    from medai.registration import Agent

    path = tmp_path_factory.mktemp("agent") / "agent.pt"
    Agent.new().save(path)
    return str(path)


@pytest.fixture
def case(scene):
    """(logic, CT node, frame node = DRR at TRUTH)."""
    from MedAIRegistration import MedAIRegistrationLogic

    logic = MedAIRegistrationLogic()
    ct = logic.loadCT(sample_path("ct_abdomen"))
    frame = logic.generateDRR(ct, TRUTH, CARM, name="frame")
    return logic, ct, frame


def _ijk_to_ras(node):
    from medai_slicer import ijk_to_ras_of

    return ijk_to_ras_of(node)


def _body_points(ct):
    hu = slicer.util.arrayFromVolume(ct)
    k, j, i = np.nonzero(hu > -300)
    pick = np.random.default_rng(0).choice(len(i), 2000, replace=False)
    return np.c_[i[pick], j[pick], k[pick], np.ones(2000)] @ _ijk_to_ras(ct).T


def _mtre(matrix, truth, points):
    return float(np.mean(np.linalg.norm((points @ (matrix - truth).T)[:, :3], axis=1)))


def _node_ids(scene):
    return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}


def test_register_makes_new_nodes_and_moves_only_the_ct_transform(case, agent_path):
    from medai_slicer import transform_node_to_matrix

    logic, ct, frame = case
    scene = slicer.mrmlScene
    ct_voxels, ct_ijk = slicer.util.arrayFromVolume(ct).copy(), _ijk_to_ras(ct)
    frame_pixels, frame_ijk = slicer.util.arrayFromVolume(frame).copy(), _ijk_to_ras(frame)
    ids_before = _node_ids(scene)
    initial = np.array(TRUTH) + (3.0, -2.0, 0.0, 0.0, 0.0, 2.0)
    progress = []
    out = logic.register(ct, frame, initial, mode="2d3d", refine=False, agentPath=agent_path, maxSteps=3,
                         progressCallback=lambda fraction, text: progress.append((fraction, text)))
    result = out.result

    made = _node_ids(scene) - ids_before
    assert {out.transformNode.GetID(), out.frameNode.GetID(), out.drrNode.GetID(), out.tableNode.GetID()} <= made
    assert out.transformNode.IsA("vtkMRMLLinearTransformNode") and out.tableNode.IsA("vtkMRMLTableNode")
    assert out.frameNode is not frame and out.drrNode is not frame
    assert out.transformNode.GetName() == "ct_abdomen_3Dircadb1.17_3mm registration"
    # inputs: CT voxels and geometry untouched, only its parent transform set; frame node untouched
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), ct_voxels)
    np.testing.assert_array_equal(_ijk_to_ras(ct), ct_ijk)
    assert ct.GetTransformNodeID() == out.transformNode.GetID()
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(frame), frame_pixels)
    np.testing.assert_array_equal(_ijk_to_ras(frame), frame_ijk)
    assert frame.GetTransformNodeID() is None
    # the transform moves the CT from the initial to the registered pose
    m_init = logic.poseMatrix(ct, initial)
    transform = transform_node_to_matrix(out.transformNode)
    np.testing.assert_allclose(transform, np.linalg.inv(m_init) @ result.matrix, atol=1e-6)
    np.testing.assert_allclose(m_init @ transform, result.matrix, atol=1e-6)
    stored = np.array([float(v) for v in out.transformNode.GetAttribute("MedAI.ras_to_carm").split()]).reshape(4, 4)
    np.testing.assert_allclose(stored, result.matrix, atol=1e-6)
    assert float(out.transformNode.GetAttribute("MedAI.confidence")) == pytest.approx(result.confidence, abs=1e-5)
    assert out.lowConfidence == (out.confidence < 0.5)
    assert out.transformNode.GetAttribute("MedAI.uncertainty_mm") is None  # not refined: no curvature to read
    np.testing.assert_allclose(result.init_pose.as_array(), initial, atol=1e-9)
    # trajectory table: one row per trajectory entry
    table = out.tableNode.GetTable()
    assert out.tableNode.GetNumberOfRows() == len(result.trajectory) >= 1
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == ["step", "action", "similarity",
                                                                                   "stage"]
    assert table.GetColumnByName("step").GetDataTypeAsString() == "int"
    for row, entry in enumerate(result.trajectory):
        assert table.GetValue(row, 0).ToInt() == entry["step"]
        assert table.GetValue(row, 1).ToString() == entry["action"]
        assert table.GetValue(row, 2).ToDouble() == pytest.approx(entry["similarity"])
        assert table.GetValue(row, 3).ToString() == entry.get("stage", "agent")
    # frame copy on the detector plane of the C-arm at the initial pose; the DRR on the same grid
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out.frameNode), frame_pixels)
    ijk_to_ras = _ijk_to_ras(out.frameNode)
    np.testing.assert_allclose(ijk_to_ras, np.linalg.inv(m_init) @ CARM.detector_ijk_to_carm(), atol=1e-9)
    np.testing.assert_allclose(_ijk_to_ras(out.drrNode), ijk_to_ras, atol=1e-12)
    source = np.linalg.inv(m_init) @ (0.0, 0.0, -SID, 1.0)
    centre = ijk_to_ras @ (CARM.principal_col, CARM.principal_row, 0.0, 1.0)
    assert np.linalg.norm(centre[:3] - source[:3]) == pytest.approx(SDD, abs=1e-6)
    ray = (centre - source)[:3] / SDD
    np.testing.assert_allclose(ray, np.linalg.inv(m_init)[:3, 2], atol=1e-9)  # central ray = C-arm +z
    for corner in [(0, 0), (CARM.width - 1, 0), (0, CARM.height - 1), (CARM.width - 1, CARM.height - 1)]:
        point = ijk_to_ras @ (*corner, 0.0, 1.0)
        assert float(np.dot(point[:3] - centre[:3], ray)) == pytest.approx(0.0, abs=1e-6)
        assert np.linalg.norm(point[:3] - source[:3]) > SDD
    drr = slicer.util.arrayFromVolume(out.drrNode)
    assert drr.shape == (1, CARM.height, CARM.width) and drr.max() > 0
    assert progress[-1][0] == pytest.approx(1.0) and all(0 <= f <= 1 for f, _ in progress)


def test_agent_that_does_nothing_gives_identity_and_a_matching_drr(case, agent_path):
    """Initial pose from Generate DRR's C-arm transform node (its RAS -> C-arm attribute): the truth."""
    from medai_slicer import transform_node_to_matrix

    logic, ct, frame = case
    carm_node = frame.GetNodeReference("MedAI.CArmTransform")
    out = logic.register(ct, frame, carm_node, refine=False, agentPath=agent_path, maxSteps=0)
    np.testing.assert_allclose(out.result.init_pose.as_array(), TRUTH, atol=1e-6)
    np.testing.assert_allclose(transform_node_to_matrix(out.transformNode), np.eye(4), atol=1e-9)
    a = slicer.util.arrayFromVolume(out.drrNode).ravel().astype(float)
    b = slicer.util.arrayFromVolume(frame).ravel().astype(float)
    assert np.corrcoef(a, b)[0, 1] > 0.99  # same pose, same detector grid: the DRR overlays the frame


def test_refinement_lowers_the_error_to_the_truth(case, agent_path):
    """Real behaviour: from 3 mm / 2 deg off, refinement (no agent steps) lands much closer to the truth."""
    logic, ct, frame = case
    initial = np.array(TRUTH) + (3.0, 0.0, 0.0, 2.0, 0.0, 0.0)
    out = logic.register(ct, frame, initial, refine=True, agentPath=agent_path, maxSteps=0)
    points = _body_points(ct)
    truth = logic.poseMatrix(ct, TRUTH)
    before, after = _mtre(logic.poseMatrix(ct, initial), truth, points), _mtre(out.result.matrix, truth, points)
    print(f"mTRE {before:.2f} -> {after:.2f} mm, confidence {out.confidence:.2f}")
    assert after < 0.5 * before
    assert after < 2.0
    assert 0 < float(out.transformNode.GetAttribute("MedAI.uncertainty_mm")) < 2.0
    assert "uncertainty" in out.summary


def test_missing_agent_file_is_a_clear_error_and_adds_no_node(case, tmp_path):
    logic, ct, frame = case
    scene = slicer.mrmlScene
    before = _node_ids(scene)
    with pytest.raises(MedAIModelError, match="agent file not found"):
        logic.register(ct, frame, TRUTH, agentPath=str(tmp_path / "missing.pt"))
    assert _node_ids(scene) == before
    assert ct.GetTransformNodeID() is None


def test_frame_without_geometry_raises_naming_it(case, agent_path):
    from medai.io import Volume
    from medai_slicer import node_to_volume, volume_to_node

    logic, ct, frame = case
    scene = slicer.mrmlScene
    plain = volume_to_node(scene, Volume(node_to_volume(frame).array, node_to_volume(frame).geometry), "plain")
    before = _node_ids(scene)
    with pytest.raises(ValueError, match="geometry"):
        logic.register(ct, plain, TRUTH, agentPath=agent_path)
    assert _node_ids(scene) == before
    assert ct.GetTransformNodeID() is None


def test_geometry_and_initial_view_from_dicom_attributes(case, agent_path):
    from medai.io import Volume
    from medai_slicer import node_to_volume, volume_to_node

    logic, ct, frame = case
    xa = volume_to_node(slicer.mrmlScene, Volume(node_to_volume(frame).array, node_to_volume(frame).geometry), "xa")
    for key, value in (("DistanceSourceToDetector", SDD), ("DistanceSourceToPatient", SID),
                       ("ImagerPixelSpacing", "3.0\\2.8"), ("PositionerPrimaryAngle", -15.0),
                       ("PositionerSecondaryAngle", -3.0)):
        xa.SetAttribute(f"DICOM.{key}", str(value))
    out = logic.register(ct, xa, None, refine=False, agentPath=agent_path, maxSteps=0)
    np.testing.assert_allclose(out.result.init_pose.as_array(), (0, 0, 0, 3.0, 0, 15.0), atol=1e-9)  # RAO 15, CAU 3
    assert json.loads(out.frameNode.GetAttribute("MedAI.carm")) == CARM.to_dict()


def test_cancel_adds_no_node_and_the_registrar_is_reused(case, agent_path):
    logic, ct, frame = case
    scene = slicer.mrmlScene
    logic.register(ct, frame, TRUTH, refine=False, agentPath=agent_path, maxSteps=0)
    prepared = list(logic._registrars.values())
    before = _node_ids(scene)
    out = logic.register(ct, frame, TRUTH, agentPath=agent_path, cancel=lambda: True)
    assert out.cancelled and out.transformNode is None and out.drrNode is None
    assert _node_ids(scene) == before
    assert list(logic._registrars.values()) == prepared  # the CT was not prepared again


def test_load_frame_file_carries_its_geometry(case, agent_path, tmp_path):
    from medai.errors import MedAIInputError

    logic, ct, frame = case
    path = tmp_path / "frame.npy"
    np.save(path, slicer.util.arrayFromVolume(frame)[0])
    with pytest.raises(MedAIInputError, match="no C-arm geometry"):
        logic.loadFrame(str(path))
    node = logic.loadFrame(str(path), pixelSpacingMm=(3.0, 2.8), sddMm=SDD, sidMm=SID)
    assert node.GetAttribute("MedAI.kind") == "fluoroscopy"
    assert json.loads(node.GetAttribute("MedAI.carm")) == CARM.to_dict()
    out = logic.register(ct, node, TRUTH, mode="2d2d", refine=False, agentPath=agent_path, maxSteps=3)
    moves = {row["action"] for row in out.result.trajectory} - {"stop"}
    assert moves <= {"+tx", "-tx", "+ty", "-ty", "+rz", "-rz"}  # 2d2d: in the detector plane only
    from medai.registration import RigidPose

    moved = RigidPose.from_pose(out.result.pose).error_to(RigidPose.from_array(TRUTH))  # C-arm frame
    np.testing.assert_allclose(moved[[2, 3, 4]], 0.0, atol=1e-6)  # no depth shift, no out-of-plane rotation


def test_raw_detector_frame_is_read_through_its_log(case, agent_path, tmp_path):
    """A frame of raw detector values (proportional to exp(-line integral)): loadFrame(linear=True) stores its log,
    the DRR itself up to a constant; a node holding the raw values registers with linear=True and is refused without
    (it looks inverted), adding no node."""
    from medai.errors import MedAIInputError

    logic, ct, frame = case
    line_integrals = slicer.util.arrayFromVolume(frame)[0].astype(np.float64)
    path = tmp_path / "raw.npy"
    np.save(path, 1000.0 * np.exp(-line_integrals))
    geometry = {"pixelSpacingMm": (3.0, 2.8), "sddMm": SDD, "sidMm": SID}
    logged = slicer.util.arrayFromVolume(logic.loadFrame(str(path), linear=True, **geometry))[0]
    assert np.corrcoef(logged.ravel(), line_integrals.ravel())[0, 1] > 0.9999
    raw = logic.loadFrame(str(path), **geometry)  # stored as given
    before = _node_ids(slicer.mrmlScene)
    with pytest.raises(MedAIInputError, match="looks inverted"):
        logic.register(ct, raw, TRUTH, refine=False, agentPath=agent_path, maxSteps=0)
    assert _node_ids(slicer.mrmlScene) == before
    out = logic.register(ct, raw, TRUTH, refine=False, agentPath=agent_path, maxSteps=0, linear=True)
    assert out.result.similarity > 0.95
