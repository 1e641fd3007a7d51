import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from anil.data import load_split
from data_prep import common, mini_imagenet
from prep_fixtures import mini_imagenet_pickle

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"train": 64, "val": 16, "test": 20}


def wnids(split):
    return common.read_list(f"mini_imagenet_{split}.txt")


@pytest.fixture(scope="module")
def pickles(tmp_path_factory):
    """The three cache pickles in the real layout (3 images per class), the validation one under
    learn2learn's name, written with numpy 2 (protocol 4) and Python-2-compatible protocol 2."""
    folder = tmp_path_factory.mktemp("mini")
    data = {
        "train": mini_imagenet_pickle(folder / "mini-imagenet-cache-train.pkl", wnids("train"), protocol=2),
        "val": mini_imagenet_pickle(folder / "mini-imagenet-cache-validation.pkl", wnids("val")),
        "test": mini_imagenet_pickle(folder / "mini-imagenet-cache-test.pkl", wnids("test"), protocol=5),
    }
    return folder, data


def test_classes_shapes_and_images(pickles, tmp_path):
    folder, data = pickles
    assert common.run_cli(mini_imagenet.main, ["--root", str(tmp_path), "--source", str(folder)]) == 0
    for split, size in SIZES.items():
        s = load_split(tmp_path / "mini-imagenet", split)
        assert s.class_names == wnids(split) and s.num_classes == size
        assert s.image_shape == (3, 84, 84) and s.counts.tolist() == [3] * size
        for c, wnid in enumerate(s.class_names):
            block = np.asarray(s.images[s.offsets[c]:s.offsets[c + 1]])
            assert np.array_equal(block, data[split]["image_data"][data[split]["class_dict"][wnid]])
            assert block[:, 0, 0].tolist() == [[c, k, 7] for k in range(3)]  # class c, in order
            assert (block[:, 83, 0] == [255, 0, 0]).all()  # bottom-left red: orientation and RGB


def test_a_pickle_that_runs_code_is_refused(pickles, tmp_path):
    folder, _ = pickles
    evil = tmp_path / "evil"
    evil.mkdir()
    for f in folder.iterdir():
        os.symlink(f, evil / f.name)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (evil / "mini-imagenet-cache-test.pkl").unlink()
    (evil / "mini-imagenet-cache-test.pkl").write_bytes(
        pickle.dumps({"image_data": Exploit(), "class_dict": {}}))
    with pytest.raises(common.PrepError, match=r"cache-test.pkl is not a plain data pickle \(it refers to "
                                               r"(posix|nt|os)\.system.*a pickle can run code"):
        mini_imagenet.prepare(tmp_path / "data", evil)
    assert not marker.exists()
    assert not (tmp_path / "data" / "mini-imagenet").exists()


def test_an_html_page_saved_as_pkl_is_named_as_such(pickles, tmp_path):
    folder, _ = pickles
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in folder.iterdir():
        os.symlink(f, bad / f.name)
    (bad / "mini-imagenet-cache-train.pkl").unlink()
    (bad / "mini-imagenet-cache-train.pkl").write_text(
        "\n<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>")
    r = subprocess.run([sys.executable, "-m", "data_prep.mini_imagenet", "--root", str(tmp_path / "data"),
                        "--source", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {bad / 'mini-imagenet-cache-train.pkl'} is an HTML page, not a pickle")
    assert "Google Drive" in lines[0] and "--source" in lines[0]
    assert not (tmp_path / "data" / "mini-imagenet").exists()


def test_truncated_and_wrong_split_pickles(pickles, tmp_path):
    folder, _ = pickles
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in folder.iterdir():
        os.symlink(f, bad / f.name)
    test_pkl = bad / "mini-imagenet-cache-test.pkl"
    content = (folder / test_pkl.name).read_bytes()
    test_pkl.unlink()
    test_pkl.write_bytes(content[: len(content) // 3])
    with pytest.raises(common.PrepError, match=r"cache-test.pkl (ends early \(truncated\)|is corrupt)"):
        mini_imagenet.prepare(tmp_path / "data", bad)
    test_pkl.unlink()
    os.symlink(folder / "mini-imagenet-cache-validation.pkl", test_pkl)  # the val file, named test
    with pytest.raises(common.PrepError, match=r"cache-test.pkl: its classes do not match .* missing "
                                               r"\['n01930112'"):
        mini_imagenet.prepare(tmp_path / "data", bad)
    test_pkl.unlink()
    with pytest.raises(common.PrepError, match=r"cache-test.pkl not found; get mini-imagenet-cache"):
        mini_imagenet.prepare(tmp_path / "data", bad)
    assert not (tmp_path / "data" / "mini-imagenet").exists()


def test_tarball_source_and_val_name(pickles, tmp_path):
    folder, _ = pickles
    tarball = tmp_path / "pickles.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(folder / f"mini-imagenet-cache-{split}.pkl", f"mini-imagenet/mini-imagenet-cache-{split}.pkl")
        tf.add(folder / "mini-imagenet-cache-validation.pkl", "mini-imagenet/mini-imagenet-cache-val.pkl")
    path = mini_imagenet.prepare(tmp_path / "data", tarball)
    assert load_split(path, "val").class_names == wnids("val")
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["mini-imagenet"]  # extraction removed


def test_restricted_unpickler_still_reads_numpy_and_containers(tmp_path):
    value = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": [1, (2, 3)], "c": {4, 5},
             "d": np.int64(7), b"e": b"bytes", "f": frozenset({1})}
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        f = tmp_path / f"p{protocol}.pkl"
        f.write_bytes(pickle.dumps(value, protocol=protocol))
        loaded = common.safe_load_pickle(f, "try again")
        assert np.array_equal(loaded["a"], value["a"]) and loaded["a"].dtype == np.int16
        assert {k: v for k, v in loaded.items() if k != "a"} == {k: v for k, v in value.items() if k != "a"}
    # A numpy 1 pickle names numpy.core.multiarray; it must load under numpy 2 as well.
    old = pickle.dumps(np.arange(3, dtype=np.uint8), protocol=2).replace(b"numpy._core", b"numpy.core")
    (tmp_path / "old.pkl").write_bytes(old)
    assert common.safe_load_pickle(tmp_path / "old.pkl", "").tolist() == [0, 1, 2]
