"""Registries from outside: every hostile fragment is refused with a clear error, and nothing is kept.

A well-formed fragment (one model, a card pinned by sha256, a relative source pinned by the manifest's
sha256) is added first to show the harness accepts what it should; each case then changes one thing.
The fragments come from :mod:`berg.testing.hub`, which the hostile-input harness runs too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from berg.errors import BERGError, IntegrityError, InvalidParameterError
from berg.hub.locations import location_for
from berg.hub.registries import add_registry, list_registries
from berg.registry import Registry, RegistrySource, UntrustedEntryError
from berg.testing.hub import FRAGMENT_MANIFEST_SHA, FRAGMENT_MODEL, HOSTILE_FRAGMENTS, fragment_entry, fragment_site

CARD_ID = FRAGMENT_MODEL
#: the error classes the fragments' table names
ERRORS = {"UntrustedEntryError": UntrustedEntryError, "InvalidParameterError": InvalidParameterError}
#: (case id, change to the fragment, expected error class, words the message must contain)
HOSTILE = [(case, change, ERRORS[error], words) for case, change, error, words in HOSTILE_FRAGMENTS]


def _site(tmp_path: Path, change=None) -> Path:
    return fragment_site(tmp_path, change)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("BERG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BERG_REGISTRY", raising=False)
    return tmp_path


def test_the_well_formed_fragment_is_accepted(home):
    added = add_registry("lab", str(_site(home)))
    assert added["models"] == ["lab/toy-m"] and added["namespace"] == "lab"
    spec = Registry().get("lab/toy-m")
    assert spec.source["kind"] == "berg.hub.sources:PinnedFolderSource"
    assert spec.source["path"] == str(home / "site" / "m" / "1")
    assert spec.card["id"] == CARD_ID


@pytest.mark.parametrize("case, change, error, words", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_fragment_is_refused(home, case, change, error, words):
    site = _site(home, change)
    with pytest.raises(error) as info:
        add_registry("lab", str(site))
    message = str(info.value)
    assert words in message, message
    assert "\n" not in message.strip() or "Traceback" not in message
    assert [r["name"] for r in list_registries()] == ["berg"]  # nothing kept
    assert not (home / "config" / "berg" / "registries").exists() or not any(
        (home / "config" / "berg" / "registries").iterdir()
    )


def test_hostile_harness_can_fail():
    """The harness above fails when a hostile change is accepted (a change that alters nothing)."""
    case = ("harmless", lambda doc: doc, UntrustedEntryError, "x")

    def run(tmp):
        site = _site(tmp, case[1])
        with pytest.raises(case[2]):
            add_registry("lab", str(site), config_folder=tmp / "cfg")

    import tempfile

    with tempfile.TemporaryDirectory() as tmp, pytest.raises(pytest.fail.Exception):
        run(Path(tmp))


def test_a_100_mb_fragment_is_refused_before_reading(home):
    site = home / "big"
    site.mkdir()
    with open(site / "registry.yaml", "wb") as fh:
        fh.truncate(100 * 2**20)  # 100 MB (sparse: costs no disk or time)
    with pytest.raises(BERGError, match="at most 1048576 bytes"):
        add_registry("lab", str(site))


def test_a_source_outside_its_bucket_is_refused():
    """Against an S3 registry: another bucket, or a prefix outside the registry's own, are refused."""
    tmp = Path(__file__).parent  # only the YAML parsing runs; nothing is fetched

    def load(source: dict, tmp_path: Path) -> list:
        doc = {"namespace": "lab", "models": {CARD_ID: {**fragment_entry("cd" * 32), "source": source}}}
        path = tmp_path / "registry.yaml"
        path.write_text(yaml.safe_dump(doc))
        base = {"kind": "s3", "bucket": "lab-models", "prefix": "berg/", "endpoint": None}
        src = RegistrySource(
            name="lab", path=path, card_root=tmp_path, trusted=False, origin="s3://lab-models/berg/", base=base
        )
        return Registry.load_source(src)

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ok = load(
            {"kind": "s3", "bucket": "lab-models", "prefix": "berg/m/1/", "manifest_sha256": FRAGMENT_MANIFEST_SHA}, d
        )
        assert ok[0].source["bucket"] == "lab-models" and ok[0].source["prefix"] == "berg/m/1/"
        rel = load({"path": "m/1/", "manifest_sha256": FRAGMENT_MANIFEST_SHA}, d)
        assert rel[0].source["prefix"] == "berg/m/1/" and rel[0].source["kind"] == "berg.hub.sources:PinnedS3Source"
        for bad in (
            {"kind": "s3", "bucket": "other-bucket", "prefix": "berg/m/1/"},
            {"kind": "s3", "bucket": "lab-models", "prefix": "private/m/1/"},
            {"kind": "s3", "bucket": "lab-models", "prefix": "berg/../private/"},
            {"kind": "https", "url": "https://evil.example/m/1/"},
        ):
            with pytest.raises(UntrustedEntryError, match="outside|leaves"):
                load({**bad, "manifest_sha256": FRAGMENT_MANIFEST_SHA}, d)
    assert tmp.exists()


def test_locations_refuse_plain_http_and_unknown_schemes():
    with pytest.raises(InvalidParameterError, match="plain http"):
        location_for("http://models.example.org/lab/")
    assert location_for("http://127.0.0.1:9000/b/p/registry.yaml").base() == {
        "kind": "https",
        "url": "http://127.0.0.1:9000/b/p/",
    }
    with pytest.raises(InvalidParameterError, match="not supported"):
        location_for("ftp://example.org/x")
    with pytest.raises(InvalidParameterError, match="not valid"):
        location_for("")


def test_a_card_changed_after_the_fragment_pinned_it_is_refused(home):
    site = _site(home)
    card = site / "m" / "1" / f"{CARD_ID}.yaml"
    card.write_text(card.read_text().replace("fmri", "eeg"))
    with pytest.raises(IntegrityError, match="inconsistent"):
        add_registry("lab", str(site))
