"""Build ``fmri-bold5000-alexnet`` on this machine from the BOLD5000 release (Delavari, Sigal & Oruc 2025).

``berg build fmri-bold5000-alexnet --data DIR`` calls :func:`build`. The pipeline, all berg's own
pieces:

1. :func:`berg.training.bold5000.bold5000_release_dataset`: ROI responses (TR34) of CSI1-3 and their
   images; the 113 repeated images are the test split.
2. One pass of torchvision's AlexNet over every image, keeping seven layers (the output of each
   convolutional stage after its ReLU, and after max-pooling where AlexNet pools, and fc6/fc7 after
   their ReLU), in berg's resumable feature cache (:mod:`berg.training.feature_cache`).
3. Per layer: StandardScaler + PCA fitted on the training images (:func:`berg.training.solvers.fit_projection`),
   folded into one affine projection.
4. Per layer and subject: ridge regression with the penalty chosen per voxel by k-fold CV
   (:func:`berg.training.solvers.fit_ridge_cv`), evaluated on the held-out repeated images
   (:func:`berg.training.trainer.evaluate`: r, NCSNR, noise ceiling).
5. Best layer per ROI by the training-set CV accuracy (never the test split), as in the paper's
   layer-to-ROI hierarchy.
6. A berg-native artifact (:class:`berg.store.artifacts.ArtifactWriter`): ``layers.json``,
   ``projections/<layer>.safetensors``, ``readout/<layer>/sub-SS.safetensors`` and per-subject
   metadata (ROIs, per-voxel accuracy per layer, the layer of every output in the best-layer variant,
   held-out accuracy per layer x ROI); :class:`berg.models.bold5000_alexnet.Bold5000AlexNet` serves it.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError, close_matches

__all__ = ["MODEL_ID", "LAYERS", "DEFAULTS", "recipe", "build", "build_from_dataset"]

log = logging.getLogger(__name__)

MODEL_ID = "fmri-bold5000-alexnet"
#: layer name -> torchvision AlexNet graph node (create_feature_extractor names)
LAYERS = {
    "conv1": "features.2",  # conv1 -> ReLU -> max-pool
    "conv2": "features.5",  # conv2 -> ReLU -> max-pool
    "conv3": "features.7",  # conv3 -> ReLU
    "conv4": "features.9",  # conv4 -> ReLU
    "conv5": "features.12",  # conv5 -> ReLU -> max-pool
    "fc6": "classifier.2",  # fc6 -> ReLU
    "fc7": "classifier.5",  # fc7 -> ReLU
}


def _registry_options() -> dict[str, Any]:
    """The creator options and their defaults, as berg's registry declares them (their one place)."""
    from berg.registry import Registry, builtin_source

    for spec in Registry.load_source(builtin_source()):
        if spec.model_id == MODEL_ID and spec.build:
            return dict(spec.build.get("options") or {})
    raise InvalidParameterError(f"berg's registry.yaml has no build options for {MODEL_ID}; reinstall berg")


#: Creator options: the registry's (``build.options`` of the entry, what ``berg build --option`` takes)
#: plus two internal ones for callers of :func:`build_from_dataset` (tests, synthetic releases).
DEFAULTS: dict[str, Any] = {
    **_registry_options(),
    "work_dir": None,  # feature cache and dataset file (default: beside out_dir)
    "model_id": MODEL_ID,  # recorded in the manifest (tests build copies under other ids)
}


def recipe(image_size: int = 224, layers: list[str] | None = None) -> dict[str, Any]:
    """The registry recipe: AlexNet with ImageNet preprocessing (shorter side 256/224 x size, centre crop)."""
    layers = list(layers or LAYERS)
    return {
        "backbone": {"builder": "torchvision.models.alexnet", "weights": "AlexNet_Weights.IMAGENET1K_V1"},
        "nodes": [LAYERS[name] for name in layers],
        "transform": {
            "kind": "image",
            "size": [round(image_size * 256 / 224)] * 2,
            "resize": "shorter",
            "crop": [image_size, image_size],
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        "projection": "scaler_pca",
        "readout": "linear",
        "output_space": "flat",
    }


def _options(options: dict[str, Any] | None) -> dict[str, Any]:
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        hints = {u: close_matches(u, DEFAULTS) for u in unknown}
        hint = "; ".join(f"{u!r}: did you mean {h[0]!r}?" for u, h in hints.items() if h)
        raise InvalidParameterError(
            f"unknown build options {unknown}; valid: {sorted(DEFAULTS)}" + (f" ({hint})" if hint else "")
        )
    out = {**DEFAULTS, **options}
    bad = [name for name in out["layers"] if name not in LAYERS]
    if bad or not out["layers"]:
        raise InvalidParameterError(f"layers {bad or '[]'} unknown; valid: {list(LAYERS)}")
    out["layers"] = [name for name in LAYERS if name in out["layers"]]  # always in network order
    if int(out["n_components"]) < 1 or int(out["folds"]) < 2:
        raise InvalidParameterError("n_components must be >= 1 and folds >= 2")
    return out


def build(
    data_dir: Path, out_dir: Path, *, options: dict[str, Any] | None = None, work_dir: Path | None = None
) -> None:
    """The registry's creator: BOLD5000 release in ``data_dir`` -> berg-native artifact in ``out_dir``.

    Parameters
    ----------
    data_dir : path
        Unpacked ``BOLD5000_ROIs.zip`` and ``BOLD5000_Stimuli.zip`` (figshare, release 1).
    out_dir : path
        Where the artifact goes (written beside it and renamed when complete).
    options : dict
        Keys of :data:`DEFAULTS` (subjects, tr, layers, n_components, alphas, folds, seed, batch_size,
        device, backbone_weights, image_size, work_dir, show_progress).
    work_dir : path, optional
        Folder that survives failed runs (``berg build`` passes one): the feature cache resumes there.
    """
    from berg.training.bold5000 import bold5000_release_dataset

    opts = _options(options)  # every option is checked before any file is read
    if work_dir is not None and not opts["work_dir"]:
        opts["work_dir"] = str(work_dir)
    ds = bold5000_release_dataset(data_dir, opts["subjects"], tr=opts["tr"])
    build_from_dataset(
        ds, Path(out_dir), options=opts, data_description=f"BOLD5000 release 1 ({opts['tr']}) in {data_dir}"
    )


class _Columns:
    """Columns ``[a, b)`` of a 2-D HDF5 dataset, indexable like one (``[rows, c:d]``, ``[:, c:d]``)."""

    def __init__(self, data: Any, a: int, b: int):
        self.data, self.a, self.b = data, a, b
        self.shape = (int(data.shape[0]), b - a)

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        c0, c1, _ = cols.indices(self.shape[1])
        return np.asarray(self.data[rows, self.a + c0 : self.a + c1])


def _node_widths(extractor: Any, stimuli: Any) -> list[int]:
    """Flattened width of each node, from one preprocessed stimulus."""
    import torch

    x = extractor.transform([stimuli[0]]).to(extractor.device)
    with torch.inference_mode():
        out = extractor.network(x)
    return [int(out[n].flatten(1).shape[1]) for n in extractor.nodes]


def _project_all(features: _Columns, projection: Any, *, rows_per_block: int = 256) -> np.ndarray:
    n = features.shape[0]
    out = np.empty((n, projection.weight.shape[0]), dtype=np.float32)
    for a in range(0, n, rows_per_block):
        x = np.asarray(features[slice(a, min(a + rows_per_block, n)), slice(None)], dtype=np.float32)
        out[a : a + len(x)] = x @ projection.weight.T + projection.bias
    return out


def _roi_table(values: np.ndarray, rois: dict[str, np.ndarray]) -> dict[str, float]:
    return {r: float(np.mean(values[idx])) if len(idx) else float("nan") for r, idx in rois.items()}


def build_from_dataset(
    ds: Any, out_dir: Path, *, options: dict[str, Any] | None = None, data_description: str = "a berg dataset"
) -> dict[str, Any]:
    """Steps 2-6 on a berg :class:`~berg.training.datasets.EncodingDataset` (what tests call).

    Returns
    -------
    dict
        ``{"best_layer": {subject: {roi: layer}}, "test_r": {subject: {layer: {roi: r}}},
        "cv_r": ..., "artifact": Path}``.
    """
    from berg.core.readouts import Projection
    from berg.stimuli import load_stimuli
    from berg.store.artifacts import ArtifactWriter
    from berg.subjects import subject_label
    from berg.training.feature_cache import FeatureCache, feature_key, stimuli_digest
    from berg.training.solvers import fit_projection, fit_ridge_cv
    from berg.training.trainer import evaluate, library_versions

    opts = _options(options)
    out_dir = Path(out_dir)
    work = Path(opts["work_dir"]) if opts["work_dir"] else out_dir.parent / f".{out_dir.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    layers = opts["layers"]
    rec = recipe(int(opts["image_size"]), layers)
    train_idx, test_idx = ds.indices("train"), ds.indices("test")
    stimuli = load_stimuli(ds.stimuli, ds.kind)

    # --- 2. one backbone pass for every layer, cached on disk (resumable)
    weights = opts["backbone_weights"]
    key = feature_key(rec, weights, int(opts["seed"]), stimuli_digest(ds.stimuli, ds.ids))
    cache = FeatureCache(work / "features.h5", key)

    def make_extractor():
        from berg.features import FeatureExtractor

        return FeatureExtractor(rec, backbone_weights=weights, device=opts["device"], seed=int(opts["seed"]))

    extractor = make_extractor()
    widths = _node_widths(extractor, stimuli)
    cache.compute(lambda: extractor, stimuli, batch_size=int(opts["batch_size"]), show_progress=opts["show_progress"])
    offsets = np.concatenate([[0], np.cumsum(widths)])

    projections, z = {}, {}
    with cache.open() as feats:
        for j, name in enumerate(layers):
            # --- 3. per-layer scaler + PCA on the training images only
            cols = _Columns(feats, int(offsets[j]), int(offsets[j + 1]))
            k = min(int(opts["n_components"]), len(train_idx) - 1, cols.shape[1])
            fit = fit_projection(cols, train_idx, k, kind="scaler_pca", show_progress=opts["show_progress"])
            projections[name] = Projection.from_scaler_components(fit.mean, fit.scale, fit.components)
            z[name] = _project_all(cols, projections[name])
            log.info("%s: %d features -> %d components", name, cols.shape[1], k)

    readouts: dict[Any, dict[str, Any]] = {}
    per_output: dict[Any, dict[str, dict[str, np.ndarray]]] = {}
    best, test_tab, cv_tab, reliab = {}, {}, {}, {}
    for s, sd in ds.subjects.items():
        resp = np.asarray(sd.responses[:])
        counts = np.sum(~np.isnan(resp), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (np.nansum(resp, axis=1) / counts).astype(np.float32)
        has = (counts > 0).all(axis=1)
        tr, te = train_idx[has[train_idx]], test_idx[has[test_idx]]
        rois = {r: np.asarray(v, dtype=np.int64) for r, v in sd.rois.items()} or {"all": np.arange(sd.n_outputs)}
        readouts[s], per_output[s] = {}, {}
        for name in layers:
            # --- 4. ridge per voxel, penalty by CV on the training images; held-out evaluation
            fit = fit_ridge_cv(z[name][tr], mean[tr], opts["alphas"], folds=int(opts["folds"]), seed=int(opts["seed"]))
            readouts[s][name] = (fit.weight, fit.bias)
            ev = evaluate(z[name][te] @ fit.weight.T + fit.bias, resp[te])
            ev["cv_r"] = fit.cv_scores.max(axis=0).astype(np.float64)
            ev["ridge_alpha"] = fit.alphas
            per_output[s][name] = ev
        test_tab[s] = {name: _roi_table(per_output[s][name]["correlation"], rois) for name in layers}
        cv_tab[s] = {name: _roi_table(per_output[s][name]["cv_r"], rois) for name in layers}
        # --- 5. best layer per ROI from the training CV accuracy
        best[s] = {r: max(layers, key=lambda name: cv_tab[s][name][r]) for r in rois}
        code = np.full(sd.n_outputs, -1, dtype=np.int32)
        for r, idx in rois.items():
            unset = idx[code[idx] < 0]  # overlapping ROIs: the first listed wins
            code[unset] = layers.index(best[s][r])
        overall = max(layers, key=lambda name: float(np.mean(per_output[s][name]["cv_r"])))
        code[code < 0] = layers.index(overall)  # outputs in no ROI use the best layer overall
        best[s]["_outputs_without_roi"] = overall
        readouts[s]["_code"] = code
        first = per_output[s][layers[0]]
        reliab[s] = {"ncsnr": first["ncsnr"], "noise_ceiling": first["noise_ceiling"]}

    # --- 6. the artifact
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with ArtifactWriter(out_dir, opts["model_id"]) as w:
        w.add_json(
            "layers.json",
            {
                "layers": layers,
                "nodes": {n: LAYERS[n] for n in layers},
                "n_features": dict(zip(layers, map(int, widths))),
                "n_components": {n: projections[n].n_components for n in layers},
                "transform": rec["transform"],
                "backbone": rec["backbone"],
                "backbone_weights": "pretrained" if weights is None else str(weights),
            },
        )
        for name in layers:
            w.add_tensors(
                f"projections/{name}.safetensors", {"weight": projections[name].weight, "bias": projections[name].bias}
            )
        for s, sd in ds.subjects.items():
            label = subject_label(s)
            code = readouts[s]["_code"]
            for name in layers:
                weight, bias = readouts[s][name]
                w.add_tensors(f"readout/{name}/{label}.safetensors", {"weight": weight, "bias": bias})
            rows = np.arange(sd.n_outputs)
            best_r = np.empty(sd.n_outputs)
            for j, name in enumerate(layers):
                best_r[code == j] = per_output[s][name]["correlation"][code == j]
            tensors = {f"roi/{r}": np.asarray(v, dtype=np.int64) for r, v in sd.rois.items()}
            for r in sd.rois:  # both hemispheres together (EarlyVis = LHEarlyVis + RHEarlyVis)
                if r.startswith("LH") and "RH" + r[2:] in sd.rois:
                    both = np.union1d(sd.rois[r], sd.rois["RH" + r[2:]])
                    tensors[f"roi/{r[2:]}"] = both.astype(np.int64)
            if not sd.rois:
                tensors["roi/all"] = rows.astype(np.int64)
            tensors.update(
                {
                    "layer_of_output": code,
                    "accuracy/correlation": best_r.astype(np.float32),
                    "accuracy/ncsnr": reliab[s]["ncsnr"].astype(np.float32),
                    "accuracy/noise_ceiling": reliab[s]["noise_ceiling"].astype(np.float32),
                }
            )
            for name in layers:
                for metric in ("correlation", "cv_r", "ridge_alpha"):
                    tensors[f"accuracy/{name}/{metric}"] = np.asarray(per_output[s][name][metric], dtype=np.float32)
            w.add_tensors(f"metadata/{label}.safetensors", tensors)
            w.add_json(
                f"metadata/{label}.json",
                {
                    "n_outputs": int(sd.n_outputs),
                    "output_space": {"kind": "flat"},
                    "rois": sorted(k[4:] for k in tensors if k.startswith("roi/")),
                    "info": {
                        "dataset": ds.name,
                        "layers": layers,
                        "best_layer": best[s],
                        "test_r_per_layer_roi": test_tab[s],
                        "cv_r_per_layer_roi": cv_tab[s],
                        "n_train_stimuli": int(len(train_idx)),
                        "n_test_stimuli": int(len(test_idx)),
                        "best_layer_rule": "per ROI, the layer with the highest mean training-set CV r",
                    },
                },
            )
        w.finalize(
            {
                "creator": "creation_code.bold5000_alexnet.build:build",
                "data": data_description,
                "dataset": {
                    "name": ds.name,
                    "n_stimuli": len(ds.ids),
                    "n_train": int(len(train_idx)),
                    "n_test": int(len(test_idx)),
                    "sha256": getattr(ds, "checksum", "") or None,
                },
                "options": {k: v for k, v in opts.items() if k not in ("work_dir", "show_progress", "model_id")},
                "recipe": rec,
                "versions": library_versions(),
            }
        )
    summary = {"best_layer": best, "test_r": test_tab, "cv_r": cv_tab, "artifact": out_dir}
    from berg.fsutil import atomic_write_text

    atomic_write_text(
        work / "summary.json", json.dumps({k: v for k, v in summary.items() if k != "artifact"}, default=str, indent=1)
    )
    return summary


if __name__ == "__main__":  # pragma: no cover - `berg build` is the entry point; this is for debugging
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--option", action="append", default=[], help="KEY=JSON_VALUE")
    ns = ap.parse_args()
    build(
        Path(ns.data_dir), Path(ns.out_dir), options={k: json.loads(v) for k, v in (o.split("=", 1) for o in ns.option)}
    )
    sys.stdout.write(f"built {MODEL_ID} in {ns.out_dir}\n")
