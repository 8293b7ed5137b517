"""Putting planar images on the sphere: stereographic projection onto the northern hemisphere.

A sphere point p = (x, y, z) with z > 0 maps to the plane point (x, y) / (1 + z) (stereographic
projection from the south pole), which covers the unit disc. The image is the square
[-half_width, half_width]^2 of that plane, so with the default half-width 1/√2 the whole image,
corners included, lies on the northern hemisphere and a centred MNIST digit covers a cap of
about 70° radius. Seen from outside the sphere above the north pole, the x axis points right
and the y axis up, so digits are not mirrored.

Sampling is bilinear between pixel centres, zero outside the image and on the southern
hemisphere. The same weights serve two ways: as one sparse [N, H*W] matrix applied to every
digit at once (fixed sampling points), and as a batched gather when every digit has its own
rotated sampling points (mode R).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy import sparse

from icolightning.grid import IcoGrid

DEFAULT_HALF_WIDTH = 1.0 / math.sqrt(2.0)


def bilinear_weights(
    points: torch.Tensor, image_shape: tuple[int, int], half_width: float = DEFAULT_HALF_WIDTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat pixel indices [..., 4] and bilinear weights [..., 4] for unit vectors [..., 3].

    Weights of pixels outside the image, and of every point with z <= 0, are zero (their index
    is clamped to a valid pixel so that gathers stay in range).
    """
    height, width = image_shape
    x, y, z = points.unbind(-1)
    north = z > 0
    denom = torch.where(north, 1.0 + z, torch.ones_like(z))
    u, v = x / denom, y / denom
    # Continuous pixel coordinates with pixel centres on integers; image row 0 is the top (+y).
    col = (u + half_width) / (2 * half_width) * width - 0.5
    row = (half_width - v) / (2 * half_width) * height - 0.5
    col0, row0 = torch.floor(col), torch.floor(row)
    fc, fr = col - col0, row - row0
    idx, wts = [], []
    for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
        r, c = row0 + dr, col0 + dc
        w = (fr if dr else 1 - fr) * (fc if dc else 1 - fc)
        inside = north & (r >= 0) & (r < height) & (c >= 0) & (c < width)
        wts.append(torch.where(inside, w, torch.zeros_like(w)))
        flat = r.clamp(0, height - 1) * width + c.clamp(0, width - 1)
        idx.append(flat.long())
    return torch.stack(idx, -1), torch.stack(wts, -1)


@functools.lru_cache(maxsize=8)
def projection_matrix(
    level: int, image_shape: tuple[int, int] = (28, 28), half_width: float = DEFAULT_HALF_WIDTH
) -> sparse.csr_matrix:
    """Sparse [N, H*W] float32 matrix: vertex values = matrix @ flattened image.

    Cached per (level, image shape, half-width) because every split and mode reuses it.
    """
    points = torch.from_numpy(IcoGrid(level).xyz)
    idx, wts = bilinear_weights(points, image_shape, half_width)
    rows = np.repeat(np.arange(points.shape[0]), 4)
    mat = sparse.csr_matrix(
        (wts.reshape(-1).numpy().astype(np.float32), (rows, idx.reshape(-1).numpy())),
        shape=(points.shape[0], image_shape[0] * image_shape[1]),
    )
    mat.eliminate_zeros()
    return mat


def project_images(
    images: np.ndarray, level: int, half_width: float = DEFAULT_HALF_WIDTH
) -> np.ndarray:
    """Images [D, H, W] -> vertex signals [D, N] float32, all digits in one sparse product."""
    d, h, w = images.shape
    mat = projection_matrix(level, (h, w), half_width)
    flat = images.reshape(d, h * w).astype(np.float32)
    return np.asarray(mat @ flat.T).T.astype(np.float32, copy=False)


def project_rotated(
    images: torch.Tensor,
    rotations: torch.Tensor,
    points: torch.Tensor,
    half_width: float = DEFAULT_HALF_WIDTH,
    chunk: int = 256,
) -> torch.Tensor:
    """Images [D, H, W] sampled at rotated points: out[d, v] = image_d(R_d · points[v]).

    With R_d an icosahedral rotation g this is exactly the N-mode signal permuted by
    `IcoGrid.rotation_permutations[g]` (up to rounding). Work is chunked over digits so memory
    stays bounded for any dataset size.
    """
    d, h, w = images.shape
    flat = images.reshape(d, h * w)
    out = []
    for start in range(0, d, chunk):
        rot = rotations[start : start + chunk].to(points.dtype)
        moved = torch.einsum("dij,nj->dni", rot, points)
        idx, wts = bilinear_weights(moved, (h, w), half_width)
        pix = flat[start : start + chunk]
        gathered = torch.gather(pix, 1, idx.reshape(pix.shape[0], -1)).reshape(idx.shape)
        out.append((gathered * wts.to(pix.dtype)).sum(-1))
    return torch.cat(out) if out else flat.new_zeros((0, points.shape[0]))


def random_rotations(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[n, 3, 3] float64 rotations uniform on SO(3) (normalised Gaussian quaternions)."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    a, b, c, d = (q / q.norm(dim=1, keepdim=True)).unbind(1)
    return torch.stack(
        [
            torch.stack([a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)], -1),
            torch.stack([2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)], -1),
            torch.stack([2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d], -1),
        ],
        1,
    )
