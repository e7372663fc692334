"""The public API: :class:`BERG`, with BERG's method names and signatures (and their flaws fixed)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from berg.env import env_flag, parse_bool
from berg.errors import InvalidParameterError
from berg.registry import ModelSpec, Registry, validate_load_params

__all__ = ["BERG"]

log = logging.getLogger(__name__)

_DEFAULT_BATCH = {"image": 32, "video": 4}


def model_class_for(spec: ModelSpec) -> Any:
    """The class a registry entry names (checked against the interface), or the linear engine."""
    from berg.core.contract import check_model_class

    if not spec.model_class:
        from berg.core.engine import LinearEncodingModel

        return LinearEncodingModel
    from berg._imports import import_object

    return check_model_class(
        import_object(spec.model_class, f"model class of {spec.model_id}"), f"model class of {spec.model_id}"
    )


class BERG:
    """Entry point to berg's encoding models.

    Parameters
    ----------
    berg_dir : path, optional
        A local copy of BERG's bucket tree (``encoding_models/modality-.../``), used in place and never
        modified. Files found there are not downloaded.
    cache_dir : path, optional
        Where fetched artifacts are cached. Default: ``$BERG_CACHE`` or the platform's user cache dir.
    offline : bool, default False
        Never touch the network (also ``BERG_OFFLINE=1``); missing files raise an error that lists them
        and the ``berg fetch`` command to run.
    registry : path or list of paths, optional
        Extra registry files (e.g. written by ``berg train``), added to the built-in registry.

    Examples
    --------
    >>> from berg import BERG
    >>> b = BERG()
    >>> model = b.get_encoding_model("fmri-bold5000-resnet18", subject=1, selection={"roi": "PPA"})
    >>> responses = b.encode(model, ["cat.jpg", "house.jpg"])   # (2, n_voxels) float32
    """

    def __init__(
        self,
        berg_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        offline: bool = False,
        registry: Any = None,
    ):
        self.registry = Registry(registry)
        self.berg_dir = Path(berg_dir).expanduser() if berg_dir is not None else None
        if self.berg_dir is not None and not self.berg_dir.is_dir():
            raise InvalidParameterError(f"berg_dir does not exist or is not a directory: {self.berg_dir}")
        self.cache_dir = cache_dir
        self.offline = parse_bool(offline, "offline") or env_flag("BERG_OFFLINE")
        self._store = None

    @property
    def store(self):
        """The artifact :class:`~berg.store.Store` (created on first use)."""
        if self._store is None:
            from berg.store import Store

            self._store = Store(berg_dir=self.berg_dir, cache_dir=self.cache_dir, offline=self.offline)
        return self._store

    def _layout(self, spec: ModelSpec):
        from berg.core.layouts import layout_for

        layout = layout_for(spec, self.store)
        if layout is None:
            raise InvalidParameterError(f"{spec.model_id} has no files of its own (an ensemble); ask its members")
        return layout

    # ------------------------------------------------------------------ catalogue
    def list_models(self, pattern: str | None = None) -> list[str]:
        """Model ids, optionally filtered with a glob pattern (``"fmri-*"``)."""
        return self.registry.ids(pattern)

    def get_model_catalog(self, print_format: bool = False) -> dict[str, list[str]] | str:
        """Models grouped as ``{modality: [dataset, ...]}``.

        With ``print_format=True`` a readable text table is returned instead (nothing is printed).
        """
        catalog: dict[str, list[str]] = {}
        for model_id in self.registry:
            spec = self.registry.get(model_id)
            datasets = catalog.setdefault(spec.modality, [])
            if spec.dataset not in datasets:
                datasets.append(spec.dataset)
        if not print_format:
            return catalog
        lines = []
        for modality, datasets in sorted(catalog.items()):
            lines.append(f"{modality}:")
            for ds in datasets:
                ids = [m for m in self.registry if self.registry.get(m).dataset == ds]
                lines.append(f"  {ds}: {', '.join(ids)}")
        return "\n".join(lines)

    def describe(self, model_id: str) -> dict[str, Any]:
        """The model card of ``model_id`` as a dict (see :meth:`describe_text` for a readable form)."""
        return self.registry.get(model_id).card

    def describe_text(self, model_id: str) -> str:
        """The model card rendered as readable text."""
        from berg.cards import card_to_text

        return card_to_text(self.describe(model_id))

    # ------------------------------------------------------------------ loading
    def get_encoding_model(
        self,
        model_id: str,
        subject: Any = None,
        selection: Mapping[str, Any] | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        backbone_weights: str | os.PathLike[str] | None = None,
        backbone_seed: int = 0,
        **model_kwargs: Any,
    ):
        """Load an encoding model (fetching only the files it needs).

        Parameters
        ----------
        model_id : str
            A registry id (see :meth:`list_models`).
        subject : int, list of int, or "all"
            Subject(s) to load. Several subjects share one backbone and projection pass; ``encode``
            then returns ``{subject: array}``.
        selection : dict, optional
            ``{"roi": name or [names]}`` or ``{"voxels": one-hot vector}`` (``{"voxels": {subject:
            vector}}`` for several subjects); ROI takes precedence. Default: all outputs.
        device : {"auto", "cpu", "cuda", "cuda:N", "mps"}
        batch_size : int, optional
            Stimuli per forward pass (default 32 for images, 4 for videos).
        backbone_weights : None, "untrained" or path
            ``None``: the model's pretrained weights via torchvision's cache (``TORCH_HOME``);
            ``"untrained"``: seeded random initialisation (a control); a path: a local state dict.
        backbone_seed : int
            Seed of the ``"untrained"`` initialisation.
        **model_kwargs
            Model-specific options (listed in the model card under ``parameters.model_kwargs``).

        Returns
        -------
        BaseModelInterface

        Raises
        ------
        ModelNotFoundError, InvalidParameterError
            Before any I/O, with the valid values.
        ArtifactError, ModelLoadError
            Files missing/corrupt or inconsistent.
        """
        request = self.load_request(
            model_id,
            subject,
            selection,
            device=device,
            batch_size=batch_size,
            backbone_weights=backbone_weights,
            backbone_seed=backbone_seed,
            options=model_kwargs,
        )
        return self.load(request)

    def load_request(
        self,
        model_id: str,
        subject: Any = None,
        selection: Mapping[str, Any] | None = None,
        *,
        device: str = "auto",
        batch_size: int | None = None,
        backbone_weights: str | os.PathLike[str] | None = None,
        backbone_seed: int = 0,
        options: Mapping[str, Any] | None = None,
    ):
        """Validate ``get_encoding_model``'s arguments (no I/O) into a :class:`~berg.core.contract.LoadRequest`."""
        from berg.core.contract import LoadRequest
        from berg.features import resolve_device

        spec = self.registry.get(model_id)
        if batch_size is None:
            batch_size = int(spec.recipe.get("batch_size", _DEFAULT_BATCH.get(spec.input_kind, 8)))
        from berg.features import validate_backbone_weights

        subjects, selections, device, batch_size = validate_load_params(spec, subject, selection, device, batch_size)
        backbone_weights = validate_backbone_weights(backbone_weights)
        cls = model_class_for(spec)
        options = cls.validate_options(spec, dict(options or {}))
        multi = isinstance(subject, (list, tuple)) or (isinstance(subject, str) and subject == "all")
        return LoadRequest(
            spec=spec,
            subjects=tuple(subjects),
            selections=selections,
            device=resolve_device(device),
            batch_size=batch_size,
            backbone_weights=backbone_weights,
            backbone_seed=int(backbone_seed),
            options=options,
            multi_subject=multi,
            client=self,
        )

    def model_class(self, spec: ModelSpec) -> Any:
        """The model class a registry entry names (checked against the contract), or the linear engine."""
        return model_class_for(spec)

    def load(self, request: Any) -> Any:
        """Load the model a :class:`~berg.core.contract.LoadRequest` describes (what ``get_encoding_model`` does)."""
        spec = request.spec
        if spec.build:
            from berg.buildable import built_path, is_built, not_built_error

            if not is_built(spec, self.store):
                raise not_built_error(spec, built_path(spec, self.store))
        return model_class_for(spec).load(request)

    def encode(
        self,
        model: Any,
        stimulus: Any,
        return_metadata: bool = False,
        show_progress: bool = True,
        **encode_options: Any,
    ) -> Any:
        """In silico responses of a loaded model.

        Returns
        -------
        np.ndarray or dict, or tuple
            float32 ``(n_stimuli, *model.space().shape)`` (``{subject: array}`` for multi-subject models); with
            ``return_metadata=True`` always ``(responses, metadata)``. If the metadata cannot be
            loaded, an error is raised; the return type never changes silently.
        """
        from berg.core.contract import REQUIRED_METHODS

        if isinstance(model, type) or not all(callable(getattr(model, m, None)) for m in REQUIRED_METHODS):
            raise InvalidParameterError(f"model must be what get_encoding_model returns, got {type(model).__name__}")
        # Model-specific inputs (e.g. captions= for caption-reading models) go to the model's encode.
        responses = model.encode(stimulus, show_progress=show_progress, **encode_options)
        if return_metadata:
            return responses, model.get_metadata()
        return responses

    def get_model_metadata(self, model_id: str, subject: Any = None) -> dict[str, Any]:
        """A model's metadata (masks, ROI indices, accuracy...) without loading the model or backbone.

        Only the subject's metadata files are fetched. For several subjects returns ``{subject: dict}``.
        """
        spec = self.registry.get(model_id)
        subjects = spec.validate_subjects(subject)
        layout = self._layout(spec)
        keys = list(dict.fromkeys(k for s in subjects for k in layout.metadata_keys(s)))
        layout.fetch_keys(keys)
        metas = {s: layout.load_metadata(s) for s in subjects}
        multi = isinstance(subject, (list, tuple)) or subject == "all"
        return metas if multi else metas[subjects[0]]

    def fetch(self, model_id: str, subject: Any = None, all: bool = False) -> dict[str, Path]:  # noqa: A002
        """Download (or find locally) a model's files; returns ``{key: local path}``.

        ``subject`` fetches that subject's model + metadata files (plus shared files); ``all=True`` every
        file of the model. With neither, the shared files plus every subject's files are fetched.
        """
        spec = self.registry.get(model_id)
        layout = self._layout(spec)
        if all or subject is None:
            keys = layout.all_keys()
        else:
            subjects = spec.validate_subjects(subject)
            keys = list(dict.fromkeys(k for s in subjects for k in (*layout.model_keys(s), *layout.metadata_keys(s))))
        return layout.fetch_keys(keys)

    def __repr__(self) -> str:
        return f"BERG(berg_dir={self.berg_dir}, offline={self.offline}, models={len(self.registry.ids())})"
