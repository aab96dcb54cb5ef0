"""Checked inference (the shipped default): every step the agent takes must improve the DRR's match to the frame, so
even a Q-network that ranks the actions badly cannot walk away from the frame; real CT, real renders."""
import numpy as np
import torch

from medai.io import read_volume, resample_volume
from medai.paths import resources_dir
from medai.registration.agent import Agent, AgentSettings, pose_key, run_agent
from medai.registration.environment import Environment
from medai.registration.training import TrainingConfig, _prepare, sample_case

SETTINGS = {"ct_spacing_mm": 6.0, "work_size": 64, "patch": 32, "levels": [[6.0, 3.0], [3.0, 1.5]], "max_steps": 30}


def test_checked_steps_only_improve_the_match_and_bring_the_pose_closer():
    torch.manual_seed(0)
    volume = resample_volume(read_volume(str(resources_dir() / "Samples" / "ct_abdomen_3Dircadb1.17_3mm.nrrd")),
                             (6.0,) * 3)
    config = TrainingConfig(fluoro_strength=0.3, max_translation_mm=15.0, max_rotation_deg=4.0, ct_augment=False,
                            settings=SETTINGS)
    rng = np.random.default_rng(7)
    ct, centre = _prepare(volume, 6.0, rng, False, "cpu")
    untrained = Agent.new(AgentSettings.from_dict(SETTINGS))  # random ranking: the check alone must do the work
    before, checked, greedy = [], [], []
    for _ in range(6):
        case = sample_case(rng, [ct], [centre], config, 64)
        env = Environment(ct, centre, case.fixed)
        looked = []  # every pose the run renders
        look = env.look
        env.look = lambda candidate: (looked.append(pose_key(candidate)), look(candidate))[1]
        pose, trajectory = run_agent(untrained, env, case.init)
        env.look = look
        # a pose rendered earlier matched no better (the match only rises): never rendered twice, although a random
        # ranking tries the reverse of its last move at every level's end
        assert len(set(looked)) == len(looked) == trajectory.renders
        similarities = [row["similarity"] for row in trajectory.rows]
        assert all(b > a for a, b in zip(similarities, similarities[1:])), similarities
        assert trajectory.stop_reason in ("converged", "step budget")
        assert trajectory.renders >= len(trajectory.rows)  # each tried action is one render
        before.append(case.init.error_to(case.truth))
        checked.append(pose.error_to(case.truth))
        greedy.append(run_agent(untrained, env, case.init, checked=False)[0].error_to(case.truth))
    in_plane = {name: float(np.mean(np.linalg.norm(np.array(errors)[:, :2], axis=1)))
                for name, errors in (("initial", before), ("checked", checked), ("greedy", greedy))}
    print("mean in-plane error (mm):", in_plane)
    assert in_plane["checked"] < 0.5 * in_plane["initial"]
    assert in_plane["checked"] < in_plane["greedy"]
