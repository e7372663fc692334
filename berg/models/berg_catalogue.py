"""BERG's image catalogue read from BERG's own files: NSD fsaverage surfaces and THINGS EEG2 sensor x time.

Six published models share two file formats (BERG's creation code and loaders):

=====================================  ==================================================================
``fmri-nsd_fsaverage-{backbone}``      per subject: StandardScaler -> PCA(250) -> one LinearRegression
                                       per hemisphere (163,842 fsaverage vertices each)
``eeg-things_eeg_2-{backbone}``        per subject: StandardScaler -> 4 repetitions, each its own
                                       PCA(250) -> LinearRegression of 63 channels x 140 time points
=====================================  ==================================================================

with ``backbone`` one of ``vit_b_32``, ``alexnet``, ``alexnet_untrained``. Each subject has two files,
``encoding_models_weights/weights_subject-XX.npy`` and ``metadata/metadata_subject-XX.npy`` — pickled
dicts written with ``np.save``, read here with berg's restricted interpreter
(:mod:`berg.store.legacy`): nothing in them runs. The EEG files hold whole pickled scikit-learn ``PCA``
objects (older versions: dicts of their attributes, or one dict shared by all repetitions); every
scikit-learn global becomes the inert :class:`SklearnState`, whose pickled ``__dict__`` is all berg
reads — scikit-learn is never imported for it.

What the linear engine gets (everything else is the engine's job):

* one projection per subject (NSD) or per subject and repetition (EEG): the scaler and the PCA mean
  folded into the components once (``W = C / scale``, ``b = -((mean_s + scale * mean_pca) / scale) @ C.T``,
  whitening applied if set), streamed row by row into a float32 safetensors derived artifact
  (:meth:`berg.store.Store.derived`), memory-mapped afterwards — never a float64 copy;
* readout heads in output order (``lh`` then ``rh``; ``rep-1`` .. ``rep-4``, each channel-major
  ``(63, 140)``), the published ``coef_`` memory-mapped from the weights file;
* the output space (:class:`~berg.core.spaces.SurfaceSpace` on fsaverage, or
  :class:`~berg.core.spaces.SensorTimeSpace` with channel names and times in ms from the metadata) and the
  ROI rows (left hemisphere indices, right hemisphere indices shifted by ``n_lh``).

The plain functions (:func:`read_weights`, :func:`read_metadata`, :func:`fold_projection`) return numpy
arrays and can be used without the engine.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from berg.core.engine import LinearEncodingModel
from berg.core.layouts import ArtifactLayout
from berg.core.readouts import (
    LinearReadout,
    Projection,
    ReadoutHead,
    check_finite,
    check_scaler,
    write_folded_projection,
)
from berg.core.reliability import Reliability
from berg.core.spaces import SensorTimeSpace, SurfaceSpace
from berg.errors import ModelLoadError, NoReliabilityError
from berg.store.legacy import StateOnly, load_legacy_npy
from berg.subjects import subject_label

if TYPE_CHECKING:  # pragma: no cover
    from berg.core.contract import LoadRequest
    from berg.features import FeatureExtractor
    from berg.registry import ModelSpec

__all__ = [
    "BERGCatalogueLayout",
    "BERGCatalogueModel",
    "SklearnState",
    "PCAParams",
    "Linear",
    "SubjectWeights",
    "read_weights",
    "read_metadata",
    "fold_projection",
    "roi_rows",
    "weights_key",
    "metadata_key",
    "N_VERTICES",
    "EEG_REPETITIONS",
]

log = logging.getLogger(__name__)

N_VERTICES = 163_842
EEG_REPETITIONS = ("rep-1", "rep-2", "rep-3", "rep-4")
#: version of the folding code; part of the derived projection's key (bump when its bytes would change)
#: 2: values are checked while folding (a file folded by version 1 from bad weights is folded and
#: checked again, not reused)
#: 3: stored in stream layout, ``weight_t`` = W.T (n_features, k), streamed where it lies (no transposed
#: copy in ``.berg-stream/``); a new version is a new file name, and the store removes the old file
FOLD_VERSION = "3"
FAMILIES = ("nsd_fsaverage", "things_eeg_2")


class SklearnState(StateOnly):
    """Inert stand-in for any pickled scikit-learn object: keeps its pickled ``__dict__``, runs nothing."""


def _extra_globals() -> dict[tuple[str, str], Any]:
    # scikit-learn pickles PCA as NEWOBJ(sklearn.decomposition._pca.PCA) + BUILD(state dict); older
    # versions name other modules (sklearn.decomposition.pca): every sklearn global is the stand-in.
    return {("sklearn", "*"): SklearnState}


#: NSD-core test images were shown 3 times: BERG's noise ceiling is that of the 3-trial mean.
NSD_CORE_REPEATS = 3
#: THINGS EEG2 test images were shown 80 times (BERG's in-vivo test responses average them).
EEG_TEST_REPEATS = 80


def weights_key(subject: Any) -> str:
    """BERG's weights file of a subject (2-digit zero-padded)."""
    return f"encoding_models_weights/weights_subject-{int(subject):02d}.npy"


def metadata_key(subject: Any) -> str:
    """BERG's metadata file of a subject."""
    return f"metadata/metadata_subject-{int(subject):02d}.npy"


# --------------------------------------------------------------------------- reading BERG's dicts


def _load_dict(path: Path, where: str) -> dict[str, Any]:
    obj = load_legacy_npy(path, extra_globals=_extra_globals())
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{where}: expected BERG's pickled dict, found {type(obj).__name__}")
    return obj


def _get(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        have = sorted(map(str, d)) if isinstance(d, dict) else type(d).__name__
        raise ModelLoadError(f"{where}: missing {key!r} (found {have})")
    return d[key]


def _attrs(obj: Any, where: str) -> dict[str, Any]:
    """An sklearn object's attributes: the pickled state of a stand-in, or a dict of attributes."""
    if isinstance(obj, StateOnly):
        state = obj.state
        if isinstance(state, tuple) and state and isinstance(state[0], dict):  # (dict, slots) form
            state = state[0]
        if not isinstance(state, dict):
            raise ModelLoadError(f"{where}: pickled scikit-learn object without an attribute dict")
        return state
    if isinstance(obj, dict):
        return obj
    raise ModelLoadError(f"{where}: expected a PCA object or a dict of its attributes, found {type(obj).__name__}")


def _vector(d: dict, key: str, n: int | None, where: str) -> np.ndarray:
    arr = np.asarray(_get(d, key, where))
    if arr.ndim != 1 or (n is not None and arr.shape != (n,)):
        raise ModelLoadError(f"{where}[{key!r}] has shape {arr.shape}, expected ({n},)")
    if arr.dtype.kind not in "fiu":
        raise ModelLoadError(f"{where}[{key!r}] holds {arr.dtype} values, expected numbers")
    return arr


@dataclass
class PCAParams:
    """A fitted PCA as far as inference needs it: ``z = (x - mean) @ components.T`` (``/ sqrt(ev)`` if whiten)."""

    components: np.ndarray  # (k, F), memory-mapped from the weights file when large
    mean: np.ndarray | None  # (F,)
    whiten: bool = False
    explained_variance: np.ndarray | None = None
    where: str = ""  # the file and path of this PCA in it, named in errors

    @classmethod
    def read(cls, obj: Any, where: str) -> PCAParams:
        """Read a PCA's attributes, checking shapes, the mean (finite) and whitening (variances > 0).

        ``components_`` values are checked when they are folded (:meth:`rows`, the one pass that reads them).
        """
        d = _attrs(obj, where)
        comps = _get(d, "components_", where)
        if not isinstance(comps, np.ndarray) or comps.ndim != 2 or comps.dtype.kind != "f":
            raise ModelLoadError(
                f"{where}: components_ must be a 2-D float array, got {np.shape(comps)} "
                f"{getattr(comps, 'dtype', type(comps).__name__)}"
            )
        k, n = comps.shape
        mean = _vector(d, "mean_", n, where) if d.get("mean_") is not None else None
        if mean is not None:
            check_finite(mean, "mean_", where)
        whiten = bool(d.get("whiten", False))
        ev = _vector(d, "explained_variance_", k, where) if whiten else None
        if ev is not None:
            # whitening divides component i by sqrt(explained_variance_[i]): a variance that is not > 0
            # (a component that explains nothing, or a damaged value) gives inf/NaN outputs
            check_finite(ev, "explained_variance_", where)
            bad = np.flatnonzero(np.asarray(ev) <= 0)
            if bad.size:
                raise ModelLoadError(
                    f"{where}: explained_variance_[{int(bad[0])}] is {ev[bad[0]]} and whiten=True; whitening divides "
                    "each component by the square root of its explained variance, so every variance must be > 0. "
                    "The file is damaged or its PCA is degenerate: use a good copy of it"
                )
        nf = d.get("n_features_in_")
        if nf is not None and int(nf) != n:
            raise ModelLoadError(f"{where}: n_features_in_ = {nf} but components_ has {n} columns")
        return cls(comps, mean, whiten, ev, where)

    def rows(self) -> Iterator[np.ndarray]:
        """Component rows (whitened when the PCA whitens), read without mapping the whole file."""
        from berg.models.bmd_s3d import _iter_rows  # the pread path for memory-mapped components

        inv = None if not self.whiten else 1.0 / np.sqrt(np.asarray(self.explained_variance, dtype=np.float64))
        for i, row in enumerate(_iter_rows(self.components)):
            yield row if inv is None else np.asarray(row, dtype=np.float64) * inv[i]


@dataclass
class Linear:
    """One published LinearRegression: ``y = z @ coef.T + intercept``."""

    coef: np.ndarray  # (n_outputs, k)
    intercept: np.ndarray  # (n_outputs,)
    where: str = ""  # the file and path of this regression in it, named in errors

    @classmethod
    def read(cls, obj: Any, where: str, *, k: int | None = None) -> Linear:
        """Read a LinearRegression's attributes, checking shapes and the intercept (finite).

        ``coef_`` values are checked when the readout is built (:func:`stacked_readout`, which reads them).
        """
        d = _attrs(obj, where)
        coef = _get(d, "coef_", where)
        intercept = np.asarray(_get(d, "intercept_", where)).reshape(-1)
        if not isinstance(coef, np.ndarray) or coef.ndim != 2 or intercept.shape != (coef.shape[0],):
            raise ModelLoadError(f"{where}: coef_ {np.shape(coef)} and intercept_ {intercept.shape} do not fit")
        if coef.dtype.kind != "f" or intercept.dtype.kind not in "fiu":
            raise ModelLoadError(f"{where}: coef_ ({coef.dtype}) and intercept_ ({intercept.dtype}) must be numbers")
        check_finite(intercept, "intercept_", where)
        nf = d.get("n_features_in_")
        if nf is not None and int(nf) != coef.shape[1]:
            raise ModelLoadError(f"{where}: n_features_in_ = {nf} but coef_ has {coef.shape[1]} columns")
        if k is not None and coef.shape[1] != k:
            raise ModelLoadError(f"{where}: coef_ has {coef.shape[1]} columns, the PCA gives {k} components")
        return cls(coef, intercept, where)

    def readout(self) -> LinearReadout:
        return stacked_readout([self])


def _rows_into_columns(
    arr: np.ndarray, out: np.ndarray, col0: int, chunk: int = 8192, *, where: str = "", field: str = "coef_"
) -> None:
    """``out[:, col0:col0 + n] = arr.T`` for an ``(n, k)`` array, reading a memory map with plain reads.

    Touching a mapping adds the file's pages to the resident set; reading chunks through the page
    cache keeps RSS at the destination plus one chunk. Each chunk is checked as it is converted to
    float32 (finite, and no float64 value beyond float32's range): this is the one pass that reads the
    readout, so the check costs no extra read.
    """
    n, k = arr.shape

    def put(a: int, rows: np.ndarray) -> None:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: refused just below
            block = np.asarray(rows, dtype=np.float32)
        if not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(rows))  # a NaN/inf in the file, else a value float32 cannot hold
            i, j = (int(x) for x in (bad[0] if len(bad) else np.argwhere(~np.isfinite(block))[0]))
            value = rows[i, j]
            raise ModelLoadError(
                f"{where}: {field}[{a + i}, {j}] is {value}{' (beyond float32)' if np.isfinite(value) else ''}; "
                "weights must be finite: the file is damaged or holds a failed fit. Use a good copy of it"
            )
        out[:, col0 + a : col0 + a + len(block)] = block.T

    path, offset = getattr(arr, "filename", None), getattr(arr, "offset", None)
    if isinstance(arr, np.memmap) and path and offset is not None and arr.flags.c_contiguous:
        with open(path, "rb") as fh:
            for a in range(0, n, chunk):
                b = min(n, a + chunk)
                fh.seek(offset + a * k * arr.dtype.itemsize)
                rows = np.fromfile(fh, dtype=arr.dtype, count=(b - a) * k)
                if rows.size != (b - a) * k:
                    raise ModelLoadError(f"{path}: truncated readout (rows {a}..{b})")
                put(a, rows.reshape(b - a, k))
        return
    for a in range(0, n, chunk):
        put(a, np.asarray(arr[a : a + chunk]))


def stacked_readout(parts: list[Linear]) -> LinearReadout:
    """One readout of several published ones stacked by rows, held transposed in memory.

    The weight is a ``(n_outputs, k)`` view of a C-contiguous ``(k, n_outputs)`` float32 array: the
    engine's ``(k, n)`` operand is then that array itself (no transpose copy), and it is filled from
    the file with plain reads, so loading costs one copy of the readout and no mapped pages.
    """
    k = parts[0].coef.shape[1]
    n = sum(p.coef.shape[0] for p in parts)
    wt = np.empty((k, n), dtype=np.float32)
    col = 0
    for p in parts:
        _rows_into_columns(p.coef, wt, col, where=p.where)
        col += p.coef.shape[0]
    bias = np.concatenate([np.asarray(p.intercept, dtype=np.float32) for p in parts])
    return LinearReadout(wt.T, bias)


@dataclass
class SubjectWeights:
    """One subject's weights file: the scaler, then (PCA, readout) per head in output order.

    NSD: heads ``lh``, ``rh`` on one PCA. EEG: heads ``rep-1`` .. ``rep-4``, each on its own PCA.
    ``form`` says which historic EEG layout the file had (``objects``, ``attribute_dicts``, ``shared``).
    """

    scaler_mean: np.ndarray
    scaler_scale: np.ndarray
    pcas: dict[str, PCAParams]  # projection name -> PCA ("pca" for NSD, "rep-r" for EEG)
    heads: list[tuple[str, str, Linear]]  # (head name, projection name, readout)
    form: str
    where: str = ""  # the weights file, named in errors


def read_weights(path: str | Path, family: str, *, where: str | None = None) -> SubjectWeights:
    """Read a BERG weights file of ``family`` (``"nsd_fsaverage"`` or ``"things_eeg_2"``).

    Arrays stay memory maps of the file; nothing is folded or copied here.

    What is checked, and where (a :class:`~berg.errors.ModelLoadError` names the file, the field and
    the first bad entry):

    * here: every shape against the others; the scaler (``mean_`` finite, ``scale_`` finite and > 0:
      scikit-learn stores 1 for a constant feature, so a 0 is damage, see
      :func:`berg.core.readouts.check_scaler`); each PCA's ``mean_`` (finite) and, when it whitens,
      ``explained_variance_`` (finite and > 0); each ``intercept_`` (finite). These are small.
    * where the big arrays are read anyway, so no second pass over the file: ``components_`` rows as
      :func:`fold_projection` folds them, ``coef_`` chunks as :func:`stacked_readout` copies them.

    BERG's files have no manifest of checksums (only the size/ETag the store checks on download and
    the sha256 it records then), so a byte flip inside a float array that leaves the value finite
    cannot be told from a real weight by any check of the values: a file damaged after it was recorded
    fails the recorded sha256, one damaged before cannot be detected.

    Parameters
    ----------
    path : path
        The weights file.
    family : {"nsd_fsaverage", "things_eeg_2"}
    where : str, optional
        How errors name the file (default ``path``).

    Raises
    ------
    ModelLoadError
        A missing key, shapes that do not fit, or values as above.
    """
    where = where or str(path)
    d = _load_dict(Path(path), where)
    scaler = _get(d, "scaler_param", where)
    if isinstance(scaler, StateOnly):
        scaler = _attrs(scaler, f"{where}['scaler_param']")
    mean = _vector(scaler, "mean_", None, f"{where}['scaler_param']")
    scale = _vector(scaler, "scale_", mean.size, f"{where}['scaler_param']")
    check_scaler(mean, scale, f"{where}['scaler_param']")
    pca_param = _get(d, "pca_param", where)
    if family == "nsd_fsaverage":
        pca = PCAParams.read(pca_param, f"{where}['pca_param']")
        k = pca.components.shape[0]
        heads = [
            (h, "pca", Linear.read(_get(d, f"{h}_reg_param", where), f"{where}['{h}_reg_param']", k=k))
            for h in ("lh", "rh")
        ]
        pcas, form = {"pca": pca}, "nsd"
    elif family == "things_eeg_2":
        regs = _get(d, "reg_param", where)
        if not isinstance(regs, dict) or not all(r in regs for r in EEG_REPETITIONS):
            raise ModelLoadError(
                f"{where}: reg_param must hold {list(EEG_REPETITIONS)}, found "
                f"{sorted(regs) if isinstance(regs, dict) else type(regs).__name__}"
            )
        if isinstance(pca_param, dict) and "components_" in pca_param:
            # oldest form: one PCA for all repetitions (one projection, computed once per batch)
            pcas, form = {"shared": PCAParams.read(pca_param, f"{where}['pca_param']")}, "shared"
        elif isinstance(pca_param, dict) and all(r in pca_param for r in EEG_REPETITIONS):
            pcas = {r: PCAParams.read(pca_param[r], f"{where}['pca_param'][{r!r}]") for r in EEG_REPETITIONS}
            form = "objects" if all(isinstance(pca_param[r], StateOnly) for r in EEG_REPETITIONS) else "attribute_dicts"
        else:
            raise ModelLoadError(f"{where}: pca_param is neither one PCA nor {list(EEG_REPETITIONS)}")
        proj = {r: "shared" if form == "shared" else r for r in EEG_REPETITIONS}
        heads = [
            (r, proj[r], Linear.read(regs[r], f"{where}['reg_param'][{r!r}]", k=pcas[proj[r]].components.shape[0]))
            for r in EEG_REPETITIONS
        ]
    else:
        raise ModelLoadError(f"unknown BERG catalogue family {family!r}; valid: {', '.join(FAMILIES)}")
    for name, pca in pcas.items():
        if pca.components.shape[1] != mean.size:
            raise ModelLoadError(f"{where}: scaler has {mean.size} features, PCA {name} has {pca.components.shape[1]}")
    return SubjectWeights(mean, scale, pcas, heads, form, where)


def fold_projection(target: str | Path, weights: SubjectWeights, name: str) -> None:
    """Write the folded float32 projection of PCA ``name`` (scaler and PCA mean folded in) to ``target``.

    ``(x - mean_s) / scale_s - mean_pca = (x - (mean_s + scale_s * mean_pca)) / scale_s``, so the one
    folding kernel (:func:`berg.core.readouts.folded_rows`) applies with that combined mean; rows stream
    from the weights file one at a time, each checked as it is folded (finite, within float32).
    """
    pca = weights.pcas[name]
    mean = np.asarray(weights.scaler_mean, dtype=np.float64)
    scale = np.asarray(weights.scaler_scale, dtype=np.float64)
    if pca.mean is not None:
        mean = mean + scale * np.asarray(pca.mean, dtype=np.float64)  # scales are > 0 (read_weights)
    write_folded_projection(
        Path(target), mean, scale, pca.rows(), pca.components.shape, where=pca.where or weights.where or None
    )


def _index_array(entry: Any, n: int, where: str) -> np.ndarray:
    """A ROI entry as BERG stores it (``np.where``'s 1-tuple or its array) -> int64 vertex indices."""
    if isinstance(entry, tuple) and len(entry) == 1:
        entry = entry[0]
    arr = np.asarray(entry) if isinstance(entry, (np.ndarray, list)) else None
    if arr is None or arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise ModelLoadError(
            f"{where}: a ROI entry must be an integer index array (np.where), got {type(entry).__name__}"
        )
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ModelLoadError(f"{where}: ROI vertex indices span {arr.min()}..{arr.max()}, outside 0..{n - 1}")
    return arr


def _plain(value: Any) -> Any:
    """Metadata values as plain numpy arrays / Python containers (no memory maps of the download)."""
    if isinstance(value, np.ndarray):
        return np.array(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def read_metadata(
    path: str | Path, family: str, *, n_vertices: Mapping[str, int] | None = None, where: str | None = None
) -> dict[str, Any]:
    """Read a BERG metadata file into a plain dict (BERG's own nesting; any subset of the documented keys).

    NSD: ``fmri`` (``lh_ncsnr``..., ``{lh,rh}_fsaverage_rois`` as ``{name: int64 vertex indices}``) and
    ``encoding_models`` (image ids and per-vertex accuracy arrays). EEG: ``eeg`` (``ch_names`` list,
    ``times`` in seconds, ...) and ``encoding_models`` (correlations, image info). Whatever the file
    holds of the documented keys is returned; what is absent is absent.
    """
    where = where or str(path)
    d = _plain(_load_dict(Path(path), where))
    if family == "nsd_fsaverage":
        fmri = d.get("fmri") or {}
        if not isinstance(fmri, dict):
            raise ModelLoadError(f"{where}: 'fmri' must be a dict")
        for h in ("lh", "rh"):
            key = f"{h}_fsaverage_rois"
            if key in fmri:
                n = (n_vertices or {}).get(h, N_VERTICES)
                if not isinstance(fmri[key], dict):
                    raise ModelLoadError(f"{where}: fmri[{key!r}] must be a dict of ROI index arrays")
                fmri[key] = {str(k): _index_array(v, n, f"{where}: fmri[{key!r}][{k!r}]") for k, v in fmri[key].items()}
    elif family == "things_eeg_2":
        eeg = d.get("eeg") or {}
        if not isinstance(eeg, dict):
            raise ModelLoadError(f"{where}: 'eeg' must be a dict")
        if "ch_names" in eeg:
            eeg["ch_names"] = [str(c) for c in np.asarray(eeg["ch_names"]).tolist()]
        if "times" in eeg:
            eeg["times"] = np.asarray(eeg["times"], dtype=np.float64).ravel()
    else:
        raise ModelLoadError(f"unknown BERG catalogue family {family!r}; valid: {', '.join(FAMILIES)}")
    return d


def roi_rows(meta: Mapping[str, Any], n_lh: int) -> dict[str, np.ndarray]:
    """ROI name -> rows of the surface output (``lh`` indices, then ``rh`` indices + ``n_lh``)."""
    fmri = meta.get("fmri") or {}
    lh, rh = fmri.get("lh_fsaverage_rois") or {}, fmri.get("rh_fsaverage_rois") or {}
    out = {}
    for name in dict.fromkeys([*lh, *rh]):
        parts = [
            np.asarray(lh.get(name, np.zeros(0, np.int64)), np.int64),
            np.asarray(rh.get(name, np.zeros(0, np.int64)), np.int64) + n_lh,
        ]
        out[name] = np.concatenate(parts)
    return out


def _card_times(desc: Any) -> np.ndarray:
    """The card's times: a list in ms, or ``{start, step, n}``."""
    if isinstance(desc, dict):
        return float(desc["start"]) + float(desc["step"]) * np.arange(int(desc["n"]))
    return np.asarray(desc if desc is not None else [], dtype=np.float64)


# --------------------------------------------------------------------------- the layout


class BERGCatalogueLayout(ArtifactLayout):
    """BERG's bucket layout for the NSD-fsaverage and THINGS-EEG2 models (pickled ``.npy`` dicts)."""

    @property
    def family(self) -> str:
        family = self.spec.dataset
        if family not in FAMILIES:
            raise ModelLoadError(f"{self.spec.model_id}: dataset {family!r} is not a BERG catalogue family {FAMILIES}")
        return family

    # -- keys
    def metadata_keys(self, subject: Any) -> list[str]:
        return [metadata_key(subject)]

    def model_keys(self, subject: Any) -> list[str]:
        return [weights_key(subject), metadata_key(subject)]

    def all_keys(self) -> list[str]:
        return [k for s in self.spec.subjects for k in self.model_keys(s)]

    # -- files
    def weights(self, subject: Any) -> SubjectWeights:
        """The subject's weights (memory maps; read once per layout)."""
        cache = self.__dict__.setdefault("_weights", {})
        if subject not in cache:
            key = weights_key(subject)
            cache[subject] = read_weights(self.fetch(key), self.family, where=key)
        return cache[subject]

    def release(self) -> None:
        """Unmap the weights files: heads and projections hold their own arrays once the model is built."""
        self.__dict__.pop("_weights", None)

    def _n_vertices(self) -> dict[str, int]:
        lengths = (self.spec.parameters.get("selection") or {}).get("lengths") or {}
        return {h: int(lengths.get(f"{h}_vertices", N_VERTICES)) for h in ("lh", "rh")}

    def load_metadata(self, subject: Any) -> dict[str, Any]:
        cache = self.__dict__.setdefault("_metadata", {})
        if subject not in cache:
            key = metadata_key(subject)
            meta = read_metadata(self.fetch(key), self.family, n_vertices=self._n_vertices(), where=key)
            if self.family == "nsd_fsaverage":
                meta["rois"] = roi_rows(meta, self._n_vertices()["lh"])  # berg's flat form, into outputs
            cache[subject] = meta
        return cache[subject]

    # -- engine arrays
    def _projection_name(self, subject: Any, pca: str) -> str:
        return f"{subject_label(subject)}/{pca}"

    def load_heads(self, subject: Any) -> list[ReadoutHead]:
        w = self.weights(subject)
        expected = self.output_space(subject).n_outputs
        # heads on the same projection (NSD's lh and rh) become one readout: one matmul, one copy
        merged: dict[str, list[Linear]] = {}
        for _, proj, lin in w.heads:
            merged.setdefault(proj, []).append(lin)
        heads = [
            ReadoutHead(self._projection_name(subject, proj), stacked_readout(parts)) for proj, parts in merged.items()
        ]
        got = sum(h.readout.n_outputs for h in heads)
        if got != expected:
            raise ModelLoadError(
                f"{weights_key(subject)}: readouts give {got} outputs, the output space has {expected}"
            )
        return heads

    def load_projections(self, names: list[str | None]) -> dict[str, Projection | None]:
        from berg.store.artifacts import read_tensors

        out: dict[str, Projection | None] = {}
        for name in names:
            label, _, pca = str(name).partition("/")
            subject = next((s for s in self.spec.subjects if subject_label(s) == label), None)
            if subject is None or pca not in self.weights(subject).pcas:
                raise ModelLoadError(f"{self.spec.model_id}: no projection {name!r} in BERG's files")
            key = weights_key(subject)
            self.fetch(key)
            sha = self.store.sha256(self.spec.model_id, self.spec.source, key)
            w = self.weights(subject)
            path = self.store.derived(
                self.spec.model_id,
                f"projection-{label}-{pca}.safetensors",
                {key: sha, "pca": pca, "fold": FOLD_VERSION},
                lambda target, w=w, pca=pca: fold_projection(target, w, pca),
            )
            t = read_tensors(path, mmap=True)
            out[name] = Projection.from_tensors(t, str(path))
        return out

    def reliability(self, subject: Any) -> Reliability:
        """NSD: ``fmri.{lh,rh}_ncsnr`` (NSD-core, NC of the 3-trial mean); THINGS EEG2: ``eeg.ncsnr`` /
        ``eeg.noise_ceiling`` (channels x times, NC of the 80-trial test mean), repeated for each repetition
        readout. Flat in output order."""
        key = metadata_key(subject)
        meta = self.load_metadata(subject)
        if self.family == "nsd_fsaverage":
            fmri = meta.get("fmri") or {}
            if "lh_ncsnr" not in fmri or "rh_ncsnr" not in fmri:
                raise NoReliabilityError(
                    f"{self.spec.model_id} subject {subject}: {key} has no fmri.lh_ncsnr/rh_ncsnr "
                    f"(fmri keys: {', '.join(sorted(fmri)) or 'none'})"
                )
            n = self._n_vertices()
            snr = np.concatenate(
                [
                    np.asarray(fmri["lh_ncsnr"], np.float64)[: n["lh"]],
                    np.asarray(fmri["rh_ncsnr"], np.float64)[: n["rh"]],
                ]
            )
            return Reliability.from_ncsnr(snr, NSD_CORE_REPEATS, f"{key}: fmri.lh_ncsnr + fmri.rh_ncsnr (NSD-core)")
        eeg = meta.get("eeg") or {}
        space = self.output_space(subject)
        n_reps = int(np.prod(space.shape)) // int(np.prod(space.shape[-2:]))
        if "ncsnr" in eeg:
            snr = np.asarray(eeg["ncsnr"], np.float64)
            rel = Reliability.from_ncsnr(np.tile(snr.ravel(), n_reps), EEG_TEST_REPEATS, f"{key}: eeg.ncsnr")
            if "noise_ceiling" in eeg:
                nc = np.tile(np.asarray(eeg["noise_ceiling"], np.float64).ravel(), n_reps)
                nc = nc / 100.0 if nc.size and np.nanmax(nc) > 1.0 else nc
                rel = Reliability(rel.ncsnr, nc, EEG_TEST_REPEATS, f"{key}: eeg.ncsnr, eeg.noise_ceiling")
            return rel
        if "noise_ceiling" in eeg:
            nc = np.tile(np.asarray(eeg["noise_ceiling"], np.float64).ravel(), n_reps)
            return Reliability.from_noise_ceiling(nc, EEG_TEST_REPEATS, f"{key}: eeg.noise_ceiling")
        raise NoReliabilityError(
            f"{self.spec.model_id} subject {subject}: {key} has no eeg.ncsnr or eeg.noise_ceiling "
            f"(eeg keys: {', '.join(sorted(eeg)) or 'none'})"
        )

    def roi_indices(self, subject: Any) -> dict[str, np.ndarray]:
        if self.family != "nsd_fsaverage":
            return {}
        return self.load_metadata(subject)["rois"]

    def output_space(self, subject: Any):
        if self.family == "nsd_fsaverage":
            return SurfaceSpace.full("fsaverage", self._n_vertices())
        sel = self.spec.parameters.get("selection") or {}
        eeg = self.load_metadata(subject).get("eeg") or {}
        channels = eeg.get("ch_names") or sel.get("channels")
        times = eeg.get("times")
        times_ms = (
            np.round(np.asarray(times) * 1000.0, 6)
            if times is not None
            else _card_times(((self.spec.card.get("output") or {}).get("space") or {}).get("times_ms"))
        )
        if not channels or not len(times_ms):
            raise ModelLoadError(f"{metadata_key(subject)}: no channel names/times in the file or the card")
        return SensorTimeSpace(tuple(channels), times_ms, len(EEG_REPETITIONS))


# --------------------------------------------------------------------------- the model class


class _SquareCropTransform:
    """BERG's ViT-B/32 training preprocessing: centre-crop to the short side, resize to a square, normalise."""

    def __init__(self, base: Any):
        self.base = base  # the recipe's ImageTransform (resize="squash" to the target size)
        self.kind = "image"

    def _crop(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        side = min(h, w)
        top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
        return img[top : top + side, left : left + side]

    def __call__(self, items):
        return self.base([self._crop(np.asarray(i)) for i in items])

    def pixels_to_input(self, pixels):
        """The same preprocessing as differentiable torch ops on ``(B, 3, H, W)`` pixels in [0, 1]."""
        h, w = pixels.shape[-2:]
        side = min(h, w)
        top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
        return self.base.pixels_to_input(pixels[..., top : top + side, left : left + side])

    @property
    def input_size(self) -> tuple[int, int]:
        return self.base.input_size

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "centre_square_crop_first": True}


class _TorchvisionPresetTransform:
    """BERG's inference preprocessing: torchvision's ``weights.transforms()`` on uint8 tensors."""

    def __init__(self, resize_size: int, crop_size: int, mean, std):
        from torchvision.transforms._presets import ImageClassification

        self.preset = ImageClassification(
            crop_size=crop_size, resize_size=resize_size, mean=tuple(mean), std=tuple(std)
        )
        self.cfg = {
            "kind": "image",
            "resize_size": resize_size,
            "crop_size": crop_size,
            "mean": list(mean),
            "std": list(std),
            "pipeline": "torchvision ImageClassification preset on uint8 tensors",
        }
        self.kind = "image"
        self.crop_size = crop_size

    def __call__(self, items):
        import torch

        return torch.stack(
            [self.preset(torch.from_numpy(np.ascontiguousarray(np.asarray(i))).permute(2, 0, 1)) for i in items]
        )

    def pixels_to_input(self, pixels):
        """The preset's steps as differentiable torch ops on ``(B, 3, H, W)`` pixels in [0, 1].

        Same resize (shorter side, bilinear, antialiased), centre crop and normalisation; the preset itself
        resizes 8-bit tensors (to reproduce BERG's numbers), so ``encode`` and this path differ by that
        rounding only (<= 1/255 per pixel before normalisation).
        """
        from torchvision.transforms.v2 import functional as F

        x = F.resize(pixels, [self.preset.resize_size[0]], antialias=True)
        x = F.center_crop(x, [self.crop_size, self.crop_size])
        return F.normalize(x, list(self.preset.mean), list(self.preset.std))

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.crop_size, self.crop_size)

    def describe(self) -> dict[str, Any]:
        return dict(self.cfg)


class BERGCatalogueModel(LinearEncodingModel):
    """The linear engine plus the three things BERG's catalogue models declare beyond it.

    * ``preprocessing``: ``"training"`` (default, what the readouts were fitted on) or
      ``"berg_inference"`` (BERG's own inference transform, to reproduce BERG's numbers);
    * ``average_repetitions`` (EEG): mean over the 4 repetition readouts, ``(n, n_channels, n_times)``;
    * untrained AlexNet: the backbone BERG seeds with ``torch.manual_seed(20200220)`` before building
      it, rebuilt from the recipe's seed in a forked RNG (the caller's torch state is untouched).
    """

    @classmethod
    def _catalogue(cls, spec: ModelSpec) -> dict[str, Any]:
        return dict(spec.recipe.get("berg_catalogue") or {})

    @classmethod
    def extractor_for(cls, request: LoadRequest) -> FeatureExtractor:
        import dataclasses

        cfg = cls._catalogue(request.spec)
        seed = cfg.get("untrained_seed")
        if seed is not None and (
            request.backbone_weights in (None, "pretrained")
            or (request.backbone_weights == "untrained" and request.backbone_seed == 0)
        ):
            # the published model IS the seeded random network: rebuild exactly that one (an explicit
            # backbone_seed, or a weights file, still wins)
            request = dataclasses.replace(request, backbone_weights="untrained", backbone_seed=int(seed))
        base = super().extractor_for(request)
        variant = request.options.get("preprocessing") or "training"
        if variant == "training" and not cfg.get("training_square_crop"):
            return base
        ext = copy.copy(base)  # shares the network with other models of this load; only the transform differs
        t = request.spec.recipe["transform"]
        if variant == "training":
            ext.transform = _SquareCropTransform(base.transform)
        else:
            inf = cfg.get("inference") or {}
            ext.transform = _TorchvisionPresetTransform(
                int(inf.get("resize_size", 256)), int(inf.get("crop_size", 224)), t["mean"], t["std"]
            )
        return ext

    def setup(self) -> None:
        self._rep_spaces = dict(self.spaces)
        self._average = bool(self.options.get("average_repetitions"))
        if self._average:
            self.spaces = {
                s: sp.mean_repetitions() if isinstance(sp, SensorTimeSpace) else sp for s, sp in self.spaces.items()
            }

    def shape_outputs(self, subject: Any, flat: Any) -> Any:
        """Outputs in the repetition space, averaged over repetitions when ``average_repetitions`` (numpy or torch)."""
        rep_space = self._rep_spaces[subject]
        full = flat.reshape((flat.shape[0], *rep_space.shape))
        if not (self._average and isinstance(rep_space, SensorTimeSpace)):
            return full
        if isinstance(full, np.ndarray):
            return full.mean(axis=1, dtype=np.float64).astype(np.float32)
        return full.mean(dim=1)
