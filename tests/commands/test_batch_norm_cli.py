"""--batch-norm on train.py, evaluate.py and anil.paper.compare: accepted or refused in one line,
named in the startup line, summary.json and evaluate's output; a run saved before the option
existed means "task", evaluates so and resumes bit for bit."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anil import fast
from anil.run import checkpoint
from in_process import in_process

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--iterations", "3", "--meta-batch", "2", "--hidden", "4", "--eval-tasks", "6",
        "--val-every", "0", "--log-every", "1"]


def run(*args):
    command = [sys.executable, *(["-m", *args] if args[0].startswith("anil.") else
                                 [str(ROOT / args[0]), *args[1:]])]
    return subprocess.run([*command[:1], *map(str, command[1:])], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["train.py", "evaluate.py", "anil.paper.compare"])
def test_an_unknown_mode_is_refused_in_one_line(command, tmp_path):
    extra = ["runs/none"] if command == "evaluate.py" else ["--out", tmp_path / "x"]
    r = run(command, *extra, "--batch-norm", "query")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--batch-norm: invalid choice: 'query' (choose from 'task', 'separate', 'support')" \
        in r.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def separate_run(glyph_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bn") / "separate"
    r = run("train.py", "--data-root", glyph_root, *TINY, "--batch-norm", "separate", "--out", out)
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_the_mode_is_in_the_startup_line_and_summary(separate_run):
    out, stdout = separate_run
    assert "second order, batch norm separate, Adam" in stdout.splitlines()[0]
    assert json.loads((out / "summary.json").read_text())["config"]["batch_norm"] == "separate"


def test_evaluate_uses_the_runs_mode_unless_told_otherwise(separate_run, glyph_root):
    out, _ = separate_run
    summary = json.loads((out / "summary.json").read_text())
    own = run("evaluate.py", out, "--data-root", glyph_root, "--threads", "1")
    assert own.returncode == 0, own.stderr
    assert "inner steps, batch norm separate;" in own.stdout
    # The run's own mode reproduces train.py's final test (the same weights and tasks).
    assert f"test accuracy {100 * summary['test_accuracy']:.2f} ±" in own.stdout
    other = run("evaluate.py", out, "--data-root", glyph_root, "--threads", "1",
                "--batch-norm", "support")
    assert other.returncode == 0 and "inner steps, batch norm support;" in other.stdout


def strip_batch_norm(path):
    """Make ``path`` look written before --batch-norm existed: no batch_norm in its config."""
    saved = checkpoint.load(path)
    del saved["config"]["batch_norm"]
    checkpoint.save({k: v for k, v in saved.items() if k not in ("format", "version")}, path)


def test_a_run_saved_before_the_option_evaluates_as_task(separate_run, glyph_root, tmp_path):
    out, _ = separate_run
    old = tmp_path / "model.pt"
    old.write_bytes((out / "model.pt").read_bytes())
    strip_batch_norm(old)
    accuracy = {}
    for name, extra in (("old", []), ("task", ["--batch-norm", "task"])):
        r = run("evaluate.py", old, "--data-root", glyph_root, "--threads", "1", *extra)
        assert r.returncode == 0, r.stderr
        assert "inner steps, batch norm task;" in r.stdout
        accuracy[name] = re.search(r"test accuracy (\S+) ±", r.stdout).group(1)
    assert accuracy["old"] == accuracy["task"]


class Killed(Exception):
    pass


def test_a_run_saved_before_the_option_resumes_bit_for_bit(glyph_root, tmp_path, monkeypatch,
                                                           capsys):
    args = ["--data-root", glyph_root, *TINY, "--iterations", "6", "--checkpoint-every", "2",
            "--threads", "1"]
    code, _, err = in_process([*args, "--out", tmp_path / "whole"], capsys)
    assert code == 0, err
    real, steps = fast.meta_gradient, []

    def step_then_die(*a, **kw):
        steps.append(1)
        if len(steps) == 4:  # past the checkpoint of iteration 2
            raise Killed
        return real(*a, **kw)

    monkeypatch.setattr(fast, "meta_gradient", step_then_die)
    with pytest.raises(Killed):
        in_process([*args, "--out", tmp_path / "old"], capsys)
    monkeypatch.undo()
    strip_batch_norm(tmp_path / "old" / "checkpoint.pt")
    code, out, err = in_process(["--resume", tmp_path / "old", "--threads", "1"], capsys)
    assert code == 0, err
    assert "predates the options batch_norm; continuing with batch_norm=task" in out
    a, b = (checkpoint.load(tmp_path / d / "checkpoint.pt") for d in ("whole", "old"))
    assert b["config"]["batch_norm"] == "task"
    for part in ("body", "head"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])


def test_compare_records_the_mode(glyph_root, tmp_path):
    r = run("anil.paper.compare", "--data-root", glyph_root, "--iterations", "1", "--meta-batch",
            "2", "--hidden", "4", "--inner-steps", "1", "--test-inner-steps", "1", "--eval-tasks",
            "2", "--batch-norm", "support", "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert "second order, batch norm support, Adam" in r.stdout.splitlines()[0]
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["config"]["batch_norm"] == "support"
