"""Run stores verify what they serve (issue 24): every shard's marker records its chunk files (size, mtime,
sha256); status, export and resume check them; incomplete exports are NaN where not done, never old values."""

from __future__ import annotations

import argparse
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from berg.errors import InvalidParameterError
from berg.runner.cli import cmd_export, cmd_status
from berg.runner.export import IncompleteRunError, export_hdf5
from berg.runner.zarr_store import RunStore
from berg.testing.runs import flip_byte, toy_run_store, toy_run_target

N, SHARD = 10, 4  # shards 0 and 1 hold 4 rows, shard 2 holds 2


def _target(h="h1"):
    return toy_run_target(h)


def _store(tmp_path, h="h1", data=None):
    return toy_run_store(tmp_path, target_hash=h, data=data, n=N, shard_size=SHARD)


def _chunk(store, t, shard):
    (path,) = store.chunk_files(t.key, shard)
    return path


_flip = flip_byte


def _states(store, **kw):
    st = store.status(**kw)["targets"]["toy/sub-01"]
    return {k: st[k] for k in ("done", "stale", "damaged", "pending")}, st


def test_intact_store_is_complete_and_markers_record_chunks(tmp_path):
    store, t, data = _store(tmp_path)
    marker = store.read_marker(t.key, 1)
    ((rel, rec),) = marker["chunks"].items()
    assert rel == "toy/sub-01/responses/c/1/0" and rec["size"] == _chunk(store, t, 1).stat().st_size
    assert store.status()["complete"] and store.status(verify=True)["complete"]


def test_flipped_bytes_are_damaged_and_export_refuses(tmp_path, capsys):
    store, t, data = _store(tmp_path)
    _flip(_chunk(store, t, 1))
    states, st = _states(store)
    assert states == {"done": 2, "stale": 0, "damaged": 1, "pending": 0}
    assert st["damaged_shards"] == [
        {"shard": 1, "reason": "chunk toy/sub-01/responses/c/1/0 does not hash to what was written (its bytes changed)"}
    ]
    with pytest.raises(IncompleteRunError, match=r"1 damaged target shard\(s\); e\.g\. toy/sub-01 shard 1: chunk"):
        export_hdf5(store.root, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()
    rc = cmd_status(argparse.Namespace(run=store.root, json=False, verify=False))
    text = capsys.readouterr().out
    assert rc == 3 and "1 damaged shard(s) (recomputed by the next 'berg run'):" in text
    assert "toy/sub-01 shard 1: chunk toy/sub-01/responses/c/1/0 does not hash" in text


def test_flip_with_preserved_mtime_needs_verify(tmp_path):
    store, t, _ = _store(tmp_path)
    _flip(_chunk(store, t, 2), keep_mtime=True)
    assert _states(store)[0]["damaged"] == 0  # the fast path trusts an unchanged size and mtime
    assert _states(store, verify=True)[0] == {"done": 2, "stale": 0, "damaged": 1, "pending": 0}
    with pytest.raises(IncompleteRunError, match="damaged"):
        export_hdf5(store.root, tmp_path / "out.h5", verify=True)


def test_deleted_chunk_forged_and_unrecorded_markers_are_damaged(tmp_path):
    store, t, _ = _store(tmp_path)
    _chunk(store, t, 0).unlink()
    forged = store.read_marker(t.key, 2)
    store.marker_path(t.key, 1).write_text(json.dumps(forged))  # shard 2's marker copied onto shard 1
    bare = {k: v for k, v in store.read_marker(t.key, 2).items() if k != "chunks"}
    states, st = _states(store)
    assert states["damaged"] == 2 and states["done"] == 1
    reasons = {d["shard"]: d["reason"] for d in st["damaged_shards"]}
    assert reasons == {
        0: "chunk toy/sub-01/responses/c/0/0 is missing",
        1: "its marker belongs to 'toy/sub-01' shard 2 (copied or forged)",
    }
    store.marker_path(t.key, 2).write_text(json.dumps(bare))
    assert _states(store)[1]["damaged_shards"][-1] == {
        "shard": 2,
        "reason": "its marker records no chunk checksums (forged, or written by an older berg)",
    }
    store.marker_path(t.key, 2).write_text(json.dumps({**bare, "chunks": {}}))  # "nothing was written"
    assert _states(store)[1]["damaged_shards"][-1]["shard"] == 2


def test_an_all_nan_shard_writes_and_records_its_chunk(tmp_path):
    """zarr skips chunks equal to the fill value by default; a run writes them, so the record is never empty."""
    data = np.full((N, 3), np.nan, dtype=np.float32)  # e.g. every stimulus of the run failed
    store, t, _ = _store(tmp_path, data=data)
    assert all(len(store.read_marker(t.key, s)["chunks"]) == 1 for s in range(3))
    assert store.status(verify=True)["complete"]


def test_a_copied_store_with_new_mtimes_stays_complete(tmp_path):
    store, _, data = _store(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(store.root, copy)  # copy2 keeps mtimes: touch every chunk to be sure they change
    for p in (copy / "responses.zarr").rglob("c/*/*"):
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 5_000_000_000))
    assert RunStore.open(copy).status()["complete"]  # changed mtimes are re-hashed, not condemned


def test_allow_incomplete_fills_nan_never_old_values(tmp_path, capsys, caplog):
    store, t, data = _store(tmp_path)
    # The plan changed: shards 0 and 2 were recomputed under the new hash, shard 1 still holds old numbers.
    new = _target("h2")
    store.initialise(
        targets=[new],
        plan={"p": 2},
        plan_hash="ph2",
        stimulus_ids=[f"s{i}" for i in range(N)],
        stimuli_fingerprint={"n": N},
        shard_size=SHARD,
        dtype="float32",
    )
    fresh = -data
    for s in (0, 2):
        a, b = s * SHARD, min(N, (s + 1) * SHARD)
        store.mark_done(new.key, s, {"target_hash": new.hash, "chunks": store.write_shard(new.key, s, a, fresh[a:b])})
    states, _ = _states(store)
    assert states == {"done": 2, "stale": 1, "damaged": 0, "pending": 0}
    with pytest.raises(IncompleteRunError, match="1 stale"):
        export_hdf5(store.root, tmp_path / "out.h5")
    with caplog.at_level("WARNING", logger="berg.runner.export"):
        export_hdf5(store.root, tmp_path / "out.h5", allow_incomplete=True)
    assert "4 row(s) are NaN" in caplog.text
    with h5py.File(tmp_path / "out.h5") as f:
        got = f["toy/sub-01/responses"]
        assert np.isnan(got[4:8]).all()  # the stale shard: NaN, not the old plan's values
        np.testing.assert_array_equal(got[:4], fresh[:4])
        np.testing.assert_array_equal(got[8:], fresh[8:])
        assert got.attrs["n_nan_rows"] == 4 and json.loads(got.attrs["nan_shards"]) == [1]
    args = argparse.Namespace(run=store.root, to=tmp_path / "cli.h5", allow_incomplete=True, verify=False, force=False)
    assert cmd_export(args) == 0
    out = capsys.readouterr().out
    assert "incomplete: 4 row(s) are NaN (shards pending, stale or damaged): toy/sub-01 4" in out


def test_export_names_and_overwrites(tmp_path, capsys):
    store, _, data = _store(tmp_path)
    with pytest.raises(InvalidParameterError, match=r"berg export writes HDF5; name the file out\.h5"):
        export_hdf5(store.root, tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()
    target = tmp_path / "out.h5"
    target.write_bytes(b"user data")
    args = argparse.Namespace(run=store.root, to=target, allow_incomplete=False, verify=False, force=False)
    with pytest.raises(InvalidParameterError, match="exists; pass --force to overwrite it"):
        cmd_export(args)
    assert target.read_bytes() == b"user data"
    args.force = True
    assert cmd_export(args) == 0 and "wrote" in capsys.readouterr().out
    with h5py.File(target) as f:
        np.testing.assert_array_equal(f["toy/sub-01/responses"][:], data)
    export_hdf5(store.root, target)  # Python keeps h5py's convention: overwrite by default
