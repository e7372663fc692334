"""The generic trainer: dataset -> features (the inference engine's own extractor) -> projection ->
readout -> held-out evaluation -> berg artifact + card + registry entry.

``berg train CONFIG.yaml`` and :func:`train_from_config` run it; :func:`train` takes a
:class:`~berg.training.config.TrainConfig`. See docs/training.md.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from berg import metrics
from berg.errors import InvalidParameterError
from berg.training.config import TrainConfig
from berg.training.datasets import EncodingDataset, read_dataset
from berg.training.feature_cache import FeatureCache, feature_key, stimuli_digest
from berg.training.solvers import ProjectionFit, fit_ols, fit_projection, fit_ridge_cv

__all__ = ["TrainConfig", "TrainResult", "train", "train_from_config", "compute_features", "evaluate"]

log = logging.getLogger(__name__)

_PROJECT_BYTES = 256 << 20  # feature rows read per projection step (bounded memory for wide features)


@dataclass
class TrainResult:
    """What training produced.

    Attributes
    ----------
    model_id : str
    artifact_dir, registry_path, card_path, card_fragment_path : Path
    test_predictions : dict
        Subject -> (n_test, n_outputs) float32 predictions for ``test_indices`` (what ``encode``
        returns for those stimuli).
    accuracy : dict
        Subject -> summary numbers (the card's ``accuracy.summary``).
    per_output : dict
        Subject -> {metric: (n_outputs,) array}.
    test_indices : (n_test,) int array
        Dataset rows of the test split.
    """

    model_id: str
    artifact_dir: Path
    registry_path: Path
    card_path: Path
    card_fragment_path: Path
    test_predictions: dict[Any, np.ndarray]
    accuracy: dict[Any, dict[str, Any]]
    per_output: dict[Any, dict[str, np.ndarray]] = field(repr=False)
    test_indices: np.ndarray = field(repr=False)

    def summary_lines(self) -> list[str]:
        """Human-readable accuracy lines, one per subject."""
        return [
            f"subject {s}: median r {a['median_r']:.3f}, mean r {a['mean_r']:.3f}, mean NC "
            f"{a['mean_noise_ceiling']:.3f}, mean NC-normalised EV {a['mean_nc_normalized_ev']:.1f}%, "
            f"NNMC {a['nnmc']:.1f}"
            for s, a in self.accuracy.items()
        ]


def compute_features(
    cfg: TrainConfig, ds: EncodingDataset, cache_path: str | os.PathLike[str], *, show_progress: bool = True
) -> FeatureCache:
    """Fill the feature cache for every stimulus of ``ds`` (resumable) and return it.

    Features come from :class:`berg.features.FeatureExtractor` through :func:`berg.core.engine.iter_features`:
    the preprocessing object is ``berg.transforms.from_recipe(recipe["transform"])``, the one inference uses.
    """
    from berg.stimuli import load_stimuli

    stimuli = load_stimuli(ds.stimuli, ds.kind)
    key = feature_key(cfg.recipe, cfg.backbone_weights, cfg.seed, stimuli_digest(ds.stimuli, ds.ids))
    cache = FeatureCache(cache_path, key)

    def make_extractor():
        from berg.features import FeatureExtractor

        return FeatureExtractor(cfg.recipe, backbone_weights=cfg.backbone_weights, device=cfg.device, seed=cfg.seed)

    cache.compute(make_extractor, stimuli, batch_size=int(cfg.batch_size), show_progress=show_progress)
    return cache


def _project(features: Any, projection: Any | None) -> np.ndarray:
    """All rows through the projection (float32, as the engine computes it), in bounded row blocks."""
    n, width = features.shape
    if projection is None:
        return np.asarray(features[:], dtype=np.float32)
    step = max(1, _PROJECT_BYTES // (4 * width))
    out = np.empty((n, projection.weight.shape[0]), dtype=np.float32)
    for a in range(0, n, step):
        x = np.asarray(features[a : a + step], dtype=np.float32)
        out[a : a + step] = x @ projection.weight.T + projection.bias
    return out


def evaluate(pred: np.ndarray, responses: np.ndarray) -> dict[str, np.ndarray]:
    """Per-output test metrics of predictions against single-trial responses.

    Parameters
    ----------
    pred : (n_test, n_outputs) array
    responses : (n_test, n_repeats, n_outputs) array, NaN for missing repeats

    Returns
    -------
    dict
        ``correlation`` (Pearson r with the mean over repeats), ``r2`` (max(r,0)²), ``ncsnr``,
        ``noise_ceiling`` (fraction, for the repeat counts actually averaged), ``nc_normalized_ev`` (%).
    """
    counts = np.sum(~np.isnan(responses), axis=1)  # (n_test, n_outputs)
    with np.errstate(invalid="ignore", divide="ignore"):
        target = np.nansum(responses, axis=1, dtype=np.float64) / counts
    target = np.where(counts > 0, target, np.nan)
    ok = ~np.isnan(target).any(axis=1)
    if ok.sum() < 3:
        raise InvalidParameterError(f"only {int(ok.sum())} test stimuli have responses for every output; need >= 3")
    r = metrics.pearson_r(pred[ok], target[ok])
    snr = metrics.ncsnr(responses[ok])
    nc = metrics.noise_ceiling_from_counts(snr, counts[ok])
    return {
        "correlation": r,
        "r2": metrics.r2_score_from_r(r),
        "ncsnr": snr,
        "noise_ceiling": nc,
        "nc_normalized_ev": metrics.noise_normalized_ev(r, nc),
    }


def _summary(ev: dict[str, np.ndarray], rois: dict[str, np.ndarray], n_train: int, n_test: int) -> dict[str, Any]:
    r, nc, nev = ev["correlation"], ev["noise_ceiling"], ev["nc_normalized_ev"]
    return {
        "n_outputs": int(r.size),
        "n_train_stimuli": int(n_train),
        "n_test_stimuli": int(n_test),
        "median_r": float(np.median(r)),
        "mean_r": float(np.mean(r)),
        "mean_r2": float(np.mean(ev["r2"])),
        "mean_noise_ceiling": float(np.mean(nc)),
        "median_noise_ceiling": float(np.median(nc)),
        "mean_nc_normalized_ev": float(np.mean(nev)),
        "median_nc_normalized_ev": float(np.median(nev)),
        "nnmc": metrics.nnmc_score(r, nc),
        "per_roi": metrics.roi_summary({"r": r, "noise_ceiling": nc, "nc_normalized_ev": nev}, rois) if rois else {},
    }


def _mean_over_repeats(responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over available repeats, and the rows that have at least one repeat for every output."""
    counts = np.sum(~np.isnan(responses), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        y = (np.nansum(responses, axis=1, dtype=np.float64) / counts).astype(np.float32)
    return y, (counts > 0).all(axis=1)


def train(cfg: TrainConfig, *, show_progress: bool = True) -> TrainResult:
    """Run the whole pipeline for one config and export the model.

    Parameters
    ----------
    cfg : TrainConfig
    show_progress : bool
        tqdm bars for feature extraction and the projection passes.

    Returns
    -------
    TrainResult
    """
    from berg.training.export import export_model

    ds = read_dataset(cfg.dataset)
    kind = cfg.recipe["transform"].get("kind")
    if ds.kind != kind:
        raise InvalidParameterError(f"dataset has {ds.kind} stimuli but the recipe's transform is for {kind}")
    subjects = list(cfg.subjects) if cfg.subjects else list(ds.subjects)
    unknown = [s for s in subjects if s not in ds.subjects]
    if unknown:
        raise InvalidParameterError(f"subjects {unknown} not in the dataset; valid: {list(ds.subjects)}")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_idx, test_idx = ds.indices("train"), ds.indices("test")

    cache = compute_features(cfg, ds, cfg.feature_cache or out_dir / "feature_cache.h5", show_progress=show_progress)
    kind_p = cfg.projection["kind"]
    projection = fit = None
    with cache.open() as feats:
        log.info("features: %s; projection %s", feats.shape, kind_p)
        if kind_p != "none":
            from berg.core.readouts import Projection

            fit = fit_projection(
                feats,
                train_idx,
                int(cfg.projection["n_components"]),
                kind=kind_p,
                col_block=int(cfg.projection.get("col_block", 1 << 15)),
                show_progress=show_progress,
            )
            projection = Projection.from_scaler_components(fit.mean, fit.scale, fit.components)
        z = _project(feats, projection)
    z_train, z_test = z[train_idx], z[test_idx]

    readouts, predictions, accuracy, per_output = {}, {}, {}, {}
    for subject in subjects:
        sd = ds.subjects[subject]
        y_train, has = _mean_over_repeats(np.asarray(sd.responses[train_idx]))
        if not has.all():
            log.warning("subject %s: %d training stimuli without responses are left out", subject, int((~has).sum()))
        if cfg.readout["kind"] == "ols":
            readout = fit_ols(z_train[has], y_train[has])
            alpha = None
        else:
            ridge = fit_ridge_cv(
                z_train[has], y_train[has], cfg.readout["alphas"], folds=int(cfg.readout["folds"]), seed=cfg.seed
            )
            readout, alpha = ridge.readout, ridge.alphas
        del y_train
        readouts[subject] = readout
        pred = readout(z_test)
        predictions[subject] = pred
        test_resp = np.asarray(sd.responses[test_idx])
        ev = evaluate(pred, test_resp)
        del test_resp
        ev["noise_ceiling_train"] = _train_noise_ceiling(sd.responses, train_idx)
        if alpha is not None:
            ev["ridge_alpha"] = alpha
        per_output[subject] = ev
        accuracy[subject] = _summary(ev, sd.rois, int(has.sum()), len(test_idx))
        log.info(
            "subject %s: median r %.3f, NNMC %.1f", subject, accuracy[subject]["median_r"], accuracy[subject]["nnmc"]
        )

    provenance = {
        "creator": "berg train",
        "config_sha256": cfg.digest(),
        "config": cfg.to_dict(),
        "dataset": {
            "path": str(cfg.dataset),
            "sha256": ds.checksum,
            "name": ds.name,
            "n_stimuli": len(ds.ids),
            "n_train": int(train_idx.size),
            "n_test": int(test_idx.size),
        },
        "seeds": {
            "seed": cfg.seed,
            "backbone": cfg.seed if cfg.backbone_weights == "untrained" else None,
            "cv_folds": cfg.seed if cfg.readout["kind"] == "ridge" else None,
        },
        "feature_cache_key": cache.key,
        "projection": _projection_info(fit, kind_p),
        "versions": library_versions(),
    }
    paths = export_model(cfg, ds, subjects, projection, readouts, per_output, accuracy, provenance, out_dir)
    return TrainResult(
        cfg.model_id,
        paths["artifact"],
        paths["registry"],
        paths["card"],
        paths["card_fragment"],
        predictions,
        accuracy,
        per_output,
        test_idx,
    )


def _train_noise_ceiling(responses: Any, rows: np.ndarray) -> np.ndarray:
    resp = np.asarray(responses[rows])
    counts = np.sum(~np.isnan(resp), axis=1)
    return metrics.noise_ceiling_from_counts(metrics.ncsnr(resp), counts)


def _projection_info(fit: ProjectionFit | None, kind: str) -> dict[str, Any]:
    if fit is None:
        return {"kind": kind}
    return {
        "kind": kind,
        "n_components": int(fit.components.shape[0]),
        "n_features": int(fit.components.shape[1]),
        "explained_variance": [float(v) for v in fit.explained_variance],
    }


def library_versions() -> dict[str, str]:
    """Versions of python and the libraries that shape the result (recorded in the provenance)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in (
        "berg",
        "numpy",
        "scipy",
        "torch",
        "torchvision",
        "scikit-learn",
        "h5py",
        "safetensors",
        "Pillow",
        "av",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def train_from_config(
    path: str | os.PathLike[str], *, out_dir: str | None = None, show_progress: bool = True
) -> TrainResult:
    """``berg train CONFIG.yaml``: read the config (paths relative to it) and train."""
    cfg = TrainConfig.from_yaml(path)
    if out_dir is not None:
        cfg.out_dir = str(out_dir)
    return train(cfg, show_progress=show_progress)
