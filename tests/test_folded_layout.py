"""Folded projections are stored in stream layout (``weight_t`` = W.T), so none gets a ``.berg-stream/`` copy.

:func:`berg.core.readouts.write_folded_projection` writes W.T (n_features, k) from the folded rows via an
unnamed temporary file and :func:`berg.core.kernels.copy_transposed` (two blocks of memory, never two
matrices); :meth:`~berg.core.readouts.Affine.from_tensors` maps it back as a view. The results must equal
those of the previous layout (``weight`` = W (k, n_features)): bit for bit where the same kernel runs on
the same operand (in memory: the kernel table's choice; streamed: the old file's transposed copy), and
within float32 rounding between the in-memory and streamed paths.
"""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from berg.core import engine, kernels
from berg.core.readouts import Projection, fold_scaler, write_folded_projection
from berg.errors import ModelLoadError
from berg.store.artifacts import read_tensors


def _components(k: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    comps = rng.standard_normal((k, n))
    return comps, rng.standard_normal(n), rng.uniform(0.5, 2.0, n)


def _old_layout_file(path: Path, weight: np.ndarray, bias: np.ndarray) -> Path:
    """A folded projection as berg wrote it before fold version 3: ``weight`` (k, n) as folded."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"weight": np.ascontiguousarray(weight), "bias": bias}, str(path))
    return path


# ------------------------------------------------------------------------------------------ the file
@pytest.mark.parametrize("k, n", [(3, 1001), (7, 13), (1, 5), (6, 70_001)])
@pytest.mark.parametrize("block_bytes", [64, 4096, None])
def test_the_fold_is_stored_as_w_t_bit_for_bit(k, n, block_bytes, tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    if block_bytes is not None:  # several column bands per transposition, widths that divide nothing
        monkeypatch.setattr(kernels, "BLOCK_BYTES", block_bytes)
    comps, mean, scale = _components(k, n, seed=k * n)
    path = tmp_path / "converted" / "p.safetensors"
    path.parent.mkdir()
    write_folded_projection(path, mean, scale, iter(comps), comps.shape, where="w.npy")
    w_ref, b_ref = fold_scaler(mean, scale, comps)
    t = read_tensors(path)
    assert set(t) == {"weight_t", "bias"} and t["weight_t"].shape == (n, k)
    np.testing.assert_array_equal(t["weight_t"], w_ref.T)
    np.testing.assert_array_equal(t["bias"], b_ref)
    np.testing.assert_array_equal(load_file(str(path))["weight_t"], w_ref.T)  # valid for the reference reader
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.safetensors"]  # no temporary left behind


def test_a_projection_with_more_components_than_features_keeps_w(tmp_path):
    comps, mean, scale = _components(9, 4)
    path = tmp_path / "p.safetensors"
    write_folded_projection(path, mean, scale, iter(comps), comps.shape)
    t = read_tensors(path)
    assert set(t) == {"weight", "bias"}  # (k, n) is the stream layout when k >= n
    np.testing.assert_array_equal(t["weight"], fold_scaler(mean, scale, comps)[0])
    assert kernels.file_matrix(Projection.from_tensors(t, str(path)).weight).contiguous_blocks


def test_the_transposed_fold_never_holds_the_matrix_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "BLOCK_BYTES", 1 << 20)
    k, n = 40, 100_000  # 16 MB of float32
    rng = np.random.default_rng(3)
    rows = (rng.standard_normal(n, dtype=np.float32) for _ in range(k))
    tracemalloc.start()
    try:
        write_folded_projection(tmp_path / "p.safetensors", None, None, rows, (k, n))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * k * n * 4, peak  # rows, two 1 MiB blocks: never one full copy, let alone two
    assert read_tensors(tmp_path / "p.safetensors")["weight_t"].shape == (n, k)


@pytest.mark.parametrize("rows, what", [(2, "got 2"), (4, "more than 3 rows"), ("wide", r"row 1 of shape \(11,\)")])
def test_rows_that_do_not_fit_the_shape_leave_no_file(rows, what, tmp_path):
    comps = np.ones((4, 10))
    given = [comps[0], np.ones(11), comps[2]] if rows == "wide" else list(comps[:rows])
    with pytest.raises(ModelLoadError, match=what):
        write_folded_projection(tmp_path / "p.safetensors", None, None, given, (3, 10), where="w.npy")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ reading it
def test_weight_t_is_read_as_a_view_of_the_map_and_streamed_where_it_lies(tmp_path):
    cache = tmp_path / "cache"
    comps, mean, scale = _components(5, 3001)
    path = cache / "m" / "converted" / "p.safetensors"
    path.parent.mkdir(parents=True)
    write_folded_projection(path, mean, scale, iter(comps), comps.shape)
    t = read_tensors(path)
    proj = Projection.from_tensors(t, str(path))
    assert proj.weight.shape == (5, 3001) and np.shares_memory(proj.weight, t["weight_t"])
    np.testing.assert_array_equal(proj.weight, fold_scaler(mean, scale, comps)[0])
    fm = kernels.file_matrix(proj.weight)
    assert fm is not None and fm.layout == "kn" and fm.contiguous_blocks and fm.reads_per_block == 1
    assert kernels.stream_copy(fm, cache) is fm
    assert not any(p.name == kernels.STREAM_COPY_DIR for p in cache.rglob("*"))


def test_from_tensors_refuses_ambiguous_or_missing_weights():
    w, b = np.ones((2, 3), np.float32), np.zeros(2, np.float32)
    with pytest.raises(ModelLoadError, match="both 'weight' and 'weight_t'"):
        Projection.from_tensors({"weight": w, "weight_t": w.T, "bias": b}, "p.safetensors")
    with pytest.raises(ModelLoadError, match="'weight_t'.*found 'bias'"):
        Projection.from_tensors({"bias": b}, "p.safetensors")
    with pytest.raises(ModelLoadError, match="p.safetensors: weight_t has shape \\(6,\\)"):
        Projection.from_tensors({"weight_t": w.ravel(), "bias": b}, "p.safetensors")
    with pytest.raises(ModelLoadError, match="p.safetensors: weight \\(3, 2\\) and bias \\(2,\\)"):
        Projection.from_tensors({"weight_t": w, "bias": b}, "p.safetensors")  # weight_t is (n_in, n_out)
    assert Projection.from_tensors({"weight_t": w.T, "bias": b}, "p.safetensors").weight.shape == (2, 3)


# ------------------------------------------------------------------------------------------ same numbers
@pytest.fixture(scope="module")
def replica_fold(tmp_path_factory):
    """A BERG NSD replica's subject-1 PCA folded in both layouts (6 x 70,000: 1.7 MB, above 1 MiB)."""
    from berg.models.berg_catalogue import fold_projection, read_weights, weights_key
    from berg.testing import write_catalogue_replica

    root = tmp_path_factory.mktemp("fold")
    rep = write_catalogue_replica(
        root / "bucket", "nsd_fsaverage", "alexnet", subjects=(1,), n_features=70_000, n_components=6, n_train=12
    )
    weights = read_weights(root / "bucket" / rep.prefix / weights_key(1), "nsd_fsaverage")
    (name,) = weights.pcas
    cache = root / "cache"
    new = cache / "new" / "converted" / "projection.safetensors"
    new.parent.mkdir(parents=True)
    fold_projection(new, weights, name)
    t = read_tensors(new)
    old = _old_layout_file(cache / "old" / "converted" / "projection.safetensors", t["weight_t"].T, t["bias"])
    return SimpleNamespace(cache=cache, new=new, old=old, n=70_000)


def _op(path: Path, batch: int, folder: Path) -> kernels.AffineOp:
    proj = Projection.from_tensors(read_tensors(path), str(path))
    return engine.LinearEncodingModel._op(SimpleNamespace(device="cpu", batch_size=batch), proj, folder)


def _run(op: kernels.AffineOp, x: np.ndarray) -> np.ndarray:
    buf = np.empty(1 << 16, dtype=np.float32)  # 32k-float halves: 6 x 70,000 streams in 13 blocks
    with torch.inference_mode():
        return op(torch.from_numpy(x), lambda: buf).numpy().copy()


@pytest.mark.parametrize("kernel", ["auto", "torch", "numpy_nk", "numpy_kn"])
def test_both_layouts_compute_the_same_in_memory_and_streamed(replica_fold, kernel, monkeypatch):
    monkeypatch.setenv("BERG_READOUT_KERNEL", kernel)
    x = np.random.default_rng(0).standard_normal((5, replica_fold.n)).astype(np.float32)
    out = {}
    for mode, mb in (("memory", "0"), ("stream", "1")):
        monkeypatch.setenv("BERG_STREAM_MB", mb)
        new, old = _op(replica_fold.new, 5, replica_fold.cache), _op(replica_fold.old, 5, replica_fold.cache)
        assert new.streamed is old.streamed is (mode == "stream")
        # the same kernel and operand layout for both files: the table's choice (a pure function of the
        # shape) in memory, the file's kn layout when streamed (the old file through its .berg-stream copy)
        assert new.choice == old.choice
        if mode == "stream":
            assert new.stored.path == str(replica_fold.new) and new.stored.contiguous_blocks
            assert Path(old.stored.path).parent.name == kernels.STREAM_COPY_DIR
        out[mode] = _run(new, x)
        np.testing.assert_array_equal(out[mode], _run(old, x))  # bit for bit
    np.testing.assert_allclose(out["stream"], out["memory"], rtol=1e-5, atol=1e-5 * math.sqrt(replica_fold.n))
    assert not (replica_fold.new.parent / kernels.STREAM_COPY_DIR).exists()  # the new file needs no copy


# ------------------------------------------------------------------------------------------ end to end
_N_VERT, _WIDTH = 40, 576


@pytest.fixture
def nsd_client(tmp_path, monkeypatch):
    """A BERG NSD replica read from a local berg_dir with a small backbone (as tests/test_berg_catalogue.py)."""
    import berg
    from berg.testing import replica_entry, write_catalogue_replica

    rep = write_catalogue_replica(
        tmp_path / "bucket", "nsd_fsaverage", "alexnet", subjects=(1,), n_features=_WIDTH, n_components=6
    )
    lengths = {"lh_vertices": _N_VERT, "rh_vertices": _N_VERT}
    registry = replica_entry(
        tmp_path,
        "test-nsd-folded",
        "fmri-nsd_fsaverage-alexnet",
        source={"kind": "s3", "bucket": "absent-bucket", "prefix": rep.prefix, "manifest": False},
        subjects=[1],
        selection={"lengths": lengths, "n_outputs": {1: 2 * _N_VERT}},
        recipe={
            "nodes": ["avgpool"],
            "transform": {"size": [72, 72], "crop": [64, 64]},
            "berg_catalogue": {"inference": {"resize_size": 72, "crop_size": 64}},
            "backbone": {"builder": "torchvision.models.mobilenet_v3_small", "weights": None},
        },
    )

    def outputs() -> np.ndarray:
        client = berg.BERG(berg_dir=tmp_path / "bucket", cache_dir=tmp_path / "cache", registry=registry)
        model = client.get_encoding_model("test-nsd-folded", subject=1, device="cpu", backbone_weights="untrained")
        x = np.random.default_rng(1).standard_normal((3, _WIDTH)).astype(np.float32)
        with torch.inference_mode():
            (out,) = model.outputs_from_features(torch.from_numpy(x))
        return out.numpy().copy()

    return SimpleNamespace(outputs=outputs, cache=tmp_path / "cache" / "test-nsd-folded")


def _folded(cache: Path) -> list[Path]:
    return sorted((cache / "converted").glob("projection-sub-01-*.safetensors"))


def test_a_stale_fold_in_the_old_layout_is_replaced_not_misread(nsd_client, monkeypatch):
    from berg.models import berg_catalogue

    def old_writer(target, mean, scale, rows, shape, *, where=None):  # berg's writer before fold version 3
        comps = np.stack([np.asarray(r, dtype=np.float64) for r in rows])
        w, b = fold_scaler(mean, scale, comps)
        _old_layout_file(Path(target), w, b)

    monkeypatch.setenv("BERG_STREAM_MB", "0")
    with monkeypatch.context() as m:
        m.setattr(berg_catalogue, "FOLD_VERSION", "2")
        m.setattr(berg_catalogue, "write_folded_projection", old_writer)
        before = nsd_client.outputs()
    (stale,) = _folded(nsd_client.cache)
    assert set(read_tensors(stale)) == {"weight", "bias"}

    now = nsd_client.outputs()  # fold version 3: another file name, folded again
    (fresh,) = _folded(nsd_client.cache)
    assert fresh != stale and not stale.exists()  # the store removed the superseded file
    assert set(read_tensors(fresh)) == {"weight_t", "bias"}
    np.testing.assert_array_equal(now, before)  # same kernel, same operand: bit for bit

    # streamed (every map above 1 KiB): read where it lies, no .berg-stream copy of the folded projection
    monkeypatch.setenv("BERG_STREAM_MB", "1")
    monkeypatch.setattr(kernels, "stream_threshold_bytes", lambda: 1024)
    streamed = nsd_client.outputs()
    np.testing.assert_allclose(streamed, before, rtol=1e-5, atol=1e-5)
    assert not [p for p in nsd_client.cache.rglob("*") if p.name == kernels.STREAM_COPY_DIR]
    assert _folded(nsd_client.cache) == [fresh]
