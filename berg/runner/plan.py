"""The encoding plan: what to encode (models, subjects, stimuli), where to write it, and how to run it.

A plan is plain data, readable from YAML (``berg run plan.yaml``) or built in Python
(``berg.EncodePlan(...)``). Everything is validated here, before any model is loaded or any file is
written, with the valid values in each error message.

The *content* of a plan (models, subjects, selections, reducers, stimuli, dtype, shard size) decides
the numbers in the store; the *execution* settings (executor, workers, device, decode threads) do not.
Only the content enters the hashes that mark shards done (see :mod:`berg.runner.zarr_store`), so the same plan
run locally, on Dask or as a Slurm array resumes the same store.

Example (YAML)::

    store: runs/nsd-shared.zarr          # a folder; created if missing
    stimuli: {hdf5: nsd_stimuli.hdf5, dataset: imgBrick}
    models:
      - id: fmri-bold5000-resnet18
        subjects: [1, 2, 3]
        selection: {roi: [PPA, OPA]}
        reducers: [{roi_mean: [PPA, OPA]}]
    shard_size: 256
    dtype: float32
    on_error: raise                      # or "skip": failed stimuli listed, their rows NaN
    executor: {kind: dask, n_workers: 2, threads_per_worker: 1}
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berg.env import strict_bool
from berg.errors import InvalidParameterError, close_matches
from berg.fsutil import canonical_json, digest

__all__ = ["EncodePlan", "ModelEntry"]

DTYPES = ("float32", "float16")
ON_ERROR = ("raise", "skip")
EXECUTORS = ("local", "dask")
REDUCERS = ("roi_mean", "nc_threshold", "select")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PLAN_KEYS = (
    "models",
    "stimuli",
    "store",
    "shard_size",
    "dtype",
    "on_error",
    "executor",
    "device",
    "batch_size",
    "decode_threads",
    "berg",
    "fsync",
    "compressor",
)
_MODEL_KEYS = (
    "id",
    "name",
    "subjects",
    "selection",
    "reducers",
    "backbone_weights",
    "backbone_seed",
    "batch_size",
    "model_kwargs",
)
_EXECUTOR_KEYS = (
    "kind",
    "n_workers",
    "threads_per_worker",
    "address",
    "resources",
    "torch_threads",
    "dashboard",
    "memory_limit",
)
_BERG_KEYS = ("berg_dir", "cache_dir", "offline", "registry")
COMPRESSORS = ("zstd", "none")


def _unknown(keys: Any, valid: Sequence[str], where: str) -> None:
    extra = [k for k in keys if k not in valid]
    if extra:
        hints = "".join(
            f" (did you mean {close_matches(str(k), valid)[0]!r}?)" for k in extra[:1] if close_matches(str(k), valid)
        )
        raise InvalidParameterError(f"unknown key(s) {extra} in {where}{hints}; valid keys: {', '.join(valid)}")


def _choice(value: Any, valid: Sequence[str], what: str) -> str:
    if value not in valid:
        raise InvalidParameterError(f"{what} is {value!r}; valid: {', '.join(map(repr, valid))}")
    return value


def _positive(value: Any, what: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameterError(f"{what} must be a positive integer, got {value!r}")
    return value


def _reducers(raw: Any, where: str) -> list[dict[str, Any]]:
    """``[{roi_mean: [A, B]}, {nc_threshold: 0.3}, {select: {roi: A}}]`` -> normalised dicts."""
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        raw = [{k: v} for k, v in raw.items()]
    if not isinstance(raw, (list, tuple)):
        raise InvalidParameterError(f"{where}.reducers must be a list of one-key dicts, got {type(raw).__name__}")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or len(item) != 1:
            raise InvalidParameterError(
                f"{where}.reducers[{i}] must be a one-key dict such as {{roi_mean: [V1, V2]}}, got {item!r}"
            )
        ((kind, arg),) = item.items()
        _choice(kind, REDUCERS, f"{where}.reducers[{i}]")
        if kind == "roi_mean":
            rois = [arg] if isinstance(arg, str) else arg
            if not isinstance(rois, (list, tuple)) or not rois or not all(isinstance(r, str) for r in rois):
                raise InvalidParameterError(f"{where}.reducers[{i}].roi_mean takes a ROI name or a list of names")
            out.append({"roi_mean": list(rois)})
        elif kind == "nc_threshold":
            cfg = {"threshold": arg} if isinstance(arg, (int, float)) and not isinstance(arg, bool) else arg
            if not isinstance(cfg, Mapping) or "threshold" not in cfg:
                raise InvalidParameterError(
                    f"{where}.reducers[{i}].nc_threshold takes a number or {{threshold: 0.3, metric: noise_ceiling}}"
                )
            _unknown(cfg, ("threshold", "metric"), f"{where}.reducers[{i}].nc_threshold")
            _choice(
                cfg.get("metric", "noise_ceiling"),
                ("noise_ceiling", "ncsnr"),
                f"{where}.reducers[{i}].nc_threshold.metric",
            )
            if isinstance(cfg["threshold"], bool) or not isinstance(cfg["threshold"], (int, float)):
                raise InvalidParameterError(f"{where}.reducers[{i}].nc_threshold.threshold must be a number")
            out.append(
                {
                    "nc_threshold": {
                        "threshold": float(cfg["threshold"]),
                        "metric": str(cfg.get("metric", "noise_ceiling")),
                    }
                }
            )
        else:  # select
            if not isinstance(arg, Mapping) or len(arg) != 1 or next(iter(arg)) not in ("roi", "outputs"):
                raise InvalidParameterError(
                    f"{where}.reducers[{i}].select takes {{roi: name or [names]}} or {{outputs: [indices]}}"
                )
            ((key, value),) = arg.items()
            if key == "roi":
                value = [value] if isinstance(value, str) else list(value)
            else:
                value = [int(v) for v in value]
            if not value:
                raise InvalidParameterError(f"{where}.reducers[{i}].select selects nothing")
            out.append({"select": {key: value}})
    return out


@dataclass
class ModelEntry:
    """One model of a plan: a registry id, its subjects, and how its outputs are selected and reduced.

    Parameters
    ----------
    id : str
        Registry model id.
    subjects : int, list or "all"
        Subjects to encode; they share one backbone pass.
    name : str, optional
        Group name in the store (default: the id); needed when one id appears twice in a plan.
    selection : dict, optional
        Passed to ``get_encoding_model`` (``{"roi": ...}`` or ``{"voxels": ...}``): unselected outputs are
        never computed.
    reducers : list of dict, optional
        Applied in order to each shard before writing (2-D outputs only): ``{"roi_mean": [names]}``
        (one column per ROI), ``{"nc_threshold": 0.3}`` or ``{"nc_threshold": {"threshold": 0.3,
        "metric": "noise_ceiling"}}`` (keep outputs whose reliability, ``noise_ceiling`` or ``ncsnr`` from
        ``model.reliability()``, exceeds it),
        ``{"select": {"roi": [names]}}`` or ``{"select": {"outputs": [indices]}}``.
    backbone_weights, backbone_seed, batch_size, model_kwargs
        As in :meth:`berg.BERG.get_encoding_model`.
    """

    id: str
    subjects: Any
    name: str | None = None
    selection: dict[str, Any] | None = None
    reducers: list[dict[str, Any]] = field(default_factory=list)
    backbone_weights: str | None = None
    backbone_seed: int = 0
    batch_size: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> ModelEntry:
        """Validate one ``models:`` item (a dict, or a bare model id string is refused: subjects are needed)."""
        if not isinstance(raw, Mapping):
            raise InvalidParameterError(f"{where} must be a dict with at least 'id' and 'subjects', got {raw!r}")
        _unknown(raw, _MODEL_KEYS, where)
        for key in ("id", "subjects"):
            if key not in raw:
                raise InvalidParameterError(f"{where} needs {key!r} (e.g. {{id: fmri-..., subjects: [1, 2]}})")
        entry = cls(
            id=str(raw["id"]),
            subjects=raw["subjects"],
            name=raw.get("name"),
            selection=dict(raw["selection"]) if raw.get("selection") is not None else None,
            reducers=_reducers(raw.get("reducers"), where),
            backbone_weights=None if raw.get("backbone_weights") is None else os.fspath(raw["backbone_weights"]),
            backbone_seed=int(raw.get("backbone_seed", 0)),
            batch_size=_positive(raw.get("batch_size"), f"{where}.batch_size", allow_none=True),
            model_kwargs=dict(raw.get("model_kwargs") or {}),
        )
        # a namespaced, versioned id (lab/model-id@2) names a store group without '/' or '@'
        entry.name = entry.name or entry.id.replace("/", "--").replace("@", "-v")
        if not _NAME_RE.match(entry.name):
            raise InvalidParameterError(
                f"{where}.name {entry.name!r} must be letters, digits, '.', '_' or '-' (it names a store group)"
            )
        subjects = entry.subjects
        if not (
            subjects == "all" or isinstance(subjects, (int, str)) or (isinstance(subjects, (list, tuple)) and subjects)
        ):
            raise InvalidParameterError(f"{where}.subjects must be a subject, a non-empty list or 'all'")
        return entry

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (the YAML form)."""
        return {
            "id": self.id,
            "name": self.name,
            "subjects": self.subjects,
            "selection": self.selection,
            "reducers": copy.deepcopy(self.reducers),
            "backbone_weights": self.backbone_weights,
            "backbone_seed": self.backbone_seed,
            "batch_size": self.batch_size,
            "model_kwargs": dict(self.model_kwargs),
        }


class EncodePlan:
    """What to encode, where to write it and how to run it (see the module docstring for YAML).

    Parameters
    ----------
    models : list of dict or ModelEntry
        See :class:`ModelEntry`.
    stimuli : str, list or dict
        A folder path, a list of paths, or a dict: ``{"folder": DIR}``, ``{"glob": PATTERN}``,
        ``{"list": [paths]}`` or ``{"list_file": FILE}``, ``{"hdf5": FILE, "dataset": "imgBrick"}``,
        ``{"videos": DIR}`` (see :mod:`berg.runner.inputs`).
    store : path
        The run folder (created; resumed when it exists).
    shard_size : int, default 256
        Stimuli per shard: the unit of work, of resumption, and the chunk length of every array.
    dtype : {"float32", "float16"}
        Stored dtype (computation is always float32).
    on_error : {"raise", "skip"}
        A stimulus that cannot be decoded stops the run with its file named (``"raise"``), or is listed in
        the run's ``failed`` list and gets NaN rows (``"skip"``).
    executor : dict, optional
        ``{"kind": "local"}`` (default) or ``{"kind": "dask", "n_workers": 2, "threads_per_worker": 1}``
        (a ``LocalCluster``), ``{"kind": "dask", "address": "tcp://host:8786"}`` (an existing cluster),
        ``"resources": {"GPU": 1}`` to pin each task to a GPU worker. ``threads_per_worker`` defaults to the
        machine's cores divided by ``n_workers`` (one worker alone uses every core); each worker runs one
        shard at a time and its torch and BLAS (numpy's GEMMs) use that many threads, or
        ``"torch_threads"`` when given.
    device : str, default "auto"
        Where the models run (``"cuda"`` on GPU workers).
    batch_size : int, optional
        Default batch size of every model (each model may set its own).
    decode_threads : int, optional
        Threads decoding the next shard's files while the current one is encoded (default: CPU count, at most 8).
    berg : dict, optional
        Options of :class:`berg.BERG`: ``berg_dir``, ``cache_dir``, ``offline``, ``registry``.
    fsync : bool, default True
        Flush each shard's chunk files to disk before marking it done (survives power loss, not only
        killed processes).
    compressor : {"zstd", "none"}
        Chunk compression.
    base_dir : path, optional
        Relative paths in the plan are relative to this folder (a YAML plan's own folder).
    """

    def __init__(
        self,
        models: Sequence[Any],
        stimuli: Any,
        store: str | os.PathLike[str],
        *,
        shard_size: int = 256,
        dtype: str = "float32",
        on_error: str = "raise",
        executor: Mapping[str, Any] | str | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        decode_threads: int | None = None,
        berg: Mapping[str, Any] | None = None,
        fsync: bool = True,
        compressor: str = "zstd",
        base_dir: str | os.PathLike[str] | None = None,
    ):
        self.base_dir = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
        if not isinstance(models, (list, tuple)) or not models:
            raise InvalidParameterError("a plan needs 'models': a non-empty list of {id: ..., subjects: ...}")
        self.models = [
            m if isinstance(m, ModelEntry) else ModelEntry.from_dict(m, f"models[{i}]") for i, m in enumerate(models)
        ]
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidParameterError(
                f"model name(s) {dupes} appear twice in the plan; give each entry its own 'name:'"
            )
        from berg.runner.inputs import normalise_stimuli

        self.stimuli = normalise_stimuli(stimuli, self.base_dir)
        if store is None or (isinstance(store, str) and store == ""):
            raise InvalidParameterError("a plan needs 'store': the run folder to write")
        from berg.runner.zarr_store import check_store_path

        self.store = self._path(check_store_path(store, on_disk=False))
        check_store_path(self.store)  # relative to base_dir: may name a file there
        self.shard_size = _positive(shard_size, "shard_size")
        self.dtype = _choice(dtype, DTYPES, "dtype")
        self.on_error = _choice(on_error, ON_ERROR, "on_error")
        if executor is None:
            executor = {"kind": "local"}
        elif isinstance(executor, str):
            executor = {"kind": executor}
        if not isinstance(executor, Mapping):
            raise InvalidParameterError(
                f"executor must be 'local', 'dask' or a mapping such as {{kind: dask, n_workers: 2}}; got {executor!r}"
            )
        _unknown(executor, _EXECUTOR_KEYS, "executor")
        self.executor = dict(executor)
        self.executor.setdefault("kind", "local")
        _choice(self.executor["kind"], EXECUTORS, "executor.kind")
        if "dashboard" in self.executor:
            self.executor["dashboard"] = strict_bool(self.executor["dashboard"], "executor.dashboard")
        for key in ("n_workers", "threads_per_worker", "torch_threads"):
            if key in self.executor:
                _positive(self.executor[key], f"executor.{key}")
        self.device = str(device)
        self.batch_size = _positive(batch_size, "batch_size", allow_none=True)
        self.decode_threads = _positive(decode_threads, "decode_threads", allow_none=True)
        if berg is not None and not isinstance(berg, Mapping):
            raise InvalidParameterError(f"the plan's 'berg' options must be a mapping of {', '.join(_BERG_KEYS)}")
        berg = dict(berg or {})
        _unknown(berg, _BERG_KEYS, "berg")
        if "offline" in berg:
            berg["offline"] = strict_bool(berg["offline"], "berg.offline")
        for key in ("berg_dir", "cache_dir"):
            if berg.get(key) is not None:
                berg[key] = os.fspath(self._path(berg[key]))
        if berg.get("registry") is not None:
            reg = berg["registry"]
            reg = [reg] if isinstance(reg, (str, os.PathLike)) else list(reg)
            berg["registry"] = [os.fspath(self._path(r)) for r in reg]
        self.berg = berg
        self.fsync = strict_bool(fsync, "fsync")
        self.compressor = _choice(compressor, COMPRESSORS, "compressor")

    def _path(self, value: Any) -> Path:
        path = Path(os.fspath(value)).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None) -> EncodePlan:
        """Build a plan from its dict form (what a YAML plan file holds)."""
        if not isinstance(raw, Mapping):
            raise InvalidParameterError(f"a plan is a mapping of {', '.join(_PLAN_KEYS)}; got {type(raw).__name__}")
        _unknown(raw, _PLAN_KEYS, "the plan")
        for key in ("models", "stimuli", "store"):
            if key not in raw:
                raise InvalidParameterError(f"the plan needs {key!r}; required keys: models, stimuli, store")
        kwargs = {k: v for k, v in raw.items() if k not in ("models", "stimuli", "store")}
        return cls(raw["models"], raw["stimuli"], raw["store"], base_dir=base_dir, **kwargs)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> EncodePlan:
        """Read a YAML plan; its relative paths are relative to the file's folder."""
        from berg.yamlio import read_yaml

        path = Path(path)
        if not path.is_file():
            raise InvalidParameterError(f"plan file not found: {path}")
        try:
            raw = read_yaml(path)
        except Exception as exc:  # yaml errors carry line numbers; keep them
            raise InvalidParameterError(f"cannot parse plan {path}: {exc}") from exc
        return cls.from_dict(raw or {}, base_dir=path.resolve().parent)

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (absolute paths); ``EncodePlan.from_dict(plan.to_dict())`` round-trips."""
        return {
            "models": [m.to_dict() for m in self.models],
            "stimuli": copy.deepcopy(self.stimuli),
            "store": os.fspath(self.store),
            "shard_size": self.shard_size,
            "dtype": self.dtype,
            "on_error": self.on_error,
            "executor": dict(self.executor),
            "device": self.device,
            "batch_size": self.batch_size,
            "decode_threads": self.decode_threads,
            "berg": dict(self.berg),
            "fsync": self.fsync,
            "compressor": self.compressor,
        }

    def to_yaml(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as YAML (atomically)."""
        import yaml

        from berg.fsutil import atomic_write_text

        return atomic_write_text(path, yaml.safe_dump(json.loads(canonical_json(self.to_dict())), sort_keys=False))

    def content(self) -> dict[str, Any]:
        """The part of the plan that decides the stored numbers (what the plan hash is taken of)."""
        return {
            "stimuli": self.stimuli,
            "shard_size": self.shard_size,
            "dtype": self.dtype,
            "on_error": self.on_error,
            "compressor": self.compressor,
            "models": [m.to_dict() for m in self.models],
        }

    def plan_hash(self) -> str:
        """sha256 of :meth:`content` (execution settings excluded: they do not change results)."""
        return digest(self.content())

    def entry(self, name: str) -> ModelEntry:
        """The model entry named ``name``."""
        for m in self.models:
            if m.name == name:
                return m
        raise InvalidParameterError(f"no model named {name!r} in the plan; names: {[m.name for m in self.models]}")

    def __repr__(self) -> str:
        models = ", ".join(f"{m.name}{'' if m.name == m.id else f'={m.id}'}:{m.subjects}" for m in self.models)
        return f"EncodePlan(store={os.fspath(self.store)!r}, models=[{models}], shard_size={self.shard_size})"
