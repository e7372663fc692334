"""Readout GEMM kernels side by side: torch addmm vs numpy matmul per readout shape, vs the GEMM peak.

The engine picks numpy for readouts of at least ``berg.core.engine.NUMPY_READOUT_MIN_OUTPUTS`` outputs on CPU
(a fixed rule of the shape, so runs are bit-reproducible); this script is the evidence for that rule.

    python benchmarks/readout_kernels.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

SHAPES = [  # (batch, k, n_outputs): where they come from
    (64, 100, 108_219),  # fmri-bmd-s3d readout, one subject
    (100, 250, 2 * 163_842),  # NSD fsaverage, both hemispheres
    (100, 250, 63 * 140),  # THINGS EEG2, one repetition
    (32, 512, 1_685),  # img2fmri ROI readout
]


def _time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    a = rng.random((2048, 2048), dtype=np.float32)
    peak = 2 * 2048**3 / _time(lambda: a @ a, args.repeats) / 1e9
    print(
        f"threads: torch {torch.get_num_threads()}, cpus {os.cpu_count()}; float32 GEMM peak (2048^2): {peak:.1f} GFLOP/s"
    )
    print(f"{'shape (b, k, n)':>24} {'torch GFLOP/s':>14} {'numpy GFLOP/s':>14} {'best/peak':>10}")
    for b, k, n in SHAPES:
        x = rng.standard_normal((b, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        bias = rng.standard_normal(n, dtype=np.float32)
        xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias)
        flop = 2 * b * k * n

        def with_numpy():
            y = np.matmul(x, w)
            y += bias

        t_torch = _time(lambda: torch.addmm(bt, xt, wt), args.repeats)
        t_numpy = _time(with_numpy, args.repeats)
        g_t, g_n = flop / t_torch / 1e9, flop / t_numpy / 1e9
        print(f"{str((b, k, n)):>24} {g_t:14.1f} {g_n:14.1f} {max(g_t, g_n) / peak:10.2f}")


if __name__ == "__main__":
    main()
