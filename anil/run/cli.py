"""Small helpers shared by the command-line tools (``anil.paper.compare``, ``anil.paper.analysis``): argument
types that reject bad values with one line, and opening a prepared dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .presets import PRESETS, preset


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_task_options(p: argparse.ArgumentParser, iterations_type=None) -> None:
    """The dataset and meta-learning options shared by train.py and ``anil.paper.compare``. Those marked
    (preset) default to None and are filled in from the dataset's preset after parsing."""
    p.add_argument("--dataset", default="glyphs", choices=sorted(PRESETS),
                   help="dataset; its preset sets every default marked 'preset'")
    p.add_argument("--data-root", type=Path, default=Path("data"), help="folder of prepared datasets")
    p.add_argument("--ways", type=positive_int, help="N classes per task (preset)")
    p.add_argument("--shots", type=positive_int, help="K support (and K query) images per class (preset)")
    p.add_argument("--meta-batch", type=positive_int, help="tasks per outer step (preset)")
    p.add_argument("--inner-lr", type=positive_float, help="inner step size α (preset)")
    p.add_argument("--inner-steps", type=non_negative_int, help="inner steps while training (preset)")
    p.add_argument("--test-inner-steps", type=non_negative_int, help="inner steps at val/test (preset)")
    p.add_argument("--outer-lr", type=positive_float, help="Adam learning rate β (preset)")
    p.add_argument("--iterations", type=iterations_type or non_negative_int, help="outer steps (preset)")
    p.add_argument("--first-order", action="store_true", help="first-order (no Hessian terms)")
    p.add_argument("--hidden", type=positive_int, help="conv filters per block (preset)")


def resolve_device(choice: str) -> str:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU is a one-line error."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is available here; use --device cpu")
    return choice


def fail(message: str):
    """Stop with a one-line error (exit status 2, like argparse)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def dataset_path(dataset: str, data_root: Path) -> Path:
    """The prepared dataset's folder; the built-in glyphs are generated on first use."""
    if dataset == "glyphs":
        from data_prep.glyphs import ensure
        return ensure(data_root, seed=0)
    path = Path(data_root) / dataset
    if not (path / "meta.json").is_file():
        fail(f"no prepared {dataset} dataset at {path}; prepare it with: "
             + preset(dataset).get("prepare", "its data_prep script").format(root=data_root))
    return path
