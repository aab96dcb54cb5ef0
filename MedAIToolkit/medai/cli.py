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


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, with_scene=not args.no_scene)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medai", description="MedAIToolkit: deep learning for 3D Slicer, headless.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print a JSON summary of images (DICOM folder/file, NIfTI, NRRD, PNG, ...)")
    info.add_argument("paths", nargs="+", help="files or DICOM folders")
    info.add_argument("--compact", action="store_true", help="one JSON object per line")
    info.set_defaults(func=_cmd_info)

    demo = sub.add_parser("demo", help="run the main job on the bundled samples and write results to --out")
    demo.add_argument("--out", default="medai-demo-output", help="output folder (created)")
    demo.add_argument("--no-scene", action="store_true", help="skip writing the Slicer scene (.mrml)")
    demo.set_defaults(func=_cmd_demo)
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
