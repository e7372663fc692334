"""`make demo`: berg's main job end to end, offline, on a SYNTHETIC demo model.

1. starts a local S3 server (SeaweedFS, 127.0.0.1 only),
2. builds a small synthetic demo model with berg's own creation code (random images, an untrained
   ResNet-18, made-up "voxels"; it is NOT a brain model),
3. uploads the artifact and fetches it lazily through berg's store,
4. encodes the images in ../shared/data/img2fmri/*.jpg,
5. writes HDF5 + NIfTI + a PNG slice plot into --out.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # creation_code/ and tests/s3server.py live in the repository

log = logging.getLogger("berg.demo")


def say(msg: str) -> None:
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def find_images(explicit: str | None) -> list[Path]:
    candidates = [Path(explicit)] if explicit else [REPO.parent / "shared" / "data" / "img2fmri", REPO / "shared" / "data" / "img2fmri"]
    for folder in candidates:
        images = sorted(folder.glob("*.jpg"))
        if images:
            return images
    raise SystemExit(f"demo: no .jpg images found in {', '.join(map(str, candidates))}; pass --images DIR")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    ap.add_argument("--images", default=None, help="folder of .jpg images (default: ../shared/data/img2fmri)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    images = find_images(args.images)

    import numpy as np

    import berg
    from berg.plotting import plot_volume_slices
    from berg.store.cache import cache_list
    from creation_code.demo.build import BUCKET, build_demo
    from tests.s3server import SeaweedServer

    say("=" * 78)
    say("berg demo — NOTE: the model used here is SYNTHETIC (random images, untrained ResNet-18,")
    say("made-up voxels). It shows the machinery end to end; its outputs mean nothing about brains.")
    say("=" * 78)
    with tempfile.TemporaryDirectory(prefix="berg-demo-") as tmp, SeaweedServer(Path(tmp) / "s3") as server:
        tmp = Path(tmp)
        say(f"[1/5] local S3 server (SeaweedFS) on {server.endpoint_url}")
        say("[2/5] building the synthetic demo model with berg's creation code ...")
        built = build_demo(tmp / "demo_model")
        say(f"      trained and exported: {built.model_id} ({built.summary})")
        server.create_bucket(BUCKET)
        server.upload_tree(built.artifact_dir, BUCKET, built.prefix)
        say(f"[3/5] uploaded to s3://{BUCKET}/{built.prefix}; fetching lazily through berg's store")
        os.environ["BERG_S3_ENDPOINT"] = server.endpoint_url
        client = berg.BERG(cache_dir=tmp / "cache", registry=built.registry_path)
        model = client.get_encoding_model(built.model_id, subject=1, backbone_weights="untrained", device="cpu")
        say(f"[4/5] encoding {len(images)} images: {', '.join(p.name for p in images)}")
        responses = client.encode(model, images, show_progress=False)
        say(f"      responses: {responses.shape} {responses.dtype}, mean {responses.mean():+.3f}, sd {responses.std():.3f}")
        h5 = out / "responses.h5"
        berg.save(h5, responses, model)
        nii = out / "responses.nii.gz"
        img = model.to_nifti(responses)
        tmp_nii = nii.with_name(".responses.tmp.nii.gz")
        img.to_filename(str(tmp_nii))
        tmp_nii.replace(nii)
        png = out / "responses_slices.png"
        plot_volume_slices(img, title=f"{built.model_id} (SYNTHETIC) — {images[0].name}", out_path=png)
        cached = [e["key"] for e in cache_list(tmp / "cache")]
        say(f"[5/5] wrote {h5}, {nii} {img.shape}, {png}")
        say(f"      files fetched into the cache: {len(cached)}")
        assert np.isfinite(responses).all()
    say("demo finished. Remember: synthetic model, synthetic numbers.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
