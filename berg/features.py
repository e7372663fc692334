"""Backbones: build a torchvision network from a recipe and read features at named graph nodes.

Backbone weights come from their own library (torchvision downloads into ``TORCH_HOME``); berg never
hosts or converts them. ``backbone_weights`` takes:

* ``None`` or ``"pretrained"``: the recipe's published weights, from torch's cache
  (``$TORCH_HOME/hub/checkpoints``), downloaded there once if missing;
* ``"untrained"``: a seeded random initialisation, the control BERG calls ``*_untrained`` and what
  offline tests use; responses from it carry an :class:`~berg.errors.UntrainedBackboneWarning`;
* a path to a local state dict (``.safetensors``, or a ``torch.save`` file read with ``weights_only=True``).

:func:`validate_backbone_weights` checks the value without importing torch (a misspelling such as
``"untrainde"`` gets "did you mean 'untrained'?"), so callers can refuse it before any download.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from berg.devices import validate_device
from berg.errors import (
    BackboneWeightsError,
    InvalidParameterError,
    ModelLoadError,
    UntrainedBackboneWarning,
    close_matches,
)
from berg.transforms import from_recipe

__all__ = [
    "FeatureExtractor",
    "build_backbone",
    "resolve_device",
    "validate_device",
    "validate_backbone_weights",
    "UNTRAINED",
    "PRETRAINED",
]

log = logging.getLogger(__name__)

UNTRAINED = "untrained"
PRETRAINED = "pretrained"
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_WEIGHTS_FORM = (
    "backbone_weights takes None or 'pretrained' (the published weights, via torch's cache), "
    "'untrained' (a seeded random control), or a path to a local state dict "
    "(.safetensors, or .pth/.pt saved with torch.save(model.state_dict()))"
)
# How the CLI spells what the messages say in Python words (see berg.errors.in_cli_words).
CLI_WORDS = {
    "backbone_weights='untrained'": "--backbone-weights untrained",
    'backbone_weights="untrained"': "--backbone-weights untrained",
    "backbone_weights=PATH": "--backbone-weights PATH",
    "backbone_weights takes None or 'pretrained'": "--backbone-weights takes 'pretrained' (the default)",
    "backbone_weights=": "--backbone-weights ",
    "offline=True / BERG_OFFLINE": "--offline / BERG_OFFLINE",
}


def _with_cli_words(exc: Exception) -> Exception:
    exc.cli_words = CLI_WORDS  # type: ignore[attr-defined]
    return exc


def validate_backbone_weights(value: Any) -> str | os.PathLike[str] | None:
    """Check a ``backbone_weights`` value without importing torch or reading the file.

    Parameters
    ----------
    value : None, "pretrained", "untrained" or path

    Returns
    -------
    None, "untrained" or path
        ``"pretrained"`` is returned as ``None`` (they mean the same).

    Raises
    ------
    InvalidParameterError
        Not one of the valid forms: a misspelt keyword (with the close match), a missing file, a folder,
        another type. The message lists the valid values.
    """
    if value is None or value == PRETRAINED:
        return None
    if value == UNTRAINED:
        return UNTRAINED
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        raise _with_cli_words(
            InvalidParameterError(f"backbone_weights={value!r} ({type(value).__name__}) is not valid; {_WEIGHTS_FORM}")
        )
    text = os.fspath(value)
    if "\x00" in text:
        raise _with_cli_words(InvalidParameterError(f"backbone_weights={text!r} contains a NUL byte; {_WEIGHTS_FORM}"))
    path = Path(text).expanduser()
    if path.is_file():
        return value
    looks_like_word = os.sep not in text and "/" not in text and not path.suffix
    if looks_like_word:
        near = close_matches(text, [UNTRAINED, PRETRAINED])
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise _with_cli_words(
            InvalidParameterError(
                f"backbone_weights={text!r} is neither a keyword nor an existing file; {hint}{_WEIGHTS_FORM}"
            )
        )
    if path.is_dir():
        raise _with_cli_words(
            InvalidParameterError(
                f"backbone_weights={text!r} is a folder; give the state-dict file inside it ({', '.join(_WEIGHT_SUFFIXES)})"
            )
        )
    raise _with_cli_words(InvalidParameterError(f"backbone_weights file not found: {path}; {_WEIGHTS_FORM}"))


def resolve_device(device: str) -> str:
    """Turn ``"auto"`` into ``"cuda"``/``"cpu"`` and check the device exists on this machine."""
    import torch

    validate_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidParameterError(f"device={device!r} but CUDA is not available here; use 'cpu' or 'auto'")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise InvalidParameterError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InvalidParameterError("device='mps' but MPS is not available here; use 'cpu' or 'auto'")
    return device


def _import_dotted(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"cannot import backbone builder {path!r}: {exc}") from exc


def _weights_enum(name: str) -> Any:
    from torchvision.models import get_weight

    try:
        return get_weight(name)
    except (ValueError, KeyError, AttributeError) as exc:
        raise ModelLoadError(f"unknown torchvision weights {name!r}: {exc}") from exc


def _offline() -> bool:
    from berg.env import env_flag

    return env_flag("BERG_OFFLINE")


def _download_command(weights_name: str) -> str:
    return f"python -c \"from torchvision.models import get_weight; get_weight('{weights_name}').get_state_dict()\""


def _missing_weights(weights_name: str, url: str, target: Path, reason: str) -> BackboneWeightsError:
    """The one message for absent pretrained weights: file, folder, download command, the control."""
    message = (
        f"pretrained backbone weights {weights_name} missing: {target.name} is not in {target.parent} and "
        f"{reason}. Run {_download_command(weights_name)} where there is internet (or download {url}) and "
        f'copy {target.name} there (TORCH_HOME sets the folder); or pass backbone_weights="untrained" '
        "(a seeded random-weights control) or backbone_weights=PATH (a local copy)."
    )
    return _with_cli_words(BackboneWeightsError(message))  # type: ignore[return-value]


def _check_state_dict(state: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The state dict, once every floating tensor in it is finite (else a ModelLoadError naming the key).

    One pass over tensors just read into memory (``torch.isfinite`` per tensor, a few ms for a
    ResNet); a NaN/inf weight would otherwise give NaN features, and NaN outputs, without a word.
    Integer buffers (BatchNorm's ``num_batches_tracked``) are always finite.
    """
    import torch

    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelLoadError(f"{path}: state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        if (value.is_floating_point() or value.is_complex()) and value.numel():
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                idx = tuple(int(i) for i in torch.nonzero(bad)[0]) if value.dim() else ()
                raise ModelLoadError(
                    f"{path}: backbone weight {key!r}{list(idx) if idx else ''} is {value[idx].item()} "
                    f"({int(bad.sum())} of {value.numel()} values are not finite); the file is damaged or "
                    "holds a diverged training run: use a good copy, or backbone_weights=None (the recipe's "
                    "pretrained weights)"
                )
    return dict(state)


def _load_state_dict(path: Path) -> dict[str, Any]:
    """A local state dict (``.safetensors``, or ``torch.save`` read with ``weights_only=True``), checked finite.

    Only user files come here; the recipe's pretrained file is checked against torchvision's hash
    instead (:func:`build_backbone`), which value checks could not improve on.
    """
    import torch

    if not path.is_file():
        validate_backbone_weights(path)  # raises the precise message (folder, missing file)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _check_state_dict(load_file(str(path)), path)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError subclasses
        raise ModelLoadError(
            f"cannot read {path} as a state dict with weights_only=True ({exc}); "
            "save it with torch.save(model.state_dict()) or as .safetensors"
        ) from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path} does not contain a state dict (got {type(state).__name__})")
    return _check_state_dict(state, path)


def build_backbone(
    backbone: Mapping[str, Any],
    backbone_weights: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    offline: bool | None = None,
    show_progress: bool | None = None,
):
    """Build the recipe's backbone network in eval mode.

    Parameters
    ----------
    backbone : mapping
        ``{"builder": "torchvision.models.resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1"}``.
    backbone_weights : None, "untrained" or path
        ``None``: the recipe's pretrained weights through torchvision's own cache/download;
        ``"untrained"``: random initialisation from ``seed``; a path: a local state dict
        (``.safetensors``, or a ``torch.save`` file read with ``weights_only=True``).
    seed : int
        Seed of the random initialisation (also used before loading weights, so any layer the weights
        do not cover is reproducible).
    offline : bool, optional
        Never download; defaults to the ``BERG_OFFLINE`` environment variable.
    show_progress : bool, optional
        Progress bar of a weights download (default on, off with ``BERG_QUIET``).

    Raises
    ------
    InvalidParameterError
        ``backbone_weights`` is not a valid value (see :func:`validate_backbone_weights`).
    BackboneWeightsError
        The pretrained weights are not cached and cannot be downloaded; the message names the file, the
        folder, a download command and the ``"untrained"`` control.
    ModelLoadError
        A local weights file does not fit the network.
    """
    import torch

    from berg.env import progress_enabled

    backbone_weights = validate_backbone_weights(backbone_weights)
    builder = _import_dotted(backbone["builder"])
    offline = _offline() if offline is None else offline
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if backbone_weights is None:
            weights = _weights_enum(backbone["weights"])
            target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
            if offline and not target.is_file():
                raise _missing_weights(
                    backbone["weights"], weights.url, target, "berg is offline (offline=True / BERG_OFFLINE)"
                )
            if target.is_file():  # torch.hub checks the hash only when it downloads: check the cached copy now
                from berg.store.checkpoints import hub_hash_prefix, verify_checkpoint

                if hub_hash_prefix(target.name):
                    verify_checkpoint(
                        target,
                        sha256_prefix=hub_hash_prefix(target.name),
                        what=f"backbone weights {backbone['weights']}",
                        remedy='or pass backbone_weights=PATH (a good local copy) or backbone_weights="untrained"',
                    )
            else:
                log.info("downloading %s from %s into %s", backbone["weights"], weights.url, target.parent)
            try:
                model = builder(weights=weights, progress=progress_enabled(show_progress))
            except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash a RuntimeError
                from berg.store.network import classify, human_size

                # berg's one network-error policy: the cause in words (no network, 403, timeout) and the size
                size_mb = weights.meta.get("_file_size")  # torchvision records the file size in MB
                sized = f" ({human_size(int(size_mb * 1e6))})" if isinstance(size_mb, (int, float)) else ""
                # An expected failure: the message has everything; the chained download traceback
                # (~90 lines of urllib) would only bury it.
                raise _missing_weights(
                    backbone["weights"], weights.url, target, f"could not be downloaded{sized}: {classify(exc).text}"
                ) from None
        elif isinstance(backbone_weights, str) and backbone_weights == UNTRAINED:
            model = builder(weights=None)
        else:
            model = builder(weights=None)
            state = _load_state_dict(Path(backbone_weights))
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ModelLoadError(f"{backbone_weights} does not match {backbone['builder']}: {exc}") from exc
    return model.eval()


_UNTRAINED_SHOWN: set[str] = set()  # untrained-backbone messages already shown in this process


def _warning_action(message: str, category: type[Warning]) -> str:
    """The action the current warning filters give a berg warning (the first filter that matches)."""
    for action, msg, cat, module, lineno in warnings.filters:
        if (
            (msg is None or msg.match(message))
            and issubclass(category, cat)
            and (module is None or module.match(__name__))
            and not lineno
        ):
            return action
    return warnings.defaultaction


class FeatureExtractor:
    """A backbone plus its declared preprocessing, returning flattened node features.

    Parameters
    ----------
    recipe : mapping
        A registry recipe: ``backbone``, ``nodes``, ``transform``.
    backbone_weights : None, "pretrained", "untrained" or path
        See :func:`build_backbone`. With ``"untrained"`` the first call emits an
        :class:`~berg.errors.UntrainedBackboneWarning` and :meth:`provenance` records it.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    seed : int
        Seed for ``backbone_weights="untrained"``.
    transform_overrides : mapping, optional
        Field overrides for the declared transform (model options such as a centre crop).
    offline : bool, optional
        Never download the pretrained weights (default: ``BERG_OFFLINE``); pass the client's setting.

    Attributes
    ----------
    transform : ImageTransform or VideoTransform
        The preprocessing object (the same one the trainer uses).
    nodes : list of str
        Graph nodes whose outputs are flattened and concatenated, in this order.
    """

    def __init__(
        self,
        recipe: Mapping[str, Any],
        *,
        backbone_weights: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        seed: int = 0,
        transform_overrides: Mapping[str, Any] | None = None,
        offline: bool | None = None,
    ):
        from torchvision.models.feature_extraction import create_feature_extractor

        self.recipe = recipe
        self.device = resolve_device(device)
        self.transform = from_recipe(recipe["transform"], **dict(transform_overrides or {}))
        self.nodes: list[str] = list(recipe["nodes"])
        network = build_backbone(recipe["backbone"], backbone_weights, seed=seed, offline=offline)
        try:
            self.network = create_feature_extractor(network, return_nodes={n: n for n in self.nodes})
        except ValueError as exc:
            raise ModelLoadError(
                f"feature nodes {self.nodes} not found in {recipe['backbone']['builder']}: {exc}"
            ) from exc
        self.network = self.network.eval().to(self.device)
        # Frozen: berg never trains a backbone, and gradients of forward() are wanted w.r.t. the input
        # only (image synthesis); weight gradients would cost 2-3x per backward pass.
        self.network.requires_grad_(False)
        weights = validate_backbone_weights(backbone_weights)
        self.backbone_weights = PRETRAINED if weights is None else str(weights)
        self.seed = seed
        # Warn only where the published model has trained weights: for models whose published backbone
        # is itself untrained (BERG's *_untrained controls: recipe weights null) it is the model.
        self.untrained = weights == UNTRAINED and recipe["backbone"].get("weights") is not None
        self._warned = False

    @property
    def untrained_warning(self) -> str | None:
        """The warning text when the backbone is untrained (for provenance), else ``None``."""
        if not self.untrained:
            return None
        return (
            f"responses come from an UNTRAINED backbone ({self.recipe['backbone']['builder']} with "
            f"backbone_weights='untrained', seed {self.seed}): a random-weights control, not the "
            "published model"
        )

    def provenance(self) -> dict[str, Any]:
        """What the backbone was: builder, weights used (``pretrained`` name, ``untrained`` + seed, or a
        path), and ``warnings`` (the untrained warning) for results' provenance."""
        out: dict[str, Any] = {**self.recipe["backbone"], "backbone_weights": self.backbone_weights}
        if self.untrained:
            out["seed"] = self.seed
        out["warnings"] = [self.untrained_warning] if self.untrained else []
        return out

    def warn_if_untrained(self) -> None:
        """Emit the :class:`~berg.errors.UntrainedBackboneWarning` (once per extractor; shown once per process)."""
        if self.untrained and not self._warned:
            self._warned = True  # once per extractor: at the first encode, not at every batch
            message = self.untrained_warning
            # Once per model per process (not once per extractor, engine line or notebook cell), unless
            # the warning filters say "always" (pytest.warns, catch_warnings(record=True), berg's CLI).
            # Python's own once-per-location registry is reset whenever any library adds a filter.
            if message in _UNTRAINED_SHOWN and _warning_action(message, UntrainedBackboneWarning) != "always":
                return
            _UNTRAINED_SHOWN.add(message)
            warnings.warn(message, UntrainedBackboneWarning, stacklevel=3)

    def __call__(self, x):
        """Run the network on a preprocessed batch; returns ``(B, n_features)`` float32 on the device."""
        import torch

        self.warn_if_untrained()
        with torch.inference_mode():
            out = self.network(x.to(self.device, non_blocking=True))
            return torch.cat([out[n].flatten(1) for n in self.nodes], dim=1).float()

    def extract(self, items: Sequence[Any]):
        """Preprocess a list of uint8 stimuli and return their features (torch tensor on the device)."""
        return self(self.transform(items))

    def forward(self, x):
        """Like :meth:`__call__` but differentiable (no ``inference_mode``): gradients reach ``x``."""
        import torch

        self.warn_if_untrained()
        out = self.network(x.to(self.device))
        return torch.cat([out[n].flatten(1) for n in self.nodes], dim=1).float()

    def signature(self) -> str:
        """What makes two extractors compute the same features (ensembles share one backbone pass)."""
        import json

        return json.dumps(
            [
                self.recipe["backbone"],
                self.nodes,
                self.transform.describe(),
                self.backbone_weights,
                getattr(self, "seed", None),
            ],
            sort_keys=True,
            default=str,
        )
