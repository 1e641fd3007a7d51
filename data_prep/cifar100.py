"""Reader for CIFAR-100's python version (``cifar-100-python.tar.gz``), shared by CIFAR-FS and FC100.

The archive (md5 checked) holds ``cifar-100-python/{train,test,meta}``, each a pickled dict:
``data`` uint8 [n, 3072], a row being one 32×32 RGB image stored as three planes (1024 R values,
then G, then B), each plane row-major; ``fine_labels`` (0..99) and ``coarse_labels`` (0..19);
``meta`` holds ``fine_label_names`` and ``coarse_label_names``. The few-shot splits use all 600
images of a class, so the train (500 per class) and test (100 per class) files are joined.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anil.data import lock_dataset, temporary_folder, write_prepared

from .archives import ExtractLimit, add_extract_limit_arg, limit_from_args, safe_extract
from .common import PrepError, download, verify_md5
from .pickles import safe_load_pickle

ARCHIVE = "cifar-100-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
# Published checksums (torchvision's CIFAR100 and torchmeta use the same values).
MD5 = {
    ARCHIVE: "eb9058c3a382ffc7106e4002c42a8d85",
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
# The archive extracts to train (155 MB: 50000 x 3072 bytes of pixels, plus names and labels),
# test (31 MB) and meta, 187 MB in all; about twice that is allowed (--max-extract-mb overrides).
EXTRACT_LIMIT = ExtractLimit.mb(400, member_mb=320)
HOW_TO_GET = (f"download it with --download, or get {ARCHIVE} from {URL} and pass its path "
              f"with --source")


@dataclass
class Cifar100:
    images: np.ndarray  # uint8 [60000, 32, 32, 3] (train file, then test file)
    fine: np.ndarray  # int64 [60000], 0..99
    coarse: np.ndarray  # int64 [60000], 0..19
    fine_names: list[str]
    coarse_names: list[str]
    source: str


def _str(x) -> str:
    return x.decode("latin1") if isinstance(x, bytes) else str(x)


def _read_dict(path: Path) -> dict:
    d = safe_load_pickle(path, HOW_TO_GET)
    if not isinstance(d, dict):
        raise PrepError(f"{path} holds a {type(d).__name__}, not CIFAR-100's dict; {HOW_TO_GET}")
    return {_str(k): v for k, v in d.items()}


def _read_images(path: Path, num_fine: int, num_coarse: int):
    d = _read_dict(path)
    missing = {"data", "fine_labels", "coarse_labels"} - set(d)
    if missing:
        raise PrepError(f"{path} has no {sorted(missing)} entries: not a CIFAR-100 python file; {HOW_TO_GET}")
    data = d["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise PrepError(f"{path}: 'data' is {got}, expected uint8 [n, 3072]; {HOW_TO_GET}")
    fine, coarse = np.asarray(d["fine_labels"], np.int64), np.asarray(d["coarse_labels"], np.int64)
    for name, labels, top in (("fine_labels", fine, num_fine), ("coarse_labels", coarse, num_coarse)):
        if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() >= top)):
            raise PrepError(f"{path}: '{name}' must be {len(data)} integers in [0, {top}); {HOW_TO_GET}")
    # Row = R plane, G plane, B plane (each 32 rows of 32): [n, 3, 32, 32] -> [n, 32, 32, 3].
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, fine, coarse


def _read_folder(folder: Path, source: str) -> Cifar100:
    meta = _read_dict(folder / "meta")
    try:
        fine_names = [_str(n) for n in meta["fine_label_names"]]
        coarse_names = [_str(n) for n in meta["coarse_label_names"]]
    except (KeyError, TypeError):
        raise PrepError(f"{folder / 'meta'} has no fine_label_names/coarse_label_names lists: not "
                        f"CIFAR-100's meta file; {HOW_TO_GET}") from None
    parts = [_read_images(folder / f, len(fine_names), len(coarse_names)) for f in ("train", "test")]
    images, fine, coarse = (np.concatenate(p) for p in zip(*parts))
    return Cifar100(images, fine, coarse, fine_names, coarse_names, source)


def load(root: Path, source: Path | None = None, fetch: bool = False,
         limit: ExtractLimit = EXTRACT_LIMIT) -> Cifar100:
    """CIFAR-100 from ``--source`` (the archive, a folder holding it, or an extracted
    ``cifar-100-python`` folder), from ``<root>/raw``, or downloaded there with ``fetch``; the
    archive is extracted within ``limit``."""
    root = Path(root)
    if fetch:
        archive = download(URL, root / "raw" / ARCHIVE, MD5[ARCHIVE])
    else:
        where = Path(source) if source is not None else root / "raw"
        candidates = [where] if where.is_file() else [where / ARCHIVE, where / FOLDER, where]
        archive = next((c for c in candidates if c.is_file()), None)
        if archive is None:
            folder = next((c for c in candidates
                           if c.is_dir() and all((c / f).is_file() for f in ("train", "test", "meta"))), None)
            if folder is None:
                raise PrepError(f"no {ARCHIVE} (nor an extracted {FOLDER} folder) at {where}; {HOW_TO_GET}")
            for f in ("train", "test", "meta"):  # an extracted copy: check each file
                verify_md5(folder / f, MD5[f], f"delete {folder} and {HOW_TO_GET}")
            return _read_folder(folder, str(folder))
    verify_md5(archive, MD5[ARCHIVE], f"delete it and {HOW_TO_GET}")
    with temporary_folder(root, "cifar100", "extract") as tmp:
        safe_extract(archive, tmp, limit)
        folder = Path(tmp) / FOLDER
        for f in ("train", "test", "meta"):
            if not (folder / f).is_file():
                raise PrepError(f"{archive} has no {FOLDER}/{f}: not the CIFAR-100 python archive; {HOW_TO_GET}")
        return _read_folder(folder, str(archive))


def select(data: Cifar100, classes: list[str], list_file: str):
    """The images of ``classes`` (fine names) with labels 0..len-1 in list order.

    Every class must exist in the data and have the same number of images (600 in CIFAR-100).
    """
    index = {n: i for i, n in enumerate(data.fine_names)}
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise PrepError(f"split list {list_file} names {unknown[0]!r}, which is not a CIFAR-100 fine "
                        f"class of {data.source}; the data does not match the split lists")
    label_of = np.full(len(data.fine_names), -1)
    label_of[[index[c] for c in classes]] = np.arange(len(classes))
    labels = label_of[data.fine]
    keep = labels >= 0
    counts = np.bincount(labels[keep], minlength=len(classes))
    if counts.min() == 0 or counts.min() != counts.max():
        c = classes[int(np.argmin(counts))]
        raise PrepError(f"{data.source}: class {c!r} has {counts.min()} images but others have "
                        f"{counts.max()}; the file is not the complete CIFAR-100, get a clean copy")
    return data.images[keep], labels[keep], counts


def add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("data"), help="folder of prepared datasets")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--source", type=Path, help=f"{ARCHIVE}, a folder holding it, or an extracted "
                       f"{FOLDER} folder (default: <root>/raw)")
    group.add_argument("--download", action="store_true",
                       help=f"download {ARCHIVE} into <root>/raw (md5 checked; kept for next time)")
    add_extract_limit_arg(parser, EXTRACT_LIMIT)


def write_and_report(root: Path, name: str, splits: dict, counts: dict, meta: dict) -> Path:
    """Write the prepared dataset and print one line of what it holds."""
    path = write_prepared(root, name, splits, meta)
    print(f"wrote {path}: " + ", ".join(f"{s} {c}" for s, c in counts.items()) + " images of 32x32x3")
    return path


def locked(name: str, build):
    """``prepare(root, source=None, fetch=False, limit=EXTRACT_LIMIT)`` writing ``<root>/<name>``
    with ``build``, holding the dataset's lock throughout (a second preparation of the same
    dataset at the same time is refused in one line)."""
    def prepare(root: Path, source: Path | None = None, fetch: bool = False,
                limit: ExtractLimit = EXTRACT_LIMIT) -> Path:
        with lock_dataset(root, name):
            return build(root, source, fetch, limit)
    prepare.__doc__ = f"Write ``<root>/{name}`` from CIFAR-100 (see ``load``), holding its lock."
    return prepare


def command(prepare, description: str):
    """The ``main(argv)`` of a CIFAR-100-based preparation module: --root, --source/--download."""
    def main(argv=None):
        parser = argparse.ArgumentParser(description=description)
        add_source_args(parser)
        args = parser.parse_args(argv)
        start = time.perf_counter()
        prepare(args.root, args.source, args.download, limit_from_args(args, EXTRACT_LIMIT))
        print(f"done in {time.perf_counter() - start:.1f}s")
    return main
