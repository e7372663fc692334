"""The store against a real S3 server (SeaweedFS), with faults injected by a loopback proxy."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import berg
from berg.errors import ArtifactError, ArtifactNotFoundError, IntegrityError, OfflineError
from berg.store import Store
from berg.testing.sklearn_toy import MODEL_ID, N_OUT, PREFIX, build

BUCKET = "berg-test-synthetic"
RAW_BUCKET = "berg-test-raw"


@pytest.fixture(scope="module")
def synth(tmp_path_factory, s3_server):
    model = build(tmp_path_factory.mktemp("synthetic-s3"))
    s3_server.upload_tree(model.berg_dir / PREFIX, BUCKET, PREFIX)
    return model


@pytest.fixture(scope="module")
def raw_files(s3_server, tmp_path_factory):
    """Third-party style files (no manifest): a small one and a 50 MB one."""
    root = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    files = {"small.bin": rng.bytes(300_000), "big.bin": rng.bytes(50 * 1024 * 1024)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    s3_server.upload_tree(root, RAW_BUCKET, "raw/")
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


RAW_SOURCE = {"kind": "s3", "bucket": RAW_BUCKET, "prefix": "raw/", "manifest": False}


@pytest.fixture
def endpoint(monkeypatch, s3_server):
    monkeypatch.setenv("BERG_S3_ENDPOINT", s3_server.endpoint_url)
    return s3_server.endpoint_url


def _cached(cache: Path) -> set[str]:
    return {
        p.relative_to(cache).as_posix()
        for p in cache.rglob("*")
        if p.is_file() and not p.name.startswith(".berg-") and not p.name.endswith(".lock")
    }


def test_lazy_metadata_fetch_only_needed_files(synth, endpoint, tmp_path):
    client = berg.BERG(cache_dir=tmp_path, registry=synth.registry)
    meta = client.get_model_metadata(MODEL_ID, subject=2)
    assert meta["n_outputs"] == N_OUT[2]
    assert _cached(tmp_path) == {
        f"{MODEL_ID}/manifest.json",
        f"{MODEL_ID}/metadata/sub-02.json",
        f"{MODEL_ID}/metadata/sub-02.safetensors",
    }


def test_encode_through_s3_and_offline_reuse(synth, endpoint, tmp_path):
    client = berg.BERG(cache_dir=tmp_path, registry=synth.registry)
    model = client.get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained")
    out = client.encode(model, synth.test_images, show_progress=False)
    np.testing.assert_allclose(out, synth.expected[1], rtol=1e-5, atol=1e-5 * np.abs(synth.expected[1]).max())
    assert f"{MODEL_ID}/readout/sub-02.safetensors" not in _cached(tmp_path)
    offline = berg.BERG(cache_dir=tmp_path, registry=synth.registry, offline=True)
    again = offline.get_encoding_model(MODEL_ID, subject=1, device="cpu", backbone_weights="untrained")
    np.testing.assert_array_equal(again.encode(synth.test_images, show_progress=False), out)


def test_offline_missing_files_error(synth, tmp_path, monkeypatch):
    monkeypatch.setenv("BERG_S3_ENDPOINT", "http://127.0.0.1:9")  # would fail if touched
    client = berg.BERG(cache_dir=tmp_path, registry=synth.registry, offline=True)
    with pytest.raises(OfflineError) as info:
        client.get_encoding_model(MODEL_ID, subject=2, device="cpu", backbone_weights="untrained")
    msg = str(info.value)
    assert f"berg fetch {MODEL_ID} --all" in msg and "manifest.json" in msg
    assert not _cached(tmp_path)


def test_fetch_all_then_cache_functions(synth, endpoint, tmp_path):
    from berg.store.cache import cache_clear, cache_list, cache_size, cache_verify

    client = berg.BERG(cache_dir=tmp_path, registry=synth.registry)
    paths = client.fetch(MODEL_ID, all=True)
    assert "readout/sub-02.safetensors" in paths and "projection.safetensors" in paths
    listed = {e["key"] for e in cache_list(tmp_path)}
    assert "readout/sub-01.safetensors" in listed
    assert cache_size(tmp_path)[MODEL_ID] > 0
    assert {r["status"] for r in cache_verify(tmp_path)} == {"ok"}
    target = tmp_path / MODEL_ID / "readout" / "sub-01.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    bad = [r for r in cache_verify(tmp_path) if r["status"] == "corrupt"]
    assert [r["key"] for r in bad] == ["readout/sub-01.safetensors"] and not target.exists()
    assert cache_clear(tmp_path, MODEL_ID) > 0 and not (tmp_path / MODEL_ID).exists()


def test_bit_flipped_cache_is_refetched(synth, endpoint, tmp_path):
    store = Store(cache_dir=tmp_path)
    source = {"kind": "s3", "bucket": BUCKET, "prefix": PREFIX}
    path = store.fetch(MODEL_ID, source, "readout/sub-02.safetensors")
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[100] ^= 0x01
    path.write_bytes(bytes(flipped))
    store2 = Store(cache_dir=tmp_path)
    assert store2.fetch(MODEL_ID, source, "readout/sub-02.safetensors").read_bytes() == good


def test_404_and_403_are_clear(synth, endpoint, tmp_path, monkeypatch, raw_files):
    store = Store(cache_dir=tmp_path)
    with pytest.raises(ArtifactNotFoundError) as info:
        store.fetch("raw", RAW_SOURCE, "missing.bin")
    assert RAW_BUCKET in str(info.value) and "raw/missing.bin" in str(info.value)
    monkeypatch.setenv("BERG_S3_SIGNED", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(ArtifactError, match="403|denied"):
        Store(cache_dir=tmp_path / "b").fetch("raw", RAW_SOURCE, "small.bin")


def test_server_refuses_anonymous_writes(s3_server):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="AccessDenied"):
        s3_server.anonymous_client().put_object(Bucket=RAW_BUCKET, Key="raw/evil", Body=b"x")


def test_traversal_keys_and_escaping_symlinks_refused(tmp_path, raw_files, endpoint):
    store = Store(cache_dir=tmp_path / "cache", berg_dir=tmp_path / "bergdir")
    for key in ("../outside", "/etc/passwd", "a/../../b", "a\\b", ""):
        with pytest.raises(ArtifactError, match="invalid artifact key"):
            store.fetch("raw", RAW_SOURCE, key)
    (tmp_path / "secret").write_text("secret")
    (tmp_path / "bergdir" / "raw").mkdir(parents=True)
    (tmp_path / "bergdir" / "raw" / "link.bin").symlink_to(tmp_path / "secret")
    with pytest.raises(ArtifactError, match="outside its model folder"):
        store.fetch("raw", RAW_SOURCE, "link.bin")


def test_third_party_file_sha_recorded(raw_files, endpoint, tmp_path):
    from berg.store.cache import CacheIndex

    store = Store(cache_dir=tmp_path)
    path = store.fetch("raw", RAW_SOURCE, "small.bin")
    rec = CacheIndex(tmp_path / "raw").get("small.bin")
    assert rec["sha256"] == raw_files["small.bin"] and rec["etag"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == raw_files["small.bin"]


# --------------------------------------------------------------------------- faults

FAULTS = {
    "503 burst": [("status", 503)] * 3,
    "500 burst": [("status", 500)] * 2,
    "reset mid-body": [("reset", None)],
    "truncated body": [("truncate", None)],
    "slow response": [("slow", 3.0)],
    "mixed": [("status", 502), ("truncate", None), ("reset", None)],
}


def _fetch_through(proxy, tmp, key="small.bin"):
    os.environ["BERG_S3_ENDPOINT"] = proxy.endpoint_url
    return Store(cache_dir=tmp).fetch("raw", RAW_SOURCE, key)


MODES = {
    "stream": {"BERG_PARALLEL": "1"},
    "ranges": {"BERG_PARALLEL": "3", "BERG_PARALLEL_MIN_MB": "0", "BERG_CHUNK_MB": "0.0625"},
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", list(FAULTS))
def test_faults_are_survived(name, mode, fault_proxy, raw_files, tmp_path, fast_retries, monkeypatch):
    monkeypatch.setenv("BERG_S3_ENDPOINT", fault_proxy.endpoint_url)
    for k, v in MODES[mode].items():
        monkeypatch.setenv(k, v)
    fault_proxy.inject(*FAULTS[name])
    path = _fetch_through(fault_proxy, tmp_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == raw_files["small.bin"]
    assert not list(path.parent.glob("*.part*"))
    assert not fault_proxy.faults  # every fault was really met


def test_wrong_etag_is_detected_and_nothing_kept(fault_proxy, raw_files, tmp_path, fast_retries, monkeypatch):
    monkeypatch.setenv("BERG_S3_ENDPOINT", fault_proxy.endpoint_url)
    fault_proxy.sticky_etag = True
    with pytest.raises(IntegrityError, match="ETag"):
        _fetch_through(fault_proxy, tmp_path)
    assert not (tmp_path / "raw" / "small.bin").exists()


def test_retries_give_up_with_clear_error(fault_proxy, raw_files, tmp_path, fast_retries, monkeypatch):
    monkeypatch.setenv("BERG_S3_ENDPOINT", fault_proxy.endpoint_url)
    monkeypatch.setenv("BERG_RETRIES", "3")
    fault_proxy.inject(*[("status", 503)] * 10)
    with pytest.raises(ArtifactError, match=r"server error \(HTTP 503\) after \d+ attempts"):
        _fetch_through(fault_proxy, tmp_path)
    assert not (tmp_path / "raw" / "small.bin").exists()


FETCH_SCRIPT = textwrap.dedent(
    """
    import sys
    from berg.store import Store
    src = {"kind": "s3", "bucket": sys.argv[2], "prefix": "raw/", "manifest": False}
    p = Store(cache_dir=sys.argv[1]).fetch("raw", src, "big.bin")
    print(p)
    """
)


def test_killed_download_leaves_no_partial_file(fault_proxy, raw_files, tmp_path, monkeypatch):
    import json

    env = {**os.environ, "BERG_S3_ENDPOINT": fault_proxy.endpoint_url}
    # 50 MiB = 7 ranges of 8 MiB: the first 4 come at once, the last 3 only after 20 s -> killed meanwhile.
    fault_proxy.inject(*[("slow", 0.0)] * 4, *[("slow", 20.0)] * 3)
    proc = subprocess.Popen([sys.executable, "-c", FETCH_SCRIPT, str(tmp_path), RAW_BUCKET], env=env)
    meta = tmp_path / "raw" / "big.bin.part.json"
    done: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(done) < 4 and proc.poll() is None:
        try:
            done = json.loads(meta.read_text())["done"]
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    final = tmp_path / "raw" / "big.bin"
    assert not final.exists() and len(done) == 4  # killed mid-download, nothing under the final name
    before = fault_proxy.served.get(f"/{RAW_BUCKET}/raw/big.bin", 0)
    monkeypatch.setenv("BERG_S3_ENDPOINT", fault_proxy.endpoint_url)
    path = Store(cache_dir=tmp_path).fetch("raw", RAW_SOURCE, "big.bin")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == raw_files["big.bin"]
    refetched = fault_proxy.served[f"/{RAW_BUCKET}/raw/big.bin"] - before
    assert refetched == 50 * 1024 * 1024 - 4 * 8 * 1024 * 1024  # resumed: only the 3 missing ranges
    assert not list(path.parent.glob("big.bin.part*"))


def test_eight_processes_one_download(fault_proxy, raw_files, tmp_path):
    env = {**os.environ, "BERG_S3_ENDPOINT": fault_proxy.endpoint_url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FETCH_SCRIPT, str(tmp_path), RAW_BUCKET], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1
    assert hashlib.sha256(Path(outs[0]).read_bytes()).hexdigest() == raw_files["big.bin"]
    # one download: the server sent the file's bytes exactly once (as 8 MiB ranges by 4 threads)
    assert fault_proxy.served[f"/{RAW_BUCKET}/raw/big.bin"] == 50 * 1024 * 1024
    assert sum(1 for g in fault_proxy.gets if g.endswith("/raw/big.bin")) == 7


def test_fault_compass(fault_proxy, raw_files, tmp_path, fast_retries, monkeypatch, capsys):
    """The headline figure: every fault case survived, in both download modes, no file lost or corrupted."""
    monkeypatch.setenv("BERG_S3_ENDPOINT", fault_proxy.endpoint_url)
    survived, corrupted, n = 0, 0, 0
    for mode, env in MODES.items():
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        for name, faults in FAULTS.items():
            n += 1
            fault_proxy.inject(*faults)
            try:
                path = Store(cache_dir=tmp_path / f"{mode}-{n}").fetch("raw", RAW_SOURCE, "small.bin")
            except ArtifactError as exc:
                sys.stderr.write(f"fault {name!r} ({mode}) not survived: {exc}\n")
                continue
            survived += 1
            corrupted += hashlib.sha256(path.read_bytes()).hexdigest() != raw_files["small.bin"]
    with capsys.disabled():
        sys.stdout.write(f"\nfaults survived: {survived}/{n}, files lost or corrupted: {corrupted}\n")
    assert survived == n and corrupted == 0
