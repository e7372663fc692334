"""Stand-ins for published models: registry entries derived from the real ones, and BERG-format buckets.

A test or benchmark of a published model needs two things it cannot download here: the files (written
as the publisher writes them, with small or full sizes) and a registry entry that points at them. The
bucket writers live beside the model's creation code (``creation_code/<model>/replica.py``, shipped in
the wheel) and are re-exported here; :func:`replica_entry` derives the entry and card from the real
registry entry, changing only what the replica changes (subjects, sizes, the backbone).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from berg.testing.toys import add_registry_entry, write_card

__all__ = [
    "replica_entry",
    "write_bmd_replica",
    "write_catalogue_replica",
    "catalogue_reference",
    "write_algonauts_artifact",
]


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, mapping by mapping."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def replica_entry(
    root: str | Path,
    model_id: str,
    real_id: str,
    *,
    source: Mapping[str, Any],
    subjects: Sequence[Any],
    selection: Mapping[str, Any] | None = None,
    recipe: Mapping[str, Any] | None = None,
    registry: str | Path | None = None,
) -> Path:
    """Register ``model_id``: a copy of the built-in ``real_id`` served from a replica of its files.

    Parameters
    ----------
    root : path
        Folder of the registry file and of ``model_cards/``.
    model_id : str
        The new entry's id.
    real_id : str
        The built-in model it stands in for (its card, layout, model class and recipe are copied).
    source : mapping
        Where the replica is (``{"kind": "s3", "bucket": ..., "prefix": ..., "manifest": False}``).
    subjects : sequence
        The replica's subjects (the card's ``parameters.subjects``).
    selection : mapping, optional
        Keys of the card's ``parameters.selection`` the replica changes (``n_outputs``, ``lengths``,
        ``channels``); each replaces the real card's value.
    recipe : mapping, optional
        Recipe keys to change, merged mapping by mapping (e.g. ``{"nodes": [...], "transform": {"size":
        [32, 32]}}``).
    registry : path, optional
        The registry file (default ``root/registry.yaml``; created or extended).

    Returns
    -------
    Path
        The registry file.
    """
    from berg.registry import Registry

    root = Path(root)
    spec = Registry().get(real_id)
    card = copy.deepcopy(spec.card)
    card["id"] = model_id
    card["parameters"]["subjects"] = list(subjects)
    card["parameters"]["selection"] = {**card["parameters"]["selection"], **copy.deepcopy(dict(selection or {}))}
    write_card(root, card)
    entry: dict[str, Any] = {
        "card": f"{model_id}.yaml",
        "modality": spec.modality,
        "dataset": spec.dataset,
        "source": dict(source),
        "layout": spec.layout,
        "recipe": _merge(spec.recipe, recipe or {}),
    }
    if spec.model_class:
        entry["model_class"] = spec.model_class
    return add_registry_entry(registry or root / "registry.yaml", model_id, entry)


def write_bmd_replica(root: str | Path, **kwargs: Any):
    """BERG's fmri-bmd-s3d bucket tree, written as BERG writes it (``creation_code.bmd_s3d.replica``).

    Parameters
    ----------
    root : path
        The bucket root; files go under ``root / creation_code.bmd_s3d.replica.PREFIX``.
    **kwargs
        ``subjects``, ``n_features``, ``k``, ``grid``, ``dtype``, ``seed``, ``with_affine`` (see there).

    Returns
    -------
    creation_code.bmd_s3d.replica.Replica
        The arrays written (scaler, components, coefficients, masks), the ground truth of a parity test.
    """
    from creation_code.bmd_s3d.replica import write_replica

    return write_replica(Path(root), **kwargs)


def write_catalogue_replica(root: str | Path, dataset: str, backbone: str, **kwargs: Any):
    """One BERG catalogue model's bucket files (NSD fsaverage or THINGS EEG2), as BERG writes them.

    Parameters
    ----------
    root : path
        The bucket root.
    dataset : {"nsd_fsaverage", "things_eeg_2"}
    backbone : str
        ``"alexnet"``, ``"alexnet_untrained"`` or ``"vit_b_32"``.
    **kwargs
        Sizes and format (``subjects``, ``n_features``, ``n_components``, ``n_vertices``, ``channels``,
        ``n_times``, ``form``, ``fit``; see ``creation_code.berg_catalogue.replica.write_replica``).

    Returns
    -------
    creation_code.berg_catalogue.replica.Replica
    """
    from creation_code.berg_catalogue.replica import write_replica

    return write_replica(Path(root), dataset, backbone, **kwargs)


def catalogue_reference(replica: Any, subject: int, features: np.ndarray) -> np.ndarray:
    """What BERG's own scikit-learn chain returns for ``features`` on a catalogue replica."""
    from creation_code.berg_catalogue.replica import berg_reference

    return berg_reference(replica, subject, features)


def write_algonauts_artifact(
    berg_dir: str | Path,
    n_vertices: int,
    *,
    sam: Mapping[str, Any] | None = None,
    subject: int = 1,
    seed: int = 0,
) -> Path:
    """A random native artifact of ``fmri-algonauts_2023-clip_sam`` with every feature set's readout.

    Written under ``berg_dir/fmri-algonauts_2023-clip_sam/`` (the real model id, so the built-in entry
    serves it with ``BERG(berg_dir=berg_dir)``); vertices split in half between hemispheres.

    Parameters
    ----------
    berg_dir : path
    n_vertices : int
        Challenge vertices of the subject (the real subject 1 has 39,548).
    sam : mapping, optional
        ``{"model": "vit_b"|"vit_l"|"vit_h", "image_size": int, "pool": int}`` (default vit_b, 1024, 8).
    subject : int
    seed : int

    Returns
    -------
    Path
        ``berg_dir``.
    """
    from berg.models.algonauts_2023 import FEATURE_SETS, INFO_KEY, VARIANTS
    from berg.store.artifacts import ArtifactWriter
    from berg.subjects import subject_label

    sam = dict(sam or {"model": "vit_b", "image_size": 1024, "pool": 8})
    model_id = "fmri-algonauts_2023-clip_sam"
    label = subject_label(subject)
    rng = np.random.default_rng(seed)
    widths = {"image": 512, "text": 512, "sam": 256 * (sam["image_size"] // 16 // sam["pool"]) ** 2}
    n_lh = n_vertices // 2
    w = ArtifactWriter(Path(berg_dir) / f"{model_id}/", model_id)
    info_sets = {}
    for fs, kinds in FEATURE_SETS.items():
        k = sum(widths[x] for x in kinds)
        info_sets[fs] = k
        rows = np.arange(0, n_vertices, 10) if fs == "all" else None
        m = n_vertices if rows is None else rows.size
        t = {"weight": (rng.standard_normal((m, k), dtype=np.float32) / np.sqrt(k)), "bias": np.zeros(m, np.float32)}
        if rows is not None:
            t["rows"] = rows.astype(np.int64)
        w.add_tensors(f"readout/{fs}/{label}.safetensors", t)
    codes = np.zeros(n_vertices, np.int8)
    codes[: n_vertices // 4] = 1
    codes[::10] = 2
    w.add_tensors(
        f"metadata/{label}.safetensors",
        {
            "vertices/lh": np.arange(n_lh, dtype=np.int64),
            "vertices/rh": np.arange(n_vertices - n_lh, dtype=np.int64),
            "roi/V1v": np.arange(10, dtype=np.int64),
            "per_roi_class": codes,
        },
    )
    w.add_json(
        f"metadata/{label}.json",
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
    w.finalize({"creator": "berg.testing.write_algonauts_artifact"})
    return Path(berg_dir)
