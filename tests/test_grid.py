import numpy as np
import pytest
import torch

from icolightning.grid import HEX_OFFSETS, IcoGrid


@pytest.mark.parametrize("level", range(6))
def test_counts_and_unit_vectors(level):
    grid = IcoGrid(level)
    assert grid.num_vertices == 10 * 4**level + 2 == len(grid.xyz)
    np.testing.assert_allclose(np.linalg.norm(grid.xyz, axis=1), 1.0, atol=1e-14)
    assert len(np.unique(np.round(grid.xyz, 12), axis=0)) == grid.num_vertices
    assert (grid.degree == 5).sum() == 12 and (grid.degree == 6).sum() == grid.num_vertices - 12
    assert len(grid.corners) == 12
    h, w = grid.chart_shape
    assert (h, w) == (2**level, 2 ** (level + 1))
    np.testing.assert_array_equal(grid.xyz[grid.pole_ids[0]], [0, 0, 1])
    np.testing.assert_array_equal(grid.xyz[grid.pole_ids[1]], [0, 0, -1])


def test_level_7_builds():
    grid = IcoGrid(7)
    assert grid.num_vertices == 163842
    assert grid.xyz.dtype == np.float64


def test_bad_level_is_refused():
    with pytest.raises(ValueError, match="level"):
        IcoGrid(-1)
    with pytest.raises(ValueError, match="level"):
        IcoGrid(2.5)


def test_each_chart_holds_two_non_pole_corners_at_fixed_pixels():
    grid = IcoGrid(3)
    pix = grid.chart_corner_pixels()
    _, w = grid.chart_shape
    assert pix.tolist() == [[c, 0, ww] for c in range(5) for ww in (0, w // 2)]


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_coarse_vertices_are_fine_vertices_at_even_chart_coordinates(level):
    fine, coarse = IcoGrid(level), IcoGrid(level - 1)
    fine_charts, fine_poles = fine.to_charts(fine.xyz.T)
    coarse_charts, coarse_poles = coarse.to_charts(coarse.xyz.T)
    np.testing.assert_allclose(fine_charts[..., ::2, ::2], coarse_charts, atol=1e-14)
    np.testing.assert_allclose(fine_poles, coarse_poles)
    # aligned frames: the coarse frame neighbour lies beyond the fine one along the same direction
    coarse_ids = fine.chart_pixel_vertex()[:, ::2, ::2].ravel()
    is_regular = coarse.degree[: coarse.num_chart_vertices] == 6
    fine_dir = fine.xyz[fine.ring[coarse_ids, fine.frame_slot[coarse_ids]]] - fine.xyz[coarse_ids]
    cids = np.arange(coarse.num_chart_vertices)
    coarse_dir = coarse.xyz[coarse.ring[cids, coarse.frame_slot[cids]]] - coarse.xyz[cids]
    cos = (fine_dir * coarse_dir).sum(1) / np.linalg.norm(fine_dir, axis=1) / np.linalg.norm(coarse_dir, axis=1)
    if is_regular.any():
        assert cos[is_regular].min() > 0.98


def test_chart_neighbours_are_mesh_neighbours_counter_clockwise():
    grid = IcoGrid(3)
    h, w = grid.chart_shape
    ids = grid.chart_pixel_vertex()
    for c in range(5):
        for hh in range(1, h - 1):
            for ww in range(1, w - 1):
                v = ids[c, hh, ww]
                if grid.degree[v] == 5:
                    continue
                walk = [ids[c, hh + dh, ww + dw] for dh, dw in HEX_OFFSETS]
                assert walk == np.roll(grid.ring[v], -grid.frame_slot[v]).tolist()


def test_chart_and_vertex_layouts_round_trip():
    grid = IcoGrid(2)
    x = torch.randn(3, 4, grid.num_vertices)
    charts, poles = grid.to_charts(x)
    assert charts.shape == (3, 4, 5, 4, 8) and poles.shape == (3, 4, 2)
    torch.testing.assert_close(grid.to_vertices(charts, poles), x)
    with pytest.raises(ValueError, match="last dim"):
        grid.to_charts(torch.randn(3, 41))


def test_latlon_matches_xyz():
    grid = IcoGrid(3)
    lat, lon = np.deg2rad(grid.latlon.T)
    back = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1)
    np.testing.assert_allclose(back, grid.xyz, atol=1e-12)
    assert grid.latlon[grid.pole_ids[0], 0] == 90.0 and grid.latlon[grid.pole_ids[1], 0] == -90.0
    assert (grid.latlon[:, 1] >= 0).all() and (grid.latlon[:, 1] < 360).all()


@pytest.mark.parametrize("level", [0, 2, 4])
def test_voronoi_areas_cover_the_sphere(level):
    areas = IcoGrid(level).areas
    assert areas.min() > 0
    np.testing.assert_allclose(areas.sum(), 4 * np.pi, rtol=1e-10)
    assert areas.max() / areas.min() < 2.0


def test_rotations_form_the_icosahedral_group():
    grid = IcoGrid(1)
    rots = grid.rotations
    assert rots.shape == (60, 3, 3)
    np.testing.assert_allclose(rots[0], np.eye(3), atol=1e-12)
    identity = np.broadcast_to(np.eye(3), rots.shape)
    np.testing.assert_allclose(np.einsum("gij,gkj->gik", rots, rots), identity, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rots), 1.0, atol=1e-12)
    keys = {tuple(np.round(r, 8).ravel()) for r in rots}
    assert len(keys) == 60
    products = np.round(np.einsum("aij,bjk->abik", rots, rots), 8).reshape(3600, 9)
    assert {tuple(p) for p in products} == keys


@pytest.mark.parametrize("level", [0, 1, 3])
def test_rotation_permutations_are_exact(level):
    grid = IcoGrid(level)
    perms = grid.rotation_permutations
    assert perms.shape == (60, grid.num_vertices)
    for rot, perm in zip(grid.rotations, perms, strict=True):
        assert np.array_equal(np.sort(perm), np.arange(grid.num_vertices))
        np.testing.assert_allclose(grid.xyz @ rot.T, grid.xyz[perm], atol=1e-12)
        assert set(perm[grid.corners]) == set(grid.corners)


def test_orientation_shifts_compose_like_the_group():
    """Rotating a regular field by g then h equals rotating by the composite."""
    grid = IcoGrid(2)
    x = torch.randn(1, 1, 6, grid.num_vertices, dtype=torch.float64)
    x[..., grid.corners] = x[..., grid.corners].mean(-2, keepdim=True)
    rots = grid.rotations
    for g, h in [(1, 2), (5, 17), (33, 59)]:
        composite = np.argmin(np.abs(rots - rots[g] @ rots[h]).sum((1, 2)))
        twice = grid.rotate(grid.rotate(x, g, regular=True), h, regular=True)
        torch.testing.assert_close(twice, grid.rotate(x, int(composite), regular=True), rtol=0, atol=0)
