"""Resource errors (a full disk, a file-size limit, a folder the user may not enter) end every
command in one line that names the path and says what to do, and leave nothing half-written."""

import errno
import os

from pathlib import Path

import pytest

from anil.paper import compare
from anil.run import checkpoint
from anil.run.run_folder import RunFolder, RunFolderError
from tests.in_process import in_process

TINY = ["--iterations", "1", "--meta-batch", "2", "--hidden", "4", "--inner-steps", "1",
        "--test-inner-steps", "1", "--eval-tasks", "2", "--device", "cpu", "--threads", "1"]


def fail_writing(monkeypatch, name, code=errno.ENOSPC):
    """checkpoint.save raises what a full disk (or ulimit -f: EFBIG) raises, for file ``name``."""
    real = checkpoint.save

    def save(obj, path):
        if Path(path).name == name:
            raise OSError(code, os.strerror(code), str(path))
        real(obj, path)
    monkeypatch.setattr(checkpoint, "save", save)


def test_a_failed_write_of_a_file_set_without_checkpoint_is_one_error(tmp_path, monkeypatch):
    """anil.paper.compare's outputs: the error path must not look for a checkpoint.pt."""
    fail_writing(monkeypatch, "maml.pt", errno.EFBIG)
    folder = RunFolder(tmp_path, names=compare.OUTPUTS, all_or_nothing=True).open(resuming=False)
    try:
        folder.save("anil.pt", {"kind": "weights"})
        with pytest.raises(RunFolderError, match=r"cannot write .*maml\.pt \(File too large\); "
                                                 r".* is kept as it was \(nothing of this run is "
                                                 r"kept\): raise this process's file-size limit "
                                                 r"\(ulimit -f\), then run again"):
            folder.save("maml.pt", {"kind": "weights"})
    finally:
        folder.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # anil.pt is not left behind


def test_compare_onto_a_full_disk_is_one_line_and_leaves_no_output(glyph_root, tmp_path,
                                                                    monkeypatch, capsys):
    fail_writing(monkeypatch, "maml.pt")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        compare.main(["--data-root", str(glyph_root), *TINY, "--out", str(out)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"cannot write {out / 'maml.pt'} (No space left on device)" in err
    assert list(out.iterdir()) == []


@pytest.fixture
def locked(tmp_path, monkeypatch):
    """A folder the user may not enter: on Python 3.11 even Path.exists raises PermissionError
    below it (emulated through Path.stat, which exists, is_dir and is_file call, so that the
    test also holds when run as root)."""
    folder = tmp_path / "locked"
    real = Path.stat

    def stat(self, *args, **kwargs):
        if folder in self.absolute().parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Path, "stat", stat)
    return folder


def one_line(code, err, path):
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {path}") and "permission denied: give a path you may" in err


def test_paths_below_a_folder_the_user_may_not_enter_are_one_line(glyph_root, locked, capsys):
    from anil.run import evaluate as evaluate_cli
    code, _, err = in_process(["--data-root", glyph_root, *TINY, "--out", locked / "run"], capsys)
    one_line(code, err, locked / "run")
    code, _, err = in_process([*TINY, "--data-root", locked / "data"], capsys)
    one_line(code, err, locked / "data")
    for main, argv in ((evaluate_cli.main, [str(locked / "run")]),
                       (compare.main, ["--data-root", str(glyph_root), *TINY, "--out",
                                       str(locked / "out")])):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        one_line(stop.value.code, capsys.readouterr().err, locked)
