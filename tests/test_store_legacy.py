"""The restricted pickle interpreter: BERG-style np.save'd dicts load; code in pickles never runs."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from berg.errors import ArtifactError, UnsafeArtifactError
from berg.store.legacy import StateOnly, load_legacy_npy, safe_unpickle

BERG_SRC = Path(__file__).resolve().parents[1] / "berg"


def _same(a, b, path="root"):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for x, y in zip(a, b):
            _same(x, y, path)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b and type(a) is type(b), (path, a, b)


def test_berg_style_dict_roundtrip_with_memory_maps(tmp_path):
    rng = np.random.default_rng(0)
    d = {
        "scaler_param": {
            "scale_": rng.random(300_000),
            "mean_": rng.random(300_000).astype(np.float32),
            "n_features_in_": 300_000,
            "n_samples_seen_": np.int64(3000),
        },
        "pca_param": {"components_": rng.random((3, 300_000)), "singular_values_": rng.random(3)},
        "rois": {"lV1v": (np.array([[1, 2, 3]]), np.arange(5), None), "x": [1, 2.5, "s", True, None, b"b"]},
        "fortran": np.asfortranarray(rng.random((4, 5))),
        "big_endian": rng.random((2, 700_000)).astype(">f4"),
        "empty": np.zeros((0, 3)),
    }
    path = tmp_path / "weights.npy"
    np.save(path, d, allow_pickle=True)
    out = load_legacy_npy(path)
    _same(d, out)
    # multi-MB arrays are memory maps of the file, not copies in RAM
    assert isinstance(out["pca_param"]["components_"], np.memmap)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_code_in_pickle_never_runs(tmp_path, protocol):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(UnsafeArtifactError, match=r"forbidden global (posix|os|nt)\.system"):
        safe_unpickle(pickle.dumps({"weights": np.ones(3), "x": Evil()}, protocol=protocol))
    path = tmp_path / "evil.npy"
    np.save(path, np.array({"a": Evil()}, dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeArtifactError):
        load_legacy_npy(path)
    assert not marker.exists()


def test_other_dangerous_constructs_refused():
    import builtins

    class EvalReduce:
        def __reduce__(self):
            return (builtins.eval, ("1+1",))

    with pytest.raises(UnsafeArtifactError, match=r"(__builtin__|builtins)\.eval"):
        safe_unpickle(pickle.dumps(EvalReduce(), protocol=2))
    with pytest.raises(UnsafeArtifactError, match="collections"):
        import collections

        safe_unpickle(pickle.dumps(collections.Counter("ab")))
    with pytest.raises(ArtifactError):
        safe_unpickle(b"\x80\x03X\x01\x00\x00\x00a")  # no STOP


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_allow_listed_stand_in(protocol):
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(1)
    ridge = Ridge(alpha=2.0).fit(rng.random((20, 5)), rng.random((20, 3)))
    obj = safe_unpickle(
        pickle.dumps(ridge, protocol=protocol), extra_globals={("sklearn.linear_model._ridge", "Ridge"): StateOnly}
    )
    assert isinstance(obj, StateOnly)
    np.testing.assert_array_equal(obj.state["coef_"], ridge.coef_)
    assert obj.state["alpha"] == 2.0
    with pytest.raises(UnsafeArtifactError, match="Ridge"):
        safe_unpickle(pickle.dumps(ridge, protocol=protocol))


def test_plain_npy_is_memory_mapped(tmp_path):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a.npy", arr)
    out = load_legacy_npy(tmp_path / "a.npy")
    np.testing.assert_array_equal(out, arr)
    with pytest.raises(ArtifactError):
        (tmp_path / "b.npy").write_bytes(b"garbage")
        load_legacy_npy(tmp_path / "b.npy")


def test_no_unsafe_deserialisation_in_source():
    pattern = re.compile(
        r"allow_pickle\s*=\s*True|pickle\.loads?\(|joblib\.load\(|weights_only\s*=\s*False|Unpickler\("
    )
    hits = [
        f"{p.relative_to(BERG_SRC)}:{i}"
        for p in BERG_SRC.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []
