"""Reading legacy pickled artifacts (BERG's ``np.save``'d dicts, scikit-learn estimators) safely.

These files are pickles: loading them with Python's unpickler would let the file call any function
(``os.system``...). berg never does that. Instead this module *interprets* the pickle opcodes itself,
with a closed set of admitted globals:

* numpy array reconstruction (``numpy[._]core.multiarray._reconstruct`` + ``numpy.ndarray``),
  ``numpy.dtype`` and ``numpy[._]core.multiarray.scalar``;
* plain containers and scalars (dict, list, tuple, set, str, bytes, int, float, bool, None, complex);
* whatever the caller allow-lists through ``extra_globals``, mapped to a harmless stand-in of the
  caller's choice (e.g. a class that only keeps its ``__setstate__`` state).

Anything else raises :class:`~berg.errors.UnsafeArtifactError` naming the forbidden global, before
anything is called. Because the interpreter is our own, large byte strings (array data) in a file are
not read into memory: the resulting arrays are read-only memory maps of the file itself.

Memory: loading BERG's ``pca_weights.npy`` (a 100 x 5,337,088 float32 ``components_``, 2.1 GB) keeps
*zero* copies of the array in RAM at load time; the pages are read by the OS when the array is used.
Folding the scaler into the projection (``berg.readouts.Projection.from_scaler_components``) then
writes one float32 result in chunks, so the peak is one copy (2.1 GB) plus a chunk, never float64 and
never two full copies. ``tests/test_store_units.py`` checks that loading a 64 MB pickled array
allocates under 4 MiB (tracemalloc). Byte strings below 1 MiB (small arrays) are read normally.
"""

from __future__ import annotations

import codecs
import io
import os
import pickletools
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from berg.errors import ArtifactError, UnsafeArtifactError

__all__ = ["safe_unpickle", "load_legacy_npy", "StateOnly"]

# Byte strings at least this long are memory-mapped instead of read (when reading from a file).
_LAZY_BYTES = 1 << 20


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
        keys = sorted(self.state) if isinstance(self.state, dict) else type(self.state).__name__
        return f"StateOnly(state={keys})"


class _LazyBytes:
    """A byte range of the pickle file (array data), mapped only when an array is built on it."""

    def __init__(self, path: str, offset: int, length: int):
        self.path, self.offset, self.length = path, offset, length


class _PendingArray:
    """Result of ``_reconstruct``: becomes a real ndarray at BUILD."""


class _PendingDtype:
    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _PendingArray:
    if cls is not np.ndarray:
        raise UnsafeArtifactError(f"_reconstruct of {cls!r} refused; only numpy.ndarray is admitted")
    return _PendingArray()


def _make_dtype(name: Any, align: Any = False, copy: Any = True) -> _PendingDtype:
    if not isinstance(name, str):
        raise ArtifactError(f"unsupported pickled dtype {name!r}")
    try:
        return _PendingDtype(np.dtype(name))
    except TypeError as exc:
        raise ArtifactError(f"unsupported pickled dtype {name!r}") from exc


def _as_dtype(d: Any) -> np.dtype:
    return d.dtype if isinstance(d, _PendingDtype) else np.dtype(d)


def _scalar(dtype: Any, data: Any = None) -> Any:
    dt = _as_dtype(dtype)
    if dt.hasobject:
        return data
    if isinstance(data, str):  # protocol-2 pickles store scalar bytes as latin-1 str
        data = data.encode("latin1")
    return np.frombuffer(data, dtype=dt, count=1)[0]


def _codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise UnsafeArtifactError(f"_codecs.encode with encoding {encoding!r} refused")
    return codecs.encode(obj, encoding, errors)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    # numpy's protocol-5 array pickling: raw buffer + dtype + shape + order.
    if order not in ("C", "F"):
        raise ArtifactError(f"unexpected array order {order!r}")
    fortran = order == "F"
    return _build_array((tuple(shape), dtype, fortran, bytes(buf) if isinstance(buf, bytearray) else buf))


_NUMPY_GLOBALS: dict[tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _NUMPY_GLOBALS[(_mod, "_reconstruct")] = _reconstruct
    _NUMPY_GLOBALS[(_mod, "scalar")] = _scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _NUMPY_GLOBALS[(_mod, "_frombuffer")] = _frombuffer
_NUMPY_GLOBALS.update(
    {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _make_dtype,
        ("_codecs", "encode"): _codecs_encode,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "complex"): complex,
        ("builtins", "bytearray"): bytearray,
        ("collections", "OrderedDict"): dict,
        ("__builtin__", "set"): set,
    }
)


def _build_array(state: Any) -> np.ndarray:
    if not (isinstance(state, tuple) and len(state) in (4, 5)):
        raise ArtifactError(f"unexpected ndarray state {type(state).__name__}")
    if len(state) == 5:
        _, shape, dtype, fortran, data = state
    else:
        shape, dtype, fortran, data = state
    dt = _as_dtype(dtype)
    shape = tuple(int(s) for s in shape)
    order = "F" if fortran else "C"
    count = int(np.prod(shape, dtype=np.int64))
    if dt.hasobject:
        items = list(data)
        if len(items) != count:
            raise ArtifactError("object array state has the wrong number of items")
        arr = np.empty(count, dtype=object)
        for i, item in enumerate(items):
            arr[i] = item
        return arr.reshape(shape, order=order)
    nbytes = count * dt.itemsize
    if isinstance(data, _LazyBytes):
        if data.length != nbytes:
            raise ArtifactError(f"array data is {data.length} bytes, expected {nbytes}")
        if nbytes == 0:
            return np.empty(shape, dtype=dt, order=order)
        return np.memmap(data.path, dtype=dt, mode="r", offset=data.offset, shape=shape, order=order)
    if isinstance(data, str):
        data = data.encode("latin1")
    if len(data) != nbytes:
        raise ArtifactError(f"array data is {len(data)} bytes, expected {nbytes}")
    return np.frombuffer(data, dtype=dt, count=count).reshape(shape, order=order)


def _build_dtype(obj: _PendingDtype, state: Any) -> np.dtype:
    dt = obj.dtype
    if isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">") and dt.itemsize > 1:
        dt = dt.newbyteorder(state[1])
    if isinstance(state, tuple) and len(state) >= 6 and state[3] is not None:
        names, fields, itemsize = state[3], state[4], state[5]
        try:
            return np.dtype({
                "names": list(names),
                "formats": [_as_dtype(fields[n][0]) for n in names],
                "offsets": [int(fields[n][1]) for n in names],
                "itemsize": int(itemsize),
            })
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise ArtifactError(f"unsupported structured dtype in legacy pickle: {exc}") from exc
    return dt


class _Machine:
    """A pickle-opcode interpreter admitting only allow-listed globals."""

    def __init__(self, fh: BinaryIO, path: str | None, allowed: Mapping[tuple[str, str], Any]):
        self.fh = fh
        self.path = path
        self.allowed = allowed
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}

    # -- helpers
    def _global(self, module: str, name: str) -> Any:
        key = (module, name)
        if key not in self.allowed:
            # ("pkg", "*") admits every global of a package, mapped to the same inert stand-in
            for (mod, wildcard), stand_in in self.allowed.items():
                if wildcard == "*" and (module == mod or module.startswith(mod + ".")):
                    return stand_in
            raise UnsafeArtifactError(
                f"forbidden global {module}.{name} in legacy pickle{f' {self.path}' if self.path else ''}; "
                "nothing was executed"
            )
        return self.allowed[key]

    def _pop_mark(self) -> list[Any]:
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def _replace(self, old: Any, new: Any) -> None:
        self.stack[-1] = new
        for k, v in self.memo.items():
            if v is old:
                self.memo[k] = new

    def _bytes(self, n: int) -> Any:
        if self.path is not None and n >= _LAZY_BYTES:
            offset = self.fh.tell()
            self.fh.seek(n, io.SEEK_CUR)
            return _LazyBytes(self.path, offset, n)
        data = self.fh.read(n)
        if len(data) != n:
            raise ArtifactError("truncated pickle")
        return data

    def _call(self, func: Any, args: Any) -> Any:
        if not isinstance(args, tuple):
            raise ArtifactError("REDUCE arguments must be a tuple")
        return func(*args)

    # -- main loop
    def run(self) -> Any:
        read = self.fh.read
        ops = {op.code.encode("latin1"): op for op in pickletools.opcodes}
        while True:
            code = read(1)
            if not code:
                raise ArtifactError("pickle ended without STOP")
            op = ops.get(code)
            if op is None:
                raise ArtifactError(f"unknown pickle opcode {code!r}")
            name = op.name
            if name in ("BINBYTES", "BINBYTES8", "SHORT_BINBYTES", "BYTEARRAY8", "BINSTRING", "SHORT_BINSTRING"):
                size_fmt = {"BINBYTES": "<I", "BINBYTES8": "<Q", "SHORT_BINBYTES": "<B", "BYTEARRAY8": "<Q",
                            "BINSTRING": "<i", "SHORT_BINSTRING": "<B"}[name]
                (n,) = struct.unpack(size_fmt, read(struct.calcsize(size_fmt)))
                value = self._bytes(n)
                if name in ("BINSTRING", "SHORT_BINSTRING") and isinstance(value, bytes):
                    value = value.decode("latin1")
                elif name == "BYTEARRAY8" and isinstance(value, bytes):
                    value = bytearray(value)
                self.stack.append(value)
                continue
            arg = op.arg.reader(self.fh) if op.arg is not None else None
            if name == "STOP":
                return self.stack.pop()
            handler = getattr(self, f"op_{name}", None)
            if handler is None:
                raise ArtifactError(f"pickle opcode {name} is not supported in legacy artifacts")
            handler(arg)

    # -- opcodes
    def op_PROTO(self, arg):  # noqa: N802 - opcode names
        if arg > 5:
            raise ArtifactError(f"pickle protocol {arg} not supported")

    def op_FRAME(self, arg):  # noqa: N802
        pass

    def op_MARK(self, arg):  # noqa: N802
        self.metastack.append(self.stack)
        self.stack = []

    def op_POP(self, arg):  # noqa: N802
        if self.stack:
            self.stack.pop()
        else:
            self._pop_mark()

    def op_POP_MARK(self, arg):  # noqa: N802
        self._pop_mark()

    def op_DUP(self, arg):  # noqa: N802
        self.stack.append(self.stack[-1])

    def op_NONE(self, arg):  # noqa: N802
        self.stack.append(None)

    def op_NEWTRUE(self, arg):  # noqa: N802
        self.stack.append(True)

    def op_NEWFALSE(self, arg):  # noqa: N802
        self.stack.append(False)

    def _push(self, arg):
        self.stack.append(arg)

    op_BININT = op_BININT1 = op_BININT2 = op_LONG1 = op_LONG4 = op_BINFLOAT = _push
    op_BINUNICODE = op_SHORT_BINUNICODE = op_BINUNICODE8 = _push

    def op_EMPTY_DICT(self, arg):  # noqa: N802
        self.stack.append({})

    def op_EMPTY_LIST(self, arg):  # noqa: N802
        self.stack.append([])

    def op_EMPTY_TUPLE(self, arg):  # noqa: N802
        self.stack.append(())

    def op_EMPTY_SET(self, arg):  # noqa: N802
        self.stack.append(set())

    def op_TUPLE(self, arg):  # noqa: N802
        items = self._pop_mark()
        self.stack.append(tuple(items))

    def op_TUPLE1(self, arg):  # noqa: N802
        self.stack[-1] = (self.stack[-1],)

    def op_TUPLE2(self, arg):  # noqa: N802
        b = self.stack.pop()
        self.stack[-1] = (self.stack[-1], b)

    def op_TUPLE3(self, arg):  # noqa: N802
        c = self.stack.pop()
        b = self.stack.pop()
        self.stack[-1] = (self.stack[-1], b, c)

    def op_LIST(self, arg):  # noqa: N802
        items = self._pop_mark()
        self.stack.append(items)

    def op_DICT(self, arg):  # noqa: N802
        items = self._pop_mark()
        self.stack.append(dict(zip(items[::2], items[1::2])))

    def op_FROZENSET(self, arg):  # noqa: N802
        items = self._pop_mark()
        self.stack.append(frozenset(items))

    def op_APPEND(self, arg):  # noqa: N802
        value = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, StateOnly):
            target.items.append(value)
            return
        if not isinstance(target, list):
            raise ArtifactError("APPEND to a non-list refused")
        target.append(value)

    def op_APPENDS(self, arg):  # noqa: N802
        items = self._pop_mark()
        target = self.stack[-1]
        if isinstance(target, StateOnly):
            target.items.extend(items)
            return
        if not isinstance(target, list):
            raise ArtifactError("APPENDS to a non-list refused")
        target.extend(items)

    def op_ADDITEMS(self, arg):  # noqa: N802
        items = self._pop_mark()
        target = self.stack[-1]
        if not isinstance(target, set):
            raise ArtifactError("ADDITEMS to a non-set refused")
        target.update(items)

    def _setitems(self, target: Any, items: list[Any]) -> None:
        if isinstance(target, StateOnly):
            target.items.extend(zip(items[::2], items[1::2]))
            return
        if not isinstance(target, dict):
            raise ArtifactError("SETITEM on a non-dict refused")
        for k, v in zip(items[::2], items[1::2]):
            target[k] = v

    def op_SETITEM(self, arg):  # noqa: N802
        v = self.stack.pop()
        k = self.stack.pop()
        self._setitems(self.stack[-1], [k, v])

    def op_SETITEMS(self, arg):  # noqa: N802
        items = self._pop_mark()
        self._setitems(self.stack[-1], items)

    def op_BINPUT(self, arg):  # noqa: N802
        self.memo[arg] = self.stack[-1]

    op_LONG_BINPUT = op_BINPUT

    def op_MEMOIZE(self, arg):  # noqa: N802
        self.memo[len(self.memo)] = self.stack[-1]

    def op_BINGET(self, arg):  # noqa: N802
        try:
            self.stack.append(self.memo[arg])
        except KeyError as exc:
            raise ArtifactError(f"pickle refers to unknown memo {arg}") from exc

    op_LONG_BINGET = op_BINGET

    def op_GLOBAL(self, arg):  # noqa: N802
        module, name = arg.split(" ", 1) if " " in arg else arg.split("\n", 1)
        self.stack.append(self._global(module, name))

    def op_STACK_GLOBAL(self, arg):  # noqa: N802
        name = self.stack.pop()
        module = self.stack.pop()
        if not (isinstance(module, str) and isinstance(name, str)):
            raise ArtifactError("STACK_GLOBAL needs two strings")
        self.stack.append(self._global(module, name))

    def op_REDUCE(self, arg):  # noqa: N802
        args = self.stack.pop()
        func = self.stack[-1]
        self.stack[-1] = self._call(func, args)

    def op_NEWOBJ(self, arg):  # noqa: N802
        args = self.stack.pop()
        cls = self.stack[-1]
        if not isinstance(cls, type) or not issubclass(cls, StateOnly):
            if cls not in (set, frozenset, dict, complex, bytearray):
                raise UnsafeArtifactError(f"NEWOBJ of {cls!r} refused")
        self.stack[-1] = cls(*args)

    def op_NEWOBJ_EX(self, arg):  # noqa: N802
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack[-1]
        if not isinstance(cls, type) or not issubclass(cls, StateOnly):
            raise UnsafeArtifactError(f"NEWOBJ_EX of {cls!r} refused")
        self.stack[-1] = cls(*args, **kwargs)

    def op_BUILD(self, arg):  # noqa: N802
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, _PendingArray):
            self._replace(inst, _build_array(state))
        elif isinstance(inst, _PendingDtype):
            self._replace(inst, _build_dtype(inst, state))
        elif isinstance(inst, StateOnly):
            inst.__setstate__(state)
        else:
            raise UnsafeArtifactError(f"BUILD on {type(inst).__name__} refused")



def _allowed(extra_globals: Mapping[tuple[str, str], Any] | None) -> dict[tuple[str, str], Any]:
    allowed = dict(_NUMPY_GLOBALS)
    for key, value in (extra_globals or {}).items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"extra_globals keys are (module, name) tuples, got {key!r}")
        allowed[key] = value
    return allowed


def _finalise(obj: Any) -> Any:
    """Replace pending dtypes left as values (e.g. a dtype stored in a dict) by real dtypes."""
    if isinstance(obj, _PendingDtype):
        return obj.dtype
    if isinstance(obj, (_PendingArray, _LazyBytes)):
        raise ArtifactError("incomplete array in legacy pickle")
    if isinstance(obj, dict):
        return {_finalise(k): _finalise(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finalise(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_finalise(v) for v in obj)
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        flat = obj.reshape(-1)
        for i in range(flat.size):
            flat[i] = _finalise(flat[i])
    return obj


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
        global of a package (e.g. ``("nibabel", "*")``) to the stand-in.

    Returns
    -------
    object
        Plain Python containers and numpy arrays (and stand-ins).

    Raises
    ------
    UnsafeArtifactError
        A global outside the allow-list (nothing is executed).
    ArtifactError
        Malformed or unsupported pickle.
    """
    fh = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    return _finalise(_Machine(fh, _path, _allowed(extra_globals)).run())


def load_legacy_npy(
    path: str | os.PathLike[str], *, extra_globals: Mapping[tuple[str, str], Any] | None = None
) -> Any:
    """Read an ``.npy`` file, including the pickled object arrays (dicts) that BERG saved with ``np.save``.

    A 0-d object array (how ``np.save`` stores a dict) is unwrapped to its item. Large arrays inside
    the pickle come back as read-only memory maps of the file (no copy in RAM). Plain numeric ``.npy``
    files are memory-mapped too.

    Raises
    ------
    UnsafeArtifactError
        The pickle names a global outside the allow-list (nothing is executed).
    ArtifactError
        Not an .npy file, or malformed.
    """
    path = Path(path)
    from numpy.lib import format as npy_format

    try:
        with open(path, "rb") as fh:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
            else:
                raise ArtifactError(f"{path}: unsupported .npy version {version}")
            offset = fh.tell()
            if not dtype.hasobject:
                return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                                 order="F" if fortran else "C") if np.prod(shape) else np.empty(shape, dtype)
            obj = safe_unpickle(fh, extra_globals=extra_globals, _path=str(path))
    except (ValueError, OSError, struct.error, EOFError) as exc:
        raise ArtifactError(f"cannot read legacy .npy file {path}: {exc}") from exc
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        return obj.item()
    return obj

