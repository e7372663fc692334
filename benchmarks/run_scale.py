"""`berg run` at scale: sharding/zarr overhead, memory, Dask speed-up and resume cost (issue 15).

Measurements (each prints one JSON line; record them in benchmarks/RESULTS.md):

* ``overhead``  images/s of ``berg.run`` (local executor) vs a plain loop of ``model.encode`` over the same
  image files, 256 at a time (target: run >= 0.95x the loop).
* ``rss``       peak RSS of ``berg run`` with 1,000 and 4,000 images (target: independent of the count).
* ``dask``      Dask LocalCluster, 2 workers x 1 thread vs 1 worker x 1 thread, same plan (target >= 1.7x);
  then 1 worker with its default threads (all the machine's cores) vs the local executor, same plan.
* ``resume``    a Dask run SIGKILLed at 50 % of its shards, then resumed: resume time / full-run time
  (target <= 0.55). Both runs are broken down from their event logs: driver preparation, start-up until
  the first shard starts (workers spawn, import torch and load the models), shards, and close.
* ``gpu``       the local executor with ``--device cuda`` (images/s and GPU utilisation from nvidia-smi).

Model: ResNet-18 (seeded, untrained: the cost of the pretrained one), 224x224 input, a synthetic native
artifact with a 512 -> 100 projection and three subjects of ``--n-outputs`` outputs. Stimuli: JPEG files
of 256x256 written once into ``--work``.

Run by hand:  .venv/bin/python benchmarks/run_scale.py overhead rss dask resume [--n-images 2000] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import _harness as H
import numpy as np

MODEL_ID = "bench-run-resnet18"
K = 100
SUBJECTS = [1, 2, 3]


def build_artifact(root: Path, n_out: int, size: int = 224) -> dict:
    """The synthetic model (random folded projection 512 -> 100, three readouts 100 -> n_out); berg options."""
    from berg.testing import toy_model

    toy = toy_model(
        root,
        "flat",
        model_id=MODEL_ID,
        subjects=SUBJECTS,
        size=size,
        n_components=K,
        n_outputs=n_out,
        dataset="bench",
        creator="benchmarks/run_scale.py",
    )
    return toy.options(root / "cache")


def write_images(folder: Path, n: int) -> list[Path]:
    """``n`` random 256x256 JPEGs (kept between runs)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        p = folder / f"img{i:06d}.jpg"
        if not p.exists():
            # smooth random images compress like photographs (noise would make decoding unrealistically slow)
            small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize((256, 256), Image.BICUBIC).save(p, quality=90)
        paths.append(p)
    return paths


def plan_dict(store: Path, stimuli: Path, opts: dict, executor: dict, shard: int = 256, device: str = "cpu") -> dict:
    return {
        "models": [{"id": MODEL_ID, "subjects": SUBJECTS, "backbone_weights": "untrained", "batch_size": 32}],
        "stimuli": {"folder": str(stimuli)},
        "store": str(store),
        "shard_size": shard,
        "device": device,
        "executor": executor,
        "berg": opts,
    }


def _rm(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def bench_overhead(work: Path, opts: dict, n: int, device: str, repeats: int = 2) -> dict:
    import berg

    folder = work / f"images-{n}"
    paths = [str(p) for p in write_images(folder, n)]
    client = berg.BERG(**opts)

    def loop():
        # what a user script does: load the model, then encode the files 256 at a time (results discarded)
        model = client.get_encoding_model(
            MODEL_ID, subject=SUBJECTS, device=device, batch_size=32, backbone_weights="untrained"
        )
        for i in range(0, n, 256):
            model.encode(paths[i : i + 256], show_progress=False)

    def run():
        store = work / "run-overhead"
        _rm(store)
        berg.run(plan_dict(store, folder, opts, {"kind": "local"}, device=device), show_progress=False)

    times: dict[str, list[float]] = {"loop": [], "run": []}
    cpu: dict[str, list[float]] = {"loop": [], "run": []}
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        for name, fn in (("loop", loop), ("run", run)):
            t0, c0 = time.perf_counter(), _cpu()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(_cpu() - c0)
    loop_s, run_s = min(times["loop"]), min(times["run"])
    loop_c, run_c = min(cpu["loop"]), min(cpu["run"])
    return {
        "bench": "overhead",
        "n_images": n,
        "repeats": repeats,
        "loop_img_per_s": round(n / loop_s, 1),
        "run_img_per_s": round(n / run_s, 1),
        "ratio_run_over_loop": round(loop_s / run_s, 3),
        "loop_cpu_s": round(loop_c, 1),
        "run_cpu_s": round(run_c, 1),
        "cpu_ratio_loop_over_run": round(loop_c / run_c, 3),
        "note": "both load the model once; run also creates the store and writes zstd zarr chunks; "
        "cpu = user+sys of this process (all threads), robust to other jobs on the machine",
    }


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_RSS_CHILD = """
import json, resource, sys, warnings
warnings.simplefilter("ignore")
import berg
berg.run(json.loads(sys.argv[1]), show_progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def bench_rss(work: Path, opts: dict, counts: list[int]) -> dict:
    out = {"bench": "rss"}
    for n in counts:
        folder = work / f"images-{n}"
        write_images(folder, n)
        store = work / f"run-rss-{n}"
        _rm(store)
        plan = plan_dict(store, folder, opts, {"kind": "local"})
        t0 = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, json.dumps(plan)], capture_output=True, text=True, check=True
        )
        out[f"peak_rss_mb_{n}"] = round(int(res.stdout.strip().splitlines()[-1]) / 1024, 1)
        out[f"seconds_{n}"] = round(time.perf_counter() - t0, 1)
    return out


def _timed_run(plan: dict) -> float:
    import berg

    t0 = time.perf_counter()
    berg.run(plan, show_progress=False)
    return time.perf_counter() - t0


def _steady_rate(store: Path, n: int, shard: int) -> float:
    """Stimuli/s between the first shard start and the last shard end (cluster start-up and model loading
    excluded), from the run's event log."""
    from berg.runner.zarr_store import RunStore

    events = RunStore(store).read_events()
    first = min(e["t"] for e in events if e["event"] == "shard_start")
    last = max(e["t"] for e in events if e["event"] == "unit_done")
    return n / (last - first)


def _phases(store: Path, t_begin: float, t_end: float) -> dict:
    """Where the latest run of ``store`` spent its wall time (wall-clock ``t_begin`` -> ``t_end``), from its
    event log: ``prepare`` (driver: open, fingerprint, load, lay out, find pending shards), ``startup``
    (run start -> first shard start: workers spawn, import torch, load the models), ``shards`` (first
    shard start -> last shard end) and ``close`` (last shard end -> return: the cluster shuts down)."""
    from berg.runner.zarr_store import RunStore

    events = RunStore(store).read_events()
    begin = max(i for i, e in enumerate(events) if e["event"] == "run_start")
    run = events[begin:]
    t_run = run[0]["t"]
    first = min(e["t"] for e in run if e["event"] == "shard_start")
    last = max(e["t"] for e in run if e["event"] == "unit_done")
    ready = [e["seconds"] for e in run if e["event"] == "worker_ready"]
    return {
        "prepare_s": round(t_run - t_begin, 1),
        "startup_s": round(first - t_run, 1),
        "shards_s": round(last - first, 1),
        "close_s": round(t_end - last, 1),
        "worker_load_s": round(max(ready), 1) if ready else None,
        # share of a shard task spent writing (zarr chunks, fsync, checksums, markers), summed over shards
        "write_share": round(
            sum(e.get("write_seconds", 0.0) for e in run if e["event"] == "unit_done")
            / max(1e-9, sum(e["seconds"] for e in run if e["event"] == "unit_done")),
            3,
        ),
        "shards_computed": sum(1 for e in run if e["event"] == "unit_done"),
    }


def _timed_phases(plan: dict) -> tuple[float, dict]:
    """Run ``plan`` in this process: (seconds, :func:`_phases`)."""
    t0, w0 = time.perf_counter(), time.time()
    _timed_run(plan)
    seconds = time.perf_counter() - t0
    return seconds, _phases(Path(plan["store"]), w0, w0 + seconds)


def bench_dask(work: Path, opts: dict, n: int, shard: int) -> dict:
    folder = work / f"images-{n}"
    write_images(folder, n)
    res = {"bench": "dask", "n_images": n, "shard_size": shard}
    for workers in (1, 2):
        store = work / f"run-dask-{workers}"
        _rm(store)
        ex = {"kind": "dask", "n_workers": workers, "threads_per_worker": 1}
        res[f"seconds_{workers}w"] = round(_timed_run(plan_dict(store, folder, opts, ex, shard=shard)), 1)
        res[f"img_per_s_{workers}w"] = round(n / res[f"seconds_{workers}w"], 1)
        res[f"steady_img_per_s_{workers}w"] = round(_steady_rate(store, n, shard), 1)
    res["speedup"] = round(res["seconds_1w"] / res["seconds_2w"], 2)
    res["steady_speedup"] = round(res["steady_img_per_s_2w"] / res["steady_img_per_s_1w"], 2)
    # One worker alone on the machine, with its default threads (every core: threads_per_worker and the
    # BLAS/torch threads follow), against the local executor on the same plan and shards.
    for name, ex in (("1w_all_cores", {"kind": "dask", "n_workers": 1}), ("local", {"kind": "local"})):
        store = work / f"run-dask-{name}"
        _rm(store)
        res[f"seconds_{name}"] = round(_timed_run(plan_dict(store, folder, opts, ex, shard=shard)), 1)
        res[f"img_per_s_{name}"] = round(n / res[f"seconds_{name}"], 1)
        res[f"steady_img_per_s_{name}"] = round(_steady_rate(store, n, shard), 1)
    res["one_worker_over_local"] = round(res["seconds_local"] / res["seconds_1w_all_cores"], 2)
    res["steady_one_worker_over_local"] = round(res["steady_img_per_s_1w_all_cores"] / res["steady_img_per_s_local"], 2)
    res["threads_1w_all_cores"] = os.cpu_count()
    return res


_KILL_CHILD = """
import json, sys, warnings
warnings.simplefilter("ignore")
import berg
berg.run(json.loads(sys.argv[1]), show_progress=False)
"""


def bench_resume(work: Path, opts: dict, n: int, shard: int) -> dict:
    folder = work / f"images-{n}"
    write_images(folder, n)
    ex = {"kind": "dask", "n_workers": 2, "threads_per_worker": 1}
    full_store = work / "run-resume-full"
    _rm(full_store)
    t_full, full_phases = _timed_phases(plan_dict(full_store, folder, opts, ex, shard=shard))
    store = work / "run-resume"
    _rm(store)
    plan = plan_dict(store, folder, opts, ex, shard=shard)
    n_shards = -(-n // shard)
    proc = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, json.dumps(plan)], start_new_session=True)
    markers = store / "markers" / MODEL_ID / "sub-03"
    while proc.poll() is None and (len(list(markers.glob("*.json"))) if markers.is_dir() else 0) < n_shards // 2:
        time.sleep(0.05)
    done_at_kill = len(list(markers.glob("*.json")))
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Dask workers
    proc.wait()
    time.sleep(1.0)
    t_resume, resume_phases = _timed_phases(plan)
    return {
        "bench": "resume",
        "n_images": n,
        "shard_size": shard,
        "full_run_s": round(t_full, 1),
        "shards_done_at_kill": done_at_kill,
        "n_shards": n_shards,
        "resume_s": round(t_resume, 1),
        "resume_over_full": round(t_resume / t_full, 3),
        # the fixed part of each run (everything but the shards) and the shards themselves
        "full_fixed_s": round(t_full - full_phases["shards_s"], 1),
        "resume_fixed_s": round(t_resume - resume_phases["shards_s"], 1),
        **{f"full_{k}": v for k, v in full_phases.items()},
        **{f"resume_{k}": v for k, v in resume_phases.items()},
    }


def bench_gpu(work: Path, opts: dict, n: int) -> dict:
    folder = work / f"images-{n}"
    write_images(folder, n)
    store = work / "run-gpu"
    _rm(store)
    smi = subprocess.Popen(
        ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        t = _timed_run(plan_dict(store, folder, opts, {"kind": "local"}, device="cuda"))
    finally:
        smi.terminate()
    util = [float(x) for x in smi.communicate()[0].split() if x.strip().replace(".", "").isdigit()]
    return {
        "bench": "gpu",
        "n_images": n,
        "img_per_s": round(n / t, 1),
        "gpu_util_mean_pct": round(float(np.mean(util)), 1) if util else None,
        "gpu_util_max_pct": max(util) if util else None,
    }


FIGURES = {
    "overhead": {
        "ratio_run_over_loop": ("overhead.run_over_loop", "x", ">= 0.95"),
        "run_img_per_s": ("overhead.run", "img/s"),
        "loop_img_per_s": ("overhead.loop", "img/s"),
        "cpu_ratio_loop_over_run": ("overhead.cpu_loop_over_run", "x"),
    },
    "dask": {
        "speedup": ("dask.speedup_2w_over_1w", "x", ">= 1.7"),
        "steady_speedup": ("dask.steady_speedup", "x"),
        "img_per_s_1w": ("dask.img_per_s_1w", "img/s"),
        "img_per_s_2w": ("dask.img_per_s_2w", "img/s"),
        "img_per_s_1w_all_cores": ("dask.img_per_s_1w_all_cores", "img/s"),
        "img_per_s_local": ("dask.img_per_s_local", "img/s"),
        "one_worker_over_local": ("dask.one_worker_all_cores_over_local", "x"),
        "steady_one_worker_over_local": ("dask.steady_one_worker_all_cores_over_local", "x"),
    },
    "resume": {
        "resume_over_full": ("resume.resume_over_full", "x", "<= 0.55"),
        "full_fixed_s": ("resume.full_fixed", "s"),
        "resume_fixed_s": ("resume.resume_fixed", "s"),
        "full_shards_s": ("resume.full_shards", "s"),
        "resume_shards_s": ("resume.resume_shards", "s"),
        "resume_startup_s": ("resume.resume_startup", "s"),
        "resume_close_s": ("resume.resume_close", "s"),
    },
    "gpu": {"img_per_s": ("gpu.img_per_s", "img/s"), "gpu_util_mean_pct": ("gpu.util_mean", "%")},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benches", nargs="*", help="overhead, rss, dask, resume, gpu")
    ap.add_argument("--n-images", type=int, default=2000)
    ap.add_argument("--dask-images", type=int, default=1024)
    ap.add_argument("--dask-shard", type=int, default=64)
    ap.add_argument("--rss-counts", default="1000,4000")
    ap.add_argument("--n-outputs", type=int, default=20_000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2, help="overhead: interleaved repeats (best of)")
    ap.add_argument("--work", default=None, help="folder for images and runs (default: a temporary folder)")
    args = H.add_arguments(ap).parse_args()
    size = 224
    if args.smoke:
        # every part but the Dask ones (a cluster start costs more than a smoke run may take)
        args.benches = args.benches or ["overhead", "rss"]
        args.n_images, args.repeats, args.rss_counts, args.n_outputs, size = 8, 1, "4", 50, 32
    valid = ("overhead", "rss", "dask", "resume", "gpu")
    if not args.benches or set(args.benches) - set(valid):
        ap.error(f"name one or more of {', '.join(valid)}")
    warnings.simplefilter("ignore")
    rec = H.start("run_scale", args, n_outputs=args.n_outputs, subjects=len(SUBJECTS), size=size)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="berg-run-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    opts = build_artifact(work / "artifact", args.n_outputs, size)
    try:
        for b in args.benches:
            if b == "overhead":
                r = bench_overhead(work, opts, args.n_images, args.device, args.repeats)
            elif b == "rss":
                r = bench_rss(work, opts, [int(c) for c in args.rss_counts.split(",")])
            elif b == "dask":
                r = bench_dask(work, opts, args.dask_images, args.dask_shard)
            elif b == "resume":
                r = bench_resume(work, opts, args.dask_images, args.dask_shard)
            else:
                r = bench_gpu(work, opts, args.n_images)
            params = {k: v for k, v in r.items() if k in ("n_images", "shard_size", "repeats")}
            rec.figures(r, FIGURES.get(b, {}), **params)
            if b == "rss":
                for key, value in r.items():
                    if key.startswith("peak_rss_mb_"):
                        rec.figure(f"rss.peak_mb_{key.rsplit('_', 1)[1]}_images", value, "MB")
                counts = sorted(int(k.rsplit("_", 1)[1]) for k in r if k.startswith("peak_rss_mb_"))
                if len(counts) > 1:
                    ratio = r[f"peak_rss_mb_{counts[-1]}"] / r[f"peak_rss_mb_{counts[0]}"]
                    rec.figure("rss.largest_over_smallest", ratio, "x", target="<= 1.1", counts=counts)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
