"""Booleans given as text are read strictly: 'false' and 'no' are False, other words are refused (issue 24)."""

from __future__ import annotations

import numpy as np
import pytest

from berg.env import FALSE_WORDS, TRUE_WORDS, env_flag, parse_bool
from berg.errors import InvalidParameterError


@pytest.mark.parametrize("word", [*TRUE_WORDS, "TRUE", " Yes ", "On"])
def test_true_words(word):
    assert parse_bool(word, "x") is True


@pytest.mark.parametrize("word", [*FALSE_WORDS, "FALSE", " no ", "Off"])
def test_false_words(word):
    assert parse_bool(word, "x") is False


@pytest.mark.parametrize("value", [True, False, 0, 1, np.bool_(True), np.bool_(False)])
def test_booleans_and_0_1(value):
    assert parse_bool(value, "x") is bool(value)


@pytest.mark.parametrize("value", ["maybe", "", "ture", "2", 2, -1, 0.0, None, [], "nope"])
def test_other_values_refused_naming_the_accepted_ones(value):
    with pytest.raises(InvalidParameterError) as info:
        parse_bool(value, "fsync")
    msg = str(info.value)
    assert msg.startswith(f"fsync={value!r} is not a boolean")
    assert "true, yes, on" in msg and "false, no, off" in msg


def test_env_flag_is_strict(monkeypatch):
    monkeypatch.setenv("BERG_OFFLINE", "false")
    assert env_flag("BERG_OFFLINE") is False
    monkeypatch.setenv("BERG_OFFLINE", "no")
    assert env_flag("BERG_OFFLINE") is False
    monkeypatch.setenv("BERG_OFFLINE", "Yes")
    assert env_flag("BERG_OFFLINE") is True
    monkeypatch.setenv("BERG_OFFLINE", "")
    assert env_flag("BERG_OFFLINE") is False
    monkeypatch.delenv("BERG_OFFLINE")
    assert env_flag("BERG_OFFLINE") is False
    monkeypatch.setenv("BERG_OFFLINE", "perhaps")
    with pytest.raises(InvalidParameterError, match="BERG_OFFLINE='perhaps' is not a boolean"):
        env_flag("BERG_OFFLINE")


def _store(tmp_path, offline):
    from berg.store import Store

    return Store(cache_dir=tmp_path, offline=offline)


def _client(tmp_path, offline):
    from berg import BERG

    return BERG(cache_dir=tmp_path, offline=offline)


@pytest.mark.parametrize("make", [_store, _client], ids=["Store", "BERG"])
def test_offline_strings_are_read_strictly(tmp_path, monkeypatch, make):
    monkeypatch.delenv("BERG_OFFLINE", raising=False)
    for word, expected in (("false", False), ("no", False), ("true", True), ("1", True)):
        assert make(tmp_path, word).offline is expected, word
    with pytest.raises(InvalidParameterError, match="offline='sometimes'"):
        make(tmp_path, "sometimes")


def test_s3_source_booleans_strict():
    from berg.store.sources import S3Source

    assert S3Source({"kind": "s3", "bucket": "b", "manifest": "false"}).has_manifest is False
    assert S3Source({"kind": "s3", "bucket": "b", "anonymous": "no"}).anonymous is False
    with pytest.raises(InvalidParameterError, match="'manifest'"):
        S3Source({"kind": "s3", "bucket": "b", "manifest": "nah"})
