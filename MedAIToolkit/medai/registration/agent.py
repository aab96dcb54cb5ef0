"""The agent: a Q-network plus its settings; coarse-to-fine inference; agent files.

Inference (``AgentSettings.checked``, the default): at each step the Q-network ranks the allowed actions at the
current pose, and the agent takes the first one, in that order, whose DRR matches the frame better
(:meth:`Environment.match`); when none does, the step size shrinks to the next level; after the finest level, or
the step budget, it stops. On the CT it trained on the first choice nearly always passes (one render a step); on a
CT it never saw, where its ranking is often wrong, the check keeps it from walking away, for about 4x the renders.
Checked inference ends with the depth stage (``AgentSettings.check_depth``, :mod:`medai.registration.depth`): the
agent's +/- tz moves once more, each carrying the small change of the other parameters that keeps the projection in
place and each checked against the frame with the refinement's fine frame model, since the views' NCC does not read
depth.
Greedy (``checked=False``, as trained and validated in training): the best-ranked action is always taken; when the
agent oscillates (comes back within half a step of a pose it visited at this step size) or no action is expected to
help, the step size shrinks. What each choice measured (benchmark and development frames): training/README.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import MedAIInputError, MedAIModelError
from ..models import load_state, save_model
from .environment import Environment, State
from .motion import N_FEATURES
from .poses import ACTION_NAMES, MODE_ACTIONS, RigidPose, action_delta
from .qnetwork import QNetwork

DEFAULT_LEVELS = ((6.0, 3.0), (3.0, 1.5), (1.5, 0.75))
"""(step mm, step deg) from coarse to fine."""
SEARCH_RANGE = (30.0, 15.0)
"""The agent never moves further than this (mm per translation axis, deg per rotation axis, C-arm frame) from the
initial pose: the initial pose is within 20 mm / 10 deg of the truth, so further is always wrong."""
SIMILARITY_DROP = 0.05
"""A step that lowers the image similarity by more than this below the best seen counts as oscillation."""
SHIPPED_AGENT = "registration-agent"


@dataclass
class AgentSettings:
    ct_spacing_mm: float = 3.0
    work_size: int = 128
    patch: int = 64
    levels: tuple = DEFAULT_LEVELS
    max_steps: int = 60
    checked: bool = True  # each step must improve the image match (see the module docstring)
    max_renders: int = 400  # checked inference: DRRs rendered at most (each tried action costs one)
    check_depth: bool = True  # checked inference ends with the depth stage (medai.registration.depth)

    def to_dict(self) -> dict:
        return {"ct_spacing_mm": self.ct_spacing_mm, "work_size": self.work_size, "patch": self.patch,
                "levels": [list(level) for level in self.levels], "max_steps": self.max_steps,
                "checked": self.checked, "max_renders": self.max_renders, "check_depth": self.check_depth}

    @classmethod
    def from_dict(cls, values: dict) -> "AgentSettings":
        values = dict(values)
        values["levels"] = tuple(tuple(level) for level in values.get("levels", DEFAULT_LEVELS))
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


@dataclass
class Agent:
    network: QNetwork
    settings: AgentSettings = field(default_factory=AgentSettings)
    card: dict = field(default_factory=dict)

    @classmethod
    def new(cls, settings: AgentSettings | None = None, **network_kwargs) -> "Agent":
        settings = settings or AgentSettings()
        network_kwargs.setdefault("n_features", N_FEATURES)
        return cls(QNetwork(patch=settings.patch, **network_kwargs), settings)

    def q_values(self, state: State) -> np.ndarray:
        if self.network.training:  # eval() walks every module: ~1 ms a step when called unconditionally
            self.network.eval()
        with torch.inference_mode():
            return self.network(state.views[None], state.features[None])[0].double().numpy()

    def save(self, path, card: dict | None = None) -> Path:
        """``path`` (.pt) and its card ``<stem>.json`` (settings, network config, SHA-256)."""
        path = Path(path)
        full = {**self.card, **(card or {}), "kind": "registration-agent", "settings": self.settings.to_dict(),
                "network": self.network.config}
        return save_model(path.stem, self.network.state_dict(), full, path.parent)

    @classmethod
    def load(cls, path=None) -> "Agent":
        """Load an agent file (checksum-verified against its card); ``None``: the shipped generic agent."""
        if path is None:
            state, card = load_state(SHIPPED_AGENT)
        else:
            path = Path(path)
            if not path.exists():
                raise MedAIModelError(f"agent file not found: {path}")
            state, card = load_state(path.stem, path.parent)
        if card.get("kind") != "registration-agent":
            raise MedAIModelError(f"{card.get('file', path)} is not a registration agent (card kind "
                                  f"{card.get('kind')!r})")
        network = QNetwork(**card["network"])
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise MedAIModelError(f"agent weights do not match the network in its card: {exc}") from exc
        network.eval()
        return cls(network, AgentSettings.from_dict(card["settings"]), card)


def revisits(pose: RigidPose, visited: list, step_mm: float, step_deg: float) -> bool:
    """Whether ``pose`` lies within half a step (each translation, and the rotation angle) of a pose in ``visited``:
    moves about different axes do not commute, so a loop of steps comes back near, not exactly to, where it began."""
    if not visited:
        return False
    translations = np.array([seen.translation for seen in visited])
    rotations = np.array([seen.rotation for seen in visited])
    near = np.abs(translations - pose.translation).max(axis=1) < 0.5 * step_mm
    cos_angle = (np.einsum("ij,nij->n", pose.rotation, rotations) - 1.0) / 2.0
    turned = np.rad2deg(np.arccos(np.clip(cos_angle, -1.0, 1.0)))
    return bool(np.any(near & (turned < 0.5 * step_deg)))


@dataclass
class Trajectory:
    poses: list = field(default_factory=list)
    rows: list = field(default_factory=list)  # {"step", "action", "step_mm", "step_deg", "similarity"}
    stop_reason: str = ""
    renders: int = 0  # DRRs rendered (checked inference: every action tried)
    checked: bool = False  # which inference made it (run_agent)
    rendered: set = field(default_factory=set)  # checked inference: the poses rendered so far (pose_key)


def pose_key(pose: RigidPose) -> tuple:
    """A pose as a set key, up to the rounding of composed rotations (1e-6 mm, 1e-9 in the rotation matrix)."""
    return tuple(np.round(pose.translation, 6)) + tuple(np.round(pose.rotation, 9).ravel())


def within_search_range(candidate: RigidPose, init: RigidPose) -> bool:
    offset = np.abs(candidate.error_to(init))
    return bool(offset[:3].max() <= SEARCH_RANGE[0] and offset[3:].max() <= SEARCH_RANGE[1])


def _stops(trajectory: Trajectory, step: int, similarity: float, budget_spent: bool, cancel) -> bool:
    """Whether the run ends here (budget spent or cancelled); if so its last row and reason are written."""
    if budget_spent:
        trajectory.rows.append({"step": step, "action": "stop", "similarity": similarity})
        trajectory.stop_reason = "step budget"
        return True
    if cancel is not None and cancel():
        trajectory.rows.append({"step": step, "action": "cancelled", "similarity": similarity})
        trajectory.stop_reason = "cancelled"
        return True
    return False


def run_agent(agent: Agent, env: Environment, init: RigidPose, mode: str = "2d3d", max_steps: int | None = None,
              cancel=None, on_step=None, checked: bool | None = None) -> tuple[RigidPose, Trajectory]:
    """Steps from ``init`` (checked or greedy: ``checked`` None = the agent's setting); returns the final pose and
    the trajectory."""
    checked = agent.settings.checked if checked is None else checked
    if checked:
        return _run_checked(agent, env, init, mode, max_steps, cancel, on_step)
    allowed = np.array(MODE_ACTIONS[mode])
    levels = agent.settings.levels
    max_steps = agent.settings.max_steps if max_steps is None else max_steps
    pose, level, visited = init, 0, []
    trajectory = Trajectory()
    state, similarity = env.state(pose)
    best = (-np.inf, pose, state)
    for step in range(max_steps + 1):
        trajectory.poses.append(pose)
        dropped = similarity < best[0] - SIMILARITY_DROP
        if dropped:  # back to the best pose seen, and a smaller step
            similarity, pose, state = best
        elif similarity > best[0]:
            best = (similarity, pose, state)
        if _stops(trajectory, step, similarity, step == max_steps, cancel):
            break
        q = agent.q_values(state)[allowed]
        revisit = dropped or revisits(pose, visited, *levels[level])
        if revisit or q.max() <= 0:
            level += 1
            visited = []
            if level == len(levels):
                trajectory.rows.append({"step": step, "action": "stop", "similarity": similarity})
                trajectory.stop_reason = "converged" if not revisit else "oscillation at finest step"
                break
        visited.append(pose)
        order = np.argsort(-q)
        for choice in order:  # the best action whose pose can still be rendered (body between source and detector)
            action = int(allowed[choice])
            step_mm, step_deg = levels[level]
            candidate = pose.moved(action_delta(action, step_mm, step_deg))
            if not within_search_range(candidate, init):
                continue
            try:
                next_state, next_similarity = env.state(candidate)
                trajectory.renders += 1
                break
            except MedAIInputError:
                continue
        else:
            trajectory.rows.append({"step": step, "action": "stop", "similarity": similarity})
            trajectory.stop_reason = "no renderable move"
            break
        trajectory.rows.append({"step": step, "action": ACTION_NAMES[action], "step_mm": step_mm,
                                "step_deg": step_deg, "similarity": similarity})
        pose, state, similarity = candidate, next_state, next_similarity
        if on_step is not None:
            on_step(step, max_steps)
    return pose, trajectory


def _run_checked(agent: Agent, env: Environment, init: RigidPose, mode: str, max_steps: int | None, cancel,
                 on_step) -> tuple[RigidPose, Trajectory]:
    """Checked inference: the first action in the Q-network's order whose DRR matches the frame better is taken;
    none -> the next (smaller) step size; after the finest, stop."""
    allowed = np.array(MODE_ACTIONS[mode])
    levels, budget = agent.settings.levels, agent.settings.max_renders
    max_steps = agent.settings.max_steps if max_steps is None else max_steps
    trajectory = Trajectory(checked=True)
    pose, level = init, 0
    state, similarity = env.state(pose)
    trajectory.renders = 1
    trajectory.rendered.add(pose_key(pose))
    for step in range(max_steps + 1):
        trajectory.poses.append(pose)
        if _stops(trajectory, step, similarity, step == max_steps or trajectory.renders >= budget, cancel):
            break
        order = allowed[np.argsort(-agent.q_values(state)[allowed], kind="stable")]
        taken = None
        while level < len(levels):
            taken = _first_better(env, trajectory, order, pose, init, levels[level], similarity, budget)
            if taken is not None or trajectory.renders >= budget:
                break
            level += 1
        if taken is None:
            trajectory.rows.append({"step": step, "action": "stop", "similarity": similarity})
            trajectory.stop_reason = "step budget" if level < len(levels) else "converged"
            break
        action, candidate, views, candidate_similarity = taken
        step_mm, step_deg = levels[level]
        trajectory.rows.append({"step": step, "action": ACTION_NAMES[action], "step_mm": step_mm,
                                "step_deg": step_deg, "similarity": similarity})
        pose, similarity = candidate, candidate_similarity
        state = env.state_of(views, pose)
        if on_step is not None:
            on_step(step, max_steps)
    return pose, trajectory


def _first_better(env: Environment, trajectory: Trajectory, order, pose: RigidPose, init: RigidPose, level: tuple,
                  similarity: float, budget: int):
    """(action, pose, views, similarity) of the first action in ``order`` at step sizes ``level`` whose DRR matches
    the frame better than ``similarity``; None when none does or the render budget is spent (each render counted).
    A pose rendered earlier in the run is not rendered again: the match only rises along the run, so it matched no
    better than the current pose and would fail the check (the reverse of the last move, a level's end; 7% of the
    agent's renders on unseen-CT development frames)."""
    step_mm, step_deg = level
    for action in order:
        if trajectory.renders >= budget:
            return None
        candidate = pose.moved(action_delta(int(action), step_mm, step_deg))
        key = pose_key(candidate)
        if key in trajectory.rendered or not within_search_range(candidate, init):
            continue
        try:
            views, candidate_similarity = env.look(candidate)
        except MedAIInputError:  # the body would cross the source or the detector
            continue
        trajectory.renders += 1
        trajectory.rendered.add(key)
        if candidate_similarity > similarity:
            return int(action), candidate, views, candidate_similarity
    return None
