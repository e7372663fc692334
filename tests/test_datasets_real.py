"""BOLD5000 readers (berg.training.bold5000) on the REAL lists of the release (../shared/data/real/bold5000).

The lists of subjects CSI1-3 (3 x 5,254 trials) are read in every released form; image files with the
real names are generated (empty) in a temporary folder, and every trial must land on its image. See
../shared/data/real/SOURCES.md for where each file comes from.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from berg.errors import InvalidParameterError
from berg.training import bold5000 as b5k
from berg.training.datasets import read_dataset, write_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = SHARED / "data" / "real" / "bold5000"
LISTS = REAL / "presentation_lists"
EVENTS = REAL / "sample_events"
SUBJECTS = (1, 2, 3)
N_TRIALS, N_IMAGES, N_REPEATED, N_MARKED = 5254, 4916, 113, 338

pytestmark = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"{SHARED} (the real release files) is absent: real-format tests need it"
)


def _imgnames(s: int) -> list[str]:
    return (REAL / "imgnames" / f"sub-CSI{s}_imgnames.txt").read_text().splitlines()


def _raw_lines(s: int) -> list[str]:
    """The per-run lists concatenated in sorted path order, as they are (prefix kept)."""
    files = sorted((LISTS / f"Subj{s:02d}").glob("Sess*/*.txt"))
    return [ln for f in files for ln in f.read_text().splitlines()]


@pytest.fixture(scope="module")
def trials():
    return {s: b5k.read_presentation_lists(LISTS, s) for s in SUBJECTS}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Empty image files with the real names, sorted into the release's COCO/ImageNet/Scene folders."""
    root = tmp_path_factory.mktemp("b5k") / "Presented_Stimuli"
    names = {n for s in SUBJECTS for n in _imgnames(s)}
    for n in names:
        sub = "COCO" if n.startswith("COCO_") else "ImageNet" if n.endswith(".JPEG") else "Scene"
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / n).touch()
    return root


def _trial_mat(path: Path, n: int) -> None:
    """An ROI file whose rows say their own trial index (LHPPA: t, RHLOC: -t)."""
    import scipy.io

    t = np.arange(n, dtype=np.float64)[:, None]
    scipy.io.savemat(path, {"LHPPA": t, "RHLOC": -t})


def _assert_every_trial_on_its_image(ds, subject, names, *, col=None, neg=None):
    """Every trial index appears exactly once, in the row of the image the trial showed.

    ``col`` is the output holding the trial index (default: LHPPA's), ``neg`` the one holding minus it.
    """
    sd = ds.subjects[subject]
    if col is None:
        col, neg = int(sd.rois["LHPPA"][0]), int(sd.rois["RHLOC"][0])
    r = np.asarray(sd.responses)
    seen = []
    for i, path in enumerate(ds.stimuli):
        got = r[i, :, col]
        got = np.rint(got[~np.isnan(got)]).astype(int)
        assert got.size and all(names[t] == Path(path).name for t in got), (path, got)
        if neg is not None:  # both ROIs' columns on the same trials
            np.testing.assert_array_equal(r[i, : got.size, neg], -got)
        seen.extend(got.tolist())
    assert sorted(seen) == list(range(len(names)))


# ------------------------------------------------------------------------------- list forms


@pytest.mark.parametrize("s", SUBJECTS)
def test_per_run_lists_stripped_equal_imgnames_line_for_line(s, trials):
    raw = _raw_lines(s)
    assert len(raw) == N_TRIALS and sum(ln.startswith("rep_") for ln in raw) == N_MARKED
    stripped = [ln[4:] if ln.startswith("rep_") else ln for ln in raw]
    assert stripped == _imgnames(s)  # the releases' two forms, independently of berg
    t = trials[s]
    assert t.images == _imgnames(s)
    # berg's order is the sorted path order, and sessions/runs come from the folder and file names
    assert t.sources == [str(p) for p in sorted((LISTS / f"Subj{s:02d}").glob("Sess*/*.txt"))]
    assert t.sessions() == list(range(1, 16))
    per_run = Counter(zip(t.session.tolist(), t.run.tolist()))
    assert set(per_run.values()) == {b5k.TRIALS_PER_RUN}
    assert {max(r for ss, r in per_run if ss == ses) for ses in range(1, 16)} <= {9, 10}
    np.testing.assert_array_equal(t.marked, [ln.startswith("rep_") for ln in raw])


@pytest.mark.parametrize("s", SUBJECTS)
def test_rep_marks_the_repeated_set_not_a_later_showing(s, trials):
    t = trials[s]
    counts = Counter(t.images)
    rep = t.repeated_images()
    assert len(set(t.images)) == N_IMAGES and len(rep) == N_REPEATED
    # an image marked on one showing is in the repeated set, and the repeated set is what is shown > once
    assert set(rep) == {im for im, m in zip(t.images, t.marked) if m} == {im for im, c in counts.items() if c > 1}
    unmarked = Counter(im for im, m in zip(t.images, t.marked) if not m)
    assert all(unmarked[im] == 1 for im in rep)  # one unmarked showing each
    first = {}
    for im, m in zip(t.images, t.marked):
        first.setdefault(im, m)
    assert sum(first[im] for im in rep) > 0  # the first showing can be the marked one
    flags = t.repeated_set
    for im in rep:
        assert all(flags[i] for i, x in enumerate(t.images) if x == im)
    assert flags.sum() == sum(counts[im] for im in rep)
    # a list without markers (imgnames) gives the same repeated set from the counts
    plain = b5k.read_stim_list(REAL / "imgnames" / f"sub-CSI{s}_imgnames.txt")
    assert not plain.has_marks and plain.repeated_images() == rep


def test_real_image_name_forms(trials):
    names = set(trials[1].images)
    assert {Path(n).suffix for n in names} == {".jpg", ".JPEG", ".jpeg"}
    scenes = [n for n in names if not n.startswith("COCO_") and not n.endswith(".JPEG")]
    assert any(any(c.isdigit() for c in Path(n).stem) for n in scenes)
    assert any(not any(c.isdigit() for c in Path(n).stem) for n in scenes)


# --------------------------------------------------------------------- every trial on its image


@pytest.mark.parametrize("s", SUBJECTS)
def test_every_trial_lands_on_its_image(s, image_dir, tmp_path, trials):
    names = _imgnames(s)
    _trial_mat(tmp_path / f"CSI{s}_ROIs_TR34.mat", N_TRIALS)
    release1 = tmp_path / f"CSI{s:02d}_stim_lists.txt"  # the release-1 form: one file, prefixes kept
    release1.write_text("\n".join(_raw_lines(s)) + "\n")
    results = {}
    for form, source in {
        "per-run lists": LISTS,
        "release-1 list": release1,
        "imgnames": REAL / "imgnames" / f"sub-CSI{s}_imgnames.txt",
        "trials": trials[s],
    }.items():
        ds = b5k.bold5000_roi_dataset(tmp_path / f"CSI{s}_ROIs_TR34.mat", source, image_dir, s)
        assert len(ds.ids) == N_IMAGES and all(not i.startswith("rep_") for i in ds.ids), form
        _assert_every_trial_on_its_image(ds, s, names)
        assert {ds.ids[i] for i in ds.indices("test")} == set(trials[s].repeated_images()), form
        results[form] = ds
    base = results["per-run lists"]
    for form, ds in results.items():
        assert ds.ids == base.ids and ds.stimuli == base.stimuli, form
        np.testing.assert_array_equal(ds.subjects[s].responses, base.subjects[s].responses)
    if s == 1:  # the written dataset keeps the image paths and the rows
        back = read_dataset(write_dataset(tmp_path / "b.h5", base), checksum=False)
        assert back.stimuli == base.stimuli
        np.testing.assert_array_equal(np.asarray(back.subjects[s].responses), base.subjects[s].responses)


def test_unstripped_names_are_not_files(image_dir):
    """Without stripping ``rep_`` the lookup fails, naming the list, the count and the cause."""
    raw = _raw_lines(1)
    with pytest.raises(InvalidParameterError) as err:
        b5k.resolve_images(raw, image_dir, list_file="Subj01 lists")
    msg = str(err.value)
    assert f"{N_REPEATED} of {N_IMAGES + N_REPEATED} images listed in Subj01 lists not found" in msg
    assert "rep_ prefix" in msg and "Presented_Stimuli" in msg
    stripped = [b5k.strip_rep(n)[0] for n in raw]
    assert len(b5k.resolve_images(stripped, image_dir)) == N_IMAGES


def test_missing_and_ambiguous_images_name_the_file_and_the_fix(tmp_path):
    names = _imgnames(2)
    victim = next(n for n in names if n.endswith(".jpeg"))
    some = [*names[:40], victim]
    folder = tmp_path / "Scene_Stimuli" / "Presented_Stimuli"
    folder.mkdir(parents=True)
    for n in some:
        (folder / (victim.upper() if n == victim else n)).touch()  # the victim with other letter case
    with pytest.raises(
        InvalidParameterError, match=rf"1 of {len(set(some))} images listed in L not found.*other letter"
    ):
        b5k.resolve_images(some, folder, list_file="L")
    (folder / victim.upper()).rename(folder / victim)
    assert b5k.resolve_images(some, folder)[victim] == folder / victim
    (folder.parent / "Original_Images").mkdir()
    (folder.parent / "Original_Images" / victim).touch()
    with pytest.raises(InvalidParameterError, match=rf"{victim!r}.*matches 2 files.*Original_Images"):
        b5k.resolve_images(some, folder.parent)


# ------------------------------------------------------------------------------ release layout


def _release(root: Path, image_dir: Path, subjects=SUBJECTS) -> None:
    """The release's folders: per-run lists named as in BOLD5000_Stimuli.zip, stim_lists, ROI files."""
    stim = root / "BOLD5000_Stimuli"
    (stim / "Scene_Stimuli").mkdir(parents=True)
    (stim / "Scene_Stimuli" / "Presented_Stimuli").symlink_to(image_dir, target_is_directory=True)
    (root / "BOLD5000_ROIs" / "ROIs" / "stim_lists").mkdir(parents=True)
    for s in subjects:
        for f in sorted((LISTS / f"Subj{s:02d}").glob("Sess*/*.txt")):
            ses, run = f.parent.name[4:], f.stem.split("_run")[1]
            dst = (
                stim / "Stimuli_Presentation_Lists" / f"CSI{s}" / f"CSI{s}_sess{ses}" / f"CSI{s}_sess{ses}_run{run}.txt"
            )
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
        (root / "BOLD5000_ROIs" / "ROIs" / "stim_lists" / f"CSI{s:02d}_stim_lists.txt").write_text(
            "\n".join(_raw_lines(s)) + "\n"
        )
        mat = root / "BOLD5000_ROIs" / "ROIs" / f"CSI{s}" / "mat"
        mat.mkdir(parents=True)
        _trial_mat(mat / f"CSI{s}_ROIs_TR34.mat", N_TRIALS)


def test_release_folder_reads_both_list_forms_and_refuses_disagreeing_ones(image_dir, tmp_path, trials):
    _release(tmp_path, image_dir)
    ds = b5k.bold5000_release_dataset(tmp_path, SUBJECTS)
    union = {n for s in SUBJECTS for n in _imgnames(s)}
    assert set(ds.ids) == union and not any(i.startswith("rep_") for i in ds.ids)
    for s in SUBJECTS:
        sub = b5k.bold5000_roi_dataset(
            tmp_path / f"BOLD5000_ROIs/ROIs/CSI{s}/mat/CSI{s}_ROIs_TR34.mat",
            b5k.find_subject_trials(tmp_path, s),
            image_dir,
            s,
        )
        rows = [ds.ids.index(i) for i in sub.ids]
        r = np.asarray(ds.subjects[s].responses)[rows, : sub.subjects[s].responses.shape[1]]
        np.testing.assert_array_equal(r, sub.subjects[s].responses)
        t = b5k.find_subject_trials(tmp_path, s)
        assert t.images == _imgnames(s) and t.sessions() == list(range(1, 16))  # per-run form, with sessions
    test = {i for s in SUBJECTS for i in trials[s].repeated_images()}
    assert {ds.ids[i] for i in ds.indices("test")} == test
    # two list forms that disagree: the error names both and what to do
    lst = tmp_path / "BOLD5000_ROIs/ROIs/stim_lists/CSI02_stim_lists.txt"
    lines = lst.read_text().splitlines()
    lines[10], lines[11] = lines[11], lines[10]
    lst.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        InvalidParameterError, match=r"ambiguous trial order for CSI2: .*CSI02_stim_lists.txt.*trial 11"
    ):
        b5k.find_subject_trials(tmp_path, 2)


def test_presentation_list_errors(tmp_path):
    subj = tmp_path / "Stimuli_Presentation_Lists" / "CSI1"
    for ses, runs in ((1, (1, 2, 3)), (2, (1, 3))):
        for r in runs:
            src = LISTS / "Subj01" / f"Sess{ses:02d}" / f"Subj01_sess{ses:02d}_run{r:02d}.txt"
            dst = subj / f"CSI1_sess{ses:02d}" / f"CSI1_sess{ses:02d}_run{r:02d}.txt"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    with pytest.raises(InvalidParameterError, match=r"CSI1_sess02: run\(s\) \[2\] missing"):
        b5k.read_presentation_lists(tmp_path, 1)
    (subj / "CSI1_sess02" / "CSI1_sess02_run03.txt").unlink()
    got = b5k.read_presentation_lists(tmp_path, 1)
    assert len(got) == 4 * 37 and got.run.tolist()[-37:] == [1] * 37
    with pytest.raises(InvalidParameterError, match="no presentation lists of subject 2.*CSI2 or Subj02"):
        b5k.read_presentation_lists(tmp_path, 2)
    short = subj / "CSI1_sess01" / "CSI1_sess01_run02.txt"
    short.write_text("\n".join(short.read_text().splitlines()[:36]) + "\n")
    with pytest.raises(InvalidParameterError, match=r"run02.txt lists 36 trials; every BOLD5000 run has 37"):
        b5k.read_presentation_lists(tmp_path, 1)
    short.write_text("a.jpg\n\nb.jpg\n")
    with pytest.raises(InvalidParameterError, match=r"blank line\(s\) \[2\]"):
        b5k.read_stim_list(short)


# ------------------------------------------------------------------------------------ events


def test_sample_events_files_parse_and_match_the_presentation_lists(trials):
    files = b5k.events_files(EVENTS, 1)
    assert [(ses, run) for ses, run, _ in files] == [(1, r) for r in range(1, 11)]  # numeric, not text order
    first_session = trials[1].select(trials[1].session == 1)
    for _, run, path in files:
        ev = b5k.read_events(path)
        assert list(ev.columns) == list(b5k.EVENTS_COLUMNS)  # 11 named + the unnamed 12th (RT)
        assert path.read_text().splitlines()[0].endswith("Response\t")
        assert len(ev.trials) == b5k.TRIALS_PER_RUN
        assert not any(n.startswith("rep_") for n in ev.columns["ImgName"])
        assert set(ev.columns["ImgType"]) <= {"coco", "imagenet", "scenes", "rep_coco", "rep_imagenet", "rep_scenes"}
        lst = first_session.select(first_session.run == run)
        assert ev.trials.images == lst.images
        np.testing.assert_array_equal(ev.trials.marked, lst.marked)
        np.testing.assert_array_equal(ev.trials.run, run)
        rt = ev.column("RT")
        assert rt.shape == (37,) and np.all(rt >= 0)
        np.testing.assert_allclose(ev.column("onset"), ev.column("StimOn(s)"))
    all_runs = b5k.bold5000_trials(EVENTS, 1)
    assert all_runs.images == first_session.images
    np.testing.assert_array_equal(all_runs.marked, first_session.marked)
    kinds = [k for _, _, p in files for k in b5k.read_events(p).columns["ImgType"]]
    np.testing.assert_array_equal(all_runs.marked, [k.startswith("rep_") for k in kinds])


def test_events_errors(tmp_path):
    bad = tmp_path / "sub-1_ses-1_run1_5000scenes.tsv"
    bad.write_text("onset\tImgName\n1.0\tx.jpg\n")
    with pytest.raises(InvalidParameterError, match="no 'ImgType' column"):
        b5k.read_events(bad)
    bad.write_text("onset\tImgName\tImgType\t\n1.0\tx.jpg\tcoco\t0.5\n2.0\tx.jpg\n")
    with pytest.raises(InvalidParameterError, match=r"line\(s\) \[3\] have not 4"):
        b5k.read_events(bad)


# --------------------------------------------------------------------------- GLMsingle betas


def _betas(folder: Path, t, version="TYPED-FITHRF-GLMDENOISE-RR", grid=(3, 2, 2), drop=None):
    """One 4-D NIfTI per session in the release's naming; voxel v of trial k holds k + v/100."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nv = int(np.prod(grid))
    for ses in t.sessions():
        idx = np.flatnonzero(t.session == ses)
        if drop == ses:
            idx = idx[:-1]
        data = (idx[None, :] + np.arange(nv)[:, None] / 100.0).reshape(*grid, idx.size).astype(np.float32)
        nib.save(nib.Nifti1Image(data, affine), folder / f"CSI1_GLMbetas-{version}_ses-{ses:02d}.nii.gz")


def test_glmsingle_betas_land_on_their_images(trials, image_dir, tmp_path):
    t = trials[1]
    names = _imgnames(1)
    _betas(tmp_path / "betas", t)
    _betas(tmp_path / "betas" / "other", t, version="TYPEC-FITHRF-GLMDENOISE", grid=(2, 2, 2))  # must be ignored
    files = b5k.glmsingle_files(tmp_path / "betas", 1)
    assert list(files) == list(range(1, 16))
    for source in (LISTS, REAL / "imgnames" / "sub-CSI1_imgnames.txt"):  # sessions from folders, or from file lengths
        ds = b5k.bold5000_glmsingle_dataset(tmp_path / "betas", source, image_dir, 1, zscore=False)
        assert ds.grid_shape == (3, 2, 2) and ds.affine[0, 0] == 2.0 and ds.subjects[1].voxel_ijk.shape == (12, 3)
        r = np.asarray(ds.subjects[1].responses)
        d = r[:, :, 5] - r[:, :, 0]
        np.testing.assert_allclose(d[~np.isnan(d)], 0.05, atol=2e-3)  # voxel order kept (C order, as argwhere)
        _assert_every_trial_on_its_image(ds, 1, names, col=0)  # voxel 0 holds the trial index
        assert {ds.ids[i] for i in ds.indices("test")} == set(t.repeated_images())
    part = b5k.bold5000_glmsingle_dataset(tmp_path / "betas", LISTS, image_dir, 1, sessions=[3, 2], zscore=True)
    keep = np.isin(t.session, [2, 3])
    assert set(part.ids) == {n for n, k in zip(names, keep) if k}
    z = np.asarray(part.subjects[1].responses)
    assert np.nanmax(np.abs(z)) < 3.0 and np.isfinite(z[~np.isnan(z)]).all()
    mask = np.zeros((3, 2, 2), bool)
    mask[0, 1, 1] = mask[2, 0, 0] = True
    m = b5k.bold5000_glmsingle_dataset(
        tmp_path / "betas",
        LISTS,
        image_dir,
        1,
        sessions=[1],
        mask=mask,
        rois={"one": mask & (np.arange(12) < 6).reshape(3, 2, 2)},
    )
    assert m.subjects[1].voxel_ijk.tolist() == [[0, 1, 1], [2, 0, 0]] and m.subjects[1].rois["one"].tolist() == [0]
    assert m.subjects[1].rois["mask"].tolist() == [0, 1]


def test_glmsingle_errors_name_the_file(trials, image_dir, tmp_path):
    t = trials[1]
    _betas(tmp_path / "b", t, drop=4)
    n4 = int((t.session == 4).sum())
    with pytest.raises(
        InvalidParameterError, match=rf"ses-04.nii.gz holds {n4 - 1} trials, .* lists {n4} for session 4"
    ):
        b5k.bold5000_glmsingle_dataset(tmp_path / "b", LISTS, image_dir, 1)
    with pytest.raises(InvalidParameterError, match=r"hold 5253 trials, .*imgnames.txt lists 5254"):
        b5k.bold5000_glmsingle_dataset(tmp_path / "b", REAL / "imgnames" / "sub-CSI1_imgnames.txt", image_dir, 1)
    with pytest.raises(InvalidParameterError, match=r"no CSI1_GLMbetas-TYPEA-ASSUMEHRF_ses-XX.*TYPED-FITHRF"):
        b5k.glmsingle_files(tmp_path / "b", 1, "TYPEA-ASSUMEHRF")
    with pytest.raises(InvalidParameterError, match=r"sessions \[16\] of CSI1 have no betas file"):
        b5k.bold5000_glmsingle_dataset(tmp_path / "b", LISTS, image_dir, 1, sessions=[16])
