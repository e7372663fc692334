"""A SYNTHETIC folder in BOLD5000 release 1's layout, with known ground truth (tests, docs, benchmarks).

Not brain data. Images carry a planted category structure (:func:`berg.synthetic.category_images`);
each ROI's voxels are a known linear map (:class:`berg.synthetic.LinearBrain`) of one planted layer
of a seeded AlexNet, plus trial noise of known NCSNR. Files are written exactly where the real release
puts them, so :func:`berg.training.bold5000.bold5000_release_dataset` and the model's creator read
them like the real thing::

    BOLD5000_ROIs/ROIs/CSI{s}/mat/CSI{s}_ROIs_TR34.mat       LHEarlyVis ... RHRSC: (n_trials, n_voxels)
    BOLD5000_ROIs/ROIs/stim_lists/CSI0{s}_stim_lists.txt     one image file name per trial
    BOLD5000_Stimuli/Scene_Stimuli/Presented_Stimuli/ImageNet/n0XXXXXXX_K.JPEG
    BOLD5000_Stimuli/Scene_Stimuli/repeated_stimuli_113_list.txt
    BOLD5000_Stimuli/Image_Labels/imagenet_final_labels.txt
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PLANTED", "BOLD5000_VOXELS", "SyntheticRelease", "write_synthetic_release", "write_registry"]

#: ROI (both hemispheres) -> the AlexNet layer that drives it in the synthetic brain
PLANTED = {"EarlyVis": "conv1", "OPA": "conv2", "LOC": "conv5", "PPA": "fc6", "RSC": "fc7"}


@dataclass
class SyntheticRelease:
    """Where the files are and what is true."""

    root: Path
    ids: list[str]  # image file names, in feature order
    categories: np.ndarray
    test_ids: list[str]
    signal: dict[int, np.ndarray]  # subject -> (n_images, n_voxels) true responses, adapter output order
    rois: dict[int, dict[str, np.ndarray]]  # subject -> ROI -> voxel columns
    planted: dict[str, str]  # ROI name (e.g. LHEarlyVis) -> layer
    ncsnr: float
    features: dict[str, np.ndarray] = field(repr=False, default_factory=dict)


#: voxels per ROI of BOLD5000's CSI1-3 (LH + RH counts as img2fmri records them), for realistic sizes
BOLD5000_VOXELS = {
    1: {
        "LHEarlyVis": 210,
        "RHEarlyVis": 285,
        "LHLOC": 152,
        "RHLOC": 190,
        "LHOPA": 101,
        "RHOPA": 187,
        "LHPPA": 131,
        "RHPPA": 200,
        "LHRSC": 86,
        "RHRSC": 143,
    },
    2: {
        "LHEarlyVis": 254,
        "RHEarlyVis": 241,
        "LHLOC": 327,
        "RHLOC": 561,
        "LHOPA": 85,
        "RHOPA": 95,
        "LHPPA": 172,
        "RHPPA": 198,
        "LHRSC": 59,
        "RHRSC": 278,
    },
    3: {
        "LHEarlyVis": 522,
        "RHEarlyVis": 696,
        "LHLOC": 430,
        "RHLOC": 597,
        "LHOPA": 187,
        "RHOPA": 205,
        "LHPPA": 112,
        "RHPPA": 161,
        "LHRSC": 78,
        "RHRSC": 116,
    },
}


def _n_voxels(spec: Any, subject: int, roi: str) -> int:
    if isinstance(spec, int):
        return spec
    table = spec.get(subject, spec) if isinstance(spec.get(subject, None), dict) else spec
    return int(table[roi])


def write_synthetic_release(
    root: str | Path,
    *,
    subjects=(1, 2),
    n_categories: int = 10,
    n_per_category: int = 24,
    n_test: int = 16,
    test_repeats: int = 4,
    voxels_per_roi: Any = 8,
    ncsnr: float = 1.0,
    image_size: int = 64,
    seed: int = 0,
) -> SyntheticRelease:
    """Write a small synthetic BOLD5000-shaped release under ``root`` and return its ground truth.

    Training images are shown once, the ``n_test`` test images ``test_repeats`` times (the first of them
    one time less, like BOLD5000's one 3-repeat image). Trial order is shuffled per subject.
    ``voxels_per_roi``: an int, ``{roi: n}``, or ``{subject: {roi: n}}`` (e.g. :data:`BOLD5000_VOXELS`).
    """
    import scipy.io
    from PIL import Image

    from berg.core.engine import iter_features
    from berg.features import FeatureExtractor
    from berg.stimuli import load_stimuli
    from berg.synthetic import LinearBrain, category_images
    from berg.training.bold5000 import BOLD5000_ROIS
    from creation_code.bold5000_alexnet.build import LAYERS, recipe

    root = Path(root)
    rng = np.random.default_rng(seed)
    images, cats = category_images(n_categories, n_per_category, size=image_size, seed=seed)
    img_dir = root / "BOLD5000_Stimuli/Scene_Stimuli/Presented_Stimuli/ImageNet"
    img_dir.mkdir(parents=True, exist_ok=True)
    synsets = {c: f"n{1440764 + 17 * k:08d}" for k, c in enumerate(np.unique(cats))}
    ids = []
    for i, (img, c) in enumerate(zip(images, cats)):
        name = f"{synsets[c]}_{i}.JPEG"
        Image.fromarray(img).save(img_dir / name, format="JPEG", quality=95)
        ids.append(name)
    labels = root / "BOLD5000_Stimuli/Image_Labels/imagenet_final_labels.txt"
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text("".join(f"{s} synthetic {c}, {c}\n" for c, s in synsets.items()))
    test_ids = sorted(rng.choice(ids, size=n_test, replace=False).tolist())
    rep = root / "BOLD5000_Stimuli/Scene_Stimuli/repeated_stimuli_113_list.txt"
    rep.write_text("\n".join(test_ids) + "\n")

    # features of the decoded files (what the model will see), every layer in one pass
    rec = recipe(image_size)
    ext = FeatureExtractor(rec, backbone_weights="untrained", seed=seed)
    stim = load_stimuli([str(img_dir / n) for n in ids], "image")
    import torch

    with torch.inference_mode():
        x = ext.transform([stim[0]])
        out = ext.network(x)
    widths = [int(out[n].flatten(1).shape[1]) for n in ext.nodes]
    feats = np.concatenate(list(iter_features(ext, stim, batch_size=64))).astype(np.float64)
    bounds = np.concatenate([[0], np.cumsum(widths)])
    by_layer = {name: feats[:, bounds[j] : bounds[j + 1]] for j, name in enumerate(LAYERS)}
    train_rows = np.array([i for i, n in enumerate(ids) if n not in set(test_ids)])

    signal, rois, planted = {}, {}, {}
    roi_dir = root / "BOLD5000_ROIs/ROIs"
    (roi_dir / "stim_lists").mkdir(parents=True, exist_ok=True)
    for s in subjects:
        counts = {n: 1 for n in ids}
        for j, n in enumerate(test_ids):
            counts[n] = test_repeats - 1 if j == 0 else test_repeats
        trials = np.array([n for n in ids for _ in range(counts[n])])
        trials = trials[rng.permutation(len(trials))]
        row = {n: i for i, n in enumerate(ids)}
        mat, sig_parts, roi_cols, start = {}, [], {}, 0
        for roi in BOLD5000_ROIS:  # the adapter's output order
            layer = PLANTED[roi[2:]]
            planted[roi] = layer
            n_vox = _n_voxels(voxels_per_roi, s, roi)
            brain = LinearBrain.from_features(
                by_layer[layer][train_rows], n_vox, ncsnr=ncsnr, n_components=6, seed=int(rng.integers(1 << 31))
            )
            sig = brain.signal(by_layer[layer])  # (n_images, voxels): unit variance over training images
            noise = rng.standard_normal((len(trials), n_vox)) / ncsnr
            mat[roi] = (sig[[row[n] for n in trials]] + noise).astype(np.float32)
            sig_parts.append(sig)
            roi_cols[roi] = np.arange(start, start + n_vox)
            start += n_vox
        (roi_dir / f"CSI{s}/mat").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(roi_dir / f"CSI{s}/mat/CSI{s}_ROIs_TR34.mat", mat)
        # As in the real BOLD5000 presentation lists: images of the repeated set carry a `rep_`
        # prefix on every showing but one, and the unprefixed showing is not always the first.
        lines, plain = [], {n: int(rng.integers(counts[n])) for n in test_ids}
        seen = dict.fromkeys(test_ids, 0)
        for n in trials:
            if n in seen:
                lines.append(n if seen[n] == plain[n] else f"rep_{n}")
                seen[n] += 1
            else:
                lines.append(str(n))
        (roi_dir / f"stim_lists/CSI{s:02d}_stim_lists.txt").write_text("\n".join(lines) + "\n")
        signal[s], rois[s] = np.concatenate(sig_parts, axis=1), roi_cols
    return SyntheticRelease(root, ids, cats, test_ids, signal, rois, planted, ncsnr, by_layer)


def write_registry(
    root: str | Path, model_id: str, *, subjects=(1, 2), n_outputs: dict[int, int] | None = None, image_size: int = 64
) -> Path:
    """A registry file (+ card copy) under ``root`` declaring a SYNTHETIC build of the model as ``model_id``.

    Its recipe uses ``image_size`` (small for tests); build it with
    ``berg.buildable.build_model(model_id, data, client=BERG(registry=<returned path>, ...),
    options={"backbone_weights": "untrained", "image_size": image_size, "model_id": model_id, ...})``.
    """
    import yaml

    from creation_code.bold5000_alexnet.build import DEFAULTS, recipe

    root = Path(root)
    repo = Path(__file__).resolve().parents[2]
    card = yaml.safe_load((repo / "model_cards/fmri-bold5000-alexnet.yaml").read_text(encoding="utf-8"))
    card["id"] = model_id
    card["name"] = f"SYNTHETIC build of fmri-bold5000-alexnet ({model_id}; not brain data)"
    card["parameters"]["subjects"] = list(subjects)
    if n_outputs:
        card["parameters"]["selection"]["n_outputs"] = {int(s): int(n) for s, n in n_outputs.items()}
    (root / "model_cards").mkdir(parents=True, exist_ok=True)
    (root / "model_cards" / f"{model_id}.yaml").write_text(yaml.safe_dump(card, sort_keys=False), encoding="utf-8")
    options = {k: v for k, v in DEFAULTS.items() if k != "work_dir"}
    entry = {
        "card": f"{model_id}.yaml",
        "modality": "fmri",
        "dataset": "bold5000",
        "subjects": list(subjects),
        "source": {
            "kind": "build",
            "command": f"berg build {model_id} --data DIR",
            "data": "a synthetic BOLD5000-shaped release",
        },
        "layout": "berg.models.bold5000_alexnet:Bold5000AlexNetLayout",
        "recipe": recipe(image_size),
        "model_class": "berg.models.bold5000_alexnet:Bold5000AlexNet",
        "build": {
            "creator": "creation_code.bold5000_alexnet.build:build",
            "data": "synthetic release",
            "options": options,
        },
    }
    path = root / "registry.yaml"
    path.write_text(
        yaml.safe_dump({"format_version": 1, "models": {model_id: entry}}, sort_keys=False), encoding="utf-8"
    )
    return path
