import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from anil.data import load_split
from data_prep import common, mini_imagenet, pickles
from prep_fixtures import mini_imagenet_pickle

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"train": 64, "val": 16, "test": 20}


def wnids(split):
    return common.read_list(f"mini_imagenet_{split}.txt")


@pytest.fixture(scope="module")
def cache_pickles(tmp_path_factory):
    """The three cache pickles in the real layout (3 images per class), the validation one under
    learn2learn's name, written with numpy 2 (protocol 4) and Python-2-compatible protocol 2."""
    folder = tmp_path_factory.mktemp("mini")
    data = {
        "train": mini_imagenet_pickle(folder / "mini-imagenet-cache-train.pkl", wnids("train"), protocol=2),
        "val": mini_imagenet_pickle(folder / "mini-imagenet-cache-validation.pkl", wnids("val")),
        "test": mini_imagenet_pickle(folder / "mini-imagenet-cache-test.pkl", wnids("test"), protocol=5),
    }
    return folder, data


def test_classes_shapes_and_images(cache_pickles, tmp_path):
    folder, data = cache_pickles
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


def test_a_pickle_that_runs_code_is_refused(cache_pickles, tmp_path):
    folder, _ = cache_pickles
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


def test_an_html_page_saved_as_pkl_is_named_as_such(cache_pickles, tmp_path):
    folder, _ = cache_pickles
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


def test_truncated_and_wrong_split_pickles(cache_pickles, tmp_path):
    folder, _ = cache_pickles
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


def test_tarball_source_and_val_name(cache_pickles, tmp_path):
    folder, _ = cache_pickles
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
        loaded = pickles.safe_load_pickle(f, "try again")
        assert np.array_equal(loaded["a"], value["a"]) and loaded["a"].dtype == np.int16
        assert {k: v for k, v in loaded.items() if k != "a"} == {k: v for k, v in value.items() if k != "a"}
    # A numpy 1 pickle names numpy.core.multiarray; it must load under numpy 2 as well.
    old = pickle.dumps(np.arange(3, dtype=np.uint8), protocol=2).replace(b"numpy._core", b"numpy.core")
    (tmp_path / "old.pkl").write_bytes(old)
    assert pickles.safe_load_pickle(tmp_path / "old.pkl", "").tolist() == [0, 1, 2]


def reconstruct_spy(monkeypatch):
    """Record every array numpy is asked to allocate by the unpickler's _reconstruct."""
    calls = []
    real = pickles._multiarray

    class Spy:
        scalar = real.scalar

        @staticmethod
        def _reconstruct(subtype, shape, dtype):
            calls.append(shape)
            return real._reconstruct(subtype, shape, dtype)
    monkeypatch.setattr(pickles, "_multiarray", Spy)
    return calls


def test_a_pickle_asking_for_a_huge_array_is_refused_before_numpy_allocates(tmp_path, monkeypatch):
    # numpy's own protocol 2 pickle of a 1 MB array, its _reconstruct asking for an empty array
    # of shape (0,) changed to ask for (2**31 - 1, 4): 8.6 GB from a 1 MB file.
    data = pickle.dumps(np.zeros((1000, 1000), np.uint8), protocol=2)
    assert data.count(b"K\x00\x85") == 1
    f = tmp_path / "huge.pkl"
    f.write_bytes(data.replace(b"K\x00\x85", b"J\xff\xff\xff\x7fK\x04\x86"))
    calls = reconstruct_spy(monkeypatch)
    with pytest.raises(common.PrepError) as e:
        pickles.safe_load_pickle(f, "get it again")
    assert str(e.value).startswith(
        f"{f} asks for arrays larger than the file itself (one of shape (2147483647, 4) int8, "
        f"8,589,934,588 bytes, from a file of {f.stat().st_size:,} bytes;")
    assert str(e.value).endswith("it is corrupt or made to exhaust memory; delete it and get it again")
    assert calls == []  # refused before numpy was asked
    f.write_bytes(data)
    assert pickles.safe_load_pickle(f, "").shape == (1000, 1000) and calls == [(0,)]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_an_array_larger_than_its_stored_bytes_is_refused(tmp_path, protocol):
    """The shape in the array's state (protocols 2-4) or in _frombuffer's arguments (5) changed
    from (1000, 1000) to (65535, 65535), same length in the file: 4.3 GB asked of a 1 MB file."""
    data = pickle.dumps({"image_data": np.zeros((1000, 1000), np.uint8)}, protocol=protocol)
    assert data.count(b"M\xe8\x03M\xe8\x03") == 1
    f = tmp_path / "lie.pkl"
    f.write_bytes(data.replace(b"M\xe8\x03M\xe8\x03", b"M\xff\xffM\xff\xff"))
    with pytest.raises(common.PrepError, match=r"lie.pkl asks for arrays larger than the file itself \(one "
                                               r"of shape \(65535, 65535\) uint8, 4,294,836,225 bytes"):
        pickles.safe_load_pickle(f, "")


class SharedBytes:
    """Pickles as numpy's protocol-2 array of the given bytes; the pickler stores the bytes
    object once and refers back to it for every further array made from it."""

    def __init__(self, raw):
        self.raw = raw

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct
        state = (1, (len(self.raw),), np.dtype(np.uint8), False, self.raw)
        return _reconstruct, (np.ndarray, (0,), b"b"), state


def test_one_stored_buffer_cannot_make_many_arrays(tmp_path):
    raw = bytes(100_000)
    f = tmp_path / "memo.pkl"
    f.write_bytes(pickle.dumps([SharedBytes(raw)], protocol=2))
    assert pickles.safe_load_pickle(f, "")[0].nbytes == len(raw)
    f.write_bytes(pickle.dumps([SharedBytes(raw) for _ in range(6)], protocol=2))
    assert f.stat().st_size < 2 * len(raw)  # the 100 KB are stored once
    with pytest.raises(common.PrepError, match="asks for arrays larger than the file itself"):
        pickles.safe_load_pickle(f, "")


@pytest.mark.parametrize("value,why", [
    (np.array([1, "a"], dtype=object), r"holds an array of Python objects \(dtype object\)"),
    (np.zeros(2, dtype=[("x", "u1"), ("y", "O")]), r"holds an array of Python objects"),
])
def test_object_arrays_are_refused(tmp_path, value, why):
    """numpy crashes (segfault) on a malformed object-array state; no dataset pickle has one."""
    for protocol in (2, 5):
        f = tmp_path / "objects.pkl"
        f.write_bytes(pickle.dumps(value, protocol=protocol))
        with pytest.raises(common.PrepError, match=why):
            pickles.safe_load_pickle(f, "")


@pytest.mark.parametrize("data,why", [
    (b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00abX\x05\x00\x00\x00rot13\x86R.",
     r"it refers to _codecs.encode with 'rot13'"),
    (b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x7f\x85R.", "it calls numpy.ndarray itself"),
    (b"\x80\x02]q\x00}b.", "it sets the state of a list"),
])
def test_other_uses_of_the_allowed_globals_are_refused(tmp_path, data, why):
    f = tmp_path / "odd.pkl"
    f.write_bytes(data)
    with pytest.raises(common.PrepError, match=rf"odd.pkl is not a plain data pickle \({why}"):
        pickles.safe_load_pickle(f, "")
