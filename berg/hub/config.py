"""The user's registry configuration: registries added by URL, pins, and registries of installed packages.

``<config_dir>/registries.yaml``::

    format_version: 1
    registries:
      lab:                                  # the name given to `berg registry add`
        url: s3://lab-models/berg/registry.yaml
        endpoint: https://s3.example.org    # S3 endpoint (only for s3:// URLs not on AWS)
        sha256: 3f2a...                     # pinned: what `add`/`update` fetched and showed
        namespace: lab                      # what the fragment declares
    prefer:                                 # which registry wins where two define the same id
      lab/model-id: lab

The pinned copy of each fragment and its cards lives in ``<config_dir>/registries/<name>/``; every load
checks it against the pinned sha256. ``config_dir`` is the platform's user config folder for berg
(``~/.config/berg`` on Linux, following ``XDG_CONFIG_HOME``). This module reads and writes data only;
fetching lives in :mod:`berg.hub.registries`. It sits below :mod:`berg.registry` (which asks it for the
registries to read, as plain dicts of :class:`~berg.registry.RegistrySource` fields), so it imports nothing
of the registry.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from berg.errors import InvalidParameterError
from berg.fsutil import atomic_write_text
from berg.yamlio import read_yaml

__all__ = [
    "ENTRY_POINT_GROUP",
    "config_dir",
    "read_config",
    "write_config",
    "registry_folder",
    "outside_sources",
    "package_sources",
    "plugin_modules",
    "preferences",
    "check_registry_name",
]

log = logging.getLogger(__name__)

#: Entry-point group through which installed packages ship registries (``pip install lab-models``).
ENTRY_POINT_GROUP = "berg.registries"
CONFIG_NAME = "registries.yaml"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def config_dir(folder: str | os.PathLike[str] | None = None) -> Path:
    """berg's user config folder (``folder`` when given)."""
    if folder is not None:
        return Path(folder).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("berg", appauthor=False))


def check_registry_name(name: Any) -> str:
    """A registry name: lowercase letters, digits, ``_`` and ``-`` (it names a folder)."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name == "berg" or name.startswith("package"):
        raise InvalidParameterError(
            f"registry name {name!r} is not valid: lowercase letters, digits, '_' and '-' (e.g. 'lab'); "
            "'berg' and names starting with 'package' are reserved"
        )
    return name


def registry_folder(name: str, folder: str | os.PathLike[str] | None = None) -> Path:
    """Folder of the pinned copy of registry ``name`` (its registry.yaml and cards)."""
    return config_dir(folder) / "registries" / check_registry_name(name)


def read_config(folder: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The registry configuration (empty when none was written)."""
    path = config_dir(folder) / CONFIG_NAME
    if not path.is_file():
        return {"format_version": 1, "registries": {}, "prefer": {}}
    data = read_yaml(path) or {}
    if not isinstance(data, Mapping) or not isinstance(data.get("registries", {}), Mapping):
        raise InvalidParameterError(f"{path} is not a berg registry configuration; remove it or fix it by hand")
    return {
        "format_version": 1,
        "registries": dict(data.get("registries") or {}),
        "prefer": dict(data.get("prefer") or {}),
    }


def write_config(config: Mapping[str, Any], folder: str | os.PathLike[str] | None = None) -> Path:
    """Write the configuration atomically."""
    path = config_dir(folder) / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, yaml.safe_dump(dict(config), sort_keys=False))


def preferences(folder: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Pins: ``{"lab" or "lab/model-id": registry name}``."""
    return {str(k): str(v) for k, v in read_config(folder)["prefer"].items()}


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.dist.name if e.dist else "", e.name))


def _top_modules(dist: metadata.Distribution | None, value: str) -> tuple[str, ...]:
    tops = {value.split(":")[0].split(".")[0]}
    if dist is not None:
        text = dist.read_text("top_level.txt") or ""
        tops |= {line.strip() for line in text.splitlines() if line.strip()}
    return tuple(sorted(tops))


def plugin_modules() -> tuple[str, ...]:
    """Top-level modules whose classes registries from outside may name: berg's and plug-ins' (packages
    with a ``berg.registries`` entry point)."""
    mods = {"berg"}
    for ep in _entry_points():
        mods.update(_top_modules(ep.dist, ep.value))
    return tuple(sorted(mods))


def package_sources() -> list[dict[str, Any]]:
    """Registries of installed packages: each ``berg.registries`` entry point names a registry.yaml.

    The entry point's object is a path (``str``/``PathLike``) or a function returning one, e.g. in
    ``pyproject.toml``::

        [project.entry-points."berg.registries"]
        lab = "lab_models:registry_path"
    """
    out = []
    points = _entry_points()
    per_dist: dict[str, int] = {}
    for ep in points:
        dist = ep.dist.name if ep.dist else ep.value
        per_dist[dist] = per_dist.get(dist, 0) + 1
    for ep in points:
        dist = ep.dist.name if ep.dist else ep.value
        label = f"package:{dist}" + (f":{ep.name}" if per_dist[dist] > 1 else "")
        try:
            obj = ep.load()
            path = Path(obj() if callable(obj) else obj)
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break berg; it is reported
            log.warning("registry entry point %s = %s of %s cannot be loaded: %s", ep.name, ep.value, dist, exc)
            continue
        if not path.is_file():
            log.warning("registry entry point %s of %s names %s, which is not a file", ep.name, dist, path)
            continue
        out.append(
            {
                "name": label,
                "path": path,
                "card_root": path.parent,
                "trusted": False,
                "origin": f"entry point {ep.name} = {ep.value} ({dist})",
                "base": None,
                "modules": tuple(sorted({"berg", *_top_modules(ep.dist, ep.value)})),
            }
        )
    return out


def outside_sources(folder: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Registries from outside: those added by URL (pinned copies) and those of installed packages.

    Each is a dict of :class:`~berg.registry.RegistrySource` fields.
    """
    from berg.hub.locations import location_for

    config = read_config(folder)
    modules = plugin_modules()
    sources = []
    for name, item in sorted(config["registries"].items()):
        if not isinstance(item, Mapping) or not isinstance(item.get("url"), str):
            raise InvalidParameterError(
                f"registry {name!r} in {config_dir(folder) / CONFIG_NAME} has no url; `berg registry remove {name}` "
                "and add it again"
            )
        local = registry_folder(name, folder)
        loc = location_for(item["url"], endpoint=item.get("endpoint"))
        sources.append(
            {
                "name": name,
                "path": local / "registry.yaml",
                "card_root": local,
                "trusted": False,
                "origin": item["url"],
                "base": loc.base(),
                "modules": modules,
                "sha256": item.get("sha256"),
                "namespace": item.get("namespace"),
            }
        )
    return sources + package_sources()
