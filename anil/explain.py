"""Walk one task through ANIL's equations, printing each quantity next to its equation.

    python -m anil.explain                                 # untrained network, built-in glyphs, test task 0
    python -m anil.explain --run runs/glyphs-5w1s --task 3 # a trained run on task 3 of its test split
    python -m anil.explain --steps 1 --inner-lr 0.1        # another inner loop

For one task T with support set S and query set Q (docs/design.md, "Tasks: support, query and
labels"), in the paper's notation:

    Z = f_θ(X)                                     one body call on all 2NK images (batch norm)
    w^(0) = w,  w^(s+1) = w^(s) − α ∇_w L(S; θ, w^(s)),  s = 0..m−1     the inner loop, head only
    L(Q; θ, w^(m))                                 the query loss of the adapted head
    ∇_(θ,w) L(Q; θ, w^(m))                         the meta-gradient, through the inner loop

It prints the task, the features, a row per inner step s = 0..m (support and query loss and
accuracy at w^(s), and ‖w^(s) − w^(0)‖), the query loss and accuracy, and the meta-gradient's norm
per layer in second and first order, with the size of the second-order (Hessian) terms relative
to it and what that share means. It writes task.png (the task's images), inner-loop.png (the
losses per inner step) and features.png (the task's features in a plane with the head's class
directions before and after the inner loop, ``anil.feature_plane``). For a MAML-trained network
(``maml.pt`` of ``python -m anil.paper.compare``) it also prints feature reuse in numbers: per
layer, how far MAML's inner loop moves it and the CKA of its outputs before and after
(``anil.paper.feature_reuse``), beside ANIL's head, and draws them as feature-reuse.png.
``--results FILE`` writes the numbers to a results file (anil/run/results.py).

Every number comes from the project's own functions: ``anil.algorithm.head_loss``,
``adapt_head`` (one step at a time), ``adapt_and_score`` and ``task_loss``. Nothing here
re-implements the math; it only calls it and prints what it returns.

Without --run the network is untrained (``torch.manual_seed(0)``, the glyphs preset's sizes: the
network ``python train.py`` starts from) and the task comes from the built-in glyph dataset
(generated on first use), with the glyphs preset's α and test-time steps. With --run, a run folder
or .pt file written by train.py: its weights, its dataset, its α and its test-time inner steps, and
task N of its test split (the tasks train.py and evaluate.py test on).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from anil.data import DatasetError, load_split
from anil.explain_maml import results_of, reuse_lines, second_order_lines
from anil.model import ConvBody, make_head
from anil.paper.feature_reuse import feature_reuse
from anil.run.checkpoint import CheckpointError, image_shape, network_from, read_weights
from anil.run.cli import (HelpFormatter, add_device_options, dataset_name, dataset_path, fail,
                          inner_steps, non_negative_int, positive_float, program, resolve_device,
                          set_threads, user_error)
from anil.run.run_folder import RunFolder, RunFolderError
from anil.run.plot import line_chart, task_grid
from anil.run.plot.features import features_plot, reuse_plot
from anil.run.presets import preset
from anil.run.results import ResultsError, write_results
from anil.sampler import SamplerError, TaskSampler, split_seed
from anil.walkthrough import Walkthrough, walk_through

OUTPUTS = ("task.png", "inner-loop.png", "features.png", "feature-reuse.png")  # the last: MAML only
DEFAULT_OUT = Path("runs/explain")
UNTRAINED_SEED = 0  # torch.manual_seed of the untrained network
TRAINING_SETTINGS = ("algorithm", "iterations", "meta_batch", "hidden", "inner_steps", "outer_lr",
                     "first_order", "seed")  # of a --run, recorded by --results

EXAMPLES = """examples:
  python -m anil.explain                                  untrained network, glyphs, test task 0
  python -m anil.explain --run runs/glyphs-5w1s --task 3  a trained run: its weights, data, α, test steps
  python -m anil.explain --steps 0                        no inner loop: no second-order part"""


NOTES_FILE = Path(__file__).resolve().parents[1] / "docs" / "design.md"  # in a clone, not in a wheel


def design_notes() -> str:
    """Where the docs/design.md sections cited below live: a clone has the file; an installed
    package does not ship docs/, so the reader is told where to find it."""
    if NOTES_FILE.is_file():
        return "docs/design.md"
    return ("the docs/design.md#... sections cited are in the anil source repository's docs/ "
            "folder, not installed with the package")


# ----------------------------------------------------------------------------------- printing


def _shape(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:5.1f}%"


def report(result: Walkthrough, task, class_names, rotations, ways: int, shots: int,
           step_size: float, steps: int) -> list[str]:
    """The printed walk-through, one string per line."""
    n = ways * shots
    lines = ["", "The task T (docs/design.md#tasks-support-query-and-labels)",
             f"  N = {ways} ways, K = {shots} shot{'s' if shots > 1 else ''}: the support set S and "
             f"the query set Q hold NK = {n} images each"]
    for j, (c, name) in enumerate(zip(task.classes, class_names)):
        turn = f", rotated {90 * int(rotations[j])}°" if rotations is not None else ""
        lines.append(f"  label {j} ← class {name!r} (class {int(c)} of the test split{turn})")
    s = result.shapes
    lines += [f"  X {_shape(s['X']):<18} support and query interleaved: S = X[0::2], Q = X[1::2]",
              f"  y {_shape(s['y']):<18} {' '.join(str(int(v)) for v in task.labels[:24])}"
              + (" ..." if len(task.labels) > 24 else ""),
              "", "The features Z = f_θ(X) (docs/design.md#batch-norm-per-task)",
              f"  Z   = f_θ(X)  {_shape(s['Z']):<12} one body call on all 2NK = {2 * n} images: "
              f"batch norm uses the task's statistics",
              f"  Z_S = Z[0::2] {_shape(s['Z_S']):<12} support features;  Z_Q = Z[1::2] "
              f"{_shape(s['Z_Q'])} query features",
              f"  the support set in a call of its own would get other statistics: "
              f"‖f_θ(X_S) − Z_S‖ / ‖Z_S‖ = {result.support_alone_change:.3f}",
              "", f"The inner loop (docs/design.md#the-inner-loop), head only, inner step size "
              f"α = {step_size:g}, m = {steps} inner step{'s' if steps != 1 else ''}:",
              "  w^(0) = w,   w^(s+1) = w^(s) − α ∇_w L(S; θ, w^(s)),   s = 0..m−1  "
              "(S: the support set)",
              "     s   L(S; θ, w^(s))  acc S   L(Q; θ, w^(s))  acc Q   ‖w^(s) − w^(0)‖"]
    for row in result.trace:
        lines.append(f"  {row['step']:4d}   {row['support_loss']:14.4f}  {_pct(row['support_accuracy'])}"
                     f"   {row['query_loss']:14.4f}  {_pct(row['query_accuracy'])}   "
                     f"{row['distance']:15.4f}")
    correct = round(result.query_accuracy * n)
    lines += ["", "The query loss (docs/design.md#the-outer-loop-and-the-meta-gradient)",
              f"  L(Q; θ, w^(m)) = {result.query_loss:.4f}   query accuracy "
              f"{100 * result.query_accuracy:.1f}% ({correct} of {n}; chance {100 / ways:.0f}%)",
              "", "The meta-gradient g = ∇_(θ,w) L(Q; θ, w^(m)) "
              "(docs/design.md#the-outer-loop-and-the-meta-gradient)",
              "  second order: through the inner loop;  first order: each ∇_w L(S) taken as a "
              "constant (docs/design.md#first-order)",
              "  layer             parameters   ‖g_second‖    ‖g_first‖   "
              "second-order part ‖g_second − g_first‖ / ‖g_second‖"]
    for layer, row in result.gradient.items():
        name = {"head": "head (W, b)", "all": "all (θ, w)"}.get(layer, f"{layer} (conv+bn)")
        lines.append(f"  {name:<16} {row['parameters']:>11,}  {row['second']:11.4e}  "
                     f"{row['first']:11.4e}   {100 * row['share']:8.3f}%")
    lines.append("  (each conv's bias gets 0 up to rounding: the batch norm after it cancels it; "
                 "docs/design.md#the-network)")
    if any(row["share"] > 1 for row in result.gradient.values()):
        lines.append("  (above 100%: there the second-order terms point against the first-order ones, "
                     "and ‖g_second‖ < ‖g_second − g_first‖)")
    return lines + second_order_lines(result.gradient)


def draw(out: RunFolder, result: Walkthrough, task, title: str, step_size: float, steps: int):
    """task.png (the task's images, a row per label, support then query), inner-loop.png
    (support and query loss against the inner step s) and features.png (``features_plot``).
    Pillow's default font has no Greek letters, so the pictures use the words the printout
    puts beside its symbols (inner step size for α)."""
    out.write_png("task.png", lambda path: task_grid(task.images, task.labels, path, title=title))
    s = [row["step"] for row in result.trace]
    out.write_png("inner-loop.png", lambda path: line_chart(
        path, {"support loss (what the inner loop minimises)":
               (s, [r["support_loss"] for r in result.trace]),
               "query loss (what the outer loop minimises)":
               (s, [r["query_loss"] for r in result.trace])},
        title=f"{title}: the inner loop, inner step size {step_size:g}, {steps} "
              f"step{'s' if steps != 1 else ''}",
        xlabel="inner step s", ylabel="cross-entropy loss",
        ylim=(0, 1.06 * max(max(r["support_loss"], r["query_loss"]) for r in result.trace))))
    out.write_png("features.png", lambda path: features_plot(
        path, result.plane, title=f"{title}: features and class directions, {steps} inner "
                                  f"step{'s' if steps != 1 else ''}"))
    if result.reuse is not None:
        out.write_png("feature-reuse.png", lambda path: reuse_plot(path, result.reuse, title))


# --------------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program("python -m anil.explain"), formatter_class=HelpFormatter,
        description=__doc__.split("\n\n")[0], epilog=EXAMPLES)
    p.add_argument("--run", type=Path, default=None, metavar="PATH",
                   help="a run folder written by train.py, or one of its .pt files (default: an "
                        "untrained network on the built-in glyphs)")
    p.add_argument("--task", type=non_negative_int, default=0, metavar="N",
                   help="the task id in the test split, 0 or more (default: 0; a task is a pure "
                        "function of the seed and its id)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help=f"folder for {', '.join(OUTPUTS)} (default: {DEFAULT_OUT}, or the run's "
                        f"explain/ folder)")
    p.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                   help="folder of the named datasets (default: data, or the run's)")
    p.add_argument("--steps", type=inner_steps, default=None, metavar="M",
                   help="m, inner steps (default: the test-time steps of the run, or of the glyphs preset)")
    p.add_argument("--inner-lr", type=positive_float, default=None, metavar="ALPHA",
                   help="α, inner step size (default: the run's, or the glyphs preset's)")
    p.add_argument("--results", type=Path, default=None, metavar="FILE",
                   help="also write the printed numbers to FILE, a results file (anil/run/results.py)")
    add_device_options(p, speed=False, head_loop=False)
    return p


def open_network_and_data(args):
    """(body, head, config namespace, what the network is) for --run or the untrained network;
    one-line errors for a missing or unreadable run."""
    if args.run is None:
        config = argparse.Namespace(dataset="glyphs", data=None, data_root=args.data_root or Path("data"),
                                    seed=0, rotate=False, **{k: v for k, v in preset("glyphs").items()
                                                              if k not in ("rotate", "prepare")})
        torch.manual_seed(UNTRAINED_SEED)
        body = ConvBody(config.channels, config.image_size, hidden=config.hidden)
        head = make_head(body.feature_dim, config.ways)
        return body, head, config, (f"untrained (torch.manual_seed({UNTRAINED_SEED}): the network "
                                    f"python train.py starts from with --seed {UNTRAINED_SEED})")
    try:  # anil.load_run, in its two steps, to name the file it reads
        file, saved = read_weights(args.run)
        body, head = network_from(saved)
    except CheckpointError as e:
        fail(str(e))
    config = argparse.Namespace(**{"data": None, "rotate": False, **saved["config"]})
    if args.data_root is not None:
        config.data_root = args.data_root
    config.data_root = Path(config.data_root)
    which = f"iteration {saved['iteration']}" if "iteration" in saved else "saved weights"
    if "val_accuracy" in saved:
        which += f", validation {100 * saved['val_accuracy']:.2f}%"
    trained_as = getattr(config, "algorithm", "anil")  # anil.paper.compare also saves MAML models
    if trained_as != "anil":
        which += f"; trained with {trained_as.upper()}, adapted here as ANIL adapts: the head only"
    return body, head, config, f"trained, {file} ({which})"


def main(argv=None):
    """``python -m anil.explain`` and the ``anil-explain`` console script."""
    try:
        explain(build_parser().parse_args(argv))
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was written", file=sys.stderr)
        sys.exit(130)


def explain(args) -> Walkthrough:
    """Open the network and the task, walk through it, print, draw; returns the numbers."""
    device = torch.device(resolve_device(args.device))
    set_threads(args.threads)
    body, head, config, what = open_network_and_data(args)
    step_size = args.inner_lr or config.inner_lr
    steps = config.test_inner_steps if args.steps is None else args.steps
    seed = split_seed(config.seed, "test")
    try:
        path = dataset_path(config)
        split = load_split(path, "test")
        sampler = TaskSampler(split, config.ways, config.shots, seed=seed, rotate=config.rotate)
    except (DatasetError, SamplerError) as e:
        fail(user_error(e))
    if split.image_shape != image_shape(vars(config)):
        fail(f"{path} holds {'x'.join(map(str, split.image_shape))} images but the network takes "
             f"{'x'.join(map(str, image_shape(vars(config))))} images; give the run's dataset "
             f"with --data-root")
    task = sampler.task(args.task)
    rotations = sampler.task_indices(args.task)[2] if config.rotate else None
    class_names = [split.class_names[c] for c in task.classes]
    if args.out is not None:
        out = args.out
    elif args.run is None:
        out = DEFAULT_OUT
    else:
        out = args.run / "explain" if args.run.is_dir() else args.run.parent / f"explain-{args.run.stem}"

    n_params = sum(p.numel() for p in [*body.parameters(), *head.parameters()])
    print(f"ANIL, one task through the equations (Raghu et al. 2019; {design_notes()})\n"
          f"network: {what}; {len(body.blocks)} conv blocks of {config.hidden} filters and a "
          f"{config.ways}-way linear head, {n_params:,} parameters; device {device}\n"
          f"task: {dataset_name(config)} ({path}), test split, task {args.task} "
          f"(sampler seed split_seed({config.seed}, \"test\") = {seed})", flush=True)
    body, head = body.to(device), head.to(device)
    result = walk_through(body, head, task.images.to(device), task.labels.to(device), step_size, steps)
    if getattr(config, "algorithm", "anil") == "maml":  # anil.paper.compare's maml.pt
        result.reuse = feature_reuse(body, head, task.images.to(device), task.labels.to(device),
                                     step_size, steps)
    print("\n".join(report(result, task, class_names, rotations, config.ways, config.shots,
                           step_size, steps)
                     + (reuse_lines(result.reuse, step_size, steps) if result.reuse else [])))
    title = f"{dataset_name(config)} test task {args.task}"
    try:
        with RunFolder(out, names=OUTPUTS).open(resuming=True) as folder:  # its own files only
            draw(folder, result, task, title, step_size, steps)
    except RunFolderError as e:
        fail(str(e))
    written = OUTPUTS if result.reuse is not None else OUTPUTS[:3]
    print(f"\nwrote {', '.join(str(out / name) for name in written)}")
    if args.results is not None:
        context = {"network": what, "dataset": dataset_name(config), "task": args.task,
                   "ways": config.ways, "shots": config.shots, "inner_lr": step_size, "steps": steps,
                   "trained_with": {k: getattr(config, k) for k in TRAINING_SETTINGS
                                    if args.run is not None and hasattr(config, k)}}
        try:
            print(f"wrote {write_results(args.results, results_of(result, context), device)}")
        except ResultsError as e:
            fail(str(e))
    return result


if __name__ == "__main__":
    main()
