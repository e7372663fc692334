"""fmri-bmd-s3d: BERG's legacy layout served from the real S3 server, against scikit-learn parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import berg
from berg.errors import ModelLoadError, StimulusError
from berg.registry import Registry
from berg.testing import replica_entry
from berg.testing import write_bmd_replica as write_replica
from creation_code.bmd_s3d.replica import AFFINE, PREFIX

BUCKET = "berg-test-bmd"
SMALL_ID = "test-bmd-s3d-small"
GRID = (10, 12, 9)
SMALL_NODES = ["features.2", "features.5.cat"]
SMALL_SIZE = [32, 32]
SMALL_WIDTH = 57344  # S3D features.2 + features.5.cat for 14 frames of 32x32 (checked below)


def _registry(tmp: Path, model_id: str, replica, *, nodes, size, source) -> Path:
    subjects = sorted(replica.masks)
    return replica_entry(
        tmp,
        model_id,
        "fmri-bmd-s3d",
        source=source,
        subjects=subjects,
        selection={"n_outputs": {s: int(replica.masks[s].sum()) for s in subjects}},
        recipe={"nodes": nodes, "transform": {"size": size}},
    )


@pytest.fixture(scope="module")
def replica(tmp_path_factory, s3_server):
    root = tmp_path_factory.mktemp("bmd")
    rep = write_replica(root / "bucket", subjects=(1, 2), n_features=SMALL_WIDTH, k=8, grid=GRID)
    s3_server.upload_tree(root / "bucket" / PREFIX, BUCKET, PREFIX)
    source = {"kind": "s3", "bucket": BUCKET, "prefix": PREFIX, "manifest": False}
    reg = _registry(root, SMALL_ID, rep, nodes=SMALL_NODES, size=SMALL_SIZE, source=source)
    return rep, reg


@pytest.fixture
def client(replica, s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("BERG_S3_ENDPOINT", s3_server.endpoint_url)
    return berg.BERG(cache_dir=tmp_path / "cache", registry=replica[1])


def _sklearn_chain(rep, subject):
    from sklearn.decomposition import TruncatedSVD
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    scaler.mean_, scaler.scale_ = rep.mean, rep.scale
    scaler.var_, scaler.n_features_in_ = rep.scale**2, rep.mean.size
    svd = TruncatedSVD(n_components=rep.components.shape[0])
    svd.components_ = rep.components
    reg = LinearRegression()
    reg.coef_, reg.intercept_ = rep.coef[subject], rep.intercept[subject]
    reg.n_features_in_ = rep.components.shape[0]
    return lambda x: reg.predict(svd.transform(scaler.transform(x)))


def _cached(cache: Path) -> set[str]:
    return {p.relative_to(cache).as_posix() for p in cache.rglob("*.npy")}


def test_lazy_fetch_only_what_is_needed(client, tmp_path):
    meta = client.get_model_metadata(SMALL_ID, subject=2)
    assert _cached(tmp_path / "cache") == {f"{SMALL_ID}/metadata/metadata_sub-02.npy"}
    assert set(meta["fmri"]["rois"]) == set(Registry().get("fmri-bmd-s3d").roi_names)
    assert "affine" not in meta["fmri"]  # BERG's creation script saves none: absent, not an error
    assert meta["encoding_models"]["correlation"].dtype == np.float32
    client.get_encoding_model(SMALL_ID, subject=1, device="cpu", backbone_weights="untrained")
    assert _cached(tmp_path / "cache") == {
        f"{SMALL_ID}/metadata/metadata_sub-02.npy",
        f"{SMALL_ID}/metadata/metadata_sub-01.npy",
        f"{SMALL_ID}/encoding_models_weights/pca_weights.npy",
        f"{SMALL_ID}/encoding_models_weights/weights_sub-01.npy",
    }
    assert list((tmp_path / "cache" / SMALL_ID / "converted").glob("projection-*.safetensors"))


def test_numerical_parity_with_sklearn(client, replica):
    rep, _ = replica
    model = client.get_encoding_model(SMALL_ID, subject=[1, 2], device="cpu", backbone_weights="untrained")
    x = np.random.default_rng(3).standard_normal((5, SMALL_WIDTH))
    with torch.inference_mode():
        outs = model.outputs_from_features(torch.from_numpy(x.astype(np.float32)))
    for s, out in zip(model.subjects, outs):
        expected = _sklearn_chain(rep, s)(x)
        assert np.abs(out.numpy() - expected).max() / np.abs(expected).max() < 1e-5


def test_encode_videos_selection_and_multi_subject(client, replica):
    rep, _ = replica
    rng = np.random.default_rng(4)
    videos = rng.integers(0, 256, (3, 20, 3, 40, 48), dtype=np.uint8)
    m1 = client.get_encoding_model(SMALL_ID, subject=1, device="cpu", backbone_weights="untrained")
    full = client.encode(m1, videos, show_progress=False)
    feats = m1.extractor.extract(list(videos.transpose(0, 1, 3, 4, 2))).numpy().astype(np.float64)
    assert feats.shape[1] == SMALL_WIDTH
    expected = _sklearn_chain(rep, 1)(feats)
    assert np.abs(full - expected).max() / np.abs(expected).max() < 1e-5
    meta = m1.get_metadata()
    for roi in ("lV1v", ["lFFA", "rFFA"]):
        m = client.get_encoding_model(
            SMALL_ID, subject=1, selection={"roi": roi}, device="cpu", backbone_weights="untrained"
        )
        names = [roi] if isinstance(roi, str) else roi
        rows = np.unique(np.concatenate([meta["fmri"]["rois"][n] for n in names]))
        np.testing.assert_allclose(m.encode(videos, show_progress=False), full[:, rows], rtol=1e-5, atol=1e-5)
    onehot = np.zeros(full.shape[1], dtype=int)
    onehot[::7] = 1
    m = client.get_encoding_model(
        SMALL_ID, subject=1, selection={"voxels": onehot}, device="cpu", backbone_weights="untrained"
    )
    np.testing.assert_allclose(m.encode(videos, show_progress=False), full[:, ::7], rtol=1e-5, atol=1e-5)
    both = client.get_encoding_model(SMALL_ID, subject=[1, 2], device="cpu", backbone_weights="untrained")
    out = client.encode(both, videos, show_progress=False)
    np.testing.assert_allclose(out[1], full, rtol=1e-5, atol=1e-5)
    m2 = client.get_encoding_model(SMALL_ID, subject=2, device="cpu", backbone_weights="untrained")
    np.testing.assert_allclose(out[2], m2.encode(videos, show_progress=False), rtol=1e-5, atol=1e-5)


def test_roi_entries_index_the_masked_voxels_as_berg_does(client, replica):
    rep, _ = replica
    meta = client.get_model_metadata(SMALL_ID, subject=1)
    for name in ("lV1v", "rV1v", "BMDgeneral"):  # both file forms: index array and np.where 1-tuple
        np.testing.assert_array_equal(meta["fmri"]["rois"][name], rep.roi_flat[1][name])
        coef = rep.coef[1]
        np.testing.assert_array_equal(coef[meta["fmri"]["rois"][name]], coef[rep.roi_flat[1][name]])


def test_to_nifti_needs_an_affine_only_when_absent(client, replica, tmp_path):
    import nibabel as nib

    from berg.errors import InvalidParameterError

    rep, _ = replica
    m = client.get_encoding_model(SMALL_ID, subject=1, device="cpu", backbone_weights="untrained")
    resp = np.arange(m.n_outputs[1], dtype=np.float32)[None].repeat(2, 0)
    with pytest.raises(InvalidParameterError, match="record no affine.*affine=A"):
        m.to_nifti(resp)
    img = m.to_nifti(resp, affine=AFFINE)
    assert isinstance(img, nib.Nifti1Image) and img.shape == GRID + (2,)
    data = np.asarray(img.dataobj)[..., 0]
    np.testing.assert_array_equal(data[rep.masks[1]], resp[0])  # C order of the mask's voxels
    assert np.isnan(data[~rep.masks[1]]).all()  # not predicted -> NaN, not 0
    # A file that has the affine uses it.
    with_aff = write_replica(
        tmp_path / "aff", subjects=(1,), n_features=SMALL_WIDTH, k=8, grid=GRID, seed=3, with_affine=True
    )
    reg = _registry(
        tmp_path,
        "test-bmd-affine",
        with_aff,
        nodes=SMALL_NODES,
        size=SMALL_SIZE,
        source={"kind": "s3", "bucket": "unused", "prefix": PREFIX, "manifest": False},
    )
    c2 = berg.BERG(berg_dir=tmp_path / "aff", cache_dir=tmp_path / "cache2", registry=reg, offline=True)
    meta = c2.get_model_metadata("test-bmd-affine", subject=1)
    np.testing.assert_array_equal(meta["fmri"]["affine"], AFFINE)
    m2 = c2.get_encoding_model("test-bmd-affine", subject=1, device="cpu", backbone_weights="untrained")
    np.testing.assert_array_equal(m2.to_nifti(np.zeros(m2.n_outputs[1], np.float32)).affine, AFFINE)


def test_metadata_with_any_subset_of_keys(tmp_path):
    from berg.models.bmd_s3d import BMDLegacyLayout

    class _Spec:
        model_id = "x"
        card = {"output": {}}

        def n_outputs(self, subject):
            return 20

    layout = BMDLegacyLayout.__new__(BMDLegacyLayout)
    layout.spec = _Spec()
    for subset in ({}, {"fmri": {}}, {"fmri": {"rois": {"lV1v": np.arange(3)}}}, {"encoding_models": {}}):
        layout._load = lambda key, subset=subset: subset
        layout.__dict__.pop("_metadata_cache", None)
        meta = layout.load_metadata(1)
        assert set(meta) == {"fmri", "encoding_models"}
        assert set(meta["fmri"]) <= {"rois"}


def test_inconsistent_files_fail_clearly(replica, tmp_path, monkeypatch):
    rep, _ = replica
    bad = write_replica(tmp_path / "bad", subjects=(1,), n_features=SMALL_WIDTH, k=8, grid=GRID, seed=5)
    w = tmp_path / "bad" / PREFIX / "encoding_models_weights" / "weights_sub-01.npy"
    np.save(w, {"coef_": bad.coef[1][:, :5], "intercept_": bad.intercept[1], "n_features_in_": 5}, allow_pickle=True)
    reg = _registry(
        tmp_path,
        "test-bmd-bad",
        bad,
        nodes=SMALL_NODES,
        size=SMALL_SIZE,
        source={"kind": "s3", "bucket": "unused", "prefix": PREFIX, "manifest": False},
    )
    client = berg.BERG(berg_dir=tmp_path / "bad", cache_dir=tmp_path / "cache", registry=reg, offline=True)
    with pytest.raises(ModelLoadError, match="readout expects 5 inputs|components"):
        client.get_encoding_model("test-bmd-bad", subject=1, device="cpu", backbone_weights="untrained")


@pytest.fixture(scope="module")
def full_width(tmp_path_factory):
    """A 1-subject replica with BERG's real feature width (5,337,088) and k = 2."""
    root = tmp_path_factory.mktemp("bmdfull")
    rep = write_replica(root / "bucket", subjects=(1,), n_features=5_337_088, k=2, grid=GRID, dtype=np.float32)
    return root, rep


def test_real_s3d_width_and_crop_error(full_width, tmp_path):
    root, rep = full_width
    spec = Registry().get("fmri-bmd-s3d")
    source = {"kind": "s3", "bucket": "unused", "prefix": PREFIX, "manifest": False}
    reg = _registry(tmp_path, "test-bmd-full", rep, nodes=spec.recipe["nodes"], size=[256, 256], source=source)
    client = berg.BERG(berg_dir=root / "bucket", cache_dir=tmp_path / "cache", registry=reg, offline=True)
    model = client.get_encoding_model("test-bmd-full", subject=1, device="cpu", backbone_weights="untrained")
    clip = np.random.default_rng(0).integers(0, 256, (1, 14, 3, 256, 256), dtype=np.uint8)
    out = model.encode(clip, show_progress=False)
    assert model.n_features == 5_337_088 and out.shape == (1, int(rep.masks[1].sum()))
    reg224 = (
        _registry(tmp_path / "c", "test-bmd-full", rep, nodes=spec.recipe["nodes"], size=[224, 224], source=source)
        if (tmp_path / "c").mkdir() is None
        else None
    )
    client224 = berg.BERG(berg_dir=root / "bucket", cache_dir=tmp_path / "cache", registry=reg224, offline=True)
    model224 = client224.get_encoding_model("test-bmd-full", subject=1, device="cpu", backbone_weights="untrained")
    with pytest.raises(StimulusError, match=r"4,084,096 features.*5,337,088"):
        model224.encode(clip, show_progress=False)


class _Exploit:
    """Pickles as a call to os.system: the restricted interpreter must refuse it without running it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickling_refuses_code(replica, tmp_path):
    from berg.errors import UnsafeArtifactError

    rep, _ = replica
    bad = write_replica(tmp_path / "evil", subjects=(1,), n_features=64, k=4, grid=GRID, seed=7)
    marker = tmp_path / "pwned"
    meta = tmp_path / "evil" / PREFIX / "metadata" / "metadata_sub-01.npy"
    np.save(
        meta,
        {
            "fmri": {"sub_mask": bad.masks[1].astype(np.float32), "rois": {}, "x": _Exploit(marker)},
            "encoding_models": {},
        },
        allow_pickle=True,
    )
    reg = _registry(
        tmp_path,
        "test-bmd-evil",
        bad,
        nodes=SMALL_NODES,
        size=SMALL_SIZE,
        source={"kind": "s3", "bucket": "unused", "prefix": PREFIX, "manifest": False},
    )
    client = berg.BERG(berg_dir=tmp_path / "evil", cache_dir=tmp_path / "cache", registry=reg, offline=True)
    with pytest.raises(UnsafeArtifactError, match="posix.system|os.system"):
        client.get_model_metadata("test-bmd-evil", subject=1)
    assert not marker.exists()


def _layout_rois(entries: dict, n_voxels: int) -> dict:
    from berg.models.bmd_s3d import BMDLegacyLayout

    return BMDLegacyLayout._roi_indices(None, {"rois": entries}, n_voxels, "metadata/metadata_sub-01.npy")


def test_roi_entry_forms_and_range_errors():
    rng = np.random.default_rng(1)
    n_vox = 500
    pos = np.sort(rng.choice(n_vox, 12, replace=False))
    onehot = np.zeros(n_vox, dtype=bool)
    onehot[pos] = True
    forms = {
        "index_array": pos,
        "np_where_tuple": np.where(onehot),
        "boolean_vector": onehot,
        "int32": pos.astype(np.int32),
    }
    out = _layout_rois(forms, n_vox)
    for name, idx in out.items():
        assert idx.dtype == np.int64
        np.testing.assert_array_equal(idx, pos, err_msg=name)
    # Entries BERG could not use to index coef_ (or would index wrongly) are refused, naming file and ROI.
    with pytest.raises(ModelLoadError, match=r"metadata_sub-01\.npy.*'lV1v'.*outside the subject's 500"):
        _layout_rois({"lV1v": np.array([n_vox + 5])}, n_vox)
    with pytest.raises(ModelLoadError, match=r"'rFFA'.*outside"):
        _layout_rois({"rFFA": np.array([-1, 3])}, n_vox)
    with pytest.raises(ModelLoadError, match=r"'lMT' is a tuple of length 3"):
        _layout_rois({"lMT": (np.zeros((3, 4), int), pos, None)}, n_vox)
    with pytest.raises(ModelLoadError, match=r"'lEBA' is a ndarray"):
        _layout_rois({"lEBA": np.array([0.5, 1.5])}, n_vox)
    with pytest.raises(ModelLoadError, match=r"boolean vector of 7"):
        _layout_rois({"lEBA": np.ones(7, bool)}, n_vox)


def test_card_keeps_bergs_rois_and_voxel_counts():
    from creation_code.bmd_s3d.replica import ROIS

    spec = Registry().get("fmri-bmd-s3d")
    assert sorted(spec.roi_names) == sorted(ROIS) and len(ROIS) == 47
    assert spec.card["parameters"]["selection"]["n_outputs"] == {
        1: 108219,
        2: 108603,
        3: 108366,
        4: 108283,
        5: 108201,
        6: 108449,
        7: 108126,
        8: 108407,
        9: 108250,
        10: 107987,
    }


def test_streamed_fold_reads_memmapped_rows_without_mapping(tmp_path):
    """BERG's components come back memory-mapped; folding must read them with plain reads (RSS)."""
    from berg.core.readouts import fold_scaler, write_folded_projection
    from berg.models.bmd_s3d import _iter_rows
    from berg.store.artifacts import read_tensors
    from berg.store.legacy import load_legacy_npy

    rng = np.random.default_rng(2)
    comps = rng.standard_normal((3, 200_000))
    mean, scale = rng.standard_normal(200_000), rng.uniform(0.5, 2, 200_000)
    np.save(tmp_path / "p.npy", {"pad": np.arange(7), "c": comps}, allow_pickle=True)
    loaded = load_legacy_npy(tmp_path / "p.npy")["c"]
    assert isinstance(loaded, np.memmap)
    rows = list(_iter_rows(loaded))
    assert not any(isinstance(r, np.memmap) for r in rows)  # the pread path, not the mapping
    np.testing.assert_array_equal(np.stack(rows), comps)
    write_folded_projection(tmp_path / "w.safetensors", mean, scale, _iter_rows(loaded), loaded.shape)
    t = read_tensors(tmp_path / "w.safetensors")
    w_ref, b_ref = fold_scaler(mean, scale, comps)
    np.testing.assert_array_equal(t["weight_t"].T, w_ref)  # stored in stream layout (W.T)
    np.testing.assert_allclose(t["bias"], b_ref, rtol=1e-6)
    from safetensors.numpy import load_file  # the hand-written file is valid for the reference reader too

    np.testing.assert_array_equal(load_file(str(tmp_path / "w.safetensors"))["weight_t"].T, w_ref)
