"""anil.lock: one writer per folder, the holder named, a killed holder's lock free again."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from anil.lock import FolderLock, LockError, read_holder, this_host

ROOT = Path(__file__).resolve().parents[2]

# The lock module is standard library only: the other processes load it by itself, in
# milliseconds, instead of importing the anil package (and torch).
LOAD_LOCK = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("lock", sys.argv[1])
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
"""


def python(code: str, *args) -> subprocess.Popen:
    """Run ``code`` in another Python process; sys.argv[2:] are ``args``, ``lock`` the module."""
    return subprocess.Popen([sys.executable, "-c", LOAD_LOCK + textwrap.dedent(code),
                             str(ROOT / "anil" / "lock.py"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


HOLD = """
import time
from pathlib import Path
with lock.FolderLock(sys.argv[2], what="dataset"):
    Path(sys.argv[3]).write_text("held")
    time.sleep(float(sys.argv[4]))
"""


def hold_in_another_process(folder: Path, seconds: float, tmp_path: Path) -> subprocess.Popen:
    """A process that takes the lock of ``folder`` and keeps it ``seconds``; returns once it holds it."""
    flag = tmp_path / f"held-{time.monotonic_ns()}"
    p = python(HOLD, folder, flag, seconds)
    deadline = time.monotonic() + 120  # a hang guard only: the other process failed to start
    while not flag.exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "the other process never took the lock"
        time.sleep(0.02)
    return p


def test_lock_file_is_created_beside_the_folder_and_removed_on_release(tmp_path):
    folder = tmp_path / "data" / "toy"  # neither exists yet
    with FolderLock(folder) as lock:
        assert lock.path == tmp_path / "data" / ".toy.lock"
        holder = read_holder(lock.path)
        assert holder["pid"] == os.getpid() and holder["host"] == this_host()
        assert not folder.exists()
    assert not lock.path.exists() and sorted(os.listdir(tmp_path / "data")) == []


def test_a_live_holder_in_another_process_is_named_and_refused(tmp_path):
    folder = tmp_path / "toy"
    other = hold_in_another_process(folder, 60, tmp_path)
    try:
        with pytest.raises(LockError) as e:
            FolderLock(folder, what="dataset").acquire()
        message = str(e.value)
        assert (f"another process (PID {other.pid} on {this_host()}) is writing the dataset "
                f"{folder}; wait for it to finish") in message and "\n" not in message
        assert read_holder(tmp_path / ".toy.lock")["pid"] == other.pid  # left alone
    finally:
        other.kill()
        other.wait()


def test_waiting_for_a_live_holder_then_taking_the_lock(tmp_path):
    folder = tmp_path / "toy"
    other = hold_in_another_process(folder, 1.0, tmp_path)
    told = []
    with FolderLock(folder, wait=120, on_wait=told.append) as lock:
        assert read_holder(lock.path)["pid"] == os.getpid()
    assert other.wait() == 0
    assert len(told) == 1 and f"waiting for PID {other.pid} on {this_host()}" in told[0]


def test_a_bounded_wait_names_how_long_it_waited(tmp_path):
    other = hold_in_another_process(tmp_path / "toy", 60, tmp_path)
    try:
        start = time.monotonic()
        with pytest.raises(LockError, match=rf"PID {other.pid} .* has not finished after 0.5 s"):
            FolderLock(tmp_path / "toy", wait=0.5).acquire()
        assert time.monotonic() - start >= 0.5  # it did wait (the behaviour under test)
    finally:
        other.kill()
        other.wait()


def test_the_lock_of_a_killed_holder_is_free_and_its_file_is_rewritten(tmp_path):
    """SIGKILL leaves the lock file behind, naming the dead holder; the kernel has released the
    lock itself, so the next writer takes it at once and names itself."""
    other = hold_in_another_process(tmp_path / "toy", 60, tmp_path)
    other.send_signal(signal.SIGKILL)
    other.wait()
    assert read_holder(tmp_path / ".toy.lock")["pid"] == other.pid  # the file outlived it
    with FolderLock(tmp_path / "toy") as lock:
        assert read_holder(lock.path)["pid"] == os.getpid()


def test_a_file_naming_a_holder_is_not_a_lock_by_itself(tmp_path):
    """Only a held flock refuses a writer: a lock file's text (a dead holder's, another host's,
    or none) is information for messages, not the lock."""
    for text in [json.dumps({"pid": 1, "host": "elsewhere.example"}), "", "not json"]:
        (tmp_path / ".toy.lock").write_text(text)
        with FolderLock(tmp_path / "toy") as lock:
            assert read_holder(lock.path)["pid"] == os.getpid()


def test_a_lock_file_that_is_a_folder_is_named_as_such(tmp_path):
    (tmp_path / ".toy.lock").mkdir()
    with pytest.raises(LockError, match=r"the lock file .*\.toy\.lock of the dataset .* is a folder; "
                                        r"remove that folder"):
        FolderLock(tmp_path / "toy", what="dataset").acquire()


@pytest.mark.parametrize("exception", [ValueError, KeyboardInterrupt])
def test_released_on_an_exception(tmp_path, exception):
    with pytest.raises(exception):
        with FolderLock(tmp_path / "toy"):
            raise exception()
    assert not (tmp_path / ".toy.lock").exists()
    with FolderLock(tmp_path / "toy"):  # and can be taken again
        pass


def test_nested_use_in_one_thread_keeps_the_lock_until_the_outer_exit(tmp_path):
    with FolderLock(tmp_path / "toy") as outer:
        with FolderLock(tmp_path / "toy"):
            pass
        assert read_holder(outer.path)["pid"] == os.getpid()  # the inner exit did not release it
        with pytest.raises(LockError):  # another thread is refused: still held
            errors = []
            t = threading.Thread(target=lambda: errors.append(_try(tmp_path / "toy")))
            t.start(), t.join()
            raise errors[0]
    assert not outer.path.exists()


def _try(folder):
    try:
        FolderLock(folder).acquire().release()
    except LockError as e:
        return e
    return AssertionError("another thread took a held lock")


CONTEND = """
import os, time
folder, log = sys.argv[2], sys.argv[3]
for i in range(20):
    with lock.FolderLock(folder, wait=300):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} in\\n")
        time.sleep(0.003)
        with open(log, "a") as f:
            f.write(f"{os.getpid()} out\\n")
"""


def test_contending_processes_never_hold_it_together(tmp_path):
    """Release unlinks the file while others wait on it: a waiter that locked the unlinked file
    must notice (its inode is no longer the path's) and try again on the new one."""
    log = tmp_path / "log"
    procs = [python(CONTEND, tmp_path / "toy", log) for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=600)  # a hang guard only
        assert p.returncode == 0, err
    lines = log.read_text().splitlines()
    assert len(lines) == 4 * 20 * 2
    for enter, leave in zip(lines[0::2], lines[1::2]):  # strictly "in, out" of one process at a time
        pid, what = enter.split()
        assert what == "in" and leave == f"{pid} out"
    assert sorted(os.listdir(tmp_path)) == ["log"]
