"""Small helpers shared by the command-line tools (``anil.compare``, ``anil.analysis``): argument
types that reject bad values with one line, and opening a prepared dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .presets import preset


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
