"""Another process that holds a folder's lock (anil/lock.py), for the tests of refused writers."""

import contextlib
import subprocess
import sys
from pathlib import Path

LOCK_MODULE = Path(__file__).resolve().parents[1] / "anil" / "lock.py"

# anil/lock.py is standard library only: loaded by itself, the holder starts without torch.
HOLD = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location('lock', sys.argv[1])
lock = importlib.util.module_from_spec(spec); spec.loader.exec_module(lock)
with lock.FolderLock(sys.argv[2], lock_file=sys.argv[3] or None):
    print('held', flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def lock_held_elsewhere(folder, lock_file=None):
    """Yields the Popen of a process that holds the lock of ``folder``; kills it on exit."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(LOCK_MODULE), str(folder),
                               str(lock_file or "")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n", "the holder could not take the lock"
        yield holder
    finally:
        holder.kill()
        holder.wait()
