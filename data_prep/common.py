"""What every dataset preparation shares: the one-line error, checksums, downloads, safe archive
extraction, an unpickler that cannot run code, the split lists, and the command-line wrapper.

Raw files come from the internet, so none of them is trusted: archives are checked against their
published md5 and may not place a file outside the folder they are extracted into; pickles may
hold only plain containers and numpy arrays.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import pickle
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from anil.data import DatasetError

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
    interrupted download never leaves a file that looks complete.
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        print(f"using {dest} (already downloaded, md5 ok)", flush=True)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    print(f"downloading {url} -> {dest} ...", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as e:
        partial.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise PrepError(f"cannot download {url} ({reason}); check the internet connection, or "
                        f"download the file yourself and pass its path with --source") from None
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


def open_zip(archive: str | Path) -> zipfile.ZipFile:
    """Open a zip whose every member is a plain relative path (checked before anything is read)."""
    archive = Path(archive)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise PrepError(f"{archive} is not a readable zip archive ({e}): it is truncated or corrupt; "
                        f"delete it and download it again") from None
    try:
        for info in zf.infolist():
            mode = info.external_attr >> 16
            _check_member(archive, info.filename, is_link=(mode & 0o170000) == 0o120000)
    except PrepError:
        zf.close()
        raise
    return zf


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a .tar(.gz) or .zip into ``dest``; every member must land inside ``dest``.

    All members are checked before anything is written: an absolute path, a ``..`` component,
    a symbolic or hard link, or a device file refuses the whole archive.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with open_zip(archive) as zf:  # members checked on opening
                zf.extractall(root)
            return dest
        with tarfile.open(archive) as tf:
            members = tf.getmembers()  # reads the whole archive: a truncated one fails here
            for m in members:
                _check_member(archive, m.name, is_link=m.issym() or m.islnk(),
                              is_special=not (m.isfile() or m.isdir()))
                if not (root / m.name).resolve().is_relative_to(root):
                    _check_member(archive, "../" + m.name)
            for m in members:
                if m.isdir():
                    (root / m.name).mkdir(parents=True, exist_ok=True)
                    continue
                target = root / m.name
                target.parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, EOFError, OSError, zipfile.BadZipFile) as e:
        if isinstance(e, FileNotFoundError) and not archive.exists():
            raise PrepError(f"{archive} does not exist; check the path") from None
        raise PrepError(f"{archive} cannot be extracted ({type(e).__name__}: {e}): it is truncated or "
                        f"corrupt; delete it and download it again") from None
    return dest


# ------------------------------------------------------------------- pickles from the internet


def _numpy_multiarray():
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray, numeric
    return multiarray, numeric


_multiarray, _numeric = _numpy_multiarray()
# The only globals a pickle of plain containers and numpy arrays needs. Numpy 1 pickles name
# numpy.core.*, numpy 2 pickles numpy._core.*; Python 2 pickles name __builtin__. Each entry only
# builds an array, a dtype, a set or bytes; none can call anything else.
SAFE_GLOBALS = {}
for _core in ("numpy.core", "numpy._core"):
    SAFE_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    SAFE_GLOBALS[(f"{_core}.multiarray", "scalar")] = _multiarray.scalar
    SAFE_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _numeric._frombuffer
SAFE_GLOBALS.update({
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores bytes
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset,
})


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"it refers to {module}.{name}")


def looks_like_html(head: bytes) -> bool:
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()  # a UTF-8 byte-order mark, then spaces
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<!--", b"<?xml", b"<body"))


def safe_load_pickle(path: str | Path, what_to_do: str) -> object:
    """Unpickle ``path`` allowing only plain containers and numpy arrays: a pickle cannot run code.

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
            return _SafeUnpickler(f, encoding="latin1").load()
    except PrepError:
        raise
    except FileNotFoundError:
        raise PrepError(f"{path} does not exist; {what_to_do}") from None
    except pickle.UnpicklingError as e:
        if str(e).startswith("it refers to"):
            raise PrepError(f"{path} is not a plain data pickle ({e}, which is neither a container nor "
                            f"a numpy array); refusing to load it, since a pickle can run code; "
                            f"{what_to_do}") from None
        if "truncated" in str(e):
            raise PrepError(f"{path} ends early (truncated); delete it and {what_to_do}") from None
        raise PrepError(f"{path} is not a readable pickle ({e}): it is corrupt; delete it and "
                        f"{what_to_do}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            OSError, UnicodeDecodeError) as e:
        kind = "ends early (truncated)" if isinstance(e, EOFError) else f"is corrupt ({type(e).__name__}: {e})"
        raise PrepError(f"{path} {kind}; delete it and {what_to_do}") from None


# --------------------------------------------------------------------------- split lists


def read_list(name: str) -> list[str]:
    """Non-comment, non-empty lines of ``data_prep/splits/<name>`` (comments name the source)."""
    lines = (SPLITS_DIR / name).read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def check_disjoint(splits: dict[str, list[str]], source: str) -> None:
    seen = {}
    for split, names in splits.items():
        if len(set(names)) != len(names):
            raise PrepError(f"{source}: the {split} split lists a class twice")
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
        print(f"error: {e.strerror or e}: {e.filename or ''}; check the path, its permissions and the "
              f"free space (nothing half-written was kept)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no prepared dataset was written (run the command again)", file=sys.stderr)
        return 130
    return 0
