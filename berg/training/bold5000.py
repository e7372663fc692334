"""BOLD5000 (Chang et al. 2019) read as released: trial lists, events files, ROI responses, GLMsingle betas.

Every reader here was written against the releases' own files and code, and the tests in
``tests/test_datasets_real.py`` run them on the real lists of subjects CSI1-3:

* **Per-run presentation lists** (``BOLD5000_Stimuli/Stimuli_Presentation_Lists/<subject>/<session>/...
  _runRR.txt``; in the scanning scripts' repository ``Subject_Img_Lists/SubjNN/SessMM/SubjNN_sessMM_runRR.txt``):
  37 image names per run. Images of the repeated set carry a ``rep_`` prefix on *some* of their showings:
  every repeated image has exactly one unprefixed showing, and that one can come after a prefixed one, so
  the prefix means "belongs to the repeated set", not "a later repeat". Subject folders are ``CSI1``... in
  the release (MinD-Vis's and other public loaders list ``Stimuli_Presentation_Lists/CSI1``) and ``Subj01``...
  in the scripts' repository; both are accepted. Sources: nchang430/BOLD5000-Scripts
  @e62179922645ca537252dd98c1edabadef6a4d31 (``Subject_Img_Lists/``, ``ScenesEventRelated.m``:
  ``imgType = cur_img_types_array(trialNum) % name with rep``).
* **Release-1 stimulus lists** ``BOLD5000_ROIs/ROIs/stim_lists/CSI0N_stim_lists.txt``: one line per trial
  (5,254 for CSI1-3), the same names and prefixes as the per-run lists concatenated (public loaders of the
  ROI release drop the ``rep_`` lines to keep 4,916 unique images, e.g. the "delirium" project's tests).
  Line ``i`` is row ``i`` of ``ROIs/CSIN/mat/CSIN_ROIs_TR*.mat`` (figshare README of release 1,
  https://ndownloader.figshare.com/files/12965441).
* **Per-subject image lists** ``sub-CSIN_imgnames.txt``: the same trials with the prefix stripped
  (tarrlab/BOLD5000-GLMs @8d087443ddc88262a85bcb8a344611d0f44340f3, ``notebooks/stimlists/``). They carry
  no repeated-set marker; the repeated set is then the images shown more than once.
* **Events files** (pre-BIDS ``sub-1_ses-1_run1_5000scenes.tsv`` of the scanning scripts, BIDS
  ``sub-CSI1_ses-01_task-5000scenes_run-01_events.tsv`` on OpenNeuro ds001499): tab-separated, a header of
  11 names (``onset duration Subj Sess Run Trial ImgName ImgType StimOn(s) StimOff(s) Response``) and a
  trailing tab: the 12th value of every row, the response time, has no name (``ScenesEventRelated.m`` writes
  ``respTime`` there); berg names it ``RT``. ``ImgName`` has no prefix; ``ImgType`` carries it (``coco``,
  ``imagenet``, ``scenes`` or ``rep_coco``, ``rep_imagenet``, ``rep_scenes``).
* **Image files** (``BOLD5000_Stimuli/Scene_Stimuli/Presented_Stimuli/{COCO,ImageNet,Scene}``): names as in
  the lists without the prefix: ``COCO_train2014_000000420713.jpg``, ``n01930112_19568.JPEG``, scene names
  with or without digits (``concert5.jpg``, ``highway.jpg``) and a few ``.jpeg``. ``Scene_Stimuli`` also holds
  ``Original_Images`` with the same names, so an image folder above ``Presented_Stimuli`` is ambiguous.
* **Release 2.0 GLMsingle betas** (https://github.com/BOLD5000-dataset/BOLD5000 @cfe05443, README "Summary
  of data versions"): one ``CSIX_GLMbetas-<VERSION>_ses-XX.nii.gz`` per session, ``(X, Y, Z, n_trials)`` in
  percent signal change, trials in presentation order (37 per run; ``save_BOLD5000_session_niftis.m`` of
  tarrlab/BOLD5000-GLMs cuts the sessions out of the GLM's chronological trial axis); the README recommends
  ``TYPED-FITHRF-GLMDENOISE-RR`` and z-scoring each voxel within each session. Volumes are (71, 89, 72),
  (72, 92, 70), (72, 88, 67), (70, 89, 70) for CSI1-4, so each subject is its own dataset.

Counts (website and README): CSI1-3 saw 5,254 trials in 15 sessions (9 or 10 runs of 37), 4,916 distinct
images, of which 113 form the repeated set; CSI4 completed 9 sessions (3,108 trials).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import InvalidParameterError

__all__ = [
    "REP_PREFIX",
    "TRIALS_PER_RUN",
    "BOLD5000_ROIS",
    "BOLD5000_TRS",
    "GLMSINGLE_VERSIONS",
    "EVENTS_COLUMNS",
    "Bold5000Trials",
    "Bold5000Events",
    "strip_rep",
    "read_stim_list",
    "presentation_list_files",
    "read_presentation_lists",
    "read_events",
    "events_files",
    "read_events_dir",
    "bold5000_trials",
    "find_subject_trials",
    "index_images",
    "resolve_images",
    "glmsingle_files",
    "bold5000_roi_dataset",
    "bold5000_glmsingle_dataset",
    "bold5000_release_dataset",
]

log = logging.getLogger(__name__)

REP_PREFIX = "rep_"
TRIALS_PER_RUN = 37
BOLD5000_ROIS = ("LHEarlyVis", "RHEarlyVis", "LHLOC", "RHLOC", "LHOPA", "RHOPA", "LHPPA", "RHPPA", "LHRSC", "RHRSC")
BOLD5000_TRS = ("TR1", "TR2", "TR3", "TR4", "TR5", "TR34")
#: the four beta versions of release 2.0, spelled as in its README's naming scheme (``TYBEB`` sic)
GLMSINGLE_VERSIONS = ("TYPEA-ASSUMEHRF", "TYBEB-FITHRF", "TYPEC-FITHRF-GLMDENOISE", "TYPED-FITHRF-GLMDENOISE-RR")
#: events-file columns; the 12th is unnamed in the files (response time) and named ``RT`` here
EVENTS_COLUMNS = (
    "onset",
    "duration",
    "Subj",
    "Sess",
    "Run",
    "Trial",
    "ImgName",
    "ImgType",
    "StimOn(s)",
    "StimOff(s)",
    "Response",
    "RT",
)
_IMAGES_HINT = (
    "point image_dir at BOLD5000_Stimuli/Scene_Stimuli/Presented_Stimuli (its COCO/, ImageNet/ and Scene/ "
    "folders, from BOLD5000_Stimuli.zip of https://figshare.com/articles/dataset/BOLD5000/6459449)"
)


def strip_rep(name: str) -> tuple[str, bool]:
    """``("rep_X.jpg")`` -> ``("X.jpg", True)``; names without the prefix come back unchanged with ``False``."""
    if name.startswith(REP_PREFIX):
        return name[len(REP_PREFIX) :], True
    return name, False


@dataclass
class Bold5000Trials:
    """One subject's trials in presentation order.

    Attributes
    ----------
    images : list of str
        Image file name of every trial, ``rep_`` stripped.
    marked : (n_trials,) bool array
        Whether this showing carried the ``rep_`` marker (list line or ``ImgType``).
    session, run : (n_trials,) int arrays
        1-based session and run of every trial; 0 where the list form does not say (single list files).
    sources : list of str
        The files read, in order.
    has_marks : bool
        Whether the list form carries the repeated-set marker at all (``imgnames`` lists do not).
    """

    images: list[str]
    marked: np.ndarray
    session: np.ndarray
    run: np.ndarray
    sources: list[str] = field(default_factory=list)
    has_marks: bool = True

    def __post_init__(self) -> None:
        n = len(self.images)
        self.marked = np.asarray(self.marked, dtype=bool)
        self.session = np.asarray(self.session, dtype=np.int64)
        self.run = np.asarray(self.run, dtype=np.int64)
        if not (self.marked.shape == self.session.shape == self.run.shape == (n,)):
            raise InvalidParameterError(f"BOLD5000 trials: {n} images but marks/sessions/runs of other lengths")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def source(self) -> str:
        """The file (or first file) the trials were read from, for messages."""
        if not self.sources:
            return "<in memory>"
        return self.sources[0] if len(self.sources) == 1 else f"{self.sources[0]} (+{len(self.sources) - 1} more)"

    def repeated_images(self, min_repeats: int = 2) -> list[str]:
        """Images of the repeated set, in order of first showing.

        With markers: every image marked on at least one showing (the marker says "repeated set"; each
        repeated image also has one unmarked showing). Without markers: images shown ``min_repeats`` times
        or more.
        """
        if self.has_marks:
            marked = {im for im, m in zip(self.images, self.marked) if m}
            return [im for im in dict.fromkeys(self.images) if im in marked]
        counts = Counter(self.images)
        return [im for im in dict.fromkeys(self.images) if counts[im] >= min_repeats]

    @property
    def repeated_set(self) -> np.ndarray:
        """``(n_trials,)`` bool: the trial's image belongs to the repeated set (whichever showing is marked)."""
        rep = set(self.repeated_images())
        return np.array([im in rep for im in self.images], dtype=bool)

    def sessions(self) -> list[int]:
        """Sessions present, ascending (empty when the list form does not say)."""
        return sorted(int(s) for s in set(self.session.tolist()) if s > 0)

    def select(self, mask: np.ndarray) -> Bold5000Trials:
        """The trials where ``mask`` is true."""
        mask = np.asarray(mask, dtype=bool)
        return Bold5000Trials(
            [im for im, k in zip(self.images, mask) if k],
            self.marked[mask],
            self.session[mask],
            self.run[mask],
            list(self.sources),
            self.has_marks,
        )

    @classmethod
    def concat(cls, parts: Sequence[Bold5000Trials]) -> Bold5000Trials:
        """Trials of several files, one after the other."""
        if not parts:
            raise InvalidParameterError("no BOLD5000 trial lists to concatenate")
        return cls(
            [im for p in parts for im in p.images],
            np.concatenate([p.marked for p in parts]),
            np.concatenate([p.session for p in parts]),
            np.concatenate([p.run for p in parts]),
            [s for p in parts for s in p.sources],
            any(p.has_marks for p in parts),
        )


def _lines(path: Path) -> list[str]:
    """Non-empty lines of a list file; a blank line between names is refused (it would shift every row)."""
    if not path.is_file():
        raise InvalidParameterError(f"BOLD5000 list file not found: {path}")
    raw = path.read_text(encoding="utf-8-sig").splitlines()
    while raw and not raw[-1].strip():
        raw.pop()
    lines = [ln.strip() for ln in raw]
    blank = [i + 1 for i, ln in enumerate(lines) if not ln]
    if blank:
        raise InvalidParameterError(
            f"{path}: blank line(s) {blank[:5]} between image names; each line is one trial (one row of the "
            "responses), so remove the blank lines or use the file as released"
        )
    return lines


def read_stim_list(path: str | os.PathLike[str], *, session: int = 0, run: int = 0) -> Bold5000Trials:
    """One BOLD5000 list file: a release-1 ``CSI0N_stim_lists.txt``, a ``sub-CSIN_imgnames.txt`` or one run's list.

    Parameters
    ----------
    path : path
        Text file, one image name per trial (``rep_`` prefix allowed).
    session, run : int
        Recorded for every trial (0: unknown).

    Returns
    -------
    Bold5000Trials
        Names stripped of ``rep_``; ``has_marks`` is false when no line carries the prefix (an
        ``imgnames`` list), so the repeated set then falls back to the images shown more than once.
    """
    path = Path(path)
    parsed = [strip_rep(ln) for ln in _lines(path)]
    marked = np.array([m for _, m in parsed], dtype=bool)
    n = len(parsed)
    return Bold5000Trials(
        [name for name, _ in parsed],
        marked,
        np.full(n, session, np.int64),
        np.full(n, run, np.int64),
        [str(path)],
        bool(marked.any()),
    )


_SESSION_DIR = re.compile(r"(?i)ses(?:s|sion)?[-_]?0*(\d+)$")
_RUN_FILE = re.compile(r"(?i)run[-_]?0*(\d+)\.txt$")
_SESSION_IN_FILE = re.compile(r"(?i)ses(?:s|sion)?[-_]?0*(\d+)")


def _subject_dir_names(subject: int) -> set[str]:
    s = int(subject)
    return {f"csi{s}", f"csi{s:02d}", f"subj{s:02d}", f"subj{s}", f"sub-csi{s}", f"cs{s}"}


def _presentation_subject_dir(folder: Path, subject: int) -> Path:
    """The subject's folder of per-run lists under ``folder`` (or ``folder`` itself)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidParameterError(f"BOLD5000 presentation lists: {folder} is not a folder")
    if any(_SESSION_DIR.search(p.name) for p in folder.iterdir() if p.is_dir()):
        return folder  # already a subject folder (SessMM/ inside)
    names = _subject_dir_names(subject)
    bases = [folder, folder / "Stimuli_Presentation_Lists", folder / "BOLD5000_Stimuli" / "Stimuli_Presentation_Lists"]
    found = [p for b in bases if b.is_dir() for p in sorted(b.iterdir()) if p.is_dir() and p.name.lower() in names]
    if not found:
        raise InvalidParameterError(
            f"no presentation lists of subject {subject} under {folder}: expected a folder CSI{subject} or "
            f"Subj{int(subject):02d} (in Stimuli_Presentation_Lists/ of BOLD5000_Stimuli.zip) holding one folder per "
            "session with one <...>_runRR.txt per run"
        )
    if len(found) > 1:
        raise InvalidParameterError(
            f"subject {subject} has several presentation-list folders: {[str(p) for p in found]}; keep one (they "
            "would be two copies of the same trials) or pass the one you mean"
        )
    return found[0]


def presentation_list_files(folder: str | os.PathLike[str], subject: int) -> list[tuple[int, int, Path]]:
    """``(session, run, path)`` of a subject's per-run lists, in presentation order.

    Sessions and runs are sorted by number (never by string), runs must be 1..n in each session (a
    missing run would shift every later trial), and a file's own ``sessMM`` must match its folder.
    """
    subject_dir = _presentation_subject_dir(Path(folder), subject)
    out: list[tuple[int, int, Path]] = []
    for sdir in sorted(p for p in subject_dir.iterdir() if p.is_dir()):
        m = _SESSION_DIR.search(sdir.name)
        if not m:
            continue
        ses = int(m.group(1))
        runs: dict[int, Path] = {}
        for f in sorted(sdir.iterdir()):
            rm = _RUN_FILE.search(f.name)
            if not f.is_file() or not rm:
                continue
            fm = _SESSION_IN_FILE.search(f.name)
            if fm and int(fm.group(1)) != ses:
                raise InvalidParameterError(
                    f"{f} names session {int(fm.group(1))} but lies in {sdir.name} (session {ses}); move it to its "
                    "session's folder"
                )
            run = int(rm.group(1))
            if run in runs:
                raise InvalidParameterError(f"run {run} of session {ses} listed twice: {runs[run]} and {f}")
            runs[run] = f
        if not runs:
            continue
        missing = sorted(set(range(1, max(runs) + 1)) - set(runs))
        if missing:
            raise InvalidParameterError(
                f"{sdir}: run(s) {missing} missing (found runs {sorted(runs)}); every run of a session is needed to "
                "keep the trials in order"
            )
        out.extend((ses, r, runs[r]) for r in sorted(runs))
    if not out:
        raise InvalidParameterError(f"{subject_dir}: no session folders with <...>_runRR.txt lists")
    out.sort(key=lambda t: (t[0], t[1]))
    return out


def read_presentation_lists(
    folder: str | os.PathLike[str], subject: int, *, trials_per_run: int | None = TRIALS_PER_RUN
) -> Bold5000Trials:
    """A subject's per-run presentation lists, concatenated in session and run order.

    Parameters
    ----------
    folder : path
        ``Stimuli_Presentation_Lists`` (or the folder above it, or the subject's own folder).
    subject : int
        CSI number (folder ``CSIn`` or ``Subj0n``).
    trials_per_run : int or None
        Expected lines per run (37 in BOLD5000; ``None`` accepts any).
    """
    parts = []
    for ses, run, path in presentation_list_files(folder, subject):
        part = read_stim_list(path, session=ses, run=run)
        if trials_per_run is not None and len(part) != trials_per_run:
            raise InvalidParameterError(
                f"{path} lists {len(part)} trials; every BOLD5000 run has {trials_per_run} (pass "
                "trials_per_run=None to accept it as it is)"
            )
        parts.append(part)
    return Bold5000Trials.concat(parts)


@dataclass
class Bold5000Events:
    """One events file: the trials and every column as text (``RT`` for the unnamed 12th)."""

    trials: Bold5000Trials
    columns: dict[str, list[str]]

    def column(self, name: str, dtype: Any = float) -> np.ndarray:
        """A column converted to ``dtype`` (raises naming the columns present)."""
        if name not in self.columns:
            raise InvalidParameterError(f"{self.trials.source} has no column {name!r}; columns: {list(self.columns)}")
        return np.asarray(self.columns[name], dtype=dtype)


def read_events(path: str | os.PathLike[str]) -> Bold5000Events:
    """A BOLD5000 events file (pre-BIDS ``..._5000scenes.tsv`` or BIDS ``..._events.tsv``).

    The header's trailing empty name (the unnamed 12th column, the response time) becomes ``RT``. The
    repeated-set marker is read from ``ImgType`` (``rep_coco`` ...) and, should a file carry it there, from
    ``ImgName``; names are returned stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidParameterError(f"BOLD5000 events file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if any(c.strip() for c in r)]
    if not rows:
        raise InvalidParameterError(f"{path} is empty; expected a header ({' '.join(EVENTS_COLUMNS[:11])}) and rows")
    header = [h.strip() for h in rows[0]]
    width = max(len(r) for r in rows[1:]) if len(rows) > 1 else len(header)
    while header and not header[-1] and len(header) > width:
        header.pop()
    header += [""] * (width - len(header))
    unnamed = [i for i, h in enumerate(header) if not h]
    if unnamed == [len(header) - 1] and "RT" not in header:
        header[-1] = "RT"  # ScenesEventRelated.m writes respTime under no name
    elif unnamed:
        raise InvalidParameterError(f"{path}: unnamed column(s) at {unnamed} in the header {rows[0]}")
    for need in ("ImgName", "ImgType"):
        if need not in header:
            raise InvalidParameterError(f"{path}: no {need!r} column; header: {header}")
    body = rows[1:]
    bad = [i + 2 for i, r in enumerate(body) if len(r) != len(header)]
    if bad:
        raise InvalidParameterError(f"{path}: line(s) {bad[:5]} have not {len(header)} tab-separated values")
    columns = {h: [r[i].strip() for r in body] for i, h in enumerate(header)}
    names, marks = [], []
    for name, kind in zip(columns["ImgName"], columns["ImgType"]):
        name, m1 = strip_rep(name)
        names.append(name)
        marks.append(m1 or kind.startswith(REP_PREFIX))

    def ints(col: str) -> np.ndarray:
        if col not in columns:
            return np.zeros(len(body), np.int64)
        try:
            return np.asarray([int(float(v)) for v in columns[col]], dtype=np.int64)
        except ValueError as exc:
            raise InvalidParameterError(f"{path}: column {col!r} is not numeric ({exc})") from exc

    trials = Bold5000Trials(names, np.asarray(marks, bool), ints("Sess"), ints("Run"), [str(path)], True)
    return Bold5000Events(trials, columns)


_EVENTS_NAME = re.compile(
    r"(?i)^sub-(?:csi)?0*(\d+)_ses-0*(\d+)_(?:task-5000scenes_)?run-?0*(\d+)(?:_5000scenes|_events)\.tsv$"
)


def events_files(folder: str | os.PathLike[str], subject: int) -> list[tuple[int, int, Path]]:
    """``(session, run, path)`` of a subject's 5000-scenes events files under ``folder``, in numeric order.

    Numeric order matters: the pre-BIDS names are not zero-padded (``run10`` sorts before ``run2`` as text).
    Localizer runs are left out.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidParameterError(f"BOLD5000 events: {folder} is not a folder")
    out = []
    for p in folder.rglob("*.tsv"):
        m = _EVENTS_NAME.match(p.name)
        if m and int(m.group(1)) == int(subject):
            out.append((int(m.group(2)), int(m.group(3)), p))
    if not out:
        raise InvalidParameterError(
            f"no 5000-scenes events files of subject {subject} under {folder} (sub-CSI{subject}_ses-XX_task-5000scenes"
            f"_run-XX_events.tsv or sub-{subject}_ses-X_runX_5000scenes.tsv)"
        )
    out.sort(key=lambda t: (t[0], t[1]))
    seen = Counter((s, r) for s, r, _ in out)
    dup = [k for k, c in seen.items() if c > 1]
    if dup:
        raise InvalidParameterError(
            f"session/run {dup[:3]} of subject {subject} have several events files under {folder}: keep one copy"
        )
    return out


def read_events_dir(folder: str | os.PathLike[str], subject: int) -> Bold5000Trials:
    """All 5000-scenes events files of a subject, concatenated in session and run order."""
    parts = []
    for ses, run, path in events_files(folder, subject):
        tr = read_events(path).trials
        # files name their session/run; trust the file name where a column is absent
        tr.session = np.where(tr.session > 0, tr.session, ses)
        tr.run = np.where(tr.run > 0, tr.run, run)
        parts.append(tr)
    return Bold5000Trials.concat(parts)


def bold5000_trials(source: str | os.PathLike[str] | Bold5000Trials, subject: int | None = None) -> Bold5000Trials:
    """Read a subject's trials from any released list form.

    Parameters
    ----------
    source : path or Bold5000Trials
        Trials already read (returned as they are), a list file (``CSI0N_stim_lists.txt``, ``sub-CSIN_imgnames.txt``, a run's list), an events ``.tsv``,
        a presentation-lists folder (``Stimuli_Presentation_Lists`` or a subject's folder in it) or a folder
        of events files.
    subject : int, optional
        Needed for folders.
    """
    if isinstance(source, Bold5000Trials):
        return source
    source = Path(source)
    if source.is_file():
        return read_events(source).trials if source.suffix.lower() == ".tsv" else read_stim_list(source)
    if not source.is_dir():
        raise InvalidParameterError(f"BOLD5000 trial list not found: {source}")
    if subject is None:
        raise InvalidParameterError(f"{source} is a folder: pass subject= to say whose lists to read")
    if any(source.rglob("*.tsv")) and not any(source.rglob("*run*.txt")):
        return read_events_dir(source, subject)
    return read_presentation_lists(source, subject)


def _same_trials(a: Bold5000Trials, b: Bold5000Trials) -> str | None:
    """``None`` when two list forms name the same images in the same order, else where they first differ."""
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} trials"
    for i, (x, y) in enumerate(zip(a.images, b.images)):
        if x != y:
            return f"trial {i + 1}: {x!r} vs {y!r}"
    if a.has_marks and b.has_marks and not np.array_equal(a.marked, b.marked):
        i = int(np.flatnonzero(a.marked != b.marked)[0])
        return f"trial {i + 1}: the rep_ marker differs"
    return None


def find_subject_trials(root: str | os.PathLike[str], subject: int) -> Bold5000Trials:
    """A subject's trials from an unpacked release folder, whichever list forms it holds.

    Looks for the release-1 ``ROIs/stim_lists/CSI0N_stim_lists.txt`` and the per-run
    ``Stimuli_Presentation_Lists`` (also inside ``BOLD5000_ROIs/`` and ``BOLD5000_Stimuli/``). When both
    are there they must name the same trials (else the error names both files: the responses would be
    paired with one of two orders); the per-run lists are returned then, as they also give sessions and runs.
    """
    root = Path(root)
    lists = []
    for base in (root, root / "BOLD5000_ROIs"):
        p = base / "ROIs" / "stim_lists" / f"CSI{int(subject):02d}_stim_lists.txt"
        if p.is_file():
            lists.append(p)
    runs = None
    for base in (root, root / "BOLD5000_Stimuli"):
        if (base / "Stimuli_Presentation_Lists").is_dir():
            try:
                runs = read_presentation_lists(base / "Stimuli_Presentation_Lists", subject)
            except InvalidParameterError as exc:
                if "no presentation lists of subject" not in str(exc):
                    raise
            break
    if not lists and runs is None:
        raise InvalidParameterError(
            f"BOLD5000 release: no trial list of subject CSI{subject} under {root} (looked for "
            f"ROIs/stim_lists/CSI{int(subject):02d}_stim_lists.txt and Stimuli_Presentation_Lists/, also inside "
            "BOLD5000_ROIs/ and BOLD5000_Stimuli/); unpack BOLD5000_ROIs.zip or BOLD5000_Stimuli.zip from "
            "https://figshare.com/articles/dataset/BOLD5000/6459449 into that folder"
        )
    if len(lists) > 1:
        raise InvalidParameterError(f"subject CSI{subject} has two stimulus lists: {[str(p) for p in lists]}; keep one")
    if runs is None:
        return read_stim_list(lists[0])
    if lists:
        single = read_stim_list(lists[0])
        diff = _same_trials(single, runs)
        if diff:
            raise InvalidParameterError(
                f"ambiguous trial order for CSI{subject}: {lists[0]} and the per-run lists under "
                f"{runs.sources[0].rsplit(os.sep, 3)[0]} differ ({diff}); remove the one that does not belong to "
                "this release, or build the dataset with bold5000_roi_dataset(stim_list=...) naming the list to use"
            )
    return runs


# ------------------------------------------------------------------------------------------ images


def index_images(image_dir: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """File name -> every file of that name under ``image_dir`` (searched recursively)."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise InvalidParameterError(f"BOLD5000 image folder not found: {image_dir}; {_IMAGES_HINT}")
    out: dict[str, list[Path]] = {}
    for dirpath, _, files in os.walk(image_dir):
        for name in files:
            out.setdefault(name, []).append(Path(dirpath) / name)
    return out


def resolve_images(
    names: Sequence[str], image_dir: str | os.PathLike[str], *, list_file: str = "the trial list"
) -> dict[str, Path]:
    """Image file of every name (exact, case-sensitive match, as the release names them).

    Raises
    ------
    InvalidParameterError
        Naming the list, how many and which images are missing (and whether they exist with another case
        or still carry a ``rep_`` prefix), or which names match several files.
    """
    index = index_images(image_dir)
    missing = [n for n in dict.fromkeys(names) if n not in index]
    if missing:
        lower: dict[str, str] = {}
        for k in index:
            lower.setdefault(k.lower(), k)
        hints = []
        case = [(n, lower[n.lower()]) for n in missing if n.lower() in lower]
        if case:
            hints.append(
                f"{len(case)} exist with other letter case, e.g. {case[0][1]!r} for {case[0][0]!r} (rename them)"
            )
        if any(n.startswith(REP_PREFIX) for n in missing):
            hints.append(
                "names still carry the rep_ prefix (read the list with berg.training.bold5000.bold5000_trials)"
            )
        raise InvalidParameterError(
            f"{len(missing)} of {len(set(names))} images listed in {list_file} not found under {image_dir}, e.g. "
            f"{missing[:3]}; {'; '.join(hints) + '; ' if hints else ''}{_IMAGES_HINT}"
        )
    out = {}
    for n in dict.fromkeys(names):
        paths = index[n]
        if len(paths) > 1:
            raise InvalidParameterError(
                f"image {n!r} (listed in {list_file}) matches {len(paths)} files under {image_dir}: "
                f"{[str(p) for p in paths[:3]]}; {_IMAGES_HINT} (Scene_Stimuli also holds Original_Images with the "
                "same names)"
            )
        out[n] = paths[0]
    return out


def _split(ids: Sequence[str], test: set[str]) -> np.ndarray:
    return np.array(["test" if i in test else "train" for i in ids])


def _test_set(trials: Bold5000Trials, test_ids: Sequence[str] | None, min_test_repeats: int) -> set[str]:
    if test_ids is not None:
        return {strip_rep(str(t).strip())[0] for t in test_ids}
    return set(trials.repeated_images(min_test_repeats))


# ------------------------------------------------------------------------------------ ROI release 1


def bold5000_roi_dataset(
    roi_mat: str | os.PathLike[str],
    stim_list: str | os.PathLike[str] | Bold5000Trials,
    image_dir: str | os.PathLike[str],
    subject: Any,
    *,
    test_ids: Sequence[str] | None = None,
    min_test_repeats: int = 2,
):
    """BOLD5000 release 1.0 ROI responses (Chang et al. 2019) in berg's format (flat outputs).

    Parameters
    ----------
    roi_mat : path
        ``BOLD5000_ROIs/ROIs/CSIn/mat/CSIn_ROIs_TR<tr>.mat``: one (n_trials, n_voxels) matrix per ROI
        (names in :data:`BOLD5000_ROIS`).
    stim_list : path or Bold5000Trials
        The trials, in any released form (see :func:`bold5000_trials`): ``ROIs/stim_lists/CSI0n_stim_lists.txt``,
        the per-run ``Stimuli_Presentation_Lists``, ``sub-CSIn_imgnames.txt`` or the events files. Row ``i`` of
        the matrices is trial ``i``.
    image_dir : path
        Folder searched recursively for the images (``Scene_Stimuli/Presented_Stimuli``).
    subject : int or str
    test_ids : sequence of str, optional
        Test images (``rep_`` allowed). Default: the repeated set (images marked ``rep_`` on any showing; for
        lists without markers, images shown at least ``min_test_repeats`` times).

    Returns
    -------
    EncodingDataset
        One row per distinct image (ids: file names without ``rep_``), repeats in presentation order.

    Notes
    -----
    The ``.mat`` files are MATLAB v5 (``scipy.io.loadmat``) with the variables in :data:`BOLD5000_ROIS`
    as ``(n_trials, n_voxels)``; public loaders of the ROI release index row ``i`` with line ``i`` of the
    list (figshare README of release 1). TR34 is the mean of TRs 3 and 4 (the HRF peak).
    """
    import scipy.io

    from berg.training.datasets import EncodingDataset, SubjectData, trials_to_repeats

    subj = int(subject) if str(subject).isdigit() else None
    trials = bold5000_trials(stim_list, subj)
    mat = scipy.io.loadmat(roi_mat)
    names = [r for r in BOLD5000_ROIS if r in mat]
    if not names:
        raise InvalidParameterError(f"{roi_mat} has none of the ROI variables {list(BOLD5000_ROIS)}")
    blocks = [np.asarray(mat[r], dtype=np.float32) for r in names]
    if len(trials) != blocks[0].shape[0]:
        raise InvalidParameterError(
            f"{trials.source} lists {len(trials)} trials, {roi_mat} has {blocks[0].shape[0]} rows; use the list of "
            "the same subject and release"
        )
    ids, responses = trials_to_repeats(trials.images, np.concatenate(blocks, axis=1))
    files = resolve_images(ids, image_dir, list_file=trials.source)
    test = _test_set(trials, test_ids, min_test_repeats)
    bounds = np.cumsum([0] + [b.shape[1] for b in blocks])
    rois = {r: np.arange(bounds[j], bounds[j + 1]) for j, r in enumerate(names)}
    return EncodingDataset(
        name="bold5000",
        kind="image",
        stimuli=[str(files[i]) for i in ids],
        ids=list(ids),
        split=_split(ids, test),
        subjects={subject: SubjectData(responses, None, rois)},
    )


def _bold5000_find(root: Path, candidates: Sequence[str], what: str) -> Path:
    for rel in candidates:
        for base in (root, root / "BOLD5000_ROIs", root / "BOLD5000_Stimuli"):
            if (base / rel).exists():
                return base / rel
    raise InvalidParameterError(
        f"BOLD5000 release: {what} not found under {root} (looked for {list(candidates)}, also inside "
        "BOLD5000_ROIs/ and BOLD5000_Stimuli/); unpack BOLD5000_ROIs.zip and BOLD5000_Stimuli.zip from "
        "https://figshare.com/articles/dataset/BOLD5000/6459449 into that folder"
    )


def _read_repeated_list(root: Path) -> list[str] | None:
    try:
        rep = _bold5000_find(root, ["Scene_Stimuli/repeated_stimuli_113_list.txt"], "repeated_stimuli_113_list.txt")
    except InvalidParameterError:
        log.info("no repeated_stimuli_113_list.txt; the test split is the repeated set of the trial lists")
        return None
    return [strip_rep(ln)[0] for ln in _lines(rep)]


def bold5000_release_dataset(
    root: str | os.PathLike[str],
    subjects: Sequence[int] = (1, 2, 3),
    *,
    tr: str = "TR34",
    test_ids: Sequence[str] | None = None,
):
    """Several BOLD5000 subjects' ROI responses from an unpacked release 1 folder, in one berg dataset.

    ``root`` holds ``BOLD5000_ROIs/ROIs/...`` and ``BOLD5000_Stimuli/Scene_Stimuli/...`` (or their
    contents directly). Each subject's trials come from :func:`find_subject_trials` (release-1 stimulus list
    and/or per-run presentation lists, ``rep_`` stripped). Stimuli are the union of the subjects' images in
    order of first appearance; a subject's rows for images it never saw are NaN (the trainer leaves them
    out). The test split is ``repeated_stimuli_113_list.txt`` when present (else ``test_ids``, else the
    repeated set of each subject's lists).

    Parameters
    ----------
    root : path
    subjects : sequence of int
        CSI subject numbers (1-4; CSI4 has 9 of the 15 sessions).
    tr : {"TR1", "TR2", "TR3", "TR4", "TR5", "TR34"}
        Which of the released response versions (TR34: mean of TR 3 and 4).
    test_ids : sequence of str, optional
    """
    from berg.training.datasets import EncodingDataset, SubjectData

    root = Path(root)
    if tr not in BOLD5000_TRS:
        raise InvalidParameterError(f"tr={tr!r} unknown; valid: {list(BOLD5000_TRS)}")
    image_dir = _bold5000_find(root, ["Scene_Stimuli/Presented_Stimuli", "Presented_Stimuli"], "Presented_Stimuli/")
    if test_ids is None:
        test_ids = _read_repeated_list(root)
    parts = {}
    for s in subjects:
        mat = _bold5000_find(root, [f"ROIs/CSI{s}/mat/CSI{s}_ROIs_{tr}.mat"], f"the CSI{s} {tr} ROI file")
        parts[s] = bold5000_roi_dataset(mat, find_subject_trials(root, s), image_dir, s, test_ids=test_ids)
    ids: list[str] = list(dict.fromkeys(i for d in parts.values() for i in d.ids))
    row = {i: k for k, i in enumerate(ids)}
    paths = {i: p for d in parts.values() for i, p in zip(d.ids, d.stimuli)}
    reps = max(d.subjects[s].responses.shape[1] for s, d in parts.items())
    merged = {}
    for s, d in parts.items():
        src = d.subjects[s]
        out = np.full((len(ids), reps, src.n_outputs), np.nan, dtype=np.float32)
        out[[row[i] for i in d.ids], : src.responses.shape[1]] = src.responses
        merged[s] = SubjectData(out, None, src.rois)
    test = (
        {strip_rep(t)[0] for t in test_ids}
        if test_ids is not None
        else {i for d in parts.values() for i, t in zip(d.ids, d.split) if t == "test"}
    )
    return EncodingDataset(
        name="bold5000",
        kind="image",
        stimuli=[paths[i] for i in ids],
        ids=ids,
        split=_split(ids, test),
        subjects=merged,
    )


# ------------------------------------------------------------------------------ GLMsingle release 2.0

_GLM_NAME = re.compile(r"^CSI(\d+)_GLMbetas-(.+)_ses-(\d+)\.nii(?:\.gz)?$")


def glmsingle_files(
    betas_dir: str | os.PathLike[str], subject: int, version: str = "TYPED-FITHRF-GLMDENOISE-RR"
) -> dict[int, Path]:
    """Session number -> ``CSI<subject>_GLMbetas-<version>_ses-XX.nii.gz`` under ``betas_dir`` (recursive).

    Raises naming the versions and subjects found when none match.
    """
    betas_dir = Path(betas_dir)
    if not betas_dir.is_dir():
        raise InvalidParameterError(f"BOLD5000 GLMsingle betas folder not found: {betas_dir}")
    found: dict[int, Path] = {}
    seen: set[tuple[int, str]] = set()
    for p in betas_dir.rglob("CSI*_GLMbetas-*_ses-*.nii*"):
        m = _GLM_NAME.match(p.name)
        if not m:
            continue
        seen.add((int(m.group(1)), m.group(2)))
        if int(m.group(1)) == int(subject) and m.group(2) == version:
            ses = int(m.group(3))
            if ses in found:
                raise InvalidParameterError(f"session {ses} of CSI{subject} found twice: {found[ses]} and {p}")
            found[ses] = p
    if not found:
        raise InvalidParameterError(
            f"no CSI{subject}_GLMbetas-{version}_ses-XX.nii.gz under {betas_dir} (found subject/version pairs: "
            f"{sorted(seen) or 'none'}); download release 2.0 from https://github.com/BOLD5000-dataset/BOLD5000 "
            f"(versions: {list(GLMSINGLE_VERSIONS)}, TYPED recommended)"
        )
    return dict(sorted(found.items()))


def _mask_array(mask: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    import nibabel as nib

    if isinstance(mask, (str, os.PathLike)):
        arr = np.asarray(nib.load(os.fspath(mask)).dataobj)
    else:
        arr = np.asarray(mask)
    arr = np.squeeze(arr)
    if arr.shape != tuple(shape):
        raise InvalidParameterError(f"{what} has shape {arr.shape}; the betas' grid is {tuple(shape)}")
    return arr > 0 if arr.dtype != bool else arr


def bold5000_glmsingle_dataset(
    betas_dir: str | os.PathLike[str],
    stim_list: str | os.PathLike[str] | Bold5000Trials,
    image_dir: str | os.PathLike[str],
    subject: int,
    *,
    version: str = "TYPED-FITHRF-GLMDENOISE-RR",
    mask: Any = None,
    rois: Mapping[str, Any] | None = None,
    sessions: Sequence[int] | None = None,
    zscore: bool = True,
    test_ids: Sequence[str] | None = None,
    min_test_repeats: int = 2,
):
    """One subject's BOLD5000 release-2.0 GLMsingle betas in berg's format (volumetric outputs).

    Parameters
    ----------
    betas_dir : path
        Folder (searched recursively) with ``CSI<n>_GLMbetas-<version>_ses-XX.nii.gz``: one 4-D file per
        session, ``(X, Y, Z, n_trials)`` percent signal change, trials in presentation order.
    stim_list : path or Bold5000Trials
        The subject's trials in any released form (:func:`bold5000_trials`); its trials are cut into
        sessions in order, and where the form gives sessions (per-run lists, events) each file's trial count
        is checked against its session.
    image_dir : path
        Folder searched recursively for the images (``Scene_Stimuli/Presented_Stimuli``).
    subject : int
        CSI number.
    version : str
        Beta version (:data:`GLMSINGLE_VERSIONS`; ``TYPED-FITHRF-GLMDENOISE-RR`` recommended by the release).
    mask : path or bool array, optional
        Voxels to keep (a NIfTI on the betas' grid, values > 0, or an array). Default: voxels whose betas
        are finite and not constant in the first session read.
    rois : mapping, optional
        ROI name -> NIfTI path or array on the same grid; stored as indices into the kept voxels (ROI
        ``"mask"``: every kept voxel).
    sessions : sequence of int, optional
        Sessions to read (default: all files found). Trials of the other sessions are left out.
    zscore : bool
        z-score each voxel within each session, as the release's README recommends.
    test_ids, min_test_repeats
        As in :func:`bold5000_roi_dataset`.
    """
    import nibabel as nib

    from berg.training.datasets import EncodingDataset, SubjectData, _zscore_per_session, trials_to_repeats

    trials = bold5000_trials(stim_list, subject)
    files = glmsingle_files(betas_dir, subject, version)
    wanted = list(files) if sessions is None else [int(s) for s in sessions]
    absent = [s for s in wanted if s not in files]
    if not wanted:
        raise InvalidParameterError(f"sessions=[] selects nothing; pass some of {list(files)} or None for all")
    if absent:
        raise InvalidParameterError(f"sessions {absent} of CSI{subject} have no betas file; found {list(files)}")
    listed = trials.sessions()
    if listed and set(listed) != set(files):
        log.info("CSI%s: the list has sessions %s, the betas folder %s", subject, listed, list(files))
    wanted_set = set(wanted)
    parts: list[np.ndarray] = []
    rows: list[np.ndarray] = []  # trial indices of the response rows, session by session
    grid: tuple[int, ...] | None = None
    affine, inside = None, None
    start = 0
    for ses, path in files.items():
        img = nib.load(path)
        if len(img.shape) != 4:
            raise InvalidParameterError(f"{path} has shape {img.shape}; GLMsingle session betas are (X, Y, Z, trials)")
        n = int(img.shape[3])
        if listed:
            idx = np.flatnonzero(trials.session == ses)
            if idx.size != n:
                raise InvalidParameterError(
                    f"{path} holds {n} trials, {trials.source} lists {idx.size} for session {ses}; use the lists and "
                    "betas of the same subject"
                )
        else:  # the list does not say sessions: the files cut it in order
            idx = np.arange(start, start + n)
            if start + n > len(trials):
                raise InvalidParameterError(
                    f"the betas files up to {path.name} hold more trials than the {len(trials)} of {trials.source}"
                )
        start += n
        if ses not in wanted_set:
            continue
        if grid is None:
            grid, affine = tuple(int(v) for v in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)
        elif tuple(img.shape[:3]) != grid:
            raise InvalidParameterError(f"{path} is on a {img.shape[:3]} grid, the first session on {grid}")
        data = np.asarray(img.dataobj, dtype=np.float32)  # percent signal change (header scaling applied)
        if inside is None:
            if mask is not None:
                inside = _mask_array(mask, grid, "mask")
            else:
                inside = np.isfinite(data).all(axis=3) & (data.max(axis=3) != data.min(axis=3))
                log.info("CSI%s: %d voxels with finite, varying betas in session %d", subject, int(inside.sum()), ses)
        betas = data[inside].T  # (n_trials, n_voxels)
        del data
        parts.append(_zscore_per_session(betas) if zscore else betas)
        rows.append(idx)
        log.info("CSI%s session %d: %s", subject, ses, betas.shape)
    if not listed and start != len(trials):
        raise InvalidParameterError(
            f"the betas files hold {start} trials, {trials.source} lists {len(trials)}; use the lists and betas of the "
            "same subject (all sessions)"
        )
    kept_images = [trials.images[i] for i in np.concatenate(rows)]
    ids, responses = trials_to_repeats(kept_images, np.concatenate(parts))
    paths = resolve_images(ids, image_dir, list_file=trials.source)
    test = _test_set(trials, test_ids, min_test_repeats)
    roi_idx: dict[str, np.ndarray] = {"mask": np.arange(int(inside.sum()))}
    if rois:
        pos = np.full(grid, -1, np.int64)
        pos[inside] = np.arange(int(inside.sum()))
        for name, roi in rois.items():
            sel = pos[_mask_array(roi, grid, f"ROI {name!r}")]
            roi_idx[str(name)] = np.sort(sel[sel >= 0])
    return EncodingDataset(
        name=f"bold5000-glmsingle-CSI{subject}",
        kind="image",
        stimuli=[str(paths[i]) for i in ids],
        ids=list(ids),
        split=_split(ids, test),
        subjects={subject: SubjectData(responses, np.argwhere(inside).astype(np.int32), roi_idx)},
        grid_shape=grid,
        affine=affine,
    )
