"""Segment Anything's image encoder (``segment_anything``), average-pooled: 16,384 features per image.

As in the BREIL Algonauts 2023 code: the image is resized to 1024 x 1024 (bilinear, aspect ratio NOT
kept) and normalised with the ImageNet mean/std — not SAM's own resize-longest-side + pad pipeline —
then the encoder's ``(256, 64, 64)`` embedding is average-pooled with kernel 8 to ``(256, 8, 8)`` and
flattened (16,384 values). Only the image encoder is built (the prompt encoder and mask decoder are
never needed).

``backbone_weights``: ``None``/``"pretrained"``: Meta's checkpoint (``sam_vit_l_0b3195.pth`` for ViT-L),
downloaded once into ``$TORCH_HOME/hub/checkpoints`` and checked against the sha256 prefix pinned in
its file name, on download and again on every load (:mod:`berg.store.checkpoints`); ``"untrained"``: seeded random initialisation; a path: a local copy of the checkpoint (or
of the encoder's state dict), read with ``weights_only=True``.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from berg.backbones import require
from berg.errors import BackboneWeightsError, InvalidParameterError, ModelLoadError
from berg.features import PRETRAINED, UNTRAINED, FeatureExtractor, resolve_device, validate_backbone_weights

__all__ = [
    "CHECKPOINTS",
    "ENCODERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_sam_encoder",
    "SamExtractor",
    "feature_width",
    "checkpoint_path",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: segment_anything's encoder hyper-parameters (segment_anything/build_sam.py).
ENCODERS: dict[str, dict[str, Any]] = {
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": (5, 11, 17, 23)},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": (7, 15, 23, 31)},
}
#: Meta's checkpoints (README of facebookresearch/segment-anything). The 6 hex digits in each file name
#: are the start of the file's sha256 (torch.hub's convention), checked on download.
#: Each cached copy is checked again on every load (berg.store.checkpoints). Sizes are approximate (for messages).
CHECKPOINTS: dict[str, dict[str, str]] = {
    "vit_b": {"file": "sam_vit_b_01ec64.pth", "sha256_prefix": "01ec64", "size": "about 375 MB"},
    "vit_l": {"file": "sam_vit_l_0b3195.pth", "sha256_prefix": "0b3195", "size": "about 1.25 GB"},
    "vit_h": {"file": "sam_vit_h_4b8939.pth", "sha256_prefix": "4b8939", "size": "about 2.56 GB"},
}
URL_ROOT = "https://dl.fbaipublicfiles.com/segment_anything/"
PATCH = 16
OUT_CHANNELS = 256


def feature_width(image_size: int = 1024, pool: int = 8) -> int:
    """Features per image: ``256 * (image_size / 16 / pool) ** 2`` (16,384 for 1024 px and kernel 8)."""
    side = image_size // PATCH
    if image_size % PATCH or side % pool:
        raise InvalidParameterError(
            f"image_size {image_size} must be a multiple of 16 and give a grid divisible by pool={pool}"
        )
    return OUT_CHANNELS * (side // pool) ** 2


def checkpoint_path(model: str) -> Path:
    """Where the pretrained checkpoint of ``model`` is cached (``$TORCH_HOME/hub/checkpoints``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINTS[model]["file"]


def _fetch_checkpoint(model: str, offline: bool) -> Path:
    import torch

    info = CHECKPOINTS[model]
    target = checkpoint_path(model)
    url = URL_ROOT + info["file"]
    how = (
        f"download {url} where there is internet and copy it to {target.parent} (TORCH_HOME sets the folder), "
        "or pass sam_weights=PATH (a model option of get_encoding_model); backbone_weights='untrained' gives a seeded random control"
    )
    if target.is_file():
        from berg.store.checkpoints import verify_checkpoint

        # torch.hub checked the prefix when it downloaded the file; a cached copy is checked on every load
        verify_checkpoint(
            target,
            sha256_prefix=info["sha256_prefix"],
            what=f"SAM checkpoint {info['file']}",
            remedy="or pass sam_weights=PATH (a good local copy)",
        )
        return target
    if offline:
        raise BackboneWeightsError(
            f"SAM checkpoint {info['file']} is not in {target.parent} and berg is offline (BERG_OFFLINE): {how}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", url, target.parent)
    try:
        # torch.hub writes a temporary file, checks the sha256 prefix, then renames: never a partial file
        torch.hub.download_url_to_file(url, str(target), hash_prefix=info["sha256_prefix"], progress=True)
    except (OSError, RuntimeError) as exc:
        from berg.store.network import classify

        # berg's one network-error policy: file, size, the cause in words, the ways out; one line
        raise BackboneWeightsError(
            f"SAM checkpoint {info['file']} ({info['size']}) could not be downloaded from {url}: "
            f"{classify(exc).text}. Ways out: {how}"
        ) from None
    from berg.store.checkpoints import verify_checkpoint

    verify_checkpoint(target, sha256_prefix=info["sha256_prefix"], what=f"SAM checkpoint {info['file']}")  # record it
    return target


def _encoder_state(state: dict[str, Any]) -> dict[str, Any]:
    """The image encoder's part of a full SAM checkpoint (keys ``image_encoder.*``), or the state as is."""
    prefix = "image_encoder."
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def build_sam_encoder(
    model: str = "vit_l",
    *,
    image_size: int = 1024,
    backbone_weights: Any = None,
    seed: int = 0,
    offline: bool | None = None,
):
    """SAM's ``ImageEncoderViT`` in eval mode (``(B, 3, S, S)`` -> ``(B, 256, S/16, S/16)``).

    ``image_size`` other than 1024 is for tests and benchmarks with random weights only (the pretrained
    positional embedding is a 64 x 64 grid).
    """
    import torch

    from berg.env import env_flag
    from berg.features import _load_state_dict

    if model not in ENCODERS:
        raise InvalidParameterError(f"SAM encoder {model!r}; valid: {', '.join(ENCODERS)}")
    modeling = require("segment_anything.modeling", "the SAM image encoder")
    weights = validate_backbone_weights(backbone_weights)
    if weights != UNTRAINED and image_size != 1024:
        raise InvalidParameterError(f"SAM's pretrained encoder takes 1024 x 1024 images, not {image_size}")
    offline = env_flag("BERG_OFFLINE") if offline is None else offline
    cfg = ENCODERS[model]
    # the checkpoint first: a missing download fails before ~300 M parameters are initialised
    path = None if weights == UNTRAINED else _fetch_checkpoint(model, offline) if weights is None else Path(weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = modeling.ImageEncoderViT(
            depth=cfg["depth"],
            embed_dim=cfg["embed_dim"],
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg["num_heads"],
            patch_size=PATCH,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=cfg["global_attn_indexes"],
            window_size=14,
            out_chans=OUT_CHANNELS,
        )
    if path is not None:
        state = _encoder_state(_load_state_dict(path))
        try:
            encoder.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelLoadError(f"{path} is not a SAM {model} checkpoint: {exc}") from exc
    return encoder.eval()


def _pooled_net(encoder, pool: int):
    import torch

    class SamPooled(torch.nn.Module):
        """Normalised ``(B, 3, S, S)`` -> ``{"pooled": avg_pool2d(encoder(x), pool)}``."""

        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, x):
            return {"pooled": torch.nn.functional.avg_pool2d(self.encoder(x), kernel_size=pool)}

    return SamPooled()


class SamExtractor(FeatureExtractor):
    """SAM image-encoder features (16,384 per image by default), :class:`~berg.features.FeatureExtractor`-compatible.

    Parameters
    ----------
    model : {"vit_l", "vit_b", "vit_h"}
    image_size : int
        Square input size (1024 for SAM).
    pool : int
        Average-pooling kernel on the ``(256, S/16, S/16)`` embedding (8 in the recipe).
    backbone_weights, device, seed, offline
        As :class:`berg.features.FeatureExtractor`.
    """

    def __init__(
        self,
        model: str = "vit_l",
        *,
        image_size: int = 1024,
        pool: int = 8,
        backbone_weights: Any = None,
        device: str = "cpu",
        seed: int = 0,
        offline: bool | None = None,
    ):
        from berg.transforms import from_recipe

        self.n_features = feature_width(image_size, pool)
        transform = {
            "kind": "image",
            "size": [image_size, image_size],
            "resize": "squash",
            "crop": None,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        }
        self.recipe = {
            "backbone": {
                "builder": f"segment_anything ImageEncoderViT ({model})",
                "weights": CHECKPOINTS[model]["file"],
                "pool": pool,
            },
            "nodes": ["pooled"],
            "transform": transform,
        }
        self.device = resolve_device(device)
        self.transform = from_recipe(transform)
        self.nodes = ["pooled"]
        encoder = build_sam_encoder(
            model, image_size=image_size, backbone_weights=backbone_weights, seed=seed, offline=offline
        )
        self.network = _pooled_net(encoder, pool).eval().to(self.device)
        weights = validate_backbone_weights(backbone_weights)
        self.backbone_weights = PRETRAINED if weights is None else str(weights)
        self.seed = seed
        self.untrained = weights == UNTRAINED
        self._warned = False
