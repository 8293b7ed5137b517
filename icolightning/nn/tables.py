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


@dataclass(frozen=True)
class Route:
    """Which cell, and which orientation of it, each of M entries reads (or where it is added).

    `cell` indexes the cells of one sample's 5 charts, padded ((H+2)x(W+2) each) or not (HxW);
    entry m at orientation r is cell[m] at orientation (r + shift[m]) % R. No shift: 0.
    """

    cell: np.ndarray
    shift: np.ndarray | None = None


@dataclass(frozen=True)
class GaugePadRoutes:
    """Everything GaugePad gathers or scatters, by name: the forward reads the padded charts, the
    backward sends each gradient back along the route its value came by. Derived from
    `padding_table` and `corner_table`; `GaugePad` registers every array as a buffer.

    The border is filled in strip order (bottom row, top row, left column, right column, per
    chart); cells that are not plain copies are then overwritten with a corner's orientation
    mean or with 0. Corner-rule inputs are gathered from the filled padded charts: the 3x3
    patches around the 10 chart corners and the 5 neighbours of all 12 corners.
    """

    strips: Route
    """padded: source of every border cell, in strip order (non-copies point anywhere)."""
    corner_cells: Route
    """padded: border and interior cells that hold a corner's orientation mean ..."""
    corner_cell_slot: np.ndarray
    """... of this corner (0-11, grid.corners order)."""
    unused_cells: Route
    """padded: border cells no non-corner pixel reads; set to 0."""
    corner_pixels: Route
    """padded: the 10 chart corner pixels."""
    patches: Route
    """padded: their 3x3 neighbourhoods, row-major (10 x 9)."""
    neighbours: Route
    """padded: the 5 neighbours of each of the 12 corners, orientations turned toward the corner."""
    neighbour_is_corner: np.ndarray
    """[12, 5] a neighbour that is itself a corner (level 0 only) enters as its mean ..."""
    neighbour_slot: np.ndarray
    """[12, 5] ... of this corner."""
    boundary_pull: Route
    """backward, padded: for each boundary pixel in boundary-strip order (row 0, row H-1,
    column 0, column W-1 without those rows), a border cell copied from it."""
    extra_pull: Route
    """backward, padded: the rare second border copy of a boundary pixel (3 per chart) ..."""
    extra_dst: Route
    """... and that pixel (unpadded)."""
    patch_copy: np.ndarray
    """backward: the patch entries (of 90) that are copies of a non-corner pixel ..."""
    patch_copy_dst: Route
    """... and that pixel (unpadded), orientations turned back."""
    patch_corner: np.ndarray
    """backward: the patch entries that hold a corner's mean ..."""
    patch_corner_slot: np.ndarray
    """... of this corner."""
    neighbour_copy: np.ndarray
    """backward: the neighbour entries (of 60) that are not corners ..."""
    neighbour_copy_dst: Route
    """... and their pixel (unpadded), orientations turned back."""
    neighbour_corner: np.ndarray
    """backward: the neighbour entries that are corners (level 0 only) ..."""
    neighbour_corner_slot: np.ndarray
    """... and which."""
    corner_pixels_dst: Route
    """backward, unpadded: the 10 chart corner pixels."""


@functools.lru_cache(maxsize=16)
def _padded_index(vertex: int, height: int, width: int) -> int:
    """Flat index in the padded charts [5, H+2, W+2] of chart vertex `vertex` (chart-major, row-major)."""
    chart, pos = divmod(vertex, height * width)
    return chart * (height + 2) * (width + 2) + (pos // width + 1) * (width + 2) + pos % width + 1


def _strip_routes(route_of: dict, height: int, width: int) -> tuple[list, dict]:
    """Forward: what each border cell of each chart copies (source pixel, shift), in strip order;
    and, per source pixel, the border cells copied from it (for the backward pulls)."""
    padded_plane = (height + 2) * (width + 2)
    strip_cells = ([(0, wp) for wp in range(width + 2)] + [(height + 1, wp) for wp in range(width + 2)]
                   + [(hp, 0) for hp in range(1, height + 1)] + [(hp, width + 1) for hp in range(1, height + 1)])
    strips, pulls_of = [], {}
    for chart in range(NUM_CHARTS):
        for hp, wp in strip_cells:
            cell = chart * padded_plane + hp * (width + 2) + wp
            kind_, source, shift, _ = route_of[cell]
            strips.append((_padded_index(source, height, width), shift) if kind_ == REGULAR else (0, 0))
            if kind_ == REGULAR:
                pulls_of.setdefault(source, []).append((cell, -shift))
    return strips, pulls_of


def _boundary_pulls(pulls_of: dict, height: int, width: int) -> tuple[list, list, list]:
    """Backward pulls each boundary pixel's gradient from the border cells copied from it: the
    first through one gather laid out like the boundary strips, a rare second through a small
    scatter. Corner pixels have none; their gradient is set last."""
    boundary = ([(0, w) for w in range(width)] + [(height - 1, w) for w in range(width)]
                + [(h, 0) for h in range(1, height - 1)] + [(h, width - 1) for h in range(1, height - 1)])
    boundary_pull, extra_pull, extra_dst = [], [], []
    for chart in range(NUM_CHARTS):
        for h, w in boundary:
            vertex = chart * height * width + h * width + w
            pulls = pulls_of.get(vertex, [(_padded_index(vertex, height, width), 0)])
            boundary_pull.append(pulls[0])
            extra_pull += pulls[1:]
            extra_dst += [vertex] * len(pulls[1:])
    return boundary_pull, extra_pull, extra_dst


def _patch_routes(corner_pix: np.ndarray, route_of: dict, height: int, width: int) -> tuple[np.ndarray, list]:
    """The padded 3x3 neighbourhood cells of each chart corner and the route that fills each."""
    padded_plane, plane = (height + 2) * (width + 2), height * width
    patch_cells = (corner_pix[:, :1] * padded_plane + (corner_pix[:, 1:2] + np.repeat(np.arange(3), 3)) * (width + 2)
                   + corner_pix[:, 2:3] + np.tile(np.arange(3), 3)).ravel()
    patch_routes = []
    for cell in patch_cells:
        chart, pos = divmod(int(cell), padded_plane)
        own = chart * plane + (pos // (width + 2) - 1) * width + pos % (width + 2) - 1
        patch_routes.append(route_of.get(int(cell), (REGULAR, own, 0, -1)))
    return patch_cells, patch_routes


def _route(pairs: list[tuple[int, int]]) -> Route:
    cells = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return Route(cells[:, 0], cells[:, 1])


def gauge_pad_routes(level: int) -> GaugePadRoutes:
    """The routes of GaugePad at one level (see `GaugePadRoutes`)."""
    grid = IcoGrid(level)
    table = padding_table(level)
    height, width = grid.chart_shape
    plane = height * width
    padded_cell = table.chart * (height + 2) * (width + 2) + table.hp * (width + 2) + table.wp
    kind = {k: table.kind == k for k in (REGULAR, CORNER, UNUSED)}
    corner_pix = grid.chart_corner_pixels()
    slot_of = {int(v): k for k, v in enumerate(grid.corners)}
    route_of = {int(padded_cell[i]): (int(table.kind[i]), int(table.source[i]), int(table.shift[i]),
                                      int(table.corner_slot[i])) for i in range(len(table.kind))}

    def padded(vertex: int) -> int:
        return _padded_index(vertex, height, width)

    strips, pulls_of = _strip_routes(route_of, height, width)
    boundary_pull, extra_pull, extra_dst = _boundary_pulls(pulls_of, height, width)
    patch_cells, patch_routes = _patch_routes(corner_pix, route_of, height, width)
    patch_kind = np.array([route[0] for route in patch_routes])
    patch_copy = np.flatnonzero(patch_kind == REGULAR)
    patch_corner = np.flatnonzero(patch_kind == CORNER)

    corners = corner_table(level)
    nb = corners.neighbours.ravel()
    nb_is_corner = corners.neighbour_is_corner.ravel()
    nb_pixel = np.where(nb_is_corner | (nb >= grid.num_chart_vertices), 0, nb)
    neighbour_copy = np.flatnonzero(~nb_is_corner)
    corner_pixel_vertex = corner_pix[:, 0] * plane + corner_pix[:, 1] * width + corner_pix[:, 2]

    return GaugePadRoutes(
        strips=_route(strips),
        corner_cells=Route(padded_cell[kind[CORNER]]),
        corner_cell_slot=table.corner_slot[kind[CORNER]],
        unused_cells=Route(padded_cell[kind[UNUSED]]),
        corner_pixels=Route(np.array([padded(int(v)) for v in corner_pixel_vertex], dtype=np.int64)),
        patches=Route(patch_cells),
        neighbours=Route(np.array([padded(int(v)) for v in nb_pixel], dtype=np.int64), corners.toward.ravel()),
        neighbour_is_corner=corners.neighbour_is_corner,
        neighbour_slot=np.array([[slot_of.get(int(v), 0) for v in row] for row in corners.neighbours]),
        boundary_pull=_route(boundary_pull),
        extra_pull=_route(extra_pull),
        extra_dst=Route(np.array(extra_dst, dtype=np.int64)),
        patch_copy=patch_copy,
        patch_copy_dst=_route([patch_routes[i][1:3] for i in patch_copy]),
        patch_corner=patch_corner,
        patch_corner_slot=np.array([patch_routes[i][3] for i in patch_corner], dtype=np.int64),
        neighbour_copy=neighbour_copy,
        neighbour_copy_dst=Route(nb_pixel[neighbour_copy], corners.toward.ravel()[neighbour_copy]),
        neighbour_corner=np.flatnonzero(nb_is_corner),
        neighbour_corner_slot=np.array([slot_of[int(v)] for v in nb[nb_is_corner]], dtype=np.int64),
        corner_pixels_dst=Route(corner_pixel_vertex),
    )
