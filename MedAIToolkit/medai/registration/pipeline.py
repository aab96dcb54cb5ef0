"""Register a fluoroscopy frame to a CT: the agent, then (optionally) intensity-based refinement; when the refined
result is doubtful (its predicted uncertainty above :data:`SECOND_START_UNCERTAINTY_MM`), a second refinement from the
initial pose, and the better match of the two is kept; when it is still not sure (above
:data:`RESTART_UNCERTAINTY_MM`), refinements from the kept pose moved along the beam (:data:`DEPTH_RESTARTS_MM`), and
again the best match is kept. Both are decided on the uncertainty in mm, not on the calibrated confidence, so a new
calibration changes the probability reported and nothing else.

``Registrar(volume, agent)`` prepares the CT once (attenuation volumes at the agent's and the refinement's
resolutions); ``register(frame, init_pose)`` is then the per-frame work whose time is reported.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..drr.geometry import Pose
from ..drr.renderer import prepare_ct
from ..errors import MedAIInputError
from ..io import Volume, resample_volume
from .agent import Agent, run_agent
from .depth import check_depth
from .environment import Environment, FixedImage, check_overlap
from .frame import Frame
from .motion import body_points
from .poses import MODE_ACTIONS, RigidPose, pose_distance
from .refine import RefineLevel, model_shift, refine, uncertainty_mm

IN_PLANE_DOFS = (0, 1, 2, 5)
"""tx, ty, tz, rz: parameters that move the projection in the detector plane (shift, magnification, rotation)."""
REFINE_LEVELS = ({"ct_spacing_mm": None, "work_size": 64, "sigma_px": 1.0, "iterations": 6,
                  "warp_dofs": IN_PLANE_DOFS},
                 {"ct_spacing_mm": 2.0, "work_size": 128, "sigma_px": 1.0, "iterations": 10, "gradients": True,
                  "broyden": True, "warp_dofs": IN_PLANE_DOFS, "intensity_degree": 5,
                  "blur_candidates": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
                  "flatten_candidates": ((0.45, 12.0), (0.3, 8.0), (0.6, 8.0), (0.3, 16.0), (0.6, 16.0)),
                  "sharpen_candidates": ((1.0, 2.0), (0.5, 1.0), (1.0, 1.0), (2.0, 1.0), (0.5, 2.0), (2.0, 2.0),
                                         (0.5, 3.0), (1.0, 3.0), (2.0, 3.0))})
"""Refinement pyramid. ``ct_spacing_mm`` None means the agent's CT. The coarse level matches by NCC and takes a fresh
Jacobian at every iteration (far from the optimum). The fine level matches by gradient correlation (robust to the
frame's gamma and noise) and keeps its Jacobian by Broyden updates. At both levels the Jacobian columns of the
in-plane parameters come from warping the rendered image (2 renders per Jacobian instead of 6).
Before comparing, the fine level makes the DRR look like the frame:
- blurred like it (the best of ``blur_candidates`` px);
- processed like a C-arm's log image (``flatten_candidates``: dynamic-range compression; ``sharpen_candidates``: edge
  enhancement; each (amount, sigma px), taken only when it fits better by ``refine.FILTER_MIN_GAIN``);
- mapped to its intensities by a degree-5 polynomial in the square root of its values (``intensity_degree``).
The filter is chosen where the level starts and again where its iterations end; if it changed, the iterations go on
with the new one. A display curve on a blurred frame moves where the body outline's gradients peak, which the fit
otherwise read as a depth error. Measurements behind each choice: training/README.md ("Registration agent")."""
CONFIDENCE_FEATURE = "log_total_uncertainty_mm"
"""The confidence's one feature (:data:`MODEL_CHECK_SPACING_MM`). Similarity levels differ between CTs: a model that
also used them transferred badly to a CT it was not calibrated on (cross-CT AUC 0.43-0.51 against 0.90)."""
DEFAULT_CONFIDENCE = {"features": [CONFIDENCE_FEATURE], "coef": [-3.0], "intercept": -1.0,
                      "calibrated_on": "default (uncalibrated) coefficients"}
"""An agent card without a calibrated model: 50% at 0.7 mm total predicted uncertainty (bench_registration --calibrate
fits the card's own)."""
SECOND_START_UNCERTAINTY_MM = 2.38
"""Above this predicted uncertainty (the covariance's RMS error over the body, ``log_uncertainty_mm``) the refinement
also starts from the initial pose, and the result with the higher final similarity is kept (``refined_from``): on a
CT it never trained on, the agent can lead the refinement away from a pose the refinement alone would have found.
Until the ninth session (2026-12-07) the rule was "confidence below 0.5" under the card's calibration of the time,
which put it here."""
RESTART_UNCERTAINTY_MM = 1.55
"""Above this predicted uncertainty the depth restarts run (:data:`DEPTH_RESTARTS_MM`); "confidence below 0.8" under
that calibration."""
DEPTH_RESTARTS_MM = (-8.0, 8.0)
"""Above :data:`RESTART_UNCERTAINTY_MM` the refinement also restarts from the kept pose moved this far along the beam
(tz), and the best match is kept (``refined_from`` "depth restart"). Depth is the parameter a single view determines
worst, and a refinement can settle in a local minimum a few mm deep with rotations about 1 deg off (unseen abdominal
CT, 130 development frames: < 2 mm 0.938 -> 0.962, 11.5% of frames restarted, median time +0.03 s)."""
INVERTED_MATCH = -0.3
"""A frame whose match with the DRR at the initial pose (the agent's view NCC) is below this looks inverted (bright
where the beam was less attenuated) and is refused, naming ``invert``: registered as given it ended 225 mm off. On
180 development frames drawn like the benchmark's (chest, abdomen, processed, 0.3-3 mm pixels), 20 mm / 10 deg off,
the lowest match was -0.09 and the 5th percentile 0.30-0.47 per set, so an inverted one reads about -0.3 to -0.7."""
UNKNOWN_UNCERTAINTY_MM = 1e3
"""The ``log_uncertainty_mm`` feature's cap, and its value when there is no estimate (not refined)."""
MODEL_CHECK_SPACING_MM = 1.0
"""The confidence also asks how far the fine level's optimum moves when its DRR comes from the CT resampled at this
spacing instead of the level's 2 mm (:func:`refine.model_shift`, one render; ``resolution_shift_mm``, RMS mm over the
body), and adds that to the predicted uncertainty in quadrature (``log_total_uncertainty_mm``). The covariance sees
the frame's noise, not a minimum that the CT's sampling puts in the wrong place (pooled ROC AUC on 400 unseen-CT
development frames 0.903 -> 0.925). Costs one 128 px render per frame and the 1 mm CT's preparation, once per CT
(2.2 s on the benchmark's abdominal CT; 3.8 s and 0.16 GB more peak memory on its chest CT)."""


@dataclass
class RegistrationResult:
    pose: Pose
    matrix: np.ndarray
    agent_pose: Pose
    agent_matrix: np.ndarray
    init_pose: Pose
    steps: int
    seconds: float
    similarity: float
    agent_similarity: float
    confidence: float
    trajectory: list
    mode: str
    refined: bool
    stop_reason: str
    timings: dict = field(default_factory=dict)
    features: dict = field(default_factory=dict)
    refined_from: str = "agent"  # where the kept refinement started: "agent", "initial pose" (second start) or
    # "depth restart" (the kept pose moved along the beam)
    agent_inference: str = "checked"  # "checked" (each step must improve the match) or "greedy" (agent.run_agent)

    @property
    def uncertainty_mm(self) -> float | None:
        """RMS error (mm) over the body that the refinement's cluster-robust pose covariance predicts (None when
        not refined: the confidence of an unrefined result is then near 0)."""
        log_mm = self.features.get("log_uncertainty_mm")
        known = log_mm is not None and log_mm < np.log(UNKNOWN_UNCERTAINTY_MM)
        return round(float(np.exp(log_mm)), 3) if known else None

    def to_dict(self) -> dict:
        return {"pose": self.pose.as_array().round(4).tolist(), "matrix": np.round(self.matrix, 6).tolist(),
                "agent_pose": self.agent_pose.as_array().round(4).tolist(),
                "agent_matrix": np.round(self.agent_matrix, 6).tolist(),
                "init_pose": self.init_pose.as_array().round(4).tolist(), "steps": self.steps,
                "seconds": round(self.seconds, 4), "similarity": round(self.similarity, 6),
                "agent_similarity": round(self.agent_similarity, 6), "confidence": round(self.confidence, 4),
                "uncertainty_mm": self.uncertainty_mm,
                "mode": self.mode, "agent_inference": self.agent_inference, "refined": self.refined,
                "refined_from": self.refined_from,
                "stop_reason": self.stop_reason,
                "timings": {k: round(v, 4) for k, v in self.timings.items()},
                "features": {k: round(v, 6) for k, v in self.features.items()},
                "pose_convention": "tx ty tz (mm, C-arm frame) rx ry rz (deg about the CT centre); matrix: RAS -> "
                                   "C-arm (docs/pose_convention.md)",
                "trajectory": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
                               for row in self.trajectory]}


def refine_level(spec: dict, ct, fixed: FixedImage) -> RefineLevel:
    """A :class:`RefineLevel` from one of :data:`REFINE_LEVELS` on ``ct`` (prepared at the spec's spacing) and
    ``fixed`` (the frame on the spec's working grid)."""
    return RefineLevel(ct, fixed, **{k: v for k, v in spec.items() if k not in ("ct_spacing_mm", "work_size")})


def confidence_from(features: dict, model: dict | None = None) -> float:
    """Logistic estimate that the result is within 2 mm (coefficients calibrated by the benchmark)."""
    model = model or DEFAULT_CONFIDENCE
    if any(name not in features for name in model["features"]):
        model = DEFAULT_CONFIDENCE  # a card calibrated on features this version no longer computes
    z = model["intercept"] + sum(c * features[name] for name, c in zip(model["features"], model["coef"]))
    return float(1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))))


class Registrar:
    """A CT prepared for registration with one agent."""

    def __init__(self, volume: Volume, agent: Agent | None = None, device: str = "cpu"):
        self.agent = agent if agent is not None else Agent.load()
        self.device = device
        self.centre_ras = volume.geometry.centre_ras(volume.array.shape)
        prepared = {}
        for spacing in {self.agent.settings.ct_spacing_mm, *(level["ct_spacing_mm"] for level in REFINE_LEVELS
                                                             if level["ct_spacing_mm"])}:
            prepared[spacing] = prepare_ct(resampled_ct(volume, spacing), device=device)
        self.cts = prepared
        self.model_check_ct = prepare_ct(resampled_ct(volume, MODEL_CHECK_SPACING_MM), device=device)
        self.agent_ct = prepared[self.agent.settings.ct_spacing_mm]
        ct = self.agent_ct
        self.body_points_ras = ct.geometry.index_to_ras(ct.tissue_ijk) if ct.tissue_ijk is not None else np.empty((0, 3))
        self.motion_points_ras = body_points(ct)  # the subsample the agent's motion features fit their motions to

    def register(self, frame: Frame, init_pose: Pose | None = None, mode: str = "2d3d", refine_result: bool = True,
                 max_steps: int | None = None, cancel=None, on_step=None,
                 checked: bool | None = None) -> RegistrationResult:
        """``checked``: the agent's inference (None: its card's setting, checked for the shipped agent; False:
        greedy argmax, see :func:`run_agent`)."""
        if mode not in MODE_ACTIONS:
            raise MedAIInputError(f"unknown registration mode '{mode}' (2d3d or 2d2d)")
        init_pose = init_pose if init_pose is not None else (frame.nominal_pose or Pose())
        if not isinstance(init_pose, Pose):
            init_pose = Pose.from_array(init_pose)
        start = time.perf_counter()
        settings = self.agent.settings
        init = RigidPose.from_pose(init_pose)
        check_overlap(self.agent_ct, frame.carm, init.matrix(self.centre_ras), frame.mask)
        fixed = FixedImage.from_frame(frame, settings.work_size)
        env = Environment(self.agent_ct, self.centre_ras, fixed, self.motion_points_ras)
        _, init_match = env.look(init)  # kept by the environment: the agent's first state reuses it
        if init_match < INVERTED_MATCH:
            raise MedAIInputError(
                f"the frame looks inverted: its correlation with the CT's DRR at the initial pose is {init_match:.2f} "
                "(bright should mean attenuating, as in a radiograph). If it holds raw detector values (proportional "
                "to the beam's intensity), register it with --linear (Logic: linear=True; the module's 'Raw detector "
                "values'); if it is a display image bright where the beam was less attenuated, with --invert (Logic: "
                "invert=True; the module's 'Invert frame'); if it was already inverted, without")
        t_prep = time.perf_counter()
        agent_pose, trajectory = run_agent(self.agent, env, init, mode, max_steps, cancel, on_step, checked)
        t_depth = time.perf_counter()
        cancelled = trajectory.stop_reason == "cancelled"
        depth_checked = (trajectory.checked and settings.check_depth and mode == "2d3d" and max_steps != 0
                         and not cancelled)
        levels = self._refine_levels(frame) if depth_checked or (refine_result and not cancelled) else []
        if depth_checked:
            agent_pose = check_depth(levels[-1], env, agent_pose, init, [mm for mm, _ in settings.levels],
                                     trajectory, cancel)
        t_agent = time.perf_counter()
        agent_similarity = trajectory.rows[-1]["similarity"]
        pose, similarity, refine_log, refined_from = agent_pose, agent_similarity, [], "agent"
        refine_renders = 0
        features = self._features(agent_similarity, agent_similarity, agent_pose, agent_pose, UNKNOWN_UNCERTAINTY_MM)
        if refine_result and not cancelled:
            kept = refine(levels, agent_pose, self.centre_ras, mode, cancel)
            refine_renders = kept.renders
            features = self._outcome_features(kept, agent_similarity, agent_pose)
            if (_uncertainty_mm(features) > SECOND_START_UNCERTAINTY_MM
                    and pose_distance(init.error_to(agent_pose)) > 1.0):
                kept, refined_from, renders = self._best_match(levels, [init], kept, refined_from, "initial pose", mode,
                                                               cancel)
                refine_renders += renders
                features = self._outcome_features(kept, agent_similarity, agent_pose)
            if _uncertainty_mm(features) > RESTART_UNCERTAINTY_MM:
                deeper = [kept.pose.moved(np.array([0.0, 0.0, depth, 0.0, 0.0, 0.0])) for depth in DEPTH_RESTARTS_MM]
                kept, refined_from, renders = self._best_match(levels, deeper, kept, refined_from, "depth restart", mode,
                                                               cancel)
                refine_renders += renders
            features = self._outcome_features(kept, agent_similarity, agent_pose, model_check=True)
            refine_renders += int(kept.level is not None and kept.jacobian is not None)  # the model check's render
            pose, similarity, refine_log = kept.pose, kept.similarity, kept.log
        confidence = self._confidence(features)
        end = time.perf_counter()
        return RegistrationResult(
            pose.to_pose(), pose.matrix(self.centre_ras), agent_pose.to_pose(), agent_pose.matrix(self.centre_ras),
            init_pose, len(trajectory.rows) - 1, end - start, float(similarity), float(agent_similarity), confidence,
            trajectory.rows, mode, bool(refine_result), trajectory.stop_reason,
            {"frame": t_prep - start, "agent": t_agent - t_prep, "agent_depth": t_agent - t_depth, "refine": end - t_agent,
             "refine_iterations": float(len(refine_log)), "agent_renders": float(trajectory.renders),
             "refine_renders": float(refine_renders)},
            features, refined_from, "checked" if trajectory.checked else "greedy")

    def _refine_levels(self, frame: Frame) -> list[RefineLevel]:
        """The refinement's levels (:data:`REFINE_LEVELS`) on this frame; the last one also checks the agent's depth."""
        return [refine_level(spec, self.cts[spec["ct_spacing_mm"] or self.agent.settings.ct_spacing_mm],
                             FixedImage.from_frame(frame, spec["work_size"])) for spec in REFINE_LEVELS]

    def _best_match(self, levels, starts, kept, refined_from: str, label: str, mode: str, cancel):
        """Refine from each of ``starts``; returns the outcome with the highest similarity (``kept`` unless one
        beats it), where it started (``label`` for these starts) and the DRRs these refinements rendered."""
        renders = 0
        for start in starts:
            if cancel is not None and cancel():
                break
            try:
                outcome = refine(levels, start, self.centre_ras, mode, cancel)
            except MedAIInputError:  # a moved start puts the body across the source or the detector
                continue
            renders += outcome.renders
            if outcome.similarity > kept.similarity and not (cancel is not None and cancel()):
                kept, refined_from = outcome, label
        return kept, refined_from, renders

    def _confidence(self, features: dict) -> float:
        return confidence_from(features, self.agent.card.get("confidence"))

    def _outcome_features(self, outcome, agent_similarity: float, agent_pose: RigidPose,
                          model_check: bool = False) -> dict:
        """Features of a refinement outcome: its uncertainty is the RMS error over the body's points that the
        outcome's pose covariance predicts; with ``model_check`` (the kept outcome), its resolution shift is the RMS
        displacement of those points that a finer CT would make (:data:`MODEL_CHECK_SPACING_MM`), else 0: the second
        start and the depth restarts are decided on the covariance alone, since they answer a local minimum, not a
        model error (the same cost would keep the same wrong minimum)."""
        points = (self.body_points_ras - self.centre_ras) @ outcome.pose.rotation.T
        uncertainty = uncertainty_mm(outcome.covariance, points)
        resolution_shift = 0.0
        if model_check:
            shift = model_shift(outcome, self.model_check_ct, self.centre_ras)  # inf where unknown
            resolution_shift = uncertainty_mm(np.outer(shift, shift), points)
        return self._features(outcome.similarity, agent_similarity, outcome.pose, agent_pose, uncertainty,
                              resolution_shift)

    @staticmethod
    def _features(similarity, agent_similarity, pose: RigidPose, agent_pose: RigidPose, uncertainty: float,
                  resolution_shift: float = UNKNOWN_UNCERTAINTY_MM) -> dict:
        def log_mm(value):
            return float(np.log(min(value, UNKNOWN_UNCERTAINTY_MM)))

        return {"similarity": float(similarity), "agent_similarity": float(agent_similarity),
                "refine_shift_mm": float(pose_distance(pose.error_to(agent_pose))),
                "log_uncertainty_mm": log_mm(uncertainty),
                "resolution_shift_mm": float(min(resolution_shift, UNKNOWN_UNCERTAINTY_MM)),
                "log_total_uncertainty_mm": log_mm(np.hypot(uncertainty, resolution_shift))}


def _uncertainty_mm(features: dict) -> float:
    """The covariance's predicted RMS error over the body (mm) that the restarts are decided on."""
    return float(np.exp(features["log_uncertainty_mm"]))


def resampled_ct(volume: Volume, spacing_mm: float) -> Volume:
    """The CT at about ``spacing_mm``, spanning exactly its extent (``keep_extent``: with a grid rounded to whole
    voxels of exactly 2 mm, the scan's end moved in the DRR and the refinement answered with a depth bias of
    0.4-0.8 mm on clean frames of the unseen abdominal CT; 0.0-0.2 mm with it)."""
    if np.all(np.abs(volume.geometry.spacing_mm - spacing_mm) < 1e-6):
        return volume
    return resample_volume(volume, (spacing_mm,) * 3, keep_extent=True)


def mtre_of(result_matrix: np.ndarray, truth_matrix: np.ndarray, points_ras: np.ndarray) -> float:
    """Mean 3D distance (mm) between body points mapped by two RAS -> C-arm matrices."""
    points = np.c_[points_ras, np.ones(len(points_ras))]
    return float(np.mean(np.linalg.norm((points @ result_matrix.T - points @ truth_matrix.T)[:, :3], axis=1)))
