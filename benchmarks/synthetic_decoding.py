"""Benchmark: synthetic dataset generation vs ``encode``, and the full decoding study (issue 13).

Builds a SYNTHETIC ``fmri-bold5000-alexnet`` (seeded untrained AlexNet, BOLD5000-shaped release with
BOLD5000's real ROI sizes: 1,685 / 2,270 / 3,104 voxels for CSI1-3, all ROIs, 3 subjects), then times

1. ``model.encode(images)`` for ``--n`` images (all three subjects in one pass: the engine's speed);
2. ``berg.synthetic.generate(model, images, path, noise="metadata")`` for the same images (encode +
   noise matched to the real data's NCSNR + streaming into berg's dataset HDF5; the noise is drawn and
   written by one thread while the next batch encodes); target: at least 0.95x the speed of (1)
   (issue 22);
3. the decoding study on the generated data: category classification synthetic -> real (logistic
   regression, 1,000 permutations), semantic identification of held-out categories, and a learning
   curve, per subject.

The figures of (1) and (2) are recorded (one JSON line each) before the study starts, so a long study
never holds them back; ``--skip-study`` stops there.

Run by hand::

    .venv/bin/python benchmarks/synthetic_decoding.py --n 100000   # what `make bench` runs
    .venv/bin/python benchmarks/synthetic_decoding.py --n 100000 --skip-study   # generation figures only
    .venv/bin/python benchmarks/synthetic_decoding.py --n 5000 --image-size 64   # a quick look
    .venv/bin/python benchmarks/synthetic_decoding.py --smoke   # 1 subject, 6 categories, 48 images (make test)

Images are ``--image-size`` pixels (64 keeps 100,000 images at 1.2 GB in memory; the recipe then crops
64 instead of 224, everything else is the same code path).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import _harness as H
import numpy as np

log = logging.getLogger("berg.benchmarks")
MODEL_ID = "bench-bold5000-alexnet"
#: the release and study sizes; --smoke replaces them (same code path, seconds)
SIZES = {
    "subjects": (1, 2, 3),
    "n_categories": 20,
    "n_per_category": 30,
    "n_test": 40,
    "voxels_per_roi": None,  # None: BOLD5000's real ROI sizes
    "n_components": 64,
    "held_every": 4,  # every 4th category is held out of identification training
}
SMOKE = {
    "subjects": (1,),
    "n_categories": 6,
    "n_per_category": 8,
    "n_test": 8,
    "voxels_per_roi": 4,
    "n_components": 8,
    "held_every": 3,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="synthetic stimuli to generate")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--skip-study", action="store_true", help="time generation only")
    ap.add_argument("--work", default=None, help="folder for the release, model and dataset (default: a temp dir)")
    args = H.add_arguments(ap).parse_args()
    sizes = dict(SIZES)
    if args.smoke:
        sizes.update(SMOKE)
        args.n, args.batch_size, args.permutations = 48, 16, 20
    warnings.simplefilter("ignore", UserWarning)  # the untrained-backbone warning, once per call
    rec = H.start("synthetic_decoding", args, n=args.n, image_size=args.image_size, batch_size=args.batch_size)

    from berg.api import BERG
    from berg.buildable import build_model
    from berg.experiments.decoding import classify, identify, learning_curve, split_categories
    from berg.synthetic import category_images, generate
    from berg.training.bold5000 import bold5000_release_dataset
    from creation_code.bold5000_alexnet.synthetic_release import (
        BOLD5000_VOXELS,
        write_registry,
        write_synthetic_release,
    )

    scratch = None if args.work else tempfile.TemporaryDirectory(prefix="berg-bench-syn-")  # removed at exit
    work = Path(args.work or scratch.name)
    subjects = sizes["subjects"]
    n_cat, n_per = sizes["n_categories"], sizes["n_per_category"]
    t0 = time.perf_counter()
    truth = write_synthetic_release(
        work / "data",
        subjects=subjects,
        n_categories=n_cat,
        n_per_category=n_per,
        n_test=sizes["n_test"],
        voxels_per_roi=sizes["voxels_per_roi"] or BOLD5000_VOXELS,
        ncsnr=0.8,
        image_size=args.image_size,
    )
    registry = write_registry(
        work,
        MODEL_ID,
        subjects=subjects,
        image_size=args.image_size,
        n_outputs={s: truth.signal[s].shape[1] for s in subjects},
    )
    client = BERG(cache_dir=work / "cache", registry=registry)
    build_model(
        MODEL_ID,
        work / "data",
        client=client,
        force=True,
        options={
            "backbone_weights": "untrained",
            "image_size": args.image_size,
            "n_components": sizes["n_components"],
            "subjects": list(subjects),
            "model_id": MODEL_ID,
            "show_progress": False,
        },
    )
    t_build = time.perf_counter() - t0
    model = client.get_encoding_model(
        MODEL_ID, subject=list(subjects), device=args.device, backbone_weights="untrained", batch_size=args.batch_size
    )
    n_out = {s: model.space(s).n_outputs for s in subjects}

    # new images of the release's categories: the synthetic training set (same prototypes, new exemplars)
    per_cat = -(-args.n // n_cat)
    t0 = time.perf_counter()
    images, cats = category_images(n_cat, n_per + per_cat, size=args.image_size, seed=0)
    keep = (np.arange(len(cats)) % (n_per + per_cat)) >= n_per  # the first n_per per category are the release's
    images, cats = images[keep][: args.n], cats[keep][: args.n]
    log.info("%d images in %.0f s (not timed)", len(images), time.perf_counter() - t0)

    model.encode(images[: args.batch_size], show_progress=False)  # warm-up (threads, allocator)
    # encode and generate alternate, twice; the faster of each pair is kept (the box is shared)
    t_encode = t_generate = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        model.encode(images, show_progress=False)
        t_encode = min(t_encode, time.perf_counter() - t0)
        t0 = time.perf_counter()
        syn = generate(model, images, work / "synthetic.h5", n_repeats=1, noise="metadata", categories=cats, seed=0)
        t_generate = min(t_generate, time.perf_counter() - t0)
        log.info("encode %.1f s, generate %.1f s (best so far)", t_encode, t_generate)
    size_gb = (work / "synthetic.h5").stat().st_size / 1e9
    n_total = sum(n_out.values())
    rec.figure("build", t_build, "s", note="release + `berg build` (untrained AlexNet)", subjects=len(subjects))
    rec.figure("encode", args.n / t_encode, "img/s", outputs=n_total)
    rec.figure("generate", args.n / t_generate, "img/s", note="encode + metadata noise + HDF5", outputs=n_total)
    rec.figure(
        "generate_over_encode",
        t_encode / t_generate,
        "x",
        target=">= 0.95",
        note=f"best of 2: encode {t_encode:.1f} s, generate {t_generate:.1f} s for {args.n} images",
    )
    rec.figure("generate_extra_per_image", (t_generate - t_encode) / args.n * 1e3, "ms", note="generate - encode")
    rec.figure("dataset_size", size_gb * 1e3, "MB", responses=int(args.n) * n_total)
    if args.skip_study:
        return 0
    # the study, per subject: real data = the release (its categories from the ImageNet-style names)
    real = bold5000_release_dataset(work / "data", subjects)
    real_cats = np.array([truth.categories[truth.ids.index(i)] for i in real.ids])
    emb_feats = truth.features["fc6"]
    pcs = (emb_feats - emb_feats.mean(0)) / (emb_feats.std(0) + 1e-9)
    _, _, vt = np.linalg.svd(pcs[:200], full_matrices=False)
    # a stand-in "semantic" embedding: each category's mean fc6 feature in a 16-PC space
    emb = {c: (pcs[truth.categories == c] @ vt[:16].T).mean(0) for c in np.unique(truth.categories)}
    held = list(np.unique(truth.categories)[:: sizes["held_every"]])
    t0 = time.perf_counter()
    for s in subjects:
        y_syn = np.asarray(syn.responses[s][:])[:, 0]
        y_real = np.nanmean(np.asarray(real.subjects[s].responses[:]), axis=1)
        test = real.indices("test")
        c = classify(y_syn, cats, y_real[test], real_cats[test], n_permutations=args.permutations)
        tr_syn, _ = split_categories(cats, test_categories=held)
        _, te_real = split_categories(real_cats, test_categories=held)
        ident = identify(
            y_syn[tr_syn],
            cats[tr_syn],
            y_real[te_real],
            real_cats[te_real],
            emb,
            n_way=2,
            n_permutations=args.permutations,
        )
        curve_sizes = [s_ for s_ in (100, 1000, 10_000, 100_000) if s_ <= len(y_syn)] or [len(y_syn)]
        curve = learning_curve(
            y_syn,
            cats,
            y_real[test],
            real_cats[test],
            sizes=curve_sizes,
            n_draws=2,
            real_x=y_real[real.indices("train")],
            real_y=real_cats[real.indices("train")],
            n_permutations=min(args.permutations, 200),
        )
        perms = {"permutations": args.permutations, "subject": s}
        rec.figure(f"sub{s}.classify.accuracy", c.accuracy, "fraction", chance=round(c.chance, 3), **perms)
        rec.figure(f"sub{s}.classify.p", c.p_value, "p", **perms)
        rec.figure(f"sub{s}.identify_2way.accuracy", ident.accuracy, "fraction", held=len(held), **perms)
        rec.figure(f"sub{s}.identify_2way.p", ident.p_value, "p", **perms)
        for kind, sizes_, acc in (
            ("synthetic", curve.sizes, curve.accuracy),
            ("real", curve.real_sizes, curve.real_accuracy),
        ):
            for n_train, a in zip(sizes_, acc):
                rec.figure(f"sub{s}.curve.{kind}.{int(n_train)}", a, "fraction", n_train=int(n_train), **perms)
    rec.figure("study", time.perf_counter() - t0, "s", subjects=len(subjects))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
