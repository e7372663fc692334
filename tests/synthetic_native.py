"""Build a tiny synthetic berg-native model for core tests, with an independent reference computation.

The features are computed here *without* berg (torchvision + PIL directly), the readout is fitted with
scikit-learn's StandardScaler -> PCA -> LinearRegression, and the artifact is written with berg's
ArtifactWriter. Tests then check that berg's engine reproduces scikit-learn's predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
SIZE = 64
MODEL_ID = "test-synthetic-resnet18"
PREFIX = "synthetic/model-resnet18/"
GRID = (6, 7, 5)
N_OUT = {1: 30, 2: 25}
ROIS = {"A": slice(0, 10), "B": slice(5, 18)}  # overlapping on purpose

RECIPE = {
    "backbone": {"builder": "torchvision.models.resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1"},
    "nodes": ["avgpool"],
    "transform": {"kind": "image", "size": [SIZE, SIZE], "resize": "squash", "crop": None, "mean": MEAN, "std": STD},
    "projection": "scaler_pca",
    "readout": "linear",
    "output_space": "volume",
}


def reference_features(images: list[np.ndarray]) -> np.ndarray:
    """ResNet-18 (seed 0, untrained) avgpool features computed with torchvision + PIL, not berg."""
    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms as T

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()
    net.eval()
    prep = T.Compose([T.Resize((SIZE, SIZE)), T.ToTensor(), T.Normalize(MEAN, STD)])
    x = torch.stack([prep(Image.fromarray(img)) for img in images])
    with torch.no_grad():
        return net(x).numpy().astype(np.float64)


@dataclass
class SyntheticModel:
    berg_dir: Path
    registry: Path
    test_images: np.ndarray  # (n, H, W, 3) uint8
    expected: dict[int, np.ndarray]  # sklearn predictions on test_images
    roi_rows: dict[str, np.ndarray]
    voxel_ijk: dict[int, np.ndarray]


def _card(n_out: dict[int, int]) -> dict:
    return {
        "id": MODEL_ID,
        "name": "Synthetic ResNet-18 test model (not a brain model)",
        "modality": "fmri",
        "dataset": {"name": "synthetic", "space": "synthetic grid", "citation": "none"},
        "species": "none (synthetic)",
        "stimuli": {"type": "image", "description": "random images"},
        "model_type": "ResNet-18 (untrained) + PCA + linear regression",
        "creator": "berg tests",
        "description": "Synthetic model for berg's own tests. Its outputs mean nothing.",
        "input": {
            "type": "image",
            "dtype": "uint8",
            "range": [0, 255],
            "shape": "[batch, 3, H, W]",
            "description": "RGB",
        },
        "output": {
            "dtype": "float32",
            "dims": [{"name": "n_stimuli", "description": "stimuli"}, {"name": "n_outputs", "description": "voxels"}],
            "units": "arbitrary",
        },
        "parameters": {"subjects": [1, 2], "selection": {"rois": list(ROIS), "n_outputs": n_out}, "model_kwargs": []},
        "preprocessing": {"transform": RECIPE["transform"]},
        "metadata": {"rois": "ROI indices"},
        "accuracy": {"split": "none", "summary": {}, "notes": "synthetic"},
        "references": [{"title": "berg tests", "url": "https://example.invalid"}],
        "license": {"code": "MIT", "weights": "synthetic"},
        "provenance": {"weights": "synthetic", "artifact": "tests/synthetic_native.py"},
        "caveats": ["synthetic"],
    }


def build(root: Path, seed: int = 0) -> SyntheticModel:
    """Write berg_dir + registry + card under ``root`` and return the reference predictions."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import StandardScaler

    from berg.core.readouts import Projection
    from berg.store.artifacts import ArtifactWriter

    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, size=(24, 40, 48, 3), dtype=np.uint8)
    test = rng.integers(0, 256, size=(7, 50, 36, 3), dtype=np.uint8)
    f_train = reference_features(list(train))
    f_test = reference_features(list(test))

    scaler = StandardScaler().fit(f_train)
    pca = PCA(n_components=8, random_state=0).fit(scaler.transform(f_train))
    z_train = pca.transform(scaler.transform(f_train))

    artifact = root / "berg_dir" / PREFIX
    writer = ArtifactWriter(artifact, MODEL_ID)
    proj = Projection.from_scaler_components(scaler.mean_ + scaler.scale_ * pca.mean_, scaler.scale_, pca.components_)
    writer.add_tensors("projection.safetensors", {"weight": proj.weight, "bias": proj.bias})
    expected, roi_rows, ijks = {}, {}, {}
    for sub, n in N_OUT.items():
        y = rng.standard_normal((len(train), n))
        reg = LinearRegression().fit(z_train, y)
        expected[sub] = reg.predict(pca.transform(scaler.transform(f_test)))
        label = f"sub-{sub:02d}"
        writer.add_tensors(
            f"readout/{label}.safetensors",
            {"weight": reg.coef_.astype(np.float32), "bias": reg.intercept_.astype(np.float32)},
        )
        flat = rng.choice(int(np.prod(GRID)), size=n, replace=False)
        ijk = np.stack(np.unravel_index(flat, GRID), axis=1).astype(np.int32)
        ijks[sub] = ijk
        rois = {name: np.arange(n)[sl].astype(np.int64) for name, sl in ROIS.items()}
        roi_rows = rois
        tensors = {f"roi/{k}": v for k, v in rois.items()}
        tensors["voxel_ijk"] = ijk
        tensors["accuracy/correlation"] = rng.uniform(0, 1, n).astype(np.float32)
        writer.add_tensors(f"metadata/{label}.safetensors", tensors)
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        writer.add_json(
            f"metadata/{label}.json",
            {
                "n_outputs": n,
                "output_space": {"kind": "volume", "shape": list(GRID), "affine": affine.tolist()},
                "rois": list(ROIS),
                "info": {"synthetic": True},
            },
        )
    writer.finalize({"creator": "tests/synthetic_native.py", "seed": seed})

    cards = root / "model_cards"
    cards.mkdir(parents=True, exist_ok=True)
    (cards / f"{MODEL_ID}.yaml").write_text(yaml.safe_dump(_card(N_OUT), sort_keys=False))
    registry = root / "registry.yaml"
    entry = {
        "card": f"{MODEL_ID}.yaml",
        "modality": "fmri",
        "dataset": "synthetic",
        "subjects": [1, 2],
        "source": {"kind": "s3", "bucket": "berg-test-synthetic", "prefix": PREFIX},
        "layout": "native",
        "recipe": RECIPE,
        "model_class": None,
    }
    registry.write_text(yaml.safe_dump({"format_version": 1, "models": {MODEL_ID: entry}}, sort_keys=False))
    return SyntheticModel(root / "berg_dir", registry, test, expected, roi_rows, ijks)
