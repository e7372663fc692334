"""Streamed weights: one ``pread`` per block, and the same numbers as the in-memory map.

A streamed block is a band of the map's larger dimension. When the file holds that band as whole
stored rows (:func:`berg.core.kernels.stream_layout`) a block is one read; :func:`~berg.core.kernels.spill`
and the engine write that layout. Reads are counted by wrapping ``os.preadv``: the old engine spilled a
``(n_in, n_out)`` readout and read each block with one ``pread`` per row (250 per block for NSD's).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from berg.core import engine, kernels
from berg.errors import ModelLoadError
from berg.fsutil import sha256_file

# (batch, n_in, n_out): readout-like (n_out >= n_in) and projection-like (n_in > n_out), sizes that no
# block width divides
SHAPES = [(3, 7, 131), (5, 129, 6), (1, 1, 1), (7, 33, 33), (2, 257, 13)]


def _data(batch: int, n_in: int, n_out: int, dtype=np.float32):
    rng = np.random.default_rng(batch * 7919 + n_in * 31 + n_out)
    w = rng.standard_normal((n_out, n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(np.float32)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    return x, w, b


@pytest.fixture
def count_preads(monkeypatch):
    """Count ``os.preadv`` calls (every read of a streamed block goes through it) and bytes read."""
    calls = {"n": 0, "bytes": 0}
    real = os.preadv

    def counting(fd, buffers, offset, *args):
        calls["n"] += 1
        got = real(fd, buffers, offset, *args)
        calls["bytes"] += got
        return got

    monkeypatch.setattr(os, "preadv", counting)
    return calls


def _n_blocks(fm: kernels.FileMatrix, half_elements: int) -> int:
    along, width = kernels._block_plan(fm, half_elements * 4)
    return math.ceil((fm.n_out if along == "out" else fm.n_in) / width)


# ------------------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize("batch, n_in, n_out", SHAPES)
@pytest.mark.parametrize("layout", kernels.LAYOUTS)
@pytest.mark.parametrize("kernel", kernels.KERNELS)
def test_streamed_equals_in_memory_in_both_file_layouts(batch, n_in, n_out, layout, kernel, tmp_path):
    x, w, b = _data(batch, n_in, n_out)
    ref64 = x.astype(np.float64) @ w.T.astype(np.float64) + b
    in_memory = kernels.affine(torch.from_numpy(x), kernels.operand(w, layout), b, kernel).numpy()
    _, fm = kernels.spill(w, layout, tmp_path)
    assert fm.layout == layout
    smallest = min(n_in, n_out)
    for buf_size in (2 * smallest, 2 * smallest + 1, 6 * smallest + 3, 10_000):  # widths 1, 1, 3, many
        buf = np.empty(buf_size, dtype=np.float32)
        got = kernels.streamed_affine(x, fm, b, kernel, buf)
        assert got.dtype == np.float32 and got.shape == (batch, n_out)
        # float32 rounding of the in-memory result (blocked sums round differently, never by more)
        np.testing.assert_allclose(got, in_memory, rtol=2e-5, atol=2e-5 * math.sqrt(n_in))
        np.testing.assert_allclose(got, ref64, rtol=2e-5, atol=2e-5 * math.sqrt(n_in))
        # a rerun changes no bit; a serial pass over the same blocks only the last (the BLAS may
        # round differently when a block sits at another alignment in the buffer)
        np.testing.assert_array_equal(kernels.streamed_affine(x, fm, b, kernel, buf), got)
        serial = kernels.streamed_affine(x, fm, b, kernel, buf[: buf_size // 2], prefetch=False)
        np.testing.assert_allclose(serial, got, rtol=1e-6, atol=1e-6 * math.sqrt(n_in))


def test_a_block_of_rows_of_w_is_multiplied_by_numpy(tmp_path):
    """The rule that picks the block GEMM is a pure function of the file: rows of ``W`` -> numpy."""
    x, w, b = _data(4, 40, 300)
    buf = np.empty(4 * 40 * 2, dtype=np.float32)
    _, nk = kernels.spill(w, "nk", tmp_path)
    np.testing.assert_array_equal(
        kernels.streamed_affine(x, nk, b, "torch", buf), kernels.streamed_affine(x, nk, b, "numpy", buf)
    )
    _, kn = kernels.spill(w, "kn", tmp_path)  # (k, n) blocks keep the table's kernel
    torch_kn = kernels.streamed_affine(x, kn, b, "torch", buf)
    np.testing.assert_allclose(torch_kn, kernels.streamed_affine(x, kn, b, "numpy", buf), rtol=1e-5, atol=1e-4)


def test_float64_weights_are_streamed_as_float32(tmp_path, count_preads):
    x, w64, b = _data(3, 19, 70, dtype=np.float64)
    w32 = w64.astype(np.float32)
    mm, fm = kernels.spill(w64, kernels.stream_layout(70, 19), tmp_path)
    assert mm.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(mm), w32)
    buf = np.empty(2 * 19 * 8, dtype=np.float32)
    got = kernels.streamed_affine(x, fm, b, "numpy", buf)
    in_memory = kernels.affine(torch.from_numpy(x), kernels.operand(w32, "nk"), b, "numpy").numpy()
    np.testing.assert_allclose(got, in_memory, rtol=2e-5, atol=1e-4)
    # a float64 memory map is not read as a float32 file
    path = tmp_path / "w64.bin"
    w64.tofile(path)
    assert kernels.file_matrix(np.memmap(path, dtype=np.float64, mode="r", shape=w64.shape)) is None


# ------------------------------------------------------------------------------------------ reads
@pytest.mark.parametrize("batch, n_in, n_out", [(4, 50, 1001), (4, 1001, 50), (2, 64, 64)])
@pytest.mark.parametrize("prefetch", [True, False])
def test_a_file_in_stream_layout_is_one_read_per_block(batch, n_in, n_out, prefetch, tmp_path, count_preads):
    x, w, b = _data(batch, n_in, n_out)
    layout = kernels.stream_layout(n_out, n_in)
    assert layout == ("nk" if n_out >= n_in else "kn")
    _, fm = kernels.spill(w, layout, tmp_path)
    assert fm.contiguous_blocks and fm.reads_per_block == 1
    buf = np.empty(2 * 7 * min(n_in, n_out) + 5, dtype=np.float32)  # blocks of 7 bands, not dividing n
    half = buf.size // 2 if prefetch else buf.size
    count_preads.update(n=0, bytes=0)
    got = kernels.streamed_affine(x, fm, b, "numpy", buf, prefetch=prefetch)
    assert count_preads["n"] == _n_blocks(fm, half) > 1
    assert count_preads["bytes"] == fm.nbytes  # every weight read once per batch
    np.testing.assert_allclose(got, x @ w.T + b, rtol=2e-5, atol=2e-4)


@pytest.mark.parametrize("batch, n_in, n_out", [(4, 50, 1001), (4, 1001, 50)])
def test_a_file_in_the_other_layout_reads_each_stored_row(batch, n_in, n_out, tmp_path, count_preads):
    """Files berg does not write (a published ``(n_out, n_in)`` projection) are still read, row by row."""
    x, w, b = _data(batch, n_in, n_out)
    other = "kn" if kernels.stream_layout(n_out, n_in) == "nk" else "nk"
    _, fm = kernels.spill(w, other, tmp_path)
    assert not fm.contiguous_blocks and fm.reads_per_block == min(n_in, n_out)
    buf = np.empty(2 * 7 * min(n_in, n_out), dtype=np.float32)
    count_preads.update(n=0, bytes=0)
    got = kernels.streamed_affine(x, fm, b, "numpy", buf)
    assert count_preads["n"] == _n_blocks(fm, buf.size // 2) * fm.reads_per_block
    assert count_preads["bytes"] == fm.nbytes
    np.testing.assert_allclose(got, x @ w.T + b, rtol=2e-5, atol=2e-4)


@pytest.mark.parametrize("forced", ["numpy_kn", "numpy_nk", "torch_kn", "torch_nk"])
@pytest.mark.parametrize("n_in, n_out", [(100, 3001), (3001, 100)])  # 1.1 MiB: streamed at 1 MiB
def test_the_engine_spills_in_memory_weights_for_one_read_per_block(
    forced, n_in, n_out, tmp_path, monkeypatch, count_preads
):
    """Whatever layout the kernel table (here ``BERG_READOUT_KERNEL``) prefers, the spilled file is read
    one block per ``pread``: the old engine spilled it in the table's layout (a read per row when ``kn``)."""
    monkeypatch.setenv("BERG_STREAM_MB", "1")
    monkeypatch.setenv("BERG_READOUT_KERNEL", forced)
    monkeypatch.setattr(kernels, "BLOCK_BYTES", 64 << 10)
    x, w, b = _data(8, n_in, n_out)
    readout = SimpleNamespace(weight=w.copy(), bias=b)
    stored = engine.stream_store(readout, device="cpu", batch=8, folder=tmp_path)
    assert stored is not None and stored.contiguous_blocks
    assert isinstance(readout.weight, np.memmap)  # the in-memory copy can be freed
    np.testing.assert_array_equal(np.asarray(readout.weight), w)
    kernel = forced.split("_")[0]
    op = kernels.AffineOp(readout.weight, b, kernels.Choice(kernel, stored.layout), stored=stored)
    buf = np.empty(kernels.BLOCK_BYTES // 4, dtype=np.float32)
    count_preads.update(n=0, bytes=0)
    with torch.inference_mode():
        got = op(torch.from_numpy(x), lambda: buf).numpy()
    assert count_preads["n"] == _n_blocks(stored, buf.size // 2) > 1
    in_memory = kernels.affine(torch.from_numpy(x), kernels.operand(w, stored.layout), b, kernel).numpy()
    np.testing.assert_allclose(got, in_memory, rtol=2e-5, atol=2e-4)


def test_a_truncated_file_is_named_in_a_clear_error(tmp_path):
    x, w, b = _data(2, 30, 9)
    path = tmp_path / "w.bin"
    w.tofile(path)
    os.truncate(path, w.nbytes - 40)
    for fm in (
        kernels.FileMatrix(path, 0, w.shape, transposed=False),  # column bands: one read per row
        kernels.FileMatrix(path, 0, w.T.shape, transposed=True),  # whole-row blocks
    ):
        with pytest.raises(ModelLoadError, match="truncated"):
            kernels.streamed_affine(x[:, : fm.n_in], fm, b[: fm.n_out], "numpy", np.empty(64, np.float32))


def test_reads_go_into_a_contiguous_float32_buffer(tmp_path):
    _, w, _ = _data(1, 5, 4)
    _, fm = kernels.spill(w, "nk", tmp_path)
    with pytest.raises(ValueError, match="C-contiguous"):
        fm.read(0, 4, 0, 2, np.empty((2, 4), np.float32).T)
    out = np.empty((4, 2), np.float32)
    np.testing.assert_array_equal(fm.read(0, 4, 3, 5, out), w[:, 3:5])


# ------------------------------------------------------------------------------------------ deriving the layout
@pytest.mark.parametrize("rows, cols, block_bytes", [(5, 129, 4 * 5 * 7), (13, 1, 4), (3, 1000, 1 << 20), (7, 33, 4)])
def test_copy_transposed_makes_a_file_read_one_block_per_pread(rows, cols, block_bytes, tmp_path, count_preads):
    """A published ``(n_out, n_in)`` projection, rewritten once as ``W.T``, streams one read per block."""
    x, w, b = _data(3, cols, rows)  # W (n_out=rows, n_in=cols)
    src = tmp_path / "w.bin"
    w.tofile(src)
    fm = kernels.FileMatrix(src, 0, w.shape, transposed=False)
    with open(tmp_path / "wt.bin", "wb") as fh:
        fh.write(b"HEADER--")  # written at the file's position: a header may come first
        assert kernels.copy_transposed(fm, fh, block_bytes=block_bytes) == w.nbytes
    raw = (tmp_path / "wt.bin").read_bytes()
    assert raw[:8] == b"HEADER--" and len(raw) == 8 + w.nbytes
    np.testing.assert_array_equal(np.frombuffer(raw[8:], dtype="<f4").reshape(cols, rows), w.T)
    wt = kernels.FileMatrix(tmp_path / "wt.bin", 8, (cols, rows), transposed=True)
    assert wt.n_out == rows and wt.n_in == cols
    assert wt.contiguous_blocks == (cols > rows)  # a projection's W.T is in stream layout
    in_memory = kernels.affine(torch.from_numpy(x), kernels.operand(w, wt.layout), b, "numpy").numpy()
    buf = np.empty(2 * 4 * min(rows, cols) + 1, dtype=np.float32)
    count_preads.update(n=0, bytes=0)
    got = kernels.streamed_affine(x, wt, b, "numpy", buf)
    if wt.contiguous_blocks:
        assert count_preads["n"] == _n_blocks(wt, buf.size // 2)
    np.testing.assert_allclose(got, in_memory, rtol=2e-5, atol=2e-5 * math.sqrt(cols))


# ------------------------------------------------------------------------------------------ the cached copy
def _projection_file(path, w: np.ndarray):
    """A safetensors file holding ``weight`` (n_out, n_in) as published, memory-mapped the way berg reads it."""
    from safetensors.numpy import save_file

    from berg.store.artifacts import read_tensors

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"bias": np.zeros(w.shape[0], np.float32), "weight": w}, str(path))
    return read_tensors(path)["weight"]


def test_a_cached_projection_in_the_other_layout_gets_a_verified_copy(tmp_path, count_preads):
    cache = tmp_path / "cache"
    x, w, b = _data(4, 1001, 50)  # a projection: n_in > n_out, published as W (n_out, n_in)
    mapped = _projection_file(cache / "model" / "converted" / "projection.safetensors", w)
    fm = kernels.file_matrix(mapped)
    assert fm.layout == "nk" and fm.reads_per_block == 50

    copy = kernels.stream_copy(fm, cache)
    assert copy is not fm and copy.layout == "kn" and copy.contiguous_blocks
    assert Path(copy.path).parent.name == kernels.STREAM_COPY_DIR
    assert Path(copy.path).stat().st_size == w.nbytes
    np.testing.assert_array_equal(np.fromfile(copy.path, dtype="<f4").reshape(w.T.shape), w.T)
    record = json.loads(Path(copy.path).with_suffix(".json").read_text())
    assert record["source"]["sha256"] == sha256_file(fm.path) and record["copy"]["sha256"] == sha256_file(copy.path)
    assert record["source"]["size"] == Path(fm.path).stat().st_size and record["shape"] == [50, 1001]

    buf = np.empty(2 * 7 * 50, dtype=np.float32)
    count_preads.update(n=0, bytes=0)
    got = kernels.streamed_affine(x, copy, b, "numpy", buf)
    assert count_preads["n"] == _n_blocks(copy, buf.size // 2) > 1  # one read per block (was 50 each)
    in_memory = kernels.affine(torch.from_numpy(x), kernels.operand(w, "nk"), b, "numpy").numpy()
    np.testing.assert_allclose(got, in_memory, rtol=2e-5, atol=2e-5 * math.sqrt(1001))


def test_the_copy_is_reused_while_both_files_match_their_record(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _, w, _ = _data(1, 300, 20)
    src = cache / "m" / "p.safetensors"
    fm = kernels.file_matrix(_projection_file(src, w))
    first = kernels.stream_copy(fm, cache)
    stamp = Path(first.path).stat().st_mtime_ns

    def no_copy(*args, **kwargs):
        raise AssertionError("the copy was made again")

    monkeypatch.setattr(kernels, "copy_transposed", no_copy)
    again = kernels.stream_copy(kernels.file_matrix(_mapped(src)), cache)
    assert again.path == first.path and Path(again.path).stat().st_mtime_ns == stamp
    monkeypatch.undo()

    # the copy damaged (same size, new mtime): made again
    with open(first.path, "r+b") as fh:
        fh.write(b"\0" * 8)
    os.utime(first.path, ns=(stamp + 10**9, stamp + 10**9))  # past the file system's timestamp tick
    remade = kernels.stream_copy(kernels.file_matrix(_mapped(src)), cache)
    np.testing.assert_array_equal(np.fromfile(remade.path, dtype="<f4").reshape(300, 20), w.T)

    # the source replaced by other weights (renamed into place, as berg's store does): the copy follows
    w2 = w + 1
    _projection_file(src.with_name("new.safetensors"), w2)
    os.replace(src.with_name("new.safetensors"), src)
    fm2 = kernels.file_matrix(_mapped(src))
    np.testing.assert_array_equal(np.fromfile(kernels.stream_copy(fm2, cache).path, dtype="<f4").reshape(300, 20), w2.T)
    leftovers = [p.name for p in Path(first.path).parent.iterdir() if ".tmp" in p.name]
    assert leftovers == []  # written under temporary names, renamed into place


def _mapped(path):
    from berg.store.artifacts import read_tensors

    return read_tensors(path)["weight"]


def test_no_copy_outside_the_cache_or_for_files_already_in_stream_layout(tmp_path):
    _, w, _ = _data(1, 300, 20)
    outside = kernels.file_matrix(_projection_file(tmp_path / "mine" / "p.safetensors", w))
    assert kernels.stream_copy(outside, tmp_path / "cache") is outside
    assert kernels.stream_copy(outside, None) is outside
    readout = kernels.file_matrix(_projection_file(tmp_path / "cache" / "m" / "r.safetensors", w.T.copy()))
    assert readout.contiguous_blocks and kernels.stream_copy(readout, tmp_path / "cache") is readout
    assert not (tmp_path / "mine" / kernels.STREAM_COPY_DIR).exists()
    assert not (tmp_path / "cache" / "m" / kernels.STREAM_COPY_DIR).exists()


def test_a_cache_where_no_copy_can_be_written_keeps_the_row_reads(tmp_path):
    cache = tmp_path / "cache"
    _, w, _ = _data(1, 300, 20)
    fm = kernels.file_matrix(_projection_file(cache / "m" / "p.safetensors", w))
    (cache / "m" / kernels.STREAM_COPY_DIR).write_text("a file where the folder would go")
    assert kernels.stream_copy(fm, cache) is fm


def test_the_engine_streams_a_cached_projection_from_its_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("BERG_STREAM_MB", "1")
    cache = tmp_path / "cache"
    x, w, b = _data(4, 3001, 100)  # 1.1 MiB
    proj = SimpleNamespace(weight=_projection_file(cache / "m" / "converted" / "p.safetensors", w), bias=b)
    stored = engine.stream_store(proj, device="cpu", batch=4, folder=cache)
    assert stored.layout == "kn" and stored.contiguous_blocks
    assert isinstance(proj.weight, np.memmap)  # the published map stays as it was
    op = kernels.AffineOp(proj.weight, b, kernels.Choice("numpy", stored.layout), stored=stored)
    buf = np.empty(64 << 8, dtype=np.float32)
    with torch.inference_mode():
        got = op(torch.from_numpy(x), lambda: buf).numpy()
    in_memory = kernels.affine(torch.from_numpy(x), kernels.operand(w, "nk"), b, "numpy").numpy()
    np.testing.assert_allclose(got, in_memory, rtol=2e-5, atol=2e-5 * math.sqrt(3001))


def test_copies_of_files_that_are_gone_are_removed(tmp_path):
    cache = tmp_path / "cache"
    _, w, _ = _data(1, 300, 20)
    old = kernels.stream_copy(kernels.file_matrix(_projection_file(cache / "m" / "old.safetensors", w)), cache)
    (cache / "m" / "old.safetensors").unlink()  # re-derived under a new name (the store drops the old one)
    new = kernels.stream_copy(kernels.file_matrix(_projection_file(cache / "m" / "new.safetensors", w + 1)), cache)
    assert not Path(old.path).exists() and not Path(old.path).with_suffix(".json").exists()
    assert sorted(p.name for p in Path(new.path).parent.iterdir()) == sorted(
        [Path(new.path).name, Path(new.path).with_suffix(".json").name]
    )


def test_a_fold_in_stream_layout_removes_the_copy_its_predecessor_left(tmp_path):
    """A newer fold version is stored in stream layout: no copy of its own, and the old one's copy goes."""
    from safetensors.numpy import save_file

    from berg.store.artifacts import read_tensors

    cache = tmp_path / "cache"
    _, w, _ = _data(1, 300, 20)
    old = kernels.stream_copy(kernels.file_matrix(_projection_file(cache / "m" / "fold-v2.safetensors", w)), cache)
    assert Path(old.path).exists()
    (cache / "m" / "fold-v2.safetensors").unlink()  # superseded by the new version (the store drops it)
    new_path = cache / "m" / "fold-v3.safetensors"
    save_file({"bias": np.zeros(w.shape[0], np.float32), "weight_t": np.ascontiguousarray(w.T)}, str(new_path))
    fm = kernels.file_matrix(read_tensors(new_path)["weight_t"].T)
    assert fm.contiguous_blocks and kernels.stream_copy(fm, cache) is fm
    assert list((cache / "m" / kernels.STREAM_COPY_DIR).iterdir()) == []
