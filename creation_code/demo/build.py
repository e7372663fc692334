"""Build the SYNTHETIC demo model of `make demo` with berg's own creation pipeline.

Random images -> untrained ResNet-18 (seeded) -> made-up "voxels" in three blobs on a small grid with
known signal and noise -> berg's trainer (StandardScaler + PCA(20) + ridge CV) -> berg artifact, card
and registry entry. None of it is brain data.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from berg.testing import resnet18_recipe

MODEL_ID = "demo-synthetic-resnet18"
BUCKET = "berg-demo"
PREFIX = f"{MODEL_ID}/"

RECIPE = resnet18_recipe(size=64, nodes=["layer3", "avgpool"], projection="scaler_pca", output_space="volume")


@dataclass
class DemoModel:
    model_id: str
    artifact_dir: Path
    registry_path: Path
    card_path: Path
    prefix: str
    summary: str


def build_demo(out_dir: str | Path, *, seed: int = 0) -> DemoModel:
    """Synthetic dataset -> trained, exported demo model under ``out_dir``."""
    from berg.testing import make_synthetic_dataset
    from berg.training.trainer import TrainConfig, train

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / "synthetic_dataset.h5"
    make_synthetic_dataset(
        data,
        RECIPE,
        n_train=120,
        n_test=30,
        grid=(20, 24, 20),
        n_blobs=5,
        blob_radius=(0.2, 0.3),
        k_true=8,
        image_size=64,
        seed=seed,
    )
    cfg = TrainConfig(
        model_id=MODEL_ID,
        dataset=str(data),
        recipe=RECIPE,
        out_dir=str(out_dir / "export"),
        projection={"kind": "scaler_pca", "n_components": 20},
        readout={"kind": "ridge", "alphas": [0.1, 1, 10, 100, 1000], "folds": 5},
        backbone_weights="untrained",
        seed=seed,
        source={"kind": "s3", "bucket": BUCKET, "prefix": PREFIX},
        card={
            "name": "SYNTHETIC demo model (random images, untrained ResNet-18, made-up voxels)",
            "description": "A synthetic model built by `make demo` with berg's creation pipeline. It is NOT a "
            "brain model: stimuli are random images, responses are simulated.",
            "species": "none (synthetic)",
            "dataset": {"name": "synthetic", "space": "made-up 3 mm grid (20, 24, 20)", "citation": "none (simulated)"},
            "stimuli": {"type": "image", "description": "SYNTHETIC: smoothed random-noise images, 64x64"},
            "output": {"units": "SYNTHETIC arbitrary units (simulated responses)"},
            "caveats": [
                "SYNTHETIC model: random images, untrained ResNet-18, simulated voxels on a made-up grid. "
                "Its outputs mean nothing about brains; it exists to demonstrate and test berg."
            ],
        },
    )
    cfg.dump(out_dir / "demo_config.yaml")  # the exact config, to rerun with `berg train`
    result = train(cfg, show_progress=False)
    a = result.accuracy[1]
    summary = f"SYNTHETIC; test median r {a['median_r']:.2f}, mean noise ceiling {a['mean_noise_ceiling']:.2f}, NNMC {a['nnmc']:.0f}"
    return DemoModel(MODEL_ID, result.artifact_dir, result.registry_path, result.card_path, PREFIX, summary)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out_dir")
    built = build_demo(ap.parse_args().out_dir)
    print(f"{built.model_id}: {built.artifact_dir} ({built.summary})")
