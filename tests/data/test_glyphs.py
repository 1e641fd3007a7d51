import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from anil.data import DatasetError, load_split, read_meta
from anil.lock import this_host
from data_prep import glyphs
from lock_holder import lock_held_elsewhere

ROOT = Path(__file__).resolve().parents[2]


def test_the_glyphs_are_a_function_of_the_seed():
    a = glyphs.generate(seed=5, split=(6, 0, 0))
    b = glyphs.generate(seed=5, split=(6, 0, 0))
    c = glyphs.generate(seed=6, split=(6, 0, 0))
    assert a.shape == (6, glyphs.INSTANCES, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_bright_strokes_on_dark_background():
    images = glyphs.generate(seed=0, split=(30, 0, 0)).astype(float) / 255
    ink = images.mean(axis=(2, 3))
    assert (ink > 0.01).all(), "every instance has strokes"
    assert np.median(images) == 0.0 and images.max() == 1.0
    assert 0.03 < ink.mean() < 0.25, "strokes cover a small part of the image, like Omniglot"
    assert len(np.unique(images)) > 50, "anti-aliased edges, not binary"


def test_instances_of_a_class_resemble_each_other_more_than_other_classes():
    images = glyphs.generate(seed=1, split=(40, 0, 0)).reshape(40, glyphs.INSTANCES, -1).astype(float)
    x = images - images.mean(-1, keepdims=True)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    flat = x.reshape(-1, x.shape[-1])
    corr = flat @ flat.T
    same = np.kron(np.eye(40), np.ones((glyphs.INSTANCES, glyphs.INSTANCES))).astype(bool)
    np.fill_diagonal(same, False)
    other = ~np.kron(np.eye(40), np.ones((glyphs.INSTANCES, glyphs.INSTANCES))).astype(bool)
    assert corr[same].mean() > corr[other].mean() + 0.15
    # ...but instances are not copies: within-class variation is substantial.
    assert corr[same].mean() < 0.8


def test_prepared_dataset_has_disjoint_splits_in_the_standard_format(glyph_root):
    path = glyph_root / glyphs.NAME
    meta = read_meta(path)
    names = {s: set(meta["splits"][s]["class_names"]) for s in ("train", "val", "test")}
    assert [len(names[s]) for s in ("train", "val", "test")] == list(glyphs.DEFAULT_SPLIT)
    assert sum(glyphs.DEFAULT_SPLIT) >= 1000
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
    split = load_split(path, "test")
    assert split.image_shape == (1, 28, 28) and (split.counts == glyphs.INSTANCES).all()
    assert isinstance(split.images, np.memmap)


def test_ensure_reuses_an_existing_dataset(glyph_root):
    path = glyph_root / glyphs.NAME
    stamp = (path / "meta.json").stat().st_mtime_ns
    assert glyphs.ensure(glyph_root, verbose=False) == path
    assert (path / "meta.json").stat().st_mtime_ns == stamp


SLOW_ENSURE = """
import sys, time
from data_prep import glyphs
glyphs.DEFAULT_SPLIT, glyphs.INSTANCES = (6, 2, 2), 3
generate = glyphs.generate
glyphs.generate = lambda *a: (time.sleep(3), generate(*a))[1]  # slow, while holding the lock
glyphs.ensure(sys.argv[1])
"""


def test_two_processes_ensuring_at_once_generate_it_once(tmp_path, monkeypatch, capsys):
    """`python train.py` twice on a fresh machine: the second waits and uses the first's result."""
    first = subprocess.Popen([sys.executable, "-c", SLOW_ENSURE, str(tmp_path)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / ".glyphs.lock").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.02)
        monkeypatch.setattr(glyphs, "DEFAULT_SPLIT", (6, 2, 2))
        monkeypatch.setattr(glyphs, "INSTANCES", 3)
        path = glyphs.ensure(tmp_path)
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, err
    ours = capsys.readouterr().out
    assert f"waiting for PID {first.pid} on " in ours and "generating" not in ours
    assert "generating the built-in glyph dataset" in out
    assert read_meta(path)["generator"] == {"seed": 0, "split": [6, 2, 2], "instances": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["glyphs"]


def test_ensure_gives_up_on_a_holder_that_does_not_finish(tmp_path):
    with lock_held_elsewhere(tmp_path / "glyphs") as holder:
        with pytest.raises(DatasetError) as e:
            glyphs.ensure(tmp_path, verbose=False, wait=0.3)
    assert str(e.value) == (
        f"another process (PID {holder.pid} on {this_host()}) is writing the dataset {tmp_path / 'glyphs'} "
        f"and has not finished after 0.3 s; wait for it to finish, or stop it")
