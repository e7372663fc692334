"""Hostile registry fragments from outside for benchmarks/hostile_inputs.py (issue 25, "Trust").

The fragments live in :mod:`berg.testing.hub` (``fragment_site``, ``HOSTILE_FRAGMENTS``), so the test
suite (tests/test_registry_sources.py) and this harness try the very same ones: an unknown model class,
import paths in layouts, builders and recipes, sources pointing outside their location, path traversal in
sources, cards and ids, build creators, unknown keys, an unpinned card, a YAML anchors bomb, a python tag,
a missing or stolen namespace, a 100 MB fragment. Each must be refused by ``berg registry add`` with the
expected error, and nothing may be kept in the user's configuration.
"""

from __future__ import annotations

import re

import hostile_inputs as H

from berg.testing.hub import HOSTILE_FRAGMENTS, fragment_site


def _case(name: str, change, words: str) -> H.Case:
    def run(ctx):
        from berg.hub.registries import add_registry, list_registries

        config = ctx.cache / "config"
        before = [r["name"] for r in list_registries(config_folder=config)]
        try:
            add_registry("lab", str(fragment_site(ctx.cache / "fragment", change)), config_folder=config)
        finally:
            kept = [r["name"] for r in list_registries(config_folder=config)]
            if kept != before:
                raise H.Accepted(f"a refused fragment was kept in the configuration: {kept}")
        raise H.Accepted(f"berg registry add accepted a hostile fragment ({name})")

    return H.Case("hub", name.replace(" ", "-").replace("'", ""), run, "error", None, re.escape(words), None)


def _hundred_mb(ctx) -> None:
    from berg.hub.registries import add_registry

    site = ctx.cache / "big"
    site.mkdir()
    with open(site / "registry.yaml", "wb") as fh:
        fh.truncate(100 * 2**20)  # 100 MB, sparse: costs no disk or time
    add_registry("lab", str(site), config_folder=ctx.cache / "config")
    raise H.Accepted("a 100 MB registry fragment was read")


CASES = [_case(name, change, words) for name, change, _error, words in HOSTILE_FRAGMENTS]
CASES.append(H.Case("hub", "fragment-of-100-MB", _hundred_mb, "error", None, r"at most \d+ bytes", None))
