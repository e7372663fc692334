"""Artifact layouts: which files a model needs, and how they become the engine's arrays.

A layout knows a model's file names; the :class:`~berg.store.Store` knows where files come from.
:class:`NativeLayout` reads berg's own artifacts (``manifest.json`` + safetensors + JSON, see
docs/architecture.md). Other layouts (e.g. BERG's legacy pickled dicts) subclass
:class:`ArtifactLayout` and are named in ``registry.yaml`` as ``"pkg.mod:Class"``.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from berg.core.readouts import LinearReadout, Projection, ReadoutHead
from berg.core.reliability import Reliability
from berg.core.spaces import OutputSpace, space_from_dict
from berg.errors import ModelLoadError, NoReliabilityError
from berg.subjects import subject_label

if TYPE_CHECKING:  # pragma: no cover
    from berg.registry import ModelSpec
    from berg.store import Store

__all__ = ["ArtifactLayout", "NativeLayout", "layout_for"]


class ArtifactLayout(ABC):
    """Maps a model's subjects to artifact keys and loads them.

    Parameters
    ----------
    spec : ModelSpec
        The registry entry.
    store : Store
        Where files are fetched from (berg_dir, cache, remote).
    """

    def __init__(self, spec: ModelSpec, store: Store):
        self.spec = spec
        self.store = store

    # ---------------------------------------------------------------- keys
    @abstractmethod
    def metadata_keys(self, subject: Any) -> list[str]:
        """Keys ``get_model_metadata`` needs for ``subject`` (nothing more)."""

    @abstractmethod
    def model_keys(self, subject: Any) -> list[str]:
        """Keys a loaded model of ``subject`` needs (shared projection + the subject's readout...)."""

    @abstractmethod
    def all_keys(self) -> list[str]:
        """Every key of the model (``berg fetch ID --all``)."""

    # ---------------------------------------------------------------- loading
    @abstractmethod
    def load_metadata(self, subject: Any) -> dict[str, Any]:
        """Plain dict of numpy arrays and Python values, as documented in the model card.

        Whatever subset of the documented keys the files hold: what is absent is absent, not an error.
        """

    # What a linear model asks of a layout. A model class that needs something else asks its own
    # layout for it; a layout only implements what its model class uses.
    def _not_provided(self, what: str):
        return ModelLoadError(
            f"layout {type(self).__name__} of {self.spec.model_id} does not provide {what}, which the "
            f"model class needs; implement it in the layout or name another model_class"
        )

    def load_projection(self) -> Projection | None:
        """The shared feature projection (``None`` if the recipe has none)."""
        raise self._not_provided("load_projection()")

    def load_readout(self, subject: Any) -> LinearReadout:
        """The subject's full readout (all outputs), for single-head models."""
        raise self._not_provided("load_readout(subject)")

    def load_heads(self, subject: Any) -> list[ReadoutHead]:
        """The subject's readout heads, in output order (default: one head on the shared projection)."""
        return [ReadoutHead("shared", self.load_readout(subject))]

    def load_projections(self, names: list[str | None]) -> dict[str, Projection | None]:
        """The projections the heads name (default: ``"shared"`` = :meth:`load_projection`)."""
        unknown = [n for n in names if n not in (None, "shared")]
        if unknown:
            raise self._not_provided(f"projections {unknown}")
        return {"shared": self.load_projection()} if "shared" in names else {}

    def roi_indices(self, subject: Any) -> dict[str, np.ndarray]:
        """ROI name -> int64 indices into the subject's outputs (default: metadata ``"rois"``)."""
        rois = self.load_metadata(subject).get("rois") or {}
        return {k: np.asarray(v, dtype=np.int64).ravel() for k, v in rois.items()}

    def output_space(self, subject: Any) -> OutputSpace:
        """The subject's output space (all outputs)."""
        raise self._not_provided("output_space(subject)")

    def reliability(self, subject: Any) -> Reliability:
        """Per-output NCSNR / noise ceiling of ``subject`` over the full output space (flat order).

        Each layout reads them where its release keeps them; the default says there are none.
        """
        raise NoReliabilityError(
            f"{self.spec.model_id}: its release publishes no per-output reliability (NCSNR / noise ceiling)"
        )

    def release(self) -> None:  # noqa: B027 - an optional hook: most layouts cache nothing
        """Drop what the layout cached while the model was assembled (the model now holds its arrays).

        Called once by :meth:`berg.core.engine.LinearEncodingModel.assemble`; the default has nothing to drop.
        """

    # ---------------------------------------------------------------- helpers
    def fetch(self, key: str) -> Path:
        """Local path of ``key`` (fetched and verified by the store if needed)."""
        return self.store.fetch(self.spec.model_id, self.spec.source, key)

    def fetch_keys(self, keys: list[str]) -> dict[str, Path]:
        """Fetch several keys (one store call, so missing files are reported together)."""
        return self.store.fetch_many(self.spec.model_id, self.spec.source, keys)

    def checksums(self, keys: list[str]) -> dict[str, str]:
        """sha256 of the given keys' local files, for provenance."""
        return {k: self.store.sha256(self.spec.model_id, self.spec.source, k) for k in keys}

    def model_checksums(self, subjects: list[Any]) -> dict[str, str]:
        """sha256 of every file the subjects' models use, for provenance (``{}`` with a logged warning
        when they cannot be computed: provenance must never break encoding)."""
        keys = list(dict.fromkeys(k for s in subjects for k in self.model_keys(s)))
        try:
            return self.checksums(keys)
        except Exception as exc:  # noqa: BLE001 - any failure only means "unrecorded"
            logging.getLogger(__name__).warning("artifact checksums unavailable: %s", exc)
            return {}


class NativeLayout(ArtifactLayout):
    """berg's own artifact format (format_version 1, see docs/architecture.md)."""

    PROJECTION = "projection.safetensors"
    MANIFEST = "manifest.json"

    def _has_projection(self) -> bool:
        return self.spec.recipe.get("projection", "none") not in (None, "none")

    def readout_file(self, subject: Any) -> str:
        """Key of the subject's readout file."""
        return f"readout/{subject_label(subject)}.safetensors"

    def metadata_files(self, subject: Any) -> tuple[str, str]:
        """Keys of the subject's metadata: the JSON facts and the safetensors arrays (ROI indices...)."""
        label = subject_label(subject)
        return f"metadata/{label}.json", f"metadata/{label}.safetensors"

    def metadata_keys(self, subject: Any) -> list[str]:
        return list(self.metadata_files(subject))

    def model_keys(self, subject: Any) -> list[str]:
        shared = [self.PROJECTION] if self._has_projection() else []
        return shared + [self.readout_file(subject), *self.metadata_files(subject)]

    def all_keys(self) -> list[str]:
        manifest = self.store.manifest(self.spec.model_id, self.spec.source)
        return sorted(manifest["files"])

    def tensors(self, key: str, *, mmap: bool = True) -> dict[str, np.ndarray]:
        """The tensors of a safetensors file of the artifact (fetched and verified; memory-mapped by default)."""
        from berg.store.artifacts import read_tensors

        return read_tensors(self.fetch(key), mmap=mmap)

    def build_info(self, subject: Any) -> dict[str, Any]:
        """The subject's metadata JSON as written at training/build time (``n_outputs``, space, accuracy...)."""
        path = self.fetch(self.metadata_files(subject)[0])
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}") from exc

    def load_metadata(self, subject: Any) -> dict[str, Any]:
        info = self.build_info(subject)
        arrays = self.tensors(self.metadata_files(subject)[1], mmap=False)
        meta: dict[str, Any] = {k: v for k, v in info.items() if k not in ("rois",)}
        meta["rois"] = {k[4:]: np.asarray(v) for k, v in arrays.items() if k.startswith("roi/")}
        meta["accuracy"] = {k[9:]: np.asarray(v) for k, v in arrays.items() if k.startswith("accuracy/")}
        for k, v in arrays.items():
            if not k.startswith(("roi/", "accuracy/")):
                meta[k] = np.asarray(v)
        return meta

    def reliability(self, subject: Any) -> Reliability:
        """From the ``accuracy/ncsnr`` (and ``accuracy/noise_ceiling``) arrays ``berg train``/``berg build`` write."""
        acc = self.load_metadata(subject).get("accuracy") or {}
        key = self.metadata_files(subject)[1]
        if "ncsnr" not in acc and "noise_ceiling" not in acc:
            raise NoReliabilityError(
                f"{self.spec.model_id} subject {subject}: {key} holds no accuracy/ncsnr or accuracy/noise_ceiling "
                f"(accuracy arrays: {', '.join(sorted(acc)) or 'none'})"
            )
        n = self.build_info(subject).get("n_repeats")
        if "ncsnr" in acc:
            snr = np.asarray(acc["ncsnr"], dtype=np.float64)
            if "noise_ceiling" in acc:
                nc = np.asarray(acc["noise_ceiling"], dtype=np.float64)
                return Reliability(snr, nc, float(n) if n else None, f"{key}: accuracy/ncsnr, accuracy/noise_ceiling")
            if n:
                return Reliability.from_ncsnr(snr, float(n), f"{key}: accuracy/ncsnr")
            return Reliability(snr, np.full(snr.shape, np.nan), None, f"{key}: accuracy/ncsnr (no repeat count)")
        nc = np.asarray(acc["noise_ceiling"], dtype=np.float64)
        if not n:
            raise NoReliabilityError(
                f"{self.spec.model_id} subject {subject}: {key} has a noise ceiling but no n_repeats to convert it"
            )
        return Reliability.from_noise_ceiling(nc, float(n), f"{key}: accuracy/noise_ceiling")

    def load_projection(self) -> Projection | None:
        if not self._has_projection():
            return None
        t = self.tensors(self.PROJECTION, mmap=True)
        return Projection.from_tensors(t, self.PROJECTION)

    def load_readout(self, subject: Any) -> LinearReadout:
        key = self.readout_file(subject)
        t = self.tensors(key, mmap=False)
        readout = LinearReadout.from_tensors(t, key)
        expected = self.spec.n_outputs(subject)
        if expected is not None and readout.n_outputs != expected:
            raise ModelLoadError(
                f"{key} has {readout.n_outputs} outputs but the card declares {expected} for subject {subject}"
            )
        return readout

    def roi_indices(self, subject: Any) -> dict[str, np.ndarray]:
        arrays = self.tensors(self.metadata_files(subject)[1], mmap=False)
        return {k[4:]: np.asarray(v, dtype=np.int64) for k, v in arrays.items() if k.startswith("roi/")}

    def output_space(self, subject: Any) -> OutputSpace:
        info = self.build_info(subject)
        desc = info.get("output_space", {"kind": "flat"})
        arrays = self.tensors(self.metadata_files(subject)[1], mmap=False)
        return space_from_dict(desc, n_outputs=int(info["n_outputs"]), arrays=arrays)


def layout_for(spec: ModelSpec, store: Store) -> ArtifactLayout | None:
    """Instantiate the layout a registry entry names (``None`` for ``"none"``: ensembles have no files)."""
    if spec.layout == "none":
        return None
    if spec.layout == "native":
        return NativeLayout(spec, store)
    from berg._imports import import_class

    return import_class(spec.layout, ArtifactLayout, f"layout of {spec.model_id}")(spec, store)
