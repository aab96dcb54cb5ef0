"""The frame's display curve and blur must not become a depth error: on a real DRR of the sample CT put through a
gamma after a blur (as a fluoroscopy display does), the refinement that maps the DRR to the frame's intensities and
blurs it like the frame finds the depth; the plain gradient correlation is pulled away along the beam."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from medai.drr import CArmGeometry, Pose, render
from medai.registration import RigidPose
from medai.registration.environment import FixedImage
from medai.registration.refine import RefineLevel, estimate_blur, refine

CARM = CArmGeometry(1020.0, 750.0, 128, 128, 2.4, 2.4)
TRUTH = Pose.from_array((4.0, -3.0, 2.0, 1.0, -1.0, -10.0))
BLUR_PX = 1.5


@pytest.fixture(scope="module")
def frames(sample_ct):
    """(prepared CT, centre, {gamma: fixed image}): the DRR at TRUTH blurred, windowed and put through each display
    gamma."""
    _, ct, centre = sample_ct
    with torch.inference_mode():
        line_integrals = render(ct, CARM, TRUTH)[0].numpy()
    blurred = ndimage.gaussian_filter(line_integrals, BLUR_PX)
    low, high = np.percentile(blurred, [0.5, 99.5])
    images = {gamma: np.clip((blurred - low) / (high - low), 0, 1) ** gamma for gamma in (0.6, 1.6)}
    return ct, centre, {gamma: FixedImage.build(image.astype(np.float32), np.ones((128, 128), bool), CARM)
                        for gamma, image in images.items()}


def _depth_error(frames, gamma, **mapping):
    """Pose error (tx, ty, tz mm, rx, ry, rz deg) after a one-level refinement from the truth 8 mm deeper."""
    ct, centre, fixed = frames
    level = RefineLevel(ct, fixed[gamma], 1.0, gradients=True, iterations=10, **mapping)
    start = RigidPose.from_pose(TRUTH).moved(np.r_[0.0, 0.0, 8.0, 0.0, 0.0, 0.0])
    outcome = refine([level], start, centre)
    return outcome.pose.error_to(RigidPose.from_pose(TRUTH))


@pytest.mark.parametrize("gamma", [0.6, 1.6])
def test_mapped_and_blurred_drr_finds_the_depth_that_plain_gradients_miss(frames, gamma):
    plain = _depth_error(frames, gamma)
    mapped = _depth_error(frames, gamma, intensity_degree=5, blur_candidates=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0))
    # started 8 mm deep, the plain fit ends ~12 mm off along the beam (measured: -12.5 / +12.6 mm)
    assert abs(plain[2]) > 5.0
    assert abs(mapped[2]) < 0.5 and np.abs(mapped[:2]).max() < 0.5 and np.abs(mapped[3:]).max() < 0.3, mapped


def test_the_estimated_blur_is_the_frames(frames):
    ct, centre, fixed = frames
    level = RefineLevel(ct, fixed[1.6], 1.0, gradients=True, intensity_degree=5, blur_candidates=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0))
    near = RigidPose.from_pose(TRUTH).moved(np.r_[1.0, -1.0, 4.0, 0.5, -0.5, 0.5])
    assert estimate_blur(level, near, centre).blur_px == BLUR_PX
