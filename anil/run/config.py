"""train.py's settings: the command line, presets, and the rules for resuming a run.

A run's settings are plain values (``run_config``), stored in every checkpoint and in
summary.json. ``--resume DIR`` takes DIR's saved settings; an option given again that would
change what the run computes is refused by name (``--allow-config-change`` accepts it), while
options that only say where or how fast to run (``FREE_ON_RESUME``) may differ.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from anil.fast import default_speed
from anil.run import checkpoint
from anil.run.checkpoint import CheckpointError
from anil.run.cli import (HelpFormatter, add_device_options, add_task_options, apply_preset,
                          dataset_name, fail, non_negative_int, positive_float, positive_int,
                          program, resolve_device)
from anil.run.run_folder import fresh_name, holds_run

# Options that do not change what a run computes (its weights, validation and model selection):
# they may differ when resuming. Every other option must match the interrupted run.
FREE_ON_RESUME = {"data_root", "device", "threads", "out", "eval_tasks", "log_every",
                  "checkpoint_every", "test_weights", "dist_timeout"}
COMMANDS = {"resume", "allow_config_change", "overwrite", "results"}  # what to do, not settings of the run
PATHS = {"data_root", "out", "data"}

EXAMPLES = """examples:
  python train.py                                   built-in glyphs, 5-way 1-shot, minutes on a CPU
  python train.py --ways 20 --shots 5 --iterations 2000 --device cuda
  python train.py --dataset omniglot --threads 1    a named dataset (prepare it first)
  python train.py --data data/my-images             any prepared folder (python -m data_prep.folder)
  python train.py --resume runs/glyphs-5w1s         continue an interrupted run, bit for bit
  torchrun --nproc_per_node=4 train.py --meta-batch 32 --device cuda   data-parallel, 4 GPUs

Run folder: checkpoint.pt, best.pt, model.pt, metrics.jsonl, curve.png, summary.json.
Ctrl-C or SIGTERM finishes the current step, writes checkpoint.pt and exits (130, 143);
a second Ctrl-C stops at once, keeping the previous checkpoint."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program("train.py"), formatter_class=HelpFormatter, epilog=EXAMPLES,
        description="Meta-train ANIL on a few-shot dataset, validate along the way, and "
                    "meta-test at the end.")
    task = add_task_options(p)
    task.add_argument("--num-tasks", type=positive_int, default=None,
                      help="a fixed pool of training tasks, drawn uniformly (learn2learn's "
                           "num_tasks); default: a fresh task per draw")
    test = p.add_argument_group("validation and test")
    test.add_argument("--eval-tasks", type=positive_int, default=600,
                      help="test tasks for the final result")
    test.add_argument("--val-tasks", type=positive_int, default=100,
                      help="validation tasks per validation")
    test.add_argument("--val-every", type=non_negative_int, default=100,
                      help="validate every V iterations (0: never)")
    test.add_argument("--test-weights", default="best", choices=["best", "last"],
                      help="test the best-validated weights or those of the last iteration")
    add_device_options(p)
    run = p.add_argument_group("run folder")
    run.add_argument("--out", type=Path, default=None, metavar="DIR",
                     help="run folder (default: runs/<dataset>-<N>w<K>s, or a fresh -2, -3, ... "
                          "if that holds an earlier run)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run in --out (default: refuse to touch it)")
    run.add_argument("--resume", type=Path, default=None, metavar="DIR",
                     help="continue the interrupted run in DIR with its saved settings")
    run.add_argument("--results", type=Path, default=None, metavar="FILE",
                     help="also write the test figures, with this command line, versions, date "
                          "and device, to FILE (e.g. docs/results/train.json, which docs/ quotes)")
    run.add_argument("--allow-config-change", action="store_true",
                     help="with --resume: accept options that differ from the saved run "
                          "(no longer bit-exact)")
    run.add_argument("--log-every", type=positive_int, default=25,
                     help="print and log training metrics every L iterations")
    run.add_argument("--checkpoint-every", type=non_negative_int, default=100,
                     help="write checkpoint.pt every M iterations (0: only at the end and when "
                          "stopped)")
    dist = p.add_argument_group("distributed (under torchrun)")
    dist.add_argument("--dist-timeout", type=positive_float, default=300.0,
                      help="seconds a process waits for the others before giving up")
    return p


def given_options(parser, argv) -> set[str]:
    """The options written on the command line, as opposed to defaults and presets."""
    defaults = {a: a.default for a in parser._actions}
    for a in defaults:
        a.default = argparse.SUPPRESS
    try:
        return set(vars(parser.parse_args(argv)))
    finally:
        for a, default in defaults.items():
            a.default = default


def run_config(args) -> dict:
    """The settings of a run as plain values (stored in checkpoints and summary.json)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
            if k not in COMMANDS}


def parse_args(argv=None):
    """The run's settings, and on --resume the checkpoint it continues from (else None)."""
    p = build_parser()
    args = p.parse_args(argv)
    apply_preset(args)
    resumed = resume_settings(p, args, argv) if args.resume is not None else None
    if args.out is None:
        args.out = fresh_name(Path("runs") / f"{dataset_name(args)}-{args.ways}w{args.shots}s")
    args.device = resolve_device(args.device)
    reference = args.strategy == "reference"
    if reference and (args.precision != "float32" or args.compile):
        p.error("--strategy reference runs the plain float32 path; drop --precision/--compile or "
                "pick another --strategy")
    if reference and args.head_loop != "torch.func":
        p.error("--strategy reference is the readable torch.func path; --head-loop closed-form "
                "applies to the fast path: drop one of them")
    if args.device == "mps" and (args.precision != "float32" or args.compile):
        p.error("--precision bfloat16 and --compile are not supported on --device mps here; "
                "drop them")
    fastest = default_speed(args.device, args.head_loop)
    args.strategy = args.strategy or fastest.strategy  # with --chunk-size (default 8)
    args.batch_body = fastest.batch_body if args.batch_body is None else args.batch_body
    return args, resumed


def resume_settings(parser, args, argv) -> dict:
    """--resume DIR: take DIR's saved settings, except options given now; refuse any given option
    that would change what the run computes, naming each difference."""
    try:
        resumed = checkpoint.load(args.resume / "checkpoint.pt", kind="checkpoint")
        checkpoint.check_config(args.resume / "checkpoint.pt", resumed)  # before building on it
    except CheckpointError as e:
        if holds_run(args.resume) and not (args.resume / "checkpoint.pt").exists():
            fail(f"--resume {args.resume}: it holds files of a run stopped before its first "
                 f"checkpoint, so there is nothing to resume; start it again with  python "
                 f"train.py --out {args.resume} --overwrite  (and the same options)")
        fail(f"--resume {args.resume}: {e}")
    saved, given = resumed["config"], given_options(parser, argv) - COMMANDS
    if args.out is not None and args.out.resolve() != args.resume.resolve():
        fail(f"--out {args.out} and --resume {args.resume} name different folders; drop --out")
    changed = checkpoint.config_differences(saved, run_config(args),
                                            keys=sorted(given - FREE_ON_RESUME))
    if changed and not args.allow_config_change:
        fail(f"--resume {args.resume}: the run was started with other settings: {'; '.join(changed)}. "
             f"Drop these options to continue the run exactly, or add --allow-config-change")
    if changed:
        print(f"note: resuming with changed settings ({'; '.join(changed)}); the result will not "
              f"equal that of an uninterrupted run", flush=True)
    # A run started by an earlier version has no value for options added since; today's
    # defaults apply (the same math, but the rounding of the rest of the run may differ).
    new = sorted(k for k, v in run_config(args).items()
                 if k not in saved and k not in FREE_ON_RESUME | given and v is not None)
    if new:
        print(f"note: the run predates the options {', '.join(new)}; continuing with "
              + ", ".join(f"{k}={getattr(args, k)}" for k in new), flush=True)
    for key, value in saved.items():
        if key not in given and key not in ("device", "threads"):  # this machine's choices
            setattr(args, key, Path(value) if key in PATHS and value is not None else value)
    args.out = args.resume
    return resumed


def check_meta_batch_fits(args) -> None:
    """Refuse, before drawing it, a meta-batch whose images alone exceed this machine's memory
    (e.g. --meta-batch 1000000000), rather than failing deep inside with a MemoryError."""
    images = args.meta_batch * 2 * args.ways * args.shots
    size = images * args.channels * args.image_size ** 2 * 4  # float32
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not every OS reports it
        return
    if size > memory:
        fail(f"a meta-batch of {args.meta_batch} tasks holds {images:,} images ({size / 2**30:.1f} "
             f"GiB), more than this machine's {memory / 2**30:.1f} GiB of memory; lower --meta-batch")
