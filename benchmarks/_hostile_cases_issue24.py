"""Issue 24's classes for benchmarks/hostile_inputs.py: every bad input, with the outcome berg must give.

Groups (each case is refused with a berg error whose message says what to do, or handled correctly
with its result checked here, so a silent acceptance fails the harness):

- ``cache``: ``berg cache list/size/verify/clear`` with arguments that name things outside the cache
  (relative, absolute, ``..``, links planted in the cache, empty, NUL); a decoy beside the cache
  (``ctx.outside``) must keep its bytes and mtime.
- ``locks``: a lock held by a stopped (SIGSTOP) or live process ends the wait with the holder's pid.
- ``runstore``: damaged run stores (flipped or deleted chunks, forged markers, stale shards), plan
  booleans given as text, store paths that are files or hold NUL bytes, ``berg.run`` of non-plans.
- ``budget``: memory bombs within Pillow's own limit (PNG 13000², 7000², JPEG above the budget,
  a 300-frame 720p clip, ``fps=1e9``); ``decoding``: 16-bit, 32-bit, float and NaN images, EXIF
  orientation, empty paths.
- ``weights``: non-finite or degenerate readouts, scalers and PCA in BERG weights files.
- ``outputs``: sidecar collisions, stale sidecars, GIfTI prefixes, stimulus ids, long names, suffixes,
  a killed save's temporary, existing outputs in the CLI.
- ``registry``: ``--registry`` files with broken or hostile YAML, through the CLI and the API.
- ``cli``: unknown or abbreviated global options, odd ``berg list`` patterns, encode over an existing
  output, Ctrl-C during ``berg encode``.
- ``api``: ``list_models(5)``, ``min_frames='16'``, ``subject=[1, "2"]``, ``selection={"roi": None}``,
  ``BERG(offline=...)`` text, ``berg.run(None)`` and their neighbours.

Cases that need a built model write it in ``prepare`` (unmeasured); all files live in ``ctx.cache``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import hostile_inputs as H
import numpy as np

Case = H.Case
CASES: list[Case] = []


def add(group: str, name: str, run, expect: str = "error", *, match: str | None = None, prepare=None, xfail=None):
    CASES.append(Case(group, name, run, expect, prepare, match, xfail))


def check(cond: bool, what: str) -> None:
    """A wrong result (berg returned without a word) is an :class:`hostile_inputs.Accepted`."""
    if not cond:
        raise H.Accepted(what)


def _cli_error_class():
    from berg.errors import BERGError

    class CLIError(BERGError):
        """``berg`` refused with one line on stderr (the line is the message)."""

    return CLIError


def cli(*argv: str, expect_rc: int | None = None) -> str:
    """Run ``berg ARGV`` in this process; its stdout, or a BERGError carrying the one-line error.

    A traceback, or an error that is not one ``berg: error:`` line, is an AssertionError ("wrong").
    """
    from berg.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(argv))
        except SystemExit as exc:  # argparse errors
            rc = exc.code if isinstance(exc.code, int) else 2
    text = err.getvalue()
    if "Traceback" in text:
        raise AssertionError(f"traceback on stderr: {text[-400:]}")
    if rc == 0:
        return out.getvalue()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1 or not lines[0].startswith(("berg: error: ", "berg: no model matches")):
        raise AssertionError(f"exit {rc} without one 'berg: error:' line: {text[-400:]!r}")
    if expect_rc is not None and rc != expect_rc:
        raise AssertionError(f"exit {rc}, expected {expect_rc}: {lines[0]}")
    raise _cli_error_class()(lines[0])


def png_header_bomb(path: Path, side: int, grey: bool = True) -> Path:
    """A real, valid PNG of ``side``² black pixels written row by row (tiny file, huge image)."""
    bpp = 1 if grey else 3
    header = struct.pack(">IIBBBBB", side, side, 8, 0 if grey else 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + side * bpp)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


# ================================================================================= cache


def _cache_world(ctx) -> None:
    from berg.fsutil import sha256_file
    from berg.store.cache import INDEX_NAME, CacheIndex

    cache = ctx.cache / "berg-cache"
    for name, files in {"m1": {"a.bin": b"aaaa", "sub/b.bin": b"bb"}, "m2": {"c.bin": b"cccccc"}}.items():
        index = CacheIndex(cache / name)
        for key, data in files.items():
            p = cache / name / key
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            index.record(key, p, sha256_file(p))
    victim = ctx.outside / "victim"
    victim.mkdir()
    (victim / "file.txt").write_bytes(b"precious")
    (victim / INDEX_NAME).write_bytes(b"")  # looks like berg's, but outside the cache
    (cache / "link-out").symlink_to(victim)
    (cache / "m1" / "linked").symlink_to(victim)
    (cache / "m2" / "decoy-link").symlink_to(ctx.outside / "decoy.txt")


_CACHE_ARGS = {
    "parent": "..",
    "sibling-decoy": "../../outside/decoy.txt",
    "sibling-victim": "../../outside/victim",
    "abs-decoy": "{outside}/decoy.txt",
    "abs-victim": "{outside}/victim",
    "abs-root-of-case": "{root}",
    "slash": "/",
    "planted-link": "link-out",
    "through-planted-link": "link-out/file.txt",
    "link-in-model": "m1/linked",
    "through-link-in-model": "m1/linked/file.txt",
    "file-link-in-model": "m2/decoy-link",
    "dotdot-inside-path": "m1/../../../outside/decoy.txt",
    "dotdot-twice": "m1/../..",
    "dot": ".",
    "empty": "",
    "space": " ",
    "nul": "x\x00y",
    "the-cache-itself": "{cache}",
    "tilde": "~",
}


def _cache_case(action: str, arg: str):
    def run(ctx):
        cache = ctx.cache / "berg-cache"
        value = arg.format(outside=ctx.outside, root=ctx.root, cache=cache)
        cli("--cache-dir", str(cache), "cache", action, value)
        raise H.Accepted(f"berg cache {action} {value!r} was accepted")

    return run


for _action in ("list", "size", "verify", "clear"):
    for _name, _arg in _CACHE_ARGS.items():
        add(
            "cache",
            f"{_action}-{_name}",
            _cache_case(_action, _arg),
            match=r"outside the cache|empty|the cache itself|not in the cache|NUL|not a|name",
            prepare=_cache_world,
        )


def _cache_real_targets(ctx) -> None:
    cache = ctx.cache / "berg-cache"
    cli("--cache-dir", str(cache), "cache", "verify", "m1")
    cli("--cache-dir", str(cache), "cache", "clear", "m1/sub/b.bin")
    check(not (cache / "m1" / "sub" / "b.bin").exists() and (cache / "m1" / "a.bin").exists(), "clear of one file")
    cli("--cache-dir", str(cache), "cache", "clear")
    check(not (cache / "m1").exists() and not (cache / "m2").exists(), "clear of everything left models")
    check((ctx.outside / "victim" / "file.txt").read_bytes() == b"precious", "victim changed")


add("cache", "real-targets-then-clear-all", _cache_real_targets, "ok", prepare=_cache_world)


# ================================================================================= locks


def _held_lock(ctx, stop: bool):
    lock = ctx.cache / "artifact.lock"
    code = (
        "import sys, time\nfrom berg.fsutil import process_lock\n"
        f"with process_lock({str(lock)!r}, what='test holder'):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    if stop:
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.3)
    return lock, proc


def _lock_case(stop: bool, timeout: float):
    def run(ctx):
        from berg.fsutil import process_lock

        lock, proc = _held_lock(ctx, stop)
        t0 = time.monotonic()
        try:
            with process_lock(lock, timeout=timeout, what="hostile case"):
                raise H.Accepted("lock acquired while another process holds it")
        finally:
            waited = time.monotonic() - t0
            if stop:
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()
            check(waited < timeout + 5, f"waited {waited:.1f} s for a {timeout} s timeout")

    return run


add("locks", "holder-stopped-sigstop", _lock_case(True, 30.0), match=r"pid \d+|stopped")
add("locks", "holder-alive-timeout-1s", _lock_case(False, 1.0), match=r"pid \d+|BERG_LOCK_TIMEOUT|timeout")


def _lock_after_holder_killed(ctx) -> None:
    from berg.fsutil import process_lock

    lock, proc = _held_lock(ctx, False)
    proc.kill()
    proc.wait()
    with process_lock(lock, timeout=5):  # the kernel released it: acquired at once
        pass


add("locks", "holder-killed-lock-free", _lock_after_holder_killed, "ok")


# ================================================================================= run stores

_N, _SHARD = 10, 4


def _store(ctx, h: str = "h1"):
    from berg.testing.runs import toy_run_store

    store, t, _ = toy_run_store(ctx.cache, target_hash=h, n=_N, shard_size=_SHARD)
    return store, t


def _flip(path: Path, keep_mtime: bool = False) -> None:
    from berg.testing.runs import flip_byte

    flip_byte(path, keep_mtime=keep_mtime)


def _damage(kind: str, store, t) -> None:
    (chunk,) = store.chunk_files(t.key, 1)
    if kind == "flipped-chunk":
        _flip(chunk)
    elif kind == "flipped-chunk-same-mtime":
        _flip(chunk, keep_mtime=True)
    elif kind == "deleted-chunk":
        chunk.unlink()
    elif kind == "truncated-chunk":
        chunk.write_bytes(chunk.read_bytes()[:5])
    elif kind == "forged-marker-copied":
        store.marker_path(t.key, 1).write_text(json.dumps(store.read_marker(t.key, 2)))
    elif kind == "forged-marker-no-checksums":
        marker = {k: v for k, v in store.read_marker(t.key, 1).items() if k != "chunks"}
        store.marker_path(t.key, 1).write_text(json.dumps(marker))
    elif kind == "forged-marker-empty-chunks":
        marker = {**store.read_marker(t.key, 1), "chunks": {}}
        store.marker_path(t.key, 1).write_text(json.dumps(marker))
    elif kind == "marker-not-json":
        store.marker_path(t.key, 1).write_text("{not json")


_DAMAGES = (
    "flipped-chunk",
    "flipped-chunk-same-mtime",
    "deleted-chunk",
    "truncated-chunk",
    "forged-marker-copied",
    "forged-marker-no-checksums",
    "forged-marker-empty-chunks",
    "marker-not-json",
)


def _status_case(kind: str):
    def run(ctx):
        store, t = _store(ctx)
        _damage(kind, store, t)
        st = store.status(verify=True)
        check(not st["complete"], f"status says complete after {kind}")
        return st

    return run


def _export_case(kind: str):
    def run(ctx):
        from berg.runner.export import export_hdf5

        store, t = _store(ctx)
        _damage(kind, store, t)
        out = ctx.cache / "out.h5"
        try:
            export_hdf5(store.root, out, verify=True)
        finally:
            check(not out.exists() or kind == "", "export left a file after refusing")
        raise H.Accepted(f"export of a store with a {kind} succeeded")

    return run


def _export_incomplete_case(kind: str):
    def run(ctx):
        import h5py

        from berg.runner.export import export_hdf5

        store, t = _store(ctx)
        _damage(kind, store, t)
        out = ctx.cache / "out.h5"
        export_hdf5(store.root, out, verify=True, allow_incomplete=True)
        with h5py.File(out) as f:
            got = f["toy/sub-01/responses"][()]
        check(np.isnan(got[4:8]).all(), f"damaged shard exported as numbers ({kind})")
        want = np.arange(_N * 3, dtype=np.float32).reshape(_N, 3)
        check(np.array_equal(got[:4], want[:4]) and np.array_equal(got[8:], want[8:]), "intact shards changed")

    return run


for _kind in _DAMAGES:
    add("runstore", f"status-{_kind}", _status_case(_kind), "ok")
    add("runstore", f"export-{_kind}", _export_case(_kind), match=r"damaged|missing|allow-incomplete|--verify")
    add("runstore", f"export-allow-incomplete-{_kind}", _export_incomplete_case(_kind), "ok")


def _export_stale_allow_incomplete(ctx) -> None:
    import h5py

    from berg.runner.export import export_hdf5
    from berg.runner.zarr_store import TargetInfo

    store, old = _store(ctx)
    new = TargetInfo(**{**old.__dict__, "hash": "h2"}) if hasattr(old, "__dict__") else old
    store.initialise(
        targets=[new],
        plan={"p": 2},
        plan_hash="ph2",
        stimulus_ids=[f"s{i}" for i in range(_N)],
        stimuli_fingerprint={"n": _N},
        shard_size=_SHARD,
        dtype="float32",
    )
    fresh = -np.arange(_N * 3, dtype=np.float32).reshape(_N, 3)
    for s in (0, 2):
        a, b = s * _SHARD, min(_N, (s + 1) * _SHARD)
        store.mark_done(new.key, s, {"target_hash": "h2", "chunks": store.write_shard(new.key, s, a, fresh[a:b])})
    export_hdf5(store.root, ctx.cache / "out.h5", allow_incomplete=True)
    with h5py.File(ctx.cache / "out.h5") as f:
        got = f["toy/sub-01/responses"][()]
    check(np.isnan(got[4:8]).all(), "a stale shard of the old plan was exported as numbers")
    check(np.array_equal(got[:4], fresh[:4]), "fresh rows changed")


add("runstore", "export-allow-incomplete-stale-plan", _export_stale_allow_incomplete, "ok")


def _export_cli(ctx, suffix: str, exists: bool, force: bool = False) -> str:
    store, _ = _store(ctx)
    out = ctx.cache / f"out{suffix}"
    if exists:
        out.write_bytes(b"user data")
    argv = ["export", str(store.root), "--to", str(out)] + (["--force"] if force else [])
    try:
        return cli(*argv)
    finally:
        if exists and not force:
            check(out.read_bytes() == b"user data", "the user's file was changed")


add("runstore", "cli-export-over-existing", lambda ctx: _export_cli(ctx, ".h5", True), match="--force")
add("runstore", "cli-export-to-txt", lambda ctx: _export_cli(ctx, ".txt", False), match=r"HDF5|\.h5")
add("runstore", "cli-export-to-npy", lambda ctx: _export_cli(ctx, ".npy", False), match=r"HDF5|\.h5")
add(
    "runstore",
    "cli-export-force-overwrites",
    lambda ctx: check("wrote" in _export_cli(ctx, ".h5", True, force=True), "no 'wrote' line"),
    "ok",
)


def _plan(ctx, **over: Any) -> dict[str, Any]:
    from PIL import Image

    folder = ctx.cache / "stimuli"
    folder.mkdir(exist_ok=True)
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(folder / f"i{i}.png")
    raw = {
        "models": [{"id": "fmri-luminance-baseline", "subjects": [1]}],
        "stimuli": {"folder": str(folder)},
        "store": str(ctx.cache / "run"),
    }
    raw.update(over)
    return raw


def _plan_case(**over: Any):
    def run(ctx):
        from berg.runner.plan import EncodePlan

        plan = EncodePlan.from_dict(_plan(ctx, **{k: v(ctx) if callable(v) else v for k, v in over.items()}))
        raise H.Accepted(f"plan accepted: {plan!r} (fsync={plan.fsync!r})")

    return run


for _value in ("false", "no", "'false'", "off", "0", "true", "yes", "", "maybe", None, 2, [], {}):
    add("runstore", f"plan-fsync-{_value!r}", _plan_case(fsync=_value), match=r"fsync must be a boolean")
add("runstore", "plan-store-is-a-file", _plan_case(store=lambda ctx: _file(ctx)), match=r"is a file; give a folder")
add("runstore", "plan-store-nul", _plan_case(store=lambda ctx: str(ctx.cache / "a\x00b")), match="NUL")
add("runstore", "plan-store-empty", _plan_case(store=""), match="needs 'store'")
add("runstore", "plan-shard-size-text", _plan_case(shard_size="16"), match="shard_size")
add("runstore", "plan-shard-size-zero", _plan_case(shard_size=0), match="shard_size")
add("runstore", "plan-on-error-bogus", _plan_case(on_error="ignore"), match="on_error")
add("runstore", "plan-unknown-key", _plan_case(fsycn=True), match=r"fsync|valid")
add("runstore", "plan-models-not-list", _plan_case(models="fmri-luminance-baseline"), match="models")


def _file(ctx) -> str:
    p = ctx.cache / "afile"
    p.write_text("x")
    return str(p)


for _label, _plan_value in {
    "None": None,
    "int": 5,
    "bytes": b"plan.yaml",
    "list": ["a"],
    "empty-dict": {},
    "empty-str": "",
    "missing-file": "no-such-plan.yaml",
}.items():
    add(
        "runstore",
        f"run-{_label}",
        lambda ctx, v=_plan_value: __import__("berg").run(v),
        match=r"EncodePlan|plan (file )?not found|needs 'models'",
    )


def _run_then_resume_after_delete(ctx) -> None:
    """A finished berg.run with a chunk deleted: status says damaged, a resume recomputes it bit for bit."""
    import berg
    from berg.runner.zarr_store import RunStore

    raw = _plan(ctx)
    berg.run(raw)
    store = RunStore.open(ctx.cache / "run")
    key = next(iter(store.status()["targets"]))
    before = _export_array(ctx, store, "a.h5")
    chunks = sorted((ctx.cache / "run").rglob("c/*/*"))
    check(bool(chunks), "no chunk written")
    chunks[0].unlink()
    check(not store.status()["complete"], "status complete with a deleted chunk")
    berg.run(raw)
    check(RunStore.open(ctx.cache / "run").status(verify=True)["complete"], "resume did not repair")
    check(np.array_equal(_export_array(ctx, store, "b.h5"), before, equal_nan=True), f"{key}: repaired rows differ")


def _export_array(ctx, store, name: str) -> np.ndarray:
    import h5py

    from berg.runner.export import export_hdf5

    export_hdf5(store.root, ctx.cache / name)
    with h5py.File(ctx.cache / name) as f:
        arrays = []
        f.visititems(lambda n, obj: arrays.append(obj[()]) if n.endswith("responses") else None)
    return np.concatenate([a.reshape(len(a), -1) for a in arrays], axis=1)


def _run_once(ctx) -> None:
    """Unmeasured: the first, complete run (imports torch, zarr and the model): the case measures the damage
    and the repair, not berg's start-up."""
    import berg

    berg.run(_plan(ctx))


add("runstore", "run-deleted-chunk-resume-repairs", _run_then_resume_after_delete, "ok", prepare=_run_once)


# ================================================================================= budget, decoding


def _decoded(stimulus, kind="image", **kw):
    from berg.stimuli import load_stimuli

    stimuli = load_stimuli(stimulus, kind, **kw)
    return [stimuli[i] for i in range(len(stimuli))]


for _side in (7000, 13000):
    for _grey in (True, False):
        _tag = f"png-{_side}sq-{'grey' if _grey else 'rgb'}"
        add(
            "budget",
            _tag,
            lambda ctx, t=_tag: _decoded(ctx.cache / f"{t}.png"),
            match=r"pixel|budget|BERG_MAX_PIXELS|max_pixels",
            prepare=lambda ctx, t=_tag, s=_side, g=_grey: png_header_bomb(ctx.cache / f"{t}.png", s, g),
        )
        add(
            "budget",
            f"{_tag}-target-size",
            lambda ctx, t=_tag: _decoded(ctx.cache / f"{t}.png", target_size=(224, 224)),
            match=r"pixel|budget|BERG_MAX_PIXELS|max_pixels",
            prepare=lambda ctx, t=_tag, s=_side, g=_grey: png_header_bomb(ctx.cache / f"{t}.png", s, g),
        )


def _big_jpeg(ctx) -> None:
    from PIL import Image

    Image.new("L", (9000, 9000), 128).save(ctx.cache / "big.jpg", quality=50)


def _jpeg_draft(ctx) -> None:
    (img,) = _decoded(ctx.cache / "big.jpg", target_size=(224, 224))
    check(img.shape[0] >= 224 and img.shape[0] * img.shape[1] <= 40_000_000, f"decoded at {img.shape}")
    check(abs(float(np.mean(img)) - 128) < 3, "draft-decoded pixels wrong")


add("budget", "jpeg-81mp-target-size-draft", _jpeg_draft, "ok", prepare=_big_jpeg)
add(
    "budget",
    "jpeg-81mp-no-target",
    lambda ctx: _decoded(ctx.cache / "big.jpg"),
    match=r"pixel|budget|BERG_MAX_PIXELS",
    prepare=_big_jpeg,
)


def _write_clip(path: Path, n: int, size=(720, 1280), rate: int = 30) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((*size, 3), np.uint8), format="rgb24")
        for _ in range(n):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _clip_300(ctx) -> None:
    _write_clip(ctx.cache / "black.mp4", 300)


def _clip_sampled(ctx) -> None:
    (clip,) = _decoded(ctx.cache / "black.mp4", "video", n_frames=16)
    check(clip.shape[0] == 16 and clip.shape[1:] == (720, 1280, 3), f"sampled clip {clip.shape}")


add("budget", "mp4-300-frames-720p-sampled", _clip_sampled, "ok", prepare=_clip_300)
add(
    "budget",
    "mp4-300-frames-720p-all-frames",
    lambda ctx: _decoded(ctx.cache / "black.mp4", "video"),
    "either",  # within BERG_MAX_VIDEO_MB it decodes; above, it is refused from the header
    prepare=_clip_300,
)


def _fps_case(fps: Any):
    def run(ctx):
        from berg.stimuli import decode_video

        return decode_video(ctx.cache / "c.mp4", fps=fps)

    return run


for _fps in (1e9, 1e6, 0, -5, float("nan"), float("inf"), "30"):
    add(
        "budget",
        f"decode-video-fps-{_fps!r}",
        _fps_case(_fps),
        match=r"fps",
        prepare=lambda ctx: _write_clip(ctx.cache / "c.mp4", 5, (32, 48)),
    )


def _png16(ctx) -> None:
    from PIL import Image

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(ctx.cache / "grey16.png")


def _check_ramp(img: np.ndarray, what: str) -> None:
    grey = img[..., 0].astype(float)
    check(img.dtype == np.uint8, f"{what}: dtype {img.dtype}")
    check(np.mean(grey >= 255) < 0.05, f"{what}: {np.mean(grey >= 255):.0%} saturated")
    check(grey.max() - grey.min() > 200, f"{what}: range {grey.min()}..{grey.max()} lost")


add(
    "decoding",
    "png-16-bit-grey-file",
    lambda ctx: _check_ramp(_decoded(ctx.cache / "grey16.png")[0], "16-bit"),
    "ok",
    prepare=_png16,
)


def _pil_i16(ctx) -> None:
    from PIL import Image

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    img = Image.fromarray(ramp).convert("I;16") if Image.fromarray(ramp).mode != "I;16" else Image.fromarray(ramp)
    _check_ramp(_decoded([img])[0], "PIL I;16")


add("decoding", "pil-i16-image", _pil_i16, "ok")


def _tiff32(ctx) -> None:
    from PIL import Image

    ramp = (np.arange(64 * 64, dtype=np.int64).reshape(64, 64) * 500_000).astype(np.int32)
    Image.fromarray(ramp, mode="I").save(ctx.cache / "int32.tif")


add(
    "decoding",
    "tiff-32-bit-int",
    lambda ctx: _check_ramp(_decoded(ctx.cache / "int32.tif")[0], "int32"),
    "ok",
    prepare=_tiff32,
)


def _tiff_float(ctx) -> None:
    from PIL import Image

    Image.fromarray(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64), mode="F").save(ctx.cache / "f.tif")


add(
    "decoding",
    "tiff-float-0-1",
    lambda ctx: _check_ramp(_decoded(ctx.cache / "f.tif")[0], "float"),
    "ok",
    prepare=_tiff_float,
)


def _pil_f(value: float):
    def run(ctx):
        from PIL import Image

        return _decoded([Image.fromarray(np.full((8, 8), value, np.float32), mode="F")])

    return run


add("decoding", "pil-F-nan", _pil_f(float("nan")), match=r"NaN|finite")
add("decoding", "pil-F-inf", _pil_f(float("inf")), match=r"NaN|finite|inf|range")
add(
    "decoding",
    "float-array-out-of-range",
    lambda ctx: _decoded(np.full((1, 8, 8, 3), 7.5, np.float32)),
    match=r"range|0-255|0 and 1|\[0, 1\]|values",
)


def _exif(orientation: int):
    def prepare(ctx):
        from PIL import Image

        arr = np.zeros((20, 40, 3), np.uint8)
        arr[:, :20] = 255  # left half white
        img = Image.fromarray(arr)
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(ctx.cache / "o.jpg", exif=exif, quality=95)

    def run(ctx):
        from PIL import Image, ImageOps

        (got,) = _decoded(ctx.cache / "o.jpg")
        want = np.asarray(ImageOps.exif_transpose(Image.open(ctx.cache / "o.jpg")).convert("RGB"))
        check(got.shape == want.shape, f"orientation {orientation}: shape {got.shape}, expected {want.shape}")
        check(np.abs(got.astype(int) - want.astype(int)).mean() < 2, f"orientation {orientation}: pixels not turned")

    return prepare, run


for _o in range(1, 9):
    _prep, _run = _exif(_o)
    add("decoding", f"exif-orientation-{_o}", _run, "ok", prepare=_prep)

for _label, _path in {"empty": "", "space": " ", "dot-is-a-folder-of-nothing": ".", "empty-in-list": [""]}.items():
    add(
        "decoding",
        f"load-stimuli-path-{_label}",
        lambda ctx, p=_path: _decoded(p),
        match=r"empty|no image|not found|path|stimul",
    )


# ================================================================================= weights


def _catalogue(mutate):
    def prepare(ctx):
        from creation_code.berg_catalogue.replica import write_replica

        rep = write_replica(
            ctx.cache / "bucket", "things_eeg_2", "alexnet", subjects=(1,), n_features=16, n_components=3, n_train=12
        )
        w = rep.weights[1]
        mutate(w)
        np.save(ctx.cache / "weights_subject-01.npy", w, allow_pickle=True)

    return prepare


def _read_catalogue(ctx):
    """What loading the model does with the file: read it, build each readout, fold each projection.

    The big arrays are checked where loading reads them (``coef_`` as the readout is built,
    ``components_`` as they are folded), so reading the file alone does not look at them.
    """
    from berg.models.berg_catalogue import fold_projection, read_weights, stacked_readout

    w = read_weights(ctx.cache / "weights_subject-01.npy", "things_eeg_2")
    for _, _, lin in w.heads:
        stacked_readout([lin])
    for name in w.pcas:
        fold_projection(ctx.cache / f"projection-{name}.safetensors", w, name)
    return w


def _set(path: tuple, value_fn):
    def mutate(w):
        obj = w
        for key in path[:-1]:
            obj = obj[key] if isinstance(obj, dict) else getattr(obj, key)
        last = path[-1]
        if isinstance(obj, dict):
            obj[last] = value_fn(obj[last])
        else:
            setattr(obj, last, value_fn(getattr(obj, last)))

    return mutate


def _nan_at0(a):
    a = np.array(a, dtype=np.float64 if np.asarray(a).dtype.kind == "f" else np.float64)
    a.flat[0] = np.nan
    return a


def _inf_at0(a):
    a = np.array(a, dtype=np.float64)
    a.flat[0] = np.inf
    return a


def _zero_at0(a):
    a = np.array(a, dtype=np.float64)
    a.flat[0] = 0.0
    return a


_WEIGHT_FAULTS = {
    "readout-coef-nan": (("reg_param", "rep-1", "coef_"), _nan_at0),
    "readout-coef-inf": (("reg_param", "rep-1", "coef_"), _inf_at0),
    "readout-intercept-nan": (("reg_param", "rep-2", "intercept_"), _nan_at0),
    "scaler-mean-inf": (("scaler_param", "mean_"), _inf_at0),
    "scaler-mean-nan": (("scaler_param", "mean_"), _nan_at0),
    "scaler-scale-zero": (("scaler_param", "scale_"), _zero_at0),
    "scaler-scale-nan": (("scaler_param", "scale_"), _nan_at0),
    "pca-components-nan": (("pca_param", "rep-1", "components_"), _nan_at0),
    "pca-mean-inf": (("pca_param", "rep-1", "mean_"), _inf_at0),
}


def _weights_case(label: str, path: tuple, fn):
    def run(ctx):
        return _read_catalogue(ctx)

    return run, _catalogue(_set(path, fn))


def _whiten_zero(w):
    pca = w["pca_param"]["rep-1"]
    pca.whiten = True
    ev = np.array(pca.explained_variance_, dtype=np.float64)
    ev[0] = 0.0
    pca.explained_variance_ = ev


for _label, (_path, _fn) in _WEIGHT_FAULTS.items():
    _run, _prep = _weights_case(_label, _path, _fn)
    add(
        "weights",
        f"catalogue-{_label}",
        _run,
        match=r"finite|NaN|inf|zero|ModelLoad|weights",
        prepare=_prep,
    )
add(
    "weights",
    "catalogue-pca-whiten-zero-variance",
    lambda ctx: _read_catalogue(ctx),
    match=r"whiten|variance|zero",
    prepare=_catalogue(_whiten_zero),
)


_PREFIX = "encoding_models/modality-fmri/train_dataset-nsd_fsaverage/model-alexnet/"


def _bergdir(kind: str):
    """A berg_dir whose subject-1 weights are a link: to subject 2's file, or out of the model folder."""

    def prepare(ctx):
        model = ctx.cache / "bergdir" / _PREFIX
        (model / "encoding_models_weights").mkdir(parents=True)
        (model / "metadata").mkdir()
        for s in (1, 2):
            (model / "encoding_models_weights" / f"weights_subject-0{s}.npy").write_bytes(f"weights {s}".encode())
            (model / "metadata" / f"metadata_subject-0{s}.npy").write_bytes(f"meta {s}".encode())
        w1 = model / "encoding_models_weights" / "weights_subject-01.npy"
        w1.unlink()
        if kind == "other-subject":
            w1.symlink_to("weights_subject-02.npy")
        elif kind == "metadata-file":
            w1.symlink_to(model / "metadata" / "metadata_subject-01.npy")
        else:  # another model's folder
            other = ctx.cache / "bergdir" / _PREFIX.replace("model-alexnet", "model-vit_b_32")
            other.mkdir(parents=True)
            (other / "w.npy").write_bytes(b"weights of another model")
            w1.symlink_to(other / "w.npy")

    def run(ctx):
        from berg.store import Store

        store = Store(berg_dir=ctx.cache / "bergdir", cache_dir=ctx.cache / "c", offline=True)
        source = {"kind": "s3", "bucket": "brain-encoding-response-generator", "prefix": _PREFIX, "manifest": False}
        return store.fetch("m", source, "encoding_models_weights/weights_subject-01.npy")

    return prepare, run


for _kind in ("other-subject", "metadata-file", "other-model"):
    _prep, _run = _bergdir(_kind)
    add("weights", f"berg-dir-link-{_kind}", _run, match=r"refused|outside|Replace the link", prepare=_prep)


# ================================================================================= outputs


def _standin(surface: bool = False):
    """A loaded model as berg.io sees it (the contract's spaces and provenance); it never encodes."""
    from types import SimpleNamespace

    import berg
    from berg.core.contract import BaseModelInterface
    from berg.core.spaces import FlatSpace, SurfaceSpace, VolumeSpace

    class StandIn(BaseModelInterface):
        @classmethod
        def load(cls, request):  # never built through the registry
            raise NotImplementedError

        def encode(self, stimulus, *, show_progress=True):
            raise NotImplementedError

        def get_metadata(self):
            return {}

        def __init__(self):
            self.model_id, self.subjects = "hostile-io-model", [1]
            self.spec = SimpleNamespace(card={"output": {"units": "a.u."}})
            if surface:
                self._space = SurfaceSpace(
                    "fsaverage-toy", {"lh": np.arange(4), "rh": np.arange(3)}, {"lh": 6, "rh": 5}
                )
            else:
                grid = (5, 6, 4)
                flat = np.random.default_rng(0).choice(int(np.prod(grid)), size=12, replace=False)
                self._space = VolumeSpace(
                    grid, np.diag([3.0, 3.0, 3.0, 1.0]), np.stack(np.unravel_index(flat, grid), 1)
                )
            self.group_space = FlatSpace(7)

        def space(self, subject=None):
            return self._space

        def provenance(self):
            return {"model_id": self.model_id, "subjects": self.subjects, "berg_version": berg.__version__}

    return StandIn()


def _resp(n_stim: int, n_out: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n_stim, n_out)).astype(np.float32)


def _sidecar_collision(content: str):
    def run(ctx):
        import berg

        mine = ctx.cache / "resp.json"
        mine.write_text(content)
        try:
            berg.save_nifti(ctx.cache / "resp.nii.gz", _resp(2, 12), _standin())
        finally:
            check(mine.read_text() == content, "the user's JSON was overwritten")
            check(not (ctx.cache / "resp.nii.gz").exists(), "image written without its sidecar")

    return run


for _i, _content in enumerate(['{"TaskName": "mine"}', "[1, 2]", "notes", "", '{"berg_sidecar": 1'], 1):
    add("outputs", f"sidecar-collision-{_i}", _sidecar_collision(_content), match=r"sidecar|does not overwrite|rename")


def _stale_sidecar(ctx) -> None:
    import berg

    model = _standin()
    berg.save_nifti(ctx.cache / "r.nii.gz", _resp(3, 12), model, stimulus_ids=["a", "b", "c"])
    berg.save_nifti(ctx.cache / "r.nii.gz", _resp(2, 12), model, stimulus_ids=["x", "y"])
    side = json.loads((ctx.cache / "r.json").read_text())
    check("x" in json.dumps(side) and '"a"' not in json.dumps(side), "the sidecar of the earlier save was left")


add("outputs", "stale-sidecar-replaced", _stale_sidecar, "ok")

for _prefix in ("", ".", "..", "out/", ".gii", ".func.gii"):
    add(
        "outputs",
        f"gifti-prefix-{_prefix or 'empty'}",
        lambda ctx, p=_prefix: __import__("berg").save_gifti(p, _resp(2, 7), _standin(True)),
        match=r"no file name; give a path prefix",
    )

for _label, _ids in {
    "str-abc": "abc",
    "too-few": ["a"],
    "too-many": ["a", "b", "c"],
    "ints": [1, 2],
    "nested": [["a"], ["b"]],
    "none-item": ["a", None],
    "bytes": [b"a", b"b"],
}.items():
    add(
        "outputs",
        f"stimulus-ids-{_label}",
        lambda ctx, ids=_ids: __import__("berg").save(ctx.cache / "r.h5", _resp(2, 12), _standin(), stimulus_ids=ids),
        match=r"stimulus_ids",
    )

for _name in ("r.txt", "r.npy", "r.nii.gz", "r", "r.h5.tmp"):
    add(
        "outputs",
        f"save-suffix-{_name}",
        lambda ctx, n=_name: __import__("berg").save(ctx.cache / n, _resp(2, 12), _standin()),
        match=r"\.h5",
    )
add(
    "outputs",
    "save-name-over-os-limit",
    lambda ctx: __import__("berg").save(ctx.cache / ("x" * 300 + ".h5"), _resp(2, 12), _standin()),
    match=r"bytes long|allows \d+ bytes",
)
add(
    "outputs",
    "nifti-name-over-os-limit",
    lambda ctx: __import__("berg").save_nifti(ctx.cache / ("x" * 300 + ".nii.gz"), _resp(2, 12), _standin()),
    match=r"bytes long|allows \d+ bytes",
)


def _killed_save_temp(ctx) -> None:
    import berg

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = ctx.cache / f".r.h5.{dead.pid}.0123abcd.tmp.h5"
    stale.write_bytes(b"\0" * 100_000)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    berg.save(ctx.cache / "r.h5", _resp(2, 12), _standin())
    check(not stale.exists(), "a killed save's temporary was left by the next save")


add("outputs", "killed-save-temporary-swept", _killed_save_temp, "ok")


# ================================================================================= registry (YAML)

_BROKEN_YAML = {
    "unclosed-flow": "models: [unclosed\n  x: {",
    "mapping-in-value": "a: b: c",
    "binary": "\x00\xff\xfe",
    "tab-indent": "models:\n\tx: 1\n",
    "python-tag": "models: !!python/object/apply:os.system ['touch PWNED']\n",
    "python-name-tag": "models: !!python/name:os.system\n",
    "a-list": "- 1\n- 2\n",
    "models-list": "models: [a, b]\n",
    "entry-text": "models: {fmri-x: 'text'}\n",
    "entry-bad-id": "models: {'../x': {card: a.yaml}}\n",
    "anchor-bomb": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "models: {fmri-bomb: [*d, *d, *d, *d, *d, *d, *d, *d, *d]}\n",
    "huge-key": "models: {" + "a" * 200_000 + ": {}}\n",
    "deep-nesting": "models: " + "[" * 2000 + "]" * 2000 + "\n",
    "duplicate-keys": "models: {}\nmodels: {}\n",
}


def _registry_cli(text: str, command: tuple[str, ...]):
    def run(ctx):
        reg = ctx.cache / "registry.yaml"
        reg.write_bytes(text.encode("latin-1", "replace") if "\x00" in text else text.encode())
        argv = ["--registry", str(reg), *command]
        if command[0] == "encode":
            argv += ["--subject", "1"]
        cli(*argv)
        raise H.Accepted(f"berg {' '.join(command)} accepted a broken registry file")

    return run


for _label, _text in _BROKEN_YAML.items():
    for _cmd in (("list",), ("describe", "fmri-bmd-s3d"), ("encode", "fmri-x", "a.png", "-o", "o.h5")):
        add(
            "registry",
            f"{_cmd[0]}-{_label}",
            _registry_cli(_text, _cmd),
            match=r"registry|YAML|yaml|models",
        )


def _registry_api(text: str):
    def run(ctx):
        from berg.registry import Registry

        reg = ctx.cache / "registry.yaml"
        reg.write_bytes(text.encode("latin-1", "replace") if "\x00" in text else text.encode())
        Registry(reg)
        raise H.Accepted("Registry() accepted a broken registry file")

    return run


for _label, _text in _BROKEN_YAML.items():
    add(
        "registry",
        f"api-{_label}",
        _registry_api(_text),
        match=r"registry|YAML|yaml|models",
    )

add(
    "registry",
    "api-trusted-file-without-models",
    _registry_api("a: 1\n"),
    match=r"models",
)


# ================================================================================= CLI

for _label, _argv in {
    "abbrev-of": ["--of", "list"],
    "abbrev-off": ["--off", "list"],
    "abbrev-cache": ["--cache", "/tmp/x", "list"],
    "abbrev-reg": ["--reg", "x.yaml", "list"],
    "bogus": ["--bogus", "list"],
    "bogus-alone": ["--bogus"],
    "short-x": ["-x", "list"],
    "offline-with-value": ["--offline=1", "list"],
    "subcommand-option-first": ["--shard", "2", "list"],
    "single-dash-word": ["-offline", "list"],
    "verbose-value": ["--verbose=3", "list"],
}.items():
    add(
        "cli",
        f"global-{_label}",
        lambda ctx, a=_argv: cli(*a),
        match=r"unknown global option|unrecognized|ignored explicit|argument",
    )


def _list_pattern(pattern: str):
    def run(ctx):
        try:
            out = cli("list", pattern)
        except Exception as exc:
            if type(exc).__name__ == "CLIError":
                check(str(exc).startswith("berg: no model matches") and "available: " in str(exc), str(exc))
                return None
            raise
        check(out.startswith("ID "), f"odd listing: {out[:80]!r}")
        return None

    return run


for _i, _pattern in enumerate(["[", "[!", "**/[", "fmri-[a", "[]]", "\\", "*" * 5000, "a\udcff", "-", "{a,b}"]):
    add("cli", f"list-pattern-{_i}", _list_pattern(_pattern), "ok")


def _toy(ctx) -> None:
    from PIL import Image

    from berg.testing import toy_model

    toy = toy_model(ctx.cache / "toy", "volume", subjects=[1], size=32)
    (ctx.cache / "toy.json").write_text(
        json.dumps({"id": toy.model_id, "reg": str(toy.registry), "bd": str(toy.berg_dir)})
    )
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(ctx.cache / "im.png")


def _encode_argv(ctx, out: Path, *extra: str) -> list[str]:
    t = json.loads((ctx.cache / "toy.json").read_text())
    return [
        "--berg-dir", t["bd"], "--cache-dir", str(ctx.cache / "c"), "--registry", t["reg"], "--offline",
        "encode", t["id"], "--subject", "1", "--backbone-weights", "untrained", "--device", "cpu", "-q",
        str(ctx.cache / "im.png"), "-o", str(out), *extra,
    ]  # fmt: skip


def _encode_existing(name: str):
    def run(ctx):
        out = ctx.cache / name
        out.write_bytes(b"earlier results")
        try:
            cli(*_encode_argv(ctx, out))
        finally:
            check(out.read_bytes() == b"earlier results", "an existing output was overwritten without --force")
        raise H.Accepted("encode over an existing output without --force succeeded")

    return run


add("cli", "encode-over-existing-h5", _encode_existing("r.h5"), match=r"exists; pass --force", prepare=_toy)
add("cli", "encode-over-existing-nifti", _encode_existing("r.nii.gz"), match=r"exists; pass --force", prepare=_toy)


def _encode_sigint(ctx) -> None:
    """Ctrl-C while `berg encode` runs: exit 130, one line, and no output file or temporary left."""
    out_dir = ctx.cache / "out"
    out_dir.mkdir()
    (ctx.cache / "many").mkdir()
    for k in range(150):
        os.link(ctx.cache / "im.png", ctx.cache / "many" / f"im{k:03d}.png")
    argv = _encode_argv(ctx, out_dir / "r.h5")
    argv[argv.index(str(ctx.cache / "im.png"))] = str(ctx.cache / "many")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "berg.cli", *argv], env=env, cwd=out_dir, stderr=subprocess.PIPE, text=True
    )
    time.sleep(3.0)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    check("Traceback" not in err, f"traceback: {err[-300:]}")
    left = sorted(p.name for p in out_dir.iterdir())
    if proc.returncode == 130:
        check(err.strip().endswith("berg: interrupted") and left == [], f"left {left}: {err[-200:]}")
    elif proc.returncode == -signal.SIGINT:
        # on a loaded machine the signal can land while the interpreter itself starts, before berg runs:
        # Python's default action kills it; berg never wrote anything, which is what this case is about
        check(left == [] and not err.strip(), f"killed by SIGINT before berg started, yet left {left}: {err[-200:]}")
    else:
        check(proc.returncode == 0 and left == ["r.h5"], f"exit {proc.returncode}, left {left}")


add("cli", "encode-sigint-no-partial-output", _encode_sigint, "ok", prepare=_toy)


# ================================================================================= API


def _api(expr):
    def run(ctx):
        import berg

        return expr(berg, ctx)

    return run


for _label, _value in {
    "int": 5,
    "float": 5.0,
    "bytes": b"fmri-*",
    "list": ["fmri-*"],
    "dict": {},
    "bool": True,
}.items():
    add(
        "api",
        f"list-models-{_label}",
        _api(lambda b, ctx, v=_value: b.list_models(v)),
        match=r"pattern must be a glob string",
    )

_CLIP = np.zeros((1, 4, 3, 8, 8), np.uint8)
for _label, _value in {
    "text-16": "16",
    "float": 16.5,
    "float-int": 16.0,
    "bool": True,
    "negative": -1,
    "none": None,
    "list": [16],
}.items():
    add(
        "api",
        f"min-frames-{_label}",
        lambda ctx, v=_value: _decoded(_CLIP, "video", min_frames=v),
        match=r"min_frames must be an integer",
    )
for _label, _value in {"text": "8", "zero": 0, "float": 2.5, "bool": False}.items():
    add(
        "api",
        f"n-frames-{_label}",
        lambda ctx, v=_value: _decoded(_CLIP, "video", n_frames=v),
        match=r"n_frames must be an integer",
    )


def _toy_spec(ctx):
    from berg.registry import Registry

    t = json.loads((ctx.cache / "toy.json").read_text())
    return Registry([t["reg"]]).get(t["id"])


def _toy2(ctx) -> None:
    from berg.testing import toy_model

    toy = toy_model(ctx.cache / "toy", "volume", subjects=[1, 2], size=32)
    (ctx.cache / "toy.json").write_text(json.dumps({"id": toy.model_id, "reg": str(toy.registry)}))


for _label, _value in {
    "mixed-list": [1, "2"],
    "mixed-tuple": ("1", 2),
    "float": 1.0,
    "float-list": [1.0, 2.0],
    "bool": True,
    "none-in-list": [1, None],
    "unknown": 7,
    "empty-list": [],
    "twice": [1, 1],
    "none": None,
    "dict": {1: 1},
}.items():
    add(
        "api",
        f"subject-{_label}",
        lambda ctx, v=_value: _toy_spec(ctx).validate_subjects(v),
        match=r"subject",
        prepare=_toy2,
    )
for _label, _sel in {
    "roi-none": {"roi": None},
    "voxels-none": {"voxels": None},
    "roi-empty": {"roi": []},
    "roi-none-item": {"roi": [None]},
    "roi-int": {"roi": 3},
    "roi-unknown": {"roi": "V9"},
    "key-none": {None: "A"},
    "list": ["A"],
    "str": "A",
}.items():
    add(
        "api",
        f"selection-{_label}",
        lambda ctx, s=_sel: _toy_spec(ctx).validate_selection(s, [1]),
        match=r"selection|ROI",
        prepare=_toy2,
    )


def _subject_ok(ctx) -> None:
    spec = _toy_spec(ctx)
    check(spec.validate_subjects([2, 1]) == [2, 1], "int list")
    check(spec.validate_subjects(["1", "2"]) == [1, 2], "str list")
    check(spec.validate_subjects("all") == [1, 2], "all")


add("api", "subject-valid-forms", _subject_ok, "ok", prepare=_toy2)

for _value in ("maybe", "", "2", 2, "ture"):
    add(
        "api",
        f"berg-offline-{_value!r}",
        lambda ctx, v=_value: __import__("berg").BERG(cache_dir=ctx.cache / "c", offline=v),
        match=r"offline=.* is not a boolean",
    )


def _offline_false_words(ctx) -> None:
    import berg

    os.environ.pop("BERG_OFFLINE", None)  # the sandbox sets it; here the argument alone decides

    for word in ("false", "no", "off", "0"):
        check(berg.BERG(cache_dir=ctx.cache / "c", offline=word).offline is False, f"offline={word!r} read as True")
    check(berg.BERG(cache_dir=ctx.cache / "c", offline="yes").offline is True, "offline='yes'")


add("api", "berg-offline-words", _offline_false_words, "ok")
