"""fmri-algonauts_2023-clip_sam throughput: feature extraction per backbone, and encode of the clip_sam
ensemble against the bare backbones (target: encode >= 0.9 x bare images/s).

Random weights (``backbone_weights="untrained"``) cost the same as the published ones, so no download
is needed. The artifact is a random native one (:func:`berg.testing.write_algonauts_artifact`: the real
model id, written into a temporary berg_dir),
with ``--vertices`` challenge vertices (default 4,000; the real subject 1 has 39,548: pass --vertices
39548 with ~3 GB free RAM).

Run by hand:  .venv/bin/python benchmarks/clip_sam.py [--n-images 8] [--sam-model vit_l] [--device cpu] [--smoke]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import _harness as H
import numpy as np

MODEL_ID = "fmri-algonauts_2023-clip_sam"


def rate(fn, n: int, repeats: int = 2) -> float:
    """Best of ``repeats`` runs: items per second."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--vertices", type=int, default=4000)
    ap.add_argument("--sam-model", default="vit_l", choices=["vit_b", "vit_l", "vit_h"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    args = H.add_arguments(ap).parse_args()
    sam_cfg = {"model": args.sam_model, "image_size": 1024, "pool": 8}
    if args.smoke:  # SAM ViT-B at 64 px (random weights accept any multiple of 16)
        args.n_images, args.batch_size, args.vertices, args.repeats = 1, 1, 200, 1
        sam_cfg = {"model": "vit_b", "image_size": 64, "pool": 1}
    warnings.simplefilter("ignore")
    import berg
    from berg.testing import write_algonauts_artifact

    rec = H.start("clip_sam", args, n_images=args.n_images, vertices=args.vertices, sam=sam_cfg, device=args.device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (425, 640, 3), dtype=np.uint8) for _ in range(args.n_images)]  # NSD-like
    captions = [
        [f"a photo number {i}", "a scene with objects", "people near a table", "a street", "a room"]
        for i in range(args.n_images)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        berg_dir = write_algonauts_artifact(Path(tmp), args.vertices, sam=sam_cfg)
        client = berg.BERG(berg_dir=berg_dir, cache_dir=Path(tmp) / "cache", offline=True)
        model = client.get_encoding_model(
            MODEL_ID,
            subject=1,
            backbone_weights="untrained",
            device=args.device,
            batch_size=args.batch_size,
            variant="clip_sam",
        )
        image, text, sam = (model.extractors[k] for k in ("image", "text", "sam"))

        def bare(extractor, items):
            def run():
                for a in range(0, len(items), args.batch_size):
                    extractor(extractor.transform(items[a : a + args.batch_size]))

            return run

        rates = {
            "clip_image": rate(bare(image, images), args.n_images, args.repeats),
            "clip_text": rate(bare(text, captions), args.n_images, args.repeats),
            "sam": rate(bare(sam, images), args.n_images, args.repeats),
        }
        bare_total = 1.0 / sum(1.0 / r for r in rates.values())  # all three backbones, one after the other
        rates["bare_backbones"] = bare_total
        rates["encode_clip_sam"] = rate(
            lambda: model.encode(images, captions=captions, show_progress=False), args.n_images, args.repeats
        )
        rates["ratio"] = rates["encode_clip_sam"] / bare_total
    rec.figures(
        rates,
        {
            "clip_image": ("clip_image", "img/s"),
            "clip_text": ("clip_text", "img/s"),
            "sam": ("sam", "img/s"),
            "bare_backbones": ("bare_backbones", "img/s"),
            "encode_clip_sam": ("encode_clip_sam", "img/s"),
            "ratio": ("encode_over_bare", "x", ">= 0.9"),
        },
    )


if __name__ == "__main__":
    main()
