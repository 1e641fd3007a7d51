"""The Omniglot authors' raw files (github.com/brendenlake/omniglot, ``python/``): their names, where
to get them, their md5s, and reading the characters out of the image zips.

Each image zip holds ``images_*/<alphabet>/characterNN/<id>_<drawer>.png``. The two minimal
background sets share two alphabets, Greek and Latin (50 characters), byte for byte; read together
(``--background small1 small2``) each shared character is kept once, after checking that both zips
hold exactly the same drawings of it.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .archives import open_zip
from .common import PrepError, md5sum, verify_md5

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


def how_to_get(names) -> str:
    where = RUNS_URL.removesuffix(RUNS_ARCHIVE) if RUNS_ARCHIVE in names else URL
    return (f"download them with --download, or get {' and '.join(names)} from {where} and pass their "
            f"folder with --source")


HOW_TO_GET = how_to_get(ARCHIVES)
ACCEPTED = ("this command reads images_background.zip (--background full, the default), "
            "images_background_small1.zip (--background small1) or images_background_small2.zip "
            "(--background small2) or both (--background small1 small2), with images_evaluation.zip "
            f"(required with full, optional with small1/small2); and {RUNS_ARCHIVE} with --runs")


def archive_folder(source: Path | None, root: Path) -> Path:
    """The folder holding the zips: ``source`` (a folder, or a file in it), else ``<root>/raw``."""
    folder = Path(source) if source is not None else Path(root) / "raw"
    return folder.parent if folder.is_file() else folder


def require(folder: Path, names: list[str]) -> None:
    """A PrepError for the first of ``names`` missing from ``folder``, listing the accepted names
    and naming another known Omniglot file found in its place."""
    for name in names:
        if (folder / name).exists():
            continue
        # Another background set in place of the one asked for: say which option reads it.
        others = [n for n in BACKGROUNDS.values() if name in BACKGROUNDS.values() and n != name
                  and (folder / n).is_file()]
        found = "".join(f"; {folder} holds {n} ({DESCRIPTION[n][0]}): to use it, pass {DESCRIPTION[n][1]}"
                        for n in others)
        raise PrepError(f"{folder / name} not found; {how_to_get(names)} ({ACCEPTED}){found}")


def find_archives(source: Path | None, root: Path, names: list[str]) -> Path:
    """The folder holding all of ``names`` (``archive_folder``); a missing one is a PrepError."""
    folder = archive_folder(source, root)
    require(folder, names)
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


@dataclass
class Characters:
    """The characters of some image zips, each shared character kept once."""

    drawings: dict = field(default_factory=dict)  # "<alphabet>/characterNN" -> [(member, png bytes)]
    archive_of: dict = field(default_factory=dict)  # alphabet -> the first zip it came from
    counted: dict = field(default_factory=dict)  # zip -> characters in it (shared ones included)
    shared: list = field(default_factory=list)  # characters found in two minimal background zips


def _members(path: Path, archive: str):
    """{"<alphabet>/characterNN": [(member name, png bytes), ...]} of one image zip."""
    top = archive.removesuffix(".zip")
    out = {}
    with open_zip(path) as zf:
        for info in zf.infolist():
            parts = PurePosixPath(info.filename).parts
            if info.is_dir() or len(parts) != 4 or parts[0] != top or not parts[3].endswith(".png"):
                continue
            try:
                png = zf.read(info)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise PrepError(f"{path}: member {info.filename} cannot be read ({e}); the zip is "
                                f"corrupt, delete it and {how_to_get([archive])}") from None
            out.setdefault(f"{parts[1]}/{parts[2]}", []).append((info.filename, png))
    return out


def _drawings(members) -> list[tuple[str, bytes]]:
    """A character's drawings as (file name, bytes), without the zip's top folder: comparable."""
    return sorted((PurePosixPath(m).name, png) for m, png in members)


def read_characters(folder: Path, archives) -> Characters:
    """The characters of the zips ``archives`` in ``folder`` (md5-checked by the caller), drawers
    sorted. An alphabet may be in two zips only if both are minimal background sets, and then
    every character in both must hold the same files with the same bytes (kept once, from the
    first zip)."""
    out = Characters()
    small = {BACKGROUNDS["small1"], BACKGROUNDS["small2"]}
    for archive in archives:
        found = _members(folder / archive, archive)
        out.counted[archive] = len(found)
        for key, members in found.items():
            alphabet = key.split("/")[0]
            first = out.archive_of.setdefault(alphabet, archive)
            if first != archive and not {first, archive} <= small:
                raise PrepError(f"alphabet {alphabet!r} is in both {first} and {archive}; these are not "
                                f"the Omniglot zips; {how_to_get(archives)}")
            if key not in out.drawings:
                out.drawings[key] = members
                continue
            if _drawings(out.drawings[key]) != _drawings(members):
                raise PrepError(f"character {key} differs between {first} and {archive} (the authors' "
                                f"minimal sets hold the same drawings of it, byte for byte); one of the "
                                f"zips is not the original: delete both and {how_to_get([first, archive])}")
            out.shared.append(key)
    if not out.drawings:
        raise PrepError(f"{folder}: the zips hold no images_*/<alphabet>/<character>/*.png files; "
                        f"{how_to_get(archives)}")
    out.drawings = {k: sorted(v) for k, v in sorted(out.drawings.items())}
    return out
