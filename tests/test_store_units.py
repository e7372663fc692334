"""Store pieces without faults: artifact writer/reader, resume, threads, listing, PyPI wheels, memory."""

from __future__ import annotations

import hashlib
import json
import threading
import tracemalloc
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from berg.errors import ArtifactError, IntegrityError, OfflineError
from berg.store import Store
from berg.store.artifacts import ArtifactWriter, read_tensors
from berg.store.download import RemoteObject, RetryPolicy, TransientError, download_atomic
from berg.store.manifest import FileInfo, read_manifest, sha256_file

# --------------------------------------------------------------------------- artifacts


def _write_artifact(out: Path, model_id: str = "unit-model") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {
        "weight": rng.standard_normal((7, 5)).astype(np.float32),
        "bias": rng.standard_normal(7).astype(np.float32),
        "idx": np.arange(4, dtype=np.int64),
    }
    w = ArtifactWriter(out, model_id)
    w.add_tensors("readout/sub-01.safetensors", arrays)
    w.add_json("metadata/sub-01.json", {"n_outputs": 7, "scale": np.float32(0.5)})
    import nibabel as nib

    w.add_nifti("space/mask.nii.gz", nib.Nifti1Image(np.ones((2, 3, 4), np.uint8), np.eye(4)))
    w.finalize({"creator": "test"})
    return arrays


def test_artifact_writer_and_reader_roundtrip(tmp_path):
    out = tmp_path / "art"
    arrays = _write_artifact(out)
    manifest = read_manifest(out / "manifest.json")
    assert set(manifest["files"]) == {"readout/sub-01.safetensors", "metadata/sub-01.json", "space/mask.nii.gz"}
    for key, info in manifest["files"].items():
        assert info["size"] == (out / key).stat().st_size and info["sha256"] == sha256_file(out / key)
    assert manifest["provenance"] == {"creator": "test"} and manifest["format_version"] == 1
    for mmap in (True, False):
        got = read_tensors(out / "readout/sub-01.safetensors", mmap=mmap)
        for name, arr in arrays.items():
            np.testing.assert_array_equal(got[name], arr)
            assert got[name].dtype == arr.dtype
    assert isinstance(read_tensors(out / "readout/sub-01.safetensors")["weight"].base, np.memmap)
    assert json.loads((out / "metadata/sub-01.json").read_text())["scale"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temp dirs left behind


def test_artifact_writer_abort_and_bad_keys(tmp_path):
    with pytest.raises(RuntimeError):
        with ArtifactWriter(tmp_path / "art", "m") as w:
            w.add_json("a.json", {})
            raise RuntimeError("creation failed")
    assert list(tmp_path.iterdir()) == []
    w = ArtifactWriter(tmp_path / "art", "m")
    for bad in ("../x", "/abs", "manifest.json"):
        with pytest.raises(ArtifactError):
            w.add_json(bad, {})
    w.abort()


def test_berg_dir_native_artifact_is_verified(tmp_path):
    prefix = "models/unit/"
    _write_artifact(tmp_path / "bergdir" / prefix)
    store = Store(berg_dir=tmp_path / "bergdir", cache_dir=tmp_path / "cache", offline=True)
    source = {"kind": "s3", "bucket": "none", "prefix": prefix}
    path = store.fetch("unit-model", source, "readout/sub-01.safetensors")
    assert path == tmp_path / "bergdir" / prefix / "readout/sub-01.safetensors"  # used in place
    with pytest.raises(ArtifactError, match="not listed in the manifest"):
        store.fetch("unit-model", source, "readout/sub-99.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        Store(berg_dir=tmp_path / "bergdir", cache_dir=tmp_path / "cache", offline=True).fetch(
            "unit-model", source, "readout/sub-01.safetensors"
        )
    assert not (tmp_path / "cache").exists()  # nothing copied, nothing fetched


# --------------------------------------------------------------------------- resume


def test_interrupted_download_resumes_with_a_range(tmp_path):
    payload = np.random.default_rng(2).bytes(100_000)
    offsets = []

    def stream(offset):
        offsets.append(offset)
        yield payload[offset : offset + 30_000]
        if offset + 30_000 < len(payload):
            raise TransientError("connection reset")

    dest = tmp_path / "f.bin"
    digest = download_atomic(
        dest,
        RemoteObject(size=len(payload)),
        stream,
        expected=None,
        label="f",
        policy=RetryPolicy(attempts=6, backoff=0.0),
        show_progress=False,
    )
    assert offsets == [0, 30_000, 60_000, 90_000]
    assert dest.read_bytes() == payload and digest == hashlib.sha256(payload).hexdigest()
    assert not list(tmp_path.glob("*.part*"))


def test_parallel_ranges_retry_resume_and_hash_in_order(tmp_path):
    payload = np.random.default_rng(5).bytes(1000)
    policy = RetryPolicy(attempts=3, backoff=0.0, parallel=3, parallel_min=0, chunk=100)
    calls: list[tuple[int, int]] = []
    fail = {300, 700}  # these ranges fail once (transient), then work

    def open_range(start, stop):
        calls.append((start, stop))
        if start in fail:
            fail.discard(start)
            yield payload[start : start + 10]
            raise TransientError("reset")
        yield payload[start:stop]

    def no_stream(offset):
        raise AssertionError("ranged mode must not stream")

    def ranged(dest):
        return download_atomic(
            dest,
            RemoteObject(size=1000),
            no_stream,
            expected=None,
            label=dest.stem,
            policy=policy,
            show_progress=False,
            open_range=open_range,
        )

    dest = tmp_path / "f.bin"
    digest = ranged(dest)
    assert dest.read_bytes() == payload and digest == hashlib.sha256(payload).hexdigest()
    assert sorted(calls) == sorted([(i, i + 100) for i in range(0, 1000, 100)] + [(300, 400), (700, 800)])

    # An interrupted run: ranges 0-4 were done; only 5-9 are fetched again, the digest still covers all.
    dest2 = tmp_path / "g.bin"
    part = tmp_path / "g.bin.part"
    part.write_bytes(payload[:500] + b"\0" * 500)
    ident = {"size": 1000, "etag": None, "mode": "ranges", "chunk": 100}
    (tmp_path / "g.bin.part.json").write_text(json.dumps({"ident": ident, "done": [0, 1, 2, 3, 4]}))
    calls.clear()
    digest = ranged(dest2)
    assert sorted(calls) == [(i, i + 100) for i in range(500, 1000, 100)]
    assert dest2.read_bytes() == payload and digest == hashlib.sha256(payload).hexdigest()


def test_stale_part_file_of_another_object_is_discarded(tmp_path):
    payload = b"new-object-content" * 100
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"old")
    (tmp_path / "f.bin.part.json").write_text(json.dumps({"size": len(payload), "etag": '"old"'}))
    offsets = []

    def stream(offset):
        offsets.append(offset)
        yield payload[offset:]

    download_atomic(
        dest, RemoteObject(size=len(payload), etag='"new"'), stream, expected=None, label="f", show_progress=False
    )
    assert offsets == [0] and dest.read_bytes() == payload


def test_manifest_mismatch_keeps_nothing(tmp_path):
    payload = b"x" * 1000

    def stream(offset):
        yield payload[offset:]

    with pytest.raises(IntegrityError, match="expected"):
        download_atomic(
            tmp_path / "f",
            RemoteObject(size=1000),
            stream,
            label="f",
            show_progress=False,
            expected=FileInfo(size=1000, sha256="0" * 64),
        )
    assert not (tmp_path / "f").exists() and not (tmp_path / "f.part").exists()


# --------------------------------------------------------------------------- real server

BUCKET = "berg-test-units"
SOURCE = {"kind": "s3", "bucket": BUCKET, "prefix": "u/", "manifest": False}


@pytest.fixture(scope="module")
def unit_files(s3_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("units")
    rng = np.random.default_rng(3)
    files = {"a.bin": rng.bytes(2_000_000), "dir/b.bin": rng.bytes(1000), "dir/c.txt": b"hello"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    s3_server.upload_tree(root, BUCKET, "u/")
    return files


def test_listing_and_ranged_reads(unit_files, s3_server, monkeypatch):
    from berg.store.sources import S3Source

    monkeypatch.setenv("BERG_S3_ENDPOINT", s3_server.endpoint_url)
    src = S3Source(SOURCE)
    assert src.list_keys() == sorted(unit_files)
    tail = b"".join(src._stream("a.bin", 1_500_000, 2_000_000))
    assert tail == unit_files["a.bin"][1_500_000:]
    assert src.head("dir/c.txt").size == 5


def test_threads_fetching_the_same_file_download_once(unit_files, fault_proxy, tmp_path, monkeypatch):
    monkeypatch.setenv("BERG_S3_ENDPOINT", fault_proxy.endpoint_url)
    fault_proxy.inject(("slow", 0.5))  # the first GET is slow, so the other threads really wait
    results, errors = [], []

    def work():
        try:
            results.append(Store(cache_dir=tmp_path).fetch("units", SOURCE, "a.bin"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(set(results)) == 1
    assert results[0].read_bytes() == unit_files["a.bin"]
    assert sum(1 for g in fault_proxy.gets if g.endswith("/u/a.bin")) == 1


# --------------------------------------------------------------------------- PyPI wheels


def convert_test_wheel(wheel_path: Path, out_dir: Path) -> None:
    """Converter used by the registry entry below: wheel member -> a native artifact."""
    with zipfile.ZipFile(wheel_path) as zf:
        values = np.frombuffer(zf.read("pkg/data.bin"), dtype=np.float32)
    w = ArtifactWriter(out_dir, "wheel-model")
    w.add_tensors("readout/sub-01.safetensors", {"weight": values.reshape(2, -1).copy()})
    w.add_json("metadata/sub-01.json", {"n_outputs": 2})
    w.finalize({"from": wheel_path.name})


@pytest.fixture
def wheel_index(tmp_path):
    """A PEP 503 simple index on 127.0.0.1 serving one wheel; yields (url, sha256, values, requests)."""
    root = tmp_path / "index"
    (root / "simple" / "fakepkg").mkdir(parents=True)
    (root / "files").mkdir()
    values = np.arange(6, dtype=np.float32)
    wheel = root / "files" / "fakepkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/data.bin", values.tobytes())
    sha = sha256_file(wheel)
    (root / "simple" / "fakepkg" / "index.html").write_text(
        f'<html><body><a href="../../files/{wheel.name}#sha256={sha}">{wheel.name}</a></body></html>'
    )
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *args):
            requests.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple", sha, values, requests
    finally:
        server.shutdown()
        server.server_close()


def _wheel_source(url: str, sha: str) -> dict:
    return {
        "kind": "pypi_wheel",
        "package": "fakepkg",
        "version": "1.0",
        "sha256": sha,
        "index_url": url,
        "filename": "fakepkg-1.0-py3-none-any.whl",
        "converter": "test_store_units:convert_test_wheel",
    }


def test_pypi_wheel_is_verified_converted_and_cached(wheel_index, tmp_path):
    url, sha, values, requests = wheel_index
    source = _wheel_source(url, sha)
    store = Store(cache_dir=tmp_path / "cache")
    path = store.fetch("wheel-model", source, "readout/sub-01.safetensors")
    np.testing.assert_array_equal(read_tensors(path)["weight"].ravel(), values)
    assert store.manifest("wheel-model", source)["provenance"] == {"from": "fakepkg-1.0-py3-none-any.whl"}
    assert (tmp_path / "cache" / "_wheels" / "fakepkg-1.0-py3-none-any.whl").is_file()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # temp dirs gone
    n = len(requests)
    offline = Store(cache_dir=tmp_path / "cache", offline=True)
    assert offline.fetch("wheel-model", source, "metadata/sub-01.json").is_file()
    assert len(requests) == n  # served from the cache
    # berg cache verify checks the converted files against their manifests (the wheel, pinned in the
    # registry, and the converted manifest itself have nothing to compare with in the cache)
    from berg.store.cache import cache_verify

    verdicts = {(r["model_id"], r["key"]): (r["kind"], r["status"]) for r in cache_verify(tmp_path / "cache")}
    unrecorded = sorted(k[1] for k, v in verdicts.items() if v[1] != "ok")
    assert len(unrecorded) == 2 and unrecorded[1] == "fakepkg-1.0-py3-none-any.whl"
    assert unrecorded[0].startswith("fakepkg-1.0-py3-none-any-") and unrecorded[0].endswith("/manifest.json")
    assert sum(1 for k, v in verdicts.items() if k[0] == "_wheels" and v == ("manifest", "ok")) == 2
    assert verdicts[("wheel-model", "readout/sub-01.safetensors")] == ("manifest", "ok")


def test_pypi_wheel_with_wrong_pin_is_refused(wheel_index, tmp_path):
    url, sha, _, _ = wheel_index
    store = Store(cache_dir=tmp_path / "cache")
    with pytest.raises(IntegrityError, match="pinned sha256"):
        store.fetch("wheel-model", _wheel_source(url, "f" * 64), "readout/sub-01.safetensors")
    assert not (tmp_path / "cache" / "wheel-model" / "manifest.json").exists()
    with pytest.raises(OfflineError, match="berg fetch wheel-model"):
        Store(cache_dir=tmp_path / "c2", offline=True).fetch("wheel-model", _wheel_source(url, sha), "x")


# --------------------------------------------------------------------------- legacy memory


def test_legacy_npy_loading_does_not_copy_big_arrays(tmp_path):
    """BERG's 100 x 5.3 M projection must not be copied: peak Python/numpy allocation stays tiny."""
    from berg.store.legacy import load_legacy_npy

    comps = np.random.default_rng(4).standard_normal((16, 1_000_000)).astype(np.float32)  # 64 MB
    path = tmp_path / "pca_weights.npy"
    np.save(
        path,
        {
            "pca_param": {"components_": comps, "n_features_in_": 1_000_000},
            "scaler_param": {"mean_": comps[0].astype(np.float64)},
        },
        allow_pickle=True,
    )
    tracemalloc.start()
    try:
        obj = load_legacy_npy(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"loading allocated {peak / 2**20:.1f} MiB"
    got = obj["pca_param"]["components_"]
    assert got.shape == comps.shape and not got.flags.writeable
    np.testing.assert_array_equal(got[::5, ::1000], comps[::5, ::1000])
    np.testing.assert_array_equal(obj["scaler_param"]["mean_"], comps[0].astype(np.float64))
