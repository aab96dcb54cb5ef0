"""Calibrated chest X-ray classification and Grad-CAM evidence heat maps with a shipped (checksummed) model."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MedAIModelError
from ..models import load_state
from .networks import ClassContrast, build_classifier, gradcam_layer
from .preprocess import check_xray_array, preprocess
from .registry import DiagnosisTask, get_task


class Classifier:
    """A task's classifier: probabilities are ``softmax(logits / T + b)`` with the card's temperature ``T`` and
    class bias ``b`` (both fitted on validation patients; ``b`` is zero for models calibrated by ``T`` alone).

    ``state_dict``/``card`` bypass the shipped model (training and tests); otherwise the model file is read from
    ``models_folder`` (default Resources/Models) after its SHA-256 is checked against the card.
    """

    def __init__(self, task: str | DiagnosisTask, device: str = "cpu", models_folder=None,
                 state_dict: dict | None = None, card: dict | None = None):
        self.task = get_task(task) if isinstance(task, str) else task
        if state_dict is None:
            state_dict, card = load_state(self.task.name, models_folder)
        self.card = card or {}
        self.network_spec = self.card.get("network", self.task.network)
        self.image_size = int(self.card.get("image_size", self.task.image_size))
        self.temperature = float(self.card.get("temperature", 1.0))
        self.intensity = self.card.get("intensity", "percentile")  # models before CLAHE: percentile scaling only
        self.logit_bias = np.asarray(self.card.get("logit_bias") or [0.0] * len(self.task.classes), dtype=np.float64)
        self.tta = bool(self.card.get("tta", False))  # average logits over TTA_VIEWS (chosen on validation)
        classes = tuple(self.card.get("classes", self.task.classes))
        if classes != tuple(self.task.classes):
            raise MedAIModelError(f"model card classes {classes} do not match task '{self.task.name}' {self.task.classes}")
        self.device = torch.device(device)
        self.model = build_classifier(self.network_spec, self.task.num_classes)
        try:
            self.model.load_state_dict(state_dict)
        except RuntimeError as exc:
            raise MedAIModelError(f"model for task '{self.task.name}' does not fit its network "
                                  f"{self.network_spec.get('name')}: {exc}") from exc
        self.model.to(self.device).eval()

    @property
    def classes(self) -> tuple:
        return self.task.classes

    def caution(self, prediction: str) -> str:
        """What the card says a reader of this prediction must know (e.g. a subgroup the model reads badly); ''."""
        return (self.card.get("cautions") or {}).get(prediction, "")

    def inputs(self, arrays, names=None) -> torch.Tensor:
        names = names or [f"image {i}" for i in range(len(arrays))]
        return torch.stack([preprocess(a, self.image_size, n, self.intensity) for a, n in zip(arrays, names)])

    @torch.no_grad()
    def logits(self, batch: torch.Tensor, chunk: int = 64, tta: bool | None = None) -> torch.Tensor:
        """Raw logits of preprocessed inputs ``(N, 1, S, S)``; with test-time augmentation (default: the card's
        choice) the mean logits over :data:`TTA_VIEWS`."""
        tta = self.tta if tta is None else tta

        def forward(x):
            x = x.to(self.device)
            if not tta:
                return self.model(x).float().cpu()
            return torch.stack([self.model(view(x, *v)).float() for v in TTA_VIEWS]).mean(0).cpu()

        parts = [forward(batch[i:i + chunk]) for i in range(0, len(batch), chunk)]
        return torch.cat(parts) if parts else torch.zeros(0, self.task.num_classes)

    def probabilities(self, arrays, names=None, calibrated: bool = True) -> np.ndarray:
        """(N, classes) probabilities of 2D X-ray arrays (any size, bit depth)."""
        logits = self.logits(self.inputs(arrays, names))
        if not calibrated:
            return F.softmax(logits, dim=1).numpy()
        return F.softmax(logits / self.temperature + torch.from_numpy(self.logit_bias).float(), dim=1).numpy()

    def heatmap(self, array: np.ndarray, class_index: int | None = None, name: str = "image") -> np.ndarray:
        """Grad-CAM (MONAI) of ``class_index`` (default: the predicted class) on the image's own pixel grid, 0-1.

        The score explained is the class's logit minus the mean of the other logits (:class:`ClassContrast`):
        the map shows evidence for this class against the others. An all-zero map means no pixel argues for it.
        """
        from monai.visualize import GradCAM

        array = check_xray_array(array, name)
        x = preprocess(array, self.image_size, name, self.intensity)[None].to(self.device).requires_grad_(True)
        # MONAI's default post-processing maps (min, max) to (1, 0), i.e. inverts the map: keep it raw here and
        # scale it to (0, 1) once, on the image grid
        cam = GradCAM(nn_module=ClassContrast(self.model), target_layers=gradcam_layer(self.network_spec, "model."),
                      postprocessing=lambda maps: maps)
        with torch.enable_grad():
            result = cam(x, class_idx=class_index)  # (1, 1, S, S), rectified
        result = result.detach().float().cpu()
        full = unit_range(F.interpolate(result, size=array.shape, mode="bilinear", align_corners=False))[0, 0]
        return full.clamp_(0.0, 1.0).numpy().astype(np.float32)


# test-time views (zoom, shift x, shift y as fractions of the image): the framing of a chest X-ray varies by source
TTA_VIEWS = ((1.0, 0.0, 0.0), (0.92, 0.0, 0.0), (1.08, 0.0, 0.0), (1.0, 0.04, 0.0), (1.0, -0.04, 0.0),
             (1.0, 0.0, 0.04), (1.0, 0.0, -0.04))


def view(x: torch.Tensor, zoom: float, shift_x: float, shift_y: float) -> torch.Tensor:
    """Inputs ``(N, 1, S, S)`` zoomed about the centre (> 1 magnifies) and shifted; zero outside, as in training."""
    if (zoom, shift_x, shift_y) == (1.0, 0.0, 0.0):
        return x
    theta = torch.tensor([[1.0 / zoom, 0.0, -2 * shift_x], [0.0, 1.0 / zoom, -2 * shift_y]], dtype=x.dtype,
                         device=x.device).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Each map of a batch ``(N, 1, ...)`` scaled to 0 (its minimum) - 1 (its maximum); a flat map becomes 0."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    shape = (-1,) + (1,) * (maps.ndim - 1)
    span = (high - low).view(shape)
    return torch.where(span > 0, (maps - low.view(shape)) / span.clamp_min(1e-12), torch.zeros_like(maps))


def heat_mass_inside(heat: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of a heat map's mass inside a mask."""
    total = float(heat.sum())
    return float(heat[mask].sum() / total) if total > 0 else float("nan")
