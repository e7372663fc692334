"""Synthetic datasets: any berg model's in silico responses to a stimulus set, with a declared noise model.

A synthetic dataset is what a model predicts for each stimulus (the *clean* response) plus, optionally,
trial noise sized so that every output has a chosen noise-ceiling SNR (NCSNR, Allen et al. 2022), given
directly, as a noise ceiling, or read from the model's own metadata (the reliability of the real data
the model was fitted on). With ``n_repeats`` noisy repetitions per stimulus the dataset is laid out
exactly like real data, in berg's training-dataset HDF5 format (:mod:`berg.training.datasets`), so
``berg train`` reads it and the decoders of :mod:`berg.experiments.decoding` read it too.

Noise model (per output ``v``): ``y_irv = clean_iv + e_irv`` with ``e ~ N(0, σ_v²)`` independent over
stimuli ``i`` and repeats ``r``, and ``σ_v = sqrt(var_v) / ncsnr_v`` where ``var_v`` is the variance
of the clean responses over the generated stimuli (or a given ``signal_var``). The noise ceiling of
the mean of ``n`` repeats is then ``ncsnr² / (ncsnr² + 1/n)`` (:func:`berg.metrics.noise_ceiling`).
The noise of stimulus ``i`` depends only on ``(seed, subject, i)``, so a dataset is reproducible
whatever the chunk size, and in-memory and on-disk generation give the same numbers.

Extra HDF5 content beside berg's training format (readers that do not know it ignore it)::

    /stimuli/categories            (n,) str   category of each stimulus (optional)
    /synthetic/<label>/ncsnr       (n_outputs,) float64  NCSNR the noise was sized for (absent: no noise)
    /synthetic/<label>/noise_sd    (n_outputs,) float64
    /synthetic/<label>/signal_var  (n_outputs,) float64
    /synthetic attrs: info (JSON: model id, noise model, seed, n_repeats, provenance)

Also here: the ground-truth pieces tests, benchmarks and the docs use (:func:`category_images`, images
with a planted category structure, and :class:`LinearBrain`, a known linear map plus known noise).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from berg.core.contract import BaseModelInterface, is_feature_model
from berg.errors import InvalidParameterError, NoReliabilityError
from berg.subjects import subject_label

__all__ = [
    "NOISE_KINDS",
    "SyntheticDataset",
    "LabelledDataset",
    "generate",
    "add_noise",
    "ncsnr_from_noise_ceiling",
    "read_labelled",
    "read_categories",
    "category_images",
    "LinearBrain",
]

log = logging.getLogger(__name__)

NOISE_KINDS = ("none", "ncsnr", "noise_ceiling", "metadata")
_CHUNK = 512  # stimuli per encode call when generating (models without iter_encode)
_CLEAN_IN_MEMORY = 2 << 30  # bytes of clean responses kept in memory between the two passes


# ------------------------------------------------------------------------------------------ noise


def ncsnr_from_noise_ceiling(noise_ceiling: Any, n: int) -> np.ndarray:
    """NCSNR that gives a noise ceiling (fraction) for the mean of ``n`` repeats.

    Inverse of :func:`berg.metrics.noise_ceiling`: ``NC = s / (s + 1/n)`` with ``s = ncsnr²``, so
    ``ncsnr = sqrt(NC / (n (1 - NC)))``.

    Parameters
    ----------
    noise_ceiling : float or array
        Fractions in [0, 1).
    n : int
        Repeats the noise ceiling refers to.
    """
    nc = np.asarray(noise_ceiling, dtype=np.float64)
    if n < 1:
        raise InvalidParameterError(f"noise-ceiling repeats must be >= 1, got {n}")
    if np.any(nc < 0) or np.any(nc >= 1) or not np.all(np.isfinite(nc)):
        raise InvalidParameterError(
            "noise ceilings must be fractions in [0, 1) (divide percentages by 100); "
            f"got values in [{np.nanmin(nc):.3g}, {np.nanmax(nc):.3g}]"
        )
    return np.sqrt(nc / (n * (1.0 - nc)))


NOISE_BLOCK = 64  # stimuli per noise stream: noise of rows [64 b, 64 b + 64) comes from (seed, subject, b)


def _block_noise(seed: int, subject_index: int, block: int, shape: tuple[int, int]) -> np.ndarray:
    """Standard-normal noise ``(NOISE_BLOCK, *shape)`` of one block of stimuli: a function of (seed, subject, block)."""
    rng = np.random.default_rng([int(seed), int(subject_index), int(block)])
    return rng.standard_normal((NOISE_BLOCK, *shape), dtype=np.float32)


def add_noise(
    clean: np.ndarray,
    noise_sd: np.ndarray | None,
    n_repeats: int,
    *,
    seed: int = 0,
    subject_index: int = 0,
    first_row: int = 0,
) -> np.ndarray:
    """Noisy repetitions of clean responses.

    Parameters
    ----------
    clean : (n, n_outputs) array
    noise_sd : (n_outputs,) array or None
        Per-output noise standard deviation (``None``: every repeat equals ``clean``).
    n_repeats : int
    seed, subject_index, first_row : int
        Row ``i`` of ``clean`` is stimulus ``first_row + i``; its noise depends only on ``seed``,
        ``subject_index`` and that stimulus index (blocks of :data:`NOISE_BLOCK` stimuli share one
        stream), so any split of the rows into calls gives the same numbers.

    Returns
    -------
    (n, n_repeats, n_outputs) float32 array
    """
    clean = np.asarray(clean, dtype=np.float32)
    out = np.repeat(clean[:, None, :], n_repeats, axis=1)
    if noise_sd is None:
        return out
    sd = np.asarray(noise_sd, dtype=np.float32)
    n, m = clean.shape
    first, last = first_row, first_row + n
    for block in range(first // NOISE_BLOCK, -(-last // NOISE_BLOCK)):
        lo, hi = max(first, block * NOISE_BLOCK), min(last, (block + 1) * NOISE_BLOCK)
        noise = _block_noise(seed, subject_index, block, (n_repeats, m))[
            lo - block * NOISE_BLOCK : hi - block * NOISE_BLOCK
        ]
        out[lo - first : hi - first] += noise * sd
    return out


class _Moments:
    """Running mean/variance per column (Chan et al. 1979 pairwise merge; float64)."""

    def __init__(self, m: int):
        self.n, self.mean, self.m2 = 0, np.zeros(m), np.zeros(m)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        nb = x.shape[0]
        if nb == 0:
            return
        # block moments from float32 data, accumulated in float64 (no float64 copy of the block)
        mb = x.mean(axis=0, dtype=np.float64)
        d = x - mb.astype(x.dtype)
        m2b = np.square(d).sum(axis=0, dtype=np.float64)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * nb / n
        self.m2 = self.m2 + m2b + delta**2 * self.n * nb / n
        self.n = n

    def var(self) -> np.ndarray:
        return self.m2 / max(self.n - 1, 1)


# -------------------------------------------------------------------------------------- datasets


@dataclass
class SyntheticDataset:
    """A generated dataset (in memory, or the description of the file written).

    Attributes
    ----------
    ids : list of str
    categories : (n,) str array or None
    split : (n,) str array
    responses : dict
        Subject -> ``(n, n_repeats, n_outputs)`` float32 array (in memory), or a lazy reader of the
        written file.
    clean : dict
        Subject -> ``(n, n_outputs)`` noiseless responses (in-memory generation only; empty otherwise).
    ncsnr, noise_sd, signal_var : dict
        Subject -> ``(n_outputs,)`` arrays (``ncsnr``/``noise_sd`` absent for ``noise="none"``).
    rois : dict
        Subject -> {ROI name: output indices}.
    path : Path or None
        The HDF5 file, when one was written.
    info : dict
        Noise model, seed, model id and provenance (also stored in the file).
    """

    ids: list[str]
    categories: np.ndarray | None
    split: np.ndarray
    responses: dict[Any, Any]
    clean: dict[Any, np.ndarray] = field(default_factory=dict, repr=False)
    ncsnr: dict[Any, np.ndarray] = field(default_factory=dict, repr=False)
    noise_sd: dict[Any, np.ndarray] = field(default_factory=dict, repr=False)
    signal_var: dict[Any, np.ndarray] = field(default_factory=dict, repr=False)
    rois: dict[Any, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def subjects(self) -> list[Any]:
        """Subjects in the dataset."""
        return list(self.responses)

    def expected_noise_ceiling(self, subject: Any, n: int | None = None) -> np.ndarray:
        """Noise ceiling (fraction) the noise was sized for, for the mean of ``n`` repeats (default: all)."""
        from berg.metrics import noise_ceiling

        if subject not in self.ncsnr:
            return np.ones(len(self.signal_var[subject]))
        return noise_ceiling(self.ncsnr[subject], n or int(self.info["n_repeats"]))


def _model_subjects(model: Any, subjects: Sequence[Any] | None) -> list[Any]:
    loaded = list(getattr(model, "subjects", [None]))
    if subjects is None:
        return loaded
    unknown = [s for s in subjects if s not in loaded]
    if unknown:
        raise InvalidParameterError(f"subjects {unknown} are not loaded in the model; loaded: {loaded}")
    return list(subjects)


def _encode(model: Any, items: Any) -> dict[Any, np.ndarray]:
    out = model.encode(items, show_progress=False)
    if isinstance(out, Mapping):
        return {s: np.asarray(v, dtype=np.float32).reshape(len(v), -1) for s, v in out.items()}
    out = np.asarray(out, dtype=np.float32)
    return {getattr(model, "subjects", [None])[0]: out.reshape(len(out), -1)}


def _iter_responses(model: Any, stimuli: Any, chunk_size: int, show_progress: bool):
    """Yield ``(start, stop, {subject: (b, n_outputs) float32})`` over all stimuli.

    berg's engine models are streamed through their own batching loop (``iter_encode``: one backbone
    pass per batch with the next batch prepared in a thread), so generation runs at ``encode``'s speed;
    any other model is called with ``encode`` on chunks of ``chunk_size`` stimuli.
    """
    if is_feature_model(model) and not model.group_level:
        prepared = model.prepare_stimuli(stimuli)
        subjects = list(model.subjects)
        for a, b, outs in model.iter_encode(prepared, show_progress=show_progress):
            yield a, b, {s: np.asarray(y, dtype=np.float32).reshape(b - a, -1) for s, y in zip(subjects, outs)}
        return
    for a, b in _chunks(len(stimuli), chunk_size, show_progress, "synthetic"):
        yield a, b, _encode(model, stimuli[a:b])


def _metadata(model: Any, subject: Any) -> Mapping[str, Any]:
    meta = model.get_metadata()
    if len(getattr(model, "subjects", [None])) > 1 and isinstance(meta, Mapping) and subject in meta:
        return meta[subject]
    return meta


def _reliability_ncsnr(model: Any, subject: Any) -> np.ndarray:
    """The NCSNR of the model's training data, from the model's own reliability accessor."""
    if not isinstance(model, BaseModelInterface):
        raise InvalidParameterError(
            "noise='metadata' reads model.reliability() (berg's model interface); for another model pass "
            "noise='ncsnr' with ncsnr=<array> or noise='noise_ceiling' with noise_ceiling=<fractions>"
        )
    try:
        return model.reliability(subject).ncsnr
    except NoReliabilityError as exc:
        raise InvalidParameterError(
            f"{exc}; pass noise='ncsnr' with ncsnr=<array> or noise='noise_ceiling' with noise_ceiling=<fractions>"
        ) from exc


def _selected(model: Any, subject: Any) -> np.ndarray | None:
    rows = getattr(model, "selected_rows", None)
    return None if not rows else rows.get(subject)


def _model_rois(model: Any, subject: Any) -> dict[str, np.ndarray]:
    """The model's ROIs as indices into the (possibly selected) outputs."""
    try:
        rois = dict(_metadata(model, subject).get("rois") or {})
    except Exception as exc:  # a model without metadata still generates; it just has no ROIs
        log.debug("no ROI metadata for subject %s: %s", subject, exc)
        return {}
    rows = _selected(model, subject)
    out = {}
    for name, idx in rois.items():
        idx = np.asarray(idx[0] if isinstance(idx, tuple) else idx, dtype=np.int64).ravel()
        if rows is not None:  # keep the ROI's selected outputs, renumbered into the selection
            pos = np.searchsorted(rows, idx)
            ok = (pos < len(rows)) & (rows[np.minimum(pos, len(rows) - 1)] == idx)
            idx = pos[ok]
        out[str(name)] = idx
    return out


def _resolve_ncsnr(
    noise: str,
    model: Any,
    subject: Any,
    n_outputs: int,
    n_repeats: int,
    *,
    ncsnr: Any,
    noise_ceiling: Any,
    ceiling_repeats: int | None,
) -> np.ndarray | None:
    if noise == "none":
        return None
    if noise == "ncsnr":
        value = ncsnr[subject] if isinstance(ncsnr, Mapping) else ncsnr
        if value is None:
            raise InvalidParameterError(
                "noise='ncsnr' needs ncsnr= (a number, an array per output, or {subject: array})"
            )
        out = np.asarray(value, dtype=np.float64)
    elif noise == "noise_ceiling":
        value = noise_ceiling[subject] if isinstance(noise_ceiling, Mapping) else noise_ceiling
        if value is None:
            raise InvalidParameterError(
                "noise='noise_ceiling' needs noise_ceiling= (fractions, per output or one number)"
            )
        out = ncsnr_from_noise_ceiling(value, int(ceiling_repeats or n_repeats))
    else:
        out = _reliability_ncsnr(model, subject)
    out = np.broadcast_to(out, (n_outputs,)).astype(np.float64) if out.ndim == 0 else out
    if out.shape != (n_outputs,):
        raise InvalidParameterError(
            f"subject {subject}: NCSNR has shape {out.shape}, the model has {n_outputs} outputs"
        )
    if np.any(out < 0) or not np.all(np.isfinite(out)):
        raise InvalidParameterError(f"subject {subject}: NCSNR values must be finite and >= 0")
    return out


def _noise_sd(ncsnr: np.ndarray | None, signal_var: np.ndarray) -> np.ndarray | None:
    if ncsnr is None:
        return None
    # ncsnr = 0 asks for infinite noise; 1000x the signal sd drives the measured ceiling to ~0 instead.
    return np.sqrt(signal_var) / np.maximum(ncsnr, 1e-3)


def _validate(
    n: int, ids: Sequence[str] | None, categories: Any, split: Any, n_repeats: int, noise: str
) -> tuple[list[str], np.ndarray | None, np.ndarray]:
    if noise not in NOISE_KINDS:
        from berg.errors import close_matches

        hint = close_matches(str(noise), NOISE_KINDS)
        raise InvalidParameterError(
            f"noise={noise!r} unknown; valid: {list(NOISE_KINDS)}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    if int(n_repeats) < 1:
        raise InvalidParameterError(f"n_repeats must be >= 1, got {n_repeats}")
    if n < 1:
        raise InvalidParameterError("no stimuli to generate responses for")
    ids = [f"synthetic-{i:06d}" for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(ids) != n:
        raise InvalidParameterError(f"{len(ids)} ids for {n} stimuli")
    cats = None if categories is None else np.asarray(categories).astype(str)
    if cats is not None and cats.shape != (n,):
        raise InvalidParameterError(f"categories must have one label per stimulus ({n}), got shape {cats.shape}")
    split = np.full(n, "train") if split is None else np.asarray(split).astype(str)
    if split.shape != (n,):
        raise InvalidParameterError(f"split must have one label per stimulus ({n}), got shape {split.shape}")
    return ids, cats, split


def generate(
    model: Any,
    stimuli: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    n_repeats: int = 1,
    noise: str = "none",
    ncsnr: Any = None,
    noise_ceiling: Any = None,
    ceiling_repeats: int | None = None,
    signal_var: Mapping[Any, np.ndarray] | None = None,
    subjects: Sequence[Any] | None = None,
    ids: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    split: Sequence[str] | None = None,
    seed: int = 0,
    chunk_size: int = _CHUNK,
    name: str = "synthetic",
    show_progress: bool = False,
) -> SyntheticDataset:
    """Generate a synthetic dataset of a model's responses to ``stimuli``.

    Parameters
    ----------
    model : encoding model
        What ``berg.get_encoding_model`` returns (anything with ``encode(stimuli, show_progress=)``,
        ``subjects`` and, for ``noise="metadata"`` or ROIs, ``get_metadata()``).
    stimuli : (n, H, W, 3) uint8 array, list of image paths, or anything ``model.encode`` accepts
        Sliced in chunks of ``chunk_size``. Arrays are stored inline in the file, paths as paths.
    path : path, optional
        Write the dataset there (berg's training-dataset HDF5, atomically) and stream: responses are
        never all in memory. Without a path everything is returned in memory.
    n_repeats : int
        Repetitions per stimulus (each with its own noise).
    noise : {"none", "ncsnr", "noise_ceiling", "metadata"}
        ``none``: every repeat is the model's response. ``ncsnr``: noise for the given ``ncsnr``
        (number, per-output array or {subject: array}). ``noise_ceiling``: noise for the given
        noise ceiling (fractions) of the mean of ``ceiling_repeats`` repeats (default ``n_repeats``).
        ``metadata``: the NCSNR of the model's training data (``model.reliability(subject)``).
    signal_var : {subject: (n_outputs,) array}, optional
        Signal variance the noise is sized against (default: the variance of the clean responses
        over these stimuli, which makes the dataset's measured NCSNR equal the one asked for).
    subjects : list, optional
        Subset of the model's loaded subjects.
    ids, categories, split : sequences, optional
        Stimulus ids (default ``synthetic-000000`` ...), category labels (stored for decoders), and
        split labels (default all ``"train"``).
    seed : int
        Seeds the noise (stimulus ``i`` of the ``j``-th subject: stream ``(seed, j, i // 64)``).
    chunk_size : int
        Stimuli per ``encode`` call for models without berg's ``iter_encode`` (engine models stream batch by batch).
    name : str
        Dataset name (HDF5 attribute).

    Returns
    -------
    SyntheticDataset

    Notes
    -----
    With a ``path``, generation runs at the model's encode speed: one background thread stores each
    encoded batch (its clean rows, stimuli and standard-normal noise) while the model encodes the next,
    with at most two batches waiting, so memory stays bounded. Once every stimulus is encoded (the
    noise is sized by the variance over all of them), the noise is scaled and the clean rows added in
    place. The bytes written depend only on the inputs and ``seed``, never on the thread's timing.

    Examples
    --------
    >>> data = generate(model, images, "synthetic.h5", n_repeats=4, noise="metadata")  # doctest: +SKIP
    """
    n = len(stimuli)
    ids, cats, split = _validate(n, ids, categories, split, n_repeats, noise)
    subjects = _model_subjects(model, subjects)
    if chunk_size < 1:
        raise InvalidParameterError(f"chunk_size must be >= 1, got {chunk_size}")
    info = {
        "model_id": getattr(model, "model_id", type(model).__name__),
        "noise": noise,
        "seed": int(seed),
        "n_repeats": int(n_repeats),
        "n_stimuli": n,
        "ceiling_repeats": int(ceiling_repeats) if ceiling_repeats else None,
    }
    prov = getattr(model, "provenance", None)
    if callable(prov):
        try:
            info["provenance"] = prov()
        except Exception as exc:  # provenance is a record; never fail generation over it
            log.warning("model provenance unavailable: %s", exc)
    if path is None:
        return _generate_memory(
            model,
            stimuli,
            subjects,
            ids,
            cats,
            split,
            info,
            ncsnr=ncsnr,
            noise_ceiling=noise_ceiling,
            ceiling_repeats=ceiling_repeats,
            signal_var=signal_var,
            chunk_size=chunk_size,
            show_progress=show_progress,
        )
    return _generate_file(
        model,
        stimuli,
        Path(path),
        subjects,
        ids,
        cats,
        split,
        info,
        name=name,
        ncsnr=ncsnr,
        noise_ceiling=noise_ceiling,
        ceiling_repeats=ceiling_repeats,
        signal_var=signal_var,
        chunk_size=chunk_size,
        show_progress=show_progress,
    )


def _chunks(n: int, size: int, show_progress: bool, desc: str):
    from tqdm.auto import tqdm

    with tqdm(total=n, disable=not show_progress, desc=desc, unit="stim", leave=False) as bar:
        for a in range(0, n, size):
            b = min(a + size, n)
            yield a, b
            bar.update(b - a)


def _finish(model, subjects, clean_var, info, *, ncsnr, noise_ceiling, ceiling_repeats, signal_var, n_outputs):
    out_ncsnr, out_sd, out_var, rois = {}, {}, {}, {}
    for s in subjects:
        var = np.asarray(signal_var[s], dtype=np.float64) if signal_var is not None else clean_var[s]
        snr = _resolve_ncsnr(
            info["noise"],
            model,
            s,
            n_outputs[s],
            info["n_repeats"],
            ncsnr=ncsnr,
            noise_ceiling=noise_ceiling,
            ceiling_repeats=ceiling_repeats,
        )
        out_var[s] = var
        if snr is not None:
            out_ncsnr[s], out_sd[s] = snr, _noise_sd(snr, var)
        rois[s] = _model_rois(model, s)
    return out_ncsnr, out_sd, out_var, rois


def _generate_memory(
    model,
    stimuli,
    subjects,
    ids,
    cats,
    split,
    info,
    *,
    ncsnr,
    noise_ceiling,
    ceiling_repeats,
    signal_var,
    chunk_size,
    show_progress,
) -> SyntheticDataset:
    parts: dict[Any, list[np.ndarray]] = {s: [] for s in subjects}
    for _, _, out in _iter_responses(model, stimuli, chunk_size, show_progress):
        for s in subjects:
            parts[s].append(out[s])
    clean = {s: np.concatenate(p) for s, p in parts.items()}
    var = {
        s: c.astype(np.float64).var(axis=0, ddof=1) if len(c) > 1 else np.zeros(c.shape[1]) for s, c in clean.items()
    }
    snr, sd, var, rois = _finish(
        model,
        subjects,
        var,
        info,
        ncsnr=ncsnr,
        noise_ceiling=noise_ceiling,
        ceiling_repeats=ceiling_repeats,
        signal_var=signal_var,
        n_outputs={s: c.shape[1] for s, c in clean.items()},
    )
    responses = {
        s: add_noise(clean[s], sd.get(s), info["n_repeats"], seed=info["seed"], subject_index=j)
        for j, s in enumerate(subjects)
    }
    return SyntheticDataset(ids, cats, split, responses, clean, snr, sd, var, rois, None, info)


_QUEUE_BATCHES = 2  # encoded batches waiting for the writer thread (bounds the extra memory)
_PASS2_ROWS = 1024  # rows per read-scale-write step of pass 2


class _NoiseRows:
    """Standard-normal noise of consecutive rows of one subject: the blocks of :func:`_block_noise`.

    Rows ``[a, b)`` equal ``add_noise``'s noise for those rows; a block that a call leaves half used is
    kept for the next call, so batches that do not align with :data:`NOISE_BLOCK` draw every block once.
    """

    def __init__(self, seed: int, subject_index: int, shape: tuple[int, int]):
        self.seed, self.subject_index, self.shape = seed, subject_index, shape
        self._block, self._noise = -1, np.empty(0, np.float32)

    def _get(self, block: int) -> np.ndarray:
        if block != self._block:
            self._block, self._noise = block, _block_noise(self.seed, self.subject_index, block, self.shape)
        return self._noise

    def rows(self, first: int, last: int) -> np.ndarray:
        """``(last - first, *shape)`` float32 noise of rows ``[first, last)``."""
        out = np.empty((last - first, *self.shape), dtype=np.float32)
        for block in range(first // NOISE_BLOCK, -(-last // NOISE_BLOCK)):
            lo, hi = max(first, block * NOISE_BLOCK), min(last, (block + 1) * NOISE_BLOCK)
            out[lo - first : hi - first] = self._get(block)[lo - block * NOISE_BLOCK : hi - block * NOISE_BLOCK]
        return out


class _Writer:
    """The one background writer of file generation: stores each encoded batch while the next one encodes.

    Per batch ``[a, b)`` (in order, from one thread, so nothing depends on timing): the clean rows are
    kept (in memory or in the scratch file), the running moments updated, the stimuli of those rows
    written, and the rows' *standard-normal* noise drawn and written into the final responses dataset
    (or, with ``noise="none"``, the clean rows themselves). Pass 2 then only scales that noise by the
    per-output standard deviation and adds the clean rows: ``y = clean + z * sd``, the same float32
    operations as :func:`add_noise`, so the bytes equal in-memory generation's.
    """

    def __init__(
        self, h5: Any, scratch: Path, n: int, subjects: list[Any], stimuli: Any, n_repeats: int, seed: int, noisy: bool
    ):
        self.h5, self.scratch, self.n, self.subjects = h5, scratch, n, subjects
        self.stimuli, self.n_repeats, self.seed, self.noisy = stimuli, n_repeats, seed, noisy
        self.scratch_file: Any = None
        self.moments: dict[Any, _Moments] = {}
        self.clean: dict[Any, Any] = {}
        self.responses: dict[Any, Any] = {}
        self.noise: dict[Any, _NoiseRows] = {}

    def _first(self, out: Mapping[Any, np.ndarray]) -> None:
        import h5py

        widths = {s: out[s].shape[1] for s in self.subjects}
        if self.n * sum(widths.values()) * 4 > _CLEAN_IN_MEMORY:
            self.scratch_file = h5py.File(self.scratch, "w")
        n, reps = self.n, self.n_repeats
        for j, s in enumerate(self.subjects):
            m = widths[s]
            self.moments[s] = _Moments(m)
            if self.scratch_file is None:
                self.clean[s] = np.empty((n, m), dtype=np.float32)
            else:
                self.clean[s] = self.scratch_file.create_dataset(
                    subject_label(s), shape=(n, m), dtype=np.float32, chunks=(min(n, 64), min(m, 1 << 14))
                )
            sg = self.h5.create_group(f"subjects/{subject_label(s)}")
            sg.attrs["subject"] = s
            # berg's training-dataset layout (berg.training.datasets.write_dataset's chunks)
            self.responses[s] = sg.create_dataset(
                "responses", shape=(n, reps, m), dtype=np.float32, chunks=(min(n, 16), reps, min(m, 1 << 14))
            )
            self.noise[s] = _NoiseRows(self.seed, j, (reps, m))

    def batch(self, a: int, b: int, out: Mapping[Any, np.ndarray]) -> None:
        """Store rows ``[a, b)``."""
        if not self.moments:
            self._first(out)
        if isinstance(self.stimuli, np.ndarray):
            self.h5["stimuli/images"][a:b] = self.stimuli[a:b]
        for s in self.subjects:
            y = out[s]
            self.clean[s][a:b] = y
            self.moments[s].update(y)
            if self.noisy:
                self.responses[s][a:b] = self.noise[s].rows(a, b)
            else:
                self.responses[s][a:b] = np.repeat(y[:, None, :], self.n_repeats, axis=1)

    def add_clean(self, sd: Mapping[Any, np.ndarray]) -> None:
        """Pass 2: ``responses = clean + noise * sd`` in place, row block by row block."""
        for s in self.subjects:
            if s not in sd:
                continue
            sd32 = np.asarray(sd[s], dtype=np.float32)
            r, c = self.responses[s], self.clean[s]
            for a in range(0, self.n, _PASS2_ROWS):
                b = min(a + _PASS2_ROWS, self.n)
                z = r[a:b]
                z *= sd32
                z += np.asarray(c[a:b])[:, None, :]
                r[a:b] = z

    def close_scratch(self) -> None:
        if self.scratch_file is not None:
            self.scratch_file.close()
            self.scratch_file = None


def _pipelined(source: Any, work: Any, depth: int = _QUEUE_BATCHES) -> None:
    """Run ``work(*item)`` for every item of ``source`` in one background thread, in order.

    The producer (``source``: the model's encode loop) runs here and blocks when ``depth`` items wait,
    so memory stays bounded; an error on either side stops both and is raised here.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    failed: list[BaseException] = []
    stop = threading.Event()
    done = object()

    def run() -> None:
        while True:
            item = q.get()
            if item is done:
                return
            if failed:
                continue  # drain after an error so the producer never blocks on a full queue
            try:
                work(*item)
            except BaseException as exc:  # re-raised in the calling thread
                failed.append(exc)
                stop.set()

    thread = threading.Thread(target=run, name="berg-synthetic-writer", daemon=True)
    thread.start()
    try:
        for item in source:
            if stop.is_set():
                break
            q.put(item)
    finally:
        q.put(done)
        thread.join()
        close = getattr(source, "close", None)
        if close is not None:  # stops the encode loop (and its prefetch thread) when we broke out early
            close()
    if failed:
        raise failed[0]


def _generate_file(
    model,
    stimuli,
    path,
    subjects,
    ids,
    cats,
    split,
    info,
    *,
    name,
    ncsnr,
    noise_ceiling,
    ceiling_repeats,
    signal_var,
    chunk_size,
    show_progress,
) -> SyntheticDataset:
    import h5py

    from berg.fsutil import atomic_path, temporary_name
    from berg.training.datasets import (
        FORMAT,
        FORMAT_VERSION,
        EncodingDataset,
        SubjectData,
        _H5Responses,
    )

    n = len(stimuli)
    stim = stimuli if isinstance(stimuli, np.ndarray) else [str(p) for p in stimuli]
    # Pass 1 (the model's encode loop) hands each batch to one writer thread, which keeps the clean rows
    # (in memory when they fit in _CLEAN_IN_MEMORY bytes, else in a scratch file beside the target),
    # accumulates their moments and writes the stimuli and the rows' standard-normal noise while the next
    # batch encodes. Pass 2 sizes the noise by the variance over *all* stimuli and adds the clean rows.
    scratch = temporary_name(path, ".clean.h5")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".h5") as tmp:
        writer = None
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "kind": "image"})
                g = f.create_group("stimuli")
                if isinstance(stim, np.ndarray):  # written batch by batch with the rows
                    g.create_dataset("images", shape=stim.shape, dtype=stim.dtype, chunks=(1,) + stim.shape[1:])
                else:
                    g.create_dataset("paths", data=stim, dtype=h5py.string_dtype())
                g.create_dataset("ids", data=list(ids), dtype=h5py.string_dtype())
                f.create_dataset("split", data=split.tolist(), dtype=h5py.string_dtype())
                writer = _Writer(
                    f, scratch, n, subjects, stim, info["n_repeats"], info["seed"], noisy=info["noise"] != "none"
                )
                _pipelined(_iter_responses(model, stimuli, chunk_size, show_progress), writer.batch)
                snr, sd, var, rois = _finish(
                    model,
                    subjects,
                    {s: m.var() for s, m in writer.moments.items()},
                    info,
                    ncsnr=ncsnr,
                    noise_ceiling=noise_ceiling,
                    ceiling_repeats=ceiling_repeats,
                    signal_var=signal_var,
                    n_outputs={s: r.shape[2] for s, r in writer.responses.items()},
                )
                shapes = {s: writer.responses[s].shape for s in subjects}
                # berg's dataset checks (ids, splits, ROI ranges) on the shapes, before pass 2's work
                EncodingDataset(
                    name=name,
                    kind="image",
                    stimuli=stim,
                    ids=ids,
                    split=split,
                    subjects={
                        s: SubjectData(np.broadcast_to(np.float32(0), shapes[s]), None, rois[s]) for s in subjects
                    },
                )
                writer.add_clean(sd)
                for s in subjects:
                    sg = f[f"subjects/{subject_label(s)}"]
                    for roi, idx in rois[s].items():
                        sg.create_dataset(f"rois/{roi}", data=np.asarray(idx, dtype=np.int64))
                if cats is not None:
                    f.create_dataset("stimuli/categories", data=cats.tolist(), dtype=h5py.string_dtype())
                sg = f.require_group("synthetic")
                sg.attrs["info"] = json.dumps(info, default=str)
                for s in subjects:
                    g = sg.require_group(subject_label(s))
                    g.create_dataset("signal_var", data=var[s])
                    if s in snr:
                        g.create_dataset("ncsnr", data=snr[s])
                        g.create_dataset("noise_sd", data=sd[s])
        finally:
            if writer is not None:
                writer.close_scratch()
            try:
                scratch.unlink()
            except OSError:
                pass
    responses = {s: _H5Responses(path, f"/subjects/{subject_label(s)}/responses", shapes[s]) for s in subjects}
    return SyntheticDataset(ids, cats, split, responses, {}, snr, sd, var, rois, path, info)


# --------------------------------------------------------------------------------- labelled reads


@dataclass
class LabelledDataset:
    """A berg dataset file with its stimulus categories (what the decoders read).

    Attributes
    ----------
    dataset : berg.training.datasets.EncodingDataset
        Lazy responses per subject.
    categories : (n,) str array or None
    info : dict
        The ``/synthetic`` record (empty for real data).
    ncsnr : dict
        Subject -> the NCSNR the noise was sized for (synthetic data with noise only).
    """

    dataset: Any
    categories: np.ndarray | None
    info: dict[str, Any]
    ncsnr: dict[Any, np.ndarray]

    @property
    def ids(self) -> list[str]:
        """Stimulus ids."""
        return self.dataset.ids

    def responses(self, subject: Any, *, rows: Any = None) -> np.ndarray:
        """``(n, n_repeats, n_outputs)`` float32 responses of a subject (all rows or ``rows``)."""
        if subject not in self.dataset.subjects:
            raise InvalidParameterError(
                f"subject {subject!r} not in the dataset; subjects: {list(self.dataset.subjects)}"
            )
        r = self.dataset.subjects[subject].responses
        return np.asarray(r[:] if rows is None else r[np.asarray(rows)])


def read_categories(path: str | os.PathLike[str]) -> np.ndarray | None:
    """``/stimuli/categories`` of a berg dataset file, or ``None`` when it has none."""
    import h5py

    with h5py.File(path, "r") as f:
        return np.asarray(f["stimuli/categories"].asstr()[()]) if "stimuli/categories" in f else None


def read_labelled(path: str | os.PathLike[str]) -> LabelledDataset:
    """Open a berg dataset file (synthetic or real) with its categories and synthetic record."""
    import h5py

    from berg.training.datasets import read_dataset

    ds = read_dataset(path, checksum=False)
    info, snr = {}, {}
    with h5py.File(path, "r") as f:
        if "synthetic" in f:
            info = json.loads(f["synthetic"].attrs.get("info", "{}"))
            for s in ds.subjects:
                g = f["synthetic"].get(subject_label(s))
                if g is not None and "ncsnr" in g:
                    snr[s] = g["ncsnr"][()]
    return LabelledDataset(ds, read_categories(path), info, snr)


# ------------------------------------------------------------------------------ ground truth (tests)


def category_images(
    n_categories: int, n_per_category: int, *, size: int = 64, prototype_weight: float = 0.6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Images with a planted category structure (for tests and demos; not natural images).

    Each category has a prototype (smooth random colour field); an exemplar is
    ``w * prototype + (1 - w) * its own smooth random field``, so exemplars of a category share
    low-level structure a network's features (and a linear "brain" on them) can pick up. The first
    ``k`` exemplars of a category are the same for any ``n_per_category >= k`` (new exemplars of the
    same categories: call again with a larger ``n_per_category``).

    Returns
    -------
    images : (n_categories * n_per_category, size, size, 3) uint8
    categories : (n,) str, ``"cat00"``, ``"cat01"``, ... in blocks
    """
    from scipy.ndimage import gaussian_filter

    if not 0.0 <= prototype_weight <= 1.0:
        raise InvalidParameterError(f"prototype_weight must be in [0, 1], got {prototype_weight}")

    def field_(rng: np.random.Generator) -> np.ndarray:
        x = gaussian_filter(rng.standard_normal((size, size, 3)), sigma=(size / 10, size / 10, 0))
        return (x - x.mean()) / (x.std() + 1e-12)

    # prototypes and each category's exemplars come from their own streams, so asking for more
    # exemplars (or categories) extends a set without changing the images already drawn
    proto_rng = np.random.default_rng([seed, 0])
    images, labels = [], []
    for c in range(n_categories):
        proto = field_(proto_rng)
        rng = np.random.default_rng([seed, 1, c])
        for _ in range(n_per_category):
            x = prototype_weight * proto + (1.0 - prototype_weight) * field_(rng)
            images.append(np.clip(128 + 50 * x, 0, 255).astype(np.uint8))
            labels.append(f"cat{c:02d}")
    return np.stack(images), np.asarray(labels)


@dataclass
class LinearBrain:
    """A known "brain": outputs linear in standardised features, plus Gaussian trial noise of known size.

    ``signal = z @ weight.T`` with ``z`` the features standardised by ``(mean, scale)``; each output's
    signal is scaled to unit variance over the stimuli it was built on, and its noise standard
    deviation is ``1 / ncsnr``, so the noise ceiling of an ``n``-repeat mean is
    ``ncsnr² / (ncsnr² + 1/n)`` exactly (in expectation).

    Build with :meth:`from_features`.
    """

    weight: np.ndarray  # (m, k) on standardised features
    mean: np.ndarray
    scale: np.ndarray
    ncsnr: np.ndarray  # (m,)
    rois: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_features(
        cls,
        features: np.ndarray,
        n_outputs: int,
        *,
        ncsnr: Any = 1.0,
        n_components: int = 10,
        rois: Mapping[str, np.ndarray] | None = None,
        seed: int = 0,
    ) -> LinearBrain:
        """A random map from the top ``n_components`` principal directions of ``features``.

        Parameters
        ----------
        features : (n, F) array
            Features of the stimuli the brain is calibrated on (unit signal variance over them).
        ncsnr : float or (n_outputs,) array
        """
        rng = np.random.default_rng(seed)
        x = np.asarray(features, dtype=np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        z = (x - mean) / scale
        k = min(n_components, min(z.shape) - 1)
        # top-k right singular vectors from the (n x n) Gram matrix: far cheaper than an SVD of a wide z
        evals, evecs = np.linalg.eigh(z @ z.T)
        top = np.argsort(evals)[::-1][:k]
        vt = (evecs[:, top].T @ z) / np.sqrt(np.maximum(evals[top], 1e-12))[:, None]
        a = rng.standard_normal((n_outputs, k))
        w = a @ vt
        sd = (z @ w.T).std(axis=0, ddof=1)
        w /= np.where(sd > 0, sd, 1.0)[:, None]
        snr = np.broadcast_to(np.asarray(ncsnr, dtype=np.float64), (n_outputs,)).copy()
        return cls(w, mean, scale, snr, {k_: np.asarray(v) for k_, v in (rois or {}).items()})

    def signal(self, features: np.ndarray) -> np.ndarray:
        """Noiseless responses ``(n, m)``."""
        return ((np.asarray(features, dtype=np.float64) - self.mean) / self.scale) @ self.weight.T

    def sample(self, features: np.ndarray, n_repeats: int, *, seed: int = 0) -> np.ndarray:
        """Single-trial responses ``(n, n_repeats, m)`` float32 with noise sd ``1 / ncsnr``."""
        rng = np.random.default_rng(seed)
        s = self.signal(features)
        noise = rng.standard_normal((s.shape[0], n_repeats, s.shape[1])) / np.maximum(self.ncsnr, 1e-12)
        return (s[:, None, :] + noise).astype(np.float32)

    def noise_ceiling(self, n: int) -> np.ndarray:
        """Expected noise ceiling (fraction) of the mean of ``n`` repeats."""
        from berg.metrics import noise_ceiling

        return noise_ceiling(self.ncsnr, n)
