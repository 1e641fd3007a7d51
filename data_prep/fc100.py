"""FC100 (Oreshkin et al. 2018, TADAM): CIFAR-100 split by superclass, 12/4/4 superclasses =
60/20/20 fine classes, 600 images each, 32×32×3, written in the prepared format to
``<root>/fc100``.

    python -m data_prep.fc100 --root data --download               # fetch cifar-100-python.tar.gz
    python -m data_prep.fc100 --root data --source ~/cifar-100-python.tar.gz

Splitting by superclass keeps related classes (e.g. two kinds of trees) out of different splits,
which makes FC100 harder than CIFAR-FS. The lists are ``data_prep/splits/fc100_{train,val,test}.txt``
(superclass index, name and its five fine classes); each image's own coarse label is checked
against them. Classes are fine classes, ordered by superclass. Images are only scaled to [0, 1]
(by the sampler), as in learn2learn's ANIL example.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


from . import cifar100
from .common import PrepError, check_disjoint, read_list, run_cli

NAME = "fc100"
SPLIT_FILES = {s: f"fc100_{s}.txt" for s in ("train", "val", "test")}


def split_superclasses() -> dict[str, list[tuple[int, str, list[str]]]]:
    """{split: [(coarse index, coarse name, [fine names])]} from the split files."""
    out = {}
    for split, f in SPLIT_FILES.items():
        rows = []
        for line in read_list(f):
            index, name, fine = line.split("\t")
            rows.append((int(index), name, fine.split()))
        out[split] = rows
    check_disjoint({s: [r[1] for r in rows] for s, rows in out.items()}, "data_prep/splits/fc100_*.txt")
    check_disjoint({s: sum((r[2] for r in rows), []) for s, rows in out.items()},
                   "data_prep/splits/fc100_*.txt")
    return out


def _prepare(root, source, fetch, limit) -> Path:
    superclasses = split_superclasses()
    data = cifar100.load(root, source, fetch, limit)
    splits, counts = {}, {}
    for split, rows in superclasses.items():
        names = []
        for index, coarse_name, fine_names in rows:
            if index >= len(data.coarse_names) or data.coarse_names[index] != coarse_name:
                raise PrepError(f"split list {SPLIT_FILES[split]} puts superclass {coarse_name!r} at "
                                f"index {index} but {data.source} does not; the data does not match "
                                f"the split lists")
            for fine in fine_names:
                if fine in data.fine_names:
                    seen = np.unique(data.coarse[data.fine == data.fine_names.index(fine)])
                    if seen.tolist() != [index]:
                        raise PrepError(f"{data.source}: images of {fine!r} have superclass "
                                        f"{seen.tolist()}, the FC100 list {SPLIT_FILES[split]} says "
                                        f"{index} ({coarse_name}); get a clean copy of {cifar100.ARCHIVE}")
            names += fine_names
        images, labels, per_class = cifar100.select(data, names, SPLIT_FILES[split])
        splits[split] = (images, labels, names)
        counts[split] = f"{len(rows)} superclasses = {len(names)} classes x {per_class[0]}"
    meta = {"source": f"CIFAR-100 ({data.source})",
            "split": "Oreshkin et al. 2018 (FC100), data_prep/splits/fc100_*.txt",
            "superclasses": {s: [r[1] for r in rows] for s, rows in superclasses.items()}}
    return cifar100.write_and_report(root, NAME, splits, counts, meta)


prepare = cifar100.locked(NAME, _prepare)
main = cifar100.command(prepare, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(run_cli(main))
