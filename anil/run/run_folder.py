"""The run folder: the files one training run writes, and the rules that keep them safe.

    checkpoint.pt   everything needed to resume (weights, optimizer, iteration, random states)
    best.pt         the weights with the best validation accuracy so far
    model.pt        the weights after the last iteration
    metrics.jsonl   one JSON row per logged iteration;  curve.png  the learning curve
    summary.json    configuration, test result, history

Rules: one process writes a folder at a time (a lock, ``.lock``, naming its PID); a new run
never replaces another run's files unless asked (``--overwrite``), and then only once it can be
resumed: until its first checkpoint.pt is whole, it writes into ``.new-run/`` inside the folder
and the old run stays as it was, usable (see ``commit``); every file is written atomically
(temporary file, then rename); a write that fails (full disk, read-only folder) becomes
``RunFolderError`` with a one-line message, the previous files intact.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
from pathlib import Path

from anil.run import checkpoint
from anil.run.checkpoint import CheckpointError
from anil.lock import FolderLock, LockError
from anil.run.metrics import MetricsLog, strict_json
from anil.run.plot import learning_curve_figure

RUN_FILES = ("checkpoint.pt", "best.pt", "model.pt", "metrics.jsonl", "curve.png", "summary.json")
ORPHAN = re.compile(r"\.[^/]+\.tmp-[0-9]+(\.png)?")  # the temporary names of the atomic writes
# A replacing run's files before its commit, and after it (with MANIFEST, its list of files)
# while they are moved into place; see RunFolder.commit.
STAGING, SWAP, MANIFEST = ".new-run", ".new-run.swap", "files.json"
# What to do when a write fails, by its error (the rest: free space or fix the permissions).
FIXES = {errno.ENOSPC: "free space", errno.EDQUOT: "free space (a disk quota is full)",
         errno.EFBIG: "raise this process's file-size limit (ulimit -f)",
         errno.EACCES: "fix the permissions", errno.EROFS: "use a writable disk"}


class RunFolderError(RuntimeError):
    """The run folder cannot be used or written; the message says why and what to do."""


def holds_run(path: Path, names=RUN_FILES) -> bool:
    return any((Path(path) / name).exists() for name in names)


def fresh_name(path: Path, names=RUN_FILES) -> Path:
    """``path`` itself if it holds no run, else the first of ``path-2``, ``path-3``, ... that
    does not: where a run goes when no --out was given."""
    path, n = Path(path), 2
    candidate = path
    while holds_run(candidate, names) or (candidate.exists() and not candidate.is_dir()):
        candidate = path.with_name(f"{path.name}-{n}")
        n += 1
    return candidate


def describe(path: Path, names=RUN_FILES) -> str:
    """What an existing run folder holds, in words, for refusals."""
    path = Path(path)
    if (path / "summary.json").exists():
        try:
            summary = json.loads((path / "summary.json").read_text())
            return f"a finished run (test accuracy {100 * summary['test_accuracy']:.2f}%)"
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return "a finished run"
    if (path / "checkpoint.pt").exists():
        try:
            old = checkpoint.load(path / "checkpoint.pt", kind="checkpoint")
            return (f"an interrupted run (iteration {old['iteration']}/"
                    f"{old['config']['iterations']})")
        except (CheckpointError, KeyError, TypeError):
            return "an unreadable checkpoint.pt"
    return f"files of an earlier run ({', '.join(n for n in names if (path / n).exists())})"


class RunFolder:
    """The run folder at ``path``. ``writes=False`` (the other processes of a torchrun job)
    makes every write a no-op, so the training script needs no special case for them.
    ``names`` are the files a run writes (train.py's by default; anil.paper.compare has its
    own)."""

    def __init__(self, path: str | Path, writes: bool = True, names=RUN_FILES,
                 all_or_nothing: bool = False):
        self.path, self.writes, self.names = Path(path), writes, tuple(names)
        self._lock = FolderLock(self.path, what="run folder", lock_file=self.path / ".lock")
        # all_or_nothing (anil.paper.compare): every output is staged until ``commit``.
        self._all_or_nothing = all_or_nothing
        self._write_into(self.path)
        self.checkpoint_iteration = None  # the iteration of the newest checkpoint.pt, if known

    def _write_into(self, folder: Path) -> None:
        self.files = {name: folder / name for name in self.names}
        self.metrics = MetricsLog(folder / "metrics.jsonl")
        self.staging = folder if folder != self.path else None

    # ------------------------------------------------------------------------ opening, closing

    def open(self, resuming: bool, overwrite: bool = False) -> "RunFolder":
        """Create and lock the folder; refuse to start a new run over another one's files
        unless ``overwrite`` (then they are replaced at this run's ``commit``)."""
        if not self.writes:
            return self
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"--out {self.path} is a file, not a folder; give a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except LockError as e:
            raise RunFolderError(str(e)) from None
        except OSError as e:
            raise RunFolderError(f"cannot write to {self.path} ({e.strerror or e}); give a "
                                 f"writable folder with --out") from None
        self._remove_orphans()
        self._recover()
        if not resuming and self._all_or_nothing:
            self._stage()
        if not resuming and holds_run(self.path, self.names):
            if not overwrite:
                what = describe(self.path, self.names)
                self.close()
                hint = (f"resume it with  python train.py --resume {self.path}  , " if "interrupted" in what
                        else "it has no checkpoint.pt, so it cannot be resumed; "
                        if what.startswith("files of") and "checkpoint.pt" in self.names else "")
                raise RunFolderError(f"{self.path} holds {what}; {hint}give another --out, or add "
                                     f"--overwrite to replace it")
            self._stage()
        return self

    def close(self) -> None:
        """Unlock; a replacing run that never reached its ``commit`` is dropped, so the folder
        holds the old run as it was."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self._write_into(self.path)
        self._lock.release()

    # ------------------------------------------------------------- replacing a run, safely

    def _stage(self) -> None:
        """Write this run's files into ``.new-run/`` until ``commit``."""
        staging = self.path / STAGING
        try:
            staging.mkdir(exist_ok=True)
        except OSError as e:
            self.close()
            raise RunFolderError(f"cannot write to {self.path} ({e.strerror or e}); give a "
                                 f"writable folder with --out") from None
        self._write_into(staging)

    def commit(self) -> None:
        """Make the staged files the run folder's, replacing the old run's. One rename (of
        ``.new-run`` to ``.new-run.swap``, with the list of files in it) is the point of no
        return: killed before it, the next ``open`` drops ``.new-run`` and the old run is whole;
        killed after it, the next ``open`` finishes moving the new files into place. Called by
        the first checkpoint.pt write (the new run can then be resumed) and by anil.paper.compare
        once all its outputs are written."""
        if self.staging is None or not self.writes:
            return
        names = [name for name, file in self.files.items() if file.exists()]
        (self.staging / MANIFEST).write_text(json.dumps(names))
        os.replace(self.staging, self.path / SWAP)
        self._write_into(self.path)
        self._finish_swap()

    def _finish_swap(self) -> None:
        """Move each new file into place (checkpoint.pt first: a --resume that reads it before
        the next open finishes the swap gets the new run's), then delete the old run's files
        the new run lacks; both steps can be repeated, so a swap killed halfway is finished by
        the next open."""
        swap = self.path / SWAP
        new = json.loads((swap / MANIFEST).read_text())
        for name in new:
            if (swap / name).exists():
                os.replace(swap / name, self.path / name)
        for name in self.names:
            if name not in new:
                (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(swap)

    def _recover(self) -> None:
        """What a replacing run killed at any moment left behind (see ``commit``)."""
        try:
            if (self.path / SWAP / MANIFEST).is_file():
                self._finish_swap()
            for leftover in (self.path / SWAP, self.path / STAGING):
                if leftover.is_dir():
                    shutil.rmtree(leftover)
        except (OSError, ValueError) as e:
            self.close()
            raise RunFolderError(f"cannot clear an interrupted replacement in {self.path} ("
                                 f"{getattr(e, 'strerror', None) or e}); fix the folder's "
                                 f"permissions and run again") from None

    def _remove_orphans(self) -> None:
        """Temporary files a killed writer left (``.<file>.tmp-<pid>``, see ``_write``): with the
        lock held, no other process is writing here, so each is an orphan."""
        for file in self.path.iterdir():
            if ORPHAN.fullmatch(file.name) and file.is_file():
                file.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # --------------------------------------------------------------------------------- writes

    def _write(self, name: str, write) -> None:
        """Run ``write()`` for file ``name``; the first checkpoint.pt of a replacing run commits
        it."""
        if not self.writes:
            return
        try:
            write()
            if name == "checkpoint.pt":
                self.commit()
        except OSError as e:
            fix = FIXES.get(e.errno, "free space or fix the permissions")
            if self.staging is not None:
                after = (f"; {self.path} is kept as it was (nothing of this run is kept): {fix}, "
                         f"then run again")
            elif "checkpoint.pt" in self.files and self.files["checkpoint.pt"].exists():
                after = (f"; the previous checkpoint is intact: {fix}, then resume with  python "
                         f"train.py --resume {self.path}")
            else:
                after = f"; {fix}, then run again"
            raise RunFolderError(f"cannot write {self.path / name} ({e.strerror or e}){after}") from None

    def save(self, name: str, obj: dict) -> None:
        """Any torch file of the run (e.g. anil.paper.compare's anil.pt), atomically."""
        self._write(name, lambda: checkpoint.save(obj, self.files[name]))

    def write_json(self, name: str, obj: dict) -> None:
        """A strict-JSON file of the run (nan and inf written as null), atomically."""
        def write():
            tmp = self.files[name].with_name(f".{name}.tmp-{os.getpid()}")
            try:
                tmp.write_text(json.dumps(strict_json(obj), indent=1, allow_nan=False))
                os.replace(tmp, self.files[name])
            finally:
                tmp.unlink(missing_ok=True)
        self._write(name, write)

    def write_png(self, name: str, draw) -> None:
        """``draw(path)`` draws a PNG; it goes to a temporary file, then into place."""
        def write():
            tmp = self.files[name].with_name(f".{name}.tmp-{os.getpid()}.png")
            try:
                draw(tmp)
                os.replace(tmp, self.files[name])
            finally:
                tmp.unlink(missing_ok=True)
        self._write(name, write)

    def save_checkpoint(self, obj: dict) -> None:
        self._write("checkpoint.pt", lambda: checkpoint.save(obj, self.files["checkpoint.pt"]))
        self.checkpoint_iteration = obj["iteration"]

    def save_weights(self, name: str, obj: dict) -> None:
        """best.pt or model.pt: {"kind": "weights", body, head, config, ...}."""
        self._write(name, lambda: checkpoint.save({"kind": "weights", **obj}, self.files[name]))

    def log(self, row: dict) -> None:
        self._write("metrics.jsonl", lambda: self.metrics.append(row))

    def draw_curve(self, best_iteration=None, chance=None, **marks) -> None:
        """curve.png; ``marks``: the test and untrained marks and caption (``curve_marks``). A
        picture must never end a run: a drawing that fails (for any reason but the disk) is a
        note, and the run goes on."""
        rows = self.metrics.rows() if self.writes else []
        if not rows:
            return
        try:
            figure = learning_curve_figure(rows, title=self.path.name,
                                           best_iteration=best_iteration, chance=chance, **marks)
        except Exception as e:  # noqa: BLE001 - a bug in drawing must not cost the run
            print(f"note: {self.path / 'curve.png'} not drawn ({type(e).__name__}: {e}); the "
                  f"run goes on", file=sys.stderr)
            return
        self.write_png("curve.png", figure.save)

    def truncate_metrics(self, iteration: int) -> int:
        """On resume: drop metrics rows past the checkpoint's ``iteration`` and damaged lines;
        returns how many damaged lines were dropped."""
        self.checkpoint_iteration = iteration
        dropped = []
        self._write("metrics.jsonl", lambda: dropped.append(self.metrics.truncate_after(iteration)))
        return dropped[0] if dropped else 0

    def match_best(self, best: dict | None, config: dict) -> None:
        """On resume: best.pt as the checkpoint knows it (a killed run may have written a newer
        one after its last checkpoint)."""
        if best is not None:
            self.save_weights("best.pt", {**best, "config": config})
        elif self.writes:
            self._write("best.pt", lambda: self.files["best.pt"].unlink(missing_ok=True))

    def write_summary(self, summary: dict) -> None:
        self.write_json("summary.json", summary)

    def written(self) -> list[str]:
        return [name for name, file in self.files.items() if file.exists()]
