"""Fixed episodes (evaluate.py --episodes): query labels follow the sorted test/ folder whatever
the order of class_labels.txt; links out of the episodes folder are refused, as data_prep.folder
refuses them; the standard error over episodes is the sample one."""

import math
import os

import pytest

from anil.data import DatasetError
from anil.run.evaluate import standard_error
from data_prep import episodes
from data_prep.images import Preprocess
from prep_fixtures import make_runs_folder, runs_pairing

OMNIGLOT = Preprocess(28, 1, invert=True)


def test_query_labels_follow_the_query_files_not_the_line_order(tmp_path):
    pairing = runs_pairing(runs=1, classes=5, seed=4)
    folder = make_runs_folder(tmp_path / "runs", pairing)
    labels_file = folder / "run01" / "class_labels.txt"
    lines = labels_file.read_text().splitlines()
    labels_file.write_text("\n".join([*lines[3:], *lines[:3]][::-1]) + "\n")  # any order
    (e,) = episodes.read_episodes(folder, OMNIGLOT)
    assert e.query_files == [f"run01/test/item{k:02d}.png" for k in range(1, 6)]
    assert e.query_labels.tolist() == [j - 1 for j in pairing["run01"]]


@pytest.mark.parametrize("link", ["run01/test/item02.png", "run01/training/class01.png",
                                  "run01/class_labels.txt", "run01"])
def test_a_link_out_of_the_episodes_folder_is_refused(tmp_path, link):
    folder = make_runs_folder(tmp_path / "runs", runs_pairing(runs=1, classes=3))
    outside = tmp_path / "elsewhere"
    (folder / link).rename(outside)
    os.symlink(outside, folder / link)
    with pytest.raises(DatasetError, match=rf"{link} is a symbolic link pointing outside "
                                           rf".*runs \(not followed\)"):
        episodes.read_episodes(folder, OMNIGLOT)


def test_the_standard_error_is_the_sample_one():
    # s = √(Σ(x − x̄)² / (n − 1)): for 0 and 100, s = 70.71..., s / √2 = 50 (the population
    # formula would give 35.36).
    assert standard_error([0.0, 100.0]) == pytest.approx(50.0, rel=1e-15)
    assert standard_error([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3) / 2, rel=1e-15)
    assert math.isnan(standard_error([7.0]))
