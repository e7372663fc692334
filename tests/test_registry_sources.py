"""Registries from outside: every hostile fragment is refused with a clear error, and nothing is kept.

A well-formed fragment (one model, a card pinned by sha256, a relative source pinned by the manifest's
sha256) is added first to show the harness accepts what it should; each case then changes one thing.
:data:`HOSTILE_FRAGMENTS` is importable by the hostile-input harness.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from berg.errors import BERGError, IntegrityError, InvalidParameterError
from berg.hub.locations import location_for
from berg.hub.registries import add_registry, list_registries
from berg.registry import Registry, RegistrySource, UntrustedEntryError

CARD_ID = "toy-m"
MANIFEST_SHA = "ab" * 32


def _card() -> dict:
    from berg.testing import synthetic_card

    return synthetic_card(
        CARD_ID, space={"kind": "flat"}, selection={"rois": ["all"], "n_outputs": {1: 4}}, subjects=[1]
    )


def _entry(card_sha: str) -> dict:
    return {
        "card": f"m/1/{CARD_ID}.yaml",
        "card_sha256": card_sha,
        "modality": "fmri",
        "dataset": "toy",
        "layout": "native",
        "model_class": None,
        "recipe": {
            "backbone": {"builder": "torchvision.models.resnet18", "weights": None},
            "nodes": ["avgpool"],
            "transform": {"kind": "image", "size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3},
            "readout": "linear",
            "output_space": "flat",
        },
        "source": {"path": "m/1/", "manifest_sha256": MANIFEST_SHA},
    }


def _site(tmp_path: Path, change=None) -> Path:
    """A registry folder with one model; ``change(doc)`` alters the fragment first."""
    site = tmp_path / "site"
    (site / "m" / "1").mkdir(parents=True)
    card = yaml.safe_dump(_card(), sort_keys=False).encode()
    (site / "m" / "1" / f"{CARD_ID}.yaml").write_bytes(card)
    doc = {"format_version": 1, "namespace": "lab", "models": {CARD_ID: _entry(hashlib.sha256(card).hexdigest())}}
    if change is not None:
        out = change(doc)
        if isinstance(out, (str, bytes)):
            (site / "registry.yaml").write_bytes(out.encode() if isinstance(out, str) else out)
            return site
        doc = out
    (site / "registry.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return site


def _set(path: str, value):
    """A change that sets ``models.m.<path>`` (dotted) to ``value``."""

    def change(doc):
        node = doc["models"][CARD_ID]
        *parents, last = path.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
        return doc

    return change


def _billion_laughs(doc) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\nnamespace: lab\nmodels: {}\n"


def _rename(doc):
    doc["models"]["../evil"] = doc["models"].pop(CARD_ID)
    return doc


#: (case id, change to the fragment, expected error class, words the message must contain)
HOSTILE_FRAGMENTS = [
    ("unknown model class", _set("model_class", "evil_pkg.models:Model"), UntrustedEntryError, "unknown model class"),
    ("layout import path", _set("layout", "os:system"), UntrustedEntryError, "unknown layout"),
    (
        "builder runs a function",
        _set("recipe.backbone.builder", "os.system"),
        UntrustedEntryError,
        "unknown recipe builder",
    ),
    ("import path in a recipe", _set("recipe.readout", "subprocess:run"), UntrustedEntryError, "unknown recipe"),
    (
        "source outside its location",
        _set("source", {"kind": "s3", "bucket": "elsewhere", "prefix": "x/", "manifest_sha256": MANIFEST_SHA}),
        UntrustedEntryError,
        "points outside",
    ),
    (
        "source kind names a class",
        _set("source", {"kind": "evil.mod:Source", "manifest_sha256": MANIFEST_SHA}),
        UntrustedEntryError,
        "not allowed from outside",
    ),
    (
        "converter (code) in a source",
        _set("source", {"kind": "pypi_wheel", "converter": "evil:convert", "manifest_sha256": MANIFEST_SHA}),
        UntrustedEntryError,
        "not allowed from outside",
    ),
    ("source without a pin", _set("source", {"path": "m/1/"}), UntrustedEntryError, "manifest_sha256"),
    ("path traversal in the source", _set("source.path", "../../outside/"), UntrustedEntryError, "leaves its registry"),
    ("absolute source path", _set("source.path", "/etc/"), UntrustedEntryError, "leaves its registry"),
    ("path traversal in the card", _set("card", "../../../etc/passwd"), UntrustedEntryError, "leaves its registry"),
    ("path traversal in the id", _rename, InvalidParameterError, "is not valid"),
    ("a build creator (runs code)", _set("build", {"creator": "evil:build"}), UntrustedEntryError, "not allowed"),
    ("unknown key", _set("hooks", ["rm -rf ~"]), UntrustedEntryError, "not allowed"),
    ("card without a pin", _set("card_sha256", None), UntrustedEntryError, "card_sha256"),
    ("YAML anchors bomb", _billion_laughs, InvalidParameterError, "anchors"),
    (
        "python tag",
        lambda doc: "namespace: lab\nmodels: !!python/object/apply:os.system ['echo hi']\n",
        InvalidParameterError,
        "not valid YAML",
    ),
    ("no namespace", lambda doc: {**doc, "namespace": None}, InvalidParameterError, "must declare its namespace"),
    ("berg's namespace", lambda doc: {**doc, "namespace": "berg"}, InvalidParameterError, "berg's own"),
    ("top-level hooks", lambda doc: {**doc, "plugins": ["x"]}, UntrustedEntryError, "top-level key"),
    ("not a mapping", lambda doc: "- 1\n- 2\n", InvalidParameterError, "must be a mapping"),
]


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


@pytest.mark.parametrize("case, change, error, words", HOSTILE_FRAGMENTS, ids=[c[0] for c in HOSTILE_FRAGMENTS])
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
        doc = {"namespace": "lab", "models": {CARD_ID: {**_entry("cd" * 32), "source": source}}}
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
        ok = load({"kind": "s3", "bucket": "lab-models", "prefix": "berg/m/1/", "manifest_sha256": MANIFEST_SHA}, d)
        assert ok[0].source["bucket"] == "lab-models" and ok[0].source["prefix"] == "berg/m/1/"
        rel = load({"path": "m/1/", "manifest_sha256": MANIFEST_SHA}, d)
        assert rel[0].source["prefix"] == "berg/m/1/" and rel[0].source["kind"] == "berg.hub.sources:PinnedS3Source"
        for bad in (
            {"kind": "s3", "bucket": "other-bucket", "prefix": "berg/m/1/"},
            {"kind": "s3", "bucket": "lab-models", "prefix": "private/m/1/"},
            {"kind": "s3", "bucket": "lab-models", "prefix": "berg/../private/"},
            {"kind": "https", "url": "https://evil.example/m/1/"},
        ):
            with pytest.raises(UntrustedEntryError, match="outside|leaves"):
                load({**bad, "manifest_sha256": MANIFEST_SHA}, d)
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
