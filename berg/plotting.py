"""Brain maps people recognise, drawn with nilearn; every function returns a matplotlib figure.

* MNI volumes (a group map on the MNI152 2 mm grid): :func:`plot_volume` draws a statistical map on
  nilearn's MNI152 template (``kind="stat"``, three orthogonal slices with L/R marks and mm
  coordinates) or a glass brain (``kind="glass"``).
* Subject-space volumes: on the subject's anatomical or mean image when one is given (``bg_img``),
  otherwise as a glass-brain-style projection in the subject's own grid (the largest ``|value|`` along
  each axis over the silhouette of the predicted voxels), oriented by the image's affine.
* Surfaces: :func:`plot_surface` draws both hemispheres (lateral and medial) on the template's
  inflated mesh with nilearn: ``fsaverage5`` ships with nilearn; ``fsaverage`` (163,842 vertices per
  hemisphere) comes from nilearn's datasets (downloaded once where there is network). Without it the
  map is drawn on fsaverage5's 10,242 vertices, which are the first 10,242 vertices of fsaverage (the
  icosahedral meshes are nested), and the figure and the log say what was missing.
* :func:`plot_stimulus_maps`: the stimulus beside its brain map (stat map + glass brain on MNI152).
* :func:`plot_file` reads what ``berg encode`` wrote (NIfTI or HDF5) and picks the right one; it is
  what ``berg plot`` runs.

Voxels or vertices that a model does not predict are NaN in berg's outputs and are not drawn. The
colour bar is labelled with the response units (:func:`response_units`: z for group maps, the model
card's ``output.units`` otherwise). Figures from an untrained backbone or a synthetic model carry a red
stamp saying so (:func:`figure_stamp`). Nothing is shown or printed: figures are returned, and
written (atomically) when ``out_path`` is given.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError, MissingExtraError

__all__ = [
    "plot_volume",
    "plot_surface",
    "plot_file",
    "plot_stimulus_maps",
    "is_mni",
    "response_units",
    "figure_stamp",
    "GROUP_MAP_UNITS",
]

log = logging.getLogger(__name__)

_DEFAULT_UNITS = "predicted response (a.u.)"
GROUP_MAP_UNITS = "z (z-scored group map)"
"""Units of img2fmri-style group maps (``space="mni"``): each image's map is z-scored over its voxels."""

# Grids berg calls MNI152: FSL's 2 mm and 1 mm templates (what img2fmri and most atlases use) and
# nilearn's 2 mm MNI152 2009 grid.
_MNI_GRIDS = (
    ((91, 109, 91), np.array([[-2, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]], float)),
    ((182, 218, 182), np.array([[-1, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]], float)),
    ((99, 117, 95), np.array([[2, 0, 0, -98], [0, 2, 0, -134], [0, 0, 2, -72], [0, 0, 0, 1]], float)),
)
_PLOT_SUFFIXES = (".png", ".svg", ".pdf")
_FSAVERAGE_VERTICES = {"fsaverage5": 10242, "fsaverage6": 40962, "fsaverage": 163842, "fsaverage7": 163842}
_TITLE_BAND = 0.13  # top share of a figure kept for its title and stamp: never over nilearn's L/R letters


def _nilearn():
    try:
        from nilearn import datasets, plotting
    except ModuleNotFoundError:
        raise MissingExtraError(
            "berg's brain plots need nilearn, which is not installed: pip install nilearn"
        ) from None
    return plotting, datasets


def _figure(**kwargs: Any):
    """A matplotlib Figure that belongs to no pyplot backend: saving uses Agg, nothing pops up, the
    user's backend (a notebook's inline one) is left as it is, and a returned figure displays there."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def is_mni(image: Any) -> bool:
    """True when the image lies on a known MNI152 grid (FSL 2 mm / 1 mm, nilearn's 2 mm)."""
    shape = tuple(int(s) for s in image.shape[:3])
    affine = np.asarray(image.affine, dtype=float)
    return any(shape == grid and np.allclose(affine, aff, atol=1e-3) for grid, aff in _MNI_GRIDS)


# ------------------------------------------------------------------------------------ units and stamps


def response_units(model: Any) -> str | None:
    """The units of a model's responses, as a colour bar (and berg's files) should state them.

    ``model.output_units`` (:class:`~berg.core.contract.BaseModelInterface`): the card's ``output.units``
    unless the model says otherwise (img2fmri-style group maps, ``space="mni"``, are z-scores:
    :data:`GROUP_MAP_UNITS`). ``None`` when nothing says.
    """
    from berg.core.contract import BaseModelInterface

    if isinstance(model, BaseModelInterface):
        return model.output_units
    return BaseModelInterface.output_units.fget(model)


def figure_stamp(source: Any, units: str | None = None) -> str | None:
    """The red stamp a figure must carry, from a model or a provenance record; ``None`` for a real model.

    ``"UNTRAINED BACKBONE"`` when the responses came from a random-weights control (the provenance
    records its warning), ``"SYNTHETIC MODEL"`` when the model (its card's name or units, or
    ``units``) says it is synthetic; both when both hold.

    Parameters
    ----------
    source : model or mapping
        A loaded model (its ``provenance()`` and card are read) or a provenance dict (what berg writes
        in HDF5 attributes and NIfTI sidecars).
    units : str, optional
        The response units, when known separately (a sidecar's ``units``).
    """
    provenance: Any = source
    texts = [units or ""]
    if not isinstance(source, Mapping):
        provenance = source.provenance() if callable(getattr(source, "provenance", None)) else {}
        card = getattr(getattr(source, "spec", None), "card", None) or {}
        if isinstance(card, Mapping):
            texts += [str(card.get("name", "")), str((card.get("output") or {}).get("units", ""))]
    provenance = provenance if isinstance(provenance, Mapping) else {}
    warning_texts = [str(provenance.get("warning", ""))]
    backbone = provenance.get("backbone")
    if isinstance(backbone, Mapping):
        warning_texts += [str(w) for w in backbone.get("warnings") or []]
    marks = []
    if any("SYNTHETIC" in t for t in texts):
        marks.append("SYNTHETIC MODEL")
    if any("UNTRAINED" in t for t in warning_texts):
        marks.append("UNTRAINED BACKBONE")
    return " + ".join(marks) if marks else None


def _stamp(fig: Any, stamp: str | None) -> None:
    """A red label at the top right: the figure is from a control or a synthetic model, not a brain."""
    if stamp:
        fig.text(
            0.995,
            0.99,
            f"{stamp}: not a brain prediction",
            ha="right",
            va="top",
            fontsize=10,
            fontweight="bold",
            color="white",
            bbox={"boxstyle": "round,pad=0.3", "facecolor": "#c62828", "edgecolor": "none"},
            zorder=10,
        )


def _title(fig: Any, title: str | None, color: str = "black") -> None:
    """The title in the band above the panels (nilearn's own title box sits over the L/R letters)."""
    if title:
        fig.text(0.01, 0.985, title, ha="left", va="top", fontsize=11, color=color)


def _save(fig: Any, out_path: str | os.PathLike[str] | None, dpi: int = 120) -> None:
    if out_path is None:
        return
    from berg.errors import check_output_path
    from berg.fsutil import atomic_path

    path = check_output_path(out_path, _PLOT_SUFFIXES, what="out_path")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, path.suffix) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip("."), facecolor=fig.get_facecolor())


def _label_colorbar(display: Any, units: str, color: str = "white") -> None:
    cbar = getattr(display, "_cbar", None)  # nilearn keeps the matplotlib Colorbar here
    if cbar is not None:  # on the bar's left: nilearn puts the bar at the figure's right edge
        cbar.ax.yaxis.set_label_position("left")
        cbar.set_label(units, color=color, fontsize=9)


# ------------------------------------------------------------------------------------------ volumes


def _load(image: Any):
    import nibabel as nib

    return nib.load(os.fspath(image)) if isinstance(image, (str, os.PathLike)) else image


def _one_volume(image: Any, index: int):
    import nibabel as nib

    img = _load(image)
    if len(img.shape) == 4:
        n = img.shape[3]
        if not -n <= index < n:
            raise InvalidParameterError(f"index={index} but the image holds {n} volume(s) (stimuli 0..{n - 1})")
        data = np.asarray(img.dataobj[..., index]).astype(np.float32)
    elif len(img.shape) != 3:
        raise InvalidParameterError(f"expected a 3-D or 4-D image, got shape {img.shape}")
    elif index not in (0, -1):
        raise InvalidParameterError(f"index={index} but the image holds one volume (index 0)")
    else:
        data = np.asarray(img.dataobj[...]).astype(np.float32)
    return nib.Nifti1Image(data, img.affine)  # a writable float32 copy (nilearn zeroes NaN in place)


def _scale(data: np.ndarray, threshold: float | None, vmax: float | None) -> tuple[float, float]:
    """``(threshold, vmax)``: by default only exact zeros and NaN are hidden, the bar spans the largest |v|."""
    finite = np.isfinite(data)
    if not finite.any() or not np.any(data[finite]):
        raise InvalidParameterError("the volume has no finite non-zero value to draw")
    peak = float(np.abs(data[finite]).max())
    # nilearn turns NaN into 0 and hides |v| < threshold: a tiny default hides exactly the voxels the
    # model does not predict, without hiding small predictions.
    return (peak * 1e-6 if threshold is None else float(threshold)), float(vmax or peak)


def _nilearn_volume(
    fig: Any,
    rect: tuple[float, float, float, float],
    img: Any,
    *,
    kind: str,
    threshold: float,
    vmax: float,
    cmap: str,
    units: str,
    bg_img: Any = None,
    black_bg: bool = True,
) -> Any:
    """One nilearn display (stat map or glass brain) inside ``rect`` of ``fig``; its colour bar labelled."""
    plotting, datasets = _nilearn()
    common = dict(
        figure=fig,
        axes=rect,
        colorbar=True,
        threshold=threshold,
        cmap=cmap,
        vmax=vmax,
        symmetric_cbar=True,
        black_bg=black_bg,
    )
    if kind == "glass":
        display = plotting.plot_glass_brain(img, plot_abs=False, **common)
    else:
        display = plotting.plot_stat_map(img, bg_img=bg_img, draw_cross=False, annotate=True, **common)
    _label_colorbar(display, units, color="white" if black_bg else "black")
    return display


def _canonical(img: Any, margin_mm: float = 8.0):
    """The image turned to RAS+ voxel axes (nibabel) and cropped to its predicted voxels (plus a margin),
    with the mm extent of the crop along each axis."""
    import nibabel as nib

    can = nib.as_closest_canonical(img)
    data = np.asarray(can.dataobj, dtype=np.float32)
    aff = np.asarray(can.affine, dtype=float)
    found = np.argwhere(np.isfinite(data))
    lo_idx, hi_idx = (found.min(0), found.max(0)) if found.size else (np.zeros(3, int), np.array(data.shape) - 1)
    crop, extents = [], []
    for axis in range(3):
        step = float(np.linalg.norm(aff[:3, axis])) or 1.0
        pad = int(np.ceil(margin_mm / step))
        lo, hi = max(int(lo_idx[axis]) - pad, 0), min(int(hi_idx[axis]) + pad, data.shape[axis] - 1)
        crop.append(slice(lo, hi + 1))
        start = float(aff[axis, 3]) + step * lo
        extents.append((start - step / 2, start + step * (hi - lo + 0.5)))
    return data[tuple(crop)], extents


def _projection(
    fig: Any,
    rect: tuple[float, float, float, float],
    img: Any,
    *,
    threshold: float,
    vmax: float,
    cmap: str,
    units: str,
) -> list[Any]:
    """A glass-brain-style view of a volume without a template, in its own grid.

    Three panels (sagittal, coronal, axial) side by side, each the signed value of the largest ``|v|``
    along the viewing axis, over a grey silhouette of the voxels the model predicts; scaled in mm so
    the panels never overlap; L/R, A/P marks from the image's affine (neurological view: left on the
    left).
    """
    import matplotlib as mpl

    data, ext = _canonical(img)
    predicted = np.isfinite(data)
    values = np.where(predicted & (np.abs(np.nan_to_num(data)) >= threshold), data, 0.0)
    values = np.nan_to_num(values)

    def mip(axis: int) -> np.ndarray:
        idx = np.expand_dims(np.abs(values).argmax(axis=axis), axis)
        out = np.take_along_axis(values, idx, axis=axis).squeeze(axis)
        return np.where(out == 0, np.nan, out)

    (x0, x1), (y0, y1), (z0, z1) = ext
    views = [
        ("sagittal", mip(0), predicted.any(0), (y0, y1, z0, z1), ("P", "A")),
        ("coronal", mip(1), predicted.any(1), (x0, x1, z0, z1), ("L", "R")),
        ("axial", mip(2), predicted.any(2), (x0, x1, y0, y1), ("L", "R")),
    ]
    left, bottom, width, height = rect
    fig_w, fig_h = fig.get_size_inches()
    bar_w = 0.09 * width
    widths = np.array([v[3][1] - v[3][0] for v in views])
    heights = np.array([v[3][3] - v[3][2] for v in views])
    # one mm scale (inches per mm) for every panel: the tallest fills the height, none spills into the next
    scale = min((width - bar_w) * fig_w * 0.8 / widths.sum(), height * fig_h * 0.78 / heights.max())
    gap = ((width - bar_w) - scale * widths.sum() / fig_w) / (len(views) + 1)
    norm = mpl.colors.Normalize(-vmax, vmax)
    axes, x = [], left + gap
    for (name, plane, silhouette, extent, (lo, hi)), w, h in zip(views, widths, heights):
        w_frac, h_frac = scale * w / fig_w, scale * h / fig_h
        ax = fig.add_axes((x, bottom + (height - h_frac) / 2, w_frac, h_frac))
        ax.imshow(np.where(silhouette, 0.85, np.nan).T, origin="lower", extent=extent, cmap="gray", vmin=0, vmax=1)
        ax.imshow(plane.T, origin="lower", extent=extent, cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7, length=2)
        for spine in ax.spines.values():
            spine.set_color("0.7")
        ax.set_title(f"{name} (mm)", fontsize=9)
        for pos, letter in ((0.02, lo), (0.98, hi)):  # inside the panel's top corners, as nilearn marks them
            ax.text(pos, 0.97, letter, transform=ax.transAxes, ha="center", va="top", fontsize=12, fontweight="bold")
        axes.append(ax)
        x += w_frac + gap
    cax = fig.add_axes((left + width - bar_w * 0.75, bottom + height * 0.15, bar_w * 0.12, height * 0.7))
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    cax.yaxis.set_label_position("left")  # the tick labels take the right side
    bar.set_label(units, fontsize=9)
    return axes


def plot_volume(
    image: Any,
    *,
    kind: str = "stat",
    index: int = 0,
    title: str | None = None,
    units: str | None = None,
    threshold: float | None = None,
    mni: bool | None = None,
    cmap: str = "RdBu_r",
    vmax: float | None = None,
    bg_img: Any = None,
    stamp: str | None = None,
    out_path: str | os.PathLike[str] | None = None,
):
    """Draw a volume of responses with nilearn.

    Parameters
    ----------
    image : nibabel image or path
        3-D, or 4-D with one volume per stimulus (``index`` picks it), e.g. ``model.to_nifti(responses)``.
    kind : {"stat", "glass"}
        ``"stat"``: orthogonal slices through the peak (``plot_stat_map``) on the MNI152 template, on
        ``bg_img``, or (subject space without ``bg_img``) a projection in the subject's grid;
        ``"glass"``: a glass brain (``plot_glass_brain``; MNI152 images only).
    index : int
        Volume (stimulus) of a 4-D image.
    title : str, optional
        Written above the panels (never over nilearn's orientation letters).
    units : str, optional
        Colour-bar label (default ``"predicted response (a.u.)"``; see :func:`response_units`).
    threshold : float, optional
        Values with ``|v| < threshold`` are not drawn. Default: only exact zeros and NaN (voxels the
        model does not predict) are hidden.
    mni : bool, optional
        Draw on the MNI152 template; default: when the grid is a known MNI152 grid (:func:`is_mni`).
    cmap : str
        Diverging colour map, symmetric around 0.
    vmax : float, optional
        Colour-bar limit (default: the largest ``|value|``).
    bg_img : nibabel image or path, optional
        The subject's anatomical or mean functional image, for subject-space maps.
    stamp : str, optional
        A red mark such as ``"UNTRAINED BACKBONE"`` (:func:`figure_stamp` gives it for a model).
    out_path : path, optional
        Write the figure there (``.png``, ``.svg`` or ``.pdf``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if kind not in ("stat", "glass"):
        raise InvalidParameterError(f"kind={kind!r} is not valid for volumes; valid: 'stat', 'glass'")
    img = _one_volume(image, index)
    data = np.asarray(img.dataobj)
    threshold, vmax = _scale(data, threshold, vmax)
    data[~np.isfinite(data)] = 0.0  # not predicted: hidden by the threshold
    mni = is_mni(img) if mni is None else mni
    if kind == "glass" and not mni:
        raise InvalidParameterError(
            "a glass brain needs an MNI152 image; use kind='stat' for subject-space maps (drawn on bg_img, "
            "or as a glass-brain-style projection in the subject's grid)"
        )
    units = units or _DEFAULT_UNITS
    rect = (0.0, 0.02, 1.0, 0.98 - _TITLE_BAND)
    if mni or bg_img is not None:
        _, datasets = _nilearn()
        bg = _load(bg_img) if bg_img is not None else datasets.load_mni152_template(resolution=2)
        fig = _figure(figsize=(10, 4.0), facecolor="black")
        _nilearn_volume(fig, rect, img, kind=kind, threshold=threshold, vmax=vmax, cmap=cmap, units=units, bg_img=bg)
        _title(fig, title, color="white")
    else:
        fig = _figure(figsize=(10, 4.0), facecolor="white")
        # NaN again for the projection: it draws the predicted voxels' silhouette
        _projection(fig, rect, _one_volume(image, index), threshold=threshold, vmax=vmax, cmap=cmap, units=units)
        _title(fig, title)
        fig.text(
            0.01, 0.01, "subject space, no anatomy given: largest |value| along each axis", fontsize=8, color="0.35"
        )
    _stamp(fig, stamp)
    _save(fig, out_path)
    return fig


def _stimulus_pixels(stimulus: Any) -> np.ndarray:
    """An RGB array of a stimulus given as a path, a PIL image or an array ((H, W, 3) or (3, H, W))."""
    if isinstance(stimulus, (str, os.PathLike)):
        from PIL import Image

        with Image.open(os.fspath(stimulus)) as im:
            return np.asarray(im.convert("RGB"))
    if hasattr(stimulus, "convert"):  # PIL
        return np.asarray(stimulus.convert("RGB"))
    arr = np.asarray(stimulus)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim not in (2, 3):
        raise InvalidParameterError(f"a stimulus image must be (H, W, 3) or (3, H, W); got shape {arr.shape}")
    return arr


def plot_stimulus_maps(
    stimulus: Any,
    image: Any,
    *,
    index: int = 0,
    title: str | None = None,
    units: str | None = None,
    threshold: float | None = None,
    vmax: float | None = None,
    bg_img: Any = None,
    stamp: str | None = None,
    cmap: str = "RdBu_r",
    out_path: str | os.PathLike[str] | None = None,
):
    """The stimulus beside its predicted brain map: a stat map and a glass brain on MNI152.

    On an MNI152 grid: the image at the left, nilearn's statistical map (three slices through the
    peak, on the MNI152 template) and glass brain at the right, one colour bar each in ``units``. In
    subject space: the map on ``bg_img`` (anatomy or mean image) when given, else the glass-brain-style
    projection of :func:`plot_volume`.

    Parameters
    ----------
    stimulus : path, PIL image or array
        What the model saw.
    image : nibabel image or path
        3-D or 4-D responses (``index`` picks the volume of this stimulus).
    index, title, units, threshold, vmax, bg_img, stamp, cmap, out_path
        As in :func:`plot_volume`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    pixels = _stimulus_pixels(stimulus)
    img = _one_volume(image, index)
    data = np.asarray(img.dataobj)
    threshold, vmax = _scale(data, threshold, vmax)
    units = units or _DEFAULT_UNITS
    mni = is_mni(img)
    fig = _figure(figsize=(14, 5.6), facecolor="white")
    top = 0.98 - _TITLE_BAND
    pic = fig.add_axes((0.01, 0.08, 0.22, top - 0.1))
    pic.imshow(pixels)
    pic.set_axis_off()
    pic.set_title("stimulus", fontsize=10)
    maps = (0.25, 0.0, 0.75, top)
    if mni or bg_img is not None:
        _, datasets = _nilearn()
        bg = _load(bg_img) if bg_img is not None else datasets.load_mni152_template(resolution=2)
        zeroed = _one_volume(img, 0)
        np.asarray(zeroed.dataobj)[~np.isfinite(np.asarray(zeroed.dataobj))] = 0.0
        upper = (maps[0], maps[1] + maps[3] / 2, maps[2], maps[3] / 2)
        lower = (maps[0], maps[1], maps[2], maps[3] / 2)
        # the stat map on a black panel (nilearn's template colours), the glass brain on white
        from matplotlib.patches import Rectangle

        fig.patches.append(Rectangle(upper[:2], upper[2], upper[3], transform=fig.transFigure, fc="black", zorder=-1))
        common = dict(threshold=threshold, vmax=vmax, cmap=cmap, units=units)
        _nilearn_volume(fig, upper, zeroed, kind="stat", bg_img=bg, **common)
        if mni:
            _nilearn_volume(fig, lower, zeroed, kind="glass", black_bg=False, **common)
        else:
            _projection(fig, lower, img, **common)
    else:
        _projection(fig, maps, img, threshold=threshold, vmax=vmax, cmap=cmap, units=units)
        fig.text(0.25, 0.01, "subject space, no anatomy given: largest |value| along each axis", fontsize=8)
    _title(fig, title)
    _stamp(fig, stamp)
    _save(fig, out_path)
    return fig


# ------------------------------------------------------------------------------------------ surfaces


def _fsaverage_files_present(name: str) -> Path | None:
    """nilearn's folder holding the ``name`` meshes, where its inflated meshes and sulcal maps already are."""
    from nilearn.datasets.utils import get_data_dirs

    needed = ("infl_left.gii.gz", "infl_right.gii.gz", "sulc_left.gii.gz", "sulc_right.gii.gz")
    for root in get_data_dirs():
        folder = Path(root) / name
        if all((folder / f).is_file() for f in needed):
            return folder
    return None


def _template_mesh(template: str, mesh: Any) -> tuple[Any, Any, str | None]:
    """``(inflated mesh, sulcal depth or None, note)`` of a template; ``note`` says what stands in for it."""
    if mesh is not None:
        return mesh, None, None
    plotting, datasets = _nilearn()
    name = "fsaverage" if template == "fsaverage7" else template
    if name not in _FSAVERAGE_VERTICES:
        raise InvalidParameterError(
            f"berg draws the fsaverage templates ({', '.join(_FSAVERAGE_VERTICES)}) with nilearn's meshes; "
            f"for {template!r} pass mesh= (a nilearn PolyMesh or {{'left': file, 'right': file}})"
        )
    if name != "fsaverage5":
        from berg.env import env_flag

        have = _fsaverage_files_present(name)
        reason = None
        if have is None and env_flag("BERG_OFFLINE"):
            reason = "berg is offline (BERG_OFFLINE) and nilearn's data folder does not hold it"
        else:
            import contextlib
            import io

            chatter = io.StringIO()  # nilearn prints its fetching steps on stdout: berg's log gets them
            try:  # nilearn downloads it once (from OSF) into its data folder where there is network
                with contextlib.redirect_stdout(chatter):
                    mesh_found = (
                        datasets.load_fsaverage(name).inflated,
                        datasets.load_fsaverage_data(mesh=name, mesh_type="inflated", data_type="sulcal"),
                        None,
                    )
                return mesh_found
            except Exception as exc:  # requests/urllib/OS errors: nilearn does not narrow them
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            finally:
                if chatter.getvalue().strip():
                    log.info("nilearn: %s", " | ".join(chatter.getvalue().strip().splitlines()))
        from nilearn.datasets.utils import get_data_dirs

        missing = (
            f"nilearn's {name} mesh ({_FSAVERAGE_VERTICES[name]:,} vertices per hemisphere: infl_left/right.gii.gz "
            f"and sulc_left/right.gii.gz in {Path(get_data_dirs()[0]) / name}, fetched by "
            f"nilearn.datasets.load_fsaverage({name!r}) from OSF) is not available ({reason})"
        )
        log.warning("%s; drawing on fsaverage5, whose 10,242 vertices are the first 10,242 of %s", missing, name)
        note = f"drawn on fsaverage5 (its 10,242 vertices are the first of {name}'s): {name} mesh not available"
        return datasets.load_fsaverage("fsaverage5").inflated, _fsaverage5_sulc(datasets), note
    return datasets.load_fsaverage("fsaverage5").inflated, _fsaverage5_sulc(datasets), None


def _fsaverage5_sulc(datasets: Any) -> Any:
    return datasets.load_fsaverage_data(mesh="fsaverage5", mesh_type="inflated", data_type="sulcal")


def plot_surface(
    responses: Mapping[str, np.ndarray],
    *,
    template: str = "fsaverage5",
    mesh: Any = None,
    title: str | None = None,
    units: str | None = None,
    threshold: float | None = None,
    cmap: str = "RdBu_r",
    stamp: str | None = None,
    out_path: str | os.PathLike[str] | None = None,
):
    """Draw per-vertex responses on both hemispheres (lateral and medial views).

    Parameters
    ----------
    responses : dict
        ``{"lh": (n_vertices_lh,), "rh": (n_vertices_rh,)}`` on the full template mesh, NaN where
        the model predicts nothing (``space.to_mesh(responses)`` gives this, one row per stimulus).
    template : str
        ``"fsaverage5"`` (ships with nilearn) or ``"fsaverage"``/``"fsaverage6"`` (nilearn's datasets
        download them once). Where the finer mesh cannot be had, the responses of fsaverage5's vertices
        (the first 10,242 of every finer fsaverage) are drawn on fsaverage5, and the figure says so.
    mesh : nilearn PolyMesh or dict, optional
        The mesh for other templates (``.parts`` ``left``/``right``, or ``{"left": ..., "right": ...}``).
    title, units, threshold, cmap, stamp, out_path
        As in :func:`plot_volume`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plotting, _ = _nilearn()
    import mpl_toolkits.mplot3d  # noqa: F401 - registers the "3d" projection

    values = {h: np.asarray(responses[h], dtype=np.float32).ravel() for h in ("lh", "rh") if h in responses}
    if not values:
        raise InvalidParameterError("responses must hold 'lh' and/or 'rh' vertex values")
    expected = _FSAVERAGE_VERTICES.get(template)
    if mesh is None and expected is not None:
        for h, v in values.items():
            if v.size != expected:
                raise InvalidParameterError(f"{h} has {v.size:,} values; the {template} mesh has {expected:,} vertices")
    surf, sulc, note = _template_mesh(template, mesh)
    if note is not None:  # fsaverage5's vertices are the first 10,242 of the finer (nested) mesh
        values = {h: v[: _FSAVERAGE_VERTICES["fsaverage5"]] for h, v in values.items()}
    parts = getattr(surf, "parts", surf)
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
    if not finite.size or not np.any(finite):
        raise InvalidParameterError("the surface responses have no finite non-zero value to draw")
    peak = float(np.abs(finite).max())
    threshold = peak * 1e-6 if threshold is None else float(threshold)
    views = [(h, view) for h in values for view in ("lateral", "medial")]
    fig = _figure(figsize=(2.6 * len(views) + 1, 3.2))
    axes = fig.subplots(1, len(views), subplot_kw={"projection": "3d"})
    fig.subplots_adjust(left=0, right=0.9, bottom=0.04, top=0.98 - _TITLE_BAND, wspace=0)
    axes = np.atleast_1d(axes)
    for ax, (h, view) in zip(axes, views):
        side = "left" if h == "lh" else "right"
        part = parts[side]
        n = getattr(part, "n_vertices", None)
        if n is not None and values[h].size != n:
            raise InvalidParameterError(f"{h} has {values[h].size} values; the {template} mesh has {n} vertices")
        bg = getattr(sulc, "data", None)
        bg = None if bg is None else np.asarray(bg.parts[side])
        plotting.plot_surf_stat_map(
            part,
            np.nan_to_num(values[h]),
            bg_map=bg,
            hemi=side,
            view=view,
            threshold=threshold,
            cmap=cmap,
            vmax=peak,
            symmetric_cbar=True,
            colorbar=False,
            axes=ax,
            figure=fig,
        )
        ax.set_title(f"{h} {view}", fontsize=9)
    import matplotlib as mpl

    norm = mpl.colors.Normalize(-peak, peak)
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.6, pad=0.02)
    bar.set_label(units or _DEFAULT_UNITS)
    _title(fig, title)
    if note:
        fig.text(0.01, 0.01, note, fontsize=8, color="0.3")
    _stamp(fig, stamp)
    _save(fig, out_path)
    return fig


# ------------------------------------------------------------------------------------------ files


def _sidecar(path: Path) -> dict[str, Any]:
    """The JSON written beside a NIfTI (stimulus list, units), if any."""
    stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
    for candidate in (path.with_name(stem + ".json"), path.with_name(path.name + ".json")):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, ValueError):
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def _units_of_file(units: Any, provenance: Any) -> str | None:
    """The file's units, corrected for group maps written before berg recorded them as z."""
    options = provenance.get("options") if isinstance(provenance, Mapping) else None
    if isinstance(options, Mapping) and options.get("space") == "mni":
        return GROUP_MAP_UNITS
    return str(units) if units else None


def _stimulus_label(ids: Any, index: int) -> str | None:
    if isinstance(ids, (list, tuple)) and -len(ids) <= index < len(ids):
        return Path(str(ids[index])).name
    return None


def _h5_group(path: Path, subject: Any):
    """``(responses (n, n_outputs), space, units, stimulus_ids, label, provenance)`` of one subject of a berg
    HDF5 file."""
    import h5py

    from berg.io import load_responses

    data = load_responses(path)
    groups = list(data["responses"])
    if not groups:
        raise InvalidParameterError(f"{path} holds no responses (not written by berg encode / berg.save)")
    if subject is None:
        if len(groups) > 1:
            raise InvalidParameterError(
                f"{path} holds several subjects ({', '.join(groups)}); choose one with --subject / subject="
            )
        key = groups[0]
    else:
        key = str(subject)
        if key not in data["responses"]:
            raise InvalidParameterError(f"{path} has no subject {subject!r}; it holds {', '.join(groups)}")
    space = data["spaces"].get(key)
    if space is None:
        raise InvalidParameterError(
            f"{path} does not record its output space (written by an older berg); encode again, or write "
            "NIfTI: berg encode ... -o OUT.nii.gz"
        )
    responses = space.flatten(np.asarray(data["responses"][key], dtype=np.float32))
    units = None
    with h5py.File(path, "r") as f:  # units sit on the responses dataset
        for group in f.values():
            if isinstance(group, h5py.Group) and str(group.attrs.get("subject")) == key:
                units = group["responses"].attrs.get("units")
    units = units.decode() if isinstance(units, bytes) else units
    label = "group" if key == "group" else f"subject {key}"
    provenance = data.get("provenance") or {}
    return responses, space, _units_of_file(units, provenance), data["stimulus_ids"], label, provenance


def plot_file(
    path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    kind: str = "auto",
    index: int = 0,
    subject: Any = None,
    threshold: float | None = None,
    title: str | None = None,
    units: str | None = None,
) -> str:
    """Plot one stimulus of a responses file (``berg plot``); returns a one-line description.

    Parameters
    ----------
    path : path
        ``.nii``/``.nii.gz`` (3-D or 4-D) or ``.h5`` written by ``berg encode`` / :func:`berg.save`.
    out_path : path
        ``.png``, ``.svg`` or ``.pdf`` to write.
    kind : {"auto", "stat", "glass", "surface"}
        ``auto``: a statistical map for volumes, both hemispheres for surfaces.
    index : int
        Stimulus to draw.
    subject : optional
        Group of an HDF5 file holding several subjects.
    threshold, title, units
        As in :func:`plot_volume` (units default to the file's). Figures of responses from an untrained
        backbone or a synthetic model carry the stamp of :func:`figure_stamp`.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        side = _sidecar(path)
        label = _stimulus_label(side.get("volumes") or side.get("stimulus_ids"), index)
        title = title or f"{path.name}" + (f" — {label}" if label else f" — volume {index}")
        plot_volume(
            img,
            kind="stat" if kind == "auto" else kind,
            index=index,
            title=title,
            units=units or _units_of_file(side.get("units"), side.get("provenance")),
            threshold=threshold,
            stamp=figure_stamp(side.get("provenance") or {}, side.get("units")),
            out_path=out_path,
        )
        where = "MNI152 template" if is_mni(img) else "subject grid"
        return f"{'glass brain' if kind == 'glass' else 'stat map'} of volume {index} on the {where}"
    if not name.endswith((".h5", ".hdf5")):
        raise InvalidParameterError(f"plot_file reads .nii, .nii.gz, .h5 or .hdf5 files; got {path.name!r}")
    responses, space, file_units, ids, group, provenance = _h5_group(path, subject)
    n = responses.shape[0]
    if not -n <= index < n:
        raise InvalidParameterError(f"index={index} but {path.name} holds {n} stimuli (0..{n - 1})")
    label = _stimulus_label(ids, index) or f"stimulus {index}"
    title = title or f"{path.name} — {group} — {label}"
    units = units or file_units
    stamp = figure_stamp(provenance, file_units)
    if space.kind == "volume":
        img = space.to_nifti(responses[index])
        plot_volume(
            img,
            kind="stat" if kind == "auto" else kind,
            title=title,
            units=units,
            threshold=threshold,
            stamp=stamp,
            out_path=out_path,
        )
        info = f"stat map of stimulus {index} ({group}) on the {'MNI152 template' if is_mni(img) else 'subject grid'}"
    elif space.kind == "surface":
        if kind not in ("auto", "surface"):
            raise InvalidParameterError(f"kind={kind!r} does not apply to surface responses; use 'surface'")
        mesh = {h: v[0] for h, v in space.to_mesh(responses[index : index + 1]).items()}
        plot_surface(
            mesh,
            template=space.template,
            title=title,
            units=units,
            threshold=threshold,
            stamp=stamp,
            out_path=out_path,
        )
        info = f"surface map of stimulus {index} ({group}) on {space.template}"
    else:
        raise InvalidParameterError(
            f"{path.name} holds a {space.kind} space; berg plot draws volumes and surfaces "
            "(plot other outputs with matplotlib from berg.load_responses)"
        )
    return info
