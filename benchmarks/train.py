"""Training benchmark: readout fit time (berg vs scikit-learn vs himalaya) and streamed PCA time.

Run by hand::

    .venv/bin/python benchmarks/train.py readout            # 1,000 x 100 -> 108,219 outputs
    .venv/bin/python benchmarks/train.py pca --features 5337088
    .venv/bin/python benchmarks/train.py pca --features 533709   # a tenth, for a quick run

The readout part fits OLS and ridge (10 alphas, 5 folds, alpha per output) on the same float32 arrays
with berg.training.solvers, scikit-learn (LinearRegression; RidgeCV with alpha_per_target, which uses
efficient leave-one-out instead of 5 folds) and himalaya (RidgeCV, cv=5, numpy and torch backends, if
installed: ``pip install himalaya``). The PCA part streams a (n x F) float32 matrix generated block by
block (low rank + noise; no 21 GB file needed) through berg's two-pass Gram PCA, as the trainer streams
its HDF5 feature cache. Figures go through benchmarks/_harness.py (``--smoke``: tiny sizes).
"""

from __future__ import annotations

import argparse
import logging
import time

import _harness as H
import numpy as np

from berg.metrics import pearson_r
from berg.testing import linear_problem
from berg.training.solvers import fit_ols, fit_projection, fit_ridge_cv

ALPHAS = np.logspace(-2, 7, 10)
log = logging.getLogger("berg.benchmarks")


def _time(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def bench_readout(n: int, k: int, m: int, snr: float) -> list[tuple[str, float, str]]:
    x, y, w = linear_problem(n, k, m, snr=snr, seed=0)
    # held-out check: every method's weights against the truth, so "fast" never means "wrong"
    rows = []

    def add(name, seconds, weight):
        corr = float(np.median(pearson_r(weight.T.astype(np.float64), w.T.astype(np.float64))))
        rows.append((name, seconds, corr))

    t, ols = _time(fit_ols, x, y)
    add("berg OLS (numpy float32, SVD once)", t, ols.weight)
    t, fit = _time(fit_ridge_cv, x, y, ALPHAS, folds=5)
    add("berg ridge, 10 alphas x 5 folds, alpha per output", t, fit.weight)

    from sklearn.linear_model import LinearRegression, RidgeCV

    t, lr = _time(LinearRegression().fit, x, y)
    add("sklearn LinearRegression", t, lr.coef_)
    t, rcv = _time(RidgeCV(alphas=ALPHAS, alpha_per_target=True).fit, x, y)
    add("sklearn RidgeCV (LOO/GCV), alpha per output", t, rcv.coef_)
    try:
        import himalaya
        from himalaya.backend import set_backend
        from himalaya.ridge import RidgeCV as HRidgeCV
    except ImportError:
        log.info("himalaya not installed: skipped")
        return rows
    for backend in ("numpy", "torch"):
        set_backend(backend, on_error="warn")
        model = HRidgeCV(alphas=ALPHAS, cv=5, solver_params={"n_targets_batch": 20000, "score_func": None})
        try:
            t, _ = _time(model.fit, x, y)
        except TypeError:  # older/newer solver_params names
            model = HRidgeCV(alphas=ALPHAS, cv=5)
            t, _ = _time(model.fit, x, y)
        coef = np.asarray(model.coef_.cpu() if hasattr(model.coef_, "cpu") else model.coef_).T
        add(f"himalaya {himalaya.__version__} RidgeCV cv=5 ({backend} backend)", t, coef)
    return rows


class _Streamed:
    """A (n, F) float32 matrix produced block by block: ``L @ R[:, a:b] + noise``, deterministic."""

    def __init__(self, n: int, width: int, rank: int = 20, seed: int = 0):
        self.shape = (n, width)
        rng = np.random.default_rng(seed)
        self.left = rng.standard_normal((n, rank)).astype(np.float32)
        self.seed, self.rank = seed, rank

    def __getitem__(self, key):
        rows, cols = key
        a, b = cols.start, cols.stop
        rng = np.random.default_rng([self.seed, a])
        right = rng.standard_normal((self.rank, b - a), dtype=np.float32)
        block = self.left @ right
        block += rng.standard_normal(block.shape, dtype=np.float32)
        return block if isinstance(rows, slice) and rows == slice(None) else block[rows]


def bench_pca(n: int, width: int, k: int, col_block: int) -> float:
    feats = _Streamed(n, width)
    rows = np.arange(n)
    t, fit = _time(fit_projection, feats, rows, k, kind="scaler_pca", col_block=col_block, show_progress=True)
    # the planted rank-20 structure must be found: top 20 components carry far more variance
    ev = fit.explained_variance
    log.info(
        "streamed scaler+PCA %d x %d -> %d: %.1f s; var(top 20)/var(21st) = %.1f",
        n,
        width,
        k,
        t,
        ev[:20].min() / ev[20],
    )
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", nargs="?", default="all", help="readout, pca or all (default)")
    ap.add_argument("--stimuli", type=int, default=1000)
    ap.add_argument("--components", type=int, default=100)
    ap.add_argument("--outputs", type=int, default=108_219)
    ap.add_argument("--features", type=int, default=5_337_088)
    ap.add_argument("--col-block", type=int, default=1 << 15)
    ap.add_argument("--snr", type=float, default=0.5)
    args = H.add_arguments(ap).parse_args()
    if args.part not in ("readout", "pca", "all"):
        ap.error("part is readout, pca or all")
    if args.smoke:
        args.stimuli, args.components, args.outputs, args.features, args.col_block = 60, 25, 200, 3000, 1024
    rec = H.start("train", args, stimuli=args.stimuli, components=args.components)
    if args.part in ("readout", "all"):
        for name, seconds, corr in bench_readout(args.stimuli, args.components, args.outputs, args.snr):
            rec.figure(f"readout.{name}", seconds, "s", note=f"median weight r {corr:.4f}", outputs=args.outputs)
    if args.part in ("pca", "all"):
        t = bench_pca(args.stimuli, args.features, args.components, args.col_block)
        rec.figure("pca.streamed_scaler_pca", t, "s", features=args.features)


if __name__ == "__main__":
    main()
