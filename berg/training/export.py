"""Export a trained model: berg artifact (manifest + safetensors + JSON + plots), card, registry entry."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from berg.layouts import subject_label
from berg.store.artifacts import ArtifactWriter

if TYPE_CHECKING:  # pragma: no cover
    from berg.readouts import Projection
    from berg.training.dataset import EncodingDataset
    from berg.training.trainer import TrainConfig

__all__ = ["export_model", "plot_accuracy"]


def plot_accuracy(subject: Any, values: dict[str, np.ndarray], rois: dict[str, np.ndarray], out: Path) -> list[Path]:
    """Histograms of r and NC-normalised EV, and per-ROI bars of r with noise ceilings (PNG files)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].hist(values["correlation"], bins=40, color="tab:blue")
    axes[0].set_xlabel("test Pearson r")
    axes[1].hist(values["explained_variance"], bins=40, color="tab:green")
    axes[1].set_xlabel("noise-normalised explained variance (%)")
    for ax in axes:
        ax.set_ylabel("outputs")
    fig.suptitle(f"subject {subject}")
    fig.tight_layout()
    p = out / f"{subject_label(subject)}_hist.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(p)
    if rois:
        names = list(rois)
        r = [float(np.mean(values["correlation"][rois[n]])) for n in names]
        nc = [float(np.mean(np.sqrt(values["noise_ceiling"][rois[n]]))) for n in names]
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(names)), 3.2))
        ax.bar(names, r, color="tab:blue", label="mean r")
        ax.scatter(names, nc, color="k", marker="_", s=300, label="sqrt(noise ceiling)")
        ax.set_ylabel("r")
        ax.legend()
        ax.tick_params(axis="x", rotation=60)
        fig.tight_layout()
        p = out / f"{subject_label(subject)}_rois.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    return paths


def export_model(
    cfg: "TrainConfig",
    ds: "EncodingDataset",
    projection: "Projection | None",
    readouts: dict[Any, tuple[np.ndarray, np.ndarray]],
    per_output: dict[Any, dict[str, np.ndarray]],
    accuracy: dict[Any, dict[str, Any]],
    provenance: dict[str, Any],
    out_dir: Path,
) -> dict[str, Path]:
    """Write ``out_dir/artifact/`` (berg-native), ``out_dir/model_cards/<id>.yaml`` and ``out_dir/registry.yaml``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = ArtifactWriter(out_dir / "artifact", cfg.model_id)
    if projection is not None:
        writer.add_tensors("projection.safetensors", {"weight": projection.weight, "bias": projection.bias})
    plot_dir = out_dir / "plots"
    plot_keys = []
    for subject, (weight, bias) in readouts.items():
        sd = ds.subjects[subject]
        label = subject_label(subject)
        writer.add_tensors(f"readout/{label}.safetensors", {"weight": weight, "bias": bias})
        tensors = {f"roi/{k}": np.asarray(v, dtype=np.int64) for k, v in sd.rois.items()}
        tensors.update({f"accuracy/{k}": np.asarray(v, dtype=np.float32) for k, v in per_output[subject].items()})
        space: dict[str, Any] = {"kind": "flat"}
        if sd.voxel_ijk is not None and ds.grid_shape is not None:
            tensors["voxel_ijk"] = sd.voxel_ijk.astype(np.int32)
            space = {"kind": "volume", "shape": list(ds.grid_shape), "affine": np.asarray(ds.affine).tolist()}
        writer.add_tensors(f"metadata/{label}.safetensors", tensors)
        summary = {k: v for k, v in accuracy[subject].items() if k != "per_roi"}
        writer.add_json(f"metadata/{label}.json", {
            "n_outputs": int(weight.shape[0]), "output_space": space, "rois": sorted(sd.rois),
            "info": {"accuracy_summary": summary, "accuracy_per_roi": accuracy[subject]["per_roi"],
                     "dataset": ds.name},
        })
        for p in plot_accuracy(subject, per_output[subject], sd.rois, plot_dir):
            key = f"plots/{p.name}"
            writer.add_file(key, p)
            plot_keys.append(key)
    writer.finalize(provenance)

    card = _card(cfg, ds, readouts, accuracy, plot_keys)
    cards_dir = out_dir / "model_cards"
    cards_dir.mkdir(exist_ok=True)
    card_path = cards_dir / f"{cfg.model_id}.yaml"
    card_path.write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True))
    source = dict(cfg.source) or {"kind": "s3", "bucket": "CHANGE-ME", "prefix": f"{cfg.model_id}/"}
    entry = {"card": f"{cfg.model_id}.yaml", "modality": card["modality"], "dataset": ds.name,
             "subjects": list(readouts), "source": source, "layout": "native", "recipe": cfg.recipe, "model_class": None}
    registry_path = out_dir / "registry.yaml"
    registry_path.write_text(yaml.safe_dump({"format_version": 1, "models": {cfg.model_id: entry}}, sort_keys=False))
    return {"artifact": out_dir / "artifact", "card": card_path, "registry": registry_path}


def _card(cfg, ds, readouts, accuracy, plot_keys) -> dict[str, Any]:
    subjects = list(readouts)
    card: dict[str, Any] = {
        "id": cfg.model_id,
        "name": cfg.model_id,
        "modality": "fmri",
        "dataset": {"name": ds.name, "space": "see output_space in the metadata", "citation": "unpublished"},
        "species": "human",
        "stimuli": {"type": ds.kind, "description": f"{ds.kind}s of dataset {ds.name}"},
        "model_type": f"{cfg.recipe['backbone']['builder']} {cfg.recipe['nodes']} + {cfg.projection.get('kind')} + {cfg.readout['kind']}",
        "creator": "berg train",
        "description": f"Linear encoding model trained with berg's creation pipeline on {ds.name}.",
        "input": {"type": ds.kind, "dtype": "uint8", "range": [0, 255],
                  "shape": "[batch, 3, H, W]" if ds.kind == "image" else "[batch, frames, 3, H, W]",
                  "description": "RGB stimuli"},
        "output": {"dtype": "float32", "units": "units of the training responses",
                   "dims": [{"name": "n_stimuli", "description": "stimuli"}, {"name": "n_outputs", "description": "outputs"}]},
        "parameters": {"subjects": subjects, "selection": {
            "rois": sorted({r for s in subjects for r in ds.subjects[s].rois}) or ["all"],
            "n_outputs": {s: int(readouts[s][0].shape[0]) for s in subjects}}, "model_kwargs": []},
        "preprocessing": {"transform": cfg.recipe["transform"]},
        "metadata": {"rois": "ROI indices", "accuracy/*": "per-output test accuracy arrays"},
        "accuracy": {
            "split": "held-out test split of the dataset",
            "metric_definitions": "Pearson r on test (mean over repeats); NC = ncsnr^2/(ncsnr^2+1/n); EV = 100 r^2/NC capped at 100; NNMC = mean EV",
            "summary": {s: {k: round(v, 4) for k, v in a.items() if k != "per_roi"} for s, a in accuracy.items()},
            "per_roi": {s: a["per_roi"] for s, a in accuracy.items()},
            "plots": plot_keys,
        },
        "references": [{"title": "berg creation pipeline", "url": "docs/training.md"}],
        "license": {"code": "MIT", "weights": "as the training data permits"},
        "provenance": {"weights": f"trained by berg train (config sha256 {cfg.digest()[:12]})", "artifact": "artifact/"},
        "caveats": [],
    }
    merged = copy.deepcopy(card)
    for key, value in (cfg.card or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
