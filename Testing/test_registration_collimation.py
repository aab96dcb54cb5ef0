"""Collimation that is not blanked: the region beyond a blade or outside the intensifier's circle still shows the
anatomy, through a few mm of lead (brighter, noisier, soft-edged). It is found by the shape of its edge and left out
of the similarity; registered with it in, a frame ended tens of mm off (`runs/probe_collimation.py`)."""
import numpy as np
import pytest
import torch
from scipy import ndimage

import medai.registration.frame as frame_module
from medai.drr import CArmGeometry, Pose, render
from medai.registration import Agent, Registrar, frame_from_array, mtre_of
from medai.registration.augment import fluoroscopy_like
from medai.registration.collimation import collimated_mask

CARM = CArmGeometry(1020.0, 750.0, 160, 160, 2.4, 2.4)
TRUTH = Pose(tx=6.0, ty=-4.0, tz=5.0, rx=3.0, ry=-2.0, rz=-20.0)
INIT = Pose(tx=16.0, ty=-10.0, tz=-5.0, rx=0.0, ry=0.0, rz=-15.0)


@pytest.fixture(scope="module")
def line_integrals(sample_ct):
    _, prepared, _ = sample_ct
    with torch.inference_mode():
        return render(prepared, CARM, TRUTH)[0].numpy().astype(np.float64)


def shutter_field(shape) -> np.ndarray:
    """True in the exposed field: a blade from the left (18%), one from the top (12%, turned 6 deg), the
    intensifier's circle (radius 0.62 of the side) cutting the corners."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    top = rows - np.tan(np.deg2rad(6)) * (cols - shape[1] / 2) > 0.12 * shape[0]
    circle = np.hypot(rows - shape[0] / 2, cols - shape[1] / 2) < 0.62 * shape[0]
    return (cols > 0.18 * shape[1]) & top & circle


def lead_frame(line_integrals, field=None, lead_log: float = 4.0, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(frame, true field; :func:`shutter_field` by default): lead added in the log domain (soft edge) before the
    quantum noise, blur and display curve."""
    field = shutter_field(line_integrals.shape) if field is None else field
    lead = ndimage.gaussian_filter((~field).astype(float), 1.5) * lead_log
    image, _ = fluoroscopy_like(line_integrals + lead, np.random.default_rng(seed), collimate=False)
    return image, field


def test_blades_and_circle_are_found_and_left_out(line_integrals):
    image, field = lead_frame(line_integrals)
    found = collimated_mask(image)
    beyond = ~field
    assert (found & beyond).sum() / (found | beyond).sum() > 0.8  # IoU of what lies beyond the edges
    mask = frame_from_array(image, CARM).mask
    assert mask[beyond].mean() < 0.02  # the lead region is out of every similarity
    assert mask[ndimage.binary_erosion(field, iterations=10)].mean() > 0.95  # the field is in


@pytest.mark.parametrize("radius", [0.45, 0.58])
def test_off_centre_intensifier_is_found(line_integrals, radius):
    """An intensifier's circle whose centre lies between the searched grid's points (3.5% and 3% of the image off
    its centre), inside the image (0.45) or cut by it on every side, leaving four corner arcs (0.58)."""
    shape = line_integrals.shape
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    field = np.hypot(rows - 0.535 * shape[0], cols - 0.47 * shape[1]) < radius * shape[0]
    image, _ = lead_frame(line_integrals, field, seed=5)
    found = collimated_mask(image)
    assert found[~field].mean() > 0.95  # the region beyond the circle
    assert not found[ndimage.binary_erosion(field, iterations=10)].any()  # nothing more than the edge's margin


@pytest.mark.parametrize("radius, cut", [(0.5, 0.15), (0.45, 0.2)])
def test_intensifier_cut_by_a_blade_is_found(line_integrals, radius, cut):
    """An intensifier's circle cut by a blade from the right: the blade's edge runs only between the circle's arcs,
    and along the arc beyond the blade the circle does not step up, so neither was found while the other stood in
    the way (0% of the region beyond on the previous code, for both)."""
    shape = line_integrals.shape
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    field = (np.hypot(rows - shape[0] / 2, cols - shape[1] / 2) < radius * shape[0]) & (cols < (1 - cut) * shape[1])
    image, _ = lead_frame(line_integrals, field, seed=5)
    found = collimated_mask(image)
    assert found[~field].mean() > 0.95
    assert not found[ndimage.binary_erosion(field, iterations=10)].any()


def test_open_frame_keeps_its_field(line_integrals):
    for seed in range(3):
        image, _ = fluoroscopy_like(line_integrals, np.random.default_rng(seed), collimate=False)
        assert collimated_mask(image).mean() < 0.08


def test_registration_with_unblanked_collimation(sample_ct, line_integrals, monkeypatch):
    volume, _, _ = sample_ct
    registrar = Registrar(volume, Agent.load(None))
    truth = TRUTH.matrix(registrar.centre_ras)
    image, _ = lead_frame(line_integrals)
    result = registrar.register(frame_from_array(image, CARM), INIT)
    assert mtre_of(result.matrix, truth, registrar.body_points_ras) < 2.0
    # the same frame with only the flat (blanked) collimation looked for
    monkeypatch.setattr(frame_module, "collimated_mask", lambda im, blanked=None: np.zeros(im.shape, bool))
    blind = registrar.register(frame_from_array(image, CARM), INIT)
    assert mtre_of(blind.matrix, truth, registrar.body_points_ras) > 5.0
