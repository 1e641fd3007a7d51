"""data_prep.folder: a folder of one's own images -> the prepared format."""

import io
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from anil.data import load_split, read_meta
from data_prep import common, folder, images
from prep_fixtures import png_with_size

REPO = Path(__file__).resolve().parents[2]
THIRDS = (0.34, 0.33, 0.33)  # one class per split from three classes


def colour(c, k):
    """The colour of image k of class c in the fixtures: identifies the image."""
    return (20 + 30 * c, 10 + 40 * k, 200 - 20 * c)


def save(path: Path, image: Image.Image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def solid_tree(root: Path, names, per_class=3, size=(30, 20)):
    """One folder per class name, each with ``per_class`` solid-colour PNGs 0.png, 1.png, ..."""
    for c, name in enumerate(names):
        for k in range(per_class):
            save(root / name / f"{k}.png", Image.new("RGB", size, colour(c, k)))
    return root


def all_class_names(path):
    return {s: load_split(path, s).class_names for s in ("train", "val", "test")}


def block(path, class_name):
    """The stored images of one class, wherever the split put it."""
    for s in ("train", "val", "test"):
        split = load_split(path, s)
        if class_name in split.class_names:
            c = split.class_names.index(class_name)
            return np.asarray(split.images[split.offsets[c]:split.offsets[c + 1]])
    raise KeyError(class_name)


def one_line_error(capsys, argv):
    code = common.run_cli(folder.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ------------------------------------------------------------------------- classes and pixels


def test_classes_are_folders_holding_images_named_by_relative_path(tmp_path):
    src = tmp_path / "src"
    for rel in ("cat/a.png", "dog/b.JPG", "alphabet/character01/x.Png", "alphabet/character02/y.jpeg",
                "birds/1.bmp", "birds/owls/2.tif", "deep/er/still/3.webp", "deep/er/still/4.ppm"):
        kind = {"jpg": "JPEG", "jpeg": "JPEG", "bmp": "BMP", "tif": "TIFF", "webp": "WEBP", "ppm": "PPM"}
        fmt = kind.get(rel.rsplit(".", 1)[1].lower(), "PNG")
        for suffix in ("", "-2"):  # two images per class
            name = rel.replace(".", f"{suffix}.")
            save(src / name, Image.new("RGB", (12, 12), (90, 90, 90)), format=fmt)
    save(src / "gray" / "p.pgm", Image.new("L", (12, 12), 90))
    save(src / "gray" / "q.PGM", Image.new("L", (12, 12), 90))
    report = folder.prepare(src, tmp_path / "out", size=8, fractions=(0.5, 0.25, 0.25))
    names = all_class_names(report.path)
    found = sorted(n for v in names.values() for n in v)
    # alphabet/ holds only folders: not a class; birds/ holds images and a folder: both are classes.
    assert found == ["alphabet/character01", "alphabet/character02", "birds", "birds/owls", "cat",
                     "deep/er/still", "dog", "gray"]
    assert report.skipped == [] and report.excluded == []
    assert report.images_per_class == [2, 2, 2, 2, 2, 4, 2, 2]  # in sorted class order


def test_each_image_lands_in_its_class_block_in_sorted_file_order_with_its_colour(tmp_path):
    src = tmp_path / "src"
    for c in range(5):
        for k, name in enumerate(["10.png", "9.png", "a.png"]):  # sorted as text: 10 < 9 < a
            save(src / f"class{c}" / name, Image.new("RGB", (40, 25), colour(c, k)))
    path = folder.prepare(src, tmp_path / "rgb", size=6).path
    for c in range(5):
        got = block(path, f"class{c}")
        assert got.shape == (3, 6, 6, 3) and got.dtype == np.uint8
        for k in range(3):
            assert (got[k] == colour(c, k)).all()  # a solid colour survives LANCZOS exactly
    path = folder.prepare(src, tmp_path / "gray", size=5, grayscale=True).path
    assert read_meta(path)["splits"]["train"]["image_shape"] == [5, 5, 1]
    for c in range(5):
        got = block(path, f"class{c}").astype(int)
        for k in range(3):
            r, g, b = colour(c, k)
            assert np.abs(got[k] - (0.299 * r + 0.587 * g + 0.114 * b)).max() <= 1  # ITU-R 601-2 luma


def test_aspect_ratio_is_not_kept_images_are_stretched(tmp_path):
    """A 200×100 image whose left quarter is black: stretched, its first columns stay dark over
    every row and the right part is bright (a centre crop would be all white, padding would add
    rows of fill)."""
    src = tmp_path / "src"
    wide = np.full((100, 200), 255, np.uint8)
    wide[:, :50] = 0
    for c in ("a", "b", "c"):
        for k in range(2):
            save(src / c / f"{k}.png", Image.fromarray(wide))
    got = block(folder.prepare(src, tmp_path / "out", size=10, grayscale=True, fractions=THIRDS).path,
                "a")[0, :, :, 0]
    assert (got[:, 0:2] < 20).all() and (got[:, 4:] > 235).all()


def test_every_kind_of_image_mode_is_converted(tmp_path):
    """Palette, transparency, 16-bit, CMYK, 1-bit and EXIF-rotated files, each with a known result."""
    src = tmp_path / "src"
    palette = Image.new("P", (9, 9), 0)
    palette.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    save(src / "modes" / "01_palette.png", palette)
    clear = Image.new("P", (9, 9), 0)
    clear.putpalette([0, 0, 0] * 256)
    save(src / "modes" / "02_palette_transparent.png", clear, transparency=0)
    save(src / "modes" / "03_rgba_transparent.png", Image.new("RGBA", (9, 9), (0, 0, 0, 0)))
    save(src / "modes" / "04_rgba_half.png", Image.new("RGBA", (9, 9), (0, 0, 0, 128)))
    save(src / "modes" / "05_la_transparent.png", Image.new("LA", (9, 9), (0, 0)))
    save(src / "modes" / "06_16bit.png", Image.fromarray(np.full((9, 9), 51400, np.uint16)))  # 51400/257 = 200
    save(src / "modes" / "07_cmyk.tif", Image.new("CMYK", (9, 9), (255, 0, 0, 0)))  # cyan
    save(src / "modes" / "08_one_bit.png", Image.new("1", (9, 9), 0))
    # A camera JPEG: sensor pixels 20 wide × 10 high, left half black, and the EXIF tag
    # "rotate 90° clockwise to display" (6): upright, the black half is at the top.
    sideways = np.full((10, 20, 3), 255, np.uint8)
    sideways[:, :10] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    save(src / "modes" / "09_exif.jpg", Image.fromarray(sideways), exif=exif, quality=95)
    save(src / "other" / "a.png", Image.new("RGB", (9, 9)))
    save(src / "other" / "b.png", Image.new("RGB", (9, 9)))
    save(src / "third" / "a.png", Image.new("RGB", (9, 9)))
    save(src / "third" / "b.png", Image.new("RGB", (9, 9)))
    report = folder.prepare(src, tmp_path / "out", size=8, fractions=THIRDS)
    assert report.skipped == []
    got = block(report.path, "modes").astype(int)
    assert (got[0] == (10, 20, 30)).all()
    assert (got[1] == 255).all() and (got[2] == 255).all()  # transparent: white, not black
    assert (np.abs(got[3] - 127) <= 1).all()  # half-transparent black over white
    assert (got[4] == 255).all()
    assert (got[5] == 200).all()  # scaled, not clipped to 255
    assert (got[6] == (0, 255, 255)).all()
    assert (got[7] == 0).all()
    upright = got[8].mean(axis=(1, 2))  # per row
    assert (upright[:3] < 40).all() and (upright[5:] > 215).all()
    gray = block(folder.prepare(src, tmp_path / "gray", size=8, grayscale=True, fractions=THIRDS).path,
                 "modes")[..., 0]
    assert gray[5].min() == gray[5].max() == 200 and (gray[6] == round(0.587 * 255 + 0.114 * 255)).all()


def test_meta_records_the_preprocessing_that_reproduces_the_stored_images(tmp_path):
    src = tmp_path / "src"
    drawn = np.full((33, 47), 230, np.uint8)
    drawn[5:20, 10:30] = 15
    for c in ("a", "b", "c"):
        save(src / c / "0.png", Image.fromarray(drawn))
        save(src / c / "1.png", Image.fromarray(255 - drawn))
    path = folder.prepare(src, tmp_path / "out", size=12, grayscale=True, invert=True, fractions=THIRDS).path
    meta = read_meta(path)
    assert meta["preprocess"] == {"size": 12, "channels": 1, "invert": True, "resample": "lanczos"}
    pre = images.Preprocess.from_meta(meta["preprocess"], "meta.json")
    stored = block(path, "b")
    assert np.array_equal(stored[0], images.read_image(src / "b" / "0.png", pre))
    assert np.array_equal(stored[0], 255 - np.asarray(Image.fromarray(drawn).resize((12, 12), Image.LANCZOS))[..., None])
    assert stored[0, 4, 5, 0] > 200 and stored[0, 10, 10, 0] < 50  # dark ink became bright, paper dark


# ------------------------------------------------------------------------------ the split


def test_split_is_seeded_disjoint_covering_and_reproducible(tmp_path):
    names = [f"c{i:02d}" for i in range(20)]
    src = solid_tree(tmp_path / "src", names, per_class=2, size=(4, 4))
    first = all_class_names(folder.prepare(src, tmp_path / "a", size=4, seed=7).path)
    again = all_class_names(folder.prepare(src, tmp_path / "b", size=4, seed=7).path)
    other = all_class_names(folder.prepare(src, tmp_path / "c", size=4, seed=8).path)
    assert first == again and first != other
    for split in (first, other):
        everything = split["train"] + split["val"] + split["test"]
        assert sorted(everything) == names and len(set(everything)) == 20  # disjoint, covering
        assert [len(split[s]) for s in ("train", "val", "test")] == [13, 3, 4]  # 12.8, 3.2, 4.0
    order = sorted(names)  # the documented rule: sorted names, random.Random(seed).shuffle, cut
    random.Random(7).shuffle(order)
    assert first == {"train": sorted(order[:13]), "val": sorted(order[13:16]), "test": sorted(order[16:])}
    assert "random.Random(7)" in read_meta(tmp_path / "a")["split"]


def test_split_counts_round_by_largest_remainder():
    assert folder.split_counts(20, (0.64, 0.16, 0.20)) == [13, 3, 4]
    assert folder.split_counts(5, (0.64, 0.16, 0.20)) == [3, 1, 1]
    assert folder.split_counts(10, (0.5, 0.25, 0.25)) == [5, 3, 2]  # tie: the earlier split
    assert folder.split_counts(100, (0.64, 0.16, 0.20)) == [64, 16, 20]


def test_a_split_without_classes_is_a_one_line_error(tmp_path, capsys):
    src = solid_tree(tmp_path / "src", ["a", "b", "c"], per_class=2)
    err = one_line_error(capsys, ["--source", str(src), "--out", str(tmp_path / "out"), "--size", "4"])
    assert "3 classes split by 0.64,0.16,0.2 leave the val split with no class" in err and "--split" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ bad input


def test_bad_files_are_skipped_and_reported(tmp_path, capsys):
    src = solid_tree(tmp_path / "src", ["a", "b", "c"])
    (src / "a" / "notes.txt").write_text("not an image")
    (src / "a" / "really_text.jpg").write_text("this is text with a .jpg name")
    whole = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(whole, format="PNG", compress_level=0)
    (src / "b" / "truncated.png").write_bytes(whole.getvalue()[:2000])
    (src / "b" / "bomb_warning.png").write_bytes(png_with_size(10_000, 10_000))  # 1x..2x the limit
    (src / "c" / "bomb_error.png").write_bytes(png_with_size(20_000, 20_000))  # over 2x the limit
    (src / "c" / ".DS_Store").write_bytes(b"\x00\x01")
    (src / ".git").mkdir()
    (src / ".git" / "x.png").write_bytes(b"not walked")
    save(src / "loose.png", Image.new("RGB", (4, 4)))
    os.mkfifo(src / "c" / "pipe.png")  # reading it would wait forever
    report = folder.prepare(src, tmp_path / "out", size=4, fractions=THIRDS)
    reasons = {s.path: s.reason for s in report.skipped}
    assert reasons == {
        "a/notes.txt": folder.NOT_IMAGE, "a/really_text.jpg": images.UNREADABLE,
        "b/truncated.png": images.UNREADABLE, "b/bomb_warning.png": images.BOMB,
        "c/bomb_error.png": images.BOMB, "c/.DS_Store": folder.HIDDEN, ".git": folder.HIDDEN,
        "loose.png": folder.AT_TOP, "c/pipe.png": folder.NOT_REGULAR}
    assert report.images_per_class == [3, 3, 3] and report.excluded == []
    out = capsys.readouterr().out
    assert "skipped 9 entries:" in out
    assert "  2 too large (decompression-bomb limit): b/bomb_warning.png (" in out
    assert "  2 not a readable image: a/really_text.jpg (UnidentifiedImageError: cannot identify" in out
    assert "b/truncated.png (OSError: " in out
    assert "excluded 0 classes" in out
    assert read_meta(report.path)["skipped_files"][images.BOMB] == 2


def test_the_report_lists_at_most_three_paths_per_reason(tmp_path, capsys):
    src = solid_tree(tmp_path / "src", ["a", "b", "c"])
    for i in range(5):
        (src / "a" / f"n{i}.txt").write_text("x")
    report = folder.prepare(src, tmp_path / "out", size=4, fractions=THIRDS)
    line = next(x for x in report.lines() if folder.NOT_IMAGE in x)
    assert line == f"  5 {folder.NOT_IMAGE}: a/n0.txt; a/n1.txt; a/n2.txt; and 2 more"
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("wrote ") and lines[1].endswith(
        ": train 1 class, val 1 class, test 1 class; 9 images")
    assert lines[2] == "images per class: min 3, median 3, max 3"


def test_classes_with_too_few_readable_images_are_excluded_and_listed(tmp_path, capsys):
    src = solid_tree(tmp_path / "src", ["a", "b", "c", "d", "e"], per_class=3)
    (src / "a" / "1.png").write_bytes(b"broken")
    (src / "a" / "2.png").unlink()  # a: 1 readable image left
    (src / "b" / "2.png").unlink()  # b: 2 images
    save(src / "f" / "0.png", Image.new("RGB", (4, 4)))  # f: 1 image
    report = folder.prepare(src, tmp_path / "out", size=4)
    assert report.excluded == [("a", 1), ("f", 1)]
    kept = sorted(n for v in all_class_names(report.path).values() for n in v)
    assert kept == ["b", "c", "d", "e"] and sorted(report.images_per_class) == [2, 3, 3, 3]
    assert read_meta(report.path)["excluded_classes"] == ["a", "f"]
    assert "excluded 2 classes with fewer than 2 images: a (1), f (1)" in capsys.readouterr().out
    report = folder.prepare(src, tmp_path / "out3", size=4, min_images=3, fractions=THIRDS)
    assert [name for name, _ in report.excluded] == ["a", "b", "f"]


def test_symbolic_links_outside_the_source_are_never_followed(tmp_path):
    outside = tmp_path / "outside"
    save(outside / "secret.png", Image.new("RGB", (4, 4), (7, 77, 177)))
    save(outside / "folder" / "0.png", Image.new("RGB", (4, 4), (7, 77, 177)))
    save(outside / "folder" / "1.png", Image.new("RGB", (4, 4), (7, 77, 177)))
    src = solid_tree(tmp_path / "src", ["a", "b", "c"])
    (src / "a" / "link_out.png").symlink_to(outside / "secret.png")
    (src / "linked_class").symlink_to(outside / "folder")
    (src / "b" / "link_in.png").symlink_to(src / "c" / "0.png")  # inside: read, as an image of b
    (src / "c_again").symlink_to(src / "c")  # a folder inside: read where it is, not twice
    (src / "c" / "dangling.png").symlink_to(tmp_path / "nothing.png")
    report = folder.prepare(src, tmp_path / "out", size=4, fractions=THIRDS)
    reasons = {s.path: s.reason for s in report.skipped}
    assert reasons == {"a/link_out.png": folder.LINK_OUTSIDE, "linked_class": folder.LINK_OUTSIDE,
                       "c_again": folder.LINK_TO_FOLDER, "c/dangling.png": folder.BROKEN_LINK}
    assert sorted(n for v in all_class_names(report.path).values() for n in v) == ["a", "b", "c"]
    b = block(report.path, "b")
    assert len(b) == 4 and (b[3] == colour(2, 0)).all()  # link_in.png sorts last in b
    for s in ("train", "val", "test"):
        assert not (np.asarray(load_split(report.path, s).images) == (7, 77, 177)).all(axis=-1).any()


def test_missing_empty_or_imageless_source_is_a_one_line_error(tmp_path, capsys):
    out = ["--out", str(tmp_path / "out"), "--size", "8"]
    assert "does not exist" in one_line_error(capsys, ["--source", str(tmp_path / "nope")] + out)
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in one_line_error(capsys, ["--source", str(tmp_path / "file")] + out)
    (tmp_path / "empty").mkdir()
    err = one_line_error(capsys, ["--source", str(tmp_path / "empty")] + out)
    assert "holds no image files in class sub-folders" in err and ".png" in err
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "x.txt").write_text("x")
    assert "holds no image files" in one_line_error(capsys, ["--source", str(tmp_path / "texts")] + out)
    broken = tmp_path / "broken"
    for c in "abc":
        (broken / c).mkdir(parents=True)
        (broken / c / "x.png").write_bytes(b"nope")
    err = one_line_error(capsys, ["--source", str(broken)] + out)
    assert "no class under" in err and "lower --min-images" in err
    assert not (tmp_path / "out").exists()


def test_out_may_not_touch_the_source_or_what_is_not_a_dataset(tmp_path, capsys):
    src = solid_tree(tmp_path / "src", ["a", "b", "c", "d", "e"])
    base = ["--source", str(src), "--size", "4"]
    assert "is inside --source" in one_line_error(capsys, base + ["--out", str(src / "prepared")])
    assert "is inside --source" in one_line_error(capsys, base + ["--out", str(src)])
    assert "would replace your images" in one_line_error(capsys, base + ["--out", str(tmp_path)])
    (tmp_path / "file").write_text("mine")
    assert "is an existing file" in one_line_error(capsys, base + ["--out", str(tmp_path / "file")])
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert "not a prepared dataset" in one_line_error(capsys, base + ["--out", str(tmp_path / "notes")])
    assert (tmp_path / "file").read_text() == "mine" and (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()  # an empty folder holds nothing to lose
    assert common.run_cli(folder.main, base + ["--out", str(tmp_path / "empty")]) == 0
    assert load_split(tmp_path / "empty", "train").num_classes == 3
    # An existing dataset is replaced (atomically), here with another seed's split.
    before = all_class_names(tmp_path / "empty")
    assert common.run_cli(folder.main, base + ["--out", str(tmp_path / "empty"), "--seed", "3"]) == 0
    assert all_class_names(tmp_path / "empty") != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "notes", "src"]


def test_ctrl_c_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    src = solid_tree(tmp_path / "src", ["a", "b", "c"])
    data = tmp_path / "data"
    data.mkdir()
    calls = []

    def interrupted(path, preprocess):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return images.read_image(path, preprocess)

    monkeypatch.setattr(folder, "read_image", interrupted)
    argv = ["--source", str(src), "--out", str(data / "mine"), "--size", "4", "--split", "0.34,0.33,0.33"]
    assert common.run_cli(folder.main, argv) == 130
    assert list(data.iterdir()) == []
    monkeypatch.undo()
    assert common.run_cli(folder.main, argv) == 0
    before = {p.name: p.read_bytes() for p in (data / "mine").iterdir()}
    saves = []

    def save_then_interrupt(*a, **k):
        saves.append(a)
        if len(saves) == 3:
            raise KeyboardInterrupt
        return real_save(*a, **k)

    real_save = np.save
    monkeypatch.setattr(np, "save", save_then_interrupt)  # interrupted while writing the new one
    assert common.run_cli(folder.main, argv + ["--seed", "5"]) == 130
    assert [p.name for p in data.iterdir()] == ["mine"]
    assert {p.name: p.read_bytes() for p in (data / "mine").iterdir()} == before


def test_the_module_runs_from_the_command_line(tmp_path):
    src = solid_tree(tmp_path / "src", ["a", "b", "c"])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = [sys.executable, "-m", "data_prep.folder", "--source", str(src), "--size", "4"]
    r = subprocess.run(run + ["--out", str(src / "x")], cwd=REPO, capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(run + ["--out", str(tmp_path / "ok"), "--split", "0.34,0.33,0.33"], cwd=REPO,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "images per class: min 3, median 3, max 3" in r.stdout
