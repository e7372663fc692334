"""berg.synthetic: generated datasets have the noise ceiling asked for, are reproducible, and are readable."""

from __future__ import annotations

import numpy as np
import pytest

from berg import metrics
from berg.core.contract import BaseModelInterface
from berg.core.reliability import Reliability
from berg.errors import InvalidParameterError, NoReliabilityError
from berg.synthetic import (
    LinearBrain,
    add_noise,
    category_images,
    generate,
    ncsnr_from_noise_ceiling,
    read_categories,
    read_labelled,
)


class LinearEncoder:
    """A real (known) linear encoding model on feature-vector "stimuli": y = x @ W.T + b per subject."""

    def __init__(self, n_features=12, n_outputs=(30,), seed=0, metadata=None):
        rng = np.random.default_rng(seed)
        self.subjects = list(range(1, len(n_outputs) + 1))
        self.w = {s: rng.standard_normal((m, n_features)) for s, m in zip(self.subjects, n_outputs)}
        self.b = {s: rng.standard_normal(m) for s, m in zip(self.subjects, n_outputs)}
        self.model_id = "test-linear"
        self._metadata = metadata or {}
        self.calls = 0

    def encode(self, x, show_progress=False):
        self.calls += 1
        x = np.asarray(x, dtype=np.float64)
        out = {s: (x @ self.w[s].T + self.b[s]).astype(np.float32) for s in self.subjects}
        return out if len(self.subjects) > 1 else out[self.subjects[0]]

    def get_metadata(self):
        return self._metadata


def _stimuli(n, f=12, seed=1):
    return np.random.default_rng(seed).standard_normal((n, f)).astype(np.float32)


def test_ncsnr_from_noise_ceiling_inverts_metrics():
    nc = np.array([0.05, 0.3, 0.6, 0.95])
    for n in (1, 3, 10):
        assert np.allclose(metrics.noise_ceiling(ncsnr_from_noise_ceiling(nc, n), n), nc)
    with pytest.raises(InvalidParameterError, match="fractions"):
        ncsnr_from_noise_ceiling([30.0], 3)


def test_measured_noise_ceiling_matches_request_over_seeds():
    """The mean over seeds of the measured NC (berg.metrics) lies within sampling error of the request."""
    m, reps, n = 24, 4, 160
    target = np.linspace(0.1, 0.85, m)
    model = LinearEncoder(n_outputs=(m,))
    x = _stimuli(n)
    measured = []
    for seed in range(16):
        data = generate(model, x, n_repeats=reps, noise="noise_ceiling", noise_ceiling=target, seed=seed)
        measured.append(metrics.noise_ceiling(metrics.ncsnr(data.responses[1]), reps))
        assert np.allclose(data.expected_noise_ceiling(1), target)
    measured = np.array(measured)
    mean, se = measured.mean(axis=0), measured.std(axis=0, ddof=1) / np.sqrt(len(measured))
    assert np.all(np.abs(mean - target) < 4 * se + 0.01), np.c_[target, mean, se]
    # the check has power: a ceiling 0.15 off the truth is rejected for (nearly) every output
    assert np.mean(np.abs(mean - (target + 0.15)) < 4 * se + 0.01) < 0.1
    # pooled over outputs the bias is tiny
    assert abs(np.mean(mean - target)) < 0.01


def test_ncsnr_noise_and_single_repeat_ceiling():
    model = LinearEncoder(n_outputs=(20,))
    snr = np.linspace(0.3, 2.0, 20)
    data = generate(model, _stimuli(3000), n_repeats=2, noise="ncsnr", ncsnr=snr, seed=3)
    assert np.allclose(metrics.ncsnr(data.responses[1]), snr, rtol=0.05, atol=0.07)
    # single-repeat ceiling: r(repeat 1, repeat 2) estimates ncsnr^2 / (ncsnr^2 + 1)
    r12 = metrics.pearson_r(data.responses[1][:, 0], data.responses[1][:, 1])
    assert np.allclose(r12, metrics.noise_ceiling(snr, 1), atol=0.05)


class ReliableEncoder(LinearEncoder, BaseModelInterface):
    """LinearEncoder behind berg's model interface, with a known per-output reliability."""

    def __init__(self, reliability, **kwargs):
        super().__init__(**kwargs)
        self._reliability = reliability

    @classmethod
    def load(cls, request):
        raise NotImplementedError

    def provenance(self):
        return {"model_id": self.model_id}

    def reliability(self, subject=None):
        if self._reliability is None:
            return BaseModelInterface.reliability(self, subject)
        return self._reliability


def test_noise_from_the_model_reliability_accessor():
    snr = np.linspace(0.5, 1.5, 15)
    model = ReliableEncoder(Reliability.from_ncsnr(snr, 3, "test"), n_outputs=(15,))
    data = generate(model, _stimuli(4000), n_repeats=3, noise="metadata", seed=0)
    assert np.allclose(data.ncsnr[1], snr)
    assert np.allclose(metrics.ncsnr(data.responses[1]), snr, rtol=0.05, atol=0.07)
    # BERG stores noise ceilings in percent with the repeat count: the accessor converts them
    nc10 = 100 * metrics.noise_ceiling(snr, 10)
    assert np.allclose(Reliability.from_noise_ceiling(nc10, 10, "bmd").ncsnr, snr)
    with pytest.raises(InvalidParameterError, match="noise='ncsnr'"):
        generate(ReliableEncoder(None, n_outputs=(15,)), _stimuli(10), noise="metadata")
    with pytest.raises(NoReliabilityError):
        ReliableEncoder(None, n_outputs=(15,)).reliability()
    with pytest.raises(InvalidParameterError, match="model.reliability"):
        generate(LinearEncoder(n_outputs=(15,)), _stimuli(10), noise="metadata")


def test_no_noise_repeats_equal_model_output():
    model = LinearEncoder(n_outputs=(7, 5))
    x = _stimuli(30)
    data = generate(model, x, n_repeats=2, noise="none")
    assert data.subjects == [1, 2]
    for s in (1, 2):
        assert data.responses[s].shape == (30, 2, model.w[s].shape[0])
        assert np.array_equal(data.responses[s][:, 0], model.encode(x)[s])
        assert np.array_equal(data.responses[s][:, 1], data.responses[s][:, 0])


@pytest.mark.parametrize("clean_in_memory", [True, False])
def test_file_generation_equals_memory_and_is_readable(tmp_path, monkeypatch, clean_in_memory):
    import berg.synthetic
    from berg.training.datasets import read_dataset

    if not clean_in_memory:  # force the scratch-file path of large datasets
        monkeypatch.setattr(berg.synthetic, "_CLEAN_IN_MEMORY", 0)

    model = LinearEncoder(n_outputs=(9, 4), metadata={"rois": {"A": np.arange(3)}})
    x = _stimuli(70)
    cats = np.array([f"c{i % 5}" for i in range(70)])
    mem = generate(model, x, n_repeats=3, noise="ncsnr", ncsnr=0.7, categories=cats, seed=11, chunk_size=16)
    path = tmp_path / "syn.h5"
    disk = generate(model, x, path, n_repeats=3, noise="ncsnr", ncsnr=0.7, categories=cats, seed=11, chunk_size=29)
    for s in (1, 2):  # noise depends on (seed, subject, row) only: chunking and storage do not matter
        assert np.array_equal(np.asarray(disk.responses[s][:]), mem.responses[s])
        assert np.allclose(disk.noise_sd[s], mem.noise_sd[s])
    ds = read_dataset(path)
    assert ds.ids == mem.ids and ds.subjects[1].responses.shape == (70, 3, 9)
    assert list(ds.subjects[1].rois) == ["A"]
    assert np.array_equal(read_categories(path), cats)
    lab = read_labelled(path)
    assert lab.info["noise"] == "ncsnr" and lab.info["seed"] == 11
    assert np.allclose(lab.ncsnr[2], 0.7)
    assert np.array_equal(lab.responses(2), mem.responses[2])
    assert not list(tmp_path.glob(".*tmp*")), "scratch files are removed"
    other = generate(model, x, n_repeats=3, noise="ncsnr", ncsnr=0.7, seed=12)
    assert not np.array_equal(other.responses[1], mem.responses[1])


def test_parameters_are_checked_before_work():
    model = LinearEncoder()
    with pytest.raises(InvalidParameterError, match="valid: .*noise_ceiling"):
        generate(model, _stimuli(5), noise="noise-ceiling")
    with pytest.raises(InvalidParameterError, match="n_repeats"):
        generate(model, _stimuli(5), n_repeats=0)
    with pytest.raises(InvalidParameterError, match="categories"):
        generate(model, _stimuli(5), categories=["a"])
    with pytest.raises(InvalidParameterError, match="needs ncsnr"):
        generate(model, _stimuli(5), noise="ncsnr")
    with pytest.raises(InvalidParameterError, match="not loaded"):
        generate(model, _stimuli(5), subjects=[3])
    with pytest.raises(InvalidParameterError, match="no stimuli"):
        generate(model, _stimuli(0), noise="ncsnr", ncsnr=1.0)


def test_add_noise_rows_are_independent_of_offsets():
    clean = np.zeros((6, 4), np.float32)
    sd = np.ones(4)
    a = add_noise(clean, sd, 2, seed=5)
    b = add_noise(clean[3:], sd, 2, seed=5, first_row=3)
    assert np.array_equal(a[3:], b)
    assert not np.array_equal(a[0], a[1])


def test_linear_brain_and_category_images():
    images, cats = category_images(4, 6, size=32, seed=0)
    assert images.shape == (24, 32, 32, 3) and images.dtype == np.uint8
    assert list(np.unique(cats)) == ["cat00", "cat01", "cat02", "cat03"]
    # exemplars of a category are closer to each other than to other categories' exemplars
    flat = images.reshape(24, -1).astype(float)
    c = np.corrcoef(flat)
    same = np.equal.outer(cats, cats) & ~np.eye(24, dtype=bool)
    assert c[same].mean() > c[~np.equal.outer(cats, cats)].mean() + 0.2
    more, more_cats = category_images(4, 9, size=32, seed=0)  # extends the set: same prototypes and exemplars
    assert np.array_equal(more[more_cats == "cat02"][:6], images[cats == "cat02"])
    feats = np.random.default_rng(0).standard_normal((400, 30))
    brain = LinearBrain.from_features(feats, 12, ncsnr=0.8, n_components=5, seed=1)
    y = brain.sample(feats, 3, seed=2)
    assert np.allclose(brain.signal(feats).var(axis=0, ddof=1), 1.0)
    assert np.allclose(metrics.ncsnr(y), 0.8, rtol=0.15)


def _sequential(source, work, depth=2):
    """``berg.synthetic._pipelined`` without the thread: each batch stored before the next encodes."""
    for item in source:
        work(*item)


@pytest.mark.parametrize("chunk_size", [29, 64, 100])
def test_file_bytes_do_not_depend_on_the_writer_thread(tmp_path, monkeypatch, chunk_size):
    import threading
    import time

    import berg.synthetic

    model = LinearEncoder(n_outputs=(9, 70))
    x = _stimuli(300)
    kw = dict(n_repeats=2, noise="ncsnr", ncsnr=0.6, seed=3, chunk_size=chunk_size)
    threaded = generate(model, x, tmp_path / "a.h5", **kw)
    # a slow, jittery writer (the encode loop runs ahead of it) and a one-batch queue
    real_batch, rng = berg.synthetic._Writer.batch, np.random.default_rng(0)

    def slow(self, a, b, out):
        assert threading.current_thread().name == "berg-synthetic-writer"
        time.sleep(float(rng.uniform(0, 0.01)))
        real_batch(self, a, b, out)

    monkeypatch.setattr(berg.synthetic._Writer, "batch", slow)
    monkeypatch.setattr(berg.synthetic, "_QUEUE_BATCHES", 1)
    jittery = generate(model, x, tmp_path / "b.h5", **kw)
    monkeypatch.setattr(berg.synthetic._Writer, "batch", real_batch)
    monkeypatch.setattr(berg.synthetic, "_pipelined", _sequential)
    sequential = generate(model, x, tmp_path / "c.h5", **kw)
    clean = model.encode(x)
    for s in (1, 2):
        ref = add_noise(clean[s], threaded.noise_sd[s], 2, seed=3, subject_index=s - 1)  # the documented scheme
        for data in (threaded, jittery, sequential):
            assert np.asarray(data.responses[s][:]).tobytes() == ref.tobytes()


def test_file_layout_is_berg_training_format(tmp_path):
    import h5py

    from berg.training.datasets import EncodingDataset, SubjectData, write_dataset

    model = LinearEncoder(n_outputs=(5, 20000), metadata={"rois": {"V1": np.arange(4)}})
    images = np.random.default_rng(0).integers(0, 255, (40, 8, 8, 3), dtype=np.uint8)
    model.encode = (
        lambda x, show_progress=False: {  # images in, one linear map per subject
            s: (np.asarray(x, np.float32).reshape(len(x), -1)[:, :12] @ model.w[s].T).astype(np.float32)
            for s in model.subjects
        }
    )
    data = generate(model, images, tmp_path / "syn.h5", n_repeats=2, noise="ncsnr", ncsnr=1.0, chunk_size=16)
    resp = {s: np.asarray(data.responses[s][:]) for s in (1, 2)}
    ref = EncodingDataset(
        "synthetic",
        "image",
        images,
        data.ids,
        data.split,
        {s: SubjectData(resp[s], None, data.rois[s]) for s in (1, 2)},
    )
    write_dataset(tmp_path / "ref.h5", ref)

    def layout(path):
        items = []
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda name, o: items.append(
                    (name, getattr(o, "shape", None), str(getattr(o, "dtype", "")), getattr(o, "chunks", None))
                    + tuple(sorted((k, str(v)) for k, v in o.attrs.items()))
                )
            )
            items.append(tuple(sorted((k, str(v)) for k, v in f.attrs.items())))
            return items, (f["stimuli/images"][()].tobytes(), f["stimuli/ids"][()].tolist(), f["split"][()].tolist())

    (mine, mine_data), (theirs, their_data) = layout(tmp_path / "syn.h5"), layout(tmp_path / "ref.h5")
    extra = {"stimuli/categories", "synthetic"}  # the synthetic record beside the format
    assert [i for i in mine if str(i[0]).split("/")[0] not in extra and i[0] not in extra] == theirs
    assert mine_data == their_data


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("side", ["encode", "writer"])
def test_an_error_on_either_side_stops_both_and_leaves_no_file(tmp_path, monkeypatch, side):
    import threading

    import berg.synthetic

    model = LinearEncoder(n_outputs=(6,))
    if side == "encode":
        encode = model.encode

        def failing(x, show_progress=False):
            if model.calls == 3:
                raise _Boom("encode failed")
            return encode(x)

        model.encode = failing
    else:
        real_batch = berg.synthetic._Writer.batch

        def failing(self, a, b, out):
            if a >= 20:
                raise _Boom("disk full")
            real_batch(self, a, b, out)

        monkeypatch.setattr(berg.synthetic._Writer, "batch", failing)
    with pytest.raises(_Boom):
        generate(model, _stimuli(200), tmp_path / "syn.h5", noise="ncsnr", ncsnr=1.0, chunk_size=10)
    assert not any(t.name == "berg-synthetic-writer" for t in threading.enumerate())
    assert list(tmp_path.iterdir()) == []
    if side == "writer":  # the encode loop stopped early instead of encoding every batch
        assert model.calls < 20
