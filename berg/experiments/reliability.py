"""Reliability of synthetic vs real responses (Delavari, Sigal & Oruc 2025, first claim).

For each output, the synthetic responses' correlation with each real repetition,
``r_syn = mean_k r(synthetic, real_k)``, is compared with the real repetitions' correlation with
each other, ``r_real = mean_{j<k} r(real_j, real_k)``; both are averaged over the outputs of each ROI,
with percentile bootstrap confidence intervals over stimuli (the stimuli are resampled; every
correlation and ROI mean is recomputed on each resample).

Theory (why and when synthetic wins): with trial responses ``signal + noise`` and noise-ceiling SNR
``ncsnr``, two real repetitions correlate at ``rho = ncsnr² / (ncsnr² + 1)``; a model whose
predictions correlate ``c`` with the signal correlates ``c · sqrt(rho)`` with a repetition. Synthetic
responses are more reliable exactly when ``c > sqrt(rho)``, i.e. at low SNR for a given model
(:func:`expected_reliability`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError

__all__ = ["ReliabilityResult", "reliability", "expected_reliability", "plot_reliability"]

_OUT_BLOCK = 2048  # outputs per block: the bootstrap holds (n_boot, block) float64 arrays


@dataclass
class ReliabilityResult:
    """Per-ROI reliability of synthetic and real responses.

    Attributes
    ----------
    rois : list of str
        ROI names (``"all"`` first: every output).
    r_synthetic, r_real, difference : dict
        ROI -> mean over its outputs of ``r_syn``, ``r_real`` and ``r_syn - r_real``.
    ci_synthetic, ci_real, ci_difference : dict
        ROI -> ``(low, high)`` percentile bootstrap interval at level ``ci``.
    p_not_better : dict
        ROI -> fraction of bootstrap resamples with ``r_syn <= r_real`` (a one-sided bootstrap p-value
        for "synthetic is more reliable").
    per_output : dict
        ``{"synthetic": (m,), "real": (m,)}`` point estimates per output.
    n_stimuli, n_repeats, n_boot : int
    ci : float
    """

    rois: list[str]
    r_synthetic: dict[str, float]
    r_real: dict[str, float]
    difference: dict[str, float]
    ci_synthetic: dict[str, tuple[float, float]]
    ci_real: dict[str, tuple[float, float]]
    ci_difference: dict[str, tuple[float, float]]
    p_not_better: dict[str, float]
    per_output: dict[str, np.ndarray] = field(repr=False)
    n_stimuli: int = 0
    n_repeats: int = 0
    n_boot: int = 0
    ci: float = 0.95

    def table(self) -> list[dict[str, Any]]:
        """One row per ROI (plain numbers, for printing or a DataFrame)."""
        return [
            {
                "roi": r,
                "r_synthetic": self.r_synthetic[r],
                "r_real": self.r_real[r],
                "difference": self.difference[r],
                "ci_difference": self.ci_difference[r],
                "p_not_better": self.p_not_better[r],
            }
            for r in self.rois
        ]


def expected_reliability(model_signal_r: Any, ncsnr: Any) -> dict[str, np.ndarray]:
    """Theoretical single-trial reliabilities for a model of accuracy ``c`` at noise-ceiling SNR ``ncsnr``.

    Returns
    -------
    dict
        ``r_real = ncsnr² / (ncsnr² + 1)``, ``r_synthetic = c · sqrt(r_real)`` and
        ``synthetic_better = c > sqrt(r_real)``.
    """
    c = np.asarray(model_signal_r, dtype=np.float64)
    s2 = np.square(np.asarray(ncsnr, dtype=np.float64))
    rho = s2 / (s2 + 1.0)
    return {"r_real": rho, "r_synthetic": c * np.sqrt(rho), "synthetic_better": c > np.sqrt(rho)}


def _weighted_r(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r per column for each row of weights ``w`` (bootstrap counts): (B, n) x (n, m) -> (B, m)."""
    x = x - x.mean(axis=0)  # centring first keeps the weighted moments well conditioned
    y = y - y.mean(axis=0)
    sw = w.sum(axis=1, keepdims=True)
    sx, sy = w @ x, w @ y
    cov = w @ (x * y) - sx * sy / sw
    vx = w @ (x * x) - sx * sx / sw
    vy = w @ (y * y) - sy * sy / sw
    den = np.sqrt(np.clip(vx, 0, None) * np.clip(vy, 0, None))
    return np.divide(cov, den, out=np.zeros_like(cov), where=den > 1e-12)


def _pairs(
    syn: np.ndarray, real: np.ndarray
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
    """(synthetic repeat, real repeat) and (real j, real k) pairs of (n, m) arrays."""
    k = real.shape[1]
    sp = [(syn[:, a], real[:, b]) for a in range(syn.shape[1]) for b in range(k)]
    rp = [(real[:, j], real[:, b]) for j in range(k) for b in range(j + 1, k)]
    return sp, rp


def _mean_r(w: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Mean over pairs of the weighted r; stimuli missing in a pair (NaN) get weight 0 in it."""
    total = None
    for x, y in pairs:
        ok = ~(np.isnan(x).any(axis=1) | np.isnan(y).any(axis=1))
        r = _weighted_r(w[:, ok], x[ok], y[ok])
        total = r if total is None else total + r
    return total / len(pairs)


def reliability(
    synthetic: Any,
    real: Any,
    *,
    rois: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> ReliabilityResult:
    """Synthetic-vs-real and real-vs-real correlations per ROI, with bootstrap intervals over stimuli.

    Parameters
    ----------
    synthetic : (n_stimuli, n_outputs) or (n_stimuli, n_synthetic_repeats, n_outputs) array
        Model responses (noiseless: one row per stimulus; noisy synthetic repeats are paired with
        every real repeat and averaged).
    real : (n_stimuli, n_repeats, n_outputs) array
        Real single-trial responses to the same stimuli, same output order; NaN marks a missing repeat
        (that stimulus is left out of the pairs it is missing from). ``n_repeats >= 2``.
    rois : {name: output indices}, optional
        ROIs to summarise (``"all"`` is always included).
    n_boot : int
        Bootstrap resamples of the stimuli (0: point estimates only).
    ci : float
        Confidence level of the percentile intervals.
    seed : int

    Returns
    -------
    ReliabilityResult
    """
    syn = np.asarray(synthetic, dtype=np.float64)
    real = np.asarray(real, dtype=np.float64)
    if syn.ndim == 2:
        syn = syn[:, None, :]
    if real.ndim != 3 or syn.ndim != 3:
        raise InvalidParameterError(
            f"real must be (n_stimuli, n_repeats, n_outputs) and synthetic (n_stimuli[, repeats], n_outputs); "
            f"got {real.shape} and {np.shape(synthetic)}"
        )
    n, k, m = real.shape
    if syn.shape[0] != n or syn.shape[2] != m:
        raise InvalidParameterError(
            f"synthetic {np.shape(synthetic)} and real {real.shape} differ in stimuli or outputs"
        )
    if k < 2:
        raise InvalidParameterError("real responses need at least 2 repeats to measure their reliability")
    if n < 3:
        raise InvalidParameterError(f"need at least 3 stimuli, got {n}")
    if not 0 < ci < 1:
        raise InvalidParameterError(f"ci must be in (0, 1), got {ci}")
    table = {"all": np.arange(m)}
    for name, idx in (rois or {}).items():
        idx = np.asarray(idx[0] if isinstance(idx, tuple) else idx)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= m:
            raise InvalidParameterError(f"ROI {name!r} is empty or indexes outside 0..{m - 1}")
        table[str(name)] = idx
    names = list(table)
    member = np.zeros((m, len(names)))
    for j, name in enumerate(names):
        member[table[name], j] = 1.0
    member /= member.sum(axis=0, keepdims=True)  # column j averages ROI j's outputs

    rng = np.random.default_rng(seed)
    weights = np.vstack([np.ones((1, n)), rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)])
    roi_syn = np.zeros((weights.shape[0], len(names)))
    roi_real = np.zeros_like(roi_syn)
    per_syn, per_real = np.empty(m), np.empty(m)
    for a in range(0, m, _OUT_BLOCK):
        b = min(a + _OUT_BLOCK, m)
        sp, rp = _pairs(syn[:, :, a:b], real[:, :, a:b])
        rs, rr = _mean_r(weights, sp), _mean_r(weights, rp)
        per_syn[a:b], per_real[a:b] = rs[0], rr[0]
        roi_syn += rs @ member[a:b]
        roi_real += rr @ member[a:b]
    diff = roi_syn - roi_real
    q = [(1 - ci) / 2 * 100, (1 + ci) / 2 * 100]

    def interval(x: np.ndarray, j: int) -> tuple[float, float]:
        if n_boot == 0:
            return (float("nan"), float("nan"))
        lo, hi = np.percentile(x[1:, j], q)
        return (float(lo), float(hi))

    return ReliabilityResult(
        rois=names,
        r_synthetic={r: float(roi_syn[0, j]) for j, r in enumerate(names)},
        r_real={r: float(roi_real[0, j]) for j, r in enumerate(names)},
        difference={r: float(diff[0, j]) for j, r in enumerate(names)},
        ci_synthetic={r: interval(roi_syn, j) for j, r in enumerate(names)},
        ci_real={r: interval(roi_real, j) for j, r in enumerate(names)},
        ci_difference={r: interval(diff, j) for j, r in enumerate(names)},
        p_not_better={r: float(np.mean(diff[1:, j] <= 0)) if n_boot else float("nan") for j, r in enumerate(names)},
        per_output={"synthetic": per_syn, "real": per_real},
        n_stimuli=n,
        n_repeats=k,
        n_boot=int(n_boot),
        ci=float(ci),
    )


def plot_reliability(result: ReliabilityResult, *, title: str = "", out_path: str | Path | None = None, ax: Any = None):
    """Bar plot per ROI: r(synthetic, real repeat) vs r(real repeat, real repeat), with bootstrap intervals.

    Returns
    -------
    matplotlib.figure.Figure
        Saved to ``out_path`` (PNG, atomically) when given.
    """
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(result.rois) + 2), 3.2)) if ax is None else (ax.figure, ax)
    x = np.arange(len(result.rois))
    for off, label, vals, cis, color in (
        (-0.2, "synthetic vs real", result.r_synthetic, result.ci_synthetic, "tab:orange"),
        (0.2, "real vs real", result.r_real, result.ci_real, "tab:blue"),
    ):
        v = np.array([vals[r] for r in result.rois])
        lo = np.array([cis[r][0] for r in result.rois])
        hi = np.array([cis[r][1] for r in result.rois])
        err = None if np.isnan(lo).all() else np.vstack([v - lo, hi - v])
        ax.bar(x + off, v, width=0.4, label=label, color=color, yerr=err, capsize=2)
    ax.set_xticks(x, result.rois, rotation=45, ha="right")
    ax.set_ylabel("mean Pearson r")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(
        title or f"reliability ({result.n_stimuli} stimuli, {result.n_repeats} repeats, {int(result.ci * 100)}% CI)"
    )
    fig.tight_layout()
    if out_path is not None:
        from berg.fsutil import atomic_path

        with atomic_path(out_path, ".png") as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    return fig
