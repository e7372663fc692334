"""Build ``fmri-algonauts_2023-clip_sam`` from the Algonauts 2023 challenge data (Shen et al. 2023, BREIL).

``berg build fmri-algonauts_2023-clip_sam --data DIR`` calls :func:`build`. Per subject:

1. The challenge folder is read by :mod:`creation_code.algonauts_2023.data` (training images + lh/rh
   training fMRI, ROI masks and their names, the challenge vertices on fsaverage, shipped noise ceilings)
   and the images' COCO captions (NSD stimulus table -> COCO caption files).
2. Features, once, into berg's resumable feature cache (:mod:`berg.training.feature_cache`), one file per
   backbone: CLIP ViT-B/32 image embeddings (512), the mean CLIP embedding of each image's captions (512),
   SAM ViT-L image-encoder features pooled to 16,384. Re-running resumes where a run stopped.
3. The development kit's split of the training images (90 % train / 10 % held out, ``np.random.seed(5)``).
4. Per feature set (``image``, ``text``, ``image_text``, ``sam``, ``all``) ridge regression with the alpha
   chosen per vertex by k-fold CV on Pearson r over the authors' grid (:func:`berg.training.solvers.fit_ridge_cv`;
   a per-vertex ridge is the same whether hemispheres are fitted together or apart, so one design serves
   both), evaluated on the held-out 10 %, then (``refit_all``) refitted on all training images.
5. Every variant of the report's Table 1 is scored on the held-out images with the challenge metric
   (:func:`berg.metrics.nnmc_score` with the noise ceilings shipped in ``test_split/noise_ceiling``), per
   hemisphere and per ROI class; with the post-challenge test fMRI present, on the test split too.
6. A berg-native artifact (:class:`berg.store.artifacts.ArtifactWriter`) that
   :class:`berg.models.algonauts_2023.Algonauts2023Model` serves.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError, close_matches
from berg.models.algonauts_2023 import FEATURE_SETS, INFO_KEY, MODEL_ID, PER_ROI_SETS, VARIANTS, per_roi_assignment
from creation_code.algonauts_2023 import data as challenge

__all__ = ["DEFAULTS", "ALPHAS", "REPORT_NNMC", "build"]

log = logging.getLogger(__name__)

#: The authors' alpha grid (clip_sam_features_submission.py).
ALPHAS = [1e-6, 1e-5, 1e-4, 1e-2, 0.1, 1.0, 100.0, 1e3, 1e4, 1e5]
#: The report's Table 1 (challenge test set, leaderboard), for the card and scores.json.
REPORT_NNMC = {
    "image_only": 42.006,
    "text_only": 36.591,
    "image_text": 41.930,
    "sam": 39.814,
    "per_roi_class": 48.006,
    "clip_sam": 50.632,
}
DEFAULTS: dict[str, Any] = {
    "subjects": [1, 2, 3, 4, 5, 6, 7, 8],
    "variants": list(VARIANTS),
    "alphas": ALPHAS,
    "folds": 5,
    "cv_seed": 0,
    "split_seed": challenge.DEVKIT_SEED,
    "train_percent": challenge.DEVKIT_TRAIN_PERCENT,
    "refit_all": True,  # final readouts from all training images (held-out scores come from the 90 % fits)
    "score_test": True,  # also score the test split when its fMRI (released after the challenge) is present
    "batch_size": 16,
    "device": "auto",
    "backbone_weights": None,  # pretrained CLIP + SAM; "untrained" for the random-weights control
    "backbone_seed": 0,
    "sam_model": "vit_l",
    "sam_image_size": 1024,
    "sam_pool": 8,
    "nsd_stim_info": None,  # default DIR/nsd_stim_info_merged.csv
    "coco_annotations": None,  # default DIR/annotations
    "show_progress": True,
    "model_id": MODEL_ID,
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
    variants = [out["variants"]] if isinstance(out["variants"], str) else list(out["variants"])
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise InvalidParameterError(f"variants {bad or '[]'} unknown; valid: {list(VARIANTS)}")
    out["variants"] = [v for v in VARIANTS if v in variants]
    out["subjects"] = [int(s) for s in ([out["subjects"]] if isinstance(out["subjects"], int) else out["subjects"])]
    if int(out["folds"]) < 2 or not 0 < float(out["train_percent"]) < 100:
        raise InvalidParameterError("folds must be >= 2 and train_percent in (0, 100)")
    return out


def _feature_sets(variants: list[str]) -> list[str]:
    return [f for f in FEATURE_SETS if any(f in VARIANTS[v] for v in variants)]


class _Backbones:
    """Extractors built on first use and shared by every subject (a complete feature cache builds none)."""

    def __init__(self, opts: dict[str, Any]):
        from berg.features import resolve_device

        self.opts = opts
        self.device = resolve_device(str(opts["device"]))
        self._clip = self._sam = None

    def clip(self):
        if self._clip is None:
            from berg.backbones.clip import clip_extractors

            self._clip = clip_extractors(
                backbone_weights=self.opts["backbone_weights"], device=self.device, seed=int(self.opts["backbone_seed"])
            )
        return self._clip

    def get(self, kind: str):
        if kind == "image":
            return self.clip()[0]
        if kind == "text":
            return self.clip()[1]
        if self._sam is None:
            from berg.backbones.sam import SamExtractor

            self._sam = SamExtractor(
                self.opts["sam_model"],
                image_size=int(self.opts["sam_image_size"]),
                pool=int(self.opts["sam_pool"]),
                backbone_weights=self.opts["backbone_weights"],
                device=self.device,
                seed=int(self.opts["backbone_seed"]),
            )
        return self._sam

    def describe(self) -> dict[str, Any]:
        from berg.backbones import clip, sam

        return {
            "clip": {
                "model": clip.MODEL_NAME,
                "pretrained": clip.PRETRAINED_TAG,
                "transform": clip.ClipImageTransform().describe(),
                "text": clip.CaptionTransform().describe(),
            },
            "sam": {
                "model": self.opts["sam_model"],
                "image_size": int(self.opts["sam_image_size"]),
                "pool": int(self.opts["sam_pool"]),
                "checkpoint": sam.CHECKPOINTS[self.opts["sam_model"]],
                "transform": {
                    "kind": "image",
                    "size": [int(self.opts["sam_image_size"])] * 2,
                    "resize": "squash",
                    "mean": list(sam.IMAGENET_MEAN),
                    "std": list(sam.IMAGENET_STD),
                },
            },
        }


def _cached_features(
    kind: str, items: Any, digest: str, name: str, work: Path, backbones: _Backbones, opts: dict[str, Any]
) -> np.ndarray:
    """Features of ``items`` for one backbone, through the resumable feature cache."""
    from berg.training.feature_cache import FeatureCache, feature_key

    spec = {
        "backbone": {"kind": kind, **backbones.describe()["clip" if kind in ("image", "text") else "sam"]},
        "nodes": [kind],
        "transform": None,
    }
    weights = opts["backbone_weights"]
    key = feature_key(spec, None if weights is None else str(weights), int(opts["backbone_seed"]), digest)
    cache = FeatureCache(work / "features" / f"{name}-{kind}.h5", key)
    cache.compute(
        lambda: backbones.get(kind),
        items,
        batch_size=int(opts["batch_size"]),
        show_progress=bool(opts["show_progress"]),
    )
    with cache.open() as ds:
        return np.asarray(ds[()], dtype=np.float32)


def _subject_features(
    sd: Any,
    images: list[Path],
    captions: list[list[str]] | None,
    split: str,
    work: Path,
    backbones: _Backbones,
    needed: set[str],
    opts: dict[str, Any],
) -> dict[str, np.ndarray]:
    from berg.stimuli import load_stimuli
    from berg.training.feature_cache import stimuli_digest

    ids = [p.name for p in images]
    name = f"subj{sd.subject:02d}-{split}"
    stimuli = load_stimuli([str(p) for p in images], "image")
    out = {}
    for kind in ("image", "sam"):
        if kind in needed:
            out[kind] = _cached_features(
                kind, stimuli, stimuli_digest([str(p) for p in images], ids), name, work, backbones, opts
            )
    if "text" in needed:
        digest = hashlib.sha256(json.dumps([ids, captions]).encode()).hexdigest()
        out["text"] = _cached_features("text", captions, digest, name, work, backbones, opts)
    return out


def _design(feats: dict[str, np.ndarray], fs: str, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    return np.concatenate([feats[k][rows] for k in FEATURE_SETS[fs]], axis=1)


def _variant_predictions(
    preds: dict[str, np.ndarray], variants: list[str], codes: np.ndarray, all_rows: np.ndarray
) -> dict[str, np.ndarray]:
    out = {}
    single = {"image_only": "image", "text_only": "text", "image_text": "image_text", "sam": "sam"}
    for v in variants:
        if v in single:
            out[v] = preds[single[v]]
        elif v == "clip_sam":
            out[v] = 0.5 * (preds["image_text"] + preds["sam"])
        else:  # per_roi_class: each vertex from the readout of its class's feature set
            p = np.empty_like(preds["sam"])
            for j, fs in enumerate(PER_ROI_SETS[:2]):
                p[:, codes == j] = preds[fs][:, codes == j]
            p[:, all_rows] = preds["all"]
            out[v] = p
    return out


def _scores(
    pred: np.ndarray, target: np.ndarray, nc: np.ndarray | None, n_lh: int, classes: dict[str, np.ndarray]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from berg.metrics import nnmc_score, noise_normalized_ev, pearson_r

    r = pearson_r(pred, target)
    per_vertex = {"r": r.astype(np.float32)}
    out: dict[str, Any] = {
        "mean_r": float(np.mean(r)),
        "mean_r_lh": float(np.mean(r[:n_lh])),
        "mean_r_rh": float(np.mean(r[n_lh:])),
    }
    if nc is not None:
        ev = noise_normalized_ev(r, nc)
        per_vertex["nnev"] = ev.astype(np.float32)
        out.update(
            {
                "nnmc": nnmc_score(r, nc),
                "nnmc_lh": nnmc_score(r[:n_lh], nc[:n_lh]),
                "nnmc_rh": nnmc_score(r[n_lh:], nc[n_lh:]),
                "nnmc_per_roi_class": {c: float(np.mean(ev[idx])) if idx.size else None for c, idx in classes.items()},
            }
        )
    return out, per_vertex


def build(
    data_dir: Path, out_dir: Path, *, options: dict[str, Any] | None = None, work_dir: Path | None = None
) -> dict[str, Any]:
    """The registry's creator: challenge data in ``data_dir`` -> berg-native artifact in ``out_dir``.

    Parameters
    ----------
    data_dir : path
        The Algonauts 2023 challenge data (``subj01`` ... ``subj08``), plus ``nsd_stim_info_merged.csv`` and
        COCO's ``annotations/`` for the caption variants (or the ``nsd_stim_info`` / ``coco_annotations`` options).
    out_dir : path
        Where the artifact goes (written beside it and renamed when complete).
    options : dict
        Keys of :data:`DEFAULTS`.
    work_dir : path, optional
        Folder that survives failed runs (``berg build`` passes one): feature caches resume there.

    Returns
    -------
    dict
        The scores written to ``algonauts_2023.json``.
    """
    from berg.subjects import subject_label
    from berg.training.solvers import fit_ridge_cv
    from berg.training.trainer import library_versions

    opts = _options(options)  # every option is checked before any file is read
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    work = Path(work_dir) if work_dir is not None else out_dir.parent / f".{out_dir.name}.build"
    variants = opts["variants"]
    sets = _feature_sets(variants)
    needed = {k for fs in sets for k in FEATURE_SETS[fs]}
    subjects = {s: challenge.read_subject(data_dir, s) for s in opts["subjects"]}  # all layouts checked first
    stim_info = Path(opts["nsd_stim_info"] or data_dir / "nsd_stim_info_merged.csv")
    annotations = Path(opts["coco_annotations"] or data_dir / "annotations")
    backbones = _Backbones(opts)
    fitted: dict[int, dict[str, Any]] = {}
    scores: dict[str, Any] = {}
    for s, sd in subjects.items():
        log.info(
            "subject %d: %d training images, %d + %d vertices",
            s,
            len(sd.train_images),
            sd.n_vertices["lh"],
            sd.n_vertices["rh"],
        )
        caps = (
            challenge.coco_captions(challenge.nsd_ids(sd.train_images), stim_info, annotations)
            if "text" in needed
            else None
        )
        feats = _subject_features(sd, sd.train_images, caps, "train", work, backbones, needed, opts)
        y = np.concatenate([sd.fmri("lh"), sd.fmri("rh")], axis=1).astype(np.float32)
        n_lh = sd.n_vertices["lh"]
        rois, classes = challenge.roi_indices(sd)
        masks = {c: np.isin(np.arange(y.shape[1]), idx) for c, idx in classes.items()}
        codes = per_roi_assignment(masks)
        all_rows = np.flatnonzero(codes == PER_ROI_SETS.index("all"))
        tr, va = challenge.devkit_split(len(sd.train_images), int(opts["split_seed"]), float(opts["train_percent"]))
        nc = sd.noise_ceiling()
        if nc is None:
            log.warning("subject %d: no test_split/noise_ceiling files; held-out scores are Pearson r only", s)
        preds, readouts, alphas = {}, {}, {}
        for fs in sets:
            cols = all_rows if fs == "all" else slice(None)
            target = y[:, cols]
            if target.shape[1] == 0:
                w = np.zeros((0, sum(feats[k].shape[1] for k in FEATURE_SETS[fs])), np.float32)
                readouts[fs], alphas[fs], preds[fs] = (w, np.zeros(0, np.float32)), np.zeros(0), np.zeros((len(va), 0))
                continue
            fit_kw = {"folds": int(opts["folds"]), "seed": int(opts["cv_seed"])}
            fit = fit_ridge_cv(_design(feats, fs, tr), target[tr], opts["alphas"], **fit_kw)
            preds[fs] = _design(feats, fs, va) @ fit.weight.T.astype(np.float64) + fit.bias
            if opts["refit_all"]:
                fit = fit_ridge_cv(_design(feats, fs), target, opts["alphas"], **fit_kw)
            readouts[fs], alphas[fs] = (fit.weight, fit.bias), fit.alphas
            log.info(
                "subject %d %s: ridge on %d features, median alpha %g",
                s,
                fs,
                fit.weight.shape[1],
                float(np.median(fit.alphas)),
            )
        vpred = _variant_predictions(preds, variants, codes, all_rows)
        subj_scores: dict[str, Any] = {"n_train": int(len(tr)), "n_held_out": int(len(va)), "held_out": {}}
        per_vertex: dict[str, np.ndarray] = {}
        for v, p in vpred.items():
            subj_scores["held_out"][v], pv = _scores(p, y[va], nc, n_lh, classes)
            per_vertex.update({f"accuracy/{v}/{k}": a for k, a in pv.items()})
        if opts["score_test"] and sd.has_test_fmri() and sd.test_images:
            tcaps = (
                challenge.coco_captions(challenge.nsd_ids(sd.test_images), stim_info, annotations)
                if "text" in needed
                else None
            )
            tfeats = _subject_features(sd, sd.test_images, tcaps, "test", work, backbones, needed, opts)
            ty = np.concatenate([sd.fmri("lh", "test"), sd.fmri("rh", "test")], axis=1)
            tpred = {fs: _design(tfeats, fs) @ w.T.astype(np.float64) + b for fs, (w, b) in readouts.items()}
            subj_scores["test"] = {
                v: _scores(p, ty, nc, n_lh, classes)[0]
                for v, p in _variant_predictions(tpred, variants, codes, all_rows).items()
            }
        scores[str(s)] = subj_scores
        fitted[s] = {
            "sd": sd,
            "readouts": readouts,
            "alphas": alphas,
            "rois": rois,
            "classes": classes,
            "codes": codes,
            "all_rows": all_rows,
            "per_vertex": per_vertex,
            "nc": nc,
        }
    summary = {v: _mean_over_subjects(scores, v) for v in variants}
    first = next(iter(fitted.values()))
    widths = {fs: int(first["readouts"][fs][0].shape[1]) for fs in sets}
    info = {
        "format_version": 1,
        "model_id": opts["model_id"],
        "variants": variants,
        "feature_sets": widths,
        "backbones": backbones.describe(),
        "backbone_weights": "pretrained" if opts["backbone_weights"] is None else str(opts["backbone_weights"]),
        "split": {
            "kind": "development kit split of the training images",
            "seed": int(opts["split_seed"]),
            "train_percent": float(opts["train_percent"]),
            "rule": "np.random.seed(seed); shuffle(arange(n)); "
            "first round(n * train_percent / 100) train, rest held out",
        },
        "ridge": {
            "alphas": list(map(float, opts["alphas"])),
            "folds": int(opts["folds"]),
            "cv": "Pearson r, per vertex",
            "refit_all": bool(opts["refit_all"]),
        },
        "metric": "NNMC: mean over vertices of min(100 * max(r, 0)^2 / NC, 100), NC from test_split/noise_ceiling",
        "scores": scores,
        "summary": summary,
        "report_nnmc": REPORT_NNMC,
    }
    _write(out_dir, opts, info, fitted, subject_label, library_versions(), data_dir)
    return info


def _mean_over_subjects(scores: dict[str, Any], variant: str) -> dict[str, float | None]:
    out = {}
    for key in ("nnmc", "mean_r"):
        vals = [sc["held_out"][variant].get(key) for sc in scores.values()]
        out[f"held_out_{key}"] = float(np.mean(vals)) if vals and None not in vals else None
    return out


def _write(
    out_dir: Path,
    opts: dict[str, Any],
    info: dict[str, Any],
    fitted: dict[int, dict[str, Any]],
    subject_label: Any,
    versions: dict[str, str],
    data_dir: Path,
) -> None:
    from berg.store.artifacts import ArtifactWriter

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with ArtifactWriter(out_dir, opts["model_id"]) as w:
        w.add_json(INFO_KEY, info)
        for s, f in fitted.items():
            sd, label = f["sd"], subject_label(s)
            for fs, (weight, bias) in f["readouts"].items():
                tensors = {"weight": np.ascontiguousarray(weight, np.float32), "bias": np.asarray(bias, np.float32)}
                if fs == "all":
                    tensors["rows"] = f["all_rows"].astype(np.int64)
                w.add_tensors(f"readout/{fs}/{label}.safetensors", tensors)
            arrays: dict[str, np.ndarray] = {f"vertices/{h}": sd.fsaverage_vertices[h] for h in challenge.HEMIS}
            arrays.update({f"roi/{k}": v for k, v in {**f["rois"], **f["classes"]}.items()})
            arrays["per_roi_class"] = f["codes"]
            arrays.update(f["per_vertex"])
            arrays.update({f"alpha/{fs}": np.asarray(a, np.float32) for fs, a in f["alphas"].items()})
            if f["nc"] is not None:
                arrays["noise_ceiling"] = f["nc"].astype(np.float32)
            w.add_tensors(f"metadata/{label}.safetensors", arrays)
            n = sd.n_vertices["lh"] + sd.n_vertices["rh"]
            w.add_json(
                f"metadata/{label}.json",
                {
                    "n_outputs": int(n),
                    "output_space": {
                        "kind": "surface",
                        "template": "fsaverage",
                        "hemispheres": list(challenge.HEMIS),
                        "n_vertices": {h: challenge.FSAVERAGE_VERTICES for h in challenge.HEMIS},
                    },
                    "rois": sorted(f["rois"]),
                    "roi_classes": {
                        c: sorted(n for lab, n in sd.roi_names[c].items() if lab) for c in challenge.ROI_CLASSES
                    },
                    "info": {
                        "n_vertices": dict(sd.n_vertices),
                        "n_train_images": len(sd.train_images),
                        "per_roi_class_codes": dict(enumerate(PER_ROI_SETS)),
                    },
                },
            )
        w.finalize(
            {
                "creator": "creation_code.algonauts_2023.build:build",
                "data": "Algonauts 2023 challenge data (subjNN/training_split, roi_masks, test_split/noise_ceiling) + "
                "NSD nsd_stim_info_merged.csv + COCO 2017 captions",
                "data_dir_name": data_dir.name,
                "options": {k: v for k, v in opts.items() if k not in ("show_progress", "model_id")},
                "versions": versions,
            }
        )
