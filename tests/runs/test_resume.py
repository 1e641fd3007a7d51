"""Long runs users can trust, end to end: a real signal to a real train.py, exact resume, model
selection, metrics log and plot, refusals with a reason, evaluation of a saved run.

The runs are tiny (8 filters, meta-batch 2, 40 iterations) and single-threaded, so that a
subprocess costs a few seconds and its results are bitwise reproducible.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from anil import fast, train
from anil.evaluation import evaluate
from anil.run.metrics import best_validation, read_metrics
from anil.sampler import split_seed
from in_process import in_process

ROOT = Path(__file__).resolve().parents[2]

ITERATIONS, LOG_EVERY, VAL_EVERY = 40, 3, 5
TINY = ["--iterations", str(ITERATIONS), "--meta-batch", "2", "--hidden", "8", "--eval-tasks", "8",
        "--val-tasks", "6", "--val-every", str(VAL_EVERY), "--log-every", str(LOG_EVERY),
        "--checkpoint-every", "7"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: fast on a busy machine, reproducible


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def script(name, *args):
    return [sys.executable, str(ROOT / name), *map(str, args)]


def run(name, *args):
    return subprocess.run(script(name, *args), cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)


def tensors(obj):
    """Every tensor in a nested checkpoint, by path, for bitwise comparison."""
    if isinstance(obj, torch.Tensor):
        return {"": obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    return {f"{k}/{p}": t for k, v in items for p, t in tensors(v).items()}


def without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def runs(glyph_root, tmp_path_factory):
    """An uninterrupted run, and the same run stopped by a real signal and resumed."""
    base = tmp_path_factory.mktemp("runs")
    data = ["--data-root", glyph_root]
    whole = subprocess.Popen(script("train.py", *data, *TINY, "--out", base / "whole"), cwd=ROOT,
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = subprocess.Popen(script("train.py", *data, *TINY, "--out", base / "resumed"), cwd=ROOT,
                               env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # A random moment: after a random logged iteration (the signal lands one or more steps later).
    after = LOG_EVERY * random.randint(1, 6)
    signum = random.choice([signal.SIGINT, signal.SIGTERM])
    for line in stopped.stdout:
        if line.startswith(f"iter {after:5d}/"):
            stopped.send_signal(signum)
            break
    stop_out, stop_err = stopped.communicate(timeout=300)
    whole_out, whole_err = whole.communicate(timeout=300)
    assert whole.returncode == 0, whole_err
    interrupted = base / "interrupted"  # the stopped run as it was, for the refusal tests
    shutil.copytree(base / "resumed", interrupted)
    resumed = run("train.py", "--resume", base / "resumed")
    assert resumed.returncode == 0, resumed.stderr
    return SimpleNamespace(whole=base / "whole", resumed=base / "resumed", interrupted=interrupted,
                           signum=signum, after=after, returncode=stopped.returncode,
                           stop_err=stop_err, resume_out=resumed.stdout, whole_out=whole_out,
                           data=glyph_root)


def test_a_signal_checkpoints_and_exits_with_how_to_resume(runs):
    assert runs.returncode == 128 + runs.signum, (runs.signum, runs.stop_err)
    last = runs.stop_err.strip().splitlines()[-1]
    assert re.fullmatch(rf"stopped by {signal.Signals(runs.signum).name} at iteration (\d+)/40; wrote "
                        rf".*checkpoint.pt. Resume with:  python train.py --resume "
                        rf"{re.escape(str(runs.resumed))}", last), last
    stopped_at = int(re.search(r"iteration (\d+)/", last).group(1))
    saved = torch.load(runs.interrupted / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == stopped_at and runs.after <= stopped_at < ITERATIONS
    assert "Traceback" not in runs.stop_err


def test_resumed_run_equals_the_uninterrupted_run_bit_for_bit(runs):
    whole = torch.load(runs.whole / "checkpoint.pt", weights_only=True)
    resumed = torch.load(runs.resumed / "checkpoint.pt", weights_only=True)
    assert whole["iteration"] == resumed["iteration"] == ITERATIONS
    a, b = tensors({k: whole[k] for k in ("body", "head", "optimizer", "best")}), \
        tensors({k: resumed[k] for k in ("body", "head", "optimizer", "best")})
    assert a.keys() == b.keys() and len(a) > 20
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert whole["sampler"] == resumed["sampler"]
    assert without_seconds(read_metrics(runs.whole / "metrics.jsonl")) == \
        without_seconds(read_metrics(runs.resumed / "metrics.jsonl"))
    s_whole, s_resumed = (json.loads((r / "summary.json").read_text()) for r in (runs.whole, runs.resumed))
    assert s_whole["test_accuracy"] == s_resumed["test_accuracy"]
    assert s_whole["tested"] == s_resumed["tested"]
    assert f"resuming {runs.resumed} at iteration {torch.load(runs.interrupted / 'checkpoint.pt', weights_only=True)['iteration']}/40" in runs.resume_out


def test_metrics_log_has_one_row_per_logged_iteration_and_the_plot_is_a_png(runs):
    for folder in (runs.whole, runs.resumed):
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        logged = [i for i in range(1, ITERATIONS + 1) if i % LOG_EVERY == 0 or i % VAL_EVERY == 0
                  or i == ITERATIONS]
        assert [r["iteration"] for r in rows] == [0, *logged]  # 0: the untrained network validated
        assert set(rows[0]) == {"iteration", "val_accuracy", "val_ci95", "seconds"} and rows[0]["seconds"] == 0
        for r in rows[1:]:
            assert 0 <= r["accuracy"] <= 1 and r["loss"] > 0 and r["seconds"] > 0
            assert ("val_accuracy" in r) == (r["iteration"] % VAL_EVERY == 0 or r["iteration"] == ITERATIONS)
        assert all(b["seconds"] >= a["seconds"] for a, b in zip(rows, rows[1:]))
        png = folder / "curve.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as image:
            image.verify()
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["history"] == rows


def test_best_checkpoint_holds_the_best_validated_weights(runs, one_thread):
    rows = read_metrics(runs.whole / "metrics.jsonl")
    best_row = best_validation(rows)
    best = torch.load(runs.whole / "best.pt", weights_only=True)
    assert best["iteration"] == best_row["iteration"] and best["val_accuracy"] == best_row["val_accuracy"]
    summary = json.loads((runs.whole / "summary.json").read_text())
    assert summary["tested"] == {"weights": "best", "iteration": best_row["iteration"],
                                 "val_accuracy": best_row["val_accuracy"]}
    assert f"best validation {100 * best_row['val_accuracy']:.2f}% at iteration {best_row['iteration']}" \
        in runs.whole_out
    # The saved weights are those that were validated: re-validating them gives the logged figure.
    from anil.data import load_split
    from anil.model import ConvBody, make_head
    from anil.sampler import TaskSampler
    body, head = ConvBody(1, 28, hidden=8), make_head(8, 5)
    body.load_state_dict(best["body"]), head.load_state_dict(best["head"])
    val = TaskSampler(load_split(runs.data / "glyphs", "val"), 5, 1, seed=split_seed(0, "val"))
    body.eval(), head.eval()
    assert evaluate(body, head, val, 6, 0.5, 10)[0] == best_row["val_accuracy"]


def test_evaluate_a_saved_run_reproduces_its_final_test(runs, capsys, one_thread):
    from anil.run import evaluate as evaluate_cli  # what python evaluate.py runs
    summary = json.loads((runs.whole / "summary.json").read_text())
    args = evaluate_cli.build_parser().parse_args([str(runs.whole)])
    mean, ci = evaluate_cli.evaluate_run(args)
    out = capsys.readouterr().out
    assert (mean, ci) == (summary["test_accuracy"], summary["test_ci95"])
    assert f"test accuracy {100 * summary['test_accuracy']:.2f} ± {100 * summary['test_ci95']:.2f}% " \
           f"(95% CI over 8 tasks" in out
    assert f"best.pt: iteration {summary['tested']['iteration']}" in out


def test_resume_with_changed_settings_is_refused_naming_them(runs, capsys):
    code, _, err = in_process(["--resume", runs.interrupted, "--meta-batch", "3", "--inner-lr", "0.1",
                               "--eval-tasks", "3"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "meta_batch: 2 → 3" in err and "inner_lr: 0.5 → 0.1" in err
    assert "eval_tasks" not in err  # it does not change the run, so it may differ
    assert "--allow-config-change" in err


def test_resume_on_other_data_is_refused(runs, capsys, tmp_path):
    shutil.copytree(runs.data / "glyphs", tmp_path / "glyphs")
    images = tmp_path / "glyphs" / "val_images.npy"
    raw = bytearray(images.read_bytes())
    raw[-1] ^= 1  # one pixel differs: another preparation of "the same" dataset
    images.write_bytes(bytes(raw))
    code, _, err = in_process(["--resume", runs.interrupted, "--data-root", tmp_path], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "is not the one the run was trained on" in err and "--data-root" in err


def test_a_fresh_run_does_not_overwrite_an_interrupted_one(runs, capsys):
    code, _, err = in_process(["--data-root", runs.data, *TINY, "--out", runs.interrupted], capsys)
    assert code == 2 and "holds an interrupted run (iteration" in err
    assert f"python train.py --resume {runs.interrupted}" in err


def test_an_explicit_override_extends_a_run(runs, tmp_path, capsys, one_thread):
    """Also from a run folder written before the iteration-0 row existed: it continues exactly."""
    folder, log = tmp_path / "run", tmp_path / "run" / "metrics.jsonl"
    shutil.copytree(runs.interrupted, folder)
    log.write_text("".join(log.read_text().splitlines(keepends=True)[1:]))  # as before row 0 existed
    code, out, err = in_process(["--resume", folder, "--iterations", "45", "--allow-config-change"],
                                capsys)
    assert code == 0, err
    assert "note: resuming with changed settings (iterations: 40 → 45)" in out
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["iteration"] == 45
    assert read_metrics(log)[-1]["iteration"] == 45 and (folder / "curve.png").is_file()
    assert without_seconds([r for r in read_metrics(log) if r["iteration"] <= ITERATIONS]) == \
        without_seconds(read_metrics(runs.whole / "metrics.jsonl"))[1:]  # continued exactly


def test_evaluate_refuses_a_foreign_file_in_one_line(tmp_path, capsys):
    from anil.run import evaluate as evaluate_cli
    torch.save({"weight": torch.zeros(2)}, tmp_path / "model.pt")
    with pytest.raises(SystemExit) as e:
        evaluate_cli.main([str(tmp_path / "model.pt")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip().splitlines() == [
        f"error: {tmp_path / 'model.pt'} is not an anil checkpoint (a torch file of some other "
        f"program); give a file written by train.py"]


def test_resume_from_a_damaged_checkpoint_is_one_line(runs, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(runs.interrupted, folder)
    content = (folder / "checkpoint.pt").read_bytes()
    (folder / "checkpoint.pt").write_bytes(content[: len(content) // 3])
    r = run("train.py", "--resume", folder)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: --resume {folder}: {folder}/checkpoint.pt is truncated or corrupt (not a complete "
        f"torch zip archive); delete it, or use another copy"]


# ----------------------------------------------------------- in-process, exactly controlled


def scripted_validation(monkeypatch, accuracies):
    """Make validation return ``accuracies`` in turn (training and test are untouched)."""
    real, queue = train.evaluate, list(accuracies)

    def fake(body, head, sampler, num_tasks, *args, **kwargs):
        if sampler.seed == split_seed(0, "val"):
            value = queue.pop(0)
            return value, 0.01, [value] * num_tasks
        return real(body, head, sampler, num_tasks, *args, **kwargs)

    monkeypatch.setattr(train, "evaluate", fake)


SHORT = ["--meta-batch", "2", "--hidden", "8", "--eval-tasks", "4", "--val-tasks", "4",
         "--val-every", "2", "--log-every", "1"]
# The tests below replace train.evaluate or fast.meta_gradient (step 3 of train.py's loop).
PATCHABLE = SHORT


def test_model_selection_keeps_the_iteration_with_the_highest_validation_accuracy(
        glyph_root, tmp_path, monkeypatch, capsys, one_thread):
    scripted_validation(monkeypatch, [0.9, 0.3, 0.7, 0.5, 0.7, 0.6])  # iterations 0 (untrained:
    # never best.pt, even when highest), 2, 4, 6, 8, 10
    code, out, err = in_process(["--data-root", glyph_root, *PATCHABLE, "--iterations", "10",
                                 "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    best = torch.load(tmp_path / "a" / "best.pt", weights_only=True)
    assert best["iteration"] == 4 and best["val_accuracy"] == 0.7  # the first of the two 0.7s
    assert "best validation 70.00% at iteration 4" in out
    # best.pt holds the weights after iteration 4: those a 4-iteration run ends with.
    monkeypatch.undo()
    code, _, err = in_process(["--data-root", glyph_root, *PATCHABLE, "--iterations", "4",
                               "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    last = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(best[part][k], last[part][k]) for part in ("body", "head")
               for k in best[part])
    final = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    assert final["iteration"] == 10 and not torch.equal(final["head"]["weight"], best["head"]["weight"])


def test_a_stop_during_validation_is_redone_on_resume(glyph_root, tmp_path, monkeypatch, capsys,
                                                     one_thread):
    args = ["--data-root", glyph_root, *PATCHABLE, "--iterations", "8", "--checkpoint-every", "3"]
    code, _, err = in_process([*args, "--out", tmp_path / "whole"], capsys)
    assert code == 0, err
    # SIGTERM arrives in the middle of the validation of iteration 6.
    real, calls = train.evaluate, []

    def evaluate_then_signal(body, head, sampler, num_tasks, *a, **kw):
        if sampler.seed == split_seed(0, "val"):
            calls.append(1)
            if len(calls) == 4:  # validations of iterations 0, 2, 4 and 6
                os.kill(os.getpid(), signal.SIGTERM)
        return real(body, head, sampler, num_tasks, *a, **kw)

    monkeypatch.setattr(train, "evaluate", evaluate_then_signal)
    code, _, err = in_process([*args, "--out", tmp_path / "stopped"], capsys)
    assert code == 128 + signal.SIGTERM and "stopped by SIGTERM at iteration 6/8" in err
    saved = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == 6 and saved["pending"]
    assert [r["iteration"] for r in read_metrics(tmp_path / "stopped" / "metrics.jsonl")] == [0, 1, 2, 3, 4, 5]
    monkeypatch.undo()
    code, out, err = in_process(["--resume", tmp_path / "stopped"], capsys)
    assert code == 0, err
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    ta, tb = tensors([a["body"], a["head"], a["optimizer"]]), tensors([b["body"], b["head"], b["optimizer"]])
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert without_seconds(read_metrics(tmp_path / "whole" / "metrics.jsonl")) == \
        without_seconds(read_metrics(tmp_path / "stopped" / "metrics.jsonl"))


class Killed(BaseException):
    """Stands in for SIGKILL or a power cut: nothing after it runs, no checkpoint is written."""


def test_a_killed_run_resumes_from_its_last_checkpoint(glyph_root, tmp_path, monkeypatch, capsys,
                                                       one_thread):
    args = ["--data-root", glyph_root, *PATCHABLE, "--iterations", "10", "--checkpoint-every", "4"]
    code, _, err = in_process([*args, "--out", tmp_path / "whole"], capsys)
    assert code == 0, err
    real, steps = fast.meta_gradient, []

    def step_then_die(*a, **kw):
        steps.append(1)
        if len(steps) == 7:  # past the checkpoint of iteration 4 and the validation of 6
            raise Killed
        return real(*a, **kw)

    monkeypatch.setattr(fast, "meta_gradient", step_then_die)
    with pytest.raises(Killed):
        in_process([*args, "--out", tmp_path / "killed"], capsys)
    monkeypatch.undo()
    killed = tmp_path / "killed"
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["iteration"] == 4
    assert read_metrics(killed / "metrics.jsonl")[-1]["iteration"] == 6  # rows past the checkpoint
    code, out, err = in_process(["--resume", killed], capsys)
    assert code == 0, err
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    ta, tb = tensors([a["body"], a["head"], a["optimizer"], a["best"]]), \
        tensors([b["body"], b["head"], b["optimizer"], b["best"]])
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert without_seconds(read_metrics(tmp_path / "whole" / "metrics.jsonl")) == \
        without_seconds(read_metrics(killed / "metrics.jsonl"))  # no duplicated rows
    best_a, best_b = (torch.load(d / "best.pt", weights_only=True) for d in (tmp_path / "whole", killed))
    assert best_a["iteration"] == best_b["iteration"]
    assert all(torch.equal(best_a["body"][k], best_b["body"][k]) for k in best_a["body"])


def folder_bytes(folder):
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}


def test_a_finished_run_is_never_replaced_silently(glyph_root, tmp_path, monkeypatch, capsys,
                                                  one_thread):
    args = ["--data-root", glyph_root, *SHORT, "--out", tmp_path / "run"]
    assert in_process([*args, "--iterations", "4"], capsys)[0] == 0
    before = folder_bytes(tmp_path / "run")
    assert set(before) == {"checkpoint.pt", "best.pt", "model.pt", "metrics.jsonl", "curve.png",
                           "summary.json"}
    code, _, err = in_process([*args, "--iterations", "2"], capsys)  # one setting changed
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{tmp_path / 'run'} holds a finished run (test accuracy" in err and "--overwrite" in err
    assert folder_bytes(tmp_path / "run") == before

    # --overwrite, but stopped during the untrained test: the old run is still all there.
    real = train.evaluate

    def signal_then_evaluate(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **kw)

    monkeypatch.setattr(train, "evaluate", signal_then_evaluate)
    code, _, err = in_process([*args, "--iterations", "2", "--overwrite"], capsys)
    assert code == 128 + signal.SIGTERM and "before training began" in err
    monkeypatch.undo()
    assert folder_bytes(tmp_path / "run") == before

    # --overwrite to the end: the folder holds the new run only.
    assert in_process([*args, "--iterations", "2", "--overwrite"], capsys)[0] == 0
    assert [r["iteration"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [0, 1, 2]
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["iteration"] == 2
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["config"]["iterations"] == 2


def test_without_out_each_run_gets_a_fresh_folder(glyph_root, tmp_path, monkeypatch, capsys,
                                                  one_thread):
    monkeypatch.chdir(tmp_path)
    args = ["--data-root", glyph_root, *SHORT, "--iterations", "1", "--val-every", "0"]
    for _ in range(2):
        code, out, err = in_process(args, capsys)
        assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["glyphs-5w1s", "glyphs-5w1s-2"]
    assert "in runs/glyphs-5w1s-2" in out
