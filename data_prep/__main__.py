"""``anil-prepare DATASET [options]`` (or ``python -m data_prep DATASET [options]``): run the
preparer of one dataset; ``anil-prepare DATASET --help`` lists its options.

    anil-prepare glyphs --root data                 the built-in dataset (train.py makes it itself)
    anil-prepare omniglot --root data --download
    anil-prepare mini-imagenet --root data --source FOLDER_WITH_PICKLES
    anil-prepare cifar-fs --root data --download
    anil-prepare fc100 --root data --download
    anil-prepare folder --source IMAGES --out data/mine --size 84   your own images
"""

from __future__ import annotations

import importlib
import sys

from data_prep.common import run_cli

PREPARERS = {"glyphs": "glyphs", "omniglot": "omniglot", "mini-imagenet": "mini_imagenet",
             "cifar-fs": "cifar_fs", "fc100": "fc100", "folder": "folder"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in PREPARERS:
        print(f"error: unknown dataset {name!r}; choose one of {', '.join(PREPARERS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"data_prep.{PREPARERS[name]}")
    sys.argv[0] = f"anil-prepare {name}"  # what each preparer's --help shows as its usage
    return run_cli(module.main, rest)


def console() -> None:
    """The ``anil-prepare`` entry point: exits with ``main``'s status."""
    sys.exit(main())


if __name__ == "__main__":
    console()
