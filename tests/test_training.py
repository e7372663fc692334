"""The creation pipeline on synthetic data with known ground truth (tiny untrained ResNet-18)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from berg import metrics
from berg.testing import make_synthetic_dataset, resnet18_recipe
from berg.training.config import TrainConfig
from berg.training.datasets import read_dataset
from berg.training.trainer import compute_features, train

RECIPE = resnet18_recipe(size=48, projection="scaler_pca", output_space="volume")


def _cfg(root, data, **kw):
    base = dict(
        model_id="test-trained",
        dataset=str(data),
        recipe=RECIPE,
        out_dir=str(root / "out"),
        projection={"kind": "scaler_pca", "n_components": 6},
        readout={"kind": "ols"},
        backbone_weights="untrained",
        seed=0,
        feature_cache=str(root / "features.h5"),
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def high_snr(tmp_path_factory):
    root = tmp_path_factory.mktemp("hisnr")
    truth = make_synthetic_dataset(
        root / "d.h5",
        RECIPE,
        n_train=120,
        n_test=40,
        k_true=6,
        grid=(8, 9, 8),
        snr_range=(200.0, 400.0),
        image_size=48,
        subjects=(1, 2),
    )
    return root, truth


@pytest.fixture(scope="module")
def trained(high_snr):
    root, truth = high_snr
    return train(_cfg(root, truth.path), show_progress=False)


def test_trainer_recovers_true_readout(high_snr, trained):
    from berg.store.artifacts import read_tensors

    root, truth = high_snr
    proj = read_tensors(trained.artifact_dir / "projection.safetensors")
    for s in (1, 2):
        ro = read_tensors(trained.artifact_dir / f"readout/sub-{s:02d}.safetensors")
        effective = ro["weight"].astype(np.float64) @ proj["weight"].astype(np.float64)
        corr = np.corrcoef(effective.ravel(), truth.effective_weights[s].ravel())[0, 1]
        assert corr >= 0.99
        assert trained.accuracy[s]["median_r"] > 0.95
        assert trained.accuracy[s]["mean_nc_normalized_ev"] > 90


def test_exported_artifact_card_and_registry(high_snr, trained):
    from berg.cards import Card

    manifest = json.loads((trained.artifact_dir / "manifest.json").read_text())
    prov = manifest["provenance"]
    assert prov["config_sha256"] == _cfg(*high_snr[:1], high_snr[1].path).digest()
    assert prov["dataset"]["sha256"] == read_dataset(high_snr[1].path).checksum
    assert {"numpy", "torch", "berg"} <= set(prov["versions"]) and prov["seeds"]["seed"] == 0
    keys = set(manifest["files"])
    assert {
        "projection.safetensors",
        "readout/sub-01.safetensors",
        "metadata/sub-02.json",
        "metadata/sub-01.safetensors",
        "plots/sub-01_hist.png",
        "plots/sub-01_rois.png",
        "plots/sub-01_r_map.png",
    } <= keys
    meta = json.loads((trained.artifact_dir / "metadata/sub-01.json").read_text())
    assert meta["output_space"]["kind"] == "volume" and meta["output_space"]["shape"] == [8, 9, 8]
    card = yaml.safe_load(trained.card_path.read_text())
    assert Card(card).validate() == []
    summary = card["accuracy"]["summary"][1]
    for key in ("median_r", "mean_r", "mean_noise_ceiling", "mean_nc_normalized_ev", "nnmc"):
        assert summary[key] == pytest.approx(trained.accuracy[1][key], abs=1e-4)
    assert set(card["accuracy"]["per_roi"][1]) == set(read_dataset(high_snr[1].path).subjects[1].rois)
    assert yaml.safe_load(trained.card_fragment_path.read_text())["accuracy"] == card["accuracy"]
    entry = yaml.safe_load(trained.registry_path.read_text())["models"]["test-trained"]
    assert entry["layout"] == "native" and entry["subjects"] == [1, 2] and entry["recipe"]["projection"] == "scaler_pca"


def test_ridge_cv_pipeline_and_alpha_metadata(high_snr, tmp_path):
    from berg.store.artifacts import read_tensors

    root, truth = high_snr
    res = train(
        _cfg(
            root,
            truth.path,
            out_dir=str(tmp_path / "ridge"),
            subjects=[2],
            readout={"kind": "ridge", "alphas": [1e-3, 1e-1, 10, 1e3], "folds": 4},
        ),
        show_progress=False,
    )
    assert list(res.accuracy) == [2] and res.accuracy[2]["median_r"] > 0.95
    meta = read_tensors(res.artifact_dir / "metadata/sub-02.safetensors")
    grid = np.array([1e-3, 1e-1, 10, 1e3], dtype=np.float32)
    assert np.isin(meta["accuracy/ridge_alpha"], grid).all()
    assert meta["accuracy/correlation"].shape == (truth.effective_weights[2].shape[0],)


def test_noise_ceiling_estimates_and_oracle(tmp_path):
    truth = make_synthetic_dataset(
        tmp_path / "d.h5",
        RECIPE,
        n_train=60,
        n_test=200,
        n_repeats_test=4,
        k_true=5,
        grid=(10, 12, 10),
        snr_range=(0.2, 5.0),
        image_size=32,
    )
    ds = read_dataset(truth.path)
    test = ds.indices("test")
    resp = ds.subjects[1].responses[test]
    nc_est = metrics.noise_ceiling(metrics.ncsnr(resp), 4)
    nc_true = truth.noise_ceiling(1, 4)
    assert np.abs(nc_est - nc_true).mean() < 0.05  # per-output SE here is ~0.03-0.05
    assert abs(np.mean(nc_est - nc_true)) < 0.02
    assert np.corrcoef(nc_est, nc_true)[0, 1] > 0.95
    oracle = truth.features[test] @ truth.effective_weights[1].T + truth.effective_bias[1]
    r = metrics.pearson_r(oracle, np.nanmean(resp, axis=1))
    ev = metrics.noise_normalized_ev(r, nc_est)
    assert 95 < ev.mean() <= 100


def test_shuffled_responses_give_r_near_zero(tmp_path):
    truth = make_synthetic_dataset(
        tmp_path / "d.h5",
        RECIPE,
        n_train=100,
        n_test=200,
        k_true=10,
        grid=(8, 9, 8),
        snr_range=(50, 100),
        image_size=32,
        shuffle_responses=True,
    )
    res = train(_cfg(tmp_path, truth.path, projection={"kind": "scaler_pca", "n_components": 10}), show_progress=False)
    r = res.per_output[1]["correlation"]
    # null: each r ~ N(0, 1/200); outputs share 10 latent dims, so the mean has SD ~ 1/sqrt(2000) = 0.022
    assert abs(np.mean(r)) < 0.08 and np.std(r) < 0.15
    assert res.accuracy[1]["nnmc"] < 5


def test_features_come_from_the_inference_extractor(high_snr, tmp_path, monkeypatch):
    """Training and inference share one transform object: the trainer goes through berg.transforms.from_recipe."""
    import berg.features
    import berg.transforms

    root, truth = high_snr
    calls = []
    real = berg.transforms.from_recipe
    monkeypatch.setattr(berg.transforms, "from_recipe", lambda cfg, **kw: calls.append(cfg) or real(cfg, **kw))
    monkeypatch.setattr(berg.features, "from_recipe", berg.transforms.from_recipe, raising=False)
    cfg = _cfg(root, truth.path, out_dir=str(tmp_path / "spy"), feature_cache=str(tmp_path / "spy.h5"))
    ds = read_dataset(truth.path)
    with compute_features(cfg, ds, tmp_path / "spy.h5", show_progress=False).open() as feats:
        from berg.core.engine import iter_features
        from berg.features import FeatureExtractor
        from berg.stimuli import load_stimuli

        ext = FeatureExtractor(RECIPE, backbone_weights="untrained", seed=0)
        direct = np.concatenate(list(iter_features(ext, load_stimuli(ds.stimuli[:8], "image"), batch_size=8)))
        np.testing.assert_array_equal(feats[:8], direct)
    assert calls and calls[0] == RECIPE["transform"]


def test_feature_cache_resumes_and_is_reused(high_snr, tmp_path, monkeypatch):
    import h5py

    import berg.features

    root, truth = high_snr
    cfg = _cfg(root, truth.path)
    ds = read_dataset(truth.path)
    path = tmp_path / "resume.h5"
    with compute_features(cfg, ds, path, show_progress=False).open() as f:
        full = f[()]
    with h5py.File(path, "a") as f:  # simulate an interrupted run: rows 50.. never finished
        f["done"][50:] = False
        f["features"][50:] = 0
    built = []
    real = berg.features.FeatureExtractor
    monkeypatch.setattr(berg.features, "FeatureExtractor", lambda *a, **k: built.append(1) or real(*a, **k))
    with compute_features(cfg, ds, path, show_progress=False).open() as f:
        np.testing.assert_array_equal(f[()], full)
    assert built == [1]
    with compute_features(cfg, ds, path, show_progress=False).open() as f:  # complete: no backbone at all
        np.testing.assert_array_equal(f[()], full)
    assert built == [1]
    other = _cfg(root, truth.path, seed=1)  # another untrained seed = other features: recomputed
    with compute_features(other, ds, path, show_progress=False).open() as f:
        assert not np.array_equal(f[()], full)


def test_end_to_end_train_export_s3_encode(high_snr, trained, s3_server, tmp_path, monkeypatch):
    import berg

    root, truth = high_snr
    s3_server.create_bucket("berg-trained")
    s3_server.upload_tree(trained.artifact_dir, "berg-trained", "test-trained/")
    entry = yaml.safe_load(trained.registry_path.read_text())
    entry["models"]["test-trained"]["source"] = {
        "kind": "s3",
        "bucket": "berg-trained",
        "prefix": "test-trained/",
        "endpoint": s3_server.endpoint_url,
    }
    registry = trained.registry_path.parent / "registry_s3.yaml"
    registry.write_text(yaml.safe_dump(entry))
    monkeypatch.setenv("BERG_S3_ENDPOINT", s3_server.endpoint_url)
    client = berg.BERG(cache_dir=tmp_path / "cache", registry=registry)
    ds = read_dataset(truth.path)
    for s in (1, 2):
        model = client.get_encoding_model("test-trained", subject=s, device="cpu", backbone_weights="untrained")
        out = client.encode(model, ds.stimuli[trained.test_indices], show_progress=False)
        expected = trained.test_predictions[s]
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert model.to_nifti(out[0]).shape == (8, 9, 8)


def test_berg_train_cli(high_snr, tmp_path, capsys):
    from berg.cli import main

    root, truth = high_snr
    cfg = {
        "model_id": "cli-trained",
        "dataset": str(truth.path),
        "recipe": RECIPE,
        "out_dir": "out",
        "projection": {"kind": "scaler_pca", "n_components": 4},
        "readout": {"kind": "ols"},
        "backbone_weights": "untrained",
        "feature_cache": str(root / "features.h5"),
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    assert "median r" in capsys.readouterr().out
    assert (tmp_path / "out" / "artifact" / "manifest.json").is_file()
    path.write_text(yaml.safe_dump({**cfg, "readout": {"kind": "lasso"}}))
    assert main(["train", str(path)]) == 2
    assert "valid" in capsys.readouterr().err


def test_train_subparser_standalone(high_snr, tmp_path):
    import argparse
    import io

    from berg.training.cli import add_train_subparser

    root, truth = high_snr
    parser = argparse.ArgumentParser()
    add_train_subparser(parser.add_subparsers(dest="cmd"))
    cfg = {
        "model_id": "sub-trained",
        "dataset": str(truth.path),
        "recipe": RECIPE,
        "out_dir": "o",
        "projection": {"kind": "scaler_pca", "n_components": 4},
        "backbone_weights": "untrained",
        "feature_cache": str(root / "features.h5"),
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    args = parser.parse_args(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "elsewhere"), "-q"])
    buf = io.StringIO()
    assert args.func(args, buf) == 0
    assert "sub-trained" in buf.getvalue() and (tmp_path / "elsewhere" / "registry.yaml").is_file()
