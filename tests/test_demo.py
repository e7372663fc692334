"""`make demo` on a bare clone: the real model whenever its weights can be had, the synthetic one otherwise.

The demo (``scripts/demo.py``) runs from a copy of the checkout's files with an empty ``HOME`` and
nothing beside it, as a new user's first run:

* with a torchvision cache (``TORCH_HOME``) holding a seeded random ResNet-18 state dict under the real
  weights' file name (``resnet18-f37072fd.pth``), it runs the published ``fmri-bold5000-resnet18`` and
  writes its group maps on MNI152 (one stimulus + stat map + glass brain figure per image);
* with an empty cache and the network blocked (a proxy on a closed port), the download fails at once
  and it runs the SYNTHETIC model, says why in one line, and stamps every figure.

Two images instead of the four examples keep it fast. img2fmri's readout comes from PyPI once
(sha256-pinned) and is cached in ``$BERG_TEST_CACHE`` (shared with the README and docs tests).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
WEIGHTS_FILE = "resnet18-f37072fd.pth"  # torchvision's cache name for ResNet18_Weights.IMAGENET1K_V1
IMAGES = ("amusement1.jpg", "horse1.jpg")
STAMP_RGB = (198, 40, 40)  # berg.plotting's stamp colour (#c62828)

pytestmark = pytest.mark.slow


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


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    return _bare_clone(tmp_path_factory.mktemp("clone") / "berg")  # its parent holds no shared/ folder


@pytest.fixture(scope="module")
def my_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("my_images")
    for name in IMAGES:
        shutil.copy(REPO / "examples" / "images" / name, folder / name)
    return folder


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def _demo(clone: Path, out: Path, env_extra: dict, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERG_") and "proxy" not in k.lower()}
    env.update(MPLBACKEND="Agg", PYTHONUNBUFFERED="1", **env_extra)
    return subprocess.run(
        [sys.executable, str(clone / "scripts" / "demo.py"), "--out", str(out), *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _stamped(png: Path) -> bool:
    """Whether the figure carries berg's red UNTRAINED/SYNTHETIC stamp (in the band above the maps)."""
    from PIL import Image

    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"))[: int(im.height * 0.08)].astype(int)
    return int((np.abs(rgb - STAMP_RGB).sum(axis=2) < 30).sum()) > 200


def _check_figures(out: Path) -> list[Path]:
    from PIL import Image

    figures = sorted((out / "maps").iterdir())
    assert [p.name for p in figures] == ["amusement1.png", "horse1.png"]
    for png in figures:
        with Image.open(png) as im:
            assert im.width > 1200 and im.height > 500, png.name
            lo, hi = im.convert("L").getextrema()
            assert hi - lo > 150, f"{png.name} looks blank"
    return figures


def test_demo_runs_the_synthetic_model_when_the_weights_cannot_be_downloaded(clone, my_images, tmp_path):
    import nibabel as nib

    home = tmp_path / "home"
    home.mkdir()
    proxy = f"http://127.0.0.1:{_closed_port()}"  # every download refused at once: no network
    res = _demo(
        clone,
        tmp_path / "out",
        {
            "HOME": str(home),
            "TORCH_HOME": str(home / "torch"),
            "https_proxy": proxy,
            "http_proxy": proxy,
            "HTTPS_PROXY": proxy,
            "HTTP_PROXY": proxy,
        },
        "--images",
        str(my_images),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = res.stdout.splitlines()
    # it tried the real model first: the download, with the file's size
    assert any(
        line.strip().startswith("downloading the ResNet-18 ImageNet weights once:")
        and "resnet18-f37072fd.pth (44.7 MB)" in line
        for line in lines
    ), res.stdout
    why = [line for line in lines if line.startswith("SYNTHETIC model instead of fmri-bold5000-resnet18, because")]
    assert len(why) == 1 and "could not be downloaded" in why[0], res.stdout
    assert "resnet18(weights='DEFAULT')" in res.stdout  # how to get the real model
    # every number printed is explained on its line
    for name in ("median r", "mean r^2", "noise ceiling", "NNMC"):
        (line,) = [line for line in lines if line.strip().startswith(name)]
        assert ": " in line and len(line.split(": ", 1)[1]) > 30, line
    assert "compare with r^2, not r" in res.stdout
    assert "UntrainedBackboneWarning" not in res.stderr  # announced once, in words, above

    out = tmp_path / "out"
    img = nib.load(out / "responses.nii.gz")
    assert img.shape == (20, 24, 20, 2)
    assert json.loads((out / "responses.json").read_text())["volumes"] == list(IMAGES)
    data = np.asarray(img.dataobj)
    assert np.isnan(data).any() and np.isfinite(data).sum() > 1000  # NaN outside the outputs
    assert (out / "responses.h5").stat().st_size > 0
    for png in _check_figures(out):
        assert _stamped(png), f"{png.name}: no SYNTHETIC/UNTRAINED stamp"
    assert not (home / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE).exists()


def test_demo_runs_the_real_model_when_the_weights_are_cached(clone, my_images, tmp_path, fake_torch_home, berg_cache):
    import nibabel as nib

    home = tmp_path / "home"
    home.mkdir()
    res = _demo(
        clone,
        tmp_path / "out",
        # the seeded state dict is not the published checkpoint: berg refuses it unless told it is the user's own
        {
            "HOME": str(home),
            "TORCH_HOME": str(fake_torch_home),
            "BERG_CACHE": str(berg_cache),
            "BERG_UNPINNED_WEIGHTS": "1",
        },
        "--images",
        str(my_images),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "SYNTHETIC" not in res.stdout and "fmri-bold5000-resnet18" in res.stdout
    assert f"{WEIGHTS_FILE} (44.7 MB) found in torchvision's cache" in res.stdout
    assert "downloading" not in res.stdout
    # the numbers: what they are and what the maps' z means
    assert "z-scored over its voxels (mean 0, sd 1 by construction)" in res.stdout
    for name in IMAGES:
        (line,) = [line for line in res.stdout.splitlines() if line.strip().startswith(f"{name}: highest z")]
        assert "at MNI (" in line and "voxels above z = 2" in line
    out = tmp_path / "out"
    img = nib.load(out / "responses.nii.gz")
    assert img.shape == (91, 109, 91, 2)
    assert json.loads((out / "responses.json").read_text())["volumes"] == list(IMAGES)
    for png in _check_figures(out):
        assert not _stamped(png), f"{png.name}: a pretrained model's figure carries a stamp"
