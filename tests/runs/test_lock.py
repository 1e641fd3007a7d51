"""anil.run.lock: one writer per folder, the holder named, stale locks taken over safely."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from anil.run.lock import FolderLock, LockError, read_holder, this_host

ROOT = Path(__file__).resolve().parents[2]


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_lock(path: Path, pid: int, host: str | None = None) -> None:
    path.write_text(json.dumps({"pid": pid, "host": host or this_host(), "token": "f" * 16}))


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
                             str(ROOT / "anil" / "run" / "lock.py"), *map(str, args)],
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
    deadline = time.monotonic() + 60
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
    other = hold_in_another_process(folder, 30, tmp_path)
    try:
        with pytest.raises(LockError) as e:
            FolderLock(folder, what="dataset").acquire()
        message = str(e.value)
        assert (f"another process (PID {other.pid} on {this_host()}) is writing the dataset "
                f"{folder}") in message
        assert f"delete {tmp_path / '.toy.lock'}" in message and "\n" not in message
        assert read_holder(tmp_path / ".toy.lock")["pid"] == other.pid  # left alone
    finally:
        other.kill()
        other.wait()


def test_waiting_for_a_live_holder_then_taking_the_lock(tmp_path):
    folder = tmp_path / "toy"
    other = hold_in_another_process(folder, 1.0, tmp_path)
    told = []
    start = time.monotonic()
    with FolderLock(folder, wait=60, on_wait=told.append) as lock:
        assert read_holder(lock.path)["pid"] == os.getpid()
    assert other.wait() == 0 and time.monotonic() - start < 30
    assert len(told) == 1 and f"waiting for PID {other.pid} on {this_host()}" in told[0]


def test_a_bounded_wait_names_how_long_it_waited(tmp_path):
    other = hold_in_another_process(tmp_path / "toy", 30, tmp_path)
    try:
        start = time.monotonic()
        with pytest.raises(LockError, match=rf"PID {other.pid} .* has not finished after 0.5 s"):
            FolderLock(tmp_path / "toy", wait=0.5).acquire()
        assert 0.5 <= time.monotonic() - start < 10
    finally:
        other.kill()
        other.wait()


def test_a_live_pid_named_in_the_file_is_refused(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / ".toy.lock", sleeper.pid)
        with pytest.raises(LockError, match=rf"another process \(PID {sleeper.pid} on "):
            FolderLock(tmp_path / "toy").acquire()
        assert read_holder(tmp_path / ".toy.lock")["pid"] == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path / ".toy.lock", pid)
    with FolderLock(tmp_path / "toy") as lock:
        holder = read_holder(lock.path)
        assert holder["pid"] == os.getpid() and holder["token"] != "f" * 16
    assert sorted(os.listdir(tmp_path)) == []  # no guard or stale copy left behind


def test_a_stale_lock_naming_our_own_pid_is_taken_over(tmp_path):
    """An earlier process that had this PID (a restarted container) left it."""
    write_lock(tmp_path / ".toy.lock", os.getpid())
    with FolderLock(tmp_path / "toy") as lock:
        assert read_holder(lock.path)["token"] != "f" * 16


def test_a_takeover_by_another_process_is_respected(tmp_path):
    """Stale locks are removed only by the holder of the guard file, one taker at a time."""
    import threading
    write_lock(tmp_path / ".toy.lock", dead_pid())
    guard = tmp_path / ".toy.lock.takeover"
    guard.write_text("")  # another process is taking over at this instant
    got = []

    def take():
        with FolderLock(tmp_path / "toy") as lock:
            got.append(read_holder(lock.path))
    taker = threading.Thread(target=take)
    taker.start()
    time.sleep(0.5)
    assert not got and read_holder(tmp_path / ".toy.lock")["token"] == "f" * 16  # untouched
    guard.unlink()
    taker.join(timeout=30)
    assert got and got[0]["pid"] == os.getpid() and not (tmp_path / ".toy.lock").exists()
    # A guard left by a process that died while holding it is reported, not removed.
    write_lock(tmp_path / ".toy.lock", dead_pid())
    guard.write_text("")
    os.utime(guard, (time.time() - 60, time.time() - 60))
    with pytest.raises(LockError, match=r"\.toy\.lock\.takeover was left by a process that died"):
        FolderLock(tmp_path / "toy").acquire()
    assert guard.exists()


def test_a_lock_from_another_host_is_never_broken(tmp_path):
    write_lock(tmp_path / ".toy.lock", dead_pid(), host="elsewhere.example")
    with pytest.raises(LockError, match="on elsewhere.example.*never removed automatically"):
        FolderLock(tmp_path / "toy").acquire()
    assert read_holder(tmp_path / ".toy.lock")["host"] == "elsewhere.example"


def test_a_lock_file_naming_no_holder_is_not_broken(tmp_path):
    (tmp_path / ".toy.lock").write_text("")
    with pytest.raises(LockError, match="does not say which process holds it; .*delete"):
        FolderLock(tmp_path / "toy").acquire()
    assert (tmp_path / ".toy.lock").read_text() == ""


@pytest.mark.parametrize("exception", [ValueError, KeyboardInterrupt])
def test_released_on_an_exception(tmp_path, exception):
    with pytest.raises(exception):
        with FolderLock(tmp_path / "toy"):
            raise exception()
    assert not (tmp_path / ".toy.lock").exists()
    with FolderLock(tmp_path / "toy"):  # and can be taken again
        pass


def test_nested_use_in_one_thread_and_release_of_only_our_own_file(tmp_path):
    with FolderLock(tmp_path / "toy") as outer:
        with FolderLock(tmp_path / "toy"):
            pass
        assert read_holder(outer.path)["pid"] == os.getpid()  # the inner exit did not release it
        # Someone deletes the file by hand and another process locks the folder meanwhile:
        write_lock(outer.path, 1)
    assert read_holder(outer.path)["pid"] == 1  # theirs, not removed by our release


CONTEND = """
import json, os, time
from pathlib import Path
folder, log, dead = sys.argv[2], sys.argv[3], int(sys.argv[4])
for i in range(20):
    with lock.FolderLock(folder, wait=120) as held:
        with open(log, "a") as f:
            f.write(f"{os.getpid()} in\\n")
        time.sleep(0.003)
        with open(log, "a") as f:
            f.write(f"{os.getpid()} out\\n")
        # Leave as if killed: the file names a dead process (release keeps a file not ours),
        # so that every next acquisition is a takeover, raced by the other waiting processes.
        tmp = held.path.with_name(f"tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"pid": dead, "host": lock.this_host(), "token": "0" * 16}))
        os.replace(tmp, held.path)
"""


def test_contending_processes_never_hold_it_together_even_taking_over_stale_locks(tmp_path):
    dead = dead_pid()
    write_lock(tmp_path / ".toy.lock", dead)  # all of them find it stale at once
    log = tmp_path / "log"
    procs = [python(CONTEND, tmp_path / "toy", log, dead) for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    lines = log.read_text().splitlines()
    assert len(lines) == 4 * 20 * 2
    for enter, leave in zip(lines[0::2], lines[1::2]):  # strictly "in, out" of one process at a time
        pid, what = enter.split()
        assert what == "in" and leave == f"{pid} out"
    assert sorted(os.listdir(tmp_path)) == [".toy.lock", "log"]  # the last one, "killed"
    assert read_holder(tmp_path / ".toy.lock")["pid"] == dead
