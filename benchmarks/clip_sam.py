"""fmri-algonauts_2023-clip_sam throughput: feature extraction per backbone, and encode of the clip_sam
ensemble against the bare backbones (target: encode >= 0.9 x bare images/s).

Random weights (``backbone_weights="untrained"``) cost the same as the published ones, so no download
is needed. The artifact is a random native one (the real model id, written into a temporary berg_dir),
with ``--vertices`` challenge vertices (default 4,000; the real subject 1 has 39,548: pass --vertices
39548 with ~3 GB free RAM).

Run by hand:  .venv/bin/python benchmarks/clip_sam.py [--n-images 8] [--sam-model vit_l] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

MODEL_ID = "fmri-algonauts_2023-clip_sam"


def write_artifact(root: Path, n_vertices: int, sam: dict) -> Path:
    """A random native artifact with every feature set's readout for subject 1 (lh/rh split in half)."""
    from berg.models.algonauts_2023 import FEATURE_SETS, INFO_KEY, VARIANTS
    from berg.store.artifacts import ArtifactWriter

    rng = np.random.default_rng(0)
    widths = {"image": 512, "text": 512, "sam": 256 * (sam["image_size"] // 16 // sam["pool"]) ** 2}
    n_lh = n_vertices // 2
    out = root / f"{MODEL_ID}/"
    w = ArtifactWriter(out, MODEL_ID)
    info_sets = {}
    for fs, kinds in FEATURE_SETS.items():
        k = sum(widths[x] for x in kinds)
        info_sets[fs] = k
        rows = np.arange(0, n_vertices, 10) if fs == "all" else None
        m = n_vertices if rows is None else rows.size
        t = {"weight": (rng.standard_normal((m, k), dtype=np.float32) / np.sqrt(k)), "bias": np.zeros(m, np.float32)}
        if rows is not None:
            t["rows"] = rows.astype(np.int64)
        w.add_tensors(f"readout/{fs}/sub-01.safetensors", t)
    codes = np.zeros(n_vertices, np.int8)
    codes[: n_vertices // 4] = 1
    codes[::10] = 2
    w.add_tensors(
        "metadata/sub-01.safetensors",
        {
            "vertices/lh": np.arange(n_lh, dtype=np.int64),
            "vertices/rh": np.arange(n_vertices - n_lh, dtype=np.int64),
            "roi/V1v": np.arange(10, dtype=np.int64),
            "per_roi_class": codes,
        },
    )
    w.add_json(
        "metadata/sub-01.json",
        {
            "n_outputs": n_vertices,
            "rois": ["V1v"],
            "output_space": {
                "kind": "surface",
                "template": "fsaverage",
                "hemispheres": ["lh", "rh"],
                "n_vertices": {"lh": 163842, "rh": 163842},
            },
        },
    )
    w.add_json(
        INFO_KEY,
        {
            "variants": list(VARIANTS),
            "feature_sets": info_sets,
            "backbones": {
                "clip": {"model": "ViT-B-32-quickgelu"},
                "sam": {"model": sam["model"], "image_size": sam["image_size"], "pool": sam["pool"]},
            },
        },
    )
    w.finalize({"creator": "benchmarks/clip_sam.py"})
    return root


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
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import berg

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (425, 640, 3), dtype=np.uint8) for _ in range(args.n_images)]  # NSD-like
    captions = [
        [f"a photo number {i}", "a scene with objects", "people near a table", "a street", "a room"]
        for i in range(args.n_images)
    ]
    sam_cfg = {"model": args.sam_model, "image_size": 1024, "pool": 8}
    with tempfile.TemporaryDirectory() as tmp:
        berg_dir = write_artifact(Path(tmp), args.vertices, sam_cfg)
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
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "device": args.device,
                "sam_model": args.sam_model,
                "n_images": args.n_images,
                "vertices": args.vertices,
                "images_per_s": {k: round(v, 3) for k, v in rates.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
