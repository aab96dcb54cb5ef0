"""Segmentation inference: normalise, sliding-window MONAI inference, class map back on the input grid."""
from __future__ import annotations

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from ..errors import MedAIInputError
from ..io import check_hounsfield, resample_like, resample_to_slice_grid
from ..models import load_state
from .networks import build_network
from .registry import SegmentationTask, get_task


def normalise(image: np.ndarray, task: SegmentationTask) -> np.ndarray:
    image = image.astype(np.float32, copy=False)
    if task.normalisation == "minmax":
        low, high = float(image.min()), float(image.max())
        return (image - low) / (high - low)
    if task.normalisation == "zscore":  # per channel (first axis), statistics over non-zero voxels
        out = np.empty_like(image)
        for c in range(image.shape[0]):
            values = image[c][image[c] != 0]
            mean, std = (float(values.mean()), float(values.std())) if values.size else (0.0, 1.0)
            out[c] = np.clip((image[c] - mean) / max(std, 1e-6), -5.0, 5.0)
        return out
    if task.normalisation == "zscore_head":  # per channel, statistics over the head: air and its noise excluded
        out = np.empty_like(image)
        for c in range(image.shape[0]):
            head = image[c] > 0.1 * float(np.percentile(image[c], 99.0))
            values = image[c][head]
            mean, std = (float(values.mean()), float(values.std())) if values.size else (0.0, 1.0)
            out[c] = np.clip((image[c] - mean) / max(std, 1e-6), -5.0, 5.0)
        return out
    if task.normalisation == "window":
        low, high = task.window
        return (np.clip(image, low, high) - low) / (high - low)
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
    if task.modality == "CT":  # its window is in HU
        check_hounsfield(image, what)


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
    def probabilities(self, image: np.ndarray, normalised: bool = False) -> torch.Tensor:
        """(classes, *spatial shape) softmax probabilities; multi-channel tasks take (C, *spatial) images.
        ``normalised``: the image is already network input."""
        multi = self.task.in_channels > 1
        spatial = image[0] if multi else image
        check_input(spatial, self.task)
        x = torch.from_numpy(np.ascontiguousarray(image if normalised else normalise(image, self.task)))
        x = (x[None] if multi else x[None, None]).to(self.device)
        roi = tuple(self.task.patch_size)  # smaller images are padded by sliding_window_inference
        logits = sliding_window_inference(x, roi, sw_batch_size=4, predictor=self.model, overlap=0.25,
                                          mode="gaussian", padding_mode="reflect")
        return torch.softmax(logits[0], dim=0)

    def __call__(self, image: np.ndarray, normalised: bool = False) -> np.ndarray:
        return self.probabilities(image, normalised).argmax(0).to(torch.uint8).cpu().numpy()

    @torch.inference_mode()
    def segment_volume(self, volume, batch_slices: int = 8, progress=None) -> np.ndarray:
        """Slice-wise task on a 3D volume -> uint8 class map ``[k, j, i]`` on the input's exact grid.

        The volume is resampled in-plane onto the task's slice grid (its own slices kept), each slice is segmented, and the class
        probabilities are resampled back (linear) before the argmax; ``progress(fraction)`` is called per batch.
        """
        task = self.task
        if not task.slice_wise:
            raise MedAIInputError(f"task '{task.name}' is not a slice-wise volume task")
        grid_array, grid = slice_input(volume, task)
        volume = volume[0] if isinstance(volume, (list, tuple)) else volume
        slices = torch.from_numpy(np.moveaxis(normalise(grid_array, task), 0, 1).astype(np.float32))
        probabilities = np.empty((task.out_channels, *grid.array.shape), np.float32)
        for start in range(0, len(slices), batch_slices):
            x = slices[start:start + batch_slices].to(self.device)
            logits = sliding_window_inference(x, task.patch_size, sw_batch_size=4, predictor=self.model,
                                              overlap=0.25, mode="gaussian", padding_mode="constant")
            probabilities[:, start:start + len(x)] = torch.softmax(logits, 1).permute(1, 0, 2, 3).cpu().numpy()
            if progress:
                progress(min(1.0, (start + len(x)) / len(slices)))
        back = np.stack([resample_like(p, grid.geometry, volume, "linear") for p in probabilities])
        return back.argmax(0).astype(np.uint8)

    def to_output_values(self, classes: np.ndarray) -> np.ndarray:
        """Class indices -> the task's label-file values (e.g. EM: 0 / 255)."""
        lut = np.zeros(max(self.task.output_values) + 1, np.uint8)
        for index, value in self.task.output_values.items():
            lut[index] = value
        return lut[classes]


def slice_input(volumes, task: SegmentationTask):
    """(C, K, H, W) array of the task's channels on the slice grid of the first (its slices, in-plane at the
    task's spacing, axes ordered like LPS: see :func:`resample_to_slice_grid`), and that grid."""
    volumes = list(volumes) if isinstance(volumes, (list, tuple)) else [volumes]
    if len(volumes) != task.in_channels:
        names = f" ({', '.join(task.channels)})" if task.channels else ""
        raise MedAIInputError(f"task '{task.name}' needs {task.in_channels} input volume(s){names}, got {len(volumes)}")
    for index, volume in enumerate(volumes):
        if volume.array.ndim != 3 or min(volume.array.shape) < 2:
            raise MedAIInputError(f"task '{task.name}' needs 3D volumes, input {index} has shape {volume.array.shape}")
        check_input(volume.array.reshape(volume.array.shape[0], -1), _as_2d(task), f"input volume {index}")
    grid = resample_to_slice_grid(volumes[0], task.spacing_mm, "linear")
    channels = [grid.array.astype(np.float32)]
    for volume in volumes[1:]:
        channels.append(resample_like(volume.array.astype(np.float32), volume.geometry, grid, "linear"))
    return np.stack(channels), grid


def predict_case(segmenter: Segmenter, case: dict) -> np.ndarray:
    """Class map of a data-set case: a whole 3D volume (slice-wise tasks) or a normalised 2D image."""
    if "volume" in case:
        return segmenter.segment_volume(case["volume"])
    if segmenter.task.in_channels > 1:
        return segmenter(case["image"], normalised=True)
    return segmenter(case["image"][0], normalised=True)


def case_truth(case: dict) -> np.ndarray:
    """Reference class map of a data-set case, shaped like :func:`predict_case`'s output."""
    return case["label"] if "volume" in case else case["label"][0]  # (1, ...) -> (...)


def _as_2d(task: SegmentationTask) -> SegmentationTask:
    """The task seen as 2D (to validate a volume reshaped to 2D with :func:`check_input`)."""
    from dataclasses import replace

    return replace(task, spatial_dims=2)
