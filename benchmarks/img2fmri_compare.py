"""berg vs img2fmri 1.0 on the same images and the same (seeded, untrained) ResNet-18.

img2fmri's own code path is timed up to where it needs AFNI/FSL: ``generate_activations`` (ResNet-18
features, one .npy per image) + ``generate_predictions`` (15 Ridge pickles reloaded per image x
subject, subject-space NIfTIs written to ./temp). berg is timed over its *full* group-map path
(features -> three subjects' readouts -> MNI placement, smoothing, z-scoring), and against the bare
backbone's forward on the same, already preprocessed batches (issue 22: group maps >= 0.9x the bare backbone).

img2fmri is imported from its wheel (pinned sha256, fetched from PyPI by berg's store and cached in
``$BERG_TEST_CACHE``, converted there once for berg as tests/test_bold5000.py does) in this process with
three shims, all stated in the figures' notes: ``np.NaN`` restored for NumPy >= 2, ``nipype`` stubbed
(only its AFNI/FSL wrappers are imported and they are not called here), and
``torchvision.models.resnet18`` returning the seeded untrained network berg uses (no pretrained weights
offline). Its dependency ``natsort`` is not one of berg's: without it (``pip install natsort``) the
img2fmri side is skipped, said in the figures, and berg's side still runs. Without the wheel (offline,
nothing cached) neither side can run: the script says so and exits 0.

Run by hand:  .venv/bin/python benchmarks/img2fmri_compare.py [--n-images 100]
``--smoke``: 4 images, both sides (img2fmri's only with natsort installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
import types
import zipfile
from pathlib import Path

import _harness as H
import numpy as np

TEST_CACHE = Path(os.environ.get("BERG_TEST_CACHE", Path.home() / ".cache" / "berg-test"))


def make_images(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


def import_img2fmri(wheel: Path, where: Path):
    import torch
    import torchvision

    with zipfile.ZipFile(wheel) as z:
        z.extractall(where)
    sys.path.insert(0, str(where))
    np.NaN = np.nan  # type: ignore[attr-defined]  # img2fmri predates NumPy 2
    nipype = types.ModuleType("nipype")
    interfaces = types.ModuleType("nipype.interfaces")
    interfaces.afni = types.ModuleType("nipype.interfaces.afni")
    interfaces.fsl = types.ModuleType("nipype.interfaces.fsl")
    nipype.interfaces = interfaces
    nipype.__path__ = []  # a package, so submodule imports resolve to the stubs below
    algorithms = types.ModuleType("nipype.algorithms")
    confounds = types.ModuleType("nipype.algorithms.confounds")
    confounds._cosine_drift = None  # used only by img2fmri's movie analysis helpers
    algorithms.confounds = confounds
    sys.modules.update({"nipype.algorithms": algorithms, "nipype.algorithms.confounds": confounds})
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))  # only its movie-frame helpers use OpenCV
    sys.modules.update(
        {
            "nipype": nipype,
            "nipype.interfaces": interfaces,
            "nipype.interfaces.afni": interfaces.afni,
            "nipype.interfaces.fsl": interfaces.fsl,
        }
    )
    real = torchvision.models.resnet18

    def seeded_resnet18(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return real(weights=None)

    torchvision.models.resnet18 = seeded_resnet18
    import importlib

    return importlib.import_module("img2fmri.predict")


SHIMS = "np.NaN restored; nipype and cv2 stubbed (AFNI/FSL/movie code not called); resnet18 -> seeded weights=None"


def run_img2fmri(wheel: Path, tmp: Path) -> tuple[float, int]:
    """img2fmri's activations + subject-space predictions on ``tmp/images``: seconds, files written."""
    predict = import_img2fmri(wheel, tmp / "wheel")
    work = tmp / "work"
    for sub in ("temp/activations", "temp/subj_space"):
        (work / sub).mkdir(parents=True)
    cwd = os.getcwd()
    os.chdir(work)  # img2fmri writes into ./temp
    try:
        t0 = time.perf_counter()
        predict.generate_activations(str(tmp / "images"))
        predict.generate_predictions()
        seconds = time.perf_counter() - t0
    finally:
        os.chdir(cwd)
    return seconds, len(list((work / "temp" / "subj_space").glob("*.nii.gz")))


BARE = (
    "bare = the same seeded ResNet-18's forward on the same images, decoded and preprocessed by the "
    "model's own transform beforehand (untimed), in the model's batch size; berg's figure includes decoding, "
    "preprocessing, 3 subjects' readouts and the MNI placement, smoothing and z-scoring"
)


def bare_backbone_seconds(model, images: list[Path], repeats: int) -> float:
    """Best seconds of the backbone's forward alone over ``images`` (issue 22: group maps >= 0.9x this)."""
    import torch
    from PIL import Image

    transform, net = model.extractor.transform, model.extractor.network
    items = [np.array(Image.open(p).convert("RGB")) for p in images]
    size = model.batch_size
    batches = [transform(items[i : i + size]) for i in range(0, len(items), size)]

    def forward() -> None:
        with torch.inference_mode():
            for x in batches:
                net(x)

    return H.best_time(forward, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2, help="berg and the bare backbone: best of this many runs")
    args = H.add_arguments(ap).parse_args()
    if args.smoke:
        args.n_images, args.repeats = 4, 1
    rec = H.start("img2fmri_compare", args, n_images=args.n_images)

    import berg
    from berg.models.bold5000_resnet18.convert import CONVERTER_VERSION, WHEEL_SHA256, convert_wheel
    from berg.registry import Registry
    from berg.store import Store
    from berg.store.sources import source_for

    try:
        wheel = source_for(Registry().get("fmri-bold5000-resnet18").source).wheel_path(Store(cache_dir=TEST_CACHE))
    except berg.BERGError as exc:  # offline with nothing cached: nothing to compare
        note = f"img2fmri's wheel is unavailable, neither side ran: {exc}"
        H.log.warning("%s", note)
        rec.figure("berg_full_group_map", None, "img/s", note=note)
        return
    artifact = TEST_CACHE / "artifacts" / f"{WHEEL_SHA256[:12]}-v{CONVERTER_VERSION}"
    if not (artifact / "manifest.json").is_file():
        convert_wheel(wheel, artifact)

    with tempfile.TemporaryDirectory(prefix="berg-i2f-bench-") as tmp:
        tmp = Path(tmp)
        images = make_images(tmp / "images", args.n_images)

        client = berg.BERG(berg_dir=artifact, cache_dir=tmp / "cache", offline=True)
        model = client.get_encoding_model(
            "fmri-bold5000-resnet18", subject="all", space="mni", device="cpu", backbone_weights="untrained"
        )
        shape = "x".join(map(str, model.encode(images[:2], show_progress=False).shape[1:]))
        # Best of `repeats` after a warm-up, for berg and the bare backbone alike (same graph, same batches).
        t_berg = H.best_time(lambda: model.encode(images, show_progress=False), args.repeats)
        rec.figure("berg_full_group_map", args.n_images / t_berg, "img/s", output=f"{args.n_images}x{shape}")
        t_bare = bare_backbone_seconds(model, images, args.repeats)
        rec.figure("bare_backbone", args.n_images / t_bare, "img/s", note=BARE)
        rec.figure("group_map_over_bare", t_bare / t_berg, "x", target=">= 0.9", note=BARE)
        if importlib.util.find_spec("natsort") is None:
            note = "img2fmri side skipped: its dependency natsort is not installed (pip install natsort)"
            H.log.warning("%s", note)
            rec.figure("img2fmri_activations_plus_subject_predictions", None, "img/s", note=note)
            rec.figure("berg_over_img2fmri", None, "x", target=">= 5", note=note)
            return
        t_i2f, n_written = run_img2fmri(wheel, tmp)
    rec.figure(
        "img2fmri_activations_plus_subject_predictions",
        args.n_images / t_i2f,
        "img/s",
        note=SHIMS,
        subject_space_files=n_written,
    )
    rec.figure("berg_over_img2fmri", t_i2f / t_berg, "x", target=">= 5", note=SHIMS)


if __name__ == "__main__":
    main()
