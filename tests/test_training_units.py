"""berg.training pieces without a backbone: solvers, config, dataset format and adapters, feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from berg.errors import InvalidParameterError
from berg.metrics import pearson_r
from berg.testing import linear_problem
from berg.training.bold5000 import bold5000_roi_dataset
from berg.training.config import TrainConfig
from berg.training.datasets import (
    EncodingDataset,
    SubjectData,
    read_dataset,
    trials_to_repeats,
    write_dataset,
)
from berg.training.solvers import fit_ols, fit_projection, fit_ridge_cv, kfold_assignment

RECIPE = {
    "backbone": {"builder": "torchvision.models.resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1"},
    "nodes": ["avgpool"],
    "transform": {"kind": "image", "size": [32, 32]},
    "projection": "scaler_pca",
}


# ------------------------------------------------------------------------------------- solvers


def test_projection_matches_sklearn_scaler_pca_and_svd():
    from sklearn.decomposition import PCA, TruncatedSVD
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = (
        rng.standard_normal((60, 8)) @ rng.standard_normal((8, 500))
        + rng.standard_normal((60, 500)) * 0.1
        + rng.uniform(-3, 3, 500)
    ).astype(np.float32)
    x[:, 7] = 2.0  # a constant column (scale -> 1, as scikit-learn)
    x = x.astype(np.float64)
    rows = np.arange(0, 60, 1)[:50]
    fit = fit_projection(x, rows, 6, kind="scaler_pca", col_block=64, dtype=np.float64)
    scaler = StandardScaler().fit(x[rows].astype(np.float64))
    pca = PCA(6).fit(scaler.transform(x[rows]))
    ours, ref = fit.transform_block(x[50:]), pca.transform(scaler.transform(x[50:]))
    # equal up to component signs (components are stored as float32)
    np.testing.assert_allclose(np.abs(ours), np.abs(ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fit.explained_variance, pca.explained_variance_, rtol=1e-8)
    svd = fit_projection(x, rows, 6, kind="svd", col_block=100, dtype=np.float64)
    tsvd = TruncatedSVD(6, algorithm="arpack").fit(x[rows].astype(np.float64))
    np.testing.assert_allclose(np.abs(svd.components @ tsvd.components_.T), np.eye(6), atol=1e-5)
    f32 = fit_projection(x, rows, 6, col_block=64)  # float32 blocks: same subspace
    np.testing.assert_allclose(np.abs(np.sum(f32.components * fit.components, axis=1)), 1, atol=1e-4)
    with pytest.raises(InvalidParameterError, match="n_components"):
        fit_projection(x, rows, 50)
    with pytest.raises(InvalidParameterError, match="valid"):
        fit_projection(x, rows, 3, kind="ica")


def test_projection_streams_from_hdf5(tmp_path):
    import h5py

    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 300)).astype(np.float32)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=(8, 32))
    rows = np.arange(40)[::2]
    with h5py.File(tmp_path / "f.h5", "r") as f:
        a = fit_projection(f["x"], rows, 5, col_block=32)
    b = fit_projection(x, rows, 5, col_block=300)
    np.testing.assert_allclose(a.components, b.components, atol=1e-4)


def test_ols_matches_sklearn_and_recovers_weights():
    from sklearn.linear_model import LinearRegression

    x, y, w = linear_problem(400, 20, 300, snr=1e4, seed=2, dtype=np.float64)
    y += 3.0
    fit = fit_ols(x, y, target_batch=128)
    weight, bias = fit.weight, fit.bias
    ref = LinearRegression().fit(x, y)
    np.testing.assert_allclose(weight, ref.coef_, atol=1e-4)
    np.testing.assert_allclose(bias, ref.intercept_, atol=1e-4)
    assert np.corrcoef(weight.ravel(), w.ravel())[0, 1] > 0.999


def test_ridge_cv_matches_bruteforce_sklearn():
    from sklearn.linear_model import Ridge

    x, y, _ = linear_problem(150, 12, 40, snr=0.3, seed=3, dtype=np.float64)
    grid = [0.1, 10.0, 100.0, 1000.0, 1e5]
    fit = fit_ridge_cv(x, y, grid, folds=4, seed=1, target_batch=16)
    folds = kfold_assignment(150, 4, 1)
    scores = np.zeros((len(grid), 40))
    for f in range(4):
        for i, a in enumerate(grid):
            m = Ridge(alpha=a).fit(x[folds != f], y[folds != f])
            scores[i] += pearson_r(m.predict(x[folds == f]), y[folds == f]) / 4
    np.testing.assert_allclose(fit.cv_scores, scores, atol=1e-5)
    np.testing.assert_array_equal(fit.alphas, np.asarray(grid)[scores.argmax(axis=0)])
    assert len(set(fit.alphas)) > 1  # per-output choice really differs here
    for j in (0, 7, 39):
        m = Ridge(alpha=fit.alphas[j]).fit(x, y[:, j])
        np.testing.assert_allclose(fit.weight[j], m.coef_, atol=1e-5)
        assert fit.bias[j] == pytest.approx(m.intercept_, abs=1e-5)
    with pytest.raises(InvalidParameterError):
        fit_ridge_cv(x, y, [-1.0])
    with pytest.raises(InvalidParameterError):
        fit_ridge_cv(x, y, [1.0], folds=1)


def test_ridge_shrinks_noise_outputs_more():
    x, y, _ = linear_problem(200, 10, 20, snr=50, seed=4, dtype=np.float64)
    y[:, 10:] = np.random.default_rng(5).standard_normal((200, 10))  # pure noise outputs
    fit = fit_ridge_cv(x, y, np.logspace(-2, 6, 9))
    assert np.median(fit.alphas[10:]) > 100 * np.median(fit.alphas[:10])


# -------------------------------------------------------------------------------------- config


def _cfg_dict(**kw):
    base = {
        "model_id": "m",
        "dataset": "d.h5",
        "recipe": RECIPE,
        "out_dir": "out",
        "projection": {"kind": "scaler_pca", "n_components": 5},
        "readout": {"kind": "ridge"},
    }
    base.update(kw)
    return base


def test_config_validation_and_hash(tmp_path):
    cfg = TrainConfig.from_dict(_cfg_dict(), base_dir=tmp_path)
    assert cfg.dataset == str(tmp_path / "d.h5") and cfg.readout["folds"] == 5 and len(cfg.readout["alphas"]) == 10
    moved = TrainConfig.from_dict(_cfg_dict(), base_dir=tmp_path / "elsewhere")
    assert moved.digest() == cfg.digest()  # paths do not change the hash
    assert TrainConfig.from_dict(_cfg_dict(seed=1)).digest() != cfg.digest()
    bad = [
        ({"readot": {}}, "did you mean"),
        ({"readout": {"kind": "lasso"}}, "valid"),
        ({"readout": {"kind": "ridge", "alphas": [0]}}, "positive"),
        ({"projection": {"kind": "scaler_pca"}}, "n_components"),
        ({"projection": {"kind": "pca", "n_components": 3}}, "recipe.projection"),
        ({"projection": {"kind": "scaler_pca", "n_components": 3, "k": 2}}, "unknown projection"),
        ({"model_id": "Bad Id"}, "model_id"),
    ]
    for change, match in bad:
        with pytest.raises(InvalidParameterError, match=match):
            TrainConfig.from_dict(_cfg_dict(**change))
    # BERG's StandardScaler -> TruncatedSVD recipe may be trained as scaler_pca (same subspace)
    TrainConfig.from_dict(_cfg_dict(recipe={**RECIPE, "projection": "scaler_svd"}))
    path = tmp_path / "c.yaml"
    path.write_text("model_id: a\nmodel_id: b\n")
    with pytest.raises(Exception, match="duplicate"):
        TrainConfig.from_yaml(path)
    cfg.dump(tmp_path / "back.yaml")
    assert yaml.safe_load((tmp_path / "back.yaml").read_text())["projection"]["n_components"] == 5


# ------------------------------------------------------------------------------------- datasets


def _tiny_dataset(n=10, reps=3, m=6):
    rng = np.random.default_rng(0)
    resp = rng.standard_normal((n, reps, m)).astype(np.float32)
    resp[0, 2] = np.nan
    return EncodingDataset(
        name="tiny",
        kind="image",
        stimuli=rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8),
        ids=[f"s{i}" for i in range(n)],
        split=np.array(["train"] * (n - 3) + ["test"] * 3),
        subjects={
            1: SubjectData(resp, np.argwhere(np.ones((2, 3, 1), bool)).astype(np.int32), {"a": np.array([0, 5])}),
            "grp": SubjectData(resp[..., :2]),
        },
        grid_shape=(2, 3, 1),
        affine=np.eye(4),
    )


def test_dataset_roundtrip_lazy(tmp_path, monkeypatch):
    import berg.training.datasets as dsmod

    ds = _tiny_dataset()
    write_dataset(tmp_path / "d.h5", ds)
    back = read_dataset(tmp_path / "d.h5")
    assert back.ids == ds.ids and back.grid_shape == (2, 3, 1) and len(back.checksum) == 64
    assert set(back.subjects) == {1, "grp"}
    lazy = back.subjects[1].responses
    assert not isinstance(lazy, np.ndarray) and lazy.shape == (10, 3, 6)
    monkeypatch.setattr(dsmod, "_ROW_BLOCK", 3)  # several row blocks, unsorted fancy index
    rows = np.array([9, 0, 4, 5])
    np.testing.assert_array_equal(lazy[rows], ds.subjects[1].responses[rows])
    np.testing.assert_array_equal(lazy[2:4, 1], ds.subjects[1].responses[2:4, 1])
    np.testing.assert_array_equal(np.asarray(lazy), ds.subjects[1].responses)
    np.testing.assert_array_equal(back.subjects[1].rois["a"], [0, 5])
    np.testing.assert_array_equal(back.indices("test"), [7, 8, 9])
    with pytest.raises(InvalidParameterError, match="splits present"):
        back.indices("val")


def test_dataset_validation(tmp_path):
    ds = _tiny_dataset()
    with pytest.raises(InvalidParameterError, match="n_stimuli"):
        EncodingDataset("x", "image", ds.stimuli, ds.ids, ds.split, {1: SubjectData(np.zeros((3, 1, 2)))})
    with pytest.raises(InvalidParameterError, match="ROI"):
        EncodingDataset(
            "x",
            "image",
            ds.stimuli,
            ds.ids,
            ds.split,
            {1: SubjectData(np.zeros((10, 1, 2)), rois={"v1": np.array([2])})},
        )
    with pytest.raises(InvalidParameterError, match="kind"):
        EncodingDataset("x", "audio", ds.stimuli, ds.ids, ds.split, {1: SubjectData(np.zeros((10, 1, 2)))})
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(InvalidParameterError, match="HDF5"):
        read_dataset(tmp_path / "bad.h5")
    with pytest.raises(InvalidParameterError, match="not found"):
        read_dataset(tmp_path / "missing.h5")


def test_trials_to_repeats():
    trials = ["b", "a", "b", "c", "b", "a"]
    resp = np.arange(12, dtype=np.float32).reshape(6, 2)
    ids, out = trials_to_repeats(trials, resp)
    assert ids == ["b", "a", "c"] and out.shape == (3, 3, 2)
    np.testing.assert_array_equal(out[0], resp[[0, 2, 4]])
    np.testing.assert_array_equal(out[1, :2], resp[[1, 5]])
    assert np.isnan(out[1, 2]).all() and np.isnan(out[2, 1:]).all()
    ids, out = trials_to_repeats(trials, resp, max_repeats=2)
    assert out.shape == (3, 2, 2)
    with pytest.raises(InvalidParameterError):
        trials_to_repeats(trials, resp[:3])


def test_bold5000_adapter_on_files_in_the_documented_layout(tmp_path):
    import scipy.io
    from PIL import Image

    rng = np.random.default_rng(0)
    names = ["img1.jpg", "img2.JPEG", "img1.jpg", "img3.jpg", "img1.jpg", "img2.JPEG"]
    scipy.io.savemat(
        tmp_path / "CSI1_ROIs_TR34.mat", {"LHPPA": rng.standard_normal((6, 4)), "RHLOC": rng.standard_normal((6, 3))}
    )
    (tmp_path / "CSI01_stim_lists.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "img" / "COCO").mkdir(parents=True)
    for n in set(names):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
            tmp_path / "img" / "COCO" / n, format="JPEG"
        )
    ds = bold5000_roi_dataset(tmp_path / "CSI1_ROIs_TR34.mat", tmp_path / "CSI01_stim_lists.txt", tmp_path / "img", 1)
    assert ds.ids == ["img1.jpg", "img2.JPEG", "img3.jpg"]
    assert ds.subjects[1].responses.shape == (3, 3, 7)
    assert list(ds.split) == ["test", "test", "train"]
    np.testing.assert_array_equal(ds.subjects[1].rois["RHLOC"], [0, 1, 2])  # BOLD5000_ROIS order
    np.testing.assert_array_equal(ds.subjects[1].rois["LHPPA"], [3, 4, 5, 6])
    write_dataset(tmp_path / "b.h5", ds)  # paths are a valid stimulus source
    assert read_dataset(tmp_path / "b.h5").stimuli[0].endswith("img1.jpg")
