"""The depth stage of checked inference: the agent's last moves along the beam, checked with the fine frame model.

The agent's 64 x 64 views hardly show depth (a 10 mm error moves their content by about half a pixel, and their NCC
peaks up to 20 mm from the truth on a CT the agent never saw: training/README.md), so on such a CT its result is
mostly off along the beam. After the agent stops, this stage takes its +/- tz moves at its own step sizes (coarse to
fine), each one kept only when it lowers the cost of the refinement's fine level at the new pose: the 128-px working
grid, the DRR blurred and processed like the frame and mapped to its intensities, gradient correlation
(:class:`~medai.registration.refine.RefineLevel`). That frame model is what reads depth (magnification) without the
bias a display curve gives the plain NCC.

A move along the beam is a depth move that keeps the projection in place: +/- 1 mm of tz carries the other five
parameters' least-squares coupling to it (:func:`depth_direction`, from the fine level's Jacobian at the agent's
result; typically < 0.1 mm and 0.03 deg per mm). The agent's other parameters were fitted at its wrong depth, so
the cost along tz alone has its minimum where the agent stopped (a diagonal valley: on 100 unseen-CT development
frames, seed 9191, its minimum within +/- 30 mm lay at the agent's depth in 9 of its 11 misses, 10-25 mm deep),
while along the coupled direction it lies near the truth (agent alone < 10 mm 0.89 -> 0.95 on those frames). The
refinement (reported separately) is what moves all six freely.
"""
from __future__ import annotations

import numpy as np

from ..errors import MedAIInputError
from .agent import Trajectory, within_search_range
from .environment import Environment
from .poses import ACTION_NAMES, RigidPose, action_delta
from .refine import RefineLevel, _jacobian, _Residual

DEPTH_ACTIONS = (ACTION_NAMES.index("+tz"), ACTION_NAMES.index("-tz"))
MAX_MOVES_PER_STEP = 12
"""At most this many moves at one step size (the search range already bounds the walk)."""
MAX_COUPLING = 0.5
"""Bound on each other parameter's change per mm of depth (mm or deg): a move stays a depth move."""
OTHER_DOFS = (0, 1, 3, 4, 5)  # tx, ty, rx, ry, rz: the parameters that follow a depth move


def check_depth(level: RefineLevel, env: Environment, pose: RigidPose, init: RigidPose, steps_mm, trajectory: Trajectory,
                cancel=None) -> RigidPose:
    """``pose`` moved along the beam by the agent's +/- tz steps (``steps_mm``, coarse to fine) while each move lowers
    the fine level's cost; the moves are inserted before the trajectory's final row, each with the views' similarity
    before it (``similarity``, the measure of the agent's other rows) and the fine level's after it
    (``depth_similarity``); the final row's similarity is the views' at the returned pose."""
    residual = _Residual(level, env.centre_ras)
    residual.choose_filter(pose)
    r = residual(pose)
    cost = float(r @ r)
    direction = depth_direction(residual, pose, r)
    final = trajectory.rows.pop()
    step_number, similarity = final["step"], final["similarity"]
    order = DEPTH_ACTIONS
    for step_mm in steps_mm:
        for _ in range(MAX_MOVES_PER_STEP):
            if cancel is not None and cancel():
                break
            moved = _first_lower(residual, order, pose, init, step_mm, cost, direction)
            if moved is None:
                break
            action, pose, cost = moved
            order = (action, *(a for a in DEPTH_ACTIONS if a != action))  # keep going the way that paid
            trajectory.rows.append({"step": step_number, "action": ACTION_NAMES[action], "step_mm": step_mm,
                                    "step_deg": 0.0, "similarity": similarity, "stage": "depth",
                                    "depth_similarity": 1.0 - cost / 2.0})
            _, similarity = env.look(pose)
            trajectory.renders += 1
            step_number += 1
    trajectory.renders += residual.renders  # its filter choice, the Jacobian's tilts and every move tried
    trajectory.rows.append({**final, "step": step_number, "similarity": similarity})
    return pose


def depth_direction(residual: _Residual, pose: RigidPose, r) -> np.ndarray:
    """(6,) a move of +1 mm along the beam (tz) with the change of the other five parameters that best keeps the fine
    level's residual ``r`` at ``pose`` as it is (least squares on its Jacobian there: warped columns for the in-plane parameters,
    two renders for the tilts), each bounded by :data:`MAX_COUPLING`; pure tz if that Jacobian is degenerate or cannot
    be rendered (a tilt that puts the body across the source or the detector)."""
    direction = np.zeros(6)
    direction[2] = 1.0
    level = residual.level
    try:
        jac = _jacobian(residual, pose, r, range(6), np.asarray(level.fd_step, dtype=np.float64),
                        level.warp_dofs).numpy()
    except MedAIInputError:
        return direction
    coupling = -np.linalg.lstsq(jac[:, OTHER_DOFS], jac[:, 2], rcond=None)[0]
    if np.all(np.isfinite(coupling)):
        direction[list(OTHER_DOFS)] = np.clip(coupling, -MAX_COUPLING, MAX_COUPLING)
    return direction


def _first_lower(residual: _Residual, order, pose: RigidPose, init: RigidPose, step_mm: float,
                 cost: float, direction: np.ndarray):
    """(action, pose, cost) of the first of ``order``'s moves (+/- ``step_mm`` along ``direction``) whose fine-level
    cost is below ``cost``; None if none."""
    for action in order:
        candidate = pose.moved(action_delta(action, step_mm, 0.0)[2] * direction)
        if not within_search_range(candidate, init):
            continue
        try:
            candidate_cost = residual.cost(candidate)
        except MedAIInputError:  # the body would cross the source or the detector
            continue
        if candidate_cost < cost:
            return action, candidate, candidate_cost
    return None
