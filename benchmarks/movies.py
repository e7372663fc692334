"""Movie analyses at scale (issue 14): VGG-16 kernel time series, group maps of a movie, kernel GLMs.

Three measurements, each against its own reference, all on synthetic data with the real shapes:

1. ``kernels``: a movie (default 6 minutes at 24 fps, Partly Cloudy's length) -> time series of all
   4,224 VGG-16 kernels (``berg.experiments.kernels.kernel_time_series``: PyAV decoding, berg's
   transform, forward to conv5_3, spatial means, TR averaging). Frames/s against the bare VGG-16
   forward (``features`` up to conv5_3's ReLU) on pre-transformed batches. Target >= 0.9x.
2. ``groupmaps``: img2fmri's group MNI maps of movie frames (``fmri-bold5000-resnet18``,
   ``space="mni"``) against the bare ResNet-18 forward, with the step-by-step map (readout + sparse
   placement/smoothing + z-scoring) and the composed one-matmul map. Needs the converted img2fmri
   artifact in ``$BERG_TEST_CACHE`` (``tests/test_bold5000_mni.py`` makes it). Target >= 0.8x.
3. ``glm``: the voxelwise GLM of 4,224 kernels x 60,000 voxels x 168 TRs with Friston-24 confounds as
   one batched least-squares solve (``batched_kernel_glm``), against a per-kernel nilearn
   ``FirstLevelModel`` loop on a subset of kernels (extrapolated), and the ratio.

Run by hand:  .venv/bin/python benchmarks/movies.py [--part kernels groupmaps glm] [--minutes 6]
Shorter movies (``--minutes 0.5``) keep the CPU run short; frames/s does not depend on the length.
``--smoke``: a 3-s 48x64 movie through VGG-16 at 32 px, 4 group-map frames (when the converted artifact
is cached), a 16-kernel x 400-voxel x 40-TR GLM: every part's code path in seconds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import _harness as H
import numpy as np

TEST_CACHE = Path(os.environ.get("BERG_TEST_CACHE", Path.home() / ".cache" / "berg-test"))


def bench_kernels(minutes: float, device: str, batch_size: int, size: tuple[int, int], net_size: int = 224) -> dict:
    import torch

    from berg.experiments.kernels import VGG16Kernels, kernel_time_series
    from berg.experiments.movies import make_synthetic_movie
    from berg.stimuli import decode_video

    with tempfile.TemporaryDirectory(prefix="berg-movie-bench-") as tmp:
        duration = 60.0 * minutes
        bounds = list(np.arange(20.0, duration - 1.0, 20.0)) or [duration / 2]  # a scene change every 20 s
        movie = make_synthetic_movie(Path(tmp) / "movie.mp4", boundaries=bounds, duration=duration, fps=24, size=size)
        net = VGG16Kernels(backbone_weights="untrained", device=device, size=net_size)
        frames, rate = decode_video(movie)
        n = len(frames)
        batches = [net.transform(list(frames[a : a + batch_size])) for a in range(0, n, batch_size)]
        net.features(batches[0][:2].to(net.device))  # warm-up
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        # Interleaved batch by batch, so load changes hit both alike: the bare network (conv1_1 ..
        # conv5_3's ReLU) vs the same network with the 13 spatial-mean taps.
        t_bare = t_taps = 0.0
        with torch.inference_mode():
            for x in batches:
                t0 = time.perf_counter()
                net.features(x.to(net.device))
                sync()
                t1 = time.perf_counter()
                net(x).cpu()
                sync()
                t_taps += time.perf_counter() - t1
                t_bare += t1 - t0
        del batches
        t0 = time.perf_counter()
        ts = kernel_time_series(movie, 2.0, n_drop=0, extractor=net, batch_size=batch_size)
        t_full = time.perf_counter() - t0
    return {
        "movie": f"{duration:.0f} s at {rate:g} fps, {size[0]}x{size[1]}, {n} frames, VGG-16 at {net_size} px",
        "frames": n,
        "kernels": ts.n_kernels,
        "volumes": int(ts.data.shape[0]),
        "frames_per_volume": int(ts.frames_per_tr[0]),
        "bare_vgg16_forward_frames_per_s": n / t_bare,
        "forward_and_spatial_means_frames_per_s": n / t_taps,  # interleaved with bare
        "forward_and_means_over_bare": t_bare / t_taps,
        "kernel_time_series_frames_per_s": n / t_full,  # decode + transform prefetched, forward, means, TR
        "end_to_end_over_bare": t_bare / t_full,
        "extrapolated_6_min_movie_s": 8640 * t_full / n,
    }


def bench_groupmaps(n_frames: int, device: str, repeats: int) -> dict:
    import torch

    import berg
    from berg.core.engine import iter_batches
    from berg.models.bold5000_resnet18.convert import CONVERTER_VERSION, WHEEL_SHA256

    artifact = TEST_CACHE / "artifacts" / f"{WHEEL_SHA256[:12]}-v{CONVERTER_VERSION}"
    if not (artifact / "manifest.json").is_file():
        return {"skipped": f"no converted img2fmri artifact at {artifact} (run tests/test_bold5000_mni.py once)"}
    with tempfile.TemporaryDirectory(prefix="berg-gm-bench-") as tmp:
        client = berg.BERG(berg_dir=artifact, cache_dir=Path(tmp) / "cache", offline=True)
        model = client.get_encoding_model(
            "fmri-bold5000-resnet18", subject="all", space="mni", device=device, backbone_weights="untrained"
        )
        frames = np.random.default_rng(0).integers(0, 256, (n_frames, 240, 320, 3), dtype=np.uint8)
        stim = model.prepare_stimuli(frames)
        xs = [x for _, _, x in iter_batches(model.extractor.transform, stim, model.batch_size)]
        readouts = {
            s: (
                np.concatenate([h.readout.weight for h in model.heads[s]]),
                np.concatenate([h.readout.bias for h in model.heads[s]]),
            )
            for s in model.subjects
        }
        composed = model.mapper.compose(readouts, device=model.device)

        def bare():
            for x in xs:
                model.extractor(x)

        def stepwise():
            for x in xs:
                outs = model.outputs_from_features(model.extractor(x))
                model.mapper(dict(zip(model.subjects, [o.cpu().numpy() for o in outs])))

        def onematmul():
            for x in xs:
                composed(model.extractor(x))

        def encode():
            model.encode(frames, show_progress=False)

        feats = torch.rand(model.batch_size, 512, device=model.device)

        def map_step():
            outs = model.outputs_from_features(feats)
            model.mapper(dict(zip(model.subjects, [o.cpu().numpy() for o in outs])))

        def map_composed():
            composed(feats)

        bare()  # warm-up
        times: dict[str, list[float]] = {}
        for _ in range(repeats):  # interleaved, so load changes hit every path alike
            for name, fn in (("bare", bare), ("stepwise", stepwise), ("composed", onematmul), ("encode", encode)):
                t0 = time.perf_counter()
                fn()
                times.setdefault(name, []).append(time.perf_counter() - t0)
            for name, fn in (("map_step", map_step), ("map_composed", map_composed)):
                t0 = time.perf_counter()
                for _ in range(5):
                    fn()
                times.setdefault(name, []).append((time.perf_counter() - t0) / 5)
        best = {k: min(v) for k, v in times.items()}
        step_out = np.concatenate(
            [
                model.mapper(
                    dict(
                        zip(model.subjects, [o.cpu().numpy() for o in model.outputs_from_features(model.extractor(x))])
                    )
                )
                for x in xs[:1]
            ]
        )
        comp_out = composed(model.extractor(xs[0]))
    return {
        "frames": n_frames,
        "batch": model.batch_size,
        "support_voxels": model.mapper.n_outputs,
        "device": str(model.device),
        "default_path_on_this_device": "composed" if model.group_map is not None else "stepwise",
        "bare_resnet18_frames_per_s": n_frames / best["bare"],
        "features_and_stepwise_map_frames_per_s": n_frames / best["stepwise"],
        "features_and_composed_map_frames_per_s": n_frames / best["composed"],
        "encode_mni_frames_per_s": n_frames / best["encode"],  # preprocessing included
        "stepwise_over_bare": best["bare"] / best["stepwise"],
        "composed_over_bare": best["bare"] / best["composed"],
        "encode_over_bare": best["bare"] / best["encode"],
        "map_only_stepwise_ms_per_batch": 1e3 * best["map_step"],
        "map_only_composed_ms_per_batch": 1e3 * best["map_composed"],
        "max_abs_diff_composed_vs_stepwise": float(np.abs(step_out - comp_out).max()),
    }


def bench_glm(n_kernels: int, n_voxels: int, n_tr: int, subset: int, device: str) -> dict:
    import nibabel as nib

    from berg.experiments.glm import batched_kernel_glm, first_level_kernel_glm, friston24, kernel_regressors

    rng = np.random.default_rng(0)
    tr = 2.0
    kernels = rng.normal(size=(n_tr, n_kernels)).cumsum(axis=0).astype(np.float32)
    motion = rng.normal(scale=0.05, size=(n_tr, 6)).cumsum(axis=0)
    conf = friston24(motion)
    bold = rng.normal(size=(n_tr, n_voxels)).astype(np.float32)
    t0 = time.perf_counter()
    reg = kernel_regressors(kernels, tr)
    t_reg = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = batched_kernel_glm(bold, kernels, tr, confounds=conf, regressors=reg, device=device)
    t_batched = time.perf_counter() - t0
    # nilearn's FirstLevelModel, one kernel at a time, on the same voxels as a NIfTI (OLS, as batched).
    side = int(np.ceil(n_voxels ** (1 / 3)))
    shape = (side, side, int(np.ceil(n_voxels / side**2)))
    vol = np.zeros((int(np.prod(shape)), n_tr), np.float32)
    vol[:n_voxels] = bold.T
    mask = np.zeros(int(np.prod(shape)), np.uint8)
    mask[:n_voxels] = 1
    img = nib.Nifti1Image(vol.reshape(shape + (n_tr,)), np.eye(4))
    mimg = nib.Nifti1Image(mask.reshape(shape), np.eye(4))
    t0 = time.perf_counter()
    for k in range(subset):
        first_level_kernel_glm([img], kernels, tr, kernel=k, confounds=[conf], mask_img=mimg, noise_model="ols")
    t_nilearn = (time.perf_counter() - t0) / subset
    return {
        "kernels": n_kernels,
        "voxels": n_voxels,
        "volumes": n_tr,
        "confounds": "Friston-24 + cosine drift + intercept",
        "device": device,
        "regressors_s": t_reg,  # nilearn compute_regressor, once per study
        "batched_solve_s": t_batched,  # all kernels
        "nilearn_first_level_model_per_kernel_s": t_nilearn,
        "nilearn_loop_extrapolated_s": t_nilearn * n_kernels,  # all kernels
        "batched_over_nilearn_loop": t_nilearn * n_kernels / t_batched,
        "dof": res.dof,
    }


#: unit of a measurement, from its name's ending (every other key of a part's result is a parameter)
UNITS = {
    "_frames_per_s": "frames/s",
    "_ms_per_batch": "ms/batch",
    "_s": "s",
    "_over_bare": "x",
    "_over_nilearn_loop": "x",
}
TARGETS = {
    "kernels.end_to_end_over_bare": ">= 0.9",
    "groupmaps.stepwise_over_bare": ">= 0.8",
    "groupmaps.encode_over_bare": ">= 0.8",
}


def record(rec: H.Recorder, part: str, out: dict) -> None:
    """Every measurement of one part's result as a figure ``<part>.<name>``, the rest as its parameters."""
    unit = {k: next((u for end, u in UNITS.items() if k.endswith(end)), None) for k in out}
    unit["max_abs_diff_composed_vs_stepwise"] = "abs"
    params = {k: v for k, v in out.items() if unit.get(k) is None}
    for key, value in out.items():
        if key not in params:
            rec.figure(f"{part}.{key}", value, unit[key], target=TARGETS.get(f"{part}.{key}"), **params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--part", nargs="+", default=["kernels", "groupmaps", "glm"], choices=["kernels", "groupmaps", "glm"]
    )
    ap.add_argument("--minutes", type=float, default=6.0, help="movie length for the kernel part")
    ap.add_argument("--size", default="224x320", help="movie frame size HxW")
    ap.add_argument("--vgg-size", type=int, default=224, help="VGG-16 input size (its 224; smaller only to smoke)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--gm-frames", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--glm-kernels", type=int, default=4224)
    ap.add_argument("--glm-voxels", type=int, default=60000)
    ap.add_argument("--glm-trs", type=int, default=168)
    ap.add_argument("--glm-subset", type=int, default=3, help="kernels timed in the nilearn loop")
    args = H.add_arguments(ap).parse_args()
    if args.smoke:
        args.minutes, args.size, args.vgg_size, args.batch_size = 3 / 60, "48x64", 32, 24
        args.gm_frames, args.repeats = 4, 1
        args.glm_kernels, args.glm_voxels, args.glm_trs, args.glm_subset = 16, 400, 40, 1
    h, w = (int(v) for v in args.size.lower().split("x"))
    rec = H.start("movies", args, device=args.device)
    if "kernels" in args.part:
        out = bench_kernels(args.minutes, args.device, args.batch_size, (h, w), args.vgg_size)
        record(rec, "kernels", {**out, "vgg_size": args.vgg_size})
    if "groupmaps" in args.part:
        out = bench_groupmaps(args.gm_frames, args.device, args.repeats)
        if "skipped" in out:
            rec.figure("groupmaps.encode_over_bare", None, "x", target=">= 0.8", note=out["skipped"])
        else:
            record(rec, "groupmaps", out)
    if "glm" in args.part:
        out = bench_glm(args.glm_kernels, args.glm_voxels, args.glm_trs, args.glm_subset, args.device)
        record(rec, "glm", {**out, "nilearn_subset": args.glm_subset})


if __name__ == "__main__":
    main()
