"""Output spaces: what the columns of a model's responses are, and how to put them back in a brain.

* :class:`FlatSpace`: outputs are just numbered (sensors, parcels, vertices without geometry).
* :class:`VolumeSpace`: each output is a voxel ``(i, j, k)`` of a 3-D grid with an affine, so responses
  can be written as NIfTI images that open in nilearn/FSLeyes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError

__all__ = ["FlatSpace", "VolumeSpace", "space_from_dict", "mask_voxel_indices"]


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


def _responses_2d(responses: np.ndarray, n_outputs: int) -> tuple[np.ndarray, bool]:
    arr = np.asarray(responses)
    single = arr.ndim == 1
    if single:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != n_outputs:
        raise InvalidParameterError(
            f"responses have shape {np.shape(responses)}; expected (n_stimuli, {n_outputs}) or ({n_outputs},)"
        )
    return arr, single


@dataclass
class FlatSpace:
    """Outputs without geometry."""

    n_outputs: int
    kind: str = field(default="flat", init=False)

    def select(self, rows: np.ndarray | None) -> "FlatSpace":
        """The space of a subset of outputs."""
        return self if rows is None else FlatSpace(len(rows))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description."""
        return {"kind": "flat", "n_outputs": self.n_outputs}

    def to_nifti(self, responses: np.ndarray):
        """Flat outputs have no volume to place them in."""
        raise InvalidParameterError("this model's outputs have no volumetric space; to_nifti is not available")


@dataclass
class VolumeSpace:
    """Outputs are voxels of a 3-D grid.

    Parameters
    ----------
    shape : (int, int, int)
        Grid shape.
    affine : (4, 4) array
        Voxel-to-world (mm) affine of the grid.
    voxel_ijk : (n_outputs, 3) int array
        Grid index of each output, in output order.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    voxel_ijk: np.ndarray
    kind: str = field(default="volume", init=False)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        self.affine = np.asarray(self.affine, dtype=np.float64)
        self.voxel_ijk = np.asarray(self.voxel_ijk, dtype=np.int64)
        if len(self.shape) != 3 or self.affine.shape != (4, 4):
            raise InvalidParameterError(f"volume shape {self.shape} / affine {self.affine.shape} invalid")
        if self.voxel_ijk.ndim != 2 or self.voxel_ijk.shape[1] != 3:
            raise InvalidParameterError(f"voxel_ijk must be (n, 3), got {self.voxel_ijk.shape}")
        if self.voxel_ijk.size and (
            (self.voxel_ijk < 0).any() or (self.voxel_ijk >= np.array(self.shape)).any()
        ):
            raise InvalidParameterError(f"voxel_ijk has indices outside the grid {self.shape}")

    @classmethod
    def from_mask(cls, mask: np.ndarray, affine: np.ndarray, *, order: str = "c") -> "VolumeSpace":
        """Outputs = the mask's non-zero voxels, enumerated in ``order`` (see :func:`mask_voxel_indices`)."""
        mask = np.asarray(mask) != 0
        flat = mask_voxel_indices(mask, order)
        return cls(mask.shape, affine, np.stack(np.unravel_index(flat, mask.shape), axis=1))

    @property
    def n_outputs(self) -> int:
        """Number of voxels (outputs)."""
        return int(self.voxel_ijk.shape[0])

    def select(self, rows: np.ndarray | None) -> "VolumeSpace":
        """The space of a subset of outputs."""
        return self if rows is None else VolumeSpace(self.shape, self.affine, self.voxel_ijk[rows])

    def mask(self) -> np.ndarray:
        """Boolean grid, true at the outputs' voxels."""
        m = np.zeros(self.shape, dtype=bool)
        m[tuple(self.voxel_ijk.T)] = True
        return m

    def to_volume(self, responses: np.ndarray, *, fill: float = 0.0) -> np.ndarray:
        """Responses ``(n_stimuli, n_outputs)`` -> float32 array ``(X, Y, Z, n_stimuli)`` (3-D for 1-D input)."""
        arr, single = _responses_2d(responses, self.n_outputs)
        vol = np.full(self.shape + (arr.shape[0],), fill, dtype=np.float32)
        vol[tuple(self.voxel_ijk.T)] = arr.T
        return vol[..., 0] if single else vol

    def to_nifti(self, responses: np.ndarray, *, fill: float = 0.0):
        """Place responses on the grid as a ``nibabel.Nifti1Image``.

        Parameters
        ----------
        responses : (n_outputs,) or (n_stimuli, n_outputs) array
            A 1-D vector gives a 3-D image; a 2-D array gives a 4-D image with one volume per stimulus.
        fill : float
            Value outside the outputs' voxels.
        """
        import nibabel as nib

        img = nib.Nifti1Image(self.to_volume(responses, fill=fill), self.affine)
        img.header.set_xyzt_units("mm")
        return img

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (the voxel indices are stored separately as an array)."""
        return {"kind": "volume", "shape": list(self.shape), "affine": self.affine.tolist()}


def space_from_dict(desc: dict[str, Any], *, n_outputs: int, voxel_ijk: np.ndarray | None = None):
    """Rebuild a space from its JSON description (and the voxel indices array for volumes)."""
    kind = desc.get("kind", "flat")
    if kind == "flat":
        return FlatSpace(n_outputs)
    if kind == "volume":
        if voxel_ijk is None:
            raise InvalidParameterError("a volume space needs voxel_ijk")
        space = VolumeSpace(tuple(desc["shape"]), np.asarray(desc["affine"]), voxel_ijk)
        if space.n_outputs != n_outputs:
            raise InvalidParameterError(f"volume space has {space.n_outputs} voxels, model has {n_outputs} outputs")
        return space
    raise InvalidParameterError(f"unknown output space kind {kind!r}; valid: 'flat', 'volume'")
