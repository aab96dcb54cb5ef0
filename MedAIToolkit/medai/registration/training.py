"""Training the agent: supervised regression of pre-computed Q-values on states the agent itself visits.

Episodes run in parallel: each has a (randomly augmented) CT, a random C-arm (SDD, SID, field of view), a true
pose (a view within LAO/RAO +/-45 deg and CRA/CAU +/-25 deg, off by up to ``max_translation_mm`` /
``max_rotation_deg`` per parameter), its fluoroscopy-like frame, and a current pose starting at the nominal view.
Each iteration renders the current states, stores them with their exact Q-values (:func:`poses.q_values`: the
reduction of the distance to the true pose each action brings) in a replay buffer, takes a few regression steps,
then moves every episode by an epsilon-greedy action with the same coarse-to-fine rule as inference (DAgger-style:
training visits the states the agent itself reaches).

Under ``torchrun`` (DDP through :mod:`medai.distributed`; gloo on CPUs, NCCL on GPUs) every process runs its own
episodes on its own augmented CT copies (its own seed: the experience is sharded) into its own replay buffer, and
the regression steps are DDP steps over a global minibatch of ``minibatch`` states (``minibatch / N`` from each
process's buffer) with BatchNorm synchronised; rank 0 alone validates, logs and checkpoints.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..drr.geometry import CArmGeometry, Pose
from ..drr.renderer import PreparedCT, prepare_ct, render_matrix
from ..errors import MedAIInputError
from ..io import Volume
from .agent import Agent, AgentSettings, revisits, run_agent
from .augment import augment_ct, fluoroscopy_like, random_processing
from .environment import Environment, FixedImage, make_state, render_views
from .motion import N_FEATURES, body_points
from .pipeline import resampled_ct
from .poses import MODE_ACTIONS, RigidPose, action_delta, q_values


@dataclass
class TrainingConfig:
    iterations: int = 3000
    minutes: float | None = None  # stop after this wall-clock time (whichever comes first)
    batch_episodes: int = 32  # episodes stepped (new states) per iteration
    pool_episodes: int = 96
    updates_per_iteration: int = 2
    minibatch: int = 64
    replay_size: int = 8000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epsilon_start: float = 0.6
    epsilon_end: float = 0.1
    episode_steps: int = 45
    max_translation_mm: float = 25.0
    max_rotation_deg: float = 12.0
    primary_deg: float = 45.0  # LAO/RAO range
    secondary_deg: float = 25.0  # CRA/CAU range
    sdd_mm: tuple = (900.0, 1300.0)
    sid_mm: tuple = (550.0, 850.0)
    fov_mm: tuple = (220.0, 420.0)
    aspect: tuple = (0.8, 1.25)
    fluoro_strength: float = 1.0
    ct_augment: bool = True
    ct_variants: int = 4  # augmented copies per training CT kept at once
    fill_air: float = 0.0  # probability that a copy's lungs / bowel gas are filled with soft tissue (abdomen-like)
    short_scan: float = 0.0  # probability that a copy keeps only 45-85% of its slices (one region's scan)
    size: float = 0.0  # a copy's build: voxel spacing scaled by up to 1 +/- size (augment_ct): no depth from body size
    processing: float = 0.0  # probability that a frame goes through a C-arm's image processing (augment.carm_processing)
    ct_refresh_every: int = 150  # iterations between replacing one augmented copy
    motion_features: bool = True  # the state's motion features (an agent started without them is widened, zeros)
    validate_every: int = 250
    validation_cases: int = 16
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "cpu"
    settings: dict = field(default_factory=lambda: AgentSettings().to_dict())

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingConfig":
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise MedAIInputError(f"unknown training settings: {sorted(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) and k != "settings" else v for k, v in values.items()}
        return cls(**values)


def agent_for(config: TrainingConfig, agent: Agent | None = None) -> Agent:
    """The agent to train (or export) under ``config``: ``agent``, or a new one; with ``motion_features``, one without
    them is widened (zero weights: it starts out computing what it computed before)."""
    agent = agent or Agent.new(AgentSettings.from_dict(config.settings),
                               n_features=N_FEATURES if config.motion_features else 0)
    if config.motion_features and agent.network.n_features != N_FEATURES:
        agent.network = agent.network.with_features(N_FEATURES)
    return agent


@dataclass
class Case:
    """One registration problem: CT index, working geometry, truth, fixed image, nominal (initial) pose."""

    ct_index: int
    carm: CArmGeometry
    truth: RigidPose
    fixed: FixedImage
    init: RigidPose


def sample_carm(rng: np.random.Generator, config: TrainingConfig, work_size: int) -> CArmGeometry:
    sdd = rng.uniform(*config.sdd_mm)
    sid = rng.uniform(config.sid_mm[0], min(config.sid_mm[1], sdd - 250.0))
    fov = rng.uniform(*config.fov_mm)
    aspect = rng.uniform(*config.aspect)
    return CArmGeometry(sdd, sid, work_size, work_size, fov * math.sqrt(aspect) / work_size,
                        fov / math.sqrt(aspect) / work_size)


def sample_case(rng: np.random.Generator, cts: list[PreparedCT], centres: list, config: TrainingConfig,
                work_size: int, index: int | None = None) -> Case:
    """A random case (retries until the body lies between source and detector)."""
    for _ in range(50):
        ct_index = int(rng.integers(len(cts))) if index is None else index
        carm = sample_carm(rng, config, work_size)
        primary, secondary = rng.uniform(-config.primary_deg, config.primary_deg), rng.uniform(
            -config.secondary_deg, config.secondary_deg)
        nominal = Pose(rx=-secondary, rz=-primary)
        t, r = config.max_translation_mm, config.max_rotation_deg
        offsets = np.r_[rng.uniform(-t, t, 3), rng.uniform(-r, r, 3)]
        truth = RigidPose.from_pose(Pose.from_array(nominal.as_array() + offsets))
        try:
            line_integrals = render_matrix(cts[ct_index], carm, truth.matrix(centres[ct_index])).numpy()
            RigidPose.from_pose(nominal).matrix(centres[ct_index])
        except MedAIInputError:
            continue
        processing = random_processing(rng) if config.processing > 0 and rng.uniform() < config.processing else None
        image, mask = fluoroscopy_like(line_integrals, rng, config.fluoro_strength, processing=processing)
        if mask.mean() < 0.3:
            continue
        return Case(ct_index, carm, truth, FixedImage.build(image, mask, carm), RigidPose.from_pose(nominal))
    raise MedAIInputError("could not draw a valid training case (is the CT far larger than the C-arm?)")


class _Episode:
    def __init__(self, case: Case):
        self.case, self.pose, self.level, self.steps, self.visited = case, case.init, 0, 0, []


_RESAMPLED: dict = {}


def _prepare(volume: Volume, spacing: float, rng, augment: bool, device: str, **augment_options):
    key = (id(volume), spacing)
    if key not in _RESAMPLED:  # resample each CT once (the full-resolution resampling takes seconds)
        _RESAMPLED[key] = resampled_ct(volume, spacing)  # the Registrar's resampling
    base = _RESAMPLED[key]
    if augment:
        base = augment_ct(base, rng, **augment_options)
    return prepare_ct(base, device=device), base.geometry.centre_ras(base.array.shape)


def train_agent(volumes: list[Volume], out_dir, config: TrainingConfig | None = None, agent: Agent | None = None,
                validation_volumes: list[Volume] | None = None, resume: bool = False, progress: bool = True,
                log=print) -> Agent:
    """Train (or fine-tune ``agent``) on ``volumes``; writes last.pt, metrics.csv, config.json into ``out_dir``."""
    config = config or TrainingConfig()
    if not volumes:
        raise MedAIInputError("training the agent needs at least one CT volume")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = distributed.setup(config.device)
    recorded = asdict(config)
    config = replace(config, device=str(ctx.device))  # cuda -> this rank's GPU under torchrun
    local_minibatch = distributed.local_batch_size(config.minibatch, ctx)
    log = log if ctx.main else (lambda *args: None)
    progress = progress and ctx.main
    rng = np.random.default_rng(config.seed if ctx.main else [config.seed, ctx.rank])  # each rank its own episodes
    torch.manual_seed(config.seed)
    settings = agent.settings if agent is not None else AgentSettings.from_dict(config.settings)
    agent = agent_for(config, agent)
    network = distributed.sync_batchnorm(agent.network.to(config.device), ctx)
    agent.network = network
    net = distributed.wrap(network, ctx)  # the regression steps; acting and validation use ``network``
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start_iteration = 0
    checkpoint = out / "last.pt"
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location=config.device, weights_only=False)
        network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        start_iteration = int(state["iteration"])
        rng = np.random.default_rng([config.seed, start_iteration] + ([ctx.rank] if ctx.rank else []))
        log(f"resumed from {checkpoint} at iteration {start_iteration}")
    if ctx.main:
        (out / "config.json").write_text(json.dumps(recorded, indent=2))

    spacing = settings.ct_spacing_mm
    slots = [(v, n) for v in range(len(volumes)) for n in range(config.ct_variants if config.ct_augment else 1)]
    ct_options = {"fill_air": config.fill_air, "short_scan": config.short_scan, "size": config.size}
    prepared = [_prepare(volumes[v], spacing, rng, config.ct_augment, config.device, **ct_options) for v, _ in slots]
    cts, centres = [p[0] for p in prepared], [p[1] for p in prepared]
    points = [body_points(ct) for ct in cts]
    validation = (_validation_cases(volumes + list(validation_volumes or []), len(volumes), config, settings)
                  if ctx.main else [])

    pool = [_Episode(sample_case(rng, cts, centres, config, settings.work_size)) for _ in range(config.pool_episodes)]
    allowed = np.array(MODE_ACTIONS["2d3d"])
    replay_states = torch.zeros(config.replay_size, 4, settings.patch, settings.patch, dtype=torch.float16)
    replay_features = torch.zeros(config.replay_size, N_FEATURES)  # a network without features ignores them
    replay_targets = torch.zeros(config.replay_size, len(allowed))
    stored = 0
    metrics_path = out / "metrics.csv"
    new_file = not (resume and metrics_path.exists())
    metrics = open(metrics_path if ctx.main else os.devnull, "a" if not new_file else "w", newline="")
    writer = csv.writer(metrics)
    if new_file:
        writer.writerow(["iteration", "seconds", "loss", "epsilon", "episodes_done", "done_final_error_mm",
                         "val_agent_mtre_median", "val_success_10mm", "val_heldout_mtre_median",
                         "val_heldout_success_10mm"])
    tensorboard = _tensorboard(out) if ctx.main else None
    from tqdm import tqdm

    started = time.time()
    losses, finished = [], []
    bar = tqdm(range(start_iteration, config.iterations), desc="agent", unit="it", disable=not progress,
               initial=start_iteration, total=config.iterations)
    iteration = start_iteration
    for iteration in bar:
        fraction = iteration / max(config.iterations - 1, 1)
        epsilon = config.epsilon_start + (config.epsilon_end - config.epsilon_start) * fraction
        if config.ct_augment and iteration and iteration % config.ct_refresh_every == 0:
            slot = int(rng.integers(len(slots)))
            cts[slot], centres[slot] = _prepare(volumes[slots[slot][0]], spacing, rng, True, config.device,
                                                **ct_options)
            points[slot] = body_points(cts[slot])
            for episode in pool:
                if episode.case.ct_index == slot:
                    episode.steps = config.episode_steps  # forces a reset on the new CT
        chosen = rng.choice(len(pool), config.batch_episodes, replace=False)
        states, targets, used = [], [], []
        for index in chosen:
            episode = pool[index]
            case = episode.case
            try:
                views = render_views(cts[case.ct_index], case.fixed, episode.pose.matrix(centres[case.ct_index]))
            except MedAIInputError:
                pool[index] = _Episode(sample_case(rng, cts, centres, config, settings.work_size))
                continue
            states.append(make_state(case.fixed, *views, episode.pose, centres[case.ct_index], points[case.ct_index]))
            used.append(index)
            step_mm, step_deg = settings.levels[episode.level]
            targets.append(q_values(episode.pose.error_to(case.truth), step_mm, step_deg))
        if not states and not ctx.distributed:
            continue
        if states:
            states_t = torch.stack([state.views for state in states])
            features_t = torch.stack([state.features for state in states])
            targets_t = torch.as_tensor(np.array(targets), dtype=torch.float32)
            network.eval()
            with torch.no_grad():
                predicted = network(states_t.to(config.device), features_t.to(config.device)).cpu().double().numpy()
            slots_to_fill = (np.arange(len(states)) + stored) % config.replay_size
            replay_states[slots_to_fill] = states_t.half()
            replay_features[slots_to_fill] = features_t
            replay_targets[slots_to_fill] = targets_t
            stored += len(states)
        # regression on the replay buffer (DDP: every rank steps, each on its own buffer's share)
        network.train()
        available = min(stored, config.replay_size)
        if distributed.min_over_ranks(available, ctx) > 0:
            for _ in range(config.updates_per_iteration):
                pick = torch.as_tensor(rng.integers(0, available, min(local_minibatch, available)))
                loss = torch.nn.functional.smooth_l1_loss(net(replay_states[pick].float().to(config.device),
                                                              replay_features[pick].to(config.device)),
                                                          replay_targets[pick].to(config.device), beta=0.5)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()))
        # move the episodes: epsilon-greedy with the inference rule for step sizes
        for row, index in enumerate(used):
            episode = pool[index]
            q = predicted[row]
            if revisits(episode.pose, episode.visited, *settings.levels[episode.level]) or q.max() <= 0:
                episode.level += 1
                episode.visited = []
            episode.visited.append(episode.pose)
            episode.steps += 1
            if episode.level >= len(settings.levels) or episode.steps >= config.episode_steps:
                finished.append(float(np.linalg.norm(episode.pose.error_to(episode.case.truth)[:3])))
                pool[index] = _Episode(sample_case(rng, cts, centres, config, settings.work_size))
                continue
            action = int(rng.integers(len(allowed))) if rng.uniform() < epsilon else int(np.argmax(q))
            episode.pose = episode.pose.moved(action_delta(action, *settings.levels[episode.level]))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", eps=f"{epsilon:.2f}")
        done_now = iteration + 1
        val = {}
        validate_now = config.validate_every and (done_now % config.validate_every == 0 or done_now == config.iterations)
        if validate_now and ctx.main:
            val = _validate(agent, validation, len(volumes))
            log(f"iteration {done_now}: loss {np.mean(losses[-50:]):.4f}, " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))
        if (done_now % 20 == 0 or validate_now) and ctx.main:
            writer.writerow([done_now, round(time.time() - started, 1), round(float(np.mean(losses[-20:])), 5),
                             round(epsilon, 3), len(finished), round(float(np.median(finished[-100:])), 2) if finished else "",
                             *[round(val[k], 3) if k in val else "" for k in ("val_agent_mtre_median", "val_success_10mm",
                                                                              "val_heldout_mtre_median", "val_heldout_success_10mm")]])
            metrics.flush()
            if tensorboard is not None:
                tensorboard.add_scalar("loss", float(np.mean(losses[-20:])), done_now)
                for k, v in val.items():
                    tensorboard.add_scalar(k, v, done_now)
        if (done_now % config.checkpoint_every == 0 or done_now == config.iterations) and ctx.main:
            _save_checkpoint(checkpoint, network, optimiser, done_now)
        if config.minutes is not None and distributed.broadcast_flag(time.time() - started > 60 * config.minutes, ctx):
            log(f"time limit of {config.minutes} min reached at iteration {done_now}")
            if ctx.main:
                _save_checkpoint(checkpoint, network, optimiser, done_now)
            break
    bar.close()
    metrics.close()
    distributed.cleanup(ctx)
    network.eval()
    agent.card = {**agent.card, "trained_iterations": iteration + 1}
    return agent


def _save_checkpoint(path: Path, network, optimiser, iteration: int) -> None:
    tmp = path.with_suffix(".part")
    torch.save({"network": network.state_dict(), "optimiser": optimiser.state_dict(), "iteration": iteration}, tmp)
    os.replace(tmp, path)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: CSV only
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _validation_cases(volumes: list[Volume], n_train: int, config: TrainingConfig, settings: AgentSettings):
    """Fixed cases (own seed) on the un-augmented CTs: training CTs first, then held-out ones."""
    if not config.validate_every or not config.validation_cases:
        return []
    rng = np.random.default_rng(10_000 + config.seed)
    prepared = [_prepare(v, settings.ct_spacing_mm, rng, False, config.device) for v in volumes]
    cts, centres = [p[0] for p in prepared], [p[1] for p in prepared]
    cases = []
    for index in range(len(volumes)):
        for _ in range(config.validation_cases):
            case = sample_case(rng, cts, centres, config, settings.work_size, index=index)
            cases.append((index, case, cts[index], centres[index]))
    return cases


def _validate(agent: Agent, cases, n_train: int) -> dict:
    from .pipeline import mtre_of

    errors = {"train": [], "heldout": []}
    for index, case, ct, centre in cases:
        env = Environment(ct, centre, case.fixed)
        pose, _ = run_agent(agent, env, case.init, checked=False)  # the policy learnt, without the match check
        points = ct.geometry.index_to_ras(ct.tissue_ijk)
        errors["train" if index < n_train else "heldout"].append(
            mtre_of(pose.matrix(centre), case.truth.matrix(centre), points))
    out = {}
    for name, prefix in (("train", "val_agent"), ("heldout", "val_heldout")):
        if errors[name]:
            out[f"{prefix}_mtre_median"] = float(np.median(errors[name]))
            out[f"{prefix.replace('_agent', '')}_success_10mm"] = float(np.mean(np.array(errors[name]) < 10))
    return out
