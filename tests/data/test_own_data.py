"""From a folder of one's own images to a trained and tested ANIL, end to end, and fixed
episodes scored by evaluate.py --episodes (the layout of the Omniglot one-shot runs)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from data_prep import glyphs

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--iterations", "3", "--meta-batch", "2", "--hidden", "8", "--eval-tasks", "4",
        "--val-tasks", "4", "--val-every", "2", "--log-every", "1"]


def run(*args, cwd):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """12 classes of 6 glyph images each, as PNG files in nested class folders, prepared with
    data_prep.folder and trained on with train.py --data."""
    base = tmp_path_factory.mktemp("own")
    images = glyphs.generate(seed=3, split=(12, 0, 0), instances=6)  # [12, 6, 28, 28]
    for c, block in enumerate(images):
        folder = base / "photos" / f"alphabet{c % 2}" / f"character{c:02d}"
        folder.mkdir(parents=True)
        for i, image in enumerate(block):
            Image.fromarray(image).save(folder / f"{i}.png")
    prepared = run("-m", "data_prep.folder", "--source", base / "photos", "--out",
                   base / "data" / "mine", "--size", "28", "--grayscale", "--split",
                   "0.5,0.25,0.25", cwd=ROOT)
    assert prepared.returncode == 0, prepared.stderr
    trained = run(ROOT / "train.py", "--data", base / "data" / "mine", "--ways", "3", *TINY, cwd=base)
    assert trained.returncode == 0, trained.stderr
    return base, images, trained.stdout


def test_train_on_a_prepared_folder_records_the_dataset(own):
    base, _, stdout = own
    run_folder = base / "runs" / "mine-3w1s"  # named after the dataset folder
    summary = json.loads((run_folder / "summary.json").read_text())
    assert summary["dataset"]["name"] == "mine"
    assert summary["dataset"]["path"] == str(base / "data" / "mine")
    assert summary["config"]["data"] == str(base / "data" / "mine")
    assert (summary["config"]["channels"], summary["config"]["image_size"]) == (1, 28)
    assert "ANIL on mine: 3-way 1-shot" in stdout
    evaluated = run(ROOT / "evaluate.py", run_folder, cwd=base)
    assert evaluated.returncode == 0, evaluated.stderr
    assert (f"test accuracy {100 * summary['test_accuracy']:.2f} ± {100 * summary['test_ci95']:.2f}%"
            in evaluated.stdout)


def write_runs(folder: Path, images, runs=2, ways=3, shift=0):
    """Runs in the Omniglot one-shot layout; each query is its support image (``shift=0``) or
    the next class's (``shift=1``)."""
    for r in range(1, runs + 1):
        run_dir = folder / f"run{r:02d}"
        (run_dir / "training").mkdir(parents=True)
        (run_dir / "test").mkdir()
        lines = []
        for j in range(ways):
            c = (r * ways + j) % len(images)
            Image.fromarray(images[c][0]).save(run_dir / "training" / f"class{j + 1:02d}.png")
            Image.fromarray(images[c][0]).save(run_dir / "test" / f"item{j + 1:02d}.png")
            paired = (j + shift) % ways
            lines.append(f"run{r:02d}/test/item{j + 1:02d}.png run{r:02d}/training/class{paired + 1:02d}.png")
        (run_dir / "class_labels.txt").write_text("\n".join(lines) + "\n")


def test_fixed_episodes_with_queries_equal_to_their_support_score_zero_error(own):
    """A query identical to its support image has the same features (batch norm over the
    episode), so once the head has fitted the support set, no error. Three points in general
    position in the 8 features are linearly separable, and gradient descent on the cross-entropy
    separates them; 300 steps of α = 2 are plenty for the tiny network here."""
    base, images, _ = own
    write_runs(base / "episodes", images)
    r = run(ROOT / "evaluate.py", base / "runs" / "mine-3w1s", "--episodes", base / "episodes",
            "--test-inner-steps", "300", "--inner-lr", "2", cwd=base)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [l.split()[0] for l in lines[1:3]] == ["run01", "run02"]
    assert all(l.endswith("error   0.00%") for l in lines[1:3]), lines
    assert lines[-1] == "mean error 0.00 ± 0.00% (± one standard error over 2 episodes)"
    # Pair every query with another class's image: now every query is wrong.
    shutil.rmtree(base / "episodes")
    write_runs(base / "episodes", images, shift=1)
    r = run(ROOT / "evaluate.py", base / "runs" / "mine-3w1s", "--episodes", base / "episodes",
            "--test-inner-steps", "300", "--inner-lr", "2", cwd=base)
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("mean error 100.00 ± 0.00%")


def test_episodes_need_a_dataset_that_records_its_preprocessing(own, glyph_root):
    """The built-in glyphs are generated, not converted from files: no preprocessing to apply."""
    base, images, _ = own
    out = base / "glyph-run"
    trained = run(ROOT / "train.py", "--data-root", glyph_root, *TINY, "--out", out, cwd=base)
    assert trained.returncode == 0, trained.stderr
    write_runs(base / "eps2", images)
    r = run(ROOT / "evaluate.py", out, "--episodes", base / "eps2", cwd=base)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "data_prep.folder and data_prep.omniglot" in r.stderr.strip().splitlines()[-1]


def test_one_episode_has_no_standard_error_and_says_so(own):
    base, images, _ = own
    write_runs(base / "one-episode", images, runs=1)
    r = run(ROOT / "evaluate.py", base / "runs" / "mine-3w1s", "--episodes", base / "one-episode",
            "--test-inner-steps", "1", cwd=base)
    assert r.returncode == 0, r.stderr
    last = r.stdout.splitlines()[-1]
    assert "nan" not in last and last.startswith("error ") and "one episode: no standard error" in last
