"""The one YAML loader of berg: safe, refusing duplicate keys (YAML silently keeps the last).

Files from outside (a registry fragment fetched from a URL) are read with ``max_bytes`` and
``aliases=False``: the size is checked before parsing, and YAML anchors/aliases — the "billion laughs"
expansion — are refused outright (berg's own YAML never needs them).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import yaml

from berg.errors import InvalidParameterError

__all__ = ["read_yaml", "load_yaml_text", "YAMLFormatError"]


class YAMLFormatError(InvalidParameterError, yaml.YAMLError):
    """A YAML file or text berg cannot read (a berg error, and a ``yaml.YAMLError`` for older callers)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _NoAliasLoader(_UniqueKeyLoader):
    """Also refuses anchors and aliases (a few lines of aliases expand to billions of nodes)."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.events.AliasEvent) or getattr(self.peek_event(), "anchor", None):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "YAML anchors and aliases (& and *) are not allowed here", mark
            )
        return super().compose_node(parent, index)


def load_yaml_text(text: str | bytes, *, origin: str = "<text>", aliases: bool = True) -> Any:
    """Parse YAML text safely (duplicate keys refused; with ``aliases=False`` anchors refused too).

    Raises
    ------
    YAMLFormatError
        The text is not valid YAML (the message names ``origin`` and the line).
    """
    loader = _UniqueKeyLoader if aliases else _NoAliasLoader
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - safe loader subclass
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise YAMLFormatError(f"{origin} is not valid YAML: {detail}") from None
    except RecursionError:  # nesting deeper than Python's stack: no berg file is nested like that
        raise YAMLFormatError(
            f"{origin} is nested too deeply to read (deeper than {sys.getrecursionlimit()} levels); "
            "registries, cards and plans are a few levels deep: check the file"
        ) from None


def read_yaml(path: str | os.PathLike[str], *, max_bytes: int | None = None, aliases: bool = True) -> Any:
    """Read a YAML file safely, refusing duplicate keys.

    Parameters
    ----------
    path : path
    max_bytes : int, optional
        Refuse files larger than this before reading them.
    aliases : bool, default True
        ``False`` refuses anchors and aliases (for files from outside).

    Raises
    ------
    YAMLFormatError
        Not valid YAML, or larger than ``max_bytes``.
    """
    if max_bytes is not None:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise YAMLFormatError(f"{path} is {size} bytes; at most {max_bytes} bytes are read from such a file")
    with open(path, "rb") as fh:
        data = fh.read()
    return load_yaml_text(data, origin=str(path), aliases=aliases)
