"""A real learning check: a tiny agent trained for a few hundred steps on a downsampled real CT moves the pose
towards the truth on cases it never trained on (greedy inference: the Q-network's own choices, without the match
check of the shipped inference, which a random network would pass too)."""
import numpy as np
import pytest
import torch

from medai.io import read_volume, resample_volume
from medai.paths import resources_dir
from medai.registration.agent import Agent, AgentSettings, run_agent
from medai.registration.environment import Environment
from medai.registration.training import TrainingConfig, _prepare, sample_case, train_agent

SETTINGS = {"ct_spacing_mm": 6.0, "work_size": 64, "patch": 32, "levels": [[6.0, 3.0], [3.0, 1.5]], "max_steps": 30}


def _in_plane_error(pose, truth) -> float:
    return float(np.linalg.norm(pose.error_to(truth)[:2]))


def test_tiny_agent_learns_to_reduce_the_pose_error(tmp_path):
    torch.manual_seed(0)
    volume = resample_volume(read_volume(str(resources_dir() / "Samples" / "ct_abdomen_3Dircadb1.17_3mm.nrrd")),
                             (6.0,) * 3)
    config = TrainingConfig(iterations=300, batch_episodes=16, pool_episodes=48, updates_per_iteration=2,
                            minibatch=32, replay_size=3000, lr=2e-3, ct_augment=False, validate_every=0,
                            fluoro_strength=0.3, max_translation_mm=20.0, max_rotation_deg=4.0, seed=0,
                            settings=SETTINGS)
    agent = train_agent([volume], tmp_path / "run", config, progress=False, log=lambda *a: None)
    assert (tmp_path / "run" / "last.pt").exists() and (tmp_path / "run" / "metrics.csv").exists()

    rng = np.random.default_rng(4242)  # cases apart from training's
    ct, centre = _prepare(volume, 6.0, rng, False, "cpu")
    untrained = Agent.new(AgentSettings.from_dict(SETTINGS))
    before, after, untrained_after = [], [], []
    for _ in range(12):
        case = sample_case(rng, [ct], [centre], config, 64)
        env = Environment(ct, centre, case.fixed)
        before.append(_in_plane_error(case.init, case.truth))
        after.append(_in_plane_error(run_agent(agent, env, case.init, checked=False)[0], case.truth))
        untrained_after.append(_in_plane_error(run_agent(untrained, env, case.init, checked=False)[0], case.truth))
    print(f"in-plane error: initial {np.mean(before):.1f} mm, trained agent {np.mean(after):.1f} mm, "
          f"untrained {np.mean(untrained_after):.1f} mm")
    assert np.mean(after) < 0.6 * np.mean(before)
    assert np.mean(after) < np.mean(untrained_after)
