"""What every dataset preparation shares: the one-line error, checksums, md5-checked downloads,
the split lists, and the command-line wrapper.

Raw files come from the internet, so none of them is trusted: each is checked against its
published md5 here; archives are extracted by ``archives.py`` (nothing outside the target folder,
a size limit against decompression bombs) and pickles read by ``pickles.py`` (plain data only).
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

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
    except MemoryError:
        print("error: out of memory while preparing; no prepared dataset was written: use a "
              "smaller --size, fewer images, or a machine with more memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no prepared dataset was written (run the command again)", file=sys.stderr)
        return 130
    return 0


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
