"""A registry fragment from outside, well formed, and the hostile changes berg must refuse (issue 25).

:func:`fragment_site` writes a folder that ``berg registry add NAME FOLDER`` accepts (one model, its card
pinned by sha256, a relative source pinned by a manifest sha256); each entry of
:data:`HOSTILE_FRAGMENTS` changes one thing a hostile publisher could. Used by the registry tests and the
hostile-input harness, so both try the same fragments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FRAGMENT_MODEL", "FRAGMENT_MANIFEST_SHA", "fragment_entry", "fragment_site", "HOSTILE_FRAGMENTS"]

#: The id of the fragment's one model (``lab/toy-m`` once added under namespace ``lab``).
FRAGMENT_MODEL = "toy-m"
FRAGMENT_MANIFEST_SHA = "ab" * 32


def _card() -> dict:
    from berg.testing.toys import synthetic_card

    return synthetic_card(
        FRAGMENT_MODEL, space={"kind": "flat"}, selection={"rois": ["all"], "n_outputs": {1: 4}}, subjects=[1]
    )


def fragment_entry(card_sha: str) -> dict:
    """The fragment's registry entry for its one model (card pinned by ``card_sha``, source by a manifest sha256)."""
    return {
        "card": f"m/1/{FRAGMENT_MODEL}.yaml",
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
        "source": {"path": "m/1/", "manifest_sha256": FRAGMENT_MANIFEST_SHA},
    }


def fragment_site(root: str | Path, change: Callable[[dict], Any] | None = None) -> Path:
    """A registry folder ``root/site`` with one model; ``change(doc)`` alters the fragment first.

    ``change`` returns the new document (a mapping), or the raw text/bytes of ``registry.yaml``.
    """
    import yaml

    site = Path(root) / "site"
    (site / "m" / "1").mkdir(parents=True)
    card = yaml.safe_dump(_card(), sort_keys=False).encode()
    (site / "m" / "1" / f"{FRAGMENT_MODEL}.yaml").write_bytes(card)
    doc: Any = {
        "format_version": 1,
        "namespace": "lab",
        "models": {FRAGMENT_MODEL: fragment_entry(hashlib.sha256(card).hexdigest())},
    }
    if change is not None:
        out = change(doc)
        if isinstance(out, (str, bytes)):
            (site / "registry.yaml").write_bytes(out.encode() if isinstance(out, str) else out)
            return site
        doc = out
    (site / "registry.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return site


def _set(path: str, value: Any) -> Callable[[dict], dict]:
    """A change that sets ``models.toy-m.<path>`` (dotted) to ``value``."""

    def change(doc: dict) -> dict:
        node = doc["models"][FRAGMENT_MODEL]
        *parents, last = path.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
        return doc

    return change


def _billion_laughs(doc: dict) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\nnamespace: lab\nmodels: {}\n"


def _rename(doc: dict) -> dict:
    doc["models"]["../evil"] = doc["models"].pop(FRAGMENT_MODEL)
    return doc


def _hostile() -> list[tuple[str, Callable, str, str]]:
    s3_elsewhere = {"kind": "s3", "bucket": "elsewhere", "prefix": "x/", "manifest_sha256": FRAGMENT_MANIFEST_SHA}
    return [
        (
            "unknown model class",
            _set("model_class", "evil_pkg.models:Model"),
            "UntrustedEntryError",
            "unknown model class",
        ),
        ("layout import path", _set("layout", "os:system"), "UntrustedEntryError", "unknown layout"),
        (
            "builder runs a function",
            _set("recipe.backbone.builder", "os.system"),
            "UntrustedEntryError",
            "unknown recipe builder",
        ),
        ("import path in a recipe", _set("recipe.readout", "subprocess:run"), "UntrustedEntryError", "unknown recipe"),
        ("source outside its location", _set("source", s3_elsewhere), "UntrustedEntryError", "points outside"),
        (
            "source kind names a class",
            _set("source", {"kind": "evil.mod:Source", "manifest_sha256": FRAGMENT_MANIFEST_SHA}),
            "UntrustedEntryError",
            "not allowed from outside",
        ),
        (
            "converter (code) in a source",
            _set(
                "source", {"kind": "pypi_wheel", "converter": "evil:convert", "manifest_sha256": FRAGMENT_MANIFEST_SHA}
            ),
            "UntrustedEntryError",
            "not allowed from outside",
        ),
        ("source without a pin", _set("source", {"path": "m/1/"}), "UntrustedEntryError", "manifest_sha256"),
        (
            "path traversal in the source",
            _set("source.path", "../../outside/"),
            "UntrustedEntryError",
            "leaves its registry",
        ),
        ("absolute source path", _set("source.path", "/etc/"), "UntrustedEntryError", "leaves its registry"),
        (
            "path traversal in the card",
            _set("card", "../../../etc/passwd"),
            "UntrustedEntryError",
            "leaves its registry",
        ),
        ("path traversal in the id", _rename, "InvalidParameterError", "is not valid"),
        ("a build creator (runs code)", _set("build", {"creator": "evil:build"}), "UntrustedEntryError", "not allowed"),
        ("unknown key", _set("hooks", ["rm -rf ~"]), "UntrustedEntryError", "not allowed"),
        ("card without a pin", _set("card_sha256", None), "UntrustedEntryError", "card_sha256"),
        ("YAML anchors bomb", _billion_laughs, "InvalidParameterError", "anchors"),
        (
            "python tag",
            lambda doc: "namespace: lab\nmodels: !!python/object/apply:os.system ['echo hi']\n",
            "InvalidParameterError",
            "not valid YAML",
        ),
        ("no namespace", lambda doc: {**doc, "namespace": None}, "InvalidParameterError", "must declare its namespace"),
        ("berg's namespace", lambda doc: {**doc, "namespace": "berg"}, "InvalidParameterError", "berg's own"),
        ("top-level hooks", lambda doc: {**doc, "plugins": ["x"]}, "UntrustedEntryError", "top-level key"),
        ("not a mapping", lambda doc: "- 1\n- 2\n", "InvalidParameterError", "must be a mapping"),
    ]


#: (case id, change to the fragment, expected error class name, words the message must contain). The error
#: classes are ``berg.registry.UntrustedEntryError`` or ``berg.errors.InvalidParameterError``.
HOSTILE_FRAGMENTS: list[tuple[str, Callable, str, str]] = _hostile()
