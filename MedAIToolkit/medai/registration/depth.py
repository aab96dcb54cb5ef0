"""The depth stage of checked inference: the agent's last moves along the beam, checked with the fine frame model.

The agent's 64 x 64 views hardly show depth (a 10 mm error moves their content by about half a pixel, and their NCC
peaks up to 20 mm from the truth on a CT the agent never saw: training/README.md), so on such a CT its result is
mostly off along the beam. After the agent stops, this stage takes its +/- tz moves at its own step sizes (coarse to
fine), each one kept only when it lowers the cost of the refinement's fine level at the new pose: the 128-px working
grid, the DRR blurred and processed like the frame and mapped to its intensities, gradient correlation
(:class:`~medai.registration.refine.RefineLevel`). That frame model is what reads depth (magnification) without the
bias a display curve gives the plain NCC. Only tz moves: the other five parameters are the agent's, and the
refinement (reported separately) is what moves all six together.
"""
from __future__ import annotations

from ..errors import MedAIInputError
from .agent import Trajectory, within_search_range
from .environment import Environment
from .poses import ACTION_NAMES, RigidPose, action_delta
from .refine import RefineLevel, _Residual

DEPTH_ACTIONS = (ACTION_NAMES.index("+tz"), ACTION_NAMES.index("-tz"))
MAX_MOVES_PER_STEP = 12
"""At most this many moves at one step size (the search range already bounds the walk)."""


def check_depth(level: RefineLevel, env: Environment, pose: RigidPose, init: RigidPose, steps_mm, trajectory: Trajectory,
                cancel=None) -> RigidPose:
    """``pose`` moved along the beam by the agent's +/- tz steps (``steps_mm``, coarse to fine) while each move lowers
    the fine level's cost; the moves are inserted before the trajectory's final row, each with the views' similarity
    before it (``similarity``, the measure of the agent's other rows) and the fine level's after it
    (``depth_similarity``); the final row's similarity is the views' at the returned pose."""
    residual = _Residual(level, env.centre_ras)
    residual.choose_filter(pose)
    cost = residual.cost(pose)
    final = trajectory.rows.pop()
    step_number, similarity = final["step"], final["similarity"]
    order = DEPTH_ACTIONS
    for step_mm in steps_mm:
        for _ in range(MAX_MOVES_PER_STEP):
            if cancel is not None and cancel():
                break
            moved = _first_lower(residual, trajectory, order, pose, init, step_mm, cost)
            if moved is None:
                break
            action, pose, cost = moved
            order = (action, *(a for a in DEPTH_ACTIONS if a != action))  # keep going the way that paid
            trajectory.rows.append({"step": step_number, "action": ACTION_NAMES[action], "step_mm": step_mm,
                                    "step_deg": 0.0, "similarity": similarity, "stage": "depth",
                                    "depth_similarity": 1.0 - cost / 2.0})
            _, similarity = env.look(pose)
            step_number += 1
    trajectory.rows.append({**final, "step": step_number, "similarity": similarity})
    return pose


def _first_lower(residual: _Residual, trajectory: Trajectory, order, pose: RigidPose, init: RigidPose, step_mm: float,
                 cost: float):
    """(action, pose, cost) of the first of ``order``'s moves whose fine-level cost is below ``cost``; None if none."""
    for action in order:
        candidate = pose.moved(action_delta(action, step_mm, 0.0))
        if not within_search_range(candidate, init):
            continue
        try:
            candidate_cost = residual.cost(candidate)
        except MedAIInputError:  # the body would cross the source or the detector
            continue
        trajectory.renders += 1
        if candidate_cost < cost:
            return action, candidate, candidate_cost
    return None
