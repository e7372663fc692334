"""Backbone features on disk (chunked HDF5), so refits with other hyper-parameters skip the backbone.

The cache is keyed by what determines the features (recipe backbone/nodes/transform, backbone
weights, seed of an untrained backbone, the stimuli) and *not* by projection or readout settings.
It is resumable: ``/done`` marks finished rows and is set only after their features are flushed,
so an interrupted run (Ctrl-C, kill, crash) recomputes only the missing rows.

Layout::

    /features  (n_stimuli, n_features) float32, chunks (<=64 rows, <=32768 columns)
    /done      (n_stimuli,) bool
    attrs: key (sha256 hex), n_features
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FeatureCache", "stimuli_digest", "feature_key"]

log = logging.getLogger(__name__)

ROW_CHUNK = 64
COL_CHUNK = 1 << 15


def stimuli_digest(stimuli: Any, ids: Sequence[str]) -> str:
    """sha256 identifying the stimuli: image bytes when inline, (path, size, mtime) for files."""
    h = hashlib.sha256(json.dumps(list(map(str, ids))).encode())
    if isinstance(stimuli, np.ndarray):
        h.update(str(stimuli.shape).encode())
        for row in stimuli:  # row by row: no second copy of a large image array
            h.update(np.ascontiguousarray(row).tobytes())
    else:
        for p in stimuli:
            st = os.stat(p) if os.path.exists(p) else None
            h.update(f"{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()


def feature_key(recipe: dict[str, Any], backbone_weights: str | None, seed: int, stimuli_sha: str) -> str:
    """Cache key: everything that changes the features, nothing that does not."""
    parts = {
        "backbone": recipe.get("backbone"),
        "nodes": recipe.get("nodes"),
        "transform": recipe.get("transform"),
        "weights": backbone_weights,
        # the seed only matters for an untrained (randomly initialised) backbone
        "seed": seed if backbone_weights == "untrained" else None,
        "stimuli": stimuli_sha,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class _Rows:
    """A view of some items of a sequence (the stimuli still to compute)."""

    def __init__(self, seq: Sequence[Any], idx: np.ndarray):
        self.seq, self.idx = seq, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> Any:
        return self.seq[int(self.idx[i])]


class FeatureCache:
    """A resumable on-disk feature matrix.

    Parameters
    ----------
    path : path
        HDF5 file (created if missing; rebuilt if its key differs or it is unreadable).
    key : str
        From :func:`feature_key`.
    """

    def __init__(self, path: str | os.PathLike[str], key: str):
        self.path = Path(path)
        self.key = key

    def _prepare(self, n: int):
        import h5py

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            f = h5py.File(self.path, "a")
        except OSError as exc:  # a file truncated by a crash mid-write: start over
            log.warning("feature cache %s unreadable (%s); recomputing", self.path, exc)
            self.path.unlink()
            f = h5py.File(self.path, "a")
        stale = f.attrs.get("key") != self.key or ("done" in f and f["done"].shape != (n,))
        if stale:
            if len(f):
                log.warning("feature cache %s was made for other features or stimuli; recomputing", self.path)
            for name in list(f):
                del f[name]
            f.attrs["key"] = self.key
            f.create_dataset("done", data=np.zeros(n, dtype=bool))
        return f

    def missing(self, n: int) -> np.ndarray:
        """Rows still to compute."""
        with self._prepare(n) as f:
            return np.flatnonzero(~f["done"][()])

    def compute(
        self,
        make_extractor: Callable[[], Any],
        stimuli: Sequence[Any],
        *,
        batch_size: int = 32,
        show_progress: bool = True,
    ) -> None:
        """Compute and store features for every row not done yet.

        Parameters
        ----------
        make_extractor : callable
            Returns a :class:`berg.features.FeatureExtractor`; only called when rows are missing, so
            a complete cache never builds the backbone.
        stimuli : sequence
            From :func:`berg.stimuli.load_stimuli` (items decoded lazily).
        """
        from tqdm.auto import tqdm

        from berg.core.engine import iter_features

        n = len(stimuli)
        with self._prepare(n) as f:
            todo = np.flatnonzero(~f["done"][()])
            if todo.size == 0:
                return
            log.info("features: %d of %d stimuli to compute (cache %s)", todo.size, n, self.path)
            extractor = make_extractor()
            start = 0
            with tqdm(total=n, initial=n - todo.size, desc="features", unit="stim", disable=not show_progress) as bar:
                for block in iter_features(extractor, _Rows(stimuli, todo), batch_size=batch_size):
                    if "features" not in f:
                        width = int(block.shape[1])
                        f.create_dataset(
                            "features",
                            shape=(n, width),
                            dtype=np.float32,
                            chunks=(min(n, ROW_CHUNK), min(width, COL_CHUNK)),
                        )
                        f.attrs["n_features"] = width
                    rows = todo[start : start + len(block)]
                    if rows[-1] - rows[0] + 1 == len(rows):
                        f["features"][rows[0] : rows[-1] + 1] = block
                    else:  # gaps left by an interrupted run: h5py writes increasing index lists
                        f["features"][rows.tolist()] = block
                    f.flush()  # features reach the file before they are marked done
                    f["done"][rows.tolist()] = True
                    f.flush()
                    start += len(block)
                    bar.update(len(block))

    @contextmanager
    def open(self) -> Iterator[Any]:
        """The complete feature matrix as a read-only h5py dataset (raises if rows are missing)."""
        import h5py

        from berg.errors import BERGError

        with h5py.File(self.path, "r") as f:
            if f.attrs.get("key") != self.key or "features" not in f or not f["done"][()].all():
                raise BERGError(f"feature cache {self.path} is incomplete; call compute() first")
            yield f["features"]
