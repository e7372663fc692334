"""Metrics and the creation pipeline on synthetic data with known ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from berg import metrics
from berg.training.synthetic import make_synthetic_dataset
from berg.training.trainer import TrainConfig, train

RECIPE = {
    "backbone": {"builder": "torchvision.models.resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1"},
    "nodes": ["avgpool"],
    "transform": {"kind": "image", "size": [48, 48], "resize": "squash", "crop": None,
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "projection": "scaler_pca", "readout": "linear", "output_space": "volume",
}


# --------------------------------------------------------------------------- metrics


def test_pearson_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((50, 7)), rng.standard_normal((50, 7))
    b[:, 0] = a[:, 0] * 2 + 1
    expected = [np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(7)]
    np.testing.assert_allclose(metrics.pearson_r(a, b), expected, atol=1e-12)
    assert metrics.pearson_r(np.ones((5, 1)), rng.standard_normal((5, 1)))[0] == 0


def test_noise_ceiling_formulas():
    snr = np.array([0.0, 1.0, 2.0])
    np.testing.assert_allclose(metrics.noise_ceiling(snr, 3), snr**2 / (snr**2 + 1 / 3))
    np.testing.assert_allclose(metrics.noise_ceiling_nsd(snr, 10, 0, 0), metrics.noise_ceiling(snr, 3))
    np.testing.assert_allclose(metrics.noise_ceiling_nsd(snr, 0, 0, 5), metrics.noise_ceiling(snr, 1))
    r = np.array([-0.5, 0.5, 0.9])
    ev = metrics.noise_normalized_ev(r, np.array([0.5, 0.5, 0.5]))
    np.testing.assert_allclose(ev, [0, 50, 100])
    assert metrics.nnmc_score(r, np.array([0.5, 0.5, 0.5])) == pytest.approx(50)
    np.testing.assert_allclose(metrics.spearman_brown(np.array([0.5])), [2 / 3])


def test_ncsnr_recovers_known_snr():
    rng = np.random.default_rng(1)
    n_stim, n_rep, n_out = 400, 4, 200
    s2, n2 = 1.0, rng.uniform(0.2, 4.0, n_out)
    signal = rng.standard_normal((n_stim, 1, n_out))
    x = signal + rng.standard_normal((n_stim, n_rep, n_out)) * np.sqrt(n2)
    x[::7, 3] = np.nan  # missing repeats are handled
    est = metrics.ncsnr(x)
    np.testing.assert_allclose(est, np.sqrt(s2 / n2), rtol=0.25)
    rel = metrics.split_half_reliability(x)
    assert np.corrcoef(rel, metrics.noise_ceiling(np.sqrt(s2 / n2), 2))[0, 1] > 0.9


# --------------------------------------------------------------------------- pipeline


def _cfg(tmp_path, data, **kw):
    base = dict(model_id="test-trained", dataset=str(data), recipe=RECIPE, out_dir=str(tmp_path / "out"),
                projection={"kind": "scaler_pca", "n_components": 6}, readout={"kind": "ols"},
                backbone_weights="untrained", seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def high_snr(tmp_path_factory):
    root = tmp_path_factory.mktemp("hisnr")
    truth = make_synthetic_dataset(root / "d.h5", RECIPE, n_train=120, n_test=40, k_true=6, grid=(8, 9, 8),
                                   snr_range=(200.0, 400.0), image_size=48)
    return root, truth


def test_trainer_recovers_true_readout(high_snr):
    root, truth = high_snr
    res = train(_cfg(root, truth.path))
    from berg.store.artifacts import read_tensors

    proj = read_tensors(res.artifact_dir / "projection.safetensors")
    ro = read_tensors(res.artifact_dir / "readout/sub-01.safetensors")
    effective = ro["weight"].astype(np.float64) @ proj["weight"].astype(np.float64)
    corr = np.corrcoef(effective.ravel(), truth.effective_weights[1].ravel())[0, 1]
    assert corr >= 0.99
    assert res.accuracy[1]["median_r"] > 0.95


def test_ridge_cv_matches_ols_at_high_snr(high_snr):
    root, truth = high_snr
    res = train(_cfg(root, truth.path, out_dir=str(root / "ridge"), readout={"kind": "ridge", "alphas": [1e-3, 1e-1, 10, 1e3], "folds": 4}))
    assert res.accuracy[1]["median_r"] > 0.95
    card = yaml.safe_load(res.card_path.read_text())
    assert card["accuracy"]["summary"][1]["median_r"] == pytest.approx(res.accuracy[1]["median_r"], abs=1e-4)


def test_noise_ceiling_estimates_and_oracle(tmp_path):
    truth = make_synthetic_dataset(tmp_path / "d.h5", RECIPE, n_train=60, n_test=200, n_repeats_test=4,
                                   k_true=5, grid=(10, 12, 10), snr_range=(0.2, 5.0), image_size=32)
    from berg.training.dataset import read_dataset

    ds = read_dataset(truth.path)
    test = ds.indices("test")
    resp = ds.subjects[1].responses[test]
    nc_est = metrics.noise_ceiling(metrics.ncsnr(resp), 4)
    nc_true = truth.noise_ceiling(1, 4)
    assert np.abs(nc_est - nc_true).mean() < 0.05
    assert np.corrcoef(nc_est, nc_true)[0, 1] > 0.9
    oracle = truth.features[test] @ truth.effective_weights[1].T + truth.effective_bias[1]
    r = metrics.pearson_r(oracle, np.nanmean(resp, axis=1))
    ev = metrics.noise_normalized_ev(r, nc_est)
    assert 85 < ev.mean() <= 100


def test_shuffled_responses_give_r_near_zero(tmp_path):
    truth = make_synthetic_dataset(tmp_path / "d.h5", RECIPE, n_train=80, n_test=80, k_true=5, grid=(8, 9, 8),
                                   snr_range=(50, 100), image_size=32, shuffle_responses=True)
    res = train(_cfg(tmp_path, truth.path, projection={"kind": "scaler_pca", "n_components": 5}))
    assert abs(res.accuracy[1]["mean_r"]) < 0.1


def test_features_come_from_the_inference_extractor(high_snr, monkeypatch):
    """Training and inference share one transform object: the trainer calls berg.transforms.from_recipe."""
    import berg.transforms

    root, truth = high_snr
    calls = []
    real = berg.transforms.from_recipe
    monkeypatch.setattr(berg.transforms, "from_recipe", lambda cfg, **kw: calls.append(cfg) or real(cfg, **kw))
    import berg.features

    monkeypatch.setattr(berg.features, "from_recipe", berg.transforms.from_recipe)
    train(_cfg(root, truth.path, out_dir=str(root / "spy"), feature_cache=str(root / "spy.h5")))
    assert calls and calls[0] == RECIPE["transform"]


def test_feature_cache_resumes(high_snr):
    import h5py

    from berg.training.dataset import read_dataset
    from berg.training.trainer import compute_features

    root, truth = high_snr
    cfg = _cfg(root, truth.path, feature_cache=str(root / "resume.h5"))
    ds = read_dataset(truth.path)
    full = np.asarray(compute_features(cfg, ds, root / "resume.h5"))
    with h5py.File(root / "resume.h5", "a") as f:
        f["done"][50:] = False
        f["features"][50:] = 0
    resumed = np.asarray(compute_features(cfg, ds, root / "resume.h5"))
    np.testing.assert_array_equal(resumed, full)


def test_end_to_end_train_export_s3_encode(high_snr, s3_server, tmp_path, monkeypatch):
    import berg
    from berg.training.dataset import read_dataset

    root, truth = high_snr
    cfg = _cfg(root, truth.path, out_dir=str(tmp_path / "e2e"),
               source={"kind": "s3", "bucket": "berg-trained", "prefix": "test-trained/"})
    res = train(cfg)
    s3_server.upload_tree(res.artifact_dir, "berg-trained", "test-trained/")
    monkeypatch.setenv("BERG_S3_ENDPOINT", s3_server.endpoint_url)
    client = berg.BERG(cache_dir=tmp_path / "cache", registry=res.registry_path)
    model = client.get_encoding_model("test-trained", subject=1, device="cpu", backbone_weights="untrained")
    ds = read_dataset(truth.path)
    out = client.encode(model, ds.stimuli[res.test_indices], show_progress=False)
    np.testing.assert_allclose(out, res.test_predictions[1], rtol=1e-5, atol=1e-5 * np.abs(res.test_predictions[1]).max())
    nii = model.to_nifti(out[0])
    assert nii.shape == (8, 9, 8)


def test_berg_train_cli(high_snr, tmp_path, capsys):
    from berg.cli import main

    root, truth = high_snr
    cfg = {"model_id": "cli-trained", "dataset": str(truth.path), "recipe": RECIPE, "out_dir": "out",
           "projection": {"kind": "scaler_pca", "n_components": 4}, "readout": {"kind": "ols"},
           "backbone_weights": "untrained"}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    assert "median r" in capsys.readouterr().out
    assert (tmp_path / "out" / "artifact" / "manifest.json").is_file()
    path.write_text(yaml.safe_dump({**cfg, "readout": {"kind": "lasso"}}))
    assert main(["train", str(path)]) == 2
