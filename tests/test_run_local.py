"""berg run end to end on the synthetic native model: equality with encode, kills and resumes, stale shards,
locks, bad stimuli, reducers, HDF5 bricks, Slurm-array slices and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import berg
from berg.errors import StimulusError
from berg.runner.zarr_store import RunLockedError, RunStore
from berg.testing.sklearn_toy import MODEL_ID, build

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

N_IMAGES = 32


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return build(tmp_path_factory.mktemp("synthetic-run"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def berg_opts(synth, tmp_path_factory):
    return synth.options(tmp_path_factory.mktemp("cache"))


def _plan(store, stimuli, berg_opts, subjects=(1, 2), **kw):
    model = {"id": MODEL_ID, "subjects": list(subjects), "backbone_weights": "untrained", "batch_size": 4}
    model.update(kw.pop("model", {}))
    return berg.EncodePlan(
        models=[model],
        stimuli=stimuli,
        store=store,
        shard_size=kw.pop("shard_size", 8),
        berg=berg_opts,
        device="cpu",
        **kw,
    )


def _encode(berg_opts, stimuli, subjects=(1, 2), **kw):
    client = berg.BERG(**berg_opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = client.get_encoding_model(
            MODEL_ID, subject=list(subjects), device="cpu", backbone_weights="untrained", batch_size=4, **kw
        )
        return m.encode(stimuli, show_progress=False)


def _responses(store, subject, name=MODEL_ID):
    return berg.runner.open_responses(store)[f"{name}/sub-{subject:02d}/responses"][:]


@pytest.fixture(scope="module")
def one_pass(tmp_path_factory, images, berg_opts):
    """A run done in one go: the reference every resumed run must equal bit for bit."""
    store = tmp_path_factory.mktemp("one-pass") / "run"
    report = berg.run(_plan(store, str(images), berg_opts, shard_size=4), show_progress=False)
    assert report.computed_units == N_IMAGES // 4
    return store


def test_run_equals_encode_and_records_provenance(one_pass, images, berg_opts, synth):
    ref = _encode(berg_opts, sorted(images.glob("*.png")))
    for s in (1, 2):
        np.testing.assert_array_equal(_responses(one_pass, s), ref[s])  # bit for bit
    g = berg.runner.open_responses(one_pass)
    assert list(g["stimulus_ids"][:2]) == ["img000.png", "img001.png"]
    np.testing.assert_array_equal(g[f"{MODEL_ID}/sub-02/output_ids"][:], synth.voxel_ijk[2])
    attrs = dict(g[f"{MODEL_ID}/sub-01"].attrs)
    assert attrs["model_id"] == MODEL_ID and attrs["dims"] == ["stimulus", "output"]
    prov = attrs["provenance"]
    assert prov["berg_version"] == berg.__version__
    assert "readout/sub-01.safetensors" in prov["artifacts"] and "readout/sub-02.safetensors" not in prov["artifacts"]
    info = json.loads((one_pass / "run.json").read_text())
    assert info["plan"]["models"][0]["id"] == MODEL_ID and info["n_shards"] == N_IMAGES // 4
    again = berg.run(_plan(one_pass, str(images), berg_opts, shard_size=4), show_progress=False)
    assert again.computed_units == 0 and again.skipped_units == N_IMAGES // 4


def _unit_done(store: Path) -> list[dict]:
    return [e for e in RunStore(store).read_events() if e["event"] == "unit_done"]


@pytest.mark.slow
def test_kill_whole_run_resume_bit_for_bit_and_lock(tmp_path, images, berg_opts, one_pass):
    store = tmp_path / "run"
    plan = _plan(store, str(images), berg_opts, shard_size=4)
    plan.to_yaml(tmp_path / "plan.yaml")
    proc = subprocess.Popen(
        [sys.executable, "-m", "berg.cli", "run", str(tmp_path / "plan.yaml"), "-q"], stderr=subprocess.PIPE, text=True
    )
    markers = store / "markers" / MODEL_ID / "sub-02"
    locked_message = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            done = len(list(markers.glob("*.json"))) if markers.is_dir() else 0
            if locked_message is None and (store / "run.json").is_file():
                try:  # a second run on the same store refuses at once, and changes nothing
                    berg.run(plan, show_progress=False)
                except RunLockedError as exc:
                    locked_message = str(exc)
            if done >= 3 and locked_message is not None:
                started = {e["shard"] for e in RunStore(store).read_events() if e["event"] == "shard_start"}
                if started - {int(p.stem) for p in markers.glob("*.json")}:
                    break  # a shard is being computed right now: kill mid-shard
            time.sleep(0.005)
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended (rc {proc.returncode}) before it could be killed mid-shard: {proc.stderr.read()}"
            )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert locked_message is not None and f"pid {proc.pid}" in locked_message
    finished = {
        (key, int(p.stem))
        for key in (f"{MODEL_ID}/sub-01", f"{MODEL_ID}/sub-02")
        for p in (store / "markers" / key).glob("*.json")
    }
    n_shards = N_IMAGES // 4
    assert 0 < len({s for _, s in finished}) < n_shards, "the kill must land mid-run"
    ref = {s: _responses(one_pass, s) for s in (1, 2)}
    partial = {s: _responses(store, s) for s in (1, 2)}
    for key, shard in finished:  # a marked shard is complete: never half-written
        s = int(key[-2:])
        np.testing.assert_array_equal(partial[s][shard * 4 : shard * 4 + 4], ref[s][shard * 4 : shard * 4 + 4])
    events_before = len(RunStore(store).read_events())

    report = berg.run(plan, show_progress=False)
    for s in (1, 2):
        np.testing.assert_array_equal(_responses(store, s), ref[s])
    resumed = [e for e in RunStore(store).read_events()[events_before:] if e["event"] == "unit_done"]
    recomputed = [(key, e["shard"]) for e in resumed for key in e["targets"] if (key, e["shard"]) in finished]
    assert recomputed == []  # no finished shard was computed again
    both_done = {
        s for s in range(n_shards) if all((k, s) in finished for k in (f"{MODEL_ID}/sub-01", f"{MODEL_ID}/sub-02"))
    }
    assert report.computed_units == n_shards - len(both_done)
    assert RunStore(store).status()["complete"]


def _rewrite_readout(berg_dir: Path, subject: int) -> None:
    """Simulate a new version of one subject's readout: other weights, manifest updated."""
    from safetensors.numpy import load_file, save_file

    from berg.fsutil import sha256_file
    from berg.testing.sklearn_toy import PREFIX

    root = berg_dir / PREFIX
    key = f"readout/sub-{subject:02d}.safetensors"
    tensors = load_file(root / key)
    save_file({k: (v * 1.5).astype(v.dtype) for k, v in tensors.items()}, root / key)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][key] = {"size": (root / key).stat().st_size, "sha256": sha256_file(root / key)}
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_plan_changes_mark_affected_shards_stale(tmp_path, images, berg_opts, synth):
    stim = {"list": [str(p) for p in sorted(images.glob("*.png"))[:16]]}
    store = tmp_path / "run"
    assert berg.run(_plan(store, stim, berg_opts, subjects=[1]), show_progress=False).computed_units == 2
    # another subject: subject 1's shards stay done, only subject 2 is computed
    report = berg.run(_plan(store, stim, berg_opts, subjects=[1, 2]), show_progress=False)
    assert report.computed_units == 2
    new = [e for e in _unit_done(store)][-2:]
    assert all(e["targets"] == [f"{MODEL_ID}/sub-02"] for e in new)
    # another model version (subject 2's readout changes): exactly subject 2's shards are stale
    berg_dir = tmp_path / "berg_dir"
    shutil.copytree(synth.berg_dir, berg_dir)
    _rewrite_readout(berg_dir, 2)
    opts = {**berg_opts, "berg_dir": str(berg_dir), "cache_dir": str(tmp_path / "cache")}
    plan = _plan(store, stim, opts, subjects=[1, 2])
    prepared = berg.run(plan, show_progress=False, prepare_only=True)
    assert prepared.computed_units == 0
    st = berg.runner.status(store)["targets"]
    assert (st[f"{MODEL_ID}/sub-01"]["done"], st[f"{MODEL_ID}/sub-02"]["stale"]) == (2, 2)
    assert berg.run(plan, show_progress=False).computed_units == 2
    assert all(e["targets"] == [f"{MODEL_ID}/sub-02"] for e in _unit_done(store)[-2:])
    np.testing.assert_array_equal(_responses(store, 2), _encode(opts, stim["list"], subjects=[2])[2])
    np.testing.assert_array_equal(_responses(store, 1), _encode(berg_opts, stim["list"], subjects=[1])[1])


def _bad_folder(tmp_path, images):
    folder = tmp_path / "mixed"
    folder.mkdir()
    names = sorted(images.glob("*.png"))[:12]
    for p in names:
        shutil.copy(p, folder / p.name)
    from PIL import Image

    full = folder / "img005b.jpg"  # sorts between img005 and img006: in the middle of shard 0
    Image.open(names[0]).save(full, quality=90)
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2])  # a truncated JPEG
    (folder / "img009b.jpg").write_text("not an image, only a name")
    return folder


def test_bad_stimuli_stop_with_the_file_named_or_are_skipped(tmp_path, images, berg_opts):
    folder = _bad_folder(tmp_path, images)
    with pytest.raises(StimulusError) as info:
        berg.run(_plan(tmp_path / "raise", str(folder), berg_opts), show_progress=False)
    assert "img005b.jpg" in str(info.value) and "on_error: skip" in str(info.value)
    assert not list((tmp_path / "raise" / "markers").rglob("*.json"))  # nothing marked done

    store = tmp_path / "skip"
    report = berg.run(_plan(store, str(folder), berg_opts, on_error="skip"), show_progress=False)
    ids = list(berg.runner.open_responses(store)["stimulus_ids"][:])
    bad = [ids.index("img005b.jpg"), ids.index("img009b.jpg")]
    assert [f["index"] for f in report.failed] == bad
    assert "img009b.jpg" in report.failed[1]["id"]
    good = [i for i in range(len(ids)) if i not in bad]
    ref = _encode(berg_opts, [str(folder / ids[i]) for i in good])
    for s in (1, 2):
        got = _responses(store, s)
        assert np.isnan(got[bad]).all()
        assert not np.isnan(got[good]).any()
        np.testing.assert_allclose(got[good], ref[s], rtol=1e-5, atol=1e-5)  # batches differ: float32 rounding
    assert [f["index"] for f in berg.runner.status(store)["failed"]] == bad


def test_reducers_dtype_and_selection(tmp_path, images, berg_opts, synth):
    stim = [str(p) for p in sorted(images.glob("*.png"))[:10]]
    client = berg.BERG(**berg_opts)
    meta = client.get_model_metadata(MODEL_ID, subject=1)
    keep = np.flatnonzero(meta["accuracy"]["correlation"] > 0.5)
    models = [
        {
            "id": MODEL_ID,
            "name": "roi-means",
            "subjects": [1],
            "backbone_weights": "untrained",
            "batch_size": 4,
            "selection": {"roi": ["A", "B"]},
            "reducers": [{"roi_mean": ["A", "B"]}],
        },
        {
            "id": MODEL_ID,
            "name": "picked",
            "subjects": [1],
            "backbone_weights": "untrained",
            "batch_size": 4,
            "reducers": [{"select": {"outputs": keep.tolist()}}],
        },
    ]
    store = tmp_path / "run"
    plan = berg.EncodePlan(
        models=models, stimuli=stim, store=store, shard_size=4, dtype="float16", berg=berg_opts, device="cpu"
    )
    berg.run(plan, show_progress=False)
    from berg.runner.inputs import open_source
    from berg.runner.worker import _backbone_groups, load_entries

    loaded = load_entries(plan, open_source(plan.stimuli), device="cpu")
    assert [len(g) for g in _backbone_groups(list(loaded.values()))] == [2]  # one backbone pass for both entries
    full = _encode(berg_opts, stim, subjects=[1])[1]
    g = berg.runner.open_responses(store)
    means = g["roi-means/sub-01/responses"][:]
    assert means.dtype == np.float16 and means.shape == (10, 2)
    expect = np.stack([full[:, synth.roi_rows[r]].mean(1) for r in ("A", "B")], 1)
    np.testing.assert_allclose(means, expect, rtol=2e-3, atol=2e-3)
    assert list(g["roi-means/sub-01/coords/roi"][:]) == ["A", "B"]
    np.testing.assert_array_equal(g["picked/sub-01/responses"][:], full[:, keep].astype(np.float16))
    np.testing.assert_array_equal(g["picked/sub-01/coords/full_output_index"][:], keep)


def test_hdf5_brick(tmp_path, berg_opts, synth):
    import h5py

    with h5py.File(tmp_path / "brick.hdf5", "w") as f:
        f.create_dataset("imgBrick", data=synth.test_images, chunks=(1, *synth.test_images.shape[1:]))
    store = tmp_path / "run"
    berg.run(
        _plan(store, {"hdf5": str(tmp_path / "brick.hdf5"), "dataset": "imgBrick"}, berg_opts, shard_size=4),
        show_progress=False,
    )
    ref = _encode(berg_opts, synth.test_images)
    for s in (1, 2):
        np.testing.assert_array_equal(_responses(store, s), ref[s])
    assert list(berg.runner.open_responses(store)["stimulus_ids"][:]) == list(range(len(synth.test_images)))


def test_slurm_array_slices_cli_status_export(tmp_path, images, berg_opts, one_pass, capsys):
    import h5py

    from berg.cli import main

    store = tmp_path / "run"
    _plan(store, str(images), berg_opts, shard_size=4).to_yaml(tmp_path / "plan.yaml")
    assert main(["run", str(tmp_path / "plan.yaml"), "--shard", "1", "--of", "2", "-q"]) == 0
    assert "computed 4 shard(s)" in capsys.readouterr().out
    assert main(["status", str(store)]) == 3  # shards remain
    text = capsys.readouterr().out
    assert f"{MODEL_ID}/sub-01       4      0       0       4" in text and "4 shard(s) to compute" in text
    assert main(["export", str(store), "--to", str(tmp_path / "x.h5")]) == 2
    assert "not complete" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "plan.yaml"), "--shard", "0", "--of", "2", "-q"]) == 0
    assert "computed 4 shard(s), skipped 4 finished" in capsys.readouterr().out
    assert main(["status", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["complete"] is True
    assert main(["export", str(store), "--to", str(tmp_path / "x.h5")]) == 0
    with h5py.File(tmp_path / "x.h5") as f:
        for s in (1, 2):
            np.testing.assert_array_equal(f[f"{MODEL_ID}/sub-0{s}/responses"][:], _responses(one_pass, s))
    assert main(["run", str(tmp_path / "plan.yaml"), "--shard", "2", "--of", "2"]) == 2
    assert "0 <= I < N" in capsys.readouterr().err
