"""Outputs written as a unit and never over a user's file (issue #24), on io's stand-in model.

A NIfTI and its sidecar, a GIfTI lh/rh pair: both or neither, also when the write or the rename
fails; the sidecar name never overwrites a JSON berg did not write; a killed save's temporary is
swept by the next save to the folder; bad prefixes, ids, suffixes and over-long names are refused
with berg errors before anything is written.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_io import StandIn, _responses

import berg
from berg import io as bio
from berg.core.spaces import SurfaceSpace
from berg.errors import BERGError, FileAccessError, InvalidParameterError

HERE = Path(__file__).parent


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class SurfaceStandIn(StandIn):
    """The stand-in with a small two-hemisphere surface space."""

    def __init__(self):
        super().__init__({1: 7}, volume=False)
        self.spaces = {1: SurfaceSpace("fsaverage-toy", {"lh": np.arange(4), "rh": np.arange(3)}, {"lh": 6, "rh": 5})}


# ------------------------------------------------------------------------------------------ sidecars


@pytest.mark.parametrize(
    "content", ['{"TaskName": "mine", "RepetitionTime": 2.0}', "[1, 2, 3]", "my notes, not JSON", ""]
)
def test_sidecar_never_overwrites_a_json_berg_did_not_write(tmp_path, content):
    mine = tmp_path / "resp.json"
    mine.write_text(content)
    before = (mine.read_bytes(), mine.stat().st_mtime_ns)
    with pytest.raises(InvalidParameterError, match=r"resp.json exists and was not written by berg.*move or rename"):
        bio.save_nifti(tmp_path / "resp.nii.gz", _responses(3, 12), StandIn({1: 12}))
    assert (mine.read_bytes(), mine.stat().st_mtime_ns) == before
    assert _files(tmp_path) == ["resp.json"]  # no image without its sidecar either


def test_stale_sidecar_of_an_earlier_save_is_replaced(tmp_path):
    model = StandIn({1: 12})
    path = tmp_path / "resp.nii"
    bio.save_nifti(path, _responses(3, 12), model, stimulus_ids=["a", "b", "c"])
    assert json.loads((tmp_path / "resp.json").read_text())["volumes"] == ["a", "b", "c"]
    bio.save_nifti(path, _responses(1, 12, 2), model, stimulus_ids=["z"])  # 3-D now: its sidecar still replaces
    side = json.loads((tmp_path / "resp.json").read_text())
    assert side["volumes"] == ["z"] and side[bio.SIDECAR_KEY]["image"] == "resp.nii"
    assert nib.load(path).shape == (5, 6, 4)


# ------------------------------------------------------------------------------------------ units


def _fail_on_call(monkeypatch, module, name, n, exc):
    original = getattr(module, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def test_nifti_and_sidecar_appear_together_or_not_at_all(tmp_path, monkeypatch):
    model = StandIn({1: 12})
    path = tmp_path / "r.nii.gz"
    bio.save_nifti(path, _responses(2, 12), model)
    old = {p: p.read_bytes() for p in tmp_path.iterdir()}
    # 1. the sidecar cannot be written (disk full): the earlier pair stays as it was, no temporaries
    _fail_on_call(monkeypatch, Path, "write_text", 1, OSError(28, "No space left on device"))
    with pytest.raises(FileAccessError, match="No space left on device"):
        bio.save_nifti(path, _responses(2, 12, 5), model)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == old
    monkeypatch.undo()
    # 2. the second rename fails after the first succeeded: neither member is left (never a mixed pair)
    _fail_on_call(monkeypatch, os, "replace", 2, OSError(5, "Input/output error"))
    with pytest.raises(FileAccessError, match="Input/output error"):
        bio.save_nifti(path, _responses(2, 12, 6), model)
    assert _files(tmp_path) == []
    monkeypatch.undo()
    bio.save_nifti(path, _responses(2, 12, 7), model)
    assert _files(tmp_path) == ["r.json", "r.nii.gz"]


def test_gifti_pair_appears_together_or_not_at_all(tmp_path, monkeypatch):
    model = SurfaceStandIn()
    r = _responses(2, 7)
    files = berg.save_gifti(tmp_path / "s", r, model)
    assert {h: p.name for h, p in files.items()} == {"lh": "s.lh.func.gii", "rh": "s.rh.func.gii"}
    np.testing.assert_allclose(nib.load(files["rh"]).darrays[1].data[:3], r[1, 4:])
    old = {p: p.read_bytes() for p in tmp_path.iterdir()}
    _fail_on_call(monkeypatch, nib, "save", 2, RuntimeError("rh exploded"))  # lh written, rh fails
    with pytest.raises(RuntimeError, match="rh exploded"):
        berg.save_gifti(tmp_path / "s", _responses(2, 7, 9), model)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == old  # the old pair, no lh of the new one
    monkeypatch.undo()
    _fail_on_call(monkeypatch, os, "replace", 2, OSError(5, "Input/output error"))
    with pytest.raises(FileAccessError):
        berg.save_gifti(tmp_path / "s", _responses(2, 7, 9), model)
    assert _files(tmp_path) == []


@pytest.mark.parametrize("prefix", ["", "out/", ".", "..", ".gii", ".func.gii"])
def test_gifti_prefix_without_a_file_name_is_refused(tmp_path, monkeypatch, prefix):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidParameterError, match="has no file name; give a path prefix such as 'out/responses'"):
        berg.save_gifti(prefix, _responses(2, 7), SurfaceStandIn())
    assert _files(tmp_path) == []


# ------------------------------------------------------------------------------------------ temporaries


def test_stale_temporary_of_a_dead_writer_is_swept_by_the_next_save(tmp_path):
    model = StandIn({1: 12})
    dead = _dead_pid()
    old = time.time() - 3600
    stale = tmp_path / f".r.h5.{dead}.0123abcd.tmp.h5"
    fresh = tmp_path / f".x.nii.gz.{dead}.89abcdef.tmp.nii.gz"  # just written: maybe a writer on another host
    alive = tmp_path / f".y.h5.{os.getpid()}.00ff00ff.tmp.h5"
    for p in (stale, fresh, alive):
        p.write_bytes(b"\0" * 1000)
    os.utime(stale, (old, old))
    os.utime(alive, (old, old))
    user = tmp_path / ".hidden.tmp"  # not a name berg makes
    user.write_text("keep")
    os.utime(user, (old, old))
    berg.save(tmp_path / "other.h5", _responses(2, 12), model)
    assert _files(tmp_path) == sorted([fresh.name, alive.name, user.name, "other.h5"])


def test_temporary_of_a_killed_save_is_removed_by_the_next_save(tmp_path):
    """SIGKILL during berg.save leaves its temporary; the next save to the folder removes it."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(HERE)!r})
        from test_io import StandIn, _responses
        from berg import io as bio
        label = bio._label
        def slow(subject):  # called inside the open HDF5 temporary
            print("writing", flush=True)
            time.sleep(60)
            return label(subject)
        bio._label = slow
        bio.save({str(tmp_path / "big.h5")!r}, _responses(500, 12), StandIn({{1: 12}}))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".big.h5.")]
    assert len(left) == 1 and not (tmp_path / "big.h5").exists()
    old = time.time() - 120  # older than the sweep's NFS guard (a live writer elsewhere keeps touching it)
    os.utime(left[0], (old, old))
    berg.save(tmp_path / "next.h5", _responses(2, 12), StandIn({1: 12}))
    assert _files(tmp_path) == ["next.h5"]


# ------------------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    "ids, match",
    [
        ("abc", "got the single string 'abc'"),
        (b"abc", "got the single string"),
        ([1, 2, 3], r"stimulus_ids\[0\] is int 1; each id must be a str"),
        (["a", None, "c"], r"stimulus_ids\[1\] is NoneType"),
        (np.array([["a", "b", "c"]]), r"array of shape \(1, 3\)"),
        ({"a", "b", "c"}, "got set"),
        (["a", "b\x00", "c"], "NUL byte"),
        (["a", "b"], "stimulus_ids has 2 entries; responses have 3"),
    ],
)
def test_stimulus_ids_must_be_one_str_per_stimulus(tmp_path, ids, match):
    model = StandIn({1: 12})
    with pytest.raises(InvalidParameterError, match=match):
        berg.save(tmp_path / "r.h5", _responses(3, 12), model, stimulus_ids=ids)
    with pytest.raises(InvalidParameterError, match=match):
        berg.save_nifti(tmp_path / "r.nii", _responses(3, 12), model, stimulus_ids=ids)
    assert _files(tmp_path) == []


def test_stimulus_ids_accept_str_arrays_and_paths(tmp_path):
    model = StandIn({1: 12})
    for ids in (np.array(["a", "b", "c"]), (Path("x/a.png"), "b", "c")):
        back = berg.load_responses(berg.save(tmp_path / "r.h5", _responses(3, 12), model, stimulus_ids=ids))
        assert back["stimulus_ids"] == [str(i) for i in ids]


def test_file_names_over_the_os_limit_are_a_berg_error(tmp_path):
    model = StandIn({1: 12})
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    for n in (limit + 10, limit - 10):  # too long for the OS; fits, but its temporary would not
        with pytest.raises(InvalidParameterError, match=rf"{limit} bytes per name.*shorten the name to at most"):
            berg.save(tmp_path / ("a" * (n - 3) + ".h5"), _responses(2, 12), model)
        with pytest.raises(InvalidParameterError, match="shorten the name"):
            berg.save_nifti(tmp_path / ("a" * (n - 4) + ".nii"), _responses(2, 12), model)
        with pytest.raises(InvalidParameterError, match="shorten the name"):
            berg.save_gifti(tmp_path / ("a" * n), _responses(2, 7), SurfaceStandIn())
    assert berg.save(tmp_path / ("a" * 150 + ".h5"), _responses(2, 12), model).is_file()
    with pytest.raises(BERGError, match="File name too long"):  # a folder component over the limit
        berg.save(tmp_path / ("d" * (limit + 5)) / "r.h5", _responses(2, 12), model)


@pytest.mark.parametrize("name", ["r.txt", "r.csv", "r.npy", "r"])
def test_save_to_another_suffix_is_refused_naming_the_valid_ones(tmp_path, name):
    with pytest.raises(InvalidParameterError, match=r"must end with \.h5, \.hdf5"):
        berg.save(tmp_path / name, _responses(2, 12), StandIn({1: 12}))
    with pytest.raises(InvalidParameterError, match=r"must end with \.nii, \.nii\.gz"):
        berg.save_nifti(tmp_path / name, _responses(2, 12), StandIn({1: 12}))
    assert _files(tmp_path) == []


def test_python_save_overwrites_by_default(tmp_path):
    model = StandIn({1: 12})
    first, second = _responses(2, 12, 1), _responses(2, 12, 2)
    berg.save(tmp_path / "r.h5", first, model)
    berg.save(tmp_path / "r.h5", second, model)
    np.testing.assert_array_equal(berg.load_responses(tmp_path / "r.h5")["responses"]["1"], second)


@pytest.mark.parametrize("bad", [object(), "a model id", None])
def test_something_that_is_not_a_model_is_refused(tmp_path, bad):
    with pytest.raises(InvalidParameterError, match="model must be a loaded berg model"):
        berg.save(tmp_path / "r.h5", _responses(2, 12), bad)
    with pytest.raises(InvalidParameterError, match="model must be a loaded berg model"):
        berg.save_nifti(tmp_path / "r.nii", _responses(2, 12), bad)


def test_io_checks_models_by_the_contract_not_by_attribute_probes():
    source = inspect.getsource(bio)
    assert "hasattr(" not in source and "getattr(model" not in source and "getattr(spec" not in source
