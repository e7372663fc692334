"""The `berg` command line: help, list/describe, one-line errors before any I/O, plugins, and
encode/fetch end to end on the synthetic native model (checked against scikit-learn)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import h5py
import nibabel as nib
import numpy as np
import pytest

from berg import cli
from berg.cli import main
from berg.core.contract import BaseModelInterface
from berg.testing.sklearn_toy import GRID, MODEL_ID, N_OUT, ROIS, build

REAL = "fmri-bold5000-resnet18"


@pytest.fixture(autouse=True)
def _builtin_registry_only(monkeypatch):
    monkeypatch.delenv("BERG_REGISTRY", raising=False)
    monkeypatch.delenv("BERG_OFFLINE", raising=False)


def _one_line_error(err: str, *parts: str) -> None:
    assert err.startswith("berg: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    for p in parts:
        assert p in err, err


# --------------------------------------------------------------------------- help, list, describe


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("list", "describe", "fetch", "encode", "cache", "train", "berg encode"):
        assert command in out


def test_encode_help_documents_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["encode", "--help"])
    out = capsys.readouterr().out
    for opt in ("--subject", "--roi", "--device", "--batch-size", "-o OUT", "--backbone-weights", "INPUT"):
        assert opt in out


def test_version(capsys):
    import berg

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"berg {berg.__version__}"


@pytest.mark.parametrize(
    "pattern, glob, members, non_members",
    [
        (None, "*", ["fmri-bmd-s3d", REAL], []),
        ("fmri-*", "fmri-*", ["fmri-bmd-s3d", REAL], []),
        ("*s3d", "*s3d", ["fmri-bmd-s3d"], [REAL]),
        ("bold5000", "*bold5000*", [REAL], ["fmri-bmd-s3d"]),  # a bare word matches anywhere
    ],
)
def test_list(capsys, pattern, glob, members, non_members):
    import fnmatch

    from berg.registry import Registry

    assert main(["list", *([pattern] if pattern else [])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["ID", "MODALITY"]
    listed = [line.split()[0] for line in lines[1:]]
    assert listed == sorted(fnmatch.filter(Registry().ids(), glob))  # the registry grows; the rule does not
    assert set(members) <= set(listed) and not set(non_members) & set(listed)


def test_list_json_and_no_match(capsys):
    assert main(["list", "--json", "fmri-bmd*"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [
        {
            "id": "fmri-bmd-s3d",
            "modality": "fmri",
            "dataset": "bmd",
            "subjects": list(range(1, 11)),
            "input": "video",
            "status": "downloadable",
            "cached_bytes": 0,
            "download": rows[0]["download"],
            "backbone_mb": rows[0]["backbone_mb"],
            "registry": "berg",
            "name": rows[0]["name"],
        }
    ]
    assert rows[0]["download"] and rows[0]["backbone_mb"] > 0
    assert main(["list", "nomatch-*"]) == 1
    err = capsys.readouterr().err
    assert "no model matches 'nomatch-*'" in err and "fmri-bmd-s3d" in err


def test_describe_text_json_markdown(capsys):
    from berg import BERG

    assert main(["describe", REAL]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{REAL} — ") and "PPA" in text and "1 (1,685)" in text
    assert main(["describe", "--json", REAL]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(BERG().describe(REAL)))
    assert main(["describe", "--markdown", "fmri-bmd-s3d"]) == 0
    assert capsys.readouterr().out.startswith("# fmri-bmd-s3d\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["describe", "fmri-bmd-s3"],
        ["fetch", "fmri-bmd-s3", "--subject", "1"],
        ["encode", "fmri-bmd-s3", "--subject", "1", "x.mp4", "-o", "out.h5"],
    ],
)
def test_unknown_model_is_one_line_with_suggestion(capsys, argv):
    assert main(argv) == 2
    _one_line_error(capsys.readouterr().err, "unknown model 'fmri-bmd-s3'", "Did you mean 'fmri-bmd-s3d'")


@pytest.mark.parametrize(
    "argv, part",
    [
        (["encode", REAL], "required"),
        (["encode", REAL, "--subject", "1", "--batch-size", "0", "a.jpg", "-o", "o.h5"], "--batch-size"),
        (["frobnicate"], "invalid choice"),
        (["describe", REAL, "--json", "--markdown"], "not allowed with"),
    ],
)
def test_argument_errors_are_one_line_exit_2(capsys, argv, part):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    _one_line_error(capsys.readouterr().err, part)


# --------------------------------------------------------------------------- validation before any I/O


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    p = tmp_path / "in" / "img.png"
    p.parent.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p)
    return p


@pytest.mark.parametrize(
    "extra, part",
    [
        (["--subject", "1", "-o", "out.txt"], "-o must end with .h5, .hdf5, .nii, .nii.gz"),
        (["--subject", "1,2", "-o", "out.nii.gz"], "NIfTI output takes one subject"),
        (["--subject", "all", "-o", "out.nii"], "NIfTI output takes one subject"),
        (["--subject", "all,1", "-o", "out.h5"], "cannot be combined"),
        (["--subject", "9", "-o", "out.h5"], "valid subjects: 1, 2, 3"),
        (["--subject", "1", "--roi", "PPX", "-o", "out.h5"], "Did you mean"),
        (["--subject", "1", "--device", "gpu7", "-o", "out.h5"], "gpu7"),
        (["--subject", "1", "--model-kwarg", "novalue", "-o", "out.h5"], "KEY=VALUE"),
        (["MISSING", "--subject", "1", "-o", "out.h5"], "file not found"),
    ],
)
def test_encode_refuses_bad_input_before_any_io(capsys, tmp_path, image, extra, part):
    cache = tmp_path / "cache"
    argv = ["--cache-dir", str(cache), "encode", REAL, str(image), *extra]
    argv = [str(tmp_path / a) if a.startswith(("out.", "MISSING")) else a for a in argv]
    assert main(argv) == 2
    _one_line_error(capsys.readouterr().err, part)
    assert not cache.exists(), "nothing may be fetched or cached before the input is validated"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"], "no output written"


def test_encode_rejects_directory_without_stimuli(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["encode", REAL, "--subject", "1", str(tmp_path / "empty"), "-o", str(tmp_path / "o.h5")]) == 2
    _one_line_error(capsys.readouterr().err, "has no image files")


# --------------------------------------------------------------------------- plugins (cache, train)


def test_missing_plugin_gives_a_clear_error(capsys, monkeypatch):
    monkeypatch.setitem(cli._PLUGINS, "cache", ("berg_no_such_module.cli", "add_cache_subparser", "cache"))
    assert main(["cache", "list"]) == 2
    _one_line_error(capsys.readouterr().err, "'berg cache' is unavailable", "berg_no_such_module.cli")


def test_plugin_with_missing_dependency_names_it(capsys, monkeypatch):
    broken = types.ModuleType("berg_test_broken_plugin")
    broken.__path__ = []  # a package whose submodule import fails on a missing dependency

    def fail(*_):
        raise ModuleNotFoundError("No module named 'somedep'", name="somedep")

    monkeypatch.setitem(sys.modules, "berg_test_broken_plugin", broken)
    real_import = cli.importlib.import_module
    monkeypatch.setattr(
        cli.importlib, "import_module", lambda name: fail() if name.startswith("berg_test") else real_import(name)
    )
    monkeypatch.setitem(cli._PLUGINS, "train", ("berg_test_broken_plugin.cli", "add_train_subparser", "train"))
    assert main(["train", "cfg.yaml"]) == 2
    _one_line_error(capsys.readouterr().err, "'berg train' is unavailable", "'somedep'")


def test_present_plugin_adds_its_subcommand(capsys, monkeypatch):
    calls = []
    plugin = types.ModuleType("berg_test_cache_plugin")

    def add_cache_subparser(subparsers):
        p = subparsers.add_parser("cache", help="cache things")
        p.add_argument("action", choices=["list", "size"])
        p.set_defaults(func=lambda args: calls.append((args.action, args.cache_dir)) or 0)
        return p

    plugin.add_cache_subparser = add_cache_subparser
    monkeypatch.setitem(sys.modules, "berg_test_cache_plugin", plugin)
    monkeypatch.setitem(cli._PLUGINS, "cache", ("berg_test_cache_plugin", "add_cache_subparser", "cache"))
    assert main(["--cache-dir", "/tmp/x", "cache", "size"]) == 0
    assert calls == [("size", "/tmp/x")]
    with pytest.raises(SystemExit):
        main(["cache", "bogus"])
    _one_line_error(capsys.readouterr().err, "invalid choice")


def test_console_entry_point_exit_codes():
    res = subprocess.run([sys.executable, "-m", "berg.cli", "describe", "nope-model"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    _one_line_error(res.stderr, "unknown model 'nope-model'")


# --------------------------------------------------------------------------- end to end (synthetic model)


_BUILT: dict = {}


def synthetic_model(tmp_path_factory):
    """One synthetic model per test session, shared with tests/test_errors_ux.py (building costs seconds)."""
    if "model" not in _BUILT:
        _BUILT["model"] = build(tmp_path_factory.mktemp("synthetic-cli"))
    return _BUILT["model"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_model(tmp_path_factory)


@pytest.fixture(scope="module")
def stimuli(synth, tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("stimuli")
    paths = []
    for i, img in enumerate(synth.test_images[:4]):
        p = folder / f"im{i}.png"  # PNG: lossless, so files give the same responses as the arrays
        Image.fromarray(img).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture
def common(synth, tmp_path):
    return [
        "--berg-dir",
        str(synth.berg_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--registry",
        str(synth.registry),
        "--offline",
    ]


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _encode(common, *args):
    return main([*common, "encode", MODEL_ID, "--backbone-weights", "untrained", "--device", "cpu", *args])


def test_encode_h5_matches_sklearn(synth, stimuli, common, tmp_path, capsys):
    out = tmp_path / "r.h5"
    assert _encode(common, "--subject", "1", "--batch-size", "3", "-q", *stimuli, "-o", str(out)) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out} (subject 1: 4 x {N_OUT[1]}, float32)"
    with h5py.File(out) as f:
        r = f["sub-01/responses"][()]
        assert r.shape == (4, N_OUT[1]) and r.dtype == np.float32
        assert _rel(r, synth.expected[1][:4]) < 1e-5
        np.testing.assert_array_equal(f["sub-01/output_ids"][()], synth.voxel_ijk[1])
        prov = json.loads(f.attrs["provenance"])
        assert prov["model_id"] == MODEL_ID and prov["subjects"] == [1]
        assert any(k.startswith("readout/sub-01") for k in prov["artifacts"])
        assert [s.decode() for s in f["stimulus_ids"][()]] == stimuli


def test_encode_several_subjects_and_roi(synth, stimuli, common, tmp_path, capsys):
    out = tmp_path / "multi.h5"
    assert _encode(common, "--subject", "1,2", "--roi", "A", "--roi", "B", "-q", *stimuli[:2], "-o", str(out)) == 0
    rows = np.unique(np.r_[np.arange(N_OUT[1])[ROIS["A"]], np.arange(N_OUT[1])[ROIS["B"]]])
    with h5py.File(out) as f:
        assert sorted(f) == ["stimulus_ids", "sub-01", "sub-02"]
        for s in (1, 2):
            r = f[f"sub-0{s}/responses"][()]
            assert r.shape == (2, len(rows))
            assert _rel(r, synth.expected[s][:2, rows]) < 1e-5
            np.testing.assert_array_equal(f[f"sub-0{s}/output_ids"][()], synth.voxel_ijk[s][rows])
            assert json.loads(f[f"sub-0{s}"].attrs["selection"]) == {"roi": ["A", "B"]}


def test_encode_nifti_3d_and_4d_from_a_directory(synth, stimuli, common, tmp_path):
    one = tmp_path / "one.nii.gz"
    assert _encode(common, "--subject", "2", "-q", stimuli[0], "-o", str(one)) == 0
    img = nib.load(one)
    assert img.shape == GRID
    np.testing.assert_allclose(
        np.asarray(img.dataobj)[tuple(synth.voxel_ijk[2].T)],
        synth.expected[2][0],
        rtol=1e-4,
        atol=1e-5 * np.abs(synth.expected[2]).max(),
    )
    many = tmp_path / "many.nii"
    assert _encode(common, "--subject", "2", "-q", str(Path(stimuli[0]).parent), "-o", str(many)) == 0
    data = np.asarray(nib.load(many).dataobj)
    assert data.shape == GRID + (len(stimuli),)  # every PNG of the directory, sorted
    assert _rel(data[tuple(synth.voxel_ijk[2].T)].T, synth.expected[2][: len(stimuli)]) < 1e-5
    inside = np.zeros(GRID, bool)
    inside[tuple(synth.voxel_ijk[2].T)] = True
    assert np.isnan(data[~inside]).all(), "voxels the model does not predict are NaN, not 0"


def test_encode_expands_a_quoted_glob_and_records_the_files(synth, stimuli, common, tmp_path, capsys):
    out = tmp_path / "g.h5"
    pattern = str(Path(stimuli[0]).parent / "im[12].png")  # as a shell passes a quoted pattern
    assert _encode(common, "--subject", "1", "-q", pattern, "-o", str(out)) == 0
    capsys.readouterr()
    with h5py.File(out) as f:
        assert [s.decode() for s in f["stimulus_ids"][()]] == stimuli[1:3]
        assert _rel(f["sub-01/responses"][()], synth.expected[1][1:3]) < 1e-5


@pytest.mark.slow
def test_plot_nifti_and_h5_with_nilearn(synth, stimuli, common, tmp_path, capsys):
    """berg plot: PNGs from a subject-space NIfTI, an MNI group-like map, and an .h5 file; bad inputs one line."""
    from PIL import Image

    vol = tmp_path / "v.nii.gz"
    h5 = tmp_path / "v.h5"
    assert _encode(common, "--subject", "2", "-q", *stimuli[:2], "-o", str(vol)) == 0
    assert _encode(common, "--subject", "1,2", "-q", *stimuli[:2], "-o", str(h5)) == 0
    capsys.readouterr()
    png = tmp_path / "v.png"
    assert main(["plot", str(vol), "-o", str(png), "--index", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {png} (stat map of volume 1 on the subject grid)"
    assert Image.open(png).size[0] >= 800
    assert main(["plot", str(h5), "--subject", "2", "-o", str(tmp_path / "h.png")]) == 0
    assert "stat map of stimulus 0 (subject 2) on the subject grid" in capsys.readouterr().out
    mni = tmp_path / "mni.nii.gz"
    grid = np.full((91, 109, 91), np.nan, np.float32)
    grid[50:60, 30:40, 40:50] = np.linspace(-3, 3, 1000).reshape(10, 10, 10)
    nib.save(nib.Nifti1Image(grid, np.array([[-2, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1.0]])), mni)
    for kind in ("stat", "glass"):
        out = tmp_path / f"mni_{kind}.png"
        assert main(["plot", str(mni), "--kind", kind, "--units", "z", "-o", str(out)]) == 0
        assert "on the MNI152 template" in capsys.readouterr().out and out.stat().st_size > 10_000
    for argv, part in [
        (["plot", str(h5), "-o", str(tmp_path / "x.png")], "holds several subjects (1, 2)"),
        (["plot", str(vol), "--kind", "glass", "-o", str(tmp_path / "x.png")], "a glass brain needs an MNI152 image"),
        (["plot", str(vol), "--index", "5", "-o", str(tmp_path / "x.png")], "holds 2 volume(s)"),
        (["plot", str(vol), "-o", str(tmp_path / "x.jpg")], "-o must end with .png, .svg, .pdf"),
        (["plot", str(tmp_path / "none.nii.gz"), "-o", str(tmp_path / "x.png")], "responses file not found"),
    ]:
        assert main(argv) == 2
        _one_line_error(capsys.readouterr().err, part)
    assert not (tmp_path / "x.png").exists()


class _ToySurfaceModel(BaseModelInterface):
    """Just what berg.save needs from a model whose outputs are surface vertices."""

    def __init__(self, space):
        self.model_id, self.subjects, self._space = "toy-surface", [1], space
        self.spec = SimpleNamespace(card={}, model_id=self.model_id)
        self.spaces = {1: space}

    @classmethod
    def load(cls, request):
        raise NotImplementedError("built directly by the test")

    def encode(self, stimulus, *, show_progress=True):
        raise NotImplementedError("the test saves given responses")

    def get_metadata(self):
        return {}

    def space(self, subject=None):
        return self._space

    def provenance(self):
        return {"model_id": self.model_id, "subjects": [1]}

    def output_ids(self, subject=None):
        return np.arange(self._space.n_outputs)


@pytest.mark.slow
def test_plot_surface_responses_on_fsaverage5(tmp_path, capsys):
    from PIL import Image

    import berg
    from berg.core.spaces import SurfaceSpace

    rng = np.random.default_rng(0)
    verts = {h: np.sort(rng.choice(10242, 3000, replace=False)) for h in ("lh", "rh")}
    space = SurfaceSpace("fsaverage5", verts, {"lh": 10242, "rh": 10242})
    h5 = tmp_path / "surf.h5"
    berg.save(
        h5,
        rng.normal(size=(2, space.n_outputs)).astype(np.float32),
        _ToySurfaceModel(space),
        stimulus_ids=["a.png", "b.png"],
    )
    png = tmp_path / "surf.png"
    assert main(["plot", str(h5), "--index", "1", "-o", str(png)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {png} (surface map of stimulus 1 (subject 1) on fsaverage5)"
    assert Image.open(png).size[0] > 1000
    other = SurfaceSpace("fsaverage", {"lh": np.arange(5)}, {"lh": 163842})
    berg.save(tmp_path / "big.h5", np.ones((1, 5), np.float32), _ToySurfaceModel(other))
    # fsaverage (163,842 vertices) is drawn too: on nilearn's full mesh when it can be fetched, else on
    # fsaverage5, whose vertices are fsaverage's first 10,242 (the figure says which)
    assert main(["plot", str(tmp_path / "big.h5"), "-o", str(tmp_path / "big.png")]) == 0
    assert "on fsaverage" in capsys.readouterr().out and (tmp_path / "big.png").is_file()


# --------------------------------------------------------------------------- model options as flags, group maps


def test_encode_help_lists_the_models_card_options(capsys):
    with pytest.raises(SystemExit):
        main(["encode", REAL, "--help"])
    out = capsys.readouterr().out
    assert f"options of {REAL}" in out
    for flag in (
        "--space {subject,mni}",
        "--center-crop, --no-center-crop",
        "--roi-list",
        "--sigma SIGMA",
        "--voxel-order {c,fortran}",
        "--zscore-support {v1.0,v0.2}",
    ):
        assert flag in out, flag
    with pytest.raises(SystemExit):
        main(["encode", "--help"])
    assert "'berg encode ID --help' lists the options of model ID" in capsys.readouterr().out


def test_nifti_needs_a_volume_model(capsys, tmp_path, image):
    from berg.registry import Registry

    surface = next(m for m in Registry().ids() if Registry().get(m).output_space_kind != "volume")
    kind = Registry().get(surface).output_space_kind
    cache = tmp_path / "cache"
    out = str(tmp_path / "x.nii.gz")
    assert main(["--cache-dir", str(cache), "encode", surface, "--subject", "1", str(image), "-o", out]) == 2
    _one_line_error(capsys.readouterr().err, f"outputs are a {kind} space, not a volume; use -o OUT.h5")
    assert not cache.exists()


def test_model_option_flags_are_checked_before_any_io(capsys, tmp_path, image):
    cache = tmp_path / "cache"
    base = ["--cache-dir", str(cache), "encode", REAL, str(image)]
    cases = [
        (["--subject", "1,2", "-o", str(tmp_path / "g.nii.gz")], "--subject all --space mni"),
        (
            ["--subject", "all", "--space", "mni", "--model-kwarg", "space=mni", "-o", str(tmp_path / "g.h5")],
            "--space and --model-kwarg space=... both given",
        ),
        (["--subject", "all", "--space", "mni", "--roi-list", "FFA", "-o", str(tmp_path / "g.h5")], "valid"),
        (["--subject", "1", "--space", "mni", "-o", str(tmp_path / "g.h5")], "pass --subject all"),  # CLI words
    ]
    for extra, part in cases:
        assert main([*base, *extra]) == 2
        _one_line_error(capsys.readouterr().err, part)
    assert not cache.exists()


def test_summary_line_names_a_group_and_subjects():
    from berg.cli import _summary

    group = types.SimpleNamespace(subjects=[1, 2, 3])
    one = types.SimpleNamespace(subjects=[2])
    r = np.zeros((4, 9), np.float32)
    assert _summary(Path("g.h5"), r, group) == "wrote g.h5 (group of subjects 1, 2, 3: 4 x 9, float32)"
    assert _summary(Path("o.h5"), r, one) == "wrote o.h5 (subject 2: 4 x 9, float32)"
    assert (
        _summary(Path("m.h5"), {1: r, 2: r[:, :3]}, group) == "wrote m.h5 (subject 1: 4 x 9, subject 2: 4 x 3, float32)"
    )


@pytest.fixture(scope="module")
def img2fmri_artifact():
    """The converted img2fmri artifact tests/test_bold5000.py keeps (skip when it was never built)."""
    import os

    root = Path(os.environ.get("BERG_TEST_CACHE", Path.home() / ".cache" / "berg-test")) / "artifacts"
    found = sorted(p for p in root.glob("*") if (p / "manifest.json").is_file()) if root.is_dir() else []
    if not found:
        if os.environ.get("CI"):  # in CI test_bold5000.py runs first and builds it: absence is a failure
            pytest.fail("img2fmri artifact missing although tests/test_bold5000.py should have built it")
        pytest.skip("img2fmri artifact not built here (tests/test_bold5000.py builds it)")
    return found[-1]


@pytest.mark.slow
def test_group_mni_map_to_nifti_with_space_flag(img2fmri_artifact, stimuli, tmp_path, capsys):
    out = tmp_path / "group.nii.gz"
    argv = [
        "--berg-dir",
        str(img2fmri_artifact),
        "--cache-dir",
        str(tmp_path / "c"),
        "--offline",
        "-q",
        "encode",
        REAL,
        "--subject",
        "all",
        "--space",
        "mni",
        "--sigma",
        "1.0",
        "--backbone-weights",
        "untrained",
        "--device",
        "cpu",
        *stimuli[:2],
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out} (group of subjects 1, 2, 3: 2 x ") and line.endswith(
        "image 91 x 109 x 91 x 2)"
    )
    img = nib.load(out)
    assert img.shape == (91, 109, 91, 2)
    side = json.loads(out.with_name("group.json").read_text())
    assert side["volumes"] == stimuli[:2]
    assert main(["plot", str(out), "-o", str(tmp_path / "g.png")]) == 0
    assert "on the MNI152 template" in capsys.readouterr().out
    per_subject = [a for a in argv if a not in ("--space", "mni", "--sigma", "1.0")]
    per_subject[per_subject.index("all")] = "1,2"
    per_subject[per_subject.index(REAL) + 1 : per_subject.index(REAL) + 1] = ["--voxel-order", "fortran"]
    assert main([*per_subject[:-1], str(tmp_path / "two.nii.gz")]) == 2  # options, but one map per subject
    _one_line_error(capsys.readouterr().err, "these options give one map per subject", "--subject all --space mni")
    assert not (tmp_path / "two.nii.gz").exists()


# --------------------------------------------------------------------------- generated reference


def test_docs_cli_reference_is_generated_from_the_parser():
    from berg.cli import reference_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    fresh = reference_markdown()

    def sections(text):
        parts = text.split("\n## ")[1:]
        return {p.split("\n", 1)[0]: p for p in parts}

    mine, written = sections(fresh), sections(doc)
    for name in ("berg", "berg list", "berg describe", "berg fetch", "berg encode", "berg plot"):
        assert written.get(name) == mine[name], f"docs/cli.md is stale for '{name}': regenerate it"
    assert set(mine) <= set(written), "a sub-command is missing from docs/cli.md: regenerate it"


def test_encode_shows_progress_unless_quiet(stimuli, common, tmp_path, capsys, monkeypatch):
    untrained = (
        "berg: warning: responses come from an UNTRAINED backbone (torchvision.models.resnet18 with "
        "--backbone-weights untrained, seed 0): a random-weights control, not the published model\n"
    )
    assert _encode(common, "--subject", "1", stimuli[0], "-o", str(tmp_path / "p.h5")) == 0
    err = capsys.readouterr().err
    assert "stim" in err and untrained in err  # tqdm's unit; the control is announced in CLI words
    assert _encode(common, "--subject", "1", "-q", stimuli[0], "-o", str(tmp_path / "q.h5")) == 0
    assert capsys.readouterr().err == untrained  # -q hides progress, never the warning
    assert (
        main(
            [
                "-q",
                *common,
                "encode",
                MODEL_ID,
                "--backbone-weights",
                "untrained",
                "--device",
                "cpu",
                "--subject",
                "1",
                stimuli[0],
                "-o",
                str(tmp_path / "g.h5"),
            ]
        )
        == 0
    )
    assert capsys.readouterr().err == untrained  # the global -q too
    monkeypatch.setenv("BERG_QUIET", "1")
    assert _encode(common, "--subject", "1", stimuli[0], "-o", str(tmp_path / "e.h5")) == 0
    assert capsys.readouterr().err == untrained
    with h5py.File(tmp_path / "e.h5") as f:
        prov = json.loads(f.attrs["provenance"])
    assert prov["backbone"]["backbone_weights"] == "untrained"


def test_encode_unknown_model_kwarg(stimuli, common, tmp_path, capsys):
    assert _encode(common, "--subject", "1", "--model-kwarg", "sigma=2", stimuli[0], "-o", str(tmp_path / "k.h5")) == 2
    _one_line_error(capsys.readouterr().err, "unknown option(s) ['sigma']")


def test_fetch(synth, common, capsys):
    assert main([*common, "fetch", MODEL_ID, "--subject", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{MODEL_ID}: ") and "file(s)" in out
    n_subject = int(out.split(": ")[1].split()[0])
    assert main([*common, "fetch", MODEL_ID, "--all"]) == 0
    n_all = int(capsys.readouterr().out.split(": ")[1].split()[0])
    assert n_all > n_subject >= 3  # projection + readout + metadata, then every file
    assert main([*common, "fetch", MODEL_ID, "--subject", "7"]) == 2
    _one_line_error(capsys.readouterr().err, "valid subjects: 1, 2")


def test_list_and_describe_do_not_import_torch():
    code = (
        "import io, sys, contextlib\nfrom berg.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['list']) == 0 and main(['describe', 'fmri-bmd-s3d']) == 0\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'h5py') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
