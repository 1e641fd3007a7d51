"""Evaluate a saved run on the test split, without training: accuracy ± 95% CI.

    python evaluate.py runs/glyphs-5w1s                       # best.pt, the run's own test protocol
    python evaluate.py runs/glyphs-5w1s --weights last        # checkpoint.pt (latest weights)
    python evaluate.py runs/glyphs-5w1s --shots 5 --test-inner-steps 20 --eval-tasks 1000
    python evaluate.py runs/glyphs-5w1s/model.pt --split val

Every setting defaults to the run's own (its seed, so the same test tasks as train.py's final test,
which it reproduces exactly with the same weights). With other --ways than the run was trained
for, the meta-learned head initialisation does not fit: the head then starts from zero (W = 0,
b = 0) and is adapted on each task's support set like any head.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from anil.run import checkpoint
from anil.run.checkpoint import CheckpointError
from anil.run.cli import dataset_path, fail, non_negative_int, positive_float, positive_int, resolve_device
from anil.data import DatasetError, load_split
from anil.fast import fast_evaluate
from anil.model import ConvBody, make_head
from anil.run.progress import Progress
from anil.sampler import SamplerError, TaskSampler, split_seed

WEIGHT_FILES = {"best": "best.pt", "last": "checkpoint.pt"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run folder written by train.py, or one of its .pt files")
    p.add_argument("--weights", choices=sorted(WEIGHT_FILES), default="best",
                   help="in a run folder: best.pt (best validation) or checkpoint.pt (latest)")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--ways", type=positive_int, help="N classes per task (default: the run's)")
    p.add_argument("--shots", type=positive_int, help="K support images per class (default: the run's)")
    p.add_argument("--test-inner-steps", type=non_negative_int, help="inner steps (default: the run's)")
    p.add_argument("--inner-lr", type=positive_float, help="inner step size α (default: the run's)")
    p.add_argument("--eval-tasks", type=positive_int, help="number of tasks (default: the run's)")
    p.add_argument("--seed", type=int, help="task seed (default: the run's, i.e. its test tasks)")
    p.add_argument("--data-root", type=Path, help="folder of prepared datasets (default: the run's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    file = args.run / WEIGHT_FILES[args.weights] if args.run.is_dir() else args.run
    if args.run.is_dir() and args.weights == "best" and not file.exists():
        file = args.run / "checkpoint.pt"  # a run without validation has no best.pt
        print(f"note: {args.run} has no best.pt (no validation ran); using checkpoint.pt")
    try:
        saved = checkpoint.load(file)
        if not {"body", "head", "config"} <= set(saved):
            raise CheckpointError(f"{file} holds no network weights; give a run folder or its "
                                  f"best.pt, checkpoint.pt or model.pt")
    except CheckpointError as e:
        fail(str(e))
    config = argparse.Namespace(**saved["config"])
    for key in ("ways", "shots", "test_inner_steps", "inner_lr", "eval_tasks", "seed", "data_root"):
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    config.data_root = Path(config.data_root)
    args.device = resolve_device(args.device)
    device = torch.device(args.device)

    try:
        path = dataset_path(config.dataset, config.data_root)
        split = load_split(path, args.split)
        sampler = TaskSampler(split, config.ways, config.shots, seed=split_seed(config.seed, args.split),
                              rotate=config.rotate)
    except (DatasetError, SamplerError) as e:
        fail(str(e))
    channels, size, _ = split.image_shape
    body = ConvBody(channels, size, hidden=config.hidden).to(device)
    head = make_head(body.feature_dim, config.ways).to(device)
    try:
        body.load_state_dict(saved["body"])
    except RuntimeError as e:
        fail(f"{file}: the saved body does not fit {path}'s {channels}x{size}x{size} images "
             f"({str(e).splitlines()[-1].strip()[:120]})")
    if saved["head"]["weight"].shape == head.weight.shape:
        head.load_state_dict(saved["head"])
    else:
        print(f"note: the run's head is {saved['head']['weight'].shape[0]}-way; for {config.ways}-way "
              f"tasks the head starts from zero", flush=True)
        torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)

    body.eval(), head.eval()
    bar = Progress(config.eval_tasks, args.split)
    start = time.perf_counter()
    try:
        mean, ci, _ = fast_evaluate(body, head, sampler, config.eval_tasks, config.inner_lr,
                                    config.test_inner_steps, device, progress=lambda d, t: bar.update(d))
    except KeyboardInterrupt:
        bar.clear()
        print("\ninterrupted; nothing to save", file=sys.stderr)
        sys.exit(130)
    bar.clear()
    which = f"iteration {saved['iteration']}" if "iteration" in saved else "saved weights"
    if "val_accuracy" in saved:
        which += f", best validation {100 * saved['val_accuracy']:.2f}%"
    print(f"{args.split} accuracy {100 * mean:.2f} ± {100 * ci:.2f}% (95% CI over {config.eval_tasks} "
          f"tasks; {config.dataset} {config.ways}-way {config.shots}-shot, {config.test_inner_steps} "
          f"inner steps; {file.name}: {which}; {time.perf_counter() - start:.1f}s)", flush=True)
    return mean, ci


if __name__ == "__main__":
    main()
