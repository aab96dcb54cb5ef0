"""The agent's motion features on real DRRs of the sample CT: the Gauss-Newton corrections of shift, magnification
(depth along the beam) and rotation about the beam point back to the true pose; a Q-network widened to take them
computes what it computed before."""
import numpy as np
import pytest
import torch

from medai.drr import CArmGeometry, Pose, render
from medai.registration import Agent, RigidPose
from medai.registration.environment import Environment, FixedImage
from medai.registration.motion import ESTIMATE_SCALE, MOTION_DOFS, N_FEATURES

CARM = CArmGeometry(1020.0, 750.0, 128, 128, 2.4, 2.4)
TRUTH = Pose.from_array((4.0, -3.0, 2.0, 1.0, -1.0, -10.0))


@pytest.fixture(scope="module")
def environment(sample_ct):
    _, ct, centre = sample_ct
    with torch.inference_mode():
        frame = render(ct, CARM, TRUTH)[0].numpy()
    return Environment(ct, centre, FixedImage.build(frame, np.ones((128, 128), bool), CARM))


@pytest.mark.parametrize("dof, offset", [(0, 6.0), (1, -6.0), (2, 15.0), (2, -15.0), (5, 4.0)])
def test_motion_estimate_points_back_to_the_true_pose(environment, dof, offset):
    truth = RigidPose.from_pose(TRUTH)
    delta = np.zeros(6)
    delta[dof] = offset
    state, _ = environment.state(truth.moved(delta))
    assert state.features.shape == (N_FEATURES,)
    column = MOTION_DOFS.index(dof)
    estimate = float(state.features[column]) * ESTIMATE_SCALE
    correlation = float(state.features[len(MOTION_DOFS) + column])
    # the correction has the opposite sign of the offset and about its size (depth: a 1-2% magnification)
    assert np.sign(estimate) == -np.sign(offset) and 0.4 * abs(offset) < abs(estimate) < 1.6 * abs(offset), estimate
    assert np.sign(correlation) == -np.sign(offset)
    # at the true pose there is nothing to correct
    at_truth, _ = environment.state(truth)
    assert abs(float(at_truth.features[column]) * ESTIMATE_SCALE) < 0.2 * abs(offset)


def test_a_widened_q_network_computes_what_it_computed_before(environment):
    torch.manual_seed(0)
    agent = Agent.new(n_features=0)
    state, _ = environment.state(RigidPose.from_pose(TRUTH).moved(np.r_[5.0, 0, 10.0, 0, 0, 2.0]))
    before = agent.q_values(state)
    agent.network = agent.network.with_features(N_FEATURES)
    agent.network.eval()
    assert np.allclose(agent.q_values(state), before, atol=1e-6)
    assert agent.network.config["n_features"] == N_FEATURES
    with pytest.raises(ValueError, match="motion features"):
        agent.network(state.views[None])
