"""The built-in dataset: procedural Omniglot-like handwritten glyphs, generated in seconds.

Each class is a "character": 1 to 4 random pen strokes, each a cubic Bézier curve. Each instance
is that character redrawn by a different "hand": every control point jittered (shape), the whole
glyph rotated, scaled, sheared and shifted (pose), and drawn with its own pen width. Strokes are
drawn with a round pen at 4× resolution and LANCZOS-downsampled (anti-aliased), bright on dark
like prepared Omniglot, 28×28 grayscale.

Deterministic from the seed: the same seed and Pillow version give the same bytes. Written in the prepared format of ``anil.data`` (default: ./data/glyphs).

    python -m data_prep.glyphs --root data

``ensure`` (what train.py and the other tools call) generates the dataset on first use. Two
processes started at once on a fresh machine (two ``python train.py``) do not both write it: one
generates while the other waits for it (up to ``ENSURE_WAIT_S``) and then uses its result.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from anil.data import DatasetError, describe_os_error, lock_dataset, read_meta, write_prepared
from anil.argtypes import seed as seed_arg

from .common import run_cli

NAME = "glyphs"
DEFAULT_ROOT = Path("data")
SEEDS = 2 ** 32  # seeds lie in [0, 2**32), like every seed of the project
# How long ensure() waits for another process generating the dataset: generating took 15 s on
# an idle 2-core machine and 48 s on one loaded 2.5x over, so only a stuck process runs out.
ENSURE_WAIT_S = 600.0
DEFAULT_SPLIT = (1100, 100, 423)  # like Omniglot's MAML split of 1623 characters
INSTANCES = 20  # like Omniglot's 20 drawers
SIZE = 28
CURVE_POINTS = 12  # points sampled along each Bézier stroke (11 segments)
MAX_STROKES = 4
SUPERSAMPLE = 4
# Per-instance variation ("different hands"): control-point noise and pose, in glyph units
# ([-1, 1] spans the image) and radians. Larger values make the few-shot problem harder.
JITTER = {"point": 0.12, "rotation": 0.22, "scale": (0.7, 1.05), "shear": 0.18, "shift": 0.1}


def make_characters(rng: np.random.Generator, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Control points [classes, MAX_STROKES, 4, 2] in [-1, 1]² and stroke mask [classes, MAX_STROKES]."""
    num_strokes = rng.choice([1, 2, 3, 4], size=num_classes, p=[0.15, 0.35, 0.3, 0.2])
    mask = np.arange(MAX_STROKES)[None, :] < num_strokes[:, None]
    start = rng.uniform(-0.7, 0.7, (num_classes, MAX_STROKES, 1, 2))
    # A pen-like walk: each control point a step from the last, the heading turning smoothly.
    heading = rng.uniform(0, 2 * np.pi, (num_classes, MAX_STROKES, 1))
    turns = np.cumsum(rng.normal(0, 1.0, (num_classes, MAX_STROKES, 3)), axis=-1)
    angles = heading + turns
    lengths = rng.uniform(0.3, 0.8, (num_classes, MAX_STROKES, 3))
    steps = np.stack([np.cos(angles), np.sin(angles)], -1) * lengths[..., None]
    points = np.concatenate([start, start + np.cumsum(steps, axis=2)], axis=2)
    return np.clip(points, -1, 1), mask


def draw_instances(rng: np.random.Generator, points: np.ndarray, mask: np.ndarray,
                   instances: int) -> np.ndarray:
    """Render ``instances`` jittered copies of each character: uint8 [classes, instances, 28, 28]."""
    c = len(points)
    # Shape: each control point moves independently.
    p = points[:, None] + rng.normal(0, JITTER["point"], (c, instances) + points.shape[1:])
    # Pose: one affine map per instance (rotation, anisotropic scale, shear, shift).
    theta = rng.normal(0, JITTER["rotation"], (c, instances))
    scale = rng.uniform(*JITTER["scale"], (c, instances, 2))
    shear = rng.normal(0, JITTER["shear"], (c, instances))
    cos, sin = np.cos(theta), np.sin(theta)
    a = np.empty((c, instances, 2, 2))
    a[..., 0, 0] = scale[..., 0] * cos
    a[..., 0, 1] = scale[..., 1] * (shear * cos - sin)
    a[..., 1, 0] = scale[..., 0] * sin
    a[..., 1, 1] = scale[..., 1] * (shear * sin + cos)
    shift = rng.normal(0, JITTER["shift"], (c, instances, 1, 1, 2))
    p = np.einsum("cixy,cisky->ciskx", a, p) + shift
    # Bézier curves sampled at CURVE_POINTS, consecutive points joined by segments.
    t = np.linspace(0, 1, CURVE_POINTS)[:, None]
    basis = np.stack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t ** 2 * (1 - t), t ** 3], 1)[..., 0]
    curve = np.einsum("tk,ciskx->cistx", basis, p)  # [c, i, strokes, CURVE_POINTS, 2]
    # Draw at 4× resolution with a round pen, then LANCZOS-downsample: anti-aliased strokes.
    # [-1, 1] spans pixels 2..26 of the 28×28 image.
    big = SIZE * SUPERSAMPLE
    px = (curve * (SIZE - 4) / 2 + SIZE / 2) * SUPERSAMPLE  # pixel coordinates at 4×
    widths = rng.uniform(1.4, 2.6, (c, instances)) * SUPERSAMPLE  # pen width in 4× pixels
    out = np.empty((c, instances, SIZE, SIZE), np.uint8)
    for ci in range(c):
        strokes = np.flatnonzero(mask[ci])
        for ii in range(instances):
            canvas = Image.new("L", (big, big), 0)
            pen = ImageDraw.Draw(canvas)
            w = int(round(widths[ci, ii]))
            for s in strokes:
                line = [tuple(p) for p in px[ci, ii, s].tolist()]
                pen.line(line, fill=255, width=w, joint="curve")
                for x, y in (line[0], line[-1]):  # round caps
                    pen.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=255)
            out[ci, ii] = np.asarray(canvas.resize((SIZE, SIZE), Image.LANCZOS))
    return out


def check_seed(seed) -> int:
    """``seed`` if it is an integer in [0, 2**32), else ValueError. numpy would take any
    non-negative integer, but the project's seeds share one range (the one ``--seed`` accepts)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < SEEDS:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def generate(seed: int = 0, split=DEFAULT_SPLIT, instances: int = INSTANCES):
    """All images uint8 [classes, instances, 28, 28], classes in split order (train, val, test)."""
    rng = np.random.default_rng(check_seed(seed))
    points, mask = make_characters(rng, sum(split))
    return draw_instances(rng, points, mask, instances)


def prepare(root=DEFAULT_ROOT, seed: int = 0, split=DEFAULT_SPLIT, instances: int = INSTANCES) -> Path:
    """Generate and write the dataset to ``<root>/glyphs`` (atomically, holding its lock from
    the start: a second process at the same time gets a DatasetError); returns its path."""
    check_seed(seed)
    with lock_dataset(root, NAME):
        images = generate(seed, split, instances)
        splits, first = {}, 0
        for name, count in zip(("train", "val", "test"), split):
            block = images[first:first + count]
            labels = np.repeat(np.arange(count), instances)
            names = [f"glyph{first + i:04d}" for i in range(count)]
            splits[name] = (block.reshape(-1, SIZE, SIZE, 1), labels, names)
            first += count
        meta = {"source": "procedural glyphs (data_prep/glyphs.py)",
                "generator": {"seed": seed, "split": list(split), "instances": instances}}
        return write_prepared(root, NAME, splits, meta)


def _generated_with(path: Path) -> dict | None:
    try:
        return read_meta(path).get("generator")
    except DatasetError:
        return None


def ensure(root=DEFAULT_ROOT, seed: int = 0, verbose: bool = True, wait: float = ENSURE_WAIT_S) -> Path:
    """The path of the built-in dataset, generating it first if it is absent or was built
    with other settings.

    If another process is generating it, waits up to ``wait`` seconds for it and uses its
    result (a dataset that is already there is read without any lock). Every failure, a
    folder that cannot be written included, is a one-line DatasetError.
    """
    path = Path(root) / NAME
    wanted = {"seed": check_seed(seed), "split": list(DEFAULT_SPLIT), "instances": INSTANCES}
    if _generated_with(path) == wanted:
        return path
    try:
        with lock_dataset(root, NAME, wait=wait, on_wait=print if verbose else None):
            if _generated_with(path) == wanted:  # made by the process we waited for
                return path
            if verbose:
                print(f"generating the built-in glyph dataset in {path} (once) ...", flush=True)
            start = time.perf_counter()
            prepare(root, seed, DEFAULT_SPLIT, INSTANCES)
            if verbose:
                print(f"  done in {time.perf_counter() - start:.1f}s", flush=True)
    except OSError as e:
        raise DatasetError(f"cannot make the built-in dataset in {path}: {describe_os_error(e)}") from None
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder for prepared datasets")
    parser.add_argument("--seed", type=seed_arg, default=0, help="generator seed, in [0, 2**32)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = prepare(args.root, args.seed)
    print(f"wrote {path} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    sys.exit(run_cli(main))
