"""One writer per folder: a lock file that names its holder, taken over safely once it is dead.

    with FolderLock("data/glyphs", what="dataset"):
        ...  # only this process writes data/glyphs

Semantics:

* **The lock** is a file, by default ``<parent>/.<name>.lock`` beside the folder, so that a
  folder that does not exist yet, or that is replaced as a whole by a rename, can be locked; a
  caller may name any other ``lock_file`` (``<folder>/.lock`` for a folder that stays in place).
  It is created atomically (``O_CREAT | O_EXCL``: of two processes exactly one succeeds) and
  holds the holder's PID, host name and a random token, as JSON.
* **Held by another live process**: ``acquire`` waits up to ``wait`` seconds, polling, then
  raises ``LockError``, whose one-line message names the holder's PID and host and says what to
  do. ``wait=0`` (the default) refuses at once.
* **Stale**: a lock written on this host by a process that no longer runs (``os.kill(pid, 0)``
  finds no such PID) is taken over: under a short-lived guard file ``<lock>.takeover`` (also
  ``O_EXCL``) the lock file is read again and removed if it is still stale, then ``O_EXCL`` is
  tried again. Only guard holders remove a stale file, one at a time, so of two processes
  taking over the same stale lock exactly one ends up holding it, and neither can remove the
  fresh lock the other has just made. A lock naming this very PID that no thread of this
  process holds is stale too (an earlier process had the same PID: a restarted container).
* **Never broken automatically**: a lock from another host (its PID cannot be checked from
  here), a lock whose PID is alive (if that PID now belongs to an unrelated process, the message
  says to delete the file), and a lock file that names no holder. On Windows no PID is checked,
  so stale locks are reported, not taken over. The check assumes that processes sharing a host
  name share PIDs (two containers with one host name, one folder and separate PID namespaces
  would take each other's locks for stale).
* **Released** on leaving the ``with`` block, also on an exception or KeyboardInterrupt; only
  a file that still holds this acquisition's token is removed. A killed process (SIGKILL, power
  loss) leaves its file behind, which the next taker on this host recognises as stale.
* **Re-entrant** within one thread: a ``with`` on a lock this thread holds just nests (a
  preparation holds its dataset's lock while the writer it calls takes it again). Other threads
  wait for it like other processes.

Standard library only.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

POLL_S = 0.2  # how often a waiting process looks at the lock again
NAMELESS_GRACE_S = 1.0  # a lock file may be empty this long: its creator is about to write it
GUARD_STALE_S = 30.0  # a takeover guard lives for microseconds; one this old was left by a crash


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


# The locks this process holds, {lock file: (pid, thread, depth, token)}, changed together with
# the lock files under _registry so that a thread never sees a file of ours that is not listed.
# The PID makes a forked child, which inherits the dict, a stranger to its parent's locks.
_held: dict[str, tuple[int, int, int, str]] = {}
_registry = threading.Lock()


def read_holder(path) -> dict | None:
    """The holder a lock file names ({"pid", "host", "token", ...}), or None if it names none
    (empty because its creator is about to write it, or not a lock file of this module).
    Raises FileNotFoundError when there is no lock file."""
    try:
        holder = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError):
        return None
    if (isinstance(holder, dict) and type(holder.get("pid")) is int and holder["pid"] > 0
            and isinstance(holder.get("host"), str) and isinstance(holder.get("token"), str)):
        return holder
    return None


class FolderLock:
    """A context manager holding the write lock of ``folder`` (see the module docstring).

    ``what`` names the folder in messages ("dataset", "run folder"); ``wait`` is how many
    seconds ``acquire`` waits for a live holder before raising ``LockError``; ``on_wait`` is
    called once, with a one-line message, when it starts waiting (e.g. ``print``).
    """

    def __init__(self, folder, what: str = "folder", wait: float = 0.0, lock_file=None,
                 on_wait=None):
        self.folder = Path(folder)
        self.what = what
        self.wait = wait
        self.path = Path(lock_file) if lock_file is not None else (
            self.folder.parent / f".{self.folder.name}.lock")
        self.on_wait = on_wait
        self._key = str(self.path.absolute())

    def _busy(self, holder: dict | None) -> str:
        if holder is None:
            return (f"{self.path} exists but does not say which process holds it; if no other "
                    f"process is writing the {self.what} {self.folder}, delete {self.path}")
        late = f" and has not finished after {self.wait:g} s" if self.wait > 0 else ""
        remote = "" if holder["host"] == this_host() else (
            " (a lock from another machine is never removed automatically)")
        return (f"another process (PID {holder['pid']} on {holder['host']}) is writing the "
                f"{self.what} {self.folder}{late}; wait for it to finish, or if it is gone "
                f"delete {self.path}{remote}")

    def _mine(self) -> tuple[int, str] | None:
        """(depth, token) if this thread holds the lock."""
        pid, thread, depth, token = _held.get(self._key, (0, 0, 0, ""))
        return (depth, token) if (pid, thread) == (os.getpid(), threading.get_ident()) else None

    def _try_create(self) -> bool:
        """O_EXCL-create the lock file naming this process and list it; False if it exists."""
        token = os.urandom(8).hex()
        with _registry:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            try:
                os.write(fd, json.dumps({
                    "pid": os.getpid(), "host": this_host(), "token": token,
                    "folder": str(self.folder.absolute()),
                    "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
            except BaseException:  # never leave a file that names nobody
                os.close(fd)
                self.path.unlink(missing_ok=True)
                raise
            os.close(fd)
            _held[self._key] = (os.getpid(), threading.get_ident(), 1, token)
        return True

    def _is_stale(self, holder: dict | None) -> bool:
        if holder is None or holder["host"] != this_host():
            return False
        if holder["pid"] == os.getpid():  # a thread of ours, or a dead process with our PID
            with _registry:
                pid, _, _, token = _held.get(self._key, (0, 0, 0, ""))
                return not (pid == os.getpid() and token == holder["token"])
        return not pid_alive(holder["pid"])

    def _take_over(self) -> bool:
        """Remove the lock file if it is (still) stale, holding the takeover guard. Returns
        False when another process holds the guard (it is taking over at this instant)."""
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                age = time.time() - guard.stat().st_mtime
            except FileNotFoundError:
                return False
            if age > GUARD_STALE_S:
                raise LockError(f"{guard} was left by a process that died while taking over a "
                                f"stale lock of {self.folder}; delete {guard}") from None
            return False
        try:
            # Read again under the guard: only guard holders remove a stale file (its owner is
            # dead), so the file judged stale here is the file unlinked below.
            if self._is_stale(read_holder(self.path)):
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
            guard.unlink(missing_ok=True)
        return True

    def acquire(self) -> "FolderLock":
        mine = self._mine()
        if mine:  # this thread holds it already: nest
            _held[self._key] = (os.getpid(), threading.get_ident(), mine[0] + 1, mine[1])
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait
        told, nameless_since = False, None
        while not self._try_create():
            try:
                holder = read_holder(self.path)
            except FileNotFoundError:
                continue  # released or taken over meanwhile: try again at once
            if self._is_stale(holder):
                if not self._take_over():
                    time.sleep(0.01)  # another process is taking it over at this instant
                continue
            if holder is None:  # most likely created a moment ago and not written yet
                nameless_since = nameless_since or time.monotonic()
                if time.monotonic() - nameless_since < NAMELESS_GRACE_S:
                    time.sleep(0.01)
                    continue
            if time.monotonic() >= deadline:
                raise LockError(self._busy(holder))
            if not told and self.on_wait is not None and holder is not None:
                self.on_wait(f"waiting for PID {holder['pid']} on {holder['host']}, which is "
                             f"writing the {self.what} {self.folder} ...")
                told = True
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        return self

    def release(self) -> None:
        mine = self._mine()
        if mine is None:
            return
        depth, token = mine
        with _registry:
            if depth > 1:
                _held[self._key] = (os.getpid(), threading.get_ident(), depth - 1, token)
                return
            del _held[self._key]
            try:
                holder = read_holder(self.path)
            except FileNotFoundError:
                return  # deleted by hand: nothing of ours left to remove
            if holder is not None and holder["token"] == token:
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
