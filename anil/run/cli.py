"""What every command shares: argument types that reject bad values in one line, the option
groups (task, device and threads, speed), presets filled in after parsing, the device choice,
and opening a dataset by preset name (``--dataset``) or by path (``--data``).

Every error a user can cause ends in ``fail``: one line on stderr, exit status 2 (as argparse).
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

import torch

from anil.argtypes import (MAX_INNER_STEPS, inner_steps, non_negative_int,  # noqa: F401
                           positive_float, positive_int, seed, threads)
from anil.fast import HEAD_LOOPS, PRECISIONS, STRATEGIES
from anil.model import BATCH_NORMS
from anil.run.presets import OWN_DATA, PRESETS, preset

# ------------------------------------------------------------------------------- help output


def program(name: str) -> str:
    """The name --help shows: the console script's (anil-train, ...) when run as one, else
    ``name`` (e.g. "train.py", "python -m anil.explain")."""
    invoked = Path(sys.argv[0]).name
    return invoked if invoked.startswith("anil-") else name


# The commands of a clone and their installed names (pyproject.toml's [project.scripts]).
INSTALLED_NAMES = {"python train.py": "anil-train", "python evaluate.py": "anil-evaluate",
                   "python -m anil.paper.compare": "anil-compare",
                   "python -m anil.paper.analysis": "anil-analysis",
                   "python -m anil.explain": "anil-explain",
                   "python -m data_prep.folder": "anil-prepare folder",
                   "torchrun --nproc_per_node=4 train.py": "torchrun --nproc_per_node=4 -m anil.train"}


def as_invoked(text: str) -> str:
    """``text`` with the commands named as the user runs them: run as an installed anil-*
    script, ``python train.py --resume ...`` reads ``anil-train --resume ...`` (there is no
    train.py outside a clone)."""
    if not Path(sys.argv[0]).name.startswith("anil-"):
        return text
    for clone, installed in INSTALLED_NAMES.items():
        text = text.replace(clone, installed)
    return text


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's and epilog's line breaks, and shows "(default: X)" only for
    options that have a real default and do not already say it (preset options say theirs).
    Run as an installed script, the examples name the installed commands (``as_invoked``)."""

    def _fill_text(self, text, width, indent):
        return as_invoked(super()._fill_text(text, width, indent))

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" not in text and "preset" not in text and action.default not in
                (None, False, argparse.SUPPRESS) and action.option_strings):
            text += " (default: %(default)s)"
        return text


def preset_values(key: str, overrides: dict | None = None) -> str:
    """'5 for glyphs, mini-imagenet, ..., --data alone; 20 for omniglot, omniglot-rot': a preset
    option's value per dataset (``--data`` without ``--dataset`` takes the defaults for any
    dataset; ``--data`` with ``--dataset NAME`` takes NAME's). ``overrides`` ({dataset: {key:
    value}}): a command's own values that replace the preset's."""
    by_value = {}
    for name, values in PRESETS.items():
        values = {**values, **(overrides or {}).get(name, {})}
        by_value.setdefault(values[key], []).append(name)
    by_value.setdefault(OWN_DATA[key], []).append("--data alone")
    shown = lambda v: ("on" if v else "off") if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)
    return "; ".join(f"{shown(value)} for {', '.join(names)}" for value, names in by_value.items())


def _preset_option(group, flag, key, text, **kwargs):
    group.add_argument(flag, default=None, help=f"{text} (preset: {preset_values(key)})", **kwargs)


def add_task_options(p: argparse.ArgumentParser, iterations_type=None, overrides=None):
    """The dataset and meta-learning options shared by train.py and ``anil.paper.compare``.
    Those marked (preset) default to None and are filled in by ``apply_preset``; ``overrides``
    ({dataset: {key: value}}: values a command applies instead of the preset's) go into the help."""
    task = p.add_argument_group("dataset and task")
    task.add_argument("--dataset", default=None, choices=sorted(PRESETS),
                      help="a named dataset (default: glyphs); its preset sets every default "
                           "marked 'preset'. With --data: only its preset is used")
    task.add_argument("--data", type=Path, default=None, metavar="DIR",
                      help="any prepared dataset folder (e.g. one made by python -m "
                           "data_prep.folder); image size from its meta.json")
    task.add_argument("--data-root", type=Path, default=Path("data"),
                      help="folder that holds the named datasets")
    _preset_option(task, "--ways", "ways", "N, classes per task", type=positive_int)
    _preset_option(task, "--shots", "shots", "K, support (and query) images per class",
                   type=positive_int)
    task.add_argument("--rotate", action=argparse.BooleanOptionalAction, default=None,
                      help="rotate each class of a task by k·90°, k drawn per class per task; "
                           "--data with --dataset NAME rotates as NAME does "
                           f"(preset: {preset_values('rotate')})")
    task.add_argument("--seed", type=seed, default=0,
                      help="seed of the initial weights and of the train/val/test task streams")
    algo = p.add_argument_group("ANIL (inner and outer loop)")
    _preset_option(algo, "--meta-batch", "meta_batch", "B, tasks per outer step", type=positive_int)
    _preset_option(algo, "--inner-lr", "inner_lr", "α, inner step size", type=positive_float)
    _preset_option(algo, "--inner-steps", "inner_steps", "S, inner steps while training",
                   type=inner_steps)
    _preset_option(algo, "--test-inner-steps", "test_inner_steps",
                   "inner steps at validation and test", type=inner_steps)
    _preset_option(algo, "--outer-lr", "outer_lr", "β, Adam's learning rate", type=positive_float)
    _preset_option(algo, "--iterations", "iterations", "outer steps",
                   type=iterations_type or non_negative_int)
    algo.add_argument("--first-order", action="store_true",
                      help="first-order ANIL: inner gradients treated as constants")
    algo.add_argument("--batch-norm", choices=BATCH_NORMS, default="task",
                      help="batch-norm statistics over: the whole task (support and query "
                           "together, learn2learn), 'separate' (support and query each their "
                           "own, the MAML reference code) or 'support' (the support set's for "
                           "both: no query depends on another; docs/design.md)")
    _preset_option(algo, "--hidden", "hidden", "conv filters per block", type=positive_int)
    for action in p._actions if overrides else ():  # the help shows the values that will run
        key = action.dest
        if "(preset: " in (action.help or "") and any(key in o for o in overrides.values()):
            action.help = action.help.split(" (preset: ")[0] + f" (preset: {preset_values(key, overrides)})"
    return task


def add_device_options(p: argparse.ArgumentParser, speed: bool = True, head_loop: bool = True):
    """--device and --threads, --head-loop unless ``head_loop=False``, and with ``speed`` the
    fast path's options (anil/fast.py)."""
    group = p.add_argument_group("device and speed (none of these changes the math)")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                       help="auto: cuda if available, else mps (Apple GPUs), else cpu")
    group.add_argument("--threads", type=threads, default=None,
                       help=f"CPU threads torch may use (default: torch's, "
                            f"{torch.get_num_threads()} here); use 1 when other jobs share the cores")
    if head_loop:
        group.add_argument("--head-loop", choices=HEAD_LOOPS, default="torch.func",
                           help="the inner loop: torch.func (grad + functional_call, vmapped over "
                                "tasks) or its closed form (linear head; fewer operations)")
    if not speed:
        return group
    group.add_argument("--strategy", choices=[*STRATEGIES, "reference"], default=None,
                       help="tasks per head-loop call and body backward: 1 (task), --chunk-size "
                            "(chunk) or all (vmap); 'reference' runs the readable "
                            "anil.algorithm path (default: chunk of 8 on a CPU, vmap on a GPU)")
    group.add_argument("--chunk-size", type=positive_int, default=8,
                       help="tasks per chunk for --strategy chunk")
    group.add_argument("--batch-body", action=argparse.BooleanOptionalAction, default=None,
                       help="one body call for all tasks of a chunk, per-task batch norm "
                            "(default: on GPUs only)")
    group.add_argument("--precision", choices=PRECISIONS, default="float32",
                       help="bfloat16: autocast of the body (changes rounding)")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                       help="channels-last memory format for the conv body")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the body and the head loop: about a minute of "
                            "compiling, then faster steps (pays off on long runs, docs/speed.md)")
    return group


def apply_preset(args, extra: dict | None = None) -> None:
    """Fill every option left at None from the preset of ``--dataset`` (glyphs by default; for
    ``--data`` without ``--dataset``, the defaults for any dataset), then from ``extra`` (e.g. a
    command's own quicker budget)."""
    if args.dataset is None and not getattr(args, "data", None):
        args.dataset = "glyphs"
    values = {**(preset(args.dataset) if args.dataset else OWN_DATA), **(extra or {})}
    if getattr(args, "data", None):  # a folder made by some command, not the preset's: none recorded
        values["prepare"] = None
    for key, value in values.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def dataset_name(args) -> str:
    """How runs and messages name the dataset: the preset name, or the --data folder's name."""
    return Path(args.data).name if getattr(args, "data", None) else args.dataset


# ----------------------------------------------------------------------------- device, threads


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(choice: str) -> str:
    """``auto`` → cuda, else mps, else cpu; an unavailable device is a one-line error."""
    available = available_devices()
    if choice == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if d in available)
    if choice not in available:
        fail(f"--device {choice}: no {choice.upper()} device is available here; available: "
             f"{', '.join(available)}")
    return choice


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads (None: leave torch's default); returns the number in use."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# ------------------------------------------------------------------------------ errors, data


def user_error(e: Exception) -> str:
    """A library error's message for a command-line user: a SamplerError's remedy in flags."""
    setting = getattr(e, "setting", None)
    if setting is None:
        return str(e)
    flag = {"ways": f"--ways {e.fix} or fewer", "shots": f"--shots {e.fix} or fewer",
            "rotate": "--no-rotate"}[setting]
    return f"{e.problem}; use {flag}"


def fail(message: str):
    """Stop with a one-line error (exit status 2, like argparse)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# What to do about an operating-system error on a path the user gave (or one below it).
PATH_ERRORS = {
    errno.EACCES: "permission denied: give a path you may enter (and write), or fix its permissions",
    errno.EPERM: "not permitted: give a path you may enter (and write), or fix its permissions",
    errno.ENOSPC: "no space left on the device: free space, or give a path on another disk",
    errno.EDQUOT: "disk quota exceeded: free space, or give a path on another disk",
    errno.EFBIG: "file too large for this process's limit (ulimit -f): raise it, or write elsewhere",
    errno.EROFS: "read-only file system: give a path on a writable disk",
}


def path_error(e: OSError):
    """Stop with one line for an operating-system error on a path: which path, what to do.
    (On Python 3.11, even ``Path.exists`` raises PermissionError below a folder the user may
    not enter.)"""
    advice = PATH_ERRORS.get(e.errno, f"{e.strerror or e}: check the path")
    fail(f"{e.filename or 'a path'}: {advice}")


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure: MemoryError (Python, numpy), torch's
    OutOfMemoryError (CUDA), or the RuntimeError of torch's CPU allocator."""
    cuda = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    text = str(e)
    return isinstance(e, (MemoryError, cuda)) or (
        isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text))


def memory_error(e: BaseException, advice: str):
    """Stop with one line for an allocation failure: what ran out, and ``advice``."""
    detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
    fail(f"out of memory ({detail}); {advice}")


def dataset_path(args) -> Path:
    """The prepared dataset's folder: ``--data`` as given, or ``<data-root>/<dataset>`` (the
    built-in glyphs are generated there on first use)."""
    if getattr(args, "data", None):
        path = Path(args.data)
        if not (path / "meta.json").is_file():
            fail(f"--data {path}: not a prepared dataset (no meta.json); make one with  python -m "
                 f"data_prep.folder --source IMAGES --out {path} --size 28")
        return path
    if args.dataset in (None, "glyphs"):
        from data_prep.glyphs import ensure
        return ensure(args.data_root, seed=0)
    path = Path(args.data_root) / args.dataset
    if not (path / "meta.json").is_file():
        fail(f"no prepared {args.dataset} dataset at {path}; prepare it with: "
             + preset(args.dataset).get("prepare", "its data_prep script").format(root=args.data_root))
    return path
