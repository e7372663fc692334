"""Linear maps of the encoding pipeline: the feature projection and the per-subject readout.

Both are affine maps ``y = x @ weight.T + bias`` held as float32 numpy arrays (the projection may be
memory-mapped from a safetensors file). A StandardScaler in front of a PCA/SVD is folded into the
projection once, so inference never standardises the (possibly millions wide) features and never
forms a features x outputs matrix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from berg.errors import ModelLoadError
from berg.fsutil import atomic_write

__all__ = [
    "Affine",
    "Projection",
    "LinearReadout",
    "ReadoutHead",
    "fold_scaler",
    "folded_rows",
    "write_folded_projection",
]


def folded_rows(
    mean: np.ndarray | None, scale: np.ndarray | None, rows: Iterable[np.ndarray]
) -> Iterator[tuple[np.ndarray, float]]:
    """The one scaler-folding kernel: for each component row ``c`` yield ``(c / scale, -(mean / scale) @ c)``.

    Rows are computed in float64 one at a time (so no float64 copy of a whole multi-GB matrix ever
    exists) and returned as float32 weight rows plus a float64 bias. Zero scales count as 1, as in
    scikit-learn; ``None`` means no scaling / no centring.
    """
    inv = (
        None
        if scale is None
        else 1.0 / np.where(np.asarray(scale, dtype=np.float64) == 0, 1.0, np.asarray(scale, dtype=np.float64))
    )
    mos = None if mean is None else np.asarray(mean, dtype=np.float64) * (1.0 if inv is None else inv)
    for row in rows:
        r = np.asarray(row, dtype=np.float64)
        w = r if inv is None else r * inv
        yield w.astype(np.float32), (0.0 if mos is None else -float(r @ mos))


def _check_fold_shapes(mean, scale, shape: tuple[int, int]) -> None:
    n = shape[1]
    for name, vec in (("mean", mean), ("scale", scale)):
        if vec is not None and np.shape(vec) != (n,):
            raise ModelLoadError(f"scaler {name} has shape {np.shape(vec)}, components have {n} features")


def fold_scaler(
    mean: np.ndarray | None,
    scale: np.ndarray | None,
    components: np.ndarray,
    *,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``(x - mean) / scale`` into components in memory: ``(W, b)`` with ``x @ W.T + b``.

    ``W = C / scale`` and ``b = -(mean / scale) @ C.T`` via :func:`folded_rows`. For matrices too big
    for RAM use :func:`write_folded_projection`, which streams the same rows to disk.

    Parameters
    ----------
    mean, scale : (n_features,) arrays or None
        StandardScaler's ``mean_`` and ``scale_``.
    components : (k, n_features) array
        PCA/SVD ``components_`` (any float dtype).
    out : (k, n_features) float32 array, optional
        Where to write ``W``.
    """
    k, n = components.shape
    _check_fold_shapes(mean, scale, (k, n))
    W = np.empty((k, n), dtype=np.float32) if out is None else out
    if W.shape != (k, n) or W.dtype != np.float32:
        raise ValueError(f"out must be float32 {(k, n)}, got {W.dtype} {W.shape}")
    bias = np.empty(k, dtype=np.float64)
    for i, (w, b) in enumerate(folded_rows(mean, scale, components)):
        W[i], bias[i] = w, b
    return W, bias.astype(np.float32)


def write_folded_projection(
    path: Path,
    mean: np.ndarray | None,
    scale: np.ndarray | None,
    rows: Iterable[np.ndarray],
    shape: tuple[int, int],
) -> None:
    """Stream :func:`folded_rows` into a safetensors file (``weight`` (k, n), ``bias`` (k,), float32).

    Memory stays at one row whatever the matrix size (BERG's is 100 x 5,337,088); the file is written
    under a temporary name, fsync'ed and renamed into place.
    """
    k, n = shape
    _check_fold_shapes(mean, scale, (k, n))
    w_bytes = k * n * 4
    header = {
        "weight": {"dtype": "F32", "shape": [k, n], "data_offsets": [0, w_bytes]},
        "bias": {"dtype": "F32", "shape": [k], "data_offsets": [w_bytes, w_bytes + 4 * k]},
        "__metadata__": {"format": "pt", "note": "scaler folded into the components by berg"},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    path = Path(path)
    bias = np.empty(k, dtype=np.float64)
    with atomic_write(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        count = 0
        for i, (w, b) in enumerate(folded_rows(mean, scale, rows)):
            fh.write(w.astype("<f4", copy=False).tobytes())
            bias[i] = b
            count += 1
        if count != k:
            raise ModelLoadError(f"expected {k} component rows, got {count}")
        fh.write(bias.astype("<f4").tobytes())


@dataclass
class Affine:
    """The one affine map type of berg: ``y = x @ weight.T + bias`` (float32).

    Projections, readouts and the trainer's fitted maps are all :class:`Affine` (no ``(weight, bias)``
    tuples). ``weight`` may be memory-mapped (it is never copied unless its dtype must change).

    Attributes
    ----------
    weight : (n_outputs, n_inputs) float32 array
    bias : (n_outputs,) float32 array
    """

    weight: np.ndarray
    bias: np.ndarray

    #: Not a field: the file the engine streams ``weight`` from (a :class:`berg.core.kernels.FileMatrix`
    #: set when a large in-memory weight is written to disk), ``None`` for weights held in memory.
    stored = None

    def __post_init__(self) -> None:
        if not isinstance(self.weight, np.ndarray):
            self.weight = np.asarray(self.weight)
        if self.weight.dtype != np.float32:
            self.weight = self.weight.astype(np.float32)
        self.bias = np.asarray(self.bias, dtype=np.float32)
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ModelLoadError(
                f"{type(self).__name__} weight {self.weight.shape} and bias {self.bias.shape} do not fit"
            )

    @property
    def n_outputs(self) -> int:
        """Number of outputs (rows)."""
        return int(self.weight.shape[0])

    @property
    def n_inputs(self) -> int:
        """Input width."""
        return int(self.weight.shape[1])

    def select(self, rows: np.ndarray | None):
        """Keep only output ``rows``, before any matmul is done (same class)."""
        if rows is None:
            return self
        return type(self)(self.weight[rows], self.bias[rows])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Apply the map to ``(n, n_inputs)`` numpy inputs (float32 result)."""
        return (np.asarray(x, dtype=np.float32) @ self.weight.T + self.bias).astype(np.float32, copy=False)


@dataclass
class Projection(Affine):
    """Affine feature projection ``z = x[:, columns] @ weight.T + bias`` (scaler already folded in).

    Attributes
    ----------
    weight : (k, n_features) float32 array, possibly memory-mapped
    bias : (k,) float32 array
    columns : (start, stop) or None
        The slice of the backbone's feature columns the projection reads (e.g. one layer of several
        concatenated nodes); ``None`` reads all of them.
    """

    columns: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.columns is not None:
            start, stop = (int(c) for c in self.columns)
            if start < 0 or stop - start != self.n_inputs:
                raise ModelLoadError(f"projection columns {self.columns} do not fit its {self.n_inputs} input features")
            self.columns = (start, stop)

    @property
    def feature_width(self) -> int:
        """The backbone width this projection needs (the end of its column slice, or its input width)."""
        return self.columns[1] if self.columns is not None else self.n_inputs

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Apply the projection to ``(n, feature_width)`` numpy features (its column slice is taken here)."""
        x = np.asarray(x)
        return super().__call__(x if self.columns is None else x[:, self.columns[0] : self.columns[1]])

    @property
    def n_features(self) -> int:
        """Input width the projection expects."""
        return self.n_inputs

    @property
    def n_components(self) -> int:
        """Output width."""
        return self.n_outputs

    @classmethod
    def from_scaler_components(
        cls,
        mean: np.ndarray | None,
        scale: np.ndarray | None,
        components: np.ndarray,
        *,
        out: np.ndarray | None = None,
    ) -> Projection:
        """Build from StandardScaler ``mean_``/``scale_`` and PCA/SVD ``components_`` (see :func:`fold_scaler`).

        For scikit-learn's ``PCA`` (which centres on its own ``mean_``) pass the composition yourself:
        the PCA mean acts after scaling, i.e. fold ``mean_scaler + scale * mean_pca`` as ``mean``.
        """
        W, b = fold_scaler(mean, scale, components, out=out)
        return cls(W, b)


@dataclass
class LinearReadout(Affine):
    """Per-output linear readout ``y = z @ weight.T + bias`` (``n_inputs`` = projection components)."""


@dataclass
class ReadoutHead:
    """One block of a subject's outputs: a readout and the projection (by name) that feeds it.

    A subject's outputs are the concatenation of its heads' outputs, in order. Most models have one
    head on one shared projection; BERG's EEG models have one head per repetition, each with its own
    PCA; NSD surface models have a per-subject projection.
    """

    projection: str | None
    readout: LinearReadout
