"""Files are trusted only when berg can vouch for them (issue 24).

* a file in a ``berg_dir`` that resolves outside its own model folder, or to another file of the model
  (another subject's weights), is refused -- BERG's bucket layout holds each file under its own name,
  with no links;
* a file copied into the cache by hand (no record of berg's) is checked against what is known before
  first use: the manifest's size and sha256, the source's size and ETag; a corrupt one is fetched again.
"""

from __future__ import annotations

import pytest
from test_store_sources import FolderSource, _native, folder_source

from berg.errors import ArtifactError
from berg.store import Store
from berg.store.cache import CacheIndex

PREFIX = "encoding_models/modality-fmri/train_dataset-nsd_fsaverage/model-alexnet/"


def _bergdir(tmp_path):
    root = tmp_path / "bergdir"
    model = root / PREFIX
    (model / "encoding_models_weights").mkdir(parents=True)
    (model / "metadata").mkdir()
    for s in (1, 2):
        (model / "encoding_models_weights" / f"weights_subject-0{s}.npy").write_bytes(f"weights {s}".encode())
        (model / "metadata" / f"metadata_subject-0{s}.npy").write_bytes(f"meta {s}".encode())
    return root, model


def _source(tmp_path):
    return {**folder_source(tmp_path / "nowhere", manifest=False), "prefix": PREFIX}


def test_berg_dir_files_in_place_are_used(tmp_path):
    root, model = _bergdir(tmp_path)
    store = Store(berg_dir=root, cache_dir=tmp_path / "cache")
    key = "encoding_models_weights/weights_subject-01.npy"
    assert store.fetch("m", _source(tmp_path), key) == model / key


def test_link_to_another_subjects_file_is_refused(tmp_path):
    root, model = _bergdir(tmp_path)
    w1 = model / "encoding_models_weights" / "weights_subject-01.npy"
    w1.unlink()
    w1.symlink_to("weights_subject-02.npy")
    store = Store(berg_dir=root, cache_dir=tmp_path / "cache")
    with pytest.raises(ArtifactError) as info:
        store.fetch("m", _source(tmp_path), "encoding_models_weights/weights_subject-01.npy")
    msg = str(info.value)
    assert "another file of the same model folder (encoding_models_weights/weights_subject-02.npy)" in msg
    assert "refused" in msg and "Replace the link with a copy" in msg


def test_link_outside_the_model_folder_is_refused(tmp_path):
    root, model = _bergdir(tmp_path)
    other = root / "encoding_models/modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32/metadata"
    other.mkdir(parents=True)
    (other / "metadata_subject-01.npy").write_bytes(b"another model's metadata")
    m1 = model / "metadata" / "metadata_subject-01.npy"
    m1.unlink()
    m1.symlink_to(other / "metadata_subject-01.npy")
    store = Store(berg_dir=root, cache_dir=tmp_path / "cache")
    with pytest.raises(ArtifactError, match="outside its model folder"):
        store.fetch("m", _source(tmp_path), "metadata/metadata_subject-01.npy")
    # a linked *folder* leading outside is refused the same way
    (model / "metadata").rename(model / "metadata-real")
    (model / "metadata").symlink_to(tmp_path)
    (tmp_path / "metadata_subject-02.npy").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="outside its model folder"):
        store.fetch("m", _source(tmp_path), "metadata/metadata_subject-02.npy")


def test_whole_berg_dir_behind_a_link_and_annexed_files_are_fine(tmp_path):
    root, model = _bergdir(tmp_path)
    link = tmp_path / "bergdir-link"
    link.symlink_to(root)
    key = "metadata/metadata_subject-02.npy"
    assert Store(berg_dir=link, cache_dir=tmp_path / "c1").fetch("m", _source(tmp_path), key).read_bytes() == b"meta 2"
    # DataLad / git-annex: files are links into the content-addressed object store of the dataset
    objects = root / ".git" / "annex" / "objects" / "Xk" / "3v" / "SHA256E-s6--abc.npy"
    objects.mkdir(parents=True)
    target = objects / "SHA256E-s6--abc.npy"
    (model / key).rename(target)
    (model / key).symlink_to(target)
    assert Store(berg_dir=root, cache_dir=tmp_path / "c2").fetch("m", _source(tmp_path), key).read_bytes() == b"meta 2"


def _hand_copied(tmp_path, copy: bytes):
    """A remote holding the real bytes, and a cache holding the user's hand-made copy ``copy``."""
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "data.bin").write_bytes(b"the real bytes")
    cache = tmp_path / "cache"
    (cache / "m").mkdir(parents=True)
    (cache / "m" / "data.bin").write_bytes(copy)
    FolderSource.served.clear()
    return folder_source(remote, manifest=False), cache


def test_hand_copied_corrupt_file_is_not_trusted_on_first_use(tmp_path):
    source, cache = _hand_copied(tmp_path, b"bad bytes")  # a user's copy, corrupt (other size)
    path = Store(cache_dir=cache).fetch("m", source, "data.bin")
    assert path.read_bytes() == b"the real bytes" and FolderSource.served == {"data.bin": 1}
    assert CacheIndex(cache / "m").get("data.bin")["size"] == 14


def test_hand_copied_good_file_is_checked_then_used(tmp_path):
    source, cache = _hand_copied(tmp_path, b"the real bytes")
    assert Store(cache_dir=cache).fetch("m", source, "data.bin").read_bytes() == b"the real bytes"
    assert FolderSource.served == {}  # not downloaded again
    assert CacheIndex(cache / "m").get("data.bin")["origin"] == "found-in-cache"


def test_hand_copied_file_offline_is_not_used_blindly(tmp_path):
    cache = tmp_path / "cache"
    (cache / "m").mkdir(parents=True)
    (cache / "m" / "data.bin").write_bytes(b"whatever")
    source = folder_source(tmp_path / "remote", manifest=False)
    with pytest.raises(ArtifactError, match="cannot be checked offline") as info:
        Store(cache_dir=cache, offline=True).fetch("m", source, "data.bin")
    assert "berg_dir=" in str(info.value) and "berg fetch m" in str(info.value)
    assert (cache / "m" / "data.bin").read_bytes() == b"whatever"  # never deleted


def test_hand_copied_file_with_manifest_is_checked_against_it(tmp_path):
    remote = tmp_path / "remote"
    _native(remote)
    source = folder_source(remote)
    cache = tmp_path / "cache"
    Store(cache_dir=cache).fetch("plug", source, "manifest.json")
    target = cache / "plug" / "metadata" / "sub-01.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    good = (remote / "metadata" / "sub-01.json").read_bytes()
    target.write_bytes(good.replace(b"3", b"4"))  # same size, other bytes
    FolderSource.served.clear()
    assert Store(cache_dir=cache).fetch("plug", source, "metadata/sub-01.json").read_bytes() == good
    assert FolderSource.served == {"metadata/sub-01.json": 1}
