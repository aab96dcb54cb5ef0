"""Training/evaluation data of the segmentation tasks, read from the shared public data sets."""
from __future__ import annotations

import numpy as np

from ..errors import MedAIInputError
from ..io import read_xray
from ..paths import shared_data

EM_SPLIT = {"train": list(range(0, 16)), "val": list(range(16, 20)), "test": list(range(20, 24))}
"""ISBI 2012 labelled slices 0-23: whole slices held out (val 16-19, test 20-23); the stack is serial, so
neighbouring slices are similar: the test slices are the last four, not interleaved with training ones."""


def em_case(index: int) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 [0, 1], class map uint8: 1 = cell interior, 0 = membrane) of labelled slice ``index``."""
    root = shared_data("em_membranes")
    image = read_xray(str(root / "image" / f"{index:02d}.png")).array / 255.0
    label = (read_xray(str(root / "label" / f"{index:02d}.png")).array > 127).astype(np.uint8)
    return image.astype(np.float32), label


def load_split(task: str, split: str) -> list[dict]:
    """[{"image": (C, ...) float32, "label": (1, ...) uint8, "id": str}] for a task's split."""
    if task == "em-membranes":
        return [{"image": image[None], "label": label[None], "id": f"em-{i:02d}"}
                for i, (image, label) in ((i, em_case(i)) for i in EM_SPLIT[split])]
    raise MedAIInputError(f"no training data loader for task '{task}'")
