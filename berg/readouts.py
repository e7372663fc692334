"""Linear maps of the encoding pipeline: the feature projection and the per-subject readout.

Both are affine maps ``y = x @ weight.T + bias`` held as float32 numpy arrays (the projection may be
memory-mapped from a safetensors file). A StandardScaler in front of a PCA/SVD is folded into the
projection once, so inference never standardises the (possibly millions wide) features and never
forms a features x outputs matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from berg.errors import ModelLoadError

__all__ = ["Projection", "LinearReadout", "fold_scaler"]

# Columns per chunk when folding: 100 components x 2**18 columns x 8 bytes = 200 MB of float64 at most.
_FOLD_CHUNK = 1 << 18


def fold_scaler(
    mean: np.ndarray | None,
    scale: np.ndarray | None,
    components: np.ndarray,
    *,
    out: np.ndarray | None = None,
    chunk: int = _FOLD_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``(x - mean) / scale`` into components: returns ``(W, b)`` with ``x @ W.T + b``.

    ``W = C / scale`` and ``b = -(mean / scale) @ C.T``. Work is done in column chunks in float64
    and stored as float32, so no float64 copy of the whole matrix ever exists.

    Parameters
    ----------
    mean, scale : (n_features,) arrays or None
        StandardScaler's ``mean_`` and ``scale_`` (``None`` = no centring / no scaling). Zero scales
        are treated as 1, as scikit-learn does.
    components : (k, n_features) array
        PCA/SVD ``components_`` (any float dtype, may be memory-mapped).
    out : (k, n_features) float32 array, optional
        Where to write ``W`` (e.g. a memory-mapped file).
    """
    k, n = components.shape
    for name, vec in (("mean", mean), ("scale", scale)):
        if vec is not None and np.shape(vec) != (n,):
            raise ModelLoadError(f"scaler {name} has shape {np.shape(vec)}, components have {n} features")
    W = np.empty((k, n), dtype=np.float32) if out is None else out
    if W.shape != (k, n) or W.dtype != np.float32:
        raise ValueError(f"out must be float32 {(k, n)}, got {W.dtype} {W.shape}")
    bias = np.zeros(k, dtype=np.float64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = np.asarray(components[:, start:stop], dtype=np.float64)
        if scale is not None:
            s = np.asarray(scale[start:stop], dtype=np.float64)
            block = block / np.where(s == 0, 1.0, s)
        if mean is not None:
            bias -= block @ np.asarray(mean[start:stop], dtype=np.float64)
        W[:, start:stop] = block
    return W, bias.astype(np.float32)


@dataclass
class Projection:
    """Affine feature projection ``z = x @ weight.T + bias`` (scaler already folded in).

    Attributes
    ----------
    weight : (k, n_features) float32 array, possibly memory-mapped
    bias : (k,) float32 array
    """

    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ModelLoadError(
                f"projection weight {self.weight.shape} and bias {self.bias.shape} do not fit"
            )
        if self.weight.dtype != np.float32:
            self.weight = self.weight.astype(np.float32)
        self.bias = np.asarray(self.bias, dtype=np.float32)

    @property
    def n_features(self) -> int:
        """Input width the projection expects."""
        return int(self.weight.shape[1])

    @property
    def n_components(self) -> int:
        """Output width."""
        return int(self.weight.shape[0])

    @classmethod
    def from_scaler_components(
        cls,
        mean: np.ndarray | None,
        scale: np.ndarray | None,
        components: np.ndarray,
        *,
        out: np.ndarray | None = None,
    ) -> "Projection":
        """Build from StandardScaler ``mean_``/``scale_`` and PCA/SVD ``components_`` (see :func:`fold_scaler`).

        For scikit-learn's ``PCA`` (which centres on its own ``mean_``) pass the composition yourself:
        the PCA mean acts after scaling, i.e. fold ``mean_scaler + scale * mean_pca`` as ``mean``.
        """
        W, b = fold_scaler(mean, scale, components, out=out)
        return cls(W, b)


@dataclass
class LinearReadout:
    """Per-output linear readout ``y = z @ weight.T + bias``.

    Attributes
    ----------
    weight : (n_outputs, k) float32 array
    bias : (n_outputs,) float32 array
    """

    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float32)
        self.bias = np.asarray(self.bias, dtype=np.float32)
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ModelLoadError(f"readout weight {self.weight.shape} and bias {self.bias.shape} do not fit")

    @property
    def n_outputs(self) -> int:
        """Number of outputs (rows)."""
        return int(self.weight.shape[0])

    @property
    def n_inputs(self) -> int:
        """Input width (projection components, or features when there is no projection)."""
        return int(self.weight.shape[1])

    def select(self, rows: np.ndarray | None) -> "LinearReadout":
        """Keep only ``rows`` (output indices), before any matmul is done."""
        if rows is None:
            return self
        return LinearReadout(self.weight[rows], self.bias[rows])
