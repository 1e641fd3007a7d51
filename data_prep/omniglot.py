"""Omniglot (Lake et al. 2015): 1623 handwritten characters from 50 alphabets, each drawn by 20
people, as 28×28 grayscale with bright strokes on dark, written to ``<root>/omniglot``; and the
20 one-shot classification runs of the Omniglot authors, written to ``<root>/omniglot-runs``.

    python -m data_prep.omniglot --root data --download        # fetch the two zips (md5 checked)
    python -m data_prep.omniglot --root data --source DIR      # DIR holds images_{background,evaluation}.zip
    python -m data_prep.omniglot --root data --source DIR --background small1          # -> data/omniglot-small1
    python -m data_prep.omniglot --root data --source DIR --background small1 small2   # -> ...-small1-small2
    python -m data_prep.omniglot --root data --source DIR --runs                       # -> data/omniglot-runs

Raw files (``data_prep.omniglot_files``): ``images_background.zip`` (30 alphabets, 964
characters) and ``images_evaluation.zip`` (20 alphabets, 659 characters) from
github.com/brendenlake/omniglot, holding ``images_*/<alphabet>/characterNN/<id>_<drawer>.png``,
105×105 1-bit PNGs with black strokes on white. Each image is resized to 28×28 with LANCZOS (as
the MAML reference's resize_images.py) and inverted so that strokes are bright (the MAML
reference's ``1 - x``); this conversion is ``data_prep.images`` with ``PREPROCESS`` and is
recorded in meta.json as ``"preprocess"``, so that the one-shot runs (raw PNGs) can be converted
the same way at evaluation time.

Background set (``--background``):

* ``full`` (default): ``images_background.zip``, with ``images_evaluation.zip`` (both required).
* ``small1`` / ``small2`` / ``small1 small2``: the authors' two "minimal" background sets,
  ``images_background_small1.zip`` (5 alphabets, 136 characters) and
  ``images_background_small2.zip`` (5 alphabets, 156 characters), for learning from few
  alphabets; both together hold 242 distinct characters, since they share Greek and Latin (50
  characters, byte for byte: kept once, after checking that they are identical). Written to
  ``<root>/omniglot-small1`` (``-small2``, ``-small1-small2``). ``images_evaluation.zip`` is
  optional here: present, it is the test split; absent, there is no test split, and a trained
  run is tested on the authors' 20 one-shot runs (``--runs``, then ``evaluate.py RUN
  --episodes``), Lake et al.'s protocol.

Splits (``--split``, ``data_prep.omniglot_splits``):

* ``maml`` (default with the full background), the MAML reference's convention: all 1623
  characters shuffled with seed 1, the first 1100 for training, the next 100 for validation, the
  remaining 423 for test. The MAML code shuffles ``os.listdir`` order, which differs between
  filesystems; here the list is sorted (``<alphabet>/characterNN``) before the seeded shuffle, so
  the split is the same everywhere.
* ``vinyals``: 1028/172/423 characters by alphabet (Vinyals et al. 2016), from
  ``data_prep/splits/omniglot_vinyals.txt``.
* ``lake`` (the only split of a minimal background set), the Omniglot authors' protocol: learn on
  the background alphabets, test on the evaluation alphabets (all 659 characters, the alphabets
  of the one-shot runs). A validation hold-out of 20% of the background characters (sorted, then
  shuffled by ``random.Random(--seed)``) is kept out of training for model selection.

Rotations (``--rotations``):

* ``augment`` (default, the MAML reference): nothing is added here; the ``omniglot`` preset
  makes the sampler rotate each class of each task by k·90°, k drawn per class per task.
* ``classes`` (torchmeta's convention): every character also appears rotated by 90°, 180° and
  270° as three more classes of its split (4× the classes), written to ``<root>/omniglot-rot``
  (``omniglot-small1-rot``, ...); train with ``--dataset omniglot-rot`` (no per-task rotation).

One-shot runs (``--runs``, ``data_prep.omniglot_runs``): ``all_runs.zip`` laid out as
``<root>/omniglot-runs/run01 .. run20/{training/classNN.png, test/itemNN.png, class_labels.txt}``.

Every zip present is md5-checked before a missing one is reported, so a corrupt file is never
hidden behind a missing optional one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from anil.data import write_prepared
from anil.argtypes import seed as seed_arg

from .common import PrepError, download, run_cli
from .images import ImageReadError, Preprocess, read_image
from .omniglot_files import (ARCHIVES, BACKGROUNDS, EVALUATION, HOW_TO_GET, MD5, URL, Characters,  # noqa: F401
                             archive_folder, check_archive, how_to_get, read_characters, require)
from .omniglot_runs import RUNS_NAME, prepare_runs
from .omniglot_splits import lake_split, maml_split, vinyals_split

SIZE = 28
PREPROCESS = Preprocess(SIZE, channels=1, invert=True)
NUM_CHARACTERS = 1623  # the full set: 964 background + 659 evaluation
SMALL_CHARACTERS = {"small1": 136, "small2": 156}  # each zip's own count, the shared ones included
EVALUATION_CHARACTERS = 659
MAML_SIZES = (1100, 100)  # train, val; test is the rest (423)
MAML_SEED = 1
LAKE_VAL_FRACTION = 0.2  # of the background characters; 136 -> 27, enough for 20-way validation


def background_names(background) -> tuple[str, ...]:
    """``"full"``, ``"small1"`` or a list of names -> the sorted tuple of distinct names; ``full``
    only alone."""
    names = (background,) if isinstance(background, str) else tuple(background)
    if not names or any(n not in BACKGROUNDS for n in names) or len(set(names)) != len(names):
        raise PrepError(f"--background {' '.join(names)}: give full, small1, small2 or small1 small2, "
                        f"each once")
    if "full" in names and len(names) > 1:
        raise PrepError("--background full already holds the minimal sets' alphabets; give full alone, "
                        "or small1 and/or small2")
    return tuple(sorted(names))


def to_array(member: str, png: bytes) -> np.ndarray:
    """105×105 black-on-white PNG -> 28×28 uint8, strokes bright: 255 − LANCZOS(image)
    (``data_prep.images`` with ``PREPROCESS``, the conversion the one-shot runs get too)."""
    try:
        return read_image(png, PREPROCESS)[..., 0]
    except ImageReadError as e:
        raise PrepError(f"{member} is {e}; the zip is corrupt, {HOW_TO_GET}") from None


def check_counts(characters: Characters, full: bool, folder: Path) -> None:
    """Every character has the same number of drawings, and each zip holds all its characters."""
    drawings = characters.drawings
    drawers = {len(v) for v in drawings.values()}
    if len(drawers) != 1:
        short = min(drawings, key=lambda k: len(drawings[k]))
        raise PrepError(f"character {short} has {len(drawings[short])} drawings but others have "
                        f"{max(drawers)}; the zips are incomplete, {HOW_TO_GET}")
    if full:
        if len(drawings) != NUM_CHARACTERS:
            raise PrepError(f"{folder}: found {len(drawings)} characters, Omniglot has {NUM_CHARACTERS}; "
                            f"the zips are incomplete, {HOW_TO_GET}")
        return
    expected = {BACKGROUNDS[b]: n for b, n in SMALL_CHARACTERS.items()}
    for archive, found in characters.counted.items():
        wanted = EVALUATION_CHARACTERS if archive == EVALUATION else expected[archive]
        if found != wanted:
            raise PrepError(f"{folder / archive}: found {found} characters, it has {wanted}; the zip is "
                            f"incomplete, {how_to_get([archive])}")


def gather(root: Path, source: Path | None, fetch: bool, zips: list[str], full: bool) -> tuple[Path, list[str]]:
    """The folder of the zips and those of them to read: ``zips`` and the evaluation zip (which
    only the full background requires). Every zip present is md5-checked before a missing one is
    reported; --download fetches the evaluation zip too."""
    wanted = [*zips, EVALUATION]
    if fetch:
        folder = root / "raw"
        for archive in wanted:
            download(URL + archive, folder / archive, MD5[archive])
    else:
        folder = archive_folder(source, root)
    present = [name for name in wanted if (folder / name).is_file()]
    for name in present:
        check_archive(folder / name, name)
    require(folder, wanted if full else zips)
    return folder, present


def split_characters(characters: Characters, split: str, seed: int) -> dict[str, list[str]]:
    names = list(characters.drawings)
    if split == "maml":
        return maml_split(names, MAML_SIZES, seed)
    if split == "vinyals":
        return vinyals_split(names, characters.archive_of)
    return lake_split(names, characters.archive_of, seed, LAKE_VAL_FRACTION)


def convert(characters: Characters, classes: dict[str, list[str]], rotations: str) -> dict:
    """{split: (images uint8 [n, 28, 28, 1], labels, class names)}, rotated copies added as classes
    with ``rotations="classes"``."""
    splits = {}
    for s, names in classes.items():
        images = np.stack([np.stack([to_array(m, png) for m, png in characters.drawings[n]]) for n in names])
        if rotations == "classes":  # [classes, drawers, H, W] -> [classes, 4, drawers, H, W]
            images = np.stack([np.rot90(images, k, axes=(2, 3)) for k in range(4)], axis=1)
            names = [n if k == 0 else f"{n}/rot{90 * k}" for n in names for k in range(4)]
            images = images.reshape(-1, *images.shape[2:])
        labels = np.repeat(np.arange(len(names)), images.shape[1])
        splits[s] = (images.reshape(-1, SIZE, SIZE, 1), labels, names)
    return splits


def describe(folder: Path, present: list[str], characters: Characters, split: str, seed: int,
             rotations: str, root: Path, has_test: bool) -> dict:
    """meta.json's record of where the data came from and how it was split and stored."""
    split_text = {
        "maml": f"MAML reference (sorted, random.Random({seed}).shuffle)",
        "vinyals": "Vinyals et al. 2016, data_prep/splits/omniglot_vinyals.txt",
        "lake": f"Lake et al.: background alphabets for training, {LAKE_VAL_FRACTION:g} of their characters "
                f"held out for validation (sorted, random.Random({seed}).shuffle), "
                + ("evaluation alphabets for test" if has_test else
                   f"no test split ({EVALUATION} not given): test on the authors' one-shot runs")}[split]
    meta = {"source": f"Omniglot ({', '.join(str(folder / name) for name in present)})",
            "background": ", ".join(name for name in present if name != EVALUATION),
            "split": split_text,
            "rotations": "extra classes (k*90 degrees, k=1..3)" if rotations == "classes"
            else "none stored; per-task augmentation by the sampler (rotate=True)",
            "preprocess": PREPROCESS.to_meta()}
    if characters.shared:
        alphabets = sorted({k.split("/")[0] for k in characters.shared})
        meta["shared_characters"] = (f"{len(characters.shared)} characters ({', '.join(alphabets)}) are in "
                                     f"both minimal sets, byte-identical; each is stored once")
    if not has_test:
        meta["test_instead"] = (f"the Omniglot authors' 20 one-shot runs: python -m data_prep.omniglot "
                                f"--root {root} --runs, then python evaluate.py {{run}} --episodes "
                                f"{root / RUNS_NAME}")
    return meta


def prepare(root: Path, source: Path | None = None, fetch: bool = False, split: str | None = None,
            rotations: str = "augment", seed: int = MAML_SEED, background="full") -> Path:
    """Read, check, split, convert and write one Omniglot dataset; returns its folder."""
    root = Path(root)
    backgrounds = background_names(background)
    full = backgrounds == ("full",)
    if split is None:
        split = "maml" if full else "lake"
    if not full and split != "lake":
        raise PrepError(f"--split {split} needs the full background set (it splits all 1623 characters); "
                        f"with --background {' '.join(backgrounds)} the split is lake (background for "
                        f"training and validation, evaluation for test): drop --split")
    folder, present = gather(root, source, fetch, [BACKGROUNDS[b] for b in backgrounds], full)
    characters = read_characters(folder, present)
    check_counts(characters, full, folder)
    if characters.shared:
        alphabets = ", ".join(sorted({k.split("/")[0] for k in characters.shared}))
        print(f"{len(characters.shared)} characters ({alphabets}) are in both minimal sets, byte-identical: "
              f"each kept once", flush=True)
    classes = split_characters(characters, split, seed)
    has_test = "test" in classes
    if not has_test:
        print(f"note: no {EVALUATION} in {folder}, so no test split: test a trained run on the authors' "
              f"one-shot runs (--runs, then evaluate.py RUN --episodes {root / RUNS_NAME})", flush=True)
    drawers = len(next(iter(characters.drawings.values())))
    print(f"converting {len(characters.drawings)} characters x {drawers} drawers to {SIZE}x{SIZE} ...",
          flush=True)
    splits = convert(characters, classes, rotations)
    name = "omniglot" if full else "omniglot-" + "-".join(backgrounds)
    name += "-rot" if rotations == "classes" else ""
    meta = describe(folder, present, characters, split, seed, rotations, root, has_test)
    path = write_prepared(root, name, splits, meta)
    print(f"wrote {path}: " + ", ".join(f"{s} {len(v[2])} classes" for s, v in splits.items()))
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("data"), help="folder of prepared datasets")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--source", type=Path, help="folder holding the zips (default: <root>/raw)")
    group.add_argument("--download", action="store_true", help="download the zips into <root>/raw (md5 checked)")
    parser.add_argument("--background", nargs="+", choices=sorted(BACKGROUNDS), default=["full"],
                        help="background set: full (images_background.zip) or the minimal ones, small1, "
                        "small2 or small1 small2 (images_background_small1.zip / _small2.zip, written to "
                        "<root>/omniglot-small1, ...; images_evaluation.zip optional: without it, no test split)")
    parser.add_argument("--split", choices=["maml", "vinyals", "lake"],
                        help="maml (default): 1100/100/423 seeded shuffle; vinyals: 1028/172/423 by alphabet; "
                        "lake (the only one with small1/small2): background for training with a seeded 20%% "
                        "validation hold-out, evaluation for test")
    parser.add_argument("--rotations", choices=["augment", "classes"], default="augment",
                        help="augment: per-task rotations by the sampler; classes: 3 rotated copies as "
                        "extra classes, written to <root>/omniglot-rot")
    parser.add_argument("--seed", type=seed_arg, default=MAML_SEED, help="shuffle seed of the maml and lake splits")
    parser.add_argument("--runs", action="store_true", help="prepare the 20 one-shot classification runs "
                        f"(all_runs.zip) as <root>/{RUNS_NAME} instead of a dataset")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.runs:
        given = [o for o, v, d in (("--background", args.background, ["full"]), ("--split", args.split, None),
                                   ("--rotations", args.rotations, "augment"), ("--seed", args.seed, MAML_SEED))
                 if v != d]
        if given:
            parser.error(f"--runs prepares only the one-shot runs; {', '.join(given)} do not apply to them")
    else:
        try:
            background_names(args.background)
        except PrepError as e:
            parser.error(str(e))
    start = time.perf_counter()
    if args.runs:
        prepare_runs(args.root, args.source, args.download)
    else:
        prepare(args.root, args.source, args.download, args.split, args.rotations, args.seed, args.background)
    print(f"done in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    sys.exit(run_cli(main))
