"""Safe archive extraction: a zip or tar from the internet may not place a file outside the folder
it is extracted into (absolute names, ``..``, drive letters, links and device files are refused),
and may not expand beyond a size limit (``ExtractLimit``: a decompression bomb is refused, not
extracted until the disk is full). A failed extraction removes what it wrote and nothing else.
"""

from __future__ import annotations

import argparse
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from anil.data import describe_os_error
from anil.argtypes import positive_int

from .common import PrepError


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
    parser.add_argument("--max-extract-mb", type=positive_int, metavar="MB",
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
