"""An unpickler for pickles from the internet (mini-ImageNet, CIFAR-100): it allows only plain
containers and numpy arrays, so a pickle cannot run code, and it cannot build more bytes of arrays
than the file itself holds. ``safe_load_pickle`` turns every way a download can be bad (an HTML
page, a truncated or corrupt file, a disallowed global) into a PrepError that says what to do.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np

from .common import PrepError


def _numpy_multiarray():
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray, numeric
    return multiarray, numeric


_multiarray, _numeric = _numpy_multiarray()


class _NotPlain(pickle.UnpicklingError):
    """The pickle asks for something other than plain containers and numeric arrays."""


class _NdarrayName:
    """What ``numpy.ndarray`` stands for in a pickle: the first argument of ``_reconstruct``.
    The class itself is not handed out, since calling it (REDUCE, NEWOBJ) would allocate an
    array of any size the pickle asks for."""

    def __call__(self, *args, **kwargs):
        raise _NotPlain("it calls numpy.ndarray itself")


_NDARRAY = _NdarrayName()

# The only globals a pickle of plain containers and numpy arrays needs. Numpy 1 pickles name
# numpy.core.*, numpy 2 pickles numpy._core.*; Python 2 pickles name __builtin__. Each entry only
# builds an array, a dtype, a set or bytes; none can call anything else. The array builders are
# the unpickler's checked methods (named by string here).
SAFE_GLOBALS = {}
for _core in ("numpy.core", "numpy._core"):
    SAFE_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = "_reconstruct"
    SAFE_GLOBALS[(f"{_core}.multiarray", "scalar")] = _multiarray.scalar
    SAFE_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = "_frombuffer"
SAFE_GLOBALS.update({
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): "_encode",  # how protocol 2 stores bytes
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset,
})


class _SafeUnpickler(pickle._Unpickler):
    """An unpickler for untrusted files: only SAFE_GLOBALS, and numpy arrays of plain (not
    object) dtypes whose bytes add up to no more than the file's size.

    A pickle stores each array's bytes inside itself (protocols 2 to 4: the state given to
    ``ndarray.__setstate__``; protocol 5 in-band: the buffer given to ``_frombuffer``; an
    out-of-band buffer cannot be loaded at all without ``buffers=``), so arrays larger than the
    file are a lie, meant to exhaust memory: the shape is checked before numpy allocates
    anything. It is pickle's pure-Python unpickler, whose BUILD step (``__setstate__``) can be
    checked, unlike the C one's; the arrays' bytes are still read in one piece each.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path: Path, size: int, what_to_do: str):
        super().__init__(file, encoding="latin1")
        self.path, self.size, self.what_to_do = path, size, what_to_do
        self.left = size  # bytes of arrays still allowed

    def find_class(self, module, name):
        if (module, name) not in SAFE_GLOBALS:
            raise _NotPlain(f"it refers to {module}.{name}")
        found = SAFE_GLOBALS[(module, name)]
        return getattr(self, found) if isinstance(found, str) else found

    def _refuse(self, why: str) -> PrepError:
        return PrepError(f"{self.path} {why}; delete it and {self.what_to_do}")

    def _allocate(self, shape, dtype) -> int:
        """Check an array's shape and dtype before it is made; count its bytes; return them."""
        try:
            dtype = np.dtype(dtype)
        except (TypeError, ValueError) as e:
            raise self._refuse(f"is corrupt (an array of dtype {dtype!r}: {e})") from None
        if dtype.hasobject:  # numpy crashes on malformed object-array states; no dataset has one
            raise self._refuse(f"holds an array of Python objects (dtype {dtype}), not a plain numeric "
                               f"array; refusing to load it")
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise self._refuse(f"is corrupt (an array of shape {shape!r})")
        nbytes = math.prod(shape) * dtype.itemsize
        self.left -= nbytes
        if self.left < 0:
            raise self._refuse(
                f"asks for arrays larger than the file itself (one of shape {shape} {dtype}, "
                f"{nbytes:,} bytes, from a file of {self.size:,} bytes; a pickle holds its arrays' "
                f"bytes inside itself): it is corrupt or made to exhaust memory")
        return nbytes

    def _reconstruct(self, subtype, shape, dtype):
        """numpy's first step for an array (protocols 2-4): an empty array that BUILD fills."""
        if subtype is not _NDARRAY:
            raise _NotPlain(f"it builds a {type(subtype).__name__} with numpy's _reconstruct, "
                            f"which here only makes numpy.ndarray")
        self._allocate(shape, dtype)
        return _multiarray._reconstruct(np.ndarray, shape, dtype)

    def _frombuffer(self, buffer, dtype, shape, order):
        """numpy's array of protocol 5: a view of a buffer stored in the pickle."""
        self._allocate(shape, dtype)
        return _numeric._frombuffer(buffer, dtype, shape, order)

    def _encode(self, text, encoding="utf-8", *rest):
        """``_codecs.encode(str, "latin1")``, how protocol 2 stores bytes; no other codec (some,
        applied again and again, would multiply the data)."""
        if not (isinstance(text, str) and encoding in ("latin1", "latin-1") and not rest):
            raise _NotPlain(f"it refers to _codecs.encode with {encoding!r}")
        return text.encode("latin1")

    def load_build(self):
        """BUILD, i.e. ``obj.__setstate__(state)``: allowed for dtypes, and for arrays after the
        state's shape, dtype and bytes are checked (numpy would allocate the shape first)."""
        obj, state = self.stack[-2], self.stack[-1]
        if isinstance(obj, np.ndarray):
            if not (isinstance(state, tuple) and len(state) in (4, 5)):
                raise self._refuse("is corrupt (a malformed array state)")
            shape, dtype, _, data = state[-4:]
            nbytes = self._allocate(shape, dtype)
            if not isinstance(data, (bytes, bytearray, str)) or len(data) != nbytes:
                raise self._refuse(f"is corrupt (an array of shape {shape} {dtype} whose stored data "
                                   f"is not its {nbytes:,} bytes)")
        elif not isinstance(obj, np.dtype):
            raise _NotPlain(f"it sets the state of a {type(obj).__name__}")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def looks_like_html(head: bytes) -> bool:
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()  # a UTF-8 byte-order mark, then spaces
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<!--", b"<?xml", b"<body"))


def safe_load_pickle(path: str | Path, what_to_do: str) -> object:
    """Unpickle ``path`` allowing only plain containers and numpy arrays: a pickle cannot run code,
    and cannot make arrays larger than the file (``_SafeUnpickler``).

    A file that is an HTML page (what Google Drive serves in place of a large file) or that ends
    early gets a PrepError saying so; ``what_to_do`` tells the user how to get a good copy.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(512)
            if looks_like_html(head):
                raise PrepError(
                    f"{path} is an HTML page, not a pickle (Google Drive serves its 'virus scan "
                    f"warning' page in place of large files); delete it and {what_to_do}")
            f.seek(0)
            return _SafeUnpickler(f, path, os.fstat(f.fileno()).st_size, what_to_do).load()
    except PrepError:
        raise
    except FileNotFoundError:
        raise PrepError(f"{path} does not exist; {what_to_do}") from None
    except _NotPlain as e:
        raise PrepError(f"{path} is not a plain data pickle ({e}); refusing to load it, since a pickle "
                        f"can run code and only containers and numeric numpy arrays are allowed; "
                        f"{what_to_do}") from None
    except pickle.UnpicklingError as e:
        if "truncated" in str(e) or "exhausted" in str(e):
            raise PrepError(f"{path} ends early (truncated); delete it and {what_to_do}") from None
        raise PrepError(f"{path} is not a readable pickle ({e}): it is corrupt; delete it and "
                        f"{what_to_do}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            OSError, UnicodeDecodeError) as e:
        if isinstance(e, EOFError):
            kind = "ends early (truncated)"
        elif isinstance(e, KeyError):  # the pure-Python unpickler's word for an unknown opcode
            kind = f"is not a readable pickle (unknown opcode {e}): it is corrupt"
        else:
            kind = f"is corrupt ({type(e).__name__}: {e})"
        raise PrepError(f"{path} {kind}; delete it and {what_to_do}") from None
