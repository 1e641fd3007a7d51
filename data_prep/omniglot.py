"""Omniglot (Lake et al. 2015): 1623 handwritten characters from 50 alphabets, each drawn by 20
people, as 28×28 grayscale with bright strokes on dark, written to ``<root>/omniglot``.

    python -m data_prep.omniglot --root data --download        # fetch the two zips (md5 checked)
    python -m data_prep.omniglot --root data --source DIR      # DIR holds images_{background,evaluation}.zip

Raw files: ``images_background.zip`` (30 alphabets, 964 characters) and ``images_evaluation.zip``
(20 alphabets, 659 characters) from github.com/brendenlake/omniglot, holding
``images_*/<alphabet>/characterNN/<id>_<drawer>.png``, 105×105 1-bit PNGs with black strokes on
white. Each image is resized to 28×28 with LANCZOS (as the MAML reference's resize_images.py) and
inverted so that strokes are bright (the MAML reference's ``1 - x``).

Splits (``--split``):

* ``maml`` (default), the MAML reference's convention: all 1623 characters shuffled with seed 1,
  the first 1100 for training, the next 100 for validation, the remaining 423 for test. The MAML
  code shuffles ``os.listdir`` order, which differs between filesystems; here the list is sorted
  (``<alphabet>/characterNN``) before the seeded shuffle, so the split is the same everywhere.
* ``vinyals``: 1028/172/423 characters by alphabet (Vinyals et al. 2016), from
  ``data_prep/splits/omniglot_vinyals.txt``.

Rotations (``--rotations``):

* ``augment`` (default, the MAML reference): nothing is added here; the ``omniglot`` preset
  makes the sampler rotate each class of each task by k·90°, k drawn per class per task.
* ``classes`` (torchmeta's convention): every character also appears rotated by 90°, 180° and
  270° as three more classes of its split (4× the classes), written to ``<root>/omniglot-rot``;
  train with ``--dataset omniglot-rot`` (no per-task rotation).
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from anil.data import write_prepared

from .common import PrepError, download, find_source, open_zip, read_list, run_cli, verify_md5

ARCHIVES = ("images_background.zip", "images_evaluation.zip")
URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
MD5 = {  # torchvision's Omniglot and torchmeta use the same values
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
SIZE = 28
NUM_CHARACTERS = 1623
MAML_SIZES = (1100, 100)  # train, val; test is the rest (423)
MAML_SEED = 1
HOW_TO_GET = (f"download them with --download, or get {' and '.join(ARCHIVES)} from {URL} and pass "
              f"their folder with --source")


def read_characters(folder: Path):
    """{"<alphabet>/characterNN": [(member name, png bytes), ...]} over both zips (drawers sorted),
    and {alphabet: the zip it came from}."""
    characters, archive_of = {}, {}
    for archive in ARCHIVES:
        path = folder / archive
        verify_md5(path, MD5[archive], f"delete it and {HOW_TO_GET}")
        top = archive.removesuffix(".zip")
        with open_zip(path) as zf:
            for info in zf.infolist():
                parts = PurePosixPath(info.filename).parts
                if info.is_dir() or len(parts) != 4 or parts[0] != top or not parts[3].endswith(".png"):
                    continue
                key = f"{parts[1]}/{parts[2]}"
                if archive_of.setdefault(parts[1], archive) != archive:
                    raise PrepError(f"alphabet {parts[1]!r} is in both {archive_of[parts[1]]} and "
                                    f"{archive}; these are not the Omniglot zips; {HOW_TO_GET}")
                try:
                    png = zf.read(info)
                except (zipfile.BadZipFile, OSError, EOFError) as e:
                    raise PrepError(f"{path}: member {info.filename} cannot be read ({e}); the zip is "
                                    f"corrupt, delete it and {HOW_TO_GET}") from None
                characters.setdefault(key, []).append((info.filename, png))
    if not characters:
        raise PrepError(f"{folder}: the zips hold no images_*/<alphabet>/<character>/*.png files; {HOW_TO_GET}")
    return {k: sorted(v) for k, v in sorted(characters.items())}, archive_of


def to_array(member: str, png: bytes) -> np.ndarray:
    """105×105 black-on-white PNG -> 28×28 uint8, strokes bright: 255 − LANCZOS(image)."""
    try:
        image = Image.open(io.BytesIO(png))
        image = image.convert("L").resize((SIZE, SIZE), Image.LANCZOS)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PrepError(f"{member} is not a readable PNG ({e}); the zip is corrupt, {HOW_TO_GET}") from None
    return 255 - np.asarray(image, dtype=np.uint8)


def maml_split(names: list[str], sizes=MAML_SIZES, seed: int = MAML_SEED) -> dict[str, list[str]]:
    """Sorted character list, shuffled by ``random.Random(seed)``; first 1100 train, next 100 val,
    the rest test (the MAML reference's data_generator.py, made filesystem-independent)."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_train, n_val = sizes
    if len(order) <= n_train + n_val:
        raise PrepError(f"found {len(order)} characters, the MAML split needs more than "
                        f"{n_train + n_val}; {HOW_TO_GET}")
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def vinyals_split(names: list[str], archive_of: dict[str, str]) -> dict[str, list[str]]:
    """Characters by alphabet as listed in ``splits/omniglot_vinyals.txt``."""
    rules = {}
    for line in read_list("omniglot_vinyals.txt"):
        split, archive, alphabet, chars = line.split("\t")
        lo, hi = (1, 10 ** 6) if chars == "all" else map(int, chars.split("-"))
        rules.setdefault(alphabet, []).append((lo, hi, split, f"images_{archive}.zip"))
    present = sorted(archive_of)
    for alphabet in present:
        if alphabet not in rules:
            raise PrepError(f"alphabet {alphabet!r} in {archive_of[alphabet]} is not in the Vinyals split "
                            f"list (data_prep/splits/omniglot_vinyals.txt); these are not the Omniglot zips")
    for alphabet, alphabet_rules in rules.items():
        if alphabet not in archive_of or archive_of[alphabet] != alphabet_rules[0][3]:
            raise PrepError(f"the Vinyals split list expects alphabet {alphabet!r} in {alphabet_rules[0][3]} "
                            f"but it is not there; the data does not match the split list; {HOW_TO_GET}")
    out = {"train": [], "val": [], "test": []}
    for name in sorted(names):
        alphabet, character = name.split("/")
        number = character.removeprefix("character")
        number = int(number) if number.isdigit() else -1
        split = next((s for lo, hi, s, _ in rules[alphabet] if lo <= number <= hi), None)
        if split is None:
            raise PrepError(f"character {name} is outside the ranges the Vinyals split list gives for "
                            f"{alphabet}; the data does not match the split list")
        out[split].append(name)
    return out


def prepare(root: Path, source: Path | None = None, fetch: bool = False, split: str = "maml",
            rotations: str = "augment", seed: int = MAML_SEED) -> Path:
    root = Path(root)
    if fetch:
        folder = root / "raw"
        for archive in ARCHIVES:
            download(URL + archive, folder / archive, MD5[archive])
    else:
        folder = find_source(source, root, list(ARCHIVES), HOW_TO_GET)
    characters, archive_of = read_characters(folder)
    drawers = {len(v) for v in characters.values()}
    if len(drawers) != 1:
        short = min(characters, key=lambda k: len(characters[k]))
        raise PrepError(f"character {short} has {len(characters[short])} drawings but others have "
                        f"{max(drawers)}; the zips are incomplete, {HOW_TO_GET}")
    if len(characters) != NUM_CHARACTERS:
        raise PrepError(f"{folder}: found {len(characters)} characters, Omniglot has {NUM_CHARACTERS}; "
                        f"the zips are incomplete, {HOW_TO_GET}")
    if split == "maml":
        classes = maml_split(list(characters), MAML_SIZES, seed)
    else:
        classes = vinyals_split(list(characters), archive_of)
    print(f"converting {len(characters)} characters x {drawers.pop()} drawers to {SIZE}x{SIZE} ...", flush=True)
    splits = {}
    for s, names in classes.items():
        images = np.stack([np.stack([to_array(m, png) for m, png in characters[n]]) for n in names])
        if rotations == "classes":  # [classes, drawers, H, W] -> [classes, 4, drawers, H, W]
            images = np.stack([np.rot90(images, k, axes=(2, 3)) for k in range(4)], axis=1)
            names = [n if k == 0 else f"{n}/rot{90 * k}" for n in names for k in range(4)]
            images = images.reshape(-1, *images.shape[2:])
        labels = np.repeat(np.arange(len(names)), images.shape[1])
        splits[s] = (images.reshape(-1, SIZE, SIZE, 1), labels, names)
    name = "omniglot-rot" if rotations == "classes" else "omniglot"
    meta = {"source": f"Omniglot ({folder / ARCHIVES[0]}, {folder / ARCHIVES[1]})",
            "split": f"MAML reference (sorted, random.Random({seed}).shuffle)" if split == "maml"
            else "Vinyals et al. 2016, data_prep/splits/omniglot_vinyals.txt",
            "rotations": "extra classes (k*90 degrees, k=1..3)" if rotations == "classes"
            else "none stored; per-task augmentation by the sampler (rotate=True)"}
    path = write_prepared(root, name, splits, meta)
    print(f"wrote {path}: " + ", ".join(f"{s} {len(v[2])} classes" for s, v in splits.items()))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("data"), help="folder of prepared datasets")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--source", type=Path, help="folder holding images_background.zip and "
                       "images_evaluation.zip (default: <root>/raw)")
    group.add_argument("--download", action="store_true", help="download both zips into <root>/raw (md5 checked)")
    parser.add_argument("--split", choices=["maml", "vinyals"], default="maml",
                        help="maml: 1100/100/423 seeded shuffle; vinyals: 1028/172/423 by alphabet")
    parser.add_argument("--rotations", choices=["augment", "classes"], default="augment",
                        help="augment: per-task rotations by the sampler; classes: 3 rotated copies as "
                        "extra classes, written to <root>/omniglot-rot")
    parser.add_argument("--seed", type=int, default=MAML_SEED, help="shuffle seed of the maml split")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    prepare(args.root, args.source, args.download, args.split, args.rotations, args.seed)
    print(f"done in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    sys.exit(run_cli(main))
