"""Linear maps of the encoding pipeline: the feature projection and the per-subject readout.

Both are affine maps ``y = x @ weight.T + bias`` held as float32 numpy arrays (the projection may be
memory-mapped from a safetensors file). A StandardScaler in front of a PCA/SVD is folded into the
projection once, so inference never standardises the (possibly millions wide) features and never
forms a features x outputs matrix.

Weights are checked where they are read, never in a separate pass over a big file: NaN/inf anywhere,
a scaler ``scale_`` that is not > 0, or a folded value that overflows float32 raise
:class:`~berg.errors.ModelLoadError` naming the file, the field and the first bad entry, instead of
outputs that are NaN or shifted without a word. What is checked where:

* :func:`folded_rows` checks the scaler once and every component row as it folds it (the fold is the
  one pass that reads the components);
* :class:`Affine` checks its bias, and its weight when the weight is held in memory (one cheap pass
  over data just read). A memory-mapped weight is not scanned: see :meth:`Affine.__post_init__`.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from berg.core import kernels
from berg.errors import ModelLoadError
from berg.fsutil import atomic_write

__all__ = [
    "Affine",
    "Projection",
    "check_finite",
    "check_scaler",
    "LinearReadout",
    "ReadoutHead",
    "fold_scaler",
    "folded_rows",
    "write_folded_projection",
]

#: The file an Affine being built comes from (set by Affine.from_tensors), named in its errors.
_SOURCE: ContextVar[str | None] = ContextVar("berg_affine_source", default=None)


@contextlib.contextmanager
def _naming(where: str) -> Iterator[None]:
    token = _SOURCE.set(where)
    try:
        yield
    finally:
        _SOURCE.reset(token)


def _is_mapped(arr: np.ndarray) -> bool:
    """Whether ``arr`` is a view of a memory map (its pages are read only when touched)."""
    obj: Any = arr
    while obj is not None:
        if isinstance(obj, (np.memmap, mmap.mmap)):
            return True
        obj = getattr(obj, "base", None)
    return False


#: Elements per block of :func:`check_finite`: its mask is 1 MB, whatever the array's size.
_CHECK_BLOCK = 1 << 20
_F32_MAX = float(np.finfo(np.float32).max)
_REMEDY = (
    "weights must be finite: the file is damaged or holds a failed fit. Use a good copy of it (a download "
    "is fetched again when its checksum fails; berg cache verify checks the cache), or report the file to "
    "the model's publisher"
)


def _label(where: str | None, field: str) -> str:
    return f"{where}: {field}" if where else field


def _index(idx: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in idx) + "]"


def check_finite(values: Any, field: str, where: str | None = None) -> None:
    """Raise :class:`~berg.errors.ModelLoadError` if ``values`` hold a NaN or an infinity.

    Checked block by block (a 1 MB mask, never a full-size boolean copy); integer arrays are always
    finite. A memory-mapped array is read through its mapping, so call this where the data are being
    read anyway (see :class:`Affine` for when berg does).

    Parameters
    ----------
    values : array_like
    field : str
        The field's name in its file (``"coef_"``, ``"weight"``...).
    where : str, optional
        The file (and the path inside it) the values come from, named in the message.

    Raises
    ------
    ModelLoadError
        Naming ``where``, ``field``, the first bad index and its value.
    """
    arr = np.asarray(values)
    if arr.dtype.kind not in "fc" or arr.size == 0:
        return
    # walk the array in memory order: a transposed view (a readout held (k, n) in memory) is scanned
    # through its contiguous transpose, not with strided reads
    flip = arr.ndim >= 2 and not arr.flags.c_contiguous and arr.flags.f_contiguous
    base = arr.T if flip else (arr.reshape(1) if arr.ndim == 0 else arr)
    step = max(1, _CHECK_BLOCK // max(1, int(np.prod(base.shape[1:], dtype=np.int64))))
    for a in range(0, base.shape[0], step):
        ok = np.isfinite(base[a : a + step])
        if ok.all():
            continue
        first = np.argwhere(~ok)[0]
        first[0] += a
        idx = tuple(int(i) for i in (first[::-1] if flip else first))
        value = arr[idx] if arr.ndim else arr[()]
        raise ModelLoadError(f"{_label(where, field)}{_index(idx) if arr.ndim else ''} is {value}; {_REMEDY}")


def check_scaler(
    mean: np.ndarray | None,
    scale: np.ndarray | None,
    where: str | None = None,
    *,
    names: tuple[str, str] = ("mean_", "scale_"),
) -> None:
    """Check StandardScaler ``mean_`` and ``scale_`` before they are folded: finite, every scale > 0.

    The rule for constant features is scikit-learn's: ``StandardScaler.fit`` stores ``scale_ = 1`` for
    a feature of zero variance (``_handle_zeros_in_scale``), and berg's trainer does the same
    (:mod:`berg.training.solvers`). A fitted scaler therefore never stores 0 (nor a negative value, a
    square root of a variance), so one in a file is damage (a flipped sign bit is a negative scale),
    not a constant feature: it is refused rather than silently treated as 1.

    Parameters
    ----------
    mean, scale : (n_features,) arrays or None
        StandardScaler's ``mean_`` and ``scale_`` (``None``: no centring / no scaling).
    where : str, optional
        The file (and path inside it) they come from, named in the message.
    names : (str, str)
        How the message names the two fields.

    Raises
    ------
    ModelLoadError
        Naming ``where``, the field (``names``), the first bad index and its value.
    """
    if mean is not None:
        check_finite(mean, names[0], where)
    if scale is not None:
        check_finite(scale, names[1], where)
        s = np.asarray(scale)
        for a in range(0, s.size, _CHECK_BLOCK):
            bad = np.flatnonzero(s[a : a + _CHECK_BLOCK] <= 0)
            if bad.size:
                i = a + int(bad[0])
                raise ModelLoadError(
                    f"{_label(where, names[1])}[{i}] is {s[i]}; a fitted StandardScaler stores scale_ > 0 for every "
                    "feature (1 for a constant feature, as scikit-learn does), so this file is damaged or was not "
                    "written from a fitted scaler. Use a good copy of it"
                )


def folded_rows(
    mean: np.ndarray | None,
    scale: np.ndarray | None,
    rows: Iterable[np.ndarray],
    *,
    where: str | None = None,
) -> Iterator[tuple[np.ndarray, float]]:
    """The one scaler-folding kernel: for each component row ``c`` yield ``(c / scale, -(mean / scale) @ c)``.

    Rows are computed in float64 one at a time (so no float64 copy of a whole multi-GB matrix ever
    exists) and returned as float32 weight rows plus a float64 bias. ``None`` means no scaling / no
    centring. The scaler is checked first (:func:`check_scaler`: finite, every scale > 0) and each row
    as it is folded (finite, and within float32 after scaling): this pass reads every component once
    anyway, so the check costs no extra read of the (possibly 4 GB) source.

    Parameters
    ----------
    where : str, optional
        The file (and path inside it) of the components, named in errors (``...: components_[i, j]``).

    Raises
    ------
    ModelLoadError
        The scaler or a component row holds a NaN/inf, a scale is not > 0, or a folded value
        overflows float32.
    """
    check_scaler(mean, scale, where)
    inv = None if scale is None else 1.0 / np.asarray(scale, dtype=np.float64)
    mos = None if mean is None else np.asarray(mean, dtype=np.float64) * (1.0 if inv is None else inv)
    for i, row in enumerate(rows):
        r = np.asarray(row, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below, by name
            w = (r if inv is None else r * inv).astype(np.float32)
            b = 0.0 if mos is None else -float(r @ mos)
        if not (np.isfinite(w).all() and abs(b) <= _F32_MAX):  # NaN fails both comparisons
            bad = np.flatnonzero(~np.isfinite(r))
            if bad.size:  # a NaN/inf in the source: name it
                j = int(bad[0])
                raise ModelLoadError(f"{_label(where, 'components_')}[{i}, {j}] is {r[j]}; {_REMEDY}")
            raise ModelLoadError(
                f"{_label(where, 'components_')} row {i} overflows float32 once the scaler is folded in "
                f"(scale_ as small as {np.min(np.abs(np.asarray(scale))) if scale is not None else 1.0}); {_REMEDY}"
            )
        yield w, b


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
    where: str | None = None,
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
    where : str, optional
        The file the scaler and components come from, named in errors.

    Raises
    ------
    ModelLoadError
        Shapes that do not fit, or values :func:`folded_rows` refuses.
    """
    k, n = components.shape
    _check_fold_shapes(mean, scale, (k, n))
    W = np.empty((k, n), dtype=np.float32) if out is None else out
    if W.shape != (k, n) or W.dtype != np.float32:
        raise ValueError(f"out must be float32 {(k, n)}, got {W.dtype} {W.shape}")
    bias = np.empty(k, dtype=np.float64)
    for i, (w, b) in enumerate(folded_rows(mean, scale, components, where=where)):
        W[i], bias[i] = w, b
    return W, bias.astype(np.float32)


def write_folded_projection(
    path: Path,
    mean: np.ndarray | None,
    scale: np.ndarray | None,
    rows: Iterable[np.ndarray],
    shape: tuple[int, int],
    *,
    where: str | None = None,
) -> None:
    """Stream :func:`folded_rows` into a safetensors file in stream layout (float32, ``bias`` (k,)).

    The file holds ``weight_t`` = ``W.T`` (n, k) when ``k < n`` (every projection berg folds), else
    ``weight`` = ``W`` (k, n): the layout :func:`berg.core.kernels.stream_layout` names, whose streamed
    blocks are whole stored rows (one ``pread`` each), so the engine streams the file where it lies and
    never keeps a transposed copy of it (:func:`berg.core.kernels.stream_copy`).
    :meth:`Affine.from_tensors` reads either tensor.

    Memory stays at one folded row plus two blocks of :data:`berg.core.kernels.BLOCK_BYTES` whatever the
    matrix size (BERG's is 100 x 5,337,088): the rows go to an unnamed temporary file beside ``path``
    (the same disk; it disappears with the process), which :func:`berg.core.kernels.copy_transposed`
    then writes transposed into the result, so the fold briefly needs twice the matrix on disk. The
    result is written under a temporary name, fsync'ed and renamed into place. Every row is checked as
    it is folded (:func:`folded_rows`), so a written file holds finite float32 values only: that is why
    a mapped folded projection is not scanned again when it is loaded (see :class:`Affine`). On an
    error nothing is left at ``path``.

    Parameters
    ----------
    path : Path
        The file to write.
    mean, scale : (n,) arrays or None
        The scaler folded in (see :func:`folded_rows`).
    rows : iterable of (n,) arrays
        The ``k`` component rows, read once in order.
    shape : (k, n)
        The components' shape.
    where : str, optional
        The source file, named in errors.

    Raises
    ------
    ModelLoadError
        A value :func:`folded_rows` refuses, a row that is not ``n`` wide, or not ``k`` rows.
    """
    k, n = (int(d) for d in shape)
    _check_fold_shapes(mean, scale, (k, n))
    transposed = kernels.stream_layout(k, n) == "kn"
    w_bytes = k * n * 4
    name, stored = ("weight_t", [n, k]) if transposed else ("weight", [k, n])
    header = {
        name: {"dtype": "F32", "shape": stored, "data_offsets": [0, w_bytes]},
        "bias": {"dtype": "F32", "shape": [k], "data_offsets": [w_bytes, w_bytes + 4 * k]},
        "__metadata__": {"format": "pt", "note": "scaler folded into the components by berg"},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    path = Path(path)
    bias = np.empty(k, dtype=np.float64)
    with atomic_write(path, "wb") as fh, contextlib.ExitStack() as stack:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        sink = fh
        if transposed:  # W's rows first, then W.T from them (two blocks of memory, never two matrices)
            sink = stack.enter_context(tempfile.TemporaryFile(dir=path.parent, prefix=".berg-fold-"))
        count = 0
        for i, (w, b) in enumerate(folded_rows(mean, scale, rows, where=where)):
            if i >= k or w.shape != (n,):
                got = f"more than {k} rows" if i >= k else f"row {i} of shape {w.shape}"
                raise ModelLoadError(f"{where or path}: expected {k} component rows of {n} values, got {got}")
            sink.write(w.astype("<f4", copy=False).tobytes())
            bias[i] = b
            count += 1
        if count != k:
            raise ModelLoadError(f"{where or path}: expected {k} component rows, got {count}")
        if transposed:
            sink.flush()
            kernels.copy_transposed(kernels.FileMatrix(sink, 0, (k, n), transposed=False), fh)
        fh.write(bias.astype("<f4").tobytes())


@dataclass
class Affine:
    """The one affine map type of berg: ``y = x @ weight.T + bias`` (float32).

    Projections, readouts and the trainer's fitted maps are all :class:`Affine` (no ``(weight, bias)``
    tuples). ``weight`` may be memory-mapped (it is never copied unless its dtype must change).

    Construction checks the shapes and that the values are finite (:func:`check_finite`; a
    :class:`~berg.errors.ModelLoadError` names the field and the first bad entry). Build one from a
    file's tensors with :meth:`from_tensors`, so the error also names the file.

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
        where = _SOURCE.get() or type(self).__name__
        if not isinstance(self.weight, np.ndarray):
            self.weight = np.asarray(self.weight)
        mapped = _is_mapped(self.weight)
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, which is refused below
            if self.weight.dtype != np.float32:
                self.weight = self.weight.astype(np.float32)  # a copy in memory: checked below
                mapped = False
            self.bias = np.asarray(self.bias, dtype=np.float32)
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ModelLoadError(f"{where}: weight {self.weight.shape} and bias {self.bias.shape} do not fit")
        check_finite(self.bias, "bias", where)
        # A weight held in memory was just read or computed: one more pass (block-wise, ~20 ms for BERG's
        # 330 MB NSD readout) is cheap next to that. A memory-mapped weight is not scanned: mapping is
        # instant, and reading a multi-GB projection at every load would turn it into a full read (and
        # fill the resident set). Mapped weights come from files whose values were checked when they
        # were written and whose bytes are verified by sha256 when they are used: folded projections
        # (write_folded_projection checks every row; Store.derived re-verifies the file on reuse) and
        # native artifacts (the store verifies every file against the manifest's sha256, and berg's
        # exporter writes them from Affines checked here). A byte flip that keeps a float finite can
        # only be caught by that checksum, not by any value check.
        if not mapped:
            check_finite(self.weight, "weight", where)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, np.ndarray], where: str, **fields: Any):
        """Build from a file's tensors ``weight`` (or ``weight_t``) and ``bias``; every error names ``where``.

        Parameters
        ----------
        tensors : mapping
            Holding ``"bias"`` and either ``"weight"`` (``W``, (n_outputs, n_inputs)) or ``"weight_t"``
            (``W.T``, (n_inputs, n_outputs): the stream layout of a projection, as
            :func:`write_folded_projection` stores it), e.g. :func:`berg.store.artifacts.read_tensors`.
            ``weight_t`` is used as ``weight_t.T``, a view: a memory map stays a memory map. The tensor's
            name says its layout, so a file is never read in the other one.
        where : str
            The file, named in errors.
        **fields
            Further fields of the class (``columns`` of a :class:`Projection`).

        Returns
        -------
        Affine
            An instance of the class it is called on (:class:`Projection`, :class:`LinearReadout`...).

        Raises
        ------
        ModelLoadError
            A tensor is missing, both ``weight`` and ``weight_t`` are given, the shapes do not fit, or a
            value is not finite.
        """
        found = ", ".join(map(repr, sorted(tensors))) or "none"
        if "weight" in tensors and "weight_t" in tensors:
            raise ModelLoadError(
                f"{where} holds both 'weight' and 'weight_t'; it must hold one of them (found {found})"
            )
        missing = [k for k in ("weight", "bias") if k not in tensors and not (k == "weight" and "weight_t" in tensors)]
        if missing:
            raise ModelLoadError(
                f"{where} lacks tensor {', '.join(map(repr, missing))}; it must hold 'weight' (or its transpose "
                f"'weight_t') and 'bias' (found {found})"
            )
        if "weight_t" in tensors:
            weight_t = tensors["weight_t"]
            if np.ndim(weight_t) != 2:
                raise ModelLoadError(
                    f"{where}: weight_t has shape {np.shape(weight_t)}; it must be 2-D (n_inputs, n_outputs)"
                )
            weight = (weight_t if isinstance(weight_t, np.ndarray) else np.asarray(weight_t)).T  # a view
        else:
            weight = tensors["weight"]
        with _naming(where):
            return cls(weight, tensors["bias"], **fields)

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
        (a transposed view of the file's ``weight_t`` for a projection berg folded)
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
                raise ModelLoadError(
                    f"{_SOURCE.get() or 'projection'}: columns {self.columns} do not fit its {self.n_inputs} input features"
                )
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
