"""The core tests' synthetic volume model: :func:`berg.testing.toy_model` with a scikit-learn readout.

Untrained ResNet-18 at 64 px -> StandardScaler -> PCA(8) -> LinearRegression, fitted by scikit-learn on
features computed without berg (:func:`berg.testing.reference_features`); the tests check that berg's
engine reproduces scikit-learn's predictions. The names below are what the core tests import.
"""

from __future__ import annotations

from pathlib import Path

from berg.testing import ToyModel, synthetic_card, toy_model
from berg.testing.toys import VOLUME_GRID, VOLUME_ROIS

MODEL_ID = "test-synthetic-resnet18"
PREFIX = "synthetic/model-resnet18/"
SIZE = 64
GRID = VOLUME_GRID
N_OUT = {1: 30, 2: 25}
ROIS = VOLUME_ROIS


def _card(n_out: dict[int, int]) -> dict:
    """The card this model registers (the schema test checks it)."""
    space = {"kind": "volume", "shape": list(GRID)}
    selection = {"rois": list(ROIS), "n_outputs": dict(n_out)}
    return synthetic_card(MODEL_ID, space=space, selection=selection, subjects=list(n_out))


def build(root: Path, seed: int = 0) -> ToyModel:
    """Write berg_dir + registry + card under ``root``; ``.expected`` holds scikit-learn's predictions."""
    return toy_model(
        root,
        "volume",
        model_id=MODEL_ID,
        prefix=PREFIX,
        bucket="berg-test-synthetic",
        dataset="synthetic",
        size=SIZE,
        n_outputs=N_OUT,
        readout="sklearn",
        n_components=8,
        seed=seed,
    )
