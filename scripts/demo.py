"""`make demo`: berg's main job end to end, on images that ship with the repository.

* When the pretrained ResNet-18 weights are in torchvision's cache (``$TORCH_HOME/hub/checkpoints``),
  the demo runs the real published model ``fmri-bold5000-resnet18`` (img2fmri): its group-level map on
  the MNI152 2 mm template for every image (the readout is fetched from PyPI and converted once, ~30 s).
* Otherwise it builds and runs a small SYNTHETIC model with berg's own creation code (random images, an
  untrained ResNet-18, made-up "voxels" on a made-up grid). It says so, and says how to get the real one.

Outputs (``--out``, default ``demo_output/``): ``responses.h5`` (berg.save, with provenance),
``responses.nii.gz`` (one volume per image) with ``responses.json`` beside it (which image each volume
is), and ``responses_map.png`` (+ ``responses_glass.png`` on MNI): nilearn maps of the first image.

Usage::

    python scripts/demo.py [--out DIR] [--images DIR | --images FILE ...] [--synthetic]
    make demo IMAGES=path/to/folder
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # creation_code/ lives in the repository, not in the installed package

EXAMPLE_IMAGES = REPO / "examples" / "images"
REAL_MODEL = "fmri-bold5000-resnet18"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

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


def pretrained_weights_file() -> Path:
    """Where torchvision keeps the real model's backbone weights (whether or not the file is there)."""
    import torch
    from torchvision.models import get_weight

    from berg.registry import Registry

    weights = get_weight(Registry().get(REAL_MODEL).recipe["backbone"]["weights"])
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def write_outputs(
    out: Path, responses, model, images: list[Path], *, units: str, title: str, on_template: bool
) -> list[Path]:
    """HDF5 (berg.save) + NIfTI with its stimulus sidecar (berg.save_nifti) + nilearn maps (berg.plotting)."""
    import berg
    from berg.plotting import plot_volume

    names = [p.name for p in images]
    h5 = berg.save(out / "responses.h5", responses, model, stimulus_ids=names)
    nii = berg.save_nifti(out / "responses.nii.gz", responses, model, stimulus_ids=names)
    written = [Path(h5), Path(nii), Path(nii).with_name("responses.json")]
    maps = [("stat", out / "responses_map.png")] + ([("glass", out / "responses_glass.png")] if on_template else [])
    for kind, png in maps:
        plot_volume(nii, kind=kind, index=0, units=units, title=f"{title} - {names[0]}", mni=on_template, out_path=png)
        written.append(png)
    return [p for p in written if p.exists()]


def run_real(images: list[Path], out: Path) -> None:
    """The published img2fmri model: group-level MNI152 maps of every image."""
    import numpy as np

    import berg

    client = berg.BERG()
    say(f"[1/4] loading {REAL_MODEL} (subject='all', space='mni'): readout from PyPI, converted once")
    group = client.get_encoding_model(REAL_MODEL, subject="all", space="mni")
    say(f"[2/4] encoding {len(images)} images: {', '.join(p.name for p in images)}")
    maps = client.encode(group, images)
    say(f"      group maps: {maps.shape} {maps.dtype} -> NIfTI {group.to_nifti(maps).shape} (MNI152 2 mm)")
    written = write_outputs(
        out, maps, group, images, units="z (group map)", title=f"{REAL_MODEL} group map", on_template=True
    )
    say(f"[3/4] wrote {', '.join(p.name for p in written)} in {out}")
    assert np.isfinite(maps).all()
    say("[4/4] done. Open the map with any NIfTI viewer, or nilearn.plotting.view_img(...) in Jupyter.")


def run_synthetic(images: list[Path], out: Path, reason: str) -> None:
    """Build the synthetic demo model with berg's creation code and run it through berg's store."""
    import numpy as np

    import berg
    from creation_code.demo.build import build_demo

    say("=" * 78)
    say("NOTE: this run uses a SYNTHETIC model (random images, untrained ResNet-18, made-up voxels on")
    say("a made-up grid). It shows berg's machinery end to end; its outputs mean nothing about brains.")
    say(f"Why: {reason}")
    say("To run the real published model (fmri-bold5000-resnet18) instead, download the ResNet-18")
    say("ImageNet weights once on a connected machine:")
    say("    .venv/bin/python -c \"import torchvision; torchvision.models.resnet18(weights='DEFAULT')\"")
    say("then run `make demo` again (it also needs PyPI once, for img2fmri's readout).")
    say("=" * 78)
    with tempfile.TemporaryDirectory(prefix="berg-demo-") as tmp:
        tmp = Path(tmp)
        say("[1/4] building the synthetic demo model with berg's creation code ...")
        built = build_demo(tmp / "build")
        say(f"      trained and exported: {built.model_id} ({built.summary})")
        # The artifact folder laid out as a bucket: berg reads it in place through its store.
        bucket = tmp / "bucket"
        (bucket / built.prefix).parent.mkdir(parents=True, exist_ok=True)
        Path(built.artifact_dir).rename(bucket / built.prefix.rstrip("/"))  # berg refuses symlinks out
        client = berg.BERG(berg_dir=bucket, cache_dir=tmp / "cache", registry=built.registry_path, offline=True)
        model = client.get_encoding_model(built.model_id, subject=1, backbone_weights="untrained", device="cpu")
        say(f"[2/4] encoding {len(images)} images: {', '.join(p.name for p in images)}")
        responses = client.encode(model, images, show_progress=False)
        say(
            f"      responses: {responses.shape} {responses.dtype} -> NIfTI {model.to_nifti(responses).shape}"
            " (made-up 3 mm grid)"
        )
        written = write_outputs(
            out,
            responses,
            model,
            images,
            units="SYNTHETIC arbitrary units",
            title="SYNTHETIC model, made-up grid (no anatomy)",
            on_template=False,
        )
        say(f"[3/4] wrote {', '.join(p.name for p in written)} in {out}")
        assert np.isfinite(responses).all()
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
    ap.add_argument("--synthetic", action="store_true", help="use the synthetic model even if real weights exist")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    images = find_images(args.images)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    weights = pretrained_weights_file()
    if args.synthetic:
        run_synthetic(images, out, "--synthetic was given")
        return 0
    if not weights.is_file():
        run_synthetic(images, out, f"the ResNet-18 ImageNet weights are not in torchvision's cache ({weights})")
        return 0
    import berg

    try:
        run_real(images, out)
    except berg.BERGError as exc:  # e.g. offline on first use: the readout cannot be fetched from PyPI
        say(f"could not run {REAL_MODEL}: {exc}")
        run_synthetic(images, out, f"{REAL_MODEL} could not be loaded (see above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
