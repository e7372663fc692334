"""OpenAI CLIP ViT-B/32 through ``open_clip``: image embeddings and caption embeddings (512 each).

The Algonauts 2023 CLIP + SAM recipe (Shen et al. 2023, BREIL) used OpenAI's ``clip`` package with
``ViT-B/32``; in ``open_clip`` that network is ``ViT-B-32-quickgelu`` with the ``openai`` weights (OpenAI's
CLIP uses QuickGELU activations). Image features are ``encode_image`` of the image preprocessed as OpenAI's
``preprocess`` does (shorter side to 224, bicubic; centre crop 224; CLIP mean/std); text features are
the mean of ``encode_text`` over the image's captions (COCO's five, or the user's). Neither is
L2-normalised (the authors fed the raw embeddings to ridge).

``backbone_weights``: ``None``/``"pretrained"`` downloads the ``openai`` weights through open_clip's usual
route (Hugging Face hub, cached; ``HF_HUB_OFFLINE=1`` or ``BERG_OFFLINE`` forbid the download);
``"untrained"``: seeded random initialisation (tests, controls); a path: a local state dict of
``ViT-B-32-quickgelu`` (``.safetensors``, or a ``torch.save`` file read with ``weights_only=True``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from berg.backbones import require
from berg.errors import BackboneWeightsError, InvalidParameterError, ModelLoadError
from berg.features import PRETRAINED, UNTRAINED, FeatureExtractor, resolve_device, validate_backbone_weights

__all__ = [
    "MODEL_NAME",
    "PRETRAINED_TAG",
    "WIDTH",
    "CLIP_MEAN",
    "CLIP_STD",
    "ClipImageTransform",
    "CaptionTransform",
    "build_clip",
    "ClipImageExtractor",
    "ClipTextExtractor",
    "clip_extractors",
    "normalise_captions",
]

log = logging.getLogger(__name__)

MODEL_NAME = "ViT-B-32-quickgelu"
PRETRAINED_TAG = "openai"
#: Width of one embedding (image or text).
WIDTH = 512
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONTEXT_LENGTH = 77


@dataclass(frozen=True)
class ClipImageTransform:
    """OpenAI CLIP's ``preprocess``: shorter side -> ``size`` (bicubic), centre crop, CLIP mean/std."""

    size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    kind: str = field(default="image", init=False)

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.size, self.size)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "image",
            "size": [self.size, self.size],
            "resize": "shorter",
            "interpolation": "bicubic",
            "crop": [self.size, self.size],
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def _one(self, img: np.ndarray) -> np.ndarray:
        from PIL import Image

        pil = Image.fromarray(img)
        w, h = pil.size
        s = self.size
        # torchvision's Resize(int): the shorter side becomes s, the longer int(s * long / short)
        nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        pil = pil.resize((nw, nh), Image.BICUBIC)
        left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))
        return np.asarray(pil.crop((left, top, left + s, top + s)), dtype=np.float32)

    def __call__(self, items: Sequence[np.ndarray]):
        import torch

        batch = np.stack([self._one(np.asarray(i)) for i in items]) / 255.0
        batch = (batch - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32))


def normalise_captions(captions: Any, n: int) -> list[list[str]]:
    """Captions as one non-empty list of strings per image.

    ``captions`` is a sequence with one entry per image, each a string or a list of strings (a single
    string is accepted for a single image). Anything else raises :class:`InvalidParameterError`.
    """
    if isinstance(captions, str):
        captions = [captions]
    if not isinstance(captions, Sequence):
        raise InvalidParameterError(
            f"captions must be a list with one entry per image (a string or a list of strings), got "
            f"{type(captions).__name__}"
        )
    if len(captions) != n:
        raise InvalidParameterError(
            f"captions has {len(captions)} entries but there are {n} images; give one "
            "entry (a string or a list of strings) per image"
        )
    out = []
    for i, c in enumerate(captions):
        texts = [c] if isinstance(c, str) else list(c) if isinstance(c, Sequence) else None
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise InvalidParameterError(
                f"captions[{i}] must be a non-empty string or a non-empty list of non-empty strings, got {c!r}"
            )
        out.append(texts)
    return out


@dataclass(frozen=True)
class CaptionTransform:
    """Caption lists -> int64 tokens ``(B, max_captions, 77)``; rows of zeros pad shorter lists."""

    context_length: int = CONTEXT_LENGTH
    kind: str = field(default="text", init=False)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "text",
            "tokenizer": f"open_clip.get_tokenizer({MODEL_NAME!r})",
            "context_length": self.context_length,
            "pooling": "mean over captions",
        }

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.context_length,)  # type: ignore[return-value]

    def __call__(self, items: Sequence[Sequence[str]]):
        import torch

        open_clip = require("open_clip", "CLIP caption embeddings")
        tokenizer = open_clip.get_tokenizer(MODEL_NAME)  # BPE vocabulary ships with the package: offline
        items = [[t] if isinstance(t, str) else list(t) for t in items]
        width = max(len(t) for t in items)
        out = torch.zeros((len(items), width, self.context_length), dtype=torch.long)
        for i, texts in enumerate(items):
            out[i, : len(texts)] = tokenizer(list(texts), context_length=self.context_length)
        return out


def _missing(reason: str) -> BackboneWeightsError:
    return BackboneWeightsError(
        f"pretrained CLIP weights {MODEL_NAME}/{PRETRAINED_TAG} unavailable: {reason}. open_clip downloads them "
        "from the Hugging Face hub (timm/vit_base_patch32_clip_224.openai) into HF_HOME; run "
        f"python -c \"import open_clip; open_clip.create_model('{MODEL_NAME}', pretrained='{PRETRAINED_TAG}')\" "
        "where there is internet, or pass clip_weights=PATH (a local state dict; a model option of get_encoding_model), or "
        "backbone_weights='untrained' (a seeded random-weights control)."
    )


HF_REPO = "timm/vit_base_patch32_clip_224.openai"
_HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _cached_openai_files() -> list[Path]:
    """open_clip's ``openai`` checkpoint files of ViT-B/32 found in the Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        return []
    found = (try_to_load_from_cache(HF_REPO, n) for n in _HF_FILES)
    return [Path(p) for p in found if isinstance(p, str)]


def _cached_openai_weights() -> bool:
    """Whether open_clip's ``openai`` checkpoint of ViT-B/32 is in the Hugging Face cache (no network)."""
    return bool(_cached_openai_files())


def verify_cached_weights() -> list[Path]:
    """Check the cached CLIP checkpoint before it is loaded (every load; cheap for unchanged big files).

    The Hugging Face cache stores a large file as ``blobs/<sha256 of its bytes>``, so the blob's name is
    the pinned digest; :func:`berg.store.checkpoints.verify_checkpoint` checks the bytes against it.
    """
    from berg.store.checkpoints import verify_checkpoint

    checked = []
    for path in _cached_openai_files():
        blob = path.resolve().name
        if _SHA256_HEX.fullmatch(blob):
            verify_checkpoint(
                path,
                sha256=blob,
                what=f"CLIP weights {MODEL_NAME}/{PRETRAINED_TAG}",
                remedy="or pass clip_weights=PATH (a good local copy)",
            )
            checked.append(path)
    return checked


def build_clip(backbone_weights: Any = None, *, seed: int = 0, offline: bool | None = None):
    """The ``ViT-B-32-quickgelu`` CLIP model in eval mode (see the module docstring for ``backbone_weights``)."""
    import torch

    from berg.env import env_flag
    from berg.features import _load_state_dict

    open_clip = require("open_clip", "the CLIP backbone")
    weights = validate_backbone_weights(backbone_weights)
    offline = env_flag("BERG_OFFLINE") if offline is None else offline
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if weights is None:
            if offline and not _cached_openai_weights():
                raise _missing("berg is offline (BERG_OFFLINE) and they are not in the Hugging Face cache")
            verify_cached_weights()
            try:
                model = open_clip.create_model(MODEL_NAME, pretrained=PRETRAINED_TAG)
            except (OSError, RuntimeError, ValueError) as exc:
                from berg.store.network import classify

                reason = classify(exc).text  # berg's one network-error policy: the cause in words
                raise _missing(
                    (
                        "berg is offline and they are not cached: "
                        if offline
                        else "could not be downloaded (about 605 MB): "
                    )
                    + reason
                ) from None
        else:
            model = open_clip.create_model(MODEL_NAME, pretrained=None)
            if weights != UNTRAINED:
                state = _load_state_dict(Path(weights))
                try:
                    model.load_state_dict(state, strict=True)
                except RuntimeError as exc:
                    raise ModelLoadError(f"{weights} is not a {MODEL_NAME} state dict: {exc}") from exc
    return model.eval()


def _nets(model):
    import torch

    class ClipImageNet(torch.nn.Module):
        """Preprocessed images ``(B, 3, 224, 224)`` -> ``{"image_embeds": (B, 512)}``."""

        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, x):
            return {"image_embeds": self.clip.encode_image(x)}

    class ClipTextNet(torch.nn.Module):
        """Tokens ``(B, C, 77)`` (zero rows = no caption) -> ``{"text_embeds": mean over captions (B, 512)}``."""

        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, tokens):
            valid = tokens[..., 0] != 0  # every real caption starts with the start-of-text token
            emb = self.clip.encode_text(tokens[valid])
            owner = torch.nonzero(valid, as_tuple=True)[0]
            total = emb.new_zeros((tokens.shape[0], emb.shape[1])).index_add_(0, owner, emb)
            counts = valid.sum(dim=1, keepdim=True).clamp(min=1).to(emb.dtype)
            return {"text_embeds": total / counts}

    return ClipImageNet(model), ClipTextNet(model)


class _ClipExtractor(FeatureExtractor):
    """Shared construction of the two CLIP extractors (one open_clip model, two heads)."""

    node = ""

    def __init__(self, network, transform, *, device: str, backbone_weights: Any, seed: int):
        self.device = resolve_device(device)
        self.transform = transform
        self.nodes = [self.node]
        self.network = network.eval().to(self.device)
        weights = validate_backbone_weights(backbone_weights)
        self.backbone_weights = PRETRAINED if weights is None else str(weights)
        self.seed = seed
        self.untrained = weights == UNTRAINED
        self._warned = False
        self.recipe = {
            "backbone": {"builder": f"open_clip.create_model({MODEL_NAME!r})", "weights": PRETRAINED_TAG},
            "nodes": self.nodes,
            "transform": transform.describe(),
        }


class ClipImageExtractor(_ClipExtractor):
    """CLIP image embeddings (512) of images preprocessed by :class:`ClipImageTransform`."""

    node = "image_embeds"


class ClipTextExtractor(_ClipExtractor):
    """Mean CLIP text embedding (512) of each image's captions (items are lists of strings)."""

    node = "text_embeds"


def clip_extractors(
    *, backbone_weights: Any = None, device: str = "cpu", seed: int = 0, offline: bool | None = None
) -> tuple[ClipImageExtractor, ClipTextExtractor]:
    """Build CLIP once; return its image and caption extractors (they share the network)."""
    model = build_clip(backbone_weights, seed=seed, offline=offline)
    image_net, text_net = _nets(model)
    kw = {"device": device, "backbone_weights": backbone_weights, "seed": seed}
    return ClipImageExtractor(image_net, ClipImageTransform(), **kw), ClipTextExtractor(
        text_net, CaptionTransform(), **kw
    )
