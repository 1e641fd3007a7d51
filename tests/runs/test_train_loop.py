"""The training loop's parts, one at a time and in process, without training: the run's state
(``TrainState``), the run folder's rules (``RunFolder``, ``fresh_name``), the metrics log, and
train.py's ``end_of_iteration`` (when to validate, log and checkpoint) and ``use_test_weights``.

tests/runs/test_resume.py and tests/runs/test_run_safety.py check the same rules end to end with real
runs; these state each rule directly, in milliseconds.
"""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from anil import train
from anil.run.run_folder import RUN_FILES, RunFolder, RunFolderError, fresh_name
from anil.run.metrics import MetricsLog, read_metrics
from anil.run.state import NonFiniteLoss, TrainState


# ----------------------------------------------------------------------------------- TrainState


def test_model_selection_keeps_the_first_of_equal_validations():
    state = TrainState()
    weights = iter([{"body": i, "head": i} for i in range(10)])
    kept = [state.keep_if_best(it, acc, 0.01, lambda: next(weights))
            for it, acc in [(2, 0.3), (4, 0.7), (6, 0.5), (8, 0.7), (10, 0.6)]]
    assert kept == [True, True, False, False, False]
    assert state.best == {"iteration": 4, "val_accuracy": 0.7, "val_ci95": 0.01, "body": 1, "head": 1}
    assert state.keep_if_best(12, 0.71, 0.02, lambda: {"body": "new", "head": "new"})
    assert state.best["iteration"] == 12 and state.best["body"] == "new"


def test_the_window_is_the_mean_since_the_last_row_and_starts_again_after_it():
    state = TrainState()
    assert state.take_window() == {}
    for loss, accuracy in [(1.0, 0.2), (2.0, 0.4), (3.0, 0.9)]:
        state.record(loss, accuracy)
    assert state.take_window() == pytest.approx({"loss": 2.0, "accuracy": 0.5})
    assert state.take_window() == {}
    state.record(5.0, 1.0)
    assert state.take_window() == {"loss": 5.0, "accuracy": 1.0}
    assert state.iteration == 4


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_stops_the_run_before_it_is_counted(loss):
    state = TrainState()
    state.record(0.5, 0.5)
    with pytest.raises(NonFiniteLoss, match=f"became {loss} at iteration 2"):
        state.record(loss, 0.5)
    assert state.iteration == 1 and state.take_window() == {"loss": 0.5, "accuracy": 0.5}


def test_a_checkpoint_records_whether_the_iterations_validation_is_still_pending():
    state = TrainState(iteration=6, finished=5, best={"iteration": 4}, untrained={"accuracy": 0.2},
                       window={"loss": 1.0, "accuracy": 0.5, "count": 2}, seconds_before=10.0)
    state.start_clock()
    saved = state.state_dict()
    assert saved["pending"] is True and saved["seconds"] >= 10.0
    back = TrainState.from_state_dict(saved)
    assert (back.iteration, back.finished) == (6, 5)  # the loop redoes iteration 6's validation
    assert back.best == state.best and back.untrained == state.untrained
    assert back.window == state.window and back.seconds_before == saved["seconds"]
    state.finished = 6
    done = TrainState.from_state_dict(state.state_dict())
    assert state.state_dict()["pending"] is False and (done.iteration, done.finished) == (6, 6)


# ------------------------------------------------------------------------------ the run folder


def test_fresh_name_skips_runs_and_files_and_reuses_an_empty_folder(tmp_path):
    base = tmp_path / "runs" / "glyphs-5w1s"
    assert fresh_name(base) == base  # nothing there yet
    base.mkdir(parents=True)
    assert fresh_name(base) == base  # an empty folder holds no run
    (base / "metrics.jsonl").write_text("")
    assert fresh_name(base) == tmp_path / "runs" / "glyphs-5w1s-2"
    (tmp_path / "runs" / "glyphs-5w1s-2").write_text("a file, not a folder")
    (tmp_path / "runs" / "glyphs-5w1s-3").mkdir()
    (tmp_path / "runs" / "glyphs-5w1s-3" / "summary.json").write_text("{}")
    assert fresh_name(base) == tmp_path / "runs" / "glyphs-5w1s-4"


def test_overwrite_replaces_the_old_run_at_its_first_checkpoint_and_only_then(tmp_path):
    for name in RUN_FILES:
        (tmp_path / name).write_text("old")
    with pytest.raises(RunFolderError, match="holds a finished run; .* --overwrite"):
        RunFolder(tmp_path).open(resuming=False)
    assert all((tmp_path / name).read_text() == "old" for name in RUN_FILES)
    folder = RunFolder(tmp_path).open(resuming=False, overwrite=True)
    try:
        folder.log({"iteration": 1})
        folder.write_json("summary.json", {"test_accuracy": 0.5})
        folder.log({"iteration": 2})
        assert all((tmp_path / name).read_text() == "old" for name in RUN_FILES)  # not yet
        folder.save_checkpoint({"iteration": 2})
        assert {p.name for p in tmp_path.iterdir()} == {"metrics.jsonl", "summary.json",
                                                        "checkpoint.pt", ".lock"}
        assert [r["iteration"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
        folder.log({"iteration": 3})  # after the commit, straight into the run folder
        assert [r["iteration"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    finally:
        folder.close()
    # A resumed run writes into its own folder without being asked.
    RunFolder(tmp_path).open(resuming=True).close()


def test_json_files_of_the_run_are_strict(tmp_path):
    with RunFolder(tmp_path).open(resuming=False) as folder:
        folder.write_json("summary.json", {"test_ci95": math.nan, "history": [{"loss": math.inf}]})
    text = (tmp_path / "summary.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}")) == {
        "test_ci95": None, "history": [{"loss": None}]}


def test_truncating_keeps_the_checkpoints_own_row(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for it in range(1, 7):
        log.append({"iteration": it})
    assert log.truncate_after(4) == 0
    assert [r["iteration"] for r in log.rows()] == [1, 2, 3, 4]


# ------------------------------------------------------------------- train.py's end_of_iteration


class FakeFolder:
    """Records what end_of_iteration asks the run folder to write."""

    def __init__(self):
        self.rows, self.checkpoints, self.best = [], [], []

    def log(self, row):
        self.rows.append(row)

    def save_checkpoint(self, obj):
        self.checkpoints.append(obj)

    def save_weights(self, name, obj):
        assert name == "best.pt"
        self.best.append(obj)

    def draw_curve(self, *args, **kwargs):
        pass


def fake_run(iterations, val_every, log_every, checkpoint_every, accuracies):
    """A Run whose validation returns ``accuracies`` in turn; tiny real modules for the weights."""
    torch.manual_seed(0)
    body, head = nn.Linear(2, 2), nn.Linear(2, 2)
    queue, validated = list(accuracies), []

    def test(sampler, num_tasks, label):
        assert label == "validation" and sampler == "val sampler"
        validated.append(None)
        value = queue.pop(0)
        return value, 0.01, [value] * num_tasks

    args = SimpleNamespace(iterations=iterations, val_every=val_every, log_every=log_every,
                           checkpoint_every=checkpoint_every, val_tasks=4, ways=5)
    run = train.Run(args, None, body, head, torch.optim.Adam([*body.parameters(), *head.parameters()]),
                    None, None, {"val": "val sampler", "train": SimpleNamespace(state_dict=lambda: {})},
                    FakeFolder(), {"iterations": iterations}, {}, test)
    return run, validated


def run_loop(run):
    """The loop of train.train without the steps: iteration i records loss i and accuracy 1/i."""
    state = TrainState()
    state.start_clock()
    bar = SimpleNamespace(clear=lambda: None)
    for _ in range(run.args.iterations):
        state.record(float(state.iteration + 1), 1 / (state.iteration + 1))
        train.end_of_iteration(run, state, bar)
        assert state.finished == state.iteration
    return state


def test_validation_logging_and_checkpoints_follow_their_cadence_and_the_last_iteration(capsys):
    run, _ = fake_run(iterations=7, val_every=3, log_every=2, checkpoint_every=4,
                      accuracies=[0.4, 0.6, 0.6])
    run_loop(run)
    rows = run.folder.rows
    assert [r["iteration"] for r in rows] == [2, 3, 4, 6, 7]  # log cadence, validations, the last
    assert [r["iteration"] for r in rows if "val_accuracy" in r] == [3, 6, 7]
    assert [r["val_accuracy"] for r in rows if "val_accuracy" in r] == [0.4, 0.6, 0.6]
    # Each row holds the mean of the steps since the previous row.
    assert [r["loss"] for r in rows] == [1.5, 3.0, 4.0, 5.5, 7.0]
    assert rows[0]["accuracy"] == pytest.approx((1 + 1 / 2) / 2)
    # Checkpoints on the cadence and at the end, each one complete (nothing pending).
    assert [(c["iteration"], c["pending"]) for c in run.folder.checkpoints] == [(4, False), (7, False)]
    # best.pt follows the best validation, the first of equal ones.
    assert [b["iteration"] for b in run.folder.best] == [3, 6]
    assert "iter     7/7" in capsys.readouterr().out


def test_without_validation_the_last_iteration_is_still_logged_and_checkpointed():
    run, validated = fake_run(iterations=5, val_every=0, log_every=10, checkpoint_every=0,
                              accuracies=[])
    run_loop(run)
    assert validated == []
    assert [r["iteration"] for r in run.folder.rows] == [5]
    assert run.folder.rows[0]["loss"] == 3.0  # the mean of all five steps
    assert [c["iteration"] for c in run.folder.checkpoints] == [5]


# ------------------------------------------------------------------- train.py's use_test_weights


@pytest.mark.parametrize("which", ["best", "last"])
def test_the_final_test_uses_the_weights_asked_for(which):
    run, _ = fake_run(iterations=4, val_every=2, log_every=1, checkpoint_every=0,
                      accuracies=[0.9, 0.5])
    run.args.test_weights = which
    state = TrainState()
    state.start_clock()
    bar = SimpleNamespace(clear=lambda: None)
    for _ in range(4):
        state.record(1.0, 0.5)
        with torch.no_grad():  # the weights change at every step
            for p in [*run.body.parameters(), *run.head.parameters()]:
                p.add_(1.0)
        train.end_of_iteration(run, state, bar)
    last = {"body": {k: v.clone() for k, v in run.body.state_dict().items()},
            "head": {k: v.clone() for k, v in run.head.state_dict().items()}}
    tested = train.use_test_weights(run, state)
    now = {"body": run.body.state_dict(), "head": run.head.state_dict()}
    if which == "best":
        assert tested["record"] == {"weights": "best", "iteration": 2, "val_accuracy": 0.9}
        for part in ("body", "head"):
            assert all(torch.equal(now[part][k], state.best[part][k]) for k in now[part])
            for k in now[part]:  # the weights of two steps earlier
                torch.testing.assert_close(now[part][k], last[part][k] - 2.0)
    else:
        assert tested["record"] == {"weights": "last", "iteration": 4}
        for part in ("body", "head"):
            assert all(torch.equal(now[part][k], last[part][k]) for k in now[part])


def test_without_a_validation_the_final_test_uses_the_last_weights():
    run, _ = fake_run(iterations=1, val_every=0, log_every=1, checkpoint_every=0, accuracies=[])
    run.args.test_weights = "best"
    assert train.use_test_weights(run, TrainState(iteration=3))["record"] == {
        "weights": "last", "iteration": 3}


@pytest.mark.parametrize("val_every", [0, 5])
def test_a_fresh_run_validates_the_untrained_network_as_iteration_0(val_every, capsys):
    """start_or_resume on a fresh run: the untrained test, then (with validation on) one
    validation logged as row 0, measured as every later validation is (the same tester, the
    validation sampler and --val-tasks); it is not a candidate for best.pt."""
    calls = []

    def test(sampler, num_tasks, label):
        calls.append((sampler, num_tasks, label))
        return {"test sampler": 0.3, "val sampler": 0.4}[sampler], 0.05, []

    args = SimpleNamespace(val_every=val_every, val_tasks=4, eval_tasks=6)
    run = train.Run(args, None, None, None, None, None, None,
                    {"val": "val sampler", "test": "test sampler"}, FakeFolder(), {}, {}, test)
    state = train.start_or_resume(run, None)
    assert calls[0] == ("test sampler", 6, "untrained test")
    assert state.untrained == {"accuracy": 0.3, "ci95": 0.05} and state.best is None
    if val_every:
        assert calls[1:] == [("val sampler", 4, "validation")]
        assert run.folder.rows == [{"iteration": 0, "seconds": 0.0, "val_accuracy": 0.4,
                                    "val_ci95": 0.05}]
        assert "validation 40.0%" in capsys.readouterr().out
    else:
        assert calls[1:] == [] and run.folder.rows == []
