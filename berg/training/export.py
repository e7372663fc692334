"""Export a trained model: berg-native artifact, model card, card fragment and registry entry.

``out_dir`` after export::

    artifact/                     berg-native artifact (docs/architecture.md, "Native artifact format")
      manifest.json               sizes + sha256 of every file, provenance
      projection.safetensors      scaler folded in (absent for projection kind "none")
      readout/sub-SS.safetensors
      metadata/sub-SS.json        n_outputs, output_space, rois, info (accuracy summary)
      metadata/sub-SS.safetensors roi/<name>, accuracy/<metric>, voxel_ijk (volumes)
      plots/*.png
    model_cards/<model_id>.yaml   a complete, schema-valid card with the accuracy numbers
    card_accuracy.yaml            just the card's accuracy: section (to paste into a hand-written card)
    registry.yaml                 one entry, usable at once: BERG(registry="out_dir/registry.yaml")
    plots/*.png                   the same plots, for reading without the artifact
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from berg.core.layouts import subject_label
from berg.store.artifacts import ArtifactWriter
from berg.training.plots import plot_all

if TYPE_CHECKING:  # pragma: no cover
    from berg.core.readouts import Projection
    from berg.training.config import TrainConfig
    from berg.training.datasets import EncodingDataset

__all__ = ["export_model", "build_card", "write_yaml"]

METRIC_DEFINITIONS = {
    "r": "Pearson r between predictions and the mean over repeats of each held-out test stimulus",
    "r2": "max(r, 0)^2",
    "noise_ceiling": "ncsnr^2 / (ncsnr^2 + mean_i(1/n_i)), n_i = repeats averaged for test stimulus i "
    "(= ncsnr^2/(ncsnr^2 + 1/n) for equal counts; NSD's A/B/C formula for 3/2/1); fraction 0-1",
    "nc_normalized_ev": "100 * max(r,0)^2 / noise_ceiling, capped at 100 (percent)",
    "nnmc": "Algonauts 2023 score: mean over outputs of nc_normalized_ev (equal to mean_nc_normalized_ev)",
}


def write_yaml(path: Path, data: Any) -> Path:
    """Write YAML atomically (temp file + rename)."""
    from berg.fsutil import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _round(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, float):
        return None if not np.isfinite(value) else round(value, 4)
    return value


def _space(ds: EncodingDataset, voxel_ijk: np.ndarray | None) -> dict[str, Any]:
    if voxel_ijk is not None and ds.grid_shape is not None:
        return {"kind": "volume", "shape": list(ds.grid_shape), "affine": np.asarray(ds.affine, dtype=float).tolist()}
    return {"kind": "flat"}


def export_model(
    cfg: TrainConfig,
    ds: EncodingDataset,
    subjects: list[Any],
    projection: Projection | None,
    readouts: dict[Any, tuple[np.ndarray, np.ndarray]],
    per_output: dict[Any, dict[str, np.ndarray]],
    accuracy: dict[Any, dict[str, Any]],
    provenance: dict[str, Any],
    out_dir: Path,
) -> dict[str, Path]:
    """Write the artifact, card, card fragment, registry entry and plots under ``out_dir``.

    Returns
    -------
    dict
        Paths: ``artifact``, ``card``, ``card_fragment``, ``registry``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_keys: list[str] = []
    with ArtifactWriter(out_dir / "artifact", cfg.model_id) as writer:
        if projection is not None:
            writer.add_tensors("projection.safetensors", {"weight": projection.weight, "bias": projection.bias})
        for subject in subjects:
            readout = readouts[subject]
            weight, bias = readout.weight, readout.bias
            sd = ds.subjects[subject]
            label = subject_label(subject)
            writer.add_tensors(f"readout/{label}.safetensors", {"weight": weight, "bias": bias})
            tensors = {f"roi/{k}": np.asarray(v, dtype=np.int64) for k, v in sd.rois.items()}
            if not sd.rois:  # the card then lists the single ROI "all"; keep it selectable
                tensors["roi/all"] = np.arange(weight.shape[0], dtype=np.int64)
            tensors.update({f"accuracy/{k}": np.asarray(v, dtype=np.float32) for k, v in per_output[subject].items()})
            if sd.voxel_ijk is not None and ds.grid_shape is not None:
                tensors["voxel_ijk"] = np.asarray(sd.voxel_ijk, dtype=np.int32)
            writer.add_tensors(f"metadata/{label}.safetensors", tensors)
            summary = {k: v for k, v in accuracy[subject].items() if k != "per_roi"}
            writer.add_json(
                f"metadata/{label}.json",
                {
                    "n_outputs": int(weight.shape[0]),
                    "output_space": _space(ds, sd.voxel_ijk),
                    "rois": sorted(sd.rois),
                    "info": {
                        "dataset": ds.name,
                        "accuracy_summary": _round(summary),
                        "accuracy_per_roi": _round(accuracy[subject]["per_roi"]),
                        "accuracy_metrics": sorted(per_output[subject]),
                    },
                },
            )
            for p in plot_all(
                label,
                per_output[subject],
                sd.rois,
                out_dir / "plots",
                voxel_ijk=sd.voxel_ijk,
                grid_shape=ds.grid_shape,
                title=f"{cfg.model_id} subject {subject}",
            ):
                key = f"plots/{p.name}"
                writer.add_file(key, p)
                plot_keys.append(key)
        writer.finalize(provenance)

    card = build_card(cfg, ds, subjects, readouts, accuracy, plot_keys, provenance)
    card_path = write_yaml(out_dir / "model_cards" / f"{cfg.model_id}.yaml", card)
    fragment_path = write_yaml(out_dir / "card_accuracy.yaml", {"accuracy": card["accuracy"]})
    source = dict(cfg.source) or {"kind": "s3", "bucket": "CHANGE-ME", "prefix": f"{cfg.model_id}/"}
    entry = {
        "card": f"{cfg.model_id}.yaml",
        "modality": card["modality"],
        "dataset": ds.name,
        "subjects": list(subjects),
        "source": source,
        "layout": "native",
        "recipe": cfg.full_recipe,
        "model_class": None,
    }
    registry_path = write_yaml(out_dir / "registry.yaml", {"format_version": 1, "models": {cfg.model_id: entry}})
    return {
        "artifact": out_dir / "artifact",
        "card": card_path,
        "card_fragment": fragment_path,
        "registry": registry_path,
    }


def _accuracy_section(ds: EncodingDataset, accuracy: dict[Any, dict[str, Any]], plot_keys: list[str]) -> dict[str, Any]:
    n_test = next(iter(accuracy.values()))["n_test_stimuli"]
    return {
        "split": f"held-out test split of {ds.name} ({n_test} stimuli), never used for fitting",
        "metric_definitions": dict(METRIC_DEFINITIONS),
        "summary": {s: _round({k: v for k, v in a.items() if k != "per_roi"}) for s, a in accuracy.items()},
        "per_roi": {s: _round(a["per_roi"]) for s, a in accuracy.items() if a["per_roi"]},
        "plots": list(plot_keys),
    }


def build_card(
    cfg: TrainConfig,
    ds: EncodingDataset,
    subjects: list[Any],
    readouts: dict[Any, Any],
    accuracy: dict[Any, dict[str, Any]],
    plot_keys: list[str],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """A complete model card (``model_cards/schema.json``), overridden key by key by ``cfg.card``."""
    recipe = cfg.full_recipe
    transform = recipe["transform"]
    rois = sorted({r for s in subjects for r in ds.subjects[s].rois})
    projection = cfg.projection["kind"]
    k = cfg.projection.get("n_components")
    readout = cfg.readout["kind"] + (
        f" (alpha per output by {cfg.readout['folds']}-fold CV)" if cfg.readout["kind"] == "ridge" else ""
    )
    card: dict[str, Any] = {
        "id": cfg.model_id,
        "name": cfg.model_id,
        "modality": "fmri",
        "dataset": {
            "name": ds.name,
            "space": "volume" if ds.grid_shape is not None else "flat outputs",
            "citation": "see the dataset's publication",
        },
        "species": "human",
        "stimuli": {"type": ds.kind, "description": f"{ds.kind}s of dataset {ds.name}"},
        "model_type": f"{recipe['backbone']['builder']} nodes {list(recipe['nodes'])} -> "
        f"{projection}{f' ({k} components)' if projection != 'none' else ''} -> {readout}",
        "creator": "berg train",
        "description": f"Linear encoding model trained with berg's creation pipeline on {ds.name}.",
        "input": {
            "type": ds.kind,
            "dtype": "uint8",
            "range": [0, 255],
            "shape": "[batch, 3, height, width]" if ds.kind == "image" else "[batch, frames, 3, height, width]",
            "description": f"RGB {ds.kind}s; preprocessing as declared in the recipe's transform",
        },
        "output": {
            "dtype": "float32",
            "units": "units of the training responses",
            "dims": [
                {"name": "n_stimuli", "description": "one row per stimulus"},
                {"name": "n_outputs", "description": "outputs (voxels) of the subject"},
            ],
        },
        "parameters": {
            "subjects": list(subjects),
            "selection": {"rois": rois or ["all"], "n_outputs": {s: readouts[s].n_outputs for s in subjects}},
            "model_kwargs": [],
        },
        "preprocessing": {"transform": transform},
        "metadata": {
            "rois": "ROI name -> output indices",
            "accuracy": "per-output test metrics (correlation, r2, "
            "ncsnr, noise_ceiling, nc_normalized_ev, noise_ceiling_train[, ridge_alpha])",
            "output_space": "flat, or volume grid + voxel_ijk",
        },
        "accuracy": _accuracy_section(ds, accuracy, plot_keys),
        "references": [
            {"title": "berg training pipeline (docs/training.md)", "url": "https://github.com/berg-toolkit/berg"}
        ],
        "license": {"code": "MIT", "weights": "as the training data permits"},
        "provenance": {
            "weights": f"trained by berg train, config sha256 {provenance['config_sha256']}, "
            f"dataset sha256 {provenance['dataset']['sha256'] or 'n/a'}",
            "artifact": "berg-native artifact (manifest.json lists every file's sha256)",
        },
        "caveats": ["Accuracy is measured on the dataset's own test split; other stimuli may differ."],
    }
    if not rois:
        card["parameters"]["selection"]["notes"] = "the dataset defines no ROIs; 'all' stands for every output"
    merged = copy.deepcopy(card)
    for key, value in (cfg.card or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
