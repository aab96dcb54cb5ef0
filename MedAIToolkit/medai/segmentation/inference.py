"""Segmentation inference: normalise, sliding-window MONAI inference, class map back on the input grid."""
from __future__ import annotations

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from ..errors import MedAIInputError
from ..models import load_state
from .networks import build_network
from .registry import SegmentationTask, get_task


def normalise(image: np.ndarray, task: SegmentationTask) -> np.ndarray:
    image = image.astype(np.float32, copy=False)
    if task.normalisation == "minmax":
        low, high = float(image.min()), float(image.max())
        return (image - low) / (high - low)
    raise MedAIInputError(f"unknown normalisation {task.normalisation}")


def check_input(image: np.ndarray, task: SegmentationTask, what: str = "input") -> None:
    if image.ndim != task.spatial_dims:
        raise MedAIInputError(f"{what}: task '{task.name}' needs a {task.spatial_dims}D image, got shape {image.shape}")
    if image.size == 0 or min(image.shape) < 8:
        raise MedAIInputError(f"{what}: image too small or empty (shape {image.shape})")
    if not np.all(np.isfinite(image)):
        raise MedAIInputError(f"{what}: image contains NaN or infinite values")
    if float(image.max()) == float(image.min()):
        raise MedAIInputError(f"{what}: the image is empty (every pixel is {float(image.min()):g})")


class Segmenter:
    """A loaded task model: ``segmenter(image) -> class map`` (uint8, same shape as the image)."""

    def __init__(self, task: str | SegmentationTask, device: str = "cpu", models_folder=None, state_dict=None):
        self.task = get_task(task) if isinstance(task, str) else task
        self.device = torch.device(device)
        if state_dict is None:
            state_dict, self.card = load_state(self.task.name, models_folder)
        else:
            self.card = {}
        self.model = build_network(self.task)
        self.model.load_state_dict(state_dict)
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def probabilities(self, image: np.ndarray) -> torch.Tensor:
        """(classes, *image.shape) softmax probabilities."""
        check_input(image, self.task)
        x = torch.from_numpy(normalise(image, self.task))[None, None].to(self.device)
        roi = tuple(min(p, s) for p, s in zip(self.task.patch_size, image.shape))
        logits = sliding_window_inference(x, roi, sw_batch_size=4, predictor=self.model, overlap=0.25,
                                          mode="gaussian", padding_mode="reflect")
        return torch.softmax(logits[0], dim=0)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.probabilities(image).argmax(0).to(torch.uint8).cpu().numpy()

    def to_output_values(self, classes: np.ndarray) -> np.ndarray:
        """Class indices -> the task's label-file values (e.g. EM: 0 / 255)."""
        lut = np.zeros(max(self.task.output_values) + 1, np.uint8)
        for index, value in self.task.output_values.items():
            lut[index] = value
        return lut[classes]
