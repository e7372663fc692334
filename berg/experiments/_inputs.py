"""Input handling shared by the experiment modules: subjects, row blocks, ROIs, stimulus ids.

Responses arrive as a numpy array ``(n_stimuli, n_outputs)``, a ``{subject: array}`` dict, or any
array-like that supports ``shape`` and row slicing ``a[start:stop]`` (zarr arrays from a run store,
h5py datasets, ``np.memmap``). Such arrays are only ever read in row blocks, so memory stays bounded
by the block size, not by the number of stimuli.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError, close_matches

__all__ = [
    "as_subject_dict",
    "check_array",
    "n_outputs",
    "iter_row_blocks",
    "rows_per_block",
    "roi_indices_for",
    "select_outputs",
    "stimulus_ids_or_range",
    "resolve_device",
]

#: Default memory budget for one row block of responses (bytes).
BLOCK_BYTES = 256 * 2**20


def check_array(array: Any, name: str = "responses") -> Any:
    """Check that ``array`` is ``(n_stimuli, ...)`` with at least 2 axes; sequences become numpy arrays.

    Trailing axes (e.g. EEG ``(n_stimuli, n_reps, n_channels, n_times)``) are flattened block by block,
    in C order: output ``i`` is element ``i`` of the flattened trailing shape, as ROI indices count.
    """
    if not hasattr(array, "shape") or not hasattr(array, "__getitem__"):
        array = np.asarray(array)
    if len(array.shape) < 2:
        raise InvalidParameterError(
            f"{name} must be (n_stimuli, n_outputs); got shape {tuple(array.shape)}. "
            "Pass one subject's array, or a {subject: array} dict for several subjects."
        )
    return array


def n_outputs(array: Any) -> int:
    """Outputs per stimulus: the product of the trailing axes."""
    return int(np.prod(array.shape[1:], dtype=np.int64))


def as_subject_dict(responses: Any, name: str = "responses") -> dict[Any, Any]:
    """``{subject: array}`` from a dict or a single array (then the only key is ``None``)."""
    if isinstance(responses, Mapping):
        if not responses:
            raise InvalidParameterError(f"{name} is an empty dict; give at least one subject's responses")
        out = {s: check_array(a, f"{name}[{s!r}]") for s, a in responses.items()}
        n = {s: a.shape[0] for s, a in out.items()}
        if len(set(n.values())) != 1:
            raise InvalidParameterError(
                f"every subject must have responses to the same stimuli; n_stimuli per subject: {n}"
            )
        return out
    return {None: check_array(responses, name)}


def rows_per_block(array: Any, max_bytes: int = BLOCK_BYTES, itemsize: int = 8) -> int:
    """Rows per block so that one float64 block stays under ``max_bytes``, aligned to zarr/h5 chunks."""
    n_rows, n_cols = int(array.shape[0]), max(1, n_outputs(array))
    rows = max(1, max_bytes // (n_cols * itemsize))
    chunks = getattr(array, "chunks", None)
    if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], int) and chunks[0] > 0:
        # whole chunks only: reading a chunk partly decodes it anyway
        rows = max(chunks[0], (rows // chunks[0]) * chunks[0])
    return min(rows, n_rows)


def iter_row_blocks(
    array: Any, *, block_rows: int | None = None, columns: np.ndarray | None = None, dtype: Any = np.float64
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(start, stop, block)`` with ``block = array[start:stop][:, columns]`` as ``dtype``.

    ``array`` may be numpy, a memmap, a zarr array or an h5py dataset: only row slices are read.
    """
    n = int(array.shape[0])
    rows = block_rows or rows_per_block(array)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        block = np.asarray(array[start:stop])
        block = block.reshape(len(block), -1)
        if columns is not None:
            block = block[:, columns]
        yield start, stop, block.astype(dtype, copy=False)


def roi_indices_for(rois: Mapping[Any, Any], subject: Any, name: str) -> np.ndarray:
    """Indices of ROI ``name`` for ``subject``.

    ``rois`` is either ``{roi_name: indices}`` (the same for every subject, the form
    ``model.get_metadata()["rois"]`` gives for one subject) or ``{subject: {roi_name: indices}}``.
    """
    table = rois
    if subject is not None and subject in rois and isinstance(rois[subject], Mapping):
        table = rois[subject]
    elif rois and all(isinstance(v, Mapping) for v in rois.values()):
        raise InvalidParameterError(
            f"rois has per-subject entries {list(rois)} but none for subject {subject!r}; "
            "give {subject: {roi: indices}} for every subject, or one {roi: indices} for all"
        )
    if name not in table:
        hint = close_matches(str(name), [str(k) for k in table])
        raise InvalidParameterError(
            f"unknown ROI {name!r}; valid ROIs: {sorted(map(str, table))}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    idx = np.asarray(table[name])
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    return idx.astype(np.int64, copy=False)


def select_outputs(
    indices: np.ndarray, ncsnr: np.ndarray | None = None, threshold: float | None = None, *, roi: str = "ROI"
) -> np.ndarray:
    """Keep the outputs in ``indices`` whose noise-ceiling SNR is above ``threshold``.

    RNC (Gifford et al., gifale95/RNC, ``02_univariate_rnc/01_baseline.py``) keeps voxels with
    ``ncsnr > threshold`` (strictly greater), 0.5 by default; the same rule is used here.

    Parameters
    ----------
    indices : (k,) int array
        Output indices of the ROI.
    ncsnr : (n_outputs,) array, optional
        NCSNR of every output (e.g. from the model's metadata). None keeps all outputs.
    threshold : float, optional
        Lower bound (exclusive). None keeps all outputs.

    Returns
    -------
    (k',) int64 array
    """
    indices = np.asarray(indices, dtype=np.int64)
    if ncsnr is None or threshold is None:
        return indices
    ncsnr = np.asarray(ncsnr)
    kept = indices[ncsnr[indices] > threshold]
    if kept.size == 0:
        raise InvalidParameterError(
            f"no output of {roi} has ncsnr > {threshold} (its ncsnr range is "
            f"{float(np.nanmin(ncsnr[indices])):.3f}..{float(np.nanmax(ncsnr[indices])):.3f}); "
            "lower ncsnr_threshold or pass None"
        )
    return kept


def stimulus_ids_or_range(stimulus_ids: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray:
    """``stimulus_ids`` as an array of length ``n`` (``arange(n)`` when None)."""
    if stimulus_ids is None:
        return np.arange(n)
    ids = np.asarray(stimulus_ids)
    if ids.shape != (n,):
        raise InvalidParameterError(
            f"stimulus_ids has {ids.shape[0] if ids.ndim else 0} entries but the responses have {n} "
            "stimuli; give one id per row of the responses"
        )
    return ids


def resolve_device(device: str | None) -> str:
    """``"auto"``/None -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; other values are checked."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InvalidParameterError(f"device={device!r} but torch sees no CUDA GPU; use 'cpu' or 'auto'")
    return str(device)
