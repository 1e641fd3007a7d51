import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def run_train(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_tiny_run_writes_summary_and_weights(glyph_root, tmp_path):
    out = tmp_path / "run"
    r = run_train("--data-root", str(glyph_root), "--iterations", "3", "--meta-batch", "2",
                  "--eval-tasks", "6", "--val-tasks", "4", "--val-every", "2", "--log-every", "1",
                  "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout and "untrained network" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["test_accuracy"] <= 1 and summary["config"]["ways"] == 5
    assert [row["iteration"] for row in summary["history"]] == [0, 1, 2, 3]  # 0: untrained validation
    assert [("val_accuracy" in row) for row in summary["history"]] == [True, False, True, True]
    weights = torch.load(out / "model.pt", weights_only=True)
    assert set(weights) >= {"body", "head", "config"}
    assert weights["head"]["weight"].shape == (5, 64)


@pytest.mark.parametrize("args,message", [
    (["--shots", "-1"], "--shots: must be a positive integer"),
    (["--ways", "0"], "--ways: must be a positive integer"),
    (["--dataset", "imagenet-22k"], "invalid choice: 'imagenet-22k'"),
    (["--inner-lr", "nan"], "--inner-lr: must be a positive number"),
    (["--iterations", "many"], "--iterations: must be 0 or more, got 'many'"),
])
def test_bad_values_are_rejected_with_one_line(args, message, tmp_path):
    r = run_train(*args, "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert any(m in last for m in message.split("|")), last


def test_more_ways_than_classes_is_explained(glyph_root, tmp_path):
    r = run_train("--data-root", str(glyph_root), "--ways", "200", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: 200-way tasks need 200 classes but glyphs/val has only 100; use --ways 100 or fewer"]


def test_more_shots_than_images_is_explained(glyph_root, tmp_path):
    r = run_train("--data-root", str(glyph_root), "--shots", "11", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "2x11=22 images per class" in r.stderr and "--shots 10" in r.stderr


def test_dataset_of_the_wrong_shape_is_explained(tmp_path):
    import numpy as np
    from anil.data import write_prepared
    images = np.zeros((40, 30, 30, 1), np.uint8)  # glyphs are 28x28
    labels = np.repeat(np.arange(4), 10)
    write_prepared(tmp_path, "cifar-fs", {s: (images, labels, list("abcd")) for s in ("train", "val", "test")})
    r = run_train("--dataset", "cifar-fs", "--data-root", str(tmp_path), "--ways", "2",
                  "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "holds 1x30x30 images but the cifar-fs preset expects 3x32x32" in r.stderr
    assert "python -m data_prep.cifar_fs" in r.stderr
