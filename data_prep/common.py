"""What every dataset preparation shares: the one-line error, checksums, downloads, safe archive
extraction, an unpickler that cannot run code, the split lists, and the command-line wrapper.

Raw files come from the internet, so none of them is trusted: archives are checked against their
published md5, may not place a file outside the folder they are extracted into, and may not
expand beyond a size limit (``ExtractLimit``: a decompression bomb is refused, not extracted until
the disk is full); pickles may hold only plain containers and numpy arrays, and no more bytes of
arrays than the file itself holds.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import pickle
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from anil.data import DatasetError, describe_os_error

SPLITS_DIR = Path(__file__).resolve().parent / "splits"


class PrepError(DatasetError):
    """Raw data is missing, corrupt or does not match its split lists; the message says what to do."""


# ------------------------------------------------------------------------------- checksums


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: str | Path, expected: str | None, fix: str) -> None:
    """Raise a PrepError unless ``path`` has md5 ``expected`` (None: nothing to check)."""
    if expected is None:
        return
    actual = md5sum(path)
    if actual != expected:
        raise PrepError(f"{path} has md5 {actual}, expected {expected}: the file is truncated, corrupt "
                        f"or not the official one; {fix}")


def download(url: str, dest: str | Path, md5: str | None) -> Path:
    """Fetch ``url`` to ``dest`` (kept if it is already there with the right md5), md5-checked.

    The bytes go to ``dest.partial`` first and are renamed only once they check out, so an
    interrupted download never leaves a file that looks complete. A failure to write (no
    permission, disk full) propagates as the OSError it is; only reading from the network is
    reported as a download problem.
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        print(f"using {dest} (already downloaded, md5 ok)", flush=True)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    print(f"downloading {url} -> {dest} ...", flush=True)
    try:
        with open(partial, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=60)
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise _network_error(url, e) from None
            with response:
                while True:
                    try:
                        block = response.read(1 << 20)
                    except (OSError, ValueError) as e:
                        raise _network_error(url, e) from None
                    if not block:
                        break
                    out.write(block)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    try:
        verify_md5(partial, md5, f"the download from {url} was damaged; run the command again")
    except PrepError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, dest)
    return dest


def _network_error(url: str, e: Exception) -> PrepError:
    reason = getattr(e, "reason", None) or e
    return PrepError(f"cannot download {url} ({reason}); check the internet connection, or "
                     f"download the file yourself and pass its path with --source")


# ------------------------------------------------------------------------- safe archives


def _check_member(archive: Path, name: str, is_link: bool = False, is_special: bool = False) -> None:
    """Refuse a member that is absolute, climbs out with ``..``, is a link, or is a device file."""
    path = PurePosixPath(name.replace("\\", "/"))
    if is_link or is_special:
        kind = "a link" if is_link else "a special file"
        raise PrepError(f"{archive} holds {kind} ({name!r}); refusing to extract it (an archive "
                        f"may only hold plain files); get a clean copy of the file")
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise PrepError(f"{archive} holds a member outside its folder ({name!r}); refusing to "
                        f"extract it; get a clean copy of the file")


MB = 10 ** 6
CHUNK = 1 << 20  # bytes copied at a time: a limit is never overrun by more than this


@dataclass(frozen=True)
class ExtractLimit:
    """How far an archive may expand: ``total`` bytes over all its members, ``member`` bytes for
    any one. Each preparation sets it from the known size of its raw files with a margin of about
    2x; an archive of unknown content gets ``default_limit``. Sizes are checked as declared by
    the archive before anything is written, and again while copying (a declaration can lie)."""

    total: int
    member: int

    @classmethod
    def mb(cls, total_mb: float, member_mb: float | None = None) -> "ExtractLimit":
        """A limit in MB (10^6 bytes); the member limit defaults to the total."""
        return cls(int(total_mb * MB), int((total_mb if member_mb is None else member_mb) * MB))


def default_limit(archive: str | Path) -> ExtractLimit:
    """For an archive of unknown content: 64 MB plus 20x its size on disk. Images barely compress
    (ratio about 1 to 3), while a decompression bomb expands about 1000x (deflate's maximum)."""
    try:
        size = Path(archive).stat().st_size
    except OSError:
        size = 0
    return ExtractLimit.mb(64 + 20 * size / MB)


def add_extract_limit_arg(parser: argparse.ArgumentParser, default: ExtractLimit) -> None:
    """``--max-extract-mb N``: raise (or lower) the limit to N MB, in total and per member."""
    def megabytes(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a positive number of MB, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be a positive number of MB, got {text}")
        return value
    parser.add_argument("--max-extract-mb", type=megabytes, metavar="MB",
                        help=f"refuse archives that expand beyond MB megabytes (default "
                        f"{default.total // MB} in total, {default.member // MB} per member); raise "
                        f"it only for an archive you trust")


def limit_from_args(args, default: ExtractLimit) -> ExtractLimit:
    return default if args.max_extract_mb is None else ExtractLimit.mb(args.max_extract_mb)


class _Meter:
    """Counts what an archive expands to against its ExtractLimit; PrepError when over it."""

    def __init__(self, archive: Path, limit: ExtractLimit):
        self.archive, self.limit = archive, limit
        self.declared = self.copied = 0

    def _over(self, name: str, which: str) -> PrepError:
        amount = self.limit.member if which == "member" else self.limit.total
        what = f"its member {name!r} expands" if which == "member" else "it expands"
        where = "the limit per member" if which == "member" else "the limit for the whole archive"
        return PrepError(f"{self.archive}: {what} to more than {amount / MB:g} MB ({where}); refusing "
                         f"to extract it (a decompression bomb, or not the expected file); nothing "
                         f"was kept; if you trust the archive, raise the limit with --max-extract-mb")

    def declare(self, name: str, size: int) -> None:
        """Check a member's declared size before anything is written."""
        if size > self.limit.member:
            raise self._over(name, "member")
        self.declared += size
        if self.declared > self.limit.total:
            raise self._over(name, "total")

    def count(self, name: str, member_so_far: int, block: int) -> None:
        """Check ``block`` more bytes of a member that had ``member_so_far`` already."""
        self.copied += block
        if member_so_far + block > self.limit.member:
            raise self._over(name, "member")
        if self.copied > self.limit.total:
            raise self._over(name, "total")


class _CountedMember:
    """A member opened for reading whose bytes are counted by a _Meter as they are read."""

    def __init__(self, file, meter: _Meter, name: str):
        self.file, self.meter, self.name, self.read_so_far = file, meter, name, 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:  # read() of the whole member, a chunk at a time
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        block = self.file.read(min(n, CHUNK))
        self.meter.count(self.name, self.read_so_far, len(block))
        self.read_so_far += len(block)
        return block

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _LimitedZipFile(zipfile.ZipFile):
    """A ZipFile whose members are counted against an ExtractLimit as they are read."""

    meter: _Meter

    def open(self, name, mode="r", pwd=None, **kwargs):
        file = super().open(name, mode, pwd, **kwargs)
        if mode != "r":
            return file
        return _CountedMember(file, self.meter, getattr(name, "filename", name))


def open_zip(archive: str | Path, limit: ExtractLimit | None = None) -> zipfile.ZipFile:
    """Open a zip whose every member is a plain relative path and whose declared sizes fit
    ``limit`` (default: ``default_limit``), all checked before anything is read; reading a member
    (``zf.read``, ``zf.open``) counts its bytes against the limit too."""
    archive = Path(archive)
    meter = _Meter(archive, limit or default_limit(archive))
    try:
        zf = _LimitedZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise PrepError(f"{archive} is not a readable zip archive ({e}): it is truncated or corrupt; "
                        f"delete it and download it again") from None
    zf.meter = meter
    try:
        for info in zf.infolist():
            mode = info.external_attr >> 16
            _check_member(archive, info.filename, is_link=(mode & 0o170000) == 0o120000)
            if not info.is_dir():
                meter.declare(info.filename, info.file_size)
    except PrepError:
        zf.close()
        raise
    return zf


def _tar_members(archive: Path, tf: tarfile.TarFile, root: Path, meter: _Meter) -> list:
    """Every member of a tar, checked header by header: a bad one stops the reading at once (a
    bomb's size is refused before its data is decompressed)."""
    members = []
    for m in tf:
        _check_member(archive, m.name, is_link=m.issym() or m.islnk(),
                      is_special=not (m.isfile() or m.isdir()))
        if not (root / m.name).resolve().is_relative_to(root):
            _check_member(archive, "../" + m.name)
        if m.isfile():
            meter.declare(m.name, m.size)
        members.append(m)
    return members


def safe_extract(archive: str | Path, dest: str | Path, limit: ExtractLimit | None = None) -> Path:
    """Extract a .tar(.gz) or .zip into ``dest``; every member must land inside ``dest`` and the
    whole must fit ``limit`` (default: ``default_limit``).

    All members are checked before anything is written: an absolute path, a ``..`` component,
    a symbolic or hard link, a device file, or a declared size over the limit refuses the whole
    archive. While copying, bytes are counted against the limit again. Files are created, never
    overwritten; if anything fails, what this call created is removed again.
    """
    archive, dest = Path(archive), Path(dest)
    limit = limit or default_limit(archive)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PrepError(f"cannot extract {archive} into {dest}: {describe_os_error(e)}") from None
    root = dest.resolve()
    created: list[Path] = []
    try:
        if zipfile.is_zipfile(archive):
            with open_zip(archive, limit) as zf:  # members checked on opening, counted when read
                for info in zf.infolist():
                    target = root / PurePosixPath(info.filename.replace("\\", "/"))
                    if not target.resolve().is_relative_to(root):  # through a link in dest
                        _check_member(archive, "../" + info.filename)
                    if info.is_dir():
                        _make_folders(target, root, created, archive)
                    else:
                        with zf.open(info) as src:
                            _copy_new(src, target, root, created, archive)
            return dest
        with tarfile.open(archive) as tf:
            meter = _Meter(archive, limit)
            members = _tar_members(archive, tf, root, meter)
            for m in members:
                target = root / m.name
                if m.isdir():
                    _make_folders(target, root, created, archive)
                    continue
                with tf.extractfile(m) as src:
                    _copy_new(_CountedMember(src, meter, m.name), target, root, created, archive)
    except BaseException as e:
        for path in reversed(created):  # nothing half-extracted is kept
            try:
                path.rmdir() if path.is_dir() else path.unlink()
            except OSError:
                pass
        if isinstance(e, (tarfile.TarError, EOFError, OSError, zipfile.BadZipFile)):
            if isinstance(e, FileNotFoundError) and not archive.exists():
                raise PrepError(f"{archive} does not exist; check the path") from None
            raise PrepError(f"{archive} cannot be extracted ({type(e).__name__}: {e}): it is truncated "
                            f"or corrupt; delete it and download it again") from None
        raise
    return dest


def _make_folders(folder: Path, root: Path, created: list, archive: Path) -> None:
    """Create ``folder`` and its missing parents below ``root``, listing each in ``created``."""
    missing = []
    while folder != root and not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except OSError as e:
            raise PrepError(f"cannot extract {archive}: {describe_os_error(e)}") from None
        created.append(path)


def _copy_new(src, target: Path, root: Path, created: list, archive: Path) -> None:
    """Copy ``src`` into the new file ``target``; an existing file is never overwritten."""
    _make_folders(target.parent, root, created, archive)
    try:
        out = open(target, "xb")
    except FileExistsError:
        raise PrepError(f"cannot extract {archive}: {target} already exists (extracting never "
                        f"overwrites a file); extract into an empty folder") from None
    except OSError as e:
        raise PrepError(f"cannot extract {archive}: {describe_os_error(e)}") from None
    created.append(target)
    with out:
        while block := src.read(CHUNK):  # errors reading the archive propagate as they are
            try:
                out.write(block)
            except OSError as e:
                raise PrepError(f"cannot extract {archive} into {root}: {describe_os_error(e)}") from None


# ------------------------------------------------------------------- pickles from the internet


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


# --------------------------------------------------------------------------- split lists


def read_list(name: str) -> list[str]:
    """Non-comment, non-empty lines of ``data_prep/splits/<name>`` (comments name the source)."""
    lines = (SPLITS_DIR / name).read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def check_disjoint(splits: dict[str, list[str]], source: str) -> None:
    seen = {}
    for split, names in splits.items():
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise PrepError(f"{source}: the {split} split lists the class {twice[0]!r} twice")
        for n in names:
            if n in seen:
                raise PrepError(f"{source}: class {n!r} is in both the {seen[n]} and {split} splits")
            seen[n] = split


# ------------------------------------------------------------------------ command line


def find_source(source: Path | None, root: Path, filenames: list[str], how_to_get: str) -> Path:
    """The folder that holds ``filenames``: ``source`` (a folder, or one of the files), else
    ``<root>/raw``. A missing file gets a PrepError that says how to get it."""
    folder = Path(source) if source is not None else Path(root) / "raw"
    if folder.is_file():
        folder = folder.parent
    missing = [f for f in filenames if not (folder / f).exists()]
    if missing:
        raise PrepError(f"{folder / missing[0]} not found; {how_to_get}")
    return folder


def run_cli(main, argv=None) -> int:
    """Run ``main(argv)``; a bad input becomes one line ``error: ...`` and exit status 2."""
    try:
        main(argv)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. --root is a file, no permission, disk full
        print(f"error: {describe_os_error(e)} (nothing half-written was kept)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no prepared dataset was written (run the command again)", file=sys.stderr)
        return 130
    return 0
