"""The Source protocol, registry-named source classes, the build source and Store.derived."""

from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from berg.errors import (
    ArtifactError,
    ArtifactNotFoundError,
    IntegrityError,
    InvalidParameterError,
    ModelLoadError,
    ModelNotBuiltError,
    OfflineError,
)
from berg.fsutil import atomic_path, sha256_file
from berg.store import Store
from berg.store.artifacts import ArtifactWriter, read_tensors
from berg.store.cache import CacheIndex, cache_verify
from berg.store.manifest import FileInfo
from berg.store.sources import S3Source, Source, SourceContext, source_for

REPO = Path(__file__).resolve().parents[1]


class FolderSource(Source):
    """A "remote" that is a local folder: files under ``cfg["root"]``; counts what it serves.

    Registered in tests only through ``kind: "test_store_sources:FolderSource"`` (the plug-in path).
    """

    served: dict[str, int] = {}

    def __init__(self, cfg, context=None):
        super().__init__(cfg, context)
        self.root = Path(cfg["root"])
        self.has_manifest = bool(cfg.get("manifest", True))

    def describe(self) -> str:
        return f"folder {self.root}"

    def head(self, key: str) -> FileInfo:
        path = self.root / key
        if not path.is_file():
            raise ArtifactNotFoundError(f"{path} does not exist")
        return FileInfo(size=path.stat().st_size)

    def fetch(self, key: str, dest: Path, expected: FileInfo | None) -> FileInfo:
        self.head(key)
        with atomic_path(dest) as tmp:
            shutil.copyfile(self.root / key, tmp)
            digest = sha256_file(tmp)
            if expected is not None and expected.sha256 and digest != expected.sha256:
                raise IntegrityError(f"{key}: sha256 {digest}, expected {expected.sha256}")
        FolderSource.served[key] = FolderSource.served.get(key, 0) + 1
        return FileInfo(size=dest.stat().st_size, sha256=digest)

    def list(self, prefix: str = "") -> list[str]:
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.is_file() and p.relative_to(self.root).as_posix().startswith(prefix)
        )


def folder_source(root: Path, manifest: bool = True) -> dict:
    return {"kind": "test_store_sources:FolderSource", "root": str(root), "manifest": manifest}


def _native(out: Path, model_id: str = "plug") -> dict[str, np.ndarray]:
    arrays = {"weight": np.arange(12, dtype=np.float32).reshape(3, 4), "bias": np.ones(3, np.float32)}
    w = ArtifactWriter(out, model_id)
    w.add_tensors("readout/sub-01.safetensors", arrays)
    w.add_json("metadata/sub-01.json", {"n_outputs": 3})
    w.finalize({"creator": "test"})
    return arrays


# --------------------------------------------------------------------------- the protocol


def test_builtin_sources_implement_the_protocol(tmp_path):
    ctx = SourceContext(cache_dir=tmp_path)
    for cfg in (
        {"kind": "s3", "bucket": "b", "prefix": "p/"},
        {"kind": "pypi_wheel", "package": "p", "version": "1", "sha256": "0" * 64, "converter": "m:f"},
        {"kind": "build", "command": "berg build x --data DIR", "data": "the x dataset"},
    ):
        src = source_for(cfg, ctx)
        assert isinstance(src, Source) and isinstance(src.describe(), str) and src.context is ctx
    assert source_for({"kind": "s3", "bucket": "b", "prefix": "p/"}).describe().startswith("s3://b/p/")
    with pytest.raises(InvalidParameterError, match="valid kinds: s3, pypi_wheel, build"):
        source_for({"kind": "ftp"})
    with pytest.raises(InvalidParameterError, match="needs a 'bucket'"):
        S3Source({"kind": "s3"})
    with pytest.raises(InvalidParameterError, match="must be a string"):
        source_for({"kind": "build", "data": ["x"]})
    with pytest.raises(ModelLoadError, match="must subclass berg.store.sources.Source"):
        source_for({"kind": "berg.store.cache:CacheIndex"})
    with pytest.raises(ModelLoadError, match="cannot import source class"):
        source_for({"kind": "no_such_module_xyz:Thing"})


def test_registry_named_source_class_serves_a_native_artifact(tmp_path):
    arrays = _native(tmp_path / "remote")
    FolderSource.served.clear()
    src = folder_source(tmp_path / "remote")
    store = Store(cache_dir=tmp_path / "cache")
    path = store.fetch("plug", src, "readout/sub-01.safetensors")
    assert path == tmp_path / "cache" / "plug" / "readout" / "sub-01.safetensors"
    np.testing.assert_array_equal(read_tensors(path)["weight"], arrays["weight"])
    # the store, not the source, recorded the index (with the source's description)
    rec = CacheIndex(tmp_path / "cache" / "plug").get("readout/sub-01.safetensors")
    assert rec["sha256"] == sha256_file(path) and rec["source"] == f"folder {tmp_path / 'remote'}"
    # a second store reuses the verified copy: nothing served again
    Store(cache_dir=tmp_path / "cache").fetch("plug", src, "readout/sub-01.safetensors")
    assert FolderSource.served == {"manifest.json": 1, "readout/sub-01.safetensors": 1}
    # a tampered remote file is refused against the manifest and nothing is kept
    (tmp_path / "remote" / "metadata" / "sub-01.json").write_text('{"n_outputs": 4}')
    with pytest.raises(IntegrityError, match="expected"):
        store.fetch("plug", src, "metadata/sub-01.json")
    assert not (tmp_path / "cache" / "plug" / "metadata" / "sub-01.json").exists()
    assert store.source(src).list("readout/") == ["readout/sub-01.safetensors"]


def test_offline_refuses_a_remote_source(tmp_path):
    _native(tmp_path / "remote")
    with pytest.raises(OfflineError, match="berg fetch plug --all"):
        Store(cache_dir=tmp_path / "cache", offline=True).fetch(
            "plug", folder_source(tmp_path / "remote"), "readout/sub-01.safetensors"
        )


# --------------------------------------------------------------------------- build source

BUILD = {
    "kind": "build",
    "command": "berg build toy-built --data DIR",
    "data": "the toy dataset (images/ and responses.npy) from https://example.org/toy",
}


def test_build_source_not_built_error_gives_command_and_data(tmp_path):
    store = Store(cache_dir=tmp_path / "cache")
    with pytest.raises(ModelNotBuiltError) as info:
        store.fetch("toy-built", BUILD, "readout/sub-01.safetensors")
    msg = str(info.value)
    assert "berg build toy-built --data DIR" in msg and "the toy dataset (images/ and responses.npy)" in msg
    assert str(tmp_path / "cache" / "toy-built") in msg and "BERG_BUILD_DIR" in msg
    # offline changes nothing: a built model is never downloaded, the error still says how to build it
    with pytest.raises(ModelNotBuiltError, match="berg build toy-built"):
        Store(cache_dir=tmp_path / "cache", offline=True).fetch("toy-built", BUILD, "metadata/sub-01.json")
    assert not (tmp_path / "cache").exists()  # nothing written just to say so
    # an entry that only says kind: build gets the default command and points at the card
    with pytest.raises(ModelNotBuiltError, match=r"berg build other-built --data DIR[\s\S]*berg describe other-built"):
        store.fetch("other-built", {"kind": "build", "prefix": "other-built/"}, "manifest.json")


def test_built_artifact_is_verified_in_cache_or_chosen_folder(tmp_path, monkeypatch):
    folder = Store(cache_dir=tmp_path / "cache").model_folder("toy-built", BUILD)
    assert folder == tmp_path / "cache" / "toy-built"
    arrays = _native(folder, "toy-built")  # what `berg build` writes
    store = Store(cache_dir=tmp_path / "cache", offline=True)
    path = store.fetch("toy-built", BUILD, "readout/sub-01.safetensors")
    np.testing.assert_array_equal(read_tensors(path)["bias"], arrays["bias"])
    # a folder the user chose: BERG_BUILD_DIR (or Store(build_dir=...)) holds <dir>/<model_id>/
    shutil.move(str(tmp_path / "cache" / "toy-built"), str(tmp_path / "mine" / "toy-built"))
    with pytest.raises(ModelNotBuiltError):
        Store(cache_dir=tmp_path / "cache").fetch("toy-built", BUILD, "readout/sub-01.safetensors")
    monkeypatch.setenv("BERG_BUILD_DIR", str(tmp_path / "mine"))
    assert Store(cache_dir=tmp_path / "cache").model_folder("toy-built", BUILD) == tmp_path / "mine" / "toy-built"
    got = Store(cache_dir=tmp_path / "cache").fetch("toy-built", BUILD, "readout/sub-01.safetensors")
    assert got == tmp_path / "mine" / "toy-built" / "readout" / "sub-01.safetensors"
    monkeypatch.delenv("BERG_BUILD_DIR")
    assert (
        Store(cache_dir=tmp_path / "c2", build_dir=tmp_path / "mine")
        .fetch("toy-built", BUILD, "metadata/sub-01.json")
        .is_file()
    )
    # a corrupted built file is an IntegrityError that says to rebuild (it is never "fetched again")
    data = bytearray(got.read_bytes())
    data[-1] ^= 1
    got.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="berg build toy-built"):
        Store(cache_dir=tmp_path / "cache", build_dir=tmp_path / "mine").fetch(
            "toy-built", BUILD, "readout/sub-01.safetensors"
        )
    assert got.exists()  # the user's build is not deleted


# --------------------------------------------------------------------------- Store.derived


def _builder(calls: list, value: float):
    def build(tmp: Path) -> None:
        calls.append(tmp)
        from safetensors.numpy import save_file

        save_file({"weight": np.full((4, 8), value, np.float32)}, str(tmp))

    return build


def test_derived_is_built_once_recorded_and_verified(tmp_path):
    store = Store(cache_dir=tmp_path)
    calls: list[Path] = []
    inputs = {"source.npy": "a" * 64, "version": "1"}
    path = store.derived("m", "proj.safetensors", inputs, _builder(calls, 1.0))
    assert path.parent == tmp_path / "m" / "converted" and path.name.startswith("proj-")
    assert len(calls) == 1 and calls[0].parent == path.parent and str(os.getpid()) in calls[0].name
    rec = CacheIndex(tmp_path / "m").get(path.relative_to(tmp_path / "m").as_posix())
    assert rec["derived"] and rec["inputs"] == inputs and rec["sha256"] == sha256_file(path)
    assert Store(cache_dir=tmp_path).derived("m", "proj.safetensors", inputs, _builder(calls, 1.0)) == path
    assert len(calls) == 1  # reused
    # a flipped byte: rebuilt, never served
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    again = Store(cache_dir=tmp_path).derived("m", "proj.safetensors", inputs, _builder(calls, 1.0))
    assert len(calls) == 2 and np.all(read_tensors(again)["weight"] == 1.0)
    # new inputs: a new file; the superseded one is removed
    other = Store(cache_dir=tmp_path).derived("m", "proj.safetensors", {**inputs, "version": "2"}, _builder(calls, 2.0))
    assert other != path and not path.exists() and np.all(read_tensors(other)["weight"] == 2.0)
    assert [p.name for p in (tmp_path / "m" / "converted").iterdir() if not p.name.endswith(".lock")] == [other.name]


def test_unrecorded_older_derived_files_are_not_trusted_and_removed(tmp_path):
    # a folded projection written before derived files were recorded: never used, removed once rebuilt
    old = tmp_path / "m" / "converted" / "proj-0123456789abcdef.safetensors"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"unverifiable")
    keep = tmp_path / "m" / "converted" / "notes.txt"
    keep.write_text("x")
    calls: list[Path] = []
    path = Store(cache_dir=tmp_path).derived("m", "proj.safetensors", {"v": "1"}, _builder(calls, 1.0))
    assert len(calls) == 1 and path != old and not old.exists() and keep.exists()


def test_derived_build_failure_leaves_nothing(tmp_path):
    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        Store(cache_dir=tmp_path).derived("m", "x.bin", {"v": "1"}, broken)
    left = [p.name for p in (tmp_path / "m" / "converted").iterdir()] if (tmp_path / "m" / "converted").exists() else []
    assert [n for n in left if not n.endswith(".lock")] == []
    with pytest.raises(ArtifactError, match="wrote no file"):
        Store(cache_dir=tmp_path).derived("m", "x.bin", {"v": "1"}, lambda tmp: None)


def test_cache_verify_lists_derived_files(tmp_path, capsys):
    import argparse

    from berg.store.cli import cmd_cache

    store = Store(cache_dir=tmp_path)
    path = store.derived("m", "proj.safetensors", {"v": "1"}, _builder([], 3.0))
    results = cache_verify(tmp_path)
    assert [(r["key"], r["kind"], r["status"]) for r in results] == [
        (path.relative_to(tmp_path / "m").as_posix(), "derived", "ok")
    ]
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))

    class Out:
        text = ""

        def write(self, s):
            Out.text += s

    rc = cmd_cache(argparse.Namespace(action="verify", model_id=None, cache_dir=str(tmp_path)), Out())
    assert rc == 1 and "corrupt derived file (deleted; derived again on next use)" in Out.text
    assert "1 derived): 1 corrupt, 0 unrecorded" in Out.text and not path.exists()


# --------------------------------------------------------------------------- the BMD folded projection


def _bmd_layout(bucket: Path, cache: Path, **store_kw):
    from berg.models.bmd_s3d import BMDLegacyLayout

    sys.path.insert(0, str(REPO))
    from creation_code.bmd_s3d.replica import PREFIX

    spec = types.SimpleNamespace(model_id="bmd-mini", source=folder_source(bucket / PREFIX, manifest=False))
    return BMDLegacyLayout(spec, Store(cache_dir=cache, **store_kw))


@pytest.fixture(scope="module")
def bmd_bucket(tmp_path_factory):
    sys.path.insert(0, str(REPO))
    from creation_code.bmd_s3d.replica import write_replica

    root = tmp_path_factory.mktemp("bmd-mini")
    rep = write_replica(root, subjects=(1,), n_features=300, k=4, grid=(4, 5, 3))
    return root, rep


def test_bmd_projection_is_a_verified_derived_artifact(bmd_bucket, tmp_path):
    bucket, rep = bmd_bucket
    layout = _bmd_layout(bucket, tmp_path)
    proj = layout.load_projection()
    x = np.random.default_rng(0).standard_normal((3, 300))
    expected = ((x - rep.mean) / rep.scale) @ rep.components.T
    got = x.astype(np.float32) @ np.asarray(proj.weight).T + np.asarray(proj.bias)
    assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()
    target = layout._converted_path()
    assert target.parent == tmp_path / "bmd-mini" / "converted"
    assert not (tmp_path / "bmd-mini" / "converted" / "projection-source.json").exists()  # no sidecar
    assert {r["kind"] for r in cache_verify(tmp_path) if r["key"].startswith("converted/")} == {"derived"}
    # flip a byte of the folded weights: the next load folds again, it never returns inf/garbage
    data = bytearray(target.read_bytes())
    data[200] ^= 0x7F
    target.write_bytes(bytes(data))
    del proj
    again = _bmd_layout(bucket, tmp_path).load_projection()
    got2 = x.astype(np.float32) @ np.asarray(again.weight).T + np.asarray(again.bias)
    assert np.isfinite(got2).all() and np.abs(got2 - expected).max() < 1e-4 * np.abs(expected).max()


def test_berg_dir_digest_is_remembered_by_key_not_path(tmp_path, monkeypatch):
    import berg.store.cache as cache_mod

    prefix = "p/"
    (tmp_path / "bergdir" / prefix).mkdir(parents=True)
    big = tmp_path / "bergdir" / prefix / "w.npy"
    big.write_bytes(b"w" * 5000)
    src = {"kind": "s3", "bucket": "none", "prefix": prefix, "manifest": False}
    calls = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p: calls.append(p) or real(p))
    want = sha256_file(big)
    assert (
        Store(berg_dir=tmp_path / "bergdir", cache_dir=tmp_path / "cache", offline=True).sha256("m", src, "w.npy")
        == want
    )
    # the bucket copy moves: the record (keyed by key, size and mtime) still applies, nothing re-hashed
    shutil.move(str(tmp_path / "bergdir"), str(tmp_path / "moved"))
    assert (
        Store(berg_dir=tmp_path / "moved", cache_dir=tmp_path / "cache", offline=True).sha256("m", src, "w.npy") == want
    )
    assert len(calls) == 1
    (tmp_path / "moved" / prefix / "w.npy").write_bytes(b"v" * 5000)  # changed: hashed again
    assert (
        Store(berg_dir=tmp_path / "moved", cache_dir=tmp_path / "cache", offline=True).sha256("m", src, "w.npy") != want
    )
