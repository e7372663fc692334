"""Backbones: build a torchvision network from a recipe and read features at named graph nodes.

Backbone weights come from their own library (torchvision downloads into ``TORCH_HOME``); berg never
hosts or converts them. ``backbone_weights="untrained"`` gives a seeded random initialisation, the
control BERG calls ``*_untrained`` and what offline tests use.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from berg.errors import InvalidParameterError, ModelLoadError
from berg.transforms import from_recipe

__all__ = ["FeatureExtractor", "build_backbone", "resolve_device", "validate_device"]

log = logging.getLogger(__name__)

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
UNTRAINED = "untrained"


def validate_device(device: str) -> str:
    """Check a device string's form (no torch import). Valid: auto, cpu, cuda, cuda:N, mps."""
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise InvalidParameterError(
            f"device={device!r} is not valid; valid values: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"
        )
    return device


def resolve_device(device: str) -> str:
    """Turn ``"auto"`` into ``"cuda"``/``"cpu"`` and check the device exists on this machine."""
    import torch

    validate_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidParameterError(
                f"device={device!r} but CUDA is not available here; use 'cpu' or 'auto'"
            )
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise InvalidParameterError(
                f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
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
    return os.environ.get("BERG_OFFLINE", "").lower() in ("1", "true", "yes")


def _load_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise InvalidParameterError(f"backbone_weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
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
    return dict(state)


def build_backbone(
    backbone: Mapping[str, Any],
    backbone_weights: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    offline: bool | None = None,
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

    Raises
    ------
    ModelLoadError
        Weights cannot be obtained; the message says where to put the file.
    """
    import torch

    builder = _import_dotted(backbone["builder"])
    offline = _offline() if offline is None else offline
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if backbone_weights is None:
            weights = _weights_enum(backbone["weights"])
            hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
            target = hub_dir / os.path.basename(weights.url)
            if offline and not target.is_file():
                raise ModelLoadError(
                    f"offline and the pretrained weights {backbone['weights']} are not cached; put "
                    f"{os.path.basename(weights.url)} (from {weights.url}) at {target}, or pass "
                    "backbone_weights=<path> or backbone_weights='untrained'"
                )
            try:
                model = builder(weights=weights)
            except (OSError, RuntimeError) as exc:  # URLError is an OSError
                raise ModelLoadError(
                    f"could not download {backbone['weights']} from {weights.url} ({exc}); download it "
                    f"elsewhere and put it at {target} (TORCH_HOME), or pass backbone_weights=<path>"
                ) from exc
        elif isinstance(backbone_weights, str) and backbone_weights == UNTRAINED:
            model = builder(weights=None)
        else:
            model = builder(weights=None)
            state = _load_state_dict(Path(backbone_weights))
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ModelLoadError(
                    f"{backbone_weights} does not match {backbone['builder']}: {exc}"
                ) from exc
    return model.eval()


class FeatureExtractor:
    """A backbone plus its declared preprocessing, returning flattened node features.

    Parameters
    ----------
    recipe : mapping
        A registry recipe: ``backbone``, ``nodes``, ``transform``.
    backbone_weights : None, "untrained" or path
        See :func:`build_backbone`.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    seed : int
        Seed for ``backbone_weights="untrained"``.
    transform_overrides : mapping, optional
        Field overrides for the declared transform (model options such as a centre crop).

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
    ):
        from torchvision.models.feature_extraction import create_feature_extractor

        self.recipe = recipe
        self.device = resolve_device(device)
        self.transform = from_recipe(recipe["transform"], **dict(transform_overrides or {}))
        self.nodes: list[str] = list(recipe["nodes"])
        network = build_backbone(recipe["backbone"], backbone_weights, seed=seed)
        try:
            self.network = create_feature_extractor(network, return_nodes={n: n for n in self.nodes})
        except ValueError as exc:
            raise ModelLoadError(f"feature nodes {self.nodes} not found in {recipe['backbone']['builder']}: {exc}") from exc
        self.network = self.network.eval().to(self.device)
        self.backbone_weights = "pretrained" if backbone_weights is None else str(backbone_weights)

    def __call__(self, x):
        """Run the network on a preprocessed batch; returns ``(B, n_features)`` float32 on the device."""
        import torch

        with torch.inference_mode():
            out = self.network(x.to(self.device, non_blocking=True))
            return torch.cat([out[n].flatten(1) for n in self.nodes], dim=1).float()

    def extract(self, items: Sequence[Any]):
        """Preprocess a list of uint8 stimuli and return their features (torch tensor on the device)."""
        return self(self.transform(items))
