"""Ensembles, declared not coded: a registry entry lists member models and weights.

.. code-block:: yaml

    fmri-algonauts_2023-clip_sam:
      card: fmri-algonauts_2023-clip_sam.yaml
      modality: fmri
      dataset: algonauts_2023
      ensemble:
        members:
          - {model: fmri-algonauts_2023-clip, weight: 0.5}
          - {model: fmri-algonauts_2023-sam, weight: 0.5, options: {}}

:class:`EnsembleModel` loads each member once (through the same client, so members that compute the
same features share one backbone), checks that they share an output space for every subject, runs
each distinct backbone once per batch, and returns the weighted mean of the members' responses
(``sum_i w_i y_i / sum_i w_i``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from berg._version import __version__
from berg.core.contract import BaseModelInterface, LoadRequest, is_feature_model
from berg.core.engine import batch_loop
from berg.errors import InvalidParameterError, ModelLoadError

__all__ = ["EnsembleModel"]

log = logging.getLogger(__name__)


def _members(spec: Any) -> list[dict[str, Any]]:
    raw = (spec.ensemble or {}).get("members")
    if not isinstance(raw, list) or not raw:
        raise ModelLoadError(f"ensemble {spec.model_id} lists no members (ensemble: {{members: [...]}})")
    out = []
    for m in raw:
        if not isinstance(m, Mapping) or "model" not in m:
            raise ModelLoadError(f"ensemble {spec.model_id}: each member needs a 'model' id, got {m!r}")
        weight = float(m.get("weight", 1.0))
        if not np.isfinite(weight) or weight < 0:
            raise ModelLoadError(f"ensemble {spec.model_id}: member {m['model']} weight {weight} must be >= 0")
        out.append({"model": str(m["model"]), "weight": weight, "options": dict(m.get("options") or {})})
    if sum(m["weight"] for m in out) <= 0:
        raise ModelLoadError(f"ensemble {spec.model_id}: member weights sum to 0")
    return out


class EnsembleModel(BaseModelInterface):
    """The weighted mean of member models that share an output space.

    Attributes
    ----------
    members : list of BaseModelInterface
    weights : np.ndarray
        Normalised member weights (sum 1).
    """

    def __init__(self, request: LoadRequest, members: list[Any], weights: list[float]):
        self.spec = request.spec
        self.model_id = request.spec.model_id
        self.members = members
        self.weights = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.subjects = list(request.subjects)
        self.multi_subject = request.multi_subject
        self.options = dict(request.options)
        self.device = request.device
        self.batch_size = request.batch_size
        self.spaces = dict(members[0].spaces)
        self._check_spaces()

    def _check_spaces(self) -> None:
        for member in self.members[1:]:
            for s in self.subjects:
                if not member.spaces[s].same_as(self.spaces[s]):
                    raise ModelLoadError(
                        f"ensemble {self.model_id}: members {self.members[0].model_id} and {member.model_id} "
                        f"have different output spaces for subject {s}; an ensemble averages identical outputs"
                    )

    @classmethod
    def validate_options(cls, spec: Any, options: Mapping[str, Any]) -> dict[str, Any]:
        return spec.validate_options(options)

    @classmethod
    def load(cls, request: LoadRequest) -> EnsembleModel:
        """Load every member (sharing backbones through ``request.shared``) and check their spaces."""
        client = request.client
        if client is None:
            raise ModelLoadError("an ensemble is loaded through a BERG client (request.client)")
        members, weights = [], []
        for m in _members(request.spec):
            if m["model"] == request.spec.model_id:
                raise ModelLoadError(f"ensemble {request.spec.model_id} lists itself as a member")
            member_spec = client.registry.get(m["model"])
            member_cls = client.model_class(member_spec)
            missing = [s for s in request.subjects if s not in member_spec.subjects]
            if missing:
                raise ModelLoadError(f"ensemble member {m['model']} has no subject(s) {missing}")
            member_request = request.replace(
                spec=member_spec,
                options=member_cls.validate_options(member_spec, m["options"]),
            )
            members.append(member_cls.load(member_request))
            weights.append(m["weight"])
        if cls is EnsembleModel and all(is_feature_model(m) for m in members):
            return FeatureEnsembleModel(request, members, weights)
        return cls(request, members, weights)

    # ------------------------------------------------------------------ inference
    def encode(self, stimulus: Any, *, show_progress: bool = True) -> np.ndarray | dict[Any, np.ndarray]:
        """Weighted mean of the members' responses, float32 ``(n_stimuli, *space.shape)``."""
        total: dict[Any, np.ndarray] | None = None
        for w, member in zip(self.weights, self.members):
            out = member.encode(stimulus, show_progress=show_progress)
            out = out if isinstance(out, dict) else {self.subjects[0]: out}
            if total is None:
                total = {s: w * np.asarray(out[s], dtype=np.float64) for s in self.subjects}
            else:
                for s in self.subjects:
                    total[s] += w * out[s]
        res = {s: v.astype(np.float32) for s, v in total.items()}
        return res if self.multi_subject else res[self.subjects[0]]

    # ------------------------------------------------------------------ metadata
    def get_metadata(self) -> dict[str, Any]:
        """``{"members": {member id: member metadata}, "weights": {member id: weight}}``."""
        return {
            "members": {m.model_id: m.get_metadata() for m in self.members},
            "weights": {m.model_id: float(w) for m, w in zip(self.members, self.weights)},
        }

    def provenance(self) -> dict[str, Any]:
        """The ensemble's id and weights plus every member's provenance."""
        return {
            "model_id": self.model_id,
            "kind": "ensemble",
            "subjects": list(self.subjects),
            "berg_version": __version__,
            "weights": {m.model_id: float(w) for m, w in zip(self.members, self.weights)},
            "members": [m.provenance() for m in self.members],
            "artifacts": {
                f"{m.model_id}/{k}": v for m in self.members for k, v in (m.provenance().get("artifacts") or {}).items()
            },
        }

    def forward(self, x: Any) -> Any:
        """Differentiable weighted mean of the members' :meth:`forward` (members must share preprocessing)."""
        if self.multi_subject:
            raise InvalidParameterError("forward on a multi-subject ensemble: load one subject")
        return sum(float(w) * m.forward(x) for w, m in zip(self.weights, self.members))

    def __repr__(self) -> str:
        ids = ", ".join(f"{m.model_id}×{w:.2f}" for m, w in zip(self.members, self.weights))
        return f"{type(self).__name__}({self.model_id!r}, members=[{ids}], subjects={self.subjects})"


class FeatureEnsembleModel(EnsembleModel):
    """An ensemble whose members are all :class:`~berg.core.contract.FeatureModel`: each distinct backbone
    runs once per batch and every member maps the shared features (``EnsembleModel.load`` picks it)."""

    @property
    def extractor(self) -> Any:
        """The first member's extractor (the members' preprocessing must agree to share stimuli)."""
        return self.members[0].extractor

    def _extractors(self) -> list[Any]:
        extractors: list[Any] = []
        for m in self.members:
            if not any(m.extractor is e for e in extractors):
                extractors.append(m.extractor)
        return extractors

    def outputs_from_features(self, features: Any) -> list[Any]:
        """Weighted mean of the members' flat outputs, for members that share one backbone."""
        if len(self._extractors()) > 1:
            raise InvalidParameterError(
                f"{self.model_id}: members use different backbones; use iter_encode/encode, not one feature tensor"
            )
        acc = None
        for w, m in zip(self.weights, self.members):
            outs = m.outputs_from_features(features)
            acc = [float(w) * o for o in outs] if acc is None else [a + float(w) * o for a, o in zip(acc, outs)]
        return acc

    def shape_outputs(self, subject: Any, flat: Any) -> Any:
        """Flat outputs -> ``(b, *space.shape)`` (members share the space; they reduce nothing)."""
        return flat.reshape((flat.shape[0], *self.spaces[subject].shape))

    def encode(self, stimulus: Any, *, show_progress: bool = True) -> np.ndarray | dict[Any, np.ndarray]:
        """Weighted mean of the members' responses, float32 ``(n_stimuli, *space.shape)`` (one pass per backbone)."""
        stimuli = self.prepare_stimuli(stimulus)
        out = {s: np.empty((len(stimuli), *self.spaces[s].shape), dtype=np.float32) for s in self.subjects}
        for start, stop, per_subject in self.iter_encode(stimuli, show_progress=show_progress):
            for s, y in zip(self.subjects, per_subject):
                out[s][start:stop] = y
        return out if self.multi_subject else out[self.subjects[0]]

    def iter_encode(self, stimuli: Any, *, show_progress: bool = True):
        """Yield ``(start, stop, [responses per subject])``: each distinct backbone runs once per batch."""
        import torch

        extractors = self._extractors()

        def transform(items):
            return [e.transform(items) for e in extractors]

        def step(xs):
            feats = [e(x) for e, x in zip(extractors, xs)]
            acc = None
            with torch.inference_mode():
                for w, m in zip(self.weights, self.members):
                    f = next(fv for e, fv in zip(extractors, feats) if e is m.extractor)
                    outs = m.outputs_from_features(f)
                    acc = [float(w) * o for o in outs] if acc is None else [a + float(w) * o for a, o in zip(acc, outs)]
            return [self.shape_outputs(s, a.cpu().numpy()) for s, a in zip(self.subjects, acc)]

        yield from batch_loop(
            stimuli, transform, self.batch_size, step, desc=self.model_id, show_progress=show_progress
        )

    def prepare_stimuli(self, stimulus: Any) -> Any:
        """Validate stimuli as the members do."""
        return self.members[0].prepare_stimuli(stimulus)
