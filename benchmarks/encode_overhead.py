"""Engine overhead: berg.encode throughput vs the bare backbone forward, and readout-only throughput.

Targets: encode / bare-forward throughput ratio >= 0.95 (issue 22; the core issue asked 0.9; ResNet-18
at 224 px, batch 32, CPU), and readout-only >= 5,000 stimuli/s for a 100 -> 108,219 readout at batch 64 on 2 cores.

Model: :func:`berg.testing.toy_model` (seeded untrained ResNet-18, random folded projection 512 -> 100,
one subject of 108,219 flat outputs).

Run by hand:  .venv/bin/python benchmarks/encode_overhead.py [--n-images 256] [--device cpu] [--smoke]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import _harness as H
import numpy as np
import torch

N_OUT = 108_219
K = 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = H.add_arguments(ap).parse_args()
    n_out, size = N_OUT, 224
    if args.smoke:
        args.n_images, args.batch_size, args.repeats, n_out, size = 8, 4, 1, 500, 64
    warnings.simplefilter("ignore")
    from berg.testing import toy_model

    rec = H.start("encode_overhead", args, device=args.device, n_images=args.n_images, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        toy = toy_model(
            Path(tmp),
            "flat",
            model_id="bench-resnet18",
            subjects=[1],
            size=size,
            n_components=K,
            n_outputs=n_out,
            creator="benchmarks/encode_overhead.py",
        )
        model = toy.client().get_encoding_model(
            toy.model_id, subject=1, device=args.device, batch_size=args.batch_size, backbone_weights="untrained"
        )
        rng = np.random.default_rng(1)
        images = rng.integers(0, 256, (args.n_images, size, size, 3), dtype=np.uint8)

        # The bare forward sees the same preprocessed batches (preprocessing done beforehand, untimed).
        transform, net = model.extractor.transform, model.extractor.network
        batches = [transform(list(images[i : i + args.batch_size])) for i in range(0, len(images), args.batch_size)]

        def bare():
            with torch.inference_mode():
                for x in batches:
                    net(x.to(model.device))

        def full():
            model.encode(images, show_progress=False)

        t_bare = H.best_time(bare, args.repeats)
        t_full = H.best_time(full, args.repeats)  # the warm-up call pays allocations and thread pools
        feats = torch.randn(64, toy.n_features, device=model.device)

        def readout_only():
            with torch.inference_mode():
                for _ in range(20):
                    model.outputs_from_features(feats)[0].cpu().numpy()

        t_read = H.best_time(readout_only, args.repeats)

    rec.figure("bare_forward", args.n_images / t_bare, "img/s")
    rec.figure("encode", args.n_images / t_full, "img/s")
    rec.figure("encode_over_bare", t_bare / t_full, "x", target=">= 0.95")  # issue 22 (the core issue asked 0.9)
    rec.figure(
        f"readout_only_100_to_{n_out}_b64",
        20 * 64 / t_read,
        "stim/s",
        target=">= 5000",
        note="features -> outputs (the 512 -> 100 projection included: 0.5% of the FLOPs)",
    )


if __name__ == "__main__":
    main()
