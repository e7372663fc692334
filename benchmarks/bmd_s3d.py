"""Benchmark fmri-bmd-s3d at BERG's full size on a synthetic replica of its bucket.

Builds (once) a replica of BERG's files with the real shapes — projection 100 x 5,337,088, 10 subjects
with BERG's voxel counts (108,219 for subject 1) on the (62, 77, 61) grid — and 20 synthetic 3-s mp4
clips (90 frames, 320x240, so decoding and the non-square resize are exercised). Then, each in a fresh
process so peak RSS is per measurement:

* ``cold``:  get_encoding_model (scaler folded into the projection, safetensors written) + encode of
             10 clips; load time and peak RSS;
* ``warm``:  the same with the folded projection already cached (memory-mapped);
* ``bare``:  S3D alone on the same 10 clips (the "backbone" term of the RSS budget);
* ``speed``: clips/s of encode for 20 clip files (decode + S3D + projection + readout) for 1 and for
             10 subjects vs the bare S3D forward on the same clips pre-decoded and pre-transformed,
             interleaved batch by batch (wall and CPU time).

The backbone is built with ``weights=None`` (seeded): pretrained weights cannot be downloaded here and
do not change the cost. Usage::

    .venv/bin/python benchmarks/bmd_s3d.py --root /tmp/berg-bench-bmd [--dtype float32|float64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL_ID = "fmri-bmd-s3d"
N_FEATURES = 5_337_088
K = 100
VOXELS = {1: 108219, 2: 108603, 3: 108366, 4: 108283, 5: 108201, 6: 108449, 7: 108126, 8: 108407, 9: 108250, 10: 107987}


def _peak_rss_gib() -> float:
    # VmHWM is this process image's own high-water mark; ru_maxrss would also carry the parent's
    # resident set at fork (Linux keeps it across exec).
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _is_memmap(a) -> bool:
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = getattr(a, "base", None)
    return False


def _clips(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "clips").glob("*.mp4"))


def prepare(root: Path, dtype: str) -> None:
    import av

    from creation_code.bmd_s3d.replica import PREFIX, write_replica

    marker = root / f"replica-{dtype}.done"
    if not marker.exists():
        for old in root.glob("replica-*.done"):
            old.unlink()
        t = time.perf_counter()
        write_replica(
            root / "bucket",
            subjects=tuple(VOXELS),
            n_features=N_FEATURES,
            k=K,
            n_voxels=VOXELS,
            dtype=np.dtype(dtype),
            keep_arrays=False,
        )
        marker.write_text("ok")
        size = (root / "bucket" / PREFIX / "encoding_models_weights" / "pca_weights.npy").stat().st_size
        print(f"replica written in {time.perf_counter() - t:.0f} s (pca_weights.npy {size / 2**30:.2f} GiB)")
    clips = root / "clips"
    clips.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(20):
        path = clips / f"clip-{i:02d}.mp4"
        if path.exists():
            continue
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            base = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            for f in range(90):  # 3 s at 30 fps, a moving pattern
                frame = np.roll(base, 3 * f, axis=1)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)


def _client(root: Path):
    import berg

    return berg.BERG(berg_dir=root / "bucket", cache_dir=root / "cache", offline=True)


def phase_load(root: Path, cold: bool) -> dict:
    import shutil

    if cold:
        shutil.rmtree(root / "cache", ignore_errors=True)
    client = _client(root)
    rss0 = _peak_rss_gib()
    t = time.perf_counter()
    model = client.get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained")
    t_load = time.perf_counter() - t
    rss_load = _peak_rss_gib()
    t = time.perf_counter()
    out = model.encode(_clips(root)[:10], show_progress=False)
    t_encode = time.perf_counter() - t
    assert out.shape == (10, VOXELS[1]) and np.isfinite(out).all()
    proj = model.projection.weight
    return {
        "load_s": t_load,
        "encode10_s": t_encode,
        "peak_rss_after_imports_gib": rss0,
        "peak_rss_after_load_gib": rss_load,
        "peak_rss_gib": _peak_rss_gib(),
        "projection_gib": proj.size * proj.dtype.itemsize / 2**30,
        "projection_is_memmap": _is_memmap(proj),
    }


def phase_bare(root: Path) -> dict:
    import torch

    from berg.features import FeatureExtractor
    from berg.registry import Registry
    from berg.stimuli import load_stimuli

    spec = Registry().get(MODEL_ID)
    ext = FeatureExtractor(spec.recipe, backbone_weights="untrained", device="cpu", seed=0)
    stimuli = load_stimuli(_clips(root), "video")
    batch = 4  # the engine's default for videos

    def prep(lo: int, hi: int) -> list:
        return [ext.transform([stimuli[j] for j in range(i, min(i + batch, hi))]) for i in range(lo, hi, batch)]

    with torch.inference_mode():
        for xb in prep(0, 10):  # the same batches encode() makes for 10 clips
            ext(xb)
    rss10 = _peak_rss_gib()
    with torch.inference_mode():
        width = ext(prep(0, 1)[0]).shape[1]
    return {"bare_peak_rss_10_clips_gib": rss10, "width": int(width)}


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def phase_speed(root: Path) -> dict:
    """Interleaved per batch (bare S3D, encode 1 subject, encode 10 subjects) so load drift cancels.

    Wall time and process CPU time (all threads) are both recorded: on a shared 2-core machine the CPU
    time ratio is the robust measure of berg's overhead.
    """
    import torch

    client = _client(root)
    clips = _clips(root)
    one = client.get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained")
    ten = client.get_encoding_model(MODEL_ID, subject=list(VOXELS), device="cpu", backbone_weights="untrained")
    ext = one.extractor
    stimuli = one.prepare_stimuli(clips)
    one.encode(clips[:1], show_progress=False)  # page the projection in once, as any real run would
    tot = {k: [0.0, 0.0] for k in ("bare", "one", "ten")}
    for i in range(0, len(clips), 4):
        x = ext.transform([stimuli[j] for j in range(i, i + 4)])  # decoded + transformed outside the timing

        def bare():
            with torch.inference_mode():
                return ext(x).shape[1]

        for name, fn in (
            ("bare", bare),
            ("one", lambda: one.encode(clips[i : i + 4], show_progress=False)),
            ("ten", lambda: ten.encode(clips[i : i + 4], show_progress=False)),
        ):
            out, w, c = _timed(fn)
            tot[name][0] += w
            tot[name][1] += c
        assert out[10].shape == (4, VOXELS[10])
    return {
        **{f"{k}_wall_s": v[0] for k, v in tot.items()},
        **{f"{k}_cpu_s": v[1] for k, v in tot.items()},
        "n_clips": len(clips),
        "peak_rss_gib": _peak_rss_gib(),
    }


def _run(phase: str, root: Path) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, "--root", str(root), "--phase", phase], capture_output=True, text=True, check=False
    )
    if res.returncode:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"phase {phase} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/berg-bench-bmd")
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float64"],
        help="dtype of the replica's components_ (BERG's real dtype is not documented)",
    )
    ap.add_argument("--phase", default=None, choices=["cold", "warm", "bare", "speed"])
    ap.add_argument("--phase-prepare", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = Path(args.root)
    os.environ.setdefault("BERG_CACHE", str(root / "cache"))
    if args.phase:
        import logging

        logging.basicConfig(level=logging.WARNING)
        fn = {
            "cold": lambda: phase_load(root, True),
            "warm": lambda: phase_load(root, False),
            "bare": lambda: phase_bare(root),
            "speed": lambda: phase_speed(root),
        }[args.phase]
        print(json.dumps(fn()))
        return
    root.mkdir(parents=True, exist_ok=True)
    if args.phase_prepare:
        prepare(root, args.dtype)
        return
    # in a child too: the writer's big pickled copy must not inflate this process (or its children)
    subprocess.run(
        [sys.executable, __file__, "--root", str(root), "--dtype", args.dtype, "--phase-prepare"], check=True
    )
    results = {}
    for phase in ("cold", "warm", "bare", "speed"):
        t = time.perf_counter()
        results[phase] = _run(phase, root)
        print(f"{phase} ({time.perf_counter() - t:.0f} s): {json.dumps(results[phase])}", flush=True)
    cold, warm, bare, speed = (results[p] for p in ("cold", "warm", "bare", "speed"))
    budget = 1.5 * cold["projection_gib"] + bare["bare_peak_rss_10_clips_gib"]
    print("\nsummary")
    print(f"  components dtype in replica: {args.dtype}; feature width {bare['width']:,}")
    print(f"  cold load (fold + write safetensors): {cold['load_s']:.1f} s; warm load: {warm['load_s']:.2f} s")
    print(
        f"  peak RSS load + encode 10 clips: cold {cold['peak_rss_gib']:.2f} GiB, warm {warm['peak_rss_gib']:.2f} GiB; "
        f"budget 1.5 x {cold['projection_gib']:.2f} GiB + backbone {bare['bare_peak_rss_10_clips_gib']:.2f} GiB "
        f"= {budget:.2f} GiB"
    )
    n = speed["n_clips"]
    for kind in ("wall", "cpu"):
        bare_t, one_t, ten_t = (speed[f"{k}_{kind}_s"] for k in ("bare", "one", "ten"))
        print(
            f"  {kind:4s}: clips/s encode 1 subject (decode + S3D + projection + readout) {n / one_t:.3f}, "
            f"bare S3D forward {n / bare_t:.3f}, ratio {bare_t / one_t:.2f}; 10 subjects {n / ten_t:.3f} clips/s "
            f"(10-subject / 1-subject time x{ten_t / one_t:.2f})"
        )
    (root / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
