"""Accuracy summaries computed from a model's own metadata files (``berg describe ID --accuracy``).

Published figures live in the cards (``published:``, quoted from the model's source). What a release
keeps per output — BERG's per-vertex correlations and explained variance (NSD fsaverage), the
channels x times correlation of THINGS EEG2, BMD's per-voxel accuracy, the ``accuracy/*`` arrays of an
artifact built by ``berg build`` — is summarised here, per ROI, from the metadata files alone (the
weights are never fetched). Noise ceilings come from the model family's reliability accessor
(:meth:`berg.core.layouts.ArtifactLayout.reliability`), never from guessed metadata keys.

The result of one subject is a plain dict (JSON types) that says what was computed, from which file
(with its sha256) and which keys; :func:`write_cached` keeps it in the user's cache,
``<cache>/<model_id>/accuracy.json``, never in the shipped card.

>>> from berg import BERG                                                      # doctest: +SKIP
>>> from berg.accuracy import compute_accuracy
>>> block = compute_accuracy(BERG(), "fmri-nsd_fsaverage-alexnet", subject=1)  # doctest: +SKIP
>>> block["per_roi"]["V1v"]["median_r_nsdcore"]                                 # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from berg.errors import InvalidParameterError, NoReliabilityError

if TYPE_CHECKING:  # pragma: no cover
    from berg.api import BERG
    from berg.registry import ModelSpec

__all__ = [
    "CACHE_NAME",
    "compute_command",
    "compute_accuracy",
    "cache_path",
    "read_cached",
    "write_cached",
    "computed_lines",
    "headline",
]

log = logging.getLogger(__name__)

CACHE_NAME = "accuracy.json"
FORMAT = 1
#: NSD fsaverage test sets, as BERG names them (older files: no suffix, NSD-core)
_NSD_SETS = ("nsdcore", "nsdsynthetic")


# ---------------------------------------------------------------------------------------- what applies


def _layout_class(spec: ModelSpec) -> type | None:
    from berg._imports import import_class
    from berg.core.layouts import ArtifactLayout, NativeLayout

    if spec.layout == "none":
        return None
    if spec.layout == "native":
        return NativeLayout
    return import_class(spec.layout, ArtifactLayout, f"layout of {spec.model_id}")


def _family(spec: ModelSpec) -> str | None:
    """Which summary applies: ``"berg_catalogue"``, ``"bmd"``, ``"native"`` (built artifacts) or None."""
    from berg.core.layouts import NativeLayout
    from berg.models.berg_catalogue import BERGCatalogueLayout
    from berg.models.bmd_s3d import BMDLegacyLayout

    cls = _layout_class(spec)
    if cls is None:
        return None
    if issubclass(cls, BERGCatalogueLayout):
        return "berg_catalogue"
    if issubclass(cls, BMDLegacyLayout):
        return "bmd"
    # artifacts made by `berg build` store per-output accuracy/* arrays; converted or fixed ones do not
    if issubclass(cls, NativeLayout) and spec.build:
        return "native"
    return None


def compute_command(spec: ModelSpec) -> str | None:
    """The exact command that computes this model's accuracy summary, or None when nothing can.

    Parameters
    ----------
    spec : ModelSpec
        The registry entry.

    Returns
    -------
    str or None
        ``berg describe ID --accuracy`` for models whose metadata carries per-output accuracy; for a
        buildable model, its build command first.
    """
    family = _family(spec)
    if family is None:
        return None
    describe = f"berg describe {spec.model_id} --accuracy"
    if family == "native":
        build = (spec.source or {}).get("command") or f"berg build {spec.model_id} --data DIR"
        return f"{build}; then {describe}"
    return describe


# ---------------------------------------------------------------------------------------- numbers


def _median(values: np.ndarray) -> float | None:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(np.median(arr)) if arr.size else None


def _per_roi(metrics: Mapping[str, np.ndarray], rois: Mapping[str, np.ndarray], n: int) -> dict[str, dict]:
    """``{roi: {"n": count, "median_<metric>": value}}``: ``all`` outputs first, then each ROI."""
    out: dict[str, dict[str, Any]] = {}
    for name, rows in {"all": None, **rois}.items():
        idx = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        row: dict[str, Any] = {"n": int(idx.size)}
        for metric, values in metrics.items():
            row[f"median_{metric}"] = _median(np.asarray(values)[idx]) if idx.size else None
        out[str(name)] = row
    return out


def _noise_ceiling(layout: Any, subject: Any, n: int, notes: list[str]) -> tuple[np.ndarray | None, str | None]:
    """The family's noise ceiling (fraction) per output, or None with a note saying why."""
    try:
        rel = layout.reliability(subject)
    except NoReliabilityError as exc:
        notes.append(f"no noise ceiling: {exc}")
        return None, None
    if rel.n_outputs != n:
        notes.append(f"noise ceiling skipped: {rel.n_outputs} values for {n} outputs ({rel.source})")
        return None, None
    where = (
        f"{rel.source} (noise ceiling of the {rel.n_repeats:g}-trial mean, fraction)" if rel.n_repeats else rel.source
    )
    return np.asarray(rel.noise_ceiling, dtype=np.float64), where


def _nsd(meta: Mapping[str, Any], layout: Any, subject: Any, key: str) -> dict[str, Any]:
    enc = meta.get("encoding_models") or {}
    metrics: dict[str, np.ndarray] = {}
    defs: dict[str, dict[str, str]] = {}
    for test_set in _NSD_SETS:
        for short, stem, what in (
            ("r", "correlation", "Pearson r on the test images (BERG set negative r to 0)"),
            ("ev", "explained_variance", "noise-normalised explained variance, % (100 r^2 / NC, capped at 100)"),
        ):
            # older files name the NSD-core arrays without the _nsdcore suffix
            names = [f"{stem}_{test_set}"] + ([stem] if test_set == "nsdcore" else [])
            found = next((s for s in names if f"lh_{s}" in enc and f"rh_{s}" in enc), None)
            if found is None:
                continue
            metrics[f"{short}_{test_set}"] = np.concatenate(
                [np.asarray(enc[f"lh_{found}"], np.float64).ravel(), np.asarray(enc[f"rh_{found}"], np.float64).ravel()]
            )
            defs[f"{short}_{test_set}"] = {
                "source": f"{key}: encoding_models.lh_{found} + rh_{found}",
                "what": f"{what}, {test_set} test set",
            }
    if not metrics:
        raise InvalidParameterError(
            f"{key} has no encoding_models.{{lh,rh}}_correlation[_nsdcore] arrays to summarise "
            f"(keys: {', '.join(sorted(enc)) or 'none'})"
        )
    n = len(next(iter(metrics.values())))
    notes: list[str] = []
    nc, where = _noise_ceiling(layout, subject, n, notes)
    if nc is not None:
        metrics["nc"] = nc
        defs["nc"] = {"source": where, "what": "noise ceiling (fraction of variance), NSD-core"}
    return {
        "metrics": defs,
        "per_roi": _per_roi(metrics, meta.get("rois") or {}, n),
        "summary_of": "medians over each ROI's vertices (left and right hemispheres together)",
        "notes": notes,
    }


def _eeg(meta: Mapping[str, Any], layout: Any, subject: Any, key: str) -> dict[str, Any]:
    enc = meta.get("encoding_models") or {}
    if "correlation_averaged_repetitions" not in enc:
        raise InvalidParameterError(
            f"{key} has no encoding_models.correlation_averaged_repetitions to summarise "
            f"(keys: {', '.join(sorted(enc)) or 'none'})"
        )
    r = np.asarray(enc["correlation_averaged_repetitions"], dtype=np.float64)
    if r.ndim != 2:
        raise InvalidParameterError(
            f"{key}: correlation_averaged_repetitions has shape {r.shape}, expected (channels, times)"
        )
    eeg = meta.get("eeg") or {}
    channels = list(eeg.get("ch_names") or [f"ch{i}" for i in range(r.shape[0])])
    times = eeg.get("times")
    times_ms = (
        np.round(np.asarray(times, dtype=np.float64) * 1000.0, 3)
        if times is not None
        else np.arange(r.shape[1], dtype=float)
    )
    curve = np.nanmean(r, axis=0)
    peak = int(np.nanargmax(curve))
    best_channel = int(np.nanargmax(r[:, peak]))
    after = times_ms >= 0
    summary: dict[str, Any] = {
        "peak_r_channel_mean": float(curve[peak]),
        "peak_time_ms": float(times_ms[peak]),
        "best_channel_at_peak": channels[best_channel],
        "best_channel_r_at_peak": float(r[best_channel, peak]),
        "mean_r": float(np.nanmean(r)),
        "mean_r_from_onset": float(np.nanmean(r[:, after])) if after.any() else None,
    }
    defs = {
        "r": {
            "source": f"{key}: encoding_models.correlation_averaged_repetitions {tuple(r.shape)}",
            "what": "Pearson r over the test images per channel and time point (in vivo EEG averaged over "
            "repeats vs in silico EEG averaged over the 4 repetitions)",
        }
    }
    notes: list[str] = []
    n_ct = r.size
    try:
        rel = layout.reliability(subject)
        nc = np.asarray(rel.noise_ceiling, dtype=np.float64)[:n_ct].reshape(r.shape)  # first repetition block
        summary["median_nc"] = _median(nc)
        summary["nc_channel_mean_at_peak"] = float(np.nanmean(nc[:, peak]))
        defs["nc"] = {"source": rel.source, "what": "noise ceiling (fraction), per channel and time point"}
    except (NoReliabilityError, ValueError) as exc:
        notes.append(f"no noise ceiling: {exc}")
    per_channel = {
        ch: {"peak_r": float(np.nanmax(r[i])), "peak_time_ms": float(times_ms[int(np.nanargmax(r[i]))])}
        for i, ch in enumerate(channels)
    }
    return {
        "metrics": defs,
        "summary": summary,
        "r_over_time": {"times_ms": times_ms.tolist(), "r_channel_mean": [float(x) for x in curve]},
        "per_channel": per_channel,
        "summary_of": "r averaged over channels at each time point (its peak and the time of the peak), "
        "and means over channels and times",
        "notes": notes,
    }


def _bmd(meta: Mapping[str, Any], layout: Any, subject: Any, key: str) -> dict[str, Any]:
    enc = meta.get("encoding_models") or {}
    metrics: dict[str, np.ndarray] = {}
    defs: dict[str, dict[str, str]] = {}
    for short, name, what in (
        ("r", "correlation", "Pearson r on the BMD test split (102 videos)"),
        ("ev", "explained_variance", "noise-normalised explained variance as BERG stores it (%)"),
    ):
        if name in enc:
            metrics[short] = np.asarray(enc[name], dtype=np.float64).ravel()
            defs[short] = {"source": f"{key}: encoding_models.{name}", "what": what}
    if not metrics:
        raise InvalidParameterError(
            f"{key} has no encoding_models.correlation to summarise (keys: {', '.join(sorted(enc)) or 'none'})"
        )
    n = len(next(iter(metrics.values())))
    notes: list[str] = []
    nc, where = _noise_ceiling(layout, subject, n, notes)
    if nc is not None:
        metrics["nc"] = nc
        defs["nc"] = {"source": where, "what": "noise ceiling (fraction of variance)"}
    rois = (meta.get("fmri") or {}).get("rois") or {}
    return {
        "metrics": defs,
        "per_roi": _per_roi(metrics, rois, n),
        "summary_of": "medians over each ROI's voxels",
        "notes": notes,
    }


def _native(meta: Mapping[str, Any], layout: Any, subject: Any, key: str) -> dict[str, Any]:
    acc = {k: np.asarray(v) for k, v in (meta.get("accuracy") or {}).items()}
    arrays = {k: v for k, v in acc.items() if v.ndim == 1 and k not in ("ncsnr", "noise_ceiling")}
    if not arrays:
        raise InvalidParameterError(
            f"{key} holds no per-output accuracy/* arrays to summarise (found: {', '.join(sorted(acc)) or 'none'})"
        )
    n = max(v.size for v in arrays.values())
    metrics = {k: v.astype(np.float64) for k, v in arrays.items() if v.size == n}
    defs = {k: {"source": f"{key}: accuracy/{k}", "what": "per-output accuracy written by the build"} for k in metrics}
    notes: list[str] = []
    nc, where = _noise_ceiling(layout, subject, n, notes)
    if nc is not None:
        metrics["nc"] = nc
        defs["nc"] = {"source": where, "what": "noise ceiling (fraction of variance)"}
    rois = {k: v for k, v in (meta.get("rois") or {}).items() if np.asarray(v).ndim == 1}
    return {
        "metrics": defs,
        "per_roi": _per_roi(metrics, rois, n),
        "summary_of": "medians over each ROI's outputs",
        "notes": notes,
    }


def compute_accuracy(client: BERG, model_id: str, subject: Any = None) -> dict[str, Any]:
    """Summarise one subject's accuracy from the model's metadata files only (no weights are fetched).

    Parameters
    ----------
    client : berg.BERG
        Where files come from (its store and registry).
    model_id : str
        A registry id.
    subject : int or str, optional
        One subject (default: the model's first).

    Returns
    -------
    dict
        JSON-ready: ``model_id``, ``subject``, ``family``, ``files`` (key -> sha256 of what was read),
        ``metrics`` (name -> source key and meaning), ``per_roi`` (ROI -> ``n`` and medians; fMRI) or
        ``summary``/``r_over_time``/``per_channel`` (EEG), ``summary_of``, ``notes``, ``command``, and
        ``computed_by``/``computed_at``.

    Raises
    ------
    InvalidParameterError
        The model's files carry no per-output accuracy (the message says which models do), or
        ``subject`` is not one value.
    """
    from berg import __version__
    from berg.core.layouts import layout_for

    spec = client.registry.get(model_id)
    family = _family(spec)
    if family is None:
        raise InvalidParameterError(
            f"{model_id}'s files carry no per-output accuracy to summarise; its card's published figures "
            f"(berg describe {model_id}) are what there is. Computed summaries exist for BERG's catalogue "
            "(NSD fsaverage, THINGS EEG2), fmri-bmd-s3d and models made with `berg build`."
        )
    if isinstance(subject, (list, tuple)) or subject == "all":
        raise InvalidParameterError(f"--accuracy summarises one subject at a time; got {subject!r}")
    (subject,) = spec.validate_subjects(spec.subjects[0] if subject is None else subject)
    layout = layout_for(spec, client.store)
    keys = list(layout.metadata_keys(subject))
    layout.fetch_keys(keys)  # the metadata files only: the summaries need nothing else
    meta = layout.load_metadata(subject)
    where = ", ".join(keys)
    if family == "berg_catalogue":
        body = (
            _nsd(meta, layout, subject, where)
            if layout.family == "nsd_fsaverage"
            else _eeg(meta, layout, subject, where)
        )
        family = layout.family
    elif family == "bmd":
        body = _bmd(meta, layout, subject, where)
    else:
        body = _native(meta, layout, subject, where)
    return {
        "model_id": model_id,
        "subject": subject,
        "family": family,
        "files": layout.checksums(keys),
        **body,
        "command": f"berg describe {model_id} --accuracy --subject {subject}",
        "computed_by": f"berg {__version__}",
        "computed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------- the cache


def cache_path(client: BERG, model_id: str) -> Path:
    """``<cache>/<model_id>/accuracy.json``: computed summaries, per subject (never the shipped card)."""
    return client.store.model_cache(model_id) / CACHE_NAME


def read_cached(client: BERG, model_id: str) -> dict[str, Any] | None:
    """The cached summaries ``{"format", "model_id", "subjects": {subject: block}}``, or None.

    A missing file is None; an unreadable or foreign one is None with a warning (it is only a cache:
    ``berg describe ID --accuracy`` writes it again).
    """
    path = cache_path(client, model_id)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s (%s); `berg describe %s --accuracy` rewrites it", path, exc, model_id)
        return None
    if not (
        isinstance(doc, dict)
        and doc.get("format") == FORMAT
        and doc.get("model_id") == model_id
        and isinstance(doc.get("subjects"), dict)
    ):
        log.warning("ignoring %s: not berg's accuracy cache of %s (format %s)", path, model_id, FORMAT)
        return None
    return doc


def write_cached(client: BERG, model_id: str, block: Mapping[str, Any]) -> Path:
    """Add (or replace) one subject's summary in the cache, atomically; returns the file."""
    from berg.fsutil import atomic_write_text

    doc = read_cached(client, model_id) or {"format": FORMAT, "model_id": model_id, "subjects": {}}
    doc["subjects"][str(block["subject"])] = dict(block)
    path = cache_path(client, model_id)
    return atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")


# ---------------------------------------------------------------------------------------- text


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _table(per_roi: Mapping[str, Mapping[str, Any]], indent: int = 2) -> list[str]:
    cols = [c for c in next(iter(per_roi.values()))]
    lines: list[str] = []
    # a terminal-wide table: at most 5 metric columns at once
    metric_cols = [c for c in cols if c != "n"]
    for start in range(0, max(1, len(metric_cols)), 5):
        chunk = ["n", *metric_cols[start : start + 5]]
        header = ["ROI", *(c.removeprefix("median_") for c in chunk)]
        rows = [[name, *(_fmt(row.get(c)) for c in chunk)] for name, row in per_roi.items()]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
            lines.append(" " * indent + "  ".join(cells).rstrip())
        lines.append("")
    return lines[:-1]


def computed_lines(block: Mapping[str, Any]) -> list[str]:
    """One subject's computed summary as text: what, from which file and keys, then the numbers."""
    import textwrap

    def wrap(text: str, indent: int) -> list[str]:
        pad = " " * indent
        return textwrap.wrap(text, 100, initial_indent=pad, subsequent_indent=pad + "  ", break_on_hyphens=False)

    files = ", ".join(f"{k} (sha256 {v[:12]})" for k, v in (block.get("files") or {}).items())
    lines = wrap(
        f"subject {block['subject']}, computed {block.get('computed_at', '?')} by {block.get('computed_by', 'berg')} "
        f"with `{block.get('command', '')}`, from {files}",
        2,
    )
    medians = " (the table's columns are medians)" if block.get("per_roi") else ""
    lines += wrap(f"{block.get('summary_of', '')}{medians}:", 2)
    for name, d in (block.get("metrics") or {}).items():
        lines += wrap(f"{name}: {d.get('what')} [{d.get('source')}]", 4)
    if block.get("summary"):
        lines.append("  summary:")
        lines += [f"    {k}: {_fmt(v)}" for k, v in block["summary"].items()]
    if block.get("per_roi"):
        lines += _table(block["per_roi"], indent=2)
    for note in block.get("notes") or []:
        lines.append(f"  note: {note}")
    return lines


def headline(block: Mapping[str, Any]) -> str:
    """A one-line summary of a computed block (for ``berg describe``'s accuracy line)."""
    subject = block.get("subject")
    if block.get("summary") and "peak_r_channel_mean" in block["summary"]:
        s = block["summary"]
        return (
            f"peak channel-mean r {_fmt(s['peak_r_channel_mean'])} at {s['peak_time_ms']:g} ms, "
            f"mean r {_fmt(s['mean_r'])} (subject {subject})"
        )
    row = (block.get("per_roi") or {}).get("all") or {}
    shown = [f"{k[len('median_') :]} {_fmt(v)}" for k, v in row.items() if k.startswith("median_")][:3]
    return f"medians over all {row.get('n', '?')} outputs: {', '.join(shown)} (subject {subject})"
