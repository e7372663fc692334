"""The run store: a zarr v3 hierarchy of responses plus the bookkeeping that makes a run resumable.

Layout of a run folder ``RUN/``::

    RUN/responses.zarr/                  zarr v3 (open with zarr.open_group(RUN/responses.zarr))
        zarr.json                        attrs: format "berg-run", format_version, n_stimuli, shard_size,
                                                stimuli (fingerprint), plan_hash, plan, berg_version
        stimulus_ids                     (n_stimuli,) str paths, or int64 indices for an HDF5 brick
        <model name>/sub-01/             attrs: model_id, subject, target_hash, space, dims, provenance,
                                                reducers, selection
            responses                    (n_stimuli, ...) float32/float16, chunks (shard_size, ...), NaN fill
            output_ids                   (n_outputs, 3) voxel ijk for volumes, else (n_outputs,) index
            coords/<name>                further per-output coordinates the space declares
    RUN/run.json                         the plan as last run, its hash, each target's hash and shape
    RUN/markers/<name>/sub-01/000012.json   shard 12 of that target is done (written last, atomically)
    RUN/events.jsonl                     append-only log: run starts, shard starts/ends (pid, host, time)
    RUN/locks/                           flock files: one run at a time, or the slices of a Slurm array

Rules that make resumption exact:

* A shard covers stimuli ``[i * shard_size, (i + 1) * shard_size)``, which is exactly chunk ``i`` along the
  stimulus axis of every array, so a shard is written as whole chunks and never shares a chunk file
  with another shard (workers never read-modify-write each other's data).
* zarr writes each chunk file atomically (temporary + rename); berg then ``fsync``-s the shard's chunk
  files and only then writes the marker (atomically, fsync-ed). A shard without a marker is recomputed;
  a marker never exists for a partial shard.
* A marker records the target's hash (model id, subject, selection, reducers, artifact sha256, stimuli
  fingerprint, dtype, shard size, berg run format). A marker whose hash differs from the current plan's
  is *stale*: ``berg status`` lists it and the next run recomputes that shard.
* A marker also records every chunk file of its shard (relative path, size, modification time, sha256).
  ``berg status``, ``berg export`` and every resume check them: a chunk that is missing, has another size,
  or whose bytes no longer hash to the record (hashed when its mtime changed, or always with ``verify``)
  makes the shard *damaged*; so does a marker without that record or one copied from another shard. A
  damaged shard is never served: export refuses it (or writes NaN rows with ``allow_incomplete``) and the
  next run recomputes it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from berg.errors import BERGError, InvalidParameterError
from berg.fsutil import atomic_write_text, clean_stale_temporaries, fsync_dir, sha256_file

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "RunLockedError",
    "RunStore",
    "SHARD_STATES",
    "StoreFormatError",
    "TargetInfo",
    "open_responses",
]

log = logging.getLogger(__name__)

FORMAT = "berg-run"
FORMAT_VERSION = 1
ZARR_NAME = "responses.zarr"
#: Largest chunk (bytes) before the output axis is split as well (shards still write whole chunks).
MAX_CHUNK_BYTES = 128 * 1024 * 1024
#: What a target's shard can be: computed and intact, computed under another plan, computed but its chunks
#: no longer match the marker's record, or not computed.
SHARD_STATES = ("done", "stale", "damaged", "pending")


class RunLockedError(BERGError):
    """Another berg run holds the store."""


class StoreFormatError(BERGError):
    """The folder is not a berg run store (or one of an unknown format version)."""


def _utc() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _json_safe(obj: Any) -> Any:
    from berg.fsutil import canonical_json

    return json.loads(canonical_json(obj))


@dataclass
class TargetInfo:
    """One array of the store: a model entry's subject, with its per-stimulus shape and coordinates."""

    name: str
    model_id: str
    subject: Any
    shape: tuple[int, ...]
    dims: list[str]
    coords: dict[str, np.ndarray]
    attrs: dict[str, Any]
    hash: str
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``<name>/sub-XX``: the zarr group path and the marker folder."""
        return f"{self.name}/{self.label}"


class _Flock:
    """An ``fcntl.flock`` on a file: released by the kernel when the process dies (even on SIGKILL)."""

    def __init__(self, path: Path, *, shared: bool = False):
        self.path, self.shared, self._fd = path, shared, None

    def acquire(self, *, blocking: bool) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        flags = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunStore:
    """A run folder (see the module docstring); :func:`berg.runner.run` creates and fills it.

    Parameters
    ----------
    root : path
        The run folder.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(check_store_path(root))
        self.zarr_path = self.root / ZARR_NAME
        self.run_json = self.root / "run.json"
        self.markers = self.root / "markers"
        self.locks = self.root / "locks"
        self.events = self.root / "events.jsonl"
        self._group = None
        self._arrays: dict[str, Any] = {}

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> RunStore:
        """An existing run folder (for status and export); refuses folders that are not runs."""
        store = cls(root)
        if store.root.exists() and not store.root.is_dir():
            raise StoreFormatError(f"{store.root} is a file, not a run folder")
        if not store.root.is_dir():
            raise StoreFormatError(f"run folder not found: {store.root}")
        if not store.run_json.is_file():
            raise StoreFormatError(f"{store.root} is not a berg run (no run.json); start one with 'berg run PLAN.yaml'")
        info = store.info()
        if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
            raise StoreFormatError(
                f"{store.root}/run.json has format {info.get('format')!r} version {info.get('format_version')!r}; "
                f"this berg reads {FORMAT!r} version {FORMAT_VERSION}"
            )
        return store

    def info(self) -> dict[str, Any]:
        """The contents of ``run.json`` (empty before the first run)."""
        try:
            return json.loads(self.run_json.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise StoreFormatError(f"{self.run_json} is not valid JSON ({exc}); was it edited by hand?") from exc

    def group(self, mode: str = "r"):
        """The zarr root group."""
        import zarr

        if mode == "r" and self._group is not None:
            return self._group
        g = zarr.open_group(store=os.fspath(self.zarr_path), mode=mode, zarr_format=3)
        if mode == "r":
            self._group = g
        return g

    # ------------------------------------------------------------------ locks
    def _holders(self) -> list[dict[str, Any]]:
        """Runs holding the store now (holder files of killed processes on this host are dropped)."""
        out = []
        host = socket.gethostname()
        for p in sorted(self.locks.glob("holder-*.json")):
            with contextlib.suppress(OSError, json.JSONDecodeError):
                h = json.loads(p.read_text())
                if h.get("host") == host and not _alive(int(h.get("pid", -1))):
                    p.unlink(missing_ok=True)  # a SIGKILLed run leaves its file; the kernel already freed its lock
                    continue
                out.append(h)
        return out

    @contextlib.contextmanager
    def lock(self, slice_: tuple[int, int] | None = None) -> Iterator[None]:
        """Hold the store for one run (exclusive), or for one slice of a Slurm array (shared with the others).

        Raises
        ------
        RunLockedError
            At once (never waits) when another run holds the store, naming that run's pid and host.
        """
        run_lock = _Flock(self.locks / "run.lock", shared=slice_ is not None)
        locks = [run_lock]
        if slice_ is not None:
            locks.append(_Flock(self.locks / f"slice-{slice_[0]}-of-{slice_[1]}.lock"))
        held: list[_Flock] = []
        for lk in locks:
            if not lk.acquire(blocking=False):
                for h in held:
                    h.release()
                holders = (
                    "; ".join(
                        f"pid {h.get('pid')} on {h.get('host')} since {h.get('started_utc')} ({h.get('mode')})"
                        for h in self._holders()
                    )
                    or "unknown holder"
                )
                what = "this slice" if lk is not run_lock else "the store"
                raise RunLockedError(
                    f"another berg run holds {what} {self.root} ({holders}). Wait for it to finish or stop it; "
                    "Slurm array tasks share a store only with --shard I --of N (one task per slice)."
                )
            held.append(lk)
        holder = self.locks / f"holder-{socket.gethostname()}-{os.getpid()}.json"
        mode = "exclusive" if slice_ is None else f"slice {slice_[0]} of {slice_[1]}"
        atomic_write_text(
            holder,
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started_utc": _utc(), "mode": mode}),
            fsync=False,
        )
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                holder.unlink()
            for h in reversed(held):
                h.release()

    @contextlib.contextmanager
    def _init_lock(self) -> Iterator[None]:
        lk = _Flock(self.locks / "init.lock")
        lk.acquire(blocking=True)  # short critical section; Slurm array tasks queue here
        try:
            yield
        finally:
            lk.release()

    # ------------------------------------------------------------------ layout
    @staticmethod
    def chunk_shape(n_stimuli: int, shard_size: int, shape: Sequence[int], itemsize: int) -> tuple[int, ...]:
        """Chunks: ``shard_size`` along stimuli; the first output axis split only when a chunk would be huge."""
        shape = tuple(int(s) for s in shape)
        chunks = [max(1, min(shard_size, n_stimuli))] + list(shape)
        if shape:
            per_row = shard_size * int(np.prod(shape[1:], dtype=np.int64)) * itemsize
            if per_row * shape[0] > MAX_CHUNK_BYTES:
                chunks[1] = max(1, MAX_CHUNK_BYTES // max(1, per_row))
        return tuple(chunks)

    def initialise(
        self,
        *,
        targets: Sequence[TargetInfo],
        plan: Mapping[str, Any],
        plan_hash: str,
        stimulus_ids: Any,
        stimuli_fingerprint: Mapping[str, Any],
        shard_size: int,
        dtype: str,
        compressor: str = "zstd",
    ) -> None:
        """Create or reconcile the store for ``targets`` (under a lock shared by concurrent array tasks).

        Arrays whose shape, dtype or chunking still fit are kept (their markers decide what is redone);
        arrays that no longer fit are recreated and their markers removed.
        """
        from berg._version import __version__

        self.root.mkdir(parents=True, exist_ok=True)
        with self._init_lock():
            clean_stale_temporaries(self.root, recursive=False)
            ids = np.asarray(stimulus_ids)
            n = int(ids.shape[0])
            root = self.group("a")
            root_attrs = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "n_stimuli": n,
                "shard_size": shard_size,
                "stimuli": _json_safe(stimuli_fingerprint),
                "plan_hash": plan_hash,
                "berg_version": __version__,
                "plan": _json_safe(plan),  # the zarr store alone says how it was made
            }
            old_ids = root.get("stimulus_ids")
            if old_ids is None or old_ids.shape != ids.shape or not np.array_equal(old_ids[:], ids):
                kind = "int64" if ids.dtype.kind in "iu" else str
                arr = root.create_array(
                    "stimulus_ids", shape=ids.shape, dtype=kind, overwrite=True, chunks=(max(1, min(n, 65536)),)
                )
                arr[:] = ids.astype(np.int64) if kind == "int64" else ids.astype(str)
            compressors = None if compressor == "none" else "auto"
            for t in targets:
                self._reconcile(root, t, n, shard_size, dtype, compressors)
            root.attrs.update(root_attrs)
            info = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "updated_utc": _utc(),
                "plan": _json_safe(plan),
                "plan_hash": plan_hash,
                "n_stimuli": n,
                "shard_size": shard_size,
                "n_shards": math.ceil(n / shard_size),
                "targets": {
                    t.key: {
                        "name": t.name,
                        "model_id": t.model_id,
                        "subject": t.subject,
                        "label": t.label,
                        "hash": t.hash,
                        "shape": list(t.shape),
                    }
                    for t in targets
                },
            }
            atomic_write_text(self.run_json, json.dumps(info, indent=1))
        self._group = None
        self._arrays = {}

    def _reconcile(self, root, t: TargetInfo, n: int, shard_size: int, dtype: str, compressors) -> None:
        shape = (n, *t.shape)
        chunks = self.chunk_shape(n, shard_size, t.shape, np.dtype(dtype).itemsize)
        grp = root.require_group(t.key)
        arr = grp.get("responses")
        fits = (
            arr is not None
            and tuple(arr.shape) == shape
            and arr.dtype == np.dtype(dtype)
            and tuple(arr.chunks) == chunks
            and bool(arr.compressors) == (compressors is not None)
        )
        if not fits:
            if arr is not None:
                log.info("%s: stored array %s no longer fits %s; recreating it", t.key, arr.shape, shape)
            self.drop_markers(t.key)
            grp.create_array(
                "responses",
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                fill_value=np.nan,
                overwrite=True,
                compressors=compressors,
                dimension_names=["stimulus", *t.dims],
            )
        for cname, values in t.coords.items():
            values = np.asarray(values)
            path = cname if cname == "output_ids" else f"coords/{cname}"
            old = grp.get(path)
            if (
                old is not None
                and old.shape == values.shape
                and old.dtype == values.dtype
                and np.array_equal(old[:], values)
            ):
                continue
            kind = str if values.dtype.kind in "US" else values.dtype
            c = grp.create_array(path, shape=values.shape, dtype=kind, overwrite=True)
            c[...] = values.astype(str) if kind is str else values
        grp.attrs.update(
            _json_safe(
                {
                    **t.attrs,
                    "model_id": t.model_id,
                    "subject": t.subject,
                    "target_hash": t.hash,
                    "dims": ["stimulus", *t.dims],
                }
            )
        )

    # ------------------------------------------------------------------ markers
    def _marker_dir(self, key: str) -> Path:
        return self.markers / key

    def marker_path(self, key: str, shard: int) -> Path:
        """Where shard ``shard`` of target ``key`` is marked done."""
        return self._marker_dir(key) / f"{shard:06d}.json"

    def read_marker(self, key: str, shard: int) -> dict[str, Any] | None:
        """The shard's marker, or ``None``."""
        try:
            return json.loads(self.marker_path(key, shard).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def markers_of(self, key: str) -> dict[int, dict[str, Any]]:
        """Every marker of a target, by shard index."""
        out: dict[int, dict[str, Any]] = {}
        folder = self._marker_dir(key)
        if not folder.is_dir():
            return out
        for p in folder.glob("*.json"):
            if p.stem.isdigit():
                with contextlib.suppress(OSError, json.JSONDecodeError):
                    out[int(p.stem)] = json.loads(p.read_text(encoding="utf-8"))
        return out

    def drop_markers(self, key: str) -> None:
        """Forget a target's finished shards (its array is being recreated)."""
        folder = self._marker_dir(key)
        if folder.is_dir():
            for p in folder.glob("*.json"):
                p.unlink(missing_ok=True)

    def drop_marker(self, key: str, shard: int) -> None:
        """Forget one finished shard (it is damaged, or a failed stimulus of it came back): it is recomputed."""
        self.marker_path(key, shard).unlink(missing_ok=True)

    def shard_state(self, key: str, shard: int, expected_hash: str, *, verify: bool = False) -> str:
        """``"done"``, ``"stale"`` (marked with another plan's hash), ``"damaged"`` (see :meth:`check_shard`)
        or ``"pending"``."""
        return self.marker_state(key, shard, self.read_marker(key, shard), expected_hash, verify=verify)[0]

    def marker_state(
        self, key: str, shard: int, marker: Mapping[str, Any] | None, expected_hash: str, *, verify: bool = False
    ) -> tuple[str, str | None]:
        """State of a shard given its marker, and why it is damaged (``None`` otherwise)."""
        if marker is None:
            return "pending", None
        if marker.get("target_hash") != expected_hash:
            return "stale", None
        problem = self.check_shard(key, shard, marker, verify=verify)
        return ("damaged", problem) if problem else ("done", None)

    def _chunk_dir(self, key: str, shard: int) -> Path:
        return self.zarr_path / key / "responses" / "c" / str(shard)

    def chunk_files(self, key: str, shard: int) -> list[Path]:
        """The chunk files of shard ``shard`` of a target (zarr's in-flight ``*.partial`` files excluded)."""
        folder = self._chunk_dir(key, shard)
        if folder.is_file():
            return [folder]
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".partial"))

    def chunk_record(self, key: str, shard: int) -> dict[str, dict[str, Any]]:
        """``{path relative to the zarr store: {size, mtime_ns, sha256}}`` of a shard's chunk files."""
        out = {}
        for p in self.chunk_files(key, shard):
            st = p.stat()
            out[p.relative_to(self.zarr_path).as_posix()] = {
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": sha256_file(p),
            }
        return out

    def check_shard(self, key: str, shard: int, marker: Mapping[str, Any], *, verify: bool = False) -> str | None:
        """Why a marked shard's chunks do not match its marker's record, or ``None`` when they do.

        The fast path compares sizes and modification times and hashes only chunks whose mtime changed
        (a copied store keeps working); ``verify=True`` hashes every chunk.
        """
        if marker.get("shard") != shard or marker.get("target") != key:
            return f"its marker belongs to {marker.get('target')!r} shard {marker.get('shard')!r} (copied or forged)"
        record = marker.get("chunks")
        if not isinstance(record, Mapping) or not record:
            return "its marker records no chunk checksums (forged, or written by an older berg)"
        prefix = f"{key}/responses/c/{shard}"
        present = {p.relative_to(self.zarr_path).as_posix(): p for p in self.chunk_files(key, shard)}
        for rel, rec in sorted(record.items()):
            if not (rel == prefix or rel.startswith(prefix + "/")) or not isinstance(rec, Mapping):
                return f"its marker records a chunk {rel!r} outside the shard (forged)"
            path = present.get(rel)
            if path is None:
                return f"chunk {rel} is missing"
            try:
                st = path.stat()
            except OSError as exc:
                return f"chunk {rel} cannot be read ({exc})"
            if st.st_size != rec.get("size"):
                return f"chunk {rel} has {st.st_size} bytes, {rec.get('size')} were written"
            if (verify or st.st_mtime_ns != rec.get("mtime_ns")) and sha256_file(path) != rec.get("sha256"):
                return f"chunk {rel} does not hash to what was written (its bytes changed)"
        extra = sorted(set(present) - set(record))
        if extra:
            return f"chunk {extra[0]} was not written by this shard's run"
        return None

    # ------------------------------------------------------------------ writing
    def write_shard(
        self, key: str, shard: int, start: int, data: np.ndarray, *, fsync: bool = True
    ) -> dict[str, dict[str, Any]]:
        """Write one shard's rows of a target (whole chunks) and make them durable; no marker yet.

        Returns the chunk record (:meth:`chunk_record`) the shard's marker keeps.
        """
        import zarr

        # Every shard writes its chunk files, even all-NaN ones (zarr skips "empty" chunks by default), so a
        # marker always names files: a marker recording none is forged.
        with zarr.config.set({"array.write_empty_chunks": True}):
            arr = self._arrays.get(key)
            if arr is None:
                arr = zarr.open_array(store=os.fspath(self.zarr_path), path=f"{key}/responses", mode="r+")
                self._arrays[key] = arr
            arr[start : start + data.shape[0]] = data.astype(arr.dtype, copy=False)
        if fsync:
            self._fsync_chunks(key, shard)
        return self.chunk_record(key, shard)

    def _fsync_chunks(self, key: str, shard: int) -> None:
        paths = self.chunk_files(key, shard)
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for d in {p.parent for p in paths}:
            fsync_dir(d)

    def mark_done(self, key: str, shard: int, record: Mapping[str, Any]) -> None:
        """Write the shard's marker (atomically, durably): the last step of a shard."""
        record = {
            **record,
            "target": key,
            "shard": shard,
            "finished_utc": _utc(),
            "finished_unix": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        atomic_write_text(self.marker_path(key, shard), json.dumps(_json_safe(record)))

    def log_event(self, event: str, **fields: Any) -> None:
        """Append one line to ``events.jsonl`` (single ``O_APPEND`` write: lines from processes never mix)."""
        line = (
            json.dumps(
                _json_safe(
                    {"event": event, "t": time.time(), "pid": os.getpid(), "host": socket.gethostname(), **fields}
                )
            )
            + "\n"
        )
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def read_events(self) -> list[dict[str, Any]]:
        """Every event logged so far (a torn last line of a killed process is skipped)."""
        out = []
        try:
            text = self.events.read_text(encoding="utf-8")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out

    # ------------------------------------------------------------------ reading
    def failed(self) -> list[dict[str, Any]]:
        """Stimuli that could not be decoded (``on_error="skip"``), from the current markers, by index."""
        info = self.info()
        seen: dict[int, dict[str, Any]] = {}
        for key, t in info.get("targets", {}).items():
            for m in self.markers_of(key).values():
                if m.get("target_hash") == t["hash"]:
                    for f in m.get("failed", []):
                        seen.setdefault(int(f["index"]), f)
        return [seen[i] for i in sorted(seen)]

    def shard_states(self, *, verify: bool = False) -> dict[str, dict[int, tuple[str, str | None]]]:
        """``{target key: {shard: (state, why damaged)}}`` for every target of ``run.json`` (see :data:`SHARD_STATES`)."""
        info = self.info()
        n_shards = int(info.get("n_shards", 0))
        out: dict[str, dict[int, tuple[str, str | None]]] = {}
        for key, t in info.get("targets", {}).items():
            markers = self.markers_of(key)
            out[key] = {s: self.marker_state(key, s, markers.get(s), t["hash"], verify=verify) for s in range(n_shards)}
        return out

    def status(self, *, verify: bool = False) -> dict[str, Any]:
        """Shard counts per target (done / stale / damaged / pending), failed stimuli, throughput and ETA.

        Parameters
        ----------
        verify : bool
            Hash every chunk of every done shard (default: sizes and modification times, hashing only the
            chunks whose modification time changed).
        """
        info = self.info()
        n_shards = int(info.get("n_shards", 0))
        targets = {}
        pending_units: set[tuple[str, int]] = set()
        for key, shards in self.shard_states(verify=verify).items():
            t = info["targets"][key]
            states = dict.fromkeys(SHARD_STATES, 0)
            damaged = []
            for s, (state, why) in shards.items():
                states[state] += 1
                if state != "done":
                    pending_units.add((t["name"], s))
                if state == "damaged":
                    damaged.append({"shard": s, "reason": why})
            targets[key] = {
                **states,
                "n_shards": n_shards,
                "model_id": t["model_id"],
                "subject": t["subject"],
                "damaged_shards": damaged,
                "not_done": sorted(s for s, (state, _) in shards.items() if state != "done"),
            }
        events = self.read_events()
        runs = [e for e in events if e.get("event") == "run_start"]
        holders = self._holders()
        eta = rate = None
        if runs and pending_units:
            # Throughput of the current session: since the earliest running holder started (all slices of
            # a Slurm array count), else since the latest run started.
            starts = []
            for h in holders:
                with contextlib.suppress(TypeError, ValueError):
                    starts.append(_dt.datetime.fromisoformat(h["started_utc"]).timestamp())
            since = min(starts) if starts else float(runs[-1]["t"])
            units = [e for e in events if e.get("event") == "unit_done" and e["t"] >= since]
            if units:
                span = max(e["t"] for e in units) - since
                rate = len(units) / span if span > 0 else None
            if rate:
                eta = len(pending_units) / rate
        done_all = all(v["done"] == n_shards for v in targets.values())
        return {
            "root": os.fspath(self.root),
            "n_stimuli": info.get("n_stimuli"),
            "shard_size": info.get("shard_size"),
            "n_shards": n_shards,
            "plan_hash": info.get("plan_hash"),
            "targets": targets,
            "pending_units": len(pending_units),
            "complete": bool(targets) and done_all,
            "failed": self.failed(),
            "units_per_second": rate,
            "eta_seconds": eta,
            "holders": holders,
            "verified": "sha256 of every chunk" if verify else "sizes and modification times",
        }


def check_store_path(root: Any, *, on_disk: bool = True) -> str:
    """A run folder path as given (str or path-like), refused with a clear error when it cannot be one.

    Raises
    ------
    InvalidParameterError
        Not a path, empty, or holding a NUL byte.
    StoreFormatError
        An existing file (not a folder).
    """
    if not isinstance(root, (str, os.PathLike)):
        raise InvalidParameterError(f"a run store is a folder path, got {type(root).__name__} {root!r}")
    text = os.fspath(root)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text:
        raise InvalidParameterError("the run store path is empty; give the run folder to write, e.g. runs/my-run")
    if "\0" in text:
        raise InvalidParameterError(f"the run store path {text!r} holds a NUL byte; no file system accepts it")
    if on_disk and os.path.isfile(text):
        raise StoreFormatError(f"the run store {text} is a file; give a folder (new, or a run folder to resume)")
    return text


def open_responses(root: str | os.PathLike[str]):
    """The run's zarr group (read-only): ``open_responses(RUN)["model/sub-01/responses"]``."""
    return RunStore.open(root).group("r")
