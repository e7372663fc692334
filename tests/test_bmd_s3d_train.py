"""creation_code/bmd_s3d/train.py: a synthetic BMD-shaped folder -> generic trainer -> berg-native model."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from creation_code.bmd_s3d.train import load_config, read_bmd, train_bmd  # noqa: E402

GRID = (6, 7, 5)
AFFINE = np.array([[-2.5, 0, 0, 76.0], [0, 2.5, 0, -112.0], [0, 0, 2.5, -70.0], [0, 0, 0, 1]])
N_TRAIN, N_TEST, K = 18, 6, 5


def _write_video(path: Path, frames: np.ndarray) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


def _small_recipe() -> dict:
    recipe = copy.deepcopy(load_config().recipe)
    recipe["nodes"] = ["features.2"]
    recipe["transform"]["size"] = [32, 32]
    return recipe


@pytest.fixture(scope="module")
def bmd(tmp_path_factory):
    """A BMD-shaped folder whose betas are a known linear function of the top-K feature components."""
    import nibabel as nib

    from berg.core.engine import iter_features
    from berg.features import FeatureExtractor
    from berg.stimuli import load_stimuli

    root = tmp_path_factory.mktemp("bmd_train")
    rng = np.random.default_rng(0)
    paths = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        (root / "stimuli" / split).mkdir(parents=True)
        paths[split] = []
        for i in range(n):
            p = root / "stimuli" / split / f"{split}_{i:04d}.mp4"
            base = rng.integers(0, 256, (3, 24, 40, 3)).repeat(8, axis=1).repeat(8, axis=2)[:, :24, :40]
            frames = np.concatenate([np.roll(base, s, axis=2) for s in range(0, 20, 3)])[:18].astype(np.uint8)
            _write_video(p, frames)
            paths[split].append(str(p))
    # ground truth from the features the trainer itself will compute (untrained S3D, seed 0)
    ext = FeatureExtractor(_small_recipe(), backbone_weights="untrained", seed=0)
    stim = load_stimuli(paths["train"] + paths["test"], "video")
    feats = np.concatenate(list(iter_features(ext, stim, batch_size=8))).astype(np.float64)
    tr = feats[:N_TRAIN]
    mean, sd = tr.mean(0), tr.std(0)
    sd[sd == 0] = 1.0
    _, _, vt = np.linalg.svd((tr - mean) / sd, full_matrices=False)
    z = ((feats - mean) / sd) @ vt[:K].T
    z /= z[:N_TRAIN].std(0)
    truth = {}
    for s in (1, 2):
        folder = root / "betas" / f"sub-{s:02d}"
        (folder / "rois").mkdir(parents=True)
        mask = rng.random(GRID) < 0.6
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), folder / "mask.nii.gz")
        roi = np.zeros(GRID, dtype=np.uint8)
        roi[:3] = 1
        nib.save(nib.Nifti1Image(roi, AFFINE), folder / "rois" / "lV1v.nii.gz")
        n_vox = int(mask.sum())
        b = rng.standard_normal((K, n_vox))
        signal = z @ b
        noise = 0.3 * signal.std()
        np.save(
            folder / "train.npy",
            (signal[:N_TRAIN, None] + noise * rng.standard_normal((N_TRAIN, 3, n_vox))).astype(np.float32),
        )
        np.save(
            folder / "test.npy",
            (signal[N_TRAIN:, None] + noise * rng.standard_normal((N_TEST, 10, n_vox))).astype(np.float32),
        )
        truth[s] = (mask, roi.astype(bool))
    return root, truth


def test_read_bmd_layout(bmd):
    root, truth = bmd
    ds = read_bmd(root)
    assert ds.kind == "video" and list(ds.split).count("train") == N_TRAIN and list(ds.split).count("test") == N_TEST
    r = ds.subjects[1].responses
    assert r.shape == (N_TRAIN + N_TEST, 10, int(truth[1][0].sum()))
    assert np.isnan(r[:N_TRAIN, 3:]).all() and not np.isnan(r[:N_TRAIN, :3]).any() and not np.isnan(r[N_TRAIN:]).any()
    np.testing.assert_array_equal(ds.subjects[1].voxel_ijk, np.argwhere(truth[1][0]))
    mask, roi = truth[1]
    np.testing.assert_array_equal(ds.subjects[1].rois["lV1v"], np.flatnonzero(roi[mask]))
    bad = root / "betas" / "sub-01" / "test.npy"
    good = np.load(bad)
    try:
        np.save(bad, good[:, :3])
        with pytest.raises(ValueError, match="expected"):
            read_bmd(root)
    finally:
        np.save(bad, good)


def test_train_export_and_reload(bmd, tmp_path):
    import berg

    root, truth = bmd
    result = train_bmd(
        root,
        tmp_path / "out",
        recipe=_small_recipe(),
        backbone_weights="untrained",
        projection={"kind": "scaler_pca", "n_components": K},
        batch_size=8,
        source={"kind": "s3", "bucket": "unused", "prefix": "artifact/"},
        model_id="test-bmd-s3d-retrained",
    )  # the registry already holds fmri-bmd-s3d
    for s in (1, 2):
        acc = result.accuracy[s]
        assert acc["median_r"] > 0.9, acc  # the betas are a noisy linear map of the top-K components
        assert 0 < acc["mean_noise_ceiling"] <= 1
    card = yaml.safe_load(result.card_path.read_text())
    assert card["accuracy"]["summary"][1]["median_r"] == pytest.approx(result.accuracy[1]["median_r"], abs=1e-4)
    assert card["parameters"]["selection"]["n_outputs"] == {1: int(truth[1][0].sum()), 2: int(truth[2][0].sum())}
    # the exported berg-native model reproduces the trainer's test predictions through the inference path
    client = berg.BERG(
        berg_dir=result.artifact_dir.parent, cache_dir=tmp_path / "cache", registry=result.registry_path, offline=True
    )
    model = client.get_encoding_model(
        "test-bmd-s3d-retrained", subject=[1, 2], device="cpu", backbone_weights="untrained"
    )
    test_videos = sorted(str(p) for p in (root / "stimuli" / "test").glob("*.mp4"))
    out = model.encode(test_videos, show_progress=False)
    for s in (1, 2):
        np.testing.assert_allclose(out[s], result.test_predictions[s], rtol=1e-4, atol=1e-4)
    img = model.to_nifti(out[1], subject=1)
    data = np.asarray(img.dataobj)[..., 0]
    np.testing.assert_allclose(data[truth[1][0]], out[1][0], rtol=1e-6)
