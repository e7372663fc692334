"""berg as a hub of encoding models: publish a model, add other labs' registries, load them by name.

* :func:`~berg.hub.publishing.publish` (``berg publish ID --to s3://bucket/prefix/``) uploads a verified
  artifact, its card and a registry fragment that pins the manifest's sha256 (the fragment last).
* :mod:`~berg.hub.registries` (``berg registry add/list/remove/update/prefer``) keeps registries from
  outside in the user's config, each pinned by sha256; packages ship registries through the
  ``berg.registries`` entry-point group (:mod:`~berg.hub.config`).
* :mod:`~berg.hub.sources` fetches published artifacts, verified against the pinned manifest.

See docs/guide/publish.md.
"""

from __future__ import annotations

__all__ = ["publish", "add_registry", "update_registry", "remove_registry", "list_registries", "prefer_registry"]


def __getattr__(name: str):  # imported on use: `import berg` stays light
    if name == "publish":
        from berg.hub.publishing import publish

        return publish
    if name in __all__:
        from berg.hub import registries

        return getattr(registries, name)
    raise AttributeError(f"module 'berg.hub' has no attribute {name!r}")
