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


@functools.lru_cache(maxsize=16)
def gauge_pad_index(level: int) -> dict[str, np.ndarray]:
    """Index arrays GaugePad reads, derived from `padding_table` and `corner_table`.

    Groups (cells are (chart, position) in the padded [H+2, W+2] or unpadded [H, W] plane):
    strip_*   source of every border cell, in strip order (bottom row, top row, left, right
              column), with its orientation shift; non-regular cells point at a corner pixel
              and are overwritten afterwards;
    pull_*, extra_*  for backward: the border cell(s) copied from each boundary pixel, in
              boundary-strip order (a second copy, 3 pixels per chart, goes to extra_*);
    corner_cell_*, unused_*  border/interior cells holding a corner's orientation mean, or 0;
    corner_*  the 10 chart corner pixels; patch_*  their padded 3x3 neighbourhoods;
    nb_*      the 5 neighbours of each of the 12 corners and the direction back to the corner;
    small_*, route_slot  where the gradients of patches, neighbours and extra copies go.
    """
    grid = IcoGrid(level)
    table = padding_table(level)
    height, width = grid.chart_shape
    padded_pos = table.hp * (width + 2) + table.wp
    kind = {k: table.kind == k for k in (REGULAR, CORNER, UNUSED)}
    corner_pix = grid.chart_corner_pixels()
    slot_of = {int(v): k for k, v in enumerate(grid.corners)}
    route_of = {(int(table.chart[i]), int(padded_pos[i])): (int(table.kind[i]), int(table.source[i]),
                                                            int(table.shift[i]), int(table.corner_slot[i]))
                for i in range(len(table.kind))}

    def unpadded(vertex: int) -> tuple[int, int]:
        return vertex // (height * width), vertex % (height * width)

    def padded(vertex: int) -> tuple[int, int]:
        chart, pos = unpadded(vertex)
        return chart, (pos // width + 1) * (width + 2) + pos % width + 1

    strip_cells = ([(0, wp) for wp in range(width + 2)] + [(height + 1, wp) for wp in range(width + 2)]
                   + [(hp, 0) for hp in range(1, height + 1)] + [(hp, width + 1) for hp in range(1, height + 1)])
    strip_src, pulls_of = [], {}
    for chart in range(NUM_CHARTS):
        dump = int(corner_pix[2 * chart, 0]) * height * width
        for hp, wp in strip_cells:
            kind_, source, shift, _ = route_of[(chart, hp * (width + 2) + wp)]
            regular = kind_ == REGULAR
            strip_src.append((*padded(source if regular else dump), shift if regular else 0))
            if regular:
                pulls_of.setdefault(source, []).append((chart, hp * (width + 2) + wp, -shift))
    # Backward pulls each boundary pixel's gradient from the border cells copied from it: the
    # first through one gather laid out like the boundary strips, a rare second (3 pixels per
    # chart) through a small scatter. The 10 corners have none; their gradient is set last.
    boundary = ([(0, w) for w in range(width)] + [(height - 1, w) for w in range(width)]
                + [(h, 0) for h in range(1, height - 1)] + [(h, width - 1) for h in range(1, height - 1)])
    boundary_pull, extra_pull, extra_route = [], [], []
    for chart in range(NUM_CHARTS):
        for h, w in boundary:
            vertex = chart * height * width + h * width + w
            pulls = pulls_of.get(vertex, [(*padded(vertex), 0)])
            boundary_pull.append(pulls[0])
            extra_pull += pulls[1:]
            extra_route += [unpadded(vertex)] * len(pulls[1:])

    patch_pad_pos = ((corner_pix[:, 1:2] + np.repeat(np.arange(3), 3)) * (width + 2)
                     + corner_pix[:, 2:3] + np.tile(np.arange(3), 3))
    patch_routes = []
    for chart, row in zip(corner_pix[:, 0], patch_pad_pos, strict=True):
        for p in row:
            hp, wp = divmod(int(p), width + 2)
            own = int(chart) * height * width + (hp - 1) * width + (wp - 1)
            patch_routes.append(route_of.get((int(chart), int(p)), (REGULAR, own, 0, -1)))
    patch_kind = np.array([route[0] for route in patch_routes])

    corners = corner_table(level)
    nb = corners.neighbours.ravel()
    nb_is_corner = corners.neighbour_is_corner.ravel()
    nb_pixel = np.where(nb_is_corner | (nb >= grid.num_chart_vertices), 0, nb)
    small_src = np.concatenate([[route[1] for route in patch_routes if route[0] == REGULAR],
                                nb_pixel[~nb_is_corner]]).astype(np.int64)
    small_shift = np.concatenate([[route[2] for route in patch_routes if route[0] == REGULAR],
                                  corners.toward.ravel()[~nb_is_corner]])
    route_slot = np.concatenate([table.corner_slot[kind[CORNER]],
                                 [route[3] for route in patch_routes if route[0] == CORNER],
                                 [slot_of[int(v)] for v in nb[nb_is_corner]]])
    strip_src = np.array(strip_src).reshape(NUM_CHARTS, -1, 3)
    boundary_pull = np.array(boundary_pull).reshape(NUM_CHARTS, -1, 3)
    extra_pull, extra_route = np.array(extra_pull).reshape(-1, 3), np.array(extra_route).reshape(-1, 2)
    nb_padded = np.array([padded(int(v)) for v in nb_pixel])
    return {
        "strip_src_chart": strip_src[..., 0], "strip_src_pos": strip_src[..., 1], "strip_shift": strip_src[..., 2],
        "pull_chart": boundary_pull[..., 0], "pull_pos": boundary_pull[..., 1],
        "pull_shift": boundary_pull[..., 2],
        "extra_chart": extra_pull[:, 0], "extra_pos": extra_pull[:, 1], "extra_shift": extra_pull[:, 2],
        "small_chart": np.concatenate([small_src // (height * width), extra_route[:, 0]]),
        "small_pos": np.concatenate([small_src % (height * width), extra_route[:, 1]]),
        "small_shift": np.concatenate([small_shift, np.zeros(len(extra_route), dtype=np.int64)]),
        "corner_cell_chart": table.chart[kind[CORNER]], "corner_cell_pos": padded_pos[kind[CORNER]],
        "corner_cell_slot": table.corner_slot[kind[CORNER]],
        "unused_chart": table.chart[kind[UNUSED]], "unused_pos": padded_pos[kind[UNUSED]],
        "corner_chart": corner_pix[:, 0], "corner_pad_pos": (corner_pix[:, 1] + 1) * (width + 2) + corner_pix[:, 2] + 1,
        "corner_pos": corner_pix[:, 1] * width + corner_pix[:, 2],
        "patch_chart": np.repeat(corner_pix[:, 0], 9), "patch_pos": patch_pad_pos.ravel(),
        "patch_regular": np.flatnonzero(patch_kind == REGULAR),
        "patch_corner": np.flatnonzero(patch_kind == CORNER),
        "nb_chart": nb_padded[:, 0], "nb_pad_pos": nb_padded[:, 1],
        "nb_toward": corners.toward.ravel(), "nb_regular": np.flatnonzero(~nb_is_corner),
        "nb_slot": np.array([[slot_of.get(int(v), 0) for v in row] for row in corners.neighbours]),
        "route_slot": route_slot,
        "nb_is_corner": corners.neighbour_is_corner,
    }
