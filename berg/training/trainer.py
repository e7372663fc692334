"""The generic trainer: dataset -> features (the inference engine's own extractor) -> projection ->
readout -> held-out evaluation -> berg artifact + card fragment + registry entry.

``berg train CONFIG.yaml`` and :func:`train_from_config` run it. See docs/training.md for the config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from berg import metrics
from berg.errors import InvalidParameterError
from berg.training.dataset import EncodingDataset, read_dataset
from berg.training.solvers import fit_ols, fit_ridge_cv, fit_scaler_pca

__all__ = ["TrainConfig", "TrainResult", "train", "train_from_config", "compute_features"]

log = logging.getLogger(__name__)

_PROJECTIONS = ("none", "scaler_pca")
_READOUTS = ("ols", "ridge")


@dataclass
class TrainConfig:
    """What to train (all fields map 1:1 to the YAML config)."""

    model_id: str
    dataset: str
    recipe: dict[str, Any]
    out_dir: str
    projection: dict[str, Any] = field(default_factory=lambda: {"kind": "scaler_pca", "n_components": 100})
    readout: dict[str, Any] = field(default_factory=lambda: {"kind": "ols"})
    backbone_weights: str | None = None
    seed: int = 0
    batch_size: int = 32
    device: str = "cpu"
    source: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    feature_cache: str | None = None

    def __post_init__(self) -> None:
        if self.projection.get("kind", "none") not in _PROJECTIONS:
            raise InvalidParameterError(f"projection.kind must be one of {_PROJECTIONS}")
        if self.readout.get("kind") not in _READOUTS:
            raise InvalidParameterError(f"readout.kind must be one of {_READOUTS}")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> "TrainConfig":
        """Read a config; relative paths are relative to the config file."""
        from berg.registry import read_yaml

        path = Path(path)
        raw = read_yaml(path) or {}
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidParameterError(f"unknown config keys {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}")
        for key in ("dataset", "out_dir", "feature_cache"):
            if raw.get(key) and not os.path.isabs(raw[key]):
                raw[key] = str(path.parent / raw[key])
        return cls(**raw)

    def digest(self) -> str:
        """sha256 of the config (recorded in the artifact's provenance)."""
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class TrainResult:
    """What training produced."""

    model_id: str
    artifact_dir: Path
    registry_path: Path
    card_path: Path
    test_predictions: dict[Any, np.ndarray]
    accuracy: dict[Any, dict[str, Any]]
    test_indices: np.ndarray

    def summary_lines(self) -> list[str]:
        """Human-readable accuracy lines."""
        return [f"subject {s}: median r {a['median_r']:.3f}, mean NC {a['mean_noise_ceiling']:.3f}, "
                f"NNMC {a['nnmc']:.1f}" for s, a in self.accuracy.items()]


def compute_features(cfg: TrainConfig, ds: EncodingDataset, cache_path: Path) -> Any:
    """Backbone features of every stimulus, cached in chunked HDF5 and resumable.

    Uses :class:`berg.features.FeatureExtractor` and :func:`berg.engine.iter_features`: exactly the
    preprocessing and feature code inference runs.
    """
    import h5py

    from berg.engine import iter_features
    from berg.features import FeatureExtractor
    from berg.stimuli import load_stimuli

    stimuli = load_stimuli(ds.stimuli, ds.kind)
    extractor = FeatureExtractor(cfg.recipe, backbone_weights=cfg.backbone_weights, device=cfg.device, seed=cfg.seed)
    key = hashlib.sha256(json.dumps([cfg.recipe, cfg.backbone_weights, cfg.seed, ds.checksum], default=str).encode()).hexdigest()[:16]
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(cache_path, "a") as f:
        if f.attrs.get("key") != key:
            for name in list(f):
                del f[name]
            f.attrs["key"] = key
        done = f["done"][()] if "done" in f else np.zeros(len(stimuli), dtype=bool)
        todo = np.flatnonzero(~done)
        if todo.size:
            log.info("computing features for %d/%d stimuli", todo.size, len(stimuli))
            start = 0
            for block in iter_features(extractor, _Subset(stimuli, todo), batch_size=cfg.batch_size, show_progress=True):
                if "features" not in f:
                    width = block.shape[1]
                    f.create_dataset("features", shape=(len(stimuli), width), dtype=np.float32,
                                     chunks=(min(len(stimuli), 64), min(width, 1 << 16)))
                    f.create_dataset("done", data=done)
                rows = todo[start:start + len(block)]
                if np.all(np.diff(rows) == 1):
                    f["features"][rows[0]:rows[-1] + 1] = block
                else:  # resuming leaves gaps: write row by row
                    for r, v in zip(rows, block):
                        f["features"][r] = v
                f["done"][rows] = True
                f.flush()
                start += len(block)
    return h5py.File(cache_path, "r")["features"]


class _Subset:
    def __init__(self, seq, idx):
        self.seq, self.idx = seq, idx

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        return self.seq[int(self.idx[i])]


def _evaluate(pred: np.ndarray, responses: np.ndarray) -> dict[str, Any]:
    target = np.nanmean(responses, axis=1)
    r = metrics.pearson_r(pred, target)
    n_rep = float(np.mean(np.sum(~np.isnan(responses), axis=1)))
    nc = metrics.noise_ceiling(metrics.ncsnr(responses), n_rep)
    ev = metrics.noise_normalized_ev(r, nc)
    return {"correlation": r, "r2": metrics.r2_score_from_r(r), "noise_ceiling": nc, "explained_variance": ev}


def train(cfg: TrainConfig) -> TrainResult:
    """Run the whole pipeline for one config."""
    from berg.training.export import export_model

    ds = read_dataset(cfg.dataset)
    if ds.kind != cfg.recipe["transform"]["kind"]:
        raise InvalidParameterError(f"dataset has {ds.kind} stimuli but the recipe's transform is {cfg.recipe['transform']['kind']}")
    out_dir = Path(cfg.out_dir)
    cache = Path(cfg.feature_cache) if cfg.feature_cache else out_dir / "feature_cache.h5"
    features = compute_features(cfg, ds, cache)
    train_idx, test_idx = ds.indices("train"), ds.indices("test")

    if cfg.projection.get("kind", "none") == "scaler_pca":
        pca = fit_scaler_pca(features, train_idx, int(cfg.projection["n_components"]))
        from berg.readouts import Projection

        projection = Projection.from_scaler_components(pca.mean, pca.scale, pca.components)
    else:
        projection = None

    def project(rows: np.ndarray) -> np.ndarray:
        x = np.asarray(features[np.sort(rows)], dtype=np.float32)
        return x if projection is None else (x @ projection.weight.T + projection.bias)

    z_train, z_test = project(train_idx), project(test_idx)
    readouts, predictions, accuracy, per_output = {}, {}, {}, {}
    for subject, sd in ds.subjects.items():
        y_train = np.nanmean(sd.responses[np.sort(train_idx)], axis=1)
        if cfg.readout["kind"] == "ols":
            weight, bias = fit_ols(z_train, y_train)
            chosen = None
        else:
            fit = fit_ridge_cv(z_train, y_train, cfg.readout.get("alphas", np.logspace(-2, 6, 9)),
                               folds=int(cfg.readout.get("folds", 5)), seed=cfg.seed)
            weight, bias, chosen = fit.weight, fit.bias, fit.alphas
        readouts[subject] = (weight.astype(np.float32), bias.astype(np.float32))
        pred = (z_test @ weight.T + bias).astype(np.float32)
        predictions[subject] = pred
        ev = _evaluate(pred, sd.responses[np.sort(test_idx)])
        train_nc = metrics.noise_ceiling(metrics.ncsnr(sd.responses[np.sort(train_idx)]),
                                         float(np.mean(np.sum(~np.isnan(sd.responses[train_idx]), axis=1))))
        per_output[subject] = {**ev, "noise_ceiling_train": train_nc}
        if chosen is not None:
            per_output[subject]["ridge_alpha"] = chosen
        accuracy[subject] = {
            "median_r": float(np.median(ev["correlation"])),
            "mean_r": float(np.mean(ev["correlation"])),
            "mean_noise_ceiling": float(np.mean(ev["noise_ceiling"])),
            "mean_explained_variance": float(np.mean(ev["explained_variance"])),
            "nnmc": metrics.nnmc_score(ev["correlation"], ev["noise_ceiling"]),
            "per_roi": metrics.roi_summary({"r": ev["correlation"], "nc": ev["noise_ceiling"]}, sd.rois) if sd.rois else {},
        }
    provenance = {
        "config_sha256": cfg.digest(),
        "config": json.loads(json.dumps(cfg.__dict__, default=str)),
        "dataset": {"path": str(cfg.dataset), "sha256": ds.checksum, "name": ds.name},
        "seed": cfg.seed,
        "versions": _versions(),
        "split": {"train": int(len(train_idx)), "test": int(len(test_idx))},
    }
    paths = export_model(cfg, ds, projection, readouts, per_output, accuracy, provenance, out_dir)
    return TrainResult(cfg.model_id, paths["artifact"], paths["registry"], paths["card"], predictions, accuracy, np.sort(test_idx))


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("berg", "numpy", "torch", "torchvision", "scikit-learn", "h5py", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def train_from_config(path: str | os.PathLike[str], *, out_dir: str | None = None) -> TrainResult:
    """``berg train CONFIG.yaml``."""
    cfg = TrainConfig.from_yaml(path)
    if out_dir is not None:
        cfg.out_dir = out_dir
    return train(cfg)


def dump_config(cfg: TrainConfig, path: Path) -> Path:
    """Write a config back to YAML (used by creation scripts)."""
    path.write_text(yaml.safe_dump(json.loads(json.dumps(cfg.__dict__, default=str)), sort_keys=False))
    return path
