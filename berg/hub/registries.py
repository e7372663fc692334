"""``berg registry add/list/remove/update/prefer``: registries from outside, pinned by sha256.

Adding a registry fetches its ``registry.yaml`` fragment (at most 1 MiB, no YAML anchors) and the cards
it names, checks every entry against the code-free schema (:func:`berg.registry.check_outside_entry`)
and every card against its pinned sha256, refuses ids that another registry already defines in the same
namespace, and only then keeps a copy in the user's config with the fragment's sha256. Later loads check
the copy against that hash; nothing changes until ``berg registry update NAME``, which shows the ids
added and removed.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from berg.errors import IntegrityError, InvalidParameterError
from berg.fsutil import atomic_write_bytes, sha256_bytes, temporary_name
from berg.hub.config import (
    check_registry_name,
    package_sources,
    plugin_modules,
    read_config,
    registry_folder,
    write_config,
)
from berg.hub.locations import location_for
from berg.registry import MAX_OUTSIDE_BYTES, Registry, RegistryError, RegistrySource, parse_model_name

__all__ = ["add_registry", "update_registry", "remove_registry", "list_registries", "prefer_registry"]

log = logging.getLogger(__name__)


def _fetch_checked(
    name: str, url: str, *, endpoint: str | None, sha256: str | None, namespace: str | None, folder: Any
) -> tuple[RegistrySource, Path, list[Any]]:
    """Fetch fragment + cards into a temporary folder, verify everything; returns (source, folder, specs)."""
    loc = location_for(url, endpoint=endpoint)
    data = loc.read(loc.fragment, MAX_OUTSIDE_BYTES)
    digest = sha256_bytes(data)
    if sha256 is not None and digest != sha256.lower():
        raise IntegrityError(
            f"{loc.describe(loc.fragment)} has sha256 {digest}, not the {sha256} you gave; it changed or the hash "
            "is wrong: ask its publisher for the current hash"
        )
    final = registry_folder(name, folder)
    tmp = temporary_name(final)
    tmp.mkdir(parents=True)
    try:
        atomic_write_bytes(tmp / "registry.yaml", data)
        src = RegistrySource(
            name=name,
            path=tmp / "registry.yaml",
            card_root=tmp,
            trusted=False,
            origin=url,
            base=loc.base(),
            modules=plugin_modules(),
            sha256=digest,
            namespace=namespace,
        )
        specs = Registry.load_source(src)
        cards: dict[str, str | None] = {}
        for spec in specs:
            cards[spec.card_path.relative_to(tmp).as_posix()] = spec.card_sha256
        for key, pin in cards.items():
            card = loc.read(key, MAX_OUTSIDE_BYTES)
            if pin is not None and sha256_bytes(card) != pin:
                raise IntegrityError(
                    f"{loc.describe(key)} has sha256 {sha256_bytes(card)}, but {loc.describe(loc.fragment)} pins "
                    f"{pin}: the registry is inconsistent (a card changed after publishing); not added"
                )
            atomic_write_bytes(tmp / key, card)
        for spec in specs:
            spec.card  # noqa: B018 - validates the card (schema, id, subjects) now, not at first use
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return src, tmp, specs


def _check_with_others(new: RegistrySource, name: str, folder: Any) -> Registry:
    """The registry as it would be with ``new`` (collisions raise here, before anything is kept)."""
    from berg.hub.config import outside_sources, preferences

    others = [RegistrySource(**s) for s in outside_sources(folder) if s["name"] != name]
    return Registry(outside=[*others, new], prefer=preferences(folder))


def _commit(name: str, tmp: Path, url: str, endpoint: str | None, src: RegistrySource, folder: Any) -> None:
    final = registry_folder(name, folder)
    old = None
    if final.exists():
        old = temporary_name(final, ".old")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    config = read_config(folder)
    item = {"url": url, "sha256": src.sha256, "namespace": _namespace_of(final / "registry.yaml")}
    if endpoint:
        item["endpoint"] = endpoint
    config["registries"][name] = item
    write_config(config, folder)


def _namespace_of(path: Path) -> str:
    from berg.yamlio import read_yaml

    return str((read_yaml(path, max_bytes=MAX_OUTSIDE_BYTES, aliases=False) or {}).get("namespace"))


def _names(specs: list[Any]) -> list[str]:
    return sorted({spec.model_id for spec in specs})


def add_registry(
    name: str,
    url: str,
    *,
    sha256: str | None = None,
    endpoint: str | None = None,
    config_folder: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Add the registry at ``url`` under ``name`` (pinned by sha256); returns what was added.

    Parameters
    ----------
    name : str
        Your name for it (lowercase letters, digits, ``_``, ``-``): ``berg registry remove/update NAME``.
    url : str
        ``s3://bucket/prefix/`` (``endpoint`` for servers not on AWS), ``https://host/path/`` or a local
        folder; or the ``registry.yaml`` inside one of them.
    sha256 : str, optional
        The fragment's expected sha256 (from its publisher); without it the fetched one is pinned and shown.

    Returns
    -------
    dict
        ``name``, ``url``, ``namespace``, ``sha256``, ``models`` (every ``namespace/id@version``).

    Raises
    ------
    InvalidParameterError
        ``name`` already added or not valid; an entry refused (:class:`~berg.registry.UntrustedEntryError`);
        an id another registry defines (:class:`~berg.registry.RegistryError`).
    IntegrityError
        The fragment or a card does not match its hash.
    """
    check_registry_name(name)
    if name in read_config(config_folder)["registries"]:
        raise InvalidParameterError(
            f"a registry named {name!r} is already added; `berg registry update {name}` fetches its new version, "
            f"`berg registry remove {name}` removes it"
        )
    src, tmp, specs = _fetch_checked(name, url, endpoint=endpoint, sha256=sha256, namespace=None, folder=config_folder)
    try:
        final_src = replace(src, path=registry_folder(name, config_folder) / "registry.yaml")
        _check_with_others(replace(src), name, config_folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _commit(name, tmp, url, endpoint, final_src, config_folder)
    ns = specs[0].namespace if specs else _namespace_of(registry_folder(name, config_folder) / "registry.yaml")
    log.info("added registry %s (%s): %d model version(s)", name, url, len(specs))
    return {"name": name, "url": url, "namespace": ns, "sha256": src.sha256, "models": _names(specs)}


def update_registry(name: str, *, config_folder: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Fetch registry ``name`` again, check it like :func:`add_registry` and pin the new version.

    Returns
    -------
    dict
        ``added``, ``removed`` (``namespace/id@version`` names), ``old_sha256``, ``sha256``, ``changed``.
    """
    config = read_config(config_folder)
    item = config["registries"].get(name)
    if item is None:
        raise InvalidParameterError(
            f"no registry named {name!r}; added: {', '.join(sorted(config['registries'])) or 'none'}"
        )
    folder = registry_folder(name, config_folder)
    old_src = RegistrySource(
        name=name,
        path=folder / "registry.yaml",
        card_root=folder,
        trusted=False,
        origin=item["url"],
        base=location_for(item["url"], endpoint=item.get("endpoint")).base(),
        modules=plugin_modules(),
    )
    try:
        old = _names(Registry.load_source(old_src))
    except (InvalidParameterError, OSError) as exc:  # a damaged copy: the update replaces it
        log.warning("the kept copy of %s cannot be read (%s); replacing it", name, exc)
        old = []
    src, tmp, specs = _fetch_checked(
        name, item["url"], endpoint=item.get("endpoint"), sha256=None, namespace=item.get("namespace"),
        folder=config_folder,
    )  # fmt: skip
    try:
        _check_with_others(src, name, config_folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    new = _names(specs)
    _commit(name, tmp, item["url"], item.get("endpoint"), src, config_folder)
    return {
        "name": name,
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "old_sha256": item.get("sha256"),
        "sha256": src.sha256,
        "changed": item.get("sha256") != src.sha256,
    }


def remove_registry(name: str, *, config_folder: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Forget registry ``name`` (its pinned copy and pins naming it). Cached artifacts stay in the cache."""
    config = read_config(config_folder)
    if name not in config["registries"]:
        raise InvalidParameterError(
            f"no registry named {name!r}; added: {', '.join(sorted(config['registries'])) or 'none'}"
            + (" (registries of installed packages go with `pip uninstall`)" if name.startswith("package") else "")
        )
    item = config["registries"].pop(name)
    config["prefer"] = {k: v for k, v in config["prefer"].items() if v != name}
    write_config(config, config_folder)
    shutil.rmtree(registry_folder(name, config_folder), ignore_errors=True)
    return {"name": name, **item}


def list_registries(*, config_folder: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Every registry berg reads: the shipped one, those added by URL and those of installed packages."""
    config = read_config(config_folder)
    rows: list[dict[str, Any]] = [{"name": "berg", "namespace": "", "url": "shipped with berg", "sha256": None}]
    for name, item in sorted(config["registries"].items()):
        rows.append({"name": name, **item})
    for src in package_sources():
        rows.append({"name": src["name"], "namespace": None, "url": src["origin"], "sha256": None})
    for row in rows:
        row["preferred_for"] = sorted(k for k, v in config["prefer"].items() if v == row["name"])
    return rows


def prefer_registry(target: str, name: str, *, config_folder: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Pin which registry wins for ``target`` (``lab`` for a namespace, ``lab/model-id`` for one id)."""
    ns, model_id, version = parse_model_name(target if "/" in target else f"{target}/x")
    if version is not None:
        raise InvalidParameterError("pin a namespace or a model id, not a version")
    known = {row["name"] for row in list_registries(config_folder=config_folder)}
    if name not in known:
        raise RegistryError(f"no registry named {name!r}; known: {', '.join(sorted(known))}")
    config = read_config(config_folder)
    config["prefer"][target] = name
    write_config(config, config_folder)
    return dict(config["prefer"])
