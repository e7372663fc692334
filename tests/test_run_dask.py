"""berg run on a Dask LocalCluster, artifacts served by S3 (SeaweedFS): a worker SIGKILLed mid-shard is replaced,
its shard is redone elsewhere, no finished shard is recomputed, and the store equals a one-pass run bit for bit."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest

import berg
from berg.runner.zarr_store import RunStore
from berg.testing.sklearn_toy import MODEL_ID, PREFIX, build

pytest.importorskip("dask.distributed", reason="the scale extra (pip install 'berg[scale]') is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

BUCKET = "berg-test-synthetic"
N_IMAGES = 40
SHARD = 4


@pytest.fixture(scope="module")
def synth(tmp_path_factory, s3_server):
    model = build(tmp_path_factory.mktemp("synthetic-dask"))
    s3_server.upload_tree(model.berg_dir / PREFIX, BUCKET, PREFIX)
    return model


@pytest.fixture
def images(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
    return folder


def _plan(store, images, synth, cache, executor):
    return berg.EncodePlan(
        models=[{"id": MODEL_ID, "subjects": [1, 2], "backbone_weights": "untrained", "batch_size": 4}],
        stimuli=str(images),
        store=store,
        shard_size=SHARD,
        device="cpu",
        executor=executor,
        berg={"cache_dir": str(cache), "registry": str(synth.registry)},
    )


def test_worker_killed_mid_shard(tmp_path, images, synth, s3_server, monkeypatch):
    import torch

    monkeypatch.setenv("BERG_S3_ENDPOINT", s3_server.endpoint_url)  # inherited by the worker processes
    # Reference: the local executor in one pass, with one torch thread like each Dask worker (bit-exact).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref_store = tmp_path / "ref"
            berg.run(_plan(ref_store, images, synth, tmp_path / "cache", "local"), show_progress=False)
    finally:
        torch.set_num_threads(threads)
    ref = berg.runner.open_responses(ref_store)

    store = tmp_path / "run"
    plan = _plan(
        store,
        images,
        synth,
        tmp_path / "cache-dask",
        {"kind": "dask", "n_workers": 2, "threads_per_worker": 1, "resources": {"GPU": 1}},
    )
    outcome: dict = {}

    def drive():
        try:
            outcome["report"] = berg.run(plan, show_progress=False)
        except BaseException as exc:  # noqa: BLE001 - surfaced in the main thread
            outcome["error"] = exc

    driver = threading.Thread(target=drive)
    driver.start()
    killed = None
    rs = RunStore(store)
    deadline = time.monotonic() + 300
    while driver.is_alive() and killed is None and time.monotonic() < deadline:
        events = rs.read_events()
        done_units = {e["shard"] for e in events if e["event"] == "unit_done"}
        for e in events:
            if (
                e["event"] == "shard_start"
                and e["pid"] != os.getpid()
                and e["shard"] not in done_units
                and len(done_units) >= 2
            ):
                os.kill(e["pid"], signal.SIGKILL)  # a worker dies in the middle of a shard
                killed = e
                break
        time.sleep(0.005)
    finished_at_kill = {
        (k, int(p.stem))
        for k in (f"{MODEL_ID}/sub-01", f"{MODEL_ID}/sub-02")
        for p in (store / "markers" / k).glob("*.json")
    }
    n_events = len(rs.read_events())
    driver.join(timeout=300)
    assert not driver.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert killed is not None, "the run ended before a worker could be killed"
    assert len({s for _, s in finished_at_kill}) < N_IMAGES // SHARD
    report = outcome["report"]
    assert report.dashboard and report.dashboard.startswith("http")

    got = berg.runner.open_responses(store)
    for s in ("sub-01", "sub-02"):
        np.testing.assert_array_equal(got[f"{MODEL_ID}/{s}/responses"][:], ref[f"{MODEL_ID}/{s}/responses"][:])
    after = [e for e in rs.read_events()[n_events:] if e["event"] == "unit_done"]
    assert [(k, e["shard"]) for e in after for k in e["targets"] if (k, e["shard"]) in finished_at_kill] == []
    redone = [e for e in after if e["shard"] == killed["shard"]]
    assert len(redone) == 1 and redone[0]["pid"] != killed["pid"]  # rerun by another (or restarted) worker
    assert rs.status()["complete"]
