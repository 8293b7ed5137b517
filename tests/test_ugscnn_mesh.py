"""The rebuilt UGSCNN icosphere order matches the published checksums, and its geometry is sound."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.climate_sphere.mesh import CHECKSUMS, geographic_latlon, ugscnn_icosphere, vertex_checksum


@pytest.mark.parametrize("upward", [True, False])
def test_level5_order_matches_the_reference_checksum(upward):
    vertices, faces = ugscnn_icosphere(5, upward)
    assert vertices.shape == (10242, 3) and faces.shape == (20480, 3)
    assert vertex_checksum(vertices) == CHECKSUMS[(5, upward)]


def test_upward_rotation_puts_the_corners_where_the_dataset_has_them():
    vertices, _ = ugscnn_icosphere(0)
    lat, lon = geographic_latlon(vertices).T
    assert lat[11] == pytest.approx(90.0) and lat[8] == pytest.approx(-90.0)
    ring = [10, 2, 4, 5, 0]
    np.testing.assert_allclose(lat[ring], np.rad2deg(np.arctan(0.5)), atol=1e-12)
    atan2_lon = (lon[ring] - 180.0 + 180.0) % 360.0 - 180.0
    np.testing.assert_allclose(atan2_lon, [18.0, 90.0, 162.0, -126.0, -54.0], atol=1e-9)


def test_levels_nest_and_faces_are_small_equal_triangles():
    coarse, _ = ugscnn_icosphere(3)
    fine, faces = ugscnn_icosphere(4)
    np.testing.assert_allclose(fine[: len(coarse)], coarse, rtol=0, atol=1e-15)  # new vertices are appended
    np.testing.assert_allclose(np.linalg.norm(fine, axis=1), 1.0, atol=1e-15)
    edge = np.linalg.norm(fine[faces[:, 0]] - fine[faces[:, 1]], axis=1)
    assert edge.max() < 1.3 * edge.min()
    assert len(np.unique(faces)) == len(fine)
