"""Accuracy plots of a trained model (matplotlib, PNG, Agg backend; nothing is shown).

* histograms of test r and of noise-ceiling-normalised explained variance;
* per-ROI bars: mean r with sqrt(mean noise ceiling), the highest r the noise allows;
* for volumetric models, a mosaic of axial slices of r on the output grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_histograms", "plot_roi_bars", "plot_volume_map", "plot_all"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    from berg.fsutil import atomic_path

    with atomic_path(path, path.suffix) as tmp:
        fig.savefig(tmp, dpi=90)
    _plt().close(fig)
    return path


def plot_histograms(r: np.ndarray, ev: np.ndarray, path: Path, *, title: str = "") -> Path:
    """Histograms of test Pearson r and NC-normalised explained variance (%)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].hist(r, bins=40, color="tab:blue")
    axes[0].axvline(float(np.median(r)), color="k", lw=1, ls="--", label=f"median {np.median(r):.2f}")
    axes[0].set_xlabel("test Pearson r")
    axes[0].legend(frameon=False)
    axes[1].hist(ev, bins=40, range=(0, 100), color="tab:green")
    axes[1].set_xlabel("noise-ceiling-normalised explained variance (%)")
    for ax in axes:
        ax.set_ylabel("outputs")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_roi_bars(r: np.ndarray, nc: np.ndarray, rois: dict[str, np.ndarray], path: Path, *, title: str = "") -> Path:
    """Mean r per ROI with the noise-ceiling bound sqrt(mean NC) as a black tick."""
    plt = _plt()
    names = list(rois)
    mean_r = [float(np.mean(r[rois[n]])) if len(rois[n]) else 0.0 for n in names]
    bound = [float(np.sqrt(np.mean(nc[rois[n]]))) if len(rois[n]) else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(names) + 1.5), 3.4))
    ax.bar(names, mean_r, color="tab:blue", label="mean test r")
    ax.scatter(names, bound, color="k", marker="_", s=300, label="sqrt(mean noise ceiling)")
    ax.set_ylabel("r")
    ax.set_ylim(min(0.0, min(mean_r) - 0.05), 1.0)
    ax.legend(frameon=False, fontsize=8)
    ax.tick_params(axis="x", rotation=60)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_volume_map(
    values: np.ndarray,
    voxel_ijk: np.ndarray,
    grid_shape: tuple[int, int, int],
    path: Path,
    *,
    title: str = "",
    n_slices: int = 12,
) -> Path:
    """Axial slices of a per-output value (e.g. test r) placed at its voxel on the grid."""
    plt = _plt()
    vol = np.full(grid_shape, np.nan, dtype=np.float32)
    vol[tuple(np.asarray(voxel_ijk).T)] = values
    zs = np.unique(voxel_ijk[:, 2])
    picks = zs[np.linspace(0, len(zs) - 1, min(n_slices, len(zs))).astype(int)]
    cols = min(6, len(picks))
    rows = -(-len(picks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.9 * rows + 0.4), squeeze=False)
    vmax = float(np.nanmax(np.abs(values))) or 1.0
    im = None
    for ax, z in zip(axes.ravel(), picks):
        im = ax.imshow(vol[:, :, z].T, origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(f"k={z}", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="test r")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_all(
    label: str,
    per_output: dict[str, np.ndarray],
    rois: dict[str, np.ndarray],
    out_dir: Path,
    *,
    voxel_ijk: np.ndarray | None = None,
    grid_shape: tuple[int, int, int] | None = None,
    title: str = "",
) -> list[Path]:
    """Every plot for one subject; returns the PNG paths (``<label>_hist.png`` ...)."""
    out_dir = Path(out_dir)
    r, nc, ev = per_output["correlation"], per_output["noise_ceiling"], per_output["nc_normalized_ev"]
    paths = [plot_histograms(r, ev, out_dir / f"{label}_hist.png", title=title)]
    if rois:
        paths.append(plot_roi_bars(r, nc, rois, out_dir / f"{label}_rois.png", title=title))
    if voxel_ijk is not None and grid_shape is not None:
        paths.append(plot_volume_map(r, voxel_ijk, grid_shape, out_dir / f"{label}_r_map.png", title=title))
    return paths
