"""What a newcomer writes to add a model of a NEW output kind: one space class and one model class.

Used by tests/test_contract.py (the newcomer section). Nothing else in berg is edited: the space is
registered with :func:`berg.core.spaces.register_space`, the model implements only
:class:`berg.core.contract.BaseModelInterface` (no backbone pass to share), and a registry entry names
the class.

The "brain" is a ring of ``n_sectors`` outputs around the image centre: each output is the mean
brightness of one angular sector of the image, a known function tests can recompute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from berg.core.contract import BaseModelInterface, LoadRequest
from berg.core.spaces import OutputSpace, register_space
from berg.stimuli import load_stimuli


@register_space
@dataclass(eq=False)
class RingSpace(OutputSpace):
    """Outputs on a ring: sector ``i`` covers angles ``[i, i + 1) * 360 / n_sectors`` degrees."""

    n_sectors: int
    sectors: tuple[int, ...] | None = None  # kept sector numbers (all when None)

    kind: ClassVar[str] = "ring"
    SELECTION_KEYS: ClassVar[tuple[str, ...]] = ("sectors",)
    VECTOR_KEYS: ClassVar[tuple[str, ...]] = ("sectors",)

    @property
    def kept(self) -> np.ndarray:
        return np.arange(self.n_sectors) if self.sectors is None else np.asarray(self.sectors, dtype=np.int64)

    @property
    def n_outputs(self) -> int:
        return int(self.kept.size)

    @property
    def dims(self) -> tuple[str, ...]:
        return ("sector",)

    def narrow(self, selection: Any, roi_indices: Mapping[str, np.ndarray]):
        if selection is None or selection.is_all:
            return None, self
        rows = np.flatnonzero(np.asarray(selection.get("sectors")))
        return rows, self.select(rows)

    def select(self, rows):
        return self if rows is None else RingSpace(self.n_sectors, tuple(int(r) for r in self.kept[rows]))

    def coords(self) -> dict[str, np.ndarray]:
        return {"sector": self.kept, "angle_deg": self.kept * 360.0 / self.n_sectors}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_sectors": self.n_sectors,
            "sectors": None if self.sectors is None else list(self.sectors),
        }

    @classmethod
    def from_dict(cls, desc: Mapping[str, Any], arrays: Mapping[str, np.ndarray], n_outputs: int | None) -> RingSpace:
        sectors = desc.get("sectors")
        return cls(int(desc["n_sectors"]), None if sectors is None else tuple(int(s) for s in sectors))


def sector_means(images: np.ndarray, n_sectors: int) -> np.ndarray:
    """The ground truth: mean brightness (0-1) of each angular sector of each ``(H, W, 3)`` uint8 image."""
    out = []
    for img in images:
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        angle = np.degrees(np.arctan2(yy - (h - 1) / 2, xx - (w - 1) / 2)) % 360
        sector = np.minimum((angle * n_sectors / 360).astype(int), n_sectors - 1)
        grey = img.mean(axis=2) / 255.0
        out.append([grey[sector == k].mean() for k in range(n_sectors)])
    return np.asarray(out, dtype=np.float32)


class RingModel(BaseModelInterface):
    """A model that implements only the base interface: no extractor, no iter_encode."""

    def __init__(self, request: LoadRequest):
        self.spec = request.spec
        self.model_id = request.model_id
        self.subjects = list(request.subjects)
        self.device = request.device
        self.multi_subject = request.multi_subject
        n = int(request.spec.card["output"]["space"]["n_sectors"])
        self.full = RingSpace(n)
        self.rows, self.spaces = {}, {}
        for s in self.subjects:
            self.rows[s], self.spaces[s] = self.full.narrow(request.selections.get(s), {})

    @classmethod
    def load(cls, request: LoadRequest) -> RingModel:
        return cls(request)

    def encode(self, stimulus: Any, *, show_progress: bool = True):
        stimuli = load_stimuli(stimulus, "image")
        full = sector_means(np.stack([stimuli[i] for i in range(len(stimuli))]), self.full.n_sectors)
        out = {s: full if self.rows[s] is None else full[:, self.rows[s]] for s in self.subjects}
        return out if self.multi_subject else out[self.subjects[0]]

    def get_metadata(self) -> dict[str, Any]:
        return {"n_sectors": self.full.n_sectors}

    def provenance(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "subjects": self.subjects, "output_space": self.full.to_dict()}
