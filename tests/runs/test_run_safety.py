"""Nothing a user made is lost, and nothing ends in a traceback: ordinary settings that once
crashed, a second writer, a full disk, read-only folders, damaged files, bad values, divergence.

Runs are tiny (8 filters, meta-batch 2) and in-process where the exact path matters.
"""

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from anil import train
from anil.run.run_folder import RunFolder, RunFolderError
from anil.run.metrics import read_metrics
from in_process import in_process
from lock_holder import lock_held_elsewhere

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--meta-batch", "2", "--hidden", "8", "--eval-tasks", "4", "--val-tasks", "4"]
RUN_FILES = {"checkpoint.pt", "best.pt", "model.pt", "metrics.jsonl", "curve.png", "summary.json"}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@contextmanager
def tmpfs(path: Path, size="1m"):
    """A small file system of its own at ``path`` (skips the test where it cannot be mounted)."""
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def read_only(path: Path):
    """Make the tmpfs at ``path`` read-only (root included)."""
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


# ------------------------------------------------------------------ ordinary settings, edge cases


def test_the_first_checkpoint_may_come_before_the_first_metrics_row(glyph_root, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = in_process(["--data-root", glyph_root, *TINY, "--iterations", "12",
                               "--checkpoint-every", "5", "--log-every", "25", "--val-every", "0",
                               "--out", out], capsys)
    assert code == 0, err
    assert [r["iteration"] for r in read_metrics(out / "metrics.jsonl")] == [12]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 12


def test_zero_iterations_tests_the_untrained_network(glyph_root, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = in_process(["--data-root", glyph_root, *TINY, "--iterations", "0",
                                    "--out", out], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] == summary["untrained_test_accuracy"]  # the same weights
    assert summary["tested"] == {"weights": "last", "iteration": 0}
    # the history holds only the untrained network's validation, the curve's first point
    assert [set(row) for row in summary["history"]] == [{"iteration", "seconds", "val_accuracy", "val_ci95"}]
    assert summary["history"][0]["iteration"] == 0
    assert "untrained network" in stdout and "test accuracy" in stdout


def test_a_diverging_run_stops_with_a_message_and_keeps_its_last_good_checkpoint(
        glyph_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data-root", glyph_root, *TINY, "--iterations", "30", "--checkpoint-every", "2",
            "--val-every", "0", "--log-every", "1", "--out", out]
    real = train.fast.meta_gradient
    steps = []

    def diverge_at_5(*a, **kw):
        steps.append(1)
        loss, accuracy = real(*a, **kw)
        return (float("nan") if len(steps) >= 5 else loss), accuracy

    train.fast.meta_gradient, saved = diverge_at_5, train.fast.meta_gradient
    try:
        code, _, err = in_process(args, capsys)
    finally:
        train.fast.meta_gradient = saved
    line = one_line(err)
    assert code == 2 and "the meta-training loss became nan at iteration 5" in line
    assert "last good checkpoint (iteration 4)" in line and "--resume" in line
    kept = torch.load(out / "checkpoint.pt", weights_only=True)
    assert kept["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in kept["body"].values())
    assert not (out / "summary.json").exists()
    # Every file that was written is strict JSON / a finite checkpoint.
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))


def test_a_huge_outer_learning_rate_ends_in_one_line_not_nan_results(glyph_root, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data-root", str(glyph_root),
                        *TINY, "--iterations", "20", "--outer-lr", "1e30", "--val-every", "0",
                        "--out", str(tmp_path / "run")], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "the meta-training loss became nan" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize("args,message", [
    (["--seed", "-1"], "--seed: must lie in 0..4294967295, got -1"),
    (["--seed", "4294967296"], "--seed: must lie in 0..4294967295"),
    (["--seed", "x"], "--seed: must be an integer, got 'x'"),
    (["--head-loop", "numpy"], "invalid choice: 'numpy'"),
    (["--strategy", "reference", "--head-loop", "closed-form"], "--head-loop closed-form applies to the fast path"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--threads", "0"], "--threads: must be a positive integer"),
    (["--data", "no/such/folder"], "--data no/such/folder: not a prepared dataset (no meta.json)"),
])
def test_bad_values_get_one_line(args, message, capsys):
    code, _, err = in_process(args, capsys)
    assert code == 2 and message in err.strip().splitlines()[-1], err


def test_an_unavailable_device_names_the_available_ones(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = in_process(["--device", "cuda"], capsys)
    assert code == 2 and one_line(err) == (
        "error: --device cuda: no CUDA device is available here; available: cpu")


def test_networks_too_large_or_too_small_are_refused_in_one_line(glyph_root, tmp_path, capsys):
    code, _, err = in_process(["--data-root", glyph_root, "--hidden", "100000", "--out",
                               tmp_path / "a"], capsys)
    assert code == 2 and "cannot build a network with --hidden 100000" in one_line(err)
    code, _, err = in_process(["--data-root", glyph_root, "--meta-batch", "1000000000", "--out",
                               tmp_path / "b"], capsys)
    assert code == 2 and "lower --meta-batch" in one_line(err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------- the run folder


def test_out_naming_a_file_is_refused(glyph_root, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    code, _, err = in_process(["--data-root", glyph_root, *TINY, "--out", tmp_path / "file"], capsys)
    assert code == 2 and one_line(err) == f"error: --out {tmp_path / 'file'} is a file, not a folder; give a folder"
    assert (tmp_path / "file").read_text() == "mine"


def test_a_second_writer_is_refused_naming_the_first(glyph_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with lock_held_elsewhere(out, lock_file=out / ".lock") as holder:
        code, _, err = in_process(["--data-root", glyph_root, *TINY, "--iterations", "1",
                                   "--out", out], capsys)
        assert code == 2 and f"another process (PID {holder.pid} on" in one_line(err)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    # The holder was killed: the OS released its lock, and the run goes ahead.
    code, _, err = in_process(["--data-root", glyph_root, *TINY, "--iterations", "1", "--out", out],
                              capsys)
    assert code == 0, err
    assert not (out / ".lock").exists()


def test_two_real_processes_one_folder(glyph_root, tmp_path):
    """Two train.py at once into one folder: one runs, the other refuses, nothing is mixed."""
    command = [sys.executable, str(ROOT / "train.py"), "--data-root", str(glyph_root), *TINY,
               "--iterations", "100000", "--val-every", "10", "--out", str(tmp_path / "run")]
    first = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    for line in first.stdout:  # wait until it is training (it holds the lock by then)
        if line.startswith("iter"):
            break
    second = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    first.send_signal(signal.SIGTERM)  # the first run stops gracefully, resumable
    first.communicate(timeout=300)
    assert first.returncode == 128 + signal.SIGTERM
    assert second.returncode == 2 and f"another process (PID {first.pid}" in second.stderr
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == sorted({r["iteration"] for r in rows})  # no duplicates


def test_a_run_folder_lock_is_released_on_an_exception(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with RunFolder(tmp_path).open(resuming=False):
            assert (tmp_path / ".lock").exists()
            1 / 0
    assert not (tmp_path / ".lock").exists()


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(
        glyph_root, tmp_path, capsys):
    with tmpfs(tmp_path / "disk", size="2m") as disk:
        out = disk / "run"
        # 64 filters: a checkpoint is ~1.4 MB, so the second one cannot fit beside the first.
        code, _, err = in_process(["--data-root", glyph_root, "--meta-batch", "2", "--eval-tasks",
                                   "4", "--val-every", "0", "--iterations", "4",
                                   "--checkpoint-every", "2", "--out", out], capsys)
        line = one_line(err)
        assert code == 2 and "No space left on device" in line
        assert "the previous checkpoint is intact" in line and f"--resume {out}" in line
        assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 2
        assert not [p for p in out.iterdir() if ".tmp-" in p.name]  # no half-written file left


def test_read_only_run_folders_are_one_line(glyph_root, tmp_path, capsys):
    with tmpfs(tmp_path / "ro") as disk:
        args = ["--data-root", glyph_root, *TINY, "--iterations", "2", "--val-every", "0"]
        assert in_process([*args, "--out", disk / "run", "--checkpoint-every", "1"], capsys)[0] == 0
        read_only(disk)
        code, _, err = in_process([*args, "--out", disk / "fresh"], capsys)
        assert code == 2 and f"cannot write to {disk / 'fresh'} (Read-only file system)" in one_line(err)
        code, _, err = in_process(["--resume", disk / "run", "--iterations", "3",
                                   "--allow-config-change"], capsys)
        assert code == 2 and "Read-only file system" in one_line(err)
        r = subprocess.run([sys.executable, "-m", "anil.run.metrics", str(disk / "run")], cwd=ROOT,
                           env=ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "Read-only file system" in r.stderr and "Traceback" not in r.stderr


def test_a_damaged_metrics_line_does_not_block_resume(glyph_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data-root", glyph_root, *TINY, "--val-every", "0", "--log-every", "1"]
    assert in_process([*args, "--iterations", "3", "--out", out], capsys)[0] == 0
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b'{"iteration": "five"}\n\xff\xfe garbage\n')
    code, stdout, err = in_process(["--resume", out, "--iterations", "5", "--allow-config-change"],
                                   capsys)
    assert code == 0, err
    assert "dropped 2 damaged line(s) of metrics.jsonl" in stdout
    assert [r["iteration"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_outputs_are_strict_json(glyph_root, tmp_path, capsys):
    out = tmp_path / "run"
    # One validation task: its 95% CI is undefined (nan) and must be written as null.
    code, _, err = in_process(["--data-root", glyph_root, *TINY, "--iterations", "2",
                               "--val-tasks", "1", "--val-every", "1", "--out", out], capsys)
    assert code == 0, err

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))

    summary = strict((out / "summary.json").read_text())
    assert summary["history"][0]["val_ci95"] is None
    for line in (out / "metrics.jsonl").read_text().splitlines():
        strict(line)


def test_an_overwriting_run_that_ends_before_its_first_checkpoint_leaves_the_old_run(tmp_path):
    for name in RUN_FILES:
        (tmp_path / name).write_text("old")
    folder = RunFolder(tmp_path).open(resuming=False, overwrite=True)
    try:
        folder.log({"iteration": 1})
        folder.save_weights("best.pt", {"iteration": 1})
        assert all((tmp_path / name).read_text() == "old" for name in RUN_FILES)  # untouched
    finally:
        folder.close()
    assert {p.name for p in tmp_path.iterdir()} == RUN_FILES  # the new run's files are dropped
    with pytest.raises(RunFolderError, match="holds a finished run"):
        RunFolder(tmp_path).open(resuming=False)


def test_temporaries_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    for name in (".checkpoint.pt.tmp-4242", ".curve.png.tmp-17.png", ".summary.json.tmp-9"):
        (tmp_path / name).write_bytes(b"half-written")
    (tmp_path / "notes.tmp-1").write_text("mine")  # not one of ours: the pattern needs a dot first
    (tmp_path / ".hidden").write_text("mine")
    with RunFolder(tmp_path).open(resuming=False):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "notes.tmp-1"]
