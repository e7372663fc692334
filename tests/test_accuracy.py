"""``berg describe ID --accuracy``: summaries from BERG-format replicas served by the test S3 server.

The replicas are written by berg.testing exactly as BERG writes its files; the expected numbers are an
independent numpy computation on the replicas' own arrays (not berg's readers). Each check also
records every key the store fetched: only metadata files may be touched.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import berg
from berg.accuracy import cache_path, compute_accuracy, compute_command, read_cached, write_cached
from berg.cli import main
from berg.errors import InvalidParameterError
from berg.registry import Registry
from berg.store import Store
from berg.testing import replica_entry, write_bmd_replica, write_catalogue_replica
from creation_code.berg_catalogue.replica import CHANNELS, NSD_ROIS

BUCKET = "berg-test-accuracy"
N_VERT = 30
EEG_CH = list(CHANNELS[:5])
EEG_T = 30  # -100 .. +45 ms: some time points after onset
GRID = (8, 9, 7)
NSD_ID, EEG_ID, BMD_ID = "acc-nsd-alexnet", "acc-eeg-vit", "acc-bmd-s3d"


def _bmd_metadata(root: Path, prefix: str, subject: int) -> dict:
    # the replica's own file, read with numpy (the test wrote it; it is not downloaded data)
    return np.load(root / prefix / f"metadata/metadata_sub-{subject:02d}.npy", allow_pickle=True).item()


@pytest.fixture(scope="module")
def served(tmp_path_factory, s3_server):
    root = tmp_path_factory.mktemp("accuracy")
    bucket = root / "bucket"
    common = dict(subjects=(1, 2), n_features=16, n_components=4, n_train=12)
    nsd = write_catalogue_replica(bucket, "nsd_fsaverage", "alexnet", n_vertices=N_VERT, **common)
    eeg = write_catalogue_replica(bucket, "things_eeg_2", "vit_b_32", channels=EEG_CH, n_times=EEG_T, **common)
    bmd = write_bmd_replica(bucket, subjects=(1, 2), n_features=32, k=4, grid=GRID)
    from creation_code.bmd_s3d.replica import PREFIX as BMD_PREFIX

    for prefix in (nsd.prefix, eeg.prefix, BMD_PREFIX):
        s3_server.upload_tree(bucket / prefix, BUCKET, prefix)
    src = lambda prefix: {"kind": "s3", "bucket": BUCKET, "prefix": prefix, "manifest": False}  # noqa: E731
    replica_entry(
        root,
        NSD_ID,
        "fmri-nsd_fsaverage-alexnet",
        source=src(nsd.prefix),
        subjects=[1, 2],
        selection={
            "lengths": {"lh_vertices": N_VERT, "rh_vertices": N_VERT},
            "n_outputs": {1: 2 * N_VERT, 2: 2 * N_VERT},
        },
    )
    n_eeg = 4 * len(EEG_CH) * EEG_T
    replica_entry(
        root,
        EEG_ID,
        "eeg-things_eeg_2-vit_b_32",
        source=src(eeg.prefix),
        subjects=[1, 2],
        selection={"channels": EEG_CH, "lengths": {"timepoints": EEG_T}, "n_outputs": {1: n_eeg, 2: n_eeg}},
    )
    reg = replica_entry(
        root,
        BMD_ID,
        "fmri-bmd-s3d",
        source=src(BMD_PREFIX),
        subjects=[1, 2],
        selection={"n_outputs": {s: int(bmd.masks[s].sum()) for s in (1, 2)}},
    )
    return {"nsd": nsd, "eeg": eeg, "bmd": bmd, "bmd_prefix": BMD_PREFIX, "bucket": bucket, "registry": reg}


@pytest.fixture
def fetched(monkeypatch):
    """Every key any store is asked for during the test."""
    keys: list[str] = []
    original = Store.fetch_many

    def recording(self, model_id, source, wanted, **kw):
        wanted = list(wanted)
        keys.extend(wanted)
        return original(self, model_id, source, wanted, **kw)

    monkeypatch.setattr(Store, "fetch_many", recording)
    return keys


@pytest.fixture
def client(served, s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("BERG_S3_ENDPOINT", s3_server.endpoint_url)
    return berg.BERG(cache_dir=tmp_path / "cache", registry=served["registry"])


def _npys(cache: Path) -> set[str]:
    return {p.relative_to(cache).as_posix() for p in cache.rglob("*.npy")}


def _rows(entry) -> np.ndarray:
    """A ROI entry as BERG stores it (np.where's tuple or its array) -> vertex indices, independently."""
    return np.asarray(entry[0] if isinstance(entry, tuple) else entry, dtype=np.int64).ravel()


# --------------------------------------------------------------------------- NSD fsaverage


def test_nsd_summary_equals_numpy_on_the_replica(client, served, fetched, tmp_path):
    block = compute_accuracy(client, NSD_ID, subject=2)
    assert set(fetched) == {"metadata/metadata_subject-02.npy"}  # the metadata file, nothing else
    assert _npys(tmp_path / "cache") == {f"{NSD_ID}/metadata/metadata_subject-02.npy"}

    meta = served["nsd"].metadata[2]
    enc, fmri = meta["encoding_models"], meta["fmri"]
    both = lambda key: np.concatenate([enc[f"lh_{key}"], enc[f"rh_{key}"]]).astype(np.float64)  # noqa: E731
    snr = np.concatenate([fmri["lh_ncsnr"], fmri["rh_ncsnr"]]).astype(np.float64)
    expected = {
        "median_r_nsdcore": both("correlation_nsdcore"),
        "median_r_nsdsynthetic": both("correlation_nsdsynthetic"),
        "median_ev_nsdcore": both("explained_variance_nsdcore"),
        "median_ev_nsdsynthetic": both("explained_variance_nsdsynthetic"),
        "median_nc": snr**2 / (snr**2 + 1 / 3),
    }
    per_roi = block["per_roi"]
    assert list(per_roi) == ["all", *NSD_ROIS]
    for roi in per_roi:
        rows = (
            np.arange(2 * N_VERT)
            if roi == "all"
            else np.concatenate([_rows(fmri["lh_fsaverage_rois"][roi]), _rows(fmri["rh_fsaverage_rois"][roi]) + N_VERT])
        )
        assert per_roi[roi]["n"] == rows.size
        for name, values in expected.items():
            if rows.size == 0:
                assert per_roi[roi][name] is None, roi  # mTL-bodies, mTL-faces: no vertices in this subject
            else:
                assert per_roi[roi][name] == pytest.approx(float(np.median(values[rows])), rel=1e-12), (roi, name)
    assert block["files"].keys() == {"metadata/metadata_subject-02.npy"}
    assert block["metrics"]["r_nsdcore"]["source"].endswith(
        "encoding_models.lh_correlation_nsdcore + rh_correlation_nsdcore"
    )
    assert "fmri.lh_ncsnr" in block["metrics"]["nc"]["source"]  # through the layout's reliability accessor


def test_nsd_older_key_names_without_suffix(served, tmp_path):
    # June-2025 files: {lh,rh}_correlation / _explained_variance without the _nsdcore suffix
    rep = served["nsd"]
    berg_dir = tmp_path / "old"
    meta = {k: dict(v) if isinstance(v, dict) else v for k, v in rep.metadata[1].items()}
    enc = {}
    for key, value in meta["encoding_models"].items():
        if key.endswith("_nsdsynthetic"):
            continue  # the old files had no NSD-synthetic arrays
        enc[key.replace("_nsdcore", "")] = value
    meta["encoding_models"] = enc
    target = berg_dir / rep.prefix / "metadata" / "metadata_subject-01.npy"
    target.parent.mkdir(parents=True)
    np.save(target, meta, allow_pickle=True)
    client = berg.BERG(berg_dir=berg_dir, cache_dir=tmp_path / "c", registry=served["registry"], offline=True)
    block = compute_accuracy(client, NSD_ID, subject=1)
    r = np.concatenate([enc["lh_correlation"], enc["rh_correlation"]]).astype(np.float64)
    assert block["per_roi"]["all"]["median_r_nsdcore"] == pytest.approx(float(np.median(r)), rel=1e-12)
    assert "median_r_nsdsynthetic" not in block["per_roi"]["all"]
    assert block["metrics"]["r_nsdcore"]["source"].endswith("encoding_models.lh_correlation + rh_correlation")


# --------------------------------------------------------------------------- THINGS EEG2


def test_eeg_r_over_time_equals_numpy_on_the_replica(client, served, fetched):
    block = compute_accuracy(client, EEG_ID)  # default: the first subject
    assert set(fetched) == {"metadata/metadata_subject-01.npy"}
    meta = served["eeg"].metadata[1]
    r = meta["encoding_models"]["correlation_averaged_repetitions"].astype(np.float64)
    curve = r.mean(axis=0)
    peak = int(curve.argmax())
    times_ms = np.round(meta["eeg"]["times"] * 1000.0, 3)
    s = block["summary"]
    assert block["subject"] == 1
    assert s["peak_r_channel_mean"] == pytest.approx(float(curve[peak]), rel=1e-12)
    assert s["peak_time_ms"] == pytest.approx(float(times_ms[peak]))
    assert s["best_channel_at_peak"] == EEG_CH[int(r[:, peak].argmax())]
    assert s["mean_r"] == pytest.approx(float(r.mean()), rel=1e-12)
    assert s["mean_r_from_onset"] == pytest.approx(float(r[:, times_ms >= 0].mean()), rel=1e-12)
    nc = meta["eeg"]["noise_ceiling"].astype(np.float64)
    assert s["median_nc"] == pytest.approx(float(np.median(nc)), rel=1e-12)
    np.testing.assert_allclose(block["r_over_time"]["r_channel_mean"], curve, rtol=1e-12)
    assert block["per_channel"][EEG_CH[0]]["peak_r"] == pytest.approx(float(r[0].max()), rel=1e-12)


# --------------------------------------------------------------------------- BMD


def test_bmd_summary_equals_numpy_on_the_replica(client, served, fetched):
    block = compute_accuracy(client, BMD_ID, subject=1)
    assert set(fetched) == {"metadata/metadata_sub-01.npy"}  # never pca_weights.npy or weights_sub-01.npy
    meta = _bmd_metadata(served["bucket"], served["bmd_prefix"], 1)
    enc = meta["encoding_models"]
    values = {
        "median_r": enc["correlation"].astype(np.float64),
        "median_ev": enc["explained_variance"].astype(np.float64),
        "median_nc": enc["noiseceiling_task_test_n_10"].astype(np.float64) / 100.0,  # BERG stores percent
    }
    rois = served["bmd"].roi_flat[1]
    assert list(block["per_roi"]) == ["all", *rois]
    n = enc["correlation"].size
    for roi, row in block["per_roi"].items():
        rows = np.arange(n) if roi == "all" else np.asarray(rois[roi])
        assert row["n"] == rows.size
        for name, v in values.items():
            assert row[name] == pytest.approx(float(np.median(v[rows])), rel=1e-12), (roi, name)
    assert "noiseceiling_task_test_n_10" in block["metrics"]["nc"]["source"]


# --------------------------------------------------------------------------- CLI and cache


def test_cli_accuracy_writes_the_cache_and_describe_shows_it(client, served, tmp_path, capsys, s3_server, fetched):
    cache = tmp_path / "cache"
    argv = ["--cache-dir", str(cache), "--registry", str(served["registry"]), "describe", BMD_ID]
    assert main(argv) == 0
    before = capsys.readouterr().out
    assert f"berg describe {BMD_ID} --accuracy" in " ".join(before.split())  # the command, not numbers yet
    assert not cache_path(client, BMD_ID).exists() and fetched == []  # plain describe fetches nothing

    assert main([*argv, "--accuracy", "--subject", "2"]) == 0
    out = capsys.readouterr().out
    assert set(fetched) == {"metadata/metadata_sub-02.npy"}
    doc = json.loads(cache_path(client, BMD_ID).read_text())
    assert doc["model_id"] == BMD_ID and list(doc["subjects"]) == ["2"]
    block = doc["subjects"]["2"]
    assert "COMPUTED ACCURACY (cached in" in out and "metadata/metadata_sub-02.npy (sha256" in out
    median_r = block["per_roi"]["all"]["median_r"]
    meta = _bmd_metadata(served["bucket"], served["bmd_prefix"], 2)
    assert median_r == pytest.approx(float(np.median(meta["encoding_models"]["correlation"].astype(np.float64))))
    assert f"{median_r:.3f}" in out

    # later, without --accuracy: the cached summary is the accuracy line, nothing is fetched
    fetched.clear()
    assert main(argv) == 0
    later = " ".join(capsys.readouterr().out.split())
    assert f"computed from the model's files (cached): medians over all {block['per_roi']['all']['n']} outputs" in later
    assert fetched == []
    # the shipped card is untouched
    assert "computed" not in Registry().get("fmri-bmd-s3d").card


def test_cli_accuracy_json(served, tmp_path, capsys, s3_server, monkeypatch):
    monkeypatch.setenv("BERG_S3_ENDPOINT", s3_server.endpoint_url)
    argv = ["--cache-dir", str(tmp_path / "c"), "--registry", str(served["registry"])]
    assert main([*argv, "describe", EEG_ID, "--accuracy", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["card"]["id"] == EEG_ID and doc["computed"]["family"] == "things_eeg_2"
    assert doc["computed"]["command"] == f"berg describe {EEG_ID} --accuracy --subject 1"


def test_subject_without_accuracy_and_bad_subjects(client, served, tmp_path, capsys):
    argv = ["--cache-dir", str(tmp_path / "c"), "--registry", str(served["registry"]), "describe", BMD_ID]
    assert main([*argv, "--subject", "1"]) != 0
    assert "--subject goes with --accuracy" in capsys.readouterr().err
    with pytest.raises(InvalidParameterError, match="one subject at a time"):
        compute_accuracy(client, BMD_ID, subject=[1, 2])
    with pytest.raises(InvalidParameterError, match="subject"):
        compute_accuracy(client, BMD_ID, subject=11)


def test_models_without_per_output_accuracy_say_so(client):
    assert compute_command(Registry().get("fmri-bold5000-resnet18")) is None
    with pytest.raises(InvalidParameterError, match="published figures"):
        compute_accuracy(client, "fmri-bold5000-resnet18")


def test_broken_cache_is_ignored_and_rewritten(client, caplog):
    path = cache_path(client, BMD_ID)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert read_cached(client, BMD_ID) is None and "ignoring unreadable" in caplog.text
    path.write_text(json.dumps({"format": 1, "model_id": "another-model", "subjects": {}}))
    assert read_cached(client, BMD_ID) is None
    write_cached(client, BMD_ID, {"subject": 3, "per_roi": {}})
    assert read_cached(client, BMD_ID)["subjects"] == {"3": {"subject": 3, "per_roi": {}}}
    assert not list(path.parent.glob(".*.tmp*"))  # atomic write left no temporary


@pytest.mark.parametrize(
    "model_id, expected",
    [
        ("fmri-nsd_fsaverage-vit_b_32", "berg describe fmri-nsd_fsaverage-vit_b_32 --accuracy"),
        ("eeg-things_eeg_2-alexnet_untrained", "berg describe eeg-things_eeg_2-alexnet_untrained --accuracy"),
        ("fmri-bmd-s3d", "berg describe fmri-bmd-s3d --accuracy"),
        (
            "fmri-bold5000-alexnet",
            "berg build fmri-bold5000-alexnet --data DIR; then berg describe fmri-bold5000-alexnet --accuracy",
        ),
        ("fmri-luminance-baseline", None),
        ("fmri-bold5000-resnet18", None),
    ],
)
def test_compute_command(model_id, expected, monkeypatch):
    monkeypatch.delenv("BERG_REGISTRY", raising=False)
    assert compute_command(Registry().get(model_id)) == expected


def test_built_artifact_summary_per_roi():
    # what `berg build` writes (accuracy/<name> per output, roi/<name> rows), summarised per ROI
    from berg.accuracy import _native
    from berg.core.reliability import Reliability

    rng = np.random.default_rng(0)
    r, cv = rng.uniform(-0.2, 0.8, 12), rng.uniform(0, 0.5, 12)
    snr = rng.uniform(0, 2, 12)

    class Layout:
        def reliability(self, subject):
            return Reliability.from_ncsnr(snr, 3.5, "metadata/sub-01.safetensors: accuracy/ncsnr")

    meta = {
        "accuracy": {"correlation": r, "conv1/cv_r": cv, "ncsnr": snr},
        "rois": {"LOC": np.array([0, 3, 5]), "PPA": np.array([7, 8])},
    }
    body = _native(meta, Layout(), 1, "metadata/sub-01.safetensors")
    assert list(body["per_roi"]) == ["all", "LOC", "PPA"]
    assert "median_ncsnr" not in body["per_roi"]["all"]  # reliability is the nc column, not a metric
    loc = body["per_roi"]["LOC"]
    assert loc["n"] == 3
    assert loc["median_correlation"] == pytest.approx(float(np.median(r[[0, 3, 5]])), rel=1e-12)
    assert loc["median_conv1/cv_r"] == pytest.approx(float(np.median(cv[[0, 3, 5]])), rel=1e-12)
    nc = snr**2 / (snr**2 + 1 / 3.5)
    assert body["per_roi"]["PPA"]["median_nc"] == pytest.approx(float(np.median(nc[[7, 8]])), rel=1e-12)
    with pytest.raises(InvalidParameterError, match="no per-output accuracy"):
        _native({"accuracy": {"ncsnr": snr}}, Layout(), 1, "metadata/sub-01.safetensors")
