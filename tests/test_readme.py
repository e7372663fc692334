"""The README works as written, and `make demo`'s script works on a bare clone.

* Every ```` ```python ```` block of README.md runs, in order, in one namespace, from a folder holding
  only the shipped ``examples/``; the shapes the README states are the shapes that come out.
* Every ```` ```bash ```` block runs as one script (``set -e``; the ``berg`` command line, found only
  through the ``source .venv/bin/activate`` the README asks for) in the same folder.
* Without the backbone weights and without network (a proxy on a closed port), the README's code stops
  at its first model load with exactly the one-line error the README documents, and ``berg encode``
  with the same one line on stderr.
* ```` ```shell ```` blocks are install/``make`` commands only (they are what CI itself runs).
* Every file or folder the README names exists (in the repository, or written by its snippets).
* ``make demo`` (``scripts/demo.py``) on a bare clone: ``tests/test_demo.py``.

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
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
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


def _user_folder(work: Path) -> Path:
    """A folder with the shipped examples/ and the .venv the README's commands name (the test's own)."""
    shutil.copytree(REPO / "examples", work / "examples")
    (work / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return work


def _user_env(home: Path, torch_home: Path, cache: Path, **extra: str) -> dict:
    """A new user's environment: no BERG_ variables but one (the seeded weights), no proxy, berg NOT on PATH."""
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERG_") and "proxy" not in k.lower()}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
    env.update(
        HOME=str(home),
        TORCH_HOME=str(torch_home),
        BERG_CACHE=str(cache),
        # the test's seeded weights sit under the published name (a real user's file matches its pin):
        # berg loads them only because the test says they are its own
        BERG_UNPINNED_WEIGHTS="1",
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
        PATH=os.pathsep.join(path),
        **extra,
    )
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, fake_torch_home, berg_cache):
    """(folder with only examples/ and .venv, environment) in which a new user runs the README."""
    work = _user_folder(tmp_path_factory.mktemp("readme-user"))
    return work, _user_env(tmp_path_factory.mktemp("home"), fake_torch_home, berg_cache)


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
    """Every bash block of the README, each run as one script (after the Python snippets)."""
    work, env = workdir
    failures = []
    for lineno, code in blocks("bash"):
        res = subprocess.run(
            ["bash", "-e", "-x", "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=900
        )
        if res.returncode != 0:
            failures.append(f"README bash block at line {lineno}:\n{res.stdout[-1500:]}{res.stderr[-3000:]}")
    return failures


def test_bash_snippets_run_as_written(workdir, bash_run):
    work, _ = workdir
    assert not bash_run, "\n\n".join(bash_run)
    for name in ("responses.h5", "group.nii.gz", "group.json", "group.png"):
        assert (work / name).is_file(), name


def _documented_error() -> re.Pattern:
    """The one-line error the README quotes for missing weights ("> BackboneWeightsError: ..."), as a
    pattern: each "…" in the quote stands for a part that depends on the machine."""
    quoted = [line[2:] for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("> ")]
    (line,) = [q for q in quoted if q.startswith("BackboneWeightsError: ")]
    return re.compile(".+?".join(re.escape(part) for part in line.split("…")))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_without_weights_or_network_the_readme_ends_in_its_documented_one_line_error(tmp_path, berg_cache):
    """A user without network: the first model load stops with the README's one line (Python and CLI)."""
    work = _user_folder(tmp_path / "user")
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env = _user_env(
        tmp_path / "home",
        tmp_path / "empty-torch-home",
        berg_cache,
        https_proxy=proxy,
        http_proxy=proxy,
        HTTPS_PROXY=proxy,
        HTTP_PROXY=proxy,
    )
    (tmp_path / "home").mkdir()
    (tmp_path / "blocks.json").write_text(json.dumps(blocks("python")))
    (tmp_path / "run.py").write_text(RUNNER)
    res = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "blocks.json"), str(tmp_path / "facts.json")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-3000:]
    first_load = next(n for n, code in blocks("python") if "get_encoding_model" in code)
    assert f"README python block at line {first_load} failed" in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("berg.errors.BackboneWeightsError: "), last
    pattern = _documented_error()
    assert pattern.fullmatch(last.removeprefix("berg.errors.")), f"not the README's documented line:\n{last}"

    bash = blocks("bash")[0][1]
    encode = next(line for line in bash.splitlines() if line.startswith("berg encode"))
    res = subprocess.run(
        ["bash", "-c", f"source .venv/bin/activate && {encode}"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("berg: error: ")]
    assert len(errors) == 1 and "pretrained backbone weights ResNet18_Weights.IMAGENET1K_V1 missing" in errors[0]
    assert "--backbone-weights untrained" in errors[0], errors[0]
    assert not (work / "responses.h5").exists()


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
        "demo_output/maps/",
        ".venv/bin/berg",
        ".venv/bin/activate",
        "hub/checkpoints",  # "…/hub/checkpoints": torchvision's cache folder, in the documented error
        "build/site/",  # the CI artifact of the docs site
        "site/",
        "site/index.html",
        ".venv/bin/python",
        ".venv/bin/pip",
        "responses.json",  # the demo's sidecar, beside demo_output/responses.nii.gz
        "CONFIG.yaml",
        "ViT-B/32",
        "gifale95/BERG",  # a GitHub repository named as a source in the models table
    }  # placeholders, a network's name, a repository
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
