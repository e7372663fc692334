"""The CLI and API items of issue 24 ("smaller ones"): each refused with one clear berg error, or handled.

- ``berg encode -o OUT`` refuses an existing OUT without ``--force`` (and leaves it untouched);
- SIGINT during ``berg encode`` leaves no output file and no temporary, only "berg: interrupted";
- an unknown or abbreviated global option is refused by name (``--of`` is not ``--offline``);
- ``--registry`` with broken YAML and odd globs in ``berg list`` are one line, never a traceback;
- ``min_frames='16'``, ``list_models(5)``, ``subject=[1, "2"]``, ``selection={"roi": None}`` and
  ``berg.run(None)`` are refused with a message that says what to pass instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import berg
from berg.cli import main
from berg.errors import InvalidParameterError, StimulusError
from berg.stimuli import load_stimuli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch):
    monkeypatch.delenv("BERG_REGISTRY", raising=False)
    monkeypatch.delenv("BERG_OFFLINE", raising=False)


def _one_line(err: str, *parts: str) -> None:
    assert err.startswith("berg: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, err


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from berg.testing import toy_model

    return toy_model(tmp_path_factory.mktemp("toy"), "volume", subjects=[1, 2], size=32)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"im{k}.png")
    return sorted(str(p) for p in folder.iterdir())


def _common(toy, tmp_path):
    return ["--berg-dir", str(toy.berg_dir), "--cache-dir", str(tmp_path / "cache"), "--registry", str(toy.registry)]


def _encode_argv(toy, tmp_path, images, out, *extra):
    return [
        *_common(toy, tmp_path),
        "--offline",
        "encode",
        toy.model_id,
        "--subject",
        "1",
        "--backbone-weights",
        "untrained",
        "--device",
        "cpu",
        "-q",
        *images,
        "-o",
        str(out),
        *extra,
    ]


# --------------------------------------------------------------------------- encode: existing output, SIGINT


@pytest.mark.parametrize("name", ["old.h5", "old.nii.gz"])
def test_encode_refuses_an_existing_output_without_force(toy, images, tmp_path, capsys, name):
    out = tmp_path / name
    out.write_bytes(b"earlier results the user keeps")
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    assert main(_encode_argv(toy, tmp_path, images, out)) == 2
    _one_line(capsys.readouterr().err, str(out), "exists", "--force")
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "nothing else written (no download, no temp)"


def test_encode_force_overwrites_with_valid_responses(toy, images, tmp_path, capsys):
    out = tmp_path / "r.h5"
    out.write_bytes(b"stale")
    assert main(_encode_argv(toy, tmp_path, images, out, "--force")) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (subject 1: 3 x ")
    with h5py.File(out) as f:
        r = f["sub-01/responses"][()]
    assert r.shape[0] == 3 and np.isfinite(r).all()


def test_encode_refuses_a_dangling_link_as_output(toy, images, tmp_path, capsys):
    out = tmp_path / "link.h5"
    out.symlink_to(tmp_path / "elsewhere.h5")
    assert main(_encode_argv(toy, tmp_path, images, out)) == 2
    _one_line(capsys.readouterr().err, "exists", "--force")
    assert not (tmp_path / "elsewhere.h5").exists()


def test_sigint_during_encode_leaves_no_partial_output(toy, images, tmp_path):
    """Interrupt `berg encode` at several moments: each time either no output at all or a complete one."""
    many = images * 40  # 120 stimuli: encoding takes a while, so most interrupts land mid-run
    env = dict(os.environ, BERG_QUIET="1", PYTHONUNBUFFERED="1")
    env.pop("BERG_REGISTRY", None)
    seen = set()
    for k, delay in enumerate((1.0, 2.5, 4.0, 6.0)):  # after the ~0.3 s import of berg.cli
        out = tmp_path / f"run{k}" / "r.h5"
        out.parent.mkdir()
        cmd = [sys.executable, "-m", "berg.cli", *_encode_argv(toy, tmp_path, many, out)]
        proc = subprocess.Popen(cmd, env=env, cwd=out.parent, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1]
        left = sorted(p.name for p in out.parent.iterdir())
        assert "Traceback" not in err, err
        if proc.returncode == -signal.SIGINT:  # ended by SIGINT, as a shell expects (its `$?` is 130)
            seen.add("interrupted")
            assert err.strip().endswith("berg: interrupted"), err
            assert left == [], f"an interrupted encode left {left}"
        else:  # it finished before the signal: the output is whole
            assert proc.returncode == 0, err
            seen.add("finished")
            assert left == ["r.h5"]
            with h5py.File(out) as f:
                assert f["sub-01/responses"].shape[0] == len(many)
    assert "interrupted" in seen, "no run was interrupted: the test proved nothing"


# --------------------------------------------------------------------------- global options, registry, list


@pytest.mark.parametrize(
    "argv, parts",
    [
        (["--of", "list"], ["'--of'", "--offline"]),  # an abbreviation used to mean --offline
        (["--cache", "/tmp/x", "list"], ["'--cache'", "--cache-dir"]),
        (["--bogus", "list"], ["'--bogus'", "global options"]),
        (["--bogus"], ["'--bogus'"]),
        (["-x", "list"], ["'-x'"]),
        (["--offline=1", "list"], ["--offline"]),
        (["--shard", "2", "list"], ["'--shard'", "after the command"]),
    ],
)
def test_unknown_global_option_is_refused_by_name(capsys, argv, parts):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    _one_line(capsys.readouterr().err, *parts)


def test_encode_options_are_not_abbreviated(toy, images, tmp_path, capsys):
    argv = _encode_argv(toy, tmp_path, images, tmp_path / "x.h5")
    argv[argv.index("-o")] = "--out"
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    _one_line(capsys.readouterr().err, "--out")
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("argv", [["-vq", "list", "fmri-*"], ["--cache-dir=/tmp/berg-cli-q", "-q", "list", "fmri-*"]])
def test_valid_global_options_still_parse(capsys, argv):
    assert main(argv) == 0
    assert "fmri-" in capsys.readouterr().out


BROKEN_YAML = {
    "unclosed flow": "models: [unclosed\n  x: {",
    "mapping in value": "a: b: c",
    "binary": "\x00\xff\xfe",
    "tab indent": "models:\n\tx: 1\n",
    "python tag": "models: !!python/object/apply:os.system ['true']\n",
    "anchors bomb": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nmodels: {fmri-bomb: *e}\n",
    "a list": "- 1\n- 2\n",
    "models is a list": "models: [a, b]\n",
    "entry is text": "models: {fmri-x: 'just text'}\n",
}


@pytest.mark.parametrize("command", [["list"], ["describe", "fmri-bmd-s3d"], ["encode", "x", "a.png", "-o", "o.h5"]])
@pytest.mark.parametrize("kind", sorted(BROKEN_YAML))
def test_registry_with_broken_yaml_is_one_line(tmp_path, capsys, command, kind):
    reg = tmp_path / "registry.yaml"
    reg.write_bytes(BROKEN_YAML[kind].encode("latin-1"))
    argv = ["--registry", str(reg), *command]
    if command[0] == "encode":
        argv += ["--subject", "1"]
    assert main(argv) == 2
    _one_line(capsys.readouterr().err, str(reg))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry.yaml"]


@pytest.mark.parametrize("pattern", ["[", "[!", "**/[", "fmri-[a", "[]]", "\\", "*" * 5000, "a\udcff"])
def test_odd_list_patterns_are_one_line_or_a_listing(capsys, pattern):
    status = main(["list", pattern])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if status == 0:  # a pattern that is a valid glob and matches: a normal listing
        assert out.startswith("ID ")
    else:
        # no match is status 1 (as grep), one line naming what is there
        assert status == 1 and err.startswith("berg: no model matches") and err.count("\n") == 1, err
        assert "available: " in err


# --------------------------------------------------------------------------- API: smaller cases


def test_min_frames_as_text_is_a_clear_error():
    clip = np.zeros((1, 4, 3, 8, 8), np.uint8)
    with pytest.raises(StimulusError, match=r"min_frames must be an integer >= 0, got str '16'; pass min_frames=16"):
        load_stimuli(clip, "video", min_frames="16")
    for bad in (16.5, True, -1, None):
        with pytest.raises(StimulusError, match="min_frames must be an integer"):
            load_stimuli(clip, "video", min_frames=bad)
    with pytest.raises(StimulusError, match="n_frames must be an integer >= 1 or None"):
        load_stimuli(clip, "video", n_frames="8")
    assert len(load_stimuli(clip, "video", min_frames=np.int64(4))) == 1


def test_list_models_takes_a_glob_string():
    with pytest.raises(InvalidParameterError, match="pattern must be a glob string such as 'fmri-\\*'"):
        berg.list_models(5)
    assert "fmri-bmd-s3d" in berg.list_models("fmri-*")


@pytest.mark.parametrize(
    "subject, part",
    [([1, "2"], "one kind per list"), (1.0, "subject 1.0 (float)"), ([True], "(bool)"), ([1, 1], "given twice")],
)
def test_subject_slips_are_refused(toy, subject, part):
    client = toy.client()
    with pytest.raises(InvalidParameterError) as info:
        client.get_encoding_model(toy.model_id, subject=subject, backbone_weights="untrained")
    assert part in str(info.value)
    assert "valid subjects: 1, 2" in str(info.value) or part == "given twice"


def test_homogeneous_subject_lists_still_work(toy):
    spec = toy.client().registry.get(toy.model_id)
    assert spec.validate_subjects([2, 1]) == [2, 1]
    assert spec.validate_subjects(["1", "2"]) == [1, 2]
    assert spec.validate_subjects(np.int64(2)) == [2]


@pytest.mark.parametrize("key", ["roi", "voxels"])
def test_selection_with_none_is_refused(toy, key):
    spec = toy.client().registry.get(toy.model_id)
    with pytest.raises(InvalidParameterError, match=rf"selection\['{key}'\] is None; leave the key out"):
        spec.validate_selection({key: None}, [1])


def test_roi_none_names_the_rois(toy):
    client = toy.client()
    with pytest.raises(InvalidParameterError, match="or name ROIs: A, B"):
        client.get_encoding_model(toy.model_id, subject=1, selection={"roi": None}, backbone_weights="untrained")


@pytest.mark.parametrize("plan", [None, 5, b"plan.yaml", ["a"]])
def test_run_needs_a_plan(plan):
    with pytest.raises(InvalidParameterError, match="berg.run takes an EncodePlan, a plan dict or the path"):
        berg.run(plan)
