"""Index tables for the layers, derived from the grid's geometry (rings and frames), cached per level.

Nothing here is written by hand: a padded cell is found by walking from an adjacent chart pixel
in the cell's hex direction around that pixel's counter-clockwise neighbour ring, and its
orientation shift is read off the neighbour ring of the vertex it lands on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from icolightning.grid import HEX_OFFSETS, NUM_CHARTS, ORIENTATIONS, IcoGrid

REGULAR, CORNER, UNUSED = 0, 1, 2


@dataclass(frozen=True)
class PaddingTable:
    """How every cell of the one-pixel border of each chart is filled.

    A cell next to a non-corner pixel is found by walking the sphere from that pixel. A cell that
    only touches corners but lies on the chart's own closed parallelogram (top row, right column)
    is the corner the lattice puts there; upsampling from level 0 reads those.

    Cells are listed as (chart, hp, wp) in padded coordinates (hp = h + 1). `kind` is REGULAR
    (copy vertex `source` with its orientation channels shifted by `shift`), CORNER (the
    orientation mean of corner `corner_slot`) or UNUSED (read by no non-corner pixel).
    The interior corner pixels appear too, as CORNER cells: layers only ever see the
    orientation mean at the 12 corners, where no frame is defined.
    """

    chart: np.ndarray
    hp: np.ndarray
    wp: np.ndarray
    kind: np.ndarray
    source: np.ndarray
    shift: np.ndarray
    corner_slot: np.ndarray


@dataclass(frozen=True)
class CornerTable:
    """The 12 corners (grid.corners order: 10 chart corners, then N and S) and their 5 neighbours.

    `toward` is the hex direction, in the neighbour's own frame, that points at the corner, so
    rotating a neighbour's regular feature by it expresses the feature relative to the corner.
    `neighbour_is_corner` only happens at level 0.
    """

    corners: np.ndarray
    neighbours: np.ndarray
    toward: np.ndarray
    neighbour_is_corner: np.ndarray


def _walk(grid: IcoGrid, vertex: int, direction: int) -> int:
    """The neighbour of a non-corner vertex in hex direction `direction` of its frame."""
    return int(grid.ring[vertex, (grid.frame_slot[vertex] + direction) % ORIENTATIONS])


def _direction_of(grid: IcoGrid, vertex: int, neighbour: int) -> int:
    """Hex direction, in the frame of non-corner `vertex`, in which `neighbour` lies."""
    slot = int(np.flatnonzero(grid.ring[vertex] == neighbour)[0])
    return (slot - int(grid.frame_slot[vertex])) % ORIENTATIONS


@functools.lru_cache(maxsize=16)
def padding_table(level: int) -> PaddingTable:
    """Where each border cell of each chart (and each interior corner pixel) takes its value from."""
    grid = IcoGrid(level)
    h_size, w_size = grid.chart_shape
    pixel_vertex = grid.chart_pixel_vertex()
    is_corner = grid.degree == 5
    corner_slot_of = {int(v): k for k, v in enumerate(grid.corners)}

    rows: list[tuple[int, int, int, int, int, int, int]] = []
    border = [(h, w) for h in range(-1, h_size + 1) for w in range(-1, w_size + 1)
              if h in (-1, h_size) or w in (-1, w_size)]
    for c in range(NUM_CHARTS):
        for h, w in border:
            found: set[tuple[int, int]] = set()
            for k, (dh, dw) in enumerate(HEX_OFFSETS):
                ph, pw = h - dh, w - dw
                if not (0 <= ph < h_size and 0 <= pw < w_size):
                    continue
                p = int(pixel_vertex[c, ph, pw])
                if is_corner[p]:
                    continue
                u = _walk(grid, p, k)
                shift = -1 if is_corner[u] else (_direction_of(grid, u, p) - (k + 3)) % ORIENTATIONS
                found.add((u, shift))
            if len(found) > 1:
                raise RuntimeError(f"level {level} chart {c} cell {(h, w)}: inconsistent padding {found}")
            if not found and 0 <= h <= h_size and 0 <= w <= w_size:
                on_chart = int(grid.lattice_vertex[c, h_size - h, w])
                if is_corner[on_chart]:
                    found.add((on_chart, -1))
            if not found:
                rows.append((c, h + 1, w + 1, UNUSED, -1, 0, -1))
                continue
            u, shift = found.pop()
            if shift < 0:
                rows.append((c, h + 1, w + 1, CORNER, u, 0, corner_slot_of[u]))
            else:
                rows.append((c, h + 1, w + 1, REGULAR, u, shift, -1))
        for v in grid.corners:
            if v < grid.num_chart_vertices and v // (h_size * w_size) == c:
                _, h, w = np.unravel_index(v, (NUM_CHARTS, h_size, w_size))
                rows.append((c, int(h) + 1, int(w) + 1, CORNER, int(v), 0, corner_slot_of[int(v)]))
    cols = np.array(rows, dtype=np.int64).T
    return PaddingTable(*cols)


@functools.lru_cache(maxsize=16)
def corner_table(level: int) -> CornerTable:
    """The 12 corners, their 5 neighbours and the direction from each neighbour to its corner."""
    grid = IcoGrid(level)
    is_corner = grid.degree == 5
    neighbours = np.stack([grid.ring[v, :5] for v in grid.corners])
    toward = np.zeros_like(neighbours)
    for j, v in enumerate(grid.corners):
        for m, n in enumerate(neighbours[j]):
            if not is_corner[n]:
                toward[j, m] = _direction_of(grid, int(n), int(v))
    return CornerTable(grid.corners.copy(), neighbours, toward, is_corner[neighbours])


def kernel_expansion(in_orientations: int, out_orientations: int) -> np.ndarray:
    """[R_in·7, R_out·R_in·9] 0/1 (or count) matrix taking 7-tap weights to a dense 3x3 p6 kernel.

    Output orientation i uses the taps rotated by i and the input channels shifted by i; a
    scalar output (R_out = 1) sums the 6 rotated copies (divide by 6 for the invariant mean).
    Integer entries keep the expansion exact in every dtype.
    """
    orient, tap = hex_kernel_pattern(in_orientations)
    expand = np.zeros((in_orientations * 8, ORIENTATIONS, in_orientations * 9))
    rows = (orient * 8 + tap).reshape(ORIENTATIONS, -1)
    for i in range(ORIENTATIONS):
        expand[rows[i], i, np.arange(in_orientations * 9)] = 1.0
    expand = expand.reshape(in_orientations, 8, ORIENTATIONS, -1)[:, :7].reshape(in_orientations * 7, ORIENTATIONS, -1)
    if out_orientations == 1:
        expand = expand.sum(1, keepdims=True)
    return expand.reshape(in_orientations * 7, -1)


def hex_kernel_pattern(in_orientations: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each entry of a dense 3x3 p6 kernel comes from.

    Returns (orientation, tap), each [6, R_in, 9]: for output orientation i, input orientation
    channel r' and 3x3 position p, the weight w[..., orientation, tap] (tap 0..5 = hex direction,
    6 = centre, 7 = the zero slot for the two corners a hexagon does not have).
    """
    position_of = {(dh, dw): k for k, (dh, dw) in enumerate(HEX_OFFSETS)}
    orient = np.zeros((ORIENTATIONS, in_orientations, 9), dtype=np.int64)
    tap = np.full((ORIENTATIONS, in_orientations, 9), 7, dtype=np.int64)
    for i in range(ORIENTATIONS):
        for r_prime in range(in_orientations):
            r = (r_prime - i) % in_orientations
            for p in range(9):
                dh, dw = p // 3 - 1, p % 3 - 1
                orient[i, r_prime, p] = r
                if (dh, dw) == (0, 0):
                    tap[i, r_prime, p] = 6
                elif (dh, dw) in position_of:
                    tap[i, r_prime, p] = (position_of[(dh, dw)] - i) % ORIENTATIONS
    return orient, tap
