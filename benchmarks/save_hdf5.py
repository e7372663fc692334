"""Output writing and CLI start-up: how long `berg.save` / `save_nifti` and `berg list` take.

Writes BMD-sized responses (n stimuli x 108,219 voxels, float32) with each HDF5 compression option,
reports MB/s and file size, then a 4-D NIfTI of the same responses, then the wall time of
`berg --help` / `berg list` / `berg describe` in fresh processes (what a user waits for).

Run by hand:  .venv/bin/python benchmarks/save_hdf5.py [--n-stimuli 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_OUT = 108_219
GRID = (62, 77, 61)


class Model:
    """Stand-in with the interface berg.io uses (real VolumeSpace for to_nifti)."""

    def __init__(self):
        from berg.core.spaces import VolumeSpace

        rng = np.random.default_rng(0)
        flat = np.sort(rng.choice(int(np.prod(GRID)), size=N_OUT, replace=False))
        self.space = VolumeSpace(GRID, np.diag([2.5, 2.5, 2.5, 1.0]), np.stack(np.unravel_index(flat, GRID), 1))
        self.model_id, self.subjects = "bench", [1]

    def output_ids(self, subject=None):
        return self.space.voxel_ijk

    def to_nifti(self, responses, subject=None):
        return self.space.to_nifti(responses)

    def provenance(self):
        return {"model_id": self.model_id, "subjects": self.subjects, "artifacts": {}}


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
    args = ap.parse_args()
    from berg.io import save, save_nifti

    model = Model()
    # Smooth-ish values, like real predictions (pure noise would be incompressible and unfair to gzip).
    rng = np.random.default_rng(1)
    base = rng.standard_normal((args.n_stimuli, 64)).astype(np.float32) @ rng.standard_normal((64, N_OUT)).astype(
        np.float32
    )
    responses = (base / 8).astype(np.float32)
    mb = responses.nbytes / 1e6
    print(f"responses: {responses.shape} float32, {mb:.0f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        for comp in (None, "lzf", "gzip"):
            path = Path(tmp) / f"r-{comp}.h5"
            t = _time(lambda: save(path, responses, model, compression=comp))
            size = path.stat().st_size / 1e6
            print(f"save h5 compression={comp!s:5s}: {t:6.2f} s  {mb / t:7.0f} MB/s  file {size:6.0f} MB")
        path = Path(tmp) / "r.nii.gz"
        t = _time(lambda: save_nifti(path, responses, model), repeat=1)
        print(
            f"save_nifti .nii.gz (4-D)        : {t:6.2f} s  {mb / t:7.0f} MB/s  file {path.stat().st_size / 1e6:6.0f} MB"
        )
        path = Path(tmp) / "r.nii"
        t = _time(lambda: save_nifti(path, responses, model), repeat=1)
        print(
            f"save_nifti .nii (4-D)           : {t:6.2f} s  {mb / t:7.0f} MB/s  file {path.stat().st_size / 1e6:6.0f} MB"
        )

    for argv in (["--help"], ["list"], ["describe", "fmri-bmd-s3d"]):
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "berg.cli", *argv], check=True, capture_output=True)
            runs.append(time.perf_counter() - t0)
        print(f"berg {' '.join(argv):24s}: median {statistics.median(runs):.2f} s (5 runs, fresh process)")


if __name__ == "__main__":
    main()
