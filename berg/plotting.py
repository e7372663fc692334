"""Small plotting helpers that return matplotlib figures (nothing is shown or printed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_volume_slices"]


def plot_volume_slices(
    image: Any,
    *,
    title: str = "",
    out_path: str | Path | None = None,
    volume_index: int = 0,
    cmap: str = "RdBu_r",
):
    """Orthogonal slices (sagittal, coronal, axial) through the voxel of largest absolute value.

    Parameters
    ----------
    image : nibabel image or ndarray
        3-D or 4-D (``volume_index`` picks the volume).
    title : str
        Figure title.
    out_path : path, optional
        If given, the figure is saved there as PNG (written atomically).
    volume_index : int
        Volume of a 4-D image to show.
    cmap : str
        Diverging colour map, centred on 0.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    data = np.asarray(getattr(image, "dataobj", image), dtype=np.float32)
    if data.ndim == 4:
        data = data[..., volume_index]
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D or 4-D volume, got shape {data.shape}")
    i, j, k = np.unravel_index(int(np.nanargmax(np.abs(data))), data.shape)
    vmax = float(np.nanmax(np.abs(data))) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    views = [(data[i, :, :], f"x = {i}"), (data[:, j, :], f"y = {j}"), (data[:, :, k], f"z = {k}")]
    for ax, (plane, label) in zip(axes, views):
        im = ax.imshow(plane.T, origin="lower", cmap=cmap, vmin=-vmax, vmax=vmax)
        ax.set_title(label)
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8)
    if title:
        fig.suptitle(title)
    if out_path is not None:
        out_path = Path(out_path)
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        fig.savefig(tmp, dpi=100, format="png")
        tmp.replace(out_path)
    return fig
