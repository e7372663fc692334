"""The README works as written, and `make demo`'s script works on a bare clone.

* Every ```` ```python ```` block of README.md runs, in order, in one namespace, from a folder holding
  only the shipped ``examples/``; the shapes the README states are the shapes that come out.
* Every line of every ```` ```bash ```` block runs (the ``berg`` command line) in the same folder.
* ```` ```shell ```` blocks are install/``make`` commands only (they are what CI itself runs).
* Every file or folder the README names exists (in the repository, or written by its snippets).
* ``scripts/demo.py`` runs from a copy of the checkout with empty ``HOME``/``TORCH_HOME`` and nothing
  beside it (the synthetic model), and with the pretrained weights in the torch cache (the real model).

No network is used for backbone weights: where a snippet needs the pretrained ResNet-18, the test puts a
seeded random ResNet-18 state dict under torchvision's cache file name (``resnet18-f37072fd.pth``), so
the README's code path runs unchanged; the values are then meaningless and only types and shapes are
checked. img2fmri's readout comes from PyPI once (pinned sha256) and is cached in ``$BERG_TEST_CACHE``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TEST_CACHE = Path(os.environ.get("BERG_TEST_CACHE", Path.home() / ".cache" / "berg-test"))
WEIGHTS_FILE = "resnet18-f37072fd.pth"  # torchvision's cache name for ResNet18_Weights.IMAGENET1K_V1

pytestmark = pytest.mark.slow


def blocks(lang: str, path: Path = README) -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced block of a Markdown file (README.md) with this info string."""
    out, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            start, body = i + 1, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            out.append((start + 1, "\n".join(body)))
        i += 1
    return out


def test_readme_blocks_are_only_python_bash_and_shell():
    fences = re.findall(r"^```(\S*)\s*$", README.read_text(encoding="utf-8"), flags=re.M)
    infos = set(fences[0::2])  # opening fences
    assert infos <= {"python", "bash", "shell"}, infos
    assert blocks("python") and blocks("bash")


def test_shell_blocks_are_install_and_make_commands():
    allowed = re.compile(
        r"^(make( demo| test| docs)?( IMAGES=\S+)?|python3 -m venv \.venv|\.venv/bin/pip install .+)(\s+#.*)?$"
    )
    for lineno, code in blocks("shell"):
        for line in filter(None, (line.strip() for line in code.splitlines())):
            assert allowed.match(line), (
                f"README line {lineno}: {line!r} is not an install/make command; use a bash block"
            )


@pytest.fixture(scope="module")
def fake_torch_home(tmp_path_factory) -> Path:
    """A torch cache holding a seeded random ResNet-18 under the pretrained weights' file name."""
    import torch
    import torchvision

    home = tmp_path_factory.mktemp("torch-home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, home / "hub" / "checkpoints" / WEIGHTS_FILE)
    return home


@pytest.fixture(scope="module")
def berg_cache() -> Path:
    """A persistent cache with img2fmri's wheel (fetched once from PyPI, sha256-pinned)."""
    import berg
    from berg.registry import Registry
    from berg.store import Store
    from berg.store.sources import source_for

    cache = TEST_CACHE / "docs-cache"  # shared with tests/test_docs.py: one img2fmri conversion per CI run
    try:
        source_for(Registry().get("fmri-bold5000-resnet18").source).wheel_path(Store(cache_dir=cache))
    except berg.BERGError as exc:  # pragma: no cover - only offline without a cached wheel
        pytest.skip(f"img2fmri wheel unavailable (PyPI unreachable and not cached): {exc}")
    return cache


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, fake_torch_home, berg_cache):
    """(folder with only examples/, environment) in which a new user runs the README."""
    work = tmp_path_factory.mktemp("readme-user")
    shutil.copytree(REPO / "examples", work / "examples")
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERG_")}
    env.update(
        HOME=str(home),
        TORCH_HOME=str(fake_torch_home),
        BERG_CACHE=str(berg_cache),
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return work, env


RUNNER = textwrap.dedent("""
    import json, sys, traceback
    import numpy as np
    blocks = json.load(open(sys.argv[1]))
    ns = {"__name__": "__main__"}
    for lineno, code in blocks:
        try:
            exec(compile(code, f"README.md block at line {lineno}", "exec"), ns)
        except Exception:
            sys.stderr.write(f"README python block at line {lineno} failed:\\n{traceback.format_exc()}")
            sys.exit(1)
    def shape(x):
        return list(np.shape(x))
    facts = {
        "responses": shape(ns["responses"]), "dtype": str(ns["responses"].dtype),
        "ppa_voxels": int(len(ns["meta"]["rois"]["PPA"])),
        "img": list(ns["img"].shape),
        "per_subject": {str(s): shape(r) for s, r in ns["per_subject"].items()},
        "maps": shape(ns["maps"]), "group_img": list(ns["group_img"].shape), "movie": list(ns["movie"].shape),
        "movie_dt": float(ns["movie"].header.get_zooms()[3]),
        "nan_outside": bool(np.isnan(np.asarray(ns["img"].dataobj)).any()),
    }
    json.dump(facts, open(sys.argv[2], "w"))
""")


@pytest.fixture(scope="module")
def python_run(workdir, tmp_path_factory):
    work, env = workdir
    tmp = tmp_path_factory.mktemp("runner")
    (tmp / "blocks.json").write_text(json.dumps(blocks("python")))
    (tmp / "run.py").write_text(RUNNER)
    res = subprocess.run(
        [sys.executable, str(tmp / "run.py"), str(tmp / "blocks.json"), str(tmp / "facts.json")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-5000:]
    return json.loads((tmp / "facts.json").read_text()), res.stdout


def test_python_snippets_run_and_give_the_shapes_the_readme_states(python_run, workdir):
    facts, stdout = python_run
    text = README.read_text(encoding="utf-8")
    work, _ = workdir
    assert facts["responses"] == [2, facts["ppa_voxels"]] and facts["dtype"] == "float32"
    assert "fmri-bold5000-resnet18" in stdout  # list_models() and the card were printed
    assert len(facts["img"]) == 4 and facts["img"][3] == 2 and facts["nan_outside"]
    per = {int(s): tuple(v) for s, v in facts["per_subject"].items()}
    assert per == {1: (4, 1685), 2: (4, 2270), 3: (4, 3104)}
    assert str(per) in text  # the README's comment is exactly what comes out
    assert tuple(facts["group_img"]) == (91, 109, 91, 4) and "(91, 109, 91, 4)" in text
    assert facts["maps"][0] == 4 and facts["maps"][1] > 1000
    assert facts["movie"][:3] == [91, 109, 91] and facts["movie"][3] == 8 and facts["movie_dt"] == 0.5
    for name in ("responses.h5", "group_maps.nii.gz", "group_maps.json", "group_map.png"):
        assert (work / name).is_file(), name
    sidecar = json.loads((work / "group_maps.json").read_text())
    assert len(json.dumps(sidecar)) > 50 and "amusement1" in json.dumps(sidecar)


@pytest.fixture(scope="module")
def bash_run(workdir, python_run):
    """Every line of the README's bash blocks, run in order (after the Python snippets)."""
    work, env = workdir
    failures = []
    for lineno, code in blocks("bash"):
        for line in filter(None, (line.strip() for line in code.splitlines())):
            res = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=600)
            if res.returncode != 0:
                failures.append(f"README line {lineno}: {line}\n{res.stdout[-1500:]}{res.stderr[-2500:]}")
    return failures


def test_bash_snippets_run_as_written(workdir, bash_run):
    work, _ = workdir
    assert not bash_run, "\n\n".join(bash_run)
    for name in ("responses.h5", "group.nii.gz", "group.json", "group.png"):
        assert (work / name).is_file(), name


PATH_RE = re.compile(
    r"(?<![\w/.:$-])((?:[\w.-]+/)+[\w.-]*|[\w-]+\.(?:md|py|yaml|yml|cff|h5|nii\.gz|json|png|mp4|jpg|toml))(?![\w/])"
)


def test_readme_names_only_files_that_exist(workdir, python_run, bash_run):
    work, _ = workdir  # files the snippets write count as existing once they have run
    text = README.read_text(encoding="utf-8")
    text = re.sub(r"\]\((https?://[^)]+)\)", "]", text)  # web links are not files
    text = re.sub(r"https?://\S+", "", text)
    ignore = {
        "path/to/folder",
        "path/to/brain-encoding-response-generator",
        "path.safetensors",
        "demo_output/responses.h5",
        "demo_output/responses.nii.gz",
        "demo_output/responses_map.png",
        "site/",
        "site/index.html",
        ".venv/bin/python",
        ".venv/bin/pip",
        "responses.json",  # the demo's sidecar, beside demo_output/responses.nii.gz
        "CONFIG.yaml",
        "ViT-B/32",
    }  # a placeholder and a network's name
    missing = []
    for match in PATH_RE.finditer(text):
        name = match.group(1).rstrip(".")
        if name in ignore or name.startswith(("$", "s3:")) or "*" in name or "/" not in name and "." not in name:
            continue
        if not ((REPO / name).exists() or (work / name).exists() or (REPO / "docs" / name).exists()):
            missing.append(name)
    assert not missing, f"README names files that do not exist: {sorted(set(missing))}"


DOC_PAGES = ["getting-started.md", "concepts.md", "index.md"]


@pytest.mark.parametrize("page", DOC_PAGES)
def test_documentation_page_snippets_run_as_written(page, workdir, tmp_path):
    """The Python examples of the site's own pages (the guides test theirs), in order, in one namespace."""
    work, env = workdir
    code = blocks("python", REPO / "docs" / page)
    assert code, page
    (tmp_path / "blocks.json").write_text(json.dumps(code))
    runner = "import json, sys\nns = {'__name__': '__main__'}\nfor n, c in json.load(open(sys.argv[1])):\n    exec(compile(c, f'block at line {n}', 'exec'), ns)\n"
    (tmp_path / "run.py").write_text(runner)
    res = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "blocks.json")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, f"docs/{page}:\n{res.stderr[-4000:]}"


# --------------------------------------------------------------------------- make demo


def _bare_clone(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored), without .venv or anything beside it."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _demo(clone: Path, out: Path, env_extra: dict, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERG_")}
    env.update(MPLBACKEND="Agg", PYTHONUNBUFFERED="1", **env_extra)
    return subprocess.run(
        [sys.executable, str(clone / "scripts" / "demo.py"), "--out", str(out), *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_demo_on_a_bare_clone_runs_the_synthetic_model_and_says_so(tmp_path):
    import nibabel as nib

    clone = _bare_clone(tmp_path / "clone" / "berg")  # its parent holds no shared/ folder
    home = tmp_path / "home"
    home.mkdir()
    res = _demo(clone, tmp_path / "out", {"HOME": str(home), "TORCH_HOME": str(home / "torch")})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "SYNTHETIC" in res.stdout and "not in torchvision's cache" in res.stdout
    assert "resnet18(weights='DEFAULT')" in res.stdout  # how to get the real model
    out = tmp_path / "out"
    img = nib.load(out / "responses.nii.gz")
    examples = sorted(p.name for p in (REPO / "examples" / "images").glob("*.jpg"))
    assert img.shape[3] == len(examples) == 4
    assert json.loads((out / "responses.json").read_text())["volumes"] == examples
    assert (out / "responses.h5").stat().st_size > 0 and (out / "responses_map.png").stat().st_size > 10_000
    data = np.asarray(img.dataobj)
    assert np.isnan(data).any() and np.isfinite(data).sum() > 1000  # NaN outside the outputs
    assert not any(p.name.startswith("shared") for p in (tmp_path / "clone").iterdir())


def test_demo_runs_the_real_model_when_the_weights_are_cached(tmp_path, fake_torch_home, berg_cache):
    import nibabel as nib

    mine = tmp_path / "my_images"
    mine.mkdir()
    for name in ("horse1.jpg", "amusement2.jpg"):
        shutil.copy(REPO / "examples" / "images" / name, mine / name)
    res = _demo(
        REPO,
        tmp_path / "out",
        {"HOME": str(tmp_path), "TORCH_HOME": str(fake_torch_home), "BERG_CACHE": str(berg_cache)},
        "--images",
        str(mine),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "SYNTHETIC" not in res.stdout and "fmri-bold5000-resnet18" in res.stdout
    img = nib.load(tmp_path / "out" / "responses.nii.gz")
    assert img.shape == (91, 109, 91, 2)
    assert json.loads((tmp_path / "out" / "responses.json").read_text())["volumes"] == ["amusement2.jpg", "horse1.jpg"]
    assert (tmp_path / "out" / "responses_glass.png").is_file()


# --------------------------------------------------------------------------- citations


def test_citation_cff_matches_the_package():
    import berg
    from berg.yamlio import read_yaml

    cff = read_yaml(REPO / "CITATION.cff")
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert str(cff["version"]) == berg.__version__, "bump CITATION.cff's version with berg/_version.py"
    assert cff["title"].startswith("berg") and cff["authors"] and cff["license"] == "MIT"


def test_card_citations_are_well_formed_bibtex():
    from berg.cards import load_card

    keys = {}
    cards = sorted((REPO / "model_cards").glob("*.yaml"))
    with_citations = 0
    for path in cards:
        card = load_card(path)
        for c in card.get("citations") or []:
            bib = c["bibtex"].strip()
            head = re.match(r"@(\w+)\{([^,\s]+),", bib)
            assert head and head.group(1).lower() in {
                "article",
                "inproceedings",
                "misc",
                "software",
                "book",
                "incollection",
                "techreport",
                "online",
            }, (path.name, bib[:60])
            depth = 0
            for ch in bib:
                depth += {"{": 1, "}": -1}.get(ch, 0)
                assert depth >= 0, (path.name, head.group(2))
            assert depth == 0 and bib.endswith("}"), (path.name, head.group(2))
            assert re.search(r"\btitle\s*=", bib) and re.search(r"\byear\s*=", bib), (path.name, head.group(2))
            # one key, one work: the same key in two cards must be the same entry
            assert keys.setdefault(head.group(2), bib) == bib, f"BibTeX key {head.group(2)} differs between cards"
        with_citations += bool(card.get("citations"))
    assert with_citations >= 2
