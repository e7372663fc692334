"""The real release files in ../shared/data/real/ (other than BOLD5000's) against berg's readers and facts.

* THINGS EEG2: BERG's channel names (63) and times (140) vs the EEG cards and the BERG-catalogue metadata
  reader; the 17 occipital/parietal channels of the OSF release vs the 63.
* NSD: the 41 columns and real rows of ``nsd_stim_info_merged.csv`` vs :func:`berg.training.datasets.
  read_nsd_stim_info` and the Algonauts creator's caption lookup.
* Algonauts 2023: the official fsaverage ``nsdgeneralRSC`` masks (MGH) vs the challenge-space reader of
  ``creation_code/algonauts_2023``.
* BERG's bucket: the object paths BERG's tutorials printed vs the keys berg's BERG-catalogue layout requests.

See ../shared/data/real/SOURCES.md for where each file comes from.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from berg.errors import InvalidParameterError

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = SHARED / "data" / "real"

pytestmark = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"{SHARED} (the real release files) is absent: real-format tests need it"
)

EEG_CARDS = ("eeg-things_eeg_2-alexnet", "eeg-things_eeg_2-alexnet_untrained", "eeg-things_eeg_2-vit_b_32")


def _card(model_id: str) -> dict:
    return yaml.safe_load((ROOT / "model_cards" / f"{model_id}.yaml").read_text())


def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


# ------------------------------------------------------------------------------------ THINGS EEG2


@pytest.fixture(scope="module")
def eeg():
    names = _lines(REAL / "things_eeg2" / "berg_metadata_subject-01_eeg_ch_names_63.txt")
    times = np.array(
        [float(v) for v in _lines(REAL / "things_eeg2" / "berg_metadata_subject-01_eeg_times_140_rounded3.txt")]
    )
    return names, times


@pytest.mark.parametrize("model_id", EEG_CARDS)
def test_eeg_cards_match_bergs_channel_names_and_times(model_id, eeg):
    from berg.models.berg_catalogue import _card_times

    names, times = eeg
    assert len(names) == 63 == len(set(names)) and times.shape == (140,)
    card = _card(model_id)
    space = card["output"]["space"]
    assert space["channels"] == names  # same names, same (recording) order
    assert card["parameters"]["selection"]["channels"] == names
    card_ms = _card_times(space["times_ms"])
    np.testing.assert_array_equal(np.round(card_ms / 1000.0, 3), times)  # -0.1 .. 0.595 s in 5 ms steps
    assert card["parameters"]["selection"]["lengths"]["timepoints"] == times.size
    n_outputs = set(card["parameters"]["selection"]["n_outputs"].values())
    assert n_outputs == {space["n_reps"] * len(names) * times.size} == {4 * 63 * 140}  # per EEG repetition


def test_berg_metadata_reader_keeps_channel_order_and_times(eeg, tmp_path):
    """A metadata file in BERG's nesting (as the tutorial printed it) reads back as the cards say."""
    from berg.models.berg_catalogue import read_metadata

    names, times = eeg
    path = tmp_path / "metadata_subject-01.npy"
    # BERG writes its metadata with np.save of a dict; names are a list, times a float array in seconds
    np.save(path, {"eeg": {"ch_names": list(names), "times": times.astype(np.float64)}, "encoding_models": {}})
    meta = read_metadata(path, "things_eeg_2")
    assert meta["eeg"]["ch_names"] == names
    card_ms = np.asarray([-100 + 5 * k for k in range(140)], dtype=np.float64)
    np.testing.assert_allclose(np.round(meta["eeg"]["times"] * 1000.0, 6), card_ms, atol=1e-9)


def test_osf_occipital_parietal_channels_are_a_subset_in_order(eeg):
    names, _ = eeg
    sub = _lines(REAL / "things_eeg2" / "DERIVED_eeg_encoding_osf_preprocessed_ch_names_17.txt")
    assert len(sub) == 17 and all(re.match(r"^[OP]", c) for c in sub)
    assert [c for c in names if re.match(r"^[OP]", c)] == sub  # same channels, same relative order


# --------------------------------------------------------------------------------------------- NSD


def _rendered_rows() -> dict[str, dict[int, str]]:
    """Column -> {row: value} from the rendered pandas output of the real nsd_stim_info_merged.csv."""
    text = (REAL / "nsd" / "tarrlab_between_dataset_analysis_v1_cell2_output_nsd_stim_info_merged_head.txt").read_text()
    out: dict[str, dict[int, str]] = {}
    cols: list[str] = []
    for line in text.splitlines():
        if re.match(r"^\s{3,}[A-Za-z]", line):  # a header line of one column block
            cols = [c for c in re.split(r"\s{2,}", line.strip().rstrip("\\").strip()) if c != "..."]
            continue
        m = re.match(r"^(\d+)\s+(.*?)\s*\\?$", line)
        if not cols or not m:
            continue
        row, rest = int(m.group(1)), m.group(2)
        if "cropBox" in cols:  # (a, b, c, d) holds spaces
            vals = re.match(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\(.*\))$", rest).groups()
        else:
            vals = [v for v in rest.split() if v != "..."]
        for c, v in zip(cols, vals):
            out.setdefault(c, {})[row] = v
    return out


@pytest.fixture(scope="module")
def stim_info_csv(tmp_path_factory):
    """A CSV with the real 41-column header and the real values of the rows/columns the render shows.

    Columns the render elides (subject2..4 etc.) are left empty: the reader must not need them.
    """
    import csv

    header = _lines(REAL / "nsd" / "DERIVED_nsd_stim_info_merged_columns_41.txt")
    assert header[0].startswith("(empty header")
    header = ["", *header[1:]]
    assert len(header) == 41
    vals = _rendered_rows()
    vals[""] = vals.pop("Unnamed: 0")
    rows = sorted(vals["nsdId"])
    path = tmp_path_factory.mktemp("nsd") / "nsd_stim_info_merged.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([vals.get(c, {}).get(r, "") for c in header])
    return path, vals, rows


def test_nsd_stim_info_reader_takes_the_real_columns(stim_info_csv):
    from berg.training.datasets import read_nsd_stim_info

    path, vals, rows = stim_info_csv
    info = read_nsd_stim_info(path)
    assert info.nsd_id.tolist() == [int(vals["nsdId"][r]) for r in rows] == rows  # nsdId is the 0-based row
    assert info.coco_id.tolist() == [int(vals["cocoId"][r]) for r in rows]
    assert info.shared1000.all() and info.bold5000.all()  # the rendered rows are BOLD5000 & shared1000 images
    assert set(info.coco_split) == {"train2017"}
    for s in (6, 7, 8):
        trials = info.subject_trials(s)
        expect = [[int(vals[f"subject{s}_rep{k}"][r]) for k in range(3)] for r in rows]
        np.testing.assert_array_equal(trials, expect)
    with pytest.raises(InvalidParameterError, match=r"subject2_rep0.*empty"):
        info.subject_trials(2)  # elided in the render, so empty here: the reader says so
    bad = path.with_name("bad.csv")
    bad.write_text(path.read_text().replace("shared1000", "shared_1000", 1))
    with pytest.raises(InvalidParameterError, match=r"lacks column\(s\) \['shared1000'\]"):
        read_nsd_stim_info(bad)


def test_algonauts_caption_lookup_reads_the_real_columns(stim_info_csv, tmp_path):
    import json

    from creation_code.algonauts_2023.data import coco_captions

    path, vals, rows = stim_info_csv
    ann = tmp_path / "annotations"
    ann.mkdir()
    coco = [int(vals["cocoId"][r]) for r in rows[:2]]
    (ann / "captions_train2017.json").write_text(
        json.dumps({"annotations": [{"image_id": coco[0], "caption": "a"}, {"image_id": coco[1], "caption": "b "}]})
    )
    (ann / "captions_val2017.json").write_text(json.dumps({"annotations": []}))
    assert coco_captions(rows[:2], path, ann) == [["a"], ["b"]]


# --------------------------------------------------------------------------------- Algonauts 2023


def _mgh(h: str) -> np.ndarray:
    import nibabel as nib

    img = nib.load(REAL / "algonauts_2023" / f"{h}.nsdgeneralRSC.mgz")
    assert type(img).__name__ == "MGHImage"
    return np.squeeze(np.asarray(img.get_fdata()))


def test_nsdgeneral_rsc_masks_are_fsaverage_vertex_masks():
    from creation_code.algonauts_2023.data import FSAVERAGE_VERTICES, HEMIS

    counts = {}
    for h in HEMIS:
        m = _mgh(h)
        assert m.shape == (FSAVERAGE_VERTICES,) and set(np.unique(m).tolist()) == {0.0, 1.0}
        counts[h] = int(m.sum())
    assert counts == {"lh": 543, "rh": 1021}  # RSC only: the challenge adds it to nsdgeneral
    card = _card("fmri-algonauts_2023-clip_sam")
    assert "19,004" in card["dataset"]["space"] and "20,544" in card["dataset"]["space"]


def test_challenge_space_reader_keeps_every_rsc_vertex(tmp_path):
    """The challenge's all-vertices mask is nsdgeneral + nsdgeneralRSC cast to int (2 where both mark a
    vertex; challenge_data_preparation.py); the reader must keep every non-zero vertex, in fsaverage order.

    nsdgeneral itself is not among the real files: a stand-in that overlaps half of RSC plays its part.
    """
    from creation_code.algonauts_2023.data import FSAVERAGE_VERTICES, HEMIS, ROI_CLASSES, read_subject

    subj = tmp_path / "subj01"
    imgs = subj / "training_split" / "training_images"
    imgs.mkdir(parents=True)
    for i in range(3):
        (imgs / f"train-{i + 1:04d}_nsd-{i:05d}.png").touch()
    masks = subj / "roi_masks"
    masks.mkdir()
    expect = {}
    for h in HEMIS:
        rsc = _mgh(h)
        stand_in = np.zeros(FSAVERAGE_VERTICES)
        on = np.flatnonzero(rsc)
        stand_in[on[: on.size // 2]] = 1.0  # overlap: value 2 after the sum
        stand_in[:100] = 1.0
        union = (stand_in + rsc).astype(int)  # exactly as the preparation script
        assert union.max() == 2
        np.save(masks / f"{h}.all-vertices_fsaverage_space.npy", union)
        expect[h] = np.flatnonzero(union)
        for cls in ROI_CLASSES:
            np.save(masks / f"{h}.{cls}_challenge_space.npy", np.zeros(expect[h].size, np.int64))
    for cls in ROI_CLASSES:
        np.save(masks / f"mapping_{cls}.npy", {0: "Unknown", 1: "roi"})
    sd = read_subject(tmp_path, 1)
    for h in HEMIS:
        np.testing.assert_array_equal(sd.fsaverage_vertices[h], expect[h])
        assert set(np.flatnonzero(_mgh(h)).tolist()) <= set(sd.fsaverage_vertices[h].tolist())
        assert sd.n_vertices[h] == expect[h].size


# ----------------------------------------------------------------------------------- BERG's bucket


@pytest.fixture(scope="module")
def bucket():
    return set(_lines(REAL / "berg_bucket" / "bucket_paths_from_tutorial_outputs_2025-06.txt"))


def test_berg_catalogue_layout_requests_objects_that_exist(bucket):
    """Every key the layouts ask for, for every bucket model whose files the tutorials listed."""
    import importlib

    from berg.registry import Registry

    reg = Registry()
    checked = {}
    for model_id in reg.ids():
        spec = reg.get(model_id)
        source = spec.source or {}
        if source.get("bucket") != "brain-encoding-response-generator":
            continue
        prefix = source["prefix"]
        listed = {p for p in bucket if p.startswith(prefix)}
        if not listed:
            continue  # the tutorials never synced this model (e.g. BMD, the AlexNet variants)
        module, _, name = spec.layout.partition(":")
        layout = getattr(importlib.import_module(module), name)(spec, None)  # key building needs no store
        keys = {prefix + k for k in layout.all_keys()}
        assert keys <= bucket, (model_id, sorted(keys - bucket)[:4])
        # and the bucket holds no subject the registry lacks
        files = {p for p in listed if re.search(r"(weights|metadata)_subject-\d+\.npy$", p)}
        assert files == keys, (model_id, sorted(files ^ keys)[:4])
        assert spec.subjects == _card(model_id)["parameters"]["subjects"]
        for plot in _card(model_id)["accuracy"].get("plots", []):
            folder = plot.removeprefix("s3://brain-encoding-response-generator/")
            assert folder != plot and any(p.startswith(folder) for p in bucket), (model_id, plot)
        checked[model_id] = len(keys)
    assert checked == {"fmri-nsd_fsaverage-vit_b_32": 16, "eeg-things_eeg_2-vit_b_32": 20}


def test_bucket_key_builders_on_the_real_paths(bucket):
    """The key builders invert the real object names (2-digit subjects, BERG's folder names)."""
    from berg.models.berg_catalogue import metadata_key, weights_key

    for p in bucket:
        m = re.search(r"/((?:encoding_models_weights/weights|metadata/metadata)_subject-(\d+)\.npy)$", p)
        if m:
            s = int(m.group(2))
            assert m.group(1) in (weights_key(s), metadata_key(s)), p


def test_nsd_design_cross_check_uses_the_real_trial_columns(stim_info_csv):
    """nsd_dataset(stim_info=...) refuses a design whose trials or shared images differ from the table."""
    from berg.training.datasets import _check_design_against_stim_info, read_nsd_stim_info

    path, _, _ = stim_info_csv
    info = read_nsd_stim_info(path)
    trial_image = np.full(30000, -1, np.int64)  # NSD: 40 sessions x 750 trials
    for nsd, reps in zip(info.nsd_id.tolist(), info.subject_trials(6)):
        trial_image[reps - 1] = nsd
    shared = set(info.nsd_id[info.shared1000].tolist())
    _check_design_against_stim_info(info, 6, trial_image, shared)  # consistent: no error
    t = int(info.subject_trials(6)[0, 1])
    trial_image[t - 1] += 1
    with pytest.raises(InvalidParameterError, match=rf"subject6 shows nsdId {info.nsd_id[0]} on trial {t}"):
        _check_design_against_stim_info(info, 6, trial_image, shared)
    with pytest.raises(InvalidParameterError, match=r"shared1000 marks \d+ images, nsd_expdesign.mat's sharedix"):
        _check_design_against_stim_info(info, 6, trial_image, shared - {int(info.nsd_id[0])})
