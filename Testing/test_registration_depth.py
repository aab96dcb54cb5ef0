"""The depth stage of checked inference (medai.registration.depth): after the agent, its +/- tz moves (the other parameters
following to keep the projection in place) checked with the refinement's fine frame model find the depth that the agent's own view match cannot. Real renders of the sample
CT, a frame through a blur and a display curve, as a fluoroscopy display makes it."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from medai.drr import CArmGeometry, Pose, render
from medai.errors import MedAIInputError
from medai.registration import RigidPose
from medai.registration.agent import DEFAULT_LEVELS, Trajectory
from medai.registration import depth
from medai.registration.depth import MAX_COUPLING, check_depth
from medai.registration.environment import Environment, FixedImage
from medai.registration.pipeline import REFINE_LEVELS, refine_level

CARM = CArmGeometry(1020.0, 750.0, 128, 128, 2.4, 2.4)
TRUTH = Pose.from_array((4.0, -3.0, 2.0, 1.0, -1.0, -10.0))
AGENT_ERROR = np.array([0.5, -0.5, 14.0, 0.3, -0.3, 0.3])  # the agent on a CT it never saw: off mostly in depth
STEPS_MM = [mm for mm, _ in DEFAULT_LEVELS]


@pytest.fixture(scope="module")
def setting(sample_ct):
    """(prepared CT, centre, fixed image): the DRR at TRUTH blurred 1.5 px, windowed and put through gamma 0.6."""
    _, ct, centre = sample_ct
    with torch.inference_mode():
        line_integrals = render(ct, CARM, TRUTH)[0].numpy()
    blurred = ndimage.gaussian_filter(line_integrals, 1.5)
    low, high = np.percentile(blurred, [0.5, 99.5])
    image = (np.clip((blurred - low) / (high - low), 0, 1) ** 0.6).astype(np.float32)
    return ct, centre, FixedImage.build(image, np.ones((128, 128), bool), CARM)


def _fine_level(ct, fixed):
    return refine_level(REFINE_LEVELS[-1], ct, fixed)


def _agent_stopped(env, pose) -> Trajectory:
    trajectory = Trajectory(checked=True)
    trajectory.rows = [{"step": 0, "action": "+tx", "step_mm": 6.0, "step_deg": 3.0, "similarity": 0.5},
                       {"step": 1, "action": "stop", "similarity": env.look(pose)[1]}]
    return trajectory


def test_the_depth_stage_finds_the_depth_and_records_its_moves(setting):
    ct, centre, fixed = setting
    env = Environment(ct, centre, fixed)
    truth = RigidPose.from_pose(TRUTH)
    init = truth.moved(np.r_[10.0, -10.0, 20.0, 5.0, -5.0, 5.0])
    agent_pose = truth.moved(AGENT_ERROR)
    trajectory = _agent_stopped(env, agent_pose)
    pose = check_depth(_fine_level(ct, fixed), env, agent_pose, init, STEPS_MM, trajectory)
    error = pose.error_to(truth)
    print("error after the stage", np.round(error, 2))
    assert abs(error[2]) < 2.0, error  # from 14 mm along the beam
    # a depth move: the other five parameters only follow it (bounded coupling per mm of depth), none walks away
    moved = pose.error_to(agent_pose)
    assert np.all(np.abs(np.delete(moved, 2)) <= MAX_COUPLING * abs(moved[2]) + 1e-9)
    assert np.all(np.abs(np.delete(error, 2)) < np.abs(np.delete(AGENT_ERROR, 2)) + 0.5)
    moves = [row for row in trajectory.rows if row.get("stage") == "depth"]
    assert moves and trajectory.rows[0]["action"] == "+tx" and trajectory.rows[-1]["action"] == "stop"
    assert {row["action"] for row in moves} <= {"+tz", "-tz"}
    assert [row["step"] for row in trajectory.rows] == list(range(len(trajectory.rows)))
    depth_similarities = [row["depth_similarity"] for row in moves]
    assert all(b > a for a, b in zip(depth_similarities, depth_similarities[1:]))  # each move is kept for its gain
    assert trajectory.rows[-1]["similarity"] == pytest.approx(env.look(pose)[1])  # the views' match, as before


def test_depth_moves_that_keep_the_projection_in_place_go_further_than_tz_alone(setting, monkeypatch):
    """The agent's in-plane parameters were fitted at its wrong depth, so tz alone stops short of the truth (a diagonal
    valley of the cost); moving the other five with their coupling to depth follows the valley (test can fail if
    pure tz moves got as close)."""
    ct, centre, fixed = setting
    env = Environment(ct, centre, fixed)
    truth = RigidPose.from_pose(TRUTH)
    agent_pose = truth.moved(AGENT_ERROR)

    def depth_error() -> float:
        pose = check_depth(_fine_level(ct, fixed), env, agent_pose, agent_pose, STEPS_MM, _agent_stopped(env, agent_pose))
        return abs(pose.error_to(truth)[2])

    coupled = depth_error()
    monkeypatch.setattr(depth, "depth_direction", lambda residual, pose, r: np.eye(6)[2])
    tz_alone = depth_error()
    print(f"|tz| after coupled depth moves {coupled:.2f} mm, after tz alone {tz_alone:.2f} mm")
    assert coupled < tz_alone - 1.0


def test_a_coupling_that_cannot_be_rendered_falls_back_to_depth_alone(setting, monkeypatch):
    ct, centre, fixed = setting
    residual = depth._Residual(_fine_level(ct, fixed), centre)
    pose = RigidPose.from_pose(TRUTH).moved(AGENT_ERROR)
    coupled = depth.depth_direction(residual, pose, residual(pose))
    assert coupled[2] == 1.0 and 0 < np.abs(np.delete(coupled, 2)).max() <= MAX_COUPLING

    def across_the_detector(*args, **kwargs):
        raise MedAIInputError("the body in the CT is not entirely between the X-ray source and the detector")

    monkeypatch.setattr(depth, "_jacobian", across_the_detector)
    np.testing.assert_array_equal(depth.depth_direction(residual, pose, residual(pose)), np.eye(6)[2])


def test_the_agents_own_view_match_does_not_find_that_depth(setting):
    """The same moves checked by the views' NCC (what the agent's steps are checked with) stay further off along the
    beam: the stage's frame model, not the search, is what reads depth (test can fail if the views' match did)."""
    ct, centre, fixed = setting
    env = Environment(ct, centre, fixed)
    truth = RigidPose.from_pose(TRUTH)
    pose = truth.moved(AGENT_ERROR)
    similarity = env.look(pose)[1]
    for step_mm in STEPS_MM:
        moved = True
        while moved:
            moved = False
            for sign in (1.0, -1.0):
                candidate = pose.moved(np.r_[0.0, 0.0, sign * step_mm, 0.0, 0.0, 0.0])
                candidate_similarity = env.look(candidate)[1]
                if candidate_similarity > similarity:
                    pose, similarity, moved = candidate, candidate_similarity, True
                    break
    by_views = abs(pose.error_to(truth)[2])
    by_stage = abs(check_depth(_fine_level(ct, fixed), env, truth.moved(AGENT_ERROR), truth.moved(AGENT_ERROR),
                               STEPS_MM, _agent_stopped(env, truth.moved(AGENT_ERROR)))
                   .error_to(truth)[2])
    print(f"|tz| after the views' match {by_views:.1f} mm, after the depth stage {by_stage:.1f} mm")
    assert by_stage < by_views - 3.0


def test_the_stage_counts_every_drr_it_renders(setting, drrs_rendered):
    """The trajectory's render count (the benchmark's "DRRs rendered by the agent") includes the stage's filter choice,
    its Jacobian's tilt columns, every move tried and the views' match after each move kept."""
    ct, centre, fixed = setting
    env = Environment(ct, centre, fixed)
    agent_pose = RigidPose.from_pose(TRUTH).moved(AGENT_ERROR)
    trajectory = _agent_stopped(env, agent_pose)
    drrs_rendered.clear()  # the agent's stop row above rendered one
    check_depth(_fine_level(ct, fixed), env, agent_pose, agent_pose, STEPS_MM, trajectory)
    moves = [row for row in trajectory.rows if row.get("stage") == "depth"]
    print(f"{len(drrs_rendered)} DRRs for {len(moves)} depth moves")
    assert moves and trajectory.renders == len(drrs_rendered) > 3 + 2 * len(moves)
