"""CIFAR-FS (Bertinetto et al. 2019): CIFAR-100's fine classes split 64/16/20, 600 images each,
32×32×3, written in the prepared format to ``<root>/cifar-fs``.

    python -m data_prep.cifar_fs --root data --download            # fetch cifar-100-python.tar.gz
    python -m data_prep.cifar_fs --root data --source ~/cifar-100-python.tar.gz

The class lists are ``data_prep/splits/cifar_fs_{train,val,test}.txt`` (their header names the
source). Images are stored as they are: the references (learn2learn's ANIL example) only scale
them to [0, 1], which the sampler does.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import cifar100
from .common import check_disjoint, read_list, run_cli

NAME = "cifar-fs"
SPLIT_FILES = {s: f"cifar_fs_{s}.txt" for s in ("train", "val", "test")}


def split_classes() -> dict[str, list[str]]:
    classes = {s: read_list(f) for s, f in SPLIT_FILES.items()}
    check_disjoint(classes, "data_prep/splits/cifar_fs_*.txt")
    return classes


def _prepare(root, source, fetch, limit) -> Path:
    classes = split_classes()
    data = cifar100.load(root, source, fetch, limit)
    splits, counts = {}, {}
    for split, names in classes.items():
        images, labels, per_class = cifar100.select(data, names, SPLIT_FILES[split])
        splits[split] = (images, labels, names)
        counts[split] = f"{len(names)} classes x {per_class[0]}"
    meta = {"source": f"CIFAR-100 ({data.source})",
            "split": "Bertinetto et al. 2019 (CIFAR-FS), data_prep/splits/cifar_fs_*.txt"}
    return cifar100.write_and_report(root, NAME, splits, counts, meta)


prepare = cifar100.locked(NAME, _prepare)
main = cifar100.command(prepare, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(run_cli(main))
