"""Small derived samples bundled under Resources/Samples (provenance in Resources/Samples/README.md)."""
from __future__ import annotations

from .errors import MedAIInputError
from .paths import resources_dir

SAMPLES = {
    "ct_abdomen": "ct_abdomen_3Dircadb1.17_3mm.nrrd",
    "ct_abdomen_liver": "ct_abdomen_3Dircadb1.17_3mm_liver.nrrd",
    "xray_normal_1": "xray_kermany_normal_IM-0448-0001.jpeg",
    "xray_pneumonia_1": "xray_kermany_bacteria_person1136_3078.jpeg",
    "xray_normal_2": "xray_kermany_normal_2.jpeg",
    "xray_pneumonia_2": "xray_kermany_virus_2.jpeg",
    "xray_covid": "xray_ieee8023_covid_d9d6ca9a.jpg",
    "em_slice": "em_isbi2012_test_slice.png",
}


def sample_path(name: str) -> str:
    """Absolute path of a bundled sample by name (see :data:`SAMPLES`)."""
    if name not in SAMPLES:
        raise MedAIInputError(f"unknown sample '{name}'; choose one of {sorted(SAMPLES)}")
    path = resources_dir() / "Samples" / SAMPLES[name]
    if not path.exists():
        raise MedAIInputError(f"{path}: bundled sample missing from this installation")
    return str(path)
