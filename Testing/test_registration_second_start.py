"""A doubtful result gets a second refinement from the initial pose: when the agent leads the refinement astray (as
on a CT it never trained on), the registration still finds the pose, keeps the agent's own result apart, and says
where the kept refinement started."""
import numpy as np
import pytest
import torch

from medai.drr import CArmGeometry, Pose, prepare_ct, render
from medai.io import read_volume
from medai.registration import Registrar, RigidPose, frame_from_array, mtre_of
from medai.registration import pipeline
from medai.registration.agent import Trajectory
from medai.registration.refine import RefineOutcome
from medai.samples import sample_path

CARM = CArmGeometry(1020.0, 750.0, 128, 128, 3.0, 3.0)
TRUTH = Pose.from_array((8.0, -6.0, 5.0, 3.0, -2.0, -20.0))
INIT = Pose.from_array((18.0, -12.0, -5.0, 0.0, 0.0, -15.0))


def uncertainty_mm(result) -> float:
    return float(np.exp(result.features["log_uncertainty_mm"]))


@pytest.fixture(scope="module")
def setup():
    ct = read_volume(str(sample_path("ct_abdomen")))
    with torch.inference_mode():
        image = render(prepare_ct(ct), CARM, TRUTH)[0].numpy()
    registrar = Registrar(ct)
    return registrar, frame_from_array(image, CARM), TRUTH.matrix(registrar.centre_ras)


def test_a_misled_agent_is_overruled_by_a_second_start_from_the_initial_pose(setup, monkeypatch):
    registrar, frame, truth = setup
    astray = RigidPose.from_pose(INIT).moved(np.array([45.0, -40.0, 0.0, 0.0, 0.0, 14.0]))

    def misled_agent(agent, env, init, mode="2d3d", max_steps=None, cancel=None, on_step=None, checked=None):
        trajectory = Trajectory(poses=[init, astray], rows=[{"step": 0, "action": "+tx", "similarity": 0.0},
                                                            {"step": 1, "action": "stop", "similarity": 0.0}],
                                stop_reason="converged")
        return astray, trajectory

    monkeypatch.setattr(pipeline, "run_agent", misled_agent)
    result = registrar.register(frame, INIT)
    body = registrar.body_points_ras
    assert mtre_of(result.agent_matrix, truth, body) > 30  # the agent's own result is reported as it was
    assert result.refined_from == "initial pose"
    assert mtre_of(result.matrix, truth, body) < 1.0
    assert result.to_dict()["refined_from"] == "initial pose"
    assert uncertainty_mm(result) < pipeline.SECOND_START_UNCERTAINTY_MM


def test_a_confident_result_is_not_refined_twice(setup):
    registrar, frame, truth = setup
    result = registrar.register(frame, INIT)
    assert uncertainty_mm(result) < pipeline.RESTART_UNCERTAINTY_MM
    assert result.confidence > 0.5
    assert result.refined_from == "agent"
    assert mtre_of(result.matrix, truth, registrar.body_points_ras) < 1.0


def test_the_restarts_do_not_depend_on_the_confidence_calibration(setup, monkeypatch):
    """A card calibrated so that every result reads ~0% changes the confidence reported, not the registration."""
    registrar, frame, truth = setup
    shipped = registrar.register(frame, INIT)
    pessimist = {"features": [pipeline.CONFIDENCE_FEATURE], "coef": [0.0], "intercept": -20.0, "calibrated_on": "test"}
    monkeypatch.setitem(registrar.agent.card, "confidence", pessimist)
    result = registrar.register(frame, INIT)
    assert result.confidence < 1e-6 < shipped.confidence
    assert result.refined_from == shipped.refined_from == "agent"
    assert np.allclose(result.matrix, shipped.matrix, atol=1e-9)


def test_a_doubtful_result_is_refined_again_from_starts_along_the_beam(setup, monkeypatch):
    """A refinement that settles 7 mm too deep (with a 1 deg tilt), unsure of itself, is restarted from the kept pose
    moved +/- 8 mm along the beam; the restart that matches better is kept and lands on the truth."""
    registrar, frame, truth = setup
    stuck = RigidPose.from_pose(TRUTH).moved(np.array([0.0, 0.0, 7.0, 1.0, 0.0, 0.0]))
    real_refine, starts = pipeline.refine, []

    def refine_stuck_first(levels, pose, centre_ras, mode="2d3d", cancel=None):
        starts.append(pose)
        if len(starts) == 1:  # the refinement of the agent's result: stuck deep, no covariance (confidence ~0)
            return RefineOutcome(stuck, 0.5, [], np.diag(np.full(6, np.inf)))
        return real_refine(levels, pose, centre_ras, mode, cancel)

    monkeypatch.setattr(pipeline, "SECOND_START_UNCERTAINTY_MM", np.inf)  # no second start from the initial pose
    monkeypatch.setattr(pipeline, "refine", refine_stuck_first)
    result = registrar.register(frame, INIT)
    assert len(starts) == 1 + len(pipeline.DEPTH_RESTARTS_MM)
    depths = sorted(start.error_to(stuck)[2] for start in starts[1:])
    assert np.allclose(depths, sorted(-d for d in pipeline.DEPTH_RESTARTS_MM), atol=1e-6)  # moved along the beam only
    assert result.refined_from == "depth restart"
    assert mtre_of(result.matrix, truth, registrar.body_points_ras) < 1.0
    assert uncertainty_mm(result) < pipeline.RESTART_UNCERTAINTY_MM


def test_every_drr_a_registration_renders_is_counted(setup, monkeypatch, drrs_rendered):
    """The timings' render counts (the benchmark's "DRRs rendered by the agent / by the refinement") add up to the
    DRRs actually rendered, restarts and the model check included."""
    registrar, frame, truth = setup
    monkeypatch.setattr(pipeline, "RESTART_UNCERTAINTY_MM", 0.0)  # the depth restarts run too
    result = registrar.register(frame, INIT)
    print(result.timings)
    assert result.timings["agent_renders"] > 0 and result.timings["refine_renders"] > 0
    assert result.timings["agent_renders"] + result.timings["refine_renders"] == len(drrs_rendered)
