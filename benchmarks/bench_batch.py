"""`medai batch` throughput against the per-file commands run in a shell loop (one process per file), same CPU,
same inputs, one run. The ratio is the point: a batch loads each model once and reads ahead.

    python benchmarks/bench_batch.py [--images 20] [--volumes 3] [--cases 3] [--workers 2] [--json out.json]

- diagnose: real chest X-rays (../shared/data/chest_xray/kermany_224), `pneumonia`, heat maps on: images/s.
- segment: the bundled 3 mm abdominal CT (copies), `ct-liver`: volumes/min.
- register: frames of the bundled CT rendered at known poses (initial pose 15 mm / 4 deg off): cases/min.
Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "MedAIToolkit"))
MEDAI = [sys.executable, "-m", "medai.cli"]


FAILED = []  # per-file commands that exited nonzero (a loop that fails fast would flatter itself)


def _run(command) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if done.returncode != 0 and "batch" not in command:
        FAILED.append(" ".join(map(str, command)))
    return time.perf_counter() - start


def _loop(commands) -> float:
    return sum(_run(c) for c in commands)


def prepare(folder: Path, images: int, volumes: int, cases: int) -> dict:
    import numpy as np
    import torch

    from medai.drr import CArmGeometry, Pose, prepare_ct, render
    from medai.io import read_volume
    from medai.paths import shared_data
    from medai.samples import sample_path

    xrays = folder / "xrays"
    xrays.mkdir()
    for source in sorted(shared_data("chest_xray", "kermany_224", "NORMAL").glob("*.jpeg"))[:images]:
        shutil.copy(source, xrays / source.name)
    cts = folder / "cts"
    cts.mkdir()
    for k in range(volumes):
        shutil.copy(sample_path("ct_abdomen"), cts / f"study{k}.nrrd")
    ct_path = str(sample_path("ct_abdomen"))
    prepared = prepare_ct(read_volume(ct_path))
    carm = CArmGeometry(1020.0, 750.0, 128, 128, 3.0, 3.0)
    rng = np.random.default_rng(5)
    rows = ["ct,frame,tx,ty,tz,rx,ry,rz,pixel_spacing,sdd,sid"]
    register_commands = []
    for k in range(cases):
        truth = np.r_[rng.uniform(-10, 10, 3), rng.uniform(-5, 5, 2), rng.uniform(-30, 30)]
        init = truth + np.r_[rng.choice([-1, 1], 3) * 15 / np.sqrt(3), rng.choice([-1, 1], 3) * 4 / np.sqrt(3)]
        with torch.inference_mode():
            np.save(folder / f"frame{k}.npy", render(prepared, carm, Pose.from_array(truth))[0].numpy())
        rows.append(f"{ct_path},frame{k}.npy,{','.join(f'{v:.3f}' for v in init)},3.0,1020,750")
        register_commands.append(MEDAI + ["register", "--ct", ct_path, "--frame", str(folder / f"frame{k}.npy"),
                                          "--init", *(f"{v:.3f}" for v in init), "--pixel-spacing", "3.0", "--sdd",
                                          "1020", "--sid", "750", "--out", str(folder / f"loop_{k}.json")])
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return {"xrays": xrays, "cts": cts, "manifest": folder / "manifest.csv", "register_commands": register_commands}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="medai-bench-batch-"))
    try:
        inputs = prepare(folder, args.images, args.volumes, args.cases)
        xrays = sorted(inputs["xrays"].iterdir())
        cts = sorted(inputs["cts"].iterdir())
        results = {"cpu_count": os.cpu_count(), "workers": args.workers}
        batch = _run(MEDAI + ["batch", "diagnose", inputs["xrays"], "--task", "pneumonia", "--csv",
                              folder / "d.csv", "--out", folder / "heat", "--workers", str(args.workers), "--quiet"])
        loop = _loop([MEDAI + ["diagnose", "--task", "pneumonia", str(p), "--heatmaps", str(folder / "heat_loop")]
                      for p in xrays])
        one_reader = _run(MEDAI + ["batch", "diagnose", inputs["xrays"], "--task", "pneumonia", "--csv",
                                   folder / "d1.csv", "--out", folder / "heat1", "--workers", "1", "--quiet"])
        results["diagnose"] = {"items": len(xrays), "batch_per_s": len(xrays) / batch, "loop_per_s": len(xrays) / loop,
                               "batch_workers_1_per_s": len(xrays) / one_reader}
        batch = _run(MEDAI + ["batch", "segment", inputs["cts"], "--task", "ct-liver", "--csv", folder / "s.csv",
                              "--out", folder / "seg", "--workers", str(args.workers), "--quiet"])
        loop = _loop([MEDAI + ["segment", "--task", "ct-liver", str(p), "--out", str(folder / f"loop_{p.stem}.nii.gz")]
                      for p in cts])
        results["segment"] = {"items": len(cts), "batch_per_min": 60 * len(cts) / batch,
                              "loop_per_min": 60 * len(cts) / loop}
        batch = _run(MEDAI + ["batch", "register", "--manifest", inputs["manifest"], "--csv", folder / "r.csv",
                              "--out", folder / "reg", "--workers", str(args.workers), "--quiet"])
        loop = _loop(inputs["register_commands"])
        results["register"] = {"items": args.cases, "batch_per_min": 60 * args.cases / batch,
                               "loop_per_min": 60 * args.cases / loop}
        import csv

        for kind, name in (("diagnose", "d.csv"), ("segment", "s.csv"), ("register", "r.csv")):
            with open(folder / name) as f:
                results[kind]["batch_done"] = sum(r["status"] == "done" for r in csv.DictReader(f))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results["loop_failures"] = len(FAILED)
    print(f"medai batch vs per-file commands in a shell loop ({os.cpu_count()} CPUs, --workers {args.workers})")
    print(f"{'task':10s} {'items':>5s} {'batch':>16s} {'per-file loop':>16s} {'ratio':>7s}")
    for kind, unit in (("diagnose", "per_s"), ("segment", "per_min"), ("register", "per_min")):
        r = results[kind]
        label = "images/s" if unit == "per_s" else ("volumes/min" if kind == "segment" else "cases/min")
        r["ratio"] = r[f"batch_{unit}"] / r[f"loop_{unit}"]
        print(f"{kind:10s} {r['items']:5d} {r[f'batch_{unit}']:8.2f} {label:>7s} {r[f'loop_{unit}']:8.2f} "
              f"{label:>7s} {r['ratio']:6.1f}x  ({r['batch_done']} done)")
    print(f"batch diagnose with --workers 1: {results['diagnose']['batch_workers_1_per_s']:.2f} images/s; "
          f"per-file commands that failed: {len(FAILED)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
