"""Evaluate a saved run on the test split, without training: accuracy ± 95% CI.

Every setting defaults to the run's own (its seed, so the same test tasks as train.py's final
test, which it reproduces exactly with the same weights). With other --ways than the run was
trained for, the meta-learned head initialisation does not fit: the head then starts from zero
(W = 0, b = 0) and is adapted on each task's support set like any head.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from anil.data import DatasetError, load_split
from anil.evaluation import episode_accuracy, evaluate
from anil.fast import default_speed, feature_extractor
from anil.model import BATCH_NORMS
from anil.run.checkpoint import (WEIGHT_FILES, CheckpointError, image_shape, network_from,
                                 read_weights)
from anil.run.cli import (HelpFormatter, add_device_options, dataset_name, dataset_path, fail,
                          inner_steps, memory_error, out_of_memory, path_error, positive_float,
                          positive_int, program, resolve_device, seed, set_threads,
                          user_error)
from anil.run.progress import Progress
from anil.sampler import SamplerError, TaskSampler, split_seed
from data_prep.episodes import preprocess_of, read_episodes

EXAMPLES = """examples:
  python evaluate.py runs/glyphs-5w1s                      best.pt, the run's own test protocol
  python evaluate.py runs/glyphs-5w1s --weights last       checkpoint.pt (latest weights)
  python evaluate.py runs/glyphs-5w1s --shots 5 --test-inner-steps 20 --eval-tasks 1000
  python evaluate.py runs/glyphs-5w1s/model.pt --split val
  python evaluate.py runs/small1 --episodes data/omniglot-runs   per-run error on fixed episodes"""


def build_parser():
    p = argparse.ArgumentParser(
        prog=program("evaluate.py"), formatter_class=HelpFormatter,
        description=__doc__.split("\n\n")[0], epilog=EXAMPLES)
    p.add_argument("run", type=Path, help="run folder written by train.py, or one of its .pt files")
    p.add_argument("--weights", choices=sorted(WEIGHT_FILES), default="best",
                   help="in a run folder: best.pt (best validation) or checkpoint.pt (latest)")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="the split whose tasks are scored")
    p.add_argument("--episodes", type=Path, metavar="DIR",
                   help="score fixed episodes instead: a folder of run folders in the layout of "
                        "the Omniglot one-shot runs (training/, test/, class_labels.txt)")
    task = p.add_argument_group("task and protocol (default: the run's own)")
    task.add_argument("--ways", type=positive_int, help="N, classes per task")
    task.add_argument("--shots", type=positive_int, help="K, support images per class")
    task.add_argument("--test-inner-steps", type=inner_steps, help="inner steps")
    task.add_argument("--inner-lr", type=positive_float, help="α, inner step size")
    task.add_argument("--eval-tasks", type=positive_int, help="number of tasks")
    task.add_argument("--seed", type=seed, help="task seed (the run's gives its test tasks)")
    task.add_argument("--batch-norm", choices=BATCH_NORMS,
                      help="batch-norm statistics over the whole task, support and query "
                           "'separate'ly, or the 'support' set only (non-transductive); a run "
                           "from before this option used 'task'")
    task.add_argument("--data-root", type=Path, help="folder of the named datasets")
    task.add_argument("--data", type=Path, metavar="DIR", help="a prepared dataset folder")
    add_device_options(p, speed=False)
    return p


def main(argv=None):
    """``python evaluate.py`` and ``anil-evaluate``: returns None, so the console script's
    ``sys.exit(main())`` exits 0 (``evaluate_run`` returns the numbers)."""
    try:
        evaluate_run(build_parser().parse_args(argv))
    except OSError as e:  # the run, --data-root or --episodes cannot be read
        path_error(e)
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        memory_error(e, "the network and 8 tasks at a time must fit: close other programs, use a "
                        "machine with more memory, or --device cpu if the GPU's is too small")
    except KeyboardInterrupt:
        print("\ninterrupted; nothing to save", file=sys.stderr)
        sys.exit(130)


def evaluate_run(args):
    try:
        file, saved = read_weights(args.run, args.weights)
    except CheckpointError as e:
        fail(str(e))
    if args.run.is_dir() and args.weights == "best" and file.name != "best.pt":
        print(f"note: {args.run} has no best.pt (no validation ran); using {file.name}")
    # A run saved before --batch-norm existed normalised over the whole task.
    config = argparse.Namespace(**{"data": None, "batch_norm": "task", **saved["config"]})
    for key in ("ways", "shots", "test_inner_steps", "inner_lr", "eval_tasks", "seed", "data_root",
                "data", "batch_norm"):
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    config.data_root = Path(config.data_root)
    device = torch.device(resolve_device(args.device))
    set_threads(args.threads)

    if args.episodes is not None:
        return evaluate_episodes(args, file, saved, config, device)
    try:
        path = dataset_path(config)
        split = load_split(path, args.split)
        sampler = TaskSampler(split, config.ways, config.shots,
                              seed=split_seed(config.seed, args.split), rotate=config.rotate)
        body, head = network_from(saved, config.ways)
    except (DatasetError, SamplerError) as e:
        fail(user_error(e))
    except CheckpointError as e:
        fail(f"{file}: {e}")
    trained_on = image_shape(saved["config"])
    if split.image_shape != trained_on:
        fail(f"{file} was trained on {'x'.join(map(str, trained_on))} images but {path} holds "
             f"{'x'.join(map(str, split.image_shape))} images; give the run's dataset with --data "
             f"or --data-root")
    if config.ways != saved["config"]["ways"]:
        print(f"note: the run's head is {saved['config']['ways']}-way; for {config.ways}-way "
              f"tasks the head starts from zero", flush=True)
    body, head = body.to(device).eval(), head.to(device).eval()

    bar = Progress(config.eval_tasks, args.split)
    start = time.perf_counter()
    features_fn = feature_extractor(body, default_speed(device, args.head_loop),
                                    batch_norm=config.batch_norm)
    mean, ci, _ = evaluate(body, head, sampler, config.eval_tasks, config.inner_lr,
                           config.test_inner_steps, device, features_fn, args.head_loop,
                           progress=lambda done, total: bar.update(done),
                           batch_norm=config.batch_norm)
    bar.clear()
    which = f"iteration {saved['iteration']}" if "iteration" in saved else "saved weights"
    if "val_accuracy" in saved:
        which += f", best validation {100 * saved['val_accuracy']:.2f}%"
    print(f"{args.split} accuracy {100 * mean:.2f} ± {100 * ci:.2f}% (95% CI over {config.eval_tasks} "
          f"tasks; {dataset_name(config)} {config.ways}-way {config.shots}-shot, {config.test_inner_steps} "
          f"inner steps, batch norm {config.batch_norm}; {file.name}: {which}; {time.perf_counter() - start:.1f}s)", flush=True)
    return mean, ci


def evaluate_episodes(args, file, saved, config, device):
    """Score the run on given episodes: per-episode error and mean ± standard error, with the
    run's test-time inner loop and its dataset's preprocessing of the images."""
    try:
        episodes = read_episodes(args.episodes, preprocess_of(dataset_path(config)))
        body, head = network_from(saved)
    except DatasetError as e:
        fail(str(e))
    except CheckpointError as e:
        fail(f"{file}: {e}")
    height, width, channels = episodes[0].support_images.shape[1:]
    if (channels, height, width) != image_shape(saved["config"]):
        fail(f"the episodes' images are {channels}x{height}x{width} but {file} was trained on "
             f"{'x'.join(map(str, image_shape(saved['config'])))} images")
    body = body.to(device).eval()
    to_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float().div(255).to(device)
    print(f"{len(episodes)} episodes in {args.episodes}; {config.test_inner_steps} inner steps of "
          f"α={config.inner_lr}, batch norm {config.batch_norm}; {file.name}", flush=True)
    errors = []
    for e in episodes:
        # A head of the episode's width: the run's own if it fits, else zero (see the docstring).
        _, episode_head = network_from(saved, e.ways)
        accuracy = episode_accuracy(
            body, episode_head.to(device).eval(), to_tensor(e.support_images),
            torch.from_numpy(e.support_labels).to(device), to_tensor(e.query_images),
            torch.from_numpy(e.query_labels).to(device), config.inner_lr,
            config.test_inner_steps, args.head_loop, config.batch_norm)
        errors.append(100 * (1 - accuracy))
        print(f"{e.name:<12} {e.ways:3d}-way  {len(e.query_labels):3d} queries  error "
              f"{errors[-1]:6.2f}%", flush=True)
    mean, stderr = sum(errors) / len(errors), standard_error(errors)
    if len(errors) > 1:
        print(f"mean error {mean:.2f} ± {stderr:.2f}% (± one standard error over {len(errors)} "
              f"episodes)", flush=True)
    else:
        print(f"error {mean:.2f}% (one episode: no standard error; give a folder of several runs)",
              flush=True)
    return mean, stderr


def standard_error(values) -> float:
    """The standard error of the mean, s / √n with the sample standard deviation
    s² = (1/(n−1)) Σ (x − x̄)² (the spread of a sample of episodes, not of all episodes there
    are); nan for fewer than two values."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


if __name__ == "__main__":
    main()
