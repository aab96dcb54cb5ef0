"""The agent's state views rendered directly (half the rays) against the whole working detector, and the refinement's
Broyden-updated and warped Jacobians, on real DRRs of the sample CT."""
import numpy as np
import torch
import torch.nn.functional as F

from medai.drr import CArmGeometry, Pose, prepare_ct, render
from medai.io import read_volume
from medai.registration import RigidPose, mtre_of
from medai.registration.environment import FixedImage, ncc, render_views, view_points
from medai.registration.refine import RefineLevel, _jacobian, _Residual, refine
from medai.samples import sample_path

CARM = CArmGeometry(1020.0, 750.0, 128, 128, 2.4, 2.4)
POSE = Pose.from_array((4.0, -3.0, 2.0, 1.0, -1.0, -10.0))


def _ct():
    volume = read_volume(str(sample_path("ct_abdomen")))
    return prepare_ct(volume), volume.geometry.centre_ras(volume.array.shape)


def test_state_views_are_the_working_detector_pooled_and_cropped():
    ct, centre = _ct()
    with torch.inference_mode():
        whole = render(ct, CARM, POSE)[0]
    fixed = FixedImage.build(whole.numpy(), np.ones((128, 128), bool), CARM)
    assert fixed.points.shape == (128, 64, 3)
    coarse, fine = render_views(ct, fixed, POSE.matrix(centre))
    # the fine view is the central 64 x 64 of the working detector, ray for ray
    assert torch.allclose(fine, whole[32:96, 32:96], rtol=1e-4, atol=1e-4)
    # the coarse view samples each 2 x 2 block at its centre: close to the block mean, not equal to it
    pooled = F.avg_pool2d(whole[None, None], 2)[0, 0]
    assert ncc(coarse, pooled, torch.ones_like(pooled, dtype=torch.bool)) > 0.995
    assert abs(float(coarse.mean() / pooled.mean()) - 1) < 0.01
    assert not torch.allclose(coarse, whole[::2, ::2], atol=1e-3)  # pixel centres, not every other pixel
    # a detector that is not square (or too small for a central crop) falls back to the whole render
    assert view_points(CArmGeometry(1020.0, 750.0, 96, 128, 2.4, 2.4), 64) is None


def test_broyden_refinement_recovers_a_known_pose_like_finite_differences():
    ct, centre = _ct()
    with torch.inference_mode():
        image = render(ct, CARM, POSE)[0].numpy()
    fixed = FixedImage.build(image, np.ones(image.shape, bool), CARM)
    truth = RigidPose.from_pose(POSE)
    start = truth.moved(np.r_[2.0, -2.0, 3.0, 1.0, 0.5, -1.0])
    points = ct.geometry.index_to_ras(ct.tissue_ijk)
    errors = {}
    for broyden in (False, True):
        outcome = refine([RefineLevel(ct, fixed, 1.0, True, 10, broyden=broyden)], start, centre)
        errors[broyden] = mtre_of(outcome.pose.matrix(centre), truth.matrix(centre), points)
        assert np.all(np.isfinite(np.diag(outcome.covariance)))
    start_error = mtre_of(start.matrix(centre), truth.matrix(centre), points)
    print(f"mTRE start {start_error:.2f} mm, finite differences {errors[False]:.3f} mm, Broyden {errors[True]:.3f} mm")
    assert errors[True] < 0.5 and errors[False] < 0.5 < start_error


def test_warped_jacobian_columns_follow_the_rendered_ones_for_in_plane_motion():
    ct, centre = _ct()
    with torch.inference_mode():
        image = render(ct, CARM, POSE)[0].numpy()
    fixed = FixedImage.build(image, np.ones(image.shape, bool), CARM)
    pose = RigidPose.from_pose(POSE).moved(np.r_[2.0, -2.0, 3.0, 1.0, 0.5, -1.0])
    residual = _Residual(RefineLevel(ct, fixed, 1.0, True), centre)
    r = residual(pose)
    steps = np.array(RefineLevel(ct, fixed).fd_step)
    rendered = _jacobian(residual, pose, r, list(range(6)), steps)
    warped = _jacobian(residual, pose, r, list(range(6)), steps, warp_dofs=tuple(range(6)))
    cosine = (rendered * warped).sum(0) / (rendered.norm(dim=0) * warped.norm(dim=0))
    print("cosine per parameter (tx ty tz rx ry rz):", np.round(cosine.numpy(), 3))
    assert torch.all(cosine[[0, 1, 2, 5]] > 0.95)  # in-plane shift, magnification, rotation about the beam
    assert torch.all(cosine[[3, 4]] < 0.9)  # a tilt changes what the rays cross: no 2D warp explains it
    # refinement with the in-plane columns warped (and a rendered Jacobian for the last step) still finds the pose
    start = pose
    outcome = refine([RefineLevel(ct, fixed, 1.0, True, 10, broyden=True, warp_dofs=(0, 1, 2, 5))], start, centre)
    points = ct.geometry.index_to_ras(ct.tissue_ijk)
    truth = RigidPose.from_pose(POSE)
    error = mtre_of(outcome.pose.matrix(centre), truth.matrix(centre), points)
    print(f"mTRE start {mtre_of(start.matrix(centre), truth.matrix(centre), points):.2f} mm, warped {error:.3f} mm")
    assert error < 0.5
