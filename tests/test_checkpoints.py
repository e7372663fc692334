"""Cached backbone checkpoints are verified on every load, cheaply (issue 21: "weights checks every time").

torchvision (torch.hub's hash prefix in the file name), SAM (the prefix pinned in berg) and CLIP (the
Hugging Face cache's content-addressed blob name) -- a cached copy that changed after its download is
refused with a clear error instead of being loaded silently.
"""

from __future__ import annotations

import os

import pytest

from berg.errors import BackboneWeightsError
from berg.fsutil import sha256_bytes
from berg.store import cache as cache_mod
from berg.store.checkpoints import hub_hash_prefix, verify_checkpoint


@pytest.fixture(autouse=True)
def _berg_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BERG_CACHE", str(tmp_path / "berg-cache"))


def test_hub_hash_prefix():
    assert hub_hash_prefix("resnet18-f37072fd.pth") == "f37072fd"
    assert hub_hash_prefix("vit_b_32-d86f8d99.pth") == "d86f8d99"
    assert hub_hash_prefix("plain.pth") is None


def test_good_file_passes_and_a_changed_one_is_refused(tmp_path):
    path = tmp_path / "net-abc.pth"
    path.write_bytes(b"weights" * 100)
    digest = sha256_bytes(path.read_bytes())
    assert verify_checkpoint(path, sha256_prefix=digest[:8], what="test weights") == digest
    assert verify_checkpoint(path, sha256=digest) == digest
    path.write_bytes(b"Weights" * 100)  # one flipped byte per block, same size
    with pytest.raises(BackboneWeightsError) as info:
        verify_checkpoint(path, sha256_prefix=digest[:8], what="test weights", remedy="or pass PATH")
    msg = str(info.value)
    assert f"cached test weights {path} has changed since it was downloaded" in msg
    assert digest[:8] in msg and f"rm {path}" in msg and "or pass PATH" in msg


def _count_hashing(monkeypatch) -> list:
    """The files the store hashes from now on (appended as they are hashed)."""
    hashed: list = []
    real_sha = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p: hashed.append(p) or real_sha(p))
    return hashed


def test_big_files_follow_the_store_rule(tmp_path, monkeypatch):
    """Above REHASH_LIMIT a file is re-hashed only when its size or mtime changed (each load stays cheap)."""
    monkeypatch.setattr(cache_mod, "REHASH_LIMIT", 10)
    hashed = _count_hashing(monkeypatch)
    path = tmp_path / "big-abc.pth"
    path.write_bytes(b"x" * 1000)
    digest = sha256_bytes(b"x" * 1000)
    for _ in range(3):
        verify_checkpoint(path, sha256_prefix=digest[:10])
    assert len(hashed) == 1  # hashed once, then the size + mtime record vouches for it
    # a new process (fresh memo) trusts the record as long as size and mtime match
    from berg.store import checkpoints

    checkpoints._INDEXES.clear()
    verify_checkpoint(path, sha256_prefix=digest[:10])
    assert len(hashed) == 1
    # a change (new mtime) is noticed and re-hashed in full
    path.write_bytes(b"y" * 1000)
    with pytest.raises(BackboneWeightsError):
        verify_checkpoint(path, sha256_prefix=digest[:10])
    assert len(hashed) == 2


def test_small_files_are_rehashed_every_time(tmp_path, monkeypatch):
    hashed = _count_hashing(monkeypatch)
    path = tmp_path / "small-abc.pth"
    path.write_bytes(b"z" * 100)
    digest = sha256_bytes(b"z" * 100)
    st = path.stat()
    verify_checkpoint(path, sha256_prefix=digest[:8])
    path.write_bytes(b"Z" * 100)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: still caught
    with pytest.raises(BackboneWeightsError):
        verify_checkpoint(path, sha256_prefix=digest[:8])
    assert len(hashed) == 2


def _planted(tmp_path, monkeypatch, name: str, data: bytes):
    """A torch cache holding ``data`` under the published checkpoint file ``name``."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / name).write_bytes(data)
    return folder / name


RESNET = {"builder": "torchvision.models.resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1"}


def test_torchvision_cached_weights_checked_on_load(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    from berg.features import build_backbone

    _planted(tmp_path, monkeypatch, "resnet18-f37072fd.pth", b"not the published weights")
    with pytest.raises(BackboneWeightsError) as info:
        build_backbone(RESNET)
    msg = str(info.value)
    assert "resnet18-f37072fd.pth has changed since it was downloaded" in msg and "f37072fd" in msg
    assert "backbone_weights=PATH" in msg and "BERG_UNPINNED_WEIGHTS=1" in msg and "\n" not in msg


def test_unpinned_weights_load_only_when_asked_and_never_silently(tmp_path, monkeypatch):
    """The user's own weights under a published name: refused, or loaded with a warning under BERG_UNPINNED_WEIGHTS=1."""
    import torch
    import torchvision

    from berg.features import build_backbone
    from berg.store.checkpoints import UnpinnedWeightsWarning

    torch.manual_seed(3)
    mine = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(mine, _planted(tmp_path, monkeypatch, "resnet18-f37072fd.pth", b""))
    with pytest.raises(BackboneWeightsError):
        build_backbone(RESNET)
    monkeypatch.setenv("BERG_UNPINNED_WEIGHTS", "1")
    with pytest.warns(UnpinnedWeightsWarning, match="NOT the published checkpoint"):
        net = build_backbone(RESNET)
    assert torch.equal(net.state_dict()["conv1.weight"], mine["conv1.weight"])  # the user's, not random ones


def test_sam_cached_checkpoint_checked_on_load(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from berg.backbones.sam import _fetch_checkpoint

    _planted(tmp_path, monkeypatch, "sam_vit_b_01ec64.pth", b"truncated download")
    with pytest.raises(BackboneWeightsError, match=r"SAM checkpoint sam_vit_b_01ec64.pth .* has changed.*01ec64"):
        _fetch_checkpoint("vit_b", offline=True)


def test_clip_cached_weights_checked_on_load(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    from berg.backbones import clip

    hub = tmp_path / "hf"
    repo = hub / "models--timm--vit_base_patch32_clip_224.openai"
    good = b"a safetensors file"
    blob = sha256_bytes(good)
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    snap = repo / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    (repo / "blobs" / blob).write_bytes(good)
    (snap / "open_clip_model.safetensors").symlink_to(f"../../blobs/{blob}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    assert clip.verify_cached_weights() == [snap / "open_clip_model.safetensors"]
    (repo / "blobs" / blob).write_bytes(b"a safetensors filE")  # damaged after download
    with pytest.raises(BackboneWeightsError, match="CLIP weights ViT-B-32-quickgelu/openai .* has changed"):
        clip.verify_cached_weights()
    with pytest.raises(BackboneWeightsError, match="has changed"):
        clip.build_clip(None, offline=True)  # refused before open_clip loads it
