"""Reducers: shrink a shard's responses before they are written (ROI means, noise-ceiling threshold, selections).

Reducers act on 2-D responses ``(n_stimuli, n_outputs)`` and are resolved once per subject, when the model
is loaded, into a list of plain numpy steps (column takes and column-group means), so applying them to a
shard is a few vectorised operations. ROI indices and metrics come from the model's metadata
(``get_model_metadata``): they index the subject's *full* outputs, and are mapped onto the columns the
model's ``selection`` kept.

``{roi_mean: [V1, V2]}``
    One column per ROI: the mean over that ROI's (remaining) outputs. Must be the last reducer.
``{nc_threshold: {threshold: 0.3, metric: noise_ceiling}}``
    Keep outputs whose reliability metric exceeds the threshold. The values come from the model (its
    reliability accessor, in the order of its outputs); the reducer never reads metadata keys itself.
``{select: {roi: [names]}}`` / ``{select: {outputs: [indices]}}``
    Keep the outputs of those ROIs / those full-output indices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError, close_matches

__all__ = ["RELIABILITY_METRICS", "Reducer", "build_reducer"]

#: Metrics ``nc_threshold`` takes: fields of the model's :class:`~berg.core.reliability.Reliability`.
RELIABILITY_METRICS = ("noise_ceiling", "ncsnr")


@dataclass
class Reducer:
    """Resolved reducers of one subject: ``apply`` maps ``(b, n_in)`` to ``(b, n_out)``."""

    n_in: int
    steps: list[tuple[str, Any]] = field(default_factory=list)
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    dims: list[str] = field(default_factory=lambda: ["output"])

    @property
    def n_out(self) -> int:
        """Columns after reduction."""
        # every step's argument lists the columns (take) or column groups (mean) it produces
        return len(self.steps[-1][1]) if self.steps else self.n_in

    @property
    def is_identity(self) -> bool:
        """True when nothing is reduced."""
        return not self.steps

    def apply(self, y: np.ndarray) -> np.ndarray:
        """Apply the steps to a ``(b, n_in)`` float array (NaN rows stay NaN)."""
        for kind, arg in self.steps:
            if kind == "take":
                y = y[:, arg]
            else:  # "mean": one column per group of column indices
                y = np.stack([y[:, idx].mean(axis=1) for idx in arg], axis=1)
        return y


def _columns(full_rows: np.ndarray | None, n_full: int) -> np.ndarray:
    return np.arange(n_full, dtype=np.int64) if full_rows is None else np.asarray(full_rows, dtype=np.int64)


def _roi(meta: Mapping[str, Any], name: str) -> np.ndarray:
    rois = meta.get("rois") or {}
    if name not in rois:
        hint = close_matches(name, list(rois))
        raise InvalidParameterError(
            f"ROI {name!r} is not in this model's metadata{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
            f"ROIs: {', '.join(rois) or 'none'}"
        )
    return np.asarray(rois[name], dtype=np.int64).ravel()


def build_reducer(
    specs: Sequence[Mapping[str, Any]],
    *,
    meta: Mapping[str, Any] | None,
    reliability: Callable[[str], np.ndarray] | None = None,
    full_rows: np.ndarray | None,
    n_full: int,
    coords: Mapping[str, np.ndarray],
    response_shape: tuple[int, ...],
    where: str,
) -> Reducer:
    """Resolve a model entry's reducers for one subject.

    Parameters
    ----------
    specs : list of dict
        Normalised reducer specs (see :mod:`berg.runner.plan`).
    meta : dict or None
        The subject's metadata (needed by ROI reducers).
    reliability : callable, optional
        ``metric -> values``: per-output reliability (one of :data:`RELIABILITY_METRICS`) in the order of
        the outputs the model returns, from the model's ``reliability(subject)`` accessor (needed by
        ``nc_threshold``).
    full_rows : array or None
        Full-output index of each column the model returns (``None``: all outputs, in order).
    n_full : int
        Number of full outputs of the subject.
    coords : dict
        Per-output coordinate arrays of the model's columns (taken along with the columns).
    response_shape : tuple
        Per-stimulus shape of the model's responses; reducers need ``(n_outputs,)``.
    where : str
        For error messages (``"models[0] subject 1"``).
    """
    n_in = int(np.prod(response_shape))
    red = Reducer(n_in=n_in, coords={k: np.asarray(v) for k, v in coords.items()})
    if not specs:
        return red
    if len(response_shape) != 1:
        raise InvalidParameterError(
            f"{where}: reducers work on (n_stimuli, n_outputs) responses; this model returns "
            f"{('n_stimuli', *response_shape)} per batch. Remove the reducers (or use a selection)."
        )
    cols = _columns(full_rows, n_full)  # full-output index of each current column
    src = np.arange(cols.size, dtype=np.int64)  # model-output index of each current column
    position = {int(r): i for i, r in enumerate(cols)}
    for i, spec in enumerate(specs):
        ((kind, arg),) = spec.items()
        if red.steps and red.steps[-1][0] == "mean":
            raise InvalidParameterError(f"{where}: roi_mean must be the last reducer (reducers[{i}] follows it)")
        if kind == "roi_mean" or (kind == "select" and "roi" in arg):
            if meta is None:
                raise InvalidParameterError(f"{where}: {kind} needs the model's ROI metadata, which is unavailable")
            names = arg if kind == "roi_mean" else arg["roi"]
            groups = []
            for name in names:
                full = _roi(meta, name)
                idx = np.asarray(sorted(position[int(r)] for r in full if int(r) in position), dtype=np.int64)
                if kind == "roi_mean" and idx.size == 0:
                    raise InvalidParameterError(
                        f"{where}: ROI {name!r} has no outputs left after the selection/earlier reducers"
                    )
                groups.append(idx)
            if kind == "roi_mean":
                red.steps.append(("mean", groups))
                red.coords = {
                    "roi": np.asarray(names, dtype=str),
                    "n_outputs_in_roi": np.asarray([g.size for g in groups], dtype=np.int64),
                }
                red.dims = ["roi"]
                continue
            keep = np.unique(np.concatenate(groups)) if groups else np.zeros(0, np.int64)
        elif kind == "select":
            wanted = [int(r) for r in arg["outputs"]]
            missing = [r for r in wanted if r not in position]
            if missing:
                raise InvalidParameterError(
                    f"{where}: select outputs {missing[:5]} are not among the {len(cols)} outputs the model "
                    f"returns (indices are into the subject's {n_full} outputs; check the selection)"
                )
            keep = np.asarray(sorted({position[r] for r in wanted}), dtype=np.int64)
        else:  # nc_threshold
            if reliability is None:
                raise InvalidParameterError(f"{where}: nc_threshold needs the model's reliability values")
            values = np.asarray(reliability(arg["metric"]), dtype=np.float64).ravel()
            if values.size != n_in:
                raise InvalidParameterError(
                    f"{where}: the model's reliability has {values.size} {arg['metric']} values; the model "
                    f"returns {n_in} outputs"
                )
            with np.errstate(invalid="ignore"):
                keep = np.flatnonzero(values[src] > arg["threshold"])
        if keep.size == 0:
            raise InvalidParameterError(f"{where}: reducers[{i}] {spec} keeps no output")
        red.steps.append(("take", keep))
        cols = cols[keep]
        src = src[keep]
        position = {int(r): j for j, r in enumerate(cols)}
        red.coords = {k: v[keep] for k, v in red.coords.items()}
    if red.dims == ["output"]:
        red.coords["full_output_index"] = cols
    return red
