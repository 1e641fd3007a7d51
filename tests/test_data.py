import json

import numpy as np
import pytest

from anil.data import DatasetError, load_split, write_prepared


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
        raise OSError("disk full")
    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError):
        write_prepared(tmp_path, "toy", toy_splits(rng))
    with pytest.raises(OSError):
        write_prepared(tmp_path, "fresh", toy_splits(rng))
    monkeypatch.undo()
    assert np.array_equal(load_split(path, "train").images, before)
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"], "no partial folders left behind"


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
