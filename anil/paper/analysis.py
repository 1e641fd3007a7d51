"""The paper's analyses of a trained model: freezing layers at test time (Table 1) and the
representation similarity before and after the inner loop (§3.2, Figures 2-3).

    python -m anil.paper.analysis                                  # the MAML model of anil.paper.compare
    python -m anil.paper.analysis --checkpoint runs/glyphs-5w1s/model.pt   # any ANIL/MAML checkpoint

Freezing: the model adapts only the layers after the frozen ones at test time (conv1..conv4 are
the body's blocks; freezing all of them leaves the head, i.e. ANIL-style adaptation).

Feature reuse: for each test task, φ is the meta-learned network and φ' = φ_i^(m) the network
after the inner loop on the task's support set (MAML adapts every layer, ANIL the head only).
Both run on the task's 2NK images and each layer's outputs are compared by linear CKA
(``anil.paper.cka``), averaged over tasks. A control row compares the trained network with a freshly
initialised one on the same images, to show what "dissimilar" looks like at this sample size:
with one task's 10 images (5-way 1-shot) the first conv layers score near 1 even against an
untrained network, so only layers whose control is clearly lower can show feature reuse.
The paper's finding: body layers near 1 (feature reuse), the head far lower.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from anil.data import DatasetError, load_split
from anil.evaluation import mean_ci95
from anil.model import ConvBody, make_head
from anil.paper import maml
from anil.paper.cka import linear_cka
from anil.paper.feature_reuse import layer_outputs
from anil.run.checkpoint import CheckpointError, image_shape, load_run
from anil.run.cli import (HelpFormatter, add_device_options, dataset_name, dataset_path, fail,
                          path_error, positive_int, program, resolve_device, set_threads,
                          user_error)
from anil.run.run_folder import RunFolder, RunFolderError
from anil.run.plot import bar_chart
from anil.run.results import ResultsError, write_results
from anil.sampler import SamplerError, TaskSampler, split_seed

DEFAULT_CHECKPOINT = Path("runs/compare-glyphs-5w1s/maml.pt")


def freezing_table(body, head, sampler, num_tasks, step_size, steps, device="cpu"):
    """{frozen layers: (mean, ci95)} for frozen = none, conv1, conv1-2, ..., all conv layers."""
    layers = maml.layer_names(body)
    depth = len(layers) - 1
    table = {}
    for k in range(depth + 1):
        name = "none" if k == 0 else "conv1" if k == 1 else f"conv1-{k}"
        if k == depth:
            name += " (head only)"
        adapted = maml.layer_params(body, head, layers[k:])
        mean, ci, _ = maml.evaluate(body, head, sampler, num_tasks, step_size, steps, device, adapted)
        table[name] = (mean, ci)
    return table


def similarity_by_layer(body, head, sampler, num_tasks, step_size, steps, adapted=None,
                        control=None, device="cpu"):
    """Linear CKA of each layer before vs after the inner loop, over tasks 0..num_tasks-1.

    Returns {layer: (mean, ci95)}, and the same for the control network ``control = (body,
    head)`` (trained vs control on the same images) if given.
    """
    params = {k: v.detach() for k, v in maml.network_params(body, head).items()}
    if control is not None:
        control_params = {k: v.detach() for k, v in maml.network_params(*control).items()}
    before_after, versus_control = {}, {}
    for task_id in range(num_tasks):
        task = sampler.task(task_id)
        x, y = task.images.to(device), task.labels.to(device)
        with torch.no_grad():
            adapted_params = maml.adapt(body, head, params, x, y, step_size, steps, adapted=adapted)
            before = layer_outputs(body, head, params, x)
            after = layer_outputs(body, head, adapted_params, x)
            other = layer_outputs(*control, control_params, x) if control is not None else None
        for layer in before:
            before_after.setdefault(layer, []).append(linear_cka(before[layer], after[layer]))
            if other is not None:
                versus_control.setdefault(layer, []).append(linear_cka(before[layer], other[layer]))
    summarise = lambda d: {layer: mean_ci95(v) for layer, v in d.items()}
    return summarise(before_after), summarise(versus_control)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program("python -m anil.paper.analysis"), formatter_class=HelpFormatter,
        description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="a model written by anil.paper.compare (anil.pt, maml.pt) or train.py "
                        "(a run folder, or its best.pt / model.pt)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder of the named datasets (default: the one it was trained with)")
    p.add_argument("--tasks", type=positive_int, default=200, help="test tasks per measurement")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the checkpoint's)")
    p.add_argument("--results", type=Path, default=None, metavar="FILE",
                   help="also write the figures, with this command line, versions, date and "
                        "device, to FILE (e.g. docs/results/analysis.json, which docs/ quotes)")
    add_device_options(p, speed=False, head_loop=False)
    return p


def main(argv=None):
    """``anil-analysis``: returns None, so ``sys.exit(main())`` exits 0 (see ``run``)."""
    try:
        run(build_parser().parse_args(argv))
    except OSError as e:  # the checkpoint, --data-root or --out cannot be used
        path_error(e)


def run(args) -> dict:
    """Analyse with the parsed ``args``; returns the results (the analysis JSON's contents)."""
    device = torch.device(resolve_device(args.device))
    set_threads(args.threads)
    if not args.checkpoint.exists():
        fail(f"no checkpoint at {args.checkpoint}; " + (
            "run  python -m anil.paper.compare  first" if args.checkpoint == DEFAULT_CHECKPOINT else
            "check the path (anil.paper.compare writes anil.pt and maml.pt, train.py a run folder)"))
    try:
        body, head, config = load_run(args.checkpoint)
    except CheckpointError as e:
        fail(str(e))
    algorithm = config.get("algorithm", "anil")  # train.py checkpoints are ANIL
    config = argparse.Namespace(**{"data": None, **config})
    if args.data_root is not None:
        config.data_root = args.data_root
    try:
        split = load_split(dataset_path(config), "test")
        # The test tasks anil.paper.compare and train.py test on.
        test = TaskSampler(split, config.ways, config.shots, seed=split_seed(config.seed, "test"),
                           rotate=getattr(config, "rotate", False))
    except (DatasetError, SamplerError) as e:
        fail(user_error(e))
    body.to(device).eval(), head.to(device).eval()
    stem = args.checkpoint.stem if args.checkpoint.is_file() else "model"
    out = args.out or (args.checkpoint.parent if args.checkpoint.is_file() else args.checkpoint)
    names = (f"{stem}-freezing.png", f"{stem}-cka.png", f"{stem}-analysis.json")
    try:
        with RunFolder(out, names=names).open(resuming=True) as folder:  # its outputs are derived
            result = analyse(body, head, test, config, algorithm, args, folder, names, device)
        if args.results is not None:
            write_results(args.results, result, device)
            print(f"wrote {args.results}")
    except (RunFolderError, ResultsError) as e:
        fail(str(e))
    return result


def analyse(body, head, test, config, algorithm, args, folder, names, device):
    """Print and write the freezing table and the per-layer CKA of one trained model."""
    alpha, steps, what = config.inner_lr, config.test_inner_steps, algorithm.upper()
    print(f"{what} model {args.checkpoint} on {dataset_name(config)} {config.ways}-way "
          f"{config.shots}-shot: α={alpha} × {steps} test steps, {args.tasks} test tasks", flush=True)

    # ------------------------------------------------------------- freezing (paper Table 1)
    table = freezing_table(body, head, test, args.tasks, alpha, steps, device)
    print("\nfrozen at test time      test accuracy (95% CI)")
    for name, (mean, ci) in table.items():
        print(f"{name:<24} {100 * mean:8.2f} ± {100 * ci:.2f}%")
    folder.write_png(names[0], lambda png: bar_chart(
        png, list(table), {"test accuracy": [100 * m for m, _ in table.values()]},
        errors={"test accuracy": [100 * c for _, c in table.values()]},
        title=f"{what} on {dataset_name(config)}: layers frozen at test time ({args.tasks} tasks)",
        ylabel="test accuracy", ylim=(0, 100), chance=100 / config.ways, tick_format="{:g}%",
        value_format="{value:.1f} ± {error:.1f}%"))

    # ------------------------------------------------------------ feature reuse (paper §3.2)
    adapted = None if algorithm == "maml" else maml.layer_params(body, head, ["head"])
    torch.manual_seed(12345)
    fresh = ConvBody(*image_shape(vars(config))[:2], hidden=config.hidden).to(device).eval()
    fresh_head = make_head(fresh.feature_dim, config.ways).to(device)
    cka, control = similarity_by_layer(body, head, test, args.tasks, alpha, steps, adapted,
                                       (fresh, fresh_head), device)
    print("\nlayer    CKA before vs after inner loop   control: trained vs untrained network")
    for layer in cka:
        (m, c), (cm, cc) = cka[layer], control[layer]
        print(f"{layer:<8} {m:16.3f} ± {c:.3f}           {cm:16.3f} ± {cc:.3f}")
    folder.write_png(names[1], lambda png: bar_chart(
        png, list(cka), {"before vs after inner loop": [cka[l][0] for l in cka],
                         "trained vs untrained": [control[l][0] for l in cka]},
        errors={"before vs after inner loop": [cka[l][1] for l in cka],
                "trained vs untrained": [control[l][1] for l in cka]},
        title=f"{what} on {dataset_name(config)}: linear CKA per layer, mean over {args.tasks} tasks",
        ylabel="linear CKA (similarity, 0 to 1)", ylim=(0, 1), value_format="{value:.2f}"))
    result = {"checkpoint": str(args.checkpoint), "algorithm": algorithm, "tasks": args.tasks,
              "freezing": {k: {"accuracy": m, "ci95": c} for k, (m, c) in table.items()},
              "cka_before_after": {k: {"mean": m, "ci95": c} for k, (m, c) in cka.items()},
              "cka_vs_untrained": {k: {"mean": m, "ci95": c} for k, (m, c) in control.items()}}
    folder.write_json(names[2], result)
    print(f"wrote {', '.join(str(folder.files[n]) for n in names)}")
    return result

if __name__ == "__main__":
    main()
