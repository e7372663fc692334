"""`make demo`: berg's main job end to end, on images that ship with the repository.

* The real published model ``fmri-bold5000-resnet18`` (img2fmri) whenever its files can be had: the
  ResNet-18 ImageNet weights from torchvision's cache (``$TORCH_HOME/hub/checkpoints``), downloaded
  once with a progress bar when missing (44.7 MB), and img2fmri's readout from PyPI (a 62.3 MB wheel,
  converted once in about 30 s). Each image's group-level map on the MNI152 2 mm template.
* A small SYNTHETIC model (berg's own creation code: random images, an untrained ResNet-18, made-up
  "voxels" on a made-up grid) only when those files cannot be had (no network, ``BERG_OFFLINE=1``) or
  with ``--synthetic``. It says so, in one line says why, and says how to get the real one.

Outputs (``--out``, default ``demo_output/``): ``responses.h5`` (berg.save, with provenance),
``responses.nii.gz`` (one volume per image) with ``responses.json`` beside it (which image each volume
is), and ``maps/<image>.png`` for every image: the image beside its map (a stat map and a glass brain
on MNI152 for the real model; a projection in the made-up grid, stamped SYNTHETIC, otherwise).

Usage::

    python scripts/demo.py [--out DIR] [--images DIR | --images FILE ...] [--synthetic]
    make demo IMAGES=path/to/folder
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # creation_code/ lives in the repository, not in the installed package

EXAMPLE_IMAGES = REPO / "examples" / "images"
REAL_MODEL = "fmri-bold5000-resnet18"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# A download that stalls (a network that drops packets) fails after this long instead of hanging.
NETWORK_TIMEOUT_S = 60

log = logging.getLogger("berg.demo")


def say(msg: str = "") -> None:
    """The demo is a command-line program: its report goes to stdout."""
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def find_images(given: list[str] | None) -> list[Path]:
    """Image files from ``--images`` (folders expand to their images, sorted by name), else the examples."""
    sources = [Path(g).expanduser() for g in given] if given else [EXAMPLE_IMAGES]
    images: list[Path] = []
    for src in sources:
        if src.is_dir():
            images += sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif src.is_file():
            images.append(src)
        else:
            raise SystemExit(f"demo: --images {src}: no such file or folder")
    if not images:
        raise SystemExit(
            f"demo: no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, sources))}; "
            "pass a folder of images: make demo IMAGES=path/to/folder"
        )
    return images


def backbone_weights() -> tuple[Any, Path, float | None]:
    """The real model's backbone weights: (torchvision enum member, cache file, size in MB if known)."""
    import torch
    from torchvision.models import get_weight

    from berg.registry import Registry

    weights = get_weight(Registry().get(REAL_MODEL).recipe["backbone"]["weights"])
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    size = weights.meta.get("_file_size")  # torchvision's own record of the file, in MB
    return weights, target, (float(size) if size else None)


def one_line(exc: BaseException) -> str:
    """An exception as one line (the reason the real model could not run)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def get_backbone() -> str | None:
    """Make sure the ResNet-18 ImageNet weights are in torchvision's cache; ``None`` or why they are not."""
    from berg.env import env_flag

    weights, target, size = backbone_weights()
    mb = f"{size:.1f} MB" if size else "size unknown"
    if target.is_file():
        say(f"      ResNet-18 ImageNet weights: {target.name} ({mb}) found in torchvision's cache {target.parent}")
        return None
    if env_flag("BERG_OFFLINE"):
        return f"BERG_OFFLINE is set and the ResNet-18 ImageNet weights ({target.name}) are not in {target.parent}"
    say(f"      downloading the ResNet-18 ImageNet weights once: {weights.url} ({mb}) into {target.parent}")
    import re

    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    # torch.hub's downloader (what torchvision uses): progress bar, temporary file renamed when complete,
    # sha256 prefix from the file name checked; without torchvision's extra "Downloading: ..." line
    digest = re.search(r"-([a-f0-9]+)\.", target.name)
    try:
        torch.hub.download_url_to_file(
            weights.url, str(target), hash_prefix=digest.group(1) if digest else None, progress=True
        )
    except (OSError, RuntimeError) as exc:  # URLError/timeouts are OSErrors; a bad hash a RuntimeError
        reason = one_line(getattr(exc, "reason", None) or exc)
        return f"the ResNet-18 ImageNet weights ({mb}) could not be downloaded from {weights.url} ({reason})"
    return None


def figure_names(images: list[Path]) -> list[str]:
    """One figure file name per image (its stem; a number added where two images share one)."""
    names, seen = [], set()
    for path in images:
        name, n = path.stem, 2
        while name in seen:
            name, n = f"{path.stem}-{n}", n + 1
        seen.add(name)
        names.append(f"{name}.png")
    return names


def write_outputs(out: Path, responses, model, images: list[Path], *, title: str) -> list[Path]:
    """HDF5 (berg.save) + NIfTI with its stimulus sidecar (berg.save_nifti) + one figure per image."""
    import berg
    from berg.plotting import figure_stamp, plot_stimulus_maps, response_units

    names = [p.name for p in images]
    h5 = berg.save(out / "responses.h5", responses, model, stimulus_ids=names)
    nii = berg.save_nifti(out / "responses.nii.gz", responses, model, stimulus_ids=names)
    written = [Path(h5), Path(nii), Path(nii).with_name("responses.json")]
    units, stamp = response_units(model), figure_stamp(model)
    for i, (path, png) in enumerate(zip(images, figure_names(images))):
        fig = plot_stimulus_maps(
            path, nii, index=i, units=units, stamp=stamp, title=f"{title}: {path.name}", out_path=out / "maps" / png
        )
        fig.clear()  # free the figure's memory now: a folder of images makes many
        written.append(out / "maps" / png)
    return written


def explain_real_maps(maps, group, images: list[Path]) -> None:
    """Every number printed about the real model's maps, each explained on its line."""
    import numpy as np

    say(f"      each map: {maps.shape[1]:,} MNI152 voxels (img2fmri's five visual ROIs of 3 people, smoothed)")
    say("      values are z: each image's map is z-scored over its voxels (mean 0, sd 1 by construction),")
    say("      so a map shows WHERE an image drives cortex more or less than its average, not how much.")
    img = group.to_nifti(maps)
    for i, path in enumerate(images):
        volume = np.asarray(img.dataobj[..., i])
        ijk = np.unravel_index(int(np.nanargmax(volume)), volume.shape)
        xyz = img.affine[:3, :3] @ np.asarray(ijk, float) + img.affine[:3, 3]
        say(
            f"      {path.name}: highest z {np.nanmax(volume):.2f} at MNI ({xyz[0]:.0f}, {xyz[1]:.0f}, {xyz[2]:.0f})"
            f" mm; {int(np.sum(maps[i] > 2)):,} voxels above z = 2"
        )
    say(
        "      accuracy (model card): img2fmri published no voxel-wise r or noise ceiling for these regressions;"
        " on new images (Twinset)"
    )
    say("      its group maps beat chance (permutation tests) for 4 of 5 image categories and all 15 people tested.")


def run_real(images: list[Path], out: Path) -> str | None:
    """The published img2fmri model: group-level MNI152 maps of every image; ``None`` or why it could not run."""
    import numpy as np

    import berg

    say(f"{REAL_MODEL} (img2fmri): ResNet-18 ImageNet features -> ridge readout -> group map on MNI152")
    why = get_backbone()
    if why is not None:
        return why
    say("[1/4] loading the readout: img2fmri's wheel from PyPI (62.3 MB, sha256 pinned), converted once (~30 s)")
    client = berg.BERG()
    try:
        group = client.get_encoding_model(REAL_MODEL, subject="all", space="mni")
    except berg.BERGError as exc:  # no PyPI (offline, firewall) or the backbone file is unreadable
        return one_line(exc)
    say(f"[2/4] encoding {len(images)} image(s): {', '.join(p.name for p in images)}")
    maps = client.encode(group, images)
    assert np.isfinite(maps).all()
    say(f"      group maps: {maps.shape} float32 -> NIfTI {group.to_nifti(maps).shape} (MNI152 2 mm grid)")
    explain_real_maps(maps, group, images)
    written = write_outputs(out, maps, group, images, title=f"{REAL_MODEL} group map")
    say(f"[3/4] wrote in {out}: {', '.join(str(p.relative_to(out)) for p in written)}")
    say("      maps/<image>.png: the image, its stat map on the MNI152 template (three slices through the peak)")
    say("      and its glass brain (all voxels projected); red = above the map's average, blue = below.")
    say("[4/4] done. Open responses.nii.gz in any NIfTI viewer, or nilearn.plotting.view_img(...) in Jupyter.")
    return None


def explain_synthetic_accuracy(client, model_id: str) -> None:
    """The synthetic model's held-out accuracy, each number explained on its line."""
    summary = client.describe(model_id)["accuracy"]["summary"]
    a = summary.get(1) or summary.get("1") or next(iter(summary.values()))
    n_test, n_out = a["n_test_stimuli"], a["n_outputs"]
    say(f"      held-out accuracy: {n_test} synthetic test images never used in fitting, {n_out:,} made-up voxels")
    say(
        f"        median r {a['median_r']:.2f}: Pearson correlation of prediction and simulated response per"
        " voxel, median over voxels"
    )
    say(f"        mean r^2 {a['mean_r2']:.2f}: share of a voxel's test variance the model explains, mean over voxels")
    say(
        f"        noise ceiling {a['mean_noise_ceiling']:.2f}: estimated share of variance that repeats across the"
        " simulated trials, the most a model can explain on average (compare with r^2, not r; an estimate, so"
        " single voxels can pass it by chance)"
    )
    say(
        f"        NNMC {a['nnmc']:.0f}%: mean over voxels of r^2 / noise ceiling, capped at 100% (Algonauts 2023);"
        " 100% = at the ceiling"
    )


def run_synthetic(images: list[Path], out: Path, reason: str) -> None:
    """Build the synthetic demo model with berg's creation code and run it through berg's store."""
    import numpy as np

    import berg
    from berg.errors import UntrainedBackboneWarning
    from creation_code.demo.build import build_demo

    say(f"SYNTHETIC model instead of {REAL_MODEL}, because {reason}")
    say("=" * 78)
    say("NOTE: a SYNTHETIC model (random images, untrained ResNet-18, made-up voxels on a made-up grid).")
    say("It shows berg's machinery end to end; its outputs mean nothing about brains.")
    say("To run the real published model instead, on a machine with internet run `make demo` again: it")
    say("downloads the ResNet-18 ImageNet weights (44.7 MB) and img2fmri's readout from PyPI (62.3 MB) once.")
    say("Or download the weights yourself into torchvision's cache (TORCH_HOME):")
    say("    .venv/bin/python -c \"import torchvision; torchvision.models.resnet18(weights='DEFAULT')\"")
    say("=" * 78)
    with tempfile.TemporaryDirectory(prefix="berg-demo-") as tmp:
        tmp = Path(tmp)
        say("[1/4] building the synthetic demo model with berg's creation code ...")
        with warnings.catch_warnings():  # the untrained backbone is this model's design, announced above
            warnings.simplefilter("ignore", UntrainedBackboneWarning)
            built = build_demo(tmp / "build")
        # The artifact folder laid out as a bucket: berg reads it in place through its store.
        bucket = tmp / "bucket"
        (bucket / built.prefix).parent.mkdir(parents=True, exist_ok=True)
        Path(built.artifact_dir).rename(bucket / built.prefix.rstrip("/"))  # berg refuses symlinks out
        client = berg.BERG(berg_dir=bucket, cache_dir=tmp / "cache", registry=built.registry_path, offline=True)
        say(f"      trained and exported: {built.model_id}")
        explain_synthetic_accuracy(client, built.model_id)
        model = client.get_encoding_model(built.model_id, subject=1, backbone_weights="untrained", device="cpu")
        say(f"[2/4] encoding {len(images)} image(s): {', '.join(p.name for p in images)}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UntrainedBackboneWarning)
            responses = client.encode(model, images, show_progress=False)
        assert np.isfinite(responses).all()
        say(
            f"      responses: {responses.shape} {responses.dtype} -> NIfTI {model.to_nifti(responses).shape}"
            " (made-up 3 mm grid, no anatomy)"
        )
        written = write_outputs(out, responses, model, images, title="SYNTHETIC model, made-up grid")
        say(f"[3/4] wrote in {out}: {', '.join(str(p.relative_to(out)) for p in written)}")
    say("[4/4] demo finished. Remember: synthetic model, synthetic numbers.")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    ap.add_argument(
        "--images",
        nargs="+",
        default=None,
        metavar="PATH",
        help="image files or folders of images (default: the repository's examples/images)",
    )
    ap.add_argument("--synthetic", action="store_true", help="use the synthetic model even if the real one can run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    socket.setdefaulttimeout(NETWORK_TIMEOUT_S)  # this process only: a stalled download fails, never hangs

    images = find_images(args.images)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        run_synthetic(images, out, "--synthetic was given")
        return 0
    why = run_real(images, out)
    if why is not None:
        run_synthetic(images, out, why)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
