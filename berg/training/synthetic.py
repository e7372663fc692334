"""Former home of the synthetic datasets: they live in :mod:`berg.testing.datasets` now.

Kept as an alias so existing imports keep working; new code imports from :mod:`berg.testing`.
"""

from __future__ import annotations

from berg.testing.datasets import SyntheticTruth, blob_grid, linear_problem, make_synthetic_dataset

__all__ = ["SyntheticTruth", "make_synthetic_dataset", "blob_grid", "linear_problem"]
