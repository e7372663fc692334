"""``fmri-algonauts_2023-clip_sam``: the BREIL Algonauts 2023 entry (CLIP ViT-B/32 + SAM ViT-L, ridge), built locally.

Shen, Kunanbayev, Lee & Kim (2023), "Connecting pre-trained models with brain responses: Report for the
Algonauts Project Challenge 2023": CLIP image embeddings, CLIP caption embeddings and SAM image-encoder
features, each mapped by ridge regression to every challenge vertex of each hemisphere of each NSD
subject; the best submission averages the CLIP (image + text) and SAM predictions (NNMC 50.6).

No weights were published: ``berg build fmri-algonauts_2023-clip_sam --data DIR`` fits them from the
challenge data (creation_code/algonauts_2023). The artifact holds one readout per *feature set*
(``image`` 512, ``text`` 512, ``image_text`` 1,024, ``sam`` 16,384, and ``all`` 17,408 for the vertices
outside every ROI class); the model option ``variant`` picks what ``encode`` returns:

=================  ==============================================  ==========
variant            prediction                                      captions
=================  ==============================================  ==========
``image_only``     CLIP image readout                              no
``text_only``      CLIP caption readout                            yes
``image_text``     CLIP image + caption readout                    yes
``sam``            SAM readout                                     no
``clip_sam``       mean of ``image_text`` and ``sam`` (default)    yes
``per_roi_class``  prf-visualrois: ``sam``; other ROI classes:     yes
                   ``image_text``; other vertices: ``all``
=================  ==============================================  ==========

Each feature set's readout runs on berg's engine (:class:`~berg.core.engine.LinearEncodingModel`: selections
pushed into readout rows, one matmul per batch for all subjects); this class only computes the features
(each backbone once per batch) and combines the readouts. Captions are the one input the engine cannot
express: ``encode(images, captions=[...])`` takes one string or list of strings per image; a variant
that reads captions refuses to run without them (it never puts zeros in place of a text embedding).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from berg._version import __version__
from berg.core.contract import BaseModelInterface, LoadRequest
from berg.core.layouts import NativeLayout
from berg.core.readouts import LinearReadout, ReadoutHead
from berg.errors import InvalidParameterError, ModelLoadError
from berg.subjects import subject_label

__all__ = [
    "MODEL_ID",
    "VARIANTS",
    "FEATURE_SETS",
    "CAPTION_VARIANTS",
    "ROI_CLASSES",
    "PER_ROI_SETS",
    "Algonauts2023Layout",
    "Algonauts2023Model",
    "per_roi_assignment",
]

log = logging.getLogger(__name__)

MODEL_ID = "fmri-algonauts_2023-clip_sam"
INFO_KEY = "algonauts_2023.json"
#: Feature set -> the features concatenated, in this order.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "image": ("image",),
    "text": ("text",),
    "image_text": ("image", "text"),
    "sam": ("sam",),
    "all": ("image", "text", "sam"),
}
#: Variant -> {feature set: weight} (per_roi_class is a per-vertex choice, see :func:`per_roi_assignment`).
VARIANTS: dict[str, dict[str, float]] = {
    "image_only": {"image": 1.0},
    "text_only": {"text": 1.0},
    "image_text": {"image_text": 1.0},
    "sam": {"sam": 1.0},
    "clip_sam": {"image_text": 0.5, "sam": 0.5},
    "per_roi_class": {"image_text": 1.0, "sam": 1.0, "all": 1.0},
}
CAPTION_VARIANTS = tuple(v for v, sets in VARIANTS.items() if any("text" in FEATURE_SETS[f] for f in sets))
#: The challenge's ROI classes, in the order the authors assigned vertices (earlier classes win overlaps).
ROI_CLASSES = ("prf-visualrois", "floc-bodies", "floc-faces", "floc-places", "floc-words", "streams")
#: per_roi_class codes: 0 -> image_text, 1 -> sam, 2 -> all.
PER_ROI_SETS = ("image_text", "sam", "all")


def per_roi_assignment(class_masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """Feature-set code (index into :data:`PER_ROI_SETS`) of each output for ``per_roi_class``.

    The authors' rule (``clip_sam_roi_wise_submission.py``): prf-visualrois vertices use SAM, vertices of
    any other ROI class CLIP image + text, vertices outside every class all features concatenated.
    """
    masks = {k: np.asarray(v, dtype=bool) for k, v in class_masks.items()}
    n = len(next(iter(masks.values())))
    codes = np.full(n, 2, dtype=np.int8)
    codes[np.any([m for m in masks.values()], axis=0)] = 0
    codes[masks.get("prf-visualrois", np.zeros(n, bool))] = 1
    return codes


class Algonauts2023Layout(NativeLayout):
    """Native artifact with one readout per feature set: ``readout/<set>/sub-SS.safetensors``."""

    feature_sets: tuple[str, ...] = ()

    def info(self) -> dict[str, Any]:
        """``algonauts_2023.json``: backbones, feature widths, built variants, split and scores."""
        if not hasattr(self, "_info"):
            path = self.fetch(INFO_KEY)
            try:
                self._info = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"cannot read {path}: {exc}") from exc
        return self._info

    def readout_key(self, feature_set: str, subject: Any) -> str:
        return f"readout/{feature_set}/{subject_label(subject)}.safetensors"

    def metadata_keys(self, subject: Any) -> list[str]:
        return [INFO_KEY, *self.metadata_files(subject)]

    def model_keys(self, subject: Any) -> list[str]:
        return [INFO_KEY, *self.metadata_files(subject)] + [self.readout_key(f, subject) for f in self.feature_sets]

    def load_feature_readout(self, feature_set: str, subject: Any) -> tuple[LinearReadout, np.ndarray | None]:
        """The readout of one feature set and the output rows it covers (``None``: every output)."""
        key = self.readout_key(feature_set, subject)
        t = self.tensors(key, mmap=True)
        readout = LinearReadout.from_tensors(t, key)
        rows = np.asarray(t["rows"], dtype=np.int64) if "rows" in t else None
        return readout, rows

    def load_metadata(self, subject: Any) -> dict[str, Any]:
        """Native metadata plus ``scores``: this subject's held-out (and test-split) scores of every variant."""
        meta = super().load_metadata(subject)
        meta["scores"] = (self.info().get("scores") or {}).get(str(subject), {})
        return meta

    def per_roi_codes(self, subject: Any) -> np.ndarray:
        arrays = self.tensors(self.metadata_files(subject)[1], mmap=False)
        if "per_roi_class" not in arrays:
            raise ModelLoadError(f"{self.metadata_files(subject)[1]} lacks per_roi_class; rebuild the model")
        return np.asarray(arrays["per_roi_class"], dtype=np.int64)


def _feature_sets_for(variant: str) -> tuple[str, ...]:
    return tuple(VARIANTS[variant])


class _Member:
    """One feature set's readouts for every loaded subject, on the engine, and where their outputs go."""

    def __init__(self, name: str, engine: Any, positions: dict[Any, np.ndarray | None], weight: float):
        self.name, self.engine, self.positions, self.weight = name, engine, positions, weight


class Algonauts2023Model(BaseModelInterface):
    """A loaded Algonauts 2023 CLIP + SAM model (one variant; see the module docstring).

    Attributes
    ----------
    variant : str
    extractors : dict
        ``{"image": ClipImageExtractor, "text": ClipTextExtractor, "sam": SamExtractor}`` (those needed).
    members : list
        Feature-set readouts (engine models) and the output positions they fill.
    """

    def __init__(
        self,
        request: LoadRequest,
        layout: Algonauts2023Layout,
        extractors: dict[str, Any],
        members: list[_Member],
        spaces: dict[Any, Any],
        variant: str,
    ):
        self.spec = request.spec
        self.model_id = request.spec.model_id
        self.subjects = list(request.subjects)
        self.multi_subject = request.multi_subject
        self.device = request.device
        self.batch_size = request.batch_size
        self.options = dict(request.options)
        self.selections = dict(request.selections)
        self.layout, self.extractors, self.members, self.spaces = layout, extractors, members, spaces
        self.variant = variant
        self._metadata: dict[Any, dict[str, Any]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def validate_options(cls, spec: Any, options: Mapping[str, Any]) -> dict[str, Any]:
        """Card options (``variant``, ``clip_weights``, ``sam_weights``) with defaults; no download."""
        from berg.features import validate_backbone_weights

        out = spec.validate_options(options)
        for name in ("clip_weights", "sam_weights"):
            if out.get(name) is not None:
                out[name] = validate_backbone_weights(out[name])  # a keyword or an existing file
        return out

    @classmethod
    def _extractors(cls, request: LoadRequest, info: Mapping[str, Any], needed: set[str]) -> dict[str, Any]:
        from berg.backbones import split_backbone_weights

        names = tuple(n for n, feats in (("clip", {"image", "text"}), ("sam", {"sam"})) if needed & feats)
        weights = split_backbone_weights(request.backbone_weights, names)
        for n in names:  # per-backbone files (options) win over the one backbone_weights value
            if request.options.get(f"{n}_weights") is not None:
                weights[n] = request.options[f"{n}_weights"]
        offline = getattr(request.client.store, "offline", None) if request.client is not None else None
        cache = request.shared.setdefault("extractors", {})
        out: dict[str, Any] = {}
        if "clip" in names:
            key = json.dumps(
                [
                    "algonauts_2023-clip",
                    info["backbones"]["clip"],
                    str(weights["clip"]),
                    request.backbone_seed,
                    request.device,
                ],
                default=str,
            )
            if key not in cache:
                from berg.backbones.clip import clip_extractors

                cache[key] = clip_extractors(
                    backbone_weights=weights["clip"], device=request.device, seed=request.backbone_seed, offline=offline
                )
            out["image"], out["text"] = cache[key]
        if "sam" in names:
            cfg = info["backbones"]["sam"]
            key = json.dumps(
                ["algonauts_2023-sam", cfg, str(weights["sam"]), request.backbone_seed, request.device], default=str
            )
            if key not in cache:
                from berg.backbones.sam import SamExtractor

                cache[key] = SamExtractor(
                    cfg["model"],
                    image_size=int(cfg["image_size"]),
                    pool=int(cfg["pool"]),
                    backbone_weights=weights["sam"],
                    device=request.device,
                    seed=request.backbone_seed,
                    offline=offline,
                )
            out["sam"] = cache[key]
        return {k: v for k, v in out.items() if k in needed}

    @classmethod
    def load(cls, request: LoadRequest) -> Algonauts2023Model:
        """Fetch the readouts the variant needs, build only the backbones it needs, push selections down."""
        from berg.core.engine import LinearEncodingModel, _LazyRois
        from berg.core.spaces import FlatSpace

        layout = request.layout()
        if not isinstance(layout, Algonauts2023Layout):
            raise ModelLoadError(f"{request.model_id}: layout must be berg.models.algonauts_2023:Algonauts2023Layout")
        variant = str(request.options.get("variant") or "clip_sam")
        layout.fetch_keys([INFO_KEY])
        info = layout.info()
        built = list(info.get("variants") or [])
        if variant not in built:
            raise InvalidParameterError(
                f"variant {variant!r} was not built into this artifact; built variants: {', '.join(built)} "
                f"(rebuild with berg build {request.model_id} --data DIR --option variants=[...] --force)"
            )
        subjects = list(request.subjects)
        layout.feature_sets = _feature_sets_for(variant)
        layout.fetch_keys(list(dict.fromkeys(k for s in subjects for k in layout.model_keys(s))))
        spaces, rows = {}, {}
        for s in subjects:
            full = layout.output_space(s)
            r, spaces[s] = full.narrow(request.selections[s], _LazyRois(layout, s))
            rows[s] = np.arange(full.n_outputs) if r is None else np.asarray(r, dtype=np.int64)
        codes = {s: layout.per_roi_codes(s) for s in subjects} if variant == "per_roi_class" else {}
        plan: list[tuple[str, float, dict[Any, ReadoutHead], dict[Any, np.ndarray]]] = []
        for fs, weight in VARIANTS[variant].items():
            heads, positions = {}, {}
            for s in subjects:
                readout, covered = layout.load_feature_readout(fs, s)
                keep = np.arange(rows[s].size)  # positions (in the selected outputs) this set fills
                if variant == "per_roi_class":
                    keep = keep[codes[s][rows[s]] == PER_ROI_SETS.index(fs)]
                wanted = rows[s][keep]
                if covered is not None:  # readouts of a subset of outputs ('all'): output row -> readout row
                    lookup = np.full(int(covered.max(initial=-1)) + 2, -1, dtype=np.int64)
                    lookup[covered] = np.arange(covered.size)
                    src = lookup[np.minimum(wanted, lookup.size - 1)]
                    if np.any(src < 0):
                        raise ModelLoadError(
                            f"{layout.readout_key(fs, s)} does not cover the outputs the variant needs"
                        )
                else:
                    src = wanted
                heads[s] = ReadoutHead(None, readout.select(src))
                positions[s] = keep
            plan.append((fs, weight, heads, positions))
        needed = {f for fs, *_ in plan for f in FEATURE_SETS[fs]}
        extractors = cls._extractors(request, info, needed)
        members = []
        for fs, weight, heads, positions in plan:
            engine = LinearEncodingModel(
                request.spec,
                extractor=extractors[FEATURE_SETS[fs][0]],
                projections={None: None},
                heads={s: [h] for s, h in heads.items()},
                spaces={s: FlatSpace(h.readout.n_outputs) for s, h in heads.items()},
                selections=request.selections,
                layout=layout,
                batch_size=request.batch_size,
                multi_subject=True,
                options=request.options,
            )
            full = all(positions[s].size == spaces[s].n_outputs for s in subjects)
            members.append(_Member(fs, engine, {s: None if full else positions[s] for s in subjects}, weight))
        return cls(request, layout, extractors, members, spaces, variant)

    # ------------------------------------------------------------------ inference
    @property
    def needs_captions(self) -> bool:
        """Whether ``encode`` needs ``captions=`` (the variant reads CLIP caption embeddings)."""
        return "text" in self.extractors

    def prepare_stimuli(self, stimulus: Any):
        from berg.stimuli import load_stimuli

        return load_stimuli(stimulus, "image")

    def _captions(self, captions: Any, n: int) -> list[list[str]] | None:
        from berg.backbones.clip import normalise_captions

        if not self.needs_captions:
            if captions is not None:
                log.warning("variant %r does not read captions; the captions given are ignored", self.variant)
            return None
        if captions is None:
            no_text = [v for v in VARIANTS if v not in CAPTION_VARIANTS]
            raise InvalidParameterError(
                f"variant {self.variant!r} of {self.model_id} reads the images' captions (CLIP text embeddings): pass "
                "encode(model, images, captions=[...]) with one string or list of strings per image (the COCO "
                "captions for NSD images), or load the model with variant='image_only' (or one of "
                f"{', '.join(map(repr, no_text))}) for images without captions"
            )
        return normalise_captions(captions, n)

    def iter_encode(self, stimuli: Any, *, captions: Any = None, show_progress: bool = True):
        """Yield ``(start, stop, [responses per subject])``; each backbone runs once per batch."""
        import torch

        from berg.core.engine import batch_loop

        caps = self._captions(captions, len(stimuli))
        order = [k for k in ("image", "text", "sam") if k in self.extractors]
        paired = _Paired(stimuli, caps)

        def transform(items):
            return [
                self.extractors[k].transform([c for _, c in items] if k == "text" else [i for i, _ in items])
                for k in order
            ]

        n_out = {s: self.spaces[s].n_outputs for s in self.subjects}

        def step(xs):
            feats = {k: self.extractors[k](x) for k, x in zip(order, xs)}
            with torch.inference_mode():
                batch = next(iter(feats.values())).shape[0]  # every variant reads at least one backbone
                acc = {s: torch.zeros((batch, n_out[s]), device=self.device) for s in self.subjects}
                for m in self.members:
                    f = torch.cat([feats[k] for k in FEATURE_SETS[m.name]], dim=1)
                    for s, y in zip(self.subjects, m.engine.outputs_from_features(f)):
                        pos = m.positions[s]
                        if pos is None:
                            acc[s] += m.weight * y
                        else:
                            acc[s][:, torch.as_tensor(pos, device=y.device)] += m.weight * y
            return [acc[s].cpu().numpy() for s in self.subjects]

        yield from batch_loop(paired, transform, self.batch_size, step, desc=self.model_id, show_progress=show_progress)

    def encode(self, stimulus: Any, *, show_progress: bool = True, captions: Any = None):
        """In silico responses to images (and their captions).

        Parameters
        ----------
        stimulus : array, path(s), folder, glob or PIL image(s)
            RGB images (see :mod:`berg.stimuli`).
        show_progress : bool
        captions : sequence, optional
            One entry per image: a string or a list of strings (e.g. the five COCO captions of an NSD
            image; their CLIP embeddings are averaged). Required by the variants that read text
            (``text_only``, ``image_text``, ``clip_sam``, ``per_roi_class``).

        Returns
        -------
        np.ndarray or dict
            float32 ``(n_images, n_lh + n_rh)`` (left hemisphere first); ``{subject: array}`` for several.
        """
        stimuli = self.prepare_stimuli(stimulus)
        out = {s: np.empty((len(stimuli), self.spaces[s].n_outputs), dtype=np.float32) for s in self.subjects}
        for start, stop, per_subject in self.iter_encode(stimuli, captions=captions, show_progress=show_progress):
            for s, y in zip(self.subjects, per_subject):
                out[s][start:stop] = y
        return out if self.multi_subject else out[self.subjects[0]]

    # ------------------------------------------------------------------ metadata
    def get_metadata(self) -> dict[str, Any]:
        """The subject's metadata (ROIs, fsaverage vertices, held-out accuracy) plus ``variant`` and ``scores``."""
        for s in self.subjects:
            if s not in self._metadata:
                self._metadata[s] = {**self.layout.load_metadata(s), "variant": self.variant}
        return {s: self._metadata[s] for s in self.subjects} if self.multi_subject else self._metadata[self.subjects[0]]

    def provenance(self) -> dict[str, Any]:
        """Model id, variant, subjects, backbones (weights, seed), preprocessing, artifact checksums."""
        keys = list(dict.fromkeys(k for s in self.subjects for k in self.layout.model_keys(s)))
        try:
            checksums = self.layout.checksums(keys)
        except Exception as exc:  # provenance must never break encoding; record why it is missing
            log.warning("artifact checksums unavailable: %s", exc)
            checksums = {}
        prov = {
            "model_id": self.model_id,
            "variant": self.variant,
            "subjects": list(self.subjects),
            "selection": {str(s): sel.describe() for s, sel in self.selections.items()},
            "berg_version": __version__,
            "artifacts": checksums,
            "source": dict(self.spec.source),
            "backbones": {k: e.provenance() for k, e in self.extractors.items()},
            "transforms": {k: e.transform.describe() for k, e in self.extractors.items()},
            "members": {m.name: m.weight for m in self.members},
            "output_space": {str(s): sp.to_dict() for s, sp in self.spaces.items()},
            "device": self.device,
        }
        if any(e.untrained for e in self.extractors.values()):
            prov["warning"] = (
                "responses come from UNTRAINED (randomly initialised) backbones: a control, not the published model"
            )
        return prov

    def __repr__(self) -> str:
        return (
            f"Algonauts2023Model({self.model_id!r}, variant={self.variant!r}, subjects={self.subjects}, "
            f"outputs={ {s: sp.n_outputs for s, sp in self.spaces.items()} })"
        )


class _Paired(Sequence):
    """Item i = (image i, captions of image i or None): one sequence for the prefetching batch loop."""

    def __init__(self, stimuli: Any, captions: list[list[str]] | None):
        self.stimuli, self.captions = stimuli, captions

    def __len__(self) -> int:
        return len(self.stimuli)

    def __getitem__(self, i: int):
        return self.stimuli[i], None if self.captions is None else self.captions[i]
