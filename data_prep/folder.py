"""A folder of one's own images -> the prepared format, ready for ``train.py --data``.

    python -m data_prep.folder --source photos --out data/my-photos --size 84
    python -m data_prep.folder --source drawings --out data/my-glyphs --size 28 --grayscale --invert

Classes. Each folder under ``--source`` that directly holds image files is one class, named by
its path relative to ``--source`` with ``/`` between parts: ``cat/`` is the class ``cat``, and
``alphabet/character01/`` is the class ``alphabet/character01`` (nesting as deep as you like).
Image files are recognised by extension, the same list as torchvision's ImageFolder
(.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp, in any letter case). Classes and the files of a
class are taken in sorted order, so the same folder always gives the same dataset.

Split. Classes (not images) are split into train/val/test (``--split``, default 0.64,0.16,0.20,
mini-ImageNet's 64/16/20): the sorted class names are shuffled by ``random.Random(--seed)`` and cut
in that order; each split's size is its fraction of the classes rounded by largest remainder.
Train and val must each get at least one class; a test fraction of 0 (``--split 0.8,0.2,0``) writes
no test split, for data whose test set is a set of fixed episodes (``evaluate.py RUN --episodes``).

Images. Each image is converted by ``data_prep.images`` (decoded, turned upright by its EXIF
tag, transparency onto white, to 1 channel with ``--grayscale`` or 3, resized to S × S with
LANCZOS -- stretched, the aspect ratio is not kept -- and, with ``--invert``, 255 − x) and the
conversion is recorded in meta.json as ``"preprocess"``, so that new images can be converted the
same way at evaluation time.

Bad input never stops the preparation half-way and never leaves a half-written dataset:

* a file that is not an image (extension), cannot be decoded (corrupt, truncated, an image
  extension on something else) or exceeds Pillow's decompression-bomb limit is skipped;
* a symbolic link that points outside ``--source`` is skipped and never followed; a link to a
  folder is never followed (a folder inside ``--source`` is read where it is); a link to a file
  inside ``--source`` is read as an image of the folder holding the link;
* hidden files and folders (name starting with ``.``), and images lying directly in
  ``--source`` rather than in a class folder, are skipped;
* a class with fewer than ``--min-images`` readable images (default 2: one support and one query
  image, the least a 1-shot task needs) is left out.

All of these are listed in the report printed at the end. The dataset is written only once
everything has been read, into a temporary folder renamed into place (``anil.data.write_prepared``).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anil.data import SPLITS, DatasetError, read_meta, write_prepared
from anil.argtypes import seed as seed_arg

from .common import PrepError, physical_memory, run_cli
from .images import IMAGE_EXTENSIONS, UNREADABLE, ImageReadError, Preprocess, is_image_name, read_image

DEFAULT_SPLIT = (0.64, 0.16, 0.20)
DEFAULT_MIN_IMAGES = 2
MAX_SIZE = 2048  # a typo such as --size 8400 would otherwise try to allocate terabytes

# Why a file or folder was skipped (besides data_prep.images' UNREADABLE and BOMB).
NOT_IMAGE = "not an image file (extension)"
HIDDEN = "hidden (name starts with '.')"
AT_TOP = "image directly in --source (not in a class folder)"
LINK_OUTSIDE = "symbolic link pointing outside --source (not followed)"
LINK_TO_FOLDER = "symbolic link to a folder (not followed; a folder inside --source is read where it is)"
BROKEN_LINK = "broken symbolic link"
NOT_REGULAR = "not a regular file (device, pipe or socket)"
UNLISTABLE = "folder that cannot be listed"


@dataclass
class Skipped:
    reason: str
    path: str  # relative to --source
    detail: str = ""


@dataclass
class Scan:
    """What a walk of --source found: image files per class, and what it skipped."""

    # class name -> [(path relative to --source, file to read)], sorted by name
    classes: dict[str, list[tuple[str, Path]]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class Report:
    """The outcome of a preparation, printed by ``lines()``."""

    path: Path
    classes: dict[str, list[str]]  # split -> class names
    images_per_class: list[int]  # over the kept classes
    skipped: list[Skipped]
    excluded: list[tuple[str, int]]  # (class name, readable images) below --min-images
    min_images: int

    def skipped_by_reason(self) -> dict[str, list[Skipped]]:
        out: dict[str, list[Skipped]] = {}
        for s in self.skipped:
            out.setdefault(s.reason, []).append(s)
        return out

    def lines(self, examples: int = 3) -> list[str]:
        counts = np.asarray(self.images_per_class)
        out = [f"wrote {self.path}: " + ", ".join(f"{s} {_count(len(c), 'class')}" for s, c in self.classes.items())
               + f"; {int(counts.sum())} images",
               f"images per class: min {counts.min()}, median {np.median(counts):g}, max {counts.max()}"]
        out.append(f"skipped {_count(len(self.skipped), 'entry')}" + (":" if self.skipped else ""))
        for reason, items in self.skipped_by_reason().items():
            shown = "; ".join(s.path + (f" ({s.detail})" if s.detail else "") for s in items[:examples])
            more = f"; and {len(items) - examples} more" if len(items) > examples else ""
            out.append(f"  {len(items)} {reason}: {shown}{more}")
        out.append(f"excluded {_count(len(self.excluded), 'class')} with fewer than {self.min_images} images"
                   + (": " + ", ".join(f"{c} ({n})" for c, n in self.excluded) if self.excluded else ""))
        return out


def _count(n: int, noun: str) -> str:
    plural = {"class": "classes", "entry": "entries"}.get(noun, noun + "s")
    return f"{n} {noun if n == 1 else plural}"


# ---------------------------------------------------------------------------------- walking


def scan(source: Path) -> Scan:
    """Walk ``source`` without following links; see the module docstring for the rules."""
    top = source.resolve()
    found = Scan()
    folders = [top]
    while folders:
        folder = folders.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            found.skipped.append(Skipped(UNLISTABLE, _relative(folder, top), e.strerror or str(e)))
            continue
        for entry in entries:
            path = Path(entry.path)
            rel = _relative(path, top)
            if entry.name.startswith("."):
                found.skipped.append(Skipped(HIDDEN, rel))
                continue
            target = path
            if entry.is_symlink():
                target = Path(os.path.realpath(path))
                if not target.exists():
                    found.skipped.append(Skipped(BROKEN_LINK, rel))
                    continue
                if not target.is_relative_to(top):
                    found.skipped.append(Skipped(LINK_OUTSIDE, rel, f"-> {target}"))
                    continue
                if target.is_dir():
                    found.skipped.append(Skipped(LINK_TO_FOLDER, rel))
                    continue
            elif entry.is_dir(follow_symlinks=False):
                folders.append(path)
                continue
            try:
                regular = stat.S_ISREG(os.stat(target).st_mode)
            except OSError as e:
                found.skipped.append(Skipped(UNREADABLE, rel, e.strerror or str(e)))
                continue
            if not regular:  # opening a named pipe would wait forever
                found.skipped.append(Skipped(NOT_REGULAR, rel))
            elif not is_image_name(entry.name):
                found.skipped.append(Skipped(NOT_IMAGE, rel))
            elif folder == top:
                found.skipped.append(Skipped(AT_TOP, rel))
            else:
                found.classes.setdefault(_relative(folder, top), []).append((rel, target))
    found.classes = {name: found.classes[name] for name in sorted(found.classes)}
    return found


def _relative(path: Path, top: Path) -> str:
    return "/".join(path.relative_to(top).parts) or "."


# -------------------------------------------------------------------------------- splitting


def split_counts(num_classes: int, fractions) -> list[int]:
    """Classes per split: each fraction of ``num_classes``, rounded by largest remainder (the
    rounded counts add up to ``num_classes``; ties go to the earlier split)."""
    exact = [f * num_classes for f in fractions]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[:num_classes - sum(counts)]:
        counts[i] += 1
    return counts


def split_classes(names: list[str], fractions, seed: int) -> dict[str, list[str]]:
    """Sorted ``names`` shuffled by ``random.Random(seed)``, cut by ``split_counts``; each split's
    names sorted. A split left with no class is a PrepError, except a test split whose fraction
    is 0: it is left out."""
    counts = split_counts(len(names), fractions)
    wanted = [n for n, f in zip(counts, fractions) if f > 0]
    if min(wanted) == 0:
        empty = SPLITS[counts.index(0)]
        raise PrepError(
            f"{len(names)} classes split by {','.join(f'{f:g}' for f in fractions)} leave the {empty} split "
            f"with no class; every split needs at least one: add classes, or change --split (each "
            f"fraction at least 1/{len(names)})")
    order = sorted(names)
    random.Random(seed).shuffle(order)
    out, start = {}, 0
    for split, n, f in zip(SPLITS, counts, fractions):
        if f > 0:
            out[split] = sorted(order[start:start + n])
        start += n
    return out


# ------------------------------------------------------------------------------- preparing


def check_out(source: Path, out: Path) -> None:
    """Refuse an --out that would mix with --source or replace something that is not a dataset."""
    top = source.resolve()
    out = Path(os.path.abspath(out))
    if out.is_symlink():
        raise PrepError(f"--out {out} is a symbolic link; give the folder's real path")
    real = out.parent.resolve() / out.name
    if real.is_relative_to(top):
        raise PrepError(f"--out {out} is inside --source {source}: the dataset would be mixed with your "
                        f"images; choose an --out outside {source}")
    if top.is_relative_to(real):
        raise PrepError(f"--source {source} is inside --out {out}: writing the dataset would replace "
                        f"your images; choose another --out")
    if out.is_file():
        raise PrepError(f"--out {out} is an existing file; choose a new folder name")
    if out.is_dir() and any(out.iterdir()):
        try:
            read_meta(out)
        except DatasetError:
            raise PrepError(f"--out {out} is an existing folder that is not a prepared dataset; it would "
                            f"be replaced: choose a new folder name, or move it away") from None


def read_classes(found: Scan, preprocess: Preprocess, min_images: int):
    """Convert every image: (images uint8 [n, S, S, C], {class: row indices}, excluded classes)."""
    total = sum(len(files) for files in found.classes.values())
    print(f"reading {total} images in {len(found.classes)} classes ...", flush=True)
    s, c = preprocess.size, preprocess.channels
    need, memory = 2 * total * s * s * c, physical_memory()  # the images, then the splits' copies
    if memory is not None and need > memory:
        raise PrepError(f"{total} images of {s}x{s}x{c} need about {need / 2**30:.3g} GiB of memory "
                        f"to prepare, more than this machine's {memory / 2**30:.3g} GiB; use a "
                        f"smaller --size")
    images = np.empty((total, s, s, c), np.uint8)
    rows, excluded, n = {}, [], 0
    for name, files in found.classes.items():
        start = n
        for rel, path in files:
            try:
                images[n] = read_image(path, preprocess)
                n += 1
            except ImageReadError as e:
                found.skipped.append(Skipped(e.reason, rel, e.detail))
        if n - start < min_images:
            excluded.append((name, n - start))
            n = start  # its rows are overwritten by the next class
        else:
            rows[name] = np.arange(start, n)
    return images[:n], rows, excluded


def prepare(source: Path, out: Path, size: int, grayscale: bool = False, invert: bool = False,
            fractions=DEFAULT_SPLIT, seed: int = 0, min_images: int = DEFAULT_MIN_IMAGES) -> Report:
    """Prepare ``source`` as the dataset folder ``out``; returns the report (also printed)."""
    source, out = Path(source), Path(out)
    if not source.exists():
        raise PrepError(f"--source {source} does not exist; give the folder that holds one sub-folder per class")
    if not source.is_dir():
        raise PrepError(f"--source {source} is not a folder; give the folder that holds one sub-folder per class")
    check_out(source, out)
    preprocess = Preprocess(size, 1 if grayscale else 3, invert)
    try:  # an unreadable --source is not one without images
        with os.scandir(source):
            pass
    except OSError as e:
        raise PrepError(f"--source {source} cannot be read ({e.strerror or e}); fix its "
                        f"permissions, or give a folder you may read") from None
    found = scan(source)
    if not found.classes:
        raise PrepError(f"--source {source} holds no image files in class sub-folders ({len(found.skipped)} "
                        f"other entries); put each class's images ({' '.join(IMAGE_EXTENSIONS)}) in its own "
                        f"sub-folder, e.g. {source}/cat/1.jpg")
    images, rows, excluded = read_classes(found, preprocess, min_images)
    if not rows:
        raise PrepError(f"no class under {source} has {min_images} or more readable images "
                        f"({len(excluded)} classes, {len(found.skipped)} files skipped); add images, or "
                        f"lower --min-images")
    classes = split_classes(list(rows), fractions, seed)
    splits = {}
    for split, names in classes.items():
        index = np.concatenate([rows[n] for n in names])
        labels = np.repeat(np.arange(len(names)), [len(rows[n]) for n in names])
        splits[split] = (images[index], labels, names)
    del images  # each split holds its own copy now
    found.skipped.sort(key=lambda s: s.path)
    skipped_counts: dict[str, int] = {}
    for s in found.skipped:
        skipped_counts[s.reason] = skipped_counts.get(s.reason, 0) + 1
    meta = {"source": f"a folder of images ({source.resolve()})",
            "split": f"classes: sorted names shuffled by random.Random({seed}), cut "
                     f"{'/'.join(f'{f:g}' for f in fractions)} (train/val/test)",
            "preprocess": preprocess.to_meta(),
            "min_images": min_images,
            "excluded_classes": [name for name, _ in excluded],
            "skipped_files": skipped_counts}
    out_abs = Path(os.path.abspath(out))
    path = write_prepared(out_abs.parent, out_abs.name, splits, meta)
    report = Report(path, classes, [len(rows[n]) for n in sorted(rows)], found.skipped, excluded, min_images)
    print("\n".join(report.lines()))
    return report


# ------------------------------------------------------------------------------ command line


def size_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of pixels, got {text!r}") from None
    if not 1 <= value <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_SIZE} pixels, got {value}")
    return value


def fractions_arg(text: str) -> tuple[float, float, float]:
    hint = "give three fractions train,val,test that sum to 1, e.g. 0.64,0.16,0.20"
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not three numbers; {hint}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r} has {len(values)} values; {hint}")
    if not (all(0 < v < 1 for v in values[:2]) and 0 <= values[2] < 1):  # also rejects nan and inf
        raise argparse.ArgumentTypeError(f"{text!r}: train and val must lie strictly between 0 and 1 "
                                         f"(they need classes), test from 0 to 1 (0: no test split); {hint}")
    if abs(sum(values) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"{text!r} sums to {sum(values):g}; {hint}")
    return values


def min_images_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be 2 or more (a task needs a support and a query image "
                                         f"of each class), got {value}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="folder with one sub-folder of images per class")
    parser.add_argument("--out", type=Path, required=True,
                        help="the prepared dataset folder to write (e.g. data/my-photos); not inside --source")
    parser.add_argument("--size", type=size_arg, required=True, help="images are resized to SIZE x SIZE pixels")
    parser.add_argument("--grayscale", action="store_true", help="1 channel (default: 3, RGB)")
    parser.add_argument("--invert", action="store_true",
                        help="store 255 - x: dark drawings on light paper become bright on dark, like Omniglot")
    parser.add_argument("--split", type=fractions_arg, default=DEFAULT_SPLIT, metavar="TRAIN,VAL,TEST",
                        help="fractions of the classes per split (default 0.64,0.16,0.20); a test "
                        "fraction of 0 writes no test split (test on fixed episodes instead)")
    parser.add_argument("--seed", type=seed_arg, default=0, help="seed of the class split (default 0)")
    parser.add_argument("--min-images", type=min_images_arg, default=DEFAULT_MIN_IMAGES,
                        help="leave out classes with fewer readable images (default 2)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    prepare(args.source, args.out, args.size, args.grayscale, args.invert, args.split, args.seed,
            args.min_images)
    print(f"done in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    sys.exit(run_cli(main))
