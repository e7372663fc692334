"""``berg publish ID --to URL``: put a built or trained model where others load it by name.

What is written below the target (``s3://bucket/prefix/`` or a local folder)::

    <id>/<version>/<artifact files>     every file the manifest lists, verified before upload
    <id>/<version>/manifest.json        sizes + sha256 of every file
    <id>/<version>/<id>.yaml            the model card
    registry.yaml                       the fragment: namespace + entries, each version pinning the
                                        manifest's and the card's sha256 (written LAST)

Readers find a model only through ``registry.yaml``, which is replaced in one atomic write after
everything else is in place: a publish that stops midway leaves nothing visible, and running it again
uploads only what is missing (files already there with the same sha256 are skipped). A version, once in
the fragment, is never overwritten by a different artifact.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from berg.env import progress_enabled
from berg.errors import ArtifactError, ArtifactNotFoundError, IntegrityError, InvalidParameterError
from berg.fsutil import sha256_bytes
from berg.hub.config import plugin_modules
from berg.hub.locations import Location, location_for
from berg.registry import (
    MAX_OUTSIDE_BYTES,
    ModelSpec,
    Registry,
    RegistryError,
    RegistrySource,
    check_outside_entry,
    parse_model_name,
)
from berg.store.artifacts import check_key
from berg.store.manifest import MANIFEST_NAME, FileInfo, parse_manifest, verify_file
from berg.yamlio import load_yaml_text

__all__ = ["publish", "find_artifact"]

log = logging.getLogger(__name__)

_FACTS = ("modality", "dataset", "subjects", "layout", "recipe", "model_class")


def find_artifact(spec: ModelSpec, store: Any, artifact: str | os.PathLike[str] | None = None) -> Path:
    """The local folder holding ``spec``'s complete artifact (with ``manifest.json``).

    Looked for in order: ``artifact``; ``berg_dir/<source prefix>``; ``artifact/`` beside the registry
    file that defines the model (what ``berg train`` writes); the model's folder in the cache or build
    folder (``berg build``, or ``berg fetch ID --all``).

    Raises
    ------
    ArtifactNotFoundError
        None of these holds a manifest (the message lists where it looked).
    """
    candidates: list[Path] = []
    if artifact is not None:
        candidates.append(Path(artifact).expanduser())
    else:
        prefix = str(spec.source.get("prefix") or "")
        if getattr(store, "berg_dir", None) is not None:
            candidates.append(Path(store.berg_dir) / prefix)
        if spec.origin and Path(spec.origin).is_file():
            candidates.append(Path(spec.origin).parent / "artifact")
        if spec.source:
            try:
                candidates.append(Path(store.model_folder(spec.model_id, spec.source)))
            except (InvalidParameterError, ArtifactError) as exc:
                log.debug("no cache folder for %s: %s", spec.model_id, exc)
    for folder in candidates:
        if (folder / MANIFEST_NAME).is_file():
            return folder
    raise ArtifactNotFoundError(
        f"no artifact of {spec.model_id} found (looked for manifest.json in: "
        f"{', '.join(map(str, candidates)) or 'nowhere'}); build it (berg build), train it (berg train), "
        "fetch every file (berg fetch ID --all), or give the folder: berg publish ID --artifact DIR"
    )


def _verified_files(folder: Path, model_id: str) -> tuple[dict[str, Any], bytes]:
    """Manifest dict and bytes of ``folder``, after checking every file it lists."""
    data = (folder / MANIFEST_NAME).read_bytes()
    manifest = parse_manifest(data, origin=str(folder / MANIFEST_NAME))
    for key, info in manifest["files"].items():
        check_key(key)
        path = folder / key
        if not path.is_file() or path.is_symlink():
            raise ArtifactNotFoundError(
                f"{model_id}: {path} is missing (or a link); the artifact is incomplete: fetch or rebuild it"
            )
        verify_file(path, FileInfo(size=info["size"], sha256=info["sha256"]), label=f"{model_id} {key}")
    return manifest, data


def _entry_facts(spec: ModelSpec) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "modality": spec.modality,
        "dataset": spec.dataset,
        "layout": spec.layout,
        "recipe": dict(spec.declared_recipe),
        "model_class": spec.model_class,
    }
    if spec.declared_subjects is not None:
        facts["subjects"] = list(spec.declared_subjects)
    return facts


def _read_fragment(loc: Location) -> dict[str, Any] | None:
    try:
        data = loc.read(loc.fragment, MAX_OUTSIDE_BYTES)
    except ArtifactNotFoundError:
        return None
    doc = load_yaml_text(data, origin=loc.describe(loc.fragment), aliases=False)
    if not isinstance(doc, Mapping) or not isinstance(doc.get("models", {}), Mapping):
        raise RegistryError(f"{loc.describe(loc.fragment)} exists but is not a berg registry; publish elsewhere")
    return dict(doc)


def _check_fragment(doc: Mapping[str, Any], loc: Location, tmp_dir: Path) -> None:
    """Load the fragment exactly as a reader from outside would; refuse to publish what berg would refuse."""
    path = tmp_dir / "registry.yaml"
    path.write_text(yaml.safe_dump(dict(doc), sort_keys=False))
    Registry.load_source(
        RegistrySource(
            name="publish",
            path=path,
            card_root=tmp_dir,
            trusted=False,
            origin=loc.describe(),
            base=loc.base(),
            modules=plugin_modules(),
        )  # fmt: skip
    )


class _Progress:
    def __init__(self, total: int, show: bool, label: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not show, leave=False)

    def __call__(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def publish(
    model_id: str,
    to: str,
    *,
    client: Any = None,
    namespace: str | None = None,
    name: str | None = None,
    version: int | None = None,
    artifact: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Publish a built or trained model's artifact, card and registry entry to ``to``.

    Parameters
    ----------
    model_id : str
        The model as your registry knows it (with ``client``'s registry files, e.g. ``berg train``'s).
    to : str
        ``s3://bucket/prefix/`` (any S3-compatible server: ``endpoint`` or ``BERG_S3_ENDPOINT``; your AWS
        credentials sign the uploads) or a local folder.
    client : BERG, optional
        Whose registry, ``berg_dir`` and cache to use (default ``BERG()``).
    namespace : str, optional
        The namespace of the fragment (``lab`` makes the model ``lab/<id>``); required for the first
        model published to ``to``, and must match the fragment's afterwards.
    name : str, optional
        The published id (default: the model's own id).
    version : int, optional
        Default: the version already holding this very artifact (a resumed or repeated publish), else the
        newest + 1 (1 for a new model).
    artifact : path, optional
        The artifact folder, when it is not where :func:`find_artifact` looks.
    show_progress : bool, optional
        Progress bar of the upload (default on; off with ``BERG_QUIET``).

    Returns
    -------
    dict
        ``model`` (``lab/id@version``), ``url`` (of the fragment, for ``berg registry add``), ``sha256``
        (the fragment's, for ``--sha256``), ``manifest_sha256``, ``uploaded`` and ``skipped`` (file counts).

    Raises
    ------
    InvalidParameterError
        No namespace, a model that names code a registry from outside may not name, or a version that
        already holds a different artifact.
    IntegrityError, ArtifactNotFoundError
        The local artifact is incomplete or does not match its manifest.
    """
    if client is None:
        from berg.api import BERG

        client = BERG()
    spec = client.registry.get(model_id)
    if spec.ensemble:
        raise InvalidParameterError(f"{model_id} is an ensemble (no artifact of its own); publish its members")
    short = name or spec.short_id
    parse_model_name(f"x/{short}")  # the published id is a valid id
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise InvalidParameterError(f"version must be a whole number >= 1, got {version!r}")
    folder = find_artifact(spec, client.store, artifact)
    manifest, manifest_bytes = _verified_files(folder, spec.model_id)
    manifest_sha = sha256_bytes(manifest_bytes)
    card = dict(spec.card)
    card["id"] = short
    card_bytes = yaml.safe_dump(card, sort_keys=False, allow_unicode=True).encode("utf-8")

    loc = location_for(to, endpoint=endpoint)
    loc.for_writing = True
    doc = _read_fragment(loc) or {"format_version": 1, "namespace": namespace, "models": {}}
    ns = doc.get("namespace")
    if namespace is not None and ns != namespace:
        raise InvalidParameterError(
            f"{loc.describe(loc.fragment)} holds namespace {ns!r}; publish there with --namespace {ns} "
            f"(or publish namespace {namespace!r} to another prefix)"
        )
    if not ns:
        raise InvalidParameterError(
            "give the namespace of this registry: berg publish ID --to URL --namespace LAB (it makes the model "
            f"LAB/{short}; later publishes to the same URL use it)"
        )
    models = dict(doc.get("models") or {})
    existing = dict(models.get(short) or {})
    versions = {int(v): dict(e) for v, e in (existing.get("versions") or {}).items()}

    def pinned(entry: Mapping[str, Any]) -> str | None:
        return (entry.get("source") or {}).get("manifest_sha256")

    same = [v for v, e in versions.items() if pinned(e) == manifest_sha]
    if version is None:
        version = same[0] if same else max(versions, default=0) + 1
    elif version in versions and pinned(versions[version]) != manifest_sha:
        raise InvalidParameterError(
            f"{ns}/{short}@{version} is already published with another artifact (manifest sha256 "
            f"{pinned(versions[version])}, yours {manifest_sha}); published versions are never replaced: "
            f"publish as --version {max(versions) + 1}"
        )
    where = f"{short}/{version}/"
    remote_manifest = loc.stat(where + MANIFEST_NAME)
    if (
        remote_manifest is not None
        and version in versions
        and remote_manifest.get("sha256") not in (None, manifest_sha)
    ):
        raise IntegrityError(
            f"{loc.describe(where + MANIFEST_NAME)} differs from the manifest {ns}/{short}@{version} pins; "
            "the published copy was changed: fix it or publish a new version"
        )

    # what the entry will say: facts once at the model, what differs per version
    facts = _entry_facts(spec)
    base = {k: v for k, v in existing.items() if k != "versions"} or facts
    card_key = f"{where}{short}.yaml"  # berg's card loader wants <id>.yaml
    this = {k: v for k, v in facts.items() if base.get(k) != v}
    this.update(
        card=card_key,
        card_sha256=sha256_bytes(card_bytes),
        source={"path": where, "manifest_sha256": manifest_sha},
    )
    versions[version] = this
    models[short] = {**{k: v for k, v in base.items() if k not in ("card", "card_sha256", "source")},
                     "versions": dict(sorted(versions.items()))}  # fmt: skip
    doc["models"] = models
    doc["namespace"] = ns
    where_model = f"{ns}/{short}@{version}"
    try:  # the entry must be code-free: readers from outside refuse anything else
        check_outside_entry(
            {
                **{k: v for k, v in models[short].items() if k != "versions"},
                "card": card_key,
                "source": this["source"],
            },  # fmt: skip
            RegistrySource(
                name="publish",
                path=Path("registry.yaml"),
                card_root=Path("."),
                trusted=False,
                base=loc.base(),
                modules=plugin_modules(),
            ),  # fmt: skip
            where_model,
            f"{ns}/{short}/{version}",
        )
    except RegistryError as exc:
        raise InvalidParameterError(f"{spec.model_id} cannot be published as is: {exc}") from None
    import tempfile

    with tempfile.TemporaryDirectory(prefix="berg-publish-") as tmp:
        _check_fragment(doc, loc, Path(tmp))

    # 1. artifact files (skipped when already there with the same sha256), 2. manifest, 3. card, 4. fragment
    todo, skipped = [], 0
    for key, info in sorted(manifest["files"].items()):
        have = loc.stat(where + key)
        if have is not None and have.get("size") == info["size"] and have.get("sha256") == info["sha256"]:
            skipped += 1
        else:
            todo.append((key, info))
    bar = _Progress(sum(i["size"] for _, i in todo), progress_enabled(show_progress), f"publish {where_model}")
    try:
        for key, info in todo:
            loc.put_file(where + key, folder / key, info["sha256"], bar)
    finally:
        bar.close()
    loc.put_bytes(where + MANIFEST_NAME, manifest_bytes, manifest_sha)
    loc.put_bytes(card_key, card_bytes, sha256_bytes(card_bytes))
    fragment = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode("utf-8")
    loc.put_bytes(loc.fragment, fragment, sha256_bytes(fragment))  # last: now the model is visible
    url = loc.describe(loc.fragment).split(" at ")[0]
    log.info("published %s to %s (%d file(s) uploaded, %d already there)", where_model, url, len(todo), skipped)
    return {
        "model": where_model,
        "url": url,
        "endpoint": getattr(loc, "endpoint", None),
        "sha256": sha256_bytes(fragment),
        "manifest_sha256": manifest_sha,
        "uploaded": len(todo),
        "skipped": skipped,
    }
