"""The scikit-learn toy: a volume model whose outputs must equal scikit-learn's predictions.

:func:`build` is :func:`berg.testing.toy_model` with fixed settings: an untrained ResNet-18 at 64 px ->
StandardScaler -> PCA(8) -> LinearRegression, fitted by scikit-learn on features computed without berg
(:func:`berg.testing.reference_features`), served from ``berg_dir`` under an S3-style prefix. berg's
core tests (API, CLI, ``berg run``, the S3 store, experiments) share it, so each checks that berg's
engine reproduces scikit-learn (``ToyModel.expected``) on the same model; the constants below are the
facts those tests assert.

>>> from berg.testing import sklearn_toy
>>> toy = sklearn_toy.build(tmp_path)                                    # doctest: +SKIP
>>> toy.client().get_encoding_model(sklearn_toy.MODEL_ID, subject=1, backbone_weights="untrained")
"""

from __future__ import annotations

from pathlib import Path

from berg.testing.toys import VOLUME_GRID, VOLUME_ROIS, ToyModel, toy_model

__all__ = ["MODEL_ID", "PREFIX", "BUCKET", "SIZE", "GRID", "N_OUT", "ROIS", "build"]

MODEL_ID = "test-synthetic-resnet18"
PREFIX = "synthetic/model-resnet18/"
BUCKET = "berg-test-synthetic"
SIZE = 64
GRID = VOLUME_GRID
N_OUT = {1: 30, 2: 25}
ROIS = VOLUME_ROIS


def build(root: str | Path, seed: int = 0) -> ToyModel:
    """Write the model (registry entry + card + artifact) under ``root``.

    Parameters
    ----------
    root : path
        Folder for ``registry.yaml``, ``model_cards/`` and ``berg_dir/`` (the artifact is under
        ``berg_dir / PREFIX``; upload that folder to serve it from S3 bucket :data:`BUCKET`).
    seed : int
        Seed of the backbone-independent draws (images, responses).

    Returns
    -------
    ToyModel
        ``.expected`` holds scikit-learn's predictions on ``.test_images`` per subject.
    """
    return toy_model(
        root,
        "volume",
        model_id=MODEL_ID,
        prefix=PREFIX,
        bucket=BUCKET,
        dataset="synthetic",
        size=SIZE,
        n_outputs=N_OUT,
        readout="sklearn",
        n_components=8,
        seed=seed,
        creator="berg.testing.sklearn_toy",
    )
