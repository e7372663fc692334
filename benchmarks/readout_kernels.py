"""Readout GEMM kernels side by side: torch addmm vs numpy matmul per readout shape, vs the GEMM peak.

The engine picks numpy for readouts of at least ``berg.core.engine.NUMPY_READOUT_MIN_OUTPUTS`` outputs on CPU
(a fixed rule of the shape, so runs are bit-reproducible); this script is the evidence for that rule.

    python benchmarks/readout_kernels.py [--repeats 5] [--smoke]
"""

from __future__ import annotations

import argparse

import _harness as H
import numpy as np

SHAPES = [  # (batch, k, n_outputs): where they come from
    (64, 100, 108_219),  # fmri-bmd-s3d readout, one subject
    (100, 250, 2 * 163_842),  # NSD fsaverage, both hemispheres
    (100, 250, 63 * 140),  # THINGS EEG2, one repetition
    (32, 512, 1_685),  # img2fmri ROI readout
]


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    args = H.add_arguments(p).parse_args()
    shapes = [(b, k, max(64, n // 100)) for b, k, n in SHAPES] if args.smoke else SHAPES
    if args.smoke:
        args.repeats = 1
    rec = H.start("readout_kernels", args)
    peak = H.peak_gflops()  # the run's peak (best of numpy and torch, 2048² float32)
    rng = np.random.default_rng(0)
    for b, k, n in shapes:
        x = rng.standard_normal((b, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        bias = rng.standard_normal(n, dtype=np.float32)
        xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias)
        flop = 2 * b * k * n

        def with_numpy():
            y = np.matmul(x, w)
            y += bias

        t_torch = H.best_time(lambda: torch.addmm(bt, xt, wt), args.repeats)
        t_numpy = H.best_time(with_numpy, args.repeats)
        g_t, g_n = flop / t_torch / 1e9, flop / t_numpy / 1e9
        shape = f"{b}x{k}x{n}"
        rec.figure(f"{shape}.torch", g_t, "GFLOP/s", shape=[b, k, n])
        rec.figure(f"{shape}.numpy", g_n, "GFLOP/s", shape=[b, k, n])
        rec.figure(f"{shape}.best_of_peak", max(g_t, g_n) / peak, "x", target=">= 0.75", shape=[b, k, n])


if __name__ == "__main__":
    main()
