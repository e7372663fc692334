"""Output spaces: what the columns of a model's responses are, and how to put them back in a brain.

A model's readout produces a flat vector of outputs per stimulus; its *space* says what those outputs
are, which selections apply to them, what shape ``encode`` returns and how to write them out:

================  ===========================================  ===========================  ==========
kind              outputs                                      ``encode`` per stimulus      writers
================  ===========================================  ===========================  ==========
``flat``          named outputs (parcels, units)               ``(n_outputs,)``             HDF5
``volume``        voxels ``(i, j, k)`` of a grid with affine   ``(n_outputs,)``             NIfTI
``surface``       vertices of a template, per hemisphere       ``(n_lh + n_rh,)``           GIfTI
``sensor_time``   channels x time points (x repetitions)       ``(n_reps, n_ch, n_times)``  HDF5
================  ===========================================  ===========================  ==========

Selections are *pushed down*: :meth:`OutputSpace.narrow` turns a validated selection into the readout
rows to keep (before any matmul) and the space of what remains. Each kind declares its selection keys
(:attr:`OutputSpace.SELECTION_KEYS`); the registry validates them against the card before any I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from berg.errors import InvalidParameterError, ModelLoadError

__all__ = [
    "OutputSpace",
    "FlatSpace",
    "VolumeSpace",
    "SurfaceSpace",
    "SensorTimeSpace",
    "SPACE_KINDS",
    "register_space",
    "space_class",
    "space_from_dict",
    "mask_voxel_indices",
    "roi_rows",
]


VOXEL_ORDERS = ("c", "fortran")


def mask_voxel_indices(mask: np.ndarray, order: str = "c") -> np.ndarray:
    """Flat (C-order) indices of a 3-D mask's voxels, enumerated in ``order``.

    ``"c"`` is numpy's ``volume[mask]`` order (last axis fastest); ``"fortran"`` enumerates the first
    axis fastest (MATLAB/SPM column-major order).
    """
    mask = np.asarray(mask, dtype=bool)
    order = order.lower()
    if order == "c":
        return np.flatnonzero(mask)
    if order in ("f", "fortran"):
        return np.ravel_multi_index(np.nonzero(mask.transpose(2, 1, 0))[::-1], mask.shape)
    raise InvalidParameterError(f"voxel order {order!r}; valid: {', '.join(VOXEL_ORDERS)}")


def roi_rows(rois: Sequence[str], roi_indices: Mapping[str, np.ndarray], n_outputs: int) -> np.ndarray:
    """Sorted unique output rows of the union of ``rois`` (indices from the artifact's metadata)."""
    missing = [r for r in rois if r not in roi_indices]
    if missing:
        raise ModelLoadError(
            f"ROI(s) {missing} are declared in the card but absent from the artifact; "
            f"artifact ROIs: {', '.join(roi_indices) or 'none'}"
        )
    parts = [np.asarray(roi_indices[r], dtype=np.int64).ravel() for r in rois]
    rows = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n_outputs):
        raise ModelLoadError(f"ROI indices of {list(rois)} fall outside the {n_outputs} outputs")
    return rows


def _one_hot_rows(vec: np.ndarray, n: int, key: str) -> np.ndarray:
    vec = np.asarray(vec)
    if vec.shape != (n,):
        raise InvalidParameterError(f"selection[{key!r}] has length {vec.shape}; it must have exactly {n} entries")
    return np.flatnonzero(vec).astype(np.int64)


class OutputSpace:
    """What every output space provides (see the module docstring).

    Attributes
    ----------
    kind : str
        ``"flat"``, ``"volume"``, ``"surface"`` or ``"sensor_time"``.
    n_outputs : int
        Length of the flat output vector (readout rows).
    shape : tuple of int
        Shape of one stimulus' responses as ``encode`` returns them.
    dims : tuple of str
        Names of the axes after the stimulus axis.
    """

    kind: ClassVar[str] = "abstract"
    #: Selection keys this space understands, in precedence order (validated against the card by the
    #: registry before any I/O).
    SELECTION_KEYS: ClassVar[tuple[str, ...]] = ()
    #: The selection keys that take one boolean (one-hot) vector over outputs or an axis.
    VECTOR_KEYS: ClassVar[tuple[str, ...]] = ()
    #: Keys that ``roi`` overrides when both are given (BERG's precedence rule).
    ROI_OVERRIDES: ClassVar[tuple[str, ...]] = ()
    #: Writers that take this space besides HDF5 (``"nifti"``, ``"gifti"``): what ``berg.io`` offers.
    FILE_FORMATS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, desc: Mapping[str, Any], arrays: Mapping[str, np.ndarray], n_outputs: int | None) -> OutputSpace:
        """Rebuild a space of this kind from :meth:`to_dict` and :meth:`arrays` (see :func:`space_from_dict`)."""
        raise NotImplementedError  # pragma: no cover - every registered kind implements it

    # -- shape --------------------------------------------------------------------------------
    @property
    def n_outputs(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n_outputs,)

    @property
    def dims(self) -> tuple[str, ...]:
        return ("output",)

    def reshape(self, flat: np.ndarray) -> np.ndarray:
        """``(n_stimuli, n_outputs)`` -> ``(n_stimuli, *shape)`` (a view, never a copy)."""
        flat = np.asarray(flat)
        return flat.reshape((flat.shape[0], *self.shape))

    def flatten(self, responses: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`reshape`: responses of this space -> ``(n_stimuli, n_outputs)``.

        A single stimulus (``shape`` without the stimulus axis) is accepted as one row.
        """
        arr = np.asarray(responses)
        if arr.shape == self.shape:
            arr = arr[None]
        if arr.shape[1:] != self.shape:
            raise InvalidParameterError(
                f"responses have shape {np.shape(responses)}; this {self.kind} space expects "
                f"(n_stimuli, {', '.join(map(str, self.shape))})"
            )
        return arr.reshape(arr.shape[0], self.n_outputs)

    # -- selections ---------------------------------------------------------------------------
    def narrow(self, selection: Any, roi_indices: Mapping[str, np.ndarray]) -> tuple[np.ndarray | None, OutputSpace]:
        """Readout rows a validated :class:`~berg.registry.Selection` keeps, and the remaining space.

        ``None`` rows mean "all outputs" (nothing is sliced).
        """
        if selection is None or selection.is_all:
            return None, self
        if selection.get("roi") is not None:
            rows = roi_rows(selection.get("roi"), roi_indices, self.n_outputs)
            return rows, self.select(rows)
        raise InvalidParameterError(
            f"selection keys {selection.keys()} do not apply to a {self.kind} space; valid: {self.SELECTION_KEYS}"
        )

    def select(self, rows: np.ndarray | None) -> OutputSpace:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- description --------------------------------------------------------------------------
    def coords(self) -> dict[str, np.ndarray]:
        """Coordinate arrays of the outputs (written beside responses by :func:`berg.save`)."""
        return {"output_index": np.arange(self.n_outputs)}

    def split(self, responses: np.ndarray) -> dict[str, np.ndarray]:
        """Per-part views of responses (one part, ``"all"``, unless the space has parts)."""
        return {"all": np.asarray(responses)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (large index arrays go to :meth:`arrays`)."""
        raise NotImplementedError  # pragma: no cover

    def arrays(self) -> dict[str, np.ndarray]:
        """Index arrays that complete :meth:`to_dict` (stored as tensors in artifacts)."""
        return {}

    def same_as(self, other: OutputSpace) -> bool:
        """True when both spaces describe the same outputs in the same order."""
        if type(self) is not type(other) or self.to_dict() != other.to_dict():
            return False
        a, b = self.arrays(), other.arrays()
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    def to_nifti(self, responses: np.ndarray, **kwargs: Any):
        raise InvalidParameterError(
            f"this model's outputs are a {self.kind} space; NIfTI needs a volume space"
            + (" (use to_gifti)" if self.kind == "surface" else "")
        )

    def to_gifti(self, responses: np.ndarray, **kwargs: Any):
        raise InvalidParameterError(f"this model's outputs are a {self.kind} space; GIfTI needs a surface space")


# ============================================================================================ flat
@dataclass(eq=False)
class FlatSpace(OutputSpace):
    """Outputs without geometry, optionally named (parcels, units, sensors without times)."""

    n: int
    names: tuple[str, ...] | None = None
    kind: ClassVar[str] = "flat"
    SELECTION_KEYS: ClassVar[tuple[str, ...]] = ("roi", "outputs", "voxels")
    VECTOR_KEYS: ClassVar[tuple[str, ...]] = ("outputs", "voxels")
    ROI_OVERRIDES: ClassVar[tuple[str, ...]] = ("outputs", "voxels")

    @classmethod
    def from_dict(cls, desc: Mapping[str, Any], arrays: Mapping[str, np.ndarray], n_outputs: int | None) -> FlatSpace:
        return cls(int(desc.get("n_outputs", n_outputs or 0)), desc.get("names"))

    def __post_init__(self) -> None:
        self.n = int(self.n)
        if self.names is not None:
            self.names = tuple(str(x) for x in self.names)
            if len(self.names) != self.n:
                raise InvalidParameterError(f"{len(self.names)} output names for {self.n} outputs")

    @property
    def n_outputs(self) -> int:
        return self.n

    def narrow(self, selection, roi_indices):
        if selection is not None and not selection.is_all and selection.get("roi") is None:
            for key in ("voxels", "outputs"):
                if selection.get(key) is not None:
                    rows = _one_hot_rows(selection.get(key), self.n, key)
                    return rows, self.select(rows)
        return super().narrow(selection, roi_indices)

    def select(self, rows):
        if rows is None:
            return self
        names = None if self.names is None else tuple(self.names[i] for i in rows)
        return FlatSpace(len(rows), names)

    def coords(self):
        out = {"output_index": np.arange(self.n)}
        if self.names is not None:
            out["output_name"] = np.asarray(self.names, dtype=object)
        return out

    def to_dict(self):
        d: dict[str, Any] = {"kind": "flat", "n_outputs": self.n}
        if self.names is not None:
            d["names"] = list(self.names)
        return d


# ============================================================================================ volume
@dataclass(eq=False)
class VolumeSpace(OutputSpace):
    """Outputs are voxels of a 3-D grid.

    Parameters
    ----------
    shape : (int, int, int)
        Grid shape.
    affine : (4, 4) array or None
        Voxel-to-world (mm) affine of the grid; ``None`` when the artifact does not record one (then
        writing NIfTI raises an error that says how to pass one).
    voxel_ijk : (n_outputs, 3) int array
        Grid index of each output, in output order.
    """

    grid: tuple[int, int, int]
    affine: np.ndarray | None
    voxel_ijk: np.ndarray
    kind: ClassVar[str] = "volume"
    SELECTION_KEYS: ClassVar[tuple[str, ...]] = ("roi", "voxels")
    VECTOR_KEYS: ClassVar[tuple[str, ...]] = ("voxels",)
    ROI_OVERRIDES: ClassVar[tuple[str, ...]] = ("voxels",)
    FILE_FORMATS: ClassVar[tuple[str, ...]] = ("nifti",)

    @classmethod
    def from_dict(cls, desc: Mapping[str, Any], arrays: Mapping[str, np.ndarray], n_outputs: int | None) -> VolumeSpace:
        if "voxel_ijk" not in arrays:
            raise ModelLoadError("a volume space needs its voxel_ijk array")
        return cls(tuple(desc["shape"]), desc.get("affine"), arrays["voxel_ijk"])

    def __post_init__(self) -> None:
        self.grid = tuple(int(s) for s in self.grid)  # type: ignore[assignment]
        if self.affine is not None:
            self.affine = np.asarray(self.affine, dtype=np.float64)
            if self.affine.shape != (4, 4):
                raise InvalidParameterError(f"volume affine must be 4x4, got {self.affine.shape}")
        self.voxel_ijk = np.asarray(self.voxel_ijk, dtype=np.int64)
        if len(self.grid) != 3:
            raise InvalidParameterError(f"volume grid must be 3-D, got {self.grid}")
        if self.voxel_ijk.ndim != 2 or self.voxel_ijk.shape[1] != 3:
            raise InvalidParameterError(f"voxel_ijk must be (n, 3), got {self.voxel_ijk.shape}")
        if self.voxel_ijk.size and ((self.voxel_ijk < 0).any() or (self.voxel_ijk >= np.array(self.grid)).any()):
            raise InvalidParameterError(f"voxel_ijk has indices outside the grid {self.grid}")

    @classmethod
    def from_mask(cls, mask: np.ndarray, affine: np.ndarray | None, *, order: str = "c") -> VolumeSpace:
        """Outputs = the mask's non-zero voxels, enumerated in ``order`` (see :func:`mask_voxel_indices`)."""
        mask = np.asarray(mask) != 0
        flat = mask_voxel_indices(mask, order)
        return cls(mask.shape, affine, np.stack(np.unravel_index(flat, mask.shape), axis=1))

    @property
    def n_outputs(self) -> int:
        return int(self.voxel_ijk.shape[0])

    def narrow(self, selection, roi_indices):
        if selection is not None and not selection.is_all and selection.get("roi") is None:
            if selection.get("voxels") is not None:
                rows = _one_hot_rows(selection.get("voxels"), self.n_outputs, "voxels")
                return rows, self.select(rows)
        return super().narrow(selection, roi_indices)

    def select(self, rows):
        return self if rows is None else VolumeSpace(self.grid, self.affine, self.voxel_ijk[rows])

    def mask(self) -> np.ndarray:
        """Boolean grid, true at the outputs' voxels."""
        m = np.zeros(self.grid, dtype=bool)
        m[tuple(self.voxel_ijk.T)] = True
        return m

    def coords(self):
        return {"voxel_ijk": self.voxel_ijk}

    def to_volume(self, responses: np.ndarray, *, fill: float = np.nan) -> np.ndarray:
        """Responses -> float32 ``(X, Y, Z, n_stimuli)``; a 1-D vector gives ``(X, Y, Z)``.

        Voxels outside the outputs hold ``fill`` (NaN by default, so viewers show them as empty).
        """
        arr = np.asarray(responses)
        single = arr.ndim == 1
        flat = self.flatten(arr)
        vol = np.full(self.grid + (flat.shape[0],), fill, dtype=np.float32)
        vol[tuple(self.voxel_ijk.T)] = flat.T
        return vol[..., 0] if single else vol

    def to_nifti(self, responses: np.ndarray, *, fill: float = np.nan, affine: np.ndarray | None = None):
        """Place responses on the grid as a ``nibabel.Nifti1Image``.

        Parameters
        ----------
        responses : (n_outputs,) or (n_stimuli, n_outputs) array
            A 1-D vector gives a 3-D image; a 2-D array a 4-D image with one volume per stimulus.
        fill : float
            Value outside the outputs' voxels (NaN: "not predicted").
        affine : (4, 4) array, optional
            Needed only when the model's files record no affine.
        """
        import nibabel as nib

        affine = self.affine if affine is None else np.asarray(affine, dtype=np.float64)
        if affine is None:
            raise InvalidParameterError(
                "this model's files record no affine for its voxel grid, and its card declares none; "
                "pass one: to_nifti(responses, affine=A) or berg.save_nifti(..., affine=A), e.g. A = nibabel.load(<a NIfTI "
                "of the model's grid, such as its release's group mask>).affine; `berg encode` writes HDF5 for such a model"
            )
        img = nib.Nifti1Image(self.to_volume(responses, fill=fill), affine)
        img.header.set_xyzt_units("mm")
        return img

    def to_dict(self):
        return {
            "kind": "volume",
            "shape": list(self.grid),
            "affine": None if self.affine is None else self.affine.tolist(),
        }

    def arrays(self):
        return {"voxel_ijk": self.voxel_ijk}


# ============================================================================================ surface
HEMISPHERES = ("lh", "rh")


@dataclass(eq=False)
class SurfaceSpace(OutputSpace):
    """Outputs are vertices of a surface template, left hemisphere first.

    Parameters
    ----------
    template : str
        ``"fsaverage"``, ``"fsaverage5"``, ``"fsLR32k"``... (what nilearn/FreeSurfer call it).
    vertices : dict
        ``{"lh": int array, "rh": int array}``: template vertex index of each output, per hemisphere.
    n_vertices : dict
        ``{"lh": int, "rh": int}``: vertices of the full template mesh per hemisphere.
    """

    template: str
    vertices: dict[str, np.ndarray]
    n_vertices: dict[str, int]
    kind: ClassVar[str] = "surface"
    SELECTION_KEYS: ClassVar[tuple[str, ...]] = ("roi", "lh_vertices", "rh_vertices")
    VECTOR_KEYS: ClassVar[tuple[str, ...]] = ("lh_vertices", "rh_vertices")
    ROI_OVERRIDES: ClassVar[tuple[str, ...]] = ("lh_vertices", "rh_vertices")
    FILE_FORMATS: ClassVar[tuple[str, ...]] = ("gifti",)

    @classmethod
    def from_dict(
        cls, desc: Mapping[str, Any], arrays: Mapping[str, np.ndarray], n_outputs: int | None
    ) -> SurfaceSpace:
        hemis = desc.get("hemispheres") or list(desc["n_vertices"])
        verts = {
            h: arrays[f"vertices/{h}"] if f"vertices/{h}" in arrays else np.arange(desc["n_vertices"][h]) for h in hemis
        }
        return cls(desc["template"], verts, desc["n_vertices"])

    def __post_init__(self) -> None:
        unknown = set(self.vertices) - set(HEMISPHERES)
        if unknown:
            raise InvalidParameterError(f"unknown hemisphere(s) {sorted(unknown)}; valid: {HEMISPHERES}")
        self.vertices = {
            h: np.asarray(self.vertices[h], dtype=np.int64).ravel() for h in HEMISPHERES if h in self.vertices
        }
        self.n_vertices = {h: int(n) for h, n in self.n_vertices.items()}
        for h, v in self.vertices.items():
            n = self.n_vertices.get(h)
            if n is None or (v.size and (v.min() < 0 or v.max() >= n)):
                raise InvalidParameterError(f"{h} vertex indices must lie in [0, {n}) of the {self.template} mesh")

    @classmethod
    def full(cls, template: str, n_vertices: Mapping[str, int]) -> SurfaceSpace:
        """Every vertex of the template's hemispheres."""
        return cls(template, {h: np.arange(n) for h, n in n_vertices.items()}, dict(n_vertices))

    @property
    def n_outputs(self) -> int:
        return int(sum(v.size for v in self.vertices.values()))

    def _offsets(self) -> dict[str, tuple[int, int]]:
        out, start = {}, 0
        for h, v in self.vertices.items():
            out[h] = (start, start + v.size)
            start += v.size
        return out

    def narrow(self, selection, roi_indices):
        # BERG's precedence: `roi` wins (both hemispheres); otherwise each hemisphere uses its own
        # one-hot vector if given, and all its vertices if not.
        if selection is None or selection.is_all or selection.get("roi") is not None:
            return super().narrow(selection, roi_indices)
        rows, offsets = [], self._offsets()
        for h, (a, b) in offsets.items():
            vec = selection.get(f"{h}_vertices")
            if vec is None:
                rows.append(np.arange(a, b))
            else:
                rows.append(a + _one_hot_rows(vec, b - a, f"{h}_vertices"))
        kept = np.concatenate(rows).astype(np.int64)
        return kept, self.select(kept)

    def select(self, rows):
        if rows is None:
            return self
        rows = np.asarray(rows, dtype=np.int64)
        verts = {}
        for h, (a, b) in self._offsets().items():
            mine = rows[(rows >= a) & (rows < b)]
            verts[h] = self.vertices[h][mine - a]
        if sum(v.size for v in verts.values()) != rows.size or np.any(np.diff(rows) < 0):
            raise InvalidParameterError("surface rows must be sorted (left hemisphere first) and unique")
        return SurfaceSpace(self.template, verts, self.n_vertices)

    @property
    def dims(self):
        return ("vertex",)

    def coords(self):
        hemi = np.concatenate([np.full(v.size, h, dtype=object) for h, v in self.vertices.items()])
        return {"hemisphere": hemi, "vertex": np.concatenate(list(self.vertices.values()))}

    def split(self, responses):
        """``{"lh": (..., n_lh), "rh": (..., n_rh)}`` views of responses (last axis = outputs)."""
        arr = np.asarray(responses)
        if arr.shape[-1] != self.n_outputs:
            raise InvalidParameterError(f"responses have {arr.shape[-1]} outputs; this surface has {self.n_outputs}")
        return {h: arr[..., a:b] for h, (a, b) in self._offsets().items()}

    def to_berg_tuple(self, responses) -> tuple[np.ndarray, np.ndarray]:
        """BERG's own return value for surface models: the tuple ``(lh (B, n_lh), rh (B, n_rh))``."""
        parts = self.split(responses)
        return parts["lh"], parts["rh"]

    def to_mesh(self, responses, *, fill: float = np.nan) -> dict[str, np.ndarray]:
        """Responses on the full template: ``{hemi: float32 (n_stimuli, n_vertices[hemi])}``."""
        flat = self.flatten(responses)
        out = {}
        for h, part in self.split(flat).items():
            full = np.full((flat.shape[0], self.n_vertices[h]), fill, dtype=np.float32)
            full[:, self.vertices[h]] = part
            out[h] = full
        return out

    def to_gifti(self, responses, *, fill: float = np.nan) -> dict[str, Any]:
        """One ``nibabel.gifti.GiftiImage`` per hemisphere, one data array per stimulus, full mesh."""
        from nibabel.gifti import GiftiDataArray, GiftiImage

        images = {}
        for h, full in self.to_mesh(responses, fill=fill).items():
            img = GiftiImage()
            for row in full:
                img.add_gifti_data_array(
                    GiftiDataArray(row.astype(np.float32), intent="NIFTI_INTENT_NONE", datatype="NIFTI_TYPE_FLOAT32")
                )
            img.meta["AnatomicalStructurePrimary"] = "CortexLeft" if h == "lh" else "CortexRight"
            img.meta["Template"] = self.template
            images[h] = img
        return images

    def to_dict(self):
        return {
            "kind": "surface",
            "template": self.template,
            "hemispheres": list(self.vertices),
            "n_vertices": dict(self.n_vertices),
        }

    def arrays(self):
        return {f"vertices/{h}": v for h, v in self.vertices.items()}


# ============================================================================================ sensor x time
@dataclass(eq=False)
class SensorTimeSpace(OutputSpace):
    """Outputs are channels x time points, optionally for several repetitions (EEG/MEG).

    The flat readout order is C-order of ``(n_reps, n_channels, n_times)``: repetition-major, then
    channel, then time (BERG's channel-major EEG readouts). ``encode`` returns
    ``(n_stimuli, n_reps, n_channels, n_times)`` (``(n_stimuli, n_channels, n_times)`` without a
    repetition axis) — never squeezed, also for one channel or one time point.

    Parameters
    ----------
    channels : sequence of str
        Channel names, in output order.
    times_ms : (n_times,) array
        Time of each point relative to stimulus onset, in ms.
    n_reps : int or None
        Number of repetitions (independent readouts), or ``None`` for no repetition axis.
    positions : (n_channels, 3) array, optional
        Sensor positions when known (metres, head coordinates).
    """

    channels: tuple[str, ...]
    times_ms: np.ndarray
    n_reps: int | None = None
    positions: np.ndarray | None = None
    kind: ClassVar[str] = "sensor_time"
    SELECTION_KEYS: ClassVar[tuple[str, ...]] = ("channels", "timepoints")
    VECTOR_KEYS: ClassVar[tuple[str, ...]] = ("timepoints",)

    @classmethod
    def from_dict(
        cls, desc: Mapping[str, Any], arrays: Mapping[str, np.ndarray], n_outputs: int | None
    ) -> SensorTimeSpace:
        return cls(desc["channels"], desc["times_ms"], desc.get("n_reps"), arrays.get("channel_positions"))

    def __post_init__(self) -> None:
        self.channels = tuple(str(c) for c in self.channels)
        self.times_ms = np.asarray(self.times_ms, dtype=np.float64).ravel()
        if self.n_reps is not None:
            self.n_reps = int(self.n_reps)
            if self.n_reps < 1:
                raise InvalidParameterError(f"n_reps must be >= 1, got {self.n_reps}")
        if self.positions is not None:
            self.positions = np.asarray(self.positions, dtype=np.float64)
            if self.positions.shape != (len(self.channels), 3):
                raise InvalidParameterError(f"positions must be ({len(self.channels)}, 3), got {self.positions.shape}")

    @property
    def n_outputs(self) -> int:
        return (self.n_reps or 1) * len(self.channels) * self.times_ms.size

    @property
    def shape(self):
        inner = (len(self.channels), int(self.times_ms.size))
        return inner if self.n_reps is None else (self.n_reps, *inner)

    @property
    def dims(self):
        return ("channel", "time") if self.n_reps is None else ("repetition", "channel", "time")

    def narrow(self, selection, roi_indices):
        if selection is None or selection.is_all:
            return None, self
        ch_idx = np.arange(len(self.channels))
        names = selection.get("channels")
        if names is not None:
            lookup = {c: i for i, c in enumerate(self.channels)}
            bad = [n for n in names if n not in lookup]
            if bad:
                raise InvalidParameterError(f"channel(s) {bad} not in this model; valid: {', '.join(self.channels)}")
            ch_idx = np.array([lookup[n] for n in names], dtype=np.int64)  # the user's order, duplicates kept
        t_idx = np.arange(self.times_ms.size)
        if selection.get("timepoints") is not None:
            t_idx = _one_hot_rows(selection.get("timepoints"), self.times_ms.size, "timepoints")
        n_ch, n_t = len(self.channels), self.times_ms.size
        reps = np.arange(self.n_reps or 1)
        rows = ((reps[:, None, None] * n_ch + ch_idx[None, :, None]) * n_t + t_idx[None, None, :]).ravel()
        space = SensorTimeSpace(
            tuple(self.channels[i] for i in ch_idx),
            self.times_ms[t_idx],
            self.n_reps,
            None if self.positions is None else self.positions[ch_idx],
        )
        return rows.astype(np.int64), space

    def select(self, rows):
        if rows is None:
            return self
        raise InvalidParameterError(
            "select sensor x time outputs with selection={'channels': [...], 'timepoints': ...}"
        )

    def mean_repetitions(self) -> SensorTimeSpace:
        """The space of responses averaged over repetitions (no repetition axis)."""
        return SensorTimeSpace(self.channels, self.times_ms, None, self.positions)

    def coords(self):
        out = {"channel": np.asarray(self.channels, dtype=object), "time_ms": self.times_ms}
        if self.n_reps is not None:
            out["repetition"] = np.arange(1, self.n_reps + 1)
        if self.positions is not None:
            out["channel_position"] = self.positions
        return out

    def to_dict(self):
        return {
            "kind": "sensor_time",
            "channels": list(self.channels),
            "times_ms": self.times_ms.tolist(),
            "n_reps": self.n_reps,
        }

    def arrays(self):
        return {} if self.positions is None else {"channel_positions": self.positions}


#: The output-space registry: kind -> class. Adding a kind is one class and one :func:`register_space`
#: call; :func:`space_from_dict`, the registry's selection validation, the card check and ``berg.io``
#: read from here.
SPACE_KINDS: dict[str, type[OutputSpace]] = {}


def register_space(cls: type[OutputSpace]) -> type[OutputSpace]:
    """Register an output-space class under its ``kind`` (usable as a class decorator).

    Raises
    ------
    InvalidParameterError
        When ``cls`` is not an :class:`OutputSpace` subclass, has no ``kind``, or the kind is taken by
        another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, OutputSpace)) or cls.kind in ("", "abstract"):
        raise InvalidParameterError(f"register_space takes an OutputSpace subclass with a kind, got {cls!r}")
    taken = SPACE_KINDS.get(cls.kind)
    if taken is not None and taken is not cls:
        raise InvalidParameterError(
            f"output space kind {cls.kind!r} is already registered by {taken.__module__}.{taken.__qualname__}"
        )
    SPACE_KINDS[cls.kind] = cls
    return cls


def space_class(kind: str) -> type[OutputSpace]:
    """The registered class of an output-space kind (clear error naming the valid kinds)."""
    try:
        return SPACE_KINDS[kind]
    except KeyError:
        raise InvalidParameterError(f"unknown output space kind {kind!r}; valid: {', '.join(SPACE_KINDS)}") from None


for _cls in (FlatSpace, VolumeSpace, SurfaceSpace, SensorTimeSpace):
    register_space(_cls)


def space_from_dict(
    desc: Mapping[str, Any],
    *,
    n_outputs: int | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
    voxel_ijk: np.ndarray | None = None,
) -> OutputSpace:
    """Rebuild a space from :meth:`OutputSpace.to_dict` and :meth:`OutputSpace.arrays`.

    ``n_outputs``, when given, is checked against the rebuilt space.
    """
    arrays = dict(arrays or {})
    if voxel_ijk is not None:
        arrays["voxel_ijk"] = voxel_ijk
    kind = desc.get("kind", "flat")
    if kind not in SPACE_KINDS:
        raise ModelLoadError(f"unknown output space kind {kind!r}; valid: {', '.join(SPACE_KINDS)}")
    space = SPACE_KINDS[kind].from_dict(desc, arrays, n_outputs)
    if n_outputs is not None and space.n_outputs != int(n_outputs):
        raise ModelLoadError(f"{kind} space has {space.n_outputs} outputs, the readout has {n_outputs}")
    return space
