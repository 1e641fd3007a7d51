"""A lock on a folder that one process writes (a run folder, a dataset being prepared).

``FolderLock(folder)`` creates ``<folder>/.lock`` with O_CREAT | O_EXCL, holding the PID and
host of its owner; a second writer gets ``LockError`` naming them. A lock left by a process that
died on this host is taken over; one from another host is never broken automatically.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


class LockError(RuntimeError):
    """Another process holds the lock; the message names it and says what to do."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


class FolderLock:
    def __init__(self, folder: str | Path, what: str = "folder"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / ".lock"
        self.held = False

    def _owner(self):
        try:
            pid, host = self.path.read_text().split()[:2]
            return int(pid), host
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner and owner[1] == socket.gethostname() and not _alive(owner[0]):
                    stale = self.path.with_name(f".lock.stale-{os.getpid()}")
                    try:  # atomic: of two processes taking over, only one renames it
                        os.replace(self.path, stale)
                        stale.unlink(missing_ok=True)
                    except FileNotFoundError:
                        pass
                    continue
                who = f"PID {owner[0]} on {owner[1]}" if owner else "an unknown process"
                raise LockError(f"another process ({who}) is writing the {self.what} {self.folder}; "
                                f"wait for it to finish, or if it is gone delete {self.path}") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
            self.held = True
            return
        raise LockError(f"cannot take the lock {self.path}; delete it if no process uses the "
                        f"{self.what}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False



