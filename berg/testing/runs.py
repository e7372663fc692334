"""Small ``berg run`` stores with known contents, and the damage tests do to them.

Used by the run-store tests and the hostile-input harness (issue 24: stores that verify what they
serve), so both damage the same store the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["toy_run_store", "toy_run_target", "flip_byte"]


def toy_run_target(target_hash: str = "h1") -> Any:
    """The one target of :func:`toy_run_store`: a flat space of 3 outputs (model ``toy``, subject 1)."""
    from berg.runner.zarr_store import TargetInfo

    return TargetInfo(
        name="toy",
        model_id="toy",
        subject=1,
        label="sub-01",
        shape=(3,),
        dims=["output"],
        coords={},
        attrs={"space": {"kind": "flat", "n_outputs": 3}},
        hash=target_hash,
    )


def toy_run_store(
    root: str | os.PathLike[str],
    *,
    target_hash: str = "h1",
    data: np.ndarray | None = None,
    n: int = 10,
    shard_size: int = 4,
) -> tuple[Any, Any, np.ndarray]:
    """A finished run store of one flat 3-output target, every shard written and marked done.

    Parameters
    ----------
    root : path
        The store folder is ``root / "run"``.
    target_hash : str
        The target's hash (change it to make the stored shards stale).
    data : (n, 3) float32 array, optional
        The responses (default ``arange(3 n).reshape(n, 3)``).
    n, shard_size : int
        Stimuli and stimuli per shard.

    Returns
    -------
    (RunStore, TargetInfo, ndarray)
        The store, its target and the data written.
    """
    from berg.runner.zarr_store import RunStore

    store = RunStore(Path(root) / "run")
    target = toy_run_target(target_hash)
    store.initialise(
        targets=[target],
        plan={"p": 1},
        plan_hash="ph",
        stimulus_ids=[f"s{i}" for i in range(n)],
        stimuli_fingerprint={"n": n},
        shard_size=shard_size,
        dtype="float32",
    )
    data = np.arange(n * 3, dtype=np.float32).reshape(n, 3) if data is None else data
    for s in range(-(-n // shard_size)):
        a, b = s * shard_size, min(n, (s + 1) * shard_size)
        chunks = store.write_shard(target.key, s, a, data[a:b])
        store.mark_done(target.key, s, {"target_hash": target.hash, "chunks": chunks})
    return store, target, data


def flip_byte(path: str | os.PathLike[str], *, keep_mtime: bool = False) -> None:
    """Invert one byte in the middle of a file (optionally keeping its mtime, as a careful forger would)."""
    path = Path(path)
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
