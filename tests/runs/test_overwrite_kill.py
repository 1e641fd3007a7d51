"""--overwrite cannot lose a run: killed at any moment, the folder holds the old run whole
(until the new one can be resumed) or, after the next open, the new run whole.

A kill -9 runs no cleanup; the unit test emulates it by raising ``Killed`` (a BaseException
nothing catches) from the n-th file operation of a replacement, then deleting the dead
writer's ``.lock`` as a takeover would, and never calling ``close``. The end-to-end test kills a
real training process (os._exit) during its first checkpoint write.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anil.run import run_folder as folder_module
from anil.run.run_folder import RUN_FILES, RunFolder

ROOT = Path(__file__).resolve().parents[2]


class Killed(BaseException):
    pass


def old_run(path):
    for name in RUN_FILES:
        (path / name).write_bytes(f"old {name}".encode())
    return files(path)


def files(path):
    """The visible files of a run folder (the lock and hidden staging folders aside)."""
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and p.name != ".lock"}


def replace_with_new_run(path):
    """What a replacing train.py writes up to and just after its first checkpoint."""
    folder = RunFolder(path).open(resuming=False, overwrite=True)
    folder.log({"iteration": 1})
    folder.save_weights("best.pt", {"iteration": 1})
    folder.save_checkpoint({"iteration": 1})
    folder.close()


def count_steps(monkeypatch, kill_at):
    """Make every file operation of the run folder a step; raise Killed at step ``kill_at``."""
    steps = []  # the arguments of each step taken

    def step(real):
        def wrapped(*args, **kwargs):
            if len(steps) == kill_at:
                raise Killed
            steps.append(args)
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(folder_module.os, "replace", step(os.replace))
    monkeypatch.setattr(folder_module.shutil, "rmtree", step(shutil.rmtree))
    monkeypatch.setattr(Path, "unlink", step(Path.unlink))
    monkeypatch.setattr(Path, "write_text", step(Path.write_text))
    monkeypatch.setattr(Path, "mkdir", step(Path.mkdir))
    return steps


def test_a_kill_at_any_step_of_a_replacement_loses_neither_run(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    reference.mkdir()
    old_run(reference)
    with monkeypatch.context() as m:
        steps = count_steps(m, kill_at=-1)
        replace_with_new_run(reference)
    new = files(reference)
    assert new.keys() == {"metrics.jsonl", "best.pt", "checkpoint.pt"}
    # The point of no return: the rename of .new-run to .new-run.swap.
    commit = next(n for n, args in enumerate(steps) if Path(args[-1]).name == ".new-run.swap")
    outcomes = set()
    for n in range(len(steps)):
        path = tmp_path / f"killed-at-{n}"
        path.mkdir()
        old = old_run(path)
        with monkeypatch.context() as m:
            count_steps(m, kill_at=n)
            with pytest.raises(Killed):
                replace_with_new_run(path)
        (path / ".lock").unlink(missing_ok=True)  # the dead writer's lock, taken over
        if n <= commit:  # killed before the point of no return: the old run is untouched
            assert files(path) == old, n
        RunFolder(path).open(resuming=True).close()  # the next run (or --resume) opens it
        assert files(path) in (old, new), n
        assert sorted(p.name for p in path.iterdir()) == sorted(files(path)), n  # nothing hidden
        outcomes.add("new" if files(path) == new else "old")
    assert outcomes == {"old", "new"}


def test_a_kill_during_the_first_checkpoint_of_an_overwrite_keeps_the_finished_run(
        glyph_root, tmp_path, capsys):
    from anil.run import evaluate as evaluate_cli
    from tests.in_process import in_process
    run = tmp_path / "run"
    args = ["--data-root", glyph_root, "--meta-batch", "2", "--hidden", "4", "--eval-tasks", "4",
            "--val-tasks", "2", "--val-every", "1", "--device", "cpu", "--threads", "1",
            "--out", run]
    assert in_process([*args, "--iterations", "2"], capsys)[0] == 0
    before = files(run)
    # A new run with --overwrite, killed (no cleanup at all) as it writes its first checkpoint;
    # by then it has logged a row and saved best.pt.
    killer = ("import os, sys; from anil.run import checkpoint; real = checkpoint.save\n"
              "def save(obj, path):\n"
              "    if obj.get('kind') == 'checkpoint': os._exit(137)\n"
              "    real(obj, path)\n"
              "checkpoint.save = save\n"
              "from anil import train; train.main(sys.argv[1:])\n")
    killed = subprocess.run([sys.executable, "-c", killer, *map(str, args), "--iterations", "3",
                             "--overwrite"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert killed.returncode == 137, killed.stderr
    assert (run / ".new-run" / "best.pt").exists()  # the new run had written files
    assert files(run) == before  # ... and the finished run is all there
    summary = json.loads((run / "summary.json").read_text())
    evaluated = evaluate_cli.evaluate_run(evaluate_cli.build_parser().parse_args(
        [str(run), "--device", "cpu"]))
    assert evaluated == (summary["test_accuracy"], summary["test_ci95"])
    # The next --overwrite drops the dead run's files and replaces the finished one.
    assert in_process([*args, "--iterations", "3", "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in run.iterdir()) == sorted(RUN_FILES)
    assert json.loads((run / "summary.json").read_text())["config"]["iterations"] == 3


def test_a_run_killed_before_its_first_checkpoint_names_both_ways_out(glyph_root, tmp_path,
                                                                      capsys):
    """Killed during its first checkpoint write, a run leaves metrics.jsonl (and best.pt) but
    no checkpoint.pt: --resume says there is nothing to resume and how to start again; a new
    run there says why it cannot be resumed and how to replace it."""
    from tests.in_process import in_process
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"iteration": 1, "loss": 1.6}\n')
    (run / "best.pt").write_bytes(b"")
    code, _, err = in_process(["--resume", run], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "stopped before its first checkpoint, so there is nothing to resume" in err
    assert f"python train.py --out {run} --overwrite" in err
    code, _, err = in_process(["--data-root", glyph_root, "--device", "cpu", "--out", run], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "it has no checkpoint.pt, so it cannot be resumed; give another --out, or add " \
           "--overwrite to replace it" in err
