"""Geometry: LPS/RAS conventions and matrix round trips, checked against SimpleITK."""
import numpy as np
import SimpleITK as sitk

from medai.geometry import LPS_TO_RAS, Geometry


def oblique_geometry():
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    return Geometry((0.7, 0.8, 2.5), (-12.0, 40.0, 7.5), rot)


def test_index_to_physical_matches_sitk():
    geometry = oblique_geometry()
    image = sitk.Image(10, 11, 12, sitk.sitkInt16)
    geometry.apply_to_sitk(image)
    for ijk in [(0, 0, 0), (9, 10, 11), (3, 7, 2)]:
        np.testing.assert_allclose(geometry.index_to_lps(ijk), image.TransformIndexToPhysicalPoint(ijk), atol=1e-9)
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(geometry.index_to_ras(ijk), lps * [-1, -1, 1], atol=1e-9)
        np.testing.assert_allclose(geometry.ijk_to_ras() @ [*ijk, 1], [*(lps * [-1, -1, 1]), 1], atol=1e-9)


def test_ijk_to_ras_round_trip_and_inverse():
    geometry = oblique_geometry()
    assert Geometry.from_ijk_to_ras(geometry.ijk_to_ras()).allclose(geometry, 1e-9)
    points = np.random.default_rng(0).uniform(-50, 50, (20, 3))
    np.testing.assert_allclose(geometry.index_to_lps(geometry.lps_to_index(points)), points, atol=1e-9)
    np.testing.assert_array_equal(LPS_TO_RAS @ LPS_TO_RAS, np.eye(4))
