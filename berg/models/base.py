"""The interface every loaded encoding model implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

__all__ = ["BaseModelInterface"]


class BaseModelInterface(ABC):
    """What ``BERG.get_encoding_model`` returns.

    Attributes
    ----------
    model_id : str
    subjects : list
        The subjects this model object serves.
    device : str
        Resolved torch device.
    """

    model_id: str
    subjects: list[Any]
    device: str

    @abstractmethod
    def encode(self, stimulus: Any, *, show_progress: bool = True) -> np.ndarray | dict[Any, np.ndarray]:
        """In silico responses: float32 ``(n_stimuli, n_outputs)``, or ``{subject: array}`` for several."""

    @abstractmethod
    def get_metadata(self) -> dict[str, Any]:
        """Metadata of the loaded subject(s) (``{subject: dict}`` for several)."""

    @abstractmethod
    def to_nifti(self, responses: Any, subject: Any = None) -> Any:
        """Place responses in the model's volume (``nibabel`` images)."""

    @abstractmethod
    def provenance(self) -> dict[str, Any]:
        """Model id, subjects, selection, berg version, artifact checksums, backbone, preprocessing."""
