"""``fmri-luminance-baseline``: img2fmri's low-level baseline, frame luminance on a coarse grid.

img2fmri (Bennett & Baldassano 2023, Fig 3) compares its movie predictions with a baseline made of
the luminance of the frames alone: each frame resized to 224 x 224, ImageNet-normalised, and turned
into Rec. 709 luma ``Y = 0.2126 R + 0.7152 G + 0.0722 B`` per pixel. berg serves it as a registered
model so the same machinery (``encode``, :func:`berg.experiments.movies.predict_movie`, HRF,
resampling) runs it like any model. The luma image is averaged over ``14 x 14`` pixel blocks, giving
256 "outputs" on a 16 x 16 grid (pattern correlations of this grid and of the full 224 x 224 image
differ little; it keeps the artifact tiny). The readout is the identity.

Nothing is learned, so there are no weights to download: the artifact (an identity readout and
metadata) is written by :func:`build_artifact`, berg's own code, into the build folder the first time
the model is loaded (``python -m berg.models.luminance`` does it by hand).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from berg.core.engine import LinearEncodingModel
from berg.errors import ModelLoadError, ModelNotBuiltError
from berg.features import FeatureExtractor, resolve_device
from berg.transforms import from_recipe

__all__ = ["MODEL_ID", "GRID", "LUMA", "LuminanceGrid", "LuminanceExtractor", "LuminanceBaseline", "build_artifact"]

log = logging.getLogger(__name__)

MODEL_ID = "fmri-luminance-baseline"
#: Output grid (rows, columns): 224 / 14 = 16 blocks per side.
GRID = (16, 16)
#: Rec. 709 luma weights (img2fmri's ``get_luminance``).
LUMA = (0.2126, 0.7152, 0.0722)
#: Bump when the artifact's content changes.
ARTIFACT_VERSION = 1


def _module_class():
    import torch

    class _LuminanceGrid(torch.nn.Module):
        """Normalised RGB ``(B, 3, H, W)`` -> block-averaged luma ``{"luminance": (B, 16, 16)}``."""

        def __init__(self, grid: tuple[int, int] = GRID):
            super().__init__()
            self.register_buffer("luma", torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1))
            self.pool = torch.nn.AdaptiveAvgPool2d(grid)

        def forward(self, x):
            y = (x * self.luma).sum(dim=1, keepdim=True)
            return {"luminance": self.pool(y)[:, 0]}

    return _LuminanceGrid


def LuminanceGrid(weights: Any = None):  # noqa: N802 - a builder, named like the network it builds
    """The fixed luminance network (no learned weights; ``weights`` is accepted and ignored)."""
    return _module_class()()


class LuminanceExtractor(FeatureExtractor):
    """:class:`~berg.features.FeatureExtractor` of the luminance network (nothing to download or seed)."""

    def __init__(self, recipe, *, device: str = "cpu", transform_overrides=None, **_: Any):
        self.recipe = recipe
        self.device = resolve_device(device)
        self.transform = from_recipe(recipe["transform"], **dict(transform_overrides or {}))
        self.nodes = ["luminance"]
        self.network = LuminanceGrid().eval().to(self.device)
        self.backbone_weights = "none (fixed luma weights)"
        self.seed = 0
        self.untrained = False
        self._warned = False


class LuminanceBaseline(LinearEncodingModel):
    """img2fmri's luminance baseline on berg's engine (identity readout over a 16 x 16 luma grid)."""

    @classmethod
    def extractor_for(cls, request):
        cache = request.shared.setdefault("extractors", {})
        key = f"luminance:{request.device}"
        if key not in cache:
            cache[key] = LuminanceExtractor(request.spec.recipe, device=request.device)
        return cache[key]

    @classmethod
    def load(cls, request):
        try:
            return super().load(request)
        except ModelNotBuiltError:
            # Nothing to learn and nothing to download: build the tiny artifact where the source wants it.
            root = request.client.store.source(request.spec.source).local_root(request.spec.model_id)
            log.info("building %s into %s (no data needed)", request.spec.model_id, root)
            try:
                build_artifact(root)
            except OSError as exc:
                raise ModelLoadError(
                    f"{request.spec.model_id} builds its tiny artifact on first use, but {root} is not writable "
                    f"({exc}). Build it elsewhere with `python -m berg.models.luminance DIR/{MODEL_ID}` and set "
                    "BERG_BUILD_DIR=DIR (or point BERG_CACHE at a writable folder)."
                ) from exc
            return super().load(request)


def build_artifact(out_dir: str | Path) -> Path:
    """Write the luminance model's native artifact (identity readout, flat space, metadata).

    Parameters
    ----------
    out_dir : path
        The artifact folder (e.g. ``<cache>/fmri-luminance-baseline``); written atomically.

    Returns
    -------
    Path
    """
    from berg.store.artifacts import ArtifactWriter

    n = GRID[0] * GRID[1]
    names = [f"lum_r{r:02d}_c{c:02d}" for r in range(GRID[0]) for c in range(GRID[1])]
    w = ArtifactWriter(Path(out_dir), MODEL_ID)
    w.add_tensors(
        "readout/sub-01.safetensors", {"weight": np.eye(n, dtype=np.float32), "bias": np.zeros(n, dtype=np.float32)}
    )
    w.add_json(
        "metadata/sub-01.json",
        {
            "n_outputs": n,
            "output_space": {"kind": "flat", "n_outputs": n, "names": names},
            "info": {"grid": list(GRID), "luma": list(LUMA), "block_pixels": [224 // GRID[0], 224 // GRID[1]]},
        },
    )
    rows = np.arange(n, dtype=np.int64).reshape(GRID)
    w.add_tensors(
        "metadata/sub-01.safetensors",
        {
            "roi/all": rows.ravel(),
            "roi/centre": rows[4:12, 4:12].ravel(),
            "roi/periphery": np.setdiff1d(rows.ravel(), rows[4:12, 4:12].ravel()),
        },
    )
    return w.finalize(
        {
            "creator": "berg.models.luminance.build_artifact",
            "artifact_version": ARTIFACT_VERSION,
            "description": "identity readout over the 16 x 16 block-averaged luma of the frame",
        }
    )


def _main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Build the fmri-luminance-baseline artifact (no data needed).")
    ap.add_argument("out_dir", nargs="?", help="artifact folder (default: the build folder berg loads it from)")
    args = ap.parse_args(argv)
    if args.out_dir is None:
        from berg.registry import Registry
        from berg.store import Store

        args.out_dir = Store().source(Registry().get(MODEL_ID).source).local_root(MODEL_ID)
    import sys

    sys.stdout.write(f"{build_artifact(args.out_dir)}\n")  # a command-line entry point reports its result


if __name__ == "__main__":
    _main()
