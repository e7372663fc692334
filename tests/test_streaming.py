"""Weights streamed from the page cache: same numbers as in memory, resident memory of one block.

Large projections and readouts (``BERG_STREAM_MB``) are read per batch in blocks (``os.pread`` into one
reused buffer) instead of being held in memory. Memory is measured in fresh subprocesses as the peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident set before the
measured step; each memory test has an in-memory control, so it can fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from berg.core import kernels

REPO = Path(__file__).resolve().parents[1]
MB = 1 << 20

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="peak-RSS measurement needs Linux /proc/self/clear_refs"
)

_RSS = """
import gc, json, os, sys
def _status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
def reset_peak():
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := VmRSS
    return _status("VmRSS")
def peak_above(rss0):
    return (_status("VmHWM") - rss0) / (1 << 20)
"""


def _child(code: str, *args: str, env: dict | None = None) -> dict:
    import os

    res = subprocess.run(
        [sys.executable, "-c", _RSS + code, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        # a fixed mmap threshold: freed arrays go back to the OS, so a later step cannot reuse them unseen
        env={**os.environ, "BERG_QUIET": "1", "MALLOC_MMAP_THRESHOLD_": "131072", **(env or {})},
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ one model, both paths
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from berg.testing import toy_model

    root = tmp_path_factory.mktemp("stream-toy")
    # ResNet-18 layer3 at 32 px: 1,024 features -> 300 components (1.2 MB) -> 1,000 outputs (1.2 MB)
    tm = toy_model(
        root,
        "flat",
        model_id="test-stream-toy",
        nodes=["layer3"],
        n_features=1024,
        n_components=300,
        n_outputs=1000,
        subjects=(1, 2),
    )
    return tm.client(root / "cache")


def _load(client, monkeypatch, stream_mb: int):
    monkeypatch.setenv("BERG_STREAM_MB", str(stream_mb))
    return client.get_encoding_model(
        "test-stream-toy", subject=[1, 2], device="cpu", backbone_weights="untrained", batch_size=3
    )


@pytest.mark.filterwarnings("ignore::berg.errors.UntrainedBackboneWarning")
def test_streamed_model_equals_the_in_memory_model(toy, monkeypatch):
    monkeypatch.setattr(kernels, "BLOCK_BYTES", 64 << 10)  # 64 KiB blocks: many blocks per map
    held = _load(toy, monkeypatch, 0)
    streamed = _load(toy, monkeypatch, 1)  # 1 MiB: the 1.2 MB projection and readouts stream
    assert not held.streamed and streamed.streamed
    proj = streamed._proj_ops["shared"]
    assert proj.streamed and proj.stored.path.endswith("projection.safetensors")  # read where it lies
    for s in (1, 2):
        (head,) = streamed.heads[s]
        assert isinstance(head.readout.weight, np.memmap) and head.readout.stored is not None  # written to disk
        np.testing.assert_array_equal(np.asarray(head.readout.weight), held.heads[s][0].readout.weight)
    images = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)  # 3 batches
    a, b = held.encode(images, show_progress=False), streamed.encode(images, show_progress=False)
    for s in (1, 2):
        assert a[s].shape == (7, 1000)
        np.testing.assert_allclose(b[s], a[s], rtol=1e-5, atol=1e-5 * float(np.abs(a[s]).max()))
    # reruns are bit-identical
    again = streamed.encode(images, show_progress=False)
    assert all(np.array_equal(again[s], b[s]) for s in (1, 2))
    # gradients (the whole matrix, not the streamed path) agree too
    x = held.extractor.transform(list(images[:2]))
    ga, gb = (held.forward(x.clone())[1].sum(), streamed.forward(x.clone())[1].sum())
    assert float(ga) == pytest.approx(float(gb), rel=1e-5)


# ------------------------------------------------------------------------------------------ resident memory
_ONE_MAP = """
import numpy as np, torch
from berg.core import kernels
from berg.store.artifacts import read_tensors
kernels.BLOCK_BYTES = 16 << 20
out = {}
for mode in ("stream", "memory"):  # streaming first: it never touches the mapping
    t = read_tensors(sys.argv[1])
    w, b = t["weight_t"].T, t["bias"]  # folds are stored in stream layout (W.T)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, w.shape[1]), dtype=np.float32))
    stored = kernels.file_matrix(w) if mode == "stream" else None
    # "kn": the file's own layout (W.T), so the in-memory control uses the mapping as it lies (no copy)
    op = kernels.AffineOp(w, b, kernels.Choice("numpy", "kn"), stored=stored)
    rss0 = reset_peak()
    buf = np.empty(kernels.BLOCK_BYTES // 4, np.float32)
    with torch.inference_mode():
        y = op(x, lambda: buf).numpy()
    out[mode] = {"peak_mb": peak_above(rss0), "y": y.tolist(), "streamed": op.streamed}
    del t, w, b, x, op, buf, y
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def big_projection(tmp_path_factory):
    from berg.core.readouts import write_folded_projection

    path = tmp_path_factory.mktemp("big") / "projection.safetensors"
    k, n = 50, 1_000_000  # 200 MB of float32
    rng = np.random.default_rng(1)
    write_folded_projection(path, None, None, (rng.standard_normal(n, dtype=np.float32) for _ in range(k)), (k, n))
    assert path.stat().st_size > 200e6
    return path


def test_a_streamed_200mb_projection_holds_one_16mb_block(big_projection):
    out = _child(_ONE_MAP, str(big_projection))
    streamed, held = out["stream"], out["memory"]
    assert streamed["streamed"] and not held["streamed"]
    np.testing.assert_allclose(streamed["y"], held["y"], rtol=1e-4, atol=1e-3)
    assert streamed["peak_mb"] < 40, streamed["peak_mb"]  # the 16 MiB buffer + the 16 MB input + slack
    assert held["peak_mb"] > 150, held["peak_mb"]  # the control: a mapped matrix becomes resident


# ------------------------------------------------------------------------------------------ many subjects
_SUBJECTS = """
import numpy as np, berg
bucket, registry, cache = sys.argv[1:4]
client = berg.BERG(berg_dir=bucket, cache_dir=cache, registry=registry)
load = lambda subjects: client.get_encoding_model(
    "test-nsd-many", subject=subjects, device="cpu", backbone_weights="untrained", batch_size=4
)
os.environ["BERG_STREAM_MB"] = "1"
warm = load(list(range(1, 9)))  # fold every subject's projection once (a derived file)
del warm
images = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
out = {}
for mode in ("stream", "memory"):
    os.environ["BERG_STREAM_MB"] = "1" if mode == "stream" else "0"
    res = out[mode] = {}
    for name, subjects in (("one", [1]), ("eight", list(range(1, 9)))):
        rss0 = reset_peak()
        m = load(subjects)
        y = m.encode(images, show_progress=False)
        res[name] = peak_above(rss0)
        res[name + "_streamed"] = m.streamed
        res[name + "_sum"] = float(sum(np.abs(v).sum() for v in y.values()))
        del m, y
print(json.dumps(out))
"""


def test_eight_subjects_in_one_pass_cost_about_one_subjects_memory(tmp_path):
    from berg.testing import replica_entry
    from berg.testing import write_catalogue_replica as write_replica

    n_vert, k = 5000, 500  # per subject: readout 10,000 x 500 (20 MB), projection 576 x 500 (1.2 MB)
    rep = write_replica(
        tmp_path / "bucket",
        "nsd_fsaverage",
        "alexnet",
        subjects=tuple(range(1, 9)),
        n_features=576,
        n_components=k,
        n_vertices=n_vert,
        fit=False,
        keep_arrays=False,
    )
    registry = replica_entry(
        tmp_path,
        "test-nsd-many",
        "fmri-nsd_fsaverage-alexnet",
        source={"kind": "s3", "bucket": "absent-bucket", "prefix": rep.prefix, "manifest": False},
        subjects=list(range(1, 9)),
        selection={
            "lengths": {"lh_vertices": n_vert, "rh_vertices": n_vert},
            "n_outputs": {s: 2 * n_vert for s in range(1, 9)},
        },
        recipe={
            "backbone": {"builder": "torchvision.models.mobilenet_v3_small", "weights": None},
            "nodes": ["avgpool"],
            "transform": {"size": [72, 72], "crop": [64, 64]},
            "berg_catalogue": {"inference": {"resize_size": 72, "crop_size": 64}},
        },
    )
    out = _child(_SUBJECTS, str(tmp_path / "bucket"), str(registry), str(tmp_path / "cache"))
    streamed, held = out["stream"], out["memory"]
    per_subject_mb = (2 * n_vert * k + 576 * k) * 4 / MB
    assert streamed["one_streamed"] and streamed["eight_streamed"] and not held["eight_streamed"]
    assert streamed["eight_sum"] == pytest.approx(held["eight_sum"], rel=1e-5)
    # streamed: 7 more subjects cost well under a quarter of their weights, and <= 1.5x one subject
    assert streamed["eight"] - streamed["one"] < 0.25 * 7 * per_subject_mb, streamed
    assert streamed["eight"] <= 1.5 * streamed["one"], streamed
    # the control: held in memory, the 7 extra subjects' weights are resident
    assert held["eight"] - held["one"] > 0.8 * 7 * per_subject_mb, held


def test_stream_threshold_env(monkeypatch):
    monkeypatch.setenv("BERG_STREAM_MB", "0")
    assert kernels.stream_threshold_bytes() is None
    monkeypatch.setenv("BERG_STREAM_MB", "3")
    assert kernels.stream_threshold_bytes() == 3 * MB
    monkeypatch.delenv("BERG_STREAM_MB")
    assert kernels.stream_threshold_bytes() == kernels.DEFAULT_STREAM_MB * MB


def test_spill_writes_in_chunks_and_maps_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "BLOCK_BYTES", 256)  # 64 floats per chunk: many writes
    w = np.arange(30 * 17, dtype=np.float32).reshape(30, 17)
    for layout in ("nk", "kn"):
        mm, fm = kernels.spill(w.T.copy().T, layout, tmp_path / "spill")
        assert isinstance(mm, np.memmap) and fm.layout == layout
        np.testing.assert_array_equal(np.asarray(mm), w)
        assert fm.n_out == 30 and fm.n_in == 17
    assert list((tmp_path / "spill").iterdir()) == []  # unnamed: nothing is left behind
    x = torch.arange(2 * 17, dtype=torch.float32).reshape(2, 17)
    y = kernels.streamed_affine(x.numpy(), fm, np.zeros(30, np.float32), "torch", np.empty(64, np.float32))
    np.testing.assert_allclose(y, x.numpy() @ w.T, rtol=1e-6)
