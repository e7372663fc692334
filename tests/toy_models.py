"""Toy models registered only through registry.yaml + card + artifact (the model contract's proof).

* ``test-toy-mlp``: a NON-linear model (features -> ReLU MLP -> sensor x time with 2 repetitions,
  ``(n, 2, 5, 7)``), served by :class:`ToyMLPModel`, which implements the interface without
  subclassing anything of berg's.
* ``test-toy-surface-a`` / ``-b``: linear surface models (two hemispheres, ROIs) on the plain engine.
* ``test-toy-ensemble``: the weighted mean of the two surface models, declared in the registry.
* ``test-toy-recipe``: a recipe model built by ``berg build`` from a "dataset" folder.

Nothing here touches berg's core modules: that is the point.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

SIZE = 32
RECIPE = {
    "backbone": {"builder": "torchvision.models.resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1"},
    "nodes": ["avgpool"],
    "transform": {
        "kind": "image",
        "size": [SIZE, SIZE],
        "resize": "squash",
        "crop": None,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
    "projection": "none",
    "readout": "linear",
}
N_FEATURES = 512
CHANNELS = ["Fz", "Cz", "Pz", "Oz", "POz"]
TIMES = [-50.0, 0.0, 50.0, 100.0, 150.0, 200.0, 250.0]
N_REPS = 2
HEMIS = {"lh": 11, "rh": 9}
SURFACE_ROIS = {"V1": np.array([0, 1, 2, 12, 13]), "FFA": np.array([5, 6, 15, 16, 17])}  # rows (lh first)


def _card(
    model_id: str, *, space: dict, selection: dict, dims: list, subjects=(1, 2), kind="image", options=None
) -> dict:
    return {
        "id": model_id,
        "name": f"Toy model {model_id} (tests only)",
        "modality": "eeg" if space["kind"] == "sensor_time" else "fmri",
        "dataset": {"name": "toy", "space": space["kind"], "citation": "none"},
        "species": "none (synthetic)",
        "stimuli": {"type": kind, "description": "random images"},
        "model_type": "toy",
        "creator": "berg tests",
        "description": "A toy model for berg's contract tests; its outputs mean nothing.",
        "input": {"type": kind, "dtype": "uint8", "range": [0, 255], "shape": "[batch, H, W, 3]", "description": "RGB"},
        "output": {
            "dtype": "float32",
            "space": space,
            "units": "arbitrary",
            "dims": [{"name": "n_stimuli", "description": "stimuli"}] + dims,
        },
        "parameters": {"subjects": list(subjects), "selection": selection, "model_kwargs": options or []},
        "preprocessing": {"transform": RECIPE["transform"]},
        "metadata": {"rois": "ROI indices"},
        "accuracy": {"split": "none", "summary": {}, "notes": "synthetic"},
        "references": [{"title": "berg tests", "url": "https://example.invalid"}],
        "license": {"code": "MIT", "weights": "synthetic"},
        "provenance": {"weights": "synthetic", "artifact": "tests/toy_models.py"},
        "caveats": ["synthetic"],
    }


def _sensor_space() -> dict:
    return {"kind": "sensor_time", "channels": CHANNELS, "times_ms": TIMES, "n_reps": N_REPS}


def _surface_space() -> dict:
    return {"kind": "surface", "template": "toyaverage", "hemispheres": list(HEMIS), "n_vertices": dict(HEMIS)}


def write_mlp_artifact(out: Path, model_id: str, subjects, seed: int) -> dict:
    from berg.store.artifacts import ArtifactWriter

    rng = np.random.default_rng(seed)
    writer = ArtifactWriter(out, model_id)
    n_out = N_REPS * len(CHANNELS) * len(TIMES)
    weights = {}
    for s in subjects:
        w = {
            "w1": rng.standard_normal((16, N_FEATURES)).astype(np.float32) / 8,
            "b1": rng.standard_normal(16).astype(np.float32),
            "w2": rng.standard_normal((n_out, 16)).astype(np.float32),
            "b2": rng.standard_normal(n_out).astype(np.float32),
        }
        weights[s] = w
        writer.add_tensors(f"mlp/sub-{s:02d}.safetensors", w)
        writer.add_json(
            f"metadata/sub-{s:02d}.json", {"n_outputs": n_out, "output_space": _sensor_space(), "info": {"toy": True}}
        )
        writer.add_tensors(
            f"metadata/sub-{s:02d}.safetensors", {"accuracy/r": rng.uniform(0, 1, n_out).astype(np.float32)}
        )
    writer.finalize({"creator": "tests/toy_models.py"})
    return weights


def write_surface_artifact(out: Path, model_id: str, subjects, seed: int) -> dict:
    from berg.store.artifacts import ArtifactWriter

    rng = np.random.default_rng(seed)
    writer = ArtifactWriter(out, model_id)
    n_out = sum(HEMIS.values())
    readouts = {}
    for s in subjects:
        w, b = (
            rng.standard_normal((n_out, N_FEATURES)).astype(np.float32),
            rng.standard_normal(n_out).astype(np.float32),
        )
        readouts[s] = (w, b)
        writer.add_tensors(f"readout/sub-{s:02d}.safetensors", {"weight": w, "bias": b})
        writer.add_json(f"metadata/sub-{s:02d}.json", {"n_outputs": n_out, "output_space": _surface_space()})
        writer.add_tensors(f"metadata/sub-{s:02d}.safetensors", {f"roi/{k}": v for k, v in SURFACE_ROIS.items()})
    writer.finalize({"creator": "tests/toy_models.py"})
    return readouts


class ToyMLPModel:
    """A non-linear model implementing berg's interface by duck typing (no berg base class)."""

    def __init__(self, request, layout, extractor, mlps, spaces, rows):
        self.spec, self.layout, self.extractor = request.spec, layout, extractor
        self.model_id = request.spec.model_id
        self.subjects = list(request.subjects)
        self.multi_subject = request.multi_subject
        self.device = request.device
        self.batch_size = request.batch_size
        self.mlps, self.spaces, self.rows = mlps, spaces, rows

    @classmethod
    def validate_options(cls, spec, options):
        return spec.validate_options(options)

    @classmethod
    def load(cls, request):
        from berg.features import FeatureExtractor
        from berg.store.artifacts import read_tensors

        layout = request.layout()
        keys = [k for s in request.subjects for k in (f"mlp/sub-{s:02d}.safetensors", *layout.metadata_keys(s))]
        layout.fetch_keys(keys)
        mlps, spaces, rows = {}, {}, {}
        for s in request.subjects:
            mlps[s] = read_tensors(layout.fetch(f"mlp/sub-{s:02d}.safetensors"), mmap=False)
            rows[s], spaces[s] = layout.output_space(s).narrow(request.selections[s], {})
        extractor = FeatureExtractor(
            request.spec.recipe,
            backbone_weights=request.backbone_weights,
            device=request.device,
            seed=request.backbone_seed,
        )
        return cls(request, layout, extractor, mlps, spaces, rows)

    def space(self, subject=None):
        return self.spaces[self.subjects[0] if subject is None else subject]

    def predict_features(self, feats: np.ndarray, subject) -> np.ndarray:
        m = self.mlps[subject]
        hidden = np.maximum(feats @ m["w1"].T + m["b1"], 0)
        out = hidden @ m["w2"].T + m["b2"]
        if self.rows[subject] is not None:
            out = out[:, self.rows[subject]]
        return self.spaces[subject].reshape(out.astype(np.float32))

    def prepare_stimuli(self, stimulus):
        from berg.stimuli import load_stimuli

        return load_stimuli(stimulus, "image")

    def encode(self, stimulus, *, show_progress=True):
        from berg.core.engine import iter_features

        stimuli = self.prepare_stimuli(stimulus)
        feats = np.concatenate(list(iter_features(self.extractor, stimuli, batch_size=self.batch_size)))
        out = {s: self.predict_features(feats, s) for s in self.subjects}
        return out if self.multi_subject else out[self.subjects[0]]

    def get_metadata(self):
        metas = {s: self.layout.load_metadata(s) for s in self.subjects}
        return metas if self.multi_subject else metas[self.subjects[0]]

    def provenance(self):
        return {
            "model_id": self.model_id,
            "subjects": self.subjects,
            "kind": "toy-mlp",
            "artifacts": self.layout.checksums([f"mlp/sub-{s:02d}.safetensors" for s in self.subjects]),
        }

    def output_ids(self, subject=None):
        return np.arange(self.space(subject).n_outputs)


class IncompleteModel:
    """Lacks encode/provenance: loading a registry entry naming it must say so."""

    @classmethod
    def load(cls, request):  # pragma: no cover - never reached
        return cls()


def build_toy_recipe(data_dir: Path, out_dir: Path, *, options: dict, work_dir: Path) -> None:
    """The creator of ``test-toy-recipe``: 'trains' a surface readout from ``data_dir/seed.json``."""
    seed = int(json.loads((Path(data_dir) / "seed.json").read_text())["seed"]) + int(options.get("offset", 0))
    (Path(work_dir) / "progress.txt").write_text("features done\n")  # what a resumable build would keep
    write_surface_artifact(Path(out_dir), "test-toy-recipe", (1, 2), seed)


@dataclass
class Toys:
    root: Path
    registry: Path
    berg_dir: Path
    mlp: dict
    surface_a: dict
    surface_b: dict


def build(root: Path) -> Toys:
    """Write every toy artifact, card and the registry under ``root``."""
    root = Path(root)
    berg_dir = root / "berg_dir"
    cards = root / "model_cards"
    cards.mkdir(parents=True, exist_ok=True)
    mlp = write_mlp_artifact(berg_dir / "toys/mlp", "test-toy-mlp", (1, 2), 1)
    sa = write_surface_artifact(berg_dir / "toys/surface-a", "test-toy-surface-a", (1, 2), 2)
    sb = write_surface_artifact(berg_dir / "toys/surface-b", "test-toy-surface-b", (1, 2), 3)
    sensor_sel = {"channels": CHANNELS, "lengths": {"timepoints": len(TIMES)}}
    surface_sel = {"rois": list(SURFACE_ROIS), "lengths": {"lh_vertices": HEMIS["lh"], "rh_vertices": HEMIS["rh"]}}
    sensor_dims = [
        {"name": "n_reps", "description": "repetitions"},
        {"name": "n_channels", "description": "channels"},
        {"name": "n_times", "description": "time points"},
    ]
    surface_dims = [{"name": "n_outputs", "description": "lh then rh vertices"}]
    cards_by_id = {
        "test-toy-mlp": _card("test-toy-mlp", space=_sensor_space(), selection=sensor_sel, dims=sensor_dims),
        "test-toy-surface-a": _card(
            "test-toy-surface-a", space=_surface_space(), selection=surface_sel, dims=surface_dims
        ),
        "test-toy-surface-b": _card(
            "test-toy-surface-b", space=_surface_space(), selection=surface_sel, dims=surface_dims
        ),
        "test-toy-ensemble": _card(
            "test-toy-ensemble", space=_surface_space(), selection=surface_sel, dims=surface_dims
        ),
        "test-toy-recipe": _card("test-toy-recipe", space=_surface_space(), selection=surface_sel, dims=surface_dims),
        "test-toy-incomplete": _card(
            "test-toy-incomplete", space=_surface_space(), selection=surface_sel, dims=surface_dims
        ),
    }
    for model_id, card in cards_by_id.items():
        (cards / f"{model_id}.yaml").write_text(yaml.safe_dump(card, sort_keys=False))

    def local(prefix):
        return {"kind": "s3", "bucket": "berg-test-unused", "prefix": prefix}

    models = {
        "test-toy-mlp": {
            "card": "test-toy-mlp.yaml",
            "modality": "eeg",
            "dataset": "toy",
            "source": local("toys/mlp/"),
            "layout": "native",
            "recipe": {**RECIPE, "output_space": "sensor_time"},
            "model_class": "toy_models:ToyMLPModel",
        },
        "test-toy-surface-a": {
            "card": "test-toy-surface-a.yaml",
            "modality": "fmri",
            "dataset": "toy",
            "source": local("toys/surface-a/"),
            "layout": "native",
            "recipe": {**RECIPE, "output_space": "surface"},
        },
        "test-toy-surface-b": {
            "card": "test-toy-surface-b.yaml",
            "modality": "fmri",
            "dataset": "toy",
            "source": local("toys/surface-b/"),
            "layout": "native",
            "recipe": {**RECIPE, "output_space": "surface"},
        },
        "test-toy-ensemble": {
            "card": "test-toy-ensemble.yaml",
            "modality": "fmri",
            "dataset": "toy",
            "ensemble": {
                "members": [
                    {"model": "test-toy-surface-a", "weight": 1.0},
                    {"model": "test-toy-surface-b", "weight": 3.0},
                ]
            },
        },
        "test-toy-recipe": {
            "card": "test-toy-recipe.yaml",
            "modality": "fmri",
            "dataset": "toy",
            "source": {
                "kind": "build",
                "prefix": "test-toy-recipe/",
                "command": "berg build test-toy-recipe --data DIR",
                "data": "a folder with seed.json",
            },
            "layout": "native",
            "recipe": {**RECIPE, "output_space": "surface"},
            "build": {
                "creator": "toy_models:build_toy_recipe",
                "data": "a folder with seed.json",
                "options": {"offset": 0},
            },
        },
        "test-toy-incomplete": {
            "card": "test-toy-incomplete.yaml",
            "modality": "fmri",
            "dataset": "toy",
            "source": local("toys/surface-a/"),
            "layout": "native",
            "recipe": {**RECIPE, "output_space": "surface"},
            "model_class": "toy_models:IncompleteModel",
        },
    }
    registry = root / "registry.yaml"
    registry.write_text(yaml.safe_dump({"format_version": 1, "models": models}, sort_keys=False))
    return Toys(root, registry, berg_dir, mlp, sa, sb)


def reference_features(images) -> np.ndarray:
    """Untrained seed-0 ResNet-18 avgpool features at 32 px, via berg's own extractor (shared by the toys)."""
    from berg.features import FeatureExtractor

    ex = FeatureExtractor(RECIPE, backbone_weights="untrained", device="cpu", seed=0)
    return ex.extract(list(images)).numpy().astype(np.float64)


def surface_reference(readout: tuple, feats: np.ndarray) -> np.ndarray:
    w, b = readout
    return feats @ w.T.astype(np.float64) + b
