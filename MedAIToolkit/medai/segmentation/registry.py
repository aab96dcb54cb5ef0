"""Segmentation task registry: what each shipped model segments, on what input, and from which file."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import MedAIInputError


@dataclass(frozen=True)
class SegmentationTask:
    """One segmentation task.

    ``labels`` maps the network's output class index -> (segment name, RGB colour 0-1); class 0 is background
    unless listed. ``output_values`` maps class index -> value written in label files (the task's own
    training-label convention, e.g. EM: 255 = cell interior, 0 = membrane).
    """

    name: str
    modality: str
    spatial_dims: int
    in_channels: int
    labels: dict
    output_values: dict
    normalisation: str  # "minmax" (per image to 0-1), "zscore" (per volume, non-zero voxels), "zscore_head" (voxels
    # above 10% of the 99th percentile: the head without air noise) or "window" (clip, then 0-1)
    patch_size: tuple
    network: dict = field(default_factory=dict)
    model_file: str = ""
    description: str = ""
    slice_wise: bool = False  # a 2D network applied to every acquired slice of a 3D volume
    spacing_mm: float | None = None  # in-plane spacing slices are resampled to (slice-wise tasks)
    window: tuple | None = None  # intensity clip (e.g. HU) before scaling to 0-1 ("window" normalisation)
    flips: bool = True  # flips / 90-degree rotations are valid augmentations (not for left-right anatomy)
    channels: tuple = ()  # names of the input contrasts, in network channel order (multi-channel tasks)

    @property
    def out_channels(self) -> int:
        return len(self.output_values)


TASKS: dict[str, SegmentationTask] = {
    "em-membranes": SegmentationTask(
        name="em-membranes",
        modality="EM",
        spatial_dims=2,
        in_channels=1,
        labels={0: ("membrane", (0.95, 0.35, 0.25)), 1: ("cell interior", (0.35, 0.75, 0.95))},
        output_values={0: 0, 1: 255},
        normalisation="minmax",
        patch_size=(256, 256),
        network={"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2, "dropout": 0.1},
        model_file="em-membranes.pt",
        description="ssTEM neuronal membranes (ISBI 2012 convention: 255 = cell interior, 0 = membrane)",
    ),
    "ct-liver": SegmentationTask(
        name="ct-liver",
        modality="CT",
        spatial_dims=2,
        in_channels=1,
        labels={1: ("liver", (0.86, 0.55, 0.45))},
        output_values={0: 0, 1: 1},
        normalisation="window",
        window=(-200.0, 300.0),
        patch_size=(224, 224),
        network={"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2, "dropout": 0.1},
        model_file="ct-liver.pt",
        description="liver on contrast CT, axial slices resampled to 1.5 mm, canonical LPS orientation",
        slice_wise=True,
        spacing_mm=1.5,
        flips=False,
    ),
    "brain-tumor": SegmentationTask(
        name="brain-tumor",
        modality="MR",
        spatial_dims=2,
        in_channels=3,
        labels={1: ("tumour", (1.0, 0.85, 0.2))},
        output_values={0: 0, 1: 1},
        normalisation="zscore_head",
        patch_size=(256, 256),
        network={"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2, "dropout": 0.1},
        model_file="brain-tumor.pt",
        description="enhancing glioblastoma (the TCIA MaskTumor) on co-registered T1 post-contrast + T1 pre-contrast "
                    "+ FLAIR MRI (contrast uptake = post - pre), the acquired slices at 0.6875 mm in-plane",
        slice_wise=True,
        spacing_mm=0.6875,  # the collection's acquired in-plane spacing: masks drawn on it are not resampled
        flips=True,
        channels=("T1post", "T1prereg", "FLAIRreg"),
    ),
}


def get_task(name: str) -> SegmentationTask:
    if name not in TASKS:
        raise MedAIInputError(f"unknown segmentation task '{name}'; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]
