"""GEMM kernels of the linear maps: which one runs per shape, and weights streamed from the page cache.

Every projection and readout of the engine is an affine map ``y = x @ W.T + b`` with ``W`` of shape
``(n_out, n_in)``. Two things decide how fast it runs on a CPU, and neither is the same for every shape:

* the **kernel**: ``torch`` (``torch.addmm``/``mm``) or ``numpy`` (``np.matmul``, OpenBLAS);
* the **operand layout**: ``nk`` keeps ``W`` as stored, ``(n_out, n_in)`` C-contiguous, and passes its
  transpose; ``kn`` holds ``W.T`` C-contiguous, ``(n_in, n_out)``. On a quiet 2-core box numpy ran the
  NSD readout (100 x 250 @ 250 x 327,684) at 79.6 GFLOP/s with ``nk`` and 115.6 with ``kn`` (issue #22).

The choice is read from a small **kernel table** measured per shape, dtype and device
(:func:`measure_table`; ``make bench`` writes the shipped ``berg/core/kernel_table.json`` and
``berg tune`` a user table in berg's config folder, which wins). :func:`lookup` is a pure function of
``(n_in, n_out, batch, dtype, device)`` and the table: the nearest measured shape (in log space, ties
to the first entry) within a factor of :data:`COVER_FACTOR` in every dimension decides, and shapes no
entry covers get ``None`` (the engine's fixed rule then applies). Nothing is timed while encoding, so
reruns compute bit-identical outputs. ``BERG_READOUT_KERNEL`` forces a kernel (and optionally a layout).

**Streaming** (:class:`FileMatrix`, :func:`streamed_affine`): a matrix of at least ``BERG_STREAM_MB``
MiB (default :data:`DEFAULT_STREAM_MB`) is not held in memory. Each batch reads it block by block with
``os.pread`` into one reused buffer of :data:`BLOCK_BYTES` (two half-size blocks: one read by a
background thread while the other is multiplied, :data:`PREFETCH`), so the resident set holds that
buffer, not the matrix; the file stays hot in the page cache, which the kernel can drop under memory
pressure (memory-mapped pages would count as the process's own). Memory-mapped safetensors
projections are read from their file where they are (or from its copy in :func:`stream_layout`, see
below); in-memory readouts are first written once to an unnamed temporary file (:func:`spill`).

A block is always a band of the map's larger dimension (outputs when ``n_out >= n_in``, else inputs,
the products summed in a fixed order), so every block's GEMM keeps the smaller dimension whole. It is
**one** ``pread`` when the file holds that band as whole stored rows, i.e. when the file is in
:func:`stream_layout` (``nk`` for readouts, ``kn`` for projections); :func:`spill` always writes that
layout, so spilled weights cost one read per block and no extra disk. A file in the other layout (a
published ``(n_out, n_in)`` projection) is read with one ``pread`` per stored row of the band: on a
loaded 2-core box, reading a 115 MB ``(250, 115,200)`` matrix in 8 MB column bands took 19 ms with
per-row reads against 4.4 ms as whole-row bands, so such files are best derived once in
:func:`stream_layout`: the engine keeps such a copy beside a file in berg's cache (:func:`stream_copy`).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import math
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from berg.errors import InvalidParameterError, ModelLoadError

__all__ = [
    "KERNELS",
    "LAYOUTS",
    "CANDIDATES",
    "Choice",
    "KernelTable",
    "FileMatrix",
    "DEFAULT_SHAPES",
    "QUICK_SHAPES",
    "SCHEMA_VERSION",
    "shipped_table_path",
    "user_table_path",
    "read_table",
    "validate_table",
    "active_table",
    "lookup",
    "forced_choice",
    "measure_table",
    "write_table",
    "file_matrix",
    "spill",
    "copy_transposed",
    "stream_copy",
    "stream_threshold_bytes",
    "stream_layout",
    "affine",
    "streamed_affine",
]

log = logging.getLogger(__name__)

#: GEMM libraries the engine can use.
KERNELS = ("torch", "numpy")
#: Operand layouts: ``nk`` = ``W`` (n_out, n_in) C-contiguous, ``kn`` = ``W.T`` (n_in, n_out) C-contiguous.
LAYOUTS = ("nk", "kn")
#: Every (kernel, layout) candidate, named ``kernel_layout``.
CANDIDATES = tuple(f"{k}_{lay}" for k in KERNELS for lay in LAYOUTS)
SCHEMA_VERSION = 1
#: A table entry decides for shapes within this factor of it in every dimension (batch, n_in, n_out).
COVER_FACTOR = 4.0
#: Matrices at least this big (MiB) are streamed from disk on CPU (``BERG_STREAM_MB`` overrides; 0: never).
DEFAULT_STREAM_MB = 256
#: Bytes of the buffer a streamed matrix is read into (its resident cost), per thread.
BLOCK_BYTES = 16 << 20
#: Read block ``i + 1`` (into the buffer's other half) while block ``i`` is multiplied.
PREFETCH = True
_DTYPES = ("float32",)
_TABLE_NAME = "kernel_table.json"

#: ``(batch, n_in, n_out)`` shapes ``make bench`` / ``berg tune`` measure: the catalogue's readouts and projections.
DEFAULT_SHAPES: tuple[tuple[int, int, int], ...] = (
    (100, 250, 2 * 163_842),  # NSD fsaverage readout, both hemispheres
    (100, 250, 63 * 140),  # THINGS EEG2 readout, one repetition
    (64, 100, 108_219),  # fmri-bmd-s3d readout
    (32, 512, 1_685),  # img2fmri ROI readout
    (32, 100, 16_384),  # a mid-width readout
    (100, 460_800, 250),  # NSD / THINGS EEG2 ViT-B/32 projection
    (64, 1_048_576, 100),  # BMD-like projection (its 5,337,088 columns, a fifth of them)
    (32, 100_352, 512),  # a ResNet-like projection
)
#: Tiny shapes for ``berg tune --quick`` (seconds; a smoke test of the measurement, not a useful table).
QUICK_SHAPES: tuple[tuple[int, int, int], ...] = ((8, 32, 2048), (8, 4096, 16))


# ------------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Choice:
    """How one affine map is computed: ``kernel`` (``torch``/``numpy``), ``layout`` (``nk``/``kn``), and why."""

    kernel: str
    layout: str
    source: str = "rule"

    @property
    def name(self) -> str:
        """``kernel_layout`` (``numpy_kn``)."""
        return f"{self.kernel}_{self.layout}"


@dataclass(frozen=True)
class KernelTable:
    """A validated kernel table: where it came from, the machine it was measured on, and its entries.

    ``entries`` are ``(batch, n_in, n_out, dtype, device, best)`` tuples in file order.
    """

    path: str
    machine: dict[str, Any]
    entries: tuple[tuple[int, int, int, str, str, str], ...]


def shipped_table_path() -> Path:
    """The table shipped with berg (measured by ``make bench`` on the machine named inside it)."""
    return Path(__file__).resolve().parent / _TABLE_NAME


def user_table_path() -> Path:
    """The table ``berg tune`` writes (in berg's user config folder); it wins over the shipped one."""
    # berg's user config folder, as berg.hub.config.config_dir names it (core may not import berg.hub)
    from platformdirs import user_config_dir

    return Path(user_config_dir("berg", appauthor=False)) / "kernels.json"


def _bad(where: str, what: str) -> ModelLoadError:
    return ModelLoadError(
        f"kernel table {where}: {what}. Re-measure it with `berg tune` (or delete the file to use the "
        "table shipped with berg)"
    )


def _positive_int(value: Any, where: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(where, f"{field} must be a positive integer, got {value!r}")
    return value


def validate_table(data: Any, where: str = "<table>") -> KernelTable:
    """Check a table's schema and return it as a :class:`KernelTable`.

    Schema (``schema`` 1)::

        {"schema": 1,
         "machine": {"cpu_model": str, "cores": int, ...},     # where it was measured (free-form extras)
         "entries": [{"batch": int, "n_in": int, "n_out": int, "dtype": "float32", "device": "cpu",
                      "best": "numpy_kn", "gflops": {"torch_nk": float, ...}}, ...]}

    Raises
    ------
    ModelLoadError
        The field at fault, the valid values, and what to do.
    """
    if not isinstance(data, dict):
        raise _bad(where, f"must be a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA_VERSION:
        raise _bad(where, f"schema must be {SCHEMA_VERSION}, got {data.get('schema')!r}")
    machine = data.get("machine")
    if not isinstance(machine, dict) or not isinstance(machine.get("cpu_model"), str):
        raise _bad(where, "'machine' must be an object with a 'cpu_model' string (the machine it was measured on)")
    entries = data.get("entries")
    if not isinstance(entries, list) or not entries:
        raise _bad(where, "'entries' must be a non-empty list of measured shapes")
    out = []
    for i, e in enumerate(entries):
        at = f"entries[{i}]"
        if not isinstance(e, dict):
            raise _bad(where, f"{at} must be an object")
        b, n_in, n_out = (_positive_int(e.get(f), where, f"{at}.{f}") for f in ("batch", "n_in", "n_out"))
        dtype, device, best = e.get("dtype"), e.get("device"), e.get("best")
        if dtype not in _DTYPES:
            raise _bad(where, f"{at}.dtype is {dtype!r}; valid: {', '.join(_DTYPES)}")
        if not isinstance(device, str) or not device:
            raise _bad(where, f"{at}.device must be a device kind such as 'cpu' or 'cuda', got {device!r}")
        if best not in CANDIDATES:
            raise _bad(where, f"{at}.best is {best!r}; valid: {', '.join(CANDIDATES)}")
        gflops = e.get("gflops", {})
        if not isinstance(gflops, dict) or any(
            k not in CANDIDATES or not isinstance(v, (int, float)) for k, v in gflops.items()
        ):
            raise _bad(where, f"{at}.gflops must map candidates ({', '.join(CANDIDATES)}) to numbers")
        out.append((b, n_in, n_out, dtype, device, best))
    return KernelTable(where, dict(machine), tuple(out))


def read_table(path: str | os.PathLike[str]) -> KernelTable:
    """Read and validate a table file (see :func:`validate_table`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _bad(str(path), f"cannot be read ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise _bad(str(path), f"is not valid JSON ({exc})") from exc
    return validate_table(data, str(path))


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int) -> KernelTable:
    return read_table(path)


def active_table() -> KernelTable | None:
    """The table in effect: the user's (``berg tune``) if there is one, else the shipped one, else ``None``."""
    for path in (user_table_path(), shipped_table_path()):
        try:
            st = path.stat()
        except OSError:
            continue
        return _read_cached(str(path), st.st_mtime_ns, st.st_size)
    return None


def device_kind(device: Any) -> str:
    """``"cpu"``, ``"cuda"``, ``"mps"``... (``"cuda:1"`` -> ``"cuda"``)."""
    return str(device).split(":", 1)[0]


def lookup(
    table: KernelTable | None, n_in: int, n_out: int, batch: int, *, dtype: str = "float32", device: str = "cpu"
) -> Choice | None:
    """The table's choice for one shape, or ``None`` when no entry of this dtype and device covers it.

    Pure: the nearest entry by summed squared log2 ratios of ``(batch, n_in, n_out)`` (ties: the first in
    the file) decides if it lies within :data:`COVER_FACTOR` in every dimension.
    """
    if table is None:
        return None
    kind = device_kind(device)
    q = (math.log2(max(1, batch)), math.log2(max(1, n_in)), math.log2(max(1, n_out)))
    limit = math.log2(COVER_FACTOR)
    best, best_d = None, math.inf
    for b, i, o, dt, dev, choice in table.entries:
        if dt != dtype or dev != kind:
            continue
        diffs = [abs(a - c) for a, c in zip(q, (math.log2(b), math.log2(i), math.log2(o)))]
        if max(diffs) > limit:
            continue
        d = sum(x * x for x in diffs)
        if d < best_d:
            best, best_d = choice, d
    if best is None:
        return None
    kernel, layout = best.split("_")
    return Choice(kernel, layout, f"table {table.path}")


def forced_choice(value: str | None, fallback_layout: str) -> Choice | None:
    """``BERG_READOUT_KERNEL``'s choice: ``None`` for ``auto``; a kernel alone keeps ``fallback_layout``."""
    if value in (None, "auto"):
        return None
    if value in KERNELS:
        return Choice(value, fallback_layout, "BERG_READOUT_KERNEL")
    if value in CANDIDATES:
        kernel, layout = value.split("_")
        return Choice(kernel, layout, "BERG_READOUT_KERNEL")
    raise InvalidParameterError(
        f"BERG_READOUT_KERNEL={value!r}; valid: auto, {', '.join(KERNELS)}, {', '.join(CANDIDATES)}"
    )


# ------------------------------------------------------------------------------------------ kernels
def _as_tensor(array: np.ndarray):
    import torch

    with warnings.catch_warnings():
        # memory-mapped arrays are read-only; torch only warns, berg never writes through them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(array))


def operand(weight: np.ndarray, layout: str) -> np.ndarray:
    """The GEMM operand of ``weight`` (n_out, n_in) in ``layout``: ``(n_in, n_out)`` to multiply ``x`` by.

    ``nk``: a transposed view of a C-contiguous ``W``; ``kn``: a C-contiguous ``W.T``. A copy is made only
    when ``weight`` is not already held that way.
    """
    if layout == "kn":
        return np.ascontiguousarray(weight.T)
    return np.ascontiguousarray(weight).T


def affine(x: Any, op: np.ndarray, bias: np.ndarray, kernel: str, op_t: Any = None, bias_t: Any = None):
    """``x @ op + bias`` on CPU with ``kernel``; ``x`` a torch tensor (no grad), the result a torch tensor.

    ``op`` is an :func:`operand`; ``op_t``/``bias_t`` are its torch views when the caller keeps them.
    """
    import torch

    if kernel == "numpy":
        y = np.matmul(x.numpy(), op)
        y += bias
        return torch.from_numpy(y)
    return torch.addmm(_as_tensor(bias) if bias_t is None else bias_t, x, _as_tensor(op) if op_t is None else op_t)


# ------------------------------------------------------------------------------------------ streaming
def stream_layout(n_out: int, n_in: int) -> str:
    """The file layout whose streamed blocks are whole stored rows (one ``pread`` per block).

    Blocks are bands of the larger dimension (:func:`_block_plan`): ``nk`` (``W`` stored) when
    ``n_out >= n_in`` (readouts: a block is rows of ``W``), ``kn`` (``W.T`` stored) otherwise
    (projections: a block is rows of ``W.T``, summed over). A pure function of the shape.
    """
    return "nk" if int(n_out) >= int(n_in) else "kn"


def stream_threshold_bytes() -> int | None:
    """Matrices at least this many bytes are streamed (``BERG_STREAM_MB``; ``None``: never)."""
    from berg.env import env_int

    mb = env_int("BERG_STREAM_MB", DEFAULT_STREAM_MB)
    return None if mb <= 0 else mb << 20


class FileMatrix:
    """A float32 little-endian matrix stored row-major in a file, read in blocks with ``os.pread``.

    Parameters
    ----------
    source : path or open binary file
        The file (a file object is kept open: an unnamed temporary file lives as long as it).
    offset : int
        Byte offset of element ``[0, 0]``.
    shape : (rows, cols)
        The stored matrix.
    transposed : bool
        ``False``: the stored matrix is the map's ``W`` (n_out, n_in) (layout ``nk``); ``True``: it is
        ``W.T`` (layout ``kn``).
    """

    def __init__(self, source: str | os.PathLike[str] | IO[bytes], offset: int, shape: tuple[int, int], *, transposed):
        self.offset, self.shape, self.transposed = int(offset), (int(shape[0]), int(shape[1])), bool(transposed)
        if isinstance(source, (str, os.PathLike)):
            self.path, self._file = str(source), None
        else:
            self.path, self._file = getattr(source, "name", None), source
        self._fd: int | None = None

    @property
    def layout(self) -> str:
        """``kn`` when the file holds ``W.T``, else ``nk``."""
        return "kn" if self.transposed else "nk"

    @property
    def contiguous_blocks(self) -> bool:
        """Whether each streamed block is one read: the file is in :func:`stream_layout`."""
        return self.layout == stream_layout(self.n_out, self.n_in)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * 4

    @property
    def n_out(self) -> int:
        return self.shape[1] if self.transposed else self.shape[0]

    @property
    def n_in(self) -> int:
        return self.shape[0] if self.transposed else self.shape[1]

    def fileno(self) -> int:
        if self._file is not None:
            return self._file.fileno()
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return self._fd

    def close(self) -> None:
        """Close the file (a later read opens a path again; an unnamed file is gone)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._file is not None:
            self._file.close()

    def __del__(self) -> None:  # the fd of a path is ours; a file object closes itself
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            except Exception:  # noqa: BLE001 - at interpreter exit os may already be torn down
                pass

    def read(self, r0: int, r1: int, c0: int, c1: int, out: np.ndarray) -> np.ndarray:
        """Stored rows ``r0:r1``, columns ``c0:c1`` into ``out`` (a C-contiguous float32 buffer view).

        Whole rows are one read; a column band is one read per row (see :attr:`contiguous_blocks`).
        (Copying a band out of a map of the file and dropping its pages with ``madvise`` was tried:
        page-cache folios larger than a page get mapped whole, and the peak resident set grew far
        beyond the band.)
        """
        fd, rows, cols = self.fileno(), self.shape[0], self.shape[1]
        if not (0 <= r0 <= r1 <= rows and 0 <= c0 <= c1 <= cols) or out.shape != (r1 - r0, c1 - c0):
            raise ValueError(f"block [{r0}:{r1}, {c0}:{c1}] of {self.shape} does not fit a buffer {out.shape}")
        if out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError("blocks are read into a C-contiguous float32 buffer")
        flat = memoryview(out.reshape(-1)).cast("B")
        if c0 == 0 and c1 == cols:
            self._pread_exact(fd, flat, self.offset + r0 * cols * 4)
            return out
        width, stride = (c1 - c0) * 4, cols * 4
        pos, preadv = self.offset + (r0 * cols + c0) * 4, os.preadv
        for i in range(r1 - r0):
            piece = flat[i * width : (i + 1) * width]
            if preadv(fd, [piece], pos) != width:  # a short read (or the end of the file): finish or explain
                self._pread_exact(fd, piece, pos)
            pos += stride
        return out

    @property
    def reads_per_block(self) -> int:
        """``pread`` calls per streamed block: 1 when the file is in :func:`stream_layout`, else one per
        stored row (a block is then a column band of every stored row)."""
        return 1 if self.contiguous_blocks else self.shape[0]

    def _pread_exact(self, fd: int, buf: memoryview, pos: int) -> None:
        done = 0
        while done < len(buf):
            n = os.preadv(fd, [buf[done:]], pos + done)
            if n <= 0:
                raise ModelLoadError(
                    f"weights file {self.path or '<temporary>'} ended at byte {pos + done:,}; "
                    f"expected a {self.shape} float32 matrix at offset {self.offset:,} (truncated file?)"
                )
            done += n

    def __repr__(self) -> str:
        return f"FileMatrix({self.path!r}, offset={self.offset}, shape={self.shape}, layout={self.layout!r})"


def file_matrix(weight: np.ndarray) -> FileMatrix | None:
    """Where a memory-mapped ``weight`` (n_out, n_in) lives in its file, or ``None`` (in memory, not contiguous).

    Works for views of :class:`numpy.memmap` (berg's safetensors reader maps files that way): the byte
    offset is the view's address within the mapping plus the mapping's start in the file.
    """
    import mmap

    if not isinstance(weight, np.memmap) or weight.dtype != np.dtype("<f4"):
        return None
    mm, path = getattr(weight, "_mmap", None), getattr(weight, "filename", None)
    if mm is None or not path:  # a copy out of a map (fancy indexing) has no mapping left
        return None
    if weight.flags.c_contiguous:
        transposed, view = False, weight
    elif weight.T.flags.c_contiguous:
        transposed, view = True, weight.T
    else:
        return None
    start = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    file_start = int(weight.offset) - int(weight.offset) % mmap.ALLOCATIONGRANULARITY
    offset = view.ctypes.data - start + file_start
    return FileMatrix(path, offset, view.shape, transposed=transposed)


def spill(
    weight: np.ndarray, layout: str, folder: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, FileMatrix]:
    """Write ``weight`` (n_out, n_in) to an unnamed temporary file in ``layout``; return a map of it and its reader.

    The returned array is ``weight`` as a read-only memory map of that file (no resident pages until
    touched), so the caller can drop the in-memory copy. The file has no name (it disappears with the
    process) and is written in row chunks (no second full copy in memory). ``folder`` should be on a
    disk (berg's cache); the system temporary folder is used when it is not writable. Pass
    ``layout=stream_layout(n_out, n_in)`` (the engine does) so every streamed block is one read.
    """
    stored = weight.T if layout == "kn" else weight
    rows, cols = stored.shape
    fh = None
    for d in ([folder] if folder is not None else []) + [None]:
        try:
            if d is not None:
                Path(d).mkdir(parents=True, exist_ok=True)
            fh = tempfile.TemporaryFile(dir=d, prefix=".berg-weights-")
            break
        except OSError as exc:
            log.debug("cannot spill weights to %s (%s); trying the system temporary folder", d, exc)
    assert fh is not None
    chunk = max(1, (BLOCK_BYTES // 4) // max(1, cols))
    for a in range(0, rows, chunk):
        np.ascontiguousarray(stored[a : a + chunk], dtype="<f4").tofile(fh)
    fh.flush()
    mm = np.memmap(fh, dtype="<f4", mode="r", shape=(rows, cols))
    return (mm.T if layout == "kn" else mm), FileMatrix(fh, 0, (rows, cols), transposed=layout == "kn")


def copy_transposed(src: FileMatrix, fh: IO[bytes], *, block_bytes: int | None = None) -> int:
    """Write the transpose of ``src``'s stored matrix (float32, little-endian) to ``fh`` at its position.

    A file in the other layout than :func:`stream_layout` (a published ``(n_out, n_in)`` projection)
    becomes one whose streamed blocks are single reads: a writer of a derived file (e.g. a folded
    projection, written once) passes the rows it wrote to an unnamed temporary file here and stores
    the result as ``W.T``. ``src`` is read once in column bands (one ``pread`` per stored row), each band
    is transposed in memory and written as whole rows, so memory holds two blocks of ``block_bytes``
    (default :data:`BLOCK_BYTES`) whatever the matrix size.

    Returns
    -------
    int
        Bytes written (the matrix's size).
    """
    rows, cols = src.shape
    width = max(1, ((BLOCK_BYTES if block_bytes is None else block_bytes) // 4) // max(1, rows))
    width = min(width, max(1, cols))
    band = np.empty(rows * width, dtype=np.float32)
    flipped = np.empty(rows * width, dtype=np.float32)
    written = 0
    for a in range(0, cols, width):
        e = min(cols, a + width)
        tile = src.read(0, rows, a, e, band[: rows * (e - a)].reshape(rows, e - a))
        out = flipped[: rows * (e - a)].reshape(e - a, rows)
        np.copyto(out, tile.T)
        view = memoryview(out.reshape(-1)).cast("B")
        done = 0
        while done < len(view):  # a raw file may write part of a buffer
            n = fh.write(view[done:])
            done += len(view) - done if n is None else n
        written += done
    return written


#: Folder beside a cached weights file that holds its copies in :func:`stream_layout` (``.berg-``: berg's
#: own bookkeeping, so ``berg cache list``/``verify`` skip it; ``berg cache clear`` removes it with the model).
STREAM_COPY_DIR = ".berg-stream"
_STREAM_COPY_VERSION = 1


def _stream_copy_record(src: Path, fm: FileMatrix) -> dict[str, Any]:
    st = src.stat()
    return {
        "version": _STREAM_COPY_VERSION,
        "source": {"name": src.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino},
        "offset": fm.offset,
        "shape": list(fm.shape),
        "layout": "nk" if fm.transposed else "kn",  # the copy's
    }


def stream_copy(fm: FileMatrix, cache_root: str | os.PathLike[str] | None) -> FileMatrix:
    """``fm`` itself when its blocks are single reads; else its copy in :func:`stream_layout`, made once.

    A cached ``(n_out, n_in)`` projection (e.g. a published native layout's 250 x 460,800 one) is otherwise
    read with one ``pread`` per stored row of every block (14k per batch). Projections berg folds itself
    (BERG's NSD/EEG catalogue, BMD) are written in stream layout and never need a copy. The copy (:func:`copy_transposed`,
    raw float32) lives in :data:`STREAM_COPY_DIR` beside the source, is written under a temporary name,
    fsync'ed and renamed into place (:func:`berg.fsutil.atomic_path`), and is recorded in a JSON file
    beside it: the source's sha256, size, mtime and inode, the matrix's offset, shape and layout, and
    the copy's sha256, size and mtime. It is reused only while the source's size, mtime and inode and the
    copy's size and mtime match that record (the store's rule for big unchanged files: no re-hash per
    load); otherwise it is made again. **Disk cost:** one more copy of each such matrix (its own size),
    removed with the model's cache folder; making a copy, or finding a file already in stream layout
    beside a copy folder, removes the copies whose source file is gone (a re-derived file gets a new
    name: e.g. the copies of folds written before they were stored in stream layout).

    Copies are made only for files inside ``cache_root`` (berg's cache) whose folder is writable; other
    files (a user's own, a read-only cache) keep the per-row reads, with a debug message.
    """
    from berg.fsutil import atomic_path, atomic_write_text, sha256_file

    if fm.contiguous_blocks and cache_root is not None and isinstance(fm.path, (str, os.PathLike)):
        # A re-derived file in stream layout (a newer fold version) leaves its predecessor's copy behind.
        leftovers = Path(fm.path).resolve().parent / STREAM_COPY_DIR
        if leftovers.is_dir():
            _drop_orphan_copies(leftovers)
        return fm
    if fm.contiguous_blocks or fm.path is None or cache_root is None:
        return fm
    src = Path(fm.path).resolve()
    try:
        src.relative_to(Path(cache_root).resolve())
    except ValueError:
        log.debug("%s is outside berg's cache: streamed with a read per stored row", src)
        return fm
    folder = src.parent / STREAM_COPY_DIR
    stem = f"{src.name}.{fm.offset}.{fm.shape[0]}x{fm.shape[1]}.{'nk' if fm.transposed else 'kn'}"
    data, meta = folder / f"{stem}.f32", folder / f"{stem}.json"
    want = _stream_copy_record(src, fm)
    copy = FileMatrix(data, 0, fm.shape[::-1], transposed=not fm.transposed)
    try:
        rec = json.loads(meta.read_text(encoding="utf-8"))
        st = data.stat()
        same_matrix = all(rec.get(k) == want[k] for k in ("version", "offset", "shape", "layout"))
        same_source = {k: v for k, v in rec["source"].items() if k != "sha256"} == want["source"]
        same_copy = rec["copy"]["size"] == st.st_size == fm.nbytes and rec["copy"]["mtime_ns"] == st.st_mtime_ns
        if same_matrix and same_source and same_copy:
            return copy
        log.info("the stream-layout copy of %s does not match its record; making it again", src)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no copy yet (or an unreadable record): make it
    try:
        folder.mkdir(exist_ok=True)
        source_sha = sha256_file(src)
        with atomic_path(data) as tmp:
            with open(tmp, "wb") as fh:
                copy_transposed(fm, fh)
        st = data.stat()
        record = {
            **want,
            "source": {**want["source"], "sha256": source_sha},
            "copy": {"sha256": sha256_file(data), "size": st.st_size, "mtime_ns": st.st_mtime_ns},
        }
        if _stream_copy_record(src, fm) != want:  # the source changed while it was copied
            raise OSError(f"{src} changed while it was copied")
        atomic_write_text(meta, json.dumps(record, indent=1) + "\n")
    except OSError as exc:
        log.debug("no stream-layout copy of %s (%s): streamed with a read per stored row", src, exc)
        return fm
    log.info("wrote %s (%.1f MB): %s streamed one read per block", data, fm.nbytes / 1e6, src.name)
    _drop_orphan_copies(folder)
    return copy


def _drop_orphan_copies(folder: Path) -> None:
    """Remove copies whose source is gone (a re-derived file has a new name): they would stay forever (GBs)."""
    for meta in folder.glob("*.json"):
        try:
            name = json.loads(meta.read_text(encoding="utf-8"))["source"]["name"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not (folder.parent / name).exists():
            for stale in (meta.with_suffix(".f32"), meta):
                try:
                    stale.unlink()
                    log.info("removed %s (its source %s is gone)", stale, name)
                except OSError:
                    pass


def _block_plan(fm: FileMatrix, block_bytes: int) -> tuple[str, int]:
    """Split along outputs (no accumulation) when ``n_out >= n_in``, else along inputs; block width."""
    if fm.n_out >= fm.n_in:
        return "out", max(1, (block_bytes // 4) // fm.n_in)
    return "in", max(1, (block_bytes // 4) // fm.n_out)


_PREFETCH_POOL = None


def _prefetch_pool():
    """One reader thread for the whole process (``os.pread`` releases the GIL while it copies)."""
    global _PREFETCH_POOL
    if _PREFETCH_POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _PREFETCH_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="berg-weights-read")
    return _PREFETCH_POOL


def streamed_affine(
    x: np.ndarray,
    fm: FileMatrix,
    bias: np.ndarray,
    kernel: str,
    buffer: np.ndarray,
    *,
    prefetch: bool | None = None,
) -> np.ndarray:
    """``x @ W.T + bias`` with ``W`` read from ``fm`` block by block into ``buffer`` (float32, reused).

    With ``prefetch`` (default :data:`PREFETCH`) the buffer is split in two halves: a reader thread fills
    one with block ``i + 1`` while block ``i`` is multiplied, so the copy from the page cache overlaps the
    GEMM; the resident cost stays the buffer. Blocks are multiplied and summed in a fixed order, so
    results are reproducible (and equal to a serial pass over blocks of half the buffer).

    A block held as rows of ``W`` (its transpose is the operand) is multiplied by numpy even when
    ``kernel`` is ``torch``: on the NSD readout block (100 x 250 @ 250 x 8,388) torch ran at 30
    GFLOP/s with that operand against 180 for numpy (loaded 2-core box, best of 150), and numpy
    matched torch or beat it on every other block shape measured. The rule depends only on the
    file's layout and shape, so reruns stay bit-identical.

    Parameters
    ----------
    x : (b, n_in) float32 array
    fm : FileMatrix
    bias : (n_out,) float32 array
    kernel : "numpy" or "torch"
    buffer : float32 array
        Its size sets the block size (:data:`BLOCK_BYTES` in the engine).
    prefetch : bool, optional

    Returns
    -------
    (b, n_out) float32 array.
    """
    import torch

    b = x.shape[0]
    rows, cols = fm.shape
    if x.shape[1] != fm.n_in:
        raise ValueError(f"inputs have {x.shape[1]} columns, the streamed weights {fm.n_in}")
    prefetch = PREFETCH if prefetch is None else prefetch
    # the smallest block is one stored row/column band of the other dimension
    smallest = fm.n_in if fm.n_out >= fm.n_in else fm.n_out
    if prefetch and buffer.size // 2 >= smallest:
        halves = [buffer[: buffer.size // 2], buffer[buffer.size // 2 :]]
    elif buffer.size >= smallest:
        halves = [buffer]
    else:  # a buffer smaller than one band: this call reads into a band-sized one
        halves = [np.empty(smallest, dtype=np.float32)]
    along, width = _block_plan(fm, halves[0].size * 4)
    n = fm.n_out if along == "out" else fm.n_in
    spans = [(a, min(n, a + width)) for a in range(0, n, width)]

    def read(i: int) -> np.ndarray:
        a, e = spans[i]
        buf = halves[i % len(halves)]
        if along == "out":
            if fm.transposed:  # file holds W.T (n_in, n_out): a column band -> (n_in, e - a)
                return fm.read(0, rows, a, e, buf[: rows * (e - a)].reshape(rows, e - a))
            return fm.read(a, e, 0, cols, buf[: (e - a) * cols].reshape(e - a, cols)).T  # rows of W
        if fm.transposed:  # rows a:e of W.T -> (e - a, n_out)
            return fm.read(a, e, 0, cols, buf[: (e - a) * cols].reshape(e - a, cols))
        return fm.read(0, rows, a, e, buf[: rows * (e - a)].reshape(rows, e - a)).T  # columns of W

    # the block's operand is a transposed view (rows of W) when the file holds W: numpy then
    block_kernel = "numpy" if not fm.transposed else kernel

    def mm(a: np.ndarray, w: np.ndarray) -> np.ndarray:
        if block_kernel == "numpy":
            return np.matmul(a, w)
        return (torch.from_numpy(a) @ torch.from_numpy(w)).numpy()

    out = np.empty((b, fm.n_out), dtype=np.float32) if along == "out" else np.zeros((b, fm.n_out), np.float32)
    pool = _prefetch_pool() if len(halves) == 2 and len(spans) > 1 else None
    pending = pool.submit(read, 0) if pool is not None else None
    for i, (a, e) in enumerate(spans):
        if pool is not None:
            tile = pending.result()
            if i + 1 < len(spans):
                pending = pool.submit(read, i + 1)  # the other half: never the tile in use
        else:
            tile = read(i)
        if along == "out":
            out[:, a:e] = mm(x, tile)
        else:
            out += mm(x[:, a:e], tile)
    out += bias
    return out


# ------------------------------------------------------------------------------------------ measuring
def _best_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows (tables and benchmarks record it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """The facts a table's numbers depend on: CPU model, cores, threads, library versions, load average."""
    import torch

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "node": platform.node(),
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "measured": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    try:
        info["blas"] = str(np.show_config(mode="dicts")["Build Dependencies"]["blas"].get("name"))
    except Exception:  # noqa: BLE001 - older numpy has no dict mode; the version is enough
        pass
    if hasattr(os, "getloadavg"):
        info["load_before"] = round(os.getloadavg()[0], 2)
    return info


def measure_shape(batch: int, n_in: int, n_out: int, repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """GFLOP/s of every candidate on one float32 shape (CPU, random data, best of ``repeats``)."""
    import torch

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, n_in), dtype=np.float32)
    w = rng.standard_normal((n_out, n_in), dtype=np.float32)
    bias = rng.standard_normal(n_out, dtype=np.float32)
    xt, bt = torch.from_numpy(x), torch.from_numpy(bias)
    flops = 2.0 * batch * n_in * n_out
    out = {}
    for layout in LAYOUTS:
        op = operand(w, layout)
        op_t = _as_tensor(op)
        for kernel in KERNELS:
            t = _best_time(functools.partial(affine, xt, op, bias, kernel, op_t, bt), repeats)
            out[f"{kernel}_{layout}"] = flops / t / 1e9
        del op, op_t  # one operand copy at a time
    return {k: round(out[k], 2) for k in CANDIDATES}


def measure_table(
    shapes: Iterable[tuple[int, int, int]] = DEFAULT_SHAPES,
    *,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every candidate on each ``(batch, n_in, n_out)`` and return a table (see :func:`validate_table`).

    The machine, library versions and the load average before measuring are recorded in it: a table
    measured on a busy machine says so.
    """
    machine = machine_info()
    entries = []
    for batch, n_in, n_out in shapes:
        g = measure_shape(batch, n_in, n_out, repeats)
        best = max(CANDIDATES, key=lambda c: (g[c], -CANDIDATES.index(c)))
        entries.append(
            {
                "batch": batch,
                "n_in": n_in,
                "n_out": n_out,
                "dtype": "float32",
                "device": "cpu",
                "best": best,
                "gflops": g,
            }
        )
        if progress is not None:
            progress(
                f"{(batch, n_in, n_out)}: {best} ({g[best]:.1f} GFLOP/s; "
                + ", ".join(f"{k} {v:.1f}" for k, v in g.items())
                + ")"
            )
    if hasattr(os, "getloadavg"):
        machine["load_after"] = round(os.getloadavg()[0], 2)
    table = {"schema": SCHEMA_VERSION, "machine": machine, "entries": entries}
    validate_table(table, "<measured>")
    return table


def write_table(table: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Validate ``table`` and write it to ``path`` atomically (a reader never sees half a table)."""
    from berg.fsutil import atomic_write_text

    validate_table(table, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(table, indent=1) + "\n")
    _read_cached.cache_clear()
    return path


def shapes_arg(values: Sequence[str]) -> list[tuple[int, int, int]]:
    """``["100x250x8820", ...]`` (batch x n_in x n_out) -> shape tuples; a clear error for anything else."""
    out = []
    for v in values:
        parts = str(v).lower().split("x")
        if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise InvalidParameterError(
                f"shape {v!r} is not BATCHxN_INxN_OUT with positive integers (e.g. 100x250x8820)"
            )
        out.append(tuple(int(p) for p in parts))
    return out


# ------------------------------------------------------------------------------------------ one map, ready to run
class AffineOp:
    """One affine map ``y = x @ W.T + b`` ready to run: kernel and operand layout chosen, weights held or streamed.

    Parameters
    ----------
    weight : (n_out, n_in) float32 array
        Held as the chosen layout's operand (copied only if not already laid out that way), or, when
        ``stored`` is given, left where it is (a memory map nobody touches) and streamed from ``stored``.
    bias : (n_out,) array
    choice : Choice
    device : str
        Non-CPU devices always run ``torch.addmm`` on device-resident weights (never streamed).
    stored : FileMatrix, optional
        Stream the weights from this file on CPU (see :func:`streamed_affine`).
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray, choice: Choice, *, device: str = "cpu", stored=None):
        self.choice = choice
        self.n_out, self.n_in = (int(s) for s in weight.shape)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.device = str(device)
        self.stored = stored if device_kind(device) == "cpu" else None
        self._weight = weight
        self._op_t = self._bias_t = None
        if self.stored is None:
            self.op = operand(weight, choice.layout)
            self._weight = None  # the operand is the one copy kept
            self._op_t, self._bias_t = self._tensors(self.op)
        else:
            self.op = None

    def _tensors(self, op: np.ndarray):
        t, b = _as_tensor(op), _as_tensor(self.bias)
        if device_kind(self.device) != "cpu":
            t, b = t.to(self.device), b.to(self.device)
        return t, b

    @property
    def streamed(self) -> bool:
        """Whether the weights are read from a file per batch."""
        return self.stored is not None

    @property
    def weight(self) -> np.ndarray:
        """``W`` (n_out, n_in): a view of the held operand, or the (untouched) memory map when streamed."""
        return self.op.T if self.op is not None else self._weight

    def __call__(self, x, buffer: Callable[[], np.ndarray] | None = None):
        """Apply to a ``(b, n_in)`` torch tensor; differentiable (``torch.addmm``) when ``x`` requires grad."""
        import torch

        if self.op is None and (x.requires_grad or buffer is None):
            # gradients need the whole matrix: map it (pages it in; the inference path never does)
            if self._op_t is None:
                self._op_t, self._bias_t = self._tensors(operand(self._weight, self.stored.layout))
            return torch.addmm(self._bias_t, x, self._op_t)
        if x.requires_grad or device_kind(self.device) != "cpu":
            return torch.addmm(self._bias_t, x, self._op_t)
        if self.op is None:
            xs = x.numpy()
            return torch.from_numpy(streamed_affine(xs, self.stored, self.bias, self.choice.kernel, buffer()))
        return affine(x, self.op, self.bias, self.choice.kernel, self._op_t, self._bias_t)
