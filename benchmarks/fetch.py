"""Fetch throughput of berg's store from a local SeaweedFS, against boto3 ``download_file``.

Cases (each on a fresh cache):
* one big file (default 500 MB) -> ``Store.fetch`` vs ``boto3 download_file`` (what ``aws s3 cp`` does);
* many small files (default 1,000 x 16 KB) -> ``Store.fetch_many`` vs a loop of ``download_file``;
* ``get_model_metadata`` of a small synthetic native model, cold cache vs warm cache (and offline).

Run: ``.venv/bin/python benchmarks/fetch.py [--big-mb 500] [--n-small 1000] [--small-kb 16]``.
It starts its own SeaweedFS on 127.0.0.1 (:mod:`berg.testing.s3server`) and removes all its data at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import _harness as H

BUCKET = "berg-bench"


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _write_random(path: Path, size: int) -> str:
    import numpy as np

    rng = np.random.default_rng(0)
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            block = rng.bytes(min(left, 64 << 20))
            fh.write(block)
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def bench_big(server, work: Path, size_mb: int, repeats: int) -> dict:
    from berg.store import Store

    src_file = work / "big.bin"
    digest = _write_random(src_file, size_mb << 20)
    server.upload_tree_files({"big/big.bin": src_file}, BUCKET)
    src_file.unlink()
    source = {"kind": "s3", "bucket": BUCKET, "prefix": "big/", "manifest": False}
    client = server.anonymous_client()
    client.download_file(BUCKET, "big/big.bin", str(work / "warmup.bin"))  # same server-side cache state for both
    (work / "warmup.bin").unlink()
    berg_t, boto_t = [], []
    for i in range(repeats):
        cache = work / f"cache-big-{i}"
        t, path = _timed(lambda: Store(cache_dir=cache).fetch("bench", source, "big.bin"))
        berg_t.append(t)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        shutil.rmtree(cache)
        dest = work / "boto-big.bin"
        t, _ = _timed(lambda: client.download_file(BUCKET, "big/big.bin", str(dest)))
        boto_t.append(t)
        dest.unlink()
    warm_cache = work / "cache-big-warm"
    Store(cache_dir=warm_cache).fetch("bench", source, "big.bin")
    warm, _ = _timed(lambda: Store(cache_dir=warm_cache).fetch("bench", source, "big.bin"))
    shutil.rmtree(warm_cache)
    mb = size_mb * 1.048576
    b, o = statistics.median(berg_t), statistics.median(boto_t)
    return {
        "case": f"1 file, {size_mb} MiB",
        "berg_s": b,
        "boto3_s": o,
        "berg_MBps": mb / b,
        "boto3_MBps": mb / o,
        "ratio": o / b,
        "warm_s": warm,
    }


def bench_small(server, work: Path, n: int, kb: int) -> dict:
    import numpy as np

    from berg.store import Store

    rng = np.random.default_rng(1)
    files = {}
    root = work / "small-src"
    root.mkdir()
    for i in range(n):
        p = root / f"f{i:05d}.bin"
        p.write_bytes(rng.bytes(kb << 10))
        files[f"small/f{i:05d}.bin"] = p
    server.upload_tree_files(files, BUCKET)
    shutil.rmtree(root)
    keys = [k.split("/", 1)[1] for k in files]
    source = {"kind": "s3", "bucket": BUCKET, "prefix": "small/", "manifest": False}
    cache = work / "cache-small"
    berg_t, _ = _timed(lambda: Store(cache_dir=cache).fetch_many("bench", source, keys))
    warm, _ = _timed(lambda: Store(cache_dir=cache).fetch_many("bench", source, keys))
    shutil.rmtree(cache)
    client = server.anonymous_client()
    dest = work / "boto-small"
    dest.mkdir()
    boto_t, _ = _timed(lambda: [client.download_file(BUCKET, f"small/{k}", str(dest / k)) for k in keys])
    shutil.rmtree(dest)
    mb = n * kb / 1024 * 1.048576
    return {
        "case": f"{n} files x {kb} KiB",
        "berg_s": berg_t,
        "boto3_s": boto_t,
        "berg_MBps": mb / berg_t,
        "boto3_MBps": mb / boto_t,
        "ratio": boto_t / berg_t,
        "warm_s": warm,
    }


def bench_metadata(server, work: Path) -> dict:
    import berg
    from berg.testing import toy_model

    model = toy_model(work / "synthetic", "volume", bucket="berg-test-synthetic", creator="benchmarks/fetch.py")
    MODEL_ID, PREFIX = model.model_id, model.prefix  # noqa: N806
    server.upload_tree(model.berg_dir / PREFIX, "berg-test-synthetic", PREFIX)
    cache = work / "cache-meta"
    cold, meta = _timed(
        lambda: berg.BERG(cache_dir=cache, registry=model.registry).get_model_metadata(MODEL_ID, subject=1)
    )
    warm, _ = _timed(
        lambda: berg.BERG(cache_dir=cache, registry=model.registry).get_model_metadata(MODEL_ID, subject=1)
    )
    offline, _ = _timed(
        lambda: berg.BERG(cache_dir=cache, registry=model.registry, offline=True).get_model_metadata(
            MODEL_ID, subject=1
        )
    )
    n_files = sum(
        1
        for p in (cache / MODEL_ID).rglob("*")
        if p.is_file() and not p.name.startswith(".berg-") and not p.name.endswith(".lock")
    )
    return {"cold_s": cold, "warm_s": warm, "offline_s": offline, "files": n_files, "n_outputs": meta["n_outputs"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mb", type=int, default=500)
    ap.add_argument("--n-small", type=int, default=1000)
    ap.add_argument("--small-kb", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = H.add_arguments(ap).parse_args(argv)
    if args.smoke:
        args.big_mb, args.n_small, args.small_kb, args.repeats = 2, 5, 4, 1
    from berg.testing.s3server import SeaweedServer

    rec = H.start("fetch", args)

    work = Path(tempfile.mkdtemp(prefix="berg-bench-"))
    server = SeaweedServer(work / "seaweedfs")
    t, _ = _timed(server.start)
    os.environ["BERG_S3_ENDPOINT"] = server.endpoint_url
    os.environ.pop("BERG_OFFLINE", None)
    try:
        print(f"SeaweedFS ready in {t:.1f} s at {server.endpoint_url}")
        server.create_bucket(BUCKET)
        rows = [
            bench_big(server, work, args.big_mb, args.repeats),
            bench_small(server, work, args.n_small, args.small_kb),
        ]
        for name, r in zip(("big", "small"), rows):
            case = r["case"]
            rec.figure(f"{name}.berg", r["berg_MBps"], "MB/s", case=case)
            rec.figure(f"{name}.boto3", r["boto3_MBps"], "MB/s", case=case)
            rec.figure(f"{name}.boto3_time_over_berg", r["ratio"], "x", case=case)
            rec.figure(f"{name}.warm_cache", r["warm_s"], "s", case=case)
        m = bench_metadata(server, work)
        for key in ("cold_s", "warm_s", "offline_s"):
            rec.figure(f"metadata.{key[:-2]}", m[key], "s", files=m["files"])
        rec.figure("metadata.files_fetched", m["files"], "files")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
