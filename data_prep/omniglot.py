"""Omniglot (Lake et al. 2015): 1623 handwritten characters from 50 alphabets, each drawn by 20
people, as 28×28 grayscale with bright strokes on dark, written to ``<root>/omniglot``; and the
20 one-shot classification runs of the Omniglot authors, written to ``<root>/omniglot-runs``.

    python -m data_prep.omniglot --root data --download        # fetch the two zips (md5 checked)
    python -m data_prep.omniglot --root data --source DIR      # DIR holds images_{background,evaluation}.zip
    python -m data_prep.omniglot --root data --download --background small1   # -> <root>/omniglot-small1
    python -m data_prep.omniglot --root data --download --runs                # -> <root>/omniglot-runs

Raw files: ``images_background.zip`` (30 alphabets, 964 characters) and ``images_evaluation.zip``
(20 alphabets, 659 characters) from github.com/brendenlake/omniglot, holding
``images_*/<alphabet>/characterNN/<id>_<drawer>.png``, 105×105 1-bit PNGs with black strokes on
white. Each image is resized to 28×28 with LANCZOS (as the MAML reference's resize_images.py) and
inverted so that strokes are bright (the MAML reference's ``1 - x``); this conversion is
``data_prep.images`` with ``PREPROCESS`` and is recorded in meta.json as ``"preprocess"``, so that
the one-shot runs (raw PNGs) can be converted the same way at evaluation time.

Background set (``--background``):

* ``full`` (default): ``images_background.zip``.
* ``small1`` / ``small2``: the authors' two "minimal" background sets, ``images_background_small1.zip``
  (5 alphabets, 136 characters) and ``images_background_small2.zip`` (5 alphabets, 156
  characters), for learning from few alphabets. The evaluation set stays the full
  ``images_evaluation.zip``. Written to ``<root>/omniglot-small1`` (``-small2``).

Splits (``--split``):

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

One-shot runs (``--runs``): ``all_runs.zip`` (md5 checked, safely extracted) laid out as
``<root>/omniglot-runs/run01 .. run20/{training/classNN.png, test/itemNN.png, class_labels.txt}``:
20 within-alphabet 20-way 1-shot episodes from the evaluation alphabets, read by
``data_prep.episodes``. The folder appears only once complete (built under a temporary name).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from anil.data import DatasetError, write_prepared
from anil.argtypes import seed as seed_arg

from . import episodes
from .archives import open_zip, safe_extract
from .common import PrepError, download, md5sum, read_list, run_cli, verify_md5
from .images import ImageReadError, Preprocess, read_image

ARCHIVES = ("images_background.zip", "images_evaluation.zip")  # the full set
BACKGROUNDS = {"full": "images_background.zip", "small1": "images_background_small1.zip",
               "small2": "images_background_small2.zip"}
EVALUATION = "images_evaluation.zip"
RUNS_ARCHIVE = "all_runs.zip"
URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
RUNS_URL = URL + "one-shot-classification/" + RUNS_ARCHIVE
MD5 = {  # the full set: torchvision's Omniglot and torchmeta use the same values;
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",  # the others: of the files in
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",  # github.com/brendenlake/omniglot
    "images_background_small1.zip": "e704a628b5459e08445c13499850abc4",
    "images_background_small2.zip": "b75a71a51d3b13f821f212756fe481fd",
    RUNS_ARCHIVE: "e8996daecdf12afeeb4a53a179f06b19",
}
# What each known file is, and the option that reads it: an error can then say what was found.
DESCRIPTION = {
    "images_background.zip": ("the full background set, 30 alphabets", "--background full"),
    "images_evaluation.zip": ("the evaluation set, 20 alphabets", None),
    "images_background_small1.zip": ("the minimal split 1, 5 background alphabets", "--background small1"),
    "images_background_small2.zip": ("the minimal split 2, 5 background alphabets", "--background small2"),
    RUNS_ARCHIVE: ("the 20 one-shot classification runs", "--runs"),
}
SIZE = 28
PREPROCESS = Preprocess(SIZE, channels=1, invert=True)
NUM_CHARACTERS = 1623  # the full set: 964 background + 659 evaluation
SMALL_CHARACTERS = {"small1": 136, "small2": 156}
EVALUATION_CHARACTERS = 659
MAML_SIZES = (1100, 100)  # train, val; test is the rest (423)
MAML_SEED = 1
LAKE_VAL_FRACTION = 0.2  # of the background characters; 136 -> 27, enough for 20-way validation
RUNS_NAME = "omniglot-runs"
NUM_RUNS = 20
RUNS_MARKER = "runs.json"  # marks <root>/omniglot-runs as written here (so it may be replaced)


def how_to_get(names) -> str:
    where = RUNS_URL.removesuffix(RUNS_ARCHIVE) if RUNS_ARCHIVE in names else URL
    return (f"download them with --download, or get {' and '.join(names)} from {where} and pass their "
            f"folder with --source")


HOW_TO_GET = how_to_get(ARCHIVES)
ACCEPTED = ("this command reads images_background.zip (--background full, the default), "
            "images_background_small1.zip (--background small1) or images_background_small2.zip "
            f"(--background small2), with images_evaluation.zip; and {RUNS_ARCHIVE} with --runs")


def find_archives(source: Path | None, root: Path, names: list[str]) -> Path:
    """The folder holding ``names``: ``source`` (a folder, or a file in it), else ``<root>/raw``.
    A missing file is a PrepError listing the accepted names, and naming another known Omniglot
    file found in its place."""
    folder = Path(source) if source is not None else Path(root) / "raw"
    if folder.is_file():
        folder = folder.parent
    for name in names:
        if (folder / name).exists():
            continue
        # Another background set in place of the one asked for: say which option reads it.
        others = [n for n in BACKGROUNDS.values() if name in BACKGROUNDS.values() and n != name
                  and (folder / n).is_file()]
        found = "".join(f"; {folder} holds {n} ({DESCRIPTION[n][0]}): to use it, pass {DESCRIPTION[n][1]}"
                        for n in others)
        raise PrepError(f"{folder / name} not found; {how_to_get(names)} ({ACCEPTED}){found}")
    return folder


def check_archive(path: Path, name: str) -> None:
    """md5-check ``path`` (expected to be the file ``name``). Another known Omniglot file gets an
    error naming it and the option that reads it, rather than a bare md5 mismatch."""
    actual = md5sum(path)
    if actual == MD5[name]:
        return
    found = next((n for n, md5 in MD5.items() if md5 == actual), None)
    if found is None:
        verify_md5(path, MD5[name], f"delete it and {how_to_get([name])}")
    what, option = DESCRIPTION[found]
    fix = [f"rename it to {found}"]
    if option and option != DESCRIPTION[name][1]:
        fix.append(f"pass {option}")
    raise PrepError(f"{path}: found {found} ({what}) where {name} ({DESCRIPTION[name][0]}) was expected; "
                    + " and ".join(fix))


def read_characters(folder: Path, archives=ARCHIVES):
    """{"<alphabet>/characterNN": [(member name, png bytes), ...]} over the zips (drawers sorted),
    and {alphabet: the zip it came from}."""
    characters, archive_of = {}, {}
    for archive in archives:
        path = folder / archive
        check_archive(path, archive)
        top = archive.removesuffix(".zip")
        with open_zip(path) as zf:
            for info in zf.infolist():
                parts = PurePosixPath(info.filename).parts
                if info.is_dir() or len(parts) != 4 or parts[0] != top or not parts[3].endswith(".png"):
                    continue
                key = f"{parts[1]}/{parts[2]}"
                if archive_of.setdefault(parts[1], archive) != archive:
                    raise PrepError(f"alphabet {parts[1]!r} is in both {archive_of[parts[1]]} and "
                                    f"{archive}; these are not the Omniglot zips; {how_to_get(archives)}")
                try:
                    png = zf.read(info)
                except (zipfile.BadZipFile, OSError, EOFError) as e:
                    raise PrepError(f"{path}: member {info.filename} cannot be read ({e}); the zip is "
                                    f"corrupt, delete it and {how_to_get(archives)}") from None
                characters.setdefault(key, []).append((info.filename, png))
    if not characters:
        raise PrepError(f"{folder}: the zips hold no images_*/<alphabet>/<character>/*.png files; {how_to_get(archives)}")
    return {k: sorted(v) for k, v in sorted(characters.items())}, archive_of


def to_array(member: str, png: bytes) -> np.ndarray:
    """105×105 black-on-white PNG -> 28×28 uint8, strokes bright: 255 − LANCZOS(image)
    (``data_prep.images`` with ``PREPROCESS``, the conversion the one-shot runs get too)."""
    try:
        return read_image(png, PREPROCESS)[..., 0]
    except ImageReadError as e:
        raise PrepError(f"{member} is {e}; the zip is corrupt, {HOW_TO_GET}") from None


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


def lake_split(names: list[str], archive_of: dict[str, str], seed: int = MAML_SEED,
               val_fraction: float = LAKE_VAL_FRACTION) -> dict[str, list[str]]:
    """The Omniglot authors' protocol: the evaluation alphabets' characters for test; the
    background characters, sorted and shuffled by ``random.Random(seed)``, give the first
    ``round(val_fraction * n)`` to validation and the rest to training. Each split sorted."""
    background = sorted(n for n in names if archive_of[n.split("/")[0]] != EVALUATION)
    test = sorted(n for n in names if archive_of[n.split("/")[0]] == EVALUATION)
    random.Random(seed).shuffle(background)
    n_val = round(val_fraction * len(background))
    if not 0 < n_val < len(background) or not test:
        raise PrepError(f"found {len(background)} background and {len(test)} evaluation characters, too "
                        f"few for a train/val/test split; these are not the Omniglot zips")
    return {"train": sorted(background[n_val:]), "val": sorted(background[:n_val]), "test": test}


def check_counts(characters: dict, archive_of: dict[str, str], background: str, folder: Path) -> None:
    """Every character has the same number of drawings, and the zips hold all their characters."""
    drawers = {len(v) for v in characters.values()}
    if len(drawers) != 1:
        short = min(characters, key=lambda k: len(characters[k]))
        raise PrepError(f"character {short} has {len(characters[short])} drawings but others have "
                        f"{max(drawers)}; the zips are incomplete, {HOW_TO_GET}")
    if background == "full":
        if len(characters) != NUM_CHARACTERS:
            raise PrepError(f"{folder}: found {len(characters)} characters, Omniglot has {NUM_CHARACTERS}; "
                            f"the zips are incomplete, {HOW_TO_GET}")
        return
    for archive, expected in ((BACKGROUNDS[background], SMALL_CHARACTERS[background]),
                              (EVALUATION, EVALUATION_CHARACTERS)):
        found = sum(archive_of[n.split("/")[0]] == archive for n in characters)
        if found != expected:
            raise PrepError(f"{folder / archive}: found {found} characters, it has {expected}; the zip is "
                            f"incomplete, {how_to_get([archive])}")


def prepare(root: Path, source: Path | None = None, fetch: bool = False, split: str | None = None,
            rotations: str = "augment", seed: int = MAML_SEED, background: str = "full") -> Path:
    root = Path(root)
    if split is None:
        split = "maml" if background == "full" else "lake"
    if background != "full" and split != "lake":
        raise PrepError(f"--split {split} needs the full background set (it splits all 1623 characters); "
                        f"with --background {background} the split is lake (background for training and "
                        f"validation, evaluation for test): drop --split")
    archives = [BACKGROUNDS[background], EVALUATION]
    if fetch:
        folder = root / "raw"
        for archive in archives:
            download(URL + archive, folder / archive, MD5[archive])
    else:
        folder = find_archives(source, root, archives)
    characters, archive_of = read_characters(folder, archives)
    check_counts(characters, archive_of, background, folder)
    if split == "maml":
        classes = maml_split(list(characters), MAML_SIZES, seed)
    elif split == "vinyals":
        classes = vinyals_split(list(characters), archive_of)
    else:
        classes = lake_split(list(characters), archive_of, seed)
    drawers = len(next(iter(characters.values())))
    print(f"converting {len(characters)} characters x {drawers} drawers to {SIZE}x{SIZE} ...", flush=True)
    splits = {}
    for s, names in classes.items():
        images = np.stack([np.stack([to_array(m, png) for m, png in characters[n]]) for n in names])
        if rotations == "classes":  # [classes, drawers, H, W] -> [classes, 4, drawers, H, W]
            images = np.stack([np.rot90(images, k, axes=(2, 3)) for k in range(4)], axis=1)
            names = [n if k == 0 else f"{n}/rot{90 * k}" for n in names for k in range(4)]
            images = images.reshape(-1, *images.shape[2:])
        labels = np.repeat(np.arange(len(names)), images.shape[1])
        splits[s] = (images.reshape(-1, SIZE, SIZE, 1), labels, names)
    name = "omniglot" if background == "full" else f"omniglot-{background}"
    name += "-rot" if rotations == "classes" else ""
    split_text = {
        "maml": f"MAML reference (sorted, random.Random({seed}).shuffle)",
        "vinyals": "Vinyals et al. 2016, data_prep/splits/omniglot_vinyals.txt",
        "lake": f"Lake et al.: background alphabets for training, {LAKE_VAL_FRACTION:g} of their characters "
                f"held out for validation (sorted, random.Random({seed}).shuffle), evaluation alphabets "
                f"for test"}[split]
    meta = {"source": f"Omniglot ({folder / archives[0]}, {folder / archives[1]})",
            "background": archives[0],
            "split": split_text,
            "rotations": "extra classes (k*90 degrees, k=1..3)" if rotations == "classes"
            else "none stored; per-task augmentation by the sampler (rotate=True)",
            "preprocess": PREPROCESS.to_meta()}
    path = write_prepared(root, name, splits, meta)
    print(f"wrote {path}: " + ", ".join(f"{s} {len(v[2])} classes" for s, v in splits.items()))
    return path


# ------------------------------------------------------------------------- one-shot runs


def locate_runs(extracted: Path) -> list[Path]:
    """The run folders (``runNN`` holding class_labels.txt) in an extracted all_runs.zip, at its
    top or in one folder below it (the zip's own folder; ``__MACOSX`` and hidden folders ignored)."""
    def runs_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("run")
                      and p.name[3:].isdigit() and (p / episodes.LABELS_FILE).is_file())

    candidates = [extracted] + sorted(p for p in extracted.iterdir() if p.is_dir()
                                      and not p.name.startswith((".", "__MACOSX")))
    found = [runs for runs in map(runs_in, candidates) if runs]
    if len(found) != 1 or len(found[0]) != NUM_RUNS:
        count = sum(len(r) for r in found)
        raise PrepError(f"{RUNS_ARCHIVE} holds {count} run folders (runNN/ with {episodes.LABELS_FILE}) "
                        f"where {NUM_RUNS} were expected; it is not the Omniglot runs file, "
                        f"{how_to_get([RUNS_ARCHIVE])}")
    return found[0]


def prepare_runs(root: Path, source: Path | None = None, fetch: bool = False) -> Path:
    """all_runs.zip -> ``<root>/omniglot-runs/run01..run20``, checked, built under a temporary name."""
    root = Path(root)
    final = root / RUNS_NAME
    if final.exists() and not (final / RUNS_MARKER).is_file():
        raise PrepError(f"{final} exists and was not written by this command (no {RUNS_MARKER}); move it "
                        f"away, or give another --root")
    if fetch:
        archive = download(RUNS_URL, root / "raw" / RUNS_ARCHIVE, MD5[RUNS_ARCHIVE])
    else:
        archive = find_archives(source, root, [RUNS_ARCHIVE]) / RUNS_ARCHIVE
    check_archive(archive, RUNS_ARCHIVE)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{RUNS_NAME}.partial-", dir=root))
    try:
        safe_extract(archive, tmp / "extracted")
        runs = locate_runs(tmp / "extracted")
        for run in runs:  # the pairings and images must all be there
            try:
                episodes.parse_run(run)
            except DatasetError as e:  # names the problem, with a path inside the temporary folder
                raise PrepError(f"{RUNS_ARCHIVE}: {e}; the zip is corrupt, {how_to_get([RUNS_ARCHIVE])}") from None
        stage = tmp / RUNS_NAME
        stage.mkdir()
        for run in runs:
            os.replace(run, stage / run.name)
        (stage / RUNS_MARKER).write_text(json.dumps(
            {"source": str(archive), "md5": MD5[RUNS_ARCHIVE], "runs": [r.name for r in runs],
             "layout": "runNN/{training/classNN.png, test/itemNN.png, class_labels.txt}; read with "
                       "data_prep.episodes"}, indent=1))
        if final.exists():  # replaced only now, when the new one is complete
            os.replace(final, tmp / "old")
        try:
            os.replace(stage, final)
        except BaseException:
            if (tmp / "old").exists() and not final.exists():
                os.replace(tmp / "old", final)  # put the previous runs back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {final}: {len(runs)} runs ({runs[0].name} .. {runs[-1].name})")
    return final


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("data"), help="folder of prepared datasets")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--source", type=Path, help="folder holding the zips (default: <root>/raw)")
    group.add_argument("--download", action="store_true", help="download the zips into <root>/raw (md5 checked)")
    parser.add_argument("--background", choices=sorted(BACKGROUNDS), default="full",
                        help="background set: full (images_background.zip) or a minimal split, small1 / "
                        "small2 (images_background_small1.zip / _small2.zip, written to <root>/omniglot-small1 ...)")
    parser.add_argument("--split", choices=["maml", "vinyals", "lake"],
                        help="maml (default): 1100/100/423 seeded shuffle; vinyals: 1028/172/423 by alphabet; "
                        "lake (the only one with small1/small2): background for training with a seeded 20%% "
                        "validation hold-out, evaluation for test")
    parser.add_argument("--rotations", choices=["augment", "classes"], default="augment",
                        help="augment: per-task rotations by the sampler; classes: 3 rotated copies as "
                        "extra classes, written to <root>/omniglot-rot")
    parser.add_argument("--seed", type=seed_arg, default=MAML_SEED, help="shuffle seed of the maml and lake splits")
    parser.add_argument("--runs", action="store_true", help="prepare the 20 one-shot classification runs "
                        f"({RUNS_ARCHIVE}) as <root>/{RUNS_NAME} instead of a dataset")
    args = parser.parse_args(argv)
    if args.runs:
        given = [o for o, v, d in (("--background", args.background, "full"), ("--split", args.split, None),
                                   ("--rotations", args.rotations, "augment"), ("--seed", args.seed, MAML_SEED))
                 if v != d]
        if given:
            parser.error(f"--runs prepares only the one-shot runs; {', '.join(given)} do not apply to them")
    start = time.perf_counter()
    if args.runs:
        prepare_runs(args.root, args.source, args.download)
    else:
        prepare(args.root, args.source, args.download, args.split, args.rotations, args.seed, args.background)
    print(f"done in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    sys.exit(run_cli(main))
