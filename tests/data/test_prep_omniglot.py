import io
import random
import zipfile

import numpy as np
import pytest
from PIL import Image

from anil.data import load_split, read_meta
from anil.run.presets import preset
from anil.sampler import TaskSampler
from data_prep import common, episodes, images, omniglot, omniglot_runs
from prep_fixtures import make_omniglot, make_omniglot_zip, make_runs_zip, omniglot_png, runs_pairing

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


def test_truncated_or_mismatched_zips_are_named_with_what_to_do(small, monkeypatch):
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


def test_meta_records_the_preprocessing_that_reproduces_the_stored_images(small):
    root, ids = small
    path = omniglot.prepare(root, root / "raw")
    meta = read_meta(path)
    assert meta["preprocess"] == {"size": 28, "channels": 1, "invert": True, "resample": "lanczos"}
    pre = images.Preprocess.from_meta(meta["preprocess"], "meta.json")
    split = load_split(path, "test")
    name = split.class_names[0]
    stored = split.images[split.offsets[0]:split.offsets[1]]
    for d in range(3):
        assert np.array_equal(stored[d], images.read_image(omniglot_png(ids[name], d + 1), pre))


# --------------------------------------------------------------------- minimal background sets

SMALL1 = {"Balinese": 4, "Greek": 6}  # 10 background characters: 2 held out for validation
EVALUATION = {"Tengwar": 3, "Kannada": 2}


@pytest.fixture
def minimal(tmp_path, monkeypatch):
    """images_background_small1.zip and images_evaluation.zip in the real layout, md5s and
    character counts told to the preparer."""
    raw = tmp_path / "raw"
    ids = make_omniglot_zip(raw / "images_background_small1.zip", "images_background_small1", SMALL1, drawers=2)
    ids.update(make_omniglot_zip(raw / "images_evaluation.zip", "images_evaluation", EVALUATION,
                                 drawers=2, first_id=len(ids)))
    for name in ("images_background_small1.zip", "images_evaluation.zip"):
        monkeypatch.setitem(omniglot.MD5, name, common.md5sum(raw / name))
    monkeypatch.setitem(omniglot.SMALL_CHARACTERS, "small1", 10)
    monkeypatch.setattr(omniglot, "EVALUATION_CHARACTERS", 5)
    return tmp_path, ids


def test_minimal_background_split_trains_on_background_and_tests_on_evaluation(minimal):
    root, ids = minimal
    argv = ["--root", str(root), "--source", str(root / "raw"), "--background", "small1", "--seed", "4"]
    assert common.run_cli(omniglot.main, argv) == 0
    path = root / "omniglot-small1"
    got = {s: load_split(path, s).class_names for s in ("train", "val", "test")}
    background = sorted(n for n in ids if n.split("/")[0] in SMALL1)
    assert got["test"] == sorted(n for n in ids if n.split("/")[0] in EVALUATION)
    order = list(background)
    random.Random(4).shuffle(order)  # the documented rule: sorted, shuffled by the seed, 20% to val
    assert got["val"] == sorted(order[:2]) and got["train"] == sorted(order[2:])
    meta = read_meta(path)
    assert meta["background"] == "images_background_small1.zip" and "evaluation alphabets for test" in meta["split"]
    assert meta["preprocess"]["invert"] is True
    assert load_split(path, "train").counts.tolist() == [2] * 8
    other = omniglot.prepare(root / "other", root / "raw", background="small1", seed=5)
    assert load_split(other, "val").class_names != got["val"]


def test_minimal_background_with_rotated_classes(minimal):
    root, _ = minimal
    path = omniglot.prepare(root, root / "raw", background="small1", rotations="classes")
    assert path.name == "omniglot-small1-rot" and load_split(path, "test").num_classes == 4 * 5


def test_minimal_background_refuses_the_full_sets_splits(minimal):
    root, _ = minimal
    with pytest.raises(common.PrepError, match="--split maml needs the full background set.*drop --split"):
        omniglot.prepare(root, root / "raw", background="small1", split="maml")


def test_minimal_background_checks_its_character_counts(minimal, monkeypatch):
    root, _ = minimal
    monkeypatch.setitem(omniglot.SMALL_CHARACTERS, "small1", 136)
    with pytest.raises(common.PrepError, match=r"images_background_small1.zip: found 10 characters, it has 136"):
        omniglot.prepare(root, root / "raw", background="small1")


def test_a_minimal_zip_where_the_full_one_is_expected_is_named(minimal, capsys):
    root, _ = minimal
    raw = root / "raw"
    (raw / "images_background_small1.zip").rename(raw / "images_background.zip")
    code = common.run_cli(omniglot.main, ["--root", str(root), "--source", str(raw)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == (f"error: {raw / 'images_background.zip'}: found images_background_small1.zip (the minimal "
                      f"split 1, 5 background alphabets) where images_background.zip (the full background set, "
                      f"30 alphabets) was expected; rename it to images_background_small1.zip and pass "
                      f"--background small1")


def test_swapped_zips_are_named(minimal):
    root, _ = minimal
    raw = root / "raw"
    (raw / "images_evaluation.zip").rename(raw / "images_background_small1.zip.tmp")
    (raw / "images_background_small1.zip").rename(raw / "images_evaluation.zip")
    (raw / "images_background_small1.zip.tmp").rename(raw / "images_background_small1.zip")
    with pytest.raises(common.PrepError, match=r"found images_evaluation.zip \(the evaluation set, 20 alphabets\) "
                       r"where images_background_small1.zip .* was expected; rename it to images_evaluation.zip$"):
        omniglot.prepare(root, raw, background="small1")


def test_not_found_lists_the_accepted_files_and_what_is_there(minimal):
    root, _ = minimal
    with pytest.raises(common.PrepError) as e:
        omniglot.prepare(root, root / "raw")  # full background asked, only small1 present
    message = str(e.value)
    assert message.startswith(f"{root / 'raw' / 'images_background.zip'} not found; download them with --download")
    for name in ("images_background_small1.zip (--background small1)", "images_background_small2.zip",
                 "images_evaluation.zip", "all_runs.zip with --runs"):
        assert name in message
    assert message.endswith("holds images_background_small1.zip (the minimal split 1, 5 background alphabets): "
                            "to use it, pass --background small1")


def test_download_fetches_the_minimal_background(minimal, monkeypatch):
    root, _ = minimal
    monkeypatch.setattr(omniglot, "URL", (root / "raw").as_uri() + "/")
    path = omniglot.prepare(root / "data", fetch=True, background="small1")
    assert sorted(p.name for p in (root / "data" / "raw").iterdir()) == [
        "images_background_small1.zip", "images_evaluation.zip"]
    assert path.name == "omniglot-small1"


# ------------------------------------------------------------------------- one-shot runs


@pytest.fixture
def runs_zip(tmp_path, monkeypatch):
    """all_runs.zip in the real layout (run folders at the top), 2 runs of 3 classes; the
    preparer told its md5 and that it holds 2 runs."""
    pairing = runs_pairing(runs=2, classes=3)
    archive = make_runs_zip(tmp_path / "raw" / "all_runs.zip", pairing)
    monkeypatch.setitem(omniglot.MD5, "all_runs.zip", common.md5sum(archive))
    monkeypatch.setattr(omniglot_runs, "NUM_RUNS", 2)
    return archive, pairing


def test_runs_are_extracted_into_omniglot_runs(runs_zip, tmp_path):
    archive, pairing = runs_zip
    assert common.run_cli(omniglot.main, ["--runs", "--root", str(tmp_path / "data"), "--source",
                                          str(archive.parent)]) == 0
    out = tmp_path / "data" / "omniglot-runs"
    assert sorted(p.name for p in out.iterdir()) == ["run01", "run02", "runs.json"]
    assert sorted(p.name for p in (out / "run01").iterdir()) == ["class_labels.txt", "test", "training"]
    assert sorted(p.name for p in (out / "run02" / "training").iterdir()) == [
        "class01.png", "class02.png", "class03.png"]
    with zipfile.ZipFile(archive) as zf:
        assert (out / "run02" / "class_labels.txt").read_bytes() == zf.read("run02/class_labels.txt")
        assert (out / "run01" / "test" / "item03.png").read_bytes() == zf.read("run01/test/item03.png")
    got = episodes.read_episodes(out, omniglot.PREPROCESS)
    assert [e.query_labels.tolist() for e in got] == [[j - 1 for j in pairing[r]] for r in ("run01", "run02")]
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["omniglot-runs"]  # no temporary left


def test_runs_under_a_top_folder_and_a_rerun_replaces_them(tmp_path, monkeypatch):
    archive = make_runs_zip(tmp_path / "raw" / "all_runs.zip", runs_pairing(2, 3), top="all_runs/")
    monkeypatch.setitem(omniglot.MD5, "all_runs.zip", common.md5sum(archive))
    monkeypatch.setattr(omniglot_runs, "NUM_RUNS", 2)
    out = omniglot.prepare_runs(tmp_path / "data", archive)
    (out / "run01" / "stale.txt").write_text("from before")
    assert omniglot.prepare_runs(tmp_path / "data", archive) == out
    assert not (out / "run01" / "stale.txt").exists() and (out / "run02" / "class_labels.txt").is_file()


def test_the_runs_download_is_saved_raw_and_prepared(runs_zip, tmp_path, monkeypatch):
    archive, _ = runs_zip
    monkeypatch.setattr(omniglot_runs, "RUNS_URL", archive.as_uri())
    out = omniglot.prepare_runs(tmp_path / "data", fetch=True)
    assert (tmp_path / "data" / "raw" / "all_runs.zip").read_bytes() == archive.read_bytes()
    assert len(episodes.find_runs(out)) == 2


def test_runs_refuse_a_wrong_file_and_a_folder_they_did_not_write(runs_zip, tmp_path, monkeypatch):
    archive, _ = runs_zip
    monkeypatch.setattr(omniglot_runs, "NUM_RUNS", 20)
    with pytest.raises(common.PrepError, match="holds 2 run folders .* where 20 were expected"):
        omniglot.prepare_runs(tmp_path / "data", archive)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []
    mine = tmp_path / "data" / "omniglot-runs"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(common.PrepError, match="exists and was not written by this command"):
        omniglot.prepare_runs(tmp_path / "data", archive)
    assert (mine / "notes.txt").read_text() == "mine"
    wrong = tmp_path / "wrong" / "all_runs.zip"  # as if it were images_background.zip
    wrong.parent.mkdir()
    wrong.write_bytes(b"the full background zip")
    monkeypatch.setitem(omniglot.MD5, "images_background.zip", common.md5sum(wrong))
    with pytest.raises(common.PrepError, match=r"found images_background.zip .* where all_runs.zip .* was "
                       r"expected; rename it to images_background.zip and pass --background full$"):
        omniglot.prepare_runs(tmp_path / "other", wrong)


def test_runs_with_a_broken_pairing_are_refused(tmp_path, monkeypatch):
    archive = tmp_path / "raw" / "all_runs.zip"
    make_runs_zip(archive, runs_pairing(2, 3))
    with zipfile.ZipFile(archive) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    del members["run02/training/class03.png"]
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    monkeypatch.setitem(omniglot.MD5, "all_runs.zip", common.md5sum(archive))
    monkeypatch.setattr(omniglot_runs, "NUM_RUNS", 2)
    with pytest.raises(common.PrepError, match="all_runs.zip: .*run02/training/class03.png does not exist"):
        omniglot.prepare_runs(tmp_path / "data", archive)
    assert list((tmp_path / "data").iterdir()) == []


def test_runs_options_that_do_not_apply_are_argparse_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        omniglot.main(["--runs", "--root", str(tmp_path), "--split", "vinyals"])
    assert e.value.code == 2 and "--runs prepares only the one-shot runs; --split" in capsys.readouterr().err


def test_runs_interrupted_leave_the_previous_runs_and_no_temporary(runs_zip, tmp_path, monkeypatch):
    archive, _ = runs_zip
    out = omniglot.prepare_runs(tmp_path / "data", archive)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))

    def interrupted(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(episodes, "parse_run", interrupted)
    code = common.run_cli(omniglot.main, ["--runs", "--root", str(tmp_path / "data"), "--source", str(archive)])
    assert code == 130
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["omniglot-runs"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
