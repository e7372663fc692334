"""berg.run pieces without a model: plans, stimulus sources, reducers, the store (layout, markers, locks), export."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from berg.errors import InvalidParameterError, StimulusError
from berg.runner.inputs import normalise_stimuli, open_source
from berg.runner.plan import EncodePlan
from berg.runner.reducers import build_reducer
from berg.runner.zarr_store import RunLockedError, RunStore, StoreFormatError, TargetInfo


def _plan(tmp_path, **kw):
    (tmp_path / "imgs").mkdir(exist_ok=True)
    base = {"models": [{"id": "m", "subjects": [1, 2]}], "stimuli": "imgs", "store": "run"}
    return EncodePlan.from_dict({**base, **kw}, base_dir=tmp_path)


# ----------------------------------------------------------------------------------------- plans


def test_plan_yaml_round_trip_and_relative_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "plan.yaml").write_text(
        textwrap.dedent("""
        store: out/run
        stimuli: imgs
        models:
          - {id: fmri-x, subjects: [1, 2], reducers: [{roi_mean: [V1, V2]}]}
        shard_size: 16
        dtype: float16
        executor: {kind: dask, n_workers: 2}
    """)
    )
    plan = EncodePlan.from_yaml(tmp_path / "plan.yaml")
    assert plan.store == tmp_path / "out/run"
    assert plan.stimuli == {"folder": str(tmp_path / "imgs")}
    assert plan.models[0].reducers == [{"roi_mean": ["V1", "V2"]}]
    again = EncodePlan.from_dict(plan.to_dict())
    assert again.plan_hash() == plan.plan_hash()
    plan.to_yaml(tmp_path / "copy.yaml")
    assert EncodePlan.from_yaml(tmp_path / "copy.yaml").plan_hash() == plan.plan_hash()


def test_plan_hash_covers_content_not_execution(tmp_path):
    base = _plan(tmp_path)
    assert _plan(tmp_path, executor={"kind": "dask"}, decode_threads=3).plan_hash() == base.plan_hash()
    for change in (
        {"shard_size": 7},
        {"dtype": "float16"},
        {"models": [{"id": "m", "subjects": [1, 2, 3]}]},
        {"models": [{"id": "m", "subjects": [1, 2], "selection": {"roi": "V1"}}]},
    ):
        assert _plan(tmp_path, **change).plan_hash() != base.plan_hash(), change


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"dtype": "float64"}, "valid: 'float32', 'float16'"),
        ({"on_error": "ignore"}, "valid: 'raise', 'skip'"),
        ({"shard_size": 0}, "positive integer"),
        ({"executor": {"kind": "slurm"}}, "valid: 'local', 'dask'"),
        ({"shard_sise": 4}, "did you mean 'shard_size'"),
        ({"models": []}, "non-empty list"),
        ({"models": [{"id": "m"}]}, "needs 'subjects'"),
        ({"models": [{"id": "m", "subjects": 1}, {"id": "m", "subjects": 2}]}, "give each entry its own 'name:'"),
        ({"models": [{"id": "m", "subjects": 1, "reducers": [{"roi_max": "V1"}]}]}, "valid: 'roi_mean'"),
        ({"models": [{"id": "m", "subjects": 1, "reducers": [{"select": {"voxel": [1]}}]}]}, "select takes"),
        ({"stimuli": {"hdf5": "x.h5"}}, "needs 'dataset'"),
        ({"stimuli": "x.hdf5"}, "say which array"),
        ({"stimuli": {"folder": "a", "glob": "*.png"}}, "exactly one of"),
        # plan booleans are booleans: a quoted 'false' is not silently true
        ({"fsync": "false"}, "fsync must be a boolean, true or false; got 'false' (write fsync: false, without"),
        ({"fsync": "no"}, "(write fsync: false, without quotes)"),
        ({"fsync": 1}, "fsync must be a boolean"),
        ({"berg": {"offline": "false"}}, "berg.offline must be a boolean"),
        ({"berg": "offline"}, "'berg' options must be a mapping"),
        ({"stimuli": {"folder": "imgs", "recursive": "yes"}}, "stimuli.recursive must be a boolean"),
        ({"executor": {"kind": "dask", "dashboard": "off"}}, "executor.dashboard must be a boolean"),
        ({"executor": ["dask"]}, "executor must be 'local', 'dask' or a mapping"),
        (
            {
                "models": [
                    {"id": "m", "subjects": 1, "reducers": [{"nc_threshold": {"threshold": 0.1, "metric": "r2"}}]}
                ]
            },
            "metric is 'r2'; valid: 'noise_ceiling', 'ncsnr'",
        ),
        ({"store": "bad\0name"}, "holds a NUL byte"),
        ({"store": 5}, "a run store is a folder path, got int"),
    ],
)
def test_plan_errors_name_the_valid_values(tmp_path, change, fragment):
    with pytest.raises(InvalidParameterError) as info:
        _plan(tmp_path, **change)
    assert fragment in str(info.value)


def test_plan_booleans_accept_real_booleans(tmp_path):
    plan = _plan(tmp_path, fsync=False, berg={"offline": True}, stimuli={"folder": "imgs", "recursive": False})
    assert plan.fsync is False and plan.berg["offline"] is True and plan.stimuli["recursive"] is False


def test_store_path_that_is_a_file_or_bad_run_argument_is_refused(tmp_path):
    import berg

    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(StoreFormatError, match="is a file; give a folder"):
        _plan(tmp_path)
    with pytest.raises(StoreFormatError, match="is a file"):
        RunStore.open(tmp_path / "run")
    for bad in (None, 3, b"plan.yaml"):
        with pytest.raises(InvalidParameterError, match="berg.run takes an EncodePlan, a plan dict or the path"):
            berg.run(bad)


# ----------------------------------------------------------------------------------------- sources


def _png(path, value, size=(5, 6)):
    from PIL import Image

    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)


def test_folder_glob_list_sources(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        _png(folder / f"b{i}.png", i)
    _png(folder / "sub" / "a.png", 9)
    (folder / "notes.txt").write_text("not an image")
    src = open_source(normalise_stimuli(str(folder), tmp_path))
    assert src.ids() == ["b0.png", "b1.png", "b2.png"]
    items = src.read([2, 0], threads=2)
    assert [int(x[0, 0, 0]) for x in items] == [2, 0]
    rec = open_source(normalise_stimuli({"folder": str(folder), "recursive": True}, tmp_path))
    assert rec.ids()[-1] == "sub/a.png" and len(rec) == 4
    glob = open_source(normalise_stimuli({"glob": "imgs/**/*.png"}, tmp_path))
    assert len(glob) == 4
    listing = tmp_path / "list.txt"
    listing.write_text("imgs/b2.png\n# comment\nimgs/sub/a.png\n")
    lst = open_source(normalise_stimuli({"list_file": str(listing)}, tmp_path))
    assert [int(x[0, 0, 0]) for x in lst.read(range(2))] == [2, 9]
    fp = src.fingerprint()
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (7, 7, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "b1.png")  # same name, another file (size) -> another fingerprint
    assert open_source(normalise_stimuli(str(folder), tmp_path)).fingerprint() != fp


def test_bad_files_come_back_as_named_errors(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _png(folder / "a.png", 1)
    (folder / "b.jpg").write_text("this is text, not a JPEG")
    src = open_source({"folder": str(folder)})
    good, bad = src.read([0, 1], threads=2)
    assert isinstance(good, np.ndarray)
    assert isinstance(bad, StimulusError) and str(folder / "b.jpg") in str(bad)


def test_hdf5_brick_source(tmp_path):
    import h5py

    brick = np.random.default_rng(0).integers(0, 256, (5, 9, 8, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "stim.hdf5", "w") as f:
        f["imgBrick"] = brick
        f["chw"] = brick.transpose(0, 3, 1, 2)
        f["bad"] = brick.astype(np.float32)
    src = open_source(normalise_stimuli({"hdf5": "stim.hdf5", "dataset": "imgBrick"}, tmp_path))
    assert len(src) == 5 and list(src.ids()) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(np.stack(src.read([1, 3])), brick[[1, 3]])
    chw = open_source({"hdf5": str(tmp_path / "stim.hdf5"), "dataset": "chw"})
    np.testing.assert_array_equal(chw.read([4])[0], brick[4])
    with pytest.raises(StimulusError, match="datasets: bad, chw, imgBrick"):
        open_source({"hdf5": str(tmp_path / "stim.hdf5"), "dataset": "images"})
    with pytest.raises(StimulusError, match="must be uint8"):
        open_source({"hdf5": str(tmp_path / "stim.hdf5"), "dataset": "bad"})


def test_video_folder_source(tmp_path):
    import av

    folder = tmp_path / "clips"
    folder.mkdir()
    with av.open(str(folder / "c.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for t in range(6):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * t, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    src = open_source(normalise_stimuli({"videos": "clips"}, tmp_path))
    assert src.kind == "video" and src.ids() == ["c.mp4"]
    video = src.read([0])[0]
    assert video.shape == (6, 32, 32, 3)
    assert abs(int(video[5].mean()) - 200) < 10


# ----------------------------------------------------------------------------------------- reducers


def _meta():
    return {
        "n_outputs": 6,
        "rois": {"A": np.array([0, 1, 2]), "B": np.array([2, 5])},
        "accuracy": {"noise_ceiling": np.array([0.1, 0.5, 0.9, np.nan, 0.2, 0.8])},
    }


def _from_meta(metric):
    """A model's reliability accessor for a model without a selection (output order = full order)."""
    return _meta()["accuracy"][metric]


def test_reducers_against_plain_numpy():
    y = np.arange(24, dtype=np.float32).reshape(4, 6)
    coords = {"output_ids": np.arange(6) * 10}
    red = build_reducer(
        [{"roi_mean": ["A", "B"]}],
        meta=_meta(),
        full_rows=None,
        n_full=6,
        coords=coords,
        response_shape=(6,),
        where="t",
    )
    np.testing.assert_array_equal(red.apply(y), np.stack([y[:, [0, 1, 2]].mean(1), y[:, [2, 5]].mean(1)], 1))
    assert list(red.coords["roi"]) == ["A", "B"] and list(red.coords["n_outputs_in_roi"]) == [3, 2]
    nc = build_reducer(
        [{"nc_threshold": {"threshold": 0.4, "metric": "noise_ceiling"}}],
        meta=_meta(),
        reliability=_from_meta,
        full_rows=None,
        n_full=6,
        coords=coords,
        response_shape=(6,),
        where="t",
    )
    np.testing.assert_array_equal(nc.apply(y), y[:, [1, 2, 5]])  # the NaN ceiling is dropped
    assert list(nc.coords["output_ids"]) == [10, 20, 50]
    # the model kept rows [1, 2, 4, 5] (a selection): ROI / index reducers map onto those columns
    sel = build_reducer(
        [{"select": {"outputs": [5, 2]}}, {"roi_mean": ["B"]}],
        meta=_meta(),
        full_rows=np.array([1, 2, 4, 5]),
        n_full=6,
        coords={},
        response_shape=(4,),
        where="t",
    )
    y4 = y[:, [1, 2, 4, 5]]
    np.testing.assert_array_equal(sel.apply(y4), y[:, [2, 5]].mean(1, keepdims=True))
    nan_row = np.full((1, 6), np.nan, dtype=np.float32)
    assert np.isnan(red.apply(nan_row)).all()


@pytest.mark.parametrize(
    ("specs", "fragment"),
    [
        ([{"roi_mean": ["C"]}], "ROIs: A, B"),
        ([{"nc_threshold": {"threshold": 5.0, "metric": "noise_ceiling"}}], "keeps no output"),
        ([{"roi_mean": ["A"]}, {"select": {"outputs": [0]}}], "must be the last"),
        ([{"select": {"outputs": [7]}}], "not among the 6 outputs"),
    ],
)
def test_reducer_errors(specs, fragment):
    with pytest.raises(InvalidParameterError) as info:
        build_reducer(
            specs,
            meta=_meta(),
            reliability=_from_meta,
            full_rows=None,
            n_full=6,
            coords={},
            response_shape=(6,),
            where="t",
        )
    assert fragment in str(info.value)


def test_nc_threshold_takes_model_order_reliability_without_reading_metadata():
    """The model's accessor gives values for the outputs it returns (its selection); no metadata is read."""
    y = np.arange(16, dtype=np.float32).reshape(4, 4)  # the model kept full rows [1, 2, 4, 5]
    asked = []

    def accessor(metric):
        asked.append(metric)
        return np.array([0.5, 0.9, 0.2, 0.8])  # in the model's output order

    red = build_reducer(
        [{"select": {"outputs": [5, 2, 4]}}, {"nc_threshold": {"threshold": 0.45, "metric": "ncsnr"}}],
        meta=None,
        reliability=accessor,
        full_rows=np.array([1, 2, 4, 5]),
        n_full=6,
        coords={},
        response_shape=(4,),
        where="t",
    )
    assert asked == ["ncsnr"]
    np.testing.assert_array_equal(red.apply(y), y[:, [1, 3]])  # full rows 2 (0.9) and 5 (0.8); 4 (0.2) dropped
    assert list(red.coords["full_output_index"]) == [2, 5]
    with pytest.raises(InvalidParameterError, match="has 3 noise_ceiling values; the model returns 4"):
        build_reducer(
            [{"nc_threshold": {"threshold": 0.1, "metric": "noise_ceiling"}}],
            meta=None,
            reliability=lambda m: np.ones(3),
            full_rows=None,
            n_full=4,
            coords={},
            response_shape=(4,),
            where="t",
        )


def test_reducers_refuse_multi_axis_outputs():
    with pytest.raises(InvalidParameterError, match="n_stimuli, n_outputs"):
        build_reducer(
            [{"roi_mean": ["A"]}], meta=_meta(), full_rows=None, n_full=6, coords={}, response_shape=(2, 3), where="t"
        )


# ----------------------------------------------------------------------------------------- store


def _target(shape=(2, 5, 7), h="h1", name="toy"):
    return TargetInfo(
        name=name,
        model_id="toy",
        subject=1,
        label="sub-01",
        shape=shape,
        dims=["rep", "channel", "time"][-len(shape) :],
        coords={"time": np.arange(shape[-1]) * 10.0},
        attrs={"space": {"kind": "sensor_time"}},
        hash=h,
    )


def _init(store, targets, n=10, shard=4, dtype="float32"):
    store.initialise(
        targets=targets,
        plan={"p": 1},
        plan_hash="ph",
        stimulus_ids=[f"s{i}" for i in range(n)],
        stimuli_fingerprint={"n": n},
        shard_size=shard,
        dtype=dtype,
    )


def test_store_any_trailing_shape_whole_chunks(tmp_path):
    store = RunStore(tmp_path / "run")
    t = _target()
    _init(store, [t])
    arr = store.group()["toy/sub-01/responses"]
    assert arr.shape == (10, 2, 5, 7) and arr.chunks == (4, 2, 5, 7)
    assert np.isnan(arr[:]).all()  # nothing written yet reads as NaN, never as zeros
    data = np.random.default_rng(0).standard_normal((10, 2, 5, 7)).astype(np.float32)
    for shard, (a, b) in enumerate([(0, 4), (4, 8), (8, 10)]):
        chunks = store.write_shard(t.key, shard, a, data[a:b])
        store.mark_done(t.key, shard, {"target_hash": t.hash, "chunks": chunks})
    chunk_files = sorted(
        p.relative_to(store.zarr_path / "toy/sub-01/responses/c").as_posix()
        for p in (store.zarr_path / "toy/sub-01/responses/c").rglob("*")
        if p.is_file()
    )
    assert chunk_files == ["0/0/0/0", "1/0/0/0", "2/0/0/0"]  # one chunk file per shard
    np.testing.assert_array_equal(RunStore.open(store.root).group()["toy/sub-01/responses"][:], data)
    np.testing.assert_array_equal(store.group()["toy/sub-01/coords/time"][:], np.arange(7) * 10.0)
    st = store.status()
    assert st["complete"] and st["targets"]["toy/sub-01"]["done"] == 3
    # big outputs: the output axis is split so chunks stay bounded, still whole per shard
    chunks = RunStore.chunk_shape(73000, 256, (300_000,), 4)
    assert chunks[0] == 256 and chunks[1] * 256 * 4 <= 128 * 2**20


def test_store_stale_and_recreated(tmp_path):
    store = RunStore(tmp_path / "run")
    t = _target(shape=(3,))
    _init(store, [t])
    for s in range(3):
        chunks = store.write_shard(t.key, s, 4 * s, np.ones((min(4, 10 - 4 * s), 3)))
        store.mark_done(t.key, s, {"target_hash": t.hash, "chunks": chunks})
    _init(store, [_target(shape=(3,), h="h2")])  # same layout, new hash: shards are stale, data kept
    st = store.status()["targets"]["toy/sub-01"]
    assert (st["done"], st["stale"], st["pending"]) == (0, 3, 0)
    assert store.group()["toy/sub-01/responses"][0, 0] == 1
    _init(store, [_target(shape=(4,), h="h3")])  # another shape: array recreated, markers dropped
    st = store.status()["targets"]["toy/sub-01"]
    assert (st["done"], st["stale"], st["pending"]) == (0, 0, 3)
    assert np.isnan(store.group()["toy/sub-01/responses"][:]).all()


def test_open_refuses_non_runs(tmp_path):
    with pytest.raises(StoreFormatError, match="not found"):
        RunStore.open(tmp_path / "nothing")
    (tmp_path / "folder").mkdir()
    with pytest.raises(StoreFormatError, match="not a berg run"):
        RunStore.open(tmp_path / "folder")
    (tmp_path / "folder" / "run.json").write_text(json.dumps({"format": "berg-run", "format_version": 99}))
    with pytest.raises(StoreFormatError, match="version 99"):
        RunStore.open(tmp_path / "folder")


def test_lock_refuses_a_second_process_and_frees_on_death(tmp_path):
    root = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys, time
        from berg.runner.zarr_store import RunStore
        with RunStore({str(root)!r}).lock():
            print("held", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError) as info, RunStore(root).lock():
            pass
        assert f"pid {proc.pid}" in str(info.value)
        with pytest.raises(RunLockedError), RunStore(root).lock((0, 2)):  # a slice needs the store too
            pass
    finally:
        proc.kill()  # SIGKILL: the kernel drops the flock
        proc.wait()
    assert RunStore(root).status()["holders"] == []  # the killed run's holder file is not reported
    with RunStore(root).lock():
        pass
    # slices of one array share the store, but one slice is held once
    store = RunStore(root)
    with store.lock((0, 2)), RunStore(root).lock((1, 2)):
        with pytest.raises(RunLockedError, match="this slice"), RunStore(root).lock((1, 2)):
            pass
        with pytest.raises(RunLockedError, match="the store"), RunStore(root).lock():
            pass


def test_export_refuses_incomplete_and_copies(tmp_path):
    import h5py

    from berg.runner.export import IncompleteRunError, export_hdf5

    store = RunStore(tmp_path / "run")
    t = _target()
    _init(store, [t], n=6, shard=4)
    data = np.arange(6 * 70, dtype=np.float32).reshape(6, 2, 5, 7)
    chunks = store.write_shard(t.key, 0, 0, data[:4])
    store.mark_done(t.key, 0, {"target_hash": t.hash, "chunks": chunks})
    with pytest.raises(IncompleteRunError, match=r"not complete \(1 pending target shard\(s\)\)"):
        export_hdf5(store.root, tmp_path / "out.h5")
    chunks = store.write_shard(t.key, 1, 4, data[4:])
    store.mark_done(
        t.key, 1, {"target_hash": t.hash, "chunks": chunks, "failed": [{"index": 5, "id": "s5", "error": "x"}]}
    )
    export_hdf5(store.root, tmp_path / "out.h5")
    with h5py.File(tmp_path / "out.h5") as f:
        np.testing.assert_array_equal(f["toy/sub-01/responses"][:], data)
        assert [s.decode() for s in f["stimulus_ids"][:2]] == ["s0", "s1"]
        assert list(f["failed"][:]) == [5]
        assert json.loads(f["toy/sub-01"].attrs["space"]) == {"kind": "sensor_time"}
        np.testing.assert_array_equal(f["toy/sub-01/coords/time"][:], np.arange(7) * 10.0)


def test_status_eta_from_the_latest_run(tmp_path):
    store = RunStore(tmp_path / "run")
    t = _target(shape=(3,))
    _init(store, [t], n=40, shard=4)  # 10 shards
    for s in range(4):
        chunks = store.write_shard(t.key, s, 4 * s, np.zeros((4, 3)))
        store.mark_done(t.key, s, {"target_hash": t.hash, "chunks": chunks})
    lines = [
        {"event": "run_start", "t": 1000.0},
        {"event": "unit_done", "t": 1000.0 + 10, "shard": 0},
        {"event": "unit_done", "t": 1020.0, "shard": 1},
        {"event": "unit_done", "t": 1030.0, "shard": 2},
        {"event": "unit_done", "t": 1040.0, "shard": 3},
    ]
    store.events.write_text("".join(json.dumps(e) + "\n" for e in lines) + '{"torn line')
    st = store.status()
    assert st["pending_units"] == 6 and not st["complete"]
    assert st["units_per_second"] == pytest.approx(4 / 40)
    assert st["eta_seconds"] == pytest.approx(60.0)  # 6 shards at one per 10 s
    from berg.runner.cli import format_status

    assert "6 shard(s) to compute; rate 6.0 shards/min; ETA 1m00s" in format_status(st)


def test_dask_worker_alone_uses_all_cores_one_shard_at_a_time(monkeypatch):
    from berg.runner import executors

    monkeypatch.setattr(executors.os, "cpu_count", lambda: 16)
    one = executors.local_cluster_kwargs({"kind": "dask", "n_workers": 1})
    assert one["n_workers"] == 1 and one["threads_per_worker"] == 16
    assert one["resources"] == {executors._SLOT: 1}  # one shard per worker: its torch gets the 16 threads
    two = executors.local_cluster_kwargs({"kind": "dask", "n_workers": 2, "resources": {"GPU": 1}})
    assert two["threads_per_worker"] == 8 and two["resources"] == {"GPU": 1, executors._SLOT: 1}
    assert executors.local_cluster_kwargs({"n_workers": 2, "threads_per_worker": 1})["threads_per_worker"] == 1
    plan_threads = executors._worker_threads  # outside a worker: the plan's setting
    plan = EncodePlan.from_dict(
        {"models": [{"id": "m", "subjects": 1}], "stimuli": "x", "store": "r", "executor": {"kind": "dask"}},
        base_dir="/tmp",
    )
    assert plan_threads(plan) == 1
    plan.executor["torch_threads"] = 3
    assert plan_threads(plan) == 3


def test_namespaced_versioned_ids_name_a_store_group():
    from berg.runner.plan import ModelEntry

    entry = ModelEntry.from_dict({"id": "lab/model-id@2", "subjects": [1]}, "models[0]")
    assert entry.id == "lab/model-id@2" and entry.name == "lab--model-id-v2"
    with pytest.raises(InvalidParameterError, match="names a store group"):
        ModelEntry.from_dict({"id": "x", "name": "a/b", "subjects": [1]}, "models[0]")
