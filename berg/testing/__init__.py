"""Synthetic models, replicas and datasets with known ground truth: for berg's tests, benchmarks, the demo and yours.

Everything a test of code that calls berg needs, without downloading a published model:

* :func:`toy_model` writes a registered synthetic model (registry entry + card + native artifact) of
  any output space (``flat``, ``volume``, ``surface``, ``sensor_time``) and returns a
  :class:`ToyModel` whose :meth:`~ToyModel.predict` is the ground truth; :func:`toy_suite` registers
  one model of every kind the model contract allows (non-linear, surface, ensemble, buildable).
* :func:`replica_entry` registers a stand-in for a published model (its card and recipe, your
  replica's files and sizes); :func:`write_bmd_replica`, :func:`write_catalogue_replica` and
  :func:`write_algonauts_artifact` write those files as the publisher does.
* :func:`make_synthetic_dataset` writes a training dataset whose true weights and noise ceilings are
  known; :func:`linear_problem` is a bare regression problem.
* :func:`resnet18_recipe` is the ResNet-18 / ImageNet feature recipe these models share
  (:func:`image_recipe` writes one for any backbone), and :func:`reference_features` computes its
  features with torchvision alone (the independent side of a parity test).
* :mod:`berg.testing.hostile` builds hostile inputs (decompression bombs, truncated files, odd arrays,
  output paths) that berg must refuse with a ``BERGError``; :mod:`berg.testing.s3server` runs a real
  S3 server (SeaweedFS) for tests of remote stores.

>>> from berg.testing import toy_model
>>> toy = toy_model(tmp_path, "volume", subjects=[1, 2])                   # doctest: +SKIP
>>> model = toy.client().get_encoding_model(toy.model_id, subject=1, backbone_weights="untrained")

Nothing here is imported by ``import berg``, and importing this module imports neither torch nor
scikit-learn (they are imported when a model is written).
"""

from __future__ import annotations

from typing import Any

_HOMES = {
    **dict.fromkeys(
        [
            "IMAGENET_MEAN",
            "IMAGENET_STD",
            "SPACES",
            "ToyModel",
            "ToySuite",
            "ToyMLPModel",
            "IncompleteModel",
            "toy_model",
            "toy_suite",
            "build_toy_model",
            "image_recipe",
            "resnet18_recipe",
            "reference_features",
            "synthetic_card",
            "add_registry_entry",
        ],
        "berg.testing.toys",
    ),
    **dict.fromkeys(
        [
            "replica_entry",
            "write_bmd_replica",
            "write_catalogue_replica",
            "catalogue_reference",
            "write_algonauts_artifact",
        ],
        "berg.testing.replicas",
    ),
    **dict.fromkeys(
        ["SyntheticTruth", "make_synthetic_dataset", "blob_grid", "linear_problem"], "berg.testing.datasets"
    ),
}

#: The public names, each imported from its home module on first use.
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    # Lazy: the dataset writer pulls in h5py, the toys berg's store; a user importing one name pays for one.
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'berg.testing' has no attribute {name!r}; available: {', '.join(__all__)}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
