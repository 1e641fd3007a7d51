import io
import random
import zipfile

import numpy as np
import pytest
from PIL import Image

from anil.data import load_split, read_meta
from anil.run.presets import preset
from anil.sampler import TaskSampler
from data_prep import common, omniglot
from prep_fixtures import make_omniglot, omniglot_png

SMALL = {"background": {"Latin": 6, "Greek": 5}, "evaluation": {"Tengwar": 4}}  # 15 characters


@pytest.fixture
def small(tmp_path, monkeypatch):
    """Two zips in the real layout; the preparer told their md5 and their size (15 characters,
    split 8/3/4 instead of 1100/100/423)."""
    ids = make_omniglot(tmp_path / "raw", SMALL, drawers=3)
    for name in omniglot.ARCHIVES:
        monkeypatch.setitem(omniglot.MD5, name, common.md5sum(tmp_path / "raw" / name))
    monkeypatch.setattr(omniglot, "NUM_CHARACTERS", 15)
    monkeypatch.setattr(omniglot, "MAML_SIZES", (8, 3))
    return tmp_path, ids


def square_centre(character_id):
    """Centre of the fixture's black square, in 28×28 pixels."""
    top, left = 10 + (character_id % 5) * 12, 10 + (character_id // 5 % 5) * 12
    return round((top + 15) * 28 / 105), round((left + 15) * 28 / 105)


def test_images_are_28x28_lanczos_and_inverted(small):
    root, ids = small
    assert common.run_cli(omniglot.main, ["--root", str(root), "--source", str(root / "raw")]) == 0
    seen = []
    for s in ("train", "val", "test"):
        split = load_split(root / "omniglot", s)
        assert split.image_shape == (1, 28, 28) and split.counts.tolist() == [3] * split.num_classes
        for c, name in enumerate(split.class_names):
            block = np.asarray(split.images[split.offsets[c]:split.offsets[c + 1], :, :, 0])
            y, x = square_centre(ids[name])
            assert (block[:, y, x] > 230).all()  # the black square is now bright
            assert (block[:, 1, 27] < 10).all() and (block[:, 14, 1] < 10).all()  # white paper now dark
            for d in range(3):  # exactly 255 - LANCZOS resize of the 105×105 drawing, in drawer order
                png = Image.open(io.BytesIO(omniglot_png(ids[name], d + 1))).convert("L")
                assert np.array_equal(block[d], 255 - np.asarray(png.resize((28, 28), Image.LANCZOS)))
        seen += split.class_names
    assert sorted(seen) == sorted(ids)


def test_maml_split_is_a_seeded_shuffle_of_the_sorted_list(small, tmp_path):
    root, ids = small
    path = omniglot.prepare(root, root / "raw")
    order = sorted(ids)
    random.Random(1).shuffle(order)  # the MAML reference: random.seed(1); random.shuffle
    got = [load_split(path, s).class_names for s in ("train", "val", "test")]
    assert got == [order[:8], order[8:11], order[11:]]
    # Zip members stored in another order (another filesystem's listdir) give the same split.
    (tmp_path / "other").mkdir()
    for name in omniglot.ARCHIVES:
        with zipfile.ZipFile(root / "raw" / name) as src:
            members = [(i.filename, src.read(i)) for i in src.infolist()]
        random.Random(5).shuffle(members)
        with zipfile.ZipFile(tmp_path / "other" / name, "w") as dst:
            for member, data in members:
                dst.writestr(member, data)
        omniglot.MD5[name] = common.md5sum(tmp_path / "other" / name)  # restored by the fixture
    again = omniglot.prepare(tmp_path / "again", tmp_path / "other")
    assert [load_split(again, s).class_names for s in ("train", "val", "test")] == got
    assert "random.Random(1)" in read_meta(path)["split"]


def test_rotations_as_per_task_augmentation(small):
    root, _ = small
    path = omniglot.prepare(root, root / "raw")
    assert "per-task augmentation" in read_meta(path)["rotations"]
    split = load_split(path, "train")
    assert split.num_classes == 8  # nothing added
    assert preset("omniglot")["rotate"] is True
    sampler = TaskSampler(split, ways=3, shots=1, seed=0, rotate=True)
    used = set()
    for t in range(12):
        indices, classes, rotations = sampler.task_indices(t)
        images = sampler.task(t).images.numpy()[:, 0]
        for j, k in enumerate(rotations):
            stored = split.images[indices[2 * j:2 * j + 2], :, :, 0] / 255.0
            assert np.allclose(images[2 * j:2 * j + 2], np.rot90(stored, k, axes=(1, 2)), atol=1e-6)
            used.add(int(k))
    assert used == {0, 1, 2, 3}


def test_rotations_as_extra_classes(small):
    root, _ = small
    assert common.run_cli(omniglot.main, ["--root", str(root), "--source", str(root / "raw"),
                                          "--rotations", "classes"]) == 0
    path = root / "omniglot-rot"
    assert preset("omniglot-rot")["rotate"] is False
    for s, n in (("train", 8), ("val", 3), ("test", 4)):
        split = load_split(path, s)
        assert split.num_classes == 4 * n
        names = split.class_names
        for c in range(0, 4 * n, 4):
            assert names[c + 1:c + 4] == [f"{names[c]}/rot90", f"{names[c]}/rot180", f"{names[c]}/rot270"]
            base = split.images[split.offsets[c]:split.offsets[c + 1], :, :, 0]
            for k in (1, 2, 3):
                rotated = split.images[split.offsets[c + k]:split.offsets[c + k + 1], :, :, 0]
                assert np.array_equal(rotated, np.rot90(base, k, axes=(1, 2)))


def test_vinyals_split_by_alphabet(tmp_path, monkeypatch):
    lines = [l.split("\t") for l in common.read_list("omniglot_vinyals.txt")]
    alphabets = {"background": {}, "evaluation": {}}
    for split, archive, alphabet, chars in lines:
        alphabets[archive][alphabet] = 42 if alphabet == "Gurmukhi" else 1
    make_omniglot(tmp_path / "raw", alphabets, drawers=1)
    for name in omniglot.ARCHIVES:
        monkeypatch.setitem(omniglot.MD5, name, common.md5sum(tmp_path / "raw" / name))
    monkeypatch.setattr(omniglot, "NUM_CHARACTERS", 50 + 41)
    path = omniglot.prepare(tmp_path, tmp_path / "raw", split="vinyals")
    val = load_split(path, "val").class_names
    test = load_split(path, "test").class_names
    train = load_split(path, "train").class_names
    assert sorted(n.split("/")[0] for n in val) == [
        "Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"]
    assert len(test) == 13 and "Gurmukhi/character42" in test and "Kannada/character01" in test
    assert len(train) == 32 + 41 and "Gurmukhi/character41" in train and "Angelic/character01" in train
    assert "Latin/character01" in train and "Gurmukhi/character01" in train


def test_vinyals_split_refuses_data_that_does_not_match(small):
    root, _ = small
    with pytest.raises(common.PrepError, match="is not in the Vinyals split list|expects alphabet"):
        omniglot.prepare(root, root / "raw", split="vinyals")
    assert not (root / "omniglot").exists()


def test_bad_zips(small, monkeypatch):
    root, _ = small
    bg = root / "raw" / "images_background.zip"
    bg.write_bytes(bg.read_bytes()[:-300])
    with pytest.raises(common.PrepError, match=r"images_background.zip has md5 .* truncated, corrupt"):
        omniglot.prepare(root, root / "raw")
    monkeypatch.setitem(omniglot.MD5, "images_background.zip", common.md5sum(bg))  # as if unchecked
    with pytest.raises(common.PrepError, match=r"images_background.zip is not a readable zip archive"):
        omniglot.prepare(root, root / "raw")
    bg.unlink()
    with pytest.raises(common.PrepError, match=r"images_background.zip not found; download them with --download"):
        omniglot.prepare(root, root / "raw")
    assert not (root / "omniglot").exists()


def test_incomplete_character_is_refused(small, monkeypatch):
    root, ids = small
    ev = root / "raw" / "images_evaluation.zip"
    with zipfile.ZipFile(ev, "a") as zf:  # a 4th drawing for one character only
        zf.writestr("images_evaluation/Tengwar/character01/9999_04.png", omniglot_png(0, 4))
    monkeypatch.setitem(omniglot.MD5, ev.name, common.md5sum(ev))
    with pytest.raises(common.PrepError, match=r"has 3 drawings but others have 4"):
        omniglot.prepare(root, root / "raw")


def test_download_fetches_both_zips(small, monkeypatch):
    root, _ = small
    monkeypatch.setattr(omniglot, "URL", (root / "raw").as_uri() + "/")
    path = omniglot.prepare(root / "data", fetch=True)
    for name in omniglot.ARCHIVES:
        assert (root / "data" / "raw" / name).read_bytes() == (root / "raw" / name).read_bytes()
    assert load_split(path, "test").num_classes == 4
