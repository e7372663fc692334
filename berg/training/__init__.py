"""Creation pipeline: train, evaluate and export berg models (docs/training.md).

Modules: :mod:`~berg.training.config` (TrainConfig), :mod:`~berg.training.datasets` (HDF5 format and
adapters), :mod:`~berg.training.feature_cache`, :mod:`~berg.training.solvers` (projection, OLS, ridge
CV), :mod:`~berg.training.trainer` (:func:`~berg.training.trainer.train`), :mod:`~berg.training.export`,
:mod:`~berg.training.plots` and :mod:`~berg.training.cli` (``berg train``). Nothing here is imported by ``import berg``.
"""
