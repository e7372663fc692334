"""The contract tests' toy models: :func:`berg.testing.toy_suite` and the names the tests import.

Every model is registered only through registry.yaml + card + artifact (see :func:`berg.testing.toy_suite`).
"""

from __future__ import annotations

import numpy as np

from berg.testing import toy_suite as build  # noqa: F401  (the tests' entry point)
from berg.testing.toys import CHANNELS as _CHANNELS
from berg.testing.toys import SURFACE_HEMIS, SURFACE_ROIS, TIMES_MS, resnet18_recipe

CHANNELS = list(_CHANNELS)
TIMES = list(TIMES_MS)
SURFACE_ROIS = {k: np.asarray(v) for k, v in SURFACE_ROIS.items()}


def _surface_space() -> dict:
    return {
        "kind": "surface",
        "template": "toyaverage",
        "hemispheres": list(SURFACE_HEMIS),
        "n_vertices": dict(SURFACE_HEMIS),
    }


def reference_features(images) -> np.ndarray:
    """Untrained seed-0 ResNet-18 avgpool features at 32 px, via berg's own extractor (shared by the toys)."""
    from berg.features import FeatureExtractor

    ex = FeatureExtractor(resnet18_recipe(size=32), backbone_weights="untrained", device="cpu", seed=0)
    return ex.extract(list(images)).numpy().astype(np.float64)


def surface_reference(readout: tuple, feats: np.ndarray) -> np.ndarray:
    w, b = readout
    return feats @ w.T.astype(np.float64) + b
