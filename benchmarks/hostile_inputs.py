"""Every class of hostile input berg must survive (issue 10), run one by one with measured memory.

Usage::

    .venv/bin/python benchmarks/hostile_inputs.py [-v] [--only PREFIX] [--timeout 60]

prints, on its last line::

    bad inputs tried N, BERGError M, other exceptions 0, code executed 0, files outside the cache touched 0, peak memory of any single bad file < 100 MB

and exits non-zero when any of those figures is not met (or a case that must be read without error
was not). ``-v`` lists every case on stderr.

How a case is judged. Cases run in a worker process, one after the other; for each, the worker resets
the kernel's peak-RSS mark (``/proc/self/clear_refs``), starts tracemalloc, runs the case and records
``max(tracemalloc peak, VmHWM - RSS before)``. A worker that dies (segfault, kill) is restarted after
the case it was running, which then counts as an "other exception". Each case gets a fresh sandbox:
``ctx.cache`` (where the case writes its bad files, the only place berg may write), ``ctx.outside``
(decoy files whose names, sizes, mtimes and sha256 must not change) and ``ctx.marker`` (the file a
malicious payload tries to create: "code executed" counts the cases after which it exists).

Adding cases (other parts of berg: store, stimuli, outputs)::

    # in this file, or in a module benchmarks/_hostile_cases_<topic>.py that this script imports
    import hostile_inputs as H

    @H.case("store", "symlinked-part-file")          # expect="error" (default): must raise a BERGError
    def _(ctx):                                       # expect="ok": must return without error
        ...                                           # expect="either": BERGError or a normal return

``prepare=func(ctx)`` (decorator argument or ``Case`` field) writes the bad input before the
measurement starts, so the peak memory is that of reading it, not of making it. A plugin module may
instead define ``CASES = [H.Case(...), ...]``. The legacy pickle payloads are also
used by tests/test_legacy_hostile.py (``LEGACY_PAYLOADS``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # plugins `import hostile_inputs` and must see this very module
    sys.modules.setdefault("hostile_inputs", sys.modules["__main__"])

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MB = 1 << 20
PEAK_LIMIT = 300 * MB  # issue 24: no single bad input may cost more than this


class Accepted(AssertionError):
    """Raised by a case's own check when berg returned something wrong without a word."""


# --------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class Context:
    """A fresh sandbox for one case."""

    root: Path
    cache: Path
    outside: Path
    marker: Path


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: ``run(ctx)`` feeds it to berg; ``expect`` is "error", "ok" or "either".

    ``expect="error"``: the case passes only when berg raises a :class:`~berg.errors.BERGError` whose
    message matches ``match`` (a regex: what to do, the valid values), when given. ``expect="ok"``: berg
    must return, and ``run`` checks the result itself (raising :class:`Accepted` or ``AssertionError``
    when it is wrong: a "wrong silent result"). ``xfail``: the case is known to fail (the issue's words);
    it is run and reported as an expected failure, never counted as passing, and flagged when it passes.
    """

    group: str
    name: str
    run: Callable[[Context], Any]
    expect: str = "error"
    prepare: Callable[[Context], Any] | None = None  # writes the bad input; not measured, must not fail
    match: str | None = None
    xfail: str | None = None

    @property
    def id(self) -> str:
        return f"{self.group}/{self.name}"


CASES: list[Case] = []


def case(
    group: str,
    name: str | None = None,
    expect: str = "error",
    prepare: Callable | None = None,
    *,
    match: str | None = None,
    xfail: str | None = None,
) -> Callable:
    """Decorator registering ``func(ctx)`` as a hostile case (``prepare(ctx)`` runs first, unmeasured)."""

    def register(func: Callable[[Context], Any]) -> Callable[[Context], Any]:
        CASES.append(Case(group, name or func.__name__, func, expect, prepare, match, xfail))
        return func

    return register


def add_cases(cases: list[Case]) -> None:
    """Register several cases at once (e.g. a plugin's ``CASES`` list)."""
    CASES.extend(cases)


# --------------------------------------------------------------------------- pickle crafting

P2, P4 = b"\x80\x02", b"\x80\x04"
STOP = b"."
MARK, TUPLE, TUPLE1, TUPLE2, TUPLE3 = b"(", b"t", b"\x85", b"\x86", b"\x87"
EMPTY_LIST, EMPTY_DICT, EMPTY_TUPLE, EMPTY_SET = b"]", b"}", b")", b"\x8f"
APPEND, APPENDS, SETITEM, SETITEMS, ADDITEMS = b"a", b"e", b"s", b"u", b"\x90"
REDUCE, BUILD, NEWOBJ, MEMOIZE, POP, DUP, NONE = b"R", b"b", b"\x81", b"\x94", b"0", b"2", b"N"


def u(s: str) -> bytes:
    """BINUNICODE."""
    b = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(b)) + b


def g(module: str, name: str) -> bytes:
    """GLOBAL (text form, protocols 0-3)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def sg(module: str, name: str) -> bytes:
    """STACK_GLOBAL (protocol 4)."""
    return u(module) + u(name) + b"\x93"


def i(n: int) -> bytes:
    """The smallest integer opcode for n."""
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return (b"\x8a" + bytes([len(raw)]) if len(raw) < 256 else b"\x8b" + struct.pack("<i", len(raw))) + raw


def get(k: int) -> bytes:
    return b"h" + bytes([k]) if k < 256 else b"j" + struct.pack("<I", k)


def binbytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def tup(*parts: bytes) -> bytes:
    return MARK + b"".join(parts) + TUPLE


def dtype_pickle(name: str, order: str = "<") -> bytes:
    return (
        g("numpy", "dtype")
        + u(name)
        + b"\x89\x88"
        + TUPLE3
        + REDUCE
        + tup(i(3), u(order), NONE, NONE, NONE, i(-1), i(-1), i(0))
        + BUILD
    )


def array_pickle(shape: tuple[int, ...], dtype: str | bytes, data: bytes, *, order: str = "<") -> bytes:
    """numpy's array pickle (``_reconstruct`` + BUILD) with the given state; ``data`` is a pickled value."""
    dt = dtype if isinstance(dtype, bytes) else dtype_pickle(dtype, order)
    return (
        g("numpy._core.multiarray", "_reconstruct")
        + g("numpy", "ndarray")
        + i(0)
        + TUPLE1
        + b"C\x01b"
        + TUPLE3
        + REDUCE
        + tup(i(1), tup(*map(i, shape)), dt, b"\x89", data)
        + BUILD
    )


def npy_wrap(payload: bytes) -> bytes:
    """An .npy file holding ``payload`` as its pickled object array (what np.save writes)."""
    from numpy.lib import format as npy_format

    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    return buf.getvalue() + payload


def berg_style_dict() -> dict:
    """A small dict shaped like BERG's metadata/weights files (used for truncation and bit flips)."""
    import numpy as np

    rng = np.random.default_rng(0)
    return {
        "scaler_param": {"mean_": rng.random(40), "scale_": rng.random(40).astype(np.float32), "n_samples_seen_": 500},
        "pca_param": {"components_": rng.random((3, 40)), "explained_variance_": rng.random(3)},
        "rois": {"lV1v": (np.arange(5),), "FFA": np.array([1, 4, 9])},
        "info": ["fsaverage", 163842, 2.5, None, True, b"raw", ("a", 1)],
        "set": {1, 2},
        "frozen": frozenset({"x"}),
        "complex": 1 + 2j,
        "scalar": np.float32(3.5),
        "fortran": np.asfortranarray(rng.random((2, 3))),
        "big_endian": rng.random(4).astype(">f8"),
        "strings": np.array(["Fp1", "Fz"]),
        "objects": np.array([None, "a", 1], dtype=object),
    }


# --------------------------------------------------------------------------- legacy payloads


@dataclasses.dataclass(frozen=True)
class Payload:
    """A hostile pickle stream: ``build(ctx) -> bytes``; ``expect``: "unsafe", "error", "ok" or "either"."""

    name: str
    build: Callable[[Context], bytes]
    expect: str = "error"
    extra: str | None = None  # name of a stand-in set in EXTRAS
    heavy: bool = False  # over ~1 MB or slow: benchmark only, or a slow test
    check: Callable[[Any], None] | None = None  # for expect="ok": an assertion on the result


def _extras(name: str | None) -> dict | None:
    from berg.store.legacy import StateOnly

    if name is None:
        return None

    class Raising(StateOnly):
        def __setstate__(self, state):
            raise ValueError("stand-in refuses this state")

    return {
        "sklearn": {
            ("sklearn.decomposition._pca", "PCA"): StateOnly,
            ("sklearn.linear_model._ridge", "Ridge"): StateOnly,
        },
        "raising": {("sklearn.decomposition._pca", "PCA"): Raising},
        "nibabel": {("nibabel", "*"): StateOnly},
    }[name]


LEGACY_PAYLOADS: list[Payload] = []


def payload(
    name: str,
    expect: str = "error",
    *,
    extra: str | None = None,
    heavy: bool = False,
    check: Callable[[Any], None] | None = None,
) -> Callable:
    def register(build: Callable[[Context], bytes]) -> Callable[[Context], bytes]:
        LEGACY_PAYLOADS.append(Payload(name, build, expect, extra, heavy, check))
        return build

    return register


def _const(name: str, data: bytes, expect: str = "error", **kw: Any) -> None:
    LEGACY_PAYLOADS.append(Payload(name, lambda ctx, d=data: d, expect, **kw))


# -- recursion and depth
_const("deep-list-100k", P2 + EMPTY_LIST * 100_000 + APPEND * 99_999 + STOP)
_const("deep-dict-50k", P2 + (EMPTY_DICT + u("k")) * 50_000 + EMPTY_DICT + SETITEM * 50_000 + STOP)
_const("deep-tuple-100k", P2 + NONE + TUPLE1 * 100_000 + STOP)
_const("deep-list-tuple-60k", P2 + MARK * 30_000 + NONE + (b"l" + TUPLE1) * 30_000 + STOP)
_const("deep-frozenset-5k", P4 + MARK * 5_000 + NONE + b"\x91" * 5_000 + STOP)
_const("depth-101", P2 + EMPTY_LIST * 101 + APPEND * 100 + STOP)
_const("self-list", P4 + EMPTY_LIST + MEMOIZE + get(0) + APPEND + STOP)
_const("self-dict", P4 + EMPTY_DICT + MEMOIZE + u("me") + get(0) + SETITEM + STOP)
_const("mutual-cycle", P4 + EMPTY_LIST + MEMOIZE + EMPTY_LIST + MEMOIZE + get(0) + APPEND + APPEND + STOP)
_const("cycle-through-tuple", P4 + EMPTY_LIST + MEMOIZE + get(0) + TUPLE1 + APPEND + STOP)
_const(
    "cycle-in-set-state",
    P4
    + g("sklearn.decomposition._pca", "PCA")
    + EMPTY_TUPLE
    + NEWOBJ
    + MEMOIZE
    + EMPTY_DICT
    + u("self")
    + get(0)
    + SETITEM
    + BUILD
    + STOP,
    extra="sklearn",
)
_const(
    "object-array-holds-itself",
    P2
    + g("numpy._core.multiarray", "_reconstruct")
    + g("numpy", "ndarray")
    + i(0)
    + TUPLE1
    + b"C\x01b"
    + TUPLE3
    + REDUCE
    + b"q\x00"
    + tup(i(1), tup(i(1)), dtype_pickle("O8", "|"), b"\x89", EMPTY_LIST + get(0) + APPEND)
    + BUILD
    + STOP,
)


def _shared(levels: int, kind: str = "list") -> bytes:
    # x = None; repeat: x = [x, x]  -- every level refers twice to the memoised level below
    out = [P4, NONE]
    for k in range(levels):
        out += [MEMOIZE, POP]
        if kind == "list":
            out += [EMPTY_LIST, MARK, get(k), get(k), APPENDS]
        else:
            out += [EMPTY_DICT, MARK, u("a"), get(k), u("b"), get(k), SETITEMS]
    return b"".join(out) + STOP


def _check_shared(levels: int, kind: str) -> Callable[[Any], None]:
    def check(obj: Any) -> None:
        for _ in range(levels):
            a, b = (obj[0], obj[1]) if kind == "list" else (obj["a"], obj["b"])
            assert a is b, "shared reference was copied"
            obj = a
        assert obj is None

    return check


# Sharing is kept (a [x, x] DAG comes back shared) while the unfolded tree stays small; issue 24: a DAG
# of 2**60 paths made every consumer that walks it (metadata readers, ROI selection) hang, so the reader
# now refuses such graphs at read time.
for _lv, _kind in ((8, "list"), (8, "dict"), (12, "list")):
    _const(f"shared-{_kind}-{_lv}-levels", _shared(_lv, _kind), "ok", check=_check_shared(_lv, _kind))
for _lv, _kind in ((40, "list"), (40, "dict"), (60, "list"), (60, "dict"), (99, "list")):
    _const(f"shared-{_kind}-{_lv}-levels", _shared(_lv, _kind), "error")
_const("shared-list-300-levels", _shared(300), "error")

# -- allocations that a size argument would make
_const("bytearray-1.5GB", P2 + g("builtins", "bytearray") + i(1_500_000_000) + TUPLE1 + REDUCE + STOP)
_const("bytearray-newobj", P2 + g("builtins", "bytearray") + i(1_500_000_000) + TUPLE1 + NEWOBJ + STOP)
_const("ndarray-shape-arg", P2 + g("numpy", "ndarray") + tup(i(200_000_000)) + TUPLE1 + REDUCE + STOP)
_const("ndarray-object-shape-arg", P2 + g("numpy", "ndarray") + tup(tup(i(200_000_000)), u("O")) + REDUCE + STOP)
_const("ndarray-newobj", P2 + g("numpy", "ndarray") + tup(tup(i(200_000_000))) + NEWOBJ + STOP)
_const("array-shape-1e9-8-bytes", P2 + array_pickle((10**9,), "f8", binbytes(b"\0" * 8)) + STOP)
_const("array-shape-overflow", P2 + array_pickle((2**32, 2**32), "f8", binbytes(b"")) + STOP)
_const("array-shape-negative", P2 + array_pickle((-1, 8), "f8", binbytes(b"")) + STOP)
_const("array-shape-bigint", P2 + array_pickle((2**80000,), "f8", binbytes(b"")) + STOP)
_const("array-65-dims", P2 + array_pickle((1,) * 65, "f8", binbytes(b"\0" * 8)) + STOP)
_const(
    "object-array-1e9-items", P2 + array_pickle((10**9,), dtype_pickle("O8", "|"), EMPTY_LIST + NONE + APPEND) + STOP
)
_const("zero-itemsize-1e12", P2 + array_pickle((10**12,), "V0", binbytes(b"")) + STOP)
_const("subarray-dtype-name", P2 + array_pickle((1,), "(100000000,)f8", binbytes(b"")) + STOP)
_const("binunicode8-2**62", P4 + b"\x8d" + struct.pack("<Q", 2**62) + STOP)
_const("binbytes-4GB", P2 + b"B" + struct.pack("<I", 2**32 - 1) + STOP)
_const("binbytes8-2**40", P4 + b"\x8e" + struct.pack("<Q", 2**40) + b"abc" + STOP)
_const("bytearray8-2**40", P4 + b"\x96" + struct.pack("<Q", 2**40) + STOP)
_const("long4-2GB", P2 + b"\x8b" + struct.pack("<i", 2**31 - 1) + STOP)
_const("long4-negative", P2 + b"\x8b" + struct.pack("<i", -5) + STOP)
_const("binstring-negative", P2 + b"T" + struct.pack("<i", -1) + STOP)
_const(
    "frame-2**63",
    P4 + b"\x95" + struct.pack("<Q", 2**63) + NONE + STOP,
    "ok",
    check=lambda obj: None if obj is None else (_ for _ in ()).throw(AssertionError(obj)),
)


def _amplify(unit: bytes, times: int, head: bytes) -> bytes:
    return P4 + head + MEMOIZE + POP + unit * times + NONE + STOP


_const(
    "codecs-encode-amplify", _amplify(g("_codecs", "encode") + get(0) + TUPLE1 + REDUCE + POP, 20_000, u("x" * 65_536))
)
_const(
    "set-amplify",
    _amplify(
        g("builtins", "set") + get(0) + TUPLE1 + REDUCE + POP,
        20_000,
        EMPTY_LIST + MARK + b"".join(i(k) for k in range(10_000)) + APPENDS,
    ),
)
_const(
    "ordereddict-amplify",
    _amplify(
        g("collections", "OrderedDict") + get(0) + TUPLE1 + REDUCE + POP,
        20_000,
        EMPTY_LIST + MARK + b"".join(tup(i(k), NONE) for k in range(5_000)) + APPENDS,
    ),
)
_const(
    "object-array-amplify",
    _amplify(
        array_pickle((10_000,), dtype_pickle("O8", "|"), get(0)) + POP,
        5_000,
        EMPTY_LIST + MARK + NONE * 10_000 + APPENDS,
    ),
)
_const("empty-dict-flood-1MB", P2 + EMPTY_DICT * (1 << 20) + STOP)
_const("mark-flood-1MB", P2 + MARK * (1 << 20) + STOP)
_const("dup-flood-1MB", P2 + NONE + DUP * (1 << 20) + STOP, "ok", check=lambda obj: None)
_const(
    "memo-flood",
    P4 + NONE + b"".join(b"r" + struct.pack("<I", k) for k in range(200_000)) + STOP,
    "ok",
    check=lambda obj: None,
)
_P = sys.hash_info.modulus
_const(
    "hash-flood-int-keys",
    P2 + EMPTY_DICT + MARK + b"".join(i(k * _P + 1) + NONE for k in range(1, 20_000)) + SETITEMS + STOP,
)
_const(
    "hash-flood-tuple-keys",
    P2 + EMPTY_DICT + MARK + b"".join(i(k * _P + 1) + TUPLE1 + NONE for k in range(1, 20_000)) + SETITEMS + STOP,
)
_const("hash-flood-set", P4 + EMPTY_SET + MARK + b"".join(i(k * _P + 1) for k in range(1, 20_000)) + ADDITEMS + STOP)
_const("hash-flood-frozenset", P4 + MARK + b"".join(i(k * _P + 1) for k in range(1, 20_000)) + b"\x91" + STOP)
_const("global-line-1MB", P2 + b"c" + b"a" * (1 << 20) + STOP)
_const("global-unterminated", P2 + b"cnumpy")

# -- malformed opcode streams
_const("empty-stream", b"")
_const("stop-on-empty-stack", P2 + STOP)
_const("append-underflow", P2 + APPEND + STOP)
_const("append-no-target", P2 + NONE + APPEND + STOP)
_const("tuple2-underflow", P2 + NONE + TUPLE2 + STOP)
_const("tuple3-underflow", P2 + TUPLE3 + STOP)
_const("pop-mark-without-mark", P2 + b"1" + STOP)
_const("tuple-without-mark", P2 + NONE + TUPLE + STOP)
_const("setitem-underflow", P2 + EMPTY_DICT + NONE + SETITEM + STOP)
_const("setitems-odd", P2 + EMPTY_DICT + MARK + NONE + SETITEMS + STOP)
_const("dict-odd", P2 + MARK + NONE + b"d" + STOP)
_const("reduce-underflow", P2 + REDUCE + STOP)
_const("build-underflow", P2 + BUILD + STOP)
_const("stack-global-underflow", P4 + b"\x93" + STOP)
_const("stack-global-not-strings", P4 + i(1) + i(2) + b"\x93" + STOP)
_const("unhashable-list-key", P2 + EMPTY_DICT + EMPTY_LIST + NONE + SETITEM + STOP)
_const("unhashable-dict-key", P2 + MARK + EMPTY_DICT + NONE + b"d" + STOP)
_const("unhashable-set-member", P4 + EMPTY_SET + MARK + EMPTY_LIST + ADDITEMS + STOP)
_const("unhashable-frozenset-member", P4 + MARK + EMPTY_DICT + b"\x91" + STOP)
_const("unhashable-array-key", P2 + EMPTY_DICT + array_pickle((1,), "f8", binbytes(b"\0" * 8)) + NONE + SETITEM + STOP)
_const("unhashable-tuple-of-list-key", P2 + EMPTY_DICT + EMPTY_LIST + TUPLE1 + NONE + SETITEM + STOP)
_const(
    "set-of-lists-via-reduce",
    P2 + g("builtins", "set") + EMPTY_LIST + MARK + EMPTY_LIST + APPENDS + TUPLE1 + REDUCE + STOP,
)
_const("reduce-args-not-tuple", P2 + g("builtins", "set") + NONE + REDUCE + STOP)
_const("reduce-non-callable", P2 + i(1) + EMPTY_TUPLE + REDUCE + STOP, "unsafe")
_const("reduce-on-dtype-object", P2 + dtype_pickle("f8") + EMPTY_TUPLE + REDUCE + STOP, "unsafe")
_const(
    "reconstruct-1-arg",
    P2 + g("numpy._core.multiarray", "_reconstruct") + g("numpy", "ndarray") + TUPLE1 + REDUCE + STOP,
)
_const(
    "reconstruct-not-ndarray",
    P2
    + g("numpy._core.multiarray", "_reconstruct")
    + g("builtins", "set")
    + tup(i(0))
    + b"C\x01b"
    + TUPLE3
    + REDUCE
    + STOP,
    "unsafe",
)
_const("scalar-5-args", P2 + g("numpy._core.multiarray", "scalar") + tup(*[NONE] * 5) + REDUCE + STOP)
_const(
    "scalar-wrong-length",
    P2 + g("numpy._core.multiarray", "scalar") + dtype_pickle("f8") + b"C\x03abc" + TUPLE2 + REDUCE + STOP,
)
_const(
    "scalar-dtype-not-dtype",
    P2 + g("numpy._core.multiarray", "scalar") + u("f8") + b"C\x08" + b"\0" * 8 + TUPLE2 + REDUCE + STOP,
)
_const("dtype-no-args", P2 + g("numpy", "dtype") + EMPTY_TUPLE + REDUCE + STOP)
_const("dtype-not-a-string", P2 + g("numpy", "dtype") + EMPTY_LIST + TUPLE1 + REDUCE + STOP)
_const("dtype-bad-state", P2 + g("numpy", "dtype") + u("f8") + TUPLE1 + REDUCE + NONE + BUILD + STOP)
_const(
    "dtype-bad-fields",
    P2
    + g("numpy", "dtype")
    + u("V8")
    + TUPLE1
    + REDUCE
    + tup(i(3), u("|"), NONE, tup(u("a")), EMPTY_DICT, i(8), i(1), i(0))
    + BUILD
    + STOP,
)
_const(
    "frombuffer-bad-order",
    P2
    + g("numpy._core.numeric", "_frombuffer")
    + tup(binbytes(b"\0" * 8), dtype_pickle("f8"), tup(i(1)), u("Z"))
    + REDUCE
    + STOP,
)
_const(
    "array-state-none",
    P2
    + g("numpy._core.multiarray", "_reconstruct")
    + g("numpy", "ndarray")
    + i(0)
    + TUPLE1
    + b"C\x01b"
    + TUPLE3
    + REDUCE
    + NONE
    + BUILD
    + STOP,
)
_const("array-data-too-short", P2 + array_pickle((4,), "f8", binbytes(b"\0" * 8)) + STOP)
_const("array-data-not-bytes", P2 + array_pickle((1,), "f8", EMPTY_LIST) + STOP)
_const("array-dtype-is-string", P2 + array_pickle((1,), u("f8"), binbytes(b"\0" * 8)) + STOP)
_const(
    "array-used-before-build",
    P2
    + g("numpy._core.multiarray", "_reconstruct")
    + g("numpy", "ndarray")
    + i(0)
    + TUPLE1
    + b"C\x01b"
    + TUPLE3
    + REDUCE
    + DUP
    + tup(i(1), tup(i(1)), dtype_pickle("f8"), b"\x89", binbytes(b"\0" * 8))
    + BUILD
    + TUPLE2
    + STOP,
)
_const("build-on-int", P2 + i(1) + EMPTY_DICT + BUILD + STOP, "unsafe")
_const("build-on-dict", P2 + EMPTY_DICT + EMPTY_DICT + BUILD + STOP, "unsafe")
_const("binget-unknown", P2 + get(5) + STOP)
_const("long-binget-unknown", P2 + get(70_000) + STOP)
_const("bad-utf8-binunicode", P2 + b"X\x02\x00\x00\x00\xff\xfe" + STOP)
_const("bad-utf8-short-binunicode", P4 + b"\x8c\x01\xff" + STOP)
_const("bad-utf8-global", P2 + b"c\xff\xfe\nx\n" + STOP)
_const("unknown-opcode", P2 + b"\xff" + STOP)
_const("protocol-6", b"\x80\x06" + NONE + STOP)
_const("truncated-binint", P2 + b"J\x01\x00")
_const("truncated-binbytes", P2 + b"B\x10\x00\x00\x00abc")
_const("truncated-after-value", P2 + NONE)
for _op, _body in {
    "INST": b"iposix\nsystem\n",
    "OBJ": b"(o",
    "PERSID": b"P0\n",
    "BINPERSID": b"NQ",
    "EXT1": b"\x82\x01",
    "EXT2": b"\x83\x01\x00",
    "EXT4": b"\x84\x01\x00\x00\x00",
    "NEXT_BUFFER": b"\x97",
    "READONLY_BUFFER": b"N\x98",
    "INT": b"I1" + b"9" * 5000 + b"\n",
    "LONG": b"L1" + b"9" * 100_000 + b"L\n",
    "STRING": b"S'a'\n",
    "UNICODE": b"Vx\n",
    "FLOAT": b"F1.0\n",
    "GET": b"g0\n",
    "PUT": b"Np0\n",
}.items():
    _const(f"unsupported-opcode-{_op}", P2 + _body + STOP)
_const("complex-bad-string", P2 + g("builtins", "complex") + u("x" * 1000) + TUPLE1 + REDUCE + STOP)
_const("complex-overflow", P2 + g("builtins", "complex") + i(2**2000) + TUPLE1 + REDUCE + STOP)
_const("complex-list-arg", P2 + g("builtins", "complex") + EMPTY_LIST + TUPLE1 + REDUCE + STOP)
_const("codecs-rot13", P2 + g("_codecs", "encode") + u("abc") + u("rot13") + TUPLE2 + REDUCE + STOP, "unsafe")
_const("codecs-not-str", P2 + g("_codecs", "encode") + i(5) + u("latin1") + TUPLE2 + REDUCE + STOP)
_const("bytearray-of-dict", P2 + g("builtins", "bytearray") + EMPTY_DICT + TUPLE1 + REDUCE + STOP)
_const("bytearray-str-no-encoding", P2 + g("builtins", "bytearray") + u("abc") + TUPLE1 + REDUCE + STOP)
_const("newobj-of-scalar-function", P2 + g("numpy._core.multiarray", "scalar") + EMPTY_TUPLE + NEWOBJ + STOP, "unsafe")
_const(
    "newobj-ex-bad-kwargs",
    P4 + g("sklearn.decomposition._pca", "PCA") + EMPTY_TUPLE + EMPTY_LIST + b"\x92" + STOP,
    extra="sklearn",
)
_const(
    "stand-in-raises-in-setstate",
    P4 + g("sklearn.decomposition._pca", "PCA") + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + BUILD + STOP,
    extra="raising",
)
_const("wildcard-prefix-is-not-package", P2 + g("nibabelx", "system") + STOP, "unsafe", extra="nibabel")
_const(
    "wildcard-stand-in-inert",
    P2 + g("nibabel.nifti1", "Nifti1Image") + EMPTY_TUPLE + NEWOBJ + STOP,
    "ok",
    extra="nibabel",
    check=lambda obj: None,
)


def _mutants() -> None:
    import numpy as np

    base = pickle.dumps(berg_style_dict(), protocol=3)
    rng = np.random.default_rng(2026)
    for cut in range(0, len(base), max(1, len(base) // 40)):
        _const(f"truncated-berg-dict-at-{cut}", base[:cut])
    for k in range(60):
        data = bytearray(base)
        for pos in rng.integers(2, len(base) - 1, size=int(rng.integers(1, 4))):
            data[pos] = int(rng.integers(0, 256))
        _const(f"bit-flips-berg-dict-{k}", bytes(data), "either")


_mutants()


def _code_execution_payloads() -> None:
    """Payloads that would create ctx.marker (or write into ctx.outside) if berg ever ran them."""

    def touch(ctx: Context) -> str:
        return f"touch {ctx.marker}"

    def py(ctx: Context) -> str:
        return f"open({str(ctx.marker)!r}, 'w').write('x')"

    specs: dict[str, Callable[[Context], bytes]] = {
        "os.system": lambda c: P2 + g("os", "system") + u(touch(c)) + TUPLE1 + REDUCE + STOP,
        "posix.system": lambda c: P2 + g("posix", "system") + u(touch(c)) + TUPLE1 + REDUCE + STOP,
        "os.system-stack-global": lambda c: P4 + sg("os", "system") + u(touch(c)) + TUPLE1 + REDUCE + STOP,
        "builtins.eval": lambda c: P2 + g("builtins", "eval") + u(py(c)) + TUPLE1 + REDUCE + STOP,
        "builtins.exec": lambda c: P2 + g("builtins", "exec") + u(py(c)) + TUPLE1 + REDUCE + STOP,
        "__builtin__.eval": lambda c: P2 + g("__builtin__", "eval") + u(py(c)) + TUPLE1 + REDUCE + STOP,
        "builtins.open-outside": lambda c: (
            P2 + g("builtins", "open") + u(str(c.outside / "decoy.txt")) + u("w") + TUPLE2 + REDUCE + STOP
        ),
        "subprocess.Popen": lambda c: P2 + g("subprocess", "Popen") + u(touch(c)) + TUPLE1 + REDUCE + STOP,
        "subprocess.check_call": lambda c: (
            P2
            + g("subprocess", "check_call")
            + EMPTY_LIST
            + MARK
            + u("touch")
            + u(str(c.marker))
            + APPENDS
            + TUPLE1
            + REDUCE
            + STOP
        ),
        "importlib.import_module": lambda c: P2 + g("importlib", "import_module") + u("os") + TUPLE1 + REDUCE + STOP,
        "builtins.getattr": lambda c: P2 + g("builtins", "getattr") + i(1) + u("__class__") + TUPLE2 + REDUCE + STOP,
        "numpy.testing-runstring": lambda c: (
            P2 + g("numpy.testing._private.utils", "runstring") + u(py(c)) + EMPTY_DICT + TUPLE2 + REDUCE + STOP
        ),
        "numpy.load": lambda c: P2 + g("numpy", "load") + u(str(c.marker)) + TUPLE1 + REDUCE + STOP,
        "copyreg._reconstructor": lambda c: (
            P2 + g("copyreg", "_reconstructor") + tup(g("os", "system")) + REDUCE + STOP
        ),
        "reconstruct-cls-os.system": lambda c: (
            P2
            + g("numpy._core.multiarray", "_reconstruct")
            + g("os", "system")
            + u(touch(c))
            + TUPLE1
            + b"C\x01b"
            + TUPLE3
            + REDUCE
            + STOP
        ),
        "evil-inside-allowed-pca": lambda c: (
            P4
            + g("sklearn.decomposition._pca", "PCA")
            + EMPTY_TUPLE
            + NEWOBJ
            + EMPTY_DICT
            + u("components_")
            + g("os", "system")
            + u(touch(c))
            + TUPLE1
            + REDUCE
            + SETITEM
            + BUILD
            + STOP
        ),
        "system-as-stand-in-key": lambda c: P2 + g("posix", "system") + EMPTY_TUPLE + NEWOBJ + STOP,
    }
    for name, build in specs.items():
        LEGACY_PAYLOADS.append(Payload(f"code-{name}", build, "unsafe", extra="sklearn" if "pca" in name else None))

    class Evil:  # pickled with the real pickler, protocols 0..5
        def __init__(self, cmd: str):
            self.cmd = cmd

        def __reduce__(self):
            return (os.system, (self.cmd,))

    for proto in range(2, 6):
        LEGACY_PAYLOADS.append(
            Payload(
                f"code-pickler-evil-in-dict-p{proto}",
                lambda c, p=proto: pickle.dumps({"weights": [1.0], "x": Evil(touch(c))}, protocol=p),
                "unsafe",
            )
        )


_code_execution_payloads()


def read_payload(p: Payload, ctx: Context, route: str) -> Any:
    """Feed a payload to berg's reader: ``route`` "bytes" (safe_unpickle) or "npy" (load_legacy_npy)."""
    from berg.store.legacy import load_legacy_npy, safe_unpickle

    data = p.build(ctx)
    if route == "bytes":
        obj = safe_unpickle(data, extra_globals=_extras(p.extra))
    else:
        path = ctx.cache / f"{p.name[:80]}.npy"
        path.write_bytes(npy_wrap(data))
        obj = load_legacy_npy(path, extra_globals=_extras(p.extra))
    if p.check is not None:
        p.check(obj)
    return obj


for _p in LEGACY_PAYLOADS:
    for _route in ("bytes", "npy"):
        CASES.append(
            Case(
                f"legacy-{_route}",
                _p.name,
                lambda ctx, p=_p, r=_route: read_payload(p, ctx, r),
                "ok" if _p.expect == "ok" else "either" if _p.expect == "either" else "error",
            )
        )


def _npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    from numpy.lib import format as npy_format

    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@case("legacy-npy", "header-shape-overflow")
def _npy_header_overflow(ctx: Context) -> Any:
    from berg.store.legacy import load_legacy_npy

    path = ctx.cache / "overflow.npy"
    path.write_bytes(_npy_header((2**32, 2**32)) + b"\0" * 64)
    return load_legacy_npy(path)


@case("legacy-npy", "header-shape-larger-than-file")
def _npy_header_big(ctx: Context) -> Any:
    from berg.store.legacy import load_legacy_npy

    path = ctx.cache / "big.npy"
    path.write_bytes(_npy_header((99_999_999,)) + b"\0" * 32)
    return load_legacy_npy(path)


@case("legacy-npy", "header-negative-shape")
def _npy_header_negative(ctx: Context) -> Any:
    from berg.store.legacy import load_legacy_npy

    path = ctx.cache / "neg.npy"
    path.write_bytes(_npy_header((-4,)) + b"\0" * 32)
    return load_legacy_npy(path)


@case("legacy-npy", "header-huge-length")
def _npy_header_len(ctx: Context) -> Any:
    from berg.store.legacy import load_legacy_npy

    path = ctx.cache / "hdr.npy"
    path.write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**32 - 1) + b"{")
    return load_legacy_npy(path)


@case("legacy-npy", "not-npy")
def _not_npy(ctx: Context) -> Any:
    from berg.store.legacy import load_legacy_npy

    path = ctx.cache / "x.npy"
    path.write_bytes(b"<html>403 Forbidden</html>")
    return load_legacy_npy(path)


@case("legacy-npy", "directory-not-file")
def _npy_dir(ctx: Context) -> Any:
    from berg.store.legacy import load_legacy_npy

    (ctx.cache / "d.npy").mkdir()
    return load_legacy_npy(ctx.cache / "d.npy")


@case("legacy-npy", "big-bytes-not-array-data")
def _big_bytes(ctx: Context) -> Any:
    from berg.store.legacy import load_legacy_npy

    path = ctx.cache / "bytes.npy"
    path.write_bytes(npy_wrap(P2 + EMPTY_DICT + u("blob") + binbytes(b"\0" * (2 << 20)) + SETITEM + STOP))
    return load_legacy_npy(path)


def _write_catalogue_weights(ctx: Context, mutate: Callable[[dict], None]) -> None:
    """A small BERG EEG weights file (real pickled sklearn PCAs, written by the replica writer), mutated."""
    import numpy as np

    from creation_code.berg_catalogue.replica import write_replica

    rep = write_replica(
        ctx.cache / "bucket", "things_eeg_2", "alexnet", subjects=(1,), n_features=16, n_components=3, n_train=12
    )
    w = rep.weights[1]
    mutate(w)
    np.save(ctx.cache / "weights_subject-01.npy", w, allow_pickle=True)


def _read_catalogue_weights(ctx: Context) -> Any:
    from berg.models.berg_catalogue import read_weights

    return read_weights(ctx.cache / "weights_subject-01.npy", "things_eeg_2")


class _System:
    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _zeros_coef(w: dict) -> None:
    import numpy as np

    w["reg_param"]["rep-1"]["coef_"] = np.zeros((35, 9), np.float32)


_CATALOGUE_MUTATIONS: dict[str, Callable[[Context, dict], None]] = {
    "eeg-pca-object-replaced-by-os.system": lambda ctx, w: w["pca_param"].__setitem__(
        "rep-3", _System(f"touch {ctx.marker}")
    ),
    "eeg-pca-without-components": lambda ctx, w: w["pca_param"].__setitem__("rep-2", {"mean_": [0.0]}),
    "eeg-readout-wrong-width": lambda ctx, w: _zeros_coef(w),
    "eeg-missing-repetition": lambda ctx, w: w["reg_param"].pop("rep-4"),
    "eeg-scaler-is-a-list": lambda ctx, w: w.__setitem__("scaler_param", [1, 2, 3]),
}
for _name, _mutate in _CATALOGUE_MUTATIONS.items():
    CASES.append(
        Case(
            "catalogue",
            _name,
            _read_catalogue_weights,
            prepare=lambda ctx, m=_mutate: _write_catalogue_weights(ctx, lambda w: m(ctx, w)),
        )
    )


@case("legacy-bytes", "unseekable-stream-announcing-1TB")
def _unseekable(ctx: Context) -> Any:
    from berg.store.legacy import safe_unpickle

    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes):
            self.buf = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            data = self.buf.read(len(b))
            b[: len(data)] = data
            return len(data)

    stream = io.BufferedReader(Pipe(P4 + b"\x8e" + struct.pack("<Q", 2**40) + b"abc"))
    return safe_unpickle(stream)


# --------------------------------------------------------------------------- running


def _snapshot(folder: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
        out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns, st.st_mode, digest)
    return out


def _make_context(base: Path) -> Context:
    root = Path(tempfile.mkdtemp(prefix="case-", dir=base))
    ctx = Context(root=root, cache=root / "cache", outside=root / "outside", marker=root / "PWNED")
    ctx.cache.mkdir()
    ctx.outside.mkdir()
    (ctx.outside / "decoy.txt").write_text("must not change\n")
    (ctx.outside / "notes").mkdir()
    (ctx.outside / "notes" / "a.bin").write_bytes(os.urandom(64))
    return ctx


def _status_kb(field: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class _Timeout(BaseException):  # not an Exception: a case's own `except Exception` must not swallow it
    pass


@contextlib.contextmanager
def _sandboxed(ctx: Context):
    """The case runs in its cache folder, with berg's cache there and no network, whatever it changes."""
    env_before = dict(os.environ)
    cwd = os.getcwd()
    os.environ.update(
        {"BERG_CACHE": str(ctx.cache / "berg-cache"), "BERG_OFFLINE": "1", "BERG_QUIET": "1", "BERG_LOCK_TIMEOUT": "5"}
    )
    os.environ.pop("BERG_REGISTRY", None)
    os.chdir(ctx.cache)
    try:
        yield
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env_before)


def _measure(c: Case, ctx: Context, timeout: float, traced: bool) -> tuple[str, str, float, int]:
    """Run the case once; peak = tracemalloc's peak (traced) or the RSS high-water mark above start.

    Outcomes: "berg" (a BERGError), "ok" (returned; its own checks passed), "wrong" (its check found a
    wrong result: AssertionError), "hang" (no result within ``timeout``), "other" (any other exception:
    what a user sees as a traceback).
    """
    import gc

    gc.collect()
    reset = _reset_peak_rss()
    rss0 = _status_kb("VmRSS") * 1024
    outcome, detail = "ok", ""

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Timeout(f"no result after {timeout:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    if traced:
        tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with _sandboxed(ctx):
            result = c.run(ctx)
            del result
    except _Timeout as exc:
        outcome, detail = "hang", str(exc)
    except AssertionError as exc:
        outcome, detail = "wrong", f"{type(exc).__name__}: {str(exc)[:2000]}"
    except Exception as exc:  # noqa: BLE001 - classifying is the point
        from berg.errors import BERGError

        outcome = "berg" if isinstance(exc, BERGError) else "other"
        detail = f"{type(exc).__name__}: {str(exc)[:2000]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        elapsed = time.perf_counter() - t0
        if traced:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        else:
            peak = _status_kb("VmHWM") * 1024 - rss0 if reset else 0
    return outcome, detail, elapsed, peak


def verdict(rec: dict[str, Any], match: str | None = None) -> str:
    """``"pass"`` or why the case failed: what issue 24's criteria call it."""
    import re

    if rec["code_executed"]:
        return "code executed"
    if rec["outside_touched"]:
        return "wrote outside the cache/output location"
    if rec["peak"] >= PEAK_LIMIT:
        return f"allocated {rec['peak'] / MB:.0f} MB"
    outcome, expect = rec["outcome"], rec["expect"]
    if outcome == "hang":
        return "hang"
    if outcome == "other":
        return "traceback"
    if outcome == "wrong" or (expect == "error" and outcome == "ok"):
        return "wrong silent result"
    if expect == "ok" and outcome != "ok":
        return "refused a valid input"
    if outcome == "berg" and match and not re.search(match, rec["detail"]):
        return "unclear error"
    return "pass"


def run_case(c: Case, base: Path, timeout: float) -> dict[str, Any]:
    """Run one case in this process; return its record (outcome, verdict, peak bytes, markers).

    The case runs twice in fresh sandboxes: once for the RSS high-water mark (plain), once under
    tracemalloc (which also sees allocations the OS never backed with pages, e.g. a huge read buffer);
    its peak is the larger of the two, and its outcome must be the same both times.
    """
    records = []
    for traced in (False, True):
        ctx = _make_context(base)
        if c.prepare is not None:
            with _sandboxed(ctx):
                c.prepare(ctx)
        before = _snapshot(ctx.outside)
        outcome, detail, elapsed, peak = _measure(c, ctx, timeout, traced)
        extra = sorted(p.name for p in ctx.root.iterdir()) != ["cache", "outside"] + (
            ["PWNED"] if ctx.marker.exists() else []
        )
        records.append(
            {
                "id": c.id,
                "expect": c.expect,
                "xfail": c.xfail,
                "outcome": outcome,
                "detail": detail,
                "seconds": round(elapsed, 3),
                "peak": peak,
                "code_executed": ctx.marker.exists(),
                "outside_touched": _snapshot(ctx.outside) != before or extra,
            }
        )
        shutil.rmtree(ctx.root, ignore_errors=True)
        if outcome == "hang":  # once is enough to know
            break
    plain, traced_rec = records[0], records[-1]
    if plain["outcome"] != traced_rec["outcome"]:
        plain["outcome"], plain["detail"] = (
            "other",
            f"outcome differs between runs: {plain['detail']} / {traced_rec['detail']}",
        )
    plain["peak_rss"], plain["peak_traced"] = plain["peak"], traced_rec["peak"]
    plain["peak"] = max(plain["peak"], traced_rec["peak"])
    plain["code_executed"] |= traced_rec["code_executed"]
    plain["outside_touched"] |= traced_rec["outside_touched"]
    plain["verdict"] = verdict(plain, c.match)
    return plain


def load_plugins() -> None:
    """Import benchmarks/_hostile_cases_*.py (they register cases through this module)."""
    for path in sorted(HERE.glob("_hostile_cases_*.py")):
        name = path.stem
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        add_cases(list(getattr(module, "CASES", [])))


def smoke_subset(cases: list[Case], per_group: int = 1, xfail_per_group: int = 1) -> list[Case]:
    """The first ``per_group`` cases of every group and its first ``xfail_per_group`` expected failures
    (``--smoke``, and what `make test` runs): every code path of the harness, in a minute or two."""
    seen: dict[tuple[str, bool], int] = {}
    out = []
    for c in cases:
        key = (c.group, bool(c.xfail))
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= (xfail_per_group if c.xfail else per_group):
            out.append(c)
    return out


def _selected(only: list[str] | None) -> list[Case]:
    load_plugins()
    seen, out = set(), []
    for c in CASES:
        if c.id in seen:
            raise SystemExit(f"duplicate case id {c.id}")
        seen.add(c.id)
        if not only or any(c.id.startswith(o) for o in only):
            out.append(c)
    return out


def _worker(ids: list[str], timeout: float) -> None:
    by_id = {c.id: c for c in _selected(None)}
    base = Path(tempfile.mkdtemp(prefix="berg-hostile-"))
    try:
        for cid in ids:
            print(json.dumps({"start": cid}), flush=True)
            print(json.dumps(run_case(by_id[cid], base, timeout)), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _lost(cid: str, c: Case | None, outcome: str, detail: str) -> dict[str, Any]:
    rec = {
        "id": cid,
        "expect": c.expect if c else "error",
        "xfail": c.xfail if c else None,
        "outcome": outcome,
        "detail": detail,
        "seconds": 0.0,
        "peak": 0,
        "code_executed": False,
        "outside_touched": False,
    }
    rec["verdict"] = verdict(rec)
    return rec


def run_all(cases: list[Case], timeout: float, verbose: bool) -> list[dict[str, Any]]:
    """Run cases in worker processes (restarted after a crash or a hang); return one record per case.

    A case the worker cannot interrupt (stuck in C code, SIGALRM never delivered) is a hang too: the
    parent kills the worker when one case has run for ``2 * timeout + 30`` seconds and goes on.
    """
    import selectors

    by_id = {c.id: c for c in cases}
    records: list[dict[str, Any]] = []
    todo = [c.id for c in cases]
    while todo:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--timeout", str(timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        proc.stdin.write("\n".join(todo))
        proc.stdin.close()
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        started, deadline, hung = None, time.monotonic() + 600, False
        while True:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                if started is not None:
                    proc.kill()
                    hung = True
                    break
                deadline = time.monotonic() + 600  # importing berg and the plugins, before the first case
                continue
            line = proc.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            if "start" in msg:
                started, deadline = msg["start"], time.monotonic() + 2 * timeout + 30
                continue
            records.append(msg)
            started = None
            if verbose:
                print(
                    f"{msg['verdict'][:10]:10s} {msg['outcome']:6s} {msg['peak'] / MB:7.1f} MB {msg['seconds']:7.2f} s"
                    f"  {msg['id']}  {msg['detail'][:100]}",
                    file=sys.stderr,
                )
        stderr = proc.stderr.read()
        proc.wait()
        done = {r["id"] for r in records}
        if started is not None:  # the worker died or hung inside this case
            tail = stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            outcome, detail = ("hang", "killed: no result") if hung else ("other", f"worker died: {tail[0]}")
            records.append(_lost(started, by_id.get(started), outcome, detail))
            done.add(started)
        elif proc.returncode != 0 and not (done & set(todo)):
            raise SystemExit(f"worker failed: {stderr[-2000:]}")
        todo = [cid for cid in todo if cid not in done]
    return records


def tally(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 24's figures: counts by verdict, expected failures apart (they never count as passing)."""
    judged = [r for r in records if not r.get("xfail")]
    xfails = [r for r in records if r.get("xfail")]
    worst = max(records, key=lambda r: r["peak"]) if records else {"peak": 0, "id": "-"}

    def n(verdict_: str, rows: list[dict[str, Any]] = judged) -> int:
        return sum(r["verdict"] == verdict_ for r in rows)

    return {
        "cases": len(records),
        "berg_errors": sum(r["outcome"] == "berg" and r["verdict"] == "pass" for r in judged),
        "handled": sum(r["outcome"] == "ok" and r["verdict"] == "pass" for r in judged),
        "tracebacks": n("traceback"),
        "hangs": n("hang"),
        "wrong": n("wrong silent result"),
        "unclear": n("unclear error"),
        "refused_valid": n("refused a valid input"),
        "code_executed": sum(r["code_executed"] for r in records),
        "outside": sum(bool(r["outside_touched"]) for r in records),
        "over_memory": sum(r["peak"] >= PEAK_LIMIT for r in records),
        "peak_mb": round(worst["peak"] / MB, 1),
        "worst": worst["id"],
        "xfail": len(xfails),
        "xpass": [r["id"] for r in xfails if r["verdict"] == "pass"],
        "failed": [f"{r['id']} ({r['verdict']}: {r['detail'][:160]})" for r in judged if r["verdict"] != "pass"],
    }


def summarise(records: list[dict[str, Any]]) -> tuple[str, bool]:
    """The one-line figure of issue 24 and whether every criterion holds."""
    t = tally(records)
    line = (
        f"bad inputs tried {t['cases']}, clear BERGError {t['berg_errors']}, handled correctly {t['handled']}, "
        f"tracebacks {t['tracebacks']}, hangs {t['hangs']}, wrong silent results {t['wrong']}, "
        f"unclear errors {t['unclear']}, valid inputs refused {t['refused_valid']}, code executed "
        f"{t['code_executed']}, writes outside the cache/output location {t['outside']}, "
        + (
            f"peak memory of any single case < {PEAK_LIMIT // MB} MB ({t['peak_mb']} MB, {t['worst']})"
            if not t["over_memory"]
            else f"{t['over_memory']} case(s) over {PEAK_LIMIT // MB} MB (worst {t['peak_mb']} MB, {t['worst']})"
        )
        + f"; expected failures {t['xfail']}"
    )
    if t["xpass"]:
        line += f"; expected failures that now pass (remove their xfail): {', '.join(t['xpass'][:10])}"
    if t["failed"]:
        line += f"; FAILED: {', '.join(f.split(' (')[0] for f in t['failed'][:10])}"
    ok = not (t["failed"] or t["xpass"] or t["code_executed"] or t["outside"] or t["over_memory"])
    return line, ok


_FIGURES = {
    "cases": ("cases", "count", ">= 800"),
    "berg_errors": ("clear_berg_errors", "count"),
    "handled": ("handled_correctly", "count"),
    "tracebacks": ("tracebacks", "count", "<= 0"),
    "hangs": ("hangs", "count", "<= 0"),
    "wrong": ("wrong_silent_results", "count", "<= 0"),
    "unclear": ("unclear_errors", "count", "<= 0"),
    "code_executed": ("code_executed", "count", "<= 0"),
    "outside": ("writes_outside", "count", "<= 0"),
    "peak_mb": ("peak_memory_one_case", "MB", f"<= {PEAK_LIMIT // MB}"),
    "xfail": ("expected_failures", "count", "<= 0", "cases of classes still open, run and reported apart"),
}


def main(argv: list[str] | None = None) -> int:
    import _harness

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="list every case on stderr")
    parser.add_argument("--only", action="append", help="run only case ids starting with this (repeatable)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case (default 60)")
    parser.add_argument("--json", type=Path, help="also write every record to this JSON file")
    parser.add_argument("--list", action="store_true", help="print the case ids and exit")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    _harness.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.worker:
        _worker([line for line in sys.stdin.read().splitlines() if line], args.timeout)
        return 0
    cases = _selected(args.only)
    if args.smoke:
        cases = smoke_subset(cases)
    if args.list:
        print("\n".join(f"{c.id}{'  [xfail]' if c.xfail else ''}" for c in cases))
        return 0
    rec = _harness.start("hostile_inputs", args, timeout_s=args.timeout, only=args.only or [])
    t0 = time.perf_counter()
    records = run_all(cases, args.timeout, args.verbose)
    worst = sorted(records, key=lambda r: -r["peak"])[:3]
    print(
        f"{len(records)} cases in {time.perf_counter() - t0:.0f} s; largest peaks: "
        + ", ".join(f"{r['id']} {r['peak'] / MB:.1f} MB" for r in worst),
        file=sys.stderr,
    )
    for r in records:
        if r["verdict"] != "pass":
            tag = "XFAIL " if r.get("xfail") else "FAILED"
            print(f"{tag} {r['id']}: {r['verdict']}: {r['detail'][:200]}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    t = tally(records)
    rec.figures(t, _FIGURES, wall_s=round(time.perf_counter() - t0, 1))
    line, ok = summarise(records)
    print(line, file=sys.stderr)  # stdout holds the figures' JSON lines
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
