"""The three ways ``data_prep.omniglot`` splits the characters into train/val/test: the MAML
reference's seeded shuffle, Vinyals et al.'s split by alphabet, and the Omniglot authors' protocol
(Lake et al.: background alphabets to learn from, evaluation alphabets to test on)."""

from __future__ import annotations

import random

from .common import PrepError, read_list
from .omniglot_files import EVALUATION, HOW_TO_GET


def maml_split(names: list[str], sizes: tuple[int, int], seed: int) -> dict[str, list[str]]:
    """Sorted character list, shuffled by ``random.Random(seed)``; first ``sizes[0]`` (1100)
    train, next ``sizes[1]`` (100) val, the rest test (the MAML reference's data_generator.py,
    made filesystem-independent)."""
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


def lake_split(names: list[str], archive_of: dict[str, str], seed: int,
               val_fraction: float) -> dict[str, list[str]]:
    """The Omniglot authors' protocol: the evaluation alphabets' characters for test (no test
    split when there are none: the model is then tested on the authors' one-shot runs); the
    background characters, sorted and shuffled by ``random.Random(seed)``, give the first
    ``round(val_fraction * n)`` to validation and the rest to training. Each split sorted."""
    background = sorted(n for n in names if archive_of[n.split("/")[0]] != EVALUATION)
    test = sorted(n for n in names if archive_of[n.split("/")[0]] == EVALUATION)
    random.Random(seed).shuffle(background)
    n_val = round(val_fraction * len(background))
    if not 0 < n_val < len(background):
        raise PrepError(f"found {len(background)} background characters, too few for a train/val "
                        f"split; these are not the Omniglot zips")
    out = {"train": sorted(background[n_val:]), "val": sorted(background[:n_val])}
    return {**out, "test": test} if test else out
