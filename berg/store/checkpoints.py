"""Backbone checkpoints berg downloads (torchvision, SAM, CLIP), verified on every load, cheaply.

torch.hub checks a checkpoint's sha256 prefix only while downloading it; a cached file is never
checked again, so a checkpoint damaged or replaced later would be loaded silently. berg checks it on
every load against its pinned digest (the full sha256 where one is pinned, such as the Hugging Face
hub's content-addressed blob names) or pinned prefix (the ``-<hex>`` in torch.hub file names, the hex
in SAM's file names), with the store's rule for what that costs
(:data:`berg.store.cache.REHASH_LIMIT`): files up to 256 MiB are re-hashed each time; bigger ones are
re-hashed only when their size or mtime changed since berg last hashed them.

The records live in the cache (``<cache>/_checkpoints/.berg-index.jsonl``), keyed by the checkpoint's
folder and name; where the cache cannot be written, a process remembers what it hashed.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

from berg.errors import BackboneWeightsError
from berg.fsutil import sha256_bytes

__all__ = ["verify_checkpoint", "hub_hash_prefix", "CHECKPOINTS_DIR", "UnpinnedWeightsWarning"]

log = logging.getLogger(__name__)

#: Folder of the cache holding the checkpoint records.
CHECKPOINTS_DIR = "_checkpoints"
# torch.hub's convention: "<name>-<first hex digits of the sha256>.<ext>" (torch.hub.HASH_REGEX)
_HUB_HASH = re.compile(r"-([a-f0-9]+)\.")
_INDEXES: dict[Path, object] = {}


class UnpinnedWeightsWarning(UserWarning):
    """A cached checkpoint that differs from its pin was loaded because ``BERG_UNPINNED_WEIGHTS=1``."""


def hub_hash_prefix(file_name: str) -> str | None:
    """The sha256 prefix torch.hub pins in a checkpoint's file name (``resnet18-f37072fd.pth`` -> ``f37072fd``)."""
    m = _HUB_HASH.search(file_name)
    return m.group(1) if m else None


def _index():
    from berg.store import default_cache_dir
    from berg.store.cache import CacheIndex

    root = default_cache_dir() / CHECKPOINTS_DIR
    if root not in _INDEXES:  # one per process, so its memo of big files hashed here is kept
        _INDEXES[root] = CacheIndex(root)
    return _INDEXES[root]


def verify_checkpoint(
    path: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    what: str = "backbone checkpoint",
    remedy: str = "",
) -> str:
    """Check a cached checkpoint against its pinned sha256 (or prefix) before it is loaded.

    Parameters
    ----------
    path : path-like
        The cached file.
    sha256, sha256_prefix : str, optional
        The pinned digest, or its first hex digits (one of them is needed).
    what : str
        Names the checkpoint in the message (``"ResNet18_Weights.IMAGENET1K_V1"``).
    remedy : str, optional
        What the user can do besides deleting the file (e.g. ``"or pass backbone_weights=PATH"``).

    Returns
    -------
    str
        The file's sha256.

    Raises
    ------
    BackboneWeightsError
        The file's digest does not match the pin; the message names the file, both digests and how to
        get a good copy.
    """
    path = Path(path)
    pin = (sha256 or sha256_prefix or "").lower()
    if not pin:
        raise ValueError("verify_checkpoint needs sha256 or sha256_prefix")
    real = path.resolve()
    index = _index()
    key = f"{sha256_bytes(str(real.parent).encode())[:16]}/{real.name}"
    rec = index.get(key)
    # the store's rule: a big file whose size and mtime match the record is not re-hashed
    digest = index.digest(key, real, rec if rec and str(rec.get("sha256", "")).startswith(pin) else None)
    if not digest.startswith(pin):
        from berg.env import env_flag

        if env_flag("BERG_UNPINNED_WEIGHTS"):
            # the user said these are their own weights under the published name: load, never silently
            warnings.warn(
                f"{what} {path} is NOT the published checkpoint (sha256 {digest[:16]}..., pinned {pin[:16]}); "
                "loaded because BERG_UNPINNED_WEIGHTS=1: responses are not the published model's",
                UnpinnedWeightsWarning,
                stacklevel=2,
            )
            return digest
        raise BackboneWeightsError(
            f"cached {what} {path} has changed since it was downloaded: its sha256 is {digest[:16]}..., the pinned "
            f"{'sha256' if sha256 else 'prefix'} is {pin[:16]}{'...' if len(pin) > 16 else ''}. Delete it (rm {path}) "
            f"and berg downloads it again where there is network{(', ' + remedy) if remedy else ''}; for your own weights "
            "under this name set BERG_UNPINNED_WEIGHTS=1 (loaded with a warning)"
        )
    st = real.stat()
    if not rec or rec.get("sha256") != digest or rec.get("size") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
        index.record(key, real, digest, origin=str(path), what=what)
    log.debug("verified %s %s (sha256 %s)", what, path, digest[:16])
    return digest
