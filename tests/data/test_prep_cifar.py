import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anil.data import DatasetError, load_split
from data_prep import archives, cifar100, cifar_fs, common, fc100
from prep_fixtures import COARSE, COARSE_OF, FINE, cifar_pixel, make_cifar100

ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("train", "val", "test")


def listed(name):
    lines = (ROOT / "data_prep" / "splits" / name).read_text().splitlines()
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_cifar100(tmp_path_factory.mktemp("raw") / cifar100.ARCHIVE)


@pytest.fixture
def fixture_md5(archive, monkeypatch):
    """The preparers check the real archive's md5; point them at the fixture's."""
    monkeypatch.setitem(cifar100.MD5, cifar100.ARCHIVE, common.md5sum(archive))


def check_images(split, fine_names):
    """Every image is in its class, with the fixture's pattern intact (orientation and colour)."""
    y, x = np.mgrid[0:32, 0:32]
    for c, name in enumerate(split.class_names):
        block = np.asarray(split.images[split.offsets[c]:split.offsets[c + 1]])
        assert (block[:, 0, 0, 2] == fine_names.index(name)).all()  # blue tag = fine label
        assert set(block[:, 0, 1, 2]) == {0, 1}  # from the train file and from the test file
        expected = cifar_pixel(fine_names.index(name), 0, 0).astype(int)
        assert (block[:, :, :, 0] == y * 8).all()  # red rises down the rows: not transposed
        assert (block[:, :, :, 1] == x * 8).all()  # green along the columns: not flipped
        assert (block[:, 1:, :, 2] == expected[1:, :, 2]).all()  # channel order RGB


def test_cifar_fs_exact_classes_counts_and_pixels(archive, fixture_md5, tmp_path, capsys):
    assert common.run_cli(cifar_fs.main, ["--root", str(tmp_path), "--source", str(archive)]) == 0
    assert "wrote" in capsys.readouterr().out
    path = tmp_path / "cifar-fs"
    seen = set()
    for s, size in zip(SPLITS, (64, 16, 20)):
        split = load_split(path, s)
        assert split.class_names == listed(f"cifar_fs_{s}.txt") and split.num_classes == size
        assert split.image_shape == (3, 32, 32)
        assert split.counts.tolist() == [10] * size  # 8 from train + 2 from test, all of them
        assert not seen & set(split.class_names)
        seen |= set(split.class_names)
        check_images(split, FINE)
    assert seen == set(FINE)
    assert {"baby", "bed", "worm"} <= set(load_split(path, "test").class_names)  # Bertinetto test


def test_fc100_splits_by_superclass(archive, fixture_md5, tmp_path):
    path = fc100.prepare(tmp_path, archive)
    superclasses = json.loads((path / "meta.json").read_text())["superclasses"]
    assert superclasses["val"] == ["large_carnivores", "large_omnivores_and_herbivores",
                                   "non-insect_invertebrates", "small_mammals"]
    assert superclasses["test"] == ["aquatic_mammals", "insects", "medium_mammals", "people"]
    assert len(superclasses["train"]) == 12
    seen = set()
    for s, size in zip(SPLITS, (60, 20, 20)):
        split = load_split(path, s)
        assert split.num_classes == size and split.counts.tolist() == [10] * size
        coarse = [COARSE[COARSE_OF[FINE.index(n)]] for n in split.class_names]
        assert coarse == [c for c in superclasses[s] for _ in range(5)]  # 5 fine per superclass, grouped
        assert not seen & set(split.class_names)
        seen |= set(split.class_names)
        check_images(split, FINE)
    assert seen == set(FINE)


def test_extracted_folder_is_accepted_and_file_checksums_checked(archive, tmp_path, monkeypatch):
    archives.safe_extract(archive, tmp_path / "raw")
    folder = tmp_path / "raw" / cifar100.FOLDER
    for f in ("train", "test", "meta"):
        monkeypatch.setitem(cifar100.MD5, f, common.md5sum(folder / f))
    path = cifar_fs.prepare(tmp_path / "data", tmp_path / "raw")  # the folder holding cifar-100-python/
    assert load_split(path, "val").num_classes == 16
    monkeypatch.setitem(cifar100.MD5, "train", "0" * 32)
    with pytest.raises(common.PrepError, match=r"train has md5 .* expected 0{32}"):
        cifar_fs.prepare(tmp_path / "data", folder)


def test_data_that_does_not_match_the_split_lists(tmp_path, monkeypatch):
    # HuggingFace's cifar100 script once had the typo 'cra' for 'crab'.
    names = [("cra" if n == "crab" else n) for n in FINE]
    bad = make_cifar100(tmp_path / cifar100.ARCHIVE, 2, 1, fine_names=names)
    monkeypatch.setitem(cifar100.MD5, cifar100.ARCHIVE, common.md5sum(bad))
    with pytest.raises(common.PrepError, match="the data does not match the split lists") as e:
        cifar_fs.prepare(tmp_path / "data", bad)
    assert "'crab'" in str(e.value) and "cifar_fs_val.txt" in str(e.value)
    with pytest.raises(common.PrepError, match="'crab'"):
        fc100.prepare(tmp_path / "data", bad)
    assert not (tmp_path / "data" / "cifar-fs").exists() and not (tmp_path / "data" / "fc100").exists()


def test_checksum_mismatch_is_one_line_and_writes_nothing(archive, tmp_path):
    r = subprocess.run([sys.executable, "-m", "data_prep.cifar_fs", "--root", str(tmp_path),
                        "--source", str(archive)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {archive} has md5 ")
    assert f"expected {cifar100.MD5[cifar100.ARCHIVE]}" in lines[0] and "--download" in lines[0]
    assert not (tmp_path / "cifar-fs").exists()


def test_a_truncated_archive_is_named_and_nothing_is_written(archive, tmp_path, monkeypatch):
    cut = tmp_path / cifar100.ARCHIVE
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    monkeypatch.setitem(cifar100.MD5, cifar100.ARCHIVE, common.md5sum(cut))  # as if unchecked
    with pytest.raises(common.PrepError, match=r"cannot be extracted .* truncated or corrupt; delete it"):
        fc100.prepare(tmp_path / "data", cut)
    assert not (tmp_path / "data" / "fc100").exists()
    assert list((tmp_path / "data").iterdir()) == []  # the temporary extraction is gone too


def test_missing_source_says_how_to_get_it(tmp_path):
    with pytest.raises(common.PrepError, match=r"no cifar-100-python.tar.gz .* --download"):
        cifar_fs.prepare(tmp_path, tmp_path / "nowhere")


def test_interrupted_preparation_leaves_nothing_that_loads(archive, fixture_md5, tmp_path, monkeypatch):
    import anil.data
    calls = []

    def interrupted_save(file, array):
        calls.append(file)
        if len(calls) == 3:
            raise KeyboardInterrupt
        np.lib.format.write_array(file, array)

    monkeypatch.setattr(anil.data.np, "save", interrupted_save)
    code = common.run_cli(cifar_fs.main, ["--root", str(tmp_path), "--source", str(archive)])
    assert code == 130 and len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial folder, no extraction
    with pytest.raises(DatasetError, match="not a prepared dataset"):
        load_split(tmp_path / "cifar-fs", "train")


def test_download_is_checked_and_kept(archive, fixture_md5, tmp_path, monkeypatch):
    monkeypatch.setattr(cifar100, "URL", archive.as_uri())
    path = cifar_fs.prepare(tmp_path, fetch=True)
    assert (tmp_path / "raw" / cifar100.ARCHIVE).read_bytes() == archive.read_bytes()
    assert load_split(path, "train").num_classes == 64
    monkeypatch.setattr(cifar100, "URL", "http://127.0.0.1:9/cifar-100-python.tar.gz")
    (tmp_path / "raw" / cifar100.ARCHIVE).unlink()
    with pytest.raises(common.PrepError, match=r"cannot download http://127.0.0.1:9/.*--source"):
        cifar_fs.prepare(tmp_path, fetch=True)
    assert list((tmp_path / "raw").iterdir()) == []  # no .partial left behind


def test_train_py_trains_on_prepared_cifar_fs(archive, fixture_md5, tmp_path):
    cifar_fs.prepare(tmp_path, archive)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--dataset", "cifar-fs",
                        "--data-root", str(tmp_path), "--iterations", "2", "--meta-batch", "2",
                        "--eval-tasks", "2", "--val-tasks", "2", "--log-every", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ANIL on cifar-fs: 5-way 5-shot" in r.stdout and "test accuracy" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["inner_lr"] == 0.1 and len(summary["history"]) == 2


def test_train_py_names_the_preparation_command(tmp_path, capsys):
    from anil import train
    with pytest.raises(SystemExit) as e:
        train.main(["--dataset", "fc100", "--data-root", str(tmp_path), "--device", "cpu"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: no prepared fc100 dataset at {tmp_path / 'fc100'}; prepare it with: "
        f"python -m data_prep.fc100 --root {tmp_path} --download"]
