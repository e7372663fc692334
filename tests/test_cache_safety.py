"""`berg cache` never touches a path outside the cache (issue 24).

Every argument is resolved (links too) to a model folder, or a file/folder of one, inside the cache;
anything else is refused with a clear error. A decoy planted beside the cache keeps its bytes and mtime
through every command.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from berg.errors import BERGError, InvalidParameterError
from berg.store.cache import INDEX_NAME, CacheIndex, cache_clear, cache_list, cache_size, cache_verify, resolve_target
from berg.store.cli import cmd_cache

ACTIONS = ("list", "size", "verify", "clear")


def _model(cache: Path, name: str, files: dict[str, bytes]) -> Path:
    root = cache / name
    index = CacheIndex(root)
    for key, data in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        from berg.fsutil import sha256_file

        index.record(key, path, sha256_file(path))
    return root


@pytest.fixture
def world(tmp_path):
    """A cache with two models, a decoy file and folder beside it, and links planted inside it."""
    cache = tmp_path / "cache"
    _model(cache, "m1", {"a.bin": b"aaaa", "sub/b.bin": b"bb"})
    _model(cache, "m2", {"c.bin": b"cccccc"})
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"precious user data")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file.txt").write_bytes(b"also precious")
    (victim / INDEX_NAME).write_bytes(b"")  # even a folder that looks like berg's, outside the cache
    (cache / "link-out").symlink_to(victim)  # a model-like link to outside
    (cache / "m1" / "linked").symlink_to(victim)  # a link inside a model folder
    (cache / "m2" / "decoy-link").symlink_to(decoy)  # a file link inside a model folder
    os.utime(decoy, ns=(1_000_000_000, 1_000_000_000))
    return cache, decoy, victim


def _state(*paths: Path) -> dict:
    out = {}
    for top in paths:
        for p in [top, *top.rglob("*")] if top.is_dir() else [top]:
            st = p.lstat()
            out[str(p)] = (p.read_bytes() if p.is_file() else None, st.st_mtime_ns)
    return out


def _run(cache: Path, action: str, arg) -> tuple[int | None, str, Exception | None]:
    out = io.StringIO()
    try:
        rc = cmd_cache(argparse.Namespace(action=action, model_id=arg, cache_dir=str(cache)), out)
        return rc, out.getvalue(), None
    except BERGError as exc:
        return None, out.getvalue(), exc


def test_decoy_beside_the_cache_survives_every_command(world, monkeypatch):
    cache, decoy, victim = world
    before = _state(decoy, victim)
    monkeypatch.chdir(cache)  # relative arguments are read from the cache, never from the current folder
    hostile = [
        "..",
        "../decoy",
        "../victim",
        str(decoy),
        str(victim),
        str(cache.parent),
        "/",
        "link-out",
        "link-out/file.txt",
        "m1/linked",
        "m1/linked/file.txt",
        "m2/decoy-link",
        "m1/../../decoy",
        "m1/../..",
        ".",
        "",
        " ",
        "x\x00y",
        str(cache),
    ]
    refused = []
    for action in ACTIONS:
        for arg in hostile:
            rc, _, exc = _run(cache, action, arg)
            assert exc is not None, f"berg cache {action} {arg!r} was accepted (rc {rc})"
            assert isinstance(exc, InvalidParameterError), (action, arg, exc)
            refused.append((action, arg))
            assert _state(decoy, victim) == before, f"berg cache {action} {arg!r} touched a file outside the cache"
    assert len(refused) == len(ACTIONS) * len(hostile)
    # and the commands on real targets, all models included, leave the outside alone too
    for action in ("list", "size", "verify"):
        assert _run(cache, action, None)[0] == 0
        assert _run(cache, action, "m1")[0] == 0
    assert _run(cache, "clear", "m1/sub/b.bin")[0] == 0
    assert _run(cache, "clear", None)[0] == 0
    assert _state(decoy, victim) == before
    assert not (cache / "m1").exists() and not (cache / "m2").exists()
    assert (cache / "link-out").is_symlink()  # a link berg did not make is left alone, never followed


@pytest.mark.parametrize(
    ("arg", "words"),
    [
        ("..", "outside the cache"),
        ("../decoy", "outside the cache"),
        ("/etc", "outside the cache"),
        ("", "empty"),
        ("link-out", "outside the cache"),
        ("m1/linked", "outside the cache"),
        (".", "the cache itself"),
        ("m3", "not in the cache"),
        ("m", "not in the cache"),
    ],
)
def test_refusals_say_why(world, arg, words):
    cache, _, _ = world
    with pytest.raises(InvalidParameterError, match=words):
        resolve_target(cache, arg)


def test_unknown_model_lists_what_is_cached(world):
    cache, _, _ = world
    with pytest.raises(InvalidParameterError) as info:
        cache_clear(cache, "m3")
    assert "cached: m1, m2" in str(info.value) and "did you mean" in str(info.value)


def test_link_inside_the_cache_to_another_model_is_refused(tmp_path):
    cache = tmp_path / "cache"
    _model(cache, "m1", {"a.bin": b"a"})
    _model(cache, "m2", {"b.bin": b"b"})
    (cache / "m1" / "to-m2").symlink_to(cache / "m2")
    with pytest.raises(InvalidParameterError, match="symbolic link"):
        cache_clear(cache, "m1/to-m2")
    assert (cache / "m2" / "b.bin").read_bytes() == b"b"
    # clearing m1 removes the link, never what it points to
    cache_clear(cache, "m1")
    assert (cache / "m2" / "b.bin").read_bytes() == b"b"


def test_targets_inside_the_cache(world):
    cache, _, _ = world
    assert [e["key"] for e in cache_list(cache, "m1")] == ["a.bin", "sub/b.bin"]
    assert [e["key"] for e in cache_list(cache, "m1/sub")] == ["sub/b.bin"]
    assert [e["key"] for e in cache_list(cache, str(cache / "m1" / "a.bin"))] == ["a.bin"]  # absolute, inside
    assert cache_size(cache) == {"m1": 6, "m2": 6}
    assert [r["status"] for r in cache_verify(cache, "m2")] == ["ok"]
    assert cache_clear(cache, "m1/sub/b.bin") == 2
    assert [e["key"] for e in cache_list(cache, "m1")] == ["a.bin"]


def test_cache_reached_through_a_link(tmp_path):
    real = tmp_path / "real-cache"
    _model(real, "m1", {"a.bin": b"a"})
    link = tmp_path / "cache-link"
    link.symlink_to(real)
    assert [e["key"] for e in cache_list(link, str(link / "m1"))] == ["a.bin"]
    assert cache_clear(link, "m1") == 1 and not (real / "m1").exists()


def test_folders_berg_did_not_make_are_left_alone(tmp_path):
    # BERG_CACHE pointed at a folder of the user's by mistake: `berg cache clear` deletes nothing of theirs
    home = tmp_path / "home"
    (home / "thesis").mkdir(parents=True)
    (home / "thesis" / "chapter1.tex").write_bytes(b"years of work")
    _model(home, "m1", {"a.bin": b"a"})
    assert cache_clear(home) == 1
    assert (home / "thesis" / "chapter1.tex").read_bytes() == b"years of work"
    with pytest.raises(InvalidParameterError, match="not made by berg"):
        cache_clear(home, "thesis")
    assert (home / "thesis" / "chapter1.tex").read_bytes() == b"years of work"


def test_cli_refuses_with_one_line_and_status_2(world, tmp_path):
    cache, decoy, _ = world
    before = _state(decoy)
    env = {**os.environ, "BERG_CACHE": str(cache)}
    for args in (["clear", "../decoy"], ["verify", ".."], ["clear", str(decoy)], ["clear", ""]):
        proc = subprocess.run(
            [sys.executable, "-m", "berg.cli", "cache", *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.strip(), proc.stderr
    assert _state(decoy) == before
