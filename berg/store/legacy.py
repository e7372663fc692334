"""Reading legacy pickled artifacts (BERG's ``np.save``'d dicts, scikit-learn estimators) safely.

These files are pickles: loading them with Python's unpickler would let the file call any function
(``os.system``...). berg never does that. Instead this module *interprets* the pickle opcodes itself,
with a closed set of admitted globals:

* numpy array reconstruction (``numpy[._]core.multiarray._reconstruct`` + ``numpy.ndarray`` as its
  class argument only), ``numpy.dtype`` and ``numpy[._]core.multiarray.scalar``;
* plain containers and scalars (dict, list, tuple, set, str, bytes, int, float, bool, None, complex);
* whatever the caller allow-lists through ``extra_globals``, mapped to a harmless stand-in of the
  caller's choice (e.g. a class that only keeps its ``__setstate__`` state).

Anything else raises :class:`~berg.errors.UnsafeArtifactError` naming the forbidden global, before
anything is called. Because the interpreter is our own, large byte strings (array data) in a file are
not read into memory: the resulting arrays are read-only memory maps of the file itself.

Hostile files (issue 10). Every failure inside the reader -- stack underflow, unhashable keys, wrong
argument counts, undecodable text, truncated streams, unknown opcodes -- raises
:class:`~berg.errors.ArtifactError` naming the file (when there is one) and the byte offset of the
opcode. The reader never recurses: the interpreter is a loop and the final check of the object graph
is an explicit-stack walk. Limits, each raising ``ArtifactError``:

* nesting deeper than :data:`MAX_DEPTH` levels, and self-referencing containers (BERG's files hold
  neither; refusing them keeps every consumer of the result safe from recursion too);
* the total size of what is built (bytes and strings read into memory, container slots, constructor
  results) is bounded by :data:`BUILD_FLOOR` + :data:`BUILD_PER_BYTE` x the stream's length, so a small
  file cannot expand into a large allocation (e.g. by encoding one memoised string thousands of times);
* no allow-listed constructor allocates from a size argument: ``bytearray(n)`` and ``numpy.ndarray(shape)``
  are refused, and array data must be bytes of the file whose length matches the declared shape;
* length-prefixed opcodes are checked against the bytes left in the stream before anything is read;
* dict keys and set members that would defeat hashing (integers at or beyond the hash modulus, which
  collide by construction) are refused, and hashable tuples are depth-checked when they are built.

Shared references stay shared: the memo holds objects by identity, so ``[x, x]`` nested 60 levels is
60 small lists, not 2**60 copies. But a consumer that walks, copies or converts the result would follow
all 2**60 paths, so the final graph check also bounds the *logical* size (the size of the graph unfolded
into a tree, computed in linear time) by the same budget: such a file is refused at read time, in
milliseconds, with an :class:`~berg.errors.ArtifactError` (issue 24).

Memory: loading BERG's ``pca_weights.npy`` (a 100 x 5,337,088 float32 ``components_``, 2.1 GB) keeps
*zero* copies of the array in RAM at load time; the pages are read by the OS when the array is used.
``tests/test_store_units.py`` checks that loading a 64 MB pickled array allocates under 4 MiB
(tracemalloc). Byte strings below 1 MiB (small arrays) are read normally.
"""

from __future__ import annotations

import codecs
import io
import itertools
import math
import os
import pickletools
import re
import struct
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from berg.errors import ArtifactError, ArtifactNotFoundError, BERGError, UnsafeArtifactError

__all__ = ["safe_unpickle", "load_legacy_npy", "StateOnly", "MAX_DEPTH", "BUILD_FLOOR", "BUILD_PER_BYTE"]

#: Deepest nesting of containers admitted (BERG's dicts are < 10 levels deep; Python recursion in
#: consumers such as ``==`` or ``repr`` stays far from its limit).
MAX_DEPTH = 100
#: Size budget of what one stream may build, in bytes: this floor plus BUILD_PER_BYTE per stream byte.
BUILD_FLOOR = 32 << 20
BUILD_PER_BYTE = 16

# Byte strings at least this long are memory-mapped instead of read (when reading from a file).
_LAZY_BYTES = 1 << 20
# Longest module or name line of a text GLOBAL opcode.
_MAX_GLOBAL_LINE = 512
# Integers at or beyond the hash modulus collide by construction (hash(n) == n mod P).
_HASH_MODULUS = sys.hash_info.modulus
_DTYPE_NAME = re.compile(r"[A-Za-z]{1,3}\d{0,6}")
_MAX_DIMS = 64
_MAX_NPY_HEADER = 10_000  # numpy's own max_header_size
# What an empty container costs in memory (charged to the budget: one opcode byte makes one).
_EMPTY_COST = {
    "list": sys.getsizeof([]),
    "dict": sys.getsizeof({}),
    "set": sys.getsizeof(set()),
    "tuple": sys.getsizeof(()),
}


class StateOnly:
    """Inert stand-in for an allow-listed class: keeps constructor args and pickled state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None
        self.items: list[Any] = []  # what APPEND(S)/SETITEM(S) added (list/dict subclasses)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        keys = sorted(map(str, self.state)) if isinstance(self.state, dict) else type(self.state).__name__
        return f"StateOnly(state={keys})"


class _Malformed(Exception):
    """Internal: the stream is not a pickle berg can read (becomes ArtifactError with the location)."""


class _Refused(Exception):
    """Internal: the stream asks for something refused on purpose (becomes UnsafeArtifactError)."""


class _LazyBytes:
    """A byte range of the pickle file (array data), mapped only when an array is built on it."""

    def __init__(self, path: str, offset: int, length: int):
        self.path, self.offset, self.length = path, offset, length


class _Pending:
    """Base of objects completed at BUILD; ``memo_keys`` lets BUILD update the memo in O(1)."""

    def __init__(self) -> None:
        self.memo_keys: list[int] = []


class _PendingArray(_Pending):
    """Result of ``_reconstruct``: becomes a real ndarray at BUILD."""


class _PendingDtype(_Pending):
    def __init__(self, dtype: np.dtype):
        super().__init__()
        self.dtype = dtype


class _NdarrayClass:
    """What the global ``numpy.ndarray`` becomes: admitted as ``_reconstruct``'s class argument only."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayClass()


def _describe(value: Any) -> str:
    """A short, safe description of a value from the file (never the repr of a huge object)."""
    if isinstance(value, (str, bytes)):
        text = repr(value[:60])
        return text + ("..." if len(value) > 60 else "")
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() < 64 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    return type(value).__name__


# --------------------------------------------------------------------------- numpy reconstruction


def _as_dtype(d: Any) -> np.dtype:
    if isinstance(d, _PendingDtype):
        return d.dtype
    if isinstance(d, np.dtype):
        return d
    raise _Malformed(f"array dtype is {_describe(d)}, not a pickled numpy dtype")


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (tuple, list)) or len(shape) > _MAX_DIMS:
        raise _Malformed(f"array shape is {_describe(shape)}, not a tuple of at most {_MAX_DIMS} sizes")
    dims = []
    for s in shape:
        if isinstance(s, (np.integer,)):
            s = int(s)
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 1 << 62:
            raise _Malformed(f"array shape has the size {_describe(s)}; sizes are integers in [0, 2**62)")
        dims.append(s)
    return tuple(dims)


class _Numpy:
    """numpy's pickle entry points, bound to one interpreter so every result is charged to its budget."""

    def __init__(self, machine: _Machine):
        self.m = machine

    def reconstruct(self, cls: Any, shape: Any, typecode: Any) -> _PendingArray:
        # numpy's own _reconstruct allocates from `shape`; here the shape is ignored and the array is
        # made at BUILD from the file's bytes only.
        if cls is not _NDARRAY:
            raise _Refused(f"_reconstruct of {_describe(cls)} refused; only numpy.ndarray is admitted")
        return _PendingArray()

    def make_dtype(self, name: Any, align: Any = False, copy: Any = True) -> _PendingDtype:
        if not isinstance(name, str) or not _DTYPE_NAME.fullmatch(name):
            raise _Malformed(f"unsupported pickled dtype {_describe(name)}")
        try:
            return _PendingDtype(np.dtype(name))
        except TypeError as exc:
            raise _Malformed(f"unsupported pickled dtype {_describe(name)}") from exc

    def scalar(self, dtype: Any, data: Any = None) -> Any:
        dt = _as_dtype(dtype)
        if dt.hasobject:
            return data
        if isinstance(data, str):  # protocol-2 pickles store scalar bytes as latin-1 str
            data = data.encode("latin1")
        if not isinstance(data, (bytes, bytearray)) or len(data) != dt.itemsize:
            raise _Malformed(f"numpy scalar of dtype {dt} needs {dt.itemsize} bytes, got {_describe(data)}")
        return np.frombuffer(data, dtype=dt, count=1)[0]

    def frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        # numpy's protocol-5 array pickling: raw buffer + dtype + shape + order.
        if order not in ("C", "F"):
            raise _Malformed(f"unexpected array order {_describe(order)}")
        if isinstance(buf, bytearray):
            buf = bytes(buf)
        return self.build_array((_shape(shape), dtype, order == "F", buf))

    def build_array(self, state: Any) -> np.ndarray:
        if not (isinstance(state, tuple) and len(state) in (4, 5)):
            raise _Malformed(f"unexpected ndarray state {_describe(state)}")
        shape, dtype, fortran, data = state[-4:]
        dt = _as_dtype(dtype)
        shape = _shape(shape)
        order = "F" if fortran else "C"
        count = math.prod(shape)
        if dt.hasobject:
            if dt != np.dtype(object):
                raise _Malformed(f"structured dtypes holding objects ({dt}) are not supported")
            if not isinstance(data, list) or len(data) != count:
                raise _Malformed(f"object array of {count} items has {_describe(data)} as its items")
            self.m.charge(8 * count)
            return np.fromiter(data, dtype=object, count=count).reshape(shape, order=order)
        if dt.itemsize == 0 and count:
            raise _Malformed(f"array of {count} items of a zero-size dtype refused")
        nbytes = count * dt.itemsize
        if isinstance(data, _LazyBytes):
            if data.length != nbytes:
                raise _Malformed(f"array data is {data.length} bytes, its shape {shape} and dtype {dt} need {nbytes}")
            if nbytes == 0:
                return np.empty(shape, dtype=dt, order=order)
            return np.memmap(data.path, dtype=dt, mode="r", offset=data.offset, shape=shape, order=order)
        if isinstance(data, str):
            self.m.charge(len(data))
            data = data.encode("latin1")
        if not isinstance(data, (bytes, bytearray)):
            raise _Malformed(f"array data is {_describe(data)}, not bytes")
        if len(data) != nbytes:
            raise _Malformed(f"array data is {len(data)} bytes, its shape {shape} and dtype {dt} need {nbytes}")
        return np.frombuffer(data, dtype=dt, count=count).reshape(shape, order=order)

    def build_dtype(self, obj: _PendingDtype, state: Any) -> np.dtype:
        dt = obj.dtype
        if not isinstance(state, tuple):
            raise _Malformed(f"unexpected dtype state {_describe(state)}")
        if len(state) >= 2 and state[1] in ("<", ">") and dt.itemsize > 1:
            dt = dt.newbyteorder(state[1])
        if len(state) >= 6 and state[3] is not None:
            names, fields, itemsize = state[3], state[4], state[5]
            if not (
                isinstance(names, tuple)
                and isinstance(fields, dict)
                and isinstance(itemsize, int)
                and all(isinstance(n, str) for n in names)
            ):
                raise _Malformed("unsupported structured dtype state")
            try:
                return np.dtype(
                    {
                        "names": list(names),
                        "formats": [_as_dtype(fields[n][0]) for n in names],
                        "offsets": [int(fields[n][1]) for n in names],
                        "itemsize": itemsize,
                    }
                )
            except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
                raise _Malformed(f"unsupported structured dtype: {exc}") from exc
        return dt


# --------------------------------------------------------------------------- guarded builtins


class _Builtins:
    """The builtin constructors a pickle may call, each capped by what the file itself holds."""

    def __init__(self, machine: _Machine):
        self.m = machine

    def bytearray(self, *args: Any) -> bytearray:
        if not args:
            return bytearray()
        src = args[0]
        if isinstance(src, (int, np.integer)) and not isinstance(src, bool):
            # bytearray(n) would allocate n zero bytes that the file does not hold
            raise _Malformed(f"bytearray({_describe(src)}) refused: a size argument is not data from the file")
        if isinstance(src, str):
            if len(args) < 2 or args[1] not in ("latin-1", "latin1", "utf-8", "utf8", "ascii"):
                raise _Malformed("bytearray(str) needs one of the encodings latin-1, utf-8, ascii")
            self.m.charge(4 * len(src))
            return bytearray(src, args[1], *args[2:3])
        if isinstance(src, (bytes, bytearray, list, tuple)):
            self.m.charge(len(src))
            return bytearray(src)
        raise _Malformed(f"bytearray of {_describe(src)} refused")

    def _members(self, items: Any) -> Iterable[Any]:
        if isinstance(items, (list, tuple, set, frozenset)):
            for item in items:
                self.m.check_key(item)
            self.m.charge(8 * len(items))
            return items
        if isinstance(items, (str, bytes)):
            self.m.charge(8 * len(items))
            return items
        raise _Malformed(f"set members from {_describe(items)} refused")

    def set(self, items: Any = ()) -> set:
        return set(self._members(items))

    def frozenset(self, items: Any = ()) -> frozenset:
        out = frozenset(self._members(items))
        self.m.register_hashable(out, out)
        return out

    def dict(self, *args: Any) -> dict:
        # collections.OrderedDict pickles as REDUCE(OrderedDict, ()) followed by SETITEMS
        if not args:
            return {}
        src = args[0]
        if isinstance(src, dict):
            pairs = list(src.items())
        elif isinstance(src, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in src):
            pairs = list(src)
        else:
            raise _Malformed(f"dict from {_describe(src)} refused")
        self.m.charge(16 * len(pairs))
        out = {}
        for k, v in pairs:
            self.m.check_key(k)
            out[k] = v
        return out

    def complex(self, real: Any = 0.0, imag: Any = 0.0) -> complex:
        for part in (real, imag):
            if isinstance(part, str) and len(part) > 100:
                raise _Malformed("complex from a string of over 100 characters refused")
            if not isinstance(part, (int, float, str)):
                raise _Malformed(f"complex from {_describe(part)} refused")
        return complex(real, imag) if not isinstance(real, str) else complex(real)

    def codecs_encode(self, obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
        if encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
            raise _Refused(f"_codecs.encode with encoding {_describe(encoding)} refused")
        if not isinstance(obj, str) or errors not in ("strict", "surrogatepass"):
            raise _Malformed(f"_codecs.encode of {_describe(obj)} refused")
        self.m.charge(4 * len(obj))
        return codecs.encode(obj, encoding, errors)


def _allowed_globals(numpy_: _Numpy, builtins_: _Builtins) -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = numpy_.reconstruct
        allowed[(mod, "scalar")] = numpy_.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = numpy_.frombuffer
    allowed.update(
        {
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): numpy_.make_dtype,
            ("_codecs", "encode"): builtins_.codecs_encode,
            ("builtins", "set"): builtins_.set,
            ("builtins", "frozenset"): builtins_.frozenset,
            ("builtins", "complex"): builtins_.complex,
            ("builtins", "bytearray"): builtins_.bytearray,
            ("collections", "OrderedDict"): builtins_.dict,
            # protocol-2 pickles name Python 2's module for the builtins
            ("__builtin__", "set"): builtins_.set,
            ("__builtin__", "frozenset"): builtins_.frozenset,
            ("__builtin__", "complex"): builtins_.complex,
            ("__builtin__", "bytearray"): builtins_.bytearray,
        }
    )
    return allowed


# --------------------------------------------------------------------------- the stream


class _Stream:
    """Reads exactly what an opcode announces, after checking that the stream holds that much."""

    def __init__(self, fh: BinaryIO):
        self.fh = fh
        self.size: int | None = None
        try:
            self.pos = fh.tell()
            self.size = fh.seek(0, io.SEEK_END)
            fh.seek(self.pos)
        except (OSError, AttributeError, ValueError):
            self.pos = 0  # not seekable: count what is read
        self.start = self.pos

    @property
    def length(self) -> int | None:
        return None if self.size is None else self.size - self.start

    def _check(self, n: int) -> None:
        if self.size is not None and n > self.size - self.pos:
            raise _Malformed(f"truncated: {n} bytes announced, {self.size - self.pos} left in the stream")

    def read(self, n: int) -> bytes:
        self._check(n)
        if self.size is None and n > _LAZY_BYTES:
            # an unseekable stream of unknown length: never allocate what it merely announces
            parts, left = [], n
            while left:
                part = self.fh.read(min(left, _LAZY_BYTES))
                if not part:
                    break
                parts.append(part)
                left -= len(part)
            data = b"".join(parts)
        else:
            data = self.fh.read(n)
        self.pos += len(data)
        if len(data) != n:
            raise _Malformed(f"truncated: {n} bytes announced, {len(data)} read")
        return data

    def skip(self, n: int) -> int:
        self._check(n)
        offset = self.pos
        self.fh.seek(n, io.SEEK_CUR)
        self.pos += n
        return offset

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def readline(self) -> bytes:
        line = self.fh.readline(_MAX_GLOBAL_LINE + 1)
        self.pos += len(line)
        if not line.endswith(b"\n"):
            raise _Malformed(f"GLOBAL name unterminated or longer than {_MAX_GLOBAL_LINE} bytes")
        return line[:-1]


# --------------------------------------------------------------------------- the interpreter

_OPCODES = {op.code.encode("latin1"): op.name for op in pickletools.opcodes}
_SIZE_FORMATS = {
    "LONG1": "<B",
    "LONG4": "<i",
    "BINUNICODE": "<I",
    "SHORT_BINUNICODE": "<B",
    "BINUNICODE8": "<Q",
    "BINBYTES": "<I",
    "SHORT_BINBYTES": "<B",
    "BINBYTES8": "<Q",
    "BYTEARRAY8": "<Q",
    "BINSTRING": "<i",
    "SHORT_BINSTRING": "<B",
}
_HASHABLE_SCALARS = (str, bytes, float, complex, type(None), np.generic, np.dtype)


class _Machine:
    """A pickle-opcode interpreter admitting only allow-listed globals."""

    def __init__(self, stream: _Stream, path: str | None, extra: Mapping[tuple[str, str], Any]):
        self.stream = stream
        self.path = path
        self.numpy = _Numpy(self)
        self.builtins = _Builtins(self)
        self.allowed = _allowed_globals(self.numpy, self.builtins)
        self.allowed.update(extra)
        self.callables = {id(v) for v in self.allowed.values() if v is not _NDARRAY}
        self.newobj_ok = {
            id(self.builtins.set),
            id(self.builtins.frozenset),
            id(self.builtins.dict),
            id(self.builtins.complex),
            id(self.builtins.bytearray),
        }
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.op_offset = stream.pos
        self.op_name = "?"
        length = stream.length
        self.budget = BUILD_FLOOR + BUILD_PER_BYTE * (length if length is not None else 0)
        self.built = 0
        # hashable containers built: id -> (depth, unsafe to hash); `keep` pins the ids
        self.hashables: dict[int, tuple[int, bool]] = {}
        self.keep: list[Any] = []
        self.builds: list[tuple[Any, Any]] = []  # BUILDs of stand-ins, applied after the graph check
        self.dispatch = {code: getattr(self, f"op_{name}", None) for code, name in _OPCODES.items()}

    # -- budget, keys, depth
    def charge(self, n: int) -> None:
        self.built += n
        if self.built > self.budget:
            raise _Malformed(
                f"the pickle builds more than {self.budget >> 20} MiB from a {self.stream.length}-byte stream "
                "(a legitimate artifact stays within BUILD_FLOOR + BUILD_PER_BYTE x its length)"
            )

    def check_key(self, key: Any) -> None:
        """Refuse dict keys / set members that are unhashable or collide by construction."""
        t = type(key)
        if t is int or t is bool or isinstance(key, np.integer):
            if abs(int(key)) >= _HASH_MODULUS:
                raise _Malformed(f"{_describe(int(key))} as a dict key or set member refused (hash collisions)")
        elif t is tuple or t is frozenset:
            if self.hashables.get(id(key), (0, False))[1]:
                raise _Malformed("a tuple holding a huge integer as a dict key or set member refused")
        elif not isinstance(key, (_HASHABLE_SCALARS, StateOnly)):
            raise _Malformed(f"unhashable {_describe(key)} as a dict key or set member")

    def register_hashable(self, obj: Any, items: Iterable[Any]) -> None:
        depth, unsafe = 0, False
        for item in items:
            t = type(item)
            if t is tuple or t is frozenset:
                d, u = self.hashables.get(id(item), (1, False))
                depth, unsafe = max(depth, d), unsafe or u
            elif (t is int or isinstance(item, np.integer)) and abs(int(item)) >= _HASH_MODULUS:
                unsafe = True
        if depth + 1 > MAX_DEPTH:
            raise _Malformed(f"containers nested deeper than {MAX_DEPTH} levels")
        self.hashables[id(obj)] = (depth + 1, unsafe)
        self.keep.append(obj)

    def tuple(self, items: list[Any]) -> tuple:
        out = tuple(items)
        self.charge(_EMPTY_COST["tuple"] + 8 * len(out))
        self.register_hashable(out, out)
        return out

    # -- errors
    def where(self) -> str:
        name = f"legacy pickle {self.path}" if self.path else "legacy pickle (in-memory stream)"
        return f"{name}, byte {self.op_offset} (opcode {self.op_name})"

    def _global(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self.allowed:
            return self.allowed[key]
        # ("pkg", "*") admits every global of a package, mapped to the same inert stand-in
        for (mod, wildcard), stand_in in self.allowed.items():
            if wildcard == "*" and (module == mod or module.startswith(mod + ".")):
                return stand_in
        raise _Refused(f"forbidden global {module[:200]}.{name[:200]}; nothing was executed")

    # -- stack helpers
    def pop(self) -> Any:
        if not self.stack:
            raise _Malformed("stack underflow: the opcode needs a value and the stack is empty")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise _Malformed("stack underflow: the opcode needs a value and the stack is empty")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise _Malformed("the opcode needs a MARK and there is none")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def sized(self, name: str) -> Any:
        n = self.stream.unpack(_SIZE_FORMATS[name])
        if n < 0:
            raise _Malformed(f"negative length {n}")
        if self.path is not None and n >= _LAZY_BYTES and name not in ("LONG1", "LONG4") and "UNICODE" not in name:
            return _LazyBytes(self.path, self.stream.skip(n), n)
        self.charge(n)
        return self.stream.read(n)

    # -- main loop
    def run(self) -> Any:
        while True:
            self.op_offset = self.stream.pos
            self.op_name = "?"
            code = self.stream.fh.read(1)
            self.stream.pos += len(code)
            if not code:
                raise _Malformed("the pickle ended without STOP (truncated)")
            name = _OPCODES.get(code)
            if name is None:
                raise _Malformed(f"unknown pickle opcode {code!r}")
            self.op_name = name
            if name == "STOP":
                return self.pop()
            handler = self.dispatch[code]
            if handler is None:
                raise _Malformed(f"pickle opcode {name} is not used by numpy/BERG artifacts and is not supported")
            handler()

    def finish(self, root: Any) -> Any:
        self.op_name = "STOP"
        roots = [root] + [s for _, s in self.builds]
        _check_graph(
            roots,
            {id(inst): [s for i, s in self.builds if i is inst] for inst, _ in self.builds},
            logical_limit=self.budget,
        )
        for inst, state in self.builds:
            inst.__setstate__(state)
        return root

    # -- opcodes: framing and stack
    def op_PROTO(self):  # noqa: N802 - opcode names
        proto = self.stream.unpack("<B")
        if proto > 5:
            raise _Malformed(f"pickle protocol {proto} not supported")

    def op_FRAME(self):  # noqa: N802
        self.stream.unpack("<Q")  # frames are a read-ahead hint; the lengths inside are checked anyway

    def op_MARK(self):  # noqa: N802
        self.charge(_EMPTY_COST["list"])
        self.metastack.append(self.stack)
        self.stack = []

    def op_POP(self):  # noqa: N802
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    def op_POP_MARK(self):  # noqa: N802
        self.pop_mark()

    def op_DUP(self):  # noqa: N802
        self.stack.append(self.top())

    # -- scalars
    def op_NONE(self):  # noqa: N802
        self.stack.append(None)

    def op_NEWTRUE(self):  # noqa: N802
        self.stack.append(True)

    def op_NEWFALSE(self):  # noqa: N802
        self.stack.append(False)

    def op_BININT(self):  # noqa: N802
        self.stack.append(self.stream.unpack("<i"))

    def op_BININT1(self):  # noqa: N802
        self.stack.append(self.stream.unpack("<B"))

    def op_BININT2(self):  # noqa: N802
        self.stack.append(self.stream.unpack("<H"))

    def op_BINFLOAT(self):  # noqa: N802
        self.stack.append(self.stream.unpack(">d"))

    def _long(self):
        self.stack.append(int.from_bytes(self.sized(self.op_name), "little", signed=True))

    op_LONG1 = op_LONG4 = _long

    def _text(self):
        data = self.sized(self.op_name)
        try:
            self.stack.append(data.decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError as exc:
            raise _Malformed(f"undecodable text (not UTF-8): {exc.reason} at position {exc.start}") from None

    op_BINUNICODE = op_SHORT_BINUNICODE = op_BINUNICODE8 = _text

    def _bytes(self):
        value = self.sized(self.op_name)
        if isinstance(value, bytes):
            if self.op_name in ("BINSTRING", "SHORT_BINSTRING"):
                value = value.decode("latin1")  # Python 2 str, as numpy's encoding="latin1" reads it
            elif self.op_name == "BYTEARRAY8":
                value = bytearray(value)
        self.stack.append(value)

    op_BINBYTES = op_BINBYTES8 = op_SHORT_BINBYTES = op_BYTEARRAY8 = _bytes
    op_BINSTRING = op_SHORT_BINSTRING = _bytes

    # -- containers
    def op_EMPTY_DICT(self):  # noqa: N802
        self.charge(_EMPTY_COST["dict"])
        self.stack.append({})

    def op_EMPTY_LIST(self):  # noqa: N802
        self.charge(_EMPTY_COST["list"])
        self.stack.append([])

    def op_EMPTY_TUPLE(self):  # noqa: N802
        self.stack.append(self.tuple([]))

    def op_EMPTY_SET(self):  # noqa: N802
        self.charge(_EMPTY_COST["set"])
        self.stack.append(set())

    def op_TUPLE(self):  # noqa: N802
        items = self.pop_mark()  # before naming self.stack: pop_mark replaces it
        self.stack.append(self.tuple(items))

    def op_TUPLE1(self):  # noqa: N802
        self.stack.append(self.tuple([self.pop()]))

    def op_TUPLE2(self):  # noqa: N802
        b, a = self.pop(), self.pop()
        self.stack.append(self.tuple([a, b]))

    def op_TUPLE3(self):  # noqa: N802
        c, b, a = self.pop(), self.pop(), self.pop()
        self.stack.append(self.tuple([a, b, c]))

    def op_LIST(self):  # noqa: N802
        items = self.pop_mark()
        self.charge(8 * len(items))
        self.stack.append(items)

    def op_DICT(self):  # noqa: N802
        items = self.pop_mark()
        if len(items) % 2:
            raise _Malformed("DICT needs key/value pairs and got an odd number of items")
        out: dict[Any, Any] = {}
        self._setitems(out, items)
        self.stack.append(out)

    def op_FROZENSET(self):  # noqa: N802
        items = self.pop_mark()
        self.stack.append(self.builtins.frozenset(items))

    def op_APPEND(self):  # noqa: N802
        value = self.pop()
        self._extend(self.top(), [value])

    def op_APPENDS(self):  # noqa: N802
        items = self.pop_mark()
        self._extend(self.top(), items)

    def _extend(self, target: Any, items: list[Any]) -> None:
        self.charge(8 * len(items))
        if isinstance(target, StateOnly):
            target.items.extend(items)
        elif type(target) is list:
            target.extend(items)
        else:
            raise _Malformed(f"APPEND to {_describe(target)} refused (only lists)")

    def op_ADDITEMS(self):  # noqa: N802
        items = self.pop_mark()
        target = self.top()
        if type(target) is not set:
            raise _Malformed(f"ADDITEMS to {_describe(target)} refused (only sets)")
        target.update(self.builtins._members(items))

    def _setitems(self, target: Any, items: list[Any]) -> None:
        if len(items) % 2:
            raise _Malformed("SETITEMS needs key/value pairs and got an odd number of items")
        self.charge(8 * len(items))
        pairs = zip(items[::2], items[1::2])
        if isinstance(target, StateOnly):
            target.items.extend(pairs)
            return
        if type(target) is not dict:
            raise _Malformed(f"SETITEM on {_describe(target)} refused (only dicts)")
        for k, v in pairs:
            self.check_key(k)
            target[k] = v

    def op_SETITEM(self):  # noqa: N802
        v, k = self.pop(), self.pop()
        self._setitems(self.top(), [k, v])

    def op_SETITEMS(self):  # noqa: N802
        items = self.pop_mark()
        self._setitems(self.top(), items)

    # -- memo
    def _put(self, key: int) -> None:
        value = self.top()
        if key not in self.memo:
            self.charge(64)  # a dict entry (memo floods are one 5-byte opcode each)
        self.memo[key] = value
        if isinstance(value, _Pending):
            value.memo_keys.append(key)

    def op_BINPUT(self):  # noqa: N802
        self._put(self.stream.unpack("<B"))

    def op_LONG_BINPUT(self):  # noqa: N802
        self._put(self.stream.unpack("<I"))

    def op_MEMOIZE(self):  # noqa: N802
        self._put(len(self.memo))

    def _get(self, key: int) -> None:
        try:
            self.stack.append(self.memo[key])
        except KeyError:
            raise _Malformed(f"the pickle refers to memo entry {key}, which was never stored") from None

    def op_BINGET(self):  # noqa: N802
        self._get(self.stream.unpack("<B"))

    def op_LONG_BINGET(self):  # noqa: N802
        self._get(self.stream.unpack("<I"))

    # -- globals and calls
    def op_GLOBAL(self):  # noqa: N802
        try:
            module = self.stream.readline().decode("utf-8")
            name = self.stream.readline().decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed("GLOBAL names are not UTF-8 text") from None
        self.stack.append(self._global(module, name))

    def op_STACK_GLOBAL(self):  # noqa: N802
        name, module = self.pop(), self.pop()
        if not (isinstance(module, str) and isinstance(name, str)):
            raise _Malformed("STACK_GLOBAL needs two strings")
        self.stack.append(self._global(module, name))

    def _call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
        if func is _NDARRAY:
            raise _Malformed(
                "numpy.ndarray(...) called with a size argument refused: array data must come from the file's bytes"
            )
        if id(func) not in self.callables:
            raise _Refused(f"calling {_describe(func)} refused: only allow-listed globals are called")
        if not isinstance(args, tuple):
            raise _Malformed(f"call arguments are {_describe(args)}, not a tuple")
        if kwargs is not None and not (isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)):
            raise _Malformed("keyword arguments are not a dict of names")
        self.charge(8 * len(args))
        try:
            return func(*args, **(kwargs or {}))
        except TypeError as exc:  # wrong argument count or kind for an admitted constructor
            raise _Malformed(f"bad arguments for {getattr(func, '__name__', type(func).__name__)}: {exc}") from None

    def op_REDUCE(self):  # noqa: N802
        args = self.pop()
        func = self.top()
        self.stack[-1] = self._call(func, args)

    def _newobj_target(self, cls: Any) -> None:
        if isinstance(cls, type) and issubclass(cls, StateOnly) and id(cls) in self.callables:
            return
        if id(cls) in self.newobj_ok:
            return
        raise _Refused(f"NEWOBJ of {_describe(cls)} refused")

    def op_NEWOBJ(self):  # noqa: N802
        args = self.pop()
        cls = self.top()
        self._newobj_target(cls)
        self.stack[-1] = self._call(cls, args)

    def op_NEWOBJ_EX(self):  # noqa: N802
        kwargs, args = self.pop(), self.pop()
        cls = self.top()
        self._newobj_target(cls)
        self.stack[-1] = self._call(cls, args, kwargs)

    def op_BUILD(self):  # noqa: N802
        state = self.pop()
        inst = self.top()
        if isinstance(inst, _PendingArray):
            self._complete(inst, self.numpy.build_array(state))
        elif isinstance(inst, _PendingDtype):
            self._complete(inst, self.numpy.build_dtype(inst, state))
        elif isinstance(inst, StateOnly):
            # applied after the whole graph is checked, so a stand-in never sees a cyclic or too-deep state
            self.builds.append((inst, state))
        else:
            raise _Refused(f"BUILD on {_describe(inst)} refused")

    def _complete(self, pending: _Pending, value: Any) -> None:
        self.stack[-1] = value
        for key in pending.memo_keys:
            if self.memo.get(key) is pending:
                self.memo[key] = value


# --------------------------------------------------------------------------- graph check


def _children(obj: Any, pending_states: Mapping[int, list[Any]]) -> Iterable[Any] | None:
    t = type(obj)
    if t is list or t is tuple or t is set or t is frozenset:
        return obj
    if t is dict:
        return itertools.chain.from_iterable(obj.items())
    if isinstance(obj, StateOnly):
        return itertools.chain(
            obj.args,
            obj.kwargs.values(),
            itertools.chain.from_iterable(i if type(i) is tuple else (i,) for i in obj.items),
            [obj.state],
            pending_states.get(id(obj), ()),
        )
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        return obj.reshape(-1)
    if isinstance(obj, _PendingArray):
        raise _Malformed("an array is used before its data (BUILD) was given")
    if isinstance(obj, _PendingDtype):
        raise _Malformed("a dtype is used before its state (BUILD) was given")
    if isinstance(obj, _LazyBytes):
        raise _Malformed(
            f"a {obj.length}-byte string that is not array data (legacy artifacts keep big data in arrays)"
        )
    return None


def _leaf_cost(obj: Any) -> int:
    """What a non-container value weighs when a consumer copies or walks it (bytes, roughly)."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, (str, bytes, bytearray)):
        return len(obj)
    return 8


def _check_graph(roots: list[Any], pending_states: Mapping[int, list[Any]], logical_limit: int | None = None) -> int:
    """Walk the built objects with an explicit stack: refuse cycles, depth > MAX_DEPTH, leftovers, and a
    logical size over ``logical_limit``.

    Shared objects are walked once (their height and logical size are remembered), so the walk is linear
    in the number of distinct objects and container slots, whatever the sharing. The *logical* size is
    what the graph weighs as a tree, i.e. when every shared reference is followed -- what a consumer that
    copies, compares, converts or prints the result pays. A file whose values share references so that
    the tree is huge (``x = [x, x]`` forty times: 2**40 paths in a few hundred bytes) is refused here, at
    read time, instead of hanging whatever reads it next.

    Returns
    -------
    int
        The logical size (bytes, roughly) of everything reachable from ``roots``.
    """
    heights: dict[int, int] = {}
    sizes: dict[int, int] = {}
    total = 0

    def over(n: int) -> None:
        if logical_limit is not None and n > logical_limit:
            raise _Malformed(
                f"its values share references so that reading them whole means more than {logical_limit >> 20} MiB "
                "(a graph of shared references, e.g. a list holding the same list twice, level after level); "
                "BERG's files are trees of arrays, so this is refused"
            )

    for root in roots:
        kids = _children(root, pending_states)
        if kids is None:
            total += _leaf_cost(root)
            over(total)
            continue
        if id(root) in heights:
            total += sizes[id(root)]
            over(total)
            continue
        path = {id(root)}
        # frame: [object, its children, height below it, logical size so far]
        stack: list[list[Any]] = [[root, iter(kids), 0, 64]]
        while stack:
            frame = stack[-1]
            for child in frame[1]:
                frame[3] += 8  # the slot
                grandkids = _children(child, pending_states)
                if grandkids is None:
                    frame[3] += _leaf_cost(child)
                    over(frame[3])
                    continue
                cid = id(child)
                if cid in heights:
                    if len(stack) + heights[cid] > MAX_DEPTH:
                        raise _Malformed(f"containers nested deeper than {MAX_DEPTH} levels")
                    frame[2] = max(frame[2], heights[cid])
                    frame[3] += sizes[cid]
                    over(frame[3])
                    continue
                if cid in path:
                    raise _Malformed("a self-referencing container (cycle); BERG artifacts never hold one")
                if len(stack) >= MAX_DEPTH:
                    raise _Malformed(f"containers nested deeper than {MAX_DEPTH} levels")
                path.add(cid)
                stack.append([child, iter(grandkids), 0, 64])
                break
            else:
                stack.pop()
                oid = id(frame[0])
                path.discard(oid)
                heights[oid] = frame[2] + 1
                sizes[oid] = frame[3]
                if stack:
                    stack[-1][2] = max(stack[-1][2], frame[2] + 1)
                    stack[-1][3] += frame[3]
                    over(stack[-1][3])
        total += sizes[id(root)]
        over(total)
    return total


# --------------------------------------------------------------------------- public API


def _validated_extra(extra_globals: Mapping[tuple[str, str], Any] | None) -> dict[tuple[str, str], Any]:
    extra = {}
    for key, value in (extra_globals or {}).items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
            raise ValueError(f"extra_globals keys are (module, name) tuples of strings, got {key!r}")
        extra[key] = value
    return extra


def _interpret(fh: BinaryIO, path: str | None, extra_globals: Mapping[tuple[str, str], Any] | None) -> Any:
    machine = _Machine(_Stream(fh), path, _validated_extra(extra_globals))
    try:
        return machine.finish(machine.run())
    except BERGError:
        raise
    except _Refused as exc:
        raise UnsafeArtifactError(f"{machine.where()}: {exc}") from None
    except _Malformed as exc:
        raise ArtifactError(
            f"cannot read {machine.where()}: {exc}. The file is damaged or is not a numpy/BERG artifact; "
            "if it came from the cache, remove it (`berg cache clear`) and fetch it again."
        ) from None
    except (Exception, RecursionError) as exc:  # anything else the file provoked: still a bad file
        detail = str(exc)[:300]
        raise ArtifactError(
            f"cannot read {machine.where()}: {type(exc).__name__}: {detail}. The file is damaged or is not "
            "a numpy/BERG artifact."
        ) from exc


def safe_unpickle(
    data: bytes | BinaryIO,
    *,
    extra_globals: Mapping[tuple[str, str], Any] | None = None,
    _path: str | None = None,
) -> Any:
    """Interpret a pickle with only numpy/container globals (plus ``extra_globals``) admitted.

    Parameters
    ----------
    data : bytes or binary file object
        The pickle stream (the file position is left after STOP).
    extra_globals : mapping, optional
        ``{(module, name): stand_in}``: what an allow-listed global becomes (e.g.
        ``{("sklearn.linear_model._ridge", "Ridge"): StateOnly}``); ``(package, "*")`` maps every
        global of a package (e.g. ``("nibabel", "*")``) to the stand-in. A stand-in's
        ``__setstate__`` runs after the whole stream was read and checked.

    Returns
    -------
    object
        Plain Python containers and numpy arrays (and stand-ins). Objects shared in the pickle are
        shared in the result.

    Raises
    ------
    UnsafeArtifactError
        A global outside the allow-list, or a call the allow-list does not admit (nothing is executed).
    ArtifactError
        Malformed, truncated or oversized pickle (the message names the byte offset and opcode).
    """
    fh = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    return _interpret(fh, _path, extra_globals)


def load_legacy_npy(path: str | os.PathLike[str], *, extra_globals: Mapping[tuple[str, str], Any] | None = None) -> Any:
    """Read an ``.npy`` file, including the pickled object arrays (dicts) that BERG saved with ``np.save``.

    A 0-d object array (how ``np.save`` stores a dict) is unwrapped to its item. Large arrays inside
    the pickle come back as read-only memory maps of the file (no copy in RAM). Plain numeric ``.npy``
    files are memory-mapped too.

    Parameters
    ----------
    path : path-like
        The ``.npy`` file.
    extra_globals : mapping, optional
        As for :func:`safe_unpickle`.

    Returns
    -------
    object
        The stored object (a dict for BERG's files) or array.

    Raises
    ------
    UnsafeArtifactError
        The pickle names a global outside the allow-list (nothing is executed).
    ArtifactNotFoundError
        The file does not exist.
    ArtifactError
        Not an .npy file, or malformed (the message names the file and the byte offset).
    """
    path = Path(path)
    from numpy.lib import format as npy_format

    try:
        with open(path, "rb") as fh:
            version = npy_format.read_magic(fh)
            if version in ((2, 0), (3, 0)):
                # numpy reads the announced header length before checking it: check it first
                (header_len,) = struct.unpack("<I", fh.read(4).ljust(4, b"\0"))
                if header_len > _MAX_NPY_HEADER:
                    raise _Malformed(f"the .npy header announces {header_len} bytes (numpy allows {_MAX_NPY_HEADER})")
                fh.seek(-4, io.SEEK_CUR)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
            else:
                raise ArtifactError(f"{path}: unsupported .npy version {version}; berg reads versions 1-3")
            offset = fh.tell()
            if not dtype.hasobject:
                shape = _shape(shape)
                if not math.prod(shape):
                    return np.empty(shape, dtype)
                return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
            obj = _interpret(fh, str(path), extra_globals)
    except BERGError:
        raise
    except _Malformed as exc:
        raise ArtifactError(f"cannot read legacy .npy file {path}: {exc}") from None
    except FileNotFoundError as exc:
        raise ArtifactNotFoundError(f"legacy .npy file {path} does not exist") from exc
    except (Exception, RecursionError) as exc:  # header parsing, mapping: a bad file either way
        raise ArtifactError(
            f"cannot read legacy .npy file {path}: {type(exc).__name__}: {str(exc)[:300]}. The file is damaged "
            "or is not a numpy file; if it came from the cache, remove it and fetch it again."
        ) from exc
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        return obj.item()
    return obj
