"""Bad weights are refused at load with a ModelLoadError naming the file and the field (issue 24).

Every file is written by berg.testing's replica writers (BERG catalogue, BMD) or ``toy_model`` (berg-native),
then damaged the way the issue found them: NaN/inf in ``coef_``, ``intercept_``, ``mean_``, ``scale_``,
``components_``; a zero ``scale_``; whitening with a zero explained variance; a non-finite backbone state
dict; shapes that do not fit. A byte flip that leaves a float finite is caught only by a checksum: the
store verifies berg-native ``berg_dir`` files against their manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from berg.core.readouts import Affine, LinearReadout, Projection, check_finite, check_scaler, fold_scaler
from berg.errors import IntegrityError, ModelLoadError
from berg.models.berg_catalogue import fold_projection, read_weights, stacked_readout, weights_key
from berg.testing import toy_model, write_bmd_replica, write_catalogue_replica

# --------------------------------------------------------------------------- BERG catalogue files

WKEY = weights_key(1)  # encoding_models_weights/weights_subject-01.npy


def _load_catalogue(path: Path, family: str, tmp: Path):
    """What loading the model does with a weights file: read it, build each readout, fold each projection."""
    w = read_weights(path, family, where=WKEY)
    readouts = [stacked_readout([lin]) for _, _, lin in w.heads]
    for name in w.pcas:
        fold_projection(tmp / f"projection-{name}.safetensors", w, name)
    return w, readouts


def _at(obj, path):
    for key in path:
        obj = obj[key] if isinstance(obj, dict) else getattr(obj, key)
    return obj


def _put(obj, path, value):
    parent = _at(obj, path[:-1])
    if isinstance(parent, dict):
        parent[path[-1]] = value
    else:
        setattr(parent, path[-1], value)


def _damaged(value, index, bad):
    arr = np.array(value, dtype=np.float64)  # float64, so a value beyond float32 can be stored
    arr[index] = bad
    return arr


@pytest.fixture(scope="module")
def eeg(tmp_path_factory):
    root = tmp_path_factory.mktemp("eeg")
    rep = write_catalogue_replica(
        root, "things_eeg_2", "alexnet", subjects=(1,), n_features=16, n_components=3, n_train=12
    )
    return rep


def _write(rep, tmp: Path, mutate) -> Path:
    import copy

    weights = copy.deepcopy(rep.weights[1])
    mutate(weights)
    path = tmp / "weights_subject-01.npy"
    np.save(path, weights, allow_pickle=True)  # BERG's own way of writing the file
    return path


# (path in BERG's dict, index, bad value, the field as named in the message)
EEG_FAULTS = {
    "coef-nan": (("reg_param", "rep-1", "coef_"), (2, 1), np.nan, r"\['reg_param'\]\['rep-1'\]: coef_\[2, 1\] is nan"),
    "coef-inf": (("reg_param", "rep-3", "coef_"), (0, 2), np.inf, r"\['reg_param'\]\['rep-3'\]: coef_\[0, 2\] is inf"),
    "coef-beyond-float32": (
        ("reg_param", "rep-1", "coef_"),
        (1, 0),
        1e300,
        r"\['reg_param'\]\['rep-1'\]: coef_\[1, 0\] is 1e\+300 \(beyond float32\)",
    ),
    "intercept-nan": (
        ("reg_param", "rep-2", "intercept_"),
        (4,),
        np.nan,
        r"\['reg_param'\]\['rep-2'\]: intercept_\[4\] is nan",
    ),
    "scaler-mean-inf": (("scaler_param", "mean_"), (5,), np.inf, r"\['scaler_param'\]: mean_\[5\] is inf"),
    "scaler-mean-nan": (("scaler_param", "mean_"), (0,), np.nan, r"\['scaler_param'\]: mean_\[0\] is nan"),
    "scaler-scale-nan": (("scaler_param", "scale_"), (3,), np.nan, r"\['scaler_param'\]: scale_\[3\] is nan"),
    "scaler-scale-zero": (
        ("scaler_param", "scale_"),
        (7,),
        0.0,
        r"\['scaler_param'\]: scale_\[7\] is 0\.0; a fitted StandardScaler stores scale_ > 0",
    ),
    "scaler-scale-negative": (
        ("scaler_param", "scale_"),
        (1,),
        -2.0,
        r"\['scaler_param'\]: scale_\[1\] is -2\.0",
    ),
    "pca-components-nan": (
        ("pca_param", "rep-2", "components_"),
        (1, 9),
        np.nan,
        r"\['pca_param'\]\['rep-2'\]: components_\[1, 9\] is nan",
    ),
    "pca-components-inf": (
        ("pca_param", "rep-4", "components_"),
        (0, 0),
        -np.inf,
        r"\['pca_param'\]\['rep-4'\]: components_\[0, 0\] is -inf",
    ),
    "pca-mean-inf": (("pca_param", "rep-1", "mean_"), (2,), np.inf, r"\['pca_param'\]\['rep-1'\]: mean_\[2\] is inf"),
}


@pytest.mark.parametrize("fault", sorted(EEG_FAULTS))
def test_catalogue_bad_values_name_file_and_field(eeg, tmp_path, fault):
    path_in_dict, index, bad, message = EEG_FAULTS[fault]
    path = _write(eeg, tmp_path, lambda w: _put(w, path_in_dict, _damaged(_at(w, path_in_dict), index, bad)))
    with pytest.raises(ModelLoadError, match=re.escape(WKEY) + message):
        _load_catalogue(path, "things_eeg_2", tmp_path)
    if path_in_dict[0] == "pca_param":  # the refused fold leaves no file (the others before it were fine)
        assert not (tmp_path / f"projection-{path_in_dict[1]}.safetensors").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary left behind"


def test_catalogue_good_file_loads(eeg, tmp_path):
    """The control: the undamaged file loads (so each refusal above is the fault's, not the harness')."""
    path = _write(eeg, tmp_path, lambda w: None)
    w, readouts = _load_catalogue(path, "things_eeg_2", tmp_path)
    assert len(readouts) == 4 and all(np.isfinite(r.weight).all() for r in readouts)
    assert sorted(p.name for p in tmp_path.glob("projection-*")) == [f"projection-rep-{r}.safetensors" for r in "1234"]


def test_catalogue_whitening_needs_positive_variances(eeg, tmp_path):
    def whiten(w, value):
        pca = w["pca_param"]["rep-3"]
        pca.whiten = True
        ev = np.array(pca.explained_variance_, dtype=np.float64)
        ev[1] = value
        pca.explained_variance_ = ev

    for value, shown in ((0.0, "0.0"), (-1.0, "-1.0")):
        path = _write(eeg, tmp_path, lambda w, v=value: whiten(w, v))
        with pytest.raises(
            ModelLoadError,
            match=re.escape(f"{WKEY}['pca_param']['rep-3']: explained_variance_[1] is {shown} and whiten=True"),
        ):
            read_weights(path, "things_eeg_2", where=WKEY)
    path = _write(eeg, tmp_path, lambda w: whiten(w, np.nan))
    with pytest.raises(ModelLoadError, match=re.escape(f"{WKEY}['pca_param']['rep-3']: explained_variance_[1] is nan")):
        read_weights(path, "things_eeg_2", where=WKEY)
    # whitening with positive variances is valid: the rows are divided by sqrt(variance)
    path = _write(eeg, tmp_path, lambda w: whiten(w, 2.0))
    w = read_weights(path, "things_eeg_2", where=WKEY)
    pca = w.pcas["rep-3"]
    rows = list(pca.rows())
    np.testing.assert_allclose(rows[1], np.asarray(pca.components[1], np.float64) / np.sqrt(2.0))


def test_catalogue_shape_mismatch_names_the_field(eeg, tmp_path):
    path = _write(eeg, tmp_path, lambda w: _put(w, ("scaler_param", "scale_"), w["scaler_param"]["scale_"][:-1]))
    with pytest.raises(
        ModelLoadError, match=re.escape(f"{WKEY}['scaler_param']['scale_'] has shape (15,), expected (16,)")
    ):
        read_weights(path, "things_eeg_2", where=WKEY)
    path = _write(
        eeg,
        tmp_path,
        lambda w: _put(w, ("reg_param", "rep-2", "intercept_"), w["reg_param"]["rep-2"]["intercept_"][:3]),
    )
    with pytest.raises(ModelLoadError, match=re.escape(f"{WKEY}['reg_param']['rep-2']: coef_ (")):
        read_weights(path, "things_eeg_2", where=WKEY)


def test_catalogue_nsd_readout_nan(tmp_path):
    rep = write_catalogue_replica(
        tmp_path / "b", "nsd_fsaverage", "alexnet", subjects=(1,), n_features=16, n_components=3, n_vertices=12
    )
    path = _write(
        rep,
        tmp_path,
        lambda w: _put(w, ("rh_reg_param", "coef_"), _damaged(w["rh_reg_param"]["coef_"], (11, 2), np.nan)),
    )
    w = read_weights(path, "nsd_fsaverage", where=WKEY)
    with pytest.raises(ModelLoadError, match=re.escape(f"{WKEY}['rh_reg_param']: coef_[11, 2] is nan")):
        stacked_readout([lin for _, _, lin in w.heads])  # lh and rh, as the layout stacks them


# --------------------------------------------------------------------------- BMD (fmri-bmd-s3d) files


class _Spec:
    model_id = "test-bmd"
    source = {"kind": "s3", "bucket": "unused", "prefix": "", "manifest": False}
    card = {"output": {}}

    def n_outputs(self, subject):
        return None


def _bmd_layout(root: Path, tmp: Path):
    from berg.models.bmd_s3d import BMDLegacyLayout
    from berg.store import Store
    from creation_code.bmd_s3d.replica import PREFIX

    spec = _Spec()
    spec.source = {**spec.source, "prefix": PREFIX}
    return BMDLegacyLayout(spec, Store(berg_dir=root, cache_dir=tmp / "cache", offline=True))


def _edit_npy(path: Path, edit) -> None:
    obj = np.load(path, allow_pickle=True).item()  # the test's own file, written just above
    edit(obj)
    np.save(path, obj, allow_pickle=True)


@pytest.fixture
def bmd(tmp_path):
    from creation_code.bmd_s3d.replica import PREFIX

    root = tmp_path / "bmd"
    write_bmd_replica(root, subjects=(1,), n_features=40, k=4, grid=(4, 4, 3))
    return root, root / PREFIX / "encoding_models_weights"


BMD_PCA_FAULTS = {
    "components-nan": (("pca_param", "components_"), (2, 17), np.nan, r"\['pca_param'\]: components_\[2, 17\] is nan"),
    "components-inf": (("pca_param", "components_"), (0, 39), np.inf, r"\['pca_param'\]: components_\[0, 39\] is inf"),
    "mean-inf": (("scaler_param", "mean_"), (6,), np.inf, r"\['scaler_param'\]: mean_\[6\] is inf"),
    "scale-nan": (("scaler_param", "scale_"), (8,), np.nan, r"\['scaler_param'\]: scale_\[8\] is nan"),
    "scale-zero": (("scaler_param", "scale_"), (12,), 0.0, r"\['scaler_param'\]: scale_\[12\] is 0\.0"),
}


@pytest.mark.parametrize("fault", sorted(BMD_PCA_FAULTS))
def test_bmd_projection_bad_values(bmd, tmp_path, fault):
    root, weights = bmd
    path_in_dict, index, bad, message = BMD_PCA_FAULTS[fault]
    _edit_npy(weights / "pca_weights.npy", lambda d: _put(d, path_in_dict, _damaged(_at(d, path_in_dict), index, bad)))
    layout = _bmd_layout(root, tmp_path)
    with pytest.raises(ModelLoadError, match=re.escape("encoding_models_weights/pca_weights.npy") + message):
        layout.load_projection()
    assert not list((tmp_path / "cache").rglob("*.safetensors")), "nothing derived from a refused file"


def test_bmd_constant_features_keep_scale_one(bmd, tmp_path):
    """The replica's constant features carry scale_ = 1 (scikit-learn's rule): they fold as any other."""
    root, weights = bmd
    scale = np.load(weights / "pca_weights.npy", allow_pickle=True).item()["scaler_param"]["scale_"]
    assert (scale[:3] == 1.0).all()
    proj = _bmd_layout(root, tmp_path).load_projection()
    assert np.isfinite(np.asarray(proj.weight)).all() and np.isfinite(proj.bias).all()


@pytest.mark.parametrize(
    ("field", "index", "bad", "shown"),
    [("coef_", (3, 1), np.nan, "coef_[3, 1] is nan"), ("intercept_", (0,), -np.inf, "intercept_[0] is -inf")],
)
def test_bmd_readout_bad_values(bmd, tmp_path, field, index, bad, shown):
    root, weights = bmd
    _edit_npy(weights / "weights_sub-01.npy", lambda d: d.__setitem__(field, _damaged(d[field], index, bad)))
    with pytest.raises(ModelLoadError, match=re.escape(f"encoding_models_weights/weights_sub-01.npy: {shown}")):
        _bmd_layout(root, tmp_path).load_readout(1)


def test_bmd_readout_beyond_float32(bmd, tmp_path):
    root, weights = bmd
    _edit_npy(
        weights / "weights_sub-01.npy",
        lambda d: d.__setitem__("coef_", _damaged(np.asarray(d["coef_"], np.float64), (1, 2), 1e300)),
    )
    with pytest.raises(
        ModelLoadError, match=re.escape("encoding_models_weights/weights_sub-01.npy: weight[1, 2] is inf")
    ):
        _bmd_layout(root, tmp_path).load_readout(1)


# --------------------------------------------------------------------------- berg-native artifacts


def _manifest_entry(artifact: Path, key: str) -> None:
    """Re-sign ``key`` in the manifest: the publisher's own (bad) bytes, which the checksum cannot catch."""
    mpath = artifact / "manifest.json"
    manifest = json.loads(mpath.read_text())
    data = (artifact / key).read_bytes()
    manifest["files"][key] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    mpath.write_text(json.dumps(manifest))


def _rewrite_readout(artifact: Path, key: str, edit) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = {k: np.array(v) for k, v in load_file(str(artifact / key)).items()}
    edit(tensors)
    save_file(tensors, str(artifact / key))


@pytest.fixture
def toy(tmp_path):
    return toy_model(tmp_path / "toy", "flat", subjects=(1,), n_components=4, n_outputs=6)


def _native_layout(toy, tmp):
    from berg.core.layouts import NativeLayout
    from berg.registry import Registry
    from berg.store import Store

    spec = Registry(toy.registry).get(toy.model_id)
    return NativeLayout(spec, Store(berg_dir=toy.berg_dir, cache_dir=tmp / "cache", offline=True))


@pytest.mark.parametrize(
    ("tensor", "index", "shown"), [("weight", (4, 1), "weight[4, 1] is nan"), ("bias", (2,), "bias[2] is nan")]
)
def test_native_readout_non_finite(toy, tmp_path, tensor, index, shown):
    artifact = toy.berg_dir / toy.prefix
    key = "readout/sub-01.safetensors"
    _rewrite_readout(artifact, key, lambda t: t[tensor].__setitem__(index, np.nan))
    _manifest_entry(artifact, key)
    with pytest.raises(ModelLoadError, match=re.escape(f"{key}: {shown}")):
        _native_layout(toy, tmp_path).load_readout(1)


def test_native_berg_dir_byte_flip_is_caught_by_the_manifest(toy, tmp_path):
    """A flip that keeps every float finite: only the checksum can tell, and the store checks it."""
    artifact = toy.berg_dir / toy.prefix
    path = artifact / "readout" / "sub-01.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # low mantissa bits of the last bias value: still a finite float
    path.write_bytes(bytes(data))
    from safetensors.numpy import load_file

    assert all(np.isfinite(v).all() for v in load_file(str(path)).values())
    with pytest.raises(IntegrityError, match=r"readout/sub-01\.safetensors: sha256 [0-9a-f]{64}, expected"):
        _native_layout(toy, tmp_path).load_readout(1)


def test_native_good_artifact_loads(toy, tmp_path):
    layout = _native_layout(toy, tmp_path)
    readout = layout.load_readout(1)
    np.testing.assert_array_equal(readout.weight, toy.weights[1][0])
    proj = layout.load_projection()
    np.testing.assert_array_equal(np.asarray(proj.weight), toy.projection[0])


# --------------------------------------------------------------------------- the kernels themselves


def test_affine_checks_bias_and_in_memory_weight():
    w = np.ones((3, 4), np.float32)
    with pytest.raises(ModelLoadError, match=re.escape("LinearReadout: bias[1] is nan")):
        LinearReadout(w, np.array([0, np.nan, 0], np.float32))
    bad = w.copy()
    bad[2, 3] = np.inf
    with pytest.raises(ModelLoadError, match=re.escape("Projection: weight[2, 3] is inf")):
        Projection(bad, np.zeros(3))
    # a transposed view (how a stacked readout is held) names the entry in the view's own indices
    with pytest.raises(ModelLoadError, match=re.escape("LinearReadout: weight[2, 3] is inf")):
        LinearReadout(np.ascontiguousarray(bad.T).T, np.zeros(3))
    with pytest.raises(ModelLoadError, match=re.escape("readout/x.safetensors: weight[2, 3] is inf")):
        Affine.from_tensors({"weight": bad, "bias": np.zeros(3)}, "readout/x.safetensors")
    with pytest.raises(ModelLoadError, match=re.escape("readout/x.safetensors lacks tensor 'bias'")):
        Affine.from_tensors({"weight": w}, "readout/x.safetensors")
    with pytest.raises(ModelLoadError, match=re.escape("p.safetensors: weight (3, 4) and bias (2,) do not fit")):
        Projection.from_tensors({"weight": w, "bias": np.zeros(2)}, "p.safetensors")
    # float64 values beyond float32 become inf in the float32 copy: refused, not served as inf
    with pytest.raises(ModelLoadError, match=re.escape("Affine: weight[0, 0] is inf")):
        Affine(np.full((1, 2), 1e300), np.zeros(1))


def test_check_finite_blocks_and_integers():
    big = np.zeros((3000, 700), np.float32)  # > one check block
    big[2999, 699] = np.nan
    with pytest.raises(ModelLoadError, match=re.escape("f.npy: coef_[2999, 699] is nan")):
        check_finite(big, "coef_", "f.npy")
    check_finite(np.arange(10), "ints")  # integers are always finite
    with pytest.raises(ModelLoadError, match=re.escape("x: v is nan")):
        check_finite(np.float64("nan"), "v", "x")


def test_fold_scaler_rules():
    rng = np.random.default_rng(0)
    comps = rng.standard_normal((3, 5))
    mean, scale = rng.standard_normal(5), rng.uniform(0.5, 2, 5)
    W, b = fold_scaler(mean, scale, comps)
    np.testing.assert_allclose(W, comps / scale, rtol=1e-6)
    np.testing.assert_allclose(b, -(mean / scale) @ comps.T, rtol=1e-5)
    zero = scale.copy()
    zero[4] = 0.0
    with pytest.raises(ModelLoadError, match=re.escape("f.npy: scale_[4] is 0.0; a fitted StandardScaler")):
        fold_scaler(mean, zero, comps, where="f.npy")
    bad = comps.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ModelLoadError, match=re.escape("f.npy: components_[1, 2] is nan")):
        fold_scaler(mean, scale, bad, where="f.npy")
    tiny = scale.copy()
    tiny[0] = 1e-300  # finite and > 0, but components / 1e-300 overflow float32
    with pytest.raises(ModelLoadError, match=re.escape("f.npy: components_ row 0 overflows float32")):
        fold_scaler(mean, tiny, comps, where="f.npy")
    check_scaler(None, None)  # no scaler: nothing to check
    check_scaler(mean, np.ones(5))


# --------------------------------------------------------------------------- backbone state dicts


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_backbone_state_dict_non_finite(tmp_path, suffix):
    import torch

    from berg.features import build_backbone

    backbone = {"builder": "torchvision.models.squeezenet1_1", "weights": None}
    state = build_backbone(backbone, "untrained", seed=1).state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 4)
    state = {k: v.clone() for k, v in state.items()}
    state[key][0, 1, 0, 0] = float("nan")
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    with pytest.raises(ModelLoadError, match=re.escape(f"{path}: backbone weight {key!r}[0, 1, 0, 0] is nan")):
        build_backbone(backbone, path)
    state[key][0, 1, 0, 0] = 0.5  # the same file with a finite value loads
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = build_backbone(backbone, path)
    assert torch.equal(model.state_dict()[key], state[key])
