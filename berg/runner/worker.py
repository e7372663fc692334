"""Loading a plan's models and computing one shard: the code every executor runs.

A *unit* of work is one shard index. For that shard the stimuli are decoded once (in parallel threads),
every model entry with a pending target encodes them, reducers shrink the responses, each target's rows are
written as whole chunks and made durable, and only then is each target's shard marked done (the marker
records the chunks' sizes, times and sha256, which every later reader checks).

Models are driven through the contract of :mod:`berg.core.contract`, checked with ``isinstance``:

* a :class:`~berg.core.contract.FeatureModel` runs through its own ``iter_encode`` (the engine's one
  batching loop; all subjects of an entry share one backbone pass), and several entries with the same
  backbone pass share it: the engine's :func:`~berg.core.engine.batch_loop` runs the backbone once per
  batch and each model maps the features with ``outputs_from_features``; undecodable or refused stimuli
  are found item by item with ``prepare_stimuli``;
* a model that implements only :class:`~berg.core.contract.BaseModelInterface` is encoded shard by shard
  through ``encode`` (logged once per model class); a shard it refuses is retried item by item so one bad
  stimulus does not lose the others.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from berg.core.contract import BaseModelInterface, is_feature_model
from berg.errors import InvalidParameterError, StimulusError
from berg.fsutil import digest
from berg.runner.inputs import StimulusSource
from berg.runner.plan import EncodePlan, ModelEntry
from berg.runner.reducers import Reducer, build_reducer
from berg.runner.zarr_store import FORMAT_VERSION, RunStore, TargetInfo
from berg.subjects import subject_label

__all__ = [
    "LoadedEntry",
    "ShardOutputs",
    "compute_unit",
    "encode_unit",
    "write_unit",
    "default_decode_threads",
    "load_entries",
    "shard_bounds",
]

log = logging.getLogger(__name__)


def default_decode_threads() -> int:
    """Decoding threads when the plan does not say: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def shard_bounds(shard: int, shard_size: int, n: int) -> tuple[int, int]:
    """``[start, stop)`` stimulus range of a shard."""
    start = shard * shard_size
    return start, min(n, start + shard_size)


@dataclass
class LoadedEntry:
    """A plan entry's loaded model and, per subject, its store target and reducer."""

    entry: ModelEntry
    model: Any
    targets: dict[Any, TargetInfo]
    reducers: dict[Any, Reducer]
    #: Entries with the same key share one backbone pass per batch (see :func:`backbone_key`).
    backbone: str | None = None

    @property
    def feature_model(self) -> bool:
        """Whether the model implements :class:`~berg.core.contract.FeatureModel`."""
        return self.backbone is not None


def _response_shape(space: Any) -> tuple[int, ...]:
    """Per-stimulus shape of a space's responses (``space.shape``, which every output space declares)."""
    n = int(space.n_outputs)
    shape = tuple(int(v) for v in space.shape)
    if int(np.prod(shape)) != n:
        raise InvalidParameterError(
            f"the {space.kind} output space declares shape {shape} for {n} outputs; the space is inconsistent"
        )
    return shape


def _dims(space: Any, shape: tuple[int, ...]) -> list[str]:
    dims = [str(d) for d in space.dims]
    if len(dims) == len(shape):
        return dims
    return ["output"] if len(shape) == 1 else [f"axis{i}" for i in range(1, len(shape) + 1)]


def _coords(space: Any, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Coordinate arrays: the space's ``coords()`` and ``output_ids`` (2-D outputs) as :func:`berg.save` writes
    them (voxel ``(i, j, k)`` for volumes, else the output index: ``BaseModelInterface.output_ids``)."""
    out: dict[str, np.ndarray] = {}
    declared = space.coords()
    for k, v in declared.items():
        arr = np.asarray(v)
        if arr.dtype.kind in "iufbUS":
            out[str(k).replace("/", "_")] = arr
        elif arr.dtype.kind == "O":
            out[str(k).replace("/", "_")] = arr.astype(str)
    if len(shape) == 1:
        ids = np.asarray(declared["voxel_ijk"]) if "voxel_ijk" in declared else np.arange(shape[0])
        if ids.shape[0] == shape[0]:
            out["output_ids"] = ids
    return out


def backbone_key(model: Any, prov: Mapping[str, Any]) -> str | None:
    """Identity of a model's backbone pass (builder, weights, seed, nodes, preprocessing, device), or ``None``
    for a model that implements only the base interface (it is encoded through ``encode``)."""
    if not is_feature_model(model) or model.group_level:
        return None  # group-level outputs are not per-subject rows of a shared pass: encode() refuses them clearly
    return digest({k: prov.get(k) for k in ("backbone", "nodes", "transform", "device")})


def _subject_artifacts(checksums: Mapping[str, str], subject: Any, subjects: Sequence[Any]) -> dict[str, str]:
    """The artifact checksums a subject's numbers depend on: shared files and its own (not the other subjects')."""
    others = [subject_label(s) for s in subjects if s != subject]
    return {k: v for k, v in checksums.items() if not any(o in k.split("/")[-1] or f"/{o}/" in f"/{k}" for o in others)}


def _target_hash(
    entry: ModelEntry,
    subject: Any,
    artifacts: Mapping[str, str],
    plan: EncodePlan,
    fingerprint: Mapping[str, Any],
    n: int,
    shape: tuple[int, ...],
) -> str:
    selection = entry.selection
    if isinstance(selection, Mapping) and isinstance(selection.get("voxels"), Mapping):
        selection = {**selection, "voxels": selection["voxels"].get(subject)}
    return digest(
        {
            "format_version": FORMAT_VERSION,
            "model_id": entry.id,
            "subject": subject,
            "selection": selection,
            "reducers": entry.reducers,
            "backbone_weights": entry.backbone_weights,
            "backbone_seed": entry.backbone_seed,
            "model_kwargs": entry.model_kwargs,
            "artifacts": dict(sorted(artifacts.items())),
            "stimuli": fingerprint,
            "n_stimuli": n,
            "shard_size": plan.shard_size,
            "dtype": plan.dtype,
            "shape": list(shape),
        }
    )


def berg_client(plan: EncodePlan):
    """The :class:`berg.BERG` client of a plan (its ``berg:`` options)."""
    from berg.api import BERG

    opts = plan.berg
    return BERG(
        berg_dir=opts.get("berg_dir"),
        cache_dir=opts.get("cache_dir"),
        offline=bool(opts.get("offline", False)),
        registry=opts.get("registry"),
    )


def load_entries(
    plan: EncodePlan,
    source: StimulusSource,
    *,
    device: str | None = None,
    client: Any = None,
) -> dict[str, LoadedEntry]:
    """Load every model of the plan and resolve its targets (store layout, hashes) and reducers."""
    client = client or berg_client(plan)
    fingerprint = source.fingerprint()
    n = len(source)
    loaded: dict[str, LoadedEntry] = {}
    for i, entry in enumerate(plan.models):
        subjects = (
            entry.subjects if entry.subjects == "all" or isinstance(entry.subjects, (list, tuple)) else [entry.subjects]
        )
        model = client.get_encoding_model(
            entry.id,
            subject=subjects,
            selection=entry.selection,
            device=device or plan.device,
            batch_size=entry.batch_size or plan.batch_size,
            backbone_weights=entry.backbone_weights,
            backbone_seed=entry.backbone_seed,
            **entry.model_kwargs,
        )
        prov = model.provenance()
        checksums = prov.get("artifacts") or {}
        bkey = backbone_key(model, prov)
        if bkey is None:
            _log_base_only(model)
        if device is not None and device != plan.device:
            # a Dask driver loads on the CPU only to lay out the store; the numbers come from the workers
            prov = {**prov, "device": f"{plan.device} (Dask workers)"}
        needs_meta = any(("roi_mean" in r) or ("select" in r and "roi" in r["select"]) for r in entry.reducers)
        targets, reducers = {}, {}
        for s in model.subjects:
            space = model.space(s)
            shape = _response_shape(space)
            coords = _coords(space, shape)
            meta = client.get_model_metadata(entry.id, subject=s) if needs_meta else None
            rows = _selected_rows(model, s)
            n_full = (
                int(meta["n_outputs"])
                if meta is not None and "n_outputs" in meta
                else (int(np.max(rows)) + 1 if rows is not None else int(np.prod(shape)))
            )
            red = build_reducer(
                entry.reducers,
                meta=meta,
                reliability=_reliability_source(model, s),
                full_rows=rows,
                n_full=n_full,
                coords=coords,
                response_shape=shape,
                where=f"models[{i}] ({entry.name}) subject {s}",
            )
            out_shape = shape if red.is_identity else (red.n_out,)
            dims = _dims(space, shape) if red.is_identity else red.dims
            artifacts = _subject_artifacts(checksums, s, model.subjects)
            space_dict = space.to_dict()
            targets[s] = TargetInfo(
                name=entry.name,
                model_id=entry.id,
                subject=s,
                label=subject_label(s),
                shape=out_shape,
                dims=dims,
                coords=red.coords if not red.is_identity else coords,
                attrs={
                    "space": space_dict,
                    "reducers": entry.reducers,
                    "selection": entry.selection,
                    "provenance": {**prov, "subjects": [s], "artifacts": artifacts},
                    "model_response_shape": list(shape),
                },
                hash=_target_hash(entry, s, artifacts, plan, fingerprint, n, out_shape),
            )
            reducers[s] = red
        loaded[entry.name] = LoadedEntry(entry, model, targets, reducers, bkey)
    return loaded


def _model_item(item: np.ndarray, kind: str) -> np.ndarray:
    # Decoded videos are (T, H, W, 3); the stimulus loader takes video arrays as (T, 3, H, W), as BERG does.
    return item.transpose(0, 3, 1, 2) if kind == "video" else item


def _validate(items: list[Any], model: Any, kind: str) -> list[Any]:
    """Decoded items the model refuses (too few video frames, wrong shape) become per-item errors too.

    Only a :class:`~berg.core.contract.FeatureModel` can check stimuli without encoding them; a model of the
    base interface finds its culprits while encoding (see :func:`_encode_base`)."""
    arrays = [_model_item(it, kind) for it in items if not isinstance(it, BaseException)]
    if not arrays or not is_feature_model(model):
        return items
    try:
        model.prepare_stimuli(arrays)
        return items
    except StimulusError:
        pass
    out = []
    for it in items:  # find the culprit(s); cheap: arrays are only checked, not transformed
        if not isinstance(it, BaseException):
            try:
                model.prepare_stimuli([_model_item(it, kind)])
            except StimulusError as exc:
                it = exc
        out.append(it)
    return out


@dataclass
class ShardOutputs:
    """A computed shard waiting to be written: ``{target key: (target, rows)}``."""

    shard: int
    start: int
    stop: int
    outputs: dict[str, tuple[TargetInfo, np.ndarray]]
    failed: list[dict[str, Any]]
    t0: float


def encode_unit(
    store: RunStore,
    plan: EncodePlan,
    loaded: Mapping[str, LoadedEntry],
    source: StimulusSource,
    shard: int,
    pending: Mapping[str, str],
    *,
    items: list[Any] | None = None,
    decode_threads: int = 1,
) -> ShardOutputs | None:
    """Compute shard ``shard`` for the ``pending`` targets (``{target key: expected hash}``); nothing written.

    Returns ``None`` when every pending target of the shard is already done (an earlier attempt finished it).

    Raises
    ------
    StimulusError
        A stimulus of the shard cannot be decoded and ``plan.on_error == "raise"`` (the file is named).
    InvalidParameterError
        This process resolved a target to another hash than the driver (e.g. a different artifact).
    """
    t0 = time.perf_counter()
    start, stop = shard_bounds(shard, plan.shard_size, len(source))
    todo: dict[str, list[Any]] = {}
    known = {t.key for le in loaded.values() for t in le.targets.values()}
    if set(pending) - known:
        raise InvalidParameterError(
            f"the run expects targets {sorted(set(pending) - known)} that this worker's plan does not have; "
            "driver and workers must run the same plan"
        )
    for name, le in loaded.items():
        for s, t in le.targets.items():
            if t.key not in pending:
                continue
            if pending[t.key] != t.hash:
                raise InvalidParameterError(
                    f"{t.key}: this worker computes plan hash {t.hash[:12]} but the run expects "
                    f"{pending[t.key][:12]}; workers must see the same artifacts, registry and berg version"
                )
            if store.shard_state(t.key, shard, t.hash) == "done":
                continue  # finished by an earlier attempt of this task (e.g. its worker died after the marker)
            todo.setdefault(name, []).append(s)
    if not todo:
        return None
    store.log_event("shard_start", shard=shard, targets=sorted(k for k in pending))
    if items is None:
        items = source.read(range(start, stop), threads=decode_threads)
    items = _validate(items, loaded[next(iter(todo))].model, source.kind)
    good = [k for k, it in enumerate(items) if not isinstance(it, BaseException)]
    errors = {k: it for k, it in enumerate(items) if isinstance(it, BaseException)}
    _check_errors(errors, plan, start)
    outputs: dict[str, tuple[TargetInfo, np.ndarray]] = {}
    model_items = [_model_item(items[k], source.kind) for k in good]
    for group in _backbone_groups([loaded[name] for name in todo]):
        full, refused = _encode_group(group, model_items, np.asarray(good, dtype=np.int64), stop - start)
        if refused:
            errors.update(refused)
            _check_errors(refused, plan, start)
        for le in group:
            for s in todo[le.entry.name]:
                t, red = le.targets[s], le.reducers[s]
                data = full[le.entry.name][s] if red.is_identity else red.apply(full[le.entry.name][s])
                if tuple(data.shape[1:]) != tuple(t.shape):
                    raise InvalidParameterError(
                        f"{t.key}: the model returned {data.shape[1:]} per stimulus, the store expects {t.shape} "
                        "(from its output space); the model's space declaration is inconsistent"
                    )
                outputs[t.key] = (t, data)
    failed = [
        {
            "index": start + k,
            "id": source.describe(start + k),
            "error": str(errors[k]),
            "stamp": source.stamp(start + k),
        }
        for k in sorted(errors)
    ]
    return ShardOutputs(shard, start, stop, outputs, failed, t0)


def _check_errors(errors: Mapping[int, BaseException], plan: EncodePlan, start: int) -> None:
    if errors and plan.on_error == "raise":
        k = min(errors)
        raise StimulusError(
            f"stimulus {start + k} cannot be decoded: {errors[k]}. Fix or remove the file, or set "
            "on_error: skip in the plan (failed stimuli are then listed and their rows are NaN)"
        )


def write_unit(store: RunStore, plan: EncodePlan, done: ShardOutputs) -> dict[str, Any]:
    """Write a computed shard and mark it done; returns ``{"shard", "computed", "failed", "seconds"}``."""
    # Data of every target first, markers last: a marker never exists for data that is not on disk.
    t_write = time.perf_counter()
    chunks = {
        key: store.write_shard(key, done.shard, done.start, data, fsync=plan.fsync)
        for key, (_, data) in done.outputs.items()
    }
    seconds = time.perf_counter() - done.t0
    for key, (t, _) in done.outputs.items():
        store.mark_done(
            key,
            done.shard,
            {
                "target_hash": t.hash,
                "plan_hash": plan.plan_hash(),
                "start": done.start,
                "stop": done.stop,
                "failed": done.failed,
                "seconds": seconds,
                "chunks": chunks[key],
            },
        )
    computed = list(done.outputs)
    store.log_event(
        "unit_done",
        shard=done.shard,
        targets=computed,
        seconds=seconds,
        write_seconds=time.perf_counter() - t_write,  # zarr chunks, fsync, checksums and markers
        n_failed=len(done.failed),
    )
    return {"shard": done.shard, "computed": computed, "failed": done.failed, "seconds": seconds}


def compute_unit(
    store: RunStore,
    plan: EncodePlan,
    loaded: Mapping[str, LoadedEntry],
    source: StimulusSource,
    shard: int,
    pending: Mapping[str, str],
    *,
    items: list[Any] | None = None,
    decode_threads: int = 1,
) -> dict[str, Any]:
    """:func:`encode_unit` then :func:`write_unit`: one shard computed, written and marked done."""
    done = encode_unit(store, plan, loaded, source, shard, pending, items=items, decode_threads=decode_threads)
    if done is None:
        return {"shard": shard, "computed": [], "failed": [], "seconds": 0.0}
    return write_unit(store, plan, done)


def _model_shape(le: LoadedEntry, subject: Any) -> tuple[int, ...]:
    return tuple(le.targets[subject].attrs["model_response_shape"])


def _selected_rows(model: Any, subject: Any) -> np.ndarray | None:
    """Full-output index of each output the model returns (``None``: all, in order).

    Only the engine's models record it (``selected_rows``); other models are taken to return all outputs
    of the subject, in order, which is what their ROI reducers then assume.
    """
    from berg.core.engine import LinearEncodingModel

    if isinstance(model, LinearEncodingModel):
        return model.selected_rows.get(subject)
    return None


def _reliability_source(model: Any, subject: Any):
    """``metric -> per-output values`` for the ``nc_threshold`` reducer, from the model's reliability accessor
    (``model.reliability(subject)``: NCSNR / noise ceiling in output order for the current selection). Each
    model family knows where its release keeps these numbers; the runner never reads metadata keys for them."""

    def values(metric: str) -> np.ndarray:
        if not isinstance(model, BaseModelInterface):
            raise InvalidParameterError(
                f"nc_threshold needs the model's reliability accessor; {type(model).__qualname__} does not "
                "subclass berg.core.contract.BaseModelInterface, which defines reliability(subject)"
            )
        return np.asarray(getattr(model.reliability(subject), metric), dtype=np.float64)

    return values


_BASE_ONLY_LOGGED: set[str] = set()


def _log_base_only(model: Any) -> None:
    """Say once per model class that it is encoded shard by shard (no shared backbone pass, no streaming)."""
    name = f"{type(model).__module__}.{type(model).__qualname__}"
    if name not in _BASE_ONLY_LOGGED:
        _BASE_ONLY_LOGGED.add(name)
        log.info(
            "%s implements only BaseModelInterface (not FeatureModel): berg run encodes it shard by shard "
            "through encode(), without sharing a backbone pass with other models",
            name,
        )


def _backbone_groups(entries: Sequence[LoadedEntry]) -> list[list[LoadedEntry]]:
    """Entries grouped by backbone pass (models of the base interface stay alone)."""
    groups: dict[Any, list[LoadedEntry]] = {}
    for le in entries:
        groups.setdefault(le.backbone if le.backbone is not None else id(le), []).append(le)
    return list(groups.values())


def _group_level_error(model: Any, n: int) -> InvalidParameterError:
    return InvalidParameterError(
        f"{model.model_id}: the model returned {n} array(s) per batch for subjects {model.subjects} (a "
        "group-level output); berg run stores one array per subject. Run one entry per subject instead."
    )


def _encode_base(model: Any, items: list[np.ndarray]) -> tuple[dict[Any, np.ndarray], dict[int, StimulusError]]:
    """Encode a shard with ``model.encode`` (base interface); a refused shard is retried item by item.

    Returns ``({subject: (n_good, *shape)}, {item position: error})``; rows of refused items are NaN.
    """

    def call(x: list[np.ndarray]) -> dict[Any, np.ndarray]:
        out = model.encode(x, show_progress=False)
        if not isinstance(out, Mapping):
            raise _group_level_error(model, 1)
        return out

    try:
        return call(items), {}
    except StimulusError:
        if len(items) == 1:
            raise
    results: dict[Any, list[np.ndarray | None]] = {s: [] for s in model.subjects}
    errors: dict[int, StimulusError] = {}
    for k, item in enumerate(items):
        try:
            one = call([item])
        except StimulusError as exc:
            errors[k] = exc
            for s in model.subjects:
                results[s].append(None)
            continue
        for s in model.subjects:
            results[s].append(np.asarray(one[s])[0])
    out = {}
    for s, rows in results.items():
        shape = next((r.shape for r in rows if r is not None), None)
        out[s] = np.stack([np.full(shape, np.nan, np.float32) if r is None else r for r in rows]) if shape else None
    return out, errors


def _encode_group(
    group: Sequence[LoadedEntry], items: list[np.ndarray], rows: np.ndarray, n_rows: int
) -> tuple[dict[str, dict[Any, np.ndarray]], dict[int, StimulusError]]:
    """Responses ``{name: {subject: (n_rows, *shape)}}`` of a shard (rows not in ``rows`` stay NaN), and the
    stimuli a base-interface model refused (``{shard position: error}``).

    One feature model: its own ``iter_encode``. Several with one backbone: the engine's batch loop runs the
    backbone once per batch and each model maps the shared features (``outputs_from_features``, which the
    contract defines as ``iter_encode``'s rows, flat). A base-interface model: ``encode`` on the shard.
    """
    full = {
        le.entry.name: {s: np.full((n_rows, *_model_shape(le, s)), np.nan, dtype=np.float32) for s in le.model.subjects}
        for le in group
    }
    refused: dict[int, StimulusError] = {}
    if not items:
        return full, refused
    first = group[0]
    model = first.model
    if not first.feature_model:
        out, errors = _encode_base(model, items)
        keep = np.asarray([k for k in range(len(items)) if k not in errors], dtype=np.int64)
        refused = {int(rows[k]): exc for k, exc in errors.items()}
        for s in model.subjects:
            if out[s] is not None and keep.size:
                y = np.asarray(out[s])[keep] if errors else np.asarray(out[s])
                full[first.entry.name][s][rows[keep]] = y.reshape((keep.size, *_model_shape(first, s)))
        return full, refused
    stim = model.prepare_stimuli(items)
    if len(group) == 1:
        for a, b, per_subject in model.iter_encode(stim, show_progress=False):
            if len(per_subject) != len(model.subjects):
                raise _group_level_error(model, len(per_subject))
            for s, y in zip(model.subjects, per_subject):
                full[first.entry.name][s][rows[a:b]] = _shaped(model, s, np.asarray(y), _model_shape(first, s))
        return full, refused
    import torch

    from berg.core.engine import batch_loop

    def step(x):
        features = model.extractor(x)
        with torch.inference_mode():
            return [le.model.outputs_from_features(features) for le in group]

    batch = min(int(le.model.batch_size) for le in group)
    for a, b, per_model in batch_loop(
        stim, model.extractor.transform, batch, step, desc="berg run", show_progress=False
    ):
        for le, outs in zip(group, per_model):
            if len(outs) != len(le.model.subjects):
                raise _group_level_error(le.model, len(outs))
            for s, o in zip(le.model.subjects, outs):
                y = np.asarray(le.model.shape_outputs(s, o.cpu().numpy()))
                full[le.entry.name][s][rows[a:b]] = _shaped(le.model, s, y, _model_shape(le, s))
    return full, refused


def _shaped(model: Any, subject: Any, y: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A batch of responses as ``(b, *shape)``, refused clearly when the model returned another size."""
    if y.ndim == 0 or y[0].size != int(np.prod(shape)):
        raise InvalidParameterError(
            f"{model.model_id}: the model returned {tuple(y.shape[1:])} per stimulus for subject {subject}, "
            f"the store expects {shape} (from model.space({subject!r})); the model breaks the contract "
            "(iter_encode/outputs_from_features must give encode's rows)"
        )
    return y.reshape((y.shape[0], *shape))
