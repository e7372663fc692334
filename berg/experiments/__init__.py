"""In silico experiments on berg's outputs: neural control, RSA, localizers, synthesis, and more.

Every function takes responses as numpy arrays ``(n_stimuli, n_outputs)``, ``{subject: array}``
dicts, or array-likes read in row blocks (a zarr array from a run store, an HDF5 dataset, a
``np.memmap``), plus stimulus ids and ROI index dicts (``model.get_metadata()["rois"]``), and
returns small result dataclasses.

This package is light: names are imported from their modules on first access, so
``import berg.experiments`` pulls in neither torch nor scipy.

>>> from berg import experiments as ex
>>> result = ex.univariate_control(responses, rois, roi_pair=("V1", "V4"))   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module (relative to this package). One line per name, so that each analysis module
# adds its own names with a one-line edit.
_LAZY: dict[str, str] = {
    # control.py: relational neural control (Gifford et al., gifale95/RNC)
    "univariate_responses": "control",
    "null_baseline": "control",
    "rank_conditions": "control",
    "univariate_control": "control",
    "multivariate_control": "control",
    "genetic_search": "control",
    "UnivariateControlResult": "control",
    "MultivariateControlResult": "control",
    "Baseline": "control",
    "plot_univariate_control": "control",
    "plot_multivariate_control": "control",
    # rsa.py: representational similarity
    "rsm": "rsa",
    "roi_rsms": "rsa",
    "rsm_correlation": "rsa",
    "batch_rsm_correlation": "rsa",
    "rsa_noise_ceiling": "rsa",
    "compare_rsms": "rsa",
    "RSAComparison": "rsa",
    # localizers.py: in silico functional localizers
    "contrast_map": "localizers",
    "category_localizer": "localizers",
    "threshold_map": "localizers",
    "dice": "localizers",
    "roi_agreement": "localizers",
    "Contrast": "localizers",
    # synthesis.py: differentiable encoders
    "roi_mean": "synthesis",
    "roi_contrast": "synthesis",
    "synthesize_images": "synthesis",
    "synthesize_latent": "synthesis",
    "gradient_check": "synthesis",
    "SynthesisResult": "synthesis",
    # reliability.py: synthetic vs real reliability (Delavari et al. 2025)
    "reliability": "reliability",
    "expected_reliability": "reliability",
    "plot_reliability": "reliability",
    "ReliabilityResult": "reliability",
    # decoding.py: classifiers and semantic decoders trained on synthetic or real responses
    "split_images": "decoding",
    "split_categories": "decoding",
    "classify": "decoding",
    "identify": "decoding",
    "learning_curve": "decoding",
    "permutation_p_value": "decoding",
    "DecodingResult": "decoding",
    "LearningCurve": "decoding",
    # validation.py: img2fmri's prediction validation (row-shuffle permutation tests)
    "correlation_matrix": "validation",
    "permutation_test": "validation",
    "validate_predictions": "validation",
    "plot_validation": "validation",
    "ValidationResult": "validation",
    # movies.py: movie dynamics, event boundaries (img2fmri Fig 3)
    "predict_movie": "movies",
    "pattern_similarity": "movies",
    "group_average": "movies",
    "similarity_match": "movies",
    "boundary_triggered_average": "movies",
    "boundary_analysis": "movies",
    "plot_similarity_matrices": "movies",
    "make_synthetic_movie": "movies",
    "movie_analysis": "movies",
    "MovieResponse": "movies",
    "BoundaryResult": "movies",
    # kernels.py / glm.py: VGG-16 kernel time series and voxelwise GLMs (Sohn et al. 2024)
    "kernel_time_series": "kernels",
    "KernelTimeSeries": "kernels",
    "first_level_kernel_glm": "glm",
    "batched_kernel_glm": "glm",
    "group_kernel_test": "glm",
    "friston24": "glm",
    "group_t_test": "glm",
    "layer_summary": "glm",
    "kernels_reaching": "glm",
    # _inputs.py: shared input handling
    "select_outputs": "_inputs",
}

__all__ = sorted(n for n in _LAZY if not n.startswith("_"))


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'berg.experiments' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
