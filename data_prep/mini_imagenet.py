"""mini-ImageNet (Vinyals et al. 2016; Ravi & Larochelle 2017 split): 100 ImageNet classes split
64/16/20, 600 images each, 84×84×3, written in the prepared format to ``<root>/mini-imagenet``.

    python -m data_prep.mini_imagenet --root data --source DIR

DIR holds the widely used pickles ``mini-imagenet-cache-{train,val,test}.pkl`` (the validation one
may also be named ``mini-imagenet-cache-validation.pkl``, as learn2learn saves it), or
``--source`` names the ``mini-imagenet.tar.gz`` that contains them. There is no download option:
the files are hosted on Google Drive, Dropbox and Zenodo by third parties, and those links come
and go (see the README). Each pickle is a dict ``{"image_data": uint8 [n, 84, 84, 3] RGB,
"class_dict": {wnid: [indices into image_data]}}``.

The pickles come from the internet, so they are loaded with an unpickler that accepts only plain
containers and numpy arrays (a pickle cannot run code), and an HTML page saved under a ``.pkl``
name (what Google Drive serves in place of a large file) is recognised and reported. The classes
of each pickle must be exactly those of ``data_prep/splits/mini_imagenet_{split}.txt``. Images are
stored as they are; like the MAML reference, training only scales them to [0, 1].
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from anil.data import lock_dataset, temporary_folder, write_prepared

from .archives import ExtractLimit, add_extract_limit_arg, limit_from_args, safe_extract
from .common import PrepError, check_disjoint, read_list, run_cli, verify_md5
from .pickles import safe_load_pickle

NAME = "mini-imagenet"
FILES = {
    "train": ("mini-imagenet-cache-train.pkl",),
    "val": ("mini-imagenet-cache-val.pkl", "mini-imagenet-cache-validation.pkl"),
    "test": ("mini-imagenet-cache-test.pkl",),
}
TARBALL = "mini-imagenet.tar.gz"
TARBALL_MD5 = "b38f1eb4251fb9459ecc8e7febf9b2eb"  # torchmeta's MiniImagenet
SIZE = 84
# mini-imagenet.tar.gz holds the three pickles: 38400 + 9600 + 12000 images of 84x84x3 bytes,
# 813 + 203 + 254 = 1270 MB; about twice that is allowed (--max-extract-mb overrides).
EXTRACT_LIMIT = ExtractLimit.mb(2600, member_mb=1700)
HOW_TO_GET = ("get mini-imagenet-cache-{train,val,test}.pkl again (README, section mini-ImageNet: "
              "learn2learn's copies on zenodo.org/record/7978538, or the Google Drive files listed by "
              "github.com/renmengye/few-shot-ssl-public) and pass their folder with --source")


def _key(d: dict, name: str):
    for k in (name, name.encode()):
        if k in d:
            return d[k]
    raise KeyError(name)


def read_pickle(path: Path, classes: list[str], list_file: str):
    """images uint8 [n, 84, 84, 3] and labels [n] (index in ``classes``) from one cache pickle."""
    data = safe_load_pickle(path, HOW_TO_GET)
    try:
        image_data, class_dict = _key(data, "image_data"), _key(data, "class_dict")
    except (KeyError, TypeError):
        raise PrepError(f"{path} has no 'image_data' and 'class_dict': not a mini-ImageNet cache "
                        f"pickle; {HOW_TO_GET}") from None
    if not (isinstance(image_data, np.ndarray) and image_data.dtype == np.uint8
            and image_data.ndim == 4 and image_data.shape[1:] == (SIZE, SIZE, 3)):
        got = (f"{image_data.dtype} {list(image_data.shape)}" if isinstance(image_data, np.ndarray)
               else type(image_data).__name__)
        raise PrepError(f"{path}: image_data is {got}, expected uint8 [n, {SIZE}, {SIZE}, 3]; {HOW_TO_GET}")
    if not isinstance(class_dict, dict):
        raise PrepError(f"{path}: class_dict is a {type(class_dict).__name__}, expected a dict; {HOW_TO_GET}")
    found = {k.decode() if isinstance(k, bytes) else str(k): v for k, v in class_dict.items()}
    missing, unexpected = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
    if missing or unexpected:
        raise PrepError(f"{path}: its classes do not match the Ravi & Larochelle split "
                        f"(data_prep/splits/{list_file}): missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}; is it the right split's file?")
    indices = []
    for c in classes:
        idx = np.asarray(found[c]).reshape(-1)
        if idx.dtype.kind not in "iu" or (len(idx) and (idx.min() < 0 or idx.max() >= len(image_data))):
            raise PrepError(f"{path}: class_dict[{c!r}] holds indices outside image_data "
                            f"(0..{len(image_data) - 1}); the file is corrupt; {HOW_TO_GET}")
        indices.append(idx.astype(np.int64))
    counts = np.array([len(i) for i in indices])
    if counts.min() == 0 or counts.min() != counts.max():
        raise PrepError(f"{path}: class {classes[int(np.argmin(counts))]} has {counts.min()} images, "
                        f"others {counts.max()}; the file is incomplete; {HOW_TO_GET}")
    labels = np.repeat(np.arange(len(classes)), counts)
    return image_data[np.concatenate(indices)], labels, int(counts[0])


def find_pickles(folder: Path) -> dict[str, Path]:
    out = {}
    for split, names in FILES.items():
        found = [folder / n for n in names if (folder / n).is_file()]
        if not found:
            also = f" (nor {' or '.join(names[1:])})" if len(names) > 1 else ""
            raise PrepError(f"{folder / names[0]} not found{also}; {HOW_TO_GET}")
        out[split] = found[0]
    return out


def prepare(root: Path, source: Path | None = None, limit: ExtractLimit = EXTRACT_LIMIT) -> Path:
    """Read the pickles (or the tarball, extracted within ``limit``) and write ``<root>/mini-imagenet``,
    holding the dataset's lock throughout (a second preparation at the same time is refused)."""
    root = Path(root)
    classes = {s: read_list(f"mini_imagenet_{s}.txt") for s in FILES}
    check_disjoint(classes, "data_prep/splits/mini_imagenet_*.txt")
    where = Path(source) if source is not None else root / "raw"
    with lock_dataset(root, NAME), temporary_folder(root, NAME, "extract") as tmp:
        if where.is_file() and where.name.endswith((".tar.gz", ".tgz", ".tar")):
            if where.name == TARBALL:
                verify_md5(where, TARBALL_MD5, f"delete it and {HOW_TO_GET}")
            safe_extract(where, tmp, limit)
            pickles = next((p for p in Path(tmp).rglob(FILES["train"][0])), None)
            where = pickles.parent if pickles is not None else Path(tmp)
        elif where.is_file():
            where = where.parent
        paths = find_pickles(where)
        splits, counts = {}, {}
        for split, path in paths.items():
            print(f"reading {path} ...", flush=True)
            images, labels, per_class = read_pickle(path, classes[split], f"mini_imagenet_{split}.txt")
            splits[split] = (images, labels, classes[split])
            counts[split] = f"{len(classes[split])} classes x {per_class}"
        meta = {"source": f"mini-ImageNet cache pickles ({where})",
                "split": "Ravi & Larochelle 2017, data_prep/splits/mini_imagenet_*.txt"}
        path = write_prepared(root, NAME, splits, meta)
    print(f"wrote {path}: " + ", ".join(f"{s} {c}" for s, c in counts.items()) + " images of 84x84x3")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("data"), help="folder of prepared datasets")
    parser.add_argument("--source", type=Path, help="folder holding mini-imagenet-cache-{train,val,test}.pkl, "
                        "or mini-imagenet.tar.gz (default: <root>/raw)")
    add_extract_limit_arg(parser, EXTRACT_LIMIT)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    prepare(args.root, args.source, limit_from_args(args, EXTRACT_LIMIT))
    print(f"done in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    sys.exit(run_cli(main))
