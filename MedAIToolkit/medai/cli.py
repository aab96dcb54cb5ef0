"""``medai`` command: thin sub-commands over the engine.

Every sub-command prints a clear one-line error and exits with status 2 on bad input (no traceback).
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import MedAIInputError, MedAIModelError


def _cmd_info(args) -> int:
    from .io import describe

    status = 0
    for path in args.paths:
        try:
            print(json.dumps(describe(path), indent=None if args.compact else 2, default=str))
        except MedAIInputError as exc:
            print(f"medai info: error: {exc}", file=sys.stderr)
            status = 2
    return status


def _carm_from_args(args):
    from .drr import CArmGeometry

    height, width = args.size
    spacing = args.pixel_spacing
    if len(spacing) not in (1, 2):
        raise MedAIInputError(f"--pixel-spacing takes one or two values, got {len(spacing)}")
    row_mm, col_mm = (spacing[0], spacing[0]) if len(spacing) == 1 else spacing
    return CArmGeometry(args.sdd, args.sid, height, width, row_mm, col_mm)


def _load_ct(path: str, resample_mm: float | None):
    from .io import read_volume, resample_volume

    volume = read_volume(path)
    if resample_mm:
        volume = resample_volume(volume, (resample_mm,) * 3)
    return volume


def _cmd_drr(args) -> int:
    import time

    import torch

    from .drr import Pose, prepare_ct, render
    from .drr.output import save_drr
    from .drr.renderer import pose_matrices

    carm = _carm_from_args(args)
    pose = Pose.from_array(args.pose)
    ct = prepare_ct(_load_ct(args.ct, args.resample), device=args.device)
    start = time.perf_counter()
    image = render(ct, carm, pose)[0]
    elapsed = time.perf_counter() - start
    matrix = pose_matrices(ct, pose)[0]
    save_drr(args.out, image, carm, pose, matrix)
    if args.json:
        print(json.dumps({"out": args.out, "ras_to_carm": matrix.round(6).tolist(), "pose": pose.as_array().tolist(),
                          "carm": carm.to_dict(), "ct_centre_ras": ct.centre_ras.round(6).tolist(),
                          "line_integral_range": [float(image.min()), float(image.max())],
                          "seconds": round(elapsed, 4), "device": str(torch.device(args.device))}, indent=2))
    else:
        print(f"medai drr: wrote {args.out} ({carm.height}x{carm.width}) in {elapsed:.3f} s")
    return 0


def _cmd_gen_dataset(args) -> int:
    from .drr.dataset import generate_dataset

    meta = generate_dataset(_load_ct(args.ct, args.resample), args.out, args.n, _carm_from_args(args), args.seed,
                            args.max_translation, args.max_rotation, args.patch_size, source=args.ct,
                            device=args.device)
    print(f"medai gen-dataset: {meta['completed']} DRRs in {args.out}")
    return 0


def _cmd_segment(args) -> int:
    from .segmentation.batch import segment_files
    from .segmentation.inference import Segmenter

    records = segment_files(Segmenter(args.task, device=args.device), args.inputs, args.out, args.seg_nrrd)
    return _report_per_file("segment", records, print_done=True)


def _report_per_file(command: str, rows: list[dict], print_done: bool) -> int:
    """Each failed file's error on stderr (and, if asked, each done file's record as JSON on stdout);
    exit status 2 when any file failed, the others having been done."""
    for row in rows:
        if row["error"]:
            print(f"medai {command}: error: {row['error']}", file=sys.stderr)
        elif print_done:
            print(json.dumps(row))
    return 2 if any(row["error"] for row in rows) else 0


def _cmd_diagnose(args) -> int:
    from .diagnosis.batch import diagnose_files
    from .diagnosis.inference import Classifier

    rows = diagnose_files(Classifier(args.task, device=args.device), args.inputs, args.csv, args.heatmaps)
    status = _report_per_file("diagnose", rows, print_done=not args.csv)
    if args.csv:
        done = sum(not row["error"] for row in rows)
        print(f"medai diagnose: {done} of {len(rows)} images classified -> {args.csv}")
    return status


def _cmd_register(args) -> int:
    import torch

    from .drr import Pose
    from .registration import Agent, Registrar, load_frame

    torch.set_num_threads(args.threads)
    spacing = args.pixel_spacing
    if spacing is not None and len(spacing) not in (1, 2):
        raise MedAIInputError(f"--pixel-spacing takes one or two values, got {len(spacing)}")
    frame = load_frame(args.frame, args.size, spacing, args.sdd, args.sid, args.invert, args.linear)
    if args.init is not None:
        init = Pose.from_array(args.init)
    elif args.angles is not None:
        from .drr import pose_from_positioner

        init = pose_from_positioner(*args.angles)
    elif frame.nominal_pose is not None:
        init = frame.nominal_pose
    else:
        raise MedAIInputError("no initial pose: give --init TX TY TZ RX RY RZ or --angles PRIMARY SECONDARY "
                              "(the frame has no DICOM positioner angles)")
    agent = Agent.load(args.agent)
    registrar = Registrar(_load_ct(args.ct, None), agent, device=args.device)
    result = registrar.register(frame, init, args.mode, refine_result=not args.no_refine, max_steps=args.max_steps,
                                checked=False if args.greedy else None)
    record = {"ct": args.ct, "frame": args.frame, "agent": args.agent or "shipped", "carm": frame.carm.to_dict(),
              **result.to_dict()}
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)
    warning = "  LOW CONFIDENCE: check the fusion before relying on it" if result.confidence < 0.5 else ""
    print(f"medai register: pose {' '.join(f'{v:.2f}' for v in result.pose.as_array())} after {result.steps} agent "
          f"steps in {result.seconds:.2f} s, similarity {result.similarity:.4f}, confidence {result.confidence:.2f}"
          + (f", uncertainty {result.uncertainty_mm:.2f} mm" if result.uncertainty_mm is not None else "")
          + f" -> {args.out}{warning}")
    return 0


def _cmd_train_agent(args) -> int:
    import torch

    from .registration import Agent
    from .registration.training import TrainingConfig, train_agent

    torch.set_num_threads(args.threads)
    base = Agent.load(args.agent)
    config = TrainingConfig(iterations=args.iterations, minutes=args.minutes, seed=args.seed, device=args.device,
                            lr=args.lr, epsilon_start=0.3, validate_every=0, ct_augment=args.ct_augment,
                            settings=base.settings.to_dict())
    work = args.work_dir or (args.out + ".run")
    agent = train_agent([_load_ct(args.ct, None)], work, config, agent=base, resume=args.resume)
    card = {"description": "patient-specific fine-tune of the registration agent", "fine_tuned_on": args.ct,
            "base_agent": args.agent or "shipped", "minutes": args.minutes, "lr": args.lr,
            "ct_augment": args.ct_augment,
            "confidence": base.card.get("confidence")}
    path = agent.save(args.out, {k: v for k, v in card.items() if v is not None})
    print(f"medai train-agent: wrote {path} (+ card {path.with_suffix('.json').name})")
    return 0


def _add_carm_arguments(parser, size=(256, 256), spacing=1.6) -> None:
    parser.add_argument("--ct", required=True, help="CT: DICOM folder or NIfTI/NRRD/MHA file (HU)")
    parser.add_argument("--size", type=int, nargs=2, default=list(size), metavar=("H", "W"), help="detector pixels")
    parser.add_argument("--pixel-spacing", type=float, nargs="+", default=[spacing], metavar="MM",
                        help="detector pixel spacing (one value, or row and column)")
    parser.add_argument("--sdd", type=float, default=1020.0, help="source-to-detector distance (mm)")
    parser.add_argument("--sid", type=float, default=765.0, help="source-to-isocentre distance (mm)")
    parser.add_argument("--resample", type=float, default=None, metavar="MM", help="resample the CT to MM isotropic first")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, with_scene=not args.no_scene)
    return 0


def _cmd_web(args) -> int:
    if args.frame and not args.ct:
        raise MedAIInputError("--frame needs --ct (the frame is registered to that CT)")
    try:
        from medai_web import Inputs, serve
    except ImportError as exc:
        raise MedAIInputError(f"the web viewer needs the 'web' extra: pip install -e \".[web]\" ({exc})") from exc
    serve(Inputs(ct=args.ct, frame=args.frame, xray=args.xray), port=args.port, host="127.0.0.1")
    return 0


def _cmd_batch(args) -> int:
    import torch

    from .batch import DiagnoseTask, RegisterTask, SegmentTask, items_from, run_batch

    torch.set_num_threads(args.threads)
    if not args.inputs and not args.manifest:
        raise MedAIInputError("give input files/folders or --manifest CSV")
    if args.kind in ("segment", "register") and not args.out:
        raise MedAIInputError(f"batch {args.kind} needs --out (the folder for its outputs)")
    if args.kind != "register" and not args.task:
        raise MedAIInputError(f"batch {args.kind} needs --task")
    if args.kind == "diagnose":
        task = DiagnoseTask(args.task, args.device, heatmaps=bool(args.out))
    elif args.kind == "segment":
        task = SegmentTask(args.task, args.device, args.seg_nrrd)
    else:
        task = RegisterTask(args.agent, args.device, refine=not args.no_refine)
    volumes = args.kind == "segment" and task.segmenter.task.slice_wise
    items = items_from(args.inputs, args.manifest, args.kind, volumes=volumes)
    counts = run_batch(task, items, args.csv, args.out, args.overwrite, args.workers, progress=not args.quiet)
    for row in counts["rows"]:
        if row["status"] == "failed":
            reason = row["error"] if row["path"] in row["error"] else f"{row['path']}: {row['error']}"
            print(f"medai batch {args.kind}: failed: {reason}", file=sys.stderr)
    print(f"medai batch {args.kind}: {counts['done']} done, {counts['failed']} failed, {counts['skipped']} already "
          f"done (skipped) of {len(items)} -> {args.csv}")
    return 2 if counts["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medai", description="MedAIToolkit: deep learning for 3D Slicer, headless.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print a JSON summary of images (DICOM folder/file, NIfTI, NRRD, PNG, ...)")
    info.add_argument("paths", nargs="+", help="files or DICOM folders")
    info.add_argument("--compact", action="store_true", help="one JSON object per line")
    info.set_defaults(func=_cmd_info)

    drr = sub.add_parser("drr", help="render a DRR of a CT at a C-arm pose")
    _add_carm_arguments(drr)
    drr.add_argument("--out", required=True, help="output .npy (line integrals), .png (display) or .dcm (DICOM XA)")
    drr.add_argument("--pose", type=float, nargs=6, default=[0.0] * 6, metavar=("TX", "TY", "TZ", "RX", "RY", "RZ"),
                     help="mm in the C-arm frame, degrees about the CT centre (docs/pose_convention.md)")
    drr.add_argument("--json", action="store_true", help="print the 4x4 RAS->C-arm matrix used and the geometry")
    drr.set_defaults(func=_cmd_drr)

    gen = sub.add_parser("gen-dataset", help="render N random poses into a resumable training set")
    _add_carm_arguments(gen, size=(128, 128), spacing=3.2)
    gen.add_argument("--out", required=True, help="output folder")
    gen.add_argument("--n", type=int, required=True, help="number of DRRs")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--max-translation", type=float, default=20.0, help="+/- mm per axis")
    gen.add_argument("--max-rotation", type=float, default=10.0, help="+/- degrees per axis")
    gen.add_argument("--patch-size", type=int, default=64, help="side of the normalised patches")
    gen.set_defaults(func=_cmd_gen_dataset)

    register = sub.add_parser("register", help="register a fluoroscopy frame to a CT (agent + refinement)")
    register.add_argument("--ct", required=True, help="CT: DICOM folder or NIfTI/NRRD/MHA file (HU)")
    register.add_argument("--frame", required=True, help="frame: DICOM XA/RF/DX, .png/.jpg (bright = attenuating) or .npy")
    register.add_argument("--init", type=float, nargs=6, metavar=("TX", "TY", "TZ", "RX", "RY", "RZ"),
                          help="initial pose (docs/pose_convention.md); default: the frame's positioner angles")
    register.add_argument("--angles", type=float, nargs=2, metavar=("PRIMARY", "SECONDARY"),
                          help="initial pose from C-arm angles (LAO+ / CRA+ degrees) instead of --init")
    register.add_argument("--out", required=True, help="result JSON")
    register.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="frame pixels (checked)")
    register.add_argument("--pixel-spacing", type=float, nargs="+", metavar="MM", help="detector pixel spacing")
    register.add_argument("--sdd", type=float, help="source-to-detector distance (mm)")
    register.add_argument("--sid", type=float, help="source-to-isocentre distance (mm)")
    register.add_argument("--invert", action="store_true",
                          help="a display image bright where the beam was less attenuated (bone dark): flipped")
    register.add_argument("--linear", action="store_true",
                          help="raw detector values, proportional to the detected intensity: log-transformed "
                               "(DICOM frames say so in their tags)")
    register.add_argument("--agent", help="agent file (default: the shipped generic agent)")
    register.add_argument("--no-refine", action="store_true", help="agent only, no intensity-based refinement")
    register.add_argument("--mode", choices=["2d3d", "2d2d"], default="2d3d")
    register.add_argument("--max-steps", type=int, help="agent step budget (default: the agent's)")
    register.add_argument("--greedy", action="store_true",
                          help="the agent takes its Q-network's best action at every step, without checking that the "
                               "match improves (default: checked inference)")
    register.add_argument("--device", default="cpu")
    register.add_argument("--threads", type=int, default=2, help="CPU threads")
    register.set_defaults(func=_cmd_register)

    train = sub.add_parser("train-agent", help="fine-tune the registration agent on one patient's CT")
    train.add_argument("--ct", required=True, help="the patient's CT")
    train.add_argument("--out", required=True, help="agent file to write (.pt, with a .json card)")
    train.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget")
    train.add_argument("--iterations", type=int, default=100000, help="upper bound on iterations")
    train.add_argument("--agent", help="agent to start from (default: the shipped generic agent)")
    train.add_argument("--lr", type=float, default=3e-4)
    train.add_argument("--ct-augment", action=argparse.BooleanOptionalAction, default=True,
                       help="train on augmented copies of the CT (crop, deformation, HU scale; default) or on the CT as is")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--work-dir", help="checkpoints and metrics (default: OUT.run)")
    train.add_argument("--resume", action="store_true")
    train.add_argument("--device", default="cpu")
    train.add_argument("--threads", type=int, default=2)
    train.set_defaults(func=_cmd_train_agent)

    segment = sub.add_parser("segment", help="segment images with a shipped task model")
    segment.add_argument("--task", required=True, help="task name (see medai.segmentation.registry)")
    segment.add_argument("inputs", nargs="+", help="image files or folders")
    segment.add_argument("--out", required=True,
                         help="output: .png (one 2D input), .seg.nrrd/.nii.gz/.nrrd (one 3D input) or a folder")
    segment.add_argument("--seg-nrrd", action="store_true",
                         help="3D inputs into a folder: write Slicer .seg.nrrd segmentations (default .nii.gz label maps)")
    segment.add_argument("--device", default="cpu")
    segment.set_defaults(func=_cmd_segment)

    diagnose = sub.add_parser("diagnose", help="classify chest X-rays with a shipped task model (calibrated)")
    diagnose.add_argument("--task", required=True, help="pneumonia or covid (see medai.diagnosis.registry)")
    diagnose.add_argument("inputs", nargs="+", help="DICOM/PNG/JPEG files or folders (searched recursively)")
    diagnose.add_argument("--csv", help="write path,prediction,p_<CLASS>...,error rows here (else JSON lines)")
    diagnose.add_argument("--heatmaps", metavar="DIR", help="write Grad-CAM overlays <name>_heatmap.png here")
    diagnose.add_argument("--device", default="cpu")
    diagnose.set_defaults(func=_cmd_diagnose)

    batch = sub.add_parser("batch", help="process a cohort: resumable, one results-CSV row per item as it goes")
    batch.add_argument("kind", choices=["segment", "diagnose", "register"])
    batch.add_argument("inputs", nargs="*", help="files or folders (segment, diagnose)")
    batch.add_argument("--manifest", help="CSV of items: column 'path' (segment, diagnose) or ct, frame, tx ty tz rx "
                                          "ry rz, pixel_spacing, sdd, sid, invert, linear (register); relative to the CSV")
    batch.add_argument("--csv", required=True, help="results CSV (appended as items finish; rerun to resume)")
    batch.add_argument("--out", help="output folder (segmentations, heat maps, registration JSON)")
    batch.add_argument("--task", help="segment / diagnose task")
    batch.add_argument("--overwrite", action="store_true", help="redo done items and replace existing outputs")
    batch.add_argument("--workers", type=int, default=1, help="threads reading inputs ahead of the model")
    batch.add_argument("--seg-nrrd", action="store_true", help="segment 3D inputs to Slicer .seg.nrrd")
    batch.add_argument("--agent", help="register: agent file (default: the shipped agent)")
    batch.add_argument("--no-refine", action="store_true", help="register: agent only")
    batch.add_argument("--device", default="cpu")
    batch.add_argument("--threads", type=int, default=2, help="CPU threads for the models")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    batch.set_defaults(func=_cmd_batch)

    demo = sub.add_parser("demo", help="run the main job on the bundled samples and write results to --out")
    demo.add_argument("--out", default="medai-demo-output", help="output folder (created)")
    demo.add_argument("--no-scene", action="store_true", help="skip writing the Slicer scene (.mrml)")
    demo.set_defaults(func=_cmd_demo)

    web = sub.add_parser("web", help="web viewer (trame-slicer) on http://127.0.0.1:PORT; the samples by default")
    web.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (0: any free port)")
    web.add_argument("--ct", help="CT: DICOM folder or NIfTI/NRRD/MHA file (default: the sample CT)")
    web.add_argument("--frame", help="fluoroscopy frame with its C-arm geometry (DICOM XA/RF); default: one rendered "
                                     "from the CT")
    web.add_argument("--xray", help="chest X-ray to diagnose (default: the bundled samples)")
    web.set_defaults(func=_cmd_web)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MedAIInputError, MedAIModelError) as exc:
        print(f"medai {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
