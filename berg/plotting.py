"""Brain maps people recognise, drawn with nilearn; every function returns a matplotlib figure.

* MNI volumes (a group map on the MNI152 2 mm grid): :func:`plot_volume` draws a statistical map on
  nilearn's MNI152 template (``kind="stat"``, three orthogonal slices with L/R marks and mm
  coordinates) or a glass brain (``kind="glass"``).
* Subject-space volumes: the same statistical map on the subject's own grid, without a template
  (berg has no anatomy for it), still oriented by the image's affine.
* Surfaces: :func:`plot_surface` draws both hemispheres (lateral and medial) on the template's
  inflated mesh (``fsaverage5`` ships with nilearn; other meshes are passed in).
* :func:`plot_file` reads what ``berg encode`` wrote (NIfTI or HDF5) and picks the right one; it is
  what ``berg plot`` runs.

Voxels or vertices that a model does not predict are NaN in berg's outputs and are not drawn. The
colour bar is labelled with the response units (the model card's ``output.units``). Nothing is shown
or printed: figures are returned, and written (atomically) when ``out_path`` is given.
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

__all__ = ["plot_volume", "plot_surface", "plot_file", "is_mni", "plot_volume_slices"]

log = logging.getLogger(__name__)

_DEFAULT_UNITS = "predicted response (a.u.)"
# Grids berg calls MNI152: FSL's 2 mm and 1 mm templates (what img2fmri and most atlases use) and
# nilearn's 2 mm MNI152 2009 grid.
_MNI_GRIDS = (
    ((91, 109, 91), np.array([[-2, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]], float)),
    ((182, 218, 182), np.array([[-1, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]], float)),
    ((99, 117, 95), np.array([[2, 0, 0, -98], [0, 2, 0, -134], [0, 0, 2, -72], [0, 0, 0, 1]], float)),
)
_PLOT_SUFFIXES = (".png", ".svg", ".pdf")


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


def _save(fig: Any, out_path: str | os.PathLike[str] | None, dpi: int = 120) -> None:
    if out_path is None:
        return
    from berg.errors import check_output_path
    from berg.fsutil import atomic_path

    path = check_output_path(out_path, _PLOT_SUFFIXES, what="out_path")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, path.suffix) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip("."), facecolor=fig.get_facecolor())


def _label_colorbar(display: Any, units: str) -> None:
    cbar = getattr(display, "_cbar", None)  # nilearn keeps the matplotlib Colorbar here
    if cbar is not None:  # on the bar's left: nilearn puts the bar at the figure's right edge
        cbar.ax.yaxis.set_label_position("left")
        cbar.set_label(units, color="white", fontsize=9)


def _one_volume(image: Any, index: int):
    import nibabel as nib

    img = nib.load(os.fspath(image)) if isinstance(image, (str, os.PathLike)) else image
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
    out_path: str | os.PathLike[str] | None = None,
):
    """Draw a volume of responses with nilearn.

    Parameters
    ----------
    image : nibabel image or path
        3-D, or 4-D with one volume per stimulus (``index`` picks it), e.g. ``model.to_nifti(responses)``.
    kind : {"stat", "glass"}
        ``"stat"``: orthogonal slices through the peak (``plot_stat_map``); ``"glass"``: a glass brain
        (``plot_glass_brain``, MNI images only).
    index : int
        Volume (stimulus) of a 4-D image.
    title : str, optional
    units : str, optional
        Colour-bar label (default ``"predicted response (a.u.)"``).
    threshold : float, optional
        Values with ``|v| < threshold`` are not drawn. Default: only exact zeros and NaN (voxels the
        model does not predict) are hidden.
    mni : bool, optional
        Draw on the MNI152 template; default: when the grid is a known MNI152 grid (:func:`is_mni`).
    cmap : str
        Diverging colour map, symmetric around 0.
    vmax : float, optional
        Colour-bar limit (default: the largest ``|value|``).
    out_path : path, optional
        Write the figure there (``.png``, ``.svg`` or ``.pdf``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plotting, datasets = _nilearn()
    img = _one_volume(image, index)
    data = np.asarray(img.dataobj)
    finite = np.isfinite(data)
    if not finite.any() or not np.any(data[finite]):
        raise InvalidParameterError("the volume has no finite non-zero value to draw")
    peak = float(np.abs(data[finite]).max())
    data[~finite] = 0.0  # not predicted: hidden by the threshold below
    # nilearn turns NaN into 0 and hides |v| < threshold: a tiny default hides exactly the voxels the
    # model does not predict, without hiding small predictions.
    threshold = peak * 1e-6 if threshold is None else float(threshold)
    mni = is_mni(img) if mni is None else mni
    units = units or _DEFAULT_UNITS
    fig = _figure(figsize=(10, 3.6), facecolor="black")
    common = dict(
        figure=fig,
        colorbar=True,
        threshold=threshold,
        cmap=cmap,
        vmax=vmax or peak,
        symmetric_cbar=True,
        title=title,
        black_bg=True,
    )
    if kind == "glass":
        if not mni:
            raise InvalidParameterError("a glass brain needs an MNI152 image; use kind='stat' for subject-space maps")
        display = plotting.plot_glass_brain(img, plot_abs=False, **common)
    elif kind == "stat":
        bg = datasets.load_mni152_template(resolution=2) if mni else None
        display = plotting.plot_stat_map(img, bg_img=bg, draw_cross=False, annotate=True, **common)
    else:
        raise InvalidParameterError(f"kind={kind!r} is not valid for volumes; valid: 'stat', 'glass'")
    _label_colorbar(display, units)
    if not mni:
        fig.text(0.01, 0.02, "subject space (no template); L/R and mm from the image's affine", color="0.7", fontsize=8)
    _save(fig, out_path)
    return fig


def _template_mesh(template: str, mesh: Any):
    if mesh is not None:
        return mesh, None
    plotting, datasets = _nilearn()
    if template != "fsaverage5":
        raise InvalidParameterError(
            f"berg can draw the {template!r} template only with its mesh: pass mesh= (a nilearn PolyMesh "
            f"or {{'left': file, 'right': file}}); nilearn ships only fsaverage5 "
            f"(nilearn.datasets.load_fsaverage({template!r}) downloads {template})"
        )
    inflated = datasets.load_fsaverage("fsaverage5").inflated
    sulc = datasets.load_fsaverage_data(mesh="fsaverage5", mesh_type="inflated", data_type="sulcal")
    return inflated, sulc


def plot_surface(
    responses: Mapping[str, np.ndarray],
    *,
    template: str = "fsaverage5",
    mesh: Any = None,
    title: str | None = None,
    units: str | None = None,
    threshold: float | None = None,
    cmap: str = "RdBu_r",
    out_path: str | os.PathLike[str] | None = None,
):
    """Draw per-vertex responses on both hemispheres (lateral and medial views).

    Parameters
    ----------
    responses : dict
        ``{"lh": (n_vertices_lh,), "rh": (n_vertices_rh,)}`` on the full template mesh, NaN where
        the model predicts nothing (``space.to_mesh(responses)`` gives this, one row per stimulus).
    template : str
        Template name; ``fsaverage5`` is drawn with nilearn's bundled mesh.
    mesh : nilearn PolyMesh or dict, optional
        The mesh for other templates (``.parts`` ``left``/``right``, or ``{"left": ..., "right": ...}``).
    title, units, threshold, cmap, out_path
        As in :func:`plot_volume`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plotting, _ = _nilearn()
    import mpl_toolkits.mplot3d  # noqa: F401 - registers the "3d" projection

    surf, sulc = _template_mesh(template, mesh)
    parts = getattr(surf, "parts", surf)
    values = {h: np.asarray(responses[h], dtype=np.float32).ravel() for h in ("lh", "rh") if h in responses}
    if not values:
        raise InvalidParameterError("responses must hold 'lh' and/or 'rh' vertex values")
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
    if not finite.size or not np.any(finite):
        raise InvalidParameterError("the surface responses have no finite non-zero value to draw")
    peak = float(np.abs(finite).max())
    threshold = peak * 1e-6 if threshold is None else float(threshold)
    views = [(h, view) for h in values for view in ("lateral", "medial")]
    fig = _figure(figsize=(2.6 * len(views) + 1, 2.8))
    axes = fig.subplots(1, len(views), subplot_kw={"projection": "3d"})
    fig.subplots_adjust(left=0, right=0.9, bottom=0, top=0.85, wspace=0)  # meshes fill their panels
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
    if title:
        fig.suptitle(title)
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


def _stimulus_label(ids: Any, index: int) -> str | None:
    if isinstance(ids, (list, tuple)) and -len(ids) <= index < len(ids):
        return Path(str(ids[index])).name
    return None


def _h5_group(path: Path, subject: Any):
    """``(responses (n, n_outputs), space, units, stimulus_ids, label)`` of one subject of a berg HDF5 file."""
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
    return responses, space, units, data["stimulus_ids"], label


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
        As in :func:`plot_volume` (units default to the file's).
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
            units=units or side.get("units"),
            threshold=threshold,
            out_path=out_path,
        )
        where = "MNI152 template" if is_mni(img) else "subject grid"
        return f"{'glass brain' if kind == 'glass' else 'stat map'} of volume {index} on the {where}"
    if not name.endswith((".h5", ".hdf5")):
        raise InvalidParameterError(f"plot_file reads .nii, .nii.gz, .h5 or .hdf5 files; got {path.name!r}")
    responses, space, file_units, ids, group = _h5_group(path, subject)
    n = responses.shape[0]
    if not -n <= index < n:
        raise InvalidParameterError(f"index={index} but {path.name} holds {n} stimuli (0..{n - 1})")
    label = _stimulus_label(ids, index) or f"stimulus {index}"
    title = title or f"{path.name} — {group} — {label}"
    units = units or file_units
    if space.kind == "volume":
        img = space.to_nifti(responses[index])
        plot_volume(
            img,
            kind="stat" if kind == "auto" else kind,
            title=title,
            units=units,
            threshold=threshold,
            out_path=out_path,
        )
        info = f"stat map of stimulus {index} ({group}) on the {'MNI152 template' if is_mni(img) else 'subject grid'}"
    elif space.kind == "surface":
        if kind not in ("auto", "surface"):
            raise InvalidParameterError(f"kind={kind!r} does not apply to surface responses; use 'surface'")
        mesh = {h: v[0] for h, v in space.to_mesh(responses[index : index + 1]).items()}
        plot_surface(mesh, template=space.template, title=title, units=units, threshold=threshold, out_path=out_path)
        info = f"surface map of stimulus {index} ({group}) on {space.template}"
    else:
        raise InvalidParameterError(
            f"{path.name} holds a {space.kind} space; berg plot draws volumes and surfaces "
            "(plot other outputs with matplotlib from berg.load_responses)"
        )
    return info


def plot_volume_slices(
    image: Any,
    *,
    title: str = "",
    out_path: str | Path | None = None,
    volume_index: int = 0,
    cmap: str = "RdBu_r",
):
    """Orthogonal voxel-index slices through the largest ``|value|`` (no anatomy; a quick look).

    Prefer :func:`plot_volume`, which draws on the MNI152 template with orientation and units; this
    helper stays for grids that are not brains (synthetic test models).

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
    data = np.asarray(image.dataobj[...] if hasattr(image, "dataobj") else image, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., volume_index]
    if data.ndim != 3:
        raise InvalidParameterError(f"expected a 3-D or 4-D volume, got shape {data.shape}")
    if not np.isfinite(data).any():
        raise InvalidParameterError("the volume has no finite value to draw")
    i, j, k = np.unravel_index(int(np.nanargmax(np.abs(data))), data.shape)
    vmax = float(np.nanmax(np.abs(data))) or 1.0
    fig = _figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 3)
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
        from berg.fsutil import atomic_path

        with atomic_path(out_path, ".png") as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    return fig
