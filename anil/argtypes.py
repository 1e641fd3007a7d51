"""Argument types for argparse that reject a bad value with a one-line reason.

Shared by the commands of anil.run and data_prep; standard library only, so that a preparer
needs nothing from the training machinery to parse its options.
"""

from __future__ import annotations

import argparse
import os

SEED_LIMIT = 2 ** 32  # numpy's global seed must lie in [0, 2**32)


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


def seed(text):
    """A random seed: an integer in [0, 2**32)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must lie in 0..{SEED_LIMIT - 1}, got {text}")
    return value


# The presets take 5 or 10 inner steps (anil/run/presets.py); each step adapts every task's
# head once more, so a count 100x past them only runs for hours without a word.
MAX_INNER_STEPS = 1000


def inner_steps(text):
    """An inner-step count: 0..MAX_INNER_STEPS."""
    value = non_negative_int(text)
    if value > MAX_INNER_STEPS:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_INNER_STEPS}, got {text} (the presets take 5 or 10; each step adapts "
            f"every task's head once more, so a huge count only runs for hours)")
    return value


def threads(text):
    """A CPU thread count: 1..os.cpu_count(). More threads than logical CPUs only compete for
    them, and a huge count makes torch fail to start its thread pool (a crash, not an error)."""
    value = positive_int(text)
    limit = os.cpu_count() or 1
    if value > limit:
        raise argparse.ArgumentTypeError(
            f"at most {limit}, the number of CPUs here, got {text} (more threads than CPUs only "
            f"compete for them)")
    return value
