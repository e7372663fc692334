"""In silico experiments at scale (issue 16): RSMs, univariate control, forward+backward throughput.

1. RSM of 10,000 x 10,000 from 10,000 x 5,000 responses: ``berg.experiments.rsm`` (float32, blocked)
   vs ``np.corrcoef`` (float64) vs a Python double loop of ``scipy.stats.pearsonr`` (RNC's
   ``01_create_rsms.py``) timed on a subset and extrapolated to all pairs (reported as a ratio).
2. Univariate control on 73,000 stimuli x 8 subjects x 2 ROIs: ROI means from responses (two ROIs of
   ``--roi-size`` outputs per subject) + baselines (10^6 null batches each) + leave-one-subject-out
   evidence, RNC defaults.
3. forward + backward images/s of a berg model (``forward_pixels`` + ROI objective + backward) vs the
   bare backbone (forward only, and forward + backward to the input, parameters frozen as in
   synthesis), a :func:`berg.testing.toy_model` volume model (untrained ResNet-18 at 64 x 64).

Run by hand:  .venv/bin/python benchmarks/experiments.py [--smoke] [--only rsm,control,forward]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _harness as H
import numpy as np


def _time(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_rsm(n: int, p: int, n_loop: int) -> dict:
    from scipy.stats import pearsonr

    from berg.experiments import rsm

    x = np.random.default_rng(0).standard_normal((n, p), dtype=np.float32)
    t_berg = _time(lambda: rsm(x, device="cpu"))
    t_corr = _time(lambda: np.corrcoef(x))
    sub = x[:n_loop].astype(np.float64)
    pairs = n_loop * (n_loop - 1) // 2

    def loop():
        out = np.zeros((n_loop, n_loop), dtype=np.float32)
        for i in range(n_loop):
            for j in range(i):
                out[i, j] = pearsonr(sub[i], sub[j])[0]

    t_loop = _time(loop)
    per_pair = t_loop / pairs
    t_loop_full = per_pair * n * (n - 1) / 2
    r = rsm(x[:500], device="cpu")
    err = float(np.abs(r - np.corrcoef(x[:500].astype(np.float64))).max())
    return {
        "n_stimuli": n,
        "n_outputs": p,
        "berg_s": round(t_berg, 2),
        "corrcoef_s": round(t_corr, 2),
        "corrcoef_over_berg": round(t_corr / t_berg, 2),
        "pearsonr_loop_pairs_timed": pairs,
        "pearsonr_loop_us_per_pair": round(per_pair * 1e6, 1),
        "pearsonr_loop_full_s_extrapolated": round(t_loop_full, 0),
        "loop_over_berg": round(t_loop_full / t_berg, 0),
        "max_abs_error_vs_float64": err,
    }


def bench_control(n: int, n_sub: int, roi_size: int) -> dict:
    from berg.experiments import univariate_control, univariate_responses

    rng = np.random.default_rng(0)
    a = rng.standard_normal(n).astype(np.float32)
    rois = {"A": np.arange(roi_size), "B": np.arange(roi_size, 2 * roi_size)}
    responses = {}
    for s in range(1, n_sub + 1):
        y = rng.standard_normal((n, 2 * roi_size), dtype=np.float32)
        y[:, :roi_size] += a[:, None]
        responses[s] = y
    t0 = time.perf_counter()
    uni = univariate_responses(responses, rois)
    t1 = time.perf_counter()
    res = univariate_control(univariate=uni, roi_pair=("A", "B"))  # RNC defaults: 25 images, 10^6 null
    t2 = time.perf_counter()
    return {
        "n_stimuli": n,
        "n_subjects": n_sub,
        "roi_outputs": roi_size,
        "roi_means_s": round(t1 - t0, 1),
        "control_with_loso_s": round(t2 - t1, 1),
        "total_s": round(t2 - t0, 1),
        "significant_A_high_high": float(res.evidence.significant["high_high"][:, 0].mean()),
    }


def bench_forward(n_images: int, batch: int) -> dict:
    import warnings

    import torch

    warnings.simplefilter("ignore")
    from berg.experiments import roi_contrast
    from berg.testing import IMAGENET_MEAN, IMAGENET_STD, toy_model

    scratch = tempfile.TemporaryDirectory(prefix="berg-bench-")  # removed when this function returns
    toy = toy_model(Path(scratch.name), "volume", size=64, n_components=8, creator="benchmarks/experiments.py")
    model = toy.client().get_encoding_model(toy.model_id, subject=1, device="cpu", backbone_weights="untrained")
    rois = model.get_metadata()["rois"]
    objective = roi_contrast(rois["A"], rois["B"])
    torch.manual_seed(0)
    torchvision = __import__("torchvision")
    bare = torchvision.models.resnet18(weights=None).eval().requires_grad_(False)  # input gradients only
    x = torch.rand(batch, 3, 64, 64)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    steps = max(1, n_images // batch)

    def bare_forward():
        with torch.inference_mode():
            for _ in range(steps):
                bare((x - mean) / std)

    def bare_fb():
        for _ in range(steps):
            xi = x.clone().requires_grad_(True)
            bare((xi - mean) / std).sum().backward()

    def berg_fb():
        for _ in range(steps):
            xi = x.clone().requires_grad_(True)
            objective(model.forward_pixels(xi)).sum().backward(inputs=[xi])  # as synthesize_images

    for f in (bare_forward, bare_fb, berg_fb):  # warm-up
        f()
    t_f, t_fb, t_berg = (_time(f, 2) for f in (bare_forward, bare_fb, berg_fb))
    ips = lambda t: round(steps * batch / t, 1)  # noqa: E731
    return {
        "images": steps * batch,
        "batch": batch,
        "size": 64,
        "bare_forward_ips": ips(t_f),
        "bare_forward_backward_ips": ips(t_fb),
        "berg_forward_backward_ips": ips(t_berg),
        "berg_fb_over_bare_fb": round(t_fb / t_berg, 3),
        "berg_fb_over_bare_forward": round(t_f / t_berg, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="rsm,control,forward")
    ap.add_argument("--roi-size", type=int, default=300)
    args = H.add_arguments(ap).parse_args()
    parts = set(args.only.split(","))
    rec = H.start("experiments", args)
    if "rsm" in parts:
        r = bench_rsm(*((400, 200, 50) if args.smoke else (10_000, 5_000, 300)))
        spec = {
            "corrcoef_over_berg": ("rsm.corrcoef_over_berg", "x"),
            "loop_over_berg": ("rsm.pearsonr_loop_over_berg", "x"),
            "berg_s": ("rsm.berg", "s"),
            "max_abs_error_vs_float64": ("rsm.max_abs_error_vs_float64", "r"),
        }
        rec.figures(r, spec, n_stimuli=r["n_stimuli"], n_outputs=r["n_outputs"])
    if "control" in parts:
        r = bench_control(*((2_000, 2, 20) if args.smoke else (73_000, 8, args.roi_size)))
        rec.figures(r, {"total_s": ("control.total", "s")}, n_stimuli=r["n_stimuli"], n_subjects=r["n_subjects"])
    if "forward" in parts:
        r = bench_forward(*((4, 4) if args.smoke else (128, 16)))
        spec = {
            "berg_forward_backward_ips": ("forward.berg_forward_backward", "img/s"),
            "bare_forward_backward_ips": ("forward.bare_forward_backward", "img/s"),
            "berg_fb_over_bare_fb": ("forward.berg_fb_over_bare_fb", "x"),
        }
        rec.figures(r, spec, images=r["images"], size=r["size"])


if __name__ == "__main__":
    main()
