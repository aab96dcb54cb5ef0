"""Diagnosis task registry: classes, input size/normalisation and model file of each shipped classifier."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import MedAIInputError


@dataclass(frozen=True)
class DiagnosisTask:
    """One chest X-ray classification task.

    The network sees one grey channel, ``image_size`` x ``image_size`` (the whole radiograph squashed to a
    square, as the public 224 px sets were made), intensities scaled by percentiles to 0-1 (``preprocess``).
    """

    name: str
    classes: tuple
    image_size: int
    network: dict = field(default_factory=dict)
    model_file: str = ""
    description: str = ""
    positive_class: str = ""  # the finding of a binary task (for sensitivity/specificity wording)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


TASKS: dict[str, DiagnosisTask] = {
    "pneumonia": DiagnosisTask(
        name="pneumonia",
        classes=("NORMAL", "PNEUMONIA"),
        image_size=128,
        network={"name": "compact", "channels": (24, 48, 96, 192), "dropout": 0.2},
        model_file="pneumonia.pt",
        description="pediatric chest X-ray (AP): normal vs pneumonia (bacterial or viral), Kermany et al. 2018",
        positive_class="PNEUMONIA",
    ),
    "covid": DiagnosisTask(
        name="covid",
        classes=("COVID", "NORMAL", "OTHER_PNEUMONIA"),
        image_size=128,
        network={"name": "compact", "channels": (24, 48, 96, 192), "dropout": 0.2},
        model_file="covid.pt",
        description="chest X-ray: COVID-19 vs normal vs other (bacterial/viral/fungal) pneumonia",
    ),
}


def get_task(name: str) -> DiagnosisTask:
    if name not in TASKS:
        raise MedAIInputError(f"unknown diagnosis task '{name}' (choose from {', '.join(TASKS)})")
    return TASKS[name]
