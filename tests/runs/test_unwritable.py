"""Unwritable places (a read-only folder, a file where the root folder should be, a full disk)
give one line that names the path and what to do, from the built-in glyphs (``ensure``, which
train.py calls, and ``python -m data_prep.glyphs``) and from every preparation, and leave nothing
half-written behind."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from anil.data import DatasetError, load_split
from data_prep import cifar100, cifar_fs, common, fc100, glyphs, mini_imagenet, omniglot
from data_prep import folder as folder_preparer
from prep_fixtures import make_cifar100, make_omniglot

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_glyphs(monkeypatch):
    """The built-in dataset at a size that takes a fraction of a second (ensure reads these)."""
    monkeypatch.setattr(glyphs, "DEFAULT_SPLIT", (10, 2, 2))
    monkeypatch.setattr(glyphs, "INSTANCES", 20)  # 14 x 20 images of 784 bytes: 220 KB


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size)``: a fresh tmpfs of that size, unmounted after the test; the test is skipped
    where tmpfs cannot be mounted (not root, no CAP_SYS_ADMIN)."""
    mounted = []

    def mount(options="size=1m"):
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(folder)
        return folder
    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", str(folder)], check=True)


def chmod_protects(tmp_path) -> bool:
    """Whether a folder without write permission stops this process (not for root): tried."""
    probe = tmp_path / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "file").touch()
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
    return False


@pytest.fixture
def make_read_only(tmp_path, tmpfs):
    """(folder, freeze): a folder to fill, and the function that makes it read-only for this
    process: chmod 555, or for root (whom chmod does not stop) a tmpfs remounted read-only."""
    if chmod_protects(tmp_path):
        folder = tmp_path / "ro"
        folder.mkdir()
        yield folder, lambda: folder.chmod(0o555)
        folder.chmod(0o755)
    else:
        folder = tmpfs("size=4m")
        yield folder, lambda: subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


@pytest.fixture
def full_disk(tmpfs):
    """A 1 MB file system with 96 KB left: room for a lock file and folders, not for a dataset."""
    folder = tmpfs("size=1m")
    (folder / "filler").write_bytes(b"\0" * (1024 - 96) * 1024)
    return folder


def unwritable(kind, tmp_path, make_read_only, full_disk_fixture):
    """A root folder of each kind, and what the error must say about it."""
    if kind == "read-only":
        folder, freeze = make_read_only
        freeze()
        return folder, rf"\({folder}[^)]*\): no permission; choose a folder you can write to"
    if kind == "a file":
        (tmp_path / "file").write_text("not a folder")
        return tmp_path / "file", rf"\({tmp_path / 'file'}\): a file is in the way of a folder"
    if kind == "below a file":
        (tmp_path / "file").write_text("not a folder")
        return tmp_path / "file" / "data", rf"\({tmp_path / 'file'}[^)]*\): a file is in the way"
    return full_disk_fixture(), "No space left on device: the disk is full; free some space"


KINDS = ["read-only", "a file", "below a file", "full"]


@pytest.mark.parametrize("kind", KINDS)
def test_ensure_into_an_unwritable_place_is_one_dataset_error(kind, tmp_path, small_glyphs, make_read_only,
                                                              request):
    root, says = unwritable(kind, tmp_path, make_read_only, lambda: request.getfixturevalue("full_disk"))
    before = sorted(os.listdir(root)) if root.is_dir() else None
    with pytest.raises(DatasetError) as e:
        glyphs.ensure(root, verbose=False)
    message = str(e.value)
    assert message.startswith(f"cannot write the dataset {root / 'glyphs'}: ") or message.startswith(
        f"cannot write {root / 'glyphs'}: "), message
    assert "\n" not in message
    assert re.search(says, message), message
    if before is not None:  # nothing half-written: no partial folder, no lock file
        assert sorted(os.listdir(root)) == before


def test_an_existing_dataset_is_used_from_a_read_only_folder(small_glyphs, make_read_only):
    root, freeze = make_read_only
    path = glyphs.ensure(root, verbose=False)
    freeze()
    assert glyphs.ensure(root, verbose=False) == path  # read, no lock needed
    assert load_split(path, "test").num_classes == 2


def test_python_m_data_prep_glyphs_with_a_file_as_root(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    r = subprocess.run([sys.executable, "-m", "data_prep.glyphs", "--root", str(tmp_path / "file")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: cannot write the dataset {tmp_path / 'file' / 'glyphs'}: File exists ({tmp_path / 'file'}): "
        f"a file is in the way of a folder; choose another folder or move the file"]


def test_glyphs_command_into_a_read_only_root(make_read_only, capsys):
    root, freeze = make_read_only
    freeze()
    assert common.run_cli(glyphs.main, ["--root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot write the dataset {root / 'glyphs'}: ")
    assert "choose a folder you can write to" in err[0]


@pytest.mark.parametrize("seed, message", [("-1", "must lie in 0..4294967295, got -1"),
                                           (str(2 ** 32), "must lie in 0..4294967295, got 4294967296"),
                                           ("1.5", "must be an integer, got '1.5'"),
                                           ("x", "must be an integer, got 'x'")])
@pytest.mark.parametrize("main", [glyphs.main, folder_preparer.main, omniglot.main])
def test_preparer_seeds_must_lie_in_the_projects_range(main, seed, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--seed", seed])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"{Path(sys.argv[0]).name}: error: argument --seed: {message}")
    if main is glyphs.main:
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
            glyphs.generate(-1 if seed == "-1" else 2 ** 32, split=(1, 0, 0))


@pytest.fixture
def omniglot_zips(tmp_path, monkeypatch):
    make_omniglot(tmp_path / "raw", {"background": {"Latin": 3}, "evaluation": {"Greek": 2}}, drawers=2)
    for name in omniglot.ARCHIVES:
        monkeypatch.setitem(omniglot.MD5, name, common.md5sum(tmp_path / "raw" / name))
    monkeypatch.setattr(omniglot, "NUM_CHARACTERS", 5)
    monkeypatch.setattr(omniglot, "MAML_SIZES", (2, 1))
    return tmp_path / "raw"


PREPARERS = {"cifar-fs": cifar_fs.main, "fc100": fc100.main, "mini-imagenet": mini_imagenet.main,
             "omniglot": omniglot.main}


@pytest.mark.parametrize("kind", ["read-only", "a file", "below a file"])
@pytest.mark.parametrize("name", sorted(PREPARERS))
def test_every_preparation_into_an_unwritable_root_is_one_line(name, kind, tmp_path, make_read_only,
                                                               omniglot_zips, capsys):
    root, says = unwritable(kind, tmp_path, make_read_only, None)
    argv = ["--root", str(root), "--source", str(omniglot_zips if name == "omniglot" else tmp_path)]
    assert common.run_cli(PREPARERS[name], argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write ") and str(root / name) in err[0], err
    assert re.search(says, err[0]), err[0]


def test_extracting_onto_a_full_disk_is_not_blamed_on_the_archive(tmp_path, full_disk, monkeypatch, capsys):
    archive = make_cifar100(tmp_path / cifar100.ARCHIVE, train_per_class=2, test_per_class=1)  # ~1 MB
    monkeypatch.setitem(cifar100.MD5, cifar100.ARCHIVE, common.md5sum(archive))
    assert common.run_cli(cifar_fs.main, ["--root", str(full_disk), "--source", str(archive)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: cannot extract {archive} into {full_disk}/.cifar100.extract-")
    assert "No space left on device: the disk is full" in err[0] and "corrupt" not in err[0]
    assert sorted(os.listdir(full_disk)) == ["filler"]  # the extraction and the lock are gone
