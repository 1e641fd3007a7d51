"""anil.run.checkpoint, anil.run.metrics and anil.run.progress in-process: atomic writes, safe loading,
random states, configuration and dataset identity, the metrics log and its plot."""

import json
import os
import random
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from anil.run import checkpoint
from anil.run.checkpoint import CheckpointError
from anil.run.metrics import MetricsLog, best_validation, plot_learning_curve, read_metrics
from anil.run.progress import GracefulStop, Progress, StopRequested, format_seconds


def payload(value=1.0):
    return {"kind": "checkpoint", "iteration": 7, "weights": torch.full((300, 300), value)}


# ------------------------------------------------------------------------------ atomic writes


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_write_that_fails_halfway_leaves_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(payload(1.0), path)
    real_save = torch.save

    def save_half_then_fail(obj, f):
        import io
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # half the bytes reach the disk
        raise failure

    monkeypatch.setattr(checkpoint.torch, "save", save_half_then_fail)
    with pytest.raises(type(failure)):
        checkpoint.save(payload(2.0), path)
    monkeypatch.undo()
    loaded = checkpoint.load(path, kind="checkpoint")
    assert torch.equal(loaded["weights"], torch.full((300, 300), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary left


def test_save_then_load_round_trips_with_weights_only(tmp_path):
    path = checkpoint.save(payload(3.0), tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)  # what any user can do, safely
    assert raw["format"] == checkpoint.FORMAT and raw["iteration"] == 7
    assert torch.equal(checkpoint.load(path)["weights"], torch.full((300, 300), 3.0))


# ----------------------------------------------------------------------- unreadable files


def damaged_files(tmp_path):
    good = checkpoint.save(payload(), tmp_path / "good.pt").read_bytes()
    files = {}
    for fraction in (0.0, 0.1, 0.5, 0.99):
        files[f"truncated at {fraction:.0%}"] = good[: int(len(good) * fraction)]
    flipped = bytearray(good)
    middle = len(good) // 2  # inside the 360 kB tensor
    flipped[middle:middle + 16] = bytes(b ^ 0xFF for b in flipped[middle:middle + 16])
    files["bytes flipped in the weights"] = bytes(flipped)
    files["not a torch file"] = b"hello, I am a text file\n" * 100
    return files


def test_truncated_or_corrupt_files_give_a_one_line_error(tmp_path):
    for name, content in damaged_files(tmp_path).items():
        path = tmp_path / "bad.pt"
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as e:
            checkpoint.load(path)
        message = str(e.value)
        assert "\n" not in message and str(path) in message, (name, message)
        assert "truncated" in message or "corrupt" in message, (name, message)


class Foreign:  # a pickled class: weights_only loading must refuse to build it
    pass


@pytest.mark.parametrize("obj,expected", [
    ({"weight": torch.zeros(3)}, "not an anil checkpoint"),  # a plain state dict
    ([1, 2, 3], "not an anil checkpoint"),
    ({"format": "anil", "version": 99}, "version 99"),
    ({"format": "anil", "version": 1, "kind": "weights"}, "not a checkpoint"),
    ({"format": "anil", "version": 1, "kind": "checkpoint", "x": Foreign()}, "holds objects other than"),
])
def test_foreign_files_give_a_one_line_error(tmp_path, obj, expected):
    path = tmp_path / "foreign.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=expected) as e:
        checkpoint.load(path, kind="checkpoint")
    assert "\n" not in str(e.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nothing" / "checkpoint.pt")


# ------------------------------------------------------------------------------ random states


def test_random_states_survive_a_weights_only_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(2), np.random.randn()  # leave a cached gaussian
    checkpoint.save({"rng": checkpoint.rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == expected


# ------------------------------------------------------------------ configuration and dataset


def test_config_differences_name_each_changed_setting():
    saved = {"ways": 5, "shots": 1, "inner_lr": 0.5, "out": "a"}
    now = {"ways": 5, "shots": 5, "inner_lr": 0.1, "out": "b", "new": True}
    assert checkpoint.config_differences(saved, now, keys=["ways", "shots", "inner_lr", "new"]) == [
        "shots: 1 → 5", "inner_lr: 0.5 → 0.1", "new: '(not set)' → True"]
    assert checkpoint.config_differences(saved, dict(saved)) == []


def test_dataset_fingerprint_changes_with_the_data_only(tmp_path, glyph_root):
    copy = tmp_path / "glyphs"
    shutil.copytree(glyph_root / "glyphs", copy)
    original = checkpoint.dataset_fingerprint(glyph_root / "glyphs")
    assert checkpoint.dataset_fingerprint(copy) == original  # the path is not the identity
    images = np.load(copy / "val_images.npy", mmap_mode="r+")
    images[17, 3, 4, 0] ^= 1  # one pixel of one image
    images.flush()
    del images
    assert checkpoint.dataset_fingerprint(copy) != original
    # Large files are read in sampled blocks: the first block is always among them.
    sampled = checkpoint.dataset_fingerprint(copy, full_below=0)
    images = np.load(copy / "train_images.npy", mmap_mode="r+")
    images[0, 5, 5, 0] ^= 1
    images.flush()
    del images
    assert checkpoint.dataset_fingerprint(copy, full_below=0) != sampled
    sampled = checkpoint.dataset_fingerprint(copy, full_below=0)
    meta = json.loads((copy / "meta.json").read_text())
    meta["splits"]["val"]["class_names"][0] = "renamed"
    (copy / "meta.json").write_text(json.dumps(meta))
    assert checkpoint.dataset_fingerprint(copy, full_below=0) != sampled


# ------------------------------------------------------------------------- metrics and plot


def test_metrics_log_parses_and_truncates(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for it in (2, 4, 6, 8):
        log.append({"iteration": it, "loss": 1.0 / it, "accuracy": it / 10})
    assert [r["iteration"] for r in log.rows()] == [2, 4, 6, 8]
    log.truncate_after(5)
    assert [r["iteration"] for r in read_metrics(log.path)] == [2, 4]
    with open(log.path, "a") as f:
        f.write('{"iteration": 6, "lo')  # a process killed in the middle of a row
    assert [r["iteration"] for r in read_metrics(log.path)] == [2, 4]
    # Damaged lines anywhere (the checkpoint, not this log, is what a run resumes from) are
    # skipped and reported by line number; a resume drops them.
    log.path.write_bytes(b'{"iteration": 2}\nnot json\n\xff\xfe\n{"iteration": "five"}\n[1]\n'
                         b'{"iteration": 4, "loss": "x"}\n{"iteration": 4, "loss": 0.5}\n')
    damaged = []
    assert read_metrics(log.path, damaged) == [{"iteration": 2}, {"iteration": 4, "loss": 0.5}]
    assert damaged == [2, 3, 4, 5, 6]
    assert log.truncate_after(10) == 5
    assert log.path.read_text() == '{"iteration": 2}\n{"iteration": 4, "loss": 0.5}\n'


def test_metrics_rows_are_strict_json(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"iteration": 1, "val_accuracy": 0.5, "val_ci95": float("nan"), "loss": float("inf")})
    assert log.path.read_text() == '{"iteration": 1, "val_accuracy": 0.5, "val_ci95": null, "loss": null}\n'
    assert log.rows() == [{"iteration": 1, "val_accuracy": 0.5, "val_ci95": None, "loss": None}]


def test_best_validation_is_the_highest_and_earliest_on_ties():
    rows = [{"iteration": 1, "accuracy": 0.9}, {"iteration": 2, "val_accuracy": 0.5},
            {"iteration": 4, "val_accuracy": 0.75}, {"iteration": 6, "val_accuracy": 0.6},
            {"iteration": 8, "val_accuracy": 0.75}]
    assert best_validation(rows)["iteration"] == 4
    assert best_validation(rows[:1]) is None


def test_learning_curve_is_a_png(tmp_path):
    rows = [{"iteration": i, "accuracy": i / 20, **({"val_accuracy": i / 25} if i % 5 == 0 else {})}
            for i in range(1, 21)]
    path = plot_learning_curve(rows, tmp_path / "curve.png", best_iteration=20)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    assert Image.open(path).size == (720, 440)


# ------------------------------------------------------------------------------ stop, progress


def test_first_signal_is_a_flag_and_second_abandons():
    from anil.run.progress import Abandoned
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with GracefulStop() as stop:
        stop.check()  # nothing yet
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(StopRequested) as e:
            stop.check()
        assert e.value.signum == signal.SIGTERM
        with pytest.raises(Abandoned):
            os.kill(os.getpid(), signal.SIGINT)
    # The handlers in place before are restored (SIGINT's is SIG_IGN in a background job).
    assert {s: signal.getsignal(s) for s in before} == before


def test_seconds_are_written_as_s_m_and_h():
    assert [format_seconds(s) for s in (9.4, 62, 3725)] == ["9s", "1m02s", "1h02m"]


def test_progress_line_on_a_terminal_and_silence_elsewhere():
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen, log = Terminal(), io.StringIO()
    for stream in (screen, log):
        bar = Progress(200, "train", done=100, stream=stream, interval=0)
        bar.start -= 10.0  # 10 s for the first 50 of the remaining 100
        bar.update(150)
        bar.clear()
    drawn = screen.getvalue().split("\r")[1]
    assert drawn.startswith("train 150/200 [###############.....]  75%") and "eta 10s" in drawn
    assert screen.getvalue().endswith("\r") and log.getvalue() == ""
