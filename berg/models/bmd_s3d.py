"""``fmri-bmd-s3d``: BERG's BOLD Moments video model, read from BERG's own bucket layout.

BERG publishes the model as pickled dicts saved with ``np.save`` (BERG's creation code, berg_creation_code/):

* ``encoding_models_weights/pca_weights.npy`` — ``{"scaler_param": {...}, "pca_param": {...}}``, the
  StandardScaler and TruncatedSVD(100) shared by all subjects (100 x 5,337,088);
* ``encoding_models_weights/weights_sub-SS.npy`` — ``{"coef_", "intercept_", "n_features_in_"}``;
* ``metadata/metadata_sub-SS.npy`` — ``{"fmri": {masks, affines, "rois"}, "encoding_models": {...}}``.

They are read with berg's restricted pickle interpreter (:mod:`berg.store.legacy`): nothing in them
is executed, and the big arrays come back as memory maps of the downloaded files. The scaler is
folded into the SVD components once, row by row (never a float64 copy of the matrix), and the
float32 result is cached as safetensors next to the download, so later loads memory-map it.

Assumptions about files we could not inspect (documented in the card):

* ROI entries are read exactly as BERG's loader indexes them (``coef_[rois[name]]``): a 1-D integer
  array or the 1-tuple ``np.where`` returns, positions in the subject's masked-voxel axis; anything BERG
  could not index is a :class:`~berg.errors.ModelLoadError`.
* Metadata may hold any subset of the documented keys; affines/headers are usually absent (only NIfTI
  output needs one: file, else the card's declared grid, else a clear error).
* The model's outputs are the subject mask's non-zero voxels in C order.

Weights are checked as they are read (a :class:`~berg.errors.ModelLoadError` names the file, the field
and the first bad entry): the scaler's ``mean_``/``scale_`` (finite, every scale > 0: scikit-learn
stores 1 for a constant feature, so a 0 is damage) before folding, each ``components_`` row while it
is folded (the one pass that reads the 4 GB matrix, so no second read), and each subject's ``coef_``
and ``intercept_`` when its readout is loaded. BERG's files have no checksum manifest: a byte flip
that leaves a float finite cannot be told from a real weight; the sha256 the store records on
download catches damage after that.
"""

from __future__ import annotations

import logging
import re
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from berg.core.layouts import ArtifactLayout
from berg.core.readouts import LinearReadout, Projection, check_finite, check_scaler, write_folded_projection
from berg.core.reliability import Reliability
from berg.core.spaces import VolumeSpace
from berg.errors import ModelLoadError, NoReliabilityError

__all__ = ["BMDLegacyLayout"]

log = logging.getLogger(__name__)

PCA_KEY = "encoding_models_weights/pca_weights.npy"
#: version of the scaler folding; bump it when the folded file would change (it keys the derived artifact)
#: 2: values are checked while folding (a file folded by version 1 from bad weights is folded and
#: checked again, not reused)
#: 3: stored in stream layout, ``weight_t`` = W.T (n_features, k), streamed where it lies (no transposed
#: copy in ``.berg-stream/``); a new version is a new file name, and the store removes the old file
FOLD_VERSION = "3"
# folded projections already memory-mapped in this process (dropped when no model uses them)
_OPEN_PROJECTIONS: weakref.WeakValueDictionary[str, Projection] = weakref.WeakValueDictionary()


def _extra_globals():
    # ROI NIfTI images and mask headers are pickled nibabel objects. Reconstructing them would run
    # nibabel's own __init__/__setstate__ code (file holders, header checks) on downloaded bytes; berg
    # needs none of it (the ROI index arrays and the mask affine carry the information), so every
    # nibabel global becomes an inert stand-in that only records the pickled state.
    from berg.store.legacy import StateOnly

    return {("nibabel", "*"): StateOnly}


def _sub(subject: int) -> str:
    return f"sub-{int(subject):02d}"


def _iter_rows(components: np.ndarray):
    """Yield the rows of ``components``, reading memory-mapped files with plain reads.

    The legacy loader returns BERG's 4 GB float64 components as a memory map. Touching every page of
    a mapping counts towards the process's resident set until the kernel reclaims it, so folding
    through the map would push peak RSS by the size of the source file. Reading each row with
    ``readinto`` goes through the page cache instead and keeps RSS at one row.
    """
    k, n = components.shape
    path = getattr(components, "filename", None)
    offset = getattr(components, "offset", None)
    if isinstance(components, np.memmap) and path and offset is not None and components.flags.c_contiguous:
        row_bytes = n * components.dtype.itemsize
        with open(path, "rb") as fh:
            fh.seek(offset)
            first = np.fromfile(fh, dtype=components.dtype, count=n)
            # a view of a memmap keeps the parent's offset: check that the file really holds row 0 there
            probe = min(n, 64)
            if first.size == n and np.array_equal(first[:probe], np.asarray(components[0, :probe]), equal_nan=True):
                yield first
                for i in range(1, k):
                    fh.seek(offset + i * row_bytes)
                    row = np.fromfile(fh, dtype=components.dtype, count=n)
                    if row.size != n:
                        raise ModelLoadError(f"{path}: truncated components_ (row {i})")
                    yield row
                return
    for i in range(k):
        yield components[i]


def _get(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        have = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise ModelLoadError(f"{where}: missing {key!r} (found {have})")
    return d[key]


#: BMD's noise-ceiling keys: ``noiseceiling_task_{train,test}_n_<repeats>``.
_NC_KEY = re.compile(r"noise_?ceiling.*_n_?(\d+)$")


class BMDLegacyLayout(ArtifactLayout):
    """BERG's bucket layout for ``fmri-bmd-s3d`` (pickled ``.npy`` dicts)."""

    def _weights_key(self, subject: Any) -> str:
        return f"encoding_models_weights/weights_{_sub(subject)}.npy"

    def _meta_key(self, subject: Any) -> str:
        return f"metadata/metadata_{_sub(subject)}.npy"

    def metadata_keys(self, subject: Any) -> list[str]:
        return [self._meta_key(subject)]

    def model_keys(self, subject: Any) -> list[str]:
        return [PCA_KEY, self._weights_key(subject), self._meta_key(subject)]

    def all_keys(self) -> list[str]:
        keys = [PCA_KEY]
        for s in self.spec.subjects:
            keys += [self._weights_key(s), self._meta_key(s)]
        return keys

    # ------------------------------------------------------------------ reading
    def _load(self, key: str) -> Any:
        from berg.store.legacy import load_legacy_npy

        path = self.fetch(key)
        obj = load_legacy_npy(path, extra_globals=_extra_globals())
        if not isinstance(obj, dict):
            raise ModelLoadError(f"{key}: expected a pickled dict, found {type(obj).__name__}")
        return obj

    def _converted_path(self) -> Path:
        """The folded projection: a derived artifact of ``pca_weights.npy`` (``Store.derived``).

        Keyed by the source file's sha256 and the folding code's version, recorded in the cache index
        and verified on reuse like a downloaded file (a corrupted copy is folded again, never used).
        """
        self.fetch(PCA_KEY)  # present and verified before its sha256 is trusted
        sha = self.store.sha256(self.spec.model_id, self.spec.source, PCA_KEY)
        return self.store.derived(
            self.spec.model_id, "projection.safetensors", {PCA_KEY: sha, "fold": FOLD_VERSION}, self._fold_projection
        )

    def _fold_projection(self, target: Path) -> None:
        pca = self._load(PCA_KEY)
        scaler = _get(pca, "scaler_param", PCA_KEY)
        svd = _get(pca, "pca_param", PCA_KEY)
        comps = _get(svd, "components_", f"{PCA_KEY}['pca_param']")
        mean = np.asarray(_get(scaler, "mean_", f"{PCA_KEY}['scaler_param']"))
        scale = np.asarray(_get(scaler, "scale_", f"{PCA_KEY}['scaler_param']"))
        if not isinstance(comps, np.ndarray) or comps.ndim != 2 or comps.dtype.kind != "f":
            raise ModelLoadError(
                f"{PCA_KEY}: pca_param['components_'] must be a 2-D float array, got {np.shape(comps)} "
                f"{getattr(comps, 'dtype', type(comps).__name__)}"
            )
        n = comps.shape[1]
        for name, arr in (("mean_", mean), ("scale_", scale)):
            if arr.shape != (n,):
                raise ModelLoadError(f"{PCA_KEY}: scaler {name} has shape {arr.shape}, components have {n} features")
        for where, d in (("scaler_param", scaler), ("pca_param", svd)):
            nf = d.get("n_features_in_")
            if nf is not None and int(nf) != n:
                raise ModelLoadError(f"{PCA_KEY}: {where}['n_features_in_'] = {nf} but components have {n} features")
        check_scaler(mean, scale, f"{PCA_KEY}['scaler_param']")  # named here; folded_rows checks them again (cheap)
        log.info("folding the scaler into %s components (once; cached at %s)", comps.shape, target)
        write_folded_projection(target, mean, scale, _iter_rows(comps), comps.shape, where=f"{PCA_KEY}['pca_param']")

    def load_projection(self) -> Projection:
        from berg.store.artifacts import read_tensors

        target = self._converted_path()
        # one mapping per process: models loaded side by side (e.g. 1 and 10 subjects) share the pages
        # instead of each counting the 2 GB projection in the resident set again
        st = target.stat()
        ident = f"{target}:{st.st_ino}:{st.st_mtime_ns}"  # a re-derived file is a new mapping
        proj = _OPEN_PROJECTIONS.get(ident)
        if proj is None:
            t = read_tensors(target, mmap=True)
            proj = Projection.from_tensors(t, str(target))
            _OPEN_PROJECTIONS[ident] = proj
        return proj

    def load_readout(self, subject: Any) -> LinearReadout:
        key = self._weights_key(subject)
        w = self._load(key)
        raw_coef, raw_intercept = _get(w, "coef_", key), _get(w, "intercept_", key)
        for name, arr in (("coef_", raw_coef), ("intercept_", raw_intercept)):
            if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
                raise ModelLoadError(
                    f"{key}: {name} must be a numeric array, got {getattr(arr, 'dtype', type(arr).__name__)}"
                )
        # checked as stored (a NaN/inf named in the file's dtype); a float64 value beyond float32's range
        # becomes inf in the converted copy, which LinearReadout checks (each subject's readout is small)
        check_finite(raw_coef, "coef_", key)
        check_finite(raw_intercept, "intercept_", key)
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: LinearReadout refuses it
            coef = np.asarray(raw_coef, dtype=np.float32)
            intercept = np.asarray(raw_intercept, dtype=np.float32).reshape(-1)
        if coef.ndim != 2 or intercept.shape != (coef.shape[0],):
            raise ModelLoadError(f"{key}: coef_ {coef.shape} and intercept_ {intercept.shape} do not fit")
        nf = w.get("n_features_in_")
        if nf is not None and int(nf) != coef.shape[1]:
            raise ModelLoadError(f"{key}: n_features_in_ = {nf} but coef_ has {coef.shape[1]} columns")
        expected = self.spec.n_outputs(subject)
        if expected is not None and coef.shape[0] != expected:
            raise ModelLoadError(f"{key}: {coef.shape[0]} voxels, the card declares {expected} for subject {subject}")
        return LinearReadout.from_tensors({"weight": coef, "bias": intercept}, key)

    # ------------------------------------------------------------------ metadata
    def _affine(self, fmri: dict[str, Any], key: str) -> np.ndarray | None:
        """The mask's affine: from the file when it has one, else the card's declared grid, else None.

        BERG's creation script saves no affine (its card and plot script mention ``sub_mask_affine``,
        so some files may have one); only writing NIfTI needs it (:meth:`VolumeSpace.to_nifti` then
        says how to pass one).
        """
        for name in ("sub_mask_affine", "group_mask_affine", "affine"):
            if name in fmri:
                aff = np.asarray(fmri[name], dtype=np.float64)
                if aff.shape != (4, 4):
                    raise ModelLoadError(f"{key}: fmri[{name!r}] has shape {aff.shape}, expected (4, 4)")
                return aff
        for name in ("sub_mask_header", "group_mask_header"):  # a pickled nibabel header/image stand-in
            state = getattr(fmri.get(name), "state", None)
            if isinstance(state, dict) and np.shape(state.get("_affine")) == (4, 4):
                return np.asarray(state["_affine"], dtype=np.float64)
        declared = ((self.spec.card.get("output") or {}).get("space") or {}).get("affine")
        return None if declared is None else np.asarray(declared, dtype=np.float64)

    def _roi_indices(self, fmri: dict[str, Any], n_voxels: int, key: str) -> dict[str, np.ndarray]:
        """ROI entries read exactly as BERG indexes them: ``coef_[rois[name]]``.

        An entry is a 1-D integer array or the 1-tuple ``np.where`` returns, giving positions in the
        subject's C-ordered masked-voxel axis (never flat volume indices); a 1-D boolean vector over
        that axis indexes it too. Anything BERG itself could not index is refused.
        """
        rois = fmri.get("rois") or {}
        out = {}
        for name, entry in rois.items():
            if isinstance(entry, tuple) and len(entry) == 1:
                entry = entry[0]
            arr = np.asarray(entry) if isinstance(entry, np.ndarray) else None
            if arr is None or arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
                what = f"a {type(entry).__name__}" + (f" of length {len(entry)}" if isinstance(entry, tuple) else "")
                raise ModelLoadError(
                    f"{key}: ROI {name!r} is {what}; BERG indexes readout rows with coef_[rois[name]], so an entry "
                    "must be a 1-D integer array (or the 1-tuple np.where returns) of masked-voxel positions"
                )
            if arr.dtype == bool:
                if arr.size != n_voxels:
                    raise ModelLoadError(
                        f"{key}: ROI {name!r} is a boolean vector of {arr.size}, not {n_voxels} voxels"
                    )
                arr = np.flatnonzero(arr)
            arr = arr.astype(np.int64)
            if arr.size and (arr.min() < 0 or arr.max() >= n_voxels):
                raise ModelLoadError(
                    f"{key}: ROI {name!r} positions span {arr.min()}..{arr.max()}, outside the subject's "
                    f"{n_voxels} masked voxels (entries index the masked-voxel axis, not the volume)"
                )
            out[name] = arr
        return out

    def load_metadata(self, subject: Any) -> dict[str, Any]:
        cache = self.__dict__.setdefault("_metadata_cache", {})
        if subject not in cache:
            cache[subject] = self._read_metadata(subject)
        return cache[subject]

    def reliability(self, subject: Any) -> Reliability:
        """BMD's test-split noise ceiling with the most repeats (``encoding_models.noiseceiling_task_test_n_10``,
        percent in BERG's files), per voxel of the subject mask; NCSNR derived from it."""
        enc = self.load_metadata(subject).get("encoding_models") or {}
        found = sorted((int(m.group(1)), k) for k in enc if (m := _NC_KEY.search(k)) and "test" in k) or sorted(
            (int(m.group(1)), k) for k in enc if (m := _NC_KEY.search(k))
        )
        if not found:
            raise NoReliabilityError(
                f"{self.spec.model_id} subject {subject}: {self._meta_key(subject)} has no "
                f"encoding_models.noiseceiling_*_n_<k> (keys: {', '.join(sorted(enc)) or 'none'})"
            )
        n, key = found[-1]  # the most repeats: the best-estimated ceiling
        return Reliability.from_noise_ceiling(enc[key], n, f"{self._meta_key(subject)}: encoding_models.{key}")

    def _read_metadata(self, subject: Any) -> dict[str, Any]:
        # Any subset of the documented keys: what is absent is absent (BERG's files hold fewer keys
        # than its card lists); only what is present is checked.
        key = self._meta_key(subject)
        meta = self._load(key)
        if not isinstance(meta, dict):
            raise ModelLoadError(f"{key}: expected a dict, got {type(meta).__name__}")
        fmri = meta.get("fmri") or {}
        if not isinstance(fmri, dict):
            raise ModelLoadError(f"{key}: 'fmri' must be a dict, got {type(fmri).__name__}")
        out_fmri: dict[str, Any] = {}
        n_vox = self.spec.n_outputs(subject)
        if "sub_mask" in fmri:
            mask = np.asarray(fmri["sub_mask"]) != 0
            if mask.ndim != 3:
                raise ModelLoadError(f"{key}: sub_mask must be 3-D, got {mask.shape}")
            out_fmri["sub_mask"] = mask
            n_vox = int(mask.sum())
        if "group_mask" in fmri:
            out_fmri["group_mask"] = np.asarray(fmri["group_mask"]) != 0
        affine = self._affine(fmri, key)
        if affine is not None:
            out_fmri["affine"] = affine
        if "rois" in fmri:
            if n_vox is None:
                raise ModelLoadError(f"{key}: ROIs need the subject's voxel count (no sub_mask, none in the card)")
            out_fmri["rois"] = self._roi_indices(fmri, n_vox, key)
        enc = {k: np.array(v) for k, v in (meta.get("encoding_models") or {}).items() if isinstance(v, np.ndarray)}
        for k, v in enc.items():
            if n_vox is not None and v.shape != (n_vox,):
                raise ModelLoadError(f"{key}: encoding_models[{k!r}] has shape {v.shape}, expected ({n_vox},)")
        return {"fmri": out_fmri, "encoding_models": enc}

    def roi_indices(self, subject: Any) -> dict[str, np.ndarray]:
        return self.load_metadata(subject)["fmri"].get("rois") or {}

    def output_space(self, subject: Any):
        fmri = self.load_metadata(subject)["fmri"]
        expected = self.spec.n_outputs(subject)
        if "sub_mask" not in fmri:
            from berg.core.spaces import FlatSpace

            log.warning("%s has no sub_mask: outputs cannot be placed in a volume", self._meta_key(subject))
            return FlatSpace(expected) if expected is not None else FlatSpace(self.load_readout(subject).n_outputs)
        mask = fmri["sub_mask"]
        if expected is not None and int(mask.sum()) != expected:
            raise ModelLoadError(
                f"{self._meta_key(subject)}: subject mask has {int(mask.sum())} voxels, the card declares {expected}"
            )
        return VolumeSpace.from_mask(mask, fmri.get("affine"), order="c")
