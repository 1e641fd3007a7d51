"""Allocation failures end each command in one line that names the setting to change, and a
preparation refuses, before reading a single image, a dataset that cannot fit in memory. (The
failures are raised by patches: a test must not exhaust the machine's memory.)"""

import os

from pathlib import Path

import pytest
import torch
from PIL import Image

from anil import fast
from anil.run import cli
from data_prep import common, folder
from tests.in_process import in_process

TINY = ["--iterations", "2", "--meta-batch", "2", "--hidden", "4", "--eval-tasks", "2",
        "--val-tasks", "2", "--device", "cpu", "--threads", "1", "--checkpoint-every", "1"]
CPU_ALLOCATOR = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                             "can't allocate memory: you tried to allocate 412316860416 bytes.")


@pytest.mark.parametrize("error", [CPU_ALLOCATOR, MemoryError(),
                                   torch.cuda.OutOfMemoryError("CUDA out of memory. Tried ...")])
def test_out_of_memory_is_recognised_and_other_errors_are_not(error):
    assert cli.out_of_memory(error)
    assert not cli.out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_a_meta_batch_that_does_not_fit_is_one_line(glyph_root, tmp_path, monkeypatch, capsys):
    real, calls = fast.meta_gradient, []

    def meta_gradient(*args, **kwargs):  # the second meta-batch does not fit
        calls.append(1)
        if len(calls) == 2:
            raise CPU_ALLOCATOR
        return real(*args, **kwargs)
    monkeypatch.setattr(fast, "meta_gradient", meta_gradient)
    out = tmp_path / "run"
    code, _, err = in_process(["--data-root", glyph_root, *TINY, "--out", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: out of memory ([enforce fail at alloc_cpu.cpp:117]")
    assert "lower --meta-batch (now 2)" in err
    assert f"the last checkpoint is kept: python train.py --resume {out}" in err


def test_evaluate_out_of_memory_is_one_line(glyph_root, tmp_path, monkeypatch, capsys):
    from anil.run import evaluate as evaluate_cli
    out = tmp_path / "run"
    assert in_process(["--data-root", glyph_root, *TINY, "--out", out], capsys)[0] == 0

    def evaluate(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(evaluate_cli, "evaluate", evaluate)
    with pytest.raises(SystemExit) as stop:
        evaluate_cli.main([str(out), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)")


def test_a_preparation_too_large_for_memory_is_refused_before_reading(tmp_path, monkeypatch,
                                                                       capsys):
    for c in range(3):
        (tmp_path / "src" / f"class{c}").mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (8, 8)).save(tmp_path / "src" / f"class{c}" / f"{k}.png")
    monkeypatch.setattr(folder, "physical_memory", lambda: 2 ** 26)  # a 64 MiB machine
    monkeypatch.setattr(folder, "read_image", lambda *a: pytest.fail("an image was read"))
    code = common.run_cli(folder.main, ["--source", str(tmp_path / "src"), "--out",
                                        str(tmp_path / "out"), "--size", "2048"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    # 2 copies x 6 images x 2048² x 3 bytes = 0.141 GiB
    assert "6 images of 2048x2048x3 need about 0.141 GiB of memory to prepare, more than this " \
           "machine's 0.0625 GiB; use a smaller --size" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_memory_error_while_preparing_is_one_line(tmp_path, monkeypatch, capsys):
    def prepare(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(folder, "prepare", prepare)
    code = common.run_cli(folder.main, ["--source", str(tmp_path), "--out", str(tmp_path / "o"),
                                        "--size", "28"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: out of memory while preparing; no prepared dataset was "
                                 "written: use a smaller --size, fewer images, or a machine with "
                                 "more memory"]


def test_an_unreadable_source_is_not_one_without_images(tmp_path, monkeypatch, capsys):
    source = tmp_path / "src"
    (source / "class0").mkdir(parents=True)
    real = os.scandir

    def scandir(path="."):
        if Path(path) == source:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)  # what a folder without read permission does
    code = common.run_cli(folder.main, ["--source", str(source), "--out", str(tmp_path / "o"),
                                        "--size", "28"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: --source {source} cannot be read (Permission denied); "
                                 f"fix its permissions, or give a folder you may read"]
