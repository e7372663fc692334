"""Hostile, shared and read-only caches (issue 10, "Cache and store"): each class reproduced.

* links planted under berg's bookkeeping names (``.part``, ``.part.json``, ``.lock``, the index) or as
  cache entries are never followed, and nothing outside the cache is touched;
* remote keys that collide with berg's bookkeeping names are refused;
* read-only caches (copied with ``cp -r`` and made read-only, made read-only in place, mounted
  read-only, moved) work when nothing needs fetching, and say clearly when a write is needed;
* derived files are verified; stale temporaries of dead processes are removed; permission and
  disk-full errors arrive as BERGError with their errno text; NUL bytes are InvalidParameterError.

Read-only checks run the reader in a subprocess as an unprivileged user when the tests run as root
(root ignores file modes), so they hold on CI runners and in root containers alike.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_store_sources import FolderSource, _native, folder_source

from berg.errors import ArtifactError, BERGError, InvalidParameterError, ModelLoadError
from berg.store import Store
from berg.store.artifacts import ArtifactWriter, check_key
from berg.store.cache import INDEX_NAME, CacheIndex, CacheWriteError

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
BUCKET = "berg-test-hostile"
S3_SOURCE = {"kind": "s3", "bucket": BUCKET, "prefix": "h/", "manifest": False}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
SETPRIV = shutil.which("setpriv")


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def shared_tmp():
    """A world-readable scratch folder (pytest's tmp_path is private to its user)."""
    root = Path(tempfile.mkdtemp(prefix="berg-hostile-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        for p in [root, *root.rglob("*")]:
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(root)


def _read_only(path: Path) -> None:
    """``chmod -R a-w``."""
    for p in [path, *path.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry below ``root`` (hidden ones too) with size and mtime: shows any write."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[p.relative_to(root).as_posix()] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


READER = textwrap.dedent(
    """
    import json, sys, types
    import numpy as np
    from berg.errors import BERGError
    from berg.store import Store

    args = json.loads(sys.argv[1])
    store = Store(cache_dir=args["cache"], offline=args.get("offline", False))
    out = {}
    for key in args.get("keys", []):
        try:
            out[key] = {"ok": open(store.fetch(args["model"], args["source"], key), "rb").read().hex()[:32]}
        except BERGError as exc:
            out[key] = {"error": type(exc).__name__, "msg": str(exc), "errno": getattr(exc, "errno", None),
                        "oserror": isinstance(exc, OSError)}
    if args.get("bmd"):
        from berg.models.bmd_s3d import BMDLegacyLayout
        spec = types.SimpleNamespace(model_id=args["model"], source=args["source"])
        try:
            proj = BMDLegacyLayout(spec, store).load_projection()
            w = np.asarray(proj.weight)
            out["projection"] = {"ok": float(np.abs(w).sum()), "finite": bool(np.isfinite(w).all())}
        except BERGError as exc:
            out["projection"] = {"error": type(exc).__name__, "msg": str(exc)}
    print(json.dumps(out))
    """
)


def _as_reader(args: dict, *, prefix: list[str] | None = None) -> dict:
    """Run READER as a user who cannot write the cache (``nobody`` when we are root)."""
    cmd = [sys.executable, "-c", READER, json.dumps(args)]
    if IS_ROOT:
        if SETPRIV is None:
            pytest.skip("running as root without setpriv: cannot drop privileges to test read-only caches")
        cmd = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "BERG_S3_ENDPOINT": "http://127.0.0.1:9",
    }  # any network use would fail loudly
    proc = subprocess.run((prefix or []) + cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hostile_files(s3_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(7)
    files = {"data.bin": rng.bytes(300_000), "dir/small.txt": b"hello"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    s3_server.upload_tree(root, BUCKET, "h/")
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


@pytest.fixture
def endpoint(monkeypatch, s3_server):
    monkeypatch.setenv("BERG_S3_ENDPOINT", s3_server.endpoint_url)


# --------------------------------------------------------------------------- planted links


MODES = {
    "stream": {"BERG_PARALLEL": "1"},
    "ranges": {"BERG_PARALLEL": "3", "BERG_PARALLEL_MIN_MB": "0", "BERG_CHUNK_MB": "0.0625"},
}


@pytest.mark.parametrize("mode", list(MODES))
def test_planted_links_under_bookkeeping_names_are_not_followed(mode, hostile_files, endpoint, tmp_path, monkeypatch):
    for k, v in MODES[mode].items():
        monkeypatch.setenv(k, v)
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = {}
    for name in ("part", "meta", "lock", "index", "index-lock"):
        victims[name] = outside / f"victim-{name}"
        victims[name].write_bytes(b"precious " + name.encode())
    model = tmp_path / "cache" / "raw"
    model.mkdir(parents=True)
    (model / "data.bin.part").symlink_to(victims["part"])
    (model / "data.bin.part.json").symlink_to(victims["meta"])
    (model / "data.bin.lock").symlink_to(victims["lock"])
    (model / INDEX_NAME).symlink_to(victims["index"])
    (model / f"{INDEX_NAME}.lock").symlink_to(victims["index-lock"])
    before = _snapshot(outside)
    path = Store(cache_dir=tmp_path / "cache").fetch("raw", S3_SOURCE, "data.bin")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hostile_files["data.bin"]
    assert _snapshot(outside) == before  # nothing outside the cache was written, truncated or grown
    for name, victim in victims.items():
        assert victim.read_bytes() == b"precious " + name.encode()
    assert (
        not (model / INDEX_NAME).is_symlink()
        and CacheIndex(model).get("data.bin")["sha256"] == hostile_files["data.bin"]
    )


def test_cache_entries_that_are_links_are_refused(hostile_files, endpoint, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    model = tmp_path / "cache" / "raw"
    (model / "dir").mkdir(parents=True)
    (model / "data.bin").symlink_to(secret)
    with pytest.raises(ArtifactError, match="symbolic link"):
        Store(cache_dir=tmp_path / "cache").fetch("raw", S3_SOURCE, "data.bin")
    shutil.rmtree(model / "dir")
    (model / "dir").symlink_to(tmp_path)  # a linked folder inside the model's cache
    with pytest.raises(ArtifactError, match="symbolic link"):
        Store(cache_dir=tmp_path / "cache").fetch("raw", S3_SOURCE, "dir/small.txt")
    assert secret.read_text() == "secret" and not (tmp_path / "small.txt").exists()
    # the model folder itself may be a link the user made (a cache spread over disks): allowed
    big = tmp_path / "bigdisk"
    big.mkdir()
    (tmp_path / "cache2").mkdir()
    (tmp_path / "cache2" / "raw").symlink_to(big)
    path = Store(cache_dir=tmp_path / "cache2").fetch("raw", S3_SOURCE, "dir/small.txt")
    assert path.read_bytes() == b"hello" and (big / "dir" / "small.txt").is_file()


# --------------------------------------------------------------------------- reserved names

RESERVED = [
    INDEX_NAME,
    f"{INDEX_NAME}.lock",
    "data.bin.lock",
    "dir/x.part",
    "dir/x.part.json",
    ".data.bin.123.0123abcd.tmp",
    "dir/.x.tmp",
    "converted/projection-0123.safetensors",
    ".berg-dir/data.bin",
    "a/\x00b",
]


@pytest.mark.parametrize("key", RESERVED)
def test_reserved_keys_are_refused(key, tmp_path):
    with pytest.raises(ArtifactError, match="reserved|invalid artifact key"):
        check_key(key)
    w = ArtifactWriter(tmp_path / "art", "m")
    with pytest.raises(ArtifactError, match="reserved|invalid artifact key"):
        w.add_json(key, {})
    w.abort()


def test_remote_key_named_like_the_index_cannot_overwrite_it(s3_server, endpoint, hostile_files, tmp_path):
    s3_server.admin_client().put_object(Bucket=BUCKET, Key=f"h/{INDEX_NAME}", Body=b"not an index\n")
    store = Store(cache_dir=tmp_path)
    good = store.fetch("raw", S3_SOURCE, "dir/small.txt")
    with pytest.raises(ArtifactError, match="reserved"):
        store.fetch("raw", S3_SOURCE, INDEX_NAME)
    assert CacheIndex(tmp_path / "raw").get("dir/small.txt")["sha256"] == hostile_files["dir/small.txt"]
    assert good.read_bytes() == b"hello"


def test_manifest_listing_a_reserved_key_is_refused(tmp_path):
    _native(tmp_path / "remote")
    manifest = json.loads((tmp_path / "remote" / "manifest.json").read_text())
    manifest["files"]["readout/sub-01.safetensors.lock"] = {"size": 1, "sha256": "0" * 64}
    (tmp_path / "remote" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="reserved"):
        Store(cache_dir=tmp_path / "cache").fetch(
            "plug", folder_source(tmp_path / "remote"), "readout/sub-01.safetensors.lock"
        )


# --------------------------------------------------------------------------- read-only caches


@pytest.fixture
def bmd_cache(shared_tmp):
    """A populated legacy (BERG pickles) cache: all keys fetched and the projection derived."""
    sys.path.insert(0, str(REPO))
    from creation_code.bmd_s3d.replica import PREFIX, write_replica

    write_replica(shared_tmp / "bucket", subjects=(1,), n_features=300, k=4, grid=(4, 5, 3))
    source = folder_source(shared_tmp / "bucket" / PREFIX, manifest=False)
    keys = [
        "encoding_models_weights/pca_weights.npy",
        "encoding_models_weights/weights_sub-01.npy",
        "metadata/metadata_sub-01.npy",
    ]
    out = _as_reader_local(
        {"cache": str(shared_tmp / "cache"), "model": "bmd-mini", "source": source, "keys": keys, "bmd": True}
    )
    assert all("ok" in v for v in out.values()), out
    return shared_tmp, source, keys, out["projection"]["ok"]


def _as_reader_local(args: dict) -> dict:
    """READER in a subprocess as the current user (a writable cache)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    proc = subprocess.run(
        [sys.executable, "-c", READER, json.dumps(args)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _hide_source(root: Path) -> None:
    # the "remote" goes away: a read-only cache must not need it
    shutil.move(str(root / "bucket"), str(root / "bucket-gone"))


def test_copied_read_only_cache_works_without_writing(bmd_cache):
    root, source, keys, weight_sum = bmd_cache
    subprocess.run(["cp", "-r", str(root / "cache"), str(root / "copy")], check=True)  # new mtimes
    _read_only(root / "copy")
    _hide_source(root)
    before = _snapshot(root / "copy")
    out = _as_reader({"cache": str(root / "copy"), "model": "bmd-mini", "source": source, "keys": keys, "bmd": True})
    assert all("ok" in out[k] for k in keys), out
    assert out["projection"] == {"ok": pytest.approx(weight_sum), "finite": True}
    assert _snapshot(root / "copy") == before  # no index record, lock, sidecar or temporary was written


def test_legacy_cache_read_only_in_place_and_missing_file_is_a_clear_error(bmd_cache):
    root, source, keys, weight_sum = bmd_cache
    _read_only(root / "cache")
    before = _snapshot(root / "cache")
    out = _as_reader(
        {
            "cache": str(root / "cache"),
            "model": "bmd-mini",
            "source": source,
            "keys": keys,
            "bmd": True,
            "offline": True,
        }
    )
    assert all("ok" in out[k] for k in keys) and out["projection"]["ok"] == pytest.approx(weight_sum)
    assert _snapshot(root / "cache") == before
    # a file that is not there must be fetched: impossible here, and said so
    out = _as_reader(
        {"cache": str(root / "cache"), "model": "bmd-mini", "source": source, "keys": ["metadata/metadata_sub-02.npy"]}
    )
    err = out["metadata/metadata_sub-02.npy"]
    assert err["error"] == "CacheWriteError" and err["oserror"] and err["errno"] in (errno.EACCES, errno.EROFS)
    assert str(root / "cache" / "bmd-mini") in err["msg"] and "BERG_CACHE" in err["msg"] and "--cache-dir" in err["msg"]
    assert "Permission denied" in err["msg"] or "Read-only file system" in err["msg"]


def test_moved_cache_keeps_its_records(bmd_cache):
    root, source, keys, weight_sum = bmd_cache
    shutil.move(str(root / "cache"), str(root / "moved"))
    _hide_source(root)
    FolderSource.served.clear()
    before = _snapshot(root / "moved")
    out = _as_reader_local(
        {"cache": str(root / "moved"), "model": "bmd-mini", "source": source, "keys": keys, "bmd": True}
    )
    assert all("ok" in out[k] for k in keys) and out["projection"]["ok"] == pytest.approx(weight_sum)
    after = _snapshot(root / "moved")
    derived = [k for k in after if k.startswith("bmd-mini/converted/projection-") and not k.endswith(".lock")]
    assert len(derived) == 1 and after[derived[0]] == before[derived[0]]  # not folded again
    _read_only(root / "moved")
    out = _as_reader({"cache": str(root / "moved"), "model": "bmd-mini", "source": source, "keys": keys, "bmd": True})
    assert out["projection"]["ok"] == pytest.approx(weight_sum)


def _in_mount_namespace(unshare: str, script: str, args: dict, **env: str) -> subprocess.CompletedProcess:
    """Run the store reader (READER) in a private mount namespace prepared by ``script``."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]), **env}
    return subprocess.run(
        [unshare, "-m", "sh", "-c", script, READER, json.dumps(args)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_read_only_mount_eroFS(bmd_cache):
    """A real read-only bind mount (EROFS, which binds root too), where the platform allows one."""
    root, source, keys, weight_sum = bmd_cache
    unshare = shutil.which("unshare")
    cache = root / "cache"
    probe = (
        subprocess.run(
            [
                unshare or "unshare",
                "-m",
                "sh",
                "-c",
                f"mount --bind {cache} {cache} && mount -o remount,ro,bind {cache}",
            ],
            capture_output=True,
        )
        if unshare and IS_ROOT
        else None
    )
    if probe is None or probe.returncode != 0:
        pytest.skip("no permission to make a read-only bind mount here")
    args = {
        "cache": str(cache),
        "model": "bmd-mini",
        "source": source,
        "keys": [*keys, "metadata/metadata_sub-02.npy"],
        "bmd": True,
    }
    script = f'mount --bind {cache} {cache} && mount -o remount,ro,bind {cache} && exec {sys.executable} -c "$0" "$1"'
    proc = _in_mount_namespace(unshare, script, args, PYTHONDONTWRITEBYTECODE="1")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all("ok" in out[k] for k in keys) and out["projection"]["ok"] == pytest.approx(weight_sum)
    err = out["metadata/metadata_sub-02.npy"]
    assert err["error"] == "CacheWriteError" and err["errno"] == errno.EROFS and "Read-only file system" in err["msg"]


def test_corrupt_derived_file_in_read_only_cache_is_an_integrity_error(bmd_cache):
    root, source, keys, _ = bmd_cache
    proj = next((root / "cache" / "bmd-mini" / "converted").glob("projection-*.safetensors"))
    data = bytearray(proj.read_bytes())
    data[-8:-4] = np.float32(np.inf).tobytes()  # the bias of one component becomes inf
    proj.write_bytes(bytes(data))
    _read_only(root / "cache")
    out = _as_reader({"cache": str(root / "cache"), "model": "bmd-mini", "source": source, "bmd": True})
    assert out["projection"]["error"] == "IntegrityError" and "not writable" in out["projection"]["msg"]


# --------------------------------------------------------------------------- temporaries, errors, NUL


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    _native(tmp_path / "remote")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    model = tmp_path / "cache" / "plug"
    (model / "readout").mkdir(parents=True)
    stale_file = model / "readout" / f".sub-01.safetensors.{pid}.0123abcd.tmp"
    stale_dir = model / f".artifact.{pid}.89abcdef.tmp"
    live_file = model / f".x.bin.{os.getpid()}.0123abcd.tmp"
    stale_file.write_bytes(b"x" * 1000)
    (stale_dir / "sub").mkdir(parents=True)
    (stale_dir / "sub" / "w.bin").write_bytes(b"y")
    live_file.write_bytes(b"mine")
    fresh_dead = model / f".y.bin.{pid}.0123abcd.tmp"  # maybe a live writer on another host of a shared cache
    fresh_dead.write_bytes(b"z")
    old = os.stat(fresh_dead).st_mtime - 3600
    for p in (stale_file, stale_dir, live_file):
        os.utime(p, (old, old))
    Store(cache_dir=tmp_path / "cache").fetch("plug", folder_source(tmp_path / "remote"), "metadata/sub-01.json")
    assert not stale_file.exists() and not stale_dir.exists() and live_file.exists() and fresh_dead.exists()


class FullDiskSource(FolderSource):
    """Fails like a full disk half-way through writing."""

    def fetch(self, key, dest, expected):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest) + ".part")


def test_disk_full_and_permission_errors_are_berg_errors(tmp_path):
    _native(tmp_path / "remote")
    src = {**folder_source(tmp_path / "remote"), "kind": "test_store_hostile:FullDiskSource"}
    with pytest.raises(CacheWriteError) as info:
        Store(cache_dir=tmp_path / "cache").fetch("plug", src, "manifest.json")
    exc = info.value
    assert isinstance(exc, BERGError) and isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    assert os.strerror(errno.ENOSPC) in str(exc) and "ENOSPC" in str(exc) and str(tmp_path / "cache") in str(exc)


def test_real_full_disk_where_a_tmpfs_can_be_mounted(tmp_path, shared_tmp):
    """A 64 KiB tmpfs as the cache: the 300 KB download fails with ENOSPC as a CacheWriteError."""
    unshare = shutil.which("unshare")
    if not (unshare and IS_ROOT):
        pytest.skip("mounting a tmpfs needs root and unshare")
    (shared_tmp / "remote").mkdir()
    (shared_tmp / "remote" / "big.bin").write_bytes(os.urandom(300_000))
    cache = shared_tmp / "cache"
    cache.mkdir()
    args = {
        "cache": str(cache),
        "model": "raw",
        "source": folder_source(shared_tmp / "remote", manifest=False),
        "keys": ["big.bin"],
    }
    script = f'mount -t tmpfs -o size=64k tmpfs {cache} && exec {sys.executable} -c "$0" "$1"'
    proc = _in_mount_namespace(unshare, script, args)
    if proc.returncode != 0 and "mount" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])["big.bin"]
    assert out["error"] == "CacheWriteError" and out["errno"] == errno.ENOSPC and "No space left" in out["msg"]


def test_nul_bytes_in_folders_are_invalid_parameters(tmp_path):
    for kw in ("cache_dir", "berg_dir", "build_dir"):
        with pytest.raises(InvalidParameterError, match="NUL"):
            Store(**{kw: f"{tmp_path}/a\x00b"})
    with pytest.raises(InvalidParameterError, match="folder path"):
        Store(cache_dir=3)
    with pytest.raises(ArtifactError, match="invalid"):
        Store(cache_dir=tmp_path).fetch("m\x00x", {"kind": "s3", "bucket": "b"}, "k")


DERIVE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from berg.store import Store
    log = Path(sys.argv[2])

    def build(tmp):
        with open(log, "a") as fh:
            fh.write("built\\n")
        time.sleep(0.3)
        tmp.write_bytes(b"derived" * 1000)

    print(Store(cache_dir=sys.argv[1]).derived("m", "x.bin", {"v": "1"}, build))
    """
)


@pytest.mark.slow
def test_processes_deriving_the_same_file_build_it_once(tmp_path):
    log = tmp_path / "builds.log"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DERIVE, str(tmp_path / "cache"), str(log)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert len({o[0].strip() for o in outs}) == 1 and log.read_text() == "built\n"
    assert Path(outs[0][0].strip()).read_bytes() == b"derived" * 1000


def _compass_cases(tmp_path: Path, outside: Path, data_sha256: str) -> list[tuple[str, Any, tuple]]:
    """Every bad store input with its expected outcome.

    ``("refused", ErrorClass, regex)``: must raise that berg error with that message (any other error, or
    success, is a failure of the compass); ``("safe", check)``: must succeed, and ``check(result)`` holds.
    """
    cases: list[tuple[str, Any, tuple]] = []
    cases += [
        (
            f"reserved key {k!r}",
            lambda k=k: Store(cache_dir=tmp_path / "c").fetch("raw", S3_SOURCE, k),
            ("refused", ArtifactError, r"no NUL bytes" if "\x00" in k else r"is reserved"),
        )
        for k in RESERVED
    ]
    cases += [
        (
            f"bad key {k!r}",
            lambda k=k: Store(cache_dir=tmp_path / "c").fetch("raw", S3_SOURCE, k),
            ("refused", ArtifactError, r"invalid artifact key"),
        )
        for k in ("../outside/victim", "/etc/passwd", "a/../../b", "a\\b", "", "./x")
    ]
    cases += [
        (
            f"bad model id {m!r}",
            lambda m=m: Store(cache_dir=tmp_path / "c").fetch(m, S3_SOURCE, "data.bin"),
            ("refused", ArtifactError, r"invalid (artifact key|model id)"),
        )
        for m in (".", "..", "_wheels", "a/b", "m\x00", "")
    ]
    cases += [
        (
            f"NUL in {kw}",
            lambda kw=kw: Store(**{kw: "x\x00y"}),
            ("refused", InvalidParameterError, r"contains a NUL byte"),
        )
        for kw in ("cache_dir", "berg_dir", "build_dir")
    ]
    bad_sources = [
        ({"kind": "nope"}, InvalidParameterError, r"unknown source kind 'nope'"),
        ({"kind": "s3"}, InvalidParameterError, r"needs a 'bucket'"),
        ({"kind": "os:system"}, ModelLoadError, r"must subclass berg.store.sources.Source"),
        ({"kind": "build", "command": 3}, InvalidParameterError, r"'command' must be a string"),
        ({**S3_SOURCE, "manifest": "nah"}, InvalidParameterError, r"is not a boolean"),
    ]
    cases += [
        (
            f"bad source {src}",
            lambda src=src: Store(cache_dir=tmp_path / "c").fetch("raw", src, "data.bin"),
            ("refused", cls, rx),
        )
        for src, cls, rx in bad_sources
    ]

    def planted(name):
        model = tmp_path / f"p-{name}" / "raw"
        model.mkdir(parents=True)
        (model / name).symlink_to(outside / "victim")
        return Store(cache_dir=tmp_path / f"p-{name}").fetch("raw", S3_SOURCE, "data.bin")

    def fetched_right_bytes(path):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == data_sha256 and not path.is_symlink()

    cases.append(("planted link data.bin", lambda: planted("data.bin"), ("refused", ArtifactError, r"symbolic link")))
    cases += [
        (f"planted link {n}", lambda n=n: planted(n), ("safe", fetched_right_bytes))
        for n in ["data.bin.part", "data.bin.part.json", "data.bin.lock", INDEX_NAME]
    ]
    return cases


def _compass(cases) -> tuple[dict[str, int], list[str]]:
    """Run every case; returns the tally and the cases whose outcome was not the expected one."""
    tally = {"refused": 0, "safe": 0}
    wrong = []
    for what, fn, expect in cases:
        try:
            result = fn()
        except BERGError as exc:
            if expect[0] == "refused" and isinstance(exc, expect[1]) and re.search(expect[2], str(exc)):
                tally["refused"] += 1
            else:
                wrong.append(f"{what}: expected {expect[:1]}{expect[1:]}, got {type(exc).__name__}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - a raw exception is always wrong
            wrong.append(f"{what}: raw {type(exc).__name__}: {exc}")
            continue
        if expect[0] != "safe":
            wrong.append(f"{what}: expected {expect[1].__name__} matching {expect[2]!r}, but it was ACCEPTED")
            continue
        try:
            expect[1](result)
            tally["safe"] += 1
        except AssertionError as exc:
            wrong.append(f"{what}: accepted, but the result is wrong: {exc}")
    return tally, wrong


def _compass_report(tmp_path, hostile_files) -> tuple[dict[str, int], list[str], int, int]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious")
    before = _snapshot(outside)
    cases = _compass_cases(tmp_path, outside, hostile_files["data.bin"])
    tally, wrong = _compass(cases)
    touched = int(_snapshot(outside) != before or (outside / "victim").read_bytes() != b"precious")
    return tally, wrong, touched, len(cases)


def test_hostile_store_compass(hostile_files, endpoint, tmp_path, capsys):
    """The figure for issue 10: each bad store input has the outcome it must have, nothing outside is touched."""
    tally, wrong, touched, n = _compass_report(tmp_path, hostile_files)
    with capsys.disabled():
        sys.stdout.write(
            f"\nstore bad inputs tried {n}: refused as expected {tally['refused']}, handled safely as expected "
            f"{tally['safe']}, wrong outcome {len(wrong)}, files outside the cache touched {touched}\n"
        )
    assert wrong == []
    assert touched == 0
    # every case is one of the two expected outcomes, and the split is the one the cases declare
    assert tally == {"refused": n - 4, "safe": 4}


def test_store_compass_fails_when_a_refused_input_is_accepted(hostile_files, endpoint, tmp_path, monkeypatch):
    """The compass can fail: with the key check taken out, the bad keys are no longer refused as they must be."""
    import berg.store as store_mod

    monkeypatch.setattr(store_mod, "check_key", lambda key: key)  # a regression: keys no longer checked
    tally, wrong, _, n = _compass_report(tmp_path, hostile_files)
    assert wrong, "the compass did not notice that bad keys are accepted"
    assert any(w.startswith("bad key '../outside/victim'") for w in wrong), wrong
    assert tally["refused"] + tally["safe"] < n
    with pytest.raises(AssertionError):
        assert wrong == []  # exactly the assertion test_hostile_store_compass makes


def test_store_compass_fails_when_a_reserved_key_is_accepted(hostile_files, endpoint, tmp_path, monkeypatch):
    import berg.store.artifacts as artifacts

    monkeypatch.setattr(artifacts, "reserved_reason", lambda key: None)
    _, wrong, _, _ = _compass_report(tmp_path, hostile_files)
    assert any(w.startswith("reserved key") for w in wrong), wrong


def test_listing_leaves_out_keys_berg_cannot_cache(tmp_path):
    remote = tmp_path / "remote"
    (remote / "dir").mkdir(parents=True)
    for name in ("ok.bin", "dir/fine.txt", "evil.lock", "dir/x.part", INDEX_NAME):
        (remote / name).write_bytes(b"x")
    assert Store(cache_dir=tmp_path / "c").list_keys(folder_source(remote, manifest=False)) == [
        "dir/fine.txt",
        "ok.bin",
    ]


def test_unreadable_cached_file_in_a_shared_cache_is_a_clear_error(shared_tmp):
    _native(shared_tmp / "remote")
    source = folder_source(shared_tmp / "remote")
    Store(cache_dir=shared_tmp / "cache").fetch("plug", source, "readout/sub-01.safetensors")
    target = shared_tmp / "cache" / "plug" / "readout" / "sub-01.safetensors"
    target.chmod(0o600 if IS_ROOT else 0o000)  # another user's private file
    out = _as_reader(
        {"cache": str(shared_tmp / "cache"), "model": "plug", "source": source, "keys": ["readout/sub-01.safetensors"]}
    )["readout/sub-01.safetensors"]
    assert out["error"] == "ArtifactError" and "Permission denied [EACCES]" in out["msg"] and str(target) in out["msg"]
