"""Buildable models: models without published weights, built once on the user's machine from a dataset.

A registry entry declares how::

    fmri-algonauts_2023-clip_sam:
      source: {kind: build, prefix: fmri-algonauts_2023-clip_sam/}
      layout: native
      build:
        creator: creation_code.algonauts_2023.build:build     # "pkg.module:function"
        data: "the Algonauts 2023 challenge data (one folder per subject: subjNN/...)"
        options: {}                                             # defaults of creator options

``berg build ID --data DIR`` (or :func:`build_model`) calls the creator::

    creator(data_dir: Path, out_dir: Path, *, options: dict, work_dir: Path) -> None

which writes a berg-native artifact into ``out_dir`` with :class:`berg.store.artifacts.ArtifactWriter`
(``manifest.json`` with sizes and sha256 of every file); ``work_dir`` is a folder that survives failed
runs, for resumable feature caches. The artifact lands in the cache (``<cache>/<model id>/``, or
``$BERG_BUILD_DIR/<model id>/``) unless ``out_dir`` is given (then ``<out_dir>/<model id>/``; load it
with ``BERG(berg_dir=out_dir)``). After the
build every file is verified against the manifest; from then on the model is an ordinary berg model.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from berg.errors import InvalidParameterError, ModelLoadError, ModelNotBuiltError

__all__ = ["build_model", "built_path", "is_built", "not_built_error"]

log = logging.getLogger(__name__)


def build_command(spec: Any) -> str:
    """The command that builds a recipe model."""
    return f"berg build {spec.model_id} --data DIR"


def not_built_error(spec: Any, where: Path) -> ModelNotBuiltError:
    """The error ``get_encoding_model`` raises for a recipe model that was not built yet."""
    data = (spec.build or {}).get("data", "the dataset named in its card")
    return ModelNotBuiltError(
        f"{spec.model_id} has no published weights: build it once on this machine with "
        f"`{build_command(spec)}` (Python: berg.build({spec.model_id!r}, data_dir=DIR)), where DIR holds "
        f"{data}. It is then stored in {where} (looked there and found no manifest.json)."
    )


def built_path(spec: Any, store: Any) -> Path:
    """Where the built artifact of ``spec`` lives: ``berg_dir/<prefix>`` when there, else the cache."""
    prefix = str((spec.source or {}).get("prefix") or f"{spec.model_id}/")
    berg_dir = getattr(store, "berg_dir", None)
    if berg_dir is not None and (Path(berg_dir) / prefix / "manifest.json").is_file():
        return Path(berg_dir) / prefix
    folder = getattr(store, "model_folder", None)  # honours BERG_BUILD_DIR
    return Path(folder(spec.model_id, spec.source)) if folder else Path(store.model_cache(spec.model_id))


def is_built(spec: Any, store: Any) -> bool:
    """True when the recipe model's artifact (its manifest) exists."""
    return (built_path(spec, store) / "manifest.json").is_file()


def _verify(out: Path) -> dict[str, Any]:
    from berg.store.manifest import FileInfo, read_manifest, verify_file

    manifest = read_manifest(out / "manifest.json")
    for key, info in manifest["files"].items():
        path = out / key
        if not path.is_file():
            raise ModelLoadError(f"the built artifact {out} lacks {key}, which its manifest lists")
        verify_file(path, FileInfo(size=int(info["size"]), sha256=info.get("sha256")), label=f"{out.name}/{key}")
    return manifest


def build_model(
    model_id: str,
    data_dir: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    options: Mapping[str, Any] | None = None,
    force: bool = False,
    client: Any = None,
) -> Path:
    """Build a recipe model from its dataset; returns the verified artifact folder.

    Parameters
    ----------
    model_id : str
        A registry id whose entry has a ``build`` recipe (``berg list`` marks them).
    data_dir : path
        The dataset the recipe needs (its card and ``berg describe ID`` say which).
    out_dir : path, optional
        Write ``<out_dir>/<model_id>/`` instead of the cache; load it with ``BERG(berg_dir=out_dir)``.
    options : dict, optional
        Creator options (e.g. which variants to fit); unknown names are refused.
    force : bool
        Rebuild even when a verified artifact exists.
    client : BERG, optional
        The client whose registry and cache to use (``berg.build`` and ``berg build`` pass theirs).

    Returns
    -------
    Path
        The artifact folder (holds ``manifest.json``).
    """
    from berg._imports import import_object

    if client is None:
        raise InvalidParameterError("build_model needs the BERG client whose registry and cache to use: client=BERG()")
    spec = client.registry.get(model_id)
    if not spec.build:
        buildable = [m for m in client.registry.ids() if client.registry.get(m).build]
        raise InvalidParameterError(
            f"{model_id} is not a buildable model (it has published weights; just load it). "
            f"Models built with `berg build`: {', '.join(buildable) or 'none'}"
        )
    data = Path(os.fspath(data_dir)).expanduser()
    if not data.is_dir():
        raise InvalidParameterError(
            f"--data {data} is not a folder; {model_id} is built from {spec.build.get('data', 'its dataset')}"
        )
    defaults = dict(spec.build.get("options") or {})
    unknown = [k for k in (options or {}) if k not in defaults]
    if unknown:
        raise InvalidParameterError(
            f"unknown build option(s) {unknown} for {model_id}; valid: {', '.join(defaults) or 'none'}"
        )
    opts = {**defaults, **dict(options or {})}
    if out_dir is not None:
        prefix = str(spec.source.get("prefix") or f"{model_id}/")
        out = Path(os.fspath(out_dir)).expanduser() / prefix
    else:
        out = (
            built_path(spec, client.store)
            if client.store.berg_dir is None
            else Path(client.store.model_folder(model_id, spec.source))
        )
    if (out / "manifest.json").is_file() and not force:
        _verify(out)
        log.info("%s is already built in %s (use force=True / --force to rebuild)", model_id, out)
        return out
    creator = import_object(spec.build["creator"], f"build creator of {model_id}")
    work = out.parent / f".{out.name}.build"
    work.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"options": opts}
    if "work_dir" in inspect.signature(creator).parameters:
        kwargs["work_dir"] = work
    log.info("building %s from %s into %s", model_id, data, out)
    creator(data, out, **kwargs)
    if not (out / "manifest.json").is_file():
        raise ModelLoadError(f"the creator of {model_id} finished without writing {out / 'manifest.json'}")
    manifest = _verify(out)
    if manifest.get("model_id") not in (None, model_id):
        raise ModelLoadError(f"the creator wrote an artifact for {manifest.get('model_id')!r}, not {model_id!r}")
    return out
