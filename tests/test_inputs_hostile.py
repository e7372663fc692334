"""Hostile and odd inputs (issue 10, "Inputs and outputs"): every one ends in a BERGError, with bounded memory.

Stimulus files are crafted here (PNG/GIF/BMP headers claiming huge sizes, truncated and corrupt images,
EPS, empty and random "videos", symlink loops, NUL bytes...), as are arrays, PIL images and output
paths. :func:`stimulus_cases` is the list of classes; :func:`run_cases` runs them and returns the
tally that ``benchmarks/`` scripts print. Each case runs in a forked child whose peak resident memory
is measured (``wait4``), so a decompression bomb that allocated its claimed size would show.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from berg.errors import BERGError, FileAccessError, InvalidParameterError, StimulusError, os_error
from berg.stimuli import load_stimuli
from berg.testing.hostile import (
    MB,
    gif_claiming,
    image_bytes,
    output_path_cases,
    png_claiming,
    stimulus_cases,
    write_video,
)
from berg.testing.hostile import decoded as _decoded
from berg.testing.hostile import write_bytes as write

# ------------------------------------------------------------------------------------------ running the cases


def _outcome(call: Callable[[], object]) -> str:
    try:
        call()
    except BERGError:
        return "berg"
    except Exception as exc:  # noqa: BLE001 - the point is to catch what should not escape
        return f"other {type(exc).__name__}: {exc}"
    return "accepted"


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0  # pragma: no cover


def _in_child(call: Callable[[], object]) -> tuple[str, int]:
    """Run ``call`` in a forked child; its outcome and the peak resident memory it added.

    The child resets its peak (``/proc/self/clear_refs``), then reports ``VmHWM - VmRSS`` at the start:
    what the case allocated, C buffers (Pillow, FFmpeg) included, which tracemalloc cannot see.
    """
    read, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        text, added = "other crash", 0
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # VmHWM := current RSS
            base = _status_kb("VmRSS")
            tracemalloc.start()  # numpy's buffers, in case the kernel's RSS counters miss them (COW pages)
            text = _outcome(call)
            traced = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            # The kernel updates VmHWM lazily (when memory is unmapped); a buffer still referenced by the
            # exception's traceback is in VmRSS but not yet in VmHWM, so take the larger of the two.
            added = max(traced, max(0, max(_status_kb("VmHWM"), _status_kb("VmRSS")) - base) * 1024)
        finally:
            os.write(write_fd, f"{added}|{text}".encode()[:4000])
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read, 4096):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    added, _, text = b"".join(chunks).decode().partition("|")
    return (text or f"other child died (status {status})"), int(added or 0)


def run_cases(cases: list[tuple[str, Callable[[], object]]]) -> dict:
    """Run each case (in a forked child where possible); tally outcomes and the peak memory of any one."""
    tally = {"tried": 0, "berg_error": 0, "other": [], "accepted": [], "peak_bytes": 0, "worst": ""}
    for name, call in cases:
        tally["tried"] += 1
        if hasattr(os, "fork") and os.path.exists("/proc/self/status"):
            text, peak = _in_child(call)
        else:  # pragma: no cover - tracemalloc sees numpy's buffers, not Pillow's
            tracemalloc.start()
            text = _outcome(call)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        if text == "berg":
            tally["berg_error"] += 1
        elif text == "accepted":
            tally["accepted"].append(name)
        else:
            tally["other"].append(f"{name}: {text[6:]}")
        if peak > tally["peak_bytes"]:
            tally["peak_bytes"], tally["worst"] = peak, name
    return tally


def summary_line(tally: dict) -> str:
    return (
        f"bad inputs tried {tally['tried']}, BERGError {tally['berg_error']}, other exceptions "
        f"{len(tally['other'])}, accepted {len(tally['accepted'])}, peak memory of any single bad input "
        f"{tally['peak_bytes'] / MB:.1f} MB ({tally['worst']})"
    )


# ------------------------------------------------------------------------------------------ tests


def test_every_hostile_stimulus_is_a_berg_error_with_bounded_memory(tmp_path):
    cases = stimulus_cases(tmp_path / "stim") + output_path_cases(tmp_path / "out")
    tally = run_cases(cases)
    print(summary_line(tally))
    assert tally["other"] == [] and tally["accepted"] == [], tally
    assert tally["berg_error"] == tally["tried"] == len(cases) >= 50
    assert tally["peak_bytes"] < 100 * MB, summary_line(tally)
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert written == {"out_dir"}, "nothing may be written for a refused output path"


def test_the_memory_measurement_sees_c_and_numpy_allocations():
    def allocate_then_fail():
        block = np.ones(200 * MB // 8)  # 200 MB, touched
        raise StimulusError(f"held {block.nbytes} bytes")

    tally = run_cases([("allocates 200 MB", allocate_then_fail), ("allocates nothing", lambda: _decoded([]))])
    assert tally["berg_error"] == 2 and tally["worst"] == "allocates 200 MB"
    assert 150 * MB < tally["peak_bytes"] < 400 * MB


@pytest.mark.parametrize(
    "name, data, fragment",
    [
        ("bomb.png", png_claiming(20000, 20000), "too large to decode safely"),
        ("bomb.gif", gif_claiming(65535, 65535), "too large to decode safely"),
        ("trunc.jpg", image_bytes("JPEG")[:300], "truncated or corrupt"),
        ("text.png", b"not an image", "cannot read image"),
    ],
)
def test_messages_name_the_file_and_the_remedy(tmp_path, name, data, fragment):
    path = write(tmp_path / name, data)
    with pytest.raises(StimulusError) as info:
        _decoded([path])
    assert fragment in str(info.value) and str(path) in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__, "no chained Pillow traceback"


def test_bomb_is_refused_before_any_backbone_runs(tmp_path):
    """The pixel limit applies when the stimuli are loaded (headers), not when a batch is decoded."""
    ok = write(tmp_path / "ok.png", image_bytes("PNG"))
    bomb = write(tmp_path / "z_bomb.png", png_claiming(20000, 20000))
    with pytest.raises(StimulusError, match="z_bomb.png"):
        load_stimuli([ok, bomb], "image")


def test_pixel_limit_keyword_env_and_above_pillows_own(tmp_path, monkeypatch):
    from PIL import Image

    ok = write(tmp_path / "ok.png", image_bytes("PNG", size=(64, 64)))  # 4096 pixels
    monkeypatch.setenv("BERG_MAX_PIXELS", "4000")
    with pytest.raises(StimulusError, match="above the limit of 4,000"):
        _decoded(ok)
    assert _decoded(ok, max_pixels=5000)[0].shape == (64, 64, 3), "the keyword overrides the variable"
    monkeypatch.setenv("BERG_MAX_PIXELS", "4096")
    assert _decoded(ok)[0].shape == (64, 64, 3)
    monkeypatch.setenv("BERG_MAX_PIXELS", "lots")
    with pytest.raises(InvalidParameterError, match="BERG_MAX_PIXELS"):
        _decoded(ok)
    monkeypatch.delenv("BERG_MAX_PIXELS")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own limit below berg's
    assert _decoded(ok, max_pixels=5000)[0].shape == (64, 64, 3)
    assert Image.MAX_IMAGE_PIXELS == 5000


def test_eps_is_never_handed_to_ghostscript(tmp_path, monkeypatch):
    import subprocess

    calls = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(OSError()))
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: calls.append(a))
    eps = write(tmp_path / "x.eps.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\nshowpage\n")
    with pytest.raises(StimulusError, match="not an image file berg opens"):
        _decoded(eps)
    assert calls == []


def test_corrupt_video_names_the_file(tmp_path):
    clip = write_video(tmp_path / "c.mp4")
    bad = write(tmp_path / "bad.mp4", clip.read_bytes()[:200])
    with pytest.raises(StimulusError, match=r"bad\.mp4"):
        _decoded(bad, "video")
    assert _decoded(clip, "video")[0].shape == (6, 48, 64, 3)


# ------------------------------------------------------------------------------------------ outputs, OS errors


@pytest.mark.parametrize(
    "errno_name, hint",
    [
        ("ENOSPC", "free some space"),
        ("EACCES", "permissions"),
        ("EROFS", "read-only"),
    ],
)
def test_os_errors_become_berg_errors_with_errno_text(errno_name, hint):
    import errno

    code = getattr(errno, errno_name)
    original = OSError(code, os.strerror(code), "/data/out.h5")
    err = os_error(original, "write the responses")
    assert isinstance(err, FileAccessError) and isinstance(err, BERGError) and isinstance(err, OSError)
    assert err.errno == code and err.filename == "/data/out.h5"
    text = str(err)
    assert text.startswith("cannot write the responses (/data/out.h5): ")
    assert f"[Errno {code}] {os.strerror(code)}" in text and hint in text


def test_registry_and_selection_validation_are_berg_errors():
    """selection={"roi": 3} and registry id "." (issue 10): validated in berg.registry before any I/O."""
    import berg

    client = berg.BERG(offline=True)
    with pytest.raises(InvalidParameterError, match="ROI name"):
        client.load_request("fmri-bold5000-resnet18", subject=1, selection={"roi": 3})
    for bad_id in (".", "..", "", "a/../b"):
        with pytest.raises(BERGError):
            client.registry.get(bad_id)
    with pytest.raises(InvalidParameterError, match="NUL"):
        _ = berg.BERG(cache_dir="/tmp/a\x00b").store


@pytest.mark.parametrize("model_id", [".", "..", "a/b", "with space"])
def test_registry_file_refuses_ids_that_are_not_plain_names(tmp_path, model_id):
    """A registry entry named "." would make the model's cache folder the cache root itself."""
    from berg.registry import Registry

    reg = tmp_path / "registry.yaml"
    reg.write_text(
        "format_version: 1\nmodels:\n"
        f"  {model_id!r}:\n    card: fmri-bmd-s3d.yaml\n    modality: fmri\n    dataset: bmd\n"
        "    source: {kind: s3, bucket: b, prefix: p/}\n    layout: native\n    recipe: {}\n"
    )
    with pytest.raises(InvalidParameterError, match="model id"):
        Registry(reg)


# ------------------------------------------------------------------------------------------ the harness (issue 24)


def _harness():
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    if "hostile_inputs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("hostile_inputs", bench / "hostile_inputs.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["hostile_inputs"] = module
        spec.loader.exec_module(module)
    H = sys.modules["hostile_inputs"]
    H.load_plugins()
    return H


def test_harness_has_every_class_of_issue_24_and_800_cases():
    H = _harness()
    cases = H._selected(None)
    groups = {c.group for c in cases}
    assert len(cases) >= 800
    assert {
        "cache",
        "locks",
        "runstore",
        "budget",
        "decoding",
        "weights",
        "outputs",
        "registry",
        "cli",
        "api",
    } <= groups
    assert {"legacy-bytes", "legacy-npy", "stimuli", "catalogue"} <= groups
    ids = {c.id for c in cases}
    for needed in (
        "cache/clear-parent",
        "cache/verify-sibling-victim",
        "cache/clear-abs-victim",
        "locks/holder-stopped-sigstop",
        "runstore/export-deleted-chunk",
        "runstore/status-forged-marker-copied",
        "runstore/plan-fsync-'false'",
        "runstore/run-None",
        "budget/png-13000sq-grey",
        "budget/decode-video-fps-1000000000.0",
        "decoding/png-16-bit-grey-file",
        "decoding/exif-orientation-6",
        "decoding/load-stimuli-path-empty",
        "outputs/stimulus-ids-str-abc",
        "outputs/gifti-prefix-empty",
        "cli/global-abbrev-of",
        "cli/encode-over-existing-h5",
        "cli/encode-sigint-no-partial-output",
        "api/list-models-int",
        "api/min-frames-text-16",
        "api/subject-mixed-list",
        "api/selection-roi-none",
        "legacy-bytes/shared-list-60-levels",
    ):
        assert needed in ids, needed
    # every refusal states what the message must say; expected failures carry the issue's words
    assert all(
        c.match
        for c in cases
        if c.expect == "error"
        and c.group not in {"legacy-bytes", "legacy-npy", "stimuli", "outputs", "catalogue"}
        or c.match
    )
    assert all("issue 24" in c.xfail for c in cases if c.xfail)


def _judged(H, tmp_path, run, expect="error", match=None, xfail=None, timeout=20.0):
    case = H.Case("selftest", "case", run, expect, None, match, xfail)
    return H.run_case(case, tmp_path, timeout)


def test_harness_fails_when_a_refused_case_is_silently_accepted(tmp_path, monkeypatch):
    """The real case api/subject-mixed-list passes; with berg's check disabled, the harness says so."""
    H = _harness()
    real = next(c for c in H._selected(["api/subject-mixed-list"]))
    ok = H.run_case(real, tmp_path, 60)
    assert ok["verdict"] == "pass" and ok["outcome"] == "berg", ok
    assert H.summarise([ok])[1] is True

    from berg.registry import ModelSpec

    monkeypatch.setattr(ModelSpec, "validate_subjects", lambda self, subject: list(self.subjects))
    broken = H.run_case(real, tmp_path, 60)
    assert broken["outcome"] == "ok" and broken["verdict"] == "wrong silent result"
    line, passed = H.summarise([ok, broken])
    assert passed is False and "wrong silent results 1" in line and "api/subject-mixed-list" in line


def test_harness_verdicts_for_every_criterion(tmp_path, monkeypatch):
    H = _harness()

    def unclear(ctx):
        raise InvalidParameterError("bad")

    def traceback_(ctx):
        raise KeyError("x")

    def writes_outside(ctx):
        (ctx.outside / "decoy.txt").write_text("changed")
        raise InvalidParameterError("refused, but wrote first")

    def deletes_outside(ctx):
        (ctx.outside / "notes" / "a.bin").unlink()
        raise InvalidParameterError("refused")

    def executes(ctx):
        ctx.marker.write_text("pwned")
        raise InvalidParameterError("refused")

    def hangs(ctx):
        import time

        time.sleep(30)

    def wrong_result(ctx):
        raise H.Accepted("returned 99.6 % saturated pixels")

    def allocates(ctx):
        block = np.ones(80 * MB // 8)
        raise InvalidParameterError(f"held {block.nbytes}")

    assert _judged(H, tmp_path, lambda ctx: None)["verdict"] == "wrong silent result"
    assert _judged(H, tmp_path, unclear, match="pass --force")["verdict"] == "unclear error"
    assert _judged(H, tmp_path, unclear, match="bad")["verdict"] == "pass"
    assert _judged(H, tmp_path, traceback_)["verdict"] == "traceback"
    assert _judged(H, tmp_path, writes_outside)["verdict"] == "wrote outside the cache/output location"
    assert _judged(H, tmp_path, deletes_outside)["verdict"] == "wrote outside the cache/output location"
    assert _judged(H, tmp_path, executes)["verdict"] == "code executed"
    assert _judged(H, tmp_path, hangs, timeout=1.0)["verdict"] == "hang"
    assert _judged(H, tmp_path, wrong_result, expect="ok")["verdict"] == "wrong silent result"
    assert _judged(H, tmp_path, unclear, expect="ok")["verdict"] == "refused a valid input"
    monkeypatch.setattr(H, "PEAK_LIMIT", 50 * MB)
    assert (
        _judged(H, tmp_path, allocates)["verdict"] == "allocated 80 MB"
        or "allocated" in _judged(H, tmp_path, allocates)["verdict"]
    )
    # an expected failure is reported apart, never as passing; one that passes must lose its mark
    xf = _judged(H, tmp_path, lambda ctx: None, xfail="issue 24: still open")
    line, ok = H.summarise([xf])
    assert xf["verdict"] == "wrong silent result" and ok and "expected failures 1" in line
    xpass = _judged(H, tmp_path, unclear, xfail="issue 24: fixed meanwhile")
    line, ok = H.summarise([xpass])
    assert not ok and "now pass" in line


def test_harness_smoke_in_make_test(tmp_path):
    """The harness end to end at smoke size: one case of each group and each group's first expected failure,
    in worker processes, judged on every criterion (the full run is by hand: see benchmarks/RESULTS.md)."""
    H = _harness()
    cases = H.smoke_subset(H._selected(None), per_group=1, xfail_per_group=1)
    assert len({c.group for c in cases}) >= 14
    records = H.run_all(cases, timeout=60.0, verbose=False)
    line, ok = H.summarise(records)
    print(line)
    assert ok, (
        line
        + "\n"
        + "\n".join(
            f"{r['id']}: {r['verdict']}: {r['detail']}"
            for r in records
            if r["verdict"] != "pass" and not r.get("xfail")
        )
    )
    assert {r["id"] for r in records} == {c.id for c in cases}
