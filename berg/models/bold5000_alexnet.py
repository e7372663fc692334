"""``fmri-bold5000-alexnet``: AlexNet layers -> per-layer PCA -> ridge, for BOLD5000's ROIs (built locally).

The artifact (written by ``creation_code/bold5000_alexnet/build.py``) holds one projection per AlexNet
layer and one readout per layer and subject. The model option ``layer`` picks what ``encode`` returns:

* ``"conv1"`` ... ``"fc7"``: every output predicted from that layer (the per-layer family);
* ``"best"`` (default): each ROI predicted from the layer that fitted it best in training-set
  cross-validation (the layer-to-ROI hierarchy of Delavari et al. 2025).

Only the layers a variant needs are computed: the backbone returns those nodes' features
concatenated, and each projection reads its own layer's columns. Everything else (batching, selections,
``forward``, saving) is the plain engine's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from berg.core.contract import LoadRequest
from berg.core.engine import LinearEncodingModel
from berg.core.layouts import NativeLayout
from berg.core.readouts import LinearReadout, Projection, ReadoutHead
from berg.errors import ModelLoadError
from berg.subjects import subject_label

__all__ = ["Bold5000AlexNet", "Bold5000AlexNetLayout", "BEST"]

log = logging.getLogger(__name__)

BEST = "best"
LAYERS_KEY = "layers.json"


class Bold5000AlexNetLayout(NativeLayout):
    """Native artifact with per-layer projections and readouts; ``variant`` is the ``layer`` option."""

    variant: str = BEST

    def layers_info(self) -> dict[str, Any]:
        """``layers.json``: layer order, graph nodes, feature widths, components, transform."""
        if not hasattr(self, "_layers_info"):
            path = self.fetch(LAYERS_KEY)
            try:
                self._layers_info = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"cannot read {path}: {exc}") from exc
        return self._layers_info

    def layer_codes(self, subject: Any) -> np.ndarray:
        """Index (into ``layers``) of the layer each output uses in the ``best`` variant."""
        arrays = self.tensors(self.metadata_files(subject)[1], mmap=False)
        if "layer_of_output" not in arrays:
            raise ModelLoadError(f"{self.metadata_files(subject)[1]} lacks layer_of_output; rebuild the model")
        return np.asarray(arrays["layer_of_output"], dtype=np.int64)

    def layers_used(self, subjects: list[Any]) -> list[str]:
        """Layers the variant needs for these subjects, in network order."""
        layers = self.layers_info()["layers"]
        if self.variant != BEST:
            if self.variant not in layers:
                raise ModelLoadError(f"layer {self.variant!r} was not built; built layers: {layers}")
            return [self.variant]
        used = {int(c) for s in subjects for c in np.unique(self.layer_codes(s))}
        return [layers[j] for j in sorted(used)]

    def _readout_key_of(self, layer: str, subject: Any) -> str:
        return f"readout/{layer}/{subject_label(subject)}.safetensors"

    def model_keys(self, subject: Any) -> list[str]:
        keys = [LAYERS_KEY, *self.metadata_files(subject)]
        self.fetch_keys(keys)
        layers = self.layers_used([subject])
        return (
            keys + [f"projections/{n}.safetensors" for n in layers] + [self._readout_key_of(n, subject) for n in layers]
        )

    def _readout(self, layer: str, subject: Any) -> LinearReadout:
        key = self._readout_key_of(layer, subject)
        t = self.tensors(key, mmap=False)
        return LinearReadout.from_tensors(t, key)

    def load_heads(self, subject: Any) -> list[ReadoutHead]:
        """One head per run of consecutive outputs that share a layer (one head for a single layer)."""
        layers = self.layers_info()["layers"]
        if self.variant != BEST:
            return [ReadoutHead(self.variant, self._readout(self.variant, subject))]
        codes = self.layer_codes(subject)
        full = {layers[c]: self._readout(layers[c], subject) for c in np.unique(codes)}
        cuts = np.flatnonzero(np.diff(codes)) + 1
        heads = []
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(codes)]):
            layer = layers[codes[a]]
            heads.append(ReadoutHead(layer, full[layer].select(np.arange(a, b))))
        return heads

    def load_projections(self, names: list[str | None]) -> dict[str, Projection | None]:
        out = {}
        for name in names:
            key = f"projections/{name}.safetensors"
            out[name] = Projection.from_tensors(self.tensors(key, mmap=True), key)
        return out


def _layer_projections(
    projections: Mapping[str, Projection], names: list[str], info: Mapping[str, Any], model_id: str
) -> dict[str, Projection]:
    """Each layer's projection reading its own columns of the concatenated layer features (network order)."""
    out, offset = {}, 0
    for name in names:
        proj, width = projections[name], int(info["n_features"][name])
        if proj.n_features != width:
            raise ModelLoadError(
                f"{model_id}: projection {name} reads {proj.n_features} features, layers.json says {width}"
            )
        out[name] = Projection(proj.weight, proj.bias, columns=(offset, offset + width))
        offset += width
    return out


class Bold5000AlexNet(LinearEncodingModel):
    """The engine with one projection per AlexNet layer, each reading its own layer's feature columns."""

    layer_order: list[str] = []

    @classmethod
    def load(cls, request: LoadRequest) -> Bold5000AlexNet:
        """Fetch what the ``layer`` variant needs, build AlexNet with only those nodes, slice selections."""
        from berg.features import FeatureExtractor

        layout = request.layout()
        if not isinstance(layout, Bold5000AlexNetLayout):
            raise ModelLoadError(
                f"{request.model_id}: layout must be berg.models.bold5000_alexnet:Bold5000AlexNetLayout"
            )
        layout.variant = str(request.options.get("layer", BEST))
        subjects = list(request.subjects)
        layout.fetch_keys(list(dict.fromkeys(k for s in subjects for k in layout.model_keys(s))))
        info = layout.layers_info()
        used = layout.layers_used(subjects)
        built = info.get("transform")
        declared = request.spec.recipe.get("transform")
        if built and declared and {k: built.get(k) for k in declared} != dict(declared):
            raise ModelLoadError(
                f"{request.model_id} was built with preprocessing {built} but the registry declares {declared}; "
                "rebuild it (berg build) or use the registry it was built for"
            )
        for s in subjects:
            built_n = int(layout.build_info(s)["n_outputs"])
            declared_n = request.spec.n_outputs(s)
            if declared_n is not None and declared_n != built_n:
                log.warning(
                    "%s subject %s: the build has %d outputs, the card declares %d (voxel selections "
                    "are checked against the card)",
                    request.model_id,
                    s,
                    built_n,
                    declared_n,
                )
        heads, spaces, selected_rows = cls.selected_heads(request, layout)
        names = [n for n in used if any(h.projection == n for hs in heads.values() for h in hs)]
        recipe = {**request.spec.recipe, "nodes": [info["nodes"][n] for n in names]}
        extractor = FeatureExtractor(
            recipe, backbone_weights=request.backbone_weights, device=request.device, seed=request.backbone_seed
        )
        model = cls.assemble(
            request,
            layout,
            extractor=extractor,
            heads=heads,
            spaces=spaces,
            selected_rows=selected_rows,
            projections=_layer_projections(layout.load_projections(names), names, info, request.model_id),
        )
        model.layer_order = names
        return model

    def get_metadata(self) -> dict[str, Any]:
        """The subject's metadata plus ``layer`` (the variant) and ``layers_used``."""
        meta = super().get_metadata()
        extra = {"layer": self.options.get("layer", BEST), "layers_used": list(self.layer_order)}
        if self.multi_subject:
            return {s: {**m, **extra} for s, m in meta.items()}
        return {**meta, **extra} if isinstance(meta, Mapping) else meta
