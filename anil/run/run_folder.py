"""The run folder: the files one training run writes, and the rules that keep them safe.

    checkpoint.pt   everything needed to resume (weights, optimizer, iteration, random states)
    best.pt         the weights with the best validation accuracy so far
    model.pt        the weights after the last iteration
    metrics.jsonl   one JSON row per logged iteration;  curve.png  the learning curve
    summary.json    configuration, test result, history

Rules: one process writes a folder at a time (a lock, ``.lock``, naming its PID); a new run
never replaces another run's files unless asked (``--overwrite``), and then only when it writes
its own first file, so an interrupted start leaves the old run as it was; every file is written
atomically (temporary file, then rename); a write that fails (full disk, read-only folder)
becomes ``RunFolderError`` with a one-line message, the previous files intact.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from anil.run import checkpoint
from anil.run.checkpoint import CheckpointError
from anil.lock import FolderLock, LockError
from anil.run.metrics import MetricsLog, plot_learning_curve, strict_json

RUN_FILES = ("checkpoint.pt", "best.pt", "model.pt", "metrics.jsonl", "curve.png", "summary.json")
ORPHAN = re.compile(r"\.[^/]+\.tmp-[0-9]+(\.png)?")  # the temporary names of the atomic writes


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
        except (OSError, ValueError, KeyError, TypeError):
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

    def __init__(self, path: str | Path, writes: bool = True, names=RUN_FILES):
        self.path, self.writes, self.names = Path(path), writes, tuple(names)
        self.files = {name: self.path / name for name in self.names}
        self.metrics = MetricsLog(self.path / "metrics.jsonl")
        self._lock = FolderLock(self.path, what="run folder", lock_file=self.path / ".lock")
        self._replace_old = False
        self.checkpoint_iteration = None  # the iteration of the newest checkpoint.pt, if known

    # ------------------------------------------------------------------------ opening, closing

    def open(self, resuming: bool, overwrite: bool = False) -> "RunFolder":
        """Create and lock the folder; refuse to start a new run over another one's files
        unless ``overwrite`` (then they are replaced by this run's first write)."""
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
        if not resuming and holds_run(self.path, self.names):
            if not overwrite:
                what = describe(self.path, self.names)
                self.close()
                hint = (f"resume it with  python train.py --resume {self.path}  , " if "interrupted" in what
                        else "")
                raise RunFolderError(f"{self.path} holds {what}; {hint}give another --out, or add "
                                     f"--overwrite to replace it")
            self._replace_old = True
        return self

    def close(self) -> None:
        self._lock.release()

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
        """Run ``write()`` for file ``name``, first clearing an overwritten run's files."""
        if not self.writes:
            return
        try:
            if self._replace_old:
                for file in self.files.values():
                    file.unlink(missing_ok=True)
                self._replace_old = False
            write()
        except OSError as e:
            resume = (f"; the previous checkpoint is intact: free space or fix the permissions, "
                      f"then resume with  python train.py --resume {self.path}"
                      if self.files["checkpoint.pt"].exists() else "")
            raise RunFolderError(f"cannot write {self.files[name]} ({e.strerror or e}){resume}") from None

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
        """curve.png; ``marks``: the test and untrained marks and caption (``curve_marks``)."""
        rows = self.metrics.rows() if self.writes else []
        if rows:
            self.write_png("curve.png", lambda path: plot_learning_curve(
                rows, path, title=self.path.name, best_iteration=best_iteration, chance=chance,
                **marks))

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
