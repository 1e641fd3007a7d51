"""Fixed episodes stored as folders, in the layout of the Omniglot one-shot classification runs
(Lake et al. 2015, ``all_runs.zip``), read into arrays for evaluating a trained network.

Layout: a folder holding run folders (any names; the Omniglot ones are ``run01`` .. ``run20``),
or a single run folder. A run folder holds::

    training/          the support set: each image file is one class (the Omniglot runs: one
                       image per class, class01.png .. class20.png); a sub-folder is one class
                       of all the images in it (for K-shot episodes)
    test/              the query images (item01.png .. item20.png)
    class_labels.txt   one line per query: "<query> <support>", e.g.
                       "run01/test/item01.png run01/training/class12.png", pairing the query with
                       its class's support image (or class folder); paths are relative to the
                       folder that holds the run folder

Support classes are labelled 0..N-1 in the sorted order of the entries of ``training/``; queries
come in the sorted order of ``test/`` and get the label of the class they are paired with. Every
image goes through the conversion the dataset the network was trained on recorded (the
``"preprocess"`` entry of its meta.json, see ``data_prep.images``): the Omniglot runs are raw
105×105 black-on-white PNGs, and a network trained on prepared Omniglot expects them resized to
28×28 and inverted, exactly as the preparer did.

    from data_prep.episodes import preprocess_of, read_episodes
    episodes = read_episodes("data/omniglot-runs", preprocess_of("data/omniglot-small1"))
    for e in episodes:   # e.support_images uint8 [N, 28, 28, 1], e.query_labels int64 [20], ...
        ...

This module only reads; every problem with the folder is a one-line DatasetError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anil.data import DatasetError, read_meta

from .images import ImageReadError, Preprocess, is_image_name, read_image

LABELS_FILE = "class_labels.txt"
SUPPORT_DIR = "training"
QUERY_DIR = "test"
# The preparers that write a "preprocess" entry, named in the error for a dataset without one.
RECORDING_PREPARERS = "data_prep.folder and data_prep.omniglot"


@dataclass
class RunFiles:
    """One run's files and labels, before any image is decoded. Paths are relative to the folder
    holding the run folder, with ``/`` (the form class_labels.txt uses)."""

    name: str
    class_names: list[str]  # class j: its support image, or its class folder
    support_files: list[str]
    support_labels: np.ndarray  # int64 [n_s]
    query_files: list[str]
    query_labels: np.ndarray  # int64 [n_q]


@dataclass
class Episode:
    """One fixed episode, ready for a network trained on the dataset whose preprocessing was used."""

    name: str  # the run folder's name, e.g. "run01"
    support_images: np.ndarray  # uint8 [n_s, S, S, C]
    support_labels: np.ndarray  # int64 [n_s], 0..ways-1
    query_images: np.ndarray  # uint8 [n_q, S, S, C]
    query_labels: np.ndarray  # int64 [n_q]
    support_files: list[str]  # as in class_labels.txt, e.g. "run01/training/class01.png"
    query_files: list[str]
    class_names: list[str]  # class j's support image (or class folder)

    @property
    def ways(self) -> int:
        return len(self.class_names)


def preprocess_of(dataset: str | Path) -> Preprocess:
    """The image conversion recorded in the prepared dataset ``dataset``'s meta.json."""
    dataset = Path(dataset)
    meta = read_meta(dataset)
    if "preprocess" not in meta:
        raise DatasetError(
            f"{dataset}/meta.json records no image preprocessing, so new images cannot be converted "
            f"the way its images were; only datasets written by {RECORDING_PREPARERS} record it: "
            f"prepare the dataset again with one of them")
    return Preprocess.from_meta(meta["preprocess"], f"{dataset}/meta.json")


def find_runs(folder: str | Path) -> list[Path]:
    """``folder`` itself if it is a run (holds class_labels.txt), else its sub-folders, sorted;
    each must be a run."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise DatasetError(f"episodes folder {folder} {what}; give the folder holding the run folders "
                           f"(for the Omniglot runs: python -m data_prep.omniglot --runs)")
    if (folder / LABELS_FILE).is_file():
        return [folder]
    runs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not runs:
        raise DatasetError(f"{folder} holds no run folders (each with {SUPPORT_DIR}/, {QUERY_DIR}/ and "
                           f"{LABELS_FILE}); give the folder holding them")
    for run in runs:
        if not (run / LABELS_FILE).is_file():
            raise DatasetError(f"{run}/{LABELS_FILE} not found: every sub-folder of {folder} must be a run "
                               f"with {SUPPORT_DIR}/, {QUERY_DIR}/ and {LABELS_FILE}")
    return runs


def _refuse_links_out(path: Path, top: Path) -> None:
    """A symbolic link that leads out of the episodes folder ``top`` is refused, never followed
    (as ``data_prep.folder`` never follows one out of --source)."""
    if path.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(top)):
        raise DatasetError(f"{path} is a symbolic link pointing outside {top} (not followed); "
                           f"copy what it points to into {top}")


def _images_in(folder: Path, allow_folders: bool, top: Path | None = None) -> list[Path]:
    """Sorted non-hidden entries of ``folder``: image files (and, if allowed, sub-folders); a
    link out of ``top`` (default: ``folder``) is refused."""
    _refuse_links_out(folder, top or folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} not found; a run folder holds {SUPPORT_DIR}/, {QUERY_DIR}/ and {LABELS_FILE}")
    out = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        _refuse_links_out(path, top or folder)
        if allow_folders and path.is_dir():
            out.append(path)
        elif path.is_file() and is_image_name(path.name):
            out.append(path)
        else:
            kind = "a folder" if path.is_dir() else "not an image file"
            raise DatasetError(f"{path} is {kind}; {folder} may hold only images"
                               + (" and class folders" if allow_folders else ""))
    if not out:
        raise DatasetError(f"{folder} holds no images")
    return out


def parse_run(run: str | Path, top: str | Path | None = None) -> RunFiles:
    """Read a run's folders and class_labels.txt (no image is decoded); see the module docstring.
    Nothing outside ``top`` (the episodes folder; default: the run) is read through a link."""
    run = Path(run)
    base, top = run.parent, Path(top or run)
    if top != run:  # a run found in the episodes folder (one given itself is the user's path)
        _refuse_links_out(run, top)

    def rel(path: Path) -> str:
        return "/".join(path.relative_to(base).parts)

    class_names, support_files, support_labels, class_of = [], [], [], {}
    for label, entry in enumerate(_images_in(run / SUPPORT_DIR, allow_folders=True, top=top)):
        files = _images_in(entry, allow_folders=False, top=top) if entry.is_dir() else [entry]
        class_names.append(rel(entry))
        class_of[rel(entry)] = label
        for f in files:
            support_files.append(rel(f))
            support_labels.append(label)
            class_of[rel(f)] = label
    query_files = [rel(p) for p in _images_in(run / QUERY_DIR, allow_folders=False, top=top)]
    labels_file = run / LABELS_FILE
    _refuse_links_out(labels_file, top)
    try:
        lines = labels_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{labels_file} cannot be read ({e}); get a clean copy of the run") from None
    paired: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{labels_file}, line {number}"
        fields = line.split()
        if len(fields) != 2:
            raise DatasetError(f"{where}: {line.strip()!r} is not '<query image> <support image>' (two "
                               f"paths relative to {base}, e.g. {run.name}/{QUERY_DIR}/item01.png "
                               f"{run.name}/{SUPPORT_DIR}/class01.png)")
        query, support = (_normal(f) for f in fields)
        for path, kind, known in ((query, "query", query_files), (support, "support", class_of)):
            if path not in known:
                if not (base / path).exists():
                    raise DatasetError(f"{where}: the {kind} image {path} does not exist (paths are "
                                       f"relative to {base}, the folder holding the run folder)")
                inside = f"{run.name}/{QUERY_DIR if kind == 'query' else SUPPORT_DIR}/"
                raise DatasetError(f"{where}: {path} is not a {kind} image of this run (those are in {inside})")
        if query in paired:
            raise DatasetError(f"{where}: the query {query} is paired a second time")
        paired[query] = class_of[support]
    unpaired = [q for q in query_files if q not in paired]
    if unpaired:
        raise DatasetError(f"{run / QUERY_DIR}: {len(unpaired)} query images are paired with no support image "
                           f"in {LABELS_FILE} (first: {unpaired[0]}); add a line '<query> <support>' for each")
    return RunFiles(run.name, class_names, support_files, np.asarray(support_labels, np.int64),
                    query_files, np.asarray([paired[q] for q in query_files], np.int64))


def _normal(field: str) -> str:
    """A path as written in class_labels.txt, in the form of ``RunFiles`` (``/``, no ``.`` parts)."""
    return os.path.normpath(field.replace("\\", "/")).replace(os.sep, "/")


def _read(base: Path, files: list[str], preprocess: Preprocess) -> np.ndarray:
    images = []
    for f in files:
        try:
            images.append(read_image(base / f, preprocess))
        except ImageReadError as e:
            raise DatasetError(f"{base / f} is {e}; replace it with a readable image") from None
    return np.stack(images)


def read_run(run: str | Path, preprocess: Preprocess, top: str | Path | None = None) -> Episode:
    """One run folder -> an Episode, its images converted by ``preprocess``."""
    files = parse_run(run, top)
    base = Path(run).parent
    return Episode(files.name, _read(base, files.support_files, preprocess), files.support_labels,
                   _read(base, files.query_files, preprocess), files.query_labels,
                   files.support_files, files.query_files, files.class_names)


def read_episodes(folder: str | Path, preprocess: Preprocess) -> list[Episode]:
    """Every run under ``folder`` (or ``folder`` itself if it is a run), in sorted order."""
    return [read_run(run, preprocess, folder) for run in find_runs(folder)]
