import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from anil import data
from anil.data import DatasetError, load_split, read_meta, write_prepared
from lock_holder import lock_held_elsewhere


def toy_splits(rng):
    splits = {}
    for split, classes in (("train", 4), ("val", 2), ("test", 3)):
        labels = rng.permutation(np.repeat(np.arange(classes), 5))  # unsorted on purpose
        images = rng.integers(0, 256, (len(labels), 6, 7, 3), dtype=np.uint8)
        images[:, 0, 0, 0] = labels  # tag each image with its class
        splits[split] = (images, labels, [f"{split}{i}" for i in range(classes)])
    return splits


def test_round_trip_groups_classes_and_memory_maps(tmp_path):
    splits = toy_splits(np.random.default_rng(0))
    path = write_prepared(tmp_path, "toy", splits)
    for name, (images, labels, names) in splits.items():
        split = load_split(path, name)
        assert isinstance(split.images, np.memmap)
        assert split.class_names == names and split.image_shape == (3, 6, 7)
        assert split.counts.tolist() == np.bincount(labels).tolist()
        for c in range(split.num_classes):
            block = split.images[split.offsets[c]:split.offsets[c + 1]]
            assert (block[:, 0, 0, 0] == c).all()
            # The same images, in their original relative order.
            assert np.array_equal(block, images[labels == c])


def test_failed_write_leaves_no_loadable_dataset_and_keeps_the_old_one(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    path = write_prepared(tmp_path, "toy", toy_splits(rng))
    before = load_split(path, "train").images.copy()

    def broken_save(file, array):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(DatasetError, match=rf"cannot write {tmp_path / 'toy'}: No space left on device: "
                                           r"the disk is full; free some space"):
        write_prepared(tmp_path, "toy", toy_splits(rng))
    with pytest.raises(DatasetError, match="fresh: No space left"):
        write_prepared(tmp_path, "fresh", toy_splits(rng))
    monkeypatch.undo()
    assert np.array_equal(load_split(path, "train").images, before)
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"], "no partial folders or locks left behind"


def test_missing_truncated_or_corrupt_files_give_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="not a prepared dataset"):
        load_split(tmp_path / "nowhere", "train")
    path = write_prepared(tmp_path, "toy", toy_splits(np.random.default_rng(2)))
    with pytest.raises(DatasetError, match="no split 'extra'"):
        load_split(path, "extra")
    data = (path / "train_images.npy").read_bytes()
    (path / "train_images.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="train_.*prepare it again"):
        load_split(path, "train")
    (path / "meta.json").write_text("{ not json")
    with pytest.raises(DatasetError, match="corrupt"):
        load_split(path, "val")


def test_old_format_is_refused(tmp_path):
    path = write_prepared(tmp_path, "toy", toy_splits(np.random.default_rng(3)))
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = 0
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="format version"):
        load_split(path, "train")


def test_inconsistent_input_is_refused_before_anything_is_written(tmp_path):
    images = np.zeros((4, 2, 2, 1), np.uint8)
    with pytest.raises(DatasetError, match="labels must lie in"):
        write_prepared(tmp_path, "bad", {"train": (images, [0, 1, 2, 3], ["a", "b"])})
    with pytest.raises(DatasetError, match="4 images, 3 labels"):
        write_prepared(tmp_path, "bad", {"train": (images, [0, 1, 1], ["a", "b"])})
    assert list(tmp_path.iterdir()) == []


def test_a_folder_or_file_that_is_not_a_prepared_dataset_is_never_replaced(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "mine.pkl").write_text("the user's raw files")
    (tmp_path / "other").write_text("a file")
    for name in ("toy", "other"):
        with pytest.raises(DatasetError, match=rf"{tmp_path / name} exists but is not a prepared dataset "
                                               r"\(no meta.json\), so it is left as it is"):
            write_prepared(tmp_path, name, toy_splits(np.random.default_rng(4)))
    assert (tmp_path / "toy" / "mine.pkl").read_text() == "the user's raw files"
    assert (tmp_path / "other").read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "toy"]


def test_a_dataset_locked_by_another_process_is_not_written(tmp_path):
    with lock_held_elsewhere(tmp_path / "toy") as holder:
        with pytest.raises(DatasetError, match=rf"another process \(PID {holder.pid} on .*\) is writing the "
                                               rf"dataset {tmp_path / 'toy'}; wait for it"):
            write_prepared(tmp_path, "toy", toy_splits(np.random.default_rng(5)))
        assert sorted(p.name for p in tmp_path.iterdir()) == [".toy.lock"]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temporaries_of_dead_processes_are_removed_and_nothing_else(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead, host = dead_pid(), data._host_tag()
    try:
        orphan = tmp_path / f".toy.partial-{dead}@{host}-abcd_123"
        kept = [f".toy.partial-{live.pid}@{host}-abcd_123",      # its process still runs
                f".toy.extract-{dead}@elsewhere.example-abcd_123",  # another machine's
                f".toy.partial-{dead}@{host}-abc",              # not the pattern
                ".toy.partial-abcd_123",                        # an older version's name
                f"toy.partial-{dead}@{host}-abcd_123"]          # not hidden: not ours
        for name in [orphan.name, *kept]:
            (tmp_path / name).mkdir()
            (tmp_path / name / "train_images.npy").write_bytes(b"x" * 1000)
        (tmp_path / f".toy.old-{dead}@{host}-abcdefgh").write_text("a file, not our folder")
        kept.append(f".toy.old-{dead}@{host}-abcdefgh")
        write_prepared(tmp_path, "toy", toy_splits(np.random.default_rng(6)))
        assert not orphan.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["toy"])
    finally:
        live.kill()
        live.wait()


def test_a_dataset_moved_aside_by_a_killed_writer_is_restored(tmp_path):
    """Killed between moving the old dataset aside and moving the new one in: the old one is
    put back, not deleted, by the next write into the root."""
    path = write_prepared(tmp_path, "toy", toy_splits(np.random.default_rng(7)))
    before = load_split(path, "train").images.copy()
    old = tmp_path / f".toy.old-{dead_pid()}@{data._host_tag()}-abcdefgh"
    old.mkdir()
    os.replace(path, old / "toy")
    write_prepared(tmp_path, "other", toy_splits(np.random.default_rng(8)))
    assert np.array_equal(load_split(path, "train").images, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "toy"]
    # Once its dataset is back in place, such a folder is removed as superseded.
    old.mkdir()
    (old / "toy").mkdir()
    (old / "toy" / "meta.json").write_text("{}")
    write_prepared(tmp_path, "other", toy_splits(np.random.default_rng(8)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "toy"]
    assert np.array_equal(load_split(path, "train").images, before)


def without(key):
    return lambda meta: {k: v for k, v in meta.items() if k != key}


def with_train(**fields):
    def change(meta):
        meta["splits"]["train"].update(fields)
        meta["splits"]["train"] = {k: v for k, v in meta["splits"]["train"].items() if v != "DROP"}
        return meta
    return change


@pytest.mark.parametrize("change,problem", [
    (lambda meta: [meta], "it holds a JSON list, not an object"),
    (without("splits"), "'splits' is null, not an object of splits"),
    (without("name"), "'name' is null, not a string"),
    (lambda meta: {**meta, "name": 3}, "'name' is 3, not a string"),
    (lambda meta: {**meta, "splits": []}, r"'splits' is \[\], not an object"),
    (lambda meta: {**meta, "splits": {"train": 5}}, "splits.train is 5, not an object"),
    (with_train(image_shape="DROP"), r"splits.train.image_shape is null, not \[height, width, channels\]"),
    (with_train(image_shape=[6, 7]), r"image_shape is \[6, 7\], not"),
    (with_train(image_shape=["6", 7, 3]), r"image_shape is \[\"6\", 7, 3\], not"),
    (with_train(num_images=-1), "splits.train.num_images is -1, not a count"),
    (with_train(num_images="20"), r'num_images is "20", not a count'),
    (with_train(num_images=True), "num_images is true, not a count"),
    (with_train(class_names=None), "class_names is null, not a list of names"),
    (with_train(class_names=[1, 2, 3, 4]), r"class_names is \[1, 2, 3, 4\], not a list of names"),
])
def test_meta_json_of_the_wrong_shape_is_one_clear_error(tmp_path, change, problem):
    path = write_prepared(tmp_path, "toy", toy_splits(np.random.default_rng(9)))
    (path / "meta.json").write_text(json.dumps(change(json.loads((path / "meta.json").read_text()))))
    for load in (lambda: read_meta(path), lambda: load_split(path, "train"), lambda: load_split(path, "val")):
        with pytest.raises(DatasetError) as e:
            load()
        message = str(e.value)
        assert message.startswith(f"{path / 'meta.json'} is malformed (") and "\n" not in message
        assert message.endswith(f"; delete {path} and prepare it again")
        assert re.search(problem, message), message
