"""Options with an upper bound: --threads (at most the CPU count: a huge one crashed torch's
thread pool) and the inner-step counts (at most MAX_INNER_STEPS: a huge one ran for hours
without a word). Each refusal is argparse's one line, naming the option and why."""

import importlib
import os

import pytest

from anil.run import cli

TOO_MANY_THREADS = str((os.cpu_count() or 1) + 1)
TOO_MANY_STEPS = str(cli.MAX_INNER_STEPS + 1)


@pytest.mark.parametrize("module,argv,message", [
    ("anil.train", ["--threads", TOO_MANY_THREADS], "the number of CPUs here"),
    ("anil.train", ["--threads", "100000"], "the number of CPUs here"),
    ("anil.run.evaluate", ["RUN", "--threads", "100000"], "the number of CPUs here"),
    ("anil.paper.compare", ["--threads", "100000"], "the number of CPUs here"),
    ("anil.paper.analysis", ["--threads", "100000"], "the number of CPUs here"),
    ("anil.explain", ["--threads", "100000"], "the number of CPUs here"),
    ("anil.train", ["--inner-steps", TOO_MANY_STEPS], "the presets take 5 or 10"),
    ("anil.train", ["--test-inner-steps", "100000000"], "the presets take 5 or 10"),
    ("anil.run.evaluate", ["RUN", "--test-inner-steps", "100000000"], "the presets take 5 or 10"),
    ("anil.paper.compare", ["--test-inner-steps", TOO_MANY_STEPS], "the presets take 5 or 10"),
    ("anil.explain", ["--steps", TOO_MANY_STEPS], "the presets take 5 or 10"),
])
def test_values_past_the_bound_are_one_line(module, argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and "at most" in err[-1] and message in err[-1], err


def test_the_bounds_themselves_are_accepted():
    assert cli.threads(str(os.cpu_count() or 1)) == (os.cpu_count() or 1)
    assert cli.inner_steps(str(cli.MAX_INNER_STEPS)) == cli.MAX_INNER_STEPS
    assert cli.inner_steps("0") == 0
