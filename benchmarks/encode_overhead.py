"""Engine overhead: berg.encode throughput vs the bare backbone forward, and readout-only throughput.

Targets (issue "Core"): encode / bare-forward throughput ratio >= 0.9 (ResNet-18, batch 32, CPU), and
readout-only >= 5,000 stimuli/s for a 100 -> 108,219 readout at batch 64 on 2 cores.

Run by hand:  .venv/bin/python benchmarks/encode_overhead.py [--n-images 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

N_OUT = 108_219
K = 100
MODEL_ID = "bench-resnet18"


def build_artifact(root: Path, n_features: int = 512) -> Path:
    """A native artifact: random folded projection 512 -> 100, readout 100 -> 108,219."""
    from berg.store.artifacts import ArtifactWriter

    rng = np.random.default_rng(0)
    w = ArtifactWriter(root / "berg_dir" / "bench/", MODEL_ID)
    w.add_tensors(
        "projection.safetensors",
        {
            "weight": rng.standard_normal((K, n_features), dtype=np.float32) / np.sqrt(n_features),
            "bias": rng.standard_normal(K, dtype=np.float32),
        },
    )
    w.add_tensors(
        "readout/sub-01.safetensors",
        {
            "weight": rng.standard_normal((N_OUT, K), dtype=np.float32) / 10,
            "bias": rng.standard_normal(N_OUT, dtype=np.float32),
        },
    )
    w.add_tensors("metadata/sub-01.safetensors", {"roi/all": np.arange(N_OUT, dtype=np.int64)})
    w.add_json("metadata/sub-01.json", {"n_outputs": N_OUT, "output_space": {"kind": "flat"}, "rois": ["all"]})
    w.finalize({"creator": "benchmarks/encode_overhead.py"})
    card = {"id": MODEL_ID, "parameters": {"subjects": [1], "selection": {"rois": ["all"], "n_outputs": {1: N_OUT}}}}
    (root / f"{MODEL_ID}.yaml").write_text(yaml.safe_dump(card))
    recipe = {
        "backbone": {"builder": "torchvision.models.resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1"},
        "nodes": ["avgpool"],
        "transform": {
            "kind": "image",
            "size": [224, 224],
            "resize": "squash",
            "crop": None,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        "projection": "scaler_pca",
        "readout": "linear",
        "output_space": "flat",
    }
    entry = {
        "card": f"{MODEL_ID}.yaml",
        "modality": "fmri",
        "dataset": "bench",
        "subjects": [1],
        "source": {"kind": "s3", "bucket": "none", "prefix": "bench/"},
        "layout": "native",
        "recipe": recipe,
    }
    reg = root / "registry.yaml"
    reg.write_text(yaml.safe_dump({"format_version": 1, "models": {MODEL_ID: entry}}))
    return reg


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import berg

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reg = build_artifact(root)
        client = berg.BERG(berg_dir=root / "berg_dir", cache_dir=root / "cache", offline=True, registry=reg)
        model = client.get_encoding_model(
            MODEL_ID, subject=1, device=args.device, batch_size=args.batch_size, backbone_weights="untrained"
        )
        rng = np.random.default_rng(1)
        images = rng.integers(0, 256, (args.n_images, 224, 224, 3), dtype=np.uint8)

        # The bare forward sees the same preprocessed batches (preprocessing done beforehand, untimed).
        transform, net = model.extractor.transform, model.extractor.network
        batches = [transform(list(images[i : i + args.batch_size])) for i in range(0, len(images), args.batch_size)]

        def bare():
            with torch.inference_mode():
                for x in batches:
                    net(x.to(model.device))

        def full():
            model.encode(images, show_progress=False)

        full()  # warm-up (allocations, thread pools)
        t_bare = best_of(bare, args.repeats)
        t_full = best_of(full, args.repeats)

        z = torch.randn(64, K, device=model.device)

        def readout_only():
            for _ in range(20):
                model.readout(z)[0].cpu().numpy()

        readout_only()
        t_read = best_of(readout_only, args.repeats)

    result = {
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "n_images": args.n_images,
        "batch_size": args.batch_size,
        "bare_forward_img_per_s": round(args.n_images / t_bare, 1),
        "encode_img_per_s": round(args.n_images / t_full, 1),
        "ratio_encode_vs_bare": round(t_bare / t_full, 3),
        "readout_only_stim_per_s_100_to_108219_batch64": round(20 * 64 / t_read, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
