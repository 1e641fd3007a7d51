"""The paper-reproduction commands: python -m anil.paper.compare and python -m anil.paper.analysis."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from anil.paper import analysis, compare

ROOT = Path(__file__).resolve().parents[2]
# One thread: tiny tensors gain nothing from more, and a busy machine makes them much slower.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def compared(glyph_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    r = run("anil.paper.compare", "--data-root", str(glyph_root), "--iterations", "2", "--meta-batch", "2",
            "--hidden", "4", "--inner-steps", "1", "--test-inner-steps", "2", "--eval-tasks", "4",
            "--log-every", "1", "--seeds", "2", "--out", str(out), "--results", str(out / "fig.json"))
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_compare_prints_the_paper_table_and_writes_both_models(compared):
    out, stdout = compared
    lines = stdout.splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("method"))
    rows = [(l[:17].strip(), l[18:34].strip()) for l in lines[header + 1:header + 7]]
    assert rows == [("ANIL", "ANIL"), ("ANIL (1st order)", "ANIL (1st order)"), ("MAML", "MAML"),
                    ("NIL (ANIL body)", "ANIL"), ("NIL (MAML body)", "MAML"),
                    ("NIL (untrained)", "untrained")], rows
    assert "faster per training iteration" in stdout and "(paper: 1.7x and 4.1x)" in stdout
    summary = json.loads((out / "summary.json").read_text())
    for method in ("ANIL", "MAML"):
        row = summary["rows"][method]
        assert 0 <= row["accuracy"] <= 1 and row["train_seconds_per_iteration"] > 0
        assert row["test_seconds_per_task"] > 0
    ratio = (summary["rows"]["MAML"]["train_seconds_per_iteration"]
             / summary["rows"]["ANIL"]["train_seconds_per_iteration"])
    assert summary["train_speedup"] == pytest.approx(ratio)
    assert Image.open(out / "compare.png").size == (720, 440)
    # Same initial weights: both runs start from one init, then diverge by training.
    import torch
    anil = torch.load(out / "anil.pt", weights_only=True)
    maml = torch.load(out / "maml.pt", weights_only=True)
    assert anil["config"]["algorithm"] == "anil" and maml["config"]["algorithm"] == "maml"
    assert anil["head"]["weight"].shape == maml["head"]["weight"].shape == (5, 4)
    assert anil["config"]["seed"] == maml["config"]["seed"] == 0  # the first seed's models


def test_compare_seeds_report_the_standard_deviation_over_seeds(compared):
    """--seeds 2: each seed is a full comparison with its own per-task 95% CI; over seeds, the
    mean and the sample standard deviation (ddof = 1) of the per-seed accuracies, recomputed here."""
    import numpy as np
    out, stdout = compared
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and sorted(summary["per_seed"]) == ["0", "1"]
    per_seed = [summary["per_seed"][s]["rows"] for s in ("0", "1")]
    assert per_seed[0] == summary["rows"]  # the single-seed table is seed 0's
    for method, stats in summary["over_seeds"]["accuracy"].items():
        values = np.array([rows[method]["accuracy"] for rows in per_seed])
        assert stats["mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert stats["std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
        assert all(rows[method]["ci95"] >= 0 for rows in per_seed)  # and each seed keeps its CI
    speedups = np.array([summary["per_seed"][s]["train_speedup"] for s in ("0", "1")])
    assert summary["over_seeds"]["train_speedup"]["std"] == pytest.approx(speedups.std(ddof=1))
    assert "mean ± standard deviation over seeds" in stdout and "95% CI over 4 test tasks" in stdout


def test_compare_results_file_records_the_command_and_the_figures(compared):
    from anil.run.results import read_results
    out, _ = compared
    record = read_results(out / "fig.json")
    assert record["command"].startswith("python -m anil.paper.compare ") and "--seeds 2" in record["command"]
    summary = json.loads((out / "summary.json").read_text())
    assert record["results"]["over_seeds"] == summary["over_seeds"]
    assert record["results"]["config"]["seeds"] == 2 and record["results"]["wall_seconds"] > 0


def test_the_first_order_row_trains_without_the_second_order_term(glyph_root, tmp_path, monkeypatch):
    """ANIL is trained second order and the extra row first order, with the same steps otherwise;
    MAML follows --first-order (second order here)."""
    calls = []

    def spy(real, name):
        def step(*args, first_order, **kwargs):
            calls.append((name, first_order, kwargs.get("speed") is not None))
            return real(*args, first_order=first_order, **kwargs)
        return step

    monkeypatch.setattr(compare.fast, "train_step", spy(compare.fast.train_step, "anil"))
    monkeypatch.setattr(compare.maml, "meta_train_step", spy(compare.maml.meta_train_step, "maml"))
    summary = compare.run(compare.parse_args(
        ["--data-root", str(glyph_root), "--iterations", "2", "--meta-batch", "1", "--hidden", "2",
         "--inner-steps", "1", "--test-inner-steps", "1", "--eval-tasks", "2", "--out", str(tmp_path / "c")]))
    assert calls == [("anil", False, True)] * 2 + [("anil", True, True)] * 2 + [("maml", False, False)] * 2
    assert summary["rows"]["ANIL (1st order)"]["train_seconds_per_iteration"] > 0


def test_compare_with_first_order_has_no_separate_first_order_row(glyph_root, tmp_path):
    summary = compare.run(compare.parse_args(
        ["--data-root", str(glyph_root), "--iterations", "1", "--meta-batch", "1", "--hidden", "2",
         "--inner-steps", "1", "--test-inner-steps", "1", "--eval-tasks", "2", "--first-order",
         "--out", str(tmp_path / "c")]))
    assert list(summary["rows"]) == ["ANIL", "MAML", "NIL (ANIL body)", "NIL (MAML body)",
                                     "NIL (untrained)"]
    assert "over_seeds" not in summary  # one seed: no spread over seeds to report


def test_compare_help_shows_the_budget_that_runs(capsys):
    """The built-in dataset's comparison budget (compare.QUICK) is what --help says."""
    with pytest.raises(SystemExit):
        compare.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key, value in compare.QUICK["glyphs"].items():
        flag = "--" + key.replace("_", "-")
        option = text.split(f"{flag} {key.upper()} ")[1].split(" --")[0]
        assert re.search(rf"preset: (.*; )?{value} for glyphs", option), (flag, option)


def test_analysis_prints_freezing_and_cka_tables_and_draws_the_png(compared, glyph_root, capsys):
    out, _ = compared
    analysis.main(["--checkpoint", str(out / "maml.pt"), "--data-root", str(glyph_root), "--tasks", "3"])
    stdout = capsys.readouterr().out
    result = json.loads((out / "maml-analysis.json").read_text())
    assert list(result["freezing"]) == ["none", "conv1", "conv1-2", "conv1-3", "conv1-4 (head only)"]
    assert list(result["cka_before_after"]) == ["conv1", "conv2", "conv3", "conv4", "head"]
    for v in result["cka_before_after"].values():
        assert 0 <= v["mean"] <= 1 + 1e-9
    for name in ("maml-cka.png", "maml-freezing.png"):
        png = Image.open(out / name)
        assert png.format == "PNG" and png.size == (720, 440)
    assert "conv1-4 (head only)" in stdout and "CKA before vs after" in stdout


def test_analysis_of_an_anil_model_finds_the_body_unchanged(compared, glyph_root):
    """ANIL adapts the head only, so every body layer's CKA is exactly 1."""
    out, _ = compared
    result = analysis.run(analysis.build_parser().parse_args(
        ["--checkpoint", str(out / "anil.pt"), "--data-root", str(glyph_root), "--tasks", "2"]))
    cka = result["cka_before_after"]
    for layer in ("conv1", "conv2", "conv3", "conv4"):
        assert cka[layer]["mean"] == pytest.approx(1.0, abs=1e-9)
    assert cka["head"]["mean"] < 1 - 1e-6


@pytest.mark.parametrize("module,args,message", [
    ("anil.paper.compare", ["--ways", "0"], "--ways: must be a positive integer"),
    ("anil.paper.compare", ["--inner-lr", "nan"], "--inner-lr: must be a positive number"),
    ("anil.paper.compare", ["--iterations", "lots"], "--iterations: must be a positive integer"),
    ("anil.paper.compare", ["--dataset", "imagenet-22k"], "invalid choice: 'imagenet-22k'"),
    ("anil.paper.analysis", ["--tasks", "-3"], "--tasks: must be a positive integer"),
    ("anil.paper.analysis", ["--checkpoint", "no/such/model.pt"], "error: no checkpoint at no/such/model.pt"),
])
def test_bad_values_get_one_line(module, args, message, capsys):
    """In-process: the same argparse/fail() path as the command line, without a new interpreter."""
    with pytest.raises(SystemExit) as stop:
        {"anil.paper.compare": compare, "anil.paper.analysis": analysis}[module].main(args)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_corrupt_checkpoint_gets_one_line(tmp_path, capsys):
    bad = tmp_path / "maml.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as stop:
        analysis.main(["--checkpoint", str(bad)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert lines == [f"error: {bad} is truncated or corrupt (not a complete torch zip archive); "
                     f"delete it, or use another copy"]


def test_compare_explains_more_ways_than_classes(glyph_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        compare.main(["--data-root", str(glyph_root), "--ways", "500", "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: 500-way tasks need 500 classes")


def test_compare_checks_its_output_folder_before_training(glyph_root, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "anil.pt").write_text("an earlier comparison")
    for out, message in [(tmp_path / "file", "is a file, not a folder"),
                         (earlier, "holds files of an earlier run (anil.pt); give another --out, "
                                   "or add --overwrite")]:
        with pytest.raises(SystemExit) as stop:
            compare.main(["--data-root", str(glyph_root), "--out", str(out)])
        err = capsys.readouterr()
        assert stop.value.code == 2 and message in err.err.strip().splitlines()[-1]
        assert "ANIL vs MAML" not in err.out  # refused before any training
    assert (tmp_path / "file").read_text() == "mine"
    assert (earlier / "anil.pt").read_text() == "an earlier comparison"


def test_compare_on_images_too_small_for_the_body_is_one_line(tmp_path, capsys):
    import numpy as np

    from anil.data import write_prepared
    images = np.zeros((40, 4, 4, 1), np.uint8)
    labels = np.repeat(np.arange(4), 10)
    path = write_prepared(tmp_path, "tiny", {s: (images, labels, list("abcd"))
                                             for s in ("train", "val", "test")})
    with pytest.raises(SystemExit) as stop:
        compare.main(["--data", str(path), "--ways", "2", "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: cannot build the network: 4 pooling blocks shrink a 4px image to nothing; use "
        "fewer blocks or larger images")
