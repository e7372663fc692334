"""GEMM kernels per shape (berg.core.kernels): the table, its look-up, every kernel's numbers, `berg tune`.

The choice of kernel and operand layout must be a pure function of (shape, dtype, device) and the table
(so reruns are bit-identical), every candidate must compute the same map, and a broken table must be
refused with an error that names the field and what to do.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import berg.core.engine as engine
from berg.core import kernels
from berg.errors import InvalidParameterError, ModelLoadError


def _table(entries, machine=None):
    return {
        "schema": 1,
        "machine": machine or {"cpu_model": "test cpu", "cores": 2},
        "entries": [
            {"batch": b, "n_in": i, "n_out": o, "dtype": "float32", "device": dev, "best": best}
            for b, i, o, dev, best in entries
        ],
    }


TABLE = kernels.validate_table(
    _table(
        [
            (100, 250, 327_684, "cpu", "numpy_kn"),
            (100, 460_800, 250, "cpu", "torch_nk"),
            (32, 512, 1_685, "cpu", "torch_kn"),
            (100, 250, 327_684, "cuda", "torch_nk"),
        ]
    ),
    "test",
)


@pytest.fixture(autouse=True)
def _no_user_table(tmp_path, monkeypatch):
    # never read (or write) the developer's own ~/.config/berg/kernels.json
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("BERG_READOUT_KERNEL", raising=False)
    kernels._read_cached.cache_clear()


# ------------------------------------------------------------------------------------------ look-up
def test_lookup_is_the_nearest_covering_entry_and_pure():
    nsd = kernels.lookup(TABLE, 250, 327_684, 100)
    assert (nsd.kernel, nsd.layout) == ("numpy", "kn") and nsd.source == "table test"
    # within a factor of 4 in every dimension: the same entry decides
    assert kernels.lookup(TABLE, 200, 163_842, 64).name == "numpy_kn"
    assert kernels.lookup(TABLE, 460_800, 250, 100).name == "torch_nk"
    assert kernels.lookup(TABLE, 600, 2_000, 32).name == "torch_kn"
    # outside every entry's reach: no table choice (the engine's fixed rule applies)
    assert kernels.lookup(TABLE, 8, 20, 2) is None
    assert kernels.lookup(TABLE, 250, 327_684, 1) is None  # batch 1 is 100x away
    # dtype and device select entries
    assert kernels.lookup(TABLE, 250, 327_684, 100, device="cuda:1").name == "torch_nk"
    assert kernels.lookup(TABLE, 250, 327_684, 100, dtype="float64") is None
    assert kernels.lookup(None, 250, 327_684, 100) is None
    # pure: the same answer every time, whatever was asked in between
    first = [kernels.lookup(TABLE, 250, n, 100) for n in (8_000, 20_000, 90_000, 400_000)]
    assert [kernels.lookup(TABLE, 250, n, 100) for n in (8_000, 20_000, 90_000, 400_000)] == first


def test_ties_go_to_the_first_entry():
    t = kernels.validate_table(_table([(8, 128, 128, "cpu", "torch_kn"), (32, 128, 128, "cpu", "numpy_nk")]), "tie")
    assert kernels.lookup(t, 128, 128, 16).name == "torch_kn"  # log2 distance 1 from both


def test_engine_choice_table_rule_and_env(monkeypatch):
    monkeypatch.setattr(kernels, "active_table", lambda: TABLE)
    assert engine.kernel_choice(250, 327_684, 100, "cpu") == kernels.Choice("numpy", "kn", "table test")
    rule = engine.kernel_choice(8, 20_000, 2, "cpu")  # no entry covers it: numpy for >= 16,384 outputs
    assert (rule.kernel, rule.layout, rule.source) == ("numpy", "kn", "rule")
    assert engine.kernel_choice(8, 20, 2, "cpu").name == "torch_kn"
    assert engine.kernel_choice(4096, 16, 2, "cpu").name == "torch_nk"  # a projection keeps W as stored
    assert engine.kernel_choice(250, 327_684, 100, "cuda:0").kernel == "torch"
    monkeypatch.setenv("BERG_READOUT_KERNEL", "torch")
    assert engine.kernel_choice(250, 327_684, 100, "cpu") == kernels.Choice("torch", "kn", "BERG_READOUT_KERNEL")
    monkeypatch.setenv("BERG_READOUT_KERNEL", "numpy_nk")
    assert engine.kernel_choice(250, 327_684, 100, "cpu").name == "numpy_nk"
    monkeypatch.setenv("BERG_READOUT_KERNEL", "fastest")
    with pytest.raises(InvalidParameterError, match="valid: auto, torch, numpy, torch_nk, torch_kn, numpy_nk"):
        engine.kernel_choice(250, 327_684, 100, "cpu")


def test_the_shipped_table_is_valid_and_names_its_machine():
    t = kernels.read_table(kernels.shipped_table_path())
    assert t.machine["cpu_model"] and t.machine["cores"] >= 1
    shapes = {(b, i, o) for b, i, o, *_ in t.entries}
    assert set(kernels.DEFAULT_SHAPES) <= shapes
    assert kernels.active_table() == t  # no user table in this test's config folder


# ------------------------------------------------------------------------------------------ schema
@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(schema=2), "schema must be 1, got 2"),
        (lambda d: d.pop("machine"), "'machine' must be an object with a 'cpu_model'"),
        (lambda d: d.update(entries=[]), "'entries' must be a non-empty list"),
        (lambda d: d["entries"][0].update(batch=0), r"entries\[0\].batch must be a positive integer, got 0"),
        (lambda d: d["entries"][0].update(n_in="250"), r"entries\[0\].n_in must be a positive integer"),
        (lambda d: d["entries"][0].update(dtype="float16"), r"entries\[0\].dtype is 'float16'; valid: float32"),
        (lambda d: d["entries"][0].update(best="blas"), r"best is 'blas'; valid: torch_nk, torch_kn, numpy_nk"),
        (lambda d: d["entries"][0].update(gflops={"mkl": 3}), r"gflops must map candidates"),
        (lambda d: d["entries"][0].update(device=""), r"device must be a device kind"),
    ],
)
def test_schema_errors_name_the_field_and_what_to_do(mutate, message):
    data = _table([(100, 250, 8820, "cpu", "numpy_kn")])
    kernels.validate_table(copy.deepcopy(data), "ok")
    mutate(data)
    with pytest.raises(ModelLoadError, match=message) as info:
        kernels.validate_table(data, "/x/kernels.json")
    assert "kernel table /x/kernels.json" in str(info.value) and "berg tune" in str(info.value)


def test_a_broken_user_table_is_refused_at_model_load(tmp_path, monkeypatch):
    path = kernels.user_table_path()
    assert str(path).startswith(str(tmp_path / "config"))
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ModelLoadError, match="is not valid JSON"):
        engine.kernel_choice(250, 8820, 100, "cpu")
    good = _table([(100, 250, 8820, "cpu", "torch_nk")])
    kernels.write_table(good, path)
    assert engine.kernel_choice(250, 8820, 100, "cpu") == kernels.Choice("torch", "nk", f"table {path}")


# ------------------------------------------------------------------------------------------ numbers
SHAPES = [(3, 7, 50), (5, 64, 3), (1, 1, 1), (17, 33, 129), (4, 300, 2)]


@pytest.mark.parametrize("batch, n_in, n_out", SHAPES)
def test_every_kernel_and_layout_computes_the_same_map(batch, n_in, n_out, tmp_path):
    rng = np.random.default_rng(batch * 1000 + n_in)
    w = rng.standard_normal((n_out, n_in), dtype=np.float32)
    b = rng.standard_normal(n_out, dtype=np.float32)
    x = rng.standard_normal((batch, n_in), dtype=np.float32)
    ref = (x.astype(np.float64) @ w.T.astype(np.float64) + b).astype(np.float32)
    xt = torch.from_numpy(x)
    buf = np.empty(40, dtype=np.float32)  # tiny blocks: many per map, both split directions
    with torch.inference_mode():
        for name in kernels.CANDIDATES:
            kernel, layout = name.split("_")
            op = kernels.AffineOp(w, b, kernels.Choice(kernel, layout))
            got = op(xt, lambda: buf).numpy()
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=name)
            assert got.dtype == np.float32 and not op.streamed
            np.testing.assert_array_equal(op.weight, w)
            # the same map streamed from a file in either layout
            mm, stored = kernels.spill(w, layout, tmp_path)
            np.testing.assert_array_equal(np.asarray(mm), w)
            streamed = kernels.AffineOp(mm, b, kernels.Choice(kernel, layout), stored=stored)
            got_s = streamed(xt, lambda: buf).numpy()
            np.testing.assert_allclose(got_s, ref, rtol=1e-5, atol=1e-5, err_msg=f"{name} streamed")
            # reading the next block in a thread changes nothing: the same blocks in the same order
            serial = kernels.streamed_affine(x, stored, b, kernel, buf[:20], prefetch=False)  # same blocks
            np.testing.assert_array_equal(serial, got_s)
    # gradients flow through a streamed map too (the whole matrix is used for them)
    xg = xt.clone().requires_grad_(True)
    streamed(xg, lambda: buf).sum().backward()
    np.testing.assert_allclose(xg.grad.numpy(), np.broadcast_to(w.sum(0), x.shape), rtol=1e-5, atol=1e-5)


def test_memory_mapped_weights_are_read_where_they_lie(tmp_path):
    from safetensors.numpy import save_file

    from berg.store.artifacts import read_tensors

    rng = np.random.default_rng(3)
    w = rng.standard_normal((9, 130), dtype=np.float32)
    save_file({"bias": np.zeros(3, np.float32), "weight": w}, str(tmp_path / "p.safetensors"))
    mapped = read_tensors(tmp_path / "p.safetensors")["weight"]
    fm = kernels.file_matrix(mapped)
    assert fm is not None and fm.shape == (9, 130) and fm.layout == "nk"
    out = np.empty((9, 20), np.float32)
    np.testing.assert_array_equal(fm.read(0, 9, 100, 120, out), w[:, 100:120])
    fm_t = kernels.file_matrix(mapped.T)  # the map W = mapped.T (130 x 9) is stored as W.T: layout kn
    assert (fm_t.layout, fm_t.n_out, fm_t.n_in, fm_t.offset) == ("kn", 130, 9, fm.offset)
    np.testing.assert_array_equal(fm_t.read(3, 5, 0, 9, np.empty((2, 9), np.float32)), w[3:5, :9])
    assert kernels.file_matrix(np.array(w)) is None  # in memory
    assert kernels.file_matrix(mapped[[0, 2]]) is None  # a copy out of the map
    short = kernels.FileMatrix(tmp_path / "p.safetensors", 0, (1000, 130), transposed=False)
    with pytest.raises(ModelLoadError, match="truncated file"):
        short.read(990, 1000, 0, 130, np.empty((10, 130), np.float32))


# ------------------------------------------------------------------------------------------ berg tune
def test_berg_tune_quick_writes_a_valid_user_table(tmp_path, capsys):
    from berg.cli import main

    assert main(["tune", "--quick"]) == 0
    out = capsys.readouterr().out
    path = kernels.user_table_path()
    assert f"wrote {path}" in out and path.is_file()
    t = kernels.read_table(path)
    assert [(b, i, o) for b, i, o, *_ in t.entries] == list(kernels.QUICK_SHAPES)
    data = json.loads(path.read_text())
    for e in data["entries"]:
        assert set(e["gflops"]) == set(kernels.CANDIDATES) and e["best"] == max(e["gflops"], key=e["gflops"].get)
    assert data["machine"]["cpu_model"] and "load_before" in data["machine"]
    assert kernels.active_table().path == str(path)  # the user's table now wins over the shipped one
    assert main(["tune", "--shapes", "2x8x64", "--repeats", "1", "-o", str(tmp_path / "t.json")]) == 0
    assert [(b, i, o) for b, i, o, *_ in kernels.read_table(tmp_path / "t.json").entries] == [(2, 8, 64)]
    assert main(["tune", "--shapes", "2x8"]) == 2
    assert "BATCHxN_INxN_OUT" in capsys.readouterr().err
