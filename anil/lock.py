"""One writer per folder: an OS file lock whose file names its holder.

    with FolderLock("data/glyphs", what="dataset"):
        ...  # only this process writes data/glyphs

* **The lock** is ``fcntl.flock`` on a lock file, by default ``<parent>/.<name>.lock`` beside
  the folder (so that a folder that does not exist yet, or is replaced whole by a rename, can be
  locked); a caller may name another ``lock_file`` (``<folder>/.lock`` for a run folder). The
  holder writes its PID and host name into the file, so that a refused writer can name it.
* **Held by a live process**: ``acquire`` waits up to ``wait`` seconds, then raises
  ``LockError`` naming the holder; ``wait=0`` (the default) refuses at once.
* **Stale locks cannot exist**: the kernel releases a flock when its holder exits, also on
  SIGKILL or a crash. The file a killed holder leaves is only a file; the next writer locks it
  and writes its own name into it.
* **Released** on leaving the ``with`` block (also on an exception); the file is removed.
* **Re-entrant** within one thread; other threads of the process wait like other processes
  (flock locks belong to an open file, not to a process).

flock is advisory and local: it does not protect a folder written from two machines over NFS.
Standard library only (POSIX; on Windows, where fcntl does not exist, ``msvcrt.locking``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

POLL_S = 0.2  # how often a waiting process tries again

_held: dict[str, tuple[int, int, int, int]] = {}  # lock file -> (pid, thread, depth, fd)


class LockError(RuntimeError):
    """The folder is being written by another process; the message says by whom and what to do."""


def this_host() -> str:
    return socket.gethostname() or "unknown-host"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (True whenever it cannot be told)."""
    if os.name == "nt":  # there os.kill(pid, 0) sends CTRL_C_EVENT rather than probing
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        return True
    return True


def read_holder(path) -> dict | None:
    """The {"pid", "host", ...} a lock file names, or None if it names none."""
    try:
        holder = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(holder, dict) and type(holder.get("pid")) is int and isinstance(holder.get("host"), str)
    return holder if ok else None


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:  # BlockingIOError (POSIX) or PermissionError (Windows): held by another
        return False


class FolderLock:
    """A context manager holding the write lock of ``folder`` (see the module docstring).
    ``what`` names the folder in messages; ``on_wait`` is called once with a one-line message
    when ``acquire`` starts waiting for another holder."""

    def __init__(self, folder, what: str = "folder", wait: float = 0.0, lock_file=None, on_wait=None):
        self.folder, self.what, self.wait, self.on_wait = Path(folder), what, wait, on_wait
        self.path = Path(lock_file) if lock_file is not None else (
            self.folder.parent / f".{self.folder.name}.lock")
        self._key = str(self.path.absolute())

    def _busy(self, holder: dict | None) -> str:
        who = f"another process (PID {holder['pid']} on {holder['host']})" if holder else "another process"
        late = f" and has not finished after {self.wait:g} s" if self.wait > 0 else ""
        return f"{who} is writing the {self.what} {self.folder}{late}; wait for it to finish, or stop it"

    def _open(self) -> int:
        if self.path.is_dir():
            raise LockError(f"the lock file {self.path} of the {self.what} {self.folder} is a "
                            f"folder; remove that folder")
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def _locked_fd(self) -> int | None:
        """An fd holding the lock on the file now at ``self.path``, or None if another holds it."""
        fd = self._open()
        if not _try_lock(fd):
            os.close(fd)
            return None
        try:  # the file may have been released and unlinked between our open and our lock
            if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
        return self._locked_fd()

    def acquire(self) -> "FolderLock":
        pid, thread, depth, fd = _held.get(self._key, (0, 0, 0, -1))
        if (pid, thread) == (os.getpid(), threading.get_ident()):  # this thread holds it: nest
            _held[self._key] = (pid, thread, depth + 1, fd)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline, told = time.monotonic() + self.wait, False
        while (fd := self._locked_fd()) is None:
            holder = read_holder(self.path)
            if time.monotonic() >= deadline:
                raise LockError(self._busy(holder))
            if not told and self.on_wait is not None and holder is not None:
                self.on_wait(f"waiting for PID {holder['pid']} on {holder['host']}, which is "
                             f"writing the {self.what} {self.folder} ...")
                told = True
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        record = json.dumps({"pid": os.getpid(), "host": this_host(), "folder": str(self.folder.absolute()),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, record)
        _held[self._key] = (os.getpid(), threading.get_ident(), 1, fd)
        return self

    def release(self) -> None:
        pid, thread, depth, fd = _held.get(self._key, (0, 0, 0, -1))
        if (pid, thread) != (os.getpid(), threading.get_ident()):
            return
        if depth > 1:
            _held[self._key] = (pid, thread, depth - 1, fd)
            return
        del _held[self._key]
        self.path.unlink(missing_ok=True)  # still locked: no other writer holds this file now
        os.close(fd)  # releases the lock

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
