"""Gauge padding checked against the sphere's geometry, not against the code's own index arithmetic."""

import numpy as np
import pytest
import torch

from icolightning.grid import HEX_OFFSETS, IcoGrid
from icolightning.nn import GaugePad, IcoSignal
from icolightning.nn.padding import gauge_pad, gauge_pad_backward
from icolightning.nn.tables import CORNER, REGULAR, UNUSED, padding_table


def _tangent_angle(grid: IcoGrid, at: int, towards: int, reference: int) -> float:
    """Angle (degrees, counter-clockwise seen from outside) from direction at->reference to at->towards."""
    n = grid.xyz[at]

    def proj(v: int) -> np.ndarray:
        d = grid.xyz[v] - n
        return d - (d @ n) * n

    a, b = proj(reference), proj(towards)
    return float(np.degrees(np.arctan2(np.cross(a, b) @ n, a @ b)))


def _adjacent_pixels(grid: IcoGrid, chart: int, h: int, w: int):
    """(pixel vertex, direction k) of in-chart, non-corner pixels p with p + HEX_OFFSETS[k] = (h, w)."""
    height, width = grid.chart_shape
    ids = grid.chart_pixel_vertex()
    for k, (dh, dw) in enumerate(HEX_OFFSETS):
        ph, pw = h - dh, w - dw
        if 0 <= ph < height and 0 <= pw < width and grid.degree[ids[chart, ph, pw]] == 6:
            yield int(ids[chart, ph, pw]), k


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_every_padded_cell_is_the_true_hex_neighbour(level):
    grid = IcoGrid(level)
    table = padding_table(level)
    checked = 0
    for c, hp, wp, kind, source in zip(table.chart, table.hp, table.wp, table.kind, table.source, strict=True):
        if kind == UNUSED:
            assert not list(_adjacent_pixels(grid, c, hp - 1, wp - 1))
            continue
        for p, k in _adjacent_pixels(grid, c, hp - 1, wp - 1):
            assert source in grid.neighbours(p)
            frame = grid.ring[p, grid.frame_slot[p]]
            off = {int(n): abs((_tangent_angle(grid, p, n, frame) - 60 * k + 180) % 360 - 180)
                   for n in grid.neighbours(p)}
            assert min(off, key=off.get) == source, (c, hp, wp, k, off)
            assert off[int(source)] < 30
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("level", [1, 2, 3])
def test_cells_on_the_closed_chart_match_the_lattice_positions(level):
    """Top row and right column of the padding lie on the chart's own closed parallelogram."""
    grid = IcoGrid(level)
    height, width = grid.chart_shape
    table = padding_table(level)
    for c, hp, wp, kind, source in zip(table.chart, table.hp, table.wp, table.kind, table.source, strict=True):
        h, w = hp - 1, wp - 1
        if kind == UNUSED or not (0 <= h <= height and 0 <= w <= width):
            continue
        i, j = height - h, w
        assert grid.lattice_vertex[c, i, j] == source


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_orientation_shift_equals_the_measured_frame_rotation(level):
    grid = IcoGrid(level)
    table = padding_table(level)
    for c, hp, wp, kind, source, shift in zip(table.chart, table.hp, table.wp, table.kind, table.source, table.shift,
                                              strict=True):
        if kind != REGULAR:
            continue
        p, k = next(iter(_adjacent_pixels(grid, c, hp - 1, wp - 1)))
        # chart c's frame at `source`, carried over from p: direction k+3 from source points back at p
        own_frame = grid.ring[source, grid.frame_slot[source]]
        back_to_p = _tangent_angle(grid, source, p, own_frame)
        chart_frame_angle = back_to_p - 60 * (k + 3)
        measured = ((chart_frame_angle + 180) % 360 - 180)
        expected = ((60 * shift + 180) % 360 - 180)
        assert abs((measured - expected + 180) % 360 - 180) < 30, (c, hp, wp, measured, shift)


def test_table_covers_the_whole_border_and_the_corners():
    level = 3
    grid = IcoGrid(level)
    height, width = grid.chart_shape
    table = padding_table(level)
    border = 2 * (width + 2) + 2 * height
    assert len(table.kind) == 5 * border + 10
    assert np.bincount(table.kind, minlength=3)[CORNER] == 30
    assert set(table.corner_slot[table.kind == CORNER]) == set(range(12))


def test_gauge_pad_moves_values_and_shifts_orientations_as_the_table_says():
    level = 2
    grid = IcoGrid(level)
    table = padding_table(level)
    ids = torch.arange(grid.num_vertices, dtype=torch.float64)
    orient = torch.arange(6, dtype=torch.float64)
    x = (ids[None, :] * 10 + orient[:, None])[None, None]
    x[..., grid.corners] = x[..., grid.corners].mean(-2, keepdim=True)
    buf = GaugePad(level)(IcoSignal.from_vertices(x)).buf[0, 0].transpose(0, 1)  # [5, R, H+2, W+2]
    for c, hp, wp, kind, source, shift in zip(table.chart, table.hp, table.wp, table.kind, table.source, table.shift,
                                              strict=True):
        got = buf[c, :, hp, wp]
        if kind == REGULAR:
            expected = source * 10 + (orient + shift) % 6
        elif kind == CORNER:
            expected = torch.full((6,), source * 10 + 2.5, dtype=torch.float64)
        else:
            expected = torch.zeros(6, dtype=torch.float64)
        torch.testing.assert_close(got, expected)
    charts, _ = grid.to_charts(x[0, 0])
    interior = buf[:, :, 1:-1, 1:-1].permute(1, 0, 2, 3)
    torch.testing.assert_close(interior, charts)


def test_index_tables_are_buffers_outside_the_state_dict():
    pad = GaugePad(3)
    assert len(list(pad.buffers())) > 10
    assert pad.state_dict() == {}
    moved = pad.to(torch.float64)
    assert all(b.dtype in (torch.long, torch.bool) for b in moved.buffers())


@pytest.mark.parametrize("level", [0, 2])
def test_padding_operators_pass_torch_opcheck(level):
    """The custom ops' schemas, fake kernels (shapes and strides seen by torch.compile) and autograd
    registration agree with what they really do."""
    grid = IcoGrid(level)
    pad = GaugePad(level)
    signal = IcoSignal.from_vertices(torch.randn(2, 3, 6, grid.num_vertices, dtype=torch.float64))
    charts = signal.charts.detach().requires_grad_()
    poles = signal.poles.detach().contiguous().requires_grad_()
    torch.library.opcheck(gauge_pad, (charts, poles, level, *pad.op_args()))
    planes, patches, own, neighbours = gauge_pad(charts, poles, level, *pad.op_args())
    grads = [torch.randn_like(t) for t in (planes, patches, own, neighbours)]
    torch.library.opcheck(gauge_pad_backward, (*grads, 6, level, *pad.op_args()))
    torch.library.opcheck(gauge_pad_backward, (grads[0], None, None, None, 6, level, *pad.op_args()))
