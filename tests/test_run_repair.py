"""berg run end to end on a damaged or changed store (issue 24): a flipped or deleted chunk is reported and
recomputed bit for bit, a failed stimulus that comes back is retried, a stimulus replaced by another of the
same name and size is noticed."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest

import berg
from berg.runner.export import IncompleteRunError, export_hdf5
from berg.runner.zarr_store import RunStore
from berg.testing.sklearn_toy import MODEL_ID, build

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

N_IMAGES = 12
SHARD = 4


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return build(tmp_path_factory.mktemp("synthetic-repair"))


@pytest.fixture(scope="module")
def berg_opts(synth, tmp_path_factory):
    return synth.options(tmp_path_factory.mktemp("cache"))


def _bmp(path, seed):
    """BMP: the file size depends only on the image size, so two images can share name and size."""
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(N_IMAGES):
        _bmp(folder / f"img{i:03d}.bmp", i)
    return folder


def _plan(store, images, berg_opts, **kw):
    model = {"id": MODEL_ID, "subjects": [1, 2], "backbone_weights": "untrained", "batch_size": 4}
    return berg.EncodePlan(
        models=[model], stimuli=str(images), store=store, shard_size=SHARD, berg=berg_opts, device="cpu", **kw
    )


def _encode(berg_opts, images):
    client = berg.BERG(**berg_opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = client.get_encoding_model(
            MODEL_ID, subject=[1, 2], device="cpu", backbone_weights="untrained", batch_size=4
        )
        return m.encode(sorted(str(p) for p in images.glob("*.bmp")), show_progress=False)


def _responses(store):
    g = berg.runner.open_responses(store)
    return {s: g[f"{MODEL_ID}/sub-{s:02d}/responses"][:] for s in (1, 2)}


def test_damaged_shards_are_reported_refused_and_recomputed_bit_for_bit(tmp_path, images, berg_opts):
    store = tmp_path / "run"
    plan = _plan(store, images, berg_opts)
    assert berg.run(plan, show_progress=False).computed_units == 3
    before = _responses(store)
    rs = RunStore(store)
    (flip,) = rs.chunk_files(f"{MODEL_ID}/sub-01", 1)
    raw = bytearray(flip.read_bytes())
    raw[-3] ^= 0x55
    flip.write_bytes(bytes(raw))
    (gone,) = rs.chunk_files(f"{MODEL_ID}/sub-02", 2)
    gone.unlink()
    st = berg.runner.status(store)
    assert not st["complete"]
    assert {k: (t["damaged"], [d["shard"] for d in t["damaged_shards"]]) for k, t in st["targets"].items()} == {
        f"{MODEL_ID}/sub-01": (1, [1]),
        f"{MODEL_ID}/sub-02": (1, [2]),
    }
    assert "is missing" in st["targets"][f"{MODEL_ID}/sub-02"]["damaged_shards"][0]["reason"]
    with pytest.raises(IncompleteRunError, match="2 damaged"):
        export_hdf5(store, tmp_path / "out.h5")
    report = berg.run(plan, show_progress=False)
    assert report.computed_units == 2  # shard 1 (sub-01 only) and shard 2 (sub-02 only)
    after = _responses(store)
    for s in (1, 2):
        np.testing.assert_array_equal(after[s], before[s])  # bit for bit, the deleted chunk included
    assert berg.runner.status(store, verify=True)["complete"]
    events = [e for e in rs.read_events() if e["event"] == "shard_invalidated"]
    assert sorted((e["target"], e["shard"]) for e in events) == [(f"{MODEL_ID}/sub-01", 1), (f"{MODEL_ID}/sub-02", 2)]


def test_a_failed_stimulus_that_comes_back_is_retried(tmp_path, images, berg_opts, monkeypatch):
    from berg.runner import inputs

    victim = images / "img005.bmp"
    away = tmp_path / "away.bmp"
    original = inputs.PathSource._compute_fingerprint

    def vanish_after_fingerprint(self):
        fp = original(self)
        if victim.exists():
            os.rename(victim, away)  # the file disappears mid-run (a flaky network share)
        return fp

    monkeypatch.setattr(inputs.PathSource, "_compute_fingerprint", vanish_after_fingerprint)
    store = tmp_path / "run"
    plan = _plan(store, images, berg_opts, on_error="skip")
    first = berg.run(plan, show_progress=False)
    assert [f["index"] for f in first.failed] == [5]
    assert np.isnan(_responses(store)[1][5]).all()
    monkeypatch.setattr(inputs.PathSource, "_compute_fingerprint", original)
    os.rename(away, victim)  # restored: same name, size and bytes
    again = berg.run(plan, show_progress=False)
    assert again.computed_units == 1 and again.failed == []  # only shard 1 (images 4-7) is retried
    ref = _encode(berg_opts, images)
    got = _responses(store)
    for s in (1, 2):
        np.testing.assert_array_equal(got[s], ref[s])
    assert berg.runner.status(store)["failed"] == []


def test_a_stimulus_replaced_by_one_of_the_same_name_and_size_is_noticed(tmp_path, images, berg_opts):
    store = tmp_path / "run"
    plan = _plan(store, images, berg_opts)
    berg.run(plan, show_progress=False)
    victim = images / "img002.bmp"
    st = victim.stat()
    replacement = tmp_path / "other.bmp"
    _bmp(replacement, 999)
    assert replacement.stat().st_size == st.st_size
    shutil.copyfile(replacement, victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p would: same name, size and mtime
    again = berg.run(plan, show_progress=False)
    assert again.computed_units == 3  # the collection changed: every shard is stale
    ref = _encode(berg_opts, images)
    got = _responses(store)
    for s in (1, 2):
        np.testing.assert_array_equal(got[s], ref[s])
    assert berg.run(plan, show_progress=False).computed_units == 0  # and the content hashes are cached
