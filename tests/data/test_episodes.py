"""data_prep.episodes: fixed episodes in the layout of the Omniglot one-shot runs."""

import io

import numpy as np
import pytest
from PIL import Image

from anil.data import DatasetError, load_split, write_prepared
from data_prep import common, episodes, omniglot
from data_prep.images import Preprocess
from prep_fixtures import make_omniglot, make_runs_folder, omniglot_png, run_png, runs_pairing

OMNIGLOT = Preprocess(28, 1, invert=True)


@pytest.fixture
def runs(tmp_path):
    """Two runs of three classes, in the layout of the extracted all_runs.zip."""
    pairing = runs_pairing(runs=2, classes=3)
    return make_runs_folder(tmp_path / "runs", pairing), pairing


def test_labels_follow_the_pairing_in_class_labels_txt(runs):
    folder, pairing = runs
    got = episodes.read_episodes(folder, OMNIGLOT)
    assert [e.name for e in got] == ["run01", "run02"]
    for e in got:
        classes = pairing[e.name]  # class (1-based) of item01, item02, ...
        assert e.support_files == [f"{e.name}/training/class{j:02d}.png" for j in (1, 2, 3)]
        assert e.class_names == e.support_files and e.ways == 3
        assert e.support_labels.tolist() == [0, 1, 2] and e.support_labels.dtype == np.int64
        assert e.query_files == [f"{e.name}/test/item{k:02d}.png" for k in (1, 2, 3)]
        assert e.query_labels.tolist() == [j - 1 for j in classes] and e.query_labels.dtype == np.int64
        assert e.support_images.shape == e.query_images.shape == (3, 28, 28, 1)
        assert e.support_images.dtype == np.uint8
        r = int(e.name[3:])
        for k, j in enumerate(classes):  # each query holds the image written for its class
            png = Image.open(io.BytesIO(run_png(r, j, query=True))).convert("L")
            assert np.array_equal(e.query_images[k, :, :, 0], 255 - np.asarray(png.resize((28, 28), Image.LANCZOS)))


def test_a_single_run_folder_and_windows_line_ends(tmp_path):
    pairing = {"run07": [2, 3, 1]}
    make_runs_folder(tmp_path / "one", pairing, newline="\r\n")
    (e,) = episodes.read_episodes(tmp_path / "one" / "run07", OMNIGLOT)
    assert e.name == "run07" and e.query_labels.tolist() == [1, 2, 0]


def test_runs_get_exactly_the_omniglot_preparers_conversion(tmp_path, monkeypatch):
    """The same PNG bytes, once in the prepared dataset and once as a run image, give the same array,
    because the runs are converted by the preprocessing recorded in the dataset's meta.json."""
    ids = make_omniglot(tmp_path / "raw", {"background": {"Latin": 4}, "evaluation": {"Tengwar": 3}}, drawers=2)
    for name in omniglot.ARCHIVES:
        monkeypatch.setitem(omniglot.MD5, name, common.md5sum(tmp_path / "raw" / name))
    monkeypatch.setattr(omniglot, "NUM_CHARACTERS", 7)
    dataset = omniglot.prepare(tmp_path / "data", tmp_path / "raw", split="lake")
    test = load_split(dataset, "test")
    run = tmp_path / "runs" / "run01"
    lines = []
    for j, name in enumerate(test.class_names, 1):  # class image: drawer 1; query: drawer 2
        (run / "training").mkdir(parents=True, exist_ok=True)
        (run / "test").mkdir(exist_ok=True)
        (run / "training" / f"class{j:02d}.png").write_bytes(omniglot_png(ids[name], 1))
        (run / "test" / f"item{j:02d}.png").write_bytes(omniglot_png(ids[name], 2))
        lines.append(f"run01/test/item{j:02d}.png run01/training/class{j:02d}.png")
    (run / "class_labels.txt").write_text("\n".join(lines) + "\n")
    (e,) = episodes.read_episodes(tmp_path / "runs", episodes.preprocess_of(dataset))
    for c in range(test.num_classes):
        stored = test.images[test.offsets[c]:test.offsets[c + 1]]
        assert np.array_equal(e.support_images[c], stored[0])
        assert np.array_equal(e.query_images[c], stored[1])


def test_k_shot_runs_with_class_folders(tmp_path):
    run = tmp_path / "run01"
    for c, name in enumerate(["b_class", "a_class"]):
        for k in range(2):
            path = run / "training" / name / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (10, 10), 40 + 100 * c + k).save(path)
    (run / "test").mkdir()
    for k, value in enumerate([140, 40, 41]):
        Image.new("L", (10, 10), value).save(run / "test" / f"q{k}.png")
    (run / "class_labels.txt").write_text(
        "run01/test/q0.png run01/training/a_class\n"          # the class folder
        "run01/test/q1.png run01/training/b_class/1.png\n"    # an image in it
        "run01/test/./q2.png run01/training/b_class\n")       # paths are normalised
    (e,) = episodes.read_episodes(run, Preprocess(4, 1))
    assert e.class_names == ["run01/training/a_class", "run01/training/b_class"]
    assert e.support_labels.tolist() == [0, 0, 1, 1]
    assert e.support_files[0] == "run01/training/a_class/0.png"
    assert e.query_labels.tolist() == [0, 1, 1]
    assert e.support_images[:, 0, 0, 0].tolist() == [140, 141, 40, 41]


def test_preprocess_comes_from_the_datasets_meta_json(tmp_path):
    split = (np.zeros((2, 5, 5, 1), np.uint8), np.zeros(2, int), ["x"])
    old = write_prepared(tmp_path, "old", {"train": split})
    with pytest.raises(DatasetError, match="records no image preprocessing.*data_prep.folder and data_prep.omniglot"):
        episodes.preprocess_of(old)
    good = write_prepared(tmp_path, "good", {"train": split}, {"preprocess": OMNIGLOT.to_meta()})
    assert episodes.preprocess_of(good) == OMNIGLOT
    bad = write_prepared(tmp_path, "bad", {"train": split},
                         {"preprocess": {"size": 0, "channels": 1, "invert": False, "resample": "lanczos"}})
    with pytest.raises(DatasetError, match=r"bad/meta.json: its \"preprocess\" entry .* is malformed \(size must"):
        episodes.preprocess_of(bad)
    with pytest.raises(DatasetError, match="not a prepared dataset"):
        episodes.preprocess_of(tmp_path / "nothing")


def edit_labels(folder, run, transform):
    path = folder / run / "class_labels.txt"
    path.write_text(transform(path.read_text()))


@pytest.mark.parametrize("transform, message", [
    (lambda t: t.replace("run01/training/class02.png", "run01/training/class09.png"),
     r"line \d: the support image run01/training/class09.png does not exist"),
    (lambda t: t.replace("run01/test/item02.png", "run01/test/item02.jpg"),
     r"line 2: the query image run01/test/item02.jpg does not exist"),
    (lambda t: t.replace("\n", " extra\n", 1), r"line 1: .* is not '<query image> <support image>'"),
    (lambda t: "run01/test/item01.png\n" + t.split("\n", 1)[1], r"line 1: .* is not '<query image> <support image>'"),
    (lambda t: "\n".join(t.splitlines()[:2]) + "\n", r"1 query images are paired with no support image .*item03.png"),
    (lambda t: t + t.splitlines()[0] + "\n", r"line 4: the query run01/test/item01.png is paired a second time"),
    (lambda t: t.replace("run01/training/class01.png", "run01/test/item01.png"),
     r"run01/test/item01.png is not a support image of this run"),
])
def test_bad_label_files_are_one_line_errors(runs, transform, message):
    folder, _ = runs
    edit_labels(folder, "run01", transform)
    with pytest.raises(DatasetError, match=message):
        episodes.read_episodes(folder, OMNIGLOT)


def test_bad_folders_are_one_line_errors(runs, tmp_path):
    folder, _ = runs
    with pytest.raises(DatasetError, match="episodes folder .*nope does not exist"):
        episodes.read_episodes(tmp_path / "nope", OMNIGLOT)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no run folders"):
        episodes.read_episodes(tmp_path / "empty", OMNIGLOT)
    (folder / "notes").mkdir()
    with pytest.raises(DatasetError, match="notes/class_labels.txt not found: every sub-folder"):
        episodes.read_episodes(folder, OMNIGLOT)
    (folder / "notes").rmdir()
    (folder / "run02" / "training" / "class02.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="class02.png is not a readable image"):
        episodes.read_episodes(folder, OMNIGLOT)
    (folder / "run02" / "training" / "class02.png").unlink()
    with pytest.raises(DatasetError, match="the support image run02/training/class02.png does not exist"):
        episodes.read_episodes(folder, OMNIGLOT)
    (folder / "run01" / "test" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="readme.txt is not an image file"):
        episodes.read_episodes(folder, OMNIGLOT)
