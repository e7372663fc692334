"""Output writing and CLI start-up: how long `berg.save` / `save_nifti` and `berg list` take.

Writes BMD-sized responses (n stimuli x 108,219 voxels, float32) with each HDF5 compression option,
reports MB/s and file size, then a 4-D NIfTI of the same responses, then the wall time of
`berg --help` / `berg list` / `berg describe` in fresh processes (what a user waits for).

Run by hand:  .venv/bin/python benchmarks/save_hdf5.py [--n-stimuli 200] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _harness as H
import numpy as np

N_OUT = 108_219
GRID = (62, 77, 61)


def load_model(root: Path, n_out: int):
    """A loaded synthetic volume model of ``n_out`` voxels on BMD's grid (berg.testing)."""
    from berg.testing import toy_model

    toy = toy_model(root, "volume", subjects=[1], n_outputs=n_out, grid=GRID, n_components=8, rois={"all": []})
    return toy.client().get_encoding_model(toy.model_id, subject=1, device="cpu", backbone_weights="untrained")


def _time(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-stimuli", type=int, default=200)
    args = H.add_arguments(ap).parse_args()
    repeat, cli_runs = (1, 1) if args.smoke else (3, 5)
    n_out = 2_000 if args.smoke else N_OUT
    if args.smoke:
        args.n_stimuli = 4
    from berg.io import save, save_nifti

    rec = H.start("save_hdf5", args, n_stimuli=args.n_stimuli, n_outputs=n_out)
    # Smooth-ish values, like real predictions (pure noise would be incompressible and unfair to gzip).
    rng = np.random.default_rng(1)
    base = rng.standard_normal((args.n_stimuli, 64)).astype(np.float32) @ rng.standard_normal((64, n_out)).astype(
        np.float32
    )
    responses = (base / 8).astype(np.float32)
    mb = responses.nbytes / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(Path(tmp) / "model", n_out)
        for comp in (None, "lzf", "gzip"):
            path = Path(tmp) / f"r-{comp}.h5"
            t = _time(lambda: save(path, responses, model, compression=comp), repeat)
            rec.figure(f"save_h5.{comp or 'none'}", mb / t, "MB/s", file_mb=round(path.stat().st_size / 1e6, 1))
        for suffix in (".nii.gz", ".nii"):
            path = Path(tmp) / f"r{suffix}"
            t = _time(lambda: save_nifti(path, responses, model), repeat=1)
            rec.figure(f"save_nifti{suffix}", mb / t, "MB/s", file_mb=round(path.stat().st_size / 1e6, 1))

    for argv in (["--help"], ["list"], ["describe", "fmri-bmd-s3d"]):
        runs = []
        for _ in range(cli_runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "berg.cli", *argv], check=True, capture_output=True)
            runs.append(time.perf_counter() - t0)
        rec.figure(f"cli.{argv[0].lstrip('-')}", statistics.median(runs), "s", note="median, fresh process")


if __name__ == "__main__":
    main()
