"""img2fmri's spatial pipeline (berg.models.bold5000_resnet18.mni) against the real published files.

Uses img2fmri 1.0's wheel (pinned sha256, cached in ``$BERG_TEST_CACHE`` or ``~/.cache/berg-test``)
and img2fmri v0.2's published AFNI/FSL outputs in ../shared/data/img2fmri. No ResNet weights needed.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import berg
from berg.models.bold5000_resnet18 import mni

TEST_CACHE = Path(os.environ.get("BERG_TEST_CACHE", Path.home() / ".cache" / "berg-test"))
MODEL_ID = "fmri-bold5000-resnet18"
ROIS = ("EarlyVis", "OPA", "LOC", "RSC", "PPA")
#: bump when nn_index_map changes, so the cached maps are recomputed
MAP_VERSION = 1


@pytest.fixture(scope="session")
def wheel() -> Path:
    from berg.registry import Registry
    from berg.store import Store
    from berg.store.sources import source_for

    try:
        return source_for(Registry().get(MODEL_ID).source).wheel_path(Store(cache_dir=TEST_CACHE))
    except berg.BERGError as exc:  # pragma: no cover - only offline without a cached wheel
        pytest.skip(f"img2fmri wheel unavailable: {exc}")


@pytest.fixture(scope="session")
def der(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("img2fmri-wheel")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(root, [n for n in z.namelist() if n.startswith(("img2fmri/derivatives/", "img2fmri/models/"))])
    return root / "img2fmri" / "derivatives"


def _load(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def _mask(der: Path, s: int, hemi_roi: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(der / "bool_masks" / f"derivatives_spm_sub-CSI{s}_sub-CSI{s}_mask-{hemi_roi}.nii.gz"))
    return np.asarray(img.dataobj) > 0, img.affine


@pytest.fixture(scope="session")
def nn_maps(wheel, der) -> dict[int, np.ndarray]:
    """NN index maps (fslpy, ~20 s), cached by wheel hash + MAP_VERSION."""
    import hashlib

    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()[:12]
    cache = TEST_CACHE / f"img2fmri-nnmap-{digest}-v{MAP_VERSION}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return {s: z[f"sub{s}"] for s in (1, 2, 3)}
    maps = {}
    for s in (1, 2, 3):
        mask, affine = _mask(der, s, "LHEarlyVis")
        maps[s] = mni.nn_index_map(
            coeff=der / f"sub{s}.anat" / "T1_to_MNI_nonlin_coeff.nii.gz",
            ref=der / f"sub{s}.anat" / "T1_to_MNI_nonlin.nii.gz",
            t1=der / "T1" / f"sub-CSI{s}_ses-16_anat_sub-CSI{s}_ses-16_T1w.nii.gz",
            premat=der / f"sub{s}.anat" / "T1_nonroi2roi.mat",
            func_shape=mask.shape,
            func_affine=affine,
        )
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **{f"sub{s}": m for s, m in maps.items()})
    os.replace(tmp, cache)
    return maps


@pytest.fixture(scope="session")
def subjects(der, nn_maps):
    """Per subject: (SubjectGeometry, readout weight (n, 512), bias (n,)) in img2fmri's row order."""
    from berg.store.legacy import StateOnly, safe_unpickle

    out = {}
    for s in (1, 2, 3):
        blocks, masks, weights, biases, start = [], {}, [], [], 0
        for roi in ROIS:
            data = (der.parent / "models" / f"subj{s}_{roi}_model.pkl").read_bytes()
            state = safe_unpickle(data, extra_globals={("sklearn.linear_model._ridge", "Ridge"): StateOnly}).state
            weights.append(np.asarray(state["coef_"], dtype=np.float32))
            biases.append(np.asarray(state["intercept_"], dtype=np.float32))
            for hemi in ("LH", "RH"):
                mask, _ = _mask(der, s, hemi + roi)
                masks[hemi + roi] = np.flatnonzero(mask)
                blocks.append((roi, hemi, start, start + int(mask.sum())))
                start += int(mask.sum())
        nn = nn_maps[s]
        roi_vox = np.unique(np.concatenate(list(masks.values())))
        fed = np.flatnonzero(np.isin(nn, roi_vox))
        overlap = {}
        for key in masks:
            sm = _load(der / "s_bool_masks" / f"s_sub{s}_{key}_MNI.nii.gz").astype(np.float64).reshape(-1)
            overlap[key] = np.flatnonzero(sm > sm.max() * mni.OVERLAP_THRESHOLD)
        geo = mni.SubjectGeometry(mask.shape, blocks, masks, fed, nn[fed], overlap)
        out[s] = (geo, np.concatenate(weights), np.concatenate(biases))
    return out


# ------------------------------------------------------------------------------------------ tests
def test_round_half_up_is_not_bankers_rounding():
    np.testing.assert_array_equal(mni.round_half_up([-0.5, 0.5, 1.5, 2.5, 2.4999]), [0, 1, 2, 3, 2])


def test_nn_map_reproduces_all_30_shipped_mni_masks(der, nn_maps):
    for s, nn in nn_maps.items():
        lost = []
        for roi in ROIS:
            for hemi in ("LH", "RH"):
                func, _ = _mask(der, s, hemi + roi)
                ours = np.where(nn >= 0, func.reshape(-1)[np.clip(nn, 0, None)], False)
                shipped = _load(der / "mni_bool_masks" / f"sub{s}_{hemi}{roi}_MNI.nii.gz").reshape(-1)
                assert set(np.unique(shipped)) <= {0, 1}
                assert np.array_equal(ours, shipped > 0), f"sub{s} {hemi}{roi}"
                lost.append(1 - np.isin(np.flatnonzero(func), nn).mean())
        assert 0.0 < np.mean(lost) < 0.2  # the documented ~7 % nearest-neighbour loss


def test_smoothing_reproduces_s_bool_masks_and_sparse_form_matches(der):
    worst = 0.0
    for s in (1, 2, 3):
        for roi in ROIS:
            for hemi in ("LH", "RH"):
                m = _load(der / "mni_bool_masks" / f"sub{s}_{hemi}{roi}_MNI.nii.gz").astype(np.float64)
                sm = _load(der / "s_bool_masks" / f"s_sub{s}_{hemi}{roi}_MNI.nii.gz").astype(np.float64)
                worst = max(worst, float(np.abs(mni.fsl_smooth(m, 1.0) - sm).max()))
    assert worst < 1e-6
    # the sparse operator is the same filter, including the renormalisation at the grid's faces
    rng = np.random.default_rng(1)
    src = np.unique(np.concatenate([rng.integers(0, np.prod(mni.MNI_SHAPE), 300), [0, np.prod(mni.MNI_SHAPE) - 1]]))
    vals = rng.normal(size=src.size)
    vol = np.zeros(int(np.prod(mni.MNI_SHAPE)))
    vol[src] = vals
    for sigma in (1.0, 1.25, 3.0):
        dense = mni.fsl_smooth(vol.reshape(mni.MNI_SHAPE), sigma).reshape(-1)
        np.testing.assert_allclose(mni.smoothing_matrix(src, sigma) @ vals, dense, atol=1e-12)
    with pytest.raises(berg.InvalidParameterError, match="sigma"):
        mni.gaussian_kernel(0)


def test_overlap_from_own_pipeline_matches_shipped_union(der, nn_maps):
    """v1.0 support recomputed from masks -> NN map -> sigma 1 smoothing equals img2fmri's all-ROI overlap."""
    union = np.zeros(int(np.prod(mni.MNI_SHAPE)), dtype=bool)
    for s, nn in nn_maps.items():
        for roi in ROIS:
            for hemi in ("LH", "RH"):
                func, _ = _mask(der, s, hemi + roi)
                m = np.where(nn >= 0, func.reshape(-1)[np.clip(nn, 0, None)], False).astype(np.float64)
                sm = mni.fsl_smooth(m.reshape(mni.MNI_SHAPE), 1.0).reshape(-1)
                union |= sm > sm.max() * mni.OVERLAP_THRESHOLD
    shipped = _load(der / "s_bool_masks" / "smoothed_overlap_allrois.nii.gz").reshape(-1)
    assert np.array_equal(union, shipped == 1)


def test_placement_is_img2fmris_sequential_nanmean():
    rng = np.random.default_rng(2)
    n_vox = 50
    blocks = [
        (np.arange(0, 10), rng.choice(n_vox, 10, replace=False)),
        (np.arange(10, 25), rng.choice(n_vox, 15, replace=False)),
        (np.arange(25, 45), rng.choice(n_vox, 20, replace=False)),
    ]
    pred = rng.normal(size=45)
    brain = np.full(n_vox, np.nan)
    for rows, vox in blocks:  # img2fmri: brain[mask] = nanmean([brain[mask], pred])
        brain[vox] = np.nanmean(np.stack([brain[vox], pred[rows]]), axis=0)
    np.testing.assert_allclose(mni.placement_matrix(blocks, n_vox, 45) @ pred, np.nan_to_num(brain), atol=1e-12)


def _direct_group(subjects, preds, roi_list, sigma, voxel_order, support):
    """img2fmri's steps written out on full volumes (NaN writes, NN copy, dense smoothing, z-scores)."""
    maps = {}
    for s, (geo, _, _) in subjects.items():
        out = []
        for p in preds[s]:
            brain = np.full(int(np.prod(geo.func_shape)), np.nan)
            for roi in roi_list:
                for name, hemi, a, b in geo.blocks:
                    if name == roi:
                        m = np.zeros(brain.size, bool)
                        m[geo.masks[hemi + roi]] = True
                        vox = mni.mask_voxels(m.reshape(geo.func_shape), voxel_order)
                        brain[vox] = np.nanmean(np.stack([brain[vox], p[a:b]]), axis=0)
            vol = np.zeros(int(np.prod(mni.MNI_SHAPE)))
            vol[geo.mni_index] = np.nan_to_num(brain)[geo.func_index]
            out.append(mni.fsl_smooth(vol.reshape(mni.MNI_SHAPE), sigma).reshape(-1)[support])
        maps[s] = np.array(out)
    total = sum(mni.zscore(m, axis=1) for m in maps.values())
    return mni.zscore(total, axis=1)


@pytest.mark.parametrize(
    "voxel_order,support,roi_list", [("c", "v1.0", ["PPA", "EarlyVis", "LOC"]), ("fortran", "v0.2", list(ROIS))]
)
def test_group_mapper_equals_direct_pipeline(subjects, voxel_order, support, roi_list):
    rng = np.random.default_rng(3)
    geo = {s: g for s, (g, _, _) in subjects.items()}
    rows = {s: np.arange(w.shape[0]) for s, (_, w, _) in subjects.items()}
    gm = mni.GroupMapper(geo, rows, roi_list=roi_list, sigma=1.25, voxel_order=voxel_order, support=support)
    preds = {s: rng.normal(size=(2, rows[s].size)) for s in geo}
    out = gm(preds)
    assert out.dtype == np.float32 and out.shape == (2, gm.n_outputs)
    np.testing.assert_allclose(out, _direct_group(subjects, preds, roi_list, 1.25, voxel_order, gm.support), atol=2e-5)
    np.testing.assert_allclose(out.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=1), 1, atol=1e-4)
    if support == "v1.0":
        union = np.unique(
            np.concatenate([g.overlap[h + r] for g in geo.values() for r in roi_list for h in ("LH", "RH")])
        )
        np.testing.assert_array_equal(gm.support, union)
    # a selection that lacks a requested ROI's rows is refused with a clear error
    with pytest.raises(berg.InvalidParameterError, match="not among the loaded outputs"):
        mni.GroupMapper(geo, {s: r[:10] for s, r in rows.items()}, roi_list=roi_list)


def test_published_v02_outputs_are_reproduced_by_least_squares(subjects, img2fmri_data):
    """v0.2's real AFNI/FSL maps are linear in the unknown features per subject (plus offsets).

    Columns: each subject's readout weights (512) and bias pushed through the whole spatial pipeline,
    plus a constant; the fit absorbs the unknown features, the per-subject z-score scales and offsets.
    """
    import nibabel as nib
    import scipy.linalg

    refs = [
        np.asarray(nib.load(str(p)).dataobj, dtype=np.float64).reshape(-1)
        for p in sorted(img2fmri_data.glob("*.v0.2-output.nii.gz"))
    ]
    assert len(refs) == 4
    geo = {s: g for s, (g, _, _) in subjects.items()}
    rows = {s: np.arange(w.shape[0]) for s, (_, w, _) in subjects.items()}
    residuals = {}
    for order in ("c", "fortran"):
        gm = mni.GroupMapper(
            geo, rows, roi_list=["EarlyVis", "OPA", "LOC", "RSC"], sigma=1.25, voxel_order=order, support="v0.2"
        )
        for g in refs:  # v0.2 semantics: the support is every voxel some subject's smoothed map reaches
            np.testing.assert_array_equal(np.flatnonzero(g != 0), gm.support)
        cols = [
            gm.operators[s] @ np.concatenate([w, b[:, None]], axis=1).astype(np.float64)
            for s, (_, w, b) in subjects.items()
        ]
        X = np.concatenate(cols + [np.ones((gm.n_outputs, 1))], axis=1)
        Y = np.stack([g[gm.support] for g in refs], axis=1)
        # Fit on a random 5000 of the ~41500 support voxels (3x the 1540 unknowns; a full-size
        # least-squares solve takes minutes on 2 cores), then measure the residual on the whole support:
        # an exact linear model predicts the held-out voxels too, a wrong one cannot.
        fit = np.random.default_rng(4).choice(gm.n_outputs, 5000, replace=False)
        coef, *_ = scipy.linalg.lstsq(X[fit], Y[fit], lapack_driver="gelsy")
        residuals[order] = np.linalg.norm(X @ coef - Y, axis=0) / np.linalg.norm(Y, axis=0)
    assert residuals["c"].max() <= 1e-5, residuals
    assert residuals["fortran"].min() > 1e-2, residuals
