"""Write replicas of BERG's NSD-fsaverage and THINGS-EEG2 bucket folders, exactly as BERG writes them.

For tests and benchmarks (no network): the same file names, dict keys, nesting and dtypes as BERG's
creation code (its encoding-model training scripts), written the way BERG writes them —
``np.save`` of a Python dict (a pickled 0-d object array). For EEG, ``pca_param`` holds each historic
form: real pickled scikit-learn ``PCA`` objects per repetition (final), dicts of their attributes per
repetition, or one shared attribute dict (oldest). Only this *writer* uses scikit-learn; berg reads
the files with its restricted interpreter and never imports scikit-learn for it.

Two ways to make the numbers:

* ``fit=True`` (tests): a real ``StandardScaler`` -> ``PCA(k, random_state=...)`` -> ``LinearRegression``
  fitted on random features, as BERG's ``train_encoding.py`` does;
* ``fit=False`` (benchmark at full size: 460,800 features, 250 components, 2 x 163,842 vertices):
  random arrays of the right shapes and dtypes assigned as attributes (fitting would need the
  training set), generated in row blocks so the writer stays near one copy of the largest array.

:func:`berg_reference` runs BERG's own scikit-learn inference chain (scaler -> PCA -> float32 ->
LinearRegression -> float32, attributes assigned as BERG's loaders do) on the replica's arrays; the
tests require berg's outputs to equal it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHANNELS", "NSD_ROIS", "PREFIXES", "Replica", "berg_reference", "write_replica"]

PREFIXES = {
    ("nsd_fsaverage", b): f"encoding_models/modality-fmri/train_dataset-nsd_fsaverage/model-{b}/"
    for b in ("vit_b_32", "alexnet", "alexnet_untrained")
} | {
    ("things_eeg_2", b): f"encoding_models/modality-eeg/train_dataset-things_eeg_2/model-{b}/"
    for b in ("vit_b_32", "alexnet", "alexnet_untrained")
}
CHANNELS = (
    "Fp1 F3 F7 FT9 FC5 FC1 C3 T7 TP9 CP5 CP1 Pz P3 P7 O1 Oz O2 P4 P8 TP10 CP6 CP2 Cz C4 T8 FT10 FC6 "
    "FC2 F4 F8 Fp2 AF7 AF3 AFz F1 F5 FT7 FC3 FCz C1 C5 TP7 CP3 P1 P5 PO7 PO3 POz PO4 PO8 P6 P2 CPz "
    "CP4 TP8 C6 C2 FC4 FT8 F6 F2 AF4 AF8"
).split()
NSD_ROIS = [
    "V1v",
    "V1d",
    "V2v",
    "V2d",
    "V3v",
    "V3d",
    "hV4",
    "EBA",
    "FBA-1",
    "FBA-2",
    "mTL-bodies",
    "OFA",
    "FFA-1",
    "FFA-2",
    "mTL-faces",
    "aTL-faces",
    "OPA",
    "PPA",
    "RSC",
    "OWFA",
    "VWFA-1",
    "VWFA-2",
    "mfs-words",
    "mTL-words",
    "early",
    "midventral",
    "midlateral",
    "midparietal",
    "ventral",
    "lateral",
    "parietal",
    "nsdgeneral",
]
EEG_FORMS = ("objects", "attribute_dicts", "shared")
_PCA_ATTRS = (
    "components_",
    "explained_variance_",
    "explained_variance_ratio_",
    "singular_values_",
    "mean_",
    "n_components_",
    "n_samples_",
    "noise_variance_",
    "n_features_in_",
)


@dataclass
class Replica:
    """What was written, for the tests' expectations (arrays kept in memory when small)."""

    root: Path
    family: str
    backbone: str
    prefix: str
    subjects: tuple[int, ...]
    weights: dict[int, dict[str, Any]] = field(default_factory=dict)  # the dicts np.save wrote
    metadata: dict[int, dict[str, Any]] = field(default_factory=dict)
    form: str = "objects"

    def path(self, key: str) -> Path:
        return self.root / self.prefix / key


def _save(path: Path, obj: dict) -> None:
    """Exactly BERG's way: ``np.save`` of a dict (numpy pickles it as a 0-d object array)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, obj, allow_pickle=True)


def _scaler_param(scaler) -> dict[str, Any]:
    return {
        "scale_": scaler.scale_,
        "mean_": scaler.mean_,
        "var_": scaler.var_,
        "n_features_in_": scaler.n_features_in_,
        "n_samples_seen_": scaler.n_samples_seen_,
    }


def _pca_param(pca) -> dict[str, Any]:
    return {k: getattr(pca, k) for k in _PCA_ATTRS}


def _random_scaler(rng: np.random.Generator, n_features: int, n_samples: int):
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    scaler.mean_ = rng.standard_normal(n_features)
    scaler.var_ = rng.uniform(0.25, 4.0, n_features)
    scaler.scale_ = np.sqrt(scaler.var_)
    scaler.n_features_in_ = n_features
    scaler.n_samples_seen_ = np.int64(n_samples)
    return scaler


def _random_pca(rng: np.random.Generator, k: int, n_features: int, n_samples: int, seed: int):
    from sklearn.decomposition import PCA

    pca = PCA(n_components=k, random_state=seed)
    comps = np.empty((k, n_features), dtype=np.float32)
    for i in range(k):  # row blocks: no float64 copy of a 460 MB matrix
        comps[i] = rng.standard_normal(n_features, dtype=np.float32) / np.float32(np.sqrt(n_features))
    ev = np.sort(rng.uniform(0.5, 5.0, k))[::-1].astype(np.float32)
    pca.components_ = comps
    pca.explained_variance_ = ev
    pca.explained_variance_ratio_ = (ev / ev.sum() / 2).astype(np.float32)
    pca.singular_values_ = np.sqrt(ev * (n_samples - 1)).astype(np.float32)
    pca.mean_ = rng.standard_normal(n_features, dtype=np.float32) * np.float32(0.1)
    pca.n_components_ = k
    pca.n_samples_ = n_samples
    pca.noise_variance_ = np.float32(0.01)
    pca.n_features_in_ = n_features
    return pca


def _fit_chain(rng: np.random.Generator, n_features: int, k: int, n_targets: int, n_samples: int, seeds: list[int]):
    """BERG's training procedure on random data: scaler, one PCA per seed, least squares per PCA."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import StandardScaler

    x = (
        rng.standard_normal((n_samples, n_features)) * rng.uniform(0.5, 2, n_features) + rng.standard_normal(n_features)
    ).astype(np.float32)
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    pcas, regs = [], []
    for seed in seeds:
        pca = PCA(n_components=k, random_state=seed).fit(xs[rng.permutation(n_samples)])
        z = pca.transform(xs).astype(np.float32)
        y = z @ rng.standard_normal((k, n_targets)).astype(np.float32) + rng.standard_normal(n_targets)
        reg = LinearRegression().fit(z, y + 0.1 * rng.standard_normal(y.shape))
        pcas.append(pca)
        regs.append(
            {
                "coef_": reg.coef_.astype(np.float32),
                "intercept_": reg.intercept_.astype(np.float32),
                "n_features_in_": k,
            }
        )
    return scaler, pcas, regs


def _random_reg(rng: np.random.Generator, n_out: int, k: int) -> dict[str, Any]:
    coef = np.empty((n_out, k), dtype=np.float32)
    step = 1 << 16
    for a in range(0, n_out, step):
        coef[a : a + step] = rng.standard_normal((min(step, n_out - a), k), dtype=np.float32) / np.float32(np.sqrt(k))
    return {"coef_": coef, "intercept_": rng.standard_normal(n_out, dtype=np.float32), "n_features_in_": k}


def _nsd_metadata(rng: np.random.Generator, n_vertices: int, subject: int) -> dict[str, Any]:
    fmri: dict[str, Any] = {}
    for h in ("lh", "rh"):
        fmri[f"{h}_ncsnr"] = rng.uniform(0, 1.5, n_vertices).astype(np.float32)
        fmri[f"{h}_ncsnr_nsdsynthetic"] = rng.uniform(0, 1.5, n_vertices).astype(np.float32)
        rois = {}
        for j, name in enumerate(NSD_ROIS):
            size = 0 if name in ("mTL-bodies", "mTL-faces") else int(rng.integers(1, max(2, n_vertices // 8)))
            vec = np.zeros(n_vertices)
            vec[rng.choice(n_vertices, size, replace=False)] = 1
            where = np.where(vec == 1)  # what BERG's prepare script stores: np.where's tuple (or its array)
            rois[name] = where if j % 2 else where[0]
        fmri[f"{h}_fsaverage_rois"] = rois
    enc: dict[str, Any] = {
        "train_img_num": np.arange(90) + 100 * subject,
        "val_img_num": np.arange(5),
        "test_img_num": np.arange(5, 12),
    }
    for h in ("lh", "rh"):
        for split in ("nsdcore", "nsdsynthetic"):
            r = np.clip(rng.normal(0.3, 0.2, n_vertices), 0, None).astype(np.float32)
            nc = rng.uniform(0.2, 0.9, n_vertices).astype(np.float32)
            enc[f"{h}_correlation_{split}"] = r
            enc[f"{h}_r2_{split}"] = r**2
            enc[f"{h}_noise_ceiling_{split}"] = nc
            enc[f"{h}_explained_variance_{split}"] = np.minimum(100 * r**2 / nc, 100).astype(np.float32)
    return {"fmri": fmri, "encoding_models": enc}


def _eeg_metadata(rng: np.random.Generator, channels: list[str], n_times: int, n_reps: int) -> dict[str, Any]:
    times = np.round(np.arange(n_times) * 0.005 - 0.1, 3)
    concepts = [f"{i:05d}_concept" for i in range(20)]

    def info(n: int) -> dict[str, list[str]]:
        return {
            "train_img_concepts": concepts[:n],
            "train_img_concepts_THINGS": concepts[:n],
            "train_img_files": [f"{c}_01.jpg" for c in concepts[:n]],
        }

    test = {k.replace("train", "test"): v for k, v in info(8).items()}
    shape = (len(channels), n_times)
    return {
        "eeg": {
            "ch_names": list(channels),
            "times": times,
            "ncsnr": rng.uniform(0, 1, shape).astype(np.float32),
            "noise_ceiling": rng.uniform(0, 1, shape).astype(np.float32),
        },
        "encoding_models": {
            "correlation_averaged_repetitions": rng.uniform(-0.1, 0.6, shape).astype(np.float32),
            "correlation_single_repetitions": rng.uniform(-0.1, 0.5, (n_reps, *shape)).astype(np.float32),
            "train_img_info": info(20),
            "test_img_info": test,
        },
    }


def write_replica(
    root: str | Path,
    family: str,
    backbone: str = "vit_b_32",
    *,
    subjects=(1, 2),
    n_features: int = 64,
    n_components: int = 6,
    n_vertices: int = 40,
    channels: list[str] | None = None,
    n_times: int = 7,
    n_reps: int = 4,
    form: str = "objects",
    fit: bool = True,
    n_train: int = 30,
    seed: int = 0,
    keep_arrays: bool = True,
) -> Replica:
    """Write BERG's weights and metadata files of one model folder under ``root`` (a berg_dir).

    Parameters
    ----------
    root : path
        Bucket root; files go under ``root / PREFIXES[(family, backbone)]``.
    family : {"nsd_fsaverage", "things_eeg_2"}
    backbone : {"vit_b_32", "alexnet", "alexnet_untrained"}
    subjects : tuple of int
    n_features, n_components : int
        Feature width (460,800 ViT-B/32, 205,672 AlexNet) and PCA components (250).
    n_vertices : int
        Vertices per hemisphere (163,842 for fsaverage); NSD only.
    channels, n_times, n_reps : EEG only
        Channel names (default: the first 5 of BERG's 63), time points (140) and repetitions (4).
    form : {"objects", "attribute_dicts", "shared"}
        EEG ``pca_param`` form (see the module docstring).
    fit : bool
        Fit real scikit-learn objects (small sizes) or assign random attributes (full size).
    keep_arrays : bool
        Keep the written dicts in the returned :class:`Replica`.
    """
    if family not in ("nsd_fsaverage", "things_eeg_2"):
        raise ValueError(f"family {family!r}; valid: nsd_fsaverage, things_eeg_2")
    if form not in EEG_FORMS:
        raise ValueError(f"form {form!r}; valid: {', '.join(EEG_FORMS)}")
    prefix = PREFIXES[(family, backbone)]
    rep = Replica(Path(root), family, backbone, prefix, tuple(subjects), form=form)
    channels = list(channels or CHANNELS[:5])
    for s in subjects:
        s_seed = 20200220 + 1000 * s  # BERG's per-subject seed (EEG); PCA seeds seed + 10 * r
        rng = np.random.default_rng([seed, s])
        if family == "nsd_fsaverage":
            if fit:
                scaler, (pca,), (reg,) = _fit_chain(rng, n_features, n_components, 2 * n_vertices, n_train, [20200220])
                regs = [
                    {
                        "coef_": reg["coef_"][:n_vertices],
                        "intercept_": reg["intercept_"][:n_vertices],
                        "n_features_in_": n_components,
                    },
                    {
                        "coef_": reg["coef_"][n_vertices:],
                        "intercept_": reg["intercept_"][n_vertices:],
                        "n_features_in_": n_components,
                    },
                ]
            else:
                scaler = _random_scaler(rng, n_features, 9000)
                pca = _random_pca(rng, n_components, n_features, 9000, 20200220)
                regs = [_random_reg(rng, n_vertices, n_components) for _ in range(2)]
            weights = {
                "scaler_param": _scaler_param(scaler),
                "pca_param": _pca_param(pca),
                "lh_reg_param": regs[0],
                "rh_reg_param": regs[1],
            }
            meta = _nsd_metadata(rng, n_vertices, s)
        else:
            n_out = len(channels) * n_times
            seeds = [s_seed + 10 * r for r in range(1, n_reps + 1)]
            if form == "shared":
                seeds = seeds[:1]
            if fit:
                scaler, pcas, regs = _fit_chain(rng, n_features, n_components, n_out, n_train, seeds)
                if form == "shared":  # the oldest form: one PCA for all repetitions, readouts per repetition
                    regs = regs + [
                        _fit_extra_reg(rng, pcas[0], scaler, n_out, n_features, n_train) for _ in range(n_reps - 1)
                    ]
            else:
                scaler = _random_scaler(rng, n_features, 16540)
                pcas = [_random_pca(rng, n_components, n_features, 16540, sd) for sd in seeds]
                regs = [_random_reg(rng, n_out, n_components) for _ in range(n_reps)]
            if form == "objects":
                pca_param: Any = {f"rep-{r + 1}": pcas[r] for r in range(n_reps)}
            elif form == "attribute_dicts":
                pca_param = {f"rep-{r + 1}": _pca_param(pcas[r]) for r in range(n_reps)}
            else:
                pca_param = _pca_param(pcas[0])
            weights = {
                "scaler_param": _scaler_param(scaler),
                "pca_param": pca_param,
                "reg_param": {f"rep-{r + 1}": regs[r] for r in range(n_reps)},
            }
            meta = _eeg_metadata(rng, channels, n_times, n_reps)
        _save(rep.path(f"encoding_models_weights/weights_subject-{s:02d}.npy"), weights)
        _save(rep.path(f"metadata/metadata_subject-{s:02d}.npy"), meta)
        if keep_arrays:
            rep.weights[s], rep.metadata[s] = weights, meta
    return rep


def _fit_extra_reg(rng, pca, scaler, n_out, n_features, n_train) -> dict[str, Any]:
    x = rng.standard_normal((n_train, n_features)).astype(np.float32)
    z = pca.transform(scaler.transform(x)).astype(np.float32)
    coef = rng.standard_normal((n_out, z.shape[1])).astype(np.float32)
    return {"coef_": coef, "intercept_": rng.standard_normal(n_out).astype(np.float32), "n_features_in_": z.shape[1]}


def _rebuild(weights: dict[str, Any], pca_entry: Any):
    """BERG's loader: fresh sklearn objects with the stored attributes assigned."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    for k, v in weights["scaler_param"].items():
        setattr(scaler, k, v)
    if isinstance(pca_entry, PCA):
        return scaler, pca_entry  # the final EEG form: the pickled object itself
    pca = PCA(n_components=int(pca_entry["n_components_"]), random_state=20200220)
    for k, v in pca_entry.items():
        setattr(pca, k, v)
    return scaler, pca


def _linear(reg: dict[str, Any], rows: np.ndarray | None = None):
    from sklearn.linear_model import LinearRegression

    lr = LinearRegression()
    lr.coef_ = reg["coef_"] if rows is None else reg["coef_"][rows]
    lr.intercept_ = reg["intercept_"] if rows is None else reg["intercept_"][rows]
    lr.n_features_in_ = reg["n_features_in_"]
    return lr


def berg_reference(rep: Replica, subject: int, features: np.ndarray) -> np.ndarray:
    """BERG's own inference chain on ``features`` (n, F): NSD ``(n, n_lh + n_rh)``, EEG ``(n, 4, nC, nT)``."""
    weights = rep.weights[subject]
    x = np.asarray(features)
    if rep.family == "nsd_fsaverage":
        scaler, pca = _rebuild(weights, weights["pca_param"])
        z = pca.transform(scaler.transform(x)).astype(np.float32)
        lh = _linear(weights["lh_reg_param"]).predict(z).astype(np.float32)
        rh = _linear(weights["rh_reg_param"]).predict(z).astype(np.float32)
        return np.concatenate([lh, rh], axis=1)
    n_ch = len(rep.metadata[subject]["eeg"]["ch_names"])
    n_t = len(rep.metadata[subject]["eeg"]["times"])
    pca_param = weights["pca_param"]
    reps = sorted(weights["reg_param"])
    out = []
    for name in reps:
        entry = pca_param if "components_" in pca_param else pca_param[name]
        scaler, pca = _rebuild(weights, entry)
        z = pca.transform(scaler.transform(x)).astype(np.float32)
        y = _linear(weights["reg_param"][name]).predict(z).astype(np.float32)
        out.append(y.reshape(len(x), n_ch, n_t))
    return np.stack(out).swapaxes(0, 1).astype(np.float32)
