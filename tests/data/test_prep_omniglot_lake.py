"""Lake et al.'s one-shot protocol with Lake's files alone: the minimal background sets small1,
small2 and both (their shared alphabets kept once), no test split without images_evaluation.zip,
and from there train.py --data and evaluate.py RUN --episodes. Fixtures in the zips' real layout."""

import json
import random
import zipfile

import pytest
from PIL import Image

from anil.data import DatasetError, load_split, read_meta
from anil.run import config, evaluate
from anil.run.config import run_config
from data_prep import common, folder, glyphs, omniglot, omniglot_runs
from in_process import in_process
from prep_fixtures import make_omniglot_zip, make_runs_zip, omniglot_png, runs_pairing

# The real small1 and small2 share Greek and Latin byte for byte (same member names, same PNGs).
SMALL1 = {"Balinese": 10, "Greek": 3, "Latin": 2}  # ids 0..14
SMALL2 = {"Greek": 3, "Latin": 2, "Tagalog": 4}  # Greek, Latin: ids 10..14 as in small1; Tagalog 15..18
EVALUATION = {"Tengwar": 3, "Kannada": 2}
TINY = ["--iterations", "2", "--meta-batch", "2", "--hidden", "8", "--val-tasks", "2", "--val-every", "1",
        "--eval-tasks", "2", "--log-every", "1", "--threads", "1", "--device", "cpu"]


@pytest.fixture
def lake(tmp_path, monkeypatch):
    """images_background_small1.zip, _small2.zip and images_evaluation.zip in raw/, all_runs.zip
    (2 runs of 3 classes) in runs/; md5s and counts told to the preparer."""
    raw = tmp_path / "raw"
    ids = make_omniglot_zip(raw / "images_background_small1.zip", "images_background_small1", SMALL1,
                            drawers=2)
    ids.update(make_omniglot_zip(raw / "images_background_small2.zip", "images_background_small2",
                                 SMALL2, drawers=2, first_id=10))
    ids.update(make_omniglot_zip(raw / "images_evaluation.zip", "images_evaluation", EVALUATION,
                                 drawers=2, first_id=19))
    make_runs_zip(tmp_path / "runs" / "all_runs.zip", runs_pairing(runs=2, classes=3))
    for name in ("images_background_small1.zip", "images_background_small2.zip", "images_evaluation.zip"):
        monkeypatch.setitem(omniglot.MD5, name, common.md5sum(raw / name))
    monkeypatch.setitem(omniglot.MD5, "all_runs.zip", common.md5sum(tmp_path / "runs" / "all_runs.zip"))
    monkeypatch.setattr(omniglot, "SMALL_CHARACTERS", {"small1": 15, "small2": 9})
    monkeypatch.setattr(omniglot, "EVALUATION_CHARACTERS", 5)
    monkeypatch.setattr(omniglot_runs, "NUM_RUNS", 2)
    return tmp_path, ids


def splits_of(path):
    return {s: load_split(path, s).class_names for s in read_meta(path)["splits"]}


def only(raw, *names):
    """Keep only the zips ``names`` in ``raw``."""
    for p in raw.iterdir():
        if p.name not in names:
            p.unlink()


@pytest.mark.parametrize("background, alphabets", [("small1", SMALL1), ("small2", SMALL2)])
def test_one_minimal_set_alone_has_train_and_val_and_no_test(lake, background, alphabets, capsys):
    root, ids = lake
    zip_name = f"images_background_{background}.zip"
    only(root / "raw", zip_name)
    argv = ["--root", str(root / "data"), "--source", str(root / "raw"), "--background", background]
    assert common.run_cli(omniglot.main, argv) == 0
    out = capsys.readouterr().out
    path = root / "data" / f"omniglot-{background}"
    got = splits_of(path)
    background_characters = sorted(n for n in ids if n.split("/")[0] in alphabets)
    assert sorted(got) == ["train", "val"]
    assert sorted(got["train"] + got["val"]) == background_characters
    order = list(background_characters)
    random.Random(1).shuffle(order)  # sorted, shuffled by the default seed 1, 20% to validation
    n_val = round(0.2 * len(order))
    assert got["val"] == sorted(order[:n_val]) and got["train"] == sorted(order[n_val:])
    meta = read_meta(path)
    assert meta["background"] == zip_name and "no test split" in meta["split"]
    assert "--runs" in meta["test_instead"] and "--episodes" in meta["test_instead"]
    assert f"note: no images_evaluation.zip in {root / 'raw'}, so no test split" in out
    assert "evaluate.py RUN --episodes" in out
    with pytest.raises(DatasetError, match=r"has no split 'test'.*test a run on the Omniglot authors' 20 "
                                           r"one-shot runs.*python evaluate.py RUN --episodes"):
        load_split(path, "test")


def test_both_minimal_sets_keep_each_shared_character_once(lake, capsys):
    root, ids = lake
    argv = ["--root", str(root / "data"), "--source", str(root / "raw"), "--background", "small2", "small1"]
    assert common.run_cli(omniglot.main, argv) == 0
    out = capsys.readouterr().out
    path = root / "data" / "omniglot-small1-small2"  # sorted, whatever the order given
    got = splits_of(path)
    union = sorted(n for n in ids if n.split("/")[0] in {**SMALL1, **SMALL2})
    assert len(union) == 15 + 9 - 5  # the union count: Greek/character01 .. Latin/character02 once
    everything = got["train"] + got["val"]
    assert sorted(everything) == union and len(set(everything)) == len(everything)
    assert everything.count("Greek/character01") == 1
    assert got["test"] == sorted(n for n in ids if n.split("/")[0] in EVALUATION)
    assert load_split(path, "train").counts.tolist() == [2] * len(got["train"])  # 2 drawings, not 4
    meta = read_meta(path)
    assert meta["background"] == "images_background_small1.zip, images_background_small2.zip"
    assert meta["shared_characters"].startswith("5 characters (Greek, Latin) are in both minimal sets")
    assert "5 characters (Greek, Latin) are in both minimal sets, byte-identical: each kept once" in out


def test_shared_characters_that_differ_are_refused(lake, monkeypatch):
    root, _ = lake
    small2 = root / "raw" / "images_background_small2.zip"
    with zipfile.ZipFile(small2) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    changed = "images_background_small2/Greek/character02/0012_01.png"
    members[changed] = omniglot_png(3, 4)  # another drawing under the same name
    with zipfile.ZipFile(small2, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    monkeypatch.setitem(omniglot.MD5, small2.name, common.md5sum(small2))
    with pytest.raises(common.PrepError, match=r"character Greek/character02 differs between "
                                               r"images_background_small1.zip and images_background_small2.zip"):
        omniglot.prepare(root / "data", root / "raw", background=["small1", "small2"])
    assert not (root / "data").exists() or not list((root / "data").glob("omniglot*"))


@pytest.mark.parametrize("background", [["full", "small1"], ["small1", "small1"]])
def test_a_bad_background_list_is_an_argparse_error(tmp_path, capsys, background):
    with pytest.raises(SystemExit) as e:
        omniglot.main(["--root", str(tmp_path), "--background", *background])
    assert e.value.code == 2 and "--background" in capsys.readouterr().err


def test_a_corrupt_zip_is_reported_before_a_missing_optional_one(lake, monkeypatch):
    root, _ = lake
    raw = root / "raw"
    only(raw, "images_background_small1.zip")  # no evaluation zip: optional here
    small1 = raw / "images_background_small1.zip"
    small1.write_bytes(small1.read_bytes()[:-200])
    with pytest.raises(common.PrepError, match=r"images_background_small1.zip has md5 .* truncated, corrupt"):
        omniglot.prepare(root / "data", raw, background="small1")
    monkeypatch.setitem(omniglot.MD5, small1.name, common.md5sum(small1))  # as if the md5 matched
    with pytest.raises(common.PrepError, match=r"images_background_small1.zip is not a readable zip archive"):
        omniglot.prepare(root / "data", raw, background="small1")
    # A corrupt evaluation zip is reported before the missing background zip.
    (raw / "images_evaluation.zip").write_bytes(b"not a zip")
    small1.unlink()
    with pytest.raises(common.PrepError, match=r"images_evaluation.zip has md5"):
        omniglot.prepare(root / "data", raw, background="small1")
    (raw / "images_evaluation.zip").unlink()
    with pytest.raises(common.PrepError, match=r"images_background_small1.zip not found"):
        omniglot.prepare(root / "data", raw, background="small1")


def test_lake_protocol_end_to_end(lake, tmp_path, capsys):
    """small1 and all_runs.zip only -> train.py --data -> evaluate.py RUN --episodes."""
    root, _ = lake
    only(root / "raw", "images_background_small1.zip")
    data = root / "data"
    assert common.run_cli(omniglot.main, ["--root", str(data), "--source", str(root / "raw"),
                                          "--background", "small1"]) == 0
    assert common.run_cli(omniglot.main, ["--root", str(data), "--source", str(root / "runs"), "--runs"]) == 0
    capsys.readouterr()
    out_dir = tmp_path / "runs-out" / "small1"
    code, out, err = in_process(["--data", data / "omniglot-small1", "--ways", "3", *TINY, "--out", out_dir],
                                capsys)
    assert code == 0, err
    note = [line for line in out.splitlines() if line.startswith("note:")]
    assert note == [f"note: {data / 'omniglot-small1'} has no test split, so there is no untrained or final "
                    f"test; test the run on the Omniglot authors' 20 one-shot runs: python -m data_prep.omniglot "
                    f"--root {data} --runs, then python evaluate.py {out_dir} --episodes {data / 'omniglot-runs'}"]
    assert "untrained network" not in out and "test accuracy" not in out
    assert "no test split: test the run on the Omniglot authors' 20 one-shot runs" in out
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["test_accuracy"] is None and summary["untrained_test_accuracy"] is None
    assert summary["tested"] is None and summary["history"][-1]["val_accuracy"] is not None
    assert summary["config"]["prepare"] is None  # not the glyphs' command, nor the omniglot preset's
    code, out, err = in_process(["--resume", out_dir, "--iterations", "3", "--allow-config-change"], capsys)
    summary = json.loads((out_dir / "summary.json").read_text())
    assert code == 0 and summary["config"]["prepare"] is None and summary["test_accuracy"] is None, err
    evaluate.main([str(out_dir), "--episodes", str(data / "omniglot-runs"), "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["run01", "run02"]
    errors = tuple(f"3-way    3 queries  error {100 * wrong / 3:6.2f}%" for wrong in range(4))
    assert all(line.endswith(errors) for line in lines[1:3]), lines  # 0 to 3 of 3 queries wrong
    assert lines[-1].startswith("mean error ") and lines[-1].endswith("(± one standard error over 2 episodes)")
    # Without --episodes, evaluate.py says what to test the run on instead.
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(out_dir), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "has no split 'test'" in err[0] and "--episodes" in err[0]


# ------------------------------------------------------------- the smaller points of the protocol


def test_a_data_folder_records_no_prepare_command_and_rotates_as_its_help_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "1000")  # the help unwrapped ("mini-imagenet" is never split)
    named, _ = config.parse_args(["--dataset", "omniglot"])
    assert run_config(named)["prepare"] == "python -m data_prep.omniglot --root {root} --download"
    with_preset, _ = config.parse_args(["--dataset", "omniglot", "--data", "mine"])
    alone, _ = config.parse_args(["--data", "mine"])
    # Whatever made the folder, it is not known here: summary.json records no command for it.
    assert run_config(with_preset)["prepare"] is None and run_config(alone)["prepare"] is None
    assert with_preset.rotate is True and alone.rotate is False  # as --rotate's help says:
    text = " ".join(config.build_parser().format_help().split())
    rotate = text.split("--rotate, --no-rotate ", 1)[1].split(" --seed", 1)[0]
    assert rotate == ("rotate each class of a task by k·90°, k drawn per class per task; --data with "
                      "--dataset NAME rotates as NAME does (preset: off for glyphs, omniglot-rot, "
                      "mini-imagenet, cifar-fs, fc100, --data alone; on for omniglot)")


def test_a_folder_with_a_test_share_of_zero_trains_without_a_test(tmp_path, capsys):
    images = glyphs.generate(seed=3, split=(8, 0, 0), instances=3)  # [8, 3, 28, 28]
    for c, block in enumerate(images):
        (tmp_path / "photos" / f"c{c}").mkdir(parents=True)
        for i, image in enumerate(block):
            Image.fromarray(image).save(tmp_path / "photos" / f"c{c}" / f"{i}.png")
    argv = ["--source", str(tmp_path / "photos"), "--out", str(tmp_path / "mine"), "--size", "28",
            "--grayscale", "--split", "0.625,0.375,0"]
    assert common.run_cli(folder.main, argv) == 0
    assert {s: len(n) for s, n in splits_of(tmp_path / "mine").items()} == {"train": 5, "val": 3}
    assert "wrote" in capsys.readouterr().out
    out_dir = tmp_path / "run"
    code, out, err = in_process(["--data", tmp_path / "mine", "--ways", "3", *TINY, "--out", out_dir], capsys)
    assert code == 0, err
    assert (f"no test split: test the run on fixed episodes: python evaluate.py {out_dir} --episodes DIR "
            f"(layout: docs/your-own-data.md)") in out
    assert json.loads((out_dir / "summary.json").read_text())["test_accuracy"] is None
